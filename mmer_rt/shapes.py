"""Fixed shapes for the GPU: a batch padded up to one of a few (rows, samples, tokens) buckets, so that each graph
sees a handful of shapes, which onnxruntime's CUDA graphs can capture once each (session.Graph, cuda_graphs).

Padding is exact: padded samples and tokens are masked (the graphs are batch- and padding-invariant, tested), and
a filler row repeats the batch's first row, whose answers are dropped (a copy, not silence, so that no row is
degenerate, and int8's per-batch activation range is unchanged by it). What padding costs in arithmetic on a
realistic length mix is measured by ``python -m benchmarks.buckets`` (benchmarks/README.md). A padded batch may
exceed the BatchBudget's max_seconds by that padding (at most one bucket step per row, and the filler rows).
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass
from typing import Mapping, Sequence

import numpy as np

from .audio import audio_feeds
from .modeldir import AUDIO_INPUTS

# Sample buckets every second: on 2,000 utterances of 2-10 s (uniform) in batches of up to 16, the bucketed batches
# hold 8.7% more audio than the utterances (0.5% without buckets), against 4.7% with half-second steps and 17.2%
# with 2 s steps (python -m benchmarks.buckets). Half-second steps would halve the waste but double the shapes to
# capture (26 sample widths up to 13 s instead of 13): not chosen until a GPU measures what a capture costs.
SAMPLE_STEP_SECONDS = 1.0
# Token buckets: transcripts of a 2-10 s utterance are 10-60 tokens; powers of two keep the text graphs few.
FIRST_TOKEN_BUCKET = 16


@dataclass(frozen=True)
class ShapeBuckets:
    """The padded shapes a batch may take: rows (items), samples (audio width) and tokens (text width), each
    ascending; a batch takes the smallest bucket of each that holds it."""

    rows: tuple[int, ...]
    samples: tuple[int, ...]
    tokens: tuple[int, ...]

    def __post_init__(self):
        for name in ("rows", "samples", "tokens"):
            values = getattr(self, name)
            if not values or any(isinstance(v, bool) or not isinstance(v, int) or v < 1 for v in values) \
                    or list(values) != sorted(set(values)):
                raise ValueError(f"ShapeBuckets.{name} must be positive integers in ascending order; got {values!r}")

    @classmethod
    def for_model(cls, max_items: int, max_audio_samples: int, sample_rate: int, max_text_tokens: int,
                  step_seconds: float = SAMPLE_STEP_SECONDS) -> "ShapeBuckets":
        """Rows in powers of two up to ``max_items``; samples every ``step_seconds`` up to ``max_audio_samples``;
        tokens in powers of two from 16 up to ``max_text_tokens``. Each set ends at its maximum, so every batch
        the Recognizer makes fits."""
        step = max(1, int(step_seconds * sample_rate))
        return cls(rows=_powers_of_two(1, max_items), samples=tuple(range(step, max_audio_samples, step))
                   + (max_audio_samples,), tokens=_powers_of_two(FIRST_TOKEN_BUCKET, max_text_tokens))

    def fit(self, size: int, axis: str) -> int:
        """The smallest bucket of ``axis`` ("rows", "samples" or "tokens") that holds ``size``; a size beyond the
        largest keeps its own (it runs, with a shape of its own)."""
        buckets = getattr(self, axis)
        index = bisect.bisect_left(buckets, size)
        return buckets[index] if index < len(buckets) else size

    def pad_audio(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """The audio graph's feeds (either format version: mmer_rt.audio.audio_feeds) padded to their bucket: the
        (B, N) arrays with zero samples (masked: zero mask, or beyond the row's length), every array with filler
        rows."""
        rows = self.fit(len(next(iter(feeds.values()))), "rows")
        samples = max(value.shape[1] for value in feeds.values() if value.ndim == 2)
        width = self.fit(samples, "samples")
        return {name: _pad(value, rows, width if value.ndim == 2 else None, 0) for name, value in feeds.items()}

    def pad_text(self, input_ids: np.ndarray, attention_mask: np.ndarray, pad_id: int) -> tuple[np.ndarray, np.ndarray]:
        """(B, M) token ids and their mask padded to their bucket: pad tokens, masked, and filler rows."""
        rows, width = self.fit(len(input_ids), "rows"), self.fit(input_ids.shape[1], "tokens")
        return _pad(input_ids, rows, width, pad_id), _pad(attention_mask, rows, width, 0)

    def shapes(self) -> list[tuple[int, int, int]]:
        """Every (rows, samples, tokens) combination, the shapes Recognizer.warmup runs."""
        return [(r, s, t) for r in self.rows for s in self.samples for t in self.tokens]


def warm_up(graphs: Mapping, buckets: ShapeBuckets, pad_id: int, runs: int = 1,
            audio_inputs: Sequence[str] = AUDIO_INPUTS) -> int:
    """Run each of ``buckets.shapes()`` through the audio (taking ``audio_inputs``), text and fusion graphs ``runs``
    times, fed as the Recognizer feeds them (device outputs passed on); returns the number of shapes run."""
    rng = np.random.default_rng(0)
    texts: dict[tuple[int, int], tuple] = {}
    count = 0
    for rows in buckets.rows:
        for samples in buckets.samples:
            feeds = audio_feeds(list(0.1 * rng.standard_normal((rows, samples)).astype(np.float32)), audio_inputs)
            for _ in range(runs):
                audio = graphs["audio_encoder"].run(feeds,
                                                    host_outputs=("frame_mask", "ctc_logits"),
                                                    device_outputs=("hidden_states",))
            for tokens in buckets.tokens:
                if (rows, tokens) not in texts:
                    input_ids = np.full((rows, tokens), pad_id, dtype=np.int64)
                    attention_mask = np.ones((rows, tokens), dtype=np.int64)
                    for _ in range(runs):
                        text = graphs["text_encoder"].run({"input_ids": input_ids, "attention_mask": attention_mask},
                                                          device_outputs=("token_embeddings",))
                    texts[rows, tokens] = text["token_embeddings"], attention_mask
                token_embeddings, attention_mask = texts[rows, tokens]
                for _ in range(runs):
                    graphs["fusion"].run({"hidden_states": audio["hidden_states"], "frame_mask": audio["frame_mask"],
                                          "token_embeddings": token_embeddings, "attention_mask": attention_mask},
                                         host_outputs=("logits",))
                count += 1
    return count


def padding_waste(lengths: Sequence[int], batches: Sequence[Sequence[int]], buckets: ShapeBuckets | None) -> dict:
    """Padded audio of ``batches`` (index lists into ``lengths``) over the audio itself, without and with buckets:
    ``{"batch": rows x longest / total, "bucketed": bucket rows x bucket width / total}``."""
    total = float(sum(lengths))
    plain = sum(len(b) * max(lengths[i] for i in b) for b in batches)
    if buckets is None:
        return {"batch": plain / total, "bucketed": plain / total}
    padded = sum(buckets.fit(len(b), "rows") * buckets.fit(max(lengths[i] for i in b), "samples") for b in batches)
    return {"batch": plain / total, "bucketed": padded / total}


def _pad(array: np.ndarray, rows: int, width: int | None, fill) -> np.ndarray:
    """``array`` (B, W), or (B,) with ``width`` None, padded to ``rows`` rows (filler rows repeat row 0) and
    ``width`` columns of ``fill``."""
    shape = (rows,) if width is None else (rows, width)
    if array.shape == shape:
        return array
    out = np.full(shape, fill, dtype=array.dtype)
    columns = (slice(None),) if width is None else (slice(None), slice(0, array.shape[1]))
    out[(slice(0, len(array)),) + columns[1:]] = array
    out[(slice(len(array), None),) + columns[1:]] = array[0]  # filler rows: the first row again
    return out


def _powers_of_two(first: int, last: int) -> tuple[int, ...]:
    values, value = [], first
    while value < last:
        values.append(value)
        value *= 2
    return tuple(values) + (last,)
