"""Recognise a manifest's utterances with mmer_rt.Recognizer and report UA per precision, and int8's agreement.

    python scripts/recognize_heldout.py MODEL_DIR MANIFEST [--session Session5] [--precision fp32,int8]

Only the runtime is used (mmer_rt: onnxruntime, no torch); the metrics are plain numpy.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from mmer_rt import Recognizer  # noqa: E402
from mmer_rt.corpus import read_manifest  # noqa: E402
from training.metrics import score  # noqa: E402  (numpy only: training/__init__ imports nothing)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("model_dir", type=Path)
    parser.add_argument("manifest", type=Path)
    parser.add_argument("--session", action="append", default=[], help="keep only this session (repeatable)")
    parser.add_argument("--precision", default="fp32,int8",
                        help="comma-separated: fp32, int8, and openvino (engine='openvino': the fp32 graphs in bf16 "
                             "where the CPU has it)")
    parser.add_argument("--json", type=Path, help="write the figures to this file")
    args = parser.parse_args(argv)

    utterances = read_manifest(args.manifest)
    if args.session:
        utterances = [u for u in utterances if u.session in set(args.session)]
    report: dict = {"utterances": len(utterances), "sessions": args.session}
    predicted: dict[str, list[str]] = {}
    probabilities: dict[str, list[list[float]]] = {}
    for precision in args.precision.split(","):
        recognizer = Recognizer.from_dir(args.model_dir, device="cpu", precision=precision) \
            if precision != "openvino" else Recognizer.from_dir(args.model_dir, device="cpu", engine="openvino")
        labels = recognizer.labels
        started = time.perf_counter()
        predictions = recognizer.predict_batch([(str(u.audio), u.text) for u in utterances])
        seconds = time.perf_counter() - started
        predicted[precision] = [p.label for p in predictions]
        probabilities[precision] = [[p.scores[label] for label in labels] for p in predictions]
        scores = score([labels.index(u.label) for u in utterances],
                       [labels.index(p.label) for p in predictions], labels)
        audio_s = sum(p.duration for p in predictions)
        report[precision] = {"wa": scores.wa, "ua": scores.ua, "confusion": scores.confusion.tolist(),
                             "seconds": round(seconds, 2), "rtfx": round(audio_s / seconds, 1)}
        print(f"\n{precision}: {len(utterances)} held-out utterances, WA {scores.wa:.3f}  UA {scores.ua:.3f}  "
              f"({seconds:.1f} s, {audio_s / seconds:.0f}x real time)")
        print(scores.table())
    for other in ("int8", "openvino"):
        if "fp32" in predicted and other in predicted:
            same = sum(a == b for a, b in zip(predicted["fp32"], predicted[other]))
            moved = max(abs(a - b) for row, other_row in zip(probabilities["fp32"], probabilities[other])
                        for a, b in zip(row, other_row))
            report[f"{other}_top1_agreement"] = same / len(utterances)
            report[f"{other}_max_abs_probability"] = moved
            print(f"\n{other} agrees with fp32 on {same} of {len(utterances)} utterances "
                  f"({100 * same / len(utterances):.1f}% top-1 agreement); max |delta probability| {moved:.2e}")

    recognizer = Recognizer.from_dir(args.model_dir, device="cpu", precision="fp32")
    print("\nsome predictions, one per emotion, then two with no transcript (the CTC head's greedy one is used):")
    first_of_each = [next(u for u in utterances if u.label == label) for label in recognizer.labels
                     if any(u.label == label for u in utterances)]
    shown = [(u, u.text) for u in first_of_each] + [(u, None) for u in first_of_each[:2]]
    for u, text in shown:
        p = recognizer.predict(str(u.audio), text=text)
        ranked = ", ".join(f"{label} {value:.2f}" for label, value in list(p.scores.items())[:2])
        print(f"  {u.audio.name}: true {u.label:<8} -> {p.label:<8} ({ranked}; {p.duration:.1f} s; "
              f"{p.transcript_source} transcript {p.transcript!r})")
    if args.json:
        args.json.write_text(json.dumps(report, indent=2) + "\n")
    return report


if __name__ == "__main__":
    main()
