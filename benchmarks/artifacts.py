"""The benchmark's built artifacts, cached under .bench-cache/ by size, config and seed: built once, reused.

    .bench-cache/<size>-<key>/
      tokenizer.json       the benchmark tokenizer (workload.benchmark_tokenizer)
      checkpoint/          random weights of the size's config, drawn from the seed (training.checkpoint format)
      model/               that checkpoint exported by ``python -m export.to_onnx`` (the Recognizer's directory)
      peer/{audio,text}/   the same encoders' weights, save_pretrained, for optimum-onnx to export
      peer/optimum/        optimum-onnx's graphs, written by scripts/optimum_env.sh in its own environment

The key hashes the config and the seed, so a changed config never reuses a stale export.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from functools import lru_cache
from pathlib import Path

from mmer_rt.text import TextTokenizer

from .workload import benchmark_tokenizer

REPO_ROOT = Path(__file__).resolve().parent.parent
CACHE_ROOT = Path(os.environ.get("MMER_BENCH_CACHE", REPO_ROOT / ".bench-cache"))
TOKENIZER_VOCAB = 600
SIZES = ("base", "small", "quick")
OPTIMUM_HINT = "bash scripts/optimum_env.sh"
EXPORT_STAMP = ".bench-exporter"  # in the model directory: exporter_digest() of the code that wrote it


def size_config(size: str):
    """The MMERConfig of a benchmark size: "base" is the published shape, "small" the demo's, "quick" the tests'."""
    from training.model import base_config, small_config, tiny_config

    if size == "base":
        return base_config()
    if size == "small":
        return small_config(vocab_size=TOKENIZER_VOCAB)
    if size == "quick":
        return tiny_config(vocab_size=TOKENIZER_VOCAB)
    raise ValueError(f"unknown benchmark size {size!r}; use one of {', '.join(SIZES)}")


class RouteUnavailable(Exception):
    """This machine or cache cannot run a route; the message says why and how to make it available."""


class Artifacts:
    """The cached files of one benchmark size and seed; each getter builds what is missing."""

    def __init__(self, size: str, seed: int = 0, root: Path = CACHE_ROOT, folder: Path | None = None):
        """``folder`` names an existing cache folder directly (the memory probe's subprocesses use it so that an
        onnxruntime route never imports torch just to hash the config)."""
        self.size = size
        self.seed = seed
        self._config = None
        self.folder = Path(folder) if folder is not None else Path(root) / f"{size}-{self._key()}"

    def _key(self) -> str:
        text = json.dumps([self.config().to_dict(), self.seed, TOKENIZER_VOCAB], sort_keys=True, default=str)
        return hashlib.sha256(text.encode()).hexdigest()[:12]

    def config(self):
        if self._config is None:
            self._config = size_config(self.size)
        return self._config

    def audio_config(self) -> dict:
        """The audio encoder's config dict, read from the checkpoint when it exists (no torch import needed)."""
        saved = self.folder / "checkpoint" / "config.json"
        if saved.is_file():
            return json.loads(saved.read_text())["audio"]
        return self.config().audio

    def tokenizer_path(self) -> Path:
        path = self.folder / "tokenizer.json"
        if not path.is_file():
            _make_ignored_root(self.folder.parent)
            benchmark_tokenizer(path, TOKENIZER_VOCAB)
        return path

    def tokenizer(self) -> TextTokenizer:
        return TextTokenizer(self.tokenizer_path())

    def checkpoint(self) -> Path:
        from training.checkpoint import save_checkpoint

        from .reference import build_model

        path = self.folder / "checkpoint"
        if not (path / "config.json").is_file():  # save_checkpoint writes config.json last
            save_checkpoint(build_model(self.config(), self.seed), path, self.tokenizer_path(),
                            extra={"purpose": "benchmark, random weights", "seed": self.seed})
        return path

    def load_torch_model(self):
        """A fresh copy of the checkpoint's model (each PyTorch route sets its own attention implementation)."""
        from training.checkpoint import load_checkpoint

        model, _ = load_checkpoint(self.checkpoint())
        return model

    def model_dir(self, precisions: tuple[str, ...] = ("fp32", "int8")) -> Path:
        """The exported model directory holding at least ``precisions``.

        It is exported again when a precision is missing or when the exporter's code changed since (a stale
        export would measure yesterday's graphs under today's name).
        """
        path = self.folder / "model"
        manifest, stamp = path / "mmer.json", path / EXPORT_STAMP
        stamp_now = exporter_digest()
        current = manifest.is_file() and stamp.is_file() and stamp.read_text() == stamp_now
        have = set(json.loads(manifest.read_text())["variants"]) if current else set()
        if not set(precisions) <= have:
            wanted = ",".join(sorted(set(precisions) | have))
            command = [sys.executable, "-m", "export.to_onnx", str(self.checkpoint()), "--out", str(path),
                       "--precision", wanted, "--force"]  # --force: replace the cached export
            subprocess.run(command, check=True, cwd=REPO_ROOT)
            stamp.write_text(stamp_now)
        return path

    def peer_weights(self) -> Path:
        """save_pretrained folders of the checkpoint's two encoders, for optimum-onnx to read."""
        path = self.folder / "peer"
        if not ((path / "audio" / "config.json").is_file() and (path / "text" / "config.json").is_file()):
            model = self.load_torch_model()
            model.audio_encoder.wav2vec2.save_pretrained(path / "audio")
            model.text_encoder.model.save_pretrained(path / "text")
        return path

    def peer_report(self) -> dict | None:
        """optimum_export.py's record (versions, and how each variant was quantized or why it is missing)."""
        path = self.folder / "peer" / "optimum" / "export.json"
        return json.loads(path.read_text()) if path.is_file() else None

    def peer_graphs(self, precision: str) -> tuple[Path, Path]:
        """optimum's (audio, text) ONNX files of ``precision`` ("fp32" or "int8").

        Raises RouteUnavailable, saying how to build them, when scripts/optimum_env.sh has not been run or
        optimum could not make that variant.
        """
        optimum = self.folder / "peer" / "optimum"
        report_path = optimum / "export.json"
        flag = " --quick" if self.size == "quick" else ""
        if not report_path.is_file():
            raise RouteUnavailable(f"optimum-onnx graphs not built in {optimum}; build them with: {OPTIMUM_HINT}{flag}")
        variants = json.loads(report_path.read_text())["variants"]
        paths = []
        for encoder in ("audio", "text"):
            entry = variants.get(f"{encoder}-{precision}", {})
            if "file" not in entry:
                raise RouteUnavailable(f"optimum-onnx made no {encoder} {precision} graph: "
                                       f"{entry.get('error', 'not attempted')}")
            paths.append(optimum / entry["file"])
        return paths[0], paths[1]


def exporter_digest() -> str:
    """A hash of the code that shapes an exported model directory: export/ and mmer_rt's directory format."""
    digest = hashlib.sha256()
    for source in sorted((REPO_ROOT / "export").glob("*.py")) + [REPO_ROOT / "mmer_rt" / "modeldir.py"]:
        digest.update(source.name.encode() + source.read_bytes())
    return digest.hexdigest()


def _make_ignored_root(root: Path) -> None:
    # The cache ignores itself, as .pytest_cache does, so no clone ever commits base-size weights by accident.
    root.mkdir(parents=True, exist_ok=True)
    marker = root / ".gitignore"
    if not marker.exists():
        marker.write_text("# created by benchmarks/artifacts.py\n*\n")


@lru_cache(maxsize=None)
def artifacts_for(size: str, seed: int = 0) -> Artifacts:
    return Artifacts(size, seed)
