"""Analytical FLOP counts of one MMER utterance, from the model's config and the utterance's true lengths.

Counted the way torch.utils.flop_counter.FlopCounterMode counts (tests/test_benchmarks_quick.py holds the two
to each other): 2 FLOPs per multiply-add in matrix products, convolutions and attention; biases, norms,
activations, softmax and masks are left out, being a few percent at most. Padding is not counted: the figure is
the useful work of each utterance, so routes that waste less on padding get no credit for it.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class UtteranceFlops:
    """FLOPs of one utterance, per component of the graphs the Recognizer runs."""

    audio_encoder: int  # conv front end, feature projection, positional conv, transformer layers, CTC head
    text_encoder: int
    fusion: int

    @property
    def total(self) -> int:
        return self.audio_encoder + self.text_encoder + self.fusion


def utterance_flops(config, num_samples: int, num_tokens: int) -> UtteranceFlops:
    """FLOPs for one utterance of ``num_samples`` audio samples and ``num_tokens`` tokens (specials included).

    ``config`` is a ``training.model.MMERConfig`` (only its plain fields are read, so this module needs no torch).
    """
    audio, text = config.audio, config.text
    frames = audio_frames(audio, num_samples)
    audio_hidden, text_hidden = audio["hidden_size"], text["hidden_size"]
    audio_flops = (
        conv_front_end_flops(audio, num_samples)
        + _linear(frames, audio["conv_dim"][-1], audio_hidden)  # feature projection
        + positional_conv_flops(audio, frames)
        + audio["num_hidden_layers"] * _layer(frames, frames, audio_hidden, audio["intermediate_size"])
        + _linear(frames, audio_hidden, config.ctc_vocab_size)
    )
    text_flops = text["num_hidden_layers"] * _layer(num_tokens, num_tokens, text_hidden, text["intermediate_size"])
    return UtteranceFlops(audio_flops, text_flops, fusion_flops(config, frames, num_tokens))


def audio_frames(audio: dict, num_samples: int) -> int:
    """Frames out of wav2vec2's conv front end (the same rule as AudioEncoder.frame_lengths)."""
    length = num_samples
    for kernel, stride in zip(audio["conv_kernel"], audio["conv_stride"]):
        length = max((length - kernel) // stride + 1, 0)
    return length


def conv_front_end_flops(audio: dict, num_samples: int) -> int:
    flops, length, channels_in = 0, num_samples, 1
    for channels_out, kernel, stride in zip(audio["conv_dim"], audio["conv_kernel"], audio["conv_stride"]):
        length = max((length - kernel) // stride + 1, 0)
        flops += 2 * length * channels_out * channels_in * kernel
        channels_in = channels_out
    return flops


def positional_conv_flops(audio: dict, frames: int) -> int:
    # Padding kernel//2 on both sides yields frames + 1 outputs for an even kernel; wav2vec2 drops the last one,
    # but only after computing it.
    kernel, groups, hidden = audio["num_conv_pos_embeddings"], audio["num_conv_pos_embedding_groups"], audio["hidden_size"]
    outputs = frames + 2 * (kernel // 2) - kernel + 1
    return 2 * outputs * hidden * (hidden // groups) * kernel


def fusion_flops(config, frames: int, tokens: int) -> int:
    """The MMI module (docs/mmer-model.md "Fusion" steps 1-7)."""
    audio_hidden, hidden, ffn = config.audio["hidden_size"], config.text["hidden_size"], config.fusion_ffn
    return (
        _layer(tokens, tokens, hidden, ffn)  # 1. text self-attention
        + 2 * _linear(frames, audio_hidden, hidden)  # L_a(A) and L_b(A)
        + _layer(tokens, frames, hidden, ffn)  # 2. q: text attends audio
        + _layer(frames, tokens, hidden, ffn)  # 3. p: audio attends text
        + _layer(tokens, frames, hidden, ffn)  # 4. r: text attends p
        + _linear(tokens, 2 * hidden, hidden)  # 5. gate
        + _linear(1, 2 * hidden, hidden)  # 6. pooled projection
        + _linear(1, audio_hidden + hidden, len(config.labels))  # 7. classifier
    )


def _layer(query_length: int, key_length: int, hidden: int, ffn: int) -> int:
    """A transformer layer: Q and output projections on the queries, K and V on the keys, attention, feed-forward."""
    projections = 2 * _linear(query_length, hidden, hidden) + 2 * _linear(key_length, hidden, hidden)
    attention = 2 * (2 * query_length * key_length * hidden)  # scores, then the weighted sum of values
    feed_forward = _linear(query_length, hidden, ffn) + _linear(query_length, ffn, hidden)
    return projections + attention + feed_forward


def _linear(rows: int, features_in: int, features_out: int) -> int:
    return 2 * rows * features_in * features_out
