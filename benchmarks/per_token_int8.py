"""What batch-invariant int8 would cost on the CPU: one linear layer, int8 weights per output channel, as

  dqmm        onnxruntime's DynamicQuantizeMatMul, what the int8 export uses: one activation scale for the whole
              (B, T, K) input, so an utterance's answer depends on the batch it is in;
  per-token   a hand-built chain: one scale per row (ReduceMax |x|), uint8 with zero point 128, MatMulInteger,
              then row and column scales: each row is quantised alone, so the answer does not depend on the batch;
  fp32        MatMul and Add.

For each shape it prints the median time per call (interleaved rounds) and the error of a quiet
utterance's output against fp32, alone and batched with one 30 times louder:

    python -m benchmarks.per_token_int8 [--threads 2]
"""

from __future__ import annotations

import argparse
from functools import partial

import numpy as np

from .micro import interleaved_rounds, onnx_model

SHAPES = ((250, 768, 768), (250, 768, 3072), (250, 3072, 768))  # 5 s of wav2vec2-base: QKV-sized, FFN in, FFN out


def _session(nodes, initializers, k: int, n: int, threads: int):
    import onnxruntime as ort
    from onnx import TensorProto, helper

    from mmer_rt.session import session_options

    graph = helper.make_graph(nodes, "linear", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["b", "t", k])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["b", "t", n])], initializers)
    return ort.InferenceSession(onnx_model(graph, contrib=True).SerializeToString(), session_options(threads),
                                providers=["CPUExecutionProvider"])


def build_sessions(weight: np.ndarray, bias: np.ndarray, threads: int) -> dict:
    from onnx import TensorProto, helper, numpy_helper

    k, n = weight.shape
    column_scale = (np.abs(weight).max(axis=0) / 127).astype(np.float32)
    quantised = np.clip(np.round(weight / column_scale), -127, 127).astype(np.int8)

    def const(value, name):
        return numpy_helper.from_array(np.asarray(value), name)

    node = helper.make_node
    dqmm = [node("DynamicQuantizeMatMul", ["x", "wq", "ws", "wz", "bias"], ["y"], domain="com.microsoft")]
    per_token = [
        node("Abs", ["x"], ["abs"]), node("ReduceMax", ["abs"], ["peak"], axes=[-1], keepdims=1),
        node("Max", ["peak", "tiny"], ["peak_safe"]), node("Div", ["peak_safe", "c127"], ["row_scale"]),
        node("Div", ["x", "row_scale"], ["scaled"]), node("Round", ["scaled"], ["rounded"]),
        node("Add", ["rounded", "c128"], ["shifted"]), node("Cast", ["shifted"], ["xq"], to=TensorProto.UINT8),
        node("MatMulInteger", ["xq", "wq", "x_zero"], ["acc"]), node("Cast", ["acc"], ["acc_f"], to=TensorProto.FLOAT),
        node("Mul", ["acc_f", "row_scale"], ["rows"]), node("Mul", ["rows", "ws"], ["both"]),
        node("Add", ["both", "bias"], ["y"]),
    ]
    fp32 = [node("MatMul", ["x", "w"], ["product"]), node("Add", ["product", "bias"], ["y"])]
    shared = [const(quantised, "wq"), const(column_scale, "ws"), const(bias, "bias")]
    return {
        "fp32": _session(fp32, [const(weight, "w"), const(bias, "bias")], k, n, threads),
        "dqmm": _session(dqmm, [*shared, const(np.zeros(n, np.int8), "wz")], k, n, threads),
        "per-token": _session(per_token, [*shared, const(np.float32(1e-8), "tiny"), const(np.float32(127), "c127"),
                                          const(np.float32(128), "c128"), const(np.uint8(128), "x_zero")],
                              k, n, threads),
    }


def measure(t: int, k: int, n: int, threads: int, rounds: int = 100, seed: int = 0) -> dict:
    """Per route: the median ms of one (1, t, k) call over interleaved rounds, and the quiet row's max |error| alone
    and batched with a loud one (both against fp32 in float64)."""
    rng = np.random.default_rng(seed)
    weight = (rng.standard_normal((k, n)) / np.sqrt(k)).astype(np.float32)
    bias = (0.1 * rng.standard_normal(n)).astype(np.float32)
    quiet = rng.standard_normal((1, t, k)).astype(np.float32)
    loud = 30 * rng.standard_normal((1, t, k)).astype(np.float32)
    exact = quiet[0].astype(np.float64) @ weight.astype(np.float64) + bias
    sessions = build_sessions(weight, bias, threads)
    figures = {}
    for name, session in sessions.items():  # also the warm-up
        alone = session.run(None, {"x": quiet})[0][0]
        batched = session.run(None, {"x": np.concatenate([quiet, loud])})[0][0]
        figures[name] = {"error_alone": float(np.abs(alone - exact).max()),
                         "error_batched_with_loud": float(np.abs(batched - exact).max())}
    times = interleaved_rounds({name: partial(session.run, None, {"x": quiet}) for name, session in sessions.items()},
                               rounds)
    for name, seconds in times.items():
        figures[name]["ms"] = 1000 * float(np.median(seconds))
    return figures


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    print("| (T, K) x (K, N) | route | ms | max error alone | batched with a loud one |\n|---|---|---|---|---|")
    for t, k, n in SHAPES:
        for name, entry in measure(t, k, n, args.threads).items():
            print(f"| ({t}, {k}) x ({k}, {n}) | {name} | {entry['ms']:.3f} | {entry['error_alone']:.1e} | "
                  f"{entry['error_batched_with_loud']:.1e} |")


if __name__ == "__main__":
    main()
