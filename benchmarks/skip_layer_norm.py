"""onnxruntime's fused SkipLayerNormalization against Add, Add, LayerNormalization, on the CPU provider.

    python -m benchmarks.skip_layer_norm [--frames 250] [--hidden 768] [--threads 2] [--rounds 20]

The measurement behind export/optimize.py's choice to fuse residual LayerNorms only in the GPU graphs: a chain
of 25 of each form (a wav2vec2-base encoder has 25) on one (1, frames, hidden) input, timed in interleaved rounds;
prints the median time per operator of each form and checks that both compute the same values.
"""

from __future__ import annotations

import argparse
from functools import partial

import numpy as np

from .micro import interleaved_rounds, onnx_model

CHAIN = 25
EPSILON = 1e-5


def chain_model(hidden: int, fused: bool):
    """25 residual LayerNorms in a row, as SkipLayerNormalization nodes or as Add, Add (bias), LayerNormalization."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    initializers = [numpy_helper.from_array(rng.standard_normal(hidden).astype(np.float32) * scale + shift, name)
                    for name, scale, shift in (("gamma", 0.1, 1.0), ("beta", 0.1, 0.0), ("bias", 0.1, 0.0))]
    nodes, current = [], "x"
    for index in range(CHAIN):
        output = "y" if index == CHAIN - 1 else f"t{index}"
        if fused:
            nodes.append(helper.make_node("SkipLayerNormalization", [current, "skip", "gamma", "beta", "bias"],
                                          [output], domain="com.microsoft", epsilon=EPSILON))
        else:
            nodes += [helper.make_node("Add", [current, "skip"], [f"a{index}"]),
                      helper.make_node("Add", [f"a{index}", "bias"], [f"b{index}"]),
                      helper.make_node("LayerNormalization", [f"b{index}", "gamma", "beta"], [output], axis=-1,
                                       epsilon=EPSILON)]
        current = output
    shape = ["batch", "frames", hidden]
    graph = helper.make_graph(
        nodes, "residual_layer_norms",
        [helper.make_tensor_value_info(name, TensorProto.FLOAT, shape) for name in ("x", "skip")],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, shape)], initializers)
    return onnx_model(graph, contrib=True)


def measure(frames: int, hidden: int, threads: int, rounds: int) -> dict[str, float]:
    """Median ms per operator for each form, and the max |difference| of their outputs."""
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = threads
    sessions = {form: onnxruntime.InferenceSession(chain_model(hidden, form == "fused").SerializeToString(), options,
                                                   providers=["CPUExecutionProvider"])
                for form in ("fused", "unfused")}
    rng = np.random.default_rng(1)
    feeds = {name: rng.standard_normal((1, frames, hidden)).astype(np.float32) for name in ("x", "skip")}
    outputs = {form: session.run(None, feeds)[0] for form, session in sessions.items()}  # also the warm-up
    times = interleaved_rounds({form: partial(session.run, None, feeds) for form, session in sessions.items()}, rounds)
    figures = {f"{form}_ms_per_op": 1000 * float(np.median(t)) / CHAIN for form, t in times.items()}
    figures["max_abs_difference"] = float(np.abs(outputs["fused"] - outputs["unfused"]).max())
    return figures


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--frames", type=int, default=250, help="sequence length (250: 5 s of wav2vec2 frames)")
    parser.add_argument("--hidden", type=int, default=768)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=20)
    args = parser.parse_args(argv)
    figures = measure(args.frames, args.hidden, args.threads, args.rounds)
    print(f"(1, {args.frames}, {args.hidden}), {args.threads} threads, {args.rounds} interleaved rounds of {CHAIN}:")
    print(f"  SkipLayerNormalization           {figures['fused_ms_per_op']:.3f} ms per operator")
    print(f"  Add, Add, LayerNormalization     {figures['unfused_ms_per_op']:.3f} ms per operator")
    print(f"  max |difference| of the outputs  {figures['max_abs_difference']:.1e}")


if __name__ == "__main__":
    main()
