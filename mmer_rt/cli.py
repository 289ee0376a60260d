"""The ``mmer-rt`` command line: ``predict`` emotions of audio files, show a model directory's ``info``, ``timeline``."""

from __future__ import annotations

import argparse
import csv
import importlib
import json
import os
import sys
import traceback
from pathlib import Path
from typing import Sequence

from tqdm import tqdm

from .batching import BatchBudget
from .errors import MMERError, TextError
from .cli_options import add_long_audio_option, add_model_options, model_options, positive_int
from .modeldir import ModelManifest
from .recognizer import Prediction, Recognizer, Utterance

# Commands of the extras: each module parses its own arguments, so that mmer_rt's core never imports it.
EXTRA_COMMANDS = {"serve": ("mmer_rt.serve.command", "serve a model over HTTP (the [serve] extra)"),
                  "score": ("mmer_rt.serve.score", "score a manifest or folder into JSONL, resumably (--ray: on Ray)")}
# Files are decoded a chunk at a time so that memory stays bounded however many are named.
FILES_PER_CHUNK = 64

# Exit statuses (argparse exits with 2 for bad usage itself). A crash is sysexits.h's EX_SOFTWARE, so that a script
# can tell a bug in mmer-rt from bad input; a closed pipe (``| head``) is what a shell reports for a process killed
# by SIGPIPE.
EXIT_OK, EXIT_ERROR, EXIT_CRASH, EXIT_BROKEN_PIPE = 0, 1, 70, 141


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status: 0 success; 1 an mmer_rt error (with ``predict``, any file
    that failed; the others are still answered); 2 bad usage; 70 an unexpected crash (a bug: the traceback is on
    stderr); 141 the reader of stdout went away (``| head``), quietly."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in EXTRA_COMMANDS:
        run = lambda: importlib.import_module(EXTRA_COMMANDS[argv[0]][0]).main(argv[1:])  # noqa: E731
    else:
        args = _parser().parse_args(argv)
        run = lambda: args.run(args)  # noqa: E731
    try:
        status = run()
        sys.stdout.flush()  # here, so that a closed pipe is met inside this try rather than at exit
        return status
    except MMERError as error:
        print(f"mmer-rt: error: {_printable(str(error))}", file=sys.stderr)
        return EXIT_ERROR
    except BrokenPipeError:
        # Python would complain again when it flushes stdout at exit: point stdout at /dev/null first.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_BROKEN_PIPE
    except Exception as error:  # anything else is a bug in mmer-rt or a library, not a problem with the input
        traceback.print_exc()
        print(f"mmer-rt: internal error, please report it: {type(error).__name__}: {error}", file=sys.stderr)
        return EXIT_CRASH


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mmer-rt", description="Speech emotion recognition with MMER.")
    commands = parser.add_subparsers(dest="command", required=True)

    predict = commands.add_parser("predict", help="recognise the emotion of audio files")
    predict.add_argument("files", nargs="+", metavar="FILE", help="audio files (anything libsndfile reads)")
    predict.add_argument("--model", required=True, metavar="DIR", help="model directory")
    source = predict.add_mutually_exclusive_group()
    source.add_argument("--text", help="the transcript of the one FILE")
    source.add_argument(
        "--transcripts", metavar="TSV", type=Path,
        help="tab-separated lines 'FILE<TAB>transcript', FILE as given on the command line; "
        "without --text or --transcripts the CTC head's greedy transcript is used",
    )
    predict.add_argument("--json", action="store_true", help="one JSON object per line")
    add_model_options(predict)
    predict.add_argument("--threads", type=positive_int, default=None, help="CPU threads (default: all cores)")
    predict.add_argument("--batch-size", type=positive_int, default=BatchBudget.max_items,
                         help="most clips per batch (default: %(default)s)")
    add_long_audio_option(predict)
    predict.add_argument("--fail-fast", action="store_true",
                         help="stop at the first file that fails (default: answer every other file, report each "
                              "failure on stderr and exit with status 1)")
    predict.set_defaults(run=_predict, parser=predict)

    info = commands.add_parser("info", help="describe a model directory")
    info.add_argument("model", metavar="DIR", help="model directory")
    info.add_argument("--json", action="store_true", help="print the manifest as JSON")
    info.set_defaults(run=_info)
    for name, (_, summary) in EXTRA_COMMANDS.items():
        commands.add_parser(name, help=f"{summary}; mmer-rt {name} --help")

    from .timeline_cli import add_timeline_command

    add_timeline_command(commands)
    return parser


def _predict(args: argparse.Namespace) -> int:
    texts = _transcripts(args)
    recognizer = Recognizer.from_dir(
        args.model, **model_options(args), threads=args.threads,
        batch_budget=BatchBudget(max_items=args.batch_size), long_audio=args.long_audio,
    )
    failed = 0
    # The bar goes to stderr, and only to a terminal, so that stdout stays clean for pipes.
    with tqdm(total=len(args.files), unit="file", disable=None if len(args.files) > 1 else True,
              file=sys.stderr) as bar:
        for start in range(0, len(args.files), FILES_PER_CHUNK):
            chunk = args.files[start : start + FILES_PER_CHUNK]
            results = recognizer.predict_batch([Utterance(path, texts.get(path)) for path in chunk],
                                               errors="raise" if args.fail_fast else "return")
            for path, result in zip(chunk, results):
                if isinstance(result, MMERError):
                    failed += 1
                    bar.write(f"mmer-rt: error: {_printable(str(result))}", file=sys.stderr)
                    if args.json:
                        bar.write(json.dumps({"file": _printable(path), "error": _printable(str(result)),
                                              "error_type": type(result).__name__}, ensure_ascii=False),
                                  file=sys.stdout)
                else:
                    bar.write(_format(path, result, args.json), file=sys.stdout)
            bar.update(len(chunk))
    if failed:
        print(f"mmer-rt: {failed} of {len(args.files)} files failed", file=sys.stderr)
        return EXIT_ERROR
    return EXIT_OK


def _transcripts(args: argparse.Namespace) -> dict[str, str]:
    if args.text is not None:
        if len(args.files) != 1:
            args.parser.error(f"--text gives the transcript of one file, but {len(args.files)} were named; "
                              "use --transcripts TSV for several")
        if args.text != _printable(args.text):
            raise TextError("--text is not valid UTF-8 (or not valid in this terminal's encoding)")
        return {args.files[0]: args.text}
    if args.transcripts is None:
        return {}
    table = _read_tsv(args.transcripts)
    missing = [path for path in args.files if path not in table]
    if missing:
        raise MMERError(f"{args.transcripts} has no transcript for {', '.join(missing[:5])}"
                        + (f" and {len(missing) - 5} more" if len(missing) > 5 else ""))
    return table


def _printable(text: str) -> str:
    """A command-line string with the bytes that were not valid UTF-8 (kept by Python as lone surrogates, which
    stdout cannot encode) shown as escapes."""
    try:
        return text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
    except UnicodeEncodeError:  # a surrogate that no undecodable byte gives: not from the command line
        return text.encode("utf-8", "backslashreplace").decode("utf-8")


def _read_tsv(path: Path) -> dict[str, str]:
    try:
        with open(path, encoding="utf-8", newline="") as handle:
            rows = list(csv.reader(handle, delimiter="\t", quoting=csv.QUOTE_NONE))
    except (OSError, UnicodeDecodeError) as error:
        raise MMERError(f"cannot read the transcripts file {path} ({error})") from error
    table = {}
    for number, row in enumerate(rows, start=1):
        if not row:
            continue
        if len(row) != 2:
            raise MMERError(f"{path}:{number}: expected 'FILE<TAB>transcript', found {len(row)} columns")
        table[row[0]] = row[1]
    return table


def _format(path: str, prediction: Prediction, as_json: bool) -> str:
    path = _printable(path)
    if as_json:
        return json.dumps({"file": path, **prediction.to_dict()}, ensure_ascii=False)
    notes = " (truncated)" if prediction.truncated else ""
    notes += f" ({prediction.windows} windows)" if prediction.windows > 1 else ""
    return (f"{path}\t{prediction.label}\t{prediction.score:.3f}\t{prediction.duration:.2f}s{notes}\t"
            f"{prediction.transcript_source}: {prediction.transcript}")


def _info(args: argparse.Namespace) -> int:
    manifest = ModelManifest.read(args.model)
    if args.json:
        print(manifest.to_json(), end="")
        return 0
    print(f"model directory   {Path(args.model).resolve()}")
    print(f"format version    {manifest.format_version}")
    print(f"labels            {', '.join(manifest.labels)}")
    print(f"audio             {manifest.sample_rate} Hz, at most {manifest.max_audio_samples} samples "
          f"({manifest.max_audio_samples / manifest.sample_rate:.2f} s)")
    print(f"text cleaning     {manifest.text_cleaning}")
    print(f"tokenizer         {manifest.tokenizer}")
    print(f"variants          {', '.join(manifest.variants)}")
    print()
    print("\n".join(parity_table(manifest)))
    print()
    width = max(map(len, manifest.versions), default=0)
    for name, version in manifest.versions.items():
        print(f"version {name:<{width}}  {version}")
    return 0


def parity_table(manifest: ModelManifest) -> list[str]:
    """Each variant's parity against the PyTorch fp32 model as aligned text: a row per figure, a column per
    variant (three columns stay narrow however many figures an export records); "-" where one is missing."""
    flat = {name: dict(_flat(variant.parity)) for name, variant in manifest.variants.items()}
    figures = list(dict.fromkeys(key for values in flat.values() for key in values))
    rows = [["parity vs PyTorch fp32", *flat]]
    rows += [[figure, *(_cell(values.get(figure)) for values in flat.values())] for figure in figures]
    if not figures:
        rows.append(["not recorded", *("-" for _ in flat)])
    widths = [max(len(row[column]) for row in rows) for column in range(len(rows[0]))]
    return ["  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip() for row in rows]


def _cell(value) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.3g}"
    return str(value)


def _flat(values: dict, prefix: str = ""):
    """(key, value) pairs of a nested dict, nested keys joined with dots (parity's "speech.top1_agreement")."""
    for key, value in values.items():
        if isinstance(value, dict):
            yield from _flat(value, f"{prefix}{key}.")
        else:
            yield f"{prefix}{key}", value
