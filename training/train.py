"""Train MMER: CE + lambda * (CTC + SCL + ACL), AdamW at a constant learning rate with gradient accumulation.

    python -m training.train --manifest corpus/manifest.jsonl --out runs/fold1 --test-session Session1
    torchrun --nproc_per_node=4 -m training.train --manifest ... --out ...   # DistributedDataParallel, 4 ranks

Every knob is a flag; ``--config FILE.json`` sets defaults for any of them (flags still win). The run directory
holds ``best/`` (the checkpoint with the highest validation UA), ``last/`` (model, optimizer and progress, written
atomically, for ``--resume``), ``history.jsonl`` and ``results.json``. Model selection uses a validation split of
whole speakers drawn from the training sessions; the test session is only scored, once, at the end.

Under torchrun (``training/distributed.py``) every rank trains on its own equal part of each length-bucketed global
batch of ``--batch-size`` x world-size utterances, the losses are shares of the global batch's loss (SCL and ACL
gather the projections of every rank), DDP all-reduces the gradients on the last micro-batch of each accumulation
only, and rank 0 alone writes checkpoints, logs and progress bars. The run trains its ``--epochs``; only an
explicit ``--max-minutes`` stops it sooner, and then the log, ``results.json`` and the summary say so.
"""

from __future__ import annotations

import argparse
import inspect
import json
import os
import random
import shutil
import sys
import time
from contextlib import nullcontext
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from mmer_rt.corpus import Utterance, read_manifest
from mmer_rt.errors import MMERError
from mmer_rt.text import TextTokenizer

from .checkpoint import load_checkpoint, save_checkpoint
from .distributed import Distributed, choose_device, rank_batches, setup
from .data import Collator, UtteranceDataset, leave_one_session_out, length_bucketed_batches, speaker_split
from .losses import SCL_FORMS, mmer_loss
from .metrics import Scores, score
from .model import IEMOCAP_LABELS, MMER, PRESETS, MMERConfig
from .tokenizer import build_tokenizer, tokenizer_from_pretrained

STATE_NAME = "trainer_state.json"
OPTIMIZER_NAME = "optimizer.safetensors"


@dataclass
class TrainConfig:
    manifest: str = ""
    out: str = ""
    labels: str = ",".join(IEMOCAP_LABELS)
    preset: str = "small"
    audio_pretrained: str | None = None
    text_pretrained: str | None = None
    tokenizer: str | None = None  # an existing tokenizer.json; default: the pretrained one, or trained on the corpus
    vocab_size: int = 320  # for a tokenizer trained on the corpus (tiny and small presets)
    train_text_encoder: bool = False
    train_feature_encoder: bool = False
    epochs: int = 10
    batch_size: int = 4
    grad_accum: int = 4
    lr: float = 1e-5
    weight_decay: float = 0.01
    lam: float = 0.1
    scl: str = "published"
    ctc_reduction: str = "sum"
    augment: bool = True
    max_audio_seconds: float = 210_000 / 16_000
    test_session: str | None = None
    validation: float = 0.15  # fraction of the training speakers held out for model selection
    device: str = "auto"
    seed: int = 0
    workers: int = 1  # one loader process per training process: measured faster than loading in it (threads_for)
    threads: int = 0  # intra-op CPU threads per process; 0 = the measured choice (threads_for)
    checkpoint_every: int = 0  # optimizer steps between mid-epoch checkpoints; 0 = at the end of each epoch only
    max_minutes: float = 0.0  # an explicit wall-clock limit, checked after each epoch; 0 = none
    resume: bool = False


# Each TrainConfig field's --help line (its default is added from the field); a field without one fails
# tests/test_cli_help.py.
FLAG_HELP = {
    "manifest": "data manifest to train on (JSONL, one utterance a line; see the README's Training section)",
    "out": "run directory for checkpoints, history and results (must be empty unless --resume)",
    "labels": "comma-separated emotion labels in logit order; manifest rows with other labels are refused",
    "preset": "model size (tiny and small train from scratch on a CPU; base is wav2vec2-base + roberta-base)",
    "audio_pretrained": "start the audio encoder from this wav2vec2 checkpoint (local directory or hub name)",
    "text_pretrained": "start the text encoder and its tokenizer from this RoBERTa-family checkpoint",
    "tokenizer": "an existing tokenizer.json to use (default: the pretrained one, else one trained on the corpus)",
    "vocab_size": "vocabulary size of a tokenizer trained on the corpus (tiny and small presets)",
    "train_text_encoder": "fine-tune the text encoder too (the paper keeps it frozen)",
    "train_feature_encoder": "train wav2vec2's convolutional front end too",
    "epochs": "passes over the training set",
    "batch_size": "utterances per batch and process (under torchrun a global batch is this x the processes)",
    "grad_accum": "batches whose gradients are summed before each optimizer step",
    "lr": "AdamW learning rate (constant)",
    "weight_decay": "AdamW weight decay",
    "lam": "weight lambda of the auxiliary losses: CE + lambda * (CTC + SCL + ACL)",
    "scl": "supervised-contrastive loss: 'published' as the authors' code computes it, 'supcon' as Khosla et al.",
    "ctc_reduction": "CTC loss 'sum' over the batch as published, or 'mean' per target character, then over the batch",
    "augment": "augmented second view of each utterance for the augmentation-contrastive loss (ACL); "
               "--no-augment halves the time per epoch",
    "max_audio_seconds": "clips longer than this are cut to it",
    "test_session": "session held out for the final test (its speakers never seen in training or selection)",
    "validation": "fraction of the training speakers held out for model selection",
    "device": "auto (CUDA when torch sees a GPU), cpu, cuda or any torch device name",
    "seed": "seed of every random choice (split, shuffling, augmentation, initialisation)",
    "workers": "DataLoader worker processes per training process (0 = load in the training process; 1, the "
               "measured choice, loads the next batch while the model trains on this one: README, 'Training on "
               "several GPUs or machines')",
    "threads": "intra-op CPU threads per process (0 = the measured choice, 1 thread: README, 'Training on "
               "several GPUs or machines')",
    "checkpoint_every": "optimizer steps between mid-epoch checkpoints (0 = at the end of each epoch only)",
    "max_minutes": "wall-clock limit: stop after the epoch in progress once this much time has passed (0 = none, "
                   "train every --epochs); a run it cuts short says so in the log, results.json and the summary",
    "resume": "continue the run saved in --out/last",
}
FLAG_CHOICES = {"preset": sorted(PRESETS), "scl": SCL_FORMS, "ctc_reduction": ("sum", "mean")}


def parse_args(argv: list[str] | None = None, prog: str = "python -m training.train",
               description: str = __doc__.split("\n")[0]) -> TrainConfig:
    parser = build_parser(prog, description)
    return config_from_args(parser, vars(parser.parse_args(argv)))


def build_parser(prog: str = "python -m training.train",
                 description: str = __doc__.split("\n")[0]) -> argparse.ArgumentParser:
    """A parser of every TrainConfig flag and --config; training.loso adds its own flags to it."""
    parser = argparse.ArgumentParser(prog=prog, description=description)
    parser.add_argument("--config", type=Path, help="JSON file of defaults for any flag below (snake_case keys)")
    for field in fields(TrainConfig):
        flag = "--" + field.name.replace("_", "-")
        # default=None so that --config can fill what the command line leaves out; the real default is in the help.
        help_text = FLAG_HELP.get(field.name)
        if help_text is not None and field.type == "bool":
            help_text += f" (default: {flag if field.default else '--no-' + flag[2:]})"
        elif help_text is not None and field.default not in (None, ""):
            help_text += f" (default: {field.default})"
        if field.type == "bool":
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=None, help=help_text)
        else:
            parser.add_argument(flag, type={"int": int, "float": float}.get(field.type, str), default=None,
                                choices=FLAG_CHOICES.get(field.name), help=help_text)
    return parser


def config_from_args(parser: argparse.ArgumentParser, args: dict) -> TrainConfig:
    """The TrainConfig of parsed flags (``vars(namespace)``) over the --config file's values over the defaults."""
    known = {f.name for f in fields(TrainConfig)}
    config_file = args.get("config")
    values = _read_config_file(config_file) if config_file else {}
    values.update({k: v for k, v in args.items() if v is not None and k in known})
    config = TrainConfig(**values)
    for required in ("manifest", "out"):
        if not getattr(config, required):
            parser.error(f"--{required} is required (on the command line or in --config)")
    return config


def _read_config_file(path: Path) -> dict:
    try:
        values = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as error:
        raise SystemExit(f"error: cannot read --config {path}: {error}")
    known = {f.name for f in fields(TrainConfig)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise SystemExit(f"error: {path}: unknown keys {unknown}; known keys are {sorted(known)}")
    return values


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


@dataclass
class Progress:
    """Where a run stands; saved with ``last/`` so that ``--resume`` continues exactly there."""

    epoch: int = 0  # the epoch in progress (0-based)
    batch_in_epoch: int = 0  # batches of that epoch already trained on
    optimizer_steps: int = 0
    best_ua: float = -1.0
    best_loss: float | None = None  # validation cross-entropy of the best epoch: breaks ties in UA
    best_epoch: int = -1
    elapsed_s: float = 0.0
    global_batch: int = 0  # utterances per step over all ranks: batch_in_epoch counts batches of this size


def threads_for(requested: int, training: bool = True) -> int:
    """Intra-op threads for one training (or, ``training=False``, evaluation) process: ``requested``, or (0) the
    measured choice: 1 for training, torch's default of one per core for evaluation.

    Measured with ``python -m benchmarks.train_threads`` on 2 Xeon cores (README, "Training on several GPUs or
    machines"). On the idle machine a training step of the demo's small preset took 0.48 s with one thread
    and 0.74 s with two: at these widths a backward pass is too small to split across threads, and the second
    thread waits on the data loading. Evaluation, forward passes only, went the other way: 2.42 s with one thread,
    1.44 s with two. Under load (load average 16) one thread won both, by 9x and 5x. One DataLoader worker
    (``--workers 1``, the default) was 1.15x faster than loading in the training process. Under torchrun every rank
    is a process of its own, so one thread per process also keeps N ranks on N cores. Larger models on many idle
    cores may gain from more: pass ``--threads``.
    """
    if requested < 0:
        raise SystemExit(f"error: --threads {requested}: give a positive count, or 0 for the measured default")
    return requested or (1 if training else torch.get_num_threads())


class _Views(nn.Module):
    """The model on a batch's original view and, for ACL, on its augmented view, in one forward call: DDP expects
    one forward per backward, and the wrapper keeps the checkpointed model's parameter names unchanged."""

    def __init__(self, model: MMER):
        super().__init__()
        self.model = model

    def forward(self, batch: dict, augmented: bool):
        out = self.model(batch["input_values"], batch["sample_mask"], batch["input_ids"], batch["attention_mask"])
        aug_out = None
        if augmented:
            aug_out = self.model(batch["aug_input_values"], batch["aug_sample_mask"], batch["aug_input_ids"],
                                 batch["aug_attention_mask"])
        return out, aug_out


class Trainer:
    """One training run: data, model, optimizer and the loop, with checkpoints in ``config.out``.

    ``ranks`` says where this process stands under torchrun (``training.distributed.setup``); without it the run
    is a world of one.
    """

    def __init__(self, config: TrainConfig, ranks: Distributed | None = None):
        self.config = config
        self.ranks = ranks or Distributed(device=choose_device(config.device))
        self.out = Path(config.out)
        self.labels = [label.strip() for label in config.labels.split(",") if label.strip()]
        self.device = self.ranks.device
        torch.set_num_threads(threads_for(config.threads))
        seed_everything(config.seed)
        self._prepare_run_dir()
        self.split = self._split(read_manifest(config.manifest, labels=self.labels))
        self.max_samples = int(round(config.max_audio_seconds * 16_000))
        self.train_set = UtteranceDataset(self.split["train"], self.labels, self.max_samples, config.augment,
                                          config.seed)
        self.use_acl = self.train_set.has_augmented_view
        self.model, tokenizer_path = self._model()
        self.tokenizer_path = tokenizer_path
        self.collate = Collator(TextTokenizer(tokenizer_path), self.model.config.ctc_vocab)
        self.train_lengths = self.train_set.audio_lengths()  # from file headers, once: batches are bucketed by them
        trainable = [p for p in self.model.parameters() if p.requires_grad]
        self.optimizer = torch.optim.AdamW(trainable, lr=config.lr, weight_decay=config.weight_decay)
        self.train_model = self._wrap(self.model)
        self.amp_dtype = None
        if self.device.type == "cuda":
            self.amp_dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.amp_dtype == torch.float16)
        self.progress = Progress()
        if config.resume:
            self._restore()

    # ----- set-up ---------------------------------------------------------------------------------------------
    def _prepare_run_dir(self) -> None:
        # Every rank checks before any rank writes, so all of them stop on the same error.
        last = self.out / "last"
        if self.config.resume:
            if not (last / STATE_NAME).is_file():
                raise SystemExit(f"error: --resume: {last} holds no saved run to continue")
            return
        if self.out.exists() and any(self.out.iterdir()):
            raise SystemExit(
                f"error: {self.out} is not empty; pass --resume to continue the run saved there, or choose "
                "another --out (nothing is overwritten)"
            )
        self.ranks.barrier()
        if self.ranks.is_main:
            self.out.mkdir(parents=True, exist_ok=True)
            (self.out / "train_config.json").write_text(json.dumps(asdict(self.config), indent=2) + "\n")

    def log(self, message: str) -> None:
        if self.ranks.is_main:
            tqdm.write(message)

    def _split(self, utterances: list[Utterance]) -> dict[str, list[Utterance]]:
        if self.config.test_session:
            fold = leave_one_session_out(utterances, self.config.test_session, self.config.validation,
                                         self.config.seed)
            split = {"train": fold.train, "validation": fold.validation, "test": fold.test}
        else:
            train, validation = speaker_split(utterances, self.config.validation, self.config.seed)
            split = {"train": train, "validation": validation, "test": []}
        for name, rows in split.items():
            speakers = sorted({u.speaker for u in rows})
            self.log(f"{name}: {len(rows)} utterances, {len(speakers)} speakers")
        return split

    def _model(self) -> tuple[MMER, Path]:
        if self.config.resume:
            model, tokenizer_path = load_checkpoint(self.out / "last")
            self._set_trainable(model)
            return model.to(self.device), tokenizer_path
        tokenizer_path = self.out / "tokenizer.json"
        if self.ranks.is_main:
            if self.config.tokenizer:
                shutil.copyfile(self.config.tokenizer, tokenizer_path)
            elif self.config.text_pretrained:
                tokenizer_from_pretrained(self.config.text_pretrained, tokenizer_path)
            else:
                build_tokenizer([u.text for u in self.split["train"]], self.config.vocab_size, tokenizer_path)
        self.ranks.barrier()  # the other ranks read the tokenizer rank 0 wrote
        model_config = self._model_config()
        model = MMER.from_config(model_config)
        self._set_trainable(model)
        return model.to(self.device), tokenizer_path

    def _model_config(self) -> MMERConfig:
        if self.config.preset not in PRESETS:
            raise SystemExit(f"error: --preset {self.config.preset!r}: choose one of {sorted(PRESETS)}")
        preset = PRESETS[self.config.preset]
        kwargs = {"labels": self.labels}
        if "vocab_size" in inspect.signature(preset).parameters:  # presets whose tokenizer is trained here
            kwargs["vocab_size"] = self.config.vocab_size
        model_config = preset(**kwargs)
        model_config.audio_pretrained = self.config.audio_pretrained
        model_config.text_pretrained = self.config.text_pretrained
        model_config.freeze_text_encoder = not self.config.train_text_encoder
        model_config.freeze_feature_encoder = not self.config.train_feature_encoder
        model_config.max_audio_samples = self.max_samples
        return model_config

    def _set_trainable(self, model: MMER) -> None:
        # A checkpoint records the model, not this run's choices of what to fine-tune: apply them again.
        model.config.freeze_text_encoder = not self.config.train_text_encoder
        model.config.freeze_feature_encoder = not self.config.train_feature_encoder
        model.text_encoder.frozen = model.config.freeze_text_encoder
        for p in model.text_encoder.parameters():
            p.requires_grad = not model.config.freeze_text_encoder
        for p in model.audio_encoder.wav2vec2.feature_extractor.parameters():
            p.requires_grad = not model.config.freeze_feature_encoder
        # Parameters no loss reaches are frozen, so DDP need not search the graph for unused ones every step: the ACL
        # head without an augmented pass, and wav2vec2's mask embedding (SpecAugment is off; HF skips it then, but a
        # config or checkpoint may still carry it).
        for p in model.acl_head.parameters():
            p.requires_grad = self.use_acl
        masked_spec_embed = getattr(model.audio_encoder.wav2vec2, "masked_spec_embed", None)
        if isinstance(masked_spec_embed, nn.Parameter):
            masked_spec_embed.requires_grad = False

    def _wrap(self, model: MMER) -> nn.Module:
        """The module the loop calls: the model in DistributedDataParallel when there are several ranks."""
        views = _Views(model)
        if not self.ranks.enabled:
            return views
        norms = [name for name, m in model.named_modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
        if norms:  # GroupNorm and LayerNorm normalise each utterance alone; batch statistics would differ per rank
            raise SystemExit(f"error: the model has batch-norm layers {norms[:3]}; DDP training here assumes none")
        # LayerDrop (wav2vec2-base: 0.05) skips whole layers at random, leaving their parameters unused in a step.
        layerdrop = model.audio_encoder.config.layerdrop > 0
        return torch.nn.parallel.DistributedDataParallel(
            views, device_ids=[self.device.index] if self.device.type == "cuda" else None,
            forward_sync_buffers=False,  # the only buffers are constant position ids: nothing to keep in step
            find_unused_parameters=layerdrop,
        )

    # ----- the loop -------------------------------------------------------------------------------------------
    def fit(self) -> dict:
        started = time.monotonic() - self.progress.elapsed_s
        global_batch = self.config.batch_size * self.ranks.world_size
        saved = self.progress.global_batch
        if self.progress.batch_in_epoch and saved and saved != global_batch:
            raise SystemExit(
                f"error: --resume: {self.out / 'last'} stopped {self.progress.batch_in_epoch} batches into epoch "
                f"{self.progress.epoch + 1} with global batches of {saved} utterances; this run's are {global_batch} "
                f"(--batch-size x processes): resume with the same batch size and number of processes")
        self.progress.global_batch = global_batch
        cut_short = None
        for epoch in range(self.progress.epoch, self.config.epochs):
            self.progress.epoch = epoch
            train_loss = self._train_epoch(epoch, started)
            scores, val_loss = self.evaluate(self.split["validation"], f"validate {epoch + 1}")
            self.progress.epoch, self.progress.batch_in_epoch = epoch + 1, 0
            self.progress.elapsed_s = self.ranks.from_main(time.monotonic() - started)
            improved = self._is_better(scores.ua, val_loss)
            if improved:
                self.progress.best_ua, self.progress.best_loss = scores.ua, val_loss
                self.progress.best_epoch = epoch + 1
                self._save_atomic(self.out / "best", with_optimizer=False)
            self._save_atomic(self.out / "last", with_optimizer=True)
            record = {"epoch": epoch + 1, "train_loss": train_loss, "val_wa": scores.wa, "val_ua": scores.ua,
                      "val_loss": val_loss,
                      "best": improved, "elapsed_s": round(self.progress.elapsed_s, 1)}
            if self.ranks.is_main:
                with open(self.out / "history.jsonl", "a", encoding="utf-8") as history:
                    history.write(json.dumps(record) + "\n")
            self.log(f"epoch {epoch + 1}: loss {train_loss:.4f}  val WA {scores.wa:.3f}  val UA {scores.ua:.3f}  "
                     f"val CE {val_loss:.3f}"
                     + ("  (best)" if improved else ""))
            limit = self.config.max_minutes
            if limit and self.progress.elapsed_s > 60 * limit and epoch + 1 < self.config.epochs:
                cut_short = {"reason": f"--max-minutes {limit:g}", "epochs_trained": epoch + 1,
                             "epochs_planned": self.config.epochs}
                self.log(_cut_short_warning(cut_short))
                break
        return self._finish(cut_short)

    def _train_epoch(self, epoch: int, started: float) -> float:
        self.train_model.train()
        # Seeded per epoch, so a run resumed at an epoch boundary draws the same dropout masks as an unbroken one;
        # and per rank, so that ranks do not draw the same masks for their different utterances.
        torch.manual_seed(self.config.seed * 1000 + epoch + 7919 * self.ranks.rank)
        self.train_set.set_epoch(epoch)
        world = self.ranks.world_size
        global_batches = length_bucketed_batches(self.train_lengths, self.config.batch_size * world,
                                                 seed=self.config.seed * 1000 + epoch)
        batches = rank_batches(global_batches, self.ranks.rank, world)
        skip = self.progress.batch_in_epoch  # batches finished before an interruption
        loader = torch.utils.data.DataLoader(
            self.train_set, batch_sampler=batches[skip:], collate_fn=self.collate,
            num_workers=self.config.workers, persistent_workers=False,
        )
        loss_sum, count = torch.zeros(()), 0
        bar = tqdm(loader, total=len(batches), initial=skip, desc=f"epoch {epoch + 1}/{self.config.epochs}",
                   leave=False, dynamic_ncols=True, disable=not self.ranks.is_main)
        self.optimizer.zero_grad(set_to_none=True)
        for index, batch in enumerate(bar, start=skip):
            last_batch = index + 1 == len(batches)
            step = (index + 1) % self.config.grad_accum == 0 or last_batch
            # On accumulation micro-batches DDP keeps its gradients local: one all-reduce per optimizer step.
            sync = nullcontext() if step or not self.ranks.enabled else self.train_model.no_sync()
            with sync:
                loss, parts = self._loss(batch)
                # The loss is this rank's share of the global batch's; DDP averages over ranks, hence * world.
                self.scaler.scale(loss * (world / self.config.grad_accum)).backward()
            loss_sum += parts["total"].float().cpu()
            count += 1
            if step:
                self.scaler.step(self.optimizer)
                self.scaler.update()
                self.optimizer.zero_grad(set_to_none=True)
                self.progress.optimizer_steps += 1
                self.progress.batch_in_epoch = index + 1
                every = self.config.checkpoint_every
                if every and self.progress.optimizer_steps % every == 0 and not last_batch:
                    self.progress.elapsed_s = self.ranks.from_main(time.monotonic() - started)
                    self._save_atomic(self.out / "last", with_optimizer=True)
            if self.ranks.is_main:  # rank 0's share scaled up: an estimate of the global batch's figures
                bar.set_postfix({k: f"{v.item() * world:.3f}" for k, v in parts.items()})
        # The mean over this session's batches of the global batch's loss (the shares summed over the ranks).
        return float(self.ranks.sum(loss_sum) / count) if count else float("nan")

    def _loss(self, batch: dict):
        batch = {k: (v.to(self.device) if torch.is_tensor(v) else v) for k, v in batch.items()}
        with torch.autocast(self.device.type, dtype=self.amp_dtype, enabled=self.amp_dtype is not None):
            out, aug_out = self.train_model(batch, self.use_acl)
        targets = [t.to(self.device) for t in batch["ctc_targets"]]
        return mmer_loss(out, aug_out, batch["labels"], targets, lam=self.config.lam, scl=self.config.scl,
                         ctc_reduction=self.config.ctc_reduction, ranks=self.ranks if self.ranks.enabled else None)

    def _is_better(self, ua: float, loss: float) -> bool:
        """Higher validation UA wins; on a small validation set UA often ties, and then lower cross-entropy wins."""
        best = self.progress
        return ua > best.best_ua or (ua == best.best_ua and (best.best_loss is None or loss < best.best_loss))

    @torch.no_grad()
    def evaluate(self, utterances: list[Utterance], desc: str) -> tuple[Scores, float]:
        """Scores and mean cross-entropy of the model on ``utterances`` (each rank scores a part; all get all)."""
        y_true, probabilities = predict(self.model, utterances, self.labels, self.collate, self.max_samples,
                                        self.config.batch_size * 2, self.device, desc, ranks=self.ranks)
        cross_entropy = float(-np.log(np.maximum(probabilities[np.arange(len(y_true)), y_true], 1e-12)).mean())
        return score(y_true, probabilities.argmax(-1), self.labels), cross_entropy

    def _finish(self, cut_short: dict | None = None) -> dict:
        results = {"best_epoch": self.progress.best_epoch, "val_ua": self.progress.best_ua,
                   "epochs_trained": self.progress.epoch, "epochs_planned": self.config.epochs,
                   "cut_short": cut_short,
                   "elapsed_s": round(self.progress.elapsed_s, 1), "test_session": self.config.test_session,
                   "world_size": self.ranks.world_size}
        if self.split["test"]:
            self.ranks.barrier()  # rank 0 has written best/
            self.model, _ = load_checkpoint(self.out / "best")
            self.model.to(self.device)
            test, _ = self.evaluate(self.split["test"], "test")
            results["test"] = test.to_dict()
            self.log(f"test ({self.config.test_session}, best epoch {self.progress.best_epoch}): "
                     f"WA {test.wa:.3f}  UA {test.ua:.3f}\n{test.table()}")
        if cut_short:
            self.log(_cut_short_warning(cut_short))  # again, beside the figures it qualifies
        if self.ranks.is_main:
            (self.out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
        return results

    # ----- checkpoints ----------------------------------------------------------------------------------------
    def _save_atomic(self, target: Path, with_optimizer: bool) -> None:
        """Write a checkpoint next to ``target`` and swap it in, so an interruption never leaves a half-written one.

        Rank 0 writes; the model and optimizer are the same on every rank.
        """
        if not self.ranks.is_main:
            return
        staging = target.with_name(target.name + ".tmp")
        shutil.rmtree(staging, ignore_errors=True)
        save_checkpoint(self.model, staging, self.tokenizer_path,
                        extra={"progress": asdict(self.progress), "labels": self.labels})
        if with_optimizer:
            _save_optimizer(self.optimizer, staging / OPTIMIZER_NAME)
            (staging / STATE_NAME).write_text(json.dumps(asdict(self.progress), indent=2) + "\n")
        old = target.with_name(target.name + ".old")
        shutil.rmtree(old, ignore_errors=True)
        if target.exists():
            os.replace(target, old)
        os.replace(staging, target)
        shutil.rmtree(old, ignore_errors=True)

    def _restore(self) -> None:
        last = self.out / "last"
        self.progress = Progress(**json.loads((last / STATE_NAME).read_text()))
        _load_optimizer(self.optimizer, last / OPTIMIZER_NAME, self.device)
        self.log(f"resuming at epoch {self.progress.epoch + 1}, batch {self.progress.batch_in_epoch} "
                   f"(best validation UA so far {self.progress.best_ua:.3f})")


def _cut_short_warning(cut_short: dict) -> str:
    return (f"WARNING: training was CUT SHORT by {cut_short['reason']}: {cut_short['epochs_trained']} of "
            f"{cut_short['epochs_planned']} epochs ran, so these results are not those of the configured run "
            "(results.json: cut_short). Resume with --resume and a larger or no limit to finish it.")


def predict(model: MMER, utterances: list[Utterance], labels: list[str], collate: Collator, max_samples: int,
            batch_size: int, device: torch.device, desc: str = "predict",
            ranks: Distributed | None = None) -> tuple[np.ndarray, np.ndarray]:
    """True class indices (N,) and predicted probabilities (N, C), batched by length, in ``utterances`` order.

    With ``ranks`` of several processes, each scores every world-size-th batch and all receive every row.
    """
    if not utterances:
        raise ValueError(f"{desc}: no utterances to score")
    model.eval()
    dataset = UtteranceDataset(utterances, labels, max_samples, augment=False)
    lengths = dataset.audio_lengths()
    order = sorted(range(len(dataset)), key=lengths.__getitem__)
    batches = [order[i: i + batch_size] for i in range(0, len(order), batch_size)]
    if ranks is not None and ranks.enabled:
        batches = batches[ranks.rank:: ranks.world_size]
    loader = torch.utils.data.DataLoader(dataset, batch_sampler=batches, collate_fn=collate)
    probabilities = np.zeros((len(dataset), len(labels)))
    bar = tqdm(loader, desc=desc, leave=False, dynamic_ncols=True, disable=ranks is not None and not ranks.is_main)
    for indices, batch in zip(batches, bar):
        out = model(batch["input_values"].to(device), batch["sample_mask"].to(device),
                    batch["input_ids"].to(device), batch["attention_mask"].to(device))
        probabilities[indices] = out.logits.float().softmax(-1).cpu().numpy()
    if ranks is not None and ranks.enabled:  # each row was scored by one rank and is zero on the others
        probabilities = ranks.sum(torch.from_numpy(probabilities)).numpy()
    return np.array(dataset.label_ids), probabilities


def _save_optimizer(optimizer: torch.optim.Optimizer, path: Path) -> None:
    from safetensors.torch import save_file

    state = optimizer.state_dict()
    tensors = {f"state.{param}.{key}": value.detach().contiguous().cpu()
               for param, entries in state["state"].items() for key, value in entries.items()
               if torch.is_tensor(value)}
    save_file(tensors, str(path), metadata={"param_groups": json.dumps(state["param_groups"])})


def _load_optimizer(optimizer: torch.optim.Optimizer, path: Path, device: torch.device) -> None:
    from safetensors import safe_open

    with safe_open(str(path), framework="pt", device="cpu") as handle:
        param_groups = json.loads(handle.metadata()["param_groups"])
        state: dict[int, dict] = {}
        for name in handle.keys():
            _, param, key = name.split(".", 2)
            state.setdefault(int(param), {})[key] = handle.get_tensor(name)
    try:
        optimizer.load_state_dict({"state": state, "param_groups": param_groups})
    except ValueError as error:  # another set of trained parameters than the run that saved it
        raise SystemExit(f"error: --resume: {path} does not fit this run's trainable parameters ({error}); resume "
                         "with the flags the run started with (--augment, --train-text-encoder, "
                         "--train-feature-encoder)") from error
    for entries in optimizer.state.values():
        for key, value in entries.items():
            if torch.is_tensor(value) and key != "step":
                entries[key] = value.to(device)


def main(argv: list[str] | None = None) -> dict:
    config = parse_args(argv)
    ranks = setup(config.device)
    try:
        return Trainer(config, ranks).fit()
    except MMERError as error:
        raise SystemExit(f"error: {error}") from error
    finally:
        ranks.close()


if __name__ == "__main__":
    main(sys.argv[1:])
