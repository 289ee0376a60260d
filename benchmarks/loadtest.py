"""A bounded loopback load test of `mmer-rt serve`: requests/s, latency percentiles and the batch sizes reached.

    python -m benchmarks.loadtest --size small --clients 1,8,32,64 --requests 192 --out benchmarks/results/serve.md

In one run, on the same clips (2-10 s of speech-like audio with 10-40 token transcripts, as WAV files):
  - the server (dynamic batching) at each client count;
  - the server with --max-batch 1 (one request per graph run) at 32 clients;
  - the in-process ``Recognizer.predict_batch`` on the same files and transcripts (decoding included, as the
    server does it), the ceiling that batching across requests aims for.
Every client sends its next clip as soon as its last answer came back. Each level stops after ``--requests``
answers or ``--seconds``, whichever comes first; traffic goes to 127.0.0.1 only (the server is started here, on a
free loopback port, and stopped with SIGTERM). The model has random weights (nothing is downloaded): its size, not
its accuracy, sets the cost.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import os
import platform
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mmer_rt.audio import SAMPLE_RATE

from .artifacts import Artifacts
from .loopback import ServerProcess
from .machine import cpu_info
from .workload import speech_like, token_range, transcript_of

REPO_ROOT = Path(__file__).resolve().parent.parent
LOOPBACK = "127.0.0.1"
MAX_CLIENTS = 64
SIZES = {"base": "wav2vec2-base + roberta-base, the published shape", "small": "the demo's model shape",
         "quick": "the tests' tiny model"}


@dataclass
class Level:
    """One measured load level."""

    name: str
    clients: int
    answered: int
    failed: int
    seconds: float
    latencies: list[float]
    batch_sizes: dict[float, float] | None = None  # histogram bucket "le" -> batches, for this level only
    batches: float = 0.0

    def add(self, other: "Level") -> None:
        """Pool another round of the same level into this one."""
        self.answered += other.answered
        self.failed += other.failed
        self.seconds += other.seconds
        self.latencies += other.latencies
        self.batches += other.batches
        if other.batch_sizes is not None:
            self.batch_sizes = {le: (self.batch_sizes or {}).get(le, 0.0) + count
                                for le, count in other.batch_sizes.items()}

    @property
    def throughput(self) -> float:
        return self.answered / self.seconds if self.seconds > 0 else 0.0

    def percentile(self, q: float) -> float | None:
        return float(np.percentile(self.latencies, q)) if self.latencies else None

    @property
    def mean_batch(self) -> float | None:
        return self.answered / self.batches if self.batches else None

    @property
    def largest_batch(self) -> str:
        """The range of the histogram bucket holding the level's largest batch (bounds 1, 2, 4, 8, 16 ...)."""
        if not self.batch_sizes or not self.batches:
            return "-"
        bounds = sorted(self.batch_sizes)
        for index, le in enumerate(bounds):
            if self.batch_sizes[le] >= self.batches:  # cumulative: every batch is at most le
                low = int(bounds[index - 1]) + 1 if index else 1
                return str(int(le)) if low == int(le) else f"{low}-{int(le)}"
        return f">{int(bounds[-1])}"


def make_clips(count: int, tokenizer, seed: int = 0) -> list[tuple[bytes, str]]:
    """``count`` WAV files of 2-10 s (uniform) with transcripts whose token counts grow with the clip."""
    import soundfile

    rng = np.random.default_rng(seed)
    clips = []
    for _ in range(count):
        seconds = float(rng.uniform(2.0, 10.0))
        samples = speech_like(int(seconds * SAMPLE_RATE), rng)
        low, high = token_range(seconds)
        text = transcript_of(int(rng.integers(low, high + 1)), tokenizer, rng)
        buffer = io.BytesIO()
        soundfile.write(buffer, samples, SAMPLE_RATE, format="WAV", subtype="FLOAT")
        clips.append((buffer.getvalue(), text))
    return clips


def check_loopback(url: str) -> None:
    from urllib.parse import urlsplit

    host = urlsplit(url).hostname
    if host not in ("127.0.0.1", "localhost", "::1"):
        raise SystemExit(f"loadtest: refusing {url}: this load generator sends traffic to the loopback only")


async def drive(url: str, clips: list[tuple[bytes, str]], clients: int, requests: int, seconds: float) -> Level:
    """``clients`` concurrent clients, each sending its next clip when its last answer came back."""
    import httpx

    check_loopback(url)
    if not 1 <= clients <= MAX_CLIENTS:
        raise SystemExit(f"loadtest: clients must be 1-{MAX_CLIENTS}, got {clients}")
    latencies: list[float] = []
    failed = 0
    issued = 0
    deadline = time.perf_counter() + seconds

    async def client(http):
        nonlocal issued, failed
        while issued < requests and time.perf_counter() < deadline:
            audio, text = clips[issued % len(clips)]
            issued += 1
            started = time.perf_counter()
            response = await http.post(f"{url}/v1/predict", content=audio, params={"text": text},
                                       headers={"content-type": "audio/wav"})
            if response.status_code == 200:
                latencies.append(time.perf_counter() - started)
            else:
                failed += 1

    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(limits=limits, timeout=300) as http:
        started = time.perf_counter()
        await asyncio.gather(*(client(http) for _ in range(clients)))
        elapsed = time.perf_counter() - started
    return Level("", clients, len(latencies), failed, elapsed, latencies)


class Server(ServerProcess):
    """`mmer-rt serve` on a free loopback port, as a process of its own (its output goes to ours)."""

    def __init__(self, model_dir: Path, threads: int, max_batch: int, max_wait_ms: float, precision: str = "fp32",
                 engine: str = "onnxruntime"):
        # mmer-rt's --precision auto is bf16 under OpenVINO where the CPU has it (checked before the servers start).
        super().__init__([sys.executable, "-m", "mmer_rt", "serve", "--model", str(model_dir), "--host", LOOPBACK,
                          "--port", "{port}", "--precision", "auto" if precision == "bf16" else precision,
                          "--engine", engine, "--threads", str(threads), "--max-batch", str(max_batch),
                          "--max-wait-ms", str(max_wait_ms), "--max-queue", "1024", "--log-level", "warning"],
                         log_path=None, cwd=REPO_ROOT)

    def batch_histogram(self) -> tuple[dict[float, float], float]:
        import httpx

        buckets, count = {}, 0.0
        for line in httpx.get(f"{self.url}/metrics", timeout=10).text.splitlines():
            if line.startswith("mmer_batch_size_bucket"):
                le = line.split('le="')[1].split('"')[0]
                if le != "+Inf":
                    buckets[float(le)] = float(line.rsplit(" ", 1)[1])
            elif line.startswith("mmer_batch_size_count"):
                count = float(line.rsplit(" ", 1)[1])
        return buckets, count


def measure_server(server: Server, name: str, clips, clients: int, requests: int, seconds: float) -> Level:
    before, batches_before = server.batch_histogram()
    level = asyncio.run(drive(server.url, clips, clients, requests, seconds))
    after, batches_after = server.batch_histogram()
    level.name = name
    level.batch_sizes = {le: after[le] - before.get(le, 0.0) for le in after}
    level.batches = batches_after - batches_before
    return level


def in_process_recognizer(model_dir: Path, threads: int, max_batch: int, precision: str = "fp32",
                          engine: str = "onnxruntime"):
    from mmer_rt import BatchBudget, Recognizer

    return Recognizer.from_dir(model_dir, device="cpu", precision=precision, engine=engine, threads=threads,
                               batch_budget=BatchBudget(max_items=max_batch))


def measure_in_process(recognizer, clips, requests: int, max_batch: int, offset: int = 0) -> Level:
    """One predict_batch call on ``requests`` clips (decoding included): the Recognizer sorts and batches them."""
    items = [clips[(offset + i) % len(clips)] for i in range(requests)]
    started = time.perf_counter()
    recognizer.predict_batch(items)
    elapsed = time.perf_counter() - started
    level = Level(f"in-process predict_batch, max batch {max_batch}", 0, len(items), 0, elapsed, [])
    level.batches = float(-(-len(items) // max_batch))  # the fewest graph runs it can take
    return level


def table(levels: list[Level], reference: Level) -> list[str]:
    lines = ["| route | clients | answers | requests/s | vs predict_batch | p50 ms | p90 ms | p99 ms | "
             "mean batch | largest batch |", "|---|---|---|---|---|---|---|---|---|---|"]
    for level in levels:
        ms = [level.percentile(q) for q in (50, 90, 99)]
        lines.append(
            f"| {level.name} | {level.clients or '-'} | {level.answered}"
            f"{f' ({level.failed} failed)' if level.failed else ''} | {level.throughput:.2f} | "
            f"{level.throughput / reference.throughput:.2f}x | "
            + " | ".join("-" if v is None else f"{1000 * v:.0f}" for v in ms)
            + f" | {'-' if level.mean_batch is None else f'{level.mean_batch:.1f}'} | {level.largest_batch} |"
        )
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.loadtest", description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", choices=tuple(SIZES), default="small")
    parser.add_argument("--clients", default="1,8,32,64", help="client counts, 1-64, comma-separated")
    parser.add_argument("--requests", type=int, default=192, help="answers per level at most")
    parser.add_argument("--seconds", type=float, default=120.0, help="seconds per level at most")
    parser.add_argument("--clips", type=int, default=48, help="distinct clips, sent round-robin")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="onnxruntime threads")
    parser.add_argument("--precision", choices=("fp32", "int8", "bf16"), default="fp32",
                        help="bf16: with --engine openvino, the fp32 graphs in bf16 arithmetic (AMX or AVX512-BF16)")
    parser.add_argument("--engine", choices=("onnxruntime", "openvino"), default="onnxruntime",
                        help="openvino runs the fp32 graphs, in fp32 or (--precision bf16) bf16 arithmetic")
    parser.add_argument("--max-batch", type=int, default=16)
    parser.add_argument("--max-wait-ms", type=float, default=10.0)
    parser.add_argument("--compare-clients", type=int, default=32,
                        help="client count of the one-request-per-run comparison")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds over all levels")
    parser.add_argument("--out", type=Path, help="also write the report (Markdown) here")
    args = parser.parse_args(argv)
    client_counts = [int(c) for c in args.clients.split(",")]
    if not all(1 <= c <= MAX_CLIENTS for c in client_counts + [args.compare_clients]):
        parser.error(f"client counts must be 1-{MAX_CLIENTS}")
    if args.requests < 1 or args.seconds <= 0 or args.rounds < 1:
        parser.error("--requests, --seconds and --rounds must be positive")

    needs = {"bf16": "openvino", "int8": "onnxruntime"}.get(args.precision, args.engine)
    if args.engine != needs:
        parser.error(f"--precision {args.precision} needs --engine {needs}")
    if args.precision == "bf16":
        from mmer_rt.engines import bf16_supported

        if not bf16_supported():
            parser.error("--precision bf16: this CPU has neither AMX-BF16 nor AVX512-BF16")
    artifacts = Artifacts(args.size)
    model_dir = artifacts.model_dir(precisions=("fp32", "int8") if args.precision == "int8" else ("fp32",))
    clips = make_clips(args.clips, artifacts.tokenizer())
    audio_seconds = sum(len(a) for a, _ in clips) / (4 * SAMPLE_RATE)  # float32 WAV: 4 bytes a sample
    print(f"model {model_dir} ({args.size}: {SIZES[args.size]}), {len(clips)} clips, {audio_seconds:.0f} s of "
          "audio", flush=True)

    # Every level runs a share of its requests in each round, levels interleaved, so that a shared machine's
    # changing load falls on all of them alike.
    in_process = {budget: in_process_recognizer(model_dir, args.threads, budget, args.precision, args.engine)
                  for budget in (args.max_batch, 1)}
    servers: dict[int, Server] = {}
    plan = [(f"server, max batch {args.max_batch}", args.max_batch, c) for c in client_counts]
    plan.append(("server, max batch 1", 1, args.compare_clients))
    try:
        for max_batch in (args.max_batch, 1):
            servers[max_batch] = Server(model_dir, args.threads, max_batch, args.max_wait_ms, args.precision,
                                        args.engine)
        for server in servers.values():
            server.wait_ready()
            asyncio.run(drive(server.url, clips, 4, 8, 60.0))  # warm-up
        for recognizer in in_process.values():
            recognizer.predict_batch(clips[:2])
        levels = [Level(name, clients, 0, 0, 0.0, []) for name, _, clients in plan]
        references = {budget: Level(f"in-process predict_batch, max batch {budget}", 0, 0, 0, 0.0, [])
                      for budget in in_process}
        share = max(1, args.requests // args.rounds)
        for round_index in range(args.rounds):
            measured = []
            for level, (name, max_batch, clients) in zip(levels, plan):
                measured.append(measure_server(servers[max_batch], name, clips, clients, share,
                                               args.seconds / args.rounds))
                level.add(measured[-1])
            for budget, recognizer in in_process.items():
                measured.append(measure_in_process(recognizer, clips, share, budget, offset=round_index * share))
                references[budget].add(measured[-1])
            print(f"round {round_index + 1}/{args.rounds} (requests/s): " + ", ".join(
                f"{m.name}{f' x{m.clients}' if m.clients else ''}: {m.throughput:.2f}" for m in measured), flush=True)
    finally:
        for server in servers.values():
            try:
                server.stop()
            except RuntimeError as error:  # it did not stop in time and was killed; the others still get theirs
                print(error, file=sys.stderr)
    reference = references[args.max_batch]
    levels += list(references.values())

    command = "python -m benchmarks.loadtest " + " ".join(argv if argv is not None else sys.argv[1:])
    report = [
        f"Load test of `mmer-rt serve` ({args.size} model, {args.precision}, {args.engine}, {args.threads} threads, "
        f"max wait "
        f"{args.max_wait_ms:g} ms), {platform.processor() or platform.machine()} "
        f"({cpu_info()['model']}, {os.cpu_count()} logical CPUs; the load generator shares them with the server), "
        f"{time.strftime('%Y-%m-%d', time.gmtime())}. Clips: {len(clips)} of 2-10 s sent round-robin; up to "
        f"{args.requests} answers or {args.seconds:g} s per level, in {args.rounds} interleaved rounds. "
        "An in-process row is one predict_batch call per round on the same clips, decoding included (its mean "
        "batch: the fewest graph runs); 'vs predict_batch' is against the first of them.",
        "",
        *table(levels, reference),
        "",
        f"Command: `{command}`",
    ]
    print("\n".join(report))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text("\n".join(report) + "\n")
    return 0



if __name__ == "__main__":
    sys.exit(main())
