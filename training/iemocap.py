"""Import IEMOCAP into a manifest: 4-class labels, transcripts, audio paths, speakers and sessions.

Reads the release's own files (``SessionN/dialog/EmoEvaluation/*.txt``, ``SessionN/dialog/transcriptions/*.txt``,
``SessionN/sentences/wav/<dialog>/<utterance>.wav``) and keeps neutral, angry, sad and happy (happy and excited
merged), the published 4-class task of 5,531 utterances.

Usage: ``python -m training.iemocap IEMOCAP_full_release --out manifest.jsonl``
"""

from __future__ import annotations

import argparse
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

from mmer_rt.corpus import Utterance, write_manifest
from mmer_rt.errors import CorpusError
from mmer_rt.text import clean_transcript

LABELS = ("happy", "angry", "neutral", "sad")
FOUR_CLASS = {"neu": "neutral", "ang": "angry", "sad": "sad", "hap": "happy", "exc": "happy"}

# "[6.2901 - 8.2357]<TAB>Ses01F_impro01_F000<TAB>neu<TAB>[2.5000, 2.5000, 2.5000]"; annotator lines
# ("C-E1:", "A-E2:") and the "%" header do not start with a bracketed time span, so they never match.
_SUMMARY_LINE = re.compile(r"^\[\s*[\d.]+\s*-\s*[\d.]+\s*\]\s+(\S+)\s+(\w+)\s+\[")
# "Ses01F_impro01_F000 [006.2901-008.2357]: Excuse me." Overlap and marker ids (Ses01F_impro01_FXX0, "M: ...")
# lack the gender-plus-three-digits ending of an utterance and are skipped.
_TRANSCRIPT_LINE = re.compile(r"^(Ses\d+[FM]_\S+_[FM]\d{3})\s+\[[^\]]*\]:\s?(.*)$")
_SESSION_DIR = re.compile(r"^Session(\d+)$")


@dataclass
class ImportSummary:
    """What an import kept and what it dropped, by reason."""

    utterances: list[Utterance]
    kept: Counter = field(default_factory=Counter)  # by 4-class label
    dropped_labels: Counter = field(default_factory=Counter)  # by IEMOCAP label outside the 4 classes
    empty_transcripts: list[str] = field(default_factory=list)  # ids whose text is only bracketed spans

    def describe(self) -> str:
        lines = [f"kept {len(self.utterances)} utterances: "
                 + ", ".join(f"{label} {self.kept[label]}" for label in LABELS)]
        if self.dropped_labels:
            lines.append("dropped (outside the 4 classes): "
                         + ", ".join(f"{k} {v}" for k, v in sorted(self.dropped_labels.items())))
        if self.empty_transcripts:
            lines.append(f"dropped {len(self.empty_transcripts)} with no words in the transcript: "
                         + ", ".join(self.empty_transcripts[:10]) + (" ..." if len(self.empty_transcripts) > 10 else ""))
        return "\n".join(lines)


def import_iemocap(release_dir: str | Path) -> ImportSummary:
    """Read an IEMOCAP release into 4-class utterances (speaker "Session1F", session "Session1").

    Raises:
      CorpusError: the folder is not an IEMOCAP release, or labelled utterances lack their transcript or audio
        (all such problems are listed at once).
    """
    release = Path(release_dir)
    summary = ImportSummary(utterances=[])
    problems: list[str] = []
    for session_dir in _session_dirs(release):
        _import_session(session_dir, summary, problems)
    if problems:
        raise CorpusError(f"{release}: {len(problems)} problem(s) in the IEMOCAP release:\n" + "\n".join(problems))
    if not summary.utterances:
        raise CorpusError(f"{release}: no utterance of the 4 classes {LABELS} was found")
    return summary


def _session_dirs(release: Path) -> list[Path]:
    if not release.is_dir():
        raise CorpusError(f"IEMOCAP folder not found: {release}")
    found = sorted((p for p in release.iterdir() if p.is_dir() and _SESSION_DIR.match(p.name)),
                   key=lambda p: int(_SESSION_DIR.match(p.name).group(1)))
    if not found:
        raise CorpusError(
            f"{release} is not an IEMOCAP release: it has no Session1 ... Session5 folders "
            "(give the IEMOCAP_full_release folder itself)"
        )
    for session_dir in found:
        for part in ("dialog/EmoEvaluation", "dialog/transcriptions", "sentences/wav"):
            if not (session_dir / part).is_dir():
                raise CorpusError(f"{session_dir} is not an IEMOCAP session: {part}/ is missing")
    return found


def _import_session(session_dir: Path, summary: ImportSummary, problems: list[str]) -> None:
    session = f"Session{int(_SESSION_DIR.match(session_dir.name).group(1))}"
    evaluations = _dialog_files(session_dir / "dialog" / "EmoEvaluation")
    if not evaluations:
        problems.append(f"{session_dir / 'dialog' / 'EmoEvaluation'}: no Ses*.txt label files")
    for evaluation in evaluations:
        dialog = evaluation.stem
        labels = read_labels(evaluation)
        transcript_file = session_dir / "dialog" / "transcriptions" / f"{dialog}.txt"
        if not transcript_file.is_file():
            problems.append(f"{transcript_file}: missing (labels of {dialog} have no transcripts)")
            continue
        transcripts = read_transcripts(transcript_file)
        for utterance_id, raw_label in labels.items():
            label = FOUR_CLASS.get(raw_label)
            if label is None:
                summary.dropped_labels[raw_label] += 1
                continue
            audio = session_dir / "sentences" / "wav" / dialog / f"{utterance_id}.wav"
            if utterance_id not in transcripts:
                problems.append(f"{transcript_file}: no transcript for labelled utterance {utterance_id}")
            elif not audio.is_file():
                problems.append(f"{audio}: missing audio for labelled utterance {utterance_id}")
            elif not clean_transcript(transcripts[utterance_id]):
                summary.empty_transcripts.append(utterance_id)
            else:
                gender = utterance_id.rsplit("_", 1)[1][0]
                summary.utterances.append(Utterance(
                    id=utterance_id, audio=audio, text=transcripts[utterance_id], label=label,
                    speaker=f"{session}{gender}", session=session,
                ))
                summary.kept[label] += 1


def _dialog_files(folder: Path) -> list[Path]:
    # Skip macOS "._" resource forks that some copies of the release carry.
    return sorted(p for p in folder.glob("Ses*.txt") if p.is_file())


def read_labels(path: Path) -> dict[str, str]:
    """Utterance id -> IEMOCAP label code (neu, hap, exc, ..., xxx) from one EmoEvaluation file's summary lines."""
    labels = {}
    for line in _read_lines(path):
        match = _SUMMARY_LINE.match(line)
        if match:
            labels[match.group(1)] = match.group(2)
    return labels


def read_transcripts(path: Path) -> dict[str, str]:
    """Utterance id -> transcript from one transcriptions file, skipping overlap and marker lines."""
    transcripts = {}
    for line in _read_lines(path):
        match = _TRANSCRIPT_LINE.match(line.strip())
        if match:
            transcripts[match.group(1)] = match.group(2).strip()
    return transcripts


def _read_lines(path: Path) -> list[str]:
    try:
        return path.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError as error:
        raise CorpusError(f"{path}: not a UTF-8/ASCII text file as IEMOCAP's are ({error})") from error


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m training.iemocap", description=__doc__.splitlines()[0])
    parser.add_argument("release_dir", type=Path, help="the IEMOCAP_full_release folder")
    parser.add_argument("--out", required=True, type=Path, help="manifest (JSONL) to write")
    args = parser.parse_args(argv)
    try:
        summary = import_iemocap(args.release_dir)
    except CorpusError as error:
        parser.exit(2, f"error: {error}\n")
    write_manifest(args.out, summary.utterances)
    print(summary.describe())
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
