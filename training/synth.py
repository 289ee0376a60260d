"""Synthesise a small emotional-speech corpus with espeak-ng: 4 emotions, many voices, a manifest in mmer_rt's format.

No emotional speech corpus can be downloaded here, so demos, tests and the trainer's smoke runs use this one. Each
emotion has its own prosody (pitch, pitch range, speaking rate) and voice quality (harsh for angry, dull for sad),
shifted per voice and per utterance by random jitter drawn from the seed, so no single threshold separates the
classes. Half of the sentences come from a pool shared by every emotion, so the text alone cannot solve the task.

Usage: ``python -m training.synth --out DIR [--seed 0] [--voices 10 | --voices en-us+f3,en-us+m3,...] [--per-class 20]``
"""

from __future__ import annotations

import argparse
import io
import os
import shutil
import subprocess
import time
import zlib
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
from tqdm.auto import tqdm

from mmer_rt.audio import SAMPLE_RATE
from mmer_rt.corpus import Utterance, write_manifest
from mmer_rt.errors import CorpusError

LABELS = ("happy", "angry", "neutral", "sad")  # the IEMOCAP 4-class names, in the published order
MANIFEST_NAME = "manifest.jsonl"
VOICES_PER_SESSION = 2  # one female and one male voice per session, as IEMOCAP pairs its actors

# Female/male pairs, so that the first 2k voices always form k balanced sessions.
DEFAULT_VOICES = (
    "en-us+f3", "en-us+m3",
    "en+f2", "en-gb+m1",
    "en-us+f4", "en-gb-scotland+m2",
    "en-029+f1", "en-gb-x-rp+m4",
    "en-us+f5", "en+m7",
    "en-gb+f4", "en-us+m6",
    "en-gb-x-rp+f2", "en-us-nyc+m5",
    "en-029+f5", "en+m1",
)


@dataclass(frozen=True)
class Prosody:
    """Percentage changes of a voice's pitch, pitch range and rate, and a voice quality."""

    pitch: float
    pitch_range: float
    rate: float
    quality: str = "modal"  # "modal", "harsh" (soft clipping) or "dull" (high frequencies attenuated)


# Per-emotion prosody as percentage changes on the voice's own pitch, pitch range and rate (espeak-ng SSML
# <prosody>), plus a voice-quality effect applied to the waveform. Loudness is left out on purpose: wav2vec2's
# per-utterance normalisation erases it, so it would carry no signal the model can see.
EMOTION_PROSODY = {
    "happy": Prosody(pitch=45, pitch_range=120, rate=10),
    "angry": Prosody(pitch=10, pitch_range=10, rate=40, quality="harsh"),
    "neutral": Prosody(pitch=0, pitch_range=-15, rate=0),
    "sad": Prosody(pitch=-25, pitch_range=-60, rate=-30, quality="dull"),
}
# Uniform half-widths (percentage points) of the random shifts: a voice's habitual pitch/range/rate, then each
# utterance's own variation. Large enough that neighbouring emotions overlap on any single cue.
VOICE_JITTER = Prosody(pitch=15, pitch_range=25, rate=10)
UTTERANCE_JITTER = Prosody(pitch=8, pitch_range=20, rate=8)
SHARED_SENTENCE_FRACTION = 0.5

EMOTION_SENTENCES = {
    "happy": (
        "I can not believe we actually won the game!",
        "This is the best news I have heard all year.",
        "We are going to the beach this weekend, how wonderful.",
        "Thank you so much, I love it!",
        "My sister just had a beautiful baby girl.",
        "I got the job, they called me this morning!",
        "What a lovely surprise to see you here.",
        "The party last night was so much fun.",
        "Finally, everything worked out perfectly.",
        "You made my day, really, thank you.",
        "We passed the exam with the highest marks.",
        "I am so glad you could come tonight.",
        "Look at this, the garden is full of flowers.",
        "Our team is going to the finals!",
        "That is fantastic, congratulations to both of you.",
    ),
    "angry": (
        "How many times do I have to tell you to stop that?",
        "You lied to me again and I am sick of it.",
        "Get out of my office right now.",
        "This is completely unacceptable.",
        "Who the hell took my car without asking?",
        "I told you not to touch my things!",
        "You never listen to a single word I say.",
        "Do not ever talk to me like that again.",
        "They cancelled my flight for the third time.",
        "I have had enough of your excuses.",
        "Stop wasting my time with this nonsense.",
        "Why did you break it, you knew it was mine!",
        "I want my money back, today.",
        "That is the stupidest idea I have ever heard.",
        "Shut the door and leave me alone!",
    ),
    "neutral": (
        "The meeting is scheduled for three in the afternoon.",
        "Please put the files on the second shelf.",
        "The train leaves from platform four.",
        "I will send you the report by email.",
        "The store closes at nine on weekdays.",
        "We need two more chairs for the table.",
        "The form asks for your address and phone number.",
        "Turn left at the next corner.",
        "The package should arrive on Tuesday.",
        "He works in the accounting department.",
        "The library is on the other side of the street.",
        "I usually take the bus to work.",
        "There are twelve months in a year.",
        "The printer is next to the kitchen.",
        "Let me check the schedule for tomorrow.",
    ),
    "sad": (
        "I miss her so much, it still hurts.",
        "He passed away last night in the hospital.",
        "Nobody came to my birthday this year.",
        "I lost my job and I do not know what to do.",
        "Our old dog died this morning.",
        "I feel so alone since you moved away.",
        "We had to sell the house I grew up in.",
        "I tried my best, but it was not enough.",
        "She does not want to see me anymore.",
        "Everything seems so empty now.",
        "I wish I could have said goodbye.",
        "The doctor said there is nothing more they can do.",
        "I failed the exam again.",
        "My best friend forgot about me.",
        "It has been raining for weeks and I can not get out of bed.",
    ),
}
# Said in every emotion: with these only the voice tells the classes apart.
SHARED_SENTENCES = (
    "I am going to the store now.",
    "Did you see the message I sent you?",
    "We talked about it yesterday.",
    "She said she would call me back later.",
    "It is almost five o'clock.",
    "Where did you put the keys?",
    "They are coming over tonight.",
    "I have to tell you something.",
    "That is what he told me.",
    "We will find out tomorrow.",
    "The car is parked outside.",
    "I read the letter this morning.",
    "You know what happened at work today.",
    "Just give me a minute.",
    "It was the last one they had.",
    "My brother called me on Sunday.",
    "Can you hear me now?",
    "I did not expect that.",
    "Let us talk about it over dinner.",
    "This is the second time this week.",
)


@dataclass(frozen=True)
class ClipPlan:
    """Everything needed to render one clip: drawn in the main process so results do not depend on scheduling."""

    id: str
    voice: str
    session: str
    label: str
    text: str
    prosody: Prosody


def synthesize_corpus(
    out_dir: str | Path,
    seed: int = 0,
    voices: int | Sequence[str] = 10,
    per_class: int = 20,
    workers: int | None = None,
) -> Path:
    """Synthesise the corpus into ``out_dir`` (``wav/`` and ``manifest.jsonl``) and return the manifest path.

    Args:
      out_dir: the corpus folder; created if missing.
      seed: every random choice (jitter, sentences) derives from it: the same seed gives identical files.
      voices: a number of voices taken from DEFAULT_VOICES, or espeak-ng voice names ("en-us+f3").
        Consecutive pairs of voices form one session: Session1 = voices 0 and 1, and so on.
      per_class: clips per emotion per voice.
      workers: parallel espeak-ng processes; default: the CPU count.

    Raises:
      CorpusError: espeak-ng is missing, a voice is unknown, or the counts are out of range.
    """
    voice_names = _choose_voices(voices)
    if per_class < 1:
        raise CorpusError(f"per_class must be at least 1, got {per_class}")
    espeak = _find_espeak()
    _check_voices(espeak, voice_names)
    out_dir = Path(out_dir)
    (out_dir / "wav").mkdir(parents=True, exist_ok=True)
    plans = plan_corpus(seed, voice_names, per_class)
    with ThreadPoolExecutor(max_workers=workers or os.cpu_count() or 1) as pool:
        rendered = pool.map(lambda plan: _render(espeak, plan, out_dir / "wav" / f"{plan.id}.wav"), plans)
        # A progress bar on stderr: the demo's corpus is 800 clips.
        list(tqdm(rendered, total=len(plans), desc="synthesise", unit="clip", mininterval=1.0))
    utterances = [
        Utterance(id=p.id, audio=out_dir / "wav" / f"{p.id}.wav", text=p.text, label=p.label, speaker=p.voice,
                  session=p.session)
        for p in plans
    ]
    manifest = out_dir / MANIFEST_NAME
    write_manifest(manifest, utterances)
    return manifest


def plan_corpus(seed: int, voices: Sequence[str], per_class: int) -> list[ClipPlan]:
    """Draw every clip's voice, sentence and prosody; pure and deterministic in (seed, voices, per_class)."""
    plans = []
    for index, voice in enumerate(voices):
        voice_rng = _rng(seed, "voice", voice)
        habit = _jitter(voice_rng, Prosody(0, 0, 0), VOICE_JITTER)
        session = f"Session{index // VOICES_PER_SESSION + 1}"
        for label in LABELS:
            rng = _rng(seed, "clips", voice, label)
            for k in range(per_class):
                shared = rng.random() < SHARED_SENTENCE_FRACTION
                pool = SHARED_SENTENCES if shared else EMOTION_SENTENCES[label]
                text = pool[rng.integers(len(pool))]
                base = EMOTION_PROSODY[label]
                centre = Prosody(base.pitch + habit.pitch, base.pitch_range + habit.pitch_range,
                                 base.rate + habit.rate, base.quality)
                plans.append(ClipPlan(
                    id=f"{_slug(voice)}_{label}_{k:03d}", voice=voice, session=session, label=label, text=text,
                    prosody=_jitter(rng, centre, UTTERANCE_JITTER),
                ))
    return plans


def _choose_voices(voices: int | Sequence[str]) -> list[str]:
    if isinstance(voices, int):
        if not 1 <= voices <= len(DEFAULT_VOICES):
            raise CorpusError(f"voices must be between 1 and {len(DEFAULT_VOICES)}, got {voices}")
        return list(DEFAULT_VOICES[:voices])
    names = [v.strip() for v in voices if v.strip()]
    if not names:
        raise CorpusError("no voices given")
    if len(set(names)) != len(names):
        raise CorpusError(f"voices repeat: {names}")
    return names


def _find_espeak() -> str:
    espeak = shutil.which("espeak-ng")
    if espeak is None:
        raise CorpusError("espeak-ng is not installed; install it (Debian/Ubuntu: apt-get install espeak-ng)")
    return espeak


def _check_voices(espeak: str, voices: Sequence[str]) -> None:
    """espeak-ng silently ignores an unknown "+variant", so check variants against its own list."""
    listing = subprocess.run([espeak, "--voices=variant"], capture_output=True, text=True, check=True).stdout
    variants = {line.split()[4].split("/")[-1] for line in listing.splitlines()[1:] if len(line.split()) >= 5}
    for voice in voices:
        language, _, variant = voice.partition("+")
        if variant and variant not in variants:
            raise CorpusError(f"unknown espeak-ng voice variant {variant!r} in {voice!r}; see espeak-ng --voices=variant")
        probe = subprocess.run([espeak, "-v", language, "-q", "x"], capture_output=True, text=True)
        if probe.returncode != 0:
            raise CorpusError(f"unknown espeak-ng voice {language!r} in {voice!r}; see espeak-ng --voices=en")


def _rng(seed: int, *keys: str) -> np.random.Generator:
    """A generator keyed by names, so a voice's draws do not change when other voices are added or reordered."""
    return np.random.default_rng([seed, *(zlib.crc32(k.encode()) for k in keys)])


def _jitter(rng: np.random.Generator, centre: Prosody, width: Prosody) -> Prosody:
    shift = rng.uniform(-1.0, 1.0, size=3)
    return Prosody(
        pitch=centre.pitch + width.pitch * shift[0],
        pitch_range=centre.pitch_range + width.pitch_range * shift[1],
        rate=centre.rate + width.rate * shift[2],
        quality=centre.quality,
    )


def _slug(voice: str) -> str:
    return voice.replace("+", "_").replace("-", "")


def _ssml(text: str, prosody: Prosody) -> str:
    escaped = text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    # espeak-ng reads a signed percentage as a relative change of the voice's own value.
    return (
        f'<speak><prosody pitch="{prosody.pitch:+.0f}%" range="{prosody.pitch_range:+.0f}%" '
        f'rate="{prosody.rate:+.0f}%">{escaped}</prosody></speak>'
    )


def _render(espeak: str, plan: ClipPlan, path: Path) -> None:
    import soundfile
    import soxr

    result = subprocess.run(
        [espeak, "-v", plan.voice, "-m", "--stdout", _ssml(plan.text, plan.prosody)], capture_output=True
    )
    if result.returncode != 0 or not result.stdout:
        raise CorpusError(f"espeak-ng failed on clip {plan.id}: {result.stderr.decode(errors='replace').strip()}")
    samples, rate = soundfile.read(io.BytesIO(result.stdout), dtype="float32")
    samples = _voice_quality(samples, rate, plan.prosody.quality)
    wave = soxr.resample(samples, rate, SAMPLE_RATE, quality="HQ")
    peak = float(np.abs(wave).max()) or 1.0
    soundfile.write(path, (0.9 / peak) * wave, SAMPLE_RATE, subtype="PCM_16")


def _voice_quality(samples: np.ndarray, rate: int, quality: str) -> np.ndarray:
    if quality == "harsh":
        # Soft clipping adds the high harmonics of a pressed, shouted voice.
        drive = 10.0
        return np.tanh(drive * samples / (np.abs(samples).max() + 1e-9)).astype(np.float32)
    if quality == "dull":
        # A gentle low-pass stands in for the steeper spectral tilt of sad, lax phonation.
        spectrum = np.fft.rfft(samples)
        freqs = np.fft.rfftfreq(len(samples), d=1.0 / rate)
        spectrum *= 1.0 / np.sqrt(1.0 + (freqs / 2500.0) ** 4)
        return np.fft.irfft(spectrum, n=len(samples)).astype(np.float32)
    return samples


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m training.synth", description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, type=Path, help="corpus folder to write")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--voices", default="10",
                        help=f"a number of voices (at most {len(DEFAULT_VOICES)}) or a comma-separated list")
    parser.add_argument("--per-class", type=int, default=20, help="clips per emotion per voice")
    parser.add_argument("--workers", type=int, default=None, help="parallel espeak-ng processes")
    args = parser.parse_args(argv)
    voices: int | list[str] = int(args.voices) if args.voices.isdigit() else args.voices.split(",")
    started = time.perf_counter()
    try:
        manifest = synthesize_corpus(args.out, args.seed, voices, args.per_class, args.workers)
    except CorpusError as error:
        parser.exit(2, f"error: {error}\n")
    count = sum(1 for _ in manifest.open(encoding="utf-8"))
    print(f"wrote {count} clips and {manifest} in {time.perf_counter() - started:.1f} s")


if __name__ == "__main__":
    main()
