"""``mmer-rt timeline``: JSON lines with the segment keys, CSV, text with the summary, the chart, errors."""

from __future__ import annotations

import csv
import io
import json

import pytest

from mmer_rt.cli import main
from mmer_rt.timeline import read_transcript
from mmer_rt.timeline_cli import SEGMENT_KEYS
from test_recognizer_fixtures import tiny_export, tiny_model_dir  # noqa: F401
from training.synth_call import write_call, write_rttm, write_srt


@pytest.fixture(scope="module")
def call(synthetic_corpus, tmp_path_factory):
    folder = tmp_path_factory.mktemp("cli_call")
    turns = write_call(folder / "call.wav", synthetic_corpus, 15.0, seed=11)
    write_rttm(folder / "call.rttm", turns, "call")
    return folder, turns


def run(capsys, *argv):
    status = main(list(map(str, argv)))
    out, err = capsys.readouterr()
    return status, out, err


def test_json_lines_carry_the_segment_keys_and_speakers(capsys, call, tiny_model_dir):
    folder, turns = call
    status, out, _ = run(capsys, "timeline", folder / "call.wav", "--model", tiny_model_dir, "--rttm",
                         folder / "call.rttm", "--json", "--precision", "fp32")
    assert status == 0
    rows = [json.loads(line) for line in out.splitlines()]
    assert rows and all(tuple(row) == SEGMENT_KEYS for row in rows)
    assert {row["speaker"] for row in rows} == {t.speaker for t in turns}
    assert [row["start"] for row in rows] == sorted(row["start"] for row in rows)


def test_a_timed_transcript_gives_segments_its_words(capsys, call, tiny_model_dir, tmp_path):
    folder, turns = call
    write_srt(tmp_path / "call.srt", turns)
    status, out, _ = run(capsys, "timeline", folder / "call.wav", "--model", tiny_model_dir, "--transcript",
                         tmp_path / "call.srt", "--json")
    rows = [json.loads(line) for line in out.splitlines()]
    given = [row for row in rows if row["transcript_source"] == "given"]
    assert status == 0 and len(given) >= 0.8 * len(rows)
    said = " ".join(t.text for t in turns).lower()
    assert all(row["transcript"].lower() in said for row in given)
    # a 0.5 s window in which no word's middle falls reads the CTC transcript instead, and says so
    middles = [(w.start + w.end) / 2 for w in read_transcript(tmp_path / "call.srt")]
    for row in rows:
        inside = any(row["start"] <= m < row["end"] for m in middles)
        assert inside == (row["transcript_source"] == "given")


def test_csv_and_text_and_the_chart(capsys, call, tiny_model_dir, tmp_path):
    folder, _ = call
    status, out, _ = run(capsys, "timeline", folder / "call.wav", "--model", tiny_model_dir, "--csv")
    rows = list(csv.DictReader(io.StringIO(out)))
    assert status == 0 and rows and {"p_happy", "p_sad", "transcript_source"} <= set(rows[0])
    assert all(abs(sum(float(r[k]) for k in r if k.startswith("p_")) - 1) < 1e-3 for r in rows)
    chart = tmp_path / "call.png"
    status, out, err = run(capsys, "timeline", folder / "call.wav", "--model", tiny_model_dir, "--plot", chart,
                           "--smoothing", "1")
    assert status == 0 and "s of speech:" in out and f"wrote {chart}" in err
    assert chart.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and chart.stat().st_size > 10_000


def test_a_bad_rttm_is_an_error_with_its_line(capsys, call, tiny_model_dir, tmp_path):
    folder, _ = call
    bad = tmp_path / "bad.rttm"
    bad.write_text("SPEAKER call 1 0.5 1.0 <NA> <NA> a <NA> <NA>\nSPEAKER call 1 x 1.0 <NA> <NA> a <NA> <NA>\n")
    status, out, err = run(capsys, "timeline", folder / "call.wav", "--model", tiny_model_dir, "--rttm", bad)
    assert status == 1 and out == "" and "line 2:" in err and str(bad) in err
    status, _, err = run(capsys, "timeline", folder / "call.wav", "--model", tiny_model_dir, "--window", "-1")
    assert status == 2 and "window" in err


def test_batch_seconds_changes_the_company_not_the_answers(capsys, call, tiny_model_dir):
    folder, _ = call
    base = ["timeline", folder / "call.wav", "--model", tiny_model_dir, "--json", "--precision", "fp32"]
    status, one, _ = run(capsys, *base)
    status_many, many, _ = run(capsys, *base, "--batch-seconds", "30")
    assert status == status_many == 0
    rows_one, rows_many = ([json.loads(line) for line in text.splitlines()] for text in (one, many))
    assert [(r["start"], r["end"], r["label"]) for r in rows_one] == [(r["start"], r["end"], r["label"])
                                                                       for r in rows_many]
    for value in ("0", "-2", "nan", "inf", "six"):
        with pytest.raises(SystemExit) as stopped:
            main(list(map(str, [*base, "--batch-seconds", value])))
        assert stopped.value.code == 2
        assert "positive number of seconds" in capsys.readouterr().err
