"""OpenVINO with parts of the audio graph in another precision: where bf16's error comes from, and what it costs.

    python -m benchmarks.openvino_split MODEL_DIR --manifest MANIFEST --session Session5 [--threads 2]
    python -m benchmarks.openvino_split --speed [--size base] [--rounds 5] [--threads 2]

OpenVINO's CPU plugin takes one inference precision per compiled model (it ignores the per-node marks that would
keep a node in f32), so the fp32 audio graph is cut at named tensors with ``onnx.utils.Extractor`` and each piece is
compiled on its own, in f32, bf16 or f16; the pieces run in turn inside a Recognizer whose text graph runs in bf16
and whose fusion graph in the precision each plan names. Every plan's answers are compared with onnxruntime's fp32
on the manifest's utterances of ``--session`` (max |delta p|, top-1 agreement); ``--speed`` instead times the f32
front-end plans beside the CPU suite's PyTorch routes, onnxruntime int8 and OpenVINO bf16 as the engine ships it, on
the suite's 5 s x 1 and 5 s x 8 workloads of the benchmark model ``--size`` (medians of interleaved rounds, the
first dropped).

The cuts are the wav2vec2 graph's own tensor names (export/graphs.py): the first front-end layer's output, the
front end's output, and the feature projection's output after the frame mask.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

from .machine import cpu_info

FIRST_LAYER = "/front_end/first/activation/Mul_1_output_0"
FRONT_END = "/front_end/Transpose_output_0"
PROJECTION = "/Mul_output_0"
AUDIO_OUTPUTS = ["hidden_states", "frame_mask", "ctc_logits"]

# name: (cuts, the precision of each piece, the fusion graph's precision)
PLANS = {
    "bf16 (the engine today)": ([], ["bf16"], "bf16"),
    "bf16, fusion f32": ([], ["bf16"], "fp32"),
    "first layer f32, rest bf16": ([FIRST_LAYER], ["fp32", "bf16"], "fp32"),
    "front end f32, rest bf16": ([FRONT_END], ["fp32", "bf16"], "fp32"),
    "front end + projection f32, rest bf16": ([PROJECTION], ["fp32", "bf16"], "fp32"),
    "front end + projection f32, rest bf16, fusion bf16": ([PROJECTION], ["fp32", "bf16"], "bf16"),
    "first layer f32, front end bf16, projection f32, rest bf16": (
        [FIRST_LAYER, FRONT_END, PROJECTION], ["fp32", "bf16", "fp32", "bf16"], "fp32"),
    "first layer f32, front end f16, projection f32, rest bf16": (
        [FIRST_LAYER, FRONT_END, PROJECTION], ["fp32", "f16", "fp32", "bf16"], "fp32"),
}
SPEED_PLANS = ("front end + projection f32, rest bf16", "first layer f32, front end f16, projection f32, rest bf16")
SPEED_ROUTES = ("pytorch-sdpa", "pytorch-sdpa-bf16", "pytorch-int8-dynamic", "mmer-rt-int8", "mmer-rt-openvino")


def layer_plans(audio_onnx: Path) -> dict:
    """One plan per front-end layer after the first: that layer (with the first, for the first of them) and the
    projection in f32, the other front-end layers and the rest in bf16."""
    import onnx

    names = {out for node in onnx.load(str(audio_onnx), load_external_data=False).graph.node for out in node.output}
    rest = [f"/front_end/rest.{i}/activation/Mul_1_output_0" for i in range(64)]
    rest = [name for name in rest if name in names]
    plans = {}
    for k in range(len(rest)):
        # piece 0: the first layer and rest.0; piece i: rest.i; then the projection; then the rest
        precisions = ["fp32" if k == 0 else "bf16"] + ["fp32" if i == k else "bf16" for i in range(1, len(rest))]
        plans[f"front-end layer rest.{k} f32{' (and the first)' if k == 0 else ''}, projection f32, rest bf16"] = (
            rest + [PROJECTION], precisions + ["fp32", "bf16"], "fp32")
    return plans


def compile_piece(path: Path, precision: str, threads: int):
    """One piece compiled by the CPU plugin as mmer_rt.engines compiles whole graphs, in ``precision``."""
    from mmer_rt.engines import _core, compile_for_cpu

    if precision != "f16":
        return compile_for_cpu(path, precision, threads)
    config = {"INFERENCE_PRECISION_HINT": "f16", "INFERENCE_NUM_THREADS": threads, "PERFORMANCE_HINT": "LATENCY",
              "NUM_STREAMS": 1}
    return _core().compile_model(_core().read_model(str(path)), "CPU", config)


class SplitAudioGraph:
    """The audio graph as pieces compiled apart, with mmer_rt.session.Graph's ``run``.

    A later piece takes its cut tensor and the graph's own inputs (shapes and frame masks are computed from them).
    """

    name, captured, providers = "audio_encoder", None, ["OpenVINO CPU, split"]

    def __init__(self, audio_onnx: Path, cuts: list[str], precisions: list[str], threads: int, folder: Path):
        import onnx
        from onnx.utils import Extractor

        model = onnx.load(str(audio_onnx))
        # Extractor looks tensors up among the value infos; the fused graph has none for these (rank 3, float).
        model.graph.value_info.extend(onnx.helper.make_tensor_value_info(cut, onnx.TensorProto.FLOAT, ["a", "b", "c"])
                                      for cut in cuts)
        extractor = Extractor(model)
        inputs = [["waveforms", "sample_lengths"]] + [[cut, "waveforms", "sample_lengths"] for cut in cuts]
        outputs = [[cut] for cut in cuts] + [AUDIO_OUTPUTS]
        self.pieces = []
        for index, (piece_inputs, piece_outputs, precision) in enumerate(zip(inputs, outputs, precisions)):
            path = folder / f"piece{index}.onnx"
            onnx.save(extractor.extract_model(piece_inputs, piece_outputs), str(path))
            compiled = compile_piece(path, precision, threads)
            self.pieces.append((compiled.create_infer_request(), [port.any_name for port in compiled.inputs],
                                piece_outputs))

    def run(self, feeds, host_outputs=(), device_outputs=()):
        values = dict(feeds)
        for request, names, piece_outputs in self.pieces:
            results = request.infer({name: np.ascontiguousarray(values[name]) for name in names}, share_outputs=False)
            values.update({name: results[name] for name in piece_outputs})
        return {name: values[name] for name in (*host_outputs, *device_outputs)}


def plan_recognizer(model_dir: Path, plan: str, threads: int, folder: Path):
    from mmer_rt import Recognizer
    from mmer_rt.engines import open_openvino_graph

    cuts, precisions, fusion = PLANS[plan]
    recognizer = Recognizer.from_dir(model_dir, device="cpu", engine="openvino", precision="bf16", threads=threads)
    fp32 = model_dir / recognizer.manifest.variants["fp32"].graphs["audio_encoder"].file
    if cuts:
        piece_folder = folder / str(abs(hash(plan)))
        piece_folder.mkdir()
        recognizer._graphs["audio_encoder"] = SplitAudioGraph(fp32, cuts, precisions, threads, piece_folder)
    if fusion != "bf16":
        recognizer._graphs["fusion"] = open_openvino_graph(fp32.parent / "fusion.onnx", "fusion", fusion, threads,
                                                           recognizer.manifest.format_version)
    return recognizer


def accuracy(args, folder: Path) -> None:
    from mmer_rt import Recognizer
    from mmer_rt.corpus import read_manifest

    utterances = [u for u in read_manifest(args.manifest) if u.session == args.session]
    items = [(str(u.audio), u.text) for u in utterances]
    reference = Recognizer.from_dir(args.model_dir, device="cpu", precision="fp32", threads=args.threads)
    labels = reference.labels

    def probabilities(recognizer):
        return np.array([[p.scores[label] for label in labels] for p in recognizer.predict_batch(items)])

    expected = probabilities(reference)
    print(f"{len(items)} utterances of {args.session}; against onnxruntime fp32\n")
    print("| plan | max abs delta p | top-1 agreement |\n|---|---|---|")
    PLANS.update(layer_plans(args.model_dir / reference.manifest.variants["fp32"].graphs["audio_encoder"].file))
    for plan in PLANS:
        got = probabilities(plan_recognizer(args.model_dir, plan, args.threads, folder))
        agree = np.mean(got.argmax(1) == expected.argmax(1))
        print(f"| {plan} | {np.abs(got - expected).max():.2e} | {100 * agree:.2f}% |", flush=True)


def speed(args, folder: Path) -> None:
    """Each route on the suite's 5 s workloads (benchmarks/workload.py), the suite's routes beside the plans."""
    from .artifacts import Artifacts, RouteUnavailable
    from .routes import build_route
    from .workload import make_workload

    artifacts = Artifacts(args.size)
    routes = {}
    for name in SPEED_ROUTES:
        try:
            routes[name] = build_route(name, artifacts, args.threads).run
        except RouteUnavailable as why:
            print(f"# skipped: {why}")
    model_dir = artifacts.model_dir(("fp32", "int8"))
    for plan in SPEED_PLANS:
        recognizer = plan_recognizer(model_dir, plan, args.threads, folder)
        routes[plan] = lambda workload, recognizer=recognizer: recognizer.predict_batch(
            list(zip(workload.waveforms, workload.transcripts)), 16_000)
    tokenizer = artifacts.tokenizer()
    times: dict[str, list[float]] = {name: [] for name in routes}
    for batch in (1, 8):
        workload = make_workload(5.0, batch, tokenizer, artifacts.seed)
        rounds: dict[str, list[float]] = {name: [] for name in routes}
        for _ in range(args.rounds):
            for name, run in routes.items():
                started = time.perf_counter()
                run(workload)
                rounds[name].append(time.perf_counter() - started)
        for name in routes:
            times[name].append(1000 * statistics.median(rounds[name][1:]))
    fastest = [min(times[name][i] for name in routes if name.startswith("pytorch-")) for i in range(2)]
    print(f"{args.size} size; medians of {args.rounds - 1} interleaved rounds; x: the fastest PyTorch route's time "
          "over the route's\n")
    print("| route | 5 s x 1, ms | x | 5 s x 8, ms | x |\n|---|---|---|---|---|")
    for name, (one, eight) in times.items():
        print(f"| {name} | {one:.0f} | {fastest[0] / one:.2f} | {eight:.0f} | {fastest[1] / eight:.2f} |")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.openvino_split", description=__doc__.splitlines()[0])
    parser.add_argument("model_dir", type=Path, nargs="?", help="a model directory (accuracy)")
    parser.add_argument("--manifest", type=Path)
    parser.add_argument("--session", default="Session5")
    parser.add_argument("--speed", action="store_true")
    parser.add_argument("--size", default="base", help="with --speed: the benchmark model (benchmarks/artifacts.py)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args(argv)
    if not args.speed and (args.manifest is None or args.model_dir is None):
        parser.error("give MODEL_DIR and --manifest (accuracy), or --speed")
    print(f"# {cpu_info()['model']}, {args.threads} threads")
    with tempfile.TemporaryDirectory() as folder:
        (speed if args.speed else accuracy)(args, Path(folder))



if __name__ == "__main__":
    main()
