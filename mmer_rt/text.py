"""Transcript rules shared by training and serving: cleaning, tokenisation and the CTC character vocabulary."""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from .errors import TextError

# The character vocabulary of the wav2vec2 CTC tokenizer (facebook/wav2vec2-base's vocab.json), in its own id
# order, which the authors' released CTC head uses: blank/pad is 0, "|" delimits words, K is 26 and the
# apostrophe 27. Trained models and model directories record the vocabulary they were made with, so this default
# only applies to new ones.
CTC_VOCAB: tuple[str, ...] = (
    "<pad>", "<s>", "</s>", "<unk>", "|",
    "E", "T", "A", "O", "N", "I", "H", "S", "R", "D", "L", "U", "M", "W", "C",
    "F", "G", "Y", "P", "B", "V", "K", "'", "X", "J", "Q", "Z",
)
CTC_BLANK = 0
CTC_WORD_DELIMITER = "|"

# The text-cleaning rule, recorded by name in every model directory so that a reader can refuse one it lacks.
TEXT_CLEANING_RULE = "strip-bracketed-spans+collapse-whitespace/v1"
_BRACKETED = re.compile(r"\[[^\]]*\]")
_WHITESPACE = re.compile(r"\s+")


def clean_transcript(text: str) -> str:
    """Remove bracketed spans such as ``[LAUGHTER]`` and collapse white space."""
    if not isinstance(text, str):
        raise TextError(f"transcript must be a str, got {type(text).__name__}")
    return _WHITESPACE.sub(" ", _BRACKETED.sub(" ", text)).strip()


def ctc_targets(text: str, vocab: Sequence[str] = CTC_VOCAB) -> list[int]:
    """CTC label ids in ``vocab`` for a transcript: upper-cased, words joined by "|", characters outside the
    vocabulary dropped."""
    index = _ctc_index(tuple(vocab))
    words = clean_transcript(text).upper().split(" ")
    ids: list[int] = []
    for word in words:
        chars = [index[c] for c in word if c in index and len(c) == 1 and c != CTC_WORD_DELIMITER]
        if not chars:
            continue
        if ids:
            ids.append(index[CTC_WORD_DELIMITER])
        ids.extend(chars)
    return ids


@functools.lru_cache(maxsize=8)
def _ctc_index(vocab: tuple[str, ...]) -> dict[str, int]:
    if CTC_WORD_DELIMITER not in vocab or vocab[CTC_BLANK] != "<pad>":
        raise TextError(f"a CTC vocabulary needs <pad> (the blank) at {CTC_BLANK} and the word delimiter "
                        f"{CTC_WORD_DELIMITER!r}; got {list(vocab)[:6]}...")
    return {symbol: i for i, symbol in enumerate(vocab)}


def ctc_greedy_decode(logits: np.ndarray, num_frames: int | None = None, vocab: Sequence[str] = CTC_VOCAB) -> str:
    """Best-path decoding of one utterance's CTC logits (frames x vocabulary): argmax, merge repeats, drop blanks."""
    best = np.asarray(logits)[: num_frames if num_frames is not None else len(logits)].argmax(-1)
    chars: list[str] = []
    previous = -1
    for index in best.tolist():
        if index != previous and index != CTC_BLANK:
            symbol = vocab[index]
            if symbol == CTC_WORD_DELIMITER:
                chars.append(" ")
            elif not (symbol.startswith("<") and symbol.endswith(">")):
                chars.append(symbol)
        previous = index
    return _WHITESPACE.sub(" ", "".join(chars)).strip()


@dataclass
class EncodedText:
    """A padded batch of token ids and its attention mask, both int64 of shape (batch, tokens)."""

    input_ids: np.ndarray
    attention_mask: np.ndarray


class TextTokenizer:
    """The text encoder's tokenizer, read from a Hugging Face ``tokenizer.json`` with the ``tokenizers`` library.

    The file's own post-processor adds the special tokens (``<s>`` ... ``</s>`` for RoBERTa), so training and
    serving tokenise identically from the same file.
    """

    def __init__(self, path: str | Path, max_tokens: int = 512):
        from tokenizers import Tokenizer

        self.path = Path(path)
        if not self.path.is_file():
            raise FileNotFoundError(f"tokenizer file not found: {self.path}")
        self._tokenizer = Tokenizer.from_file(str(self.path))
        self._tokenizer.no_padding()
        self._tokenizer.enable_truncation(max_tokens)
        pad = self._tokenizer.token_to_id("<pad>")
        if pad is None:
            pad = self._tokenizer.token_to_id("[PAD]")
        if pad is None:
            raise TextError(f"{self.path} defines neither a <pad> nor a [PAD] token")
        self.pad_id = pad
        self.max_tokens = max_tokens

    def encode_batch(self, texts: Sequence[str]) -> EncodedText:
        """Clean and tokenise transcripts, right-padded to the longest one."""
        if not texts:
            raise TextError("the batch of transcripts is empty")
        encodings = self._tokenizer.encode_batch([clean_transcript(t) for t in texts])
        width = max(len(e.ids) for e in encodings)
        ids = np.full((len(texts), width), self.pad_id, dtype=np.int64)
        mask = np.zeros((len(texts), width), dtype=np.int64)
        for row, encoding in enumerate(encodings):
            ids[row, : len(encoding.ids)] = encoding.ids
            mask[row, : len(encoding.ids)] = 1
        return EncodedText(ids, mask)
