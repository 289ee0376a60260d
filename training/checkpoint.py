"""Training checkpoints: a directory of config.json, model.safetensors and tokenizer.json (never a pickle).

Layout::

    CHECKPOINT/
      config.json         MMERConfig.to_dict() plus "format", "format_version" and "extra" (caller's notes)
      model.safetensors   the model's state dict
      tokenizer.json      the text encoder's tokenizer, copied in

A checkpoint rebuilds its model from config.json alone: the encoders' configs are stored in full and the
``*_pretrained`` names are not read again.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from mmer_rt.errors import MMERError

from .model import MMER, MMERConfig

FORMAT = "mmer-checkpoint"
FORMAT_VERSION = 1
CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
TOKENIZER_NAME = "tokenizer.json"
_HEADER_KEYS = ("format", "format_version", "extra")
# The CTC vocabulary order of checkpoints written before the config recorded one: wav2vec2's order with K and the
# apostrophe swapped (26 and 27). Their CTC heads were trained on it, so they keep it when read and exported.
LEGACY_CTC_VOCAB = (
    "<pad>", "<s>", "</s>", "<unk>", "|",
    "E", "T", "A", "O", "N", "I", "H", "S", "R", "D", "L", "U", "M", "W", "C",
    "F", "G", "Y", "P", "B", "V", "'", "K", "X", "J", "Q", "Z",
)


class CheckpointError(MMERError):
    """A checkpoint directory that cannot be written or read: missing, incomplete, damaged or of another format."""


def save_checkpoint(model: MMER, out_dir: str | Path, tokenizer_path: str | Path, extra: dict | None = None) -> Path:
    """Write ``model`` and its tokenizer to the directory ``out_dir`` (created if needed); returns its path.

    ``extra`` is any JSON-serialisable dict (epoch, metrics ...), kept in config.json and read back by
    ``checkpoint_extra``. Raises CheckpointError when the tokenizer is missing or does not fit the text encoder.
    """
    from safetensors.torch import save_file

    tokenizer_path = Path(tokenizer_path)
    _check_tokenizer_fits(model.config, tokenizer_path)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    header = {"format": FORMAT, "format_version": FORMAT_VERSION, "extra": extra or {}}
    try:
        text = json.dumps({**header, **model.config.to_dict()}, indent=2) + "\n"
    except TypeError as error:
        raise CheckpointError(f"save_checkpoint: extra must be JSON-serialisable ({error})") from error
    state = {name: tensor.detach().contiguous().cpu() for name, tensor in model.state_dict().items()}
    save_file(state, str(out_dir / WEIGHTS_NAME), metadata={"format": "pt"})
    if tokenizer_path.resolve() != (out_dir / TOKENIZER_NAME).resolve():
        shutil.copyfile(tokenizer_path, out_dir / TOKENIZER_NAME)
    # config.json last: a directory that has it was written completely.
    (out_dir / CONFIG_NAME).write_text(text, encoding="utf-8")
    return out_dir


def load_checkpoint(path: str | Path) -> tuple[MMER, Path]:
    """Rebuild the model saved in ``path`` (in eval mode) and return it with the path of its tokenizer.json.

    Raises CheckpointError, naming the file, for a missing directory or file, an unreadable or foreign
    config.json, a damaged model.safetensors, or weights that do not match the configured model.
    """
    directory = _existing_checkpoint_dir(path)
    config = _read_config(directory)
    model = MMER.from_config(config, load_pretrained=False)
    _load_weights(model, directory / WEIGHTS_NAME)
    return model.eval(), directory / TOKENIZER_NAME


def checkpoint_extra(path: str | Path) -> dict:
    """The ``extra`` dict given to ``save_checkpoint``."""
    return _read_header(_existing_checkpoint_dir(path))["extra"]


def _existing_checkpoint_dir(path: str | Path) -> Path:
    directory = Path(path)
    if not directory.exists():
        raise CheckpointError(f"checkpoint directory not found: {directory}")
    if not directory.is_dir():
        raise CheckpointError(f"{directory} is a file; a checkpoint is a directory holding {CONFIG_NAME}, "
                              f"{WEIGHTS_NAME} and {TOKENIZER_NAME}")
    for name in (CONFIG_NAME, WEIGHTS_NAME, TOKENIZER_NAME):
        if not (directory / name).is_file():
            raise CheckpointError(f"{directory} is not a complete checkpoint: {name} is missing")
    return directory


def _read_header(directory: Path) -> dict:
    path = directory / CONFIG_NAME
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise CheckpointError(f"{path}: cannot read the checkpoint config ({error})") from error
    if not isinstance(raw, dict) or raw.get("format") != FORMAT:
        found = raw.get("format") if isinstance(raw, dict) else None
        raise CheckpointError(f"{path}: not an MMER checkpoint config (format {found!r}, expected {FORMAT!r})")
    if raw.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(
            f"{path}: checkpoint format version {raw.get('format_version')!r} is not supported (this code reads "
            f"version {FORMAT_VERSION}); use the mmer-rt version that wrote it"
        )
    return raw


def _read_config(directory: Path) -> MMERConfig:
    raw = _read_header(directory)
    fields = {k: v for k, v in raw.items() if k not in _HEADER_KEYS}
    if "ctc_vocab" not in fields and fields.get("ctc_vocab_size", len(LEGACY_CTC_VOCAB)) == len(LEGACY_CTC_VOCAB):
        fields["ctc_vocab"] = list(LEGACY_CTC_VOCAB)
    try:
        return MMERConfig.from_dict(fields)
    except (TypeError, ValueError) as error:
        raise CheckpointError(f"{directory / CONFIG_NAME}: invalid model config ({error})") from error


def _load_weights(model: MMER, path: Path) -> None:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        state = load_file(str(path))
    except (SafetensorError, OSError) as error:
        raise CheckpointError(f"{path}: cannot read the weights, the file is damaged or not safetensors "
                              f"({error})") from error
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    reshaped = sorted(k for k in set(state) & set(expected) if state[k].shape != expected[k].shape)
    if missing or unexpected or reshaped:
        raise CheckpointError(
            f"{path}: the weights do not match the model in {CONFIG_NAME}: "
            f"missing {_few(missing)}, unexpected {_few(unexpected)}, wrong shape {_few(reshaped)}"
        )
    model.load_state_dict(state, strict=True)


def _few(names: list[str], shown: int = 5) -> str:
    if not names:
        return "none"
    more = f" and {len(names) - shown} more" if len(names) > shown else ""
    return f"{len(names)} ({', '.join(names[:shown])}{more})"


def _check_tokenizer_fits(config: MMERConfig, tokenizer_path: Path) -> None:
    """The tokenizer must pad with the text encoder's pad id and emit only ids its embedding table holds."""
    from tokenizers import Tokenizer

    from mmer_rt.text import TextTokenizer

    if not tokenizer_path.is_file():
        raise CheckpointError(f"tokenizer file not found: {tokenizer_path}")
    pad_id = TextTokenizer(tokenizer_path).pad_id
    vocab = Tokenizer.from_file(str(tokenizer_path)).get_vocab_size(with_added_tokens=True)
    if config.text.get("pad_token_id") != pad_id:
        raise CheckpointError(f"{tokenizer_path}: pads with id {pad_id} but the text encoder's pad_token_id is "
                              f"{config.text.get('pad_token_id')}; use the encoder's own tokenizer")
    if vocab > config.text["vocab_size"]:
        raise CheckpointError(f"{tokenizer_path}: {vocab} tokens do not fit the text encoder's vocabulary of "
                              f"{config.text['vocab_size']}; use the encoder's own tokenizer")
