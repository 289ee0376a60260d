"""The data manifest: a JSONL file of utterances (audio, transcript, label, speaker, session), read and checked up front.

One line per utterance::

    {"id": "f3_0001", "audio": "wav/f3_0001.wav", "text": "I won the prize!", "label": "happy",
     "speaker": "en-us+f3", "session": "Session1", "aug_audio": null, "aug_text": null}

Relative audio paths resolve against the manifest's folder, so a corpus directory can be moved as a whole.
Every row is validated before training starts, so a bad row fails the run at once rather than mid-epoch.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

from .errors import ManifestError, TextError
from .text import clean_transcript

REQUIRED_FIELDS = ("audio", "text", "label", "speaker", "session")
OPTIONAL_FIELDS = ("id", "aug_audio", "aug_text")


@dataclass(frozen=True)
class Utterance:
    """One row of a manifest, with audio paths already resolved."""

    id: str
    audio: Path
    text: str
    label: str
    speaker: str
    session: str
    aug_audio: Path | None = None
    aug_text: str | None = None
    line: int = 0


def read_manifest(
    path: str | Path, labels: Sequence[str] | None = None, check_audio: bool = True
) -> list[Utterance]:
    """Read and validate a manifest.

    Args:
      path: the JSONL file.
      labels: the allowed class names; None accepts any non-empty label.
      check_audio: open every audio file's header (soundfile.info) to check it exists, decodes and is not empty.

    Returns:
      The utterances in file order.

    Raises:
      ManifestError: the file is missing or empty, or some rows are bad; the message lists every bad row as
        ``FILE:LINE: problem``.
    """
    path = Path(path)
    if not path.is_file():
        raise ManifestError(f"manifest not found: {path}")
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as error:
        raise ManifestError(f"{path}: cannot read the manifest ({error})") from error
    allowed = set(labels) if labels is not None else None
    utterances: list[Utterance] = []
    problems: list[str] = []
    first_line_of_id: dict[str, int] = {}
    for number, raw in enumerate(lines, start=1):
        if not raw.strip():
            continue
        row_problems, utterance = _parse_row(raw, number, path.parent, allowed, check_audio)
        if utterance is not None:
            if utterance.id in first_line_of_id:
                row_problems.append(f"duplicate id {utterance.id!r} (first on line {first_line_of_id[utterance.id]})")
            else:
                first_line_of_id[utterance.id] = number
        problems.extend(f"{path}:{number}: {p}" for p in row_problems)
        if utterance is not None and not row_problems:
            utterances.append(utterance)
    if problems:
        raise ManifestError(f"{path}: {len(problems)} bad row(s):\n" + "\n".join(problems))
    if not utterances:
        raise ManifestError(f"{path}: the manifest has no utterances")
    return utterances


def write_manifest(path: str | Path, utterances: Iterable[Utterance]) -> None:
    """Write utterances as JSONL; audio paths under the manifest's folder are stored relative to it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    folder = path.parent.resolve()
    rows = []
    for u in utterances:
        row = {
            "id": u.id,
            "audio": _relative_to(u.audio, folder),
            "text": u.text,
            "label": u.label,
            "speaker": u.speaker,
            "session": u.session,
        }
        if u.aug_audio is not None:
            row["aug_audio"] = _relative_to(u.aug_audio, folder)
        if u.aug_text is not None:
            row["aug_text"] = u.aug_text
        rows.append(json.dumps(row, ensure_ascii=False))
    path.write_text("".join(r + "\n" for r in rows), encoding="utf-8")


def _relative_to(audio: Path, folder: Path) -> str:
    resolved = Path(audio).resolve()
    if resolved.is_relative_to(folder):
        return resolved.relative_to(folder).as_posix()
    return str(audio)


def _parse_row(
    raw: str, number: int, folder: Path, allowed: set[str] | None, check_audio: bool
) -> tuple[list[str], Utterance | None]:
    try:
        row = json.loads(raw)
    except json.JSONDecodeError as error:
        return [f"not valid JSON ({error.msg} at column {error.colno})"], None
    if not isinstance(row, dict):
        return [f"expected a JSON object, got {type(row).__name__}"], None
    problems = [f"missing or empty field {name!r}" for name in REQUIRED_FIELDS if not _is_text(row.get(name))]
    problems += [
        f"field {name!r} must be a non-empty string, got {row[name]!r}"
        for name in OPTIONAL_FIELDS
        if row.get(name) is not None and not _is_text(row[name])
    ]
    if problems:
        return problems, None
    label = row["label"]
    if allowed is not None and label not in allowed:
        problems.append(f"unknown label {label!r} (expected one of {sorted(allowed)})")
    problems += _transcript_problems("text", row["text"])
    if row.get("aug_text") is not None:
        problems += _transcript_problems("aug_text", row["aug_text"])
    audio = resolve_audio(row["audio"], folder)
    aug_audio = resolve_audio(row["aug_audio"], folder) if row.get("aug_audio") is not None else None
    if check_audio:
        problems += _audio_problems("audio", audio)
        if aug_audio is not None:
            problems += _audio_problems("aug_audio", aug_audio)
    utterance = Utterance(
        id=row_id(row),
        audio=audio,
        text=row["text"],
        label=label,
        speaker=row["speaker"],
        session=row["session"],
        aug_audio=aug_audio,
        aug_text=row.get("aug_text"),
        line=number,
    )
    return problems, utterance


def _is_text(value) -> bool:
    return isinstance(value, str) and value.strip() != ""


def row_id(row: dict) -> str:
    """A row's id: its "id" field, else its audio file's name without the extension."""
    return row.get("id") or Path(row["audio"]).stem


def resolve_audio(audio: str, folder: Path) -> Path:
    """An audio path as a manifest row gives it, relative paths taken from the manifest's ``folder``."""
    candidate = Path(audio).expanduser()
    return candidate if candidate.is_absolute() else folder / candidate


def _transcript_problems(name: str, text: str) -> list[str]:
    try:
        cleaned = clean_transcript(text)
    except TextError as error:
        return [f"{name}: {error}"]
    return [] if cleaned else [f"{name} {text!r} is empty once bracketed spans are removed"]


def _audio_problems(name: str, audio: Path) -> list[str]:
    import soundfile

    if not audio.is_file():
        return [f"{name} file not found: {audio}"]
    try:
        info = soundfile.info(str(audio))
    except (soundfile.LibsndfileError, RuntimeError, TypeError, ValueError) as error:
        return [f"{name} file {audio} cannot be decoded ({error})"]
    if info.frames <= 0:
        return [f"{name} file {audio} has no samples"]
    return []
