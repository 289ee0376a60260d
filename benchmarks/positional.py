"""The positional convolution alone, in each form the export can trace it (export/positional.py), on onnxruntime.

    python -m benchmarks.positional [--seconds 5] [--batches 1,8] [--rounds 10] [--threads N]

wav2vec2-base's shape (768 channels, 16 groups, 128 taps, 50 frames a second), random weights. Forms: the Conv
(the CPU graphs'), grouped MatMuls over chunks of 16 taps (the fp16 graph's), and all 128 taps unfolded at once.
fp32 on the CPU provider; fp16 on CUDA where onnxruntime's CUDA provider starts (gpu_profile.py calls ``measure``).
Medians of interleaved rounds, and the largest transient the form adds (its frames laid side by side); nothing is
asserted.
"""

from __future__ import annotations

import argparse
import tempfile
import warnings
from pathlib import Path

import numpy as np

FORMS = {"Conv": None, "MatMul, 16-tap chunks": 16, "MatMul, all 128 taps": 128}
FRAMES_PER_SECOND = 50


def positional_module(hidden: int = 768, kernel: int = 128, groups: int = 16):
    """transformers' positional convolution at wav2vec2-base's shape, weight norm folded, random weights."""
    import torch
    from torch.nn.utils import parametrize
    from transformers import Wav2Vec2Config
    from transformers.models.wav2vec2.modeling_wav2vec2 import Wav2Vec2PositionalConvEmbedding

    torch.manual_seed(0)
    module = Wav2Vec2PositionalConvEmbedding(Wav2Vec2Config(
        hidden_size=hidden, num_conv_pos_embeddings=kernel, num_conv_pos_embedding_groups=groups)).eval()
    parametrize.remove_parametrizations(module.conv, "weight", leave_parametrized=True)
    return module


def export_forms(folder: Path, fp16: bool) -> dict[str, Path]:
    """Each form traced to ONNX (legacy exporter, dynamic batch and frames), fp16 when asked."""
    import torch

    from export.positional import ChunkedGroupedConv
    from export.precision import to_fp16

    module = positional_module()
    paths = {}
    for name, taps in FORMS.items():
        form = module if taps is None else ChunkedGroupedConv(module, taps)
        path = folder / f"positional-{taps or 'conv'}.onnx"
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")
            torch.onnx.export(form, (torch.randn(2, 7, 768),), str(path), input_names=["x"], output_names=["y"],
                              dynamic_axes={"x": {0: "b", 1: "t"}, "y": {0: "b", 1: "t"}}, opset_version=17,
                              dynamo=False)
        paths[name] = to_fp16(path, folder / f"{path.stem}.fp16.onnx") if fp16 else path
    return paths


def measure(device: str, seconds: float, batches: list[int], rounds: int, threads: int | None = None) -> list[str]:
    """Markdown lines: the forms' medians (ms) per batch, their max |delta| against the Conv, and their frames' size."""
    from mmer_rt.session import Graph, open_session

    from .micro import interleaved_rounds

    frames = int(seconds * FRAMES_PER_SECOND)
    lines = [f"wav2vec2-base's positional convolution alone, {seconds} s ({frames} frames), "
             f"{'fp16 on CUDA' if device == 'cuda' else 'fp32 on the CPU'}; median ms of {rounds} interleaved rounds:",
             "", "| form | " + " | ".join(f"b{b}" for b in batches) + " | max abs delta vs Conv | frames side by side, "
             f"{max(batches)} x {seconds} s |", "|---|" + "---|" * (len(batches) + 2)]
    with tempfile.TemporaryDirectory() as folder:
        paths = export_forms(Path(folder), fp16=device == "cuda")
        graphs = {name: Graph(open_session(path, device, threads), name, ["x"], ["y"],
                              bind_device="cuda" if device == "cuda" else None) for name, path in paths.items()}
        times, deltas = {}, {name: 0.0 for name in FORMS}
        for batch in batches:
            x = np.random.default_rng(batch).standard_normal((batch, frames, 768)).astype(np.float32)
            outputs = {name: graph.run({"x": x}, host_outputs=("y",))["y"] for name, graph in graphs.items()}  # warm-up
            for name, out in outputs.items():
                deltas[name] = max(deltas[name], float(np.abs(out - outputs["Conv"]).max()))
            calls = {name: (lambda g=graph: g.run({"x": x}, host_outputs=("y",))) for name, graph in graphs.items()}
            times[batch] = {name: 1000 * float(np.median(v)) for name, v in interleaved_rounds(calls, rounds).items()}
    element = 2 if device == "cuda" else 4
    for name, taps in FORMS.items():
        extra = 0 if taps is None else max(batches) * frames * 768 * taps * element
        lines.append(f"| {name} | " + " | ".join(f"{times[b][name]:.2f}" for b in batches)
                     + f" | {deltas[name]:.1e} | {extra / 2**20:.0f} MiB |")
    return lines


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--batches", default="1,8")
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    args = parser.parse_args(argv)
    print("\n".join(measure(args.device, args.seconds, [int(b) for b in args.batches.split(",")], args.rounds,
                            args.threads)))


if __name__ == "__main__":
    main()
