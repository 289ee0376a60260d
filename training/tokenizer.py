"""Making the text encoder's ``tokenizer.json``: trained for small random models, or saved from a pretrained one.

Training and serving both read the file with ``mmer_rt.text.TextTokenizer``; this module only writes it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterable

from mmer_rt.text import clean_transcript

# RoBERTa's special tokens; the first four take ids 0-3 as in roberta-base, so pad_token_id=1 holds.
ROBERTA_SPECIAL_TOKENS = ("<s>", "<pad>", "</s>", "<unk>", "<mask>")


def build_tokenizer(texts: Iterable[str], vocab_size: int, out_path: str | Path) -> Path:
    """Train a byte-level BPE tokenizer with RoBERTa's special tokens and post-processor; write tokenizer.json.

    The texts are cleaned with the runtime's rule first, as they will be when tokenised. ``vocab_size`` is an
    upper bound (a small corpus yields fewer merges); it must be at least 261, the 256 bytes plus 5 specials.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    minimum = 256 + len(ROBERTA_SPECIAL_TOKENS)
    if vocab_size < minimum:
        raise ValueError(f"vocab_size={vocab_size} is too small for a byte-level BPE: it needs at least {minimum}")
    tokenizer = Tokenizer(models.BPE(unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(ROBERTA_SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator((clean_transcript(t) for t in texts), trainer=trainer)
    # Positional arguments: this binding rejects the documented keyword names (sep, cls).
    tokenizer.post_processor = processors.RobertaProcessing(
        ("</s>", tokenizer.token_to_id("</s>")), ("<s>", tokenizer.token_to_id("<s>")), True, False
    )
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    tokenizer.save(str(out_path))
    return out_path


def tokenizer_from_pretrained(name_or_dir: str | Path, out_path: str | Path) -> Path:
    """Save the fast tokenizer of a pretrained text encoder (a local directory or hub name) as tokenizer.json."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(name_or_dir), use_fast=True)
    if not getattr(tokenizer, "is_fast", False):
        raise ValueError(
            f"{name_or_dir}: its tokenizer has no fast (tokenizers library) version, so no tokenizer.json can be "
            "written for the runtime"
        )
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    tokenizer.backend_tokenizer.save(str(out_path))
    return out_path
