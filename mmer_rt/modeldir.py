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
  audio_encoder: waveforms f32 (B, N) as decoded (16 kHz mono, zero-padded), sample_lengths i64 (B,); the graph
                 normalises each utterance itself (format version 2; version 1 graphs took input_values f32 (B, N)
                 normalised per utterance and sample_mask i64 (B, N), and are still read)
                 -> hidden_states f32 (B, J, Da), frame_mask i64 (B, J), ctc_logits f32 (B, J, V)
  text_encoder:  input_ids i64 (B, M), attention_mask i64 (B, M) -> token_embeddings f32 (B, M, Dt)
  fusion:        hidden_states, frame_mask, token_embeddings, attention_mask -> logits f32 (B, C)
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

from .audio import SAMPLE_RATE
from .errors import IntegrityError, ModelDirError

# Version 2: the audio graph normalises the waveforms itself and takes their lengths instead of a sample mask
# (host work off the GPU's critical path). Version 1 directories are still read (audio_inputs).
FORMAT_VERSION = 2
READABLE_FORMAT_VERSIONS = (1, 2)
MAX_AUDIO_SECONDS = 600  # a bound on max_audio_samples: wav2vec2's attention is quadratic in the audio's length
MAX_TEXT_TOKENS = 4096  # a bound on extra.max_text_tokens, checked before the text graph is tried at that length
MAX_DEPTH = 16  # free-form objects (parity, versions, extra) nested deeper are refused
MANIFEST_NAME = "mmer.json"
_MANIFEST_REQUIRED = ("format_version", "labels", "sample_rate", "max_audio_samples", "ctc_vocab", "text_cleaning",
                      "tokenizer", "variants")
_MANIFEST_OPTIONAL = ("versions", "extra")
TOKENIZER_NAME = "tokenizer.json"
GRAPH_NAMES = ("audio_encoder", "text_encoder", "fusion")
PRECISIONS = ("fp32", "fp16", "int8")

AUDIO_INPUTS = ("waveforms", "sample_lengths")
AUDIO_INPUTS_V1 = ("input_values", "sample_mask")
AUDIO_OUTPUTS = ("hidden_states", "frame_mask", "ctc_logits")
TEXT_INPUTS = ("input_ids", "attention_mask")
TEXT_OUTPUTS = ("token_embeddings",)
FUSION_INPUTS = ("hidden_states", "frame_mask", "token_embeddings", "attention_mask")
FUSION_OUTPUTS = ("logits",)


def audio_inputs(format_version: int) -> tuple[str, ...]:
    """The audio graph's input names in a model directory of ``format_version``."""
    return AUDIO_INPUTS_V1 if format_version == 1 else AUDIO_INPUTS


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
        """Read and check ``mmer.json`` whole: every field's type and range, unknown keys refused at every level.

        Raises:
          ModelDirError: a missing, unreadable or malformed file, an unknown format version, or a field of the
            wrong type or out of range; the message names the field (``variants.fp32.graphs.fusion.file``).
        """
        model_dir = Path(model_dir)
        path = model_dir / MANIFEST_NAME
        try:
            if not model_dir.is_dir():
                raise ModelDirError(f"model directory not found: {model_dir}")
            if not path.is_file():
                raise ModelDirError(f"{model_dir} is not an mmer-rt model directory: {MANIFEST_NAME} is missing")
        except OSError as error:  # a name too long for the file system, a directory we may not enter
            raise ModelDirError(f"cannot open the model directory {model_dir} ({error.strerror or error})") \
                from error
        try:
            raw = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
            raise ModelDirError(f"{path}: cannot read the manifest ({error})") from error
        except RecursionError:
            raise ModelDirError(f"{path}: cannot read the manifest (JSON nested too deeply)") from None
        version = raw.get("format_version") if isinstance(raw, dict) else None
        if version not in READABLE_FORMAT_VERSIONS or isinstance(version, bool) or not isinstance(version, int):
            raise ModelDirError(
                f"{path}: manifest format version {version!r} is not supported by this mmer-rt "
                f"(it reads versions {', '.join(map(str, READABLE_FORMAT_VERSIONS))}); re-export the model or "
                "upgrade mmer-rt"
            )
        try:
            return _parse_manifest(raw)
        except _FieldError as error:
            raise ModelDirError(f"{path}: malformed manifest: {error.field}: {error.problem}") from None


class _FieldError(Exception):
    def __init__(self, field: str, problem: str):
        super().__init__(f"{field}: {problem}")
        self.field, self.problem = field, problem


def _parse_manifest(raw: dict) -> ModelManifest:
    """A ModelManifest from the parsed JSON, every field checked; raises _FieldError naming the first bad one."""
    _keys(raw, "", required=_MANIFEST_REQUIRED, optional=_MANIFEST_OPTIONAL)
    labels = _str_list(raw["labels"], "labels")
    sample_rate = _int(raw["sample_rate"], "sample_rate", 1, 10**9)
    if sample_rate != SAMPLE_RATE:
        raise _FieldError("sample_rate", f"{sample_rate} Hz, but the graphs of this format take {SAMPLE_RATE} Hz "
                                         "audio (wav2vec2's rate); re-export the model")
    max_audio_samples = _int(raw["max_audio_samples"], "max_audio_samples", 1, MAX_AUDIO_SECONDS * SAMPLE_RATE)
    extra = _dict(raw.get("extra", {}), "extra")
    if "max_text_tokens" in extra:
        _int(extra["max_text_tokens"], "extra.max_text_tokens", 1, MAX_TEXT_TOKENS)
    if "min_audio_samples" in extra:
        _int(extra["min_audio_samples"], "extra.min_audio_samples", 1, max_audio_samples)
    versions = _dict(raw.get("versions", {}), "versions")
    for name, value in versions.items():
        _str(value, f"versions.{name}")
    if not isinstance(raw["variants"], dict) or not raw["variants"]:
        raise _FieldError("variants", f"expected an object of precision variants, got {_shown(raw['variants'])}")
    variants = {name: _variant(name, entry) for name, entry in raw["variants"].items()}
    return ModelManifest(
        labels=labels, sample_rate=sample_rate, max_audio_samples=max_audio_samples,
        ctc_vocab=_str_list(raw["ctc_vocab"], "ctc_vocab"), text_cleaning=_str(raw["text_cleaning"], "text_cleaning"),
        tokenizer=_relative_path(raw["tokenizer"], "tokenizer"), variants=variants, versions=versions, extra=extra,
        format_version=raw["format_version"],
    )


def _variant(name: str, raw: Any) -> VariantEntry:
    where = f"variants.{name}"
    if name not in PRECISIONS:
        raise _FieldError(where, f"unknown precision {name!r}; expected one of {', '.join(PRECISIONS)}")
    _keys(raw, where, required=("precision", "graphs"), optional=("parity",))
    if raw["precision"] != name:
        raise _FieldError(f"{where}.precision", f"says {_shown(raw['precision'])} under the name {name!r}")
    graphs = raw["graphs"]
    _keys(graphs, f"{where}.graphs", required=GRAPH_NAMES, optional=())
    entries = {}
    for graph_name in GRAPH_NAMES:
        field_name = f"{where}.graphs.{graph_name}"
        entry = graphs[graph_name]
        _keys(entry, field_name, required=("file", "sha256", "opset"), optional=())
        sha = entry["sha256"]
        if not isinstance(sha, str) or not re.fullmatch(r"[0-9a-f]{64}", sha):
            raise _FieldError(f"{field_name}.sha256", f"expected 64 lower-case hex digits, got {_shown(sha)}")
        entries[graph_name] = GraphEntry(
            file=_relative_path(entry["file"], f"{field_name}.file"), sha256=sha,
            opset=_int(entry["opset"], f"{field_name}.opset", 1, 1000),
        )
    return VariantEntry(precision=name, graphs=entries, parity=_dict(raw.get("parity", {}), f"{where}.parity"))


def _keys(raw: Any, where: str, required: tuple[str, ...], optional: tuple[str, ...]) -> None:
    """An object with every required key and no key the format does not define (the same rule at every level)."""
    label = where or "top level"
    if not isinstance(raw, dict):
        raise _FieldError(label, f"expected an object, got {_shown(raw)}")
    missing = [key for key in required if key not in raw]
    if missing:
        raise _FieldError(f"{where}.{missing[0]}" if where else missing[0], "is missing")
    unknown = sorted(set(raw) - set(required) - set(optional))
    if unknown:
        raise _FieldError(label, f"has keys this format does not define: {', '.join(unknown)}; "
                                 "re-export the model or upgrade mmer-rt")


def _int(value: Any, where: str, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise _FieldError(where, f"expected an integer, got {_shown(value)}")
    if not low <= value <= high:
        expected = str(low) if low == high else f"from {low} to {high}"
        raise _FieldError(where, f"expected {expected}, got {value}")
    return value


def _str(value: Any, where: str) -> str:
    if not isinstance(value, str) or not value:
        raise _FieldError(where, f"expected a non-empty string, got {_shown(value)}")
    return value


def _str_list(value: Any, where: str) -> list[str]:
    if not isinstance(value, list) or not value:
        raise _FieldError(where, f"expected a non-empty list of strings, got {_shown(value)}")
    items = [_str(item, f"{where}[{i}]") for i, item in enumerate(value)]
    seen: dict[str, int] = {}
    for i, item in enumerate(items):
        if item in seen:
            raise _FieldError(where, f"{item!r} appears twice (at {seen[item]} and {i}); each must be unique")
        seen[item] = i
    return items


def _dict(value: Any, where: str) -> dict[str, Any]:
    """A free-form object (parity, versions, extra): any keys, but not nested deeper than MAX_DEPTH."""
    if not isinstance(value, dict):
        raise _FieldError(where, f"expected an object, got {_shown(value)}")
    if _depth(value) > MAX_DEPTH:
        raise _FieldError(where, f"nested deeper than {MAX_DEPTH} levels")
    return value


def _depth(value: Any) -> int:
    stack, deepest = [(value, 1)], 0
    while stack:
        item, depth = stack.pop()
        deepest = max(deepest, depth)
        if depth > MAX_DEPTH:
            break
        children = item.values() if isinstance(item, dict) else item if isinstance(item, list) else ()
        stack.extend((child, depth + 1) for child in children if isinstance(child, (dict, list)))
    return deepest


def _relative_path(value: Any, where: str) -> str:
    name = _str(value, where)
    path = PurePosixPath(name)
    if path.is_absolute() or ".." in path.parts or "\\" in name or "\0" in name:
        raise _FieldError(where, f"expected a relative path inside the model directory, got {name!r}")
    return name


def _shown(value: Any) -> str:
    text = json.dumps(value) if isinstance(value, (str, int, float, bool, type(None))) else type(value).__name__
    return text if len(text) <= 40 else text[:37] + "..."


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
