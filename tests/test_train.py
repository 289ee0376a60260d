"""The trainer, evaluation and leave-one-session-out driver, end to end on a small synthetic corpus."""

import json

import pytest
import torch

from training import evaluate, loso, train
from training.checkpoint import load_checkpoint


def _flags(manifest, out, *extra):
    return ["--manifest", str(manifest), "--out", str(out), "--preset", "tiny", "--batch-size", "8",
            "--grad-accum", "2", "--lr", "1e-3", "--validation", "0.34", *extra]


def test_trains_selects_on_validation_and_scores_the_test_session(synthetic_corpus, tmp_path):
    out = tmp_path / "run"
    results = train.main(_flags(synthetic_corpus, out, "--epochs", "2", "--test-session", "Session3"))
    history = [json.loads(line) for line in (out / "history.jsonl").read_text().splitlines()]
    assert [h["epoch"] for h in history] == [1, 2]
    # Highest validation UA, ties broken by the lower validation cross-entropy.
    assert results["best_epoch"] == max(history, key=lambda h: (h["val_ua"], -h["val_loss"]))["epoch"]
    assert results["test"]["confusion"] and sum(map(sum, results["test"]["confusion"])) == 16  # Session3: 2 voices
    split_speakers = json.loads((out / "results.json").read_text())["test_session"]
    assert split_speakers == "Session3"
    for name in ("best", "last"):
        model, tokenizer = load_checkpoint(out / name)
        assert tokenizer.is_file() and model.config.labels == ["happy", "angry", "neutral", "sad"]
    # The standalone evaluation of the best checkpoint on the test session gives the trainer's figure.
    scores = evaluate.main([str(out / "best"), "--manifest", str(synthetic_corpus), "--session", "Session3"])
    assert scores.ua == pytest.approx(results["test"]["ua"])


def test_refuses_to_overwrite_a_run_without_resume(synthetic_corpus, tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    with pytest.raises(SystemExit, match="not empty"):
        train.main(_flags(synthetic_corpus, out, "--epochs", "1"))
    assert (out / "notes.txt").read_text() == "mine"


def test_resume_continues_exactly_where_an_interrupted_run_stopped(synthetic_corpus, tmp_path):
    straight, broken = tmp_path / "straight", tmp_path / "broken"
    train.main(_flags(synthetic_corpus, straight, "--epochs", "2", "--no-augment"))
    train.main(_flags(synthetic_corpus, broken, "--epochs", "1", "--no-augment"))  # "interrupted" after epoch 1
    train.main(_flags(synthetic_corpus, broken, "--epochs", "2", "--no-augment", "--resume"))
    history = [json.loads(line)["epoch"] for line in (broken / "history.jsonl").read_text().splitlines()]
    assert history == [1, 2]  # epoch 1 was not trained again
    a, _ = load_checkpoint(straight / "last")
    b, _ = load_checkpoint(broken / "last")
    for (name, p), q in zip(a.state_dict().items(), b.state_dict().values()):
        torch.testing.assert_close(p, q, rtol=0, atol=1e-6, msg=name)


def test_resume_needs_a_saved_run(synthetic_corpus, tmp_path):
    with pytest.raises(SystemExit, match="holds no saved run"):
        train.main(_flags(synthetic_corpus, tmp_path / "nothing", "--resume"))


def test_config_file_sets_defaults_and_flags_win(synthetic_corpus, tmp_path):
    config = tmp_path / "train.json"
    config.write_text(json.dumps({"manifest": str(synthetic_corpus), "epochs": 7, "lr": 0.5}))
    parsed = train.parse_args(["--config", str(config), "--out", str(tmp_path / "x"), "--lr", "0.25"])
    assert (parsed.epochs, parsed.lr, parsed.manifest) == (7, 0.25, str(synthetic_corpus))
    config.write_text(json.dumps({"epochz": 1}))
    with pytest.raises(SystemExit, match="unknown keys"):
        train.parse_args(["--config", str(config)])


def test_leave_one_session_out_runs_every_fold_and_summarises(synthetic_corpus, tmp_path):
    summary = loso.run_folds(_flags(synthetic_corpus, tmp_path / "loso", "--epochs", "1", "--no-augment"))
    report = json.loads((tmp_path / "loso" / "loso.json").read_text())
    assert sorted(report["folds"]) == ["Session1", "Session2", "Session3"]
    uas = [fold["test"]["ua"] for fold in report["folds"].values()]
    assert summary["ua_mean"] == pytest.approx(sum(uas) / 3)
    assert summary["folds"] == 3


def test_loso_summary_statistics():
    folds = {"a": {"test": {"wa": 0.5, "ua": 0.4}}, "b": {"test": {"wa": 0.7, "ua": 0.8}}}
    summary = loso.summarise(folds)
    assert summary["wa_mean"] == pytest.approx(0.6) and summary["wa_std"] == pytest.approx(0.1)
    assert summary["ua_mean"] == pytest.approx(0.6) and summary["ua_std"] == pytest.approx(0.2)
