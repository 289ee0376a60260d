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


def test_a_run_trains_every_epoch_and_says_so(synthetic_corpus, tmp_path):
    results = train.main(_flags(synthetic_corpus, tmp_path / "run", "--epochs", "2", "--no-augment"))
    assert results["cut_short"] is None and results["epochs_trained"] == results["epochs_planned"] == 2


def test_a_time_limit_that_cuts_training_short_says_so_everywhere(synthetic_corpus, tmp_path, capsys):
    out = tmp_path / "run"
    results = train.main(_flags(synthetic_corpus, out, "--epochs", "3", "--no-augment", "--max-minutes", "0.0001"))
    expected = {"reason": "--max-minutes 0.0001", "epochs_trained": 1, "epochs_planned": 3}
    assert results["cut_short"] == expected
    assert json.loads((out / "results.json").read_text())["cut_short"] == expected
    assert len((out / "history.jsonl").read_text().splitlines()) == 1
    log = capsys.readouterr()
    # When it stops, and again in the summary after the figures it qualifies.
    assert (log.out + log.err).count("WARNING: training was CUT SHORT by --max-minutes 0.0001: 1 of 3 epochs") == 2


def test_parameters_no_loss_reaches_are_frozen_and_every_other_one_gets_a_gradient(synthetic_corpus, tmp_path):
    # DDP without find_unused_parameters needs every trainable parameter to receive a gradient each step.
    for augment in ("--augment", "--no-augment"):
        config = train.parse_args(_flags(synthetic_corpus, tmp_path / augment, augment))
        trainer = train.Trainer(config)
        assert all(p.requires_grad == (augment == "--augment") for p in trainer.model.acl_head.parameters())
        batch = trainer.collate([trainer.train_set[i] for i in range(4)])
        loss, _ = trainer._loss(batch)
        loss.backward()
        missing = [n for n, p in trainer.model.named_parameters() if p.requires_grad and p.grad is None]
        assert not missing, missing
        assert all(p.grad is None for p in trainer.model.text_encoder.parameters())  # frozen, as published
    wav2vec2 = trainer.model.audio_encoder.wav2vec2
    wav2vec2.masked_spec_embed = torch.nn.Parameter(torch.zeros(wav2vec2.config.hidden_size))
    trainer._set_trainable(trainer.model)  # SpecAugment is off: the mask embedding is never used
    assert not wav2vec2.masked_spec_embed.requires_grad


@pytest.mark.parametrize("jobs", ["1", "2"])
def test_loso_reports_a_failed_fold_while_the_others_finish(synthetic_corpus, tmp_path, jobs):
    root = tmp_path / "loso"
    (root / "Session2").mkdir(parents=True)
    (root / "Session2" / "notes.txt").write_text("in the way")  # the Session2 fold refuses to overwrite it
    code = loso.main(_flags(synthetic_corpus, root, "--epochs", "1", "--no-augment", "--jobs", jobs))
    assert code == 1
    report = json.loads((root / "loso.json").read_text())
    assert sorted(report["folds"]) == ["Session1", "Session3"]
    assert "not empty" in report["summary"]["failed"]["Session2"]
    uas = [fold["test"]["ua"] for fold in report["folds"].values()]
    assert report["summary"]["folds"] == 2 and report["summary"]["ua_mean"] == pytest.approx(sum(uas) / 2)
    if jobs == "2":  # each fold ran in a process of its own, its output in a log
        assert {p.name for p in root.glob("*.log")} == {"Session1.log", "Session2.log", "Session3.log"}
        assert "Session2.log" in report["summary"]["failed"]["Session2"]


def test_resume_mid_epoch_refuses_another_global_batch_size(synthetic_corpus, tmp_path):
    out = tmp_path / "run"
    train.main(_flags(synthetic_corpus, out, "--epochs", "1", "--no-augment"))
    state_path = out / "last" / train.STATE_NAME
    state = json.loads(state_path.read_text())
    assert state["global_batch"] == 8  # --batch-size 8 in a world of one
    # As if interrupted one batch into epoch 2 of a run of 2 processes x 8: its batch count means other batches.
    state.update(epoch=1, batch_in_epoch=1, global_batch=16)
    state_path.write_text(json.dumps(state))
    with pytest.raises(SystemExit, match="global batches of 16 utterances; this run's are 8"):
        train.main(_flags(synthetic_corpus, out, "--epochs", "2", "--no-augment", "--resume"))
