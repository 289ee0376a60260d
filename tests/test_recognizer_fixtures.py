"""Fixtures for the Recognizer, CLI and lean-runtime tests: a tiny random MMER, its checkpoint and model directory.

The model directory is built once per test session (the first module to ask builds it under pytest's base
temporary directory, later ones find it there), so that several test modules can share it cheaply.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import shutil
import tempfile
from pathlib import Path

import numpy as np
import pytest

TINY_MAX_AUDIO_SAMPLES = 8_000  # 0.5 s: small enough that the long-audio policies are cheap to test
TINY_TEXTS = ("oh wow you came back for me", "leave me alone please", "we lost the house", "okay fine whatever")


@functools.lru_cache(maxsize=None)
def cuda_starts() -> bool:
    """Whether onnxruntime's CUDA provider really starts a session here, as the runtime's own open_session judges
    it. onnxruntime-gpu offers the provider on a machine with no GPU or without the CUDA libraries, and its sessions
    then run on the CPU, so being offered is not enough for a test that needs CUDA."""
    import onnx
    from onnx import TensorProto, helper

    from benchmarks.micro import onnx_model
    from mmer_rt.errors import DeviceError
    from mmer_rt.session import cuda_available, open_session

    if not cuda_available():
        return False
    value = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])
    graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "identity", [value],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])])
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "identity.onnx"
        onnx.save(onnx_model(graph), path)
        try:
            open_session(path, "cuda")
        except DeviceError:
            return False
    return True


def build_tiny_model_dir(base: Path) -> tuple[Path, Path]:
    """(checkpoint directory, model directory with fp32 and int8 variants), built once under ``base``."""
    checkpoint, model_dir = base / "tiny_checkpoint", base / "tiny_export"
    if (model_dir / "mmer.json").is_file():
        return checkpoint, model_dir
    import torch

    from export.to_onnx import export_model_dir
    from training.checkpoint import save_checkpoint
    from training.model import MMER, tiny_config
    from training.tokenizer import build_tokenizer

    torch.manual_seed(0)
    config = dataclasses.replace(tiny_config(), max_audio_samples=TINY_MAX_AUDIO_SAMPLES)
    model = MMER.from_config(config).eval()
    tokenizer = build_tokenizer(TINY_TEXTS * 4, 320, base / "tokenizer" / "tokenizer.json")
    save_checkpoint(model, checkpoint, tokenizer)
    export_model_dir(checkpoint, model_dir, precisions=("fp32", "int8"), log=lambda line: None)
    return checkpoint, model_dir


@pytest.fixture(scope="session")
def tiny_export(tmp_path_factory) -> tuple[Path, Path]:
    """(checkpoint directory, model directory) of the shared tiny MMER."""
    return build_tiny_model_dir(tmp_path_factory.getbasetemp())


@pytest.fixture(scope="session")
def tiny_model_dir(tiny_export) -> Path:
    """The shared tiny model directory (fp32 and int8); tests that change it work on a copy."""
    return tiny_export[1]


@pytest.fixture
def model_copy(tiny_model_dir, tmp_path):
    """A copy of the tiny model directory that a test may change."""
    return shutil.copytree(tiny_model_dir, tmp_path / "model")


def edit_manifest(model_dir, change):
    """Apply ``change`` to the parsed manifest of ``model_dir`` and write it back."""
    from mmer_rt.modeldir import MANIFEST_NAME

    path = model_dir / MANIFEST_NAME
    manifest = json.loads(path.read_text())
    change(manifest)
    path.write_text(json.dumps(manifest))


def noise(samples: int, seed: int = 0, amplitude: float = 0.1) -> np.ndarray:
    return (amplitude * np.random.default_rng(seed).standard_normal(samples)).astype(np.float32)
