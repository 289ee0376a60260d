"""Tests of offline scoring in this process (mmer-rt score without --ray): results, per-row errors, resumption."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import soundfile

from mmer_rt import Recognizer
from mmer_rt.cli import main
from mmer_rt.errors import ManifestError, ResultsError
from mmer_rt.serve.score import finished_ids, read_items, score
from test_recognizer_fixtures import noise, tiny_export, tiny_model_dir  # noqa: F401

RATE = 16_000
GOOD = 14
# The bad rows a scoring job must record and go past: each id, the error type it must get.
BAD = {"corrupt": "AudioError", "missing": "AudioError", "too_short": "AudioError", "number_text": "TextError"}
OPTIONS = {"device": "cpu", "precision": "fp32"}


def make_corpus(folder: Path) -> Path:
    """A manifest of GOOD clips of various lengths (half with transcripts, with training's extra fields) and the
    BAD rows, in a mixed order; audio paths relative to the manifest."""
    (folder / "wav").mkdir(parents=True)
    rows = []
    for i in range(GOOD):
        soundfile.write(folder / "wav" / f"clip{i}.wav", noise(1_500 + 700 * i, seed=i), RATE)
        rows.append({"id": f"clip{i}", "audio": f"wav/clip{i}.wav", "text": "we lost the house" if i % 2 else None,
                     "label": "sad", "speaker": f"v{i % 3}", "session": "Session1"})
    (folder / "wav" / "corrupt.wav").write_bytes(b"RIFF but not really a wave file")
    soundfile.write(folder / "wav" / "too_short.wav", noise(30, seed=99), RATE)  # under the 60-sample field
    bad = [{"id": "corrupt", "audio": "wav/corrupt.wav"}, {"id": "missing", "audio": "wav/absent.wav"},
           {"id": "too_short", "audio": "wav/too_short.wav", "text": "hi"},
           {"id": "number_text", "audio": "wav/clip0.wav", "text": 42}]
    for position, row in zip((1, 5, 9, 12), bad):
        rows.insert(position, row)
    manifest = folder / "manifest.jsonl"
    manifest.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return manifest


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    return make_corpus(tmp_path_factory.mktemp("score_corpus"))


@pytest.fixture(scope="module")
def recognizer(tiny_model_dir):
    return Recognizer.from_dir(tiny_model_dir, **OPTIONS)


def read_rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def check_rows(rows: list[dict], corpus: Path, recognizer: Recognizer) -> None:
    """Every id of the manifest exactly once; good rows equal Recognizer.predict alone; bad rows typed errors."""
    ids = [row["id"] for row in rows]
    assert len(ids) == len(set(ids)) == GOOD + len(BAD)
    manifest = {row["id"]: row for row in map(json.loads, corpus.read_text().splitlines())}
    for row in rows:
        if row["id"] in BAD:
            assert row["error_type"] == BAD[row["id"]] and row["error"], row
            assert "label" not in row
            continue
        source = manifest[row["id"]]
        expected = recognizer.predict(str(corpus.parent / source["audio"]), source["text"])
        assert "error" not in row
        assert row["label"] == expected.label and row["transcript"] == expected.transcript
        assert row["scores"] == pytest.approx(expected.scores, abs=1e-6)
        assert list(row["scores"]) == list(expected.scores)  # highest first, as Prediction orders them
        assert (row["duration"], row["truncated"], row["transcript_source"]) == (
            pytest.approx(expected.duration), expected.truncated, expected.transcript_source)
        assert row["meta"] == {"label": "sad", "speaker": source["speaker"], "session": "Session1"}
        assert row["audio"] == str((corpus.parent / source["audio"]).resolve())


def test_scores_equal_predict_and_bad_rows_are_recorded(corpus, tiny_model_dir, recognizer, tmp_path):
    out = tmp_path / "results.jsonl"
    summary = score(tiny_model_dir, corpus, out, chunk=5, recognizer_options=OPTIONS)
    check_rows(read_rows(out), corpus, recognizer)
    assert (summary.total, summary.skipped, summary.scored) == (GOOD + len(BAD), 0, GOOD + len(BAD))
    assert summary.errors == {"AudioError": 3, "TextError": 1}
    messages = {row["id"]: row["error"] for row in read_rows(out) if "error" in row}
    assert "corrupt.wav" in messages["corrupt"] and "absent.wav" in messages["missing"]
    assert "too short" in messages["too_short"] and "too_short.wav" in messages["too_short"]
    # Done is done: a second run scores nothing and leaves the file as it was.
    before = out.read_bytes()
    again = score(tiny_model_dir, corpus, out, chunk=5, recognizer_options=OPTIONS)
    assert (again.skipped, again.scored) == (GOOD + len(BAD), 0) and out.read_bytes() == before


def test_an_interrupted_job_resumes_without_redoing_or_losing_rows(corpus, tiny_model_dir, recognizer, tmp_path,
                                                                  monkeypatch):
    out = tmp_path / "results.jsonl"
    calls = []
    real = Recognizer.predict_batch

    def interrupted(self, *args, **kwargs):  # Ctrl-C during the third batch
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real(self, *args, **kwargs)

    monkeypatch.setattr(Recognizer, "predict_batch", interrupted)
    with pytest.raises(KeyboardInterrupt):
        score(tiny_model_dir, corpus, out, chunk=4, recognizer_options=OPTIONS)
    monkeypatch.undo()
    written = read_rows(out)
    assert len(written) == 8  # the two finished chunks, nothing of the third
    # A process killed inside a write leaves half a line: it must be dropped, and its row scored again.
    finished = out.read_bytes()
    with open(out, "ab") as handle:
        handle.write(b'{"id": "clip13", "audio": "/x", "label": "ha')
    seen = []
    summary = score(tiny_model_dir, corpus, out, chunk=4, recognizer_options=OPTIONS, progress=seen.append)
    assert (summary.skipped, summary.scored, len(seen)) == (8, GOOD + len(BAD) - 8, GOOD + len(BAD) - 8)
    data = out.read_bytes()
    assert data.startswith(finished)  # the finished rows untouched, the fragment gone
    check_rows(read_rows(out), corpus, recognizer)


def test_a_whole_last_row_without_its_newline_is_kept(tmp_path):
    out = tmp_path / "results.jsonl"
    out.write_bytes(b'{"id": "a", "label": "sad"}\n{"id": "b", "label": "happy"}')
    assert finished_ids(out) == {"a", "b"}
    assert out.read_bytes().endswith(b'"happy"}\n')


def test_a_foreign_line_inside_the_results_is_refused(tmp_path):
    out = tmp_path / "results.jsonl"
    out.write_text('{"id": "a"}\nnot a result\n{"id": "b"}\n')
    with pytest.raises(ResultsError, match=r"results.jsonl:2: not a result row"):
        finished_ids(out)


def test_a_manifest_that_does_not_say_what_to_score_is_refused_whole(tmp_path):
    manifest = tmp_path / "bad.jsonl"
    manifest.write_text('{"id": "a", "audio": "a.wav"}\nnot json\n{"id": "b"}\n["a"]\n{"id": "a", "audio": "c.wav"}\n'
                        '{"audio": "d.wav", "id": 7}\n')
    with pytest.raises(ManifestError) as caught:
        read_items(manifest)
    message = str(caught.value)
    assert "5 bad row(s)" in message
    for line, problem in ((2, "not valid JSON"), (3, "field 'audio' must be a non-empty string"),
                          (4, "expected a JSON object"), (5, "duplicate id 'a' (first on line 1)"),
                          (6, "field 'id' must be a non-empty string")):
        assert f"bad.jsonl:{line}: {problem}" in message
    with pytest.raises(ManifestError, match="no such manifest or folder"):
        read_items(tmp_path / "absent.jsonl")


def test_ids_default_to_the_file_stem_as_in_training_manifests(tmp_path):
    manifest = tmp_path / "m.jsonl"
    manifest.write_text('{"audio": "wav/x1.wav", "text": "hi", "aug_audio": "wav/y.wav", "note": 3}\n')
    (item,) = read_items(manifest)
    assert (item.id, item.audio, item.text, item.meta) == ("x1", str(tmp_path / "wav" / "x1.wav"), "hi", {"note": 3})


def test_a_folder_is_scored_file_by_file(tmp_path, tiny_model_dir, recognizer):
    folder = tmp_path / "calls"
    (folder / "day2").mkdir(parents=True)
    soundfile.write(folder / "a.wav", noise(3_000, seed=1), RATE)
    soundfile.write(folder / "day2" / "b.flac", noise(5_000, seed=2), RATE)
    (folder / "day2" / "broken.wav").write_bytes(b"\x00" * 64)
    (folder / "notes.txt").write_text("not audio, not scored")
    out = tmp_path / "calls.jsonl"
    summary = score(tiny_model_dir, folder, out, recognizer_options=OPTIONS)
    rows = {row["id"]: row for row in read_rows(out)}
    assert sorted(rows) == ["a.wav", "day2/b.flac", "day2/broken.wav"] and summary.scored == 3
    assert rows["day2/broken.wav"]["error_type"] == "AudioError"
    expected = recognizer.predict(folder / "day2" / "b.flac")
    assert rows["day2/b.flac"]["scores"] == pytest.approx(expected.scores, abs=1e-6)
    assert rows["day2/b.flac"]["transcript_source"] == "ctc"
    (folder / "empty").mkdir()
    with pytest.raises(ManifestError, match="no audio files"):
        read_items(folder / "empty")


def test_cli(corpus, tiny_model_dir, recognizer, tmp_path, capsys):
    out = tmp_path / "cli.jsonl"
    args = ["score", "--model", str(tiny_model_dir), "--manifest", str(corpus), "--out", str(out),
            "--precision", "fp32", "--device", "cpu", "--chunk", "6"]
    assert main(args) == 0
    check_rows(read_rows(out), corpus, recognizer)
    assert f"{GOOD + len(BAD)} row(s) scored" in capsys.readouterr().err
    assert main(args) == 0
    err = capsys.readouterr().err
    assert "0 row(s) scored in" in err and f"{GOOD + len(BAD)} already in" in err


def test_cli_errors(corpus, tiny_model_dir, tmp_path, capsys):
    base = ["score", "--model", str(tiny_model_dir), "--out", str(tmp_path / "o.jsonl")]
    assert main([*base, "--manifest", str(corpus), "--actors", "2"]) == 1
    assert "--actors and --cpus-per-actor are for Ray jobs" in capsys.readouterr().err
    assert main([*base, "--manifest", str(tmp_path / "absent.jsonl")]) == 1
    assert "no such manifest or folder" in capsys.readouterr().err
    assert main(["score", "--model", str(tmp_path), "--manifest", str(corpus), "--out", str(tmp_path / "o.jsonl")]) == 1
    assert f"mmer-rt: error: {tmp_path}" in capsys.readouterr().err
    assert not (tmp_path / "o.jsonl").exists()  # a model that does not load fails before the results file is made
    with pytest.raises(SystemExit):
        main([*base])  # neither --manifest nor --folder


def test_scoring_in_process_imports_no_ray(corpus, tiny_model_dir, tmp_path):
    script = (f"import sys; from mmer_rt.cli import main; "
              f"assert main(['score', '--model', {str(tiny_model_dir)!r}, '--manifest', {str(corpus)!r}, "
              f"'--out', {str(tmp_path / 'r.jsonl')!r}, '--precision', 'fp32']) == 0; "
              f"assert 'ray' not in sys.modules, 'ray was imported'")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120,
                          cwd=Path(__file__).resolve().parent.parent)
    assert done.returncode == 0, done.stderr
    assert len((tmp_path / "r.jsonl").read_text().splitlines()) == GOOD + len(BAD)


def test_a_failing_batch_costs_only_the_rows_at_fault(corpus, tiny_model_dir, recognizer, tmp_path, monkeypatch):
    from mmer_rt.errors import InferenceError

    real = Recognizer._run_batch
    poisoned = 2_200  # clip1's length: onnxruntime "fails" on any batch holding it

    def flaky(self, pieces):
        if any(len(piece.waveform) == poisoned for piece in pieces):
            raise InferenceError("onnxruntime: out of memory")
        return real(self, pieces)

    monkeypatch.setattr(Recognizer, "_run_batch", flaky)
    out = tmp_path / "results.jsonl"
    summary = score(tiny_model_dir, corpus, out, chunk=8, recognizer_options=OPTIONS)
    rows = {row["id"]: row for row in read_rows(out)}
    assert rows["clip1"]["error_type"] == "InferenceError" and "out of memory" in rows["clip1"]["error"]
    assert summary.errors == {"AudioError": 3, "TextError": 1, "InferenceError": 1}
    monkeypatch.undo()
    for i in (0, 2, 3, 4):  # clip1's batch mates are answered, as alone
        expected = recognizer.predict(rows[f"clip{i}"]["audio"], None if i % 2 == 0 else "we lost the house")
        assert rows[f"clip{i}"]["scores"] == pytest.approx(expected.scores, abs=1e-6)


def test_an_unexpected_failure_is_isolated_too(corpus, tiny_model_dir, tmp_path, monkeypatch):
    real = Recognizer.predict_batch

    def buggy(self, utterances, *args, **kwargs):
        if any(str(u.audio).endswith("clip2.wav") for u in utterances):
            raise ZeroDivisionError("a bug")
        return real(self, utterances, *args, **kwargs)

    monkeypatch.setattr(Recognizer, "predict_batch", buggy)
    out = tmp_path / "results.jsonl"
    summary = score(tiny_model_dir, corpus, out, chunk=8, recognizer_options=OPTIONS)
    rows = {row["id"]: row for row in read_rows(out)}
    assert rows["clip2"]["error_type"] == "ZeroDivisionError"
    assert "label" in rows["clip3"] and summary.scored == GOOD + len(BAD)


def test_ray_errors_before_and_at_joining_are_typed(corpus, tiny_model_dir, tmp_path, monkeypatch):
    import ray

    from mmer_rt.errors import MMERError
    from mmer_rt.serve import ray as ray_module

    out = tmp_path / "results.jsonl"
    monkeypatch.setattr(ray_module, "require_ray", lambda: (_ for _ in ()).throw(MMERError("Ray is not installed")))
    with pytest.raises(MMERError, match="Ray is not installed"):
        score(tiny_model_dir, corpus, out, use_ray=True)
    assert not out.exists()  # nothing is made before Ray is there
    monkeypatch.undo()

    def refuse(**kwargs):
        raise ConnectionError("Failed to connect to Ray cluster at 127.0.0.1:1")

    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    monkeypatch.setattr(ray, "init", refuse)
    with pytest.raises(MMERError, match=r"cannot join the Ray cluster at 127.0.0.1:1 .*RAY_AUTH_MODE=token"):
        score(tiny_model_dir, corpus, out, use_ray=True, ray_address="127.0.0.1:1")
