"""What scales on Ray on this machine: offline scoring (in process, 1 and 2 Ray actors) and the Ray Serve deployment
(the server's batcher or @serve.batch, 1 or 2 replicas), on the same clips, in one run.

    python3 -m benchmarks.ray_scale --out benchmarks/results/ray.md

The model is the demo's shape (training.model.small_config) with random weights, exported to fp32, built once
under .bench-cache/ray-small/; the clips are speech-like signals of 2-8 s, a third with transcripts. One local Ray
instance (all cores) serves every Ray route; its start-up time is reported apart. Scoring times run from the job's
start to its last row written, so they include the actors' start and model load, as a user waits for them.
Nothing here is asserted: it is a measurement, noisy on a shared machine.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from .artifacts import CACHE_ROOT
from .loopback import free_port
from .machine import cpu_info
from .workload import benchmark_tokenizer, speech_like, transcript_of

RATE = 16_000


def build_model(folder: Path) -> Path:
    """The small model's directory (fp32), built once."""
    model_dir = folder / "model"
    if (model_dir / "mmer.json").is_file():
        return model_dir
    import torch

    from export.to_onnx import export_model_dir
    from training.checkpoint import save_checkpoint
    from training.model import MMER, small_config

    tokenizer = benchmark_tokenizer(folder / "tokenizer.json")
    torch.manual_seed(0)
    model = MMER.from_config(small_config(vocab_size=600)).eval()
    save_checkpoint(model, folder / "checkpoint", tokenizer)
    export_model_dir(folder / "checkpoint", model_dir, precisions=("fp32",), log=lambda line: None)
    return model_dir


def build_clips(folder: Path, count: int, seed: int = 0) -> Path:
    """``count`` WAV files of 2-8 s and their manifest (a third with transcripts)."""
    import soundfile

    from mmer_rt.text import TextTokenizer

    manifest = folder / f"clips{count}" / "manifest.jsonl"
    if manifest.is_file():
        return manifest
    manifest.parent.mkdir(parents=True, exist_ok=True)
    tokenizer = TextTokenizer(folder / "tokenizer.json")
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(count):
        seconds = rng.uniform(2.0, 8.0)
        soundfile.write(manifest.parent / f"c{i:04d}.wav", speech_like(int(seconds * RATE), rng), RATE)
        text = transcript_of(int(rng.integers(12, 30)), tokenizer, rng) if i % 3 == 0 else None
        rows.append({"id": f"c{i:04d}", "audio": f"c{i:04d}.wav", "text": text})
    manifest.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return manifest


def time_scoring(model_dir: Path, manifest: Path, **kwargs) -> dict:
    """One scoring job: its whole time (actors' start and model load included) and when its first row came."""
    from mmer_rt.serve.score import score

    stamps = []
    with tempfile.TemporaryDirectory() as scratch:
        out = Path(scratch) / "results.jsonl"
        started = time.perf_counter()
        summary = score(model_dir, manifest, out, recognizer_options={"device": "cpu", "precision": "fp32",
                                                                       **kwargs.pop("options", {})},
                        progress=lambda count: stamps.append(time.perf_counter()), **kwargs)
        seconds = time.perf_counter() - started
        rows = {row["id"]: row for row in map(json.loads, out.read_text().splitlines())}
    assert summary.scored == len(rows) and not summary.errors, summary
    return {"seconds": seconds, "rows": len(rows), "rows_per_s": len(rows) / seconds,
            "first_row_s": stamps[0] - started, "results": rows}


def load_clients(port: int, clips: list[bytes], clients: int) -> dict:
    """Every clip sent once, ``clients`` at a time; requests/s and latency percentiles."""
    import httpx

    latencies = []
    with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=120) as client:
        def ask(clip):
            started = time.perf_counter()
            answer = client.post("/v1/predict", content=clip, headers={"content-type": "audio/wav"})
            latencies.append(time.perf_counter() - started)
            assert answer.status_code == 200, answer.text
            return answer.json()

        ask(clips[0])  # one warm-up request per route
        latencies.clear()
        started = time.perf_counter()
        with ThreadPoolExecutor(clients) as pool:
            list(pool.map(ask, clips))
        seconds = time.perf_counter() - started
    quantiles = statistics.quantiles(latencies, n=100)
    return {"requests_per_s": len(clips) / seconds, "p50_ms": 1000 * quantiles[49], "p90_ms": 1000 * quantiles[89]}



def serve_route(model_dir: Path, port: int, clips: list[bytes], clients: int, replicas: int, batching: str) -> dict:
    from ray import serve

    from mmer_rt.serve.batcher import BatcherConfig
    from mmer_rt.serve.http import ServeConfig
    from mmer_rt.serve.ray import serve_app

    cpus = os.cpu_count() // replicas
    serve.run(serve_app(model_dir, num_replicas=replicas, cpus_per_replica=cpus,
                        recognizer_options={"device": "cpu", "precision": "fp32"},
                        serve_config=ServeConfig(batcher=BatcherConfig(max_wait_ms=10)), batching=batching),
              name="mmer", route_prefix="/")
    try:
        return load_clients(port, clips, clients)
    finally:
        serve.delete("mmer")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clips", type=int, default=384, help="clips scored by every scoring route")
    parser.add_argument("--requests", type=int, default=96, help="requests sent to every Serve route")
    parser.add_argument("--clients", type=int, default=16, help="concurrent HTTP clients")
    parser.add_argument("--out", type=Path, help="write the Markdown table here too")
    args = parser.parse_args(argv)

    folder = CACHE_ROOT / "ray-small"
    folder.mkdir(parents=True, exist_ok=True)
    model_dir = build_model(folder)
    manifest = build_clips(folder, args.clips)
    cores = os.cpu_count()

    import ray
    from ray import serve

    lines = []
    scoring = {"in process, all cores": time_scoring(model_dir, manifest)}
    scoring["in process, 1 thread"] = time_scoring(model_dir, manifest, options={"threads": 1})
    started = time.perf_counter()
    ray.init(address="local", num_cpus=cores, include_dashboard=False, logging_level="WARNING",
             log_to_driver=False)
    ray_start = time.perf_counter() - started
    try:
        for actors in (1, cores):
            scoring[f"Ray Data, {actors} actor(s) x 1 CPU"] = time_scoring(model_dir, manifest, use_ray=True,
                                                                           actors=actors, cpus_per_actor=1)
        scoring[f"Ray Data, 1 actor x {cores} CPUs"] = time_scoring(model_dir, manifest, use_ray=True, actors=1,
                                                                    cpus_per_actor=cores)
        reference = scoring["in process, all cores"]["results"]
        agreement = max(
            abs(row["scores"][label] - reference[key]["scores"][label])
            for route in scoring.values() for key, row in route["results"].items() for label in row["scores"]
        )

        port = free_port()
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        clip_paths = sorted(manifest.parent.glob("c*.wav"))
        clips = [path.read_bytes() for path in (clip_paths * (args.requests // len(clip_paths) + 1))[:args.requests]]
        serving = {}
        # Each route twice, interleaved, so that the machine's drift shows as the spread of a route's two runs.
        for _ in range(2):
            for batching in ("batcher", "serve"):
                for replicas in (1, cores):
                    serving.setdefault((batching, replicas), []).append(
                        serve_route(model_dir, port, clips, args.clients, replicas, batching))
    finally:
        serve.shutdown()
        ray.shutdown()

    audio_seconds = sum(row["duration"] for row in reference.values())
    cpu = cpu_info()
    amx = " with AMX" if "amx_tile" in Path("/proc/cpuinfo").read_text() else ""
    lines.append(f"CPU: {cpu['model']} ({cpu['simd']}{amx}), {cores} logical CPUs (shared machine: noisy). "
                 f"Model: small_config (demo shape), random weights, fp32. {len(reference)} clips of 2-8 s "
                 f"({audio_seconds:.0f} s of audio). Local Ray start-up: {ray_start:.1f} s (not in the times below).")
    lines.append("")
    lines.append("| scoring route | job seconds | rows/s | vs in process (all cores) | first row written after (s) |")
    lines.append("|---|---|---|---|---|")
    base = scoring["in process, all cores"]["rows_per_s"]
    for name, route in scoring.items():
        lines.append(f"| {name} | {route['seconds']:.1f} | {route['rows_per_s']:.1f} | "
                     f"{route['rows_per_s'] / base:.2f}x | {route['first_row_s']:.1f} |")
    lines.append("")
    lines.append(f"Every route's probabilities within {agreement:.1e} of the in-process run's.")
    lines.append("")
    lines.append(f"| Serve route ({args.requests} requests, {args.clients} clients; two runs) | requests/s | "
                 "p50 ms | p90 ms |")
    lines.append("|---|---|---|---|")
    for (batching, replicas), runs in serving.items():
        name = f"{'server batcher' if batching == 'batcher' else '@serve.batch'}, {replicas} replica(s) x " \
               f"{cores // replicas} CPU"
        cells = [" / ".join(f"{run[key]:{form}}" for run in runs)
                 for key, form in (("requests_per_s", ".1f"), ("p50_ms", ".0f"), ("p90_ms", ".0f"))]
        lines.append(f"| {name} | {' | '.join(cells)} |")
    table = "\n".join(lines)
    print(table)
    if args.out:
        command = "python3 -m benchmarks.ray_scale" + (f" --out {args.out}" if args.out else "")
        args.out.write_text(f"# Scale-out on Ray, measured\n\n`{command}`\n\n{table}\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
