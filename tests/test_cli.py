"""Tests of the mmer-rt command line: predict (plain, JSON, transcripts, chunks) and info, with their errors."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import soundfile

import mmer_rt.cli
from mmer_rt import Recognizer
from mmer_rt.cli import main
from test_recognizer_fixtures import TINY_MAX_AUDIO_SAMPLES, noise, tiny_export, tiny_model_dir  # noqa: F401

RATE = 16_000


@pytest.fixture(scope="module")
def clips(tmp_path_factory):
    folder = tmp_path_factory.mktemp("clips")
    paths = []
    for i, samples in enumerate((2_000, 6_000, TINY_MAX_AUDIO_SAMPLES + 4_000)):
        path = folder / f"clip{i}.wav"
        soundfile.write(path, noise(samples, seed=i), RATE)
        paths.append(str(path))
    return paths


@pytest.fixture(scope="module")
def recognizer(tiny_model_dir):
    return Recognizer.from_dir(tiny_model_dir, device="cpu", precision="fp32")


def run_json(capsys, *args):
    assert main(["predict", *args, "--json", "--precision", "fp32"]) == 0
    return [json.loads(line) for line in capsys.readouterr().out.splitlines()]


def test_predict_json_matches_the_library(capsys, clips, tiny_model_dir, recognizer):
    rows = run_json(capsys, *clips, "--model", str(tiny_model_dir))
    assert [row["file"] for row in rows] == clips
    for row, path in zip(rows, clips):
        expected = recognizer.predict(path)
        assert row["label"] == expected.label and row["transcript_source"] == "ctc"
        assert row["scores"] == pytest.approx(expected.scores, abs=1e-6)
        assert row["transcript"] == expected.transcript
    assert [row["truncated"] for row in rows] == [False, False, True]


def test_predict_plain_lines(capsys, clips, tiny_model_dir, recognizer):
    assert main(["predict", clips[0], "--model", str(tiny_model_dir), "--precision", "fp32", "--text", "hi [NOISE]"]) == 0
    expected = recognizer.predict(clips[0], "hi")
    path, label, score, duration, transcript = capsys.readouterr().out.rstrip("\n").split("\t")
    assert (path, label, duration, transcript) == (clips[0], expected.label, "0.12s", "given: hi")
    assert float(score) == pytest.approx(expected.score, abs=1e-3)


def test_transcripts_file_supplies_each_transcript(capsys, clips, tiny_model_dir, recognizer, tmp_path):
    table = tmp_path / "transcripts.tsv"
    table.write_text(f"{clips[0]}\tleave me alone\n\n{clips[1]}\twe lost the house\n", encoding="utf-8")
    rows = run_json(capsys, clips[0], clips[1], "--model", str(tiny_model_dir), "--transcripts", str(table))
    assert [row["transcript"] for row in rows] == ["leave me alone", "we lost the house"]
    assert rows[1]["scores"] == pytest.approx(recognizer.predict(clips[1], "we lost the house").scores, abs=1e-6)


def test_many_files_go_through_in_chunks_in_order(capsys, clips, tiny_model_dir, monkeypatch):
    monkeypatch.setattr(mmer_rt.cli, "FILES_PER_CHUNK", 2)
    files = clips * 2
    rows = run_json(capsys, *files, "--model", str(tiny_model_dir), "--batch-size", "1")
    assert [row["file"] for row in rows] == files
    assert rows[0]["scores"] == rows[3]["scores"]


def test_window_policy_from_the_command_line(capsys, clips, tiny_model_dir):
    rows = run_json(capsys, clips[2], "--model", str(tiny_model_dir), "--long-audio", "window")
    assert rows[0]["windows"] == 2 and not rows[0]["truncated"]


def test_predict_errors_exit_1_with_a_message(capsys, clips, tiny_model_dir, tmp_path):
    model = str(tiny_model_dir)
    cases = [
        (["predict", str(tmp_path / "nope.wav"), "--model", model], "nope.wav: no such audio file"),
        (["predict", clips[0], "--model", str(tmp_path)], "mmer.json is missing"),
        (["predict", clips[0], "--model", model, "--transcripts", str(tmp_path / "none.tsv")],
         "cannot read the transcripts file"),
    ]
    table = tmp_path / "partial.tsv"
    table.write_text(f"{clips[0]}\thello\n")
    cases.append((["predict", *clips[:2], "--model", model, "--transcripts", str(table)],
                  f"has no transcript for {clips[1]}"))
    bad_table = tmp_path / "bad.tsv"
    bad_table.write_text(f"{clips[0]}\thello\textra\n")
    cases.append((["predict", clips[0], "--model", model, "--transcripts", str(bad_table)], "bad.tsv:1: expected"))
    for argv, message in cases:
        assert main(argv) == 1
        err = capsys.readouterr().err
        assert err.startswith("mmer-rt: error: ") and message in err, (argv, err)


@pytest.mark.parametrize("argv", [["predict", "x.wav"], ["predict", "x.wav", "--model", "m", "--batch-size", "0"],
                                  ["predict", "x.wav", "--model", "m", "--text", "a", "--transcripts", "t"], [],
                                  ["predict", "x.wav", "y.wav", "--model", "m", "--text", "a"]])
def test_bad_usage_exits_2(argv, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2


def test_info_prints_labels_variants_parity_and_versions(capsys, tiny_model_dir):
    from mmer_rt.cli import _flat

    assert main(["info", str(tiny_model_dir)]) == 0
    out = capsys.readouterr().out
    manifest = json.loads((tiny_model_dir / "mmer.json").read_text())
    assert f"labels            {', '.join(manifest['labels'])}" in out
    lines = out.splitlines()
    header = next(i for i, line in enumerate(lines) if line.startswith("parity vs PyTorch fp32"))
    variants = list(manifest["variants"])
    end = lines.index("", header)
    table = {line.split()[0]: line for line in lines[header + 1 : end]}
    first = len("parity vs PyTorch fp32")
    starts = [lines[header].index(f" {name}", first) + 1 for name in variants]  # each variant's column
    for column, name in zip(starts, variants):
        for key, value in _flat(manifest["variants"][name]["parity"]):  # nested figures (openvino.*) dotted
            cell = table[key][column:].split()[0]  # the value starts exactly under its variant's name
            assert cell == (f"{value:.3g}" if isinstance(value, float) else str(value)), (name, key)
    for name, version in manifest["versions"].items():
        assert any(line.split() == ["version", name, str(version)] for line in lines)
    assert main(["info", str(tiny_model_dir), "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == manifest


def test_info_of_a_missing_directory(capsys, tmp_path):
    assert main(["info", str(tmp_path / "none")]) == 1
    assert "model directory not found" in capsys.readouterr().err


def test_python_dash_m_runs_the_same_command_line(tiny_model_dir):
    done = subprocess.run([sys.executable, "-m", "mmer_rt", "info", str(tiny_model_dir)], capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 0 and "labels" in done.stdout


def test_info_shows_nested_parity_figures_with_dotted_keys():
    from mmer_rt.cli import _flat

    parity = {"max_abs_probability": 1e-3, "speech": {"clips": 32, "top1_agreement": 1.0}}
    assert list(_flat(parity)) == [("max_abs_probability", 1e-3), ("speech.clips", 32),
                                   ("speech.top1_agreement", 1.0)]


def test_parity_table_stays_aligned_when_variants_record_different_figures():
    from types import SimpleNamespace

    from mmer_rt.cli import parity_table

    variants = {
        "fp32": SimpleNamespace(parity={"max_abs_probability": 2.7e-7, "top1_agreement": 1.0,
                                        "provider": "CPUExecutionProvider"}),
        "fp16": SimpleNamespace(parity={"max_abs_probability": 3.4e-4, "provider": "CUDAExecutionProvider",
                                        "speech": {"clips": 32, "top1_agreement": 0.96875}}),
        "int8": SimpleNamespace(parity={}),
    }
    lines = parity_table(SimpleNamespace(variants=variants))
    assert lines[0].split() == ["parity", "vs", "PyTorch", "fp32", "fp32", "fp16", "int8"]
    rows = {line.split()[0]: line for line in lines[1:]}
    assert list(rows) == ["max_abs_probability", "top1_agreement", "provider", "speech.clips",
                          "speech.top1_agreement"]
    columns = [lines[0].index(f" {name}", len("parity vs PyTorch fp32")) + 1 for name in variants]
    cells = {key: [line[start:].split()[0] for start in columns] for key, line in rows.items()}
    assert cells["max_abs_probability"] == ["2.7e-07", "0.00034", "-"]
    assert cells["provider"] == ["CPUExecutionProvider", "CUDAExecutionProvider", "-"]
    assert cells["speech.clips"] == ["-", "32", "-"]
    assert cells["speech.top1_agreement"] == ["-", "0.969", "-"]
    for line in lines[1:]:
        assert all(line[start - 1] == " " for start in columns)  # every cell starts at its column
