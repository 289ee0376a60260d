"""The routes under test: each turns a Workload into class probabilities, its own way, from the same artifacts.

    pytorch-eager / pytorch-sdpa     the reference model in PyTorch fp32 (eager or scaled_dot_product attention)
    pytorch-sdpa-bf16                the same under bf16 autocast on the CPU (oneDNN: AMX where the CPU has it)
    pytorch-int8-dynamic             the same with torch.ao.quantization.quantize_dynamic on every Linear (int8)
    pytorch-sdpa-fp16                the same under fp16 autocast, on CUDA
    pytorch-compile-fp16             the same, its forward through torch.compile (dynamic shapes), on CUDA
    mmer-rt-fp32 / -int8 / -fp16     mmer_rt.Recognizer end to end (fp16 on CUDA with IOBinding, batches padded to
                                     its length buckets: mmer_rt/shapes.py)
    mmer-rt-fp16-cudagraphs          the same with a CUDA graph captured per bucket (warmed up before timing)
    mmer-rt-openvino                 mmer_rt.Recognizer with engine="openvino": the fp32 graphs, bf16 on AMX
    optimum-fp32 / optimum-int8      the peer: optimum-onnx's exports of the same encoders, our fp32 fusion graph
    optimum-openvino                 optimum's fp32 graphs (and our fusion graph) run by OpenVINO as ours are

Every route is timed end to end from raw waveforms and transcripts, preprocessing included, since that is what a
caller pays for.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Callable

import numpy as np

from mmer_rt.audio import SAMPLE_RATE, pad_batch

from .artifacts import Artifacts, RouteUnavailable
from .flops import audio_frames
from .workload import Workload

CPU_ROUTES = ("pytorch-eager", "pytorch-sdpa", "pytorch-sdpa-bf16", "pytorch-int8-dynamic", "mmer-rt-fp32",
              "mmer-rt-int8", "mmer-rt-openvino", "optimum-fp32", "optimum-int8", "optimum-openvino")
GPU_ROUTES = ("pytorch-sdpa-fp16", "pytorch-compile-fp16", "mmer-rt-fp16", "mmer-rt-fp16-cudagraphs")
PYTORCH_PREFIX = "pytorch-"
MAX_BATCH = 128  # the largest batch any case runs (suite.py): the Recognizer route runs it as one batch
GPU_BATCH_ROWS = (1, 4, 8, 32, 128)  # row buckets on the GPU: the suite's GPU batches, and 4 for the quick suite


@dataclass
class Route:
    """A ready route: ``run`` maps a workload to probabilities (batch x classes) in the model's label order."""

    name: str
    device: str
    precision: str  # fp32, fp16 or bf16 (autocast, graphs, or OpenVINO's inference precision) or int8
    run: Callable[[Workload], np.ndarray]


def build_route(name: str, artifacts: Artifacts, threads: int) -> Route:
    """Load the named route from the artifacts; raises RouteUnavailable with the reason when it cannot run here."""
    builders = {
        "pytorch-eager": lambda: _torch_route(name, artifacts, threads, "eager", "cpu", None),
        "pytorch-sdpa": lambda: _torch_route(name, artifacts, threads, "sdpa", "cpu", None),
        "pytorch-sdpa-bf16": lambda: _torch_route(name, artifacts, threads, "sdpa", "cpu", "bfloat16"),
        "pytorch-int8-dynamic": lambda: _torch_route(name, artifacts, threads, "sdpa", "cpu", None, int8=True),
        "pytorch-sdpa-fp16": lambda: _torch_route(name, artifacts, threads, "sdpa", "cuda", "float16"),
        "pytorch-compile-fp16": lambda: _torch_route(name, artifacts, threads, "sdpa", "cuda", "float16",
                                                     compile_backend="inductor"),
        "mmer-rt-fp32": lambda: _recognizer_route(name, artifacts, threads, "fp32", "cpu"),
        "mmer-rt-int8": lambda: _recognizer_route(name, artifacts, threads, "int8", "cpu"),
        "mmer-rt-fp16": lambda: _recognizer_route(name, artifacts, threads, "fp16", "cuda"),
        "mmer-rt-fp16-cudagraphs": lambda: _recognizer_route(name, artifacts, threads, "fp16", "cuda",
                                                             cuda_graphs=True),
        "mmer-rt-openvino": lambda: _recognizer_route(name, artifacts, threads, "auto", "cpu", engine="openvino"),
        "optimum-fp32": lambda: _peer_route(name, artifacts, threads, "fp32"),
        "optimum-int8": lambda: _peer_route(name, artifacts, threads, "int8"),
        "optimum-openvino": lambda: _peer_route(name, artifacts, threads, "fp32", engine="openvino"),
    }
    if name not in builders:
        raise ValueError(f"unknown route {name!r}; known routes: {', '.join(builders)}")
    return builders[name]()


def _torch_route(name, artifacts, threads, attention, device, autocast, compile_backend=None,
                 int8: bool = False) -> Route:
    import torch

    from .machine import cpu_info
    from .reference import TorchReference

    if device == "cuda" and not torch.cuda.is_available():
        raise RouteUnavailable(f"{name}: no CUDA GPU here (torch.cuda.is_available() is False)")
    if autocast == "bfloat16" and not cpu_info()["bf16"]:
        raise RouteUnavailable(f"{name}: this CPU has neither AMX-BF16 nor AVX512-BF16; bf16 would be emulated")
    torch.set_num_threads(threads)
    reference = TorchReference(artifacts.load_torch_model(), attention, device,
                               getattr(torch, autocast) if autocast else None, compile_backend)
    if int8:
        # What a PyTorch user reaches for first: int8 weights, activations quantised per call, every Linear (the
        # convolutional front end stays fp32, as in our int8 graphs).
        reference.model = torch.ao.quantization.quantize_dynamic(reference.model, {torch.nn.Linear},
                                                                 dtype=torch.qint8)
    tokenizer = artifacts.tokenizer()
    precision = "int8" if int8 else {"float16": "fp16", "bfloat16": "bf16"}.get(autocast, "fp32")
    return Route(name, device, precision,
                 lambda workload: reference.probabilities(reference.prepare(workload, tokenizer)))


def _recognizer_route(name, artifacts, threads, precision, device, cuda_graphs=False, engine="onnxruntime") -> Route:
    from mmer_rt.batching import BatchBudget
    from mmer_rt.engines import openvino_available
    from mmer_rt.recognizer import Recognizer
    from mmer_rt.session import cuda_available

    if device == "cuda" and not (cuda_available() and _torch_sees_gpu()):
        raise RouteUnavailable(
            f"{name}: no CUDA GPU here, or onnxruntime without the CUDA provider (install mmer-rt[gpu])")
    if engine == "openvino" and not openvino_available():
        raise RouteUnavailable(f"{name}: openvino is not installed (pip install 'mmer-rt[openvino]')")
    variant = "fp32" if engine == "openvino" else precision  # OpenVINO reads the fp32 graphs
    model_dir = artifacts.model_dir(("fp32", variant))
    if variant not in json.loads((model_dir / "mmer.json").read_text())["variants"]:
        raise RouteUnavailable(f"{name}: the exported model directory {model_dir} holds no {variant} variant")
    # One graph run per call, as the PyTorch routes do: the Recognizer's default budget could split a large batch.
    recognizer = Recognizer.from_dir(model_dir, device=device, precision=precision, threads=threads,
                                     batch_budget=BatchBudget(max_items=MAX_BATCH, max_seconds=None),
                                     shapes=bench_shapes(model_dir) if device == "cuda" else None,
                                     cuda_graphs=cuda_graphs, engine=engine)
    # Every bucket ahead of the timed calls (each captured, with CUDA graphs), as a server would at start.
    recognizer.warmup()

    def run(workload: Workload) -> np.ndarray:
        items = list(zip(workload.waveforms, workload.transcripts))
        predictions = recognizer.predict_batch(items, sample_rate=SAMPLE_RATE)
        return np.array([[p.scores[label] for label in recognizer.labels] for p in predictions])

    return Route(name, device, recognizer.precision, run)


def bench_shapes(model_dir) -> "ShapeBuckets":
    """The buckets a server sized for the suite's GPU batches would use: rows of exactly those batch sizes, audio
    in ShapeBuckets.for_model's 1 s steps, tokens up to 64 (the workload's transcripts are 10-40 tokens), then the
    model's maximum."""
    from mmer_rt.modeldir import ModelManifest
    from mmer_rt.shapes import ShapeBuckets

    manifest = ModelManifest.read(model_dir)
    default = ShapeBuckets.for_model(MAX_BATCH, manifest.max_audio_samples, manifest.sample_rate,
                                     int(manifest.extra.get("max_text_tokens", 512)))
    return ShapeBuckets(rows=GPU_BATCH_ROWS, samples=default.samples,
                        tokens=tuple(sorted({t for t in default.tokens if t <= 64} | {default.tokens[-1]})))


def _peer_route(name, artifacts, threads, precision, engine="onnxruntime") -> Route:
    """optimum's audio and text encoders; our fp32 fusion graph stands in for the fusion a user would export.
    With ``engine="openvino"`` all three run under OpenVINO with the settings engine="openvino" gives ours."""
    from mmer_rt.session import open_session

    audio_path, text_path = artifacts.peer_graphs(precision)
    fusion_path = artifacts.model_dir() / "fp32" / "fusion.onnx"
    if engine == "openvino":
        from mmer_rt import engines

        if not engines.openvino_available():
            raise RouteUnavailable(f"{name}: openvino is not installed (pip install 'mmer-rt[openvino]')")
        precision = engines.openvino_precision("auto")
        audio, text, fusion = (_OpenVINOSession(engines.compile_for_cpu(path, precision, threads))
                               for path in (audio_path, text_path, fusion_path))
    else:
        audio, text, fusion = (open_session(path, "cpu", threads) for path in (audio_path, text_path, fusion_path))
    tokenizer = artifacts.tokenizer()
    audio_config = artifacts.audio_config()

    def run(workload: Workload) -> np.ndarray:
        values, _ = pad_batch(list(workload.waveforms))  # optimum's wav2vec2 export takes no mask
        encoded = tokenizer.encode_batch(list(workload.transcripts))
        hidden_states = audio.run(None, {"input_values": values})[0]
        frame_mask = _frame_mask(audio_config, workload.sample_lengths, hidden_states.shape[1])
        token_embeddings = text.run(None, {"input_ids": encoded.input_ids,
                                           "attention_mask": encoded.attention_mask})[0]
        logits = fusion.run(["logits"], {"hidden_states": hidden_states, "frame_mask": frame_mask,
                                         "token_embeddings": token_embeddings,
                                         "attention_mask": encoded.attention_mask})[0]
        return _softmax(logits)

    return Route(name, "cpu", precision, run)


class _OpenVINOSession:
    """onnxruntime's ``run(names, feeds)`` over an OpenVINO compiled model, for the peer's graphs (whose inputs are
    not our graph contract's)."""

    def __init__(self, compiled):
        self.request = compiled.create_infer_request()
        self.outputs = [port.any_name for port in compiled.outputs]

    def run(self, names, feeds):
        results = self.request.infer(feeds, share_outputs=False)
        return [results[name] for name in (names or self.outputs)]


def _frame_mask(audio_config: dict, sample_lengths: list[int], width: int) -> np.ndarray:
    frames = np.array([audio_frames(audio_config, n) for n in sample_lengths])
    return (np.arange(width)[None, :] < frames[:, None]).astype(np.int64)


def _softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits.astype(np.float64) - logits.max(axis=-1, keepdims=True)
    exp = np.exp(shifted)
    return exp / exp.sum(axis=-1, keepdims=True)


def _torch_sees_gpu() -> bool:
    try:
        import torch
    except ImportError:
        return False
    return torch.cuda.is_available()
