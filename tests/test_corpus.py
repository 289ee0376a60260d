"""Tests of the data manifest: round trip, path resolution and one test per kind of bad row."""

import json
from pathlib import Path

import numpy as np
import pytest
import soundfile

from mmer_rt.corpus import Utterance, read_manifest, write_manifest
from mmer_rt.errors import ManifestError

LABELS = ("happy", "angry", "neutral", "sad")


def _wav(path: Path, samples: int = 1600) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    soundfile.write(path, np.zeros(samples, dtype=np.float32) + 0.1, 16_000)
    return path


def _row(**overrides) -> dict:
    row = {"id": "u1", "audio": "wav/u1.wav", "text": "hello there", "label": "happy", "speaker": "A",
           "session": "Session1"}
    row.update(overrides)
    return {k: v for k, v in row.items() if v is not ...}


def _manifest(folder: Path, rows, raw_lines=()) -> Path:
    path = folder / "manifest.jsonl"
    lines = [json.dumps(r) for r in rows] + list(raw_lines)
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


@pytest.fixture
def corpus(tmp_path):
    _wav(tmp_path / "wav" / "u1.wav")
    _wav(tmp_path / "wav" / "u2.wav")
    return tmp_path


def test_reads_rows_and_resolves_relative_audio(corpus):
    path = _manifest(corpus, [_row(), _row(id="u2", audio="wav/u2.wav", label="sad", aug_text="hi there")])
    utterances = read_manifest(path, labels=LABELS)
    assert [u.id for u in utterances] == ["u1", "u2"]
    assert utterances[0].audio == corpus / "wav" / "u1.wav"
    assert utterances[1].label == "sad" and utterances[1].aug_text == "hi there" and utterances[1].line == 2
    assert utterances[0].aug_audio is None


def test_id_defaults_to_audio_stem(corpus):
    path = _manifest(corpus, [_row(id=...)])
    assert read_manifest(path)[0].id == "u1"


def test_write_then_read_round_trips_with_relative_paths(corpus, tmp_path_factory):
    outside = _wav(tmp_path_factory.mktemp("elsewhere") / "x.wav")
    original = [
        Utterance("u1", corpus / "wav" / "u1.wav", "hello", "happy", "A", "Session1",
                  aug_audio=corpus / "wav" / "u2.wav", aug_text="hello you"),
        Utterance("x", outside, "far away", "sad", "B", "Session2"),
    ]
    path = corpus / "manifest.jsonl"
    write_manifest(path, original)
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    assert rows[0]["audio"] == "wav/u1.wav" and rows[0]["aug_audio"] == "wav/u2.wav"
    assert rows[1]["audio"] == str(outside) and "aug_text" not in rows[1]
    back = read_manifest(path, labels=LABELS)
    assert [(u.id, u.audio.resolve(), u.text, u.label, u.aug_text) for u in back] == [
        (u.id, u.audio.resolve(), u.text, u.label, u.aug_text) for u in original
    ]


def test_blank_lines_are_skipped(corpus):
    path = _manifest(corpus, [_row()], raw_lines=["", "   "])
    assert len(read_manifest(path)) == 1


@pytest.mark.parametrize(
    "row, problem",
    [
        (_row(text=...), "missing or empty field 'text'"),
        (_row(speaker=""), "missing or empty field 'speaker'"),
        (_row(session=3), "missing or empty field 'session'"),
        (_row(label="bored"), "unknown label 'bored'"),
        (_row(text="[LAUGHTER]  "), "is empty once bracketed spans are removed"),
        (_row(aug_text="[NOISE]"), "aug_text '[NOISE]' is empty"),
        (_row(audio="wav/missing.wav"), "audio file not found"),
        (_row(aug_audio="wav/missing.wav"), "aug_audio file not found"),
        (_row(aug_text=5), "field 'aug_text' must be a non-empty string"),
    ],
)
def test_bad_row_is_reported_with_file_and_line(corpus, row, problem):
    path = _manifest(corpus, [_row(id="u2", audio="wav/u2.wav"), row])
    with pytest.raises(ManifestError) as caught:
        read_manifest(path, labels=LABELS)
    assert f"{path}:2: " in str(caught.value)
    assert problem in str(caught.value)


def test_bad_json_and_non_object(corpus):
    path = _manifest(corpus, [_row()], raw_lines=['{"audio": ', "[1, 2]"])
    with pytest.raises(ManifestError) as caught:
        read_manifest(path)
    assert f"{path}:2: not valid JSON" in str(caught.value)
    assert f"{path}:3: expected a JSON object" in str(caught.value)


def test_undecodable_and_empty_audio(corpus):
    (corpus / "wav" / "junk.wav").write_bytes(b"this is not audio")
    _wav(corpus / "wav" / "empty.wav", samples=0)
    path = _manifest(corpus, [_row(id="a", audio="wav/junk.wav"), _row(id="b", audio="wav/empty.wav")])
    with pytest.raises(ManifestError) as caught:
        read_manifest(path)
    assert f"{path}:1: audio file" in str(caught.value) and "cannot be decoded" in str(caught.value)
    assert f"{path}:2: audio file" in str(caught.value) and "has no samples" in str(caught.value)


def test_check_audio_false_skips_file_checks(corpus):
    path = _manifest(corpus, [_row(audio="wav/missing.wav")])
    assert read_manifest(path, check_audio=False)[0].audio.name == "missing.wav"


def test_duplicate_id(corpus):
    path = _manifest(corpus, [_row(), _row(audio="wav/u2.wav")])
    with pytest.raises(ManifestError, match=r":2: duplicate id 'u1' \(first on line 1\)"):
        read_manifest(path)


def test_every_bad_row_is_listed_at_once(corpus):
    path = _manifest(corpus, [_row(label="x"), _row(id="u2", audio="wav/u2.wav"), _row(id="u3", text="")])
    with pytest.raises(ManifestError) as caught:
        read_manifest(path, labels=LABELS)
    message = str(caught.value)
    assert "2 bad row(s)" in message and f"{path}:1:" in message and f"{path}:3:" in message
    assert f"{path}:2:" not in message


def test_missing_and_empty_manifest(tmp_path):
    with pytest.raises(ManifestError, match="manifest not found"):
        read_manifest(tmp_path / "nope.jsonl")
    (tmp_path / "empty.jsonl").write_text("\n")
    with pytest.raises(ManifestError, match="has no utterances"):
        read_manifest(tmp_path / "empty.jsonl")
