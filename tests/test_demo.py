"""Tests of scripts/demo.py's bookkeeping: which steps it reuses from an earlier run, that it says so and how to start
over, that an interrupted training resumes, and that --fresh redoes everything (the steps themselves are recorded,
not run: the demo's commands are tested by their own modules)."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def demo(monkeypatch):
    """scripts/demo.py as a module, its ``run`` recording each step's command instead of running it."""
    spec = importlib.util.spec_from_file_location("demo_script", ROOT / "scripts" / "demo.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    module.calls = []
    monkeypatch.setattr(module, "run", lambda step, args: module.calls.append(args))
    return module


def earlier_run(work: Path, trained: bool = True, exported: bool = True) -> None:
    (work / "corpus").mkdir(parents=True)
    (work / "corpus" / "manifest.jsonl").write_text("".join(json.dumps({"id": f"c{i}"}) + "\n" for i in range(3)))
    (work / "train" / "last").mkdir(parents=True)
    (work / "train" / "last" / "trainer_state.json").write_text("{}")
    if trained:
        (work / "train" / "results.json").write_text("{}")
    if exported:
        (work / "model").mkdir()
        (work / "model" / "mmer.json").write_text("{}")


def modules(calls: list[list[str]]) -> list[str]:
    return [args[1] if args[0] == "-m" else Path(args[0]).name for args in calls]


def test_a_first_run_does_every_step_and_reuses_nothing(demo, tmp_path, capsys):
    demo.main(["--work", str(tmp_path / "work")])
    assert modules(demo.calls) == ["training.synth", "training.train", "export.to_onnx", "recognize_heldout.py"]
    assert "--resume" not in demo.calls[1]
    out = capsys.readouterr().out
    assert "reusing" not in out and "earlier run" not in out


def test_a_second_run_says_what_it_reused_and_how_to_start_fresh(demo, tmp_path, capsys):
    work = tmp_path / "work"
    earlier_run(work)
    demo.main(["--work", str(work)])
    assert modules(demo.calls) == ["recognize_heldout.py"]
    out = capsys.readouterr().out
    assert f"{work} holds an earlier run" in out
    assert f"reusing the corpus (3 clips) from an earlier run: {work / 'corpus'}" in out
    assert f"reusing the trained model (best checkpoint and test scores) from an earlier run: {work / 'train'}" in out
    assert f"reusing the exported model directory from an earlier run: {work / 'model'}" in out
    assert "reused from an earlier run: corpus, training, export;" in out
    assert out.count("bash scripts/demo.sh --fresh") == 2  # at the start and again at the end


def test_an_interrupted_training_continues_and_says_so(demo, tmp_path, capsys):
    work = tmp_path / "work"
    earlier_run(work, trained=False, exported=False)
    demo.main(["--work", str(work)])
    assert modules(demo.calls) == ["training.train", "export.to_onnx", "recognize_heldout.py"]
    assert demo.calls[0][-1] == "--resume"
    out = capsys.readouterr().out
    assert f"continuing it from {work / 'train' / 'last'}" in out
    assert "reused from an earlier run: corpus;" in out


def test_fresh_deletes_the_earlier_run_and_redoes_every_step(demo, tmp_path, capsys):
    work = tmp_path / "work"
    earlier_run(work)
    demo.main(["--work", str(work), "--fresh"])
    assert modules(demo.calls) == ["training.synth", "training.train", "export.to_onnx", "recognize_heldout.py"]
    assert not (work / "corpus").exists() and "--resume" not in demo.calls[1]
    out = capsys.readouterr().out
    assert f"--fresh: deleting {work}" in out and "reusing" not in out


@pytest.mark.parametrize("ua, said", [(None, "the README's figure"), (0.575, "DIFFERS from the README's")])
def test_the_demo_compares_its_figure_with_the_readme(demo, tmp_path, capsys, ua, said):
    readme = float(demo.README_UA.search((ROOT / "README.md").read_text()).group(1))
    heldout, results = tmp_path / "heldout.json", tmp_path / "results.json"
    heldout.write_text(json.dumps({"fp32": {"ua": readme / 100 if ua is None else ua}}))
    results.write_text(json.dumps({"epochs_trained": 20, "epochs_planned": 20, "cut_short": None}))
    demo.compare_with_readme(heldout, results)
    out = capsys.readouterr().out
    assert said in out and "20 of 20 epochs" in out and "CUT SHORT" not in out
    results.write_text(json.dumps({"epochs_trained": 3, "epochs_planned": 20,
                                   "cut_short": {"reason": "--max-minutes 8"}}))
    demo.compare_with_readme(heldout, results)
    assert "WARNING: training was CUT SHORT (--max-minutes 8, 3 of 20 epochs)" in capsys.readouterr().out


def test_the_demo_trains_its_epochs_with_no_time_limit(demo):
    assert "--max-minutes" not in demo.TRAIN_FLAGS and "--epochs" in demo.TRAIN_FLAGS


def test_the_export_tunes_int8_on_the_training_sessions_only(demo, tmp_path):
    work = tmp_path / "work"
    earlier_run(work, trained=True, exported=False)
    rows = [{"id": f"c{i}", "audio": f"wav/c{i}.wav", "session": session}
            for i, session in enumerate(["Session1", demo.TEST_SESSION, "Session4", demo.TEST_SESSION])]
    (work / "corpus" / "manifest.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    demo.main(["--work", str(work)])
    export = next(args for args in demo.calls if args[:2] == ["-m", "export.to_onnx"])
    probes = Path(export[export.index("--speech-manifest") + 1])
    assert probes.parent == work / "corpus"  # beside the corpus manifest: its relative audio paths hold
    assert [json.loads(line)["id"] for line in probes.read_text().splitlines()] == ["c0", "c2"]
    assert export[export.index("--int8-logit-tolerance") + 1] == "5e-3"
