"""Tests of `mmer-rt serve` as a real server process on a free loopback port, driven by real HTTP clients.

Each server is started by a fixture, used, then stopped with SIGTERM: its exit status must be 0 and its log must say
it drained. Answers are compared with Recognizer.predict on the same input in this process (fp32, within 1e-5).
"""

import base64
import io
import signal
import socket
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import numpy as np
import pytest
import soundfile

from mmer_rt import Recognizer
from serve_harness import ServerProcess, hooked_command, metric, serve_command
from serve_hooked import FAIL_TEXT, HOLD_TEXT
from test_recognizer_fixtures import noise, tiny_export, tiny_model_dir  # noqa: F401

RATE = 16_000
TEXTS = ("we lost the house", None, "okay fine whatever", "leave me alone please")


def wav(samples: np.ndarray, rate: int = RATE, subtype: str = "PCM_16") -> bytes:
    buffer = io.BytesIO()
    soundfile.write(buffer, samples, rate, format="WAV", subtype=subtype)
    return buffer.getvalue()


def clips(count: int, seed: int = 0) -> list[tuple[bytes, str | None]]:
    """Mixed lengths (0.06-0.9 s: the tiny model hears 0.5 s), rates and transcripts."""
    rng = np.random.default_rng(seed)
    return [(wav(noise(int(rng.integers(1_000, 14_400)), seed=seed * 100 + i), [RATE, 22_050, 8_000][i % 3]),
             TEXTS[i % len(TEXTS)]) for i in range(count)]


def stop_and_check_drained(server: ServerProcess, sig=signal.SIGTERM) -> None:
    status = server.stop(sig)
    log = server.log()
    assert status == 0, log
    assert "drained; stopped" in log and "Traceback" not in log.split("Shutting down")[-1], log


@pytest.fixture(scope="module")
def recognizer(tiny_model_dir):
    return Recognizer.from_dir(tiny_model_dir, device="cpu", precision="fp32")


@pytest.fixture(scope="module")
def server(tiny_model_dir, tmp_path_factory):
    """The plain command: fp32, batches of up to 8, 200 ms of waiting for company, 1 MiB bodies, 2 s of audio."""
    process = ServerProcess(
        serve_command(tiny_model_dir, "--precision", "fp32", "--max-batch", "8", "--max-wait-ms", "200",
                      "--max-body-mb", "1", "--max-audio-seconds", "2", "--threads", "1"),
        tmp_path_factory.mktemp("server") / "server.log",
    ).wait_ready()
    yield process
    stop_and_check_drained(process)


@pytest.fixture(scope="module")
def hooked(tiny_model_dir, tmp_path_factory):
    """One request per batch, a queue of 2, and the test hooks (FAIL_TEXT fails a batch, HOLD_TEXT holds it)."""
    folder = tmp_path_factory.mktemp("hooked")
    process = ServerProcess(
        hooked_command(tiny_model_dir, folder / "gate", "--precision", "fp32", "--max-batch", "1",
                       "--max-wait-ms", "0", "--max-queue", "2", "--threads", "1"),
        folder / "server.log",
    ).wait_ready()
    process.gate = folder / "gate"
    yield process
    process.gate.touch()
    stop_and_check_drained(process)


def assert_same(answer: dict, expected, labels) -> None:
    assert answer["label"] == expected.label
    assert answer["transcript"] == expected.transcript
    assert answer["transcript_source"] == expected.transcript_source
    assert answer["truncated"] == expected.truncated and answer["duration"] == pytest.approx(expected.duration)
    scores = [item["score"] for item in answer["scores"]]
    assert scores == sorted(scores, reverse=True)  # highest first, the transformers pipeline's convention
    got = {item["label"]: item["score"] for item in answer["scores"]}
    np.testing.assert_allclose([got[k] for k in labels], [expected.scores[k] for k in labels], atol=1e-5)


def post_predict(url: str, audio: bytes, text: str | None, raw: bool) -> httpx.Response:
    if raw:
        return httpx.post(f"{url}/v1/predict", content=audio, headers={"content-type": "audio/wav"},
                          params={"text": text} if text is not None else None, timeout=60)
    data = {"text": text} if text is not None else None
    return httpx.post(f"{url}/v1/predict", files={"audio": ("clip.wav", audio, "audio/wav")}, data=data, timeout=60)


def test_it_logs_where_it_listens(server):
    assert f"listening on http://127.0.0.1:{server.port}" in server.log()


def test_concurrent_mixed_requests_equal_recognizer_predict_and_share_batches(server, recognizer):
    requests = clips(16, seed=1)
    before = metric(httpx.get(f"{server.url}/metrics").text, "mmer_batch_size_count") or 0.0
    with ThreadPoolExecutor(16) as pool:
        responses = list(pool.map(lambda i: post_predict(server.url, *requests[i], raw=bool(i % 2)), range(16)))
    for (audio, text), response in zip(requests, responses):
        assert response.status_code == 200, response.text
        assert_same(response.json(), recognizer.predict(audio, text), recognizer.labels)
    batches = metric(httpx.get(f"{server.url}/metrics").text, "mmer_batch_size_count") - before
    assert batches < len(requests)  # some answers came out of the same graph run


def test_kserve_v2_with_the_triton_client(server, recognizer):
    import tritonclient.http as triton

    client = triton.InferenceServerClient(f"127.0.0.1:{server.port}")
    try:
        assert client.is_server_live() and client.is_server_ready() and client.is_model_ready("mmer")
        metadata = client.get_model_metadata("mmer")
        assert [i["name"] for i in metadata["inputs"]] == ["audio", "text"]
        assert {o["name"] for o in metadata["outputs"]} == {"label", "scores", "labels"}
        requests = clips(3, seed=2)
        audio = triton.InferInput("audio", [3], "BYTES")
        audio.set_data_from_numpy(np.array([a for a, _ in requests], dtype=object))  # binary data by default
        text = triton.InferInput("text", [3], "BYTES")
        text.set_data_from_numpy(np.array([(t or "").encode() for _, t in requests], dtype=object))
        result = client.infer("mmer", [audio, text], request_id="r-1")
        assert result.get_response()["id"] == "r-1"
        labels = [label.decode() for label in result.as_numpy("labels")]
        assert labels == recognizer.labels
        for (clip, transcript), label, scores in zip(requests, result.as_numpy("label"), result.as_numpy("scores")):
            expected = recognizer.predict(clip, transcript or "")
            assert label.decode() == expected.label
            np.testing.assert_allclose(scores, [expected.scores[k] for k in labels], atol=1e-5)
        # audio alone, outputs asked for by name: JSON for one, binary for the other
        only = triton.InferInput("audio", [1], "BYTES")
        only.set_data_from_numpy(np.array([requests[0][0]], dtype=object))
        result = client.infer("mmer", [only], outputs=[triton.InferRequestedOutput("label", binary_data=False),
                                                      triton.InferRequestedOutput("scores")])
        expected = recognizer.predict(requests[0][0])
        assert result.as_numpy("label")[0] == expected.label and result.as_numpy("labels") is None  # JSON: str
        np.testing.assert_allclose(result.as_numpy("scores")[0], [expected.scores[k] for k in labels], atol=1e-5)
    finally:
        client.close()


def test_kserve_v2_json_with_base64_audio(server, recognizer):
    clip, transcript = clips(1, seed=3)[0]
    request = {
        "id": "json-1",
        "inputs": [
            {"name": "audio", "datatype": "BYTES", "shape": [1], "parameters": {"content_type": "base64"},
             "data": [base64.b64encode(clip).decode()]},
            {"name": "text", "datatype": "BYTES", "shape": [1], "data": [transcript]},
        ],
    }
    response = httpx.post(f"{server.url}/v2/models/mmer/infer", json=request, timeout=60)
    assert response.status_code == 200, response.text
    answer = response.json()
    assert answer["model_name"] == "mmer" and answer["id"] == "json-1"
    outputs = {o["name"]: o for o in answer["outputs"]}
    expected = recognizer.predict(clip, transcript)
    assert outputs["label"]["data"] == [expected.label] and outputs["scores"]["shape"] == [1, 4]
    np.testing.assert_allclose(outputs["scores"]["data"], [expected.scores[k] for k in outputs["labels"]["data"]],
                               atol=1e-5)


@pytest.mark.parametrize("request_body, message", [
    ({"inputs": [{"name": "speech", "datatype": "BYTES", "shape": [1], "data": ["x"]}]}, "unknown input"),
    ({"inputs": [{"name": "audio", "datatype": "FP32", "shape": [1], "data": [1.0]}]}, "datatype must be BYTES"),
    ({"inputs": [{"name": "audio", "datatype": "BYTES", "shape": [1], "data": ["RIFF"]}]}, "must be base64"),
    ({"inputs": [{"name": "audio", "datatype": "BYTES", "shape": [2], "parameters": {"content_type": "base64"},
                  "data": ["AAAA"]}]}, "does not hold"),
    ({"inputs": [{"name": "audio", "datatype": "BYTES", "shape": [1], "parameters": {"content_type": "base64"},
                  "data": ["%%%"]}]}, "invalid base64"),
    ({"inputs": []}, "needs a non-empty BYTES input 'audio'"),
    ({"instances": [1]}, "list 'inputs'"),
])
def test_malformed_kserve_requests_get_400(server, request_body, message):
    response = httpx.post(f"{server.url}/v2/models/mmer/infer", json=request_body, timeout=30)
    assert response.status_code == 400 and response.json()["error_type"] == "RequestError"
    assert message in response.json()["error"]


def test_a_binary_header_length_past_the_body_gets_400(server):
    response = httpx.post(f"{server.url}/v2/models/mmer/infer", content=b'{"inputs": []}',
                          headers={"Inference-Header-Content-Length": "999"}, timeout=30)
    assert response.status_code == 400 and "Inference-Header-Content-Length" in response.json()["error"]


def test_bad_audio_and_text_get_422_with_the_runtime_error_type(server):
    corrupt = wav(noise(RATE))[:44] + b"\x00garbage" * 10
    cases = [
        post_predict(server.url, b"not audio at all", None, raw=True),
        post_predict(server.url, corrupt[:30], "hello", raw=False),
        httpx.post(f"{server.url}/v1/predict", content=b"", headers={"content-type": "audio/wav"}),
    ]
    for response in cases:
        assert response.status_code == 422, response.text
        assert response.json()["error_type"] == "AudioError" and response.json()["error"]
    text = {"inputs": [
        {"name": "audio", "datatype": "BYTES", "shape": [1], "parameters": {"content_type": "base64"},
         "data": [base64.b64encode(wav(noise(RATE))).decode()]},
        {"name": "text", "datatype": "BYTES", "shape": [1], "parameters": {"content_type": "base64"},
         "data": [base64.b64encode(b"\xff\xfe broken").decode()]}]}
    response = httpx.post(f"{server.url}/v2/models/mmer/infer", json=text, timeout=30)
    assert response.status_code == 422 and response.json()["error_type"] == "TextError"


def test_a_request_without_audio_gets_400_or_415(server):
    response = httpx.post(f"{server.url}/v1/predict", data={"text": "hello"}, files={"other": ("x", b"1")})
    assert response.status_code == 400 and "'audio'" in response.json()["error"]
    response = httpx.post(f"{server.url}/v1/predict", content=b"hello", headers={"content-type": "text/plain"})
    assert response.status_code == 415 and response.json()["error_type"] == "UnsupportedMediaTypeError"


def test_a_body_over_the_limit_gets_413_before_it_is_sent(server):
    # Headers announce 5 MiB and not a byte of it is sent: the answer must come anyway.
    with socket.create_connection(("127.0.0.1", server.port), timeout=30) as conn:
        conn.sendall(b"POST /v1/predict HTTP/1.1\r\nHost: x\r\nContent-Type: audio/wav\r\n"
                     b"Content-Length: 5242880\r\n\r\n")
        answer = read_http_response(conn)
    assert answer.startswith("HTTP/1.1 413") and "BodyTooLargeError" in answer


def read_http_response(conn: socket.socket) -> str:
    """One whole HTTP/1.1 response: the head, then as many body bytes as its Content-Length says (a response can
    arrive in several packets, so one recv may hold only the head)."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = conn.recv(65536)
        if not chunk:
            return data.decode(errors="replace")
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    length = next((int(line.split(b":", 1)[1]) for line in head.split(b"\r\n")
                   if line.lower().startswith(b"content-length:")), None)
    while length is not None and len(body) < length:
        chunk = conn.recv(65536)
        if not chunk:
            break
        body += chunk
    return (head + b"\r\n\r\n" + body).decode(errors="replace")


def test_a_chunked_body_over_the_limit_gets_413(server):
    def chunks():  # no Content-Length: the limit is enforced while reading
        for _ in range(40):
            yield b"\x00" * 65536

    response = httpx.post(f"{server.url}/v1/predict", content=chunks(), headers={"content-type": "audio/wav"},
                          timeout=30)
    assert response.status_code == 413 and response.json()["error_type"] == "BodyTooLargeError"


def test_audio_over_the_limit_gets_413(server):
    response = post_predict(server.url, wav(noise(3 * RATE)), None, raw=True)
    assert response.status_code == 413 and response.json()["error_type"] == "AudioTooLongError"


def test_metrics_and_the_openapi_page(server):
    assert post_predict(server.url, *clips(1, seed=4)[0], raw=True).status_code == 200
    text = httpx.get(f"{server.url}/metrics").text
    assert metric(text, "mmer_requests_total", route="/v1/predict", status="200") >= 1
    assert metric(text, "mmer_request_duration_seconds_bucket", route="/v1/predict", le="0.001") is not None
    assert metric(text, "mmer_request_duration_seconds_bucket", route="/v1/predict", le="30.0") is not None
    assert metric(text, "mmer_queue_depth") == 0
    assert metric(text, "mmer_batch_size_count") >= 1 and metric(text, "mmer_audio_seconds_total") > 0
    spec = httpx.get(f"{server.url}/openapi.json").json()
    assert {"/v1/predict", "/v2/models/mmer/infer", "/v2/health/ready", "/metrics"} <= set(spec["paths"])
    assert "multipart/form-data" in spec["paths"]["/v1/predict"]["post"]["requestBody"]["content"]
    assert httpx.get(f"{server.url}/docs").status_code == 200
    missing = httpx.get(f"{server.url}/v2/models/other-model")
    assert missing.status_code == 404 and missing.json()["error_type"] == "HTTPError"
    text = httpx.get(f"{server.url}/metrics").text
    assert metric(text, "mmer_requests_total", route="other", status="404") >= 1  # no label per unknown path


# Faults, on the hooked server: one request per batch, a queue of two.

def metrics_of(server) -> str:
    return httpx.get(f"{server.url}/metrics", timeout=10).text


def wait_for(condition, timeout=30.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(0.02)


def test_an_internal_failure_fails_only_its_batch_and_the_server_goes_on(hooked, recognizer):
    hooked.gate.touch()
    requests = clips(2, seed=5)
    requests[1] = (requests[1][0], FAIL_TEXT)
    with ThreadPoolExecutor(2) as pool:  # side by side, in batches of their own (--max-batch 1)
        responses = list(pool.map(lambda r: post_predict(hooked.url, *r, raw=True), requests))
    assert responses[1].status_code == 500 and responses[1].json()["error_type"] == "BatchError"
    assert "injected failure" in responses[1].json()["error"]
    assert responses[0].status_code == 200
    assert_same(responses[0].json(), recognizer.predict(*requests[0]), recognizer.labels)
    for audio, text in clips(2, seed=8):  # and the server goes on
        after = post_predict(hooked.url, audio, text, raw=False)
        assert after.status_code == 200
        assert_same(after.json(), recognizer.predict(audio, text), recognizer.labels)
    assert metric(metrics_of(hooked), "mmer_batch_failures_total") == 1


def test_a_full_queue_gets_503_with_retry_after_and_recovers(hooked):
    hooked.gate.unlink(missing_ok=True)
    clip = wav(noise(RATE))
    with ThreadPoolExecutor(3) as pool:
        held = pool.submit(post_predict, hooked.url, clip, HOLD_TEXT, True)
        wait_for(lambda: metric(metrics_of(hooked), "mmer_batches_running") == 1)  # out of the queue, held
        queued = [pool.submit(post_predict, hooked.url, clip, "queued", True) for _ in range(2)]
        wait_for(lambda: metric(metrics_of(hooked), "mmer_queue_depth") == 2)
        refused = post_predict(hooked.url, clip, "one too many", raw=True)
        assert refused.status_code == 503 and refused.headers["retry-after"] == "1"
        assert refused.json()["error_type"] == "QueueFullError"
        hooked.gate.touch()
        assert held.result(60).status_code == 200 and [q.result(60).status_code for q in queued] == [200, 200]
    assert post_predict(hooked.url, clip, None, raw=True).status_code == 200


def test_clients_that_disconnect_cost_the_others_nothing(hooked, recognizer):
    hooked.gate.unlink(missing_ok=True)
    clip = wav(noise(RATE))
    before = metrics_of(hooked)
    errors_before = metric(before, "mmer_requests_total", route="/v1/predict", status="500") or 0
    gone_before = metric(before, "mmer_requests_total", route="/v1/predict", status="499") or 0
    batches_before = metric(before, "mmer_batch_size_count") or 0
    with ThreadPoolExecutor(2) as pool:
        held = pool.submit(post_predict, hooked.url, clip, HOLD_TEXT, True)
        wait_for(lambda: metric(metrics_of(hooked), "mmer_batches_running") == 1)
        # One client leaves halfway through its body, another after sending a whole request, before the answer.
        with socket.create_connection(("127.0.0.1", hooked.port), timeout=30) as conn:
            conn.sendall(b"POST /v1/predict HTTP/1.1\r\nHost: x\r\nContent-Type: audio/wav\r\n"
                         b"Content-Length: 100000\r\n\r\n" + clip[:1000])
        with socket.create_connection(("127.0.0.1", hooked.port), timeout=30) as conn:
            conn.sendall(b"POST /v1/predict HTTP/1.1\r\nHost: x\r\nContent-Type: audio/wav\r\n"
                         + f"Content-Length: {len(clip)}\r\n\r\n".encode() + clip)
            wait_for(lambda: metric(metrics_of(hooked), "mmer_queue_depth") == 1)  # accepted, waiting
        wait_for(lambda: metric(metrics_of(hooked), "mmer_queue_depth") == 0)  # ... and gone with its client
        hooked.gate.touch()
        assert held.result(60).status_code == 200
        wait_for(lambda: metric(metrics_of(hooked), "mmer_batch_size_count") == batches_before + 1)
    wait_for(lambda: metric(metrics_of(hooked), "mmer_queue_depth") == 0)  # the gone client's request too
    requests = clips(2, seed=6)
    with ThreadPoolExecutor(2) as pool:  # the queue holds two
        responses = list(pool.map(lambda r: post_predict(hooked.url, *r, raw=False), requests))
    for (audio, text), response in zip(requests, responses):
        assert response.status_code == 200
        assert_same(response.json(), recognizer.predict(audio, text), recognizer.labels)
    text = metrics_of(hooked)
    assert (metric(text, "mmer_requests_total", route="/v1/predict", status="500") or 0) == errors_before
    assert metric(text, "mmer_requests_total", route="/v1/predict", status="499") == gone_before + 2
    assert metric(text, "mmer_batch_size_count") == batches_before + 3  # the held one and the two above: the
    # request whose client left never reached a graph run


def test_sigterm_finishes_the_accepted_requests_then_exits(tiny_model_dir, tmp_path, recognizer):
    gate = tmp_path / "gate"
    server = ServerProcess(hooked_command(tiny_model_dir, gate, "--precision", "fp32", "--max-batch", "2",
                                          "--max-wait-ms", "0", "--threads", "1"), tmp_path / "server.log")
    server.wait_ready()
    try:
        requests = [(wav(noise(RATE, seed=1)), HOLD_TEXT)] + clips(4, seed=7)
        with ThreadPoolExecutor(5) as pool:
            first = pool.submit(post_predict, server.url, *requests[0], True)
            wait_for(lambda: metric(metrics_of(server), "mmer_batches_running") == 1)
            rest = [pool.submit(post_predict, server.url, *r, False) for r in requests[1:]]
            wait_for(lambda: metric(metrics_of(server), "mmer_queue_depth") == 4)
            server.process.send_signal(signal.SIGTERM)
            time.sleep(1.0)
            assert server.process.poll() is None  # still answering what it accepted
            with pytest.raises(httpx.TransportError):  # ... and no longer listening
                httpx.get(f"{server.url}/v2/health/live", timeout=5)
            gate.touch()
            responses = [first.result(60)] + [r.result(60) for r in rest]
        assert [r.status_code for r in responses] == [200] * 5
        for (audio, text), response in zip(requests[1:], responses[1:]):
            assert_same(response.json(), recognizer.predict(audio, text), recognizer.labels)
        stop_and_check_drained(server, sig=None)  # the SIGTERM above
    finally:
        gate.touch()
        server.kill()
