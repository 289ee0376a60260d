"""DistributedDataParallel on the CPU with gloo: real processes under torchrun, rendezvous on a free loopback port.

N ranks with per-rank batch B must compute what one process computes with batch N x B. Dropout is off in the
runs compared across world sizes (tests/ddp_worker.py says why); everything else is the trainer's own path.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from benchmarks.loopback import free_port

ROOT = Path(__file__).resolve().parent.parent
WORKER = Path(__file__).resolve().parent / "ddp_worker.py"

# Parameters whose gradient is zero in exact arithmetic, so that what AdamW makes of them is rounding noise (it
# divides each gradient by its own running RMS): attention key biases (q.(k + b) adds the same score to every key
# of a query, and softmax ignores that) and the ACL head's last bias (the same shift of every score in a row).
GRADIENT_FREE = ("k_proj.bias", ".key.bias", "acl_head.2.bias")


def _env() -> dict:
    return {**os.environ, "PYTHONPATH": str(ROOT), "GLOO_SOCKET_IFNAME": "lo", "OMP_NUM_THREADS": "1",
            "TQDM_DISABLE": "1"}



def _run(args: list[str], nproc: int = 1, module: bool = False) -> None:
    """``python WORKER args`` (``python -m args`` with ``module``), under torchrun when ``nproc`` > 1."""
    target = ["-m", *args] if module else [str(WORKER), *args]
    if nproc > 1:
        target = ["-m", "torch.distributed.run", "--nnodes", "1", "--nproc_per_node", str(nproc),
                  "--rdzv-backend", "c10d", "--rdzv-endpoint", f"127.0.0.1:{free_port()}",
                  *(["--module"] if module else []), *(args if module else [str(WORKER), *args])]
    done = subprocess.run([sys.executable, *target], cwd=ROOT, env=_env(), capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, f"{' '.join(target)} failed:\n{done.stdout[-3000:]}\n{done.stderr[-6000:]}"


def _weights(run: Path) -> dict[str, torch.Tensor]:
    return load_file(str(run / "last" / "model.safetensors"))


def test_two_ranks_compute_the_gradients_of_one_process_with_the_global_batch(tmp_path):
    # One forward and backward of a global batch of 8 (ACL on), as 2 ranks of 4 through DDP and as 1 process of 8.
    one, two = tmp_path / "one", tmp_path / "two"
    one.mkdir(), two.mkdir()
    _run(["grads", str(one), "8"])
    _run(["grads", str(two), "8"], nproc=2)
    for variant in ("sum-published", "mean-supcon", "naive"):
        a, b = load_file(str(one / f"{variant}.safetensors")), load_file(str(two / f"{variant}.safetensors"))
        assert a.keys() == b.keys()
        scale = max(g.abs().max().item() for g in a.values())
        worst = max((a[name] - b[name]).abs().max().item() for name in a) / scale
        if variant == "naive":
            # Each rank's losses over its own 4 only (CTC summed per rank, SCL within the rank): clearly different.
            assert worst > 0.1
        else:
            # float32 sums in another order (two 4-row batches and a gloo all-reduce against one 8-row batch):
            # measured <= 7e-7 of the largest gradient; 1e-5 leaves a 14x margin and is 10^4 below the naive error.
            assert worst < 1e-5, variant


def test_two_ranks_train_like_one_process_with_twice_the_batch_and_resume_exactly(synthetic_corpus, tmp_path):
    flags = ["--manifest", str(synthetic_corpus), "--preset", "tiny", "--grad-accum", "2", "--lr", "1e-3",
             "--validation", "0.34", "--test-session", "Session3"]  # 24 training clips: 3 global batches of 8
    one, two, broken = tmp_path / "one", tmp_path / "two", tmp_path / "broken"
    _run(["train", *flags, "--out", str(one), "--batch-size", "8", "--epochs", "2"])
    _run(["train", *flags, "--out", str(two), "--batch-size", "4", "--epochs", "2"], nproc=2)

    # CE, CTC (summed), published SCL and ACL; 2 epochs of 2 optimizer steps, the first of each after a
    # no_sync micro-batch. AdamW moves every weight by about lr = 1e-3 a step (4e-3 in all); the two set-ups
    # differ by float32 rounding (5e-6 measured), a wrong loss share by far more (the gradient test above).
    a, b = _weights(one), _weights(two)
    for name in a:
        if name.endswith(GRADIENT_FREE):
            assert (a[name] - b[name]).abs().max() <= 4 * 1e-3 * 1.01, name  # noise, bounded by lr per step
        else:
            torch.testing.assert_close(b[name], a[name], rtol=0, atol=5e-5, msg=name)
    history = [json.loads(line) for line in (two / "history.jsonl").read_text().splitlines()]
    assert [h["epoch"] for h in history] == [1, 2]  # rank 0 alone wrote it
    assert history[-1]["train_loss"] == pytest.approx(
        json.loads((one / "history.jsonl").read_text().splitlines()[-1])["train_loss"], rel=1e-5)
    results = json.loads((two / "results.json").read_text())
    assert results["world_size"] == 2 and results["cut_short"] is None and results["epochs_trained"] == 2

    # Interrupted after epoch 1, then resumed by the real command line (`torchrun -m training.train --resume`;
    # the checkpoint's config keeps dropout off): the same weights as the run that was never interrupted.
    _run(["train", *flags, "--out", str(broken), "--batch-size", "4", "--epochs", "1"], nproc=2)
    _run(["training.train", *flags, "--out", str(broken), "--batch-size", "4", "--epochs", "2", "--resume"],
         nproc=2, module=True)
    resumed = _weights(broken)
    for name in b:
        torch.testing.assert_close(resumed[name], b[name], rtol=0, atol=1e-6, msg=name)
    assert [json.loads(line)["epoch"] for line in (broken / "history.jsonl").read_text().splitlines()] == [1, 2]
