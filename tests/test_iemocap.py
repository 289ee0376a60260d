"""Tests of the IEMOCAP importer on a small fake release written in the real file formats."""

import json
from pathlib import Path

import numpy as np
import pytest
import soundfile

from mmer_rt.corpus import read_manifest
from mmer_rt.errors import CorpusError
from training import iemocap

# (utterance id, label code, transcript); the dialog is the id without its last part.
SESSION1 = [
    ("Ses01F_impro01_F000", "neu", "Excuse me."),
    ("Ses01F_impro01_M000", "fru", "Do you have your forms?"),
    ("Ses01F_impro01_F001", "exc", "Yeah, I got it [LAUGHTER] right here!"),
    ("Ses01F_impro01_M001", "xxx", "What is this?"),
    ("Ses01F_script01_1_M002", "ang", "Don't you dare."),
]
SESSION2 = [
    ("Ses02M_impro05_M000", "sad", "I miss him."),
    ("Ses02M_impro05_F000", "hap", "Oh, that is lovely."),
    ("Ses02M_impro05_F001", "neu", "[BREATHING]"),
]


def _evaluation(rows) -> str:
    lines = ["% [START_TIME - END_TIME] TURN_NAME EMOTION [V, A, D]", ""]
    for k, (uid, label, _) in enumerate(rows):
        lines += [
            f"[{k + 1.5:.4f} - {k + 2.75:.4f}]\t{uid}\t{label}\t[2.5000, 3.0000, 2.5000]",
            "C-E1:\tNeutral;\t()",
            "C-E2:\tAnger; Frustration;\t(angry)",
            "A-E3:\tval 3; act 2; dom  2;\t()",
            "",
        ]
    return "\n".join(lines) + "\n"


def _transcriptions(rows) -> str:
    lines = []
    for k, (uid, _, text) in enumerate(rows):
        lines.append(f"{uid} [{k + 1.5:08.4f}-{k + 2.75:08.4f}]: {text}")
        # an overlap line and a marker line, which are not utterances
        lines.append(f"{uid.rsplit('_', 1)[0]}_FXX0 [{k + 2.0:08.4f}-{k + 2.5:08.4f}]: Mm-hmm.")
    lines.append("M: [GARBAGE]")
    return "\n".join(lines) + "\n"


def _write_session(release: Path, number: int, rows, skip_wav=()) -> None:
    session = release / f"Session{number}"
    dialogs = {}
    for row in rows:
        dialogs.setdefault(row[0].rsplit("_", 1)[0], []).append(row)
    for dialog, dialog_rows in dialogs.items():
        for part, text in (("EmoEvaluation", _evaluation(dialog_rows)), ("transcriptions", _transcriptions(dialog_rows))):
            (session / "dialog" / part).mkdir(parents=True, exist_ok=True)
            (session / "dialog" / part / f"{dialog}.txt").write_text(text)
        (session / "dialog" / "EmoEvaluation" / "Categorical").mkdir(exist_ok=True)
        (session / "dialog" / "EmoEvaluation" / f"._{dialog}.txt").write_bytes(b"\x00\x05\x16\x07 mac resource fork")
        wav_dir = session / "sentences" / "wav" / dialog
        wav_dir.mkdir(parents=True, exist_ok=True)
        for uid, _, _ in dialog_rows:
            if uid not in skip_wav:
                soundfile.write(wav_dir / f"{uid}.wav", np.full(800, 0.1, dtype=np.float32), 16_000, subtype="PCM_16")


@pytest.fixture
def release(tmp_path):
    root = tmp_path / "IEMOCAP_full_release"
    _write_session(root, 1, SESSION1)
    _write_session(root, 2, SESSION2)
    return root


def test_imports_four_classes_with_speakers_and_sessions(release):
    summary = iemocap.import_iemocap(release)
    by_id = {u.id: u for u in summary.utterances}
    assert sorted(by_id) == sorted(["Ses01F_impro01_F000", "Ses01F_impro01_F001", "Ses01F_script01_1_M002",
                                    "Ses02M_impro05_M000", "Ses02M_impro05_F000"])
    assert {uid: u.label for uid, u in by_id.items()} == {
        "Ses01F_impro01_F000": "neutral", "Ses01F_impro01_F001": "happy", "Ses01F_script01_1_M002": "angry",
        "Ses02M_impro05_M000": "sad", "Ses02M_impro05_F000": "happy"}
    first = by_id["Ses01F_impro01_F000"]
    assert (first.text, first.speaker, first.session) == ("Excuse me.", "Session1F", "Session1")
    assert first.audio == release / "Session1/sentences/wav/Ses01F_impro01/Ses01F_impro01_F000.wav"
    assert by_id["Ses02M_impro05_M000"].speaker == "Session2M"
    assert by_id["Ses01F_script01_1_M002"].speaker == "Session1M"
    assert summary.dropped_labels == {"fru": 1, "xxx": 1}
    assert summary.empty_transcripts == ["Ses02M_impro05_F001"]
    assert summary.kept == {"happy": 2, "neutral": 1, "angry": 1, "sad": 1}


def test_summary_lines_only_not_annotator_lines(release):
    labels = iemocap.read_labels(release / "Session1/dialog/EmoEvaluation/Ses01F_impro01.txt")
    assert labels == {"Ses01F_impro01_F000": "neu", "Ses01F_impro01_M000": "fru", "Ses01F_impro01_F001": "exc",
                      "Ses01F_impro01_M001": "xxx"}


def test_transcripts_skip_overlap_and_marker_lines(release):
    transcripts = iemocap.read_transcripts(release / "Session1/dialog/transcriptions/Ses01F_impro01.txt")
    assert set(transcripts) == {"Ses01F_impro01_F000", "Ses01F_impro01_M000", "Ses01F_impro01_F001",
                                "Ses01F_impro01_M001"}
    assert transcripts["Ses01F_impro01_F001"] == "Yeah, I got it [LAUGHTER] right here!"


def test_command_line_writes_a_valid_manifest(release, tmp_path, capsys):
    out = tmp_path / "iemocap.jsonl"
    iemocap.main([str(release), "--out", str(out)])
    printed = capsys.readouterr().out
    assert "kept 5 utterances: happy 2, angry 1, neutral 1, sad 1" in printed and "fru 1, xxx 1" in printed
    utterances = read_manifest(out, labels=iemocap.LABELS)
    assert len(utterances) == 5
    assert json.loads(out.read_text().splitlines()[0])["audio"].endswith("Ses01F_impro01_F000.wav")


def test_not_a_release(tmp_path):
    with pytest.raises(CorpusError, match="IEMOCAP folder not found"):
        iemocap.import_iemocap(tmp_path / "nope")
    (tmp_path / "something").mkdir()
    with pytest.raises(CorpusError, match="is not an IEMOCAP release: it has no Session1"):
        iemocap.import_iemocap(tmp_path)


def test_session_without_its_folders(tmp_path):
    (tmp_path / "Session1" / "dialog" / "EmoEvaluation").mkdir(parents=True)
    with pytest.raises(CorpusError, match=r"Session1 is not an IEMOCAP session: dialog/transcriptions/ is missing"):
        iemocap.import_iemocap(tmp_path)


def test_missing_audio_and_transcripts_are_all_listed(tmp_path):
    root = tmp_path / "release"
    _write_session(root, 1, SESSION1, skip_wav={"Ses01F_impro01_F000", "Ses01F_script01_1_M002"})
    (root / "Session1/dialog/transcriptions/Ses01F_impro01.txt").write_text(_transcriptions(SESSION1[1:2]))
    with pytest.raises(CorpusError) as caught:
        iemocap.import_iemocap(root)
    message = str(caught.value)
    assert "3 problem(s)" in message
    assert "no transcript for labelled utterance Ses01F_impro01_F000" in message
    assert "no transcript for labelled utterance Ses01F_impro01_F001" in message
    assert "missing audio for labelled utterance Ses01F_script01_1_M002" in message


def test_command_line_reports_errors_without_a_traceback(tmp_path, capsys):
    with pytest.raises(SystemExit) as caught:
        iemocap.main([str(tmp_path), "--out", str(tmp_path / "m.jsonl")])
    assert caught.value.code == 2 and "not an IEMOCAP release" in capsys.readouterr().err
