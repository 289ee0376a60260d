"""Which parts of the audio graph cost int8 its accuracy: each layer's sensitivity, then fp32 kept where it pays.

    python -m benchmarks.int8_sensitivity MODEL_DIR --manifest MANIFEST --measure Session5 [--tune-on Session1 ...]
        [--limit 64] [--threads 2] [--rounds 3] [--json FILE]

The audio graph's quantisable nodes (export/precision.py ``INT8_OPS``) are grouped by where they sit: the feature
projection, each transformer layer's attention and its feed-forward block, the CTC head. First each group alone is
quantised and its max |delta probability| against fp32 measured on the tuning utterances (``--tune-on``: never the
measured session). Then, most sensitive first, groups are kept in fp32 one more at a time; for each step the table
gives the error on the tuning utterances and on the measured ones (the decision is made on the first, judged on the
second), and the time of the three graphs against fp32 (medians of interleaved rounds, same run).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

from mmer_rt.corpus import read_manifest
from mmer_rt.modeldir import GRAPH_NAMES, ModelManifest

from .int8_graphs import _batches, _measure, _spread

def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model_dir", type=Path)
    parser.add_argument("--manifest", type=Path, required=True)
    parser.add_argument("--measure", action="append", required=True, metavar="SESSION")
    parser.add_argument("--tune-on", action="append", default=[], metavar="SESSION",
                        help="sessions whose utterances decide (default: every session not measured)")
    parser.add_argument("--limit", type=int, default=64, help="tuning utterances, spread evenly")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)

    import onnx

    from export.parity import compare_batches, run_graphs
    from export.precision import int8_node_groups, to_int8

    manifest = ModelManifest.read(args.model_dir)
    fp32 = {name: args.model_dir / manifest.variants["fp32"].graphs[name].file for name in GRAPH_NAMES}
    utterances = read_manifest(args.manifest)
    measured = [u for u in utterances if u.session in set(args.measure)]
    tuning = _spread([u for u in utterances if u.session not in set(args.measure)
                      and (not args.tune_on or u.session in set(args.tune_on))], args.limit)
    measured_batches = _batches(measured, args.model_dir, manifest)
    tuning_batches = _batches(tuning, args.model_dir, manifest)
    groups = int8_node_groups(onnx.load(str(fp32["audio_encoder"]), load_external_data=False))
    print(f"{len(groups)} groups: {', '.join(groups)}", flush=True)

    with tempfile.TemporaryDirectory(prefix="int8-sensitivity-") as scratch:
        scratch = Path(scratch)
        import shutil

        import onnxruntime

        from mmer_rt.session import session_options

        for name, path in fp32.items():
            shutil.copyfile(path, scratch / f"{name}.fp32")
        def session(file: str):
            return onnxruntime.InferenceSession(str(scratch / file), session_options(args.threads),
                                                providers=["CPUExecutionProvider"])

        # The fp32 graphs and their outputs, once; each trial opens only its own audio graph.
        fp32_sessions = {g: session(f"{g}.fp32") for g in GRAPH_NAMES}
        tuning_set = (tuning_batches, [run_graphs(fp32_sessions, b) for b in tuning_batches])
        measured_set = (measured_batches, [run_graphs(fp32_sessions, b) for b in measured_batches])

        def error(file: str, batches_and_reference) -> dict:
            batches, reference = batches_and_reference
            graphs = {**fp32_sessions, "audio_encoder": session(file)}
            found = compare_batches(reference, [run_graphs(graphs, b) for b in batches])
            return {key: found[key] for key in ("max_abs_probability", "max_abs_logit", "max_abs_hidden_states",
                                                "top1_agreement")}

        every = [n for names in groups.values() for n in names]
        alone = {}
        for group, names in groups.items():
            file = f"audio_encoder.only-{len(alone)}"
            to_int8(fp32["audio_encoder"], scratch / file, keep_fp32=[n for n in every if n not in names])
            alone[group] = error(file, tuning_set)
            print(f"  {group} alone in int8: max |dp| {alone[group]['max_abs_probability']:.2e}, max |d logit| "
                  f"{alone[group]['max_abs_logit']:.2e} (tuning)", flush=True)
        # By the logits' error: probabilities saturate on utterances the model was trained on, where a change in
        # the logits barely moves them, so their error says little about unseen voices.
        order = sorted(groups, key=lambda g: -alone[g]["max_abs_logit"])
        steps, plans = [], {"fp32": {}}
        for kept in range(len(order) + 1):
            keep = order[:kept]
            file = f"audio_encoder.keep-{kept}"
            to_int8(fp32["audio_encoder"], scratch / file, keep_fp32=[n for g in keep for n in groups[g]])
            plans[f"keep {kept}"] = {"audio_encoder": file}
            steps.append({"kept_fp32": keep, "tuning": error(file, tuning_set),
                          "measured": error(file, measured_set)})
            print(f"  fp32 kept in {keep or 'nothing'}: tuning dp {steps[-1]['tuning']['max_abs_probability']:.2e} "
                  f"d logit {steps[-1]['tuning']['max_abs_logit']:.2e}; measured dp "
                  f"{steps[-1]['measured']['max_abs_probability']:.2e} d logit "
                  f"{steps[-1]['measured']['max_abs_logit']:.2e}", flush=True)
        times = _measure(plans, fp32, scratch, measured_batches, args.threads, args.rounds)
    for step, kept in zip(steps, range(len(steps))):
        step["time_vs_fp32"] = times[f"keep {kept}"]["time_vs_fp32"]
    report = {"model_dir": str(args.model_dir), "measured": args.measure, "measured_utterances": len(measured),
              "tuning_utterances": len(tuning), "threads": args.threads, "rounds": args.rounds,
              "groups": {g: len(n) for g, n in groups.items()}, "alone": alone, "steps": steps}
    print(table(report))
    if args.json:
        args.json.write_text(json.dumps(report, indent=2) + "\n")
    return report

def table(report: dict) -> str:
    lines = [f"{report['tuning_utterances']} tuning utterances; {report['measured_utterances']} measured "
             f"({', '.join(report['measured'])}); {report['threads']} threads, medians of {report['rounds']} rounds",
             "", "| kept in fp32 | tuning max abs d logit | tuning max abs dp | measured max abs d logit | "
             "measured max abs dp | measured top-1 | time vs fp32 |", "|---|---|---|---|---|---|---|"]
    for step in report["steps"]:
        lines.append(f"| {', '.join(step['kept_fp32']) or 'nothing'} | {step['tuning']['max_abs_logit']:.2e} | "
                     f"{step['tuning']['max_abs_probability']:.2e} | {step['measured']['max_abs_logit']:.2e} | "
                     f"{step['measured']['max_abs_probability']:.2e} | "
                     f"{step['measured']['top1_agreement']:.2%} | {step['time_vs_fp32']:.2f} |")
    return "\n".join(lines)

if __name__ == "__main__":
    sys.exit(0 if main() else 1)
