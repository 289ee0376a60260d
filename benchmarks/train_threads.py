"""How many CPU threads and data-loading workers the trainer should use: training and evaluation timed side by side.

    python -m benchmarks.train_threads --manifest runs/demo/corpus/manifest.jsonl [--batches 20 --rounds 3]

Builds the demo's trainer (``scripts/demo.py``'s flags: the small preset, batch 8) and times, in one process and
interleaved round by round so that a busy machine's noise falls on every setting alike, ``--batches`` training steps
(load, forward, backward, AdamW) under each intra-op thread count and DataLoader worker count, and one pass of
evaluation over the validation speakers under each thread count. Prints the median seconds per training batch and
per evaluation pass, and each setting's ratio to the fastest. The trainer's defaults (``--threads 0``: 1 thread,
``--workers 1``) were chosen from this table (README, "Training on several GPUs or machines").
"""

from __future__ import annotations

import argparse
import itertools
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from scripts.demo import TRAIN_FLAGS  # noqa: E402
from training.data import length_bucketed_batches  # noqa: E402
from training.train import Trainer, parse_args, predict  # noqa: E402

from .machine import cpu_info  # noqa: E402


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--manifest", required=True, help="a corpus manifest (the demo's: runs/demo/corpus)")
    parser.add_argument("--batches", type=int, default=20, help="training batches timed per setting and round "
                                                                  "(default: 20)")
    parser.add_argument("--rounds", type=int, default=3, help="rounds over all settings (default: 3)")
    parser.add_argument("--threads", default=f"1,{os.cpu_count()}",
                        help="intra-op thread counts to compare (default: 1 and the CPU count)")
    parser.add_argument("--workers", default="0,1", help="DataLoader worker counts to compare (default: 0,1)")
    args = parser.parse_args(argv)
    thread_counts = [int(t) for t in args.threads.split(",")]
    worker_counts = [int(w) for w in args.workers.split(",")]
    with tempfile.TemporaryDirectory() as scratch:
        config = parse_args(["--manifest", args.manifest, "--out", str(Path(scratch) / "run"), *TRAIN_FLAGS,
                             "--test-session", "Session5"])
        trainer = Trainer(config)
        batches = length_bucketed_batches(trainer.train_lengths, config.batch_size, seed=0)[: args.batches]
        train_s: dict[tuple[int, int], list[float]] = {}
        eval_s: dict[int, list[float]] = {}
        for round_index in range(args.rounds):
            for threads, workers in itertools.product(thread_counts, worker_counts):
                torch.set_num_threads(threads)
                train_s.setdefault((threads, workers), []).append(_train(trainer, batches, workers))
            for threads in thread_counts:
                torch.set_num_threads(threads)
                eval_s.setdefault(threads, []).append(_evaluate(trainer))
            print(f"round {round_index + 1} of {args.rounds} done", file=sys.stderr)
    train_median = {k: statistics.median(v) / len(batches) for k, v in train_s.items()}
    eval_median = {k: statistics.median(v) for k, v in eval_s.items()}
    print(f"CPU: {cpu_info()['model']}, {os.cpu_count()} cores; {args.rounds} rounds, median of each")
    print("training (s per batch of 8, load + forward + backward + AdamW):")
    for (threads, workers), seconds in sorted(train_median.items()):
        print(f"  threads {threads}  workers {workers}  {seconds:.3f} s   x{seconds / min(train_median.values()):.2f}")
    print(f"evaluation (s per pass over {len(trainer.split['validation'])} validation clips):")
    for threads, seconds in sorted(eval_median.items()):
        print(f"  threads {threads}  {seconds:.2f} s   x{seconds / min(eval_median.values()):.2f}")
    return {"train_s_per_batch": train_median, "eval_s": eval_median}


def _train(trainer: Trainer, batches: list[list[int]], workers: int) -> float:
    trainer.train_model.train()
    loader = torch.utils.data.DataLoader(trainer.train_set, batch_sampler=batches, collate_fn=trainer.collate,
                                         num_workers=workers)
    started = time.perf_counter()
    for batch in loader:
        loss, _ = trainer._loss(batch)
        loss.backward()
        trainer.optimizer.step()
        trainer.optimizer.zero_grad(set_to_none=True)
    return time.perf_counter() - started


def _evaluate(trainer: Trainer) -> float:
    started = time.perf_counter()
    with torch.no_grad():
        predict(trainer.model, trainer.split["validation"], trainer.labels, trainer.collate, trainer.max_samples,
                trainer.config.batch_size * 2, trainer.device, "evaluate")
    return time.perf_counter() - started



if __name__ == "__main__":
    main()
