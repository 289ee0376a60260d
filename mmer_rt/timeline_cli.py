"""``mmer-rt timeline``: the emotion timeline of a long recording, as text, JSON lines or CSV, and a chart."""

from __future__ import annotations

import argparse
import csv
import json
import sys
from pathlib import Path

from tqdm import tqdm

from .batching import BatchBudget
from .errors import TimelineError
from .cli_options import add_model_options, model_options, positive_int
from .timeline import Segmentation, Timeline, read_rttm, timeline

SEGMENT_KEYS = ("start", "end", "speaker", "label", "scores", "transcript", "transcript_source")


def add_timeline_command(commands) -> None:
    """Register the ``timeline`` subcommand on the ``mmer-rt`` parser's subparsers."""
    command = commands.add_parser("timeline", help="emotions over time in a long recording (needs [timeline])")
    command.add_argument("file", metavar="FILE", help="an audio file of any length")
    command.add_argument("--model", required=True, metavar="DIR", help="model directory")
    command.add_argument("--rttm", type=Path, metavar="R", help="speaker turns (RTTM, as diarizers write it)")
    command.add_argument("--transcript", type=Path, metavar="T",
                         help="timed words: WebVTT (.vtt), SRT (.srt) or JSON with word timestamps (.json); "
                         "without it each segment reads the CTC head's transcript")
    command.add_argument("--channels-as-speakers", action="store_true",
                         help="each channel of a stereo call is one speaker, with its own voice activity")
    output = command.add_mutually_exclusive_group()
    output.add_argument("--json", action="store_true", help="one JSON object per segment per line")
    output.add_argument("--csv", action="store_true", help="CSV, one row per segment, a column per emotion")
    command.add_argument("--plot", type=Path, metavar="OUT.png", help="draw the timeline (needs [plot])")
    command.add_argument("--window", type=float, help="window length in seconds (default: 6, at most the model's)")
    command.add_argument("--hop", type=float, help="step between windows in seconds (default: the window)")
    command.add_argument("--smoothing", type=_non_negative_int, default=0,
                         help="average each segment's scores with this many neighbours each side (default 0: off)")
    add_model_options(command)
    command.add_argument("--threads", type=positive_int, default=None, help="CPU threads (default: all cores)")
    command.add_argument("--batch-size", type=positive_int, default=BatchBudget.max_items,
                         help="most windows per batch (default: %(default)s)")
    command.add_argument("--batch-seconds", type=_positive_float, default=None,
                         help="most padded seconds of audio per graph run (default: one window with onnxruntime "
                              "on the CPU, where larger batches cost memory and gain no speed; else the model's "
                              "batch budget, 80)")
    command.set_defaults(run=run_timeline)


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"expected a positive number of seconds, got {text!r}")
    return value


def _non_negative_int(text: str) -> int:
    if not text.isdigit():
        raise argparse.ArgumentTypeError(f"expected a non-negative integer, got {text!r}")
    return int(text)


def run_timeline(args: argparse.Namespace) -> int:
    from .recognizer import Recognizer

    try:
        segmentation = Segmentation(window=args.window, hop=args.hop, smoothing=args.smoothing)
        budget = BatchBudget(max_items=args.batch_size)
    except ValueError as error:
        print(f"mmer-rt timeline: error: {error}", file=sys.stderr)
        return 2
    speakers = _turns(args.rttm, args.file) if args.rttm is not None else None
    recognizer = Recognizer.from_dir(args.model, **model_options(args), threads=args.threads, batch_budget=budget)
    with tqdm(total=_seconds(args.file), unit="s", disable=None, file=sys.stderr,
              bar_format="{l_bar}{bar}| {n:.0f}/{total_fmt} s [{elapsed}<{remaining}]") as bar:
        result = timeline(recognizer, args.file, speakers=speakers, transcript=args.transcript,
                          channels_as_speakers=args.channels_as_speakers, segmentation=segmentation,
                          progress=lambda seconds: bar.update(seconds - bar.n), batch_seconds=args.batch_seconds)
    if args.json:
        for segment in result.segments:
            print(json.dumps({key: getattr(segment, key) for key in SEGMENT_KEYS}, ensure_ascii=False))
    elif args.csv:
        _write_csv(result)
    else:
        _write_text(result)
    if args.plot is not None:
        from .timeline_plot import plot_timeline

        plot_timeline(result, args.plot, title=f"{Path(args.file).name}: emotion timeline")
        print(f"wrote {args.plot}", file=sys.stderr)
    return 0


def _turns(rttm: Path, audio: str):
    try:
        return read_rttm(rttm)
    except TimelineError as error:
        if "several files" not in str(error):
            raise
        return read_rttm(rttm, file_id=Path(audio).stem)  # the file id diarizers write is the audio's stem


def _seconds(path: str) -> float | None:
    try:
        import soundfile

        return soundfile.info(path).duration
    except Exception:  # only the progress bar's total: the timeline reports an unreadable file itself
        return None


def _write_text(result: Timeline) -> None:
    for s in result.segments:
        print(f"{_clock(s.start)}-{_clock(s.end)}\t{s.speaker or '-'}\t{s.label}\t{s.scores[s.label]:.3f}\t"
              f"{s.transcript_source}: {s.transcript}")
    print(f"# {len(result.segments)} segments in {len(result.regions)} speech regions, "
          f"{result.duration:.1f} s of audio")
    for speaker, entry in result.summary.items():
        shares = ", ".join(f"{label} {e['share']:.0%} ({e['seconds']:.1f} s)" for label, e in entry["emotions"].items())
        print(f"# {speaker or '(no speaker)'}: {entry['seconds']:.1f} s of speech: {shares}")


def _write_csv(result: Timeline) -> None:
    writer = csv.writer(sys.stdout, lineterminator="\n")
    writer.writerow(["start", "end", "speaker", "label", *(f"p_{label}" for label in result.labels),
                     "transcript_source", "transcript"])
    for s in result.segments:
        writer.writerow([f"{s.start:.3f}", f"{s.end:.3f}", s.speaker or "", s.label,
                         *(f"{s.scores[label]:.4f}" for label in result.labels), s.transcript_source, s.transcript])


def _clock(seconds: float) -> str:
    minutes, rest = divmod(seconds, 60.0)
    return f"{int(minutes):02d}:{rest:05.2f}"
