"""``python -m training.import_official OFFICIAL.pt --text-pretrained NAME_OR_DIR --out CHECKPOINT_DIR``: the MMER
authors' released fold checkpoint as a project checkpoint.

The authors' file (Sreyan88/MMER, ``torch.save({'state_dict': FuseModel.state_dict()})``; its keys and shapes are
in docs/official-checkpoint.md) holds wav2vec2, the fusion block, the classifier, the CTC head and the two
contrastive heads, but no text encoder: the authors fed precomputed RoBERTa-base token embeddings, so the text
encoder comes from ``--text-pretrained`` (stock ``roberta-base`` is the documented substitute). The file is read
with ``torch.load(weights_only=True)``, which refuses to run code from it, and every tensor is mapped by name onto
``training.model.MMER``: unknown, missing and misshapen tensors stop the import with a list of them; the only
tensors left out are the two named in ``NOT_COMPUTED``, which the authors' forward pass never reads.
"""

from __future__ import annotations

import argparse
import pickle
import re
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Mapping, Sequence

from mmer_rt.errors import MMERError
from mmer_rt.text import CTC_VOCAB

from .model import IEMOCAP_LABELS, MMER, MMERConfig, base_config

# Tensors of the authors' file that take no part in their forward pass, with the reason; skipped when present.
NOT_COMPUTED = {
    "model_mmi.weights": "MMI_Model.weights, the layer weights of _weighted_sum, which the forward pass never calls",
    "model_mmi.wav2vec2.masked_spec_embed": "SpecAugment's mask embedding; SpecAugment is off in the authors' model",
}
_DATA_PARALLEL_PREFIX = "module."  # DataParallel / DistributedDataParallel wrappers prefix every key with it
_POS_CONV = "model_mmi.wav2vec2.encoder.pos_conv_embed.conv."
# Newer torch saves weight norm as a parametrization; older torch (the authors') as weight_g / weight_v.
_WEIGHT_NORM_FORMS = {"parametrizations.weight.original0": "weight_g", "parametrizations.weight.original1": "weight_v"}

# The authors' one-layer BERT encoders (BertSelfEncoder, BertCrossEncoder) and the FusionLayer each becomes, in the
# order of docs/mmer-model.md's fusion steps 1-4.
_FUSION_LAYERS = (
    ("model_mmi.self_attention_v2.layer.0", "fusion.text_self_attention"),  # 1: T, the text self-attention
    ("model_mmi.txt2img_attention.layer.0", "fusion.text_attends_audio"),  # 2: q, text queries, L_a(A) keys
    ("model_mmi.img2txt_attention.layer.0", "fusion.audio_attends_text"),  # 3: p, L_b(A) queries, text keys
    ("model_mmi.txt2txt_attention.layer.0", "fusion.text_attends_fused_audio"),  # 4: r, text queries, p keys
)
# Inside one BertLayer / BertCrossAttentionLayer: the authors' submodule -> FusionLayer's.
_BERT_LAYER_PARTS = (
    ("attention.self.query", "query"),
    ("attention.self.key", "key"),
    ("attention.self.value", "value"),
    ("attention.output.dense", "attention_output"),
    ("attention.output.LayerNorm", "attention_norm"),
    ("intermediate.dense", "intermediate"),
    ("output.dense", "output"),
    ("output.LayerNorm", "output_norm"),
)
_MODULES = (
    ("model_mmi.vismap2text", "fusion.audio_to_text_keys"),  # L_a: the audio that the text attends to (q)
    ("model_mmi.vismap2text_v2", "fusion.audio_to_text_queries"),  # L_b: the audio that attends to the text (p)
    ("model_mmi.gate", "fusion.gate"),
    ("model_mmi.downsample_final", "fusion.text_pool_projection"),  # after the max pool over text positions
    ("model_mmi.classifier.linear3", "fusion.classifier"),
    ("model_mmi.ctc_linear", "ctc_head"),
    ("orgin_linear_change", "scl_head"),  # the supervised-contrastive MLP (indices 0 and 2 of a Sequential)
    ("augment_linear_change", "acl_head"),  # the augmentation-contrastive MLP
)
# Name rules, (authors' prefix, project prefix), the first match wins in either direction: the weight-norm pair
# before the rest of wav2vec2, whose names are transformers' Wav2Vec2Model's in both.
_RULES: tuple[tuple[str, str], ...] = (
    (_POS_CONV + "weight_g", "audio_encoder.wav2vec2.encoder.pos_conv_embed.conv.parametrizations.weight.original0"),
    (_POS_CONV + "weight_v", "audio_encoder.wav2vec2.encoder.pos_conv_embed.conv.parametrizations.weight.original1"),
    ("model_mmi.wav2vec2.", "audio_encoder.wav2vec2."),
    *((f"{theirs}.{a}.", f"{ours}.{b}.") for theirs, ours in _FUSION_LAYERS for a, b in _BERT_LAYER_PARTS),
    *((theirs + ".", ours + ".") for theirs, ours in _MODULES),
)
# Project tensors that the authors' file does not hold: the text encoder, loaded from --text-pretrained.
_FROM_TEXT_PRETRAINED = "text_encoder."


class OfficialCheckpointError(MMERError):
    """The authors' checkpoint cannot be imported: unreadable, unsafe, of another format or of another network."""


@dataclass(frozen=True)
class OfficialArchitecture:
    """The network an authors' file holds weights for: wav2vec2-base, BERT-style fusion layers of 12 heads and
    FFN 3072, 4 IEMOCAP classes, wav2vec2's 32-symbol CTC vocabulary, audio cut at 210,000 samples.

    ``released_architecture()`` is the only one the authors trained; tests build files of the same layout at a
    reduced width.
    """

    audio: dict  # a Wav2Vec2Config dict; the fusion width is its hidden size (768 for the released files)
    fusion_heads: int = 12
    fusion_ffn: int = 3072
    labels: tuple[str, ...] = IEMOCAP_LABELS  # the released heads' logit order
    ctc_vocab: tuple[str, ...] = CTC_VOCAB  # wav2vec2-base's vocab.json order (tests/test_text.py checks CTC_VOCAB)
    max_audio_samples: int = 210_000
    layer_norm_eps: float = 1e-12

    @property
    def width(self) -> int:
        return int(self.audio["hidden_size"])

    def model_config(self, text_config: dict, text_pretrained: str) -> MMERConfig:
        return MMERConfig(
            labels=list(self.labels), audio=dict(self.audio), text=text_config, text_pretrained=text_pretrained,
            fusion_heads=self.fusion_heads, fusion_ffn=self.fusion_ffn, layer_norm_eps=self.layer_norm_eps,
            ctc_vocab_size=len(self.ctc_vocab), ctc_vocab=list(self.ctc_vocab),
            max_audio_samples=self.max_audio_samples,
        )


def released_architecture() -> OfficialArchitecture:
    """The released files' network: ``facebook/wav2vec2-base``'s config (base_config's audio part)."""
    return OfficialArchitecture(audio=base_config().audio)


def official_name(project_name: str) -> str | None:
    """The authors' name of a project tensor, or None for one their file does not hold (the text encoder)."""
    return _rename(project_name, [(ours, theirs) for theirs, ours in _RULES])


def _rename(name: str, rules: Sequence[tuple[str, str]]) -> str | None:
    for source, target in rules:
        if name == source or (source.endswith(".") and name.startswith(source)):
            return target + name[len(source):]
    return None


def read_official(path: str | Path) -> dict:
    """The tensors of an authors' file, keyed by their names without a ``module.`` prefix and with the positional
    convolution's weight norm as ``weight_g`` / ``weight_v`` whichever way it was saved.

    Raises OfficialCheckpointError for a missing, unreadable, truncated or unsafe file (one whose pickle would run
    code or import anything but tensors), and for one that is not ``{'state_dict': {name: tensor}}``.
    """
    import torch

    path = Path(path)
    if not path.is_file():
        raise OfficialCheckpointError(f"{path}: no such file (give the authors' .pt checkpoint)")
    try:
        loaded = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        raise OfficialCheckpointError(_unpickling_problem(path, error)) from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError, ValueError, KeyError) as error:
        reason = str(error).split("\n")[0] or type(error).__name__
        raise OfficialCheckpointError(f"{path}: cannot read it as a PyTorch checkpoint, the file is damaged, "
                                      f"truncated or of another kind ({reason[:200]})") from None
    state = _state_dict(path, loaded)
    return _canonical_names(path, state)


def _unpickling_problem(path: Path, error: Exception) -> str:
    message = str(error)
    # Both of torch's wordings: "Trying to load unsupported GLOBAL posix.system ..." and "Unsupported global:
    # GLOBAL getattr was not an allowed global ...": the pickle names a callable, which it would call to load.
    unsafe = re.search(r"unsupported (?:global: )?GLOBAL (\S+)", message, re.IGNORECASE)
    if unsafe:
        return (f"{path}: refused, the file asks to load {unsafe.group(1)}, which could run code; it was read with "
                "torch.load(weights_only=True), which executes nothing from the file. A released MMER checkpoint "
                "holds only tensors: this file is not one, or it was tampered with")
    detail = re.search(r"WeightsUnpickler error: \s*(.+)", message)
    reason = detail.group(1).strip() if detail else message.split("\n")[0]
    return (f"{path}: cannot read it as a PyTorch checkpoint, the file is damaged, truncated or of another kind "
            f"({reason[:200]})")


def _state_dict(path: Path, loaded) -> dict:
    import torch

    if not isinstance(loaded, Mapping) or "state_dict" not in loaded:
        found = (f"a dict of {len(loaded)} entries ({_listed(sorted(map(str, loaded)), 4)})"
                 if isinstance(loaded, Mapping) else type(loaded).__name__)
        raise OfficialCheckpointError(
            f"{path}: not an MMER authors' checkpoint: it holds {found}, not a dict with a 'state_dict' entry "
            "(the authors saved torch.save({'state_dict': model.state_dict()}, path))")
    state = loaded["state_dict"]
    if not isinstance(state, Mapping) or not state:
        raise OfficialCheckpointError(f"{path}: 'state_dict' is {type(state).__name__}"
                                      f"{' and empty' if isinstance(state, Mapping) else ''}, not a dict of tensors")
    bad = [str(k) for k, v in state.items()
           if not isinstance(k, str) or not isinstance(v, torch.Tensor) or not v.is_floating_point()]
    if bad:
        raise OfficialCheckpointError(f"{path}: 'state_dict' has entries that are not floating-point tensors: "
                                      f"{_listed(bad)}")
    return dict(state)


def _canonical_names(path: Path, state: dict) -> dict:
    canonical: dict = {}
    for key, tensor in state.items():
        name = key[len(_DATA_PARALLEL_PREFIX):] if key.startswith(_DATA_PARALLEL_PREFIX) else key
        if name.startswith(_POS_CONV):
            rest = name[len(_POS_CONV):]
            name = _POS_CONV + _WEIGHT_NORM_FORMS.get(rest, rest)
        if name in canonical:
            raise OfficialCheckpointError(
                f"{path}: two tensors stand for {name} (with and without the '{_DATA_PARALLEL_PREFIX}' prefix, or "
                "weight norm saved both as weight_g/weight_v and as parametrizations); the file is not one model's")
        canonical[name] = tensor
    return canonical


def map_official(state: Mapping, expected: Mapping[str, tuple], source: str | Path = "the checkpoint") -> dict:
    """The authors' tensors renamed onto the project's model, strictly.

    ``expected`` maps each project tensor the file must supply (every one but the text encoder's) to its shape.
    Raises OfficialCheckpointError listing every unknown tensor, every missing one and every shape that differs;
    the tensors of ``NOT_COMPUTED`` are skipped.
    """
    wanted = {}
    for name, shape in expected.items():
        theirs = official_name(name)
        if theirs is None:
            raise RuntimeError(f"no rule names the project tensor {name} in the authors' file")  # a bug here
        wanted[theirs] = (name, tuple(shape))
    present = {k: v for k, v in state.items() if k not in NOT_COMPUTED}
    unknown = sorted(set(present) - set(wanted))
    missing = sorted(set(wanted) - set(present))
    misshapen = sorted(f"{k} {tuple(present[k].shape)}, expected {wanted[k][1]}"
                       for k in set(present) & set(wanted) if tuple(present[k].shape) != wanted[k][1])
    if unknown or missing or misshapen:
        problems = [f"{label} ({len(items)}): {_listed(items)}"
                    for label, items in (("unknown tensors", unknown), ("missing tensors", missing),
                                         ("wrong shapes", misshapen)) if items]
        raise OfficialCheckpointError(
            f"{source}: does not hold the released MMER network (wav2vec2-base, a 768-wide fusion block, 4 "
            f"classes, 32 CTC symbols; docs/official-checkpoint.md): " + "; ".join(problems))
    return {wanted[k][0]: tensor for k, tensor in present.items()}


def _listed(items: Sequence[str], shown: int = 12) -> str:
    more = f" ... and {len(items) - shown} more" if len(items) > shown else ""
    return ", ".join(items[:shown]) + more


def import_official(
    path: str | Path,
    text_pretrained: str,
    out_dir: str | Path,
    architecture: OfficialArchitecture | None = None,
    force: bool = False,
    log: Callable[[str], None] = print,
) -> Path:
    """Write the project checkpoint of an authors' file to ``out_dir``; returns its path.

    ``text_pretrained`` is a transformers text encoder (hub name or local directory) of the fusion block's width;
    its tokenizer is saved with the checkpoint. Raises OfficialCheckpointError (see ``read_official`` and
    ``map_official``), and for a text encoder that cannot be loaded or has another width, or an ``out_dir`` that
    is a non-empty directory without ``force``.
    """
    from mmer_rt.modeldir import sha256_file

    from .checkpoint import save_checkpoint
    from .tokenizer import tokenizer_from_pretrained

    architecture = architecture or released_architecture()
    out_dir = Path(out_dir)
    if out_dir.exists() and (not out_dir.is_dir() or (any(out_dir.iterdir()) and not force)):
        raise OfficialCheckpointError(f"--out {out_dir} exists and is not an empty directory; choose another, or "
                                      "pass --force to write into it")
    log(f"reading {path}")
    official = read_official(path)
    text_config = _text_config(text_pretrained, architecture.width)
    with tempfile.TemporaryDirectory() as scratch:
        try:  # before the model is built: a text encoder without a fast tokenizer fails in seconds, not minutes
            tokenizer = tokenizer_from_pretrained(text_pretrained, Path(scratch) / "tokenizer.json")
        except (OSError, ValueError) as error:
            raise OfficialCheckpointError(f"--text-pretrained {text_pretrained}: cannot save its tokenizer "
                                          f"({str(error).splitlines()[0]})") from None
        log(f"building the model with the text encoder {text_pretrained}")
        # Built with random weights where the file's go: every one of them is replaced below.
        model = MMER.from_config(architecture.model_config(text_config, str(text_pretrained)), load_pretrained=True)
        target = {k: tuple(v.shape) for k, v in model.state_dict().items()
                  if not k.startswith(_FROM_TEXT_PRETRAINED)}
        mapped = map_official(official, target, path)
        missing, unexpected = model.load_state_dict(mapped, strict=False)
        left = [k for k in missing if not k.startswith(_FROM_TEXT_PRETRAINED)]
        if left or unexpected:  # map_official covered ``target`` exactly: this would be a bug here
            raise RuntimeError(f"tensors left unset {left[:5]}, unexpected {unexpected[:5]}")
        skipped = sorted(k for k in official if k in NOT_COMPUTED)
        extra = {"imported_from": {
            "file": Path(path).name, "sha256": sha256_file(path), "text_pretrained": str(text_pretrained),
            "tensors": len(mapped), "skipped_not_computed": skipped,
        }}
        written = save_checkpoint(model.eval(), out_dir, tokenizer, extra=extra)
    log(f"mapped {len(mapped)} tensors ({sum(t.numel() for t in mapped.values()):,} values), skipped "
        f"{len(skipped)} never computed ({', '.join(skipped) or 'none'}); wrote {written}")
    return written


def _text_config(text_pretrained: str, width: int) -> dict:
    from transformers import AutoConfig

    try:
        config = AutoConfig.from_pretrained(str(text_pretrained))
    except (OSError, ValueError) as error:
        raise OfficialCheckpointError(
            f"--text-pretrained {text_pretrained}: cannot load it ({str(error).splitlines()[0]}); give a local "
            "directory holding a transformers model, or a hub name this machine can download "
            "(roberta-base)") from None
    if getattr(config, "hidden_size", None) != width:
        raise OfficialCheckpointError(
            f"--text-pretrained {text_pretrained}: its hidden size is {getattr(config, 'hidden_size', None)}, but "
            f"the released fusion block reads {width}-wide token embeddings (roberta-base's)")
    return config.to_dict()


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m training.import_official",
        description="Turn an MMER authors' released checkpoint (Sreyan88/MMER, torch.save({'state_dict': ...})) "
                    "into a project checkpoint directory for python -m export.to_onnx.",
    )
    parser.add_argument("checkpoint", type=Path, help="the authors' .pt file (read with weights_only=True)")
    parser.add_argument("--text-pretrained", required=True, metavar="NAME_OR_DIR",
                        help="the text encoder: roberta-base (the authors' features came from it) or a local "
                             "directory holding it")
    parser.add_argument("--out", type=Path, required=True, help="checkpoint directory to write")
    parser.add_argument("--force", action="store_true", help="write into --out even if it is not empty")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    log = lambda message: print(message, file=sys.stderr, flush=True)  # noqa: E731 - stdout stays for data
    try:
        import_official(args.checkpoint, args.text_pretrained, args.out, force=args.force, log=log)
    except MMERError as error:
        log(f"error: {error}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
