"""Which graphs the int8 variant should quantise, and how: each choice's error against fp32 and its time, on speech.

    python -m benchmarks.int8_graphs MODEL_DIR --manifest MANIFEST [--session Session5] [--calibrate-on Session1 ...]
        [--static] [--threads 2] [--rounds 3] [--json FILE]

From the model directory's fp32 graphs it builds, in a scratch folder, the dynamic int8 form of each graph
(export/precision.py ``to_int8``, as the export makes it) and, with ``--static``, static int8 forms of the audio
graph (onnxruntime ``quantize_static``, QDQ, activation ranges calibrated on utterances of the ``--calibrate-on``
sessions, never the measured ones): its MatMuls only, and its MatMuls and front-end convolutions. Then for each
combination it runs the three graphs (onnxruntime, CPU) on the measured utterances, batched by length in eights as
the Recognizer batches them, and reports top-1 agreement and max |delta probability| against the fp32 graphs, and
the time of all batches (medians of interleaved rounds, the fp32 graphs timed in the same rounds).
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import tempfile
from pathlib import Path

import numpy as np

from mmer_rt.corpus import read_manifest
from mmer_rt.modeldir import GRAPH_NAMES, ModelManifest

# Combinations measured: name -> the graph files each graph runs from (the scratch folder's names).
PLANS = {
    "fp32": {},
    "text int8 only": {"text_encoder": "text_encoder.int8"},
    "fusion int8 only": {"fusion": "fusion.int8"},
    "audio int8 only (dynamic)": {"audio_encoder": "audio_encoder.int8"},
    "audio + fusion int8": {"audio_encoder": "audio_encoder.int8", "fusion": "fusion.int8"},
    "all three int8 (the old variant)": {g: f"{g}.int8" for g in GRAPH_NAMES},
}
STATIC_PLANS = {
    "audio static int8, MatMul (QDQ)": {"audio_encoder": "audio_encoder.static"},
    "audio static int8, MatMul + front-end Conv (QDQ)": {"audio_encoder": "audio_encoder.static_conv"},
}
CALIBRATION_CLIPS = 32


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model_dir", type=Path)
    parser.add_argument("--manifest", type=Path, required=True, help="data manifest (JSONL) of the speech to use")
    parser.add_argument("--session", action="append", default=[], help="measure on this session only (repeatable)")
    parser.add_argument("--limit", type=int, default=None, help="at most this many utterances, spread evenly")
    parser.add_argument("--static", action="store_true", help="also measure static (calibrated QDQ) audio graphs")
    parser.add_argument("--calibrate-on", action="append", default=[], metavar="SESSION",
                        help="sessions whose utterances calibrate the static graphs (default: all not measured)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)

    model_dir = args.model_dir
    manifest = ModelManifest.read(model_dir)
    fp32 = {name: model_dir / manifest.variants["fp32"].graphs[name].file for name in GRAPH_NAMES}
    utterances = read_manifest(args.manifest)
    measured = [u for u in utterances if not args.session or u.session in set(args.session)]
    if args.limit:
        picks = sorted(set(np.linspace(0, len(measured) - 1, min(args.limit, len(measured))).round().astype(int)))
        measured = [measured[i] for i in picks]
    batches = _batches(measured, model_dir, manifest)
    plans = dict(PLANS)
    with tempfile.TemporaryDirectory(prefix="int8-graphs-") as scratch:
        scratch = Path(scratch)
        _build_dynamic(fp32, scratch)
        if args.static:
            calibration = [u for u in utterances if u not in measured and
                           (not args.calibrate_on or u.session in set(args.calibrate_on))]
            _build_static(fp32["audio_encoder"], scratch, _batches(_spread(calibration, CALIBRATION_CLIPS), model_dir,
                                                                     manifest))
            plans.update(STATIC_PLANS)
        report = _measure(plans, fp32, scratch, batches, args.threads, args.rounds)
    report = {"model_dir": str(model_dir), "utterances": len(measured), "sessions": args.session,
              "threads": args.threads, "rounds": args.rounds, "plans": report}
    print(_table(report))
    if args.json:
        args.json.write_text(json.dumps(report, indent=2) + "\n")
    return report


def _spread(items: list, count: int) -> list:
    if len(items) <= count:
        return items
    return [items[int(i)] for i in np.linspace(0, len(items) - 1, count).round()]


def _batches(utterances, model_dir: Path, manifest: ModelManifest):
    """Utterances as the export's speech probes: decoded, cut, tokenised, padded in eights of similar length."""
    from export.parity import speech_probes

    with tempfile.TemporaryDirectory() as folder:
        subset = Path(folder) / "subset.jsonl"
        subset.write_text("".join(json.dumps({"id": u.id, "audio": str(Path(u.audio).resolve()), "text": u.text, "label": u.label,
                                              "speaker": u.speaker, "session": u.session}) + "\n"
                                  for u in utterances))
        batches, _ = speech_probes(subset, model_dir / manifest.tokenizer, manifest.max_audio_samples,
                                   int(manifest.extra.get("min_audio_samples", 400)),
                                   int(manifest.extra.get("max_text_tokens", 512)), len(utterances))
    return batches


def _build_dynamic(fp32: dict[str, Path], scratch: Path) -> None:
    from export.precision import to_int8

    for name, path in fp32.items():
        shutil.copyfile(path, scratch / f"{name}.fp32")
        to_int8(path, scratch / f"{name}.int8")


def _build_static(audio: Path, scratch: Path, calibration) -> None:
    """Static QDQ int8 audio graphs, activation ranges from ``calibration`` (min and max; onnxruntime 1.32's
    histogram calibrators, percentile and entropy, fail on batches of different lengths)."""
    import onnx
    from onnxruntime.quantization import CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType
    from onnxruntime.quantization import quantize_static

    from export.optimize import quiet_loggers
    from export.precision import WAVEFORM_SCOPES, _nodes_in_scopes

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.feeds = iter([{"input_values": b.input_values, "sample_mask": b.sample_mask} for b in calibration])

        def get_next(self):
            return next(self.feeds, None)

    excluded = _nodes_in_scopes(onnx.load(str(audio), load_external_data=False), WAVEFORM_SCOPES)
    for suffix, ops in (("static", ["MatMul"]), ("static_conv", ["MatMul", "Conv"])):
        with quiet_loggers(""):
            quantize_static(
                str(audio), str(scratch / f"audio_encoder.{suffix}"), Reader(), quant_format=QuantFormat.QDQ,
                op_types_to_quantize=ops, per_channel=True, weight_type=QuantType.QInt8,
                activation_type=QuantType.QUInt8, nodes_to_exclude=excluded,
                calibrate_method=CalibrationMethod.MinMax,
                extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT},
            )


def _measure(plans: dict, fp32: dict, scratch: Path, batches, threads: int, rounds: int) -> dict:
    import onnxruntime

    from export.parity import compare_batches, run_graphs
    from mmer_rt.session import session_options

    opened: dict[str, object] = {}

    def session(file: str):
        if file not in opened:
            opened[file] = onnxruntime.InferenceSession(str(scratch / file), session_options(threads),
                                                        providers=["CPUExecutionProvider"])
        return opened[file]

    sessions = {plan: {g: session(files.get(g, f"{g}.fp32")) for g in GRAPH_NAMES} for plan, files in plans.items()}
    outputs = {plan: [run_graphs(s, batch) for batch in batches] for plan, s in sessions.items()}  # also warms up
    times: dict[str, list[float]] = {plan: [] for plan in plans}
    import time

    for _ in range(rounds):
        for plan, s in sessions.items():
            started = time.perf_counter()
            for batch in batches:
                run_graphs(s, batch)
            times[plan].append(time.perf_counter() - started)
    base = statistics.median(times["fp32"])
    report = {}
    for plan, files in plans.items():
        found = compare_batches(outputs["fp32"], outputs[plan])
        seconds = statistics.median(times[plan])
        report[plan] = {"graphs": {g: files.get(g, f"{g}.fp32").split(".")[1] for g in GRAPH_NAMES},
                        "top1_agreement": found["top1_agreement"], "max_abs_probability": found["max_abs_probability"],
                        "max_abs_hidden_states": found["max_abs_hidden_states"], "seconds": round(seconds, 3),
                        "time_vs_fp32": round(seconds / base, 3)}
    return report


def _table(report: dict) -> str:
    lines = [f"{report['utterances']} utterances of {', '.join(report['sessions']) or 'the manifest'}; "
             f"{report['threads']} threads; medians of {report['rounds']} interleaved rounds",
             "", "| plan | top-1 agreement with fp32 | max abs delta p | max abs delta hidden | s (all batches) | "
             "time vs fp32 |", "|---|---|---|---|---|---|"]
    for plan, row in report["plans"].items():
        lines.append(f"| {plan} | {row['top1_agreement']:.2%} | {row['max_abs_probability']:.2e} | "
                     f"{row['max_abs_hidden_states']:.3g} | {row['seconds']:.2f} | {row['time_vs_fp32']:.2f} |")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(0 if main() else 1)
