"""The routes under test: each turns a Workload into class probabilities, its own way, from the same artifacts.

    pytorch-eager / pytorch-sdpa     the reference model in PyTorch fp32 (eager or scaled_dot_product attention)
    pytorch-sdpa-fp16                the same under fp16 autocast, on CUDA
    pytorch-compile-fp16             the same, its forward through torch.compile (dynamic shapes), on CUDA
    mmer-rt-fp32 / -int8 / -fp16     mmer_rt.Recognizer end to end (fp16 on CUDA with IOBinding, batches padded to
                                     its length buckets: mmer_rt/shapes.py)
    mmer-rt-fp16-cudagraphs          the same with a CUDA graph captured per bucket (warmed up before timing)
    optimum-fp32 / optimum-int8      the peer: optimum-onnx's exports of the same encoders, our fp32 fusion graph

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

CPU_ROUTES = ("pytorch-eager", "pytorch-sdpa", "mmer-rt-fp32", "mmer-rt-int8", "optimum-fp32", "optimum-int8")
GPU_ROUTES = ("pytorch-sdpa-fp16", "pytorch-compile-fp16", "mmer-rt-fp16", "mmer-rt-fp16-cudagraphs")
PYTORCH_PREFIX = "pytorch-"
MAX_BATCH = 128  # the largest batch any case runs (suite.py): the Recognizer route runs it as one batch
GPU_BATCH_ROWS = (1, 4, 8, 32, 128)  # row buckets on the GPU: the suite's GPU batches, and 4 for the quick suite


@dataclass
class Route:
    """A ready route: ``run`` maps a workload to probabilities (batch x classes) in the model's label order."""

    name: str
    device: str
    precision: str  # fp32, fp16 (autocast or graphs) or int8
    run: Callable[[Workload], np.ndarray]


def build_route(name: str, artifacts: Artifacts, threads: int) -> Route:
    """Load the named route from the artifacts; raises RouteUnavailable with the reason when it cannot run here."""
    builders = {
        "pytorch-eager": lambda: _torch_route(name, artifacts, threads, "eager", "cpu", None),
        "pytorch-sdpa": lambda: _torch_route(name, artifacts, threads, "sdpa", "cpu", None),
        "pytorch-sdpa-fp16": lambda: _torch_route(name, artifacts, threads, "sdpa", "cuda", "float16"),
        "pytorch-compile-fp16": lambda: _torch_route(name, artifacts, threads, "sdpa", "cuda", "float16",
                                                     compile_backend="inductor"),
        "mmer-rt-fp32": lambda: _recognizer_route(name, artifacts, threads, "fp32", "cpu"),
        "mmer-rt-int8": lambda: _recognizer_route(name, artifacts, threads, "int8", "cpu"),
        "mmer-rt-fp16": lambda: _recognizer_route(name, artifacts, threads, "fp16", "cuda"),
        "mmer-rt-fp16-cudagraphs": lambda: _recognizer_route(name, artifacts, threads, "fp16", "cuda",
                                                             cuda_graphs=True),
        "optimum-fp32": lambda: _peer_route(name, artifacts, threads, "fp32"),
        "optimum-int8": lambda: _peer_route(name, artifacts, threads, "int8"),
    }
    if name not in builders:
        raise ValueError(f"unknown route {name!r}; known routes: {', '.join(builders)}")
    return builders[name]()


def _torch_route(name, artifacts, threads, attention, device, autocast, compile_backend=None) -> Route:
    import torch

    from .reference import TorchReference

    if device == "cuda" and not torch.cuda.is_available():
        raise RouteUnavailable(f"{name}: no CUDA GPU here (torch.cuda.is_available() is False)")
    torch.set_num_threads(threads)
    reference = TorchReference(artifacts.load_torch_model(), attention, device,
                               getattr(torch, autocast) if autocast else None, compile_backend)
    tokenizer = artifacts.tokenizer()
    return Route(name, device, "fp16" if autocast else "fp32",
                 lambda workload: reference.probabilities(reference.prepare(workload, tokenizer)))


def _recognizer_route(name, artifacts, threads, precision, device, cuda_graphs=False) -> Route:
    from mmer_rt.batching import BatchBudget
    from mmer_rt.recognizer import Recognizer
    from mmer_rt.session import cuda_available

    if device == "cuda" and not (cuda_available() and _torch_sees_gpu()):
        raise RouteUnavailable(
            f"{name}: no CUDA GPU here, or onnxruntime without the CUDA provider (install mmer-rt[gpu])")
    model_dir = artifacts.model_dir(("fp32", precision))
    if precision not in json.loads((model_dir / "mmer.json").read_text())["variants"]:
        raise RouteUnavailable(f"{name}: the exported model directory {model_dir} holds no {precision} variant")
    # One graph run per call, as the PyTorch routes do: the Recognizer's default budget could split a large batch.
    recognizer = Recognizer.from_dir(model_dir, device=device, precision=precision, threads=threads,
                                     batch_budget=BatchBudget(max_items=MAX_BATCH, max_seconds=None),
                                     shapes=bench_shapes(model_dir) if device == "cuda" else None,
                                     cuda_graphs=cuda_graphs)
    # Every bucket ahead of the timed calls (each captured, with CUDA graphs), as a server would at start.
    recognizer.warmup()

    def run(workload: Workload) -> np.ndarray:
        items = list(zip(workload.waveforms, workload.transcripts))
        predictions = recognizer.predict_batch(items, sample_rate=SAMPLE_RATE)
        return np.array([[p.scores[label] for label in recognizer.labels] for p in predictions])

    return Route(name, device, precision, run)


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


def _peer_route(name, artifacts, threads, precision) -> Route:
    """optimum's audio and text encoders; our fp32 fusion graph stands in for the fusion a user would export."""
    from mmer_rt.session import open_session

    audio_path, text_path = artifacts.peer_graphs(precision)
    audio = open_session(audio_path, "cpu", threads)
    text = open_session(text_path, "cpu", threads)
    fusion = open_session(artifacts.model_dir() / "fp32" / "fusion.onnx", "cpu", threads)
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
