"""Long calls: the timeline's peak memory, its own cost beside the model's, and its real-time factor.

    python -m benchmarks.timeline_bench [--sizes small,base] [--minutes 10,60] [--threads 2]
    python -m benchmarks.timeline_bench --sweep 2,4,6,8,13.1 [--sizes small,base] [--minutes 3] [--model DIR]

The calls are synthetic (training.synth_call): two espeak-ng voices taking turns with pauses and silences, tiled
from 32 clips, written as 8 kHz mono 16-bit WAV as a telephone line records them (so the timeline resamples), with
the turns as RTTM and their words as SRT. Models are the benchmark's random-weight exports (benchmarks/artifacts.py, cached): "small" is
the demo's shape, "base" wav2vec2-base + roberta-base; int8 graphs on the CPU.

Each run is a fresh process, so its peak RSS (Linux VmHWM: the resident high-water mark, weights included) is its
own. Time is split into the model's (inside Recognizer.predict_batch: normalisation, tokenisation, three graphs),
voice activity (Silero's calls), decoding and resampling (the block stream), and the rest (windowing, turns,
words, summary); the timeline's own cost is everything but the model's.

``--ablate mem-pattern,heap-release`` runs each call again with one of the runtime's memory choices undone
(mmer_rt/session.py): onnxruntime's memory pattern turned back on, or the C heap not trimmed after each graph loads;
each row says which (``ablated``).

``--sweep`` runs one call with each window length and reports the model's seconds per second of speech and, with
``--model`` (a trained model such as the demo's runs/demo/model), the share of speech whose segment label is the
emotion the turn was synthesised with.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import platform
import subprocess
import sys
import time
from pathlib import Path

from .artifacts import CACHE_ROOT, REPO_ROOT
from .machine import cpu_info

CALL_RATE = 8000
WORK = CACHE_ROOT / "timeline"


def prepare_call(minutes: float, seed: int = 0) -> tuple[Path, Path, Path]:
    """(audio, rttm, turns json) of a synthetic call, cached under .bench-cache/timeline/."""
    from training.synth import synthesize_corpus
    from training.synth_call import write_call, write_rttm, write_srt

    WORK.mkdir(parents=True, exist_ok=True)
    manifest = WORK / "corpus" / "manifest.jsonl"
    if not manifest.is_file():
        synthesize_corpus(WORK / "corpus", seed=0, voices=2, per_class=4)
    audio = WORK / f"call-{minutes:g}min-seed{seed}.wav"
    rttm, turns_path = audio.with_suffix(".rttm"), audio.with_suffix(".turns.json")
    if not (turns_path.is_file() and audio.with_suffix(".srt").is_file()):
        turns = write_call(audio, manifest, 60 * minutes, seed=seed, sample_rate=CALL_RATE)
        write_rttm(rttm, turns, audio.stem)
        write_srt(audio.with_suffix(".srt"), turns)
        turns_path.write_text(json.dumps([t.__dict__ for t in turns]))
    return audio, rttm, turns_path


def model_dir(size: str) -> Path:
    from .artifacts import Artifacts

    return Artifacts(size).model_dir(("int8",))


ABLATIONS = ("mem-pattern", "heap-release")


def run_child(model: Path, audio: Path, rttm: Path, turns: Path, threads: int, window: float | None,
              max_seconds: float, ablate: str | None = None) -> dict:
    command = [sys.executable, "-m", "benchmarks.timeline_bench", "--child", str(model), str(audio), str(rttm),
               str(turns), "--threads", str(threads), "--max-seconds", str(max_seconds)]
    if window is not None:
        command += ["--window", str(window)]
    if ablate is not None:
        command += ["--child-ablate", ablate]
    done = subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"timeline run failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.splitlines()[-1])


def child(args: argparse.Namespace) -> None:
    """One timeline in this process, instrumented; prints one JSON line."""
    import mmer_rt.timeline as tl
    from mmer_rt import BatchBudget, Recognizer

    _ablate(args.child_ablate)
    clock = {key: 0.0 for part in ("total", "model", "vad", "decode") for key in (part, part + "_cpu")}
    rss_before = _rss_mb()
    budget = BatchBudget(max_items=BatchBudget.max_items, max_seconds=args.max_seconds)
    recognizer = Recognizer.from_dir(args.child[0], device="cpu", precision="int8", threads=args.threads,
                                     batch_budget=budget)
    rss_loaded = _rss_mb()
    predict_batch = recognizer.predict_batch

    def timed_predict(items, sample_rate=None, **options):
        with _timer(clock, "model"):
            return predict_batch(items, sample_rate, **options)

    recognizer.predict_batch = timed_predict
    silero = tl._silero()

    class TimedVAD(silero):
        def process_samples(self, samples):
            with _timer(clock, "vad"):
                return super().process_samples(samples)

    tl._silero = lambda: TimedVAD
    open_stream = tl._open_stream

    def timed_stream(*a, **k):
        stream = open_stream(*a, **k)
        stream.blocks = _timed_iter(stream.blocks, clock)
        return stream

    tl._open_stream = timed_stream
    with _timer(clock, "total"):
        # the turns' words as SRT, as an ASR system gives them: a random-weight CTC head's transcripts are
        # 512-token noise that would inflate the text encoder's share
        result = tl.timeline(recognizer, args.child[1], speakers=args.child[2],
                             transcript=Path(args.child[1]).with_suffix(".srt"),
                             segmentation=tl.Segmentation(window=args.window))
    total, total_cpu = clock["total"], clock["total_cpu"]
    speech = sum(r.end - r.start for r in result.regions)
    own, own_cpu = total - clock["model"], total_cpu - clock["model_cpu"]
    print(json.dumps({
        "model_dir": args.child[0], "audio": Path(args.child[1]).name, "audio_seconds": result.duration,
        "speech_seconds": round(speech, 2), "segments": len(result.segments), "window": result.settings["window"],
        "total_s": round(total, 2), "model_s": round(clock["model"], 2), "vad_s": round(clock["vad"], 2),
        "decode_resample_s": round(clock["decode"], 2),
        "rest_s": round(own - clock["vad"] - clock["decode"], 2), "own_s": round(own, 2),
        "own_over_model": round(own / clock["model"], 4), "rtf": round(total / result.duration, 4),
        "cpu": {key: round(clock[key + "_cpu"], 2) for key in ("total", "model", "vad", "decode")},
        "own_over_model_cpu": round(own_cpu / clock["model_cpu"], 4),
        "cpu_seconds_per_audio_second": round(total_cpu / result.duration, 4),
        "batch_max_seconds": args.max_seconds, "threads": args.threads,
        "peak_rss_mb": _peak_rss_mb(), "rss_before_load_mb": rss_before, "rss_after_load_mb": rss_loaded,
        "label_accuracy": _label_accuracy(result, json.loads(Path(args.child[3]).read_text())),
        "ablated": args.child_ablate,
    }))


def _ablate(choice: str | None) -> None:
    """Undo one of mmer_rt.session's memory choices in this process (None: the runtime as it ships)."""
    import mmer_rt.session as session

    if choice == "mem-pattern":
        shipped = session.session_options

        def with_memory_pattern(threads, device="cpu"):
            options = shipped(threads, device)
            options.enable_mem_pattern = True
            return options

        session.session_options = with_memory_pattern
    elif choice == "heap-release":
        session.release_freed_heap = lambda: None
    elif choice is not None:
        raise ValueError(f"unknown ablation {choice!r}; use one of {', '.join(ABLATIONS)}")


def _timed_iter(blocks, clock):
    while True:
        with _timer(clock, "decode"):
            block = next(blocks, None)
        if block is None:
            return
        yield block


@contextlib.contextmanager
def _timer(clock: dict, key: str):
    """Wall time and this process's CPU time (all threads): on a shared machine the CPU time is the steadier."""
    wall, cpu = time.perf_counter(), time.process_time()
    try:
        yield
    finally:
        clock[key] += time.perf_counter() - wall
        clock[key + "_cpu"] += time.process_time() - cpu


def _label_accuracy(result, turns: list[dict]) -> float | None:
    """The share of segment time labelled with the emotion its turn was synthesised with (by overlap)."""
    right = total = 0.0
    for segment in result.segments:
        for turn in turns:
            overlap = min(segment.end, turn["end"]) - max(segment.start, turn["start"])
            if overlap > 0:
                total += overlap
                right += overlap if segment.label == turn["label"] else 0.0
    return round(right / total, 4) if total else None


def _status_mb(key: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return round(int(line.split()[1]) / 1024, 1)
    raise RuntimeError(f"{key} not in /proc/self/status")


def _peak_rss_mb() -> float:
    return _status_mb("VmHWM")


def _rss_mb() -> float:
    return _status_mb("VmRSS")


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.timeline_bench", description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", default="small,base", help="benchmark model sizes (benchmarks/artifacts.py)")
    parser.add_argument("--minutes", default=None, help="call lengths (default: 10,60; with --sweep: 3)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--sweep", default=None, help="comma-separated window lengths in seconds")
    parser.add_argument("--model", type=Path, action="append", default=[],
                        help="also run this model directory (e.g. the demo's trained runs/demo/model)")
    parser.add_argument("--max-seconds", type=float, default=80.0,
                        help="the Recognizer's BatchBudget.max_seconds (its default: 80); on the CPU the timeline "
                             "caps each graph run at one window whatever this says")
    parser.add_argument("--ablate", default="", help="also run each call with these memory choices undone, one at a "
                        f"time: {', '.join(ABLATIONS)}")
    parser.add_argument("--out", type=Path, default=None, help="write the results as JSON here")
    parser.add_argument("--child", nargs=4, metavar=("MODEL", "AUDIO", "RTTM", "TURNS"), help=argparse.SUPPRESS)
    parser.add_argument("--window", type=float, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--child-ablate", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        child(args)
        return
    minutes = [float(m) for m in (args.minutes or ("3" if args.sweep else "10,60")).split(",")]
    models = [(size, model_dir(size)) for size in args.sizes.split(",") if size] + [(str(m), m) for m in args.model]
    windows = [float(w) for w in args.sweep.split(",")] if args.sweep else [None]
    ablations = [None] + [a for a in args.ablate.split(",") if a]
    for choice in ablations[1:]:
        if choice not in ABLATIONS:
            parser.error(f"--ablate {choice}: use one of {', '.join(ABLATIONS)}")
    rows = []
    print(f"# {platform.processor() or platform.machine()}, {args.threads} threads; the machine is shared",
          flush=True)
    for name, folder in models:
        for length in minutes:
            audio, rttm, turns = prepare_call(length)
            for window in windows:
                for choice in ablations:
                    row = {"model": name, "minutes": length, **run_child(folder, audio, rttm, turns, args.threads,
                                                                       window, args.max_seconds, choice)}
                    rows.append(row)
                    print(json.dumps(row), flush=True)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps({"cpu": cpu_info()["model"], "threads": args.threads, "rows": rows}, indent=1))



if __name__ == "__main__":
    main()
