"""The host's share of preparing an audio batch, per model-directory format version (mmer_rt.audio.audio_feeds).

    python -m benchmarks.host_feeds [--seconds 5] [--batch 32] [--rounds 30]

Version 1 normalises each waveform and builds a (B, N) int64 sample mask on the host; version 2 copies the samples
into a zero-padded array and takes their lengths (its audio graph normalises). Rows of 85-100 % of the clip
length; medians of interleaved rounds, one process; nothing is asserted.
"""

from __future__ import annotations

import argparse

import numpy as np

from mmer_rt.audio import SAMPLE_RATE, audio_feeds
from mmer_rt.modeldir import AUDIO_INPUTS, AUDIO_INPUTS_V1

from .micro import interleaved_rounds


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=30)
    args = parser.parse_args(argv)
    rng = np.random.default_rng(0)
    waves = [(0.1 * rng.standard_normal(int(args.seconds * SAMPLE_RATE * rng.uniform(0.85, 1.0)))).astype(np.float32)
             for _ in range(args.batch)]
    times = interleaved_rounds({"version 1 (normalise, mask)": lambda: audio_feeds(waves, AUDIO_INPUTS_V1),
                                "version 2 (copy, lengths)": lambda: audio_feeds(waves, AUDIO_INPUTS)}, args.rounds)
    for name, values in times.items():
        print(f"{name}: {1000 * float(np.median(values)):.2f} ms for {args.batch} x {args.seconds:g} s")


if __name__ == "__main__":
    main()
