"""Peak memory of a route, measured in a process of its own so that other routes' allocations cannot hide it.

    python3 -m benchmarks.memory ROUTE --size base --threads 2 --case 2x1 --case 10x8 ...

prints one JSON object: ``load_mb`` (resident memory the loaded route adds) and, per case, ``peak_mb``: the
process's resident high-water mark above its state before loading, i.e. weights plus the call's working memory.
Cases run from the smallest batch of audio to the largest, so each high-water mark is that case's own (memory
grows with the audio). On CUDA the figures are device memory in use instead.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys

from .artifacts import REPO_ROOT


def probe(route_name: str, size: str, threads: int, cases: list[tuple[float, int]], seed: int = 0) -> dict:
    import psutil

    from .artifacts import artifacts_for
    from .routes import build_route
    from .workload import make_workload

    artifacts = artifacts_for(size, seed)
    tokenizer = artifacts.tokenizer()
    workloads = sorted((make_workload(s, b, tokenizer, seed) for s, b in cases), key=lambda w: w.audio_seconds)
    process = psutil.Process()
    before = process.memory_info().rss
    route = build_route(route_name, artifacts, threads)
    used = _gpu_used if route.device == "cuda" else None
    gpu_before = used() if used else 0
    result = {"route": route_name, "device": route.device, "load_mb": _mb(process.memory_info().rss - before),
              "cases": {}}
    for workload in workloads:
        route.run(workload)
        high_water = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB
        entry = {"peak_mb": _mb(high_water - before)}
        if used:
            entry["gpu_mb"] = _mb(used() - gpu_before)
        result["cases"][case_key(workload.clip_seconds, workload.batch_size)] = entry
    return result


def probe_in_subprocess(route_name: str, size: str, threads: int, cases: list[tuple[float, int]],
                        seed: int = 0) -> dict:
    """Run :func:`probe` in a fresh interpreter; raises RuntimeError with its stderr when it fails."""
    command = [sys.executable, "-m", "benchmarks.memory", route_name, "--size", size, "--threads", str(threads),
               "--seed", str(seed)] + [arg for s, b in cases for arg in ("--case", f"{s:g}x{b}")]
    done = subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"memory probe of {route_name} failed:\n{done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def case_key(clip_seconds: float, batch_size: int) -> str:
    return f"{clip_seconds:g}x{batch_size}"


def _parse_case(text: str) -> tuple[float, int]:
    seconds, _, batch = text.partition("x")
    try:
        return float(seconds), int(batch)
    except ValueError:
        raise argparse.ArgumentTypeError(f"--case {text!r}: write SECONDSxBATCH, for example 5x8") from None


def _gpu_used() -> int:
    import torch

    free, total = torch.cuda.mem_get_info()
    return total - free


def _mb(n_bytes: int) -> float:
    return round(n_bytes / 2 ** 20, 1)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("route")
    parser.add_argument("--size", default="base")
    parser.add_argument("--threads", type=int, required=True)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--case", type=_parse_case, action="append", required=True)
    args = parser.parse_args(argv)
    print(json.dumps(probe(args.route, args.size, args.threads, args.case, args.seed)))


if __name__ == "__main__":
    main()
