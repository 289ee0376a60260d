"""What fixed shapes cost in padding (mmer_rt/shapes.py), on a realistic length mix, for several bucket steps.

    python -m benchmarks.buckets [--min 2 --max 10] [--items 2000] [--max-items 16,32] [--max-audio 13]

Utterances of uniformly drawn lengths, batched as the Recognizer batches them (mmer_rt.batching: longest first,
max_items per batch, no seconds budget), then padded to each bucket set: the table gives padded audio over the
audio itself (1.00 = no padding), for the batches alone and with buckets, and how many audio shapes the set has
(what CUDA graphs must capture). Arithmetic, not timing: the encoder's work grows a little faster than its input
(attention), so this slightly understates the compute padding costs.
"""

from __future__ import annotations

import argparse

import numpy as np

from mmer_rt.audio import SAMPLE_RATE
from mmer_rt.batching import BatchBudget, plan_batches
from mmer_rt.shapes import ShapeBuckets, padding_waste

STEPS = (0.25, 0.5, 1.0, 2.0)


def table(minimum: float, maximum: float, items: int, max_items_list: list[int], max_audio: float) -> list[str]:
    lengths = (np.random.default_rng(0).uniform(minimum, maximum, items) * SAMPLE_RATE).astype(int).tolist()
    lines = [f"{items} utterances of {minimum}-{maximum} s (uniform), buckets up to {max_audio} s; padded audio / "
             "audio:", "", "| max items | step | audio shapes (rows x samples) | batches alone | bucketed |",
             "|---|---|---|---|---|"]
    for max_items in max_items_list:
        batches = plan_batches(lengths, BatchBudget(max_items=max_items, max_seconds=None), SAMPLE_RATE)
        # A last partial batch pads its rows too: measured on the stream as a whole.
        for step in STEPS:
            buckets = ShapeBuckets.for_model(max_items, int(max_audio * SAMPLE_RATE), SAMPLE_RATE, 128, step)
            waste = padding_waste(lengths, batches, buckets)
            lines.append(f"| {max_items} | {step} s | {len(buckets.rows)} x {len(buckets.samples)} | "
                         f"{waste['batch']:.3f} | {waste['bucketed']:.3f} |")
        # The single-clip case: every utterance alone, padded only in samples.
        alone = [[i] for i in range(len(lengths))]
        for step in STEPS:
            buckets = ShapeBuckets.for_model(max_items, int(max_audio * SAMPLE_RATE), SAMPLE_RATE, 128, step)
            waste = padding_waste(lengths, alone, buckets)
            lines.append(f"| 1 (alone) | {step} s | - | {waste['batch']:.3f} | {waste['bucketed']:.3f} |")
    return lines


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--min", type=float, default=2.0)
    parser.add_argument("--max", type=float, default=10.0)
    parser.add_argument("--items", type=int, default=2000)
    parser.add_argument("--max-items", default="16,32")
    parser.add_argument("--max-audio", type=float, default=13.0)
    args = parser.parse_args(argv)
    print("\n".join(table(args.min, args.max, args.items, [int(v) for v in args.max_items.split(",")],
                          args.max_audio)))


if __name__ == "__main__":
    main()
