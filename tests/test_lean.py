"""The runtime is lean: mmer_rt imports and runs inference without torch, transformers or onnx."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import tomllib
from pathlib import Path

from test_recognizer_fixtures import tiny_export, tiny_model_dir  # noqa: F401

REPO = Path(__file__).resolve().parent.parent
HEAVY = ("torch", "transformers", "onnx", "onnxscript", "safetensors", "training", "export")
CORE = {"numpy", "onnxruntime", "tokenizers", "soundfile", "soxr", "tqdm"}

# Runs in a fresh interpreter in which importing any HEAVY package fails, as it would where none is installed.
SCRIPT = textwrap.dedent(
    """
    import importlib.abc, sys

    HEAVY = {heavy!r}

    class Block(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in HEAVY:
                raise ImportError(f"{{name}} is blocked: mmer_rt must not need it")
            return None

    sys.meta_path.insert(0, Block())

    import numpy as np
    import mmer_rt
    from mmer_rt.cli import main

    recognizer = mmer_rt.Recognizer.from_dir({model_dir!r}, device="cpu")
    waveform = (0.1 * np.random.default_rng(0).standard_normal(6000)).astype(np.float32)
    given = recognizer.predict(waveform, "we lost the house", sample_rate=16000)
    heard = recognizer.predict(waveform, sample_rate=16000)
    batch = recognizer.predict_batch([(waveform, None), (waveform[:3000], "okay")], sample_rate=16000)
    assert given.transcript_source == "given" and heard.transcript_source == "ctc" and len(batch) == 2
    assert main(["info", {model_dir!r}]) == 0
    loaded = sorted(name for name in sys.modules if name.split(".")[0] in HEAVY)
    print("HEAVY MODULES:", loaded)
    assert not loaded, loaded
    """
)


def test_inference_runs_with_heavy_packages_blocked(tiny_model_dir):
    script = SCRIPT.format(heavy=HEAVY, model_dir=str(tiny_model_dir))
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "HEAVY MODULES: []" in done.stdout


def test_the_block_really_blocks():
    # Guards the test above: the same hook must make an import of torch fail.
    script = SCRIPT.split("import numpy as np")[0].format(heavy=HEAVY) + "import torch\n"
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=REPO, timeout=60)
    assert done.returncode != 0 and "torch is blocked" in done.stderr


def test_core_dependencies_are_only_the_lean_ones():
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    names = {dep.split(">")[0].split("=")[0].split("<")[0].split("[")[0].strip() for dep in project["dependencies"]}
    assert names == CORE
