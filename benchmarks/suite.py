"""The suite's settings (full or quick, threads, time per case) and the figures recorded for each case.

Settings come from the environment so that CI and the lead's measurement run the same file:
  MMER_BENCH_QUICK=1      tiny model, short clips, few rounds (or ``pytest benchmarks/ --quick``)
  MMER_BENCH_THREADS=N    CPU threads for every route (default: all cores; 1 in quick mode, whose timings only
                          show that the suite still runs: 1 thread keeps it fast on a machine that is busy)
  MMER_BENCH_SECONDS=S    timing budget per case after the warm-up call (default 10, quick 0.2)
  MMER_BENCH_MEMORY=0     skip the per-route peak-memory probes (each is a process of its own)
  MMER_BENCH_CLIPS=2,5    clip lengths in seconds (default 2,5,10; quick 1,2)
  MMER_BENCH_GPU_BATCHES=1,32   batch sizes of the GPU cases (default 1,8,32,128; quick 1,4): what a device lease
                          of 15 minutes holds (scripts/gpu_bench.sh lease)
  MMER_BENCH_BATCHES=1,8  batch sizes of the CPU cases (default 1,8; quick 1,2): a reduced set for a busy machine
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, replace

import numpy as np

from .flops import utterance_flops
from .workload import Workload


@dataclass(frozen=True)
class Settings:
    quick: bool
    size: str
    clips: tuple[float, ...]
    batches: tuple[int, ...]
    gpu_batches: tuple[int, ...]
    threads: int
    seconds_per_case: float
    min_rounds: int
    max_rounds: int
    memory: bool
    seed: int = 0


def settings_from_env(quick: bool = False) -> Settings:
    quick = quick or os.environ.get("MMER_BENCH_QUICK", "0") not in ("", "0")
    threads = int(os.environ.get("MMER_BENCH_THREADS", 1 if quick else os.cpu_count() or 1))
    seconds = float(os.environ.get("MMER_BENCH_SECONDS", 0.2 if quick else 10.0))
    memory = os.environ.get("MMER_BENCH_MEMORY", "1") not in ("", "0")
    if quick:
        settings = Settings(True, "quick", (1.0, 2.0), (1, 2), (1, 4), threads, seconds, 2, 20, memory)
    else:
        # On a GPU, 128 as well: the throughput target (5,000 utterances/s at 5 s) needs batches that fill it.
        settings = Settings(False, "base", (2.0, 5.0, 10.0), (1, 8), (1, 8, 32, 128), threads, seconds, 3, 100,
                            memory)
    clips, gpu_batches = os.environ.get("MMER_BENCH_CLIPS"), os.environ.get("MMER_BENCH_GPU_BATCHES")
    batches = os.environ.get("MMER_BENCH_BATCHES")
    return replace(settings, clips=_numbers(clips, float) if clips else settings.clips,
                   batches=_numbers(batches, int) if batches else settings.batches,
                   gpu_batches=_numbers(gpu_batches, int) if gpu_batches else settings.gpu_batches)


def _numbers(text: str, kind) -> tuple:
    try:
        values = tuple(kind(item) for item in text.split(",") if item.strip())
    except ValueError:
        raise ValueError(f"expected comma-separated numbers, got {text!r}") from None
    if not values or min(values) <= 0:
        raise ValueError(f"expected comma-separated positive numbers, got {text!r}")
    return values


def rounds_for(call_seconds: float, settings: Settings) -> int:
    """Rounds that fill the case's time budget, given one call's duration, within the min and max rounds."""
    wanted = math.ceil(settings.seconds_per_case / max(call_seconds, 1e-9))
    return int(min(max(wanted, settings.min_rounds), settings.max_rounds))


def latency_figures(round_seconds: list[float], workload: Workload) -> dict:
    """Per-call latency percentiles (ms), utterances per second and RTFx, from the median call."""
    times = np.asarray(round_seconds, dtype=np.float64)
    median = float(np.median(times))
    return {
        "rounds": len(times),
        "latency_p50_ms": round(1000 * float(np.percentile(times, 50)), 3),
        "latency_p90_ms": round(1000 * float(np.percentile(times, 90)), 3),
        "latency_p99_ms": round(1000 * float(np.percentile(times, 99)), 3),
        "utterances_per_s": round(workload.batch_size / median, 3),
        "rtfx": round(workload.audio_seconds / median, 2),
    }


def flop_figures(config, workload: Workload, token_counts: list[int], median_seconds: float,
                 peak_gflops: dict[str, float | None]) -> dict:
    """FLOPs per utterance (useful work, no padding), the achieved rate and its fraction of each known peak."""
    per_utterance = [utterance_flops(config, n, m).total for n, m in zip(workload.sample_lengths, token_counts)]
    achieved = sum(per_utterance) / median_seconds / 1e9
    figures = {"gflop_per_utterance": round(float(np.mean(per_utterance)) / 1e9, 3),
               "achieved_gflops": round(achieved, 2)}
    for name, peak in peak_gflops.items():
        if peak:
            figures[f"fraction_of_{name}"] = round(achieved / peak, 4)
    return figures


def parity_figures(probabilities: np.ndarray, reference: np.ndarray) -> dict:
    """Max |delta probability| and top-1 agreement against the PyTorch fp32 reference on the same inputs."""
    probabilities, reference = np.asarray(probabilities), np.asarray(reference)
    if probabilities.shape != reference.shape:
        raise ValueError(f"parity: probabilities of shape {probabilities.shape} against a reference of "
                         f"shape {reference.shape}")
    return {
        "max_abs_dprob": float(np.abs(probabilities - reference).max()),
        "top1_agreement": float((probabilities.argmax(-1) == reference.argmax(-1)).mean()),
    }
