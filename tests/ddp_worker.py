"""What tests/test_ddp.py runs in each process, alone or under torchrun: the trainer, or one step's gradients.

    python tests/ddp_worker.py train TRAIN_FLAGS...        # training.train.main with dropout off
    python tests/ddp_worker.py grads OUT_DIR GLOBAL_BATCH

Dropout is turned off (every probability 0) in the tiny preset: N ranks draw their masks for tensors of other
shapes than one process does, so with dropout on no two set-ups could give the same weights; everything else
(data order, augmentation, loss reductions, the gathers, accumulation, checkpoints) is what it is in training.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from training import model as model_module  # noqa: E402


def tiny_config_without_dropout(**kwargs):
    config = model_module.tiny_config(**kwargs)
    config.fusion_dropout = config.ctc_dropout = 0.0
    for key in ("hidden_dropout", "attention_dropout", "activation_dropout", "feat_proj_dropout", "final_dropout",
                "hidden_dropout_prob", "attention_probs_dropout_prob"):
        for encoder in (config.audio, config.text):
            if key in encoder:
                encoder[key] = 0.0
    return config


def train(flags: list[str]) -> None:
    from training import train as train_module

    model_module.PRESETS["tiny"] = tiny_config_without_dropout
    train_module.main(flags)


# (name, ctc_reduction, scl, losses over the global batch): the last one computes each rank's losses over its own
# part alone, the naive way, to show that the test comparing the gradients can tell it apart.
VARIANTS = (("sum-published", "sum", "published", True), ("mean-supcon", "mean", "supcon", True),
            ("naive", "sum", "published", False))


def grads(out_dir: str, global_batch: int) -> None:
    """One forward and backward through DDP of this rank's part of a seeded global batch per VARIANTS entry, with
    ACL on; rank 0 saves the gradients to OUT_DIR/NAME.safetensors."""
    from safetensors.torch import save_file

    from mmer_rt.audio import pad_batch
    from mmer_rt.text import TextTokenizer, ctc_targets
    from training.distributed import setup
    from training.losses import mmer_loss
    from training.model import MMER
    from training.tokenizer import build_tokenizer
    from training.train import _Views  # the trainer's own wrapper

    ranks = setup("cpu")
    torch.manual_seed(0)
    model = MMER.from_config(tiny_config_without_dropout()).train()
    rng = np.random.default_rng(0)
    words = "oh no fine go away why would you do that leave me alone what a day".split()
    texts = [" ".join(rng.choice(words, size=2)) for _ in range(global_batch)]
    lengths = rng.integers(1500, 2600, size=global_batch)
    audio = [rng.standard_normal(n).astype(np.float32) for n in lengths]
    aug_audio = [a * 0.8 + 0.1 * rng.standard_normal(len(a)).astype(np.float32) for a in audio]
    labels = torch.tensor(rng.integers(0, 4, size=global_batch))
    tokenizer_path = Path(out_dir) / f"tokenizer.rank{ranks.rank}.json"
    tokenizer = TextTokenizer(build_tokenizer(texts * 4, 320, tokenizer_path))
    per_rank = global_batch // ranks.world_size
    mine = slice(ranks.rank * per_rank, (ranks.rank + 1) * per_rank)

    def view(waveforms, prefix):
        values, mask = pad_batch(waveforms[mine])
        encoded = tokenizer.encode_batch(texts[mine])
        return {f"{prefix}input_values": torch.from_numpy(values), f"{prefix}sample_mask": torch.from_numpy(mask),
                f"{prefix}input_ids": torch.from_numpy(encoded.input_ids),
                f"{prefix}attention_mask": torch.from_numpy(encoded.attention_mask)}

    batch = {**view(audio, ""), **view(aug_audio, "aug_")}
    wrapped = _Views(model)
    if ranks.enabled:
        wrapped = torch.nn.parallel.DistributedDataParallel(wrapped, forward_sync_buffers=False)
    targets = [torch.tensor(ctc_targets(t)) for t in texts[mine]]
    for name, ctc_reduction, scl, global_losses in VARIANTS:
        model.zero_grad(set_to_none=True)
        out_main, out_aug = wrapped(batch, True)
        loss, _ = mmer_loss(out_main, out_aug, labels[mine], targets, scl=scl, ctc_reduction=ctc_reduction,
                            ranks=ranks if ranks.enabled and global_losses else None)
        (loss * (ranks.world_size if global_losses else 1)).backward()
        if ranks.is_main:
            save_file({n: p.grad.contiguous() for n, p in model.named_parameters() if p.grad is not None},
                      str(Path(out_dir) / f"{name}.safetensors"))
    ranks.close()


if __name__ == "__main__":
    mode, *rest = sys.argv[1:]
    if mode == "train":
        train(rest)
    elif mode == "grads":
        grads(rest[0], int(rest[1]))
    else:
        raise SystemExit(f"unknown mode {mode!r}")
