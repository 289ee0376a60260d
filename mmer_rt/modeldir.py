"""The model directory: the graphs, the tokenizer and ``mmer.json``, the manifest that describes them.

``python -m export.to_onnx`` writes this format and :class:`mmer_rt.Recognizer` reads it; it is defined here, once.

Layout::

    MODEL_DIR/
      mmer.json                  the manifest (this module's ModelManifest)
      tokenizer.json             the text encoder's tokenizer (Hugging Face tokenizers format)
      fp32/audio_encoder.onnx    one folder per precision, each holding the three graphs
      fp32/text_encoder.onnx
      fp32/fusion.onnx
      int8/...  fp16/...

Graph contract (names of inputs and outputs; B batch, N samples, J frames, M tokens):
  audio_encoder: input_values f32 (B, N) normalised per utterance, sample_mask i64 (B, N)
                 -> hidden_states f32 (B, J, Da), frame_mask i64 (B, J), ctc_logits f32 (B, J, V)
  text_encoder:  input_ids i64 (B, M), attention_mask i64 (B, M) -> token_embeddings f32 (B, M, Dt)
  fusion:        hidden_states, frame_mask, token_embeddings, attention_mask -> logits f32 (B, C)
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from .errors import IntegrityError, ModelDirError

FORMAT_VERSION = 1
MANIFEST_NAME = "mmer.json"
TOKENIZER_NAME = "tokenizer.json"
GRAPH_NAMES = ("audio_encoder", "text_encoder", "fusion")
PRECISIONS = ("fp32", "fp16", "int8")

AUDIO_INPUTS = ("input_values", "sample_mask")
AUDIO_OUTPUTS = ("hidden_states", "frame_mask", "ctc_logits")
TEXT_INPUTS = ("input_ids", "attention_mask")
TEXT_OUTPUTS = ("token_embeddings",)
FUSION_INPUTS = ("hidden_states", "frame_mask", "token_embeddings", "attention_mask")
FUSION_OUTPUTS = ("logits",)


@dataclass
class GraphEntry:
    """One ONNX file of one precision variant."""

    file: str  # relative to the model directory
    sha256: str
    opset: int


@dataclass
class VariantEntry:
    """A precision variant: its three graphs and its parity against the PyTorch fp32 model."""

    precision: str
    graphs: dict[str, GraphEntry]
    parity: dict[str, Any] = field(default_factory=dict)


@dataclass
class ModelManifest:
    labels: list[str]
    sample_rate: int
    max_audio_samples: int
    ctc_vocab: list[str]
    text_cleaning: str
    tokenizer: str
    variants: dict[str, VariantEntry]
    versions: dict[str, str] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)
    format_version: int = FORMAT_VERSION

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=False) + "\n"

    def write(self, model_dir: str | Path) -> Path:
        path = Path(model_dir) / MANIFEST_NAME
        path.write_text(self.to_json(), encoding="utf-8")
        return path

    @classmethod
    def read(cls, model_dir: str | Path) -> "ModelManifest":
        """Read and check ``mmer.json``; raises ModelDirError for a missing, malformed or unknown-version file."""
        model_dir = Path(model_dir)
        path = model_dir / MANIFEST_NAME
        if not model_dir.is_dir():
            raise ModelDirError(f"model directory not found: {model_dir}")
        if not path.is_file():
            raise ModelDirError(f"{model_dir} is not an mmer-rt model directory: {MANIFEST_NAME} is missing")
        try:
            raw = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
            raise ModelDirError(f"{path}: cannot read the manifest ({error})") from error
        version = raw.get("format_version") if isinstance(raw, dict) else None
        if version != FORMAT_VERSION:
            raise ModelDirError(
                f"{path}: manifest format version {version!r} is not supported by this mmer-rt "
                f"(it reads version {FORMAT_VERSION}); re-export the model or upgrade mmer-rt"
            )
        try:
            variants = {
                name: VariantEntry(
                    precision=v["precision"],
                    graphs={g: GraphEntry(**entry) for g, entry in v["graphs"].items()},
                    parity=v.get("parity", {}),
                )
                for name, v in raw["variants"].items()
            }
            manifest = cls(**{**raw, "variants": variants})
        except (KeyError, TypeError) as error:
            raise ModelDirError(f"{path}: malformed manifest ({error!r})") from error
        for variant in manifest.variants.values():
            missing = set(GRAPH_NAMES) - set(variant.graphs)
            if missing:
                raise ModelDirError(f"{path}: variant {variant.precision} lacks graphs {sorted(missing)}")
        return manifest


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def verified_graph_path(model_dir: str | Path, entry: GraphEntry) -> Path:
    """The absolute path of a graph file, after checking it exists and its SHA-256 matches the manifest."""
    path = Path(model_dir) / entry.file
    if not path.is_file():
        raise ModelDirError(f"graph file missing from the model directory: {path}")
    actual = sha256_file(path)
    if actual != entry.sha256:
        raise IntegrityError(
            f"{path}: SHA-256 {actual[:16]}... does not match the manifest's {entry.sha256[:16]}...; "
            "the file was changed or damaged after export"
        )
    return path
