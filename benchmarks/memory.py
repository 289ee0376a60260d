"""Peak memory of a route, measured in a process of its own so that other routes' allocations cannot hide it.

    python3 -m benchmarks.memory ROUTE --size base [--folder CACHE_FOLDER] --threads 2 --case 2x1 --case 10x8 ...

prints one JSON object: ``load_mb`` (resident memory the loaded route adds) and, per case, ``peak_mb``: the
process's resident high-water mark during that case's call above its state before loading, i.e. weights plus the
call's working memory. The high-water mark is Linux's VmHWM, reset before each call through /proc/self/clear_refs;
not getrusage's ru_maxrss, which a child inherits from its parent across fork and exec (a probe started from a
pytest process holding PyTorch would report that process's peak). On CUDA, device memory in use is added.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys

from pathlib import Path

from .artifacts import REPO_ROOT, Artifacts
from .routes import GPU_ROUTES, PYTORCH_PREFIX


def probe(route_name: str, artifacts, threads: int, cases: list[tuple[float, int]]) -> dict:
    import psutil

    from .routes import build_route
    from .workload import make_workload

    tokenizer = artifacts.tokenizer()
    # Smallest first: allocators (onnxruntime's arena, PyTorch's, malloc's) keep what a call took, so a small case
    # measured after a large one would report the large one's memory.
    workloads = sorted((make_workload(s, b, tokenizer, artifacts.seed) for s, b in cases), key=lambda w: w.audio_seconds)
    _import_libraries(route_name)
    process = psutil.Process()
    before = process.memory_info().rss
    route = build_route(route_name, artifacts, threads)
    used = _gpu_used if route.device == "cuda" else None
    gpu_before = used() if used else 0
    result = {"route": route_name, "device": route.device, "load_mb": _mb(process.memory_info().rss - before),
              "cases": {}}
    for workload in workloads:
        _reset_high_water()
        route.run(workload)
        entry = {"peak_mb": _mb(_high_water() - before)}
        if used:
            entry["gpu_mb"] = _mb(used() - gpu_before)
        result["cases"][case_key(workload.clip_seconds, workload.batch_size)] = entry
    return result


def probe_in_subprocess(route_name: str, artifacts, threads: int, cases: list[tuple[float, int]]) -> dict:
    """Run :func:`probe` in a fresh interpreter; raises RuntimeError with its stderr when it fails."""
    command = [sys.executable, "-m", "benchmarks.memory", route_name, "--size", artifacts.size,
               "--folder", str(artifacts.folder), "--threads", str(threads), "--seed", str(artifacts.seed)]
    command += [arg for s, b in cases for arg in ("--case", f"{s:g}x{b}")]
    done = subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"memory probe of {route_name} failed:\n{done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def _reset_high_water() -> None:
    try:
        Path("/proc/self/clear_refs").write_text("5")  # 5: reset the peak resident set size (Linux 4.0+)
    except OSError as error:
        raise RuntimeError(f"peak memory needs Linux's /proc/self/clear_refs ({error}); "
                           "run with MMER_BENCH_MEMORY=0 to skip it") from error


def _high_water() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024  # reported in kB
    raise RuntimeError("/proc/self/status has no VmHWM line; run with MMER_BENCH_MEMORY=0 to skip peak memory")


def _import_libraries(route_name: str) -> None:
    # Imported before the baseline is taken: a library's code is not the route's memory, and the PyTorch routes'
    # imports alone would outweigh a tiny model.
    import onnxruntime  # noqa: F401

    from mmer_rt import recognizer  # noqa: F401

    if route_name in GPU_ROUTES:
        import torch  # noqa: F401  (it reads the device's memory)
    if route_name.startswith(PYTORCH_PREFIX):
        from transformers import AutoModel, Wav2Vec2Model  # noqa: F401  (transformers imports models lazily)

        from training import checkpoint, model  # noqa: F401


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
    parser.add_argument("--folder", type=Path, default=None, help="the artifacts' cache folder (default: by key)")
    parser.add_argument("--case", type=_parse_case, action="append", required=True)
    args = parser.parse_args(argv)
    artifacts = Artifacts(args.size, args.seed, folder=args.folder)
    print(json.dumps(probe(args.route, artifacts, args.threads, args.case)))


if __name__ == "__main__":
    main()
