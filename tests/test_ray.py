"""Tests on a real local Ray instance (2 CPUs, started once for the module): the scoring job as a Ray Data job and the
HTTP service as a Ray Serve deployment, each against Recognizer.predict."""

from __future__ import annotations

import io
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
import soundfile

from benchmarks.loopback import free_port
from mmer_rt import Recognizer
from mmer_rt.errors import ModelDirError
from mmer_rt.serve.score import score
from test_recognizer_fixtures import noise, tiny_export, tiny_model_dir  # noqa: F401
from test_score import BAD, GOOD, OPTIONS, check_rows, make_corpus, read_rows

RATE = 16_000


@pytest.fixture(scope="module")
def ray_instance():
    """One local Ray instance for the module ("local": never an instance someone else started), always shut down."""
    import ray

    ray.init(address="local", num_cpus=2, include_dashboard=False, logging_level="WARNING")
    try:
        yield ray
    finally:
        from ray import serve

        serve.shutdown()
        ray.shutdown()


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return make_corpus(tmp_path_factory.mktemp("ray_corpus"))


@pytest.fixture(scope="module")
def recognizer(tiny_model_dir):
    return Recognizer.from_dir(tiny_model_dir, **OPTIONS)


def test_scoring_job_on_two_actors_equals_predict(ray_instance, corpus, tiny_model_dir, recognizer, tmp_path):
    out = tmp_path / "results.jsonl"
    summary = score(tiny_model_dir, corpus, out, use_ray=True, actors=2, chunk=4, recognizer_options=OPTIONS)
    check_rows(read_rows(out), corpus, recognizer)
    assert (summary.scored, summary.errors) == (GOOD + len(BAD), {"AudioError": 3, "TextError": 1})


def test_an_interrupted_ray_job_resumes(ray_instance, corpus, tiny_model_dir, recognizer, tmp_path):
    out = tmp_path / "results.jsonl"
    written = []

    def stop_after_five(count):  # Ctrl-C in the driver while the actors are at work
        written.append(count)
        if len(written) == 5:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        score(tiny_model_dir, corpus, out, use_ray=True, actors=2, chunk=3, recognizer_options=OPTIONS,
              progress=stop_after_five)
    before = out.read_bytes()
    assert len(read_rows(out)) == 5
    summary = score(tiny_model_dir, corpus, out, use_ray=True, actors=2, chunk=3, recognizer_options=OPTIONS)
    assert (summary.skipped, summary.scored) == (5, GOOD + len(BAD) - 5)
    assert out.read_bytes().startswith(before)
    check_rows(read_rows(out), corpus, recognizer)


def test_a_model_an_actor_cannot_load_stops_the_job_with_a_typed_error(ray_instance, corpus, tiny_model_dir,
                                                                       tmp_path):
    out = tmp_path / "results.jsonl"
    with pytest.raises(ModelDirError, match="a Ray actor failed: .* holds no fp16 variant"):
        score(tiny_model_dir, corpus, out, use_ray=True, actors=1, recognizer_options={"precision": "fp16"})
    assert out.read_text() == ""



def wav_bytes(samples: int, seed: int) -> bytes:
    buffer = io.BytesIO()
    soundfile.write(buffer, noise(samples, seed=seed), RATE, format="WAV")
    return buffer.getvalue()


@pytest.fixture(scope="module")
def serve_port(ray_instance):
    from ray import serve

    port = free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    return port


@pytest.mark.parametrize("batching, replicas", [("batcher", 2), ("serve", 1)])
def test_serve_deployment_answers_as_predict(ray_instance, serve_port, tiny_model_dir, recognizer, batching,
                                             replicas):
    from ray import serve

    from mmer_rt.serve.batcher import BatcherConfig
    from mmer_rt.serve.http import ServeConfig
    from mmer_rt.serve.ray import serve_app

    config = ServeConfig(batcher=BatcherConfig(max_wait_ms=20))
    serve.run(serve_app(tiny_model_dir, num_replicas=replicas, recognizer_options=OPTIONS, serve_config=config,
                        batching=batching), name="mmer", route_prefix="/", blocking=False)
    base = f"http://127.0.0.1:{serve_port}"
    try:
        with httpx.Client(base_url=base, timeout=60) as client:
            deadline = time.monotonic() + 60
            while client.get("/v2/health/ready").status_code != 200:
                assert time.monotonic() < deadline, "the deployment did not become ready"
                time.sleep(0.2)
            clips = [wav_bytes(1_500 + 900 * i, seed=i) for i in range(12)]
            texts = [None if i % 3 else "we lost the house" for i in range(12)]

            def ask(i):
                params = {} if texts[i] is None else {"text": texts[i]}
                return client.post("/v1/predict", content=clips[i], params=params,
                                   headers={"content-type": "audio/wav"})

            with ThreadPoolExecutor(12) as pool:  # at once, so that replicas batch them
                answers = list(pool.map(ask, range(12)))
            for i, answer in enumerate(answers):
                assert answer.status_code == 200, answer.text
                expected = recognizer.predict(clips[i], texts[i])
                body = answer.json()
                assert body["label"] == expected.label and body["transcript"] == expected.transcript
                assert [s["label"] for s in body["scores"]] == list(expected.scores)
                assert [s["score"] for s in body["scores"]] == pytest.approx(list(expected.scores.values()),
                                                                              abs=1e-5)
            bad = client.post("/v1/predict", content=b"not audio", headers={"content-type": "audio/wav"})
            assert bad.status_code == 422 and bad.json()["error_type"] == "AudioError"
            infer = client.post("/v2/models/mmer/infer", json={"inputs": [
                {"name": "audio", "datatype": "BYTES", "shape": [1], "parameters": {"content_type": "base64"},
                 "data": [__import__("base64").b64encode(clips[3]).decode()]}]})
            assert infer.status_code == 200, infer.text
            outputs = {output["name"]: output for output in infer.json()["outputs"]}
            assert outputs["label"]["data"] == [recognizer.predict(clips[3]).label]
            metrics = client.get("/metrics").text
            assert "mmer_batch_size_count" in metrics
    finally:
        serve.delete("mmer")


def test_the_app_builder_checks_its_arguments(tiny_model_dir):
    from mmer_rt.serve.ray import app, serve_app

    with pytest.raises(ValueError, match=r"unknown argument\(s\) bogus, replica; mmer_rt.serve.ray:app takes model"):
        app({"model": str(tiny_model_dir), "bogus": "1", "replica": "2"})
    with pytest.raises(ValueError, match="needs model=DIR"):
        app({"replicas": 2})
    with pytest.raises(ValueError, match="batching must be one of batcher, serve"):
        app({"model": str(tiny_model_dir), "batching": "ray"})
    with pytest.raises(ValueError, match="max_wait_ms must be >= 0"):
        app({"model": str(tiny_model_dir), "max_wait_ms": "-1"})
    with pytest.raises(ValueError, match="batching must be one of"):
        serve_app(tiny_model_dir, batching="none")
