"""Tests of the dynamic batcher (mmer_rt.serve.batcher) and of Recognizer.decode/predict_decoded, which it runs.

The scheduling rules are checked on a stand-in recognizer whose graph run can be held and released, so that what
runs together is decided by the rules and not by timing; equality with Recognizer.predict on the real tiny model.
"""

import asyncio
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
import soundfile

from mmer_rt import BatchBudget, Recognizer
from mmer_rt.errors import AudioError, InferenceError, TextError
from mmer_rt.recognizer import Decoded, Prediction
from mmer_rt.serve.batcher import (
    AudioTooLongError, BatchError, Batcher, BatcherConfig, QueueFullError, ShuttingDownError,
)
from test_recognizer_fixtures import noise, tiny_export, tiny_model_dir  # noqa: F401

REPO = Path(__file__).resolve().parent.parent
RATE = 16_000


class StandIn:
    """A Recognizer's face to the batcher: audio is a sample count; a run can be held until released."""

    def __init__(self, budget=BatchBudget(max_items=4, max_seconds=None), hold=False):
        self.batch_budget = budget
        self.manifest = type("Manifest", (), {"sample_rate": RATE})()
        self.labels = ["a", "b"]
        self.runs: list[list[int]] = []
        self.threads: set[str] = set()
        self.active = 0
        self.most_active = 0
        self.release = threading.Event()
        if not hold:
            self.release.set()
        self.fail_on: set[int] = set()  # a batch holding one of these lengths raises
        self.fail_alone: set[int] = set()  # these lengths get their own InferenceError, as onnxruntime's reruns give
        self._lock = threading.Lock()

    def decode(self, audio, text=None, sample_rate=None) -> Decoded:
        self.threads.add(threading.current_thread().name)
        if audio <= 0:
            raise AudioError(f"<{audio} samples>: the audio is empty")
        return Decoded((np.zeros(audio, np.float32),), text, audio / RATE, False)

    def predict_decoded(self, decoded, errors="raise"):
        assert errors == "return"  # the batcher wants each request's own error
        self.threads.add(threading.current_thread().name)
        with self._lock:
            self.active += 1
            self.most_active = max(self.most_active, self.active)
        try:
            assert self.release.wait(30), "the test never released the run"
            lengths = [len(item.waveforms[0]) for item in decoded]
            self.runs.append(lengths)
            if self.fail_on & set(lengths):
                raise RuntimeError("injected graph failure")
            return [InferenceError(f"item {i}: onnxruntime failed") if n in self.fail_alone else
                    Prediction(str(n), {str(n): 1.0}, item.text or "", "given", item.duration)
                    for i, (n, item) in enumerate(zip(lengths, decoded))]
        finally:
            with self._lock:
                self.active -= 1


async def until(condition, timeout=10.0):
    deadline = asyncio.get_running_loop().time() + timeout
    while not condition():
        assert asyncio.get_running_loop().time() < deadline, "condition not reached"
        await asyncio.sleep(0.005)


def test_concurrent_requests_share_one_batch_and_each_gets_its_own_answer():
    async def main():
        model = StandIn(BatchBudget(max_items=8, max_seconds=None))
        batcher = Batcher(model, BatcherConfig(max_wait_ms=10_000))  # only "full" can close these batches
        answers = await asyncio.gather(*(batcher.predict(n) for n in (800, 500, 700, 600, 900, 400, 300, 1000)))
        await batcher.close()
        return model, answers

    model, answers = asyncio.run(main())
    assert [a.label for a in answers] == ["800", "500", "700", "600", "900", "400", "300", "1000"]
    assert model.runs == [[1000, 900, 800, 700, 600, 500, 400, 300]]  # one graph run, longest first


def test_a_lone_request_runs_when_its_wait_runs_out():
    async def main():
        model = StandIn(BatchBudget(max_items=8, max_seconds=None))
        batcher = Batcher(model, BatcherConfig(max_wait_ms=20))
        answer = await batcher.predict(700)
        await batcher.close()
        return model, answer

    model, answer = asyncio.run(main())
    assert answer.label == "700" and model.runs == [[700]]


def test_a_full_batch_goes_at_once_and_a_lone_request_waits_for_company():
    async def main():
        model = StandIn(BatchBudget(max_items=3, max_seconds=None))
        batcher = Batcher(model, BatcherConfig(max_wait_ms=60_000))
        full = await asyncio.gather(*(batcher.predict(n) for n in (100, 200, 300)))  # no 60 s wait: full
        lone = asyncio.ensure_future(batcher.predict(400))
        await until(lambda: batcher.waiting == 1)
        await asyncio.sleep(0.2)
        runs_while_waiting = list(model.runs)
        await batcher.close()  # draining closes the waiting batch at once
        return [a.label for a in full], runs_while_waiting, (await lone).label, model.runs

    full, runs_while_waiting, lone, runs = asyncio.run(main())
    assert full == ["100", "200", "300"] and lone == "400"
    assert runs_while_waiting == [[300, 200, 100]]
    assert runs == [[300, 200, 100], [400]]


def test_the_padded_seconds_budget_closes_a_batch():
    async def main():
        model = StandIn(BatchBudget(max_items=16, max_seconds=1.0), hold=True)  # 16000 padded samples
        batcher = Batcher(model, BatcherConfig(max_wait_ms=0))
        first = asyncio.ensure_future(batcher.predict(100))
        await until(lambda: model.active == 1)
        rest = [asyncio.ensure_future(batcher.predict(n)) for n in (8000, 4000, 8000, 4000, 4000, 4000)]
        await until(lambda: batcher.waiting == 6)
        model.release.set()
        answers = await asyncio.gather(first, *rest)
        await batcher.close()
        return model.runs, answers

    runs, answers = asyncio.run(main())
    assert runs[0] == [100] and sorted(runs[1:]) == [[4000, 4000, 4000, 4000], [8000, 8000]]
    assert [a.label for a in answers] == ["100", "8000", "4000", "8000", "4000", "4000", "4000"]


def test_one_graph_run_at_a_time_and_requests_gather_while_it_runs():
    async def main():
        model = StandIn(BatchBudget(max_items=8, max_seconds=None), hold=True)
        batcher = Batcher(model, BatcherConfig(max_wait_ms=0))
        first = asyncio.ensure_future(batcher.predict(100))
        await until(lambda: model.active == 1)
        rest = [asyncio.ensure_future(batcher.predict(n)) for n in (200, 300, 400)]
        await until(lambda: batcher.waiting == 3)
        model.release.set()
        await asyncio.gather(first, *rest)
        await batcher.close()
        return model

    model = asyncio.run(main())
    assert model.runs == [[100], [400, 300, 200]]
    assert model.most_active == 1


def test_workers_run_batches_side_by_side():
    async def main():
        model = StandIn(BatchBudget(max_items=1, max_seconds=None), hold=True)
        batcher = Batcher(model, BatcherConfig(max_wait_ms=0, workers=2))
        tasks = [asyncio.ensure_future(batcher.predict(n)) for n in (100, 200, 300)]
        await until(lambda: model.active == 2)
        model.release.set()
        await asyncio.gather(*tasks)
        await batcher.close()
        return model

    model = asyncio.run(main())
    assert model.most_active == 2 and sorted(map(tuple, model.runs)) == [(100,), (200,), (300,)]


def test_decoding_and_graph_runs_happen_off_the_event_loop():
    async def main():
        model = StandIn()
        batcher = Batcher(model, BatcherConfig(max_wait_ms=0))
        await batcher.predict(100)
        await batcher.close()
        return model.threads, threading.current_thread().name

    threads, loop_thread = asyncio.run(main())
    assert loop_thread not in threads
    assert {name.split("_")[0] for name in threads} == {"mmer-decode", "mmer-graph"}


def test_a_full_queue_refuses_at_once_and_takes_requests_again_when_it_drains():
    async def main():
        model = StandIn(BatchBudget(max_items=1, max_seconds=None), hold=True)
        batcher = Batcher(model, BatcherConfig(max_wait_ms=0, max_queue=2))
        running = asyncio.ensure_future(batcher.predict(100))
        await until(lambda: model.active == 1)  # taken out of the queue: no longer counted
        queued = [asyncio.ensure_future(batcher.predict(n)) for n in (200, 300)]
        await until(lambda: batcher.queue_depth == 2)
        with pytest.raises(QueueFullError, match="queue is full"):
            await batcher.predict(400)
        model.release.set()
        await asyncio.gather(running, *queued)
        again = await batcher.predict(500)
        await batcher.close()
        return again

    assert asyncio.run(main()).label == "500"


def test_a_failed_graph_run_fails_only_its_own_batch():
    async def main():
        model = StandIn(BatchBudget(max_items=1, max_seconds=None))
        model.fail_on = {666}
        batcher = Batcher(model, BatcherConfig(max_wait_ms=0))
        results = await asyncio.gather(*(batcher.predict(n) for n in (100, 666, 200)), return_exceptions=True)
        after = await batcher.predict(300)
        await batcher.close()
        return results, after

    results, after = asyncio.run(main())
    assert [r.label for r in (results[0], results[2], after)] == ["100", "200", "300"]
    assert isinstance(results[1], BatchError) and "injected graph failure" in str(results[1])


def test_a_request_onnxruntime_fails_on_alone_gets_its_own_error_and_its_batch_the_answers():
    async def main():
        model = StandIn(BatchBudget(max_items=3, max_seconds=None))
        model.fail_alone = {200}
        batcher = Batcher(model, BatcherConfig(max_wait_ms=10_000))
        results = await asyncio.gather(*(batcher.predict(n) for n in (100, 200, 300)), return_exceptions=True)
        await batcher.close()
        return model.runs, results

    runs, results = asyncio.run(main())
    assert runs == [[300, 200, 100]]
    assert results[0].label == "100" and results[2].label == "300"
    assert isinstance(results[1], InferenceError)


def test_bad_input_fails_only_its_own_request_before_the_queue():
    async def main():
        model = StandIn(BatchBudget(max_items=8, max_seconds=None))
        batcher = Batcher(model, BatcherConfig(max_wait_ms=50))
        results = await asyncio.gather(*(batcher.predict(n) for n in (100, 0, 200)), return_exceptions=True)
        await batcher.close()
        return model.runs, results

    runs, results = asyncio.run(main())
    assert isinstance(results[1], AudioError) and results[0].label == "100" and results[2].label == "200"
    assert sorted(n for run in runs for n in run) == [100, 200]  # the bad one never reached a graph run


def test_a_cancelled_request_leaves_the_queue_unrun():
    async def main():
        model = StandIn(BatchBudget(max_items=8, max_seconds=None), hold=True)
        batcher = Batcher(model, BatcherConfig(max_wait_ms=0))
        running = asyncio.ensure_future(batcher.predict(100))
        await until(lambda: model.active == 1)
        gone = asyncio.ensure_future(batcher.predict(200))
        kept = asyncio.ensure_future(batcher.predict(300))
        await until(lambda: batcher.waiting == 2)
        gone.cancel()  # what a client that disconnects does to its request
        model.release.set()
        await asyncio.gather(running, kept)
        await batcher.close()
        return model.runs, batcher.queue_depth

    runs, depth = asyncio.run(main())
    assert runs == [[100], [300]] and depth == 0


def test_close_answers_every_accepted_request_then_refuses():
    async def main():
        model = StandIn(BatchBudget(max_items=2, max_seconds=None), hold=True)
        batcher = Batcher(model, BatcherConfig(max_wait_ms=10_000))
        tasks = [asyncio.ensure_future(batcher.predict(n)) for n in (100, 200, 300, 400, 500)]
        await until(lambda: model.active == 1 and batcher.waiting == 3)
        closing = asyncio.ensure_future(batcher.close())
        await asyncio.sleep(0.05)
        with pytest.raises(ShuttingDownError):
            await batcher.predict(600)
        model.release.set()
        await closing
        return [t.result().label for t in tasks], model.runs

    labels, runs = asyncio.run(main())
    assert labels == ["100", "200", "300", "400", "500"]
    assert sorted(n for run in runs for n in run) == [100, 200, 300, 400, 500]


def test_bad_configurations_are_refused():
    for kwargs in ({"max_wait_ms": -1}, {"max_queue": 0}, {"workers": 0}, {"decode_threads": 1.5},
                   {"max_audio_seconds": 0}):
        with pytest.raises(ValueError, match="must be"):
            BatcherConfig(**kwargs)


# The real model: answers through the batcher equal Recognizer.predict, whatever shared the batch.

@pytest.fixture(scope="module")
def recognizer(tiny_model_dir):
    return Recognizer.from_dir(tiny_model_dir, device="cpu", precision="fp32",
                               batch_budget=BatchBudget(max_items=8, max_seconds=None))


def wav_bytes(samples: np.ndarray, rate: int = RATE) -> bytes:
    import io

    buffer = io.BytesIO()
    soundfile.write(buffer, samples, rate, format="WAV", subtype="FLOAT")
    return buffer.getvalue()


def mixed_requests(count=12):
    """Clips of 0.05 to 0.9 s (some over the tiny model's 0.5 s limit), files and arrays, with and without text."""
    rng = np.random.default_rng(3)
    requests = []
    for index in range(count):
        samples = noise(int(rng.integers(800, 14_400)), seed=index)
        text = ["we lost the house", None, "okay fine whatever"][index % 3]
        audio = wav_bytes(samples) if index % 2 else wav_bytes(samples, 22_050)
        requests.append((audio, text))
    return requests


def test_recognizer_decode_then_predict_decoded_equals_predict(recognizer):
    requests = mixed_requests(6)
    decoded = [recognizer.decode(audio, text) for audio, text in requests]
    together = recognizer.predict_decoded(decoded)
    for (audio, text), got in zip(requests, together):
        alone = recognizer.predict(audio, text)
        assert got.label == alone.label and got.transcript == alone.transcript
        assert got.truncated == alone.truncated and got.duration == alone.duration
        np.testing.assert_allclose([got.scores[k] for k in recognizer.labels],
                                   [alone.scores[k] for k in recognizer.labels], atol=1e-5)


def test_recognizer_decode_raises_as_predict_does(recognizer):
    with pytest.raises(AudioError, match="empty"):
        recognizer.decode(np.zeros(0, np.float32), sample_rate=RATE)
    with pytest.raises(TextError, match="must be a str"):
        recognizer.decode(noise(RATE), 5, sample_rate=RATE)


def test_windowed_requests_through_the_batcher_equal_predict(tiny_model_dir):
    windowed = Recognizer.from_dir(tiny_model_dir, device="cpu", precision="fp32", long_audio="window",
                                   batch_budget=BatchBudget(max_items=3, max_seconds=None))
    requests = [(noise(n, seed=n), None) for n in (20_000, 3_000, 9_000, 16_500)]

    async def main():
        batcher = Batcher(windowed, BatcherConfig(max_wait_ms=50))
        answers = await asyncio.gather(*(batcher.predict(audio, text, RATE) for audio, text in requests))
        await batcher.close()
        return answers

    for (audio, text), got in zip(requests, asyncio.run(main())):
        alone = windowed.predict(audio, text, sample_rate=RATE)
        assert got.windows == alone.windows and got.transcript == alone.transcript
        np.testing.assert_allclose(list(got.scores.values()), list(alone.scores.values()), atol=1e-5)


def test_concurrent_mixed_lengths_through_the_batcher_equal_predict(recognizer):
    requests = mixed_requests(12)
    sizes = []

    async def main():
        batcher = Batcher(recognizer, BatcherConfig(max_wait_ms=200, decode_threads=2))
        batcher.add_observer(lambda report: sizes.append(report.requests))
        answers = await asyncio.gather(*(batcher.predict(audio, text) for audio, text in requests))
        await batcher.close()
        return answers

    answers = asyncio.run(main())
    assert max(sizes) > 1 and sum(sizes) == len(requests)  # they really shared batches
    for (audio, text), got in zip(requests, answers):
        alone = recognizer.predict(audio, text)
        assert got.label == alone.label and got.transcript_source == alone.transcript_source
        np.testing.assert_allclose([got.scores[k] for k in recognizer.labels],
                                   [alone.scores[k] for k in recognizer.labels], atol=1e-5)


def test_audio_over_the_limit_is_refused_from_its_header(recognizer):
    long_clip = wav_bytes(noise(3 * RATE))

    async def main():
        batcher = Batcher(recognizer, BatcherConfig(max_audio_seconds=2.0))
        try:
            with pytest.raises(AudioTooLongError, match="header says 3.0 s"):
                await batcher.predict(long_clip)
            with pytest.raises(AudioTooLongError, match="3.0 s, more than"):
                await batcher.predict(noise(3 * RATE), sample_rate=RATE)  # an array has no header
            return await batcher.predict(wav_bytes(noise(RATE)))
        finally:
            await batcher.close()

    assert asyncio.run(main()).duration == 1.0


def test_the_batcher_needs_no_web_framework_and_the_core_never_imports_the_serve_package():
    script = (
        "import importlib.abc, sys\n"
        "class Block(importlib.abc.MetaPathFinder):\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name.split('.')[0] in {'fastapi', 'starlette', 'uvicorn', 'prometheus_client',"
        " 'python_multipart', 'multipart'}:\n"
        "            raise ImportError(name + ' is blocked')\n"
        "sys.meta_path.insert(0, Block())\n"
        "import mmer_rt, mmer_rt.cli\n"
        "assert not [m for m in sys.modules if m.startswith('mmer_rt.serve')], 'core imported mmer_rt.serve'\n"
        "import mmer_rt.serve.batcher\n"
        "print('ok')\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=REPO, timeout=60)
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr


def test_serve_without_the_extra_says_how_to_install_it():
    script = (
        "import importlib.abc, sys\n"
        "class Block(importlib.abc.MetaPathFinder):\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name.split('.')[0] in {'fastapi', 'uvicorn'}:\n"
        "            raise ImportError(name + ' is blocked')\n"
        "sys.meta_path.insert(0, Block())\n"
        "from mmer_rt.cli import main\n"
        "sys.exit(main(['serve', '--model', 'no-such-dir']))\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=REPO, timeout=60)
    assert done.returncode == 1 and "pip install 'mmer-rt[serve]'" in done.stderr, done.stderr


def test_serve_options_are_checked_before_anything_loads():
    from mmer_rt.cli import main

    for options in (["--port", "0"], ["--max-batch", "0"], ["--max-wait-ms", "-1"], ["--max-body-mb", "nan"]):
        with pytest.raises(SystemExit) as stopped:
            main(["serve", "--model", "no-such-dir", *options])
        assert stopped.value.code == 2
