"""Synthesise long calls from espeak-ng clips: two voices take turns with pauses and silences, written block by block.

Every turn's speech extent, speaker and emotion is known exactly, so a timeline's voice activity, windows and speakers
can be checked against them. A call is tiled from a few dozen clips read once, so an hour of call costs seconds and
memory holds one turn, never the call.

Usage: ``python -m training.synth_call --corpus DIR --out call.wav --minutes 10 [--stereo] [--rate 8000]`` (also
writes call.rttm, the turns, and call.srt, their words)
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from mmer_rt.audio import SAMPLE_RATE
from mmer_rt.corpus import read_manifest

TRIM_FRAME = 0.01  # seconds
TRIM_LEVEL = 0.01  # of the clip's peak (-40 dB): quieter 10 ms frames at either end are not speech


@dataclass(frozen=True)
class CallTurn:
    """One turn: from its first voiced sample to its last, one speaker, one emotion (its clips share a label)."""

    start: float
    end: float
    speaker: str
    label: str
    text: str


@dataclass(frozen=True)
class _Clip:
    waveform: np.ndarray
    speaker: str
    label: str
    text: str


def write_call(
    path: str | Path, manifest: str | Path, seconds: float, seed: int = 0, speakers: Sequence[str] | None = None,
    sample_rate: int = SAMPLE_RATE, stereo: bool = False, clips_per_turn: tuple[int, int] = (1, 3),
    pause: tuple[float, float] = (0.1, 0.3), gap: tuple[float, float] = (0.8, 2.5), noise: float = 0.003,
) -> list[CallTurn]:
    """Write a call of ``seconds`` to ``path`` (16-bit PCM) and return its turns in time order.

    Args:
      manifest: a corpus written by ``training.synth``; its clips are the call's utterances.
      speakers: the two voices taking turns; None: the manifest's first two speakers.
      sample_rate: the file's rate (8000 for a telephone line).
      stereo: each speaker on their own channel (the other channel carries only the noise), as call centres record.
      clips_per_turn: a turn says this many clips (inclusive range) of one emotion, ``pause`` seconds apart
        (shorter than the timeline's default max_gap, so a turn is one region).
      gap: silence between turns (longer than max_gap); the call opens with one too.
      noise: the RMS of white noise on every channel throughout, so silence is never digital zero.
    """
    import soundfile

    rng = np.random.default_rng(seed)
    clips = _load_clips(manifest, speakers, sample_rate)
    voices = sorted({clip.speaker for clip in clips}, key=[c.speaker for c in clips].index)
    total = int(round(seconds * sample_rate))
    turns: list[CallTurn] = []
    written = 0
    with soundfile.SoundFile(path, "w", samplerate=sample_rate, channels=2 if stereo else 1,
                             subtype="PCM_16") as out:
        for number in range(10**9):
            speaker = voices[number % len(voices)]
            label = rng.choice(sorted({c.label for c in clips if c.speaker == speaker}))
            pool = [c for c in clips if c.speaker == speaker and c.label == label]
            said = [pool[rng.integers(len(pool))] for _ in range(rng.integers(clips_per_turn[0],
                                                                              clips_per_turn[1] + 1))]
            pieces = [np.zeros(int(rng.uniform(*gap) * sample_rate), np.float32)]
            for i, clip in enumerate(said):
                if i:
                    pieces.append(np.zeros(int(rng.uniform(*pause) * sample_rate), np.float32))
                pieces.append(clip.waveform * np.float32(rng.uniform(0.3, 1.0)))
            speech = np.concatenate(pieces)
            if written + len(speech) > total:
                break
            start = written + len(pieces[0])
            turns.append(CallTurn(start / sample_rate, (written + len(speech)) / sample_rate, speaker, str(label),
                                  " ".join(c.text for c in said)))
            _write(out, speech, voices.index(speaker) if stereo else None, noise, rng)
            written += len(speech)
        _write(out, np.zeros(total - written, np.float32), None, noise, rng)
    return turns


def write_rttm(path: str | Path, turns: Sequence[CallTurn], file_id: str = "call") -> None:
    """The turns as an RTTM file, as a diarization system would write them."""
    lines = [f"SPEAKER {file_id} 1 {t.start:.3f} {t.end - t.start:.3f} <NA> <NA> {t.speaker} <NA> <NA>"
             for t in turns]
    Path(path).write_text("\n".join(lines) + "\n", encoding="utf-8")


def write_srt(path: str | Path, turns: Sequence[CallTurn]) -> None:
    """The turns' words as SRT cues, one per turn, as an ASR system's subtitles would give them."""
    def clock(seconds: float) -> str:
        hours, rest = divmod(seconds, 3600)
        minutes, rest = divmod(rest, 60)
        return f"{int(hours):02d}:{int(minutes):02d}:{rest:06.3f}".replace(".", ",")

    cues = [f"{i}\n{clock(t.start)} --> {clock(t.end)}\n{t.text}\n" for i, t in enumerate(turns, start=1)]
    Path(path).write_text("\n".join(cues), encoding="utf-8")


def _write(out, speech: np.ndarray, channel: int | None, noise: float, rng: np.random.Generator) -> None:
    frames = np.zeros((len(speech), out.channels), np.float32)
    if channel is None:
        frames[:, :] = speech[:, None]
    else:
        frames[:, channel] = speech
    frames += (noise * rng.standard_normal(frames.shape)).astype(np.float32)
    out.write(np.clip(frames, -1.0, 1.0))


def _load_clips(manifest: str | Path, speakers: Sequence[str] | None, sample_rate: int) -> list[_Clip]:
    from mmer_rt.audio import load_audio

    rows = read_manifest(manifest)
    chosen = list(speakers) if speakers else list(dict.fromkeys(row.speaker for row in rows))[:2]
    missing = set(chosen) - {row.speaker for row in rows}
    if missing or not chosen:
        raise ValueError(f"{manifest}: no clips of speakers {sorted(missing) or chosen}")
    return [_Clip(_trim(load_audio(row.audio, target_rate=sample_rate), sample_rate), row.speaker, row.label,
                  row.text) for row in rows if row.speaker in chosen]


def _trim(waveform: np.ndarray, rate: int) -> np.ndarray:
    """The clip from its first voiced 10 ms frame to its last: espeak-ng pads its output with silence."""
    step = int(TRIM_FRAME * rate)
    frames = waveform[: len(waveform) // step * step].reshape(-1, step)
    loud = np.flatnonzero(np.sqrt((frames**2).mean(axis=1)) > TRIM_LEVEL * np.abs(waveform).max())
    return np.ascontiguousarray(waveform[loud[0] * step : (loud[-1] + 1) * step])


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m training.synth_call", description=__doc__.splitlines()[0])
    parser.add_argument("--corpus", required=True, type=Path, help="a training.synth corpus folder")
    parser.add_argument("--out", required=True, type=Path, help="the call's audio file (.wav or .flac)")
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--rate", type=int, default=SAMPLE_RATE, help="the file's sample rate")
    parser.add_argument("--stereo", action="store_true", help="one speaker per channel")
    args = parser.parse_args(argv)
    turns = write_call(args.out, args.corpus / "manifest.jsonl", 60 * args.minutes, args.seed,
                       sample_rate=args.rate, stereo=args.stereo)
    write_rttm(args.out.with_suffix(".rttm"), turns, args.out.stem)
    write_srt(args.out.with_suffix(".srt"), turns)
    print(f"wrote {args.out} ({args.minutes:g} min, {len(turns)} turns), its turns as "
          f"{args.out.with_suffix('.rttm')} and its words as {args.out.with_suffix('.srt')}")


if __name__ == "__main__":
    main()
