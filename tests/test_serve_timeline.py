"""POST /v1/timeline on a real server process: the same segments as the timeline in process, speakers from an
uploaded RTTM, words from an uploaded SRT, stereo calls as a raw body, and bad uploads refused with their line."""

from __future__ import annotations

import signal

import httpx
import numpy as np
import pytest
import soundfile

from mmer_rt import Recognizer, BatchBudget
from mmer_rt.timeline import timeline
from serve_harness import ServerProcess, serve_command
from test_recognizer_fixtures import noise, tiny_export, tiny_model_dir  # noqa: F401
from training.synth_call import write_call, write_rttm, write_srt

BATCH = 8


@pytest.fixture(scope="module")
def server(tiny_model_dir, tmp_path_factory):
    process = ServerProcess(
        serve_command(tiny_model_dir, "--precision", "fp32", "--max-batch", str(BATCH), "--threads", "1"),
        tmp_path_factory.mktemp("timeline_server") / "server.log",
    ).wait_ready()
    yield process
    assert process.stop(signal.SIGTERM) == 0, process.log()


@pytest.fixture(scope="module")
def call(synthetic_corpus, tmp_path_factory):
    folder = tmp_path_factory.mktemp("served_call")
    turns = write_call(folder / "call.wav", synthetic_corpus, 12.0, seed=21)
    write_rttm(folder / "call.rttm", turns, "call")
    write_srt(folder / "call.srt", turns)
    stereo_turns = write_call(folder / "stereo.wav", synthetic_corpus, 25.0, seed=22, stereo=True)
    assert len({t.speaker for t in stereo_turns}) == 2
    return folder, turns


def test_the_served_timeline_equals_the_timeline_in_process(server, call, tiny_model_dir):
    folder, turns = call
    files = {"audio": ("call.wav", (folder / "call.wav").read_bytes(), "audio/wav"),
             "rttm": ("call.rttm", (folder / "call.rttm").read_bytes(), "text/plain"),
             "transcript": ("call.srt", (folder / "call.srt").read_bytes(), "text/plain")}
    answer = httpx.post(f"{server.url}/v1/timeline", files=files, timeout=120)
    assert answer.status_code == 200, answer.text
    served = answer.json()
    recognizer = Recognizer.from_dir(tiny_model_dir, device="cpu", precision="fp32", threads=1,
                                     batch_budget=BatchBudget(max_items=BATCH))
    local = timeline(recognizer, folder / "call.wav", speakers=folder / "call.rttm",
                     transcript=folder / "call.srt").to_dict()
    assert served["segments"] and len(served["segments"]) == len(local["segments"])
    for mine, theirs in zip(local["segments"], served["segments"]):
        assert {k: v for k, v in theirs.items() if k != "scores"} == {k: v for k, v in mine.items() if k != "scores"}
        assert theirs["scores"] == pytest.approx(mine["scores"], abs=1e-5)
    assert {s["speaker"] for s in served["segments"]} == {t.speaker for t in turns}
    assert {s["transcript_source"] for s in served["segments"]} <= {"given", "ctc"}
    assert [entry["speaker"] for entry in served["summary"]] == [entry["speaker"] for entry in local["summary"]]


def test_a_stereo_body_with_channels_as_speakers(server, call):
    folder, _ = call
    answer = httpx.post(f"{server.url}/v1/timeline?channels_as_speakers=true", timeout=120,
                        content=(folder / "stereo.wav").read_bytes(), headers={"content-type": "audio/wav"})
    assert answer.status_code == 200, answer.text
    assert {s["speaker"] for s in answer.json()["segments"]} == {"channel 1", "channel 2"}


def test_silence_gives_an_empty_timeline(server, tmp_path):
    soundfile.write(tmp_path / "hiss.wav", noise(32_000, amplitude=0.003), 16_000)
    answer = httpx.post(f"{server.url}/v1/timeline", content=(tmp_path / "hiss.wav").read_bytes(),
                        headers={"content-type": "application/octet-stream"}, timeout=60)
    assert answer.status_code == 200 and answer.json()["segments"] == [] and answer.json()["summary"] == []


def test_bad_uploads_are_refused_saying_why(server, call):
    folder, _ = call
    audio = ("call.wav", (folder / "call.wav").read_bytes(), "audio/wav")
    bad_rttm = ("x.rttm", b"SPEAKER call 1 0.5 1.0 <NA> <NA> a <NA> <NA>\nSPEAKER call 1 x 1 <NA> <NA> a <NA> <NA>\n")
    answer = httpx.post(f"{server.url}/v1/timeline", files={"audio": audio, "rttm": bad_rttm}, timeout=60)
    assert answer.status_code == 422 and "line 2:" in answer.json()["error"]
    assert answer.json()["error_type"] == "TimelineError"
    answer = httpx.post(f"{server.url}/v1/timeline", files={"audio": audio, "transcript": ("words.txt", b"hi")},
                        timeout=60)
    assert answer.status_code == 400 and ".vtt, .srt or .json" in answer.json()["error"]
    answer = httpx.post(f"{server.url}/v1/timeline", content=b"not audio", timeout=60,
                        headers={"content-type": "audio/wav"})
    assert answer.status_code == 422 and answer.json()["error_type"] == "AudioError"
    answer = httpx.post(f"{server.url}/v1/timeline", content=b"{}", headers={"content-type": "application/json"})
    assert answer.status_code == 415
