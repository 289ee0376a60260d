"""Offline scoring: utterances from a manifest or a folder in, one JSON line of results per utterance out, resumable.

The results file is the job's only state. Each finished utterance is one line, written whole and flushed, so a job
stopped at any point (Ctrl-C, a killed process, a lost node) keeps every finished row and leaves at most one
half-written last line; run again with the same ``--out``, it cuts that fragment off, skips every id already there
and scores the rest. A row that fails (unreadable audio, audio too short, a transcript that is not text) is a result
too, with ``error`` and ``error_type`` instead of a prediction, and the job goes on.

The same function, :func:`score_chunk`, scores in this process and inside each Ray actor (``mmer_rt.serve.ray``),
so both give the same rows, equal to ``Recognizer.predict`` on each utterance.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

from tqdm import tqdm

from ..batching import BatchBudget
from ..corpus import resolve_audio, row_id
from ..errors import ManifestError, MMERError, ResultsError
from ..cli_options import add_long_audio_option, add_model_options, model_options, positive_int
from ..modeldir import ModelManifest
from ..recognizer import Prediction, Recognizer, Utterance

logger = logging.getLogger("mmer_rt")

# What a folder is searched for: the extensions of the formats libsndfile (soundfile) decodes.
AUDIO_EXTENSIONS = frozenset(
    ".wav .wave .flac .ogg .oga .opus .mp3 .aiff .aif .aifc .au .snd .caf .w64 .rf64 .sph .nist".split()
)
# A manifest row's fields that say what to score; the rest (label, speaker, session, ...) is carried to the result
# under "meta", except the augmentation fields, which are training's business.
INPUT_FIELDS = ("id", "audio", "text")
DROPPED_FIELDS = ("aug_audio", "aug_text")
DEFAULT_CHUNK = 32  # utterances per scoring call: twice BatchBudget's 16, so that length sorting has some choice


@dataclass(frozen=True)
class ScoreItem:
    """One utterance to score: its id, its audio file, its transcript (None: the CTC head's) and what to carry."""

    id: str
    audio: str
    # Not checked here: the Recognizer checks it, so that a bad transcript fails its own row only.
    text: Any = None
    meta: dict = field(default_factory=dict)

    def to_json(self) -> str:
        return json.dumps({"id": self.id, "audio": self.audio, "text": self.text, "meta": self.meta},
                          ensure_ascii=False)

    @classmethod
    def from_json(cls, line: str) -> "ScoreItem":
        return cls(**json.loads(line))


@dataclass
class ScoreSummary:
    """What a run did: items in the input, skipped as already in the results, scored now, errors by type."""

    total: int
    skipped: int
    scored: int = 0
    errors: Counter = field(default_factory=Counter)
    seconds: float = 0.0

    def describe(self, out: Path) -> str:
        rate = f", {self.scored / self.seconds:.1f} rows/s" if self.scored and self.seconds > 0 else ""
        failed = sum(self.errors.values())
        kinds = ", ".join(f"{name} {count}" for name, count in self.errors.most_common())
        return (f"{self.scored} row(s) scored in {self.seconds:.1f} s{rate}; {failed} failed"
                + (f" ({kinds})" if failed else "") + f"; {self.skipped} already in {out}")


def read_items(source: str | Path) -> list[ScoreItem]:
    """The utterances of a manifest (JSONL, as ``mmer_rt.corpus`` reads them) or of a folder of audio files.

    A manifest row needs ``audio`` (relative paths are taken from the manifest's folder); ``id`` defaults to the
    audio file's name without extension, as in training manifests; ``text`` is optional (absent or null: the CTC
    head's transcript); other fields are carried to the results under ``meta``. A folder gives every file with an
    audio extension under it, recursively, its id being its path inside the folder, with no transcript.
    Paths are made absolute, so that Ray workers with another working directory find them.

    Raises:
      ManifestError: no such file or folder, nothing to score, or rows that do not say what to score (not JSON, no
        ``audio``, duplicate ids); the message lists every bad row. Audio files are not opened here: one that is
        missing or unreadable fails its own row when it is scored.
    """
    source = Path(source).expanduser().resolve()
    if source.is_dir():
        return _folder_items(source)
    if not source.is_file():
        raise ManifestError(f"no such manifest or folder: {source}")
    return _manifest_items(source)


def _manifest_items(path: Path) -> list[ScoreItem]:
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as error:
        raise ManifestError(f"{path}: cannot read the manifest ({error})") from error
    items, problems, first_line = [], [], {}
    for number, raw in enumerate(lines, start=1):
        if not raw.strip():
            continue
        try:
            row = json.loads(raw)
        except json.JSONDecodeError as error:
            problems.append(f"{path}:{number}: not valid JSON ({error.msg} at column {error.colno})")
            continue
        problem = _row_problem(row)
        if problem is None:
            item_id = row_id(row)
            if item_id in first_line:
                problem = f"duplicate id {item_id!r} (first on line {first_line[item_id]})"
            first_line.setdefault(item_id, number)
        if problem is not None:
            problems.append(f"{path}:{number}: {problem}")
            continue
        meta = {key: value for key, value in row.items() if key not in INPUT_FIELDS + DROPPED_FIELDS}
        items.append(ScoreItem(item_id, str(resolve_audio(row["audio"], path.parent)), row.get("text"), meta))
    if problems:
        raise ManifestError(f"{path}: {len(problems)} bad row(s):\n" + "\n".join(problems))
    if not items:
        raise ManifestError(f"{path}: the manifest has no utterances")
    return items


def _row_problem(row: Any) -> str | None:
    if not isinstance(row, dict):
        return f"expected a JSON object, got {type(row).__name__}"
    for name in ("audio", "id"):
        value = row.get(name)
        if (name == "audio" or value is not None) and not (isinstance(value, str) and value.strip()):
            return f"field {name!r} must be a non-empty string, got {value!r}"
    return None


def _folder_items(folder: Path) -> list[ScoreItem]:
    paths = sorted(p for p in folder.rglob("*") if p.suffix.lower() in AUDIO_EXTENSIONS and p.is_file())
    if not paths:
        raise ManifestError(
            f"{folder}: no audio files in the folder (looked for {', '.join(sorted(AUDIO_EXTENSIONS))})"
        )
    return [ScoreItem(p.relative_to(folder).as_posix(), str(p)) for p in paths]


def finished_ids(out: Path) -> set[str]:
    """The ids already in a results file, after cutting off a half-written last line (a job stopped mid-write).

    Raises:
      ResultsError: a line before the last one that is not a result row: the file was not written by this job (or
        was edited), and resuming would write over what it holds.
    """
    if not out.exists():
        return set()
    ids: set[str] = set()
    offset = 0
    with open(out, "r+b") as handle:
        for number, line in enumerate(handle, start=1):
            row = _result_row(line)
            if line.endswith(b"\n"):
                if row is None and line.strip():
                    raise ResultsError(
                        f"{out}:{number}: not a result row of mmer-rt score ({line[:80]!r}); give another --out "
                        "or repair the file"
                    )
            elif row is None:
                # Only the last line can lack its newline: the writer was stopped inside it. Its utterance is
                # scored again.
                logger.warning("%s:%d: dropping a half-written last line (%d bytes)", out, number, len(line))
                handle.truncate(offset)
                break
            else:
                handle.write(b"\n")  # a whole row that was stopped just before its newline
            if row is not None:
                ids.add(row["id"])
            offset += len(line)
    return ids


def _result_row(line: bytes) -> dict | None:
    try:
        row = json.loads(line)
    except (json.JSONDecodeError, UnicodeDecodeError):
        return None
    return row if isinstance(row, dict) and isinstance(row.get("id"), str) else None


class ResultsWriter:
    """Appends result rows to the results file, one whole line each, flushed at once."""

    def __init__(self, path: Path):
        path.parent.mkdir(parents=True, exist_ok=True)
        self._handle = open(path, "a", encoding="utf-8")

    def write(self, line: str) -> None:
        self._handle.write(line + "\n")
        self._handle.flush()

    def close(self) -> None:
        self._handle.close()


def score_chunk(recognizer: Recognizer, items: Sequence[ScoreItem]) -> list[dict]:
    """Score items together; return one result or error row per item, in input order.

    ``Recognizer.predict_batch(errors="return")`` does the work: an item whose audio or transcript is unusable is
    set aside with its error, the rest are batched by length, and a batch onnxruntime fails on is rerun item by
    item, so that one bad item costs only its own row; the others get exactly their answers alone. Anything else
    raised (a bug) is met the same way: the items are run one by one, and only those that raise get error rows.
    """
    utterances = [Utterance(item.audio, item.text) for item in items]
    try:
        results = recognizer.predict_batch(utterances, errors="return")
    except Exception:  # noqa: BLE001: find the items at fault by running each alone
        logger.warning("a chunk of %d failed; scoring its items one by one", len(items), exc_info=True)
        results = []
        for utterance in utterances:
            try:
                results.extend(recognizer.predict_batch([utterance], errors="return"))
            except Exception as error:  # noqa: BLE001
                results.append(error)
    return [error_row(item, result) if isinstance(result, BaseException) else result_row(item, result)
            for item, result in zip(items, results)]


def result_row(item: ScoreItem, prediction: Prediction) -> dict:
    return {"id": item.id, "audio": item.audio, **prediction.to_dict(), **({"meta": item.meta} if item.meta else {})}


def error_row(item: ScoreItem, error: BaseException) -> dict:
    if not isinstance(error, MMERError):
        # Not a fault of the input that mmer_rt knows: keep the traceback for whoever debugs it.
        logger.warning("%s: unexpected %s", item.audio, type(error).__name__, exc_info=error)
    return {"id": item.id, "audio": item.audio, "error": str(error) or repr(error),
            "error_type": type(error).__name__, **({"meta": item.meta} if item.meta else {})}


def score(
    model_dir: str | Path, source: str | Path, out: str | Path, *, use_ray: bool = False,
    ray_address: str | None = None, actors: int | None = None, cpus_per_actor: float = 1.0,
    chunk: int = DEFAULT_CHUNK, recognizer_options: dict | None = None,
    progress: Callable[[int], None] | None = None,
) -> ScoreSummary:
    """Score every utterance of ``source`` not yet in ``out``, appending a row per utterance as it finishes.

    Args:
      model_dir: the model directory.
      source: a manifest (JSONL) or a folder of audio files; see :func:`read_items`.
      out: the results file (JSONL); created if missing, resumed if not.
      use_ray: run as a Ray Data job (``mmer_rt.serve.ray``) instead of in this process.
      ray_address: the Ray cluster to join (None: Ray's default, see ``ray.init``); only with ``use_ray``.
      actors: Ray actors, each with its own Recognizer (None: the cluster's CPUs / ``cpus_per_actor``).
      cpus_per_actor: CPUs Ray reserves for each actor; also its onnxruntime threads unless
        ``recognizer_options`` sets ``threads``.
      chunk: utterances per ``predict_batch`` call (and per Ray batch).
      recognizer_options: keyword arguments of ``Recognizer.from_dir`` (device, precision, threads, ...).
      progress: called with the number of rows written, after each write.

    Raises:
      ManifestError: see :func:`read_items`. ResultsError: see :func:`finished_ids`. ModelDirError and the other
      ``Recognizer.from_dir`` errors, before anything is scored.
    """
    if chunk < 1:
        raise ValueError(f"chunk must be a positive integer; got {chunk!r}")
    model_dir, out = Path(model_dir).expanduser().resolve(), Path(out)
    options = dict(recognizer_options or {})
    items = read_items(source)
    done = finished_ids(out)
    known = {item.id for item in items}
    stray = len(done - known)
    if stray:
        logger.warning("%s holds %d id(s) that are not in %s; they are kept", out, stray, source)
    todo = [item for item in items if item.id not in done]
    summary = ScoreSummary(total=len(items), skipped=len(items) - len(todo))
    # The model is checked before the results file is touched, so that a wrong directory fails at once.
    recognizer = Recognizer.from_dir(model_dir, **options) if todo and not use_ray else None
    if use_ray:
        from .ray import require_ray

        require_ray()
        ModelManifest.read(model_dir)  # the actors load the model; a wrong directory is named here first
    writer = ResultsWriter(out)
    started = time.perf_counter()

    def write(row: dict) -> None:
        writer.write(json.dumps(row, ensure_ascii=False))
        summary.scored += 1
        if "error_type" in row:
            summary.errors[row["error_type"]] += 1
        if progress is not None:
            progress(1)

    try:
        if todo and use_ray:
            from .ray import score_on_ray

            score_on_ray(model_dir, todo, write, address=ray_address, actors=actors,
                         cpus_per_actor=cpus_per_actor, chunk=chunk, recognizer_options=options)
        elif todo:
            for start in range(0, len(todo), chunk):
                for row in score_chunk(recognizer, todo[start : start + chunk]):
                    write(row)
    finally:
        writer.close()
        summary.seconds = time.perf_counter() - started
    return summary


def parser() -> argparse.ArgumentParser:
    """The arguments of ``mmer-rt score``."""
    p = argparse.ArgumentParser(
        prog="mmer-rt score",
        description="Score every utterance of a manifest or folder not yet in --out, appending one JSON line per "
        "utterance as it finishes; a row that fails records 'error' and 'error_type'. Run again to resume.",
    )
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--manifest", metavar="JSONL", help="one JSON object per line with 'audio' (and optional "
                        "'id', 'text'; other fields are carried under 'meta')")
    source.add_argument("--folder", metavar="DIR", help="every audio file under DIR, without transcripts")
    p.add_argument("--model", required=True, metavar="DIR", help="model directory")
    p.add_argument("--out", required=True, type=Path, metavar="JSONL", help="results file, resumed if it exists")
    p.add_argument("--ray", nargs="?", const="", default=None, metavar="ADDRESS",
                   help="run as a Ray Data job; ADDRESS of the cluster (default: RAY_ADDRESS, the cluster "
                   "'ray start' made here, else a new local instance)")
    p.add_argument("--actors", type=positive_int, default=None,
                   help="Ray actors, one Recognizer each (default: the cluster's CPUs / --cpus-per-actor)")
    p.add_argument("--cpus-per-actor", type=positive_int, default=1,
                   help="CPUs (and onnxruntime threads) per Ray actor (default %(default)s)")
    p.add_argument("--chunk", type=positive_int, default=DEFAULT_CHUNK,
                   help="utterances per predict_batch call and per Ray batch (default %(default)s)")
    add_model_options(p)
    p.add_argument("--threads", type=positive_int, default=None,
                   help="onnxruntime threads (default: all cores; with --ray: --cpus-per-actor)")
    p.add_argument("--batch-size", type=positive_int, default=BatchBudget.max_items,
                   help="most clips per graph run (default %(default)s)")
    add_long_audio_option(p)
    return p


def main(argv: Sequence[str]) -> int:
    """Run ``mmer-rt score`` with ``argv`` (the words after ``score``); MMERErrors are the caller's to report."""
    args = parser().parse_args(argv)
    options = {**model_options(args), "batch_budget": BatchBudget(max_items=args.batch_size), "long_audio": args.long_audio}
    if args.threads is not None:
        options["threads"] = args.threads
    if args.ray is None and (args.actors is not None or args.cpus_per_actor != 1):
        raise MMERError("--actors and --cpus-per-actor are for Ray jobs: add --ray")
    # The bar goes to stderr, and only to a terminal.
    with tqdm(unit="row", file=sys.stderr, disable=None) as bar:
        summary = score(
            args.model, args.manifest or args.folder, args.out, use_ray=args.ray is not None,
            ray_address=args.ray, actors=args.actors, cpus_per_actor=args.cpus_per_actor, chunk=args.chunk,
            recognizer_options=options, progress=bar.update,
        )
    print(f"mmer-rt score: {summary.describe(args.out)}", file=sys.stderr)
    return 0
