"""The PyTorch reference MMER model: wav2vec2 audio encoder, RoBERTa-family text encoder, cross-modal fusion, heads.

What each part computes is specified in docs/mmer-model.md; this file is the executable form of that page. The
modules here are the ones export/ traces to ONNX, so their forward passes use mask arithmetic only (multiplication
by masks, ``masked_fill``), never boolean index assignment or Python branches on tensor values.

Run ``python -m training.model --preset base`` to print the parameter counts of each component.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mmer_rt.text import CTC_VOCAB

IEMOCAP_LABELS = ("happy", "angry", "neutral", "sad")
ATTN_IMPLEMENTATIONS = ("eager", "sdpa")
# Added to the attention scores of masked keys. Large enough that exp() underflows to exactly 0 in fp32 (so it
# equals -inf masking), yet representable in fp16, so a converted graph cannot turn it into inf * 0 = NaN.
MASKED_SCORE = -10000.0


@dataclass
class MMERConfig:
    """Everything needed to rebuild an MMER model with random weights; ``checkpoint.py`` stores it as JSON.

    ``audio`` is a Wav2Vec2Config dict (hidden size Da), ``text`` a text-encoder config dict with its
    ``model_type`` (hidden size Dt). The ``*_pretrained`` names are read only by ``MMER.from_config`` on the first
    build; the config the built model keeps holds the loaded encoders' full configs, so a checkpoint never needs
    them again. Loss settings (lambda, tau, SCL form) are training choices and live in ``training/losses.py``.
    """

    labels: list[str]
    audio: dict
    text: dict
    audio_pretrained: str | None = None
    text_pretrained: str | None = None
    fusion_heads: int = 12
    fusion_ffn: int = 3072
    fusion_dropout: float = 0.1
    layer_norm_eps: float = 1e-12
    ctc_vocab_size: int = len(CTC_VOCAB)
    # The CTC head's symbols in logit order; the export writes them into the model directory. Checkpoints written
    # before this field existed used another order, which ``checkpoint.py`` fills in when reading them.
    ctc_vocab: list[str] = dataclasses.field(default_factory=lambda: list(CTC_VOCAB))
    ctc_dropout: float = 0.1
    freeze_feature_encoder: bool = True
    freeze_text_encoder: bool = True
    max_audio_samples: int = 210_000
    attn_implementation: str = "sdpa"  # "eager" or "sdpa", for both encoders and the fusion block

    def __post_init__(self):
        if not self.labels:
            raise ValueError("MMERConfig.labels is empty: give the emotion class names in logit order")
        if self.attn_implementation not in ATTN_IMPLEMENTATIONS:
            raise ValueError(
                f"MMERConfig.attn_implementation={self.attn_implementation!r}; use one of {ATTN_IMPLEMENTATIONS}"
            )
        if "model_type" not in self.text:
            raise ValueError("MMERConfig.text needs a 'model_type' (for example 'roberta' or 'bert')")
        self.ctc_vocab = list(self.ctc_vocab)
        if len(self.ctc_vocab) != self.ctc_vocab_size:
            raise ValueError(f"MMERConfig.ctc_vocab has {len(self.ctc_vocab)} symbols but ctc_vocab_size is "
                             f"{self.ctc_vocab_size}")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "MMERConfig":
        """Rebuild a config from ``to_dict()`` output; unknown or missing keys raise ValueError naming them."""
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise ValueError(f"unknown MMERConfig keys {unknown}; known keys are {sorted(names)}")
        required = {f.name for f in dataclasses.fields(cls) if f.default is dataclasses.MISSING}
        missing = sorted(required - set(d))
        if missing:
            raise ValueError(f"MMERConfig is missing the required keys {missing}")
        return cls(**d)


def tiny_config(
    labels=IEMOCAP_LABELS, group_norm: bool = True, vocab_size: int = 320, attn_implementation: str = "sdpa"
) -> MMERConfig:
    """A model of a few hundred thousand parameters for tests and demos: hidden 32, 2 layers, 80x downsampling.

    ``group_norm`` picks the wav2vec2-base front end (GroupNorm, post-LN encoder); otherwise the large/"stable"
    one (LayerNorm in every conv layer, pre-LN encoder). ``vocab_size`` must cover the tokenizer's vocabulary.
    """
    from transformers import Wav2Vec2Config

    audio = Wav2Vec2Config(
        hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
        conv_dim=(32, 32, 32), conv_kernel=(10, 3, 3), conv_stride=(5, 4, 4),
        num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=4,
        feat_extract_norm="group" if group_norm else "layer", do_stable_layer_norm=not group_norm,
        conv_bias=not group_norm, layerdrop=0.0,
    )
    return MMERConfig(
        labels=list(labels), audio=audio.to_dict(), text=_small_roberta(vocab_size, 32), fusion_heads=4, fusion_ffn=64,
        attn_implementation=attn_implementation,
    )


def small_config(labels=IEMOCAP_LABELS, vocab_size: int = 320, attn_implementation: str = "sdpa") -> MMERConfig:
    """The demo's model: wav2vec2-base's GroupNorm front end and 320x downsampling (50 frames a second) at hidden
    64 with 2 layers, and a 2-layer RoBERTa of width 64; trains on two CPU cores in minutes."""
    from transformers import Wav2Vec2Config

    audio = Wav2Vec2Config(
        hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128,
        conv_dim=(64, 64, 64, 64, 64), conv_kernel=(10, 3, 3, 2, 2), conv_stride=(5, 4, 4, 2, 2),
        num_conv_pos_embeddings=32, num_conv_pos_embedding_groups=4, feat_extract_norm="group",
        conv_bias=False, layerdrop=0.0, hidden_dropout=0.1, feat_proj_dropout=0.1,
    )
    return MMERConfig(
        labels=list(labels), audio=audio.to_dict(), text=_small_roberta(vocab_size, 64), fusion_heads=4,
        fusion_ffn=128,
        attn_implementation=attn_implementation,
    )


def _small_roberta(vocab_size: int, width: int) -> dict:
    """A 2-layer RoBERTa config of the given width, with roberta-base's special-token ids."""
    from transformers import RobertaConfig

    return RobertaConfig(
        vocab_size=vocab_size, hidden_size=width, num_hidden_layers=2, num_attention_heads=4,
        intermediate_size=2 * width, max_position_embeddings=130, type_vocab_size=1, layer_norm_eps=1e-5,
        pad_token_id=1, bos_token_id=0, eos_token_id=2,
    ).to_dict()


def base_config(labels=IEMOCAP_LABELS) -> MMERConfig:
    """The published shapes: wav2vec2-base (768 wide, 12 layers, GroupNorm front end) and RoBERTa-base."""
    from transformers import RobertaConfig, Wav2Vec2Config

    audio = Wav2Vec2Config(  # the facebook/wav2vec2-base settings that differ from Wav2Vec2Config's defaults
        layerdrop=0.05, feat_proj_dropout=0.1, activation_dropout=0.0, conv_bias=False, feat_extract_norm="group",
    )
    text = RobertaConfig(  # roberta-base
        vocab_size=50265, max_position_embeddings=514, type_vocab_size=1, layer_norm_eps=1e-5, pad_token_id=1,
        bos_token_id=0, eos_token_id=2,
    )
    return MMERConfig(labels=list(labels), audio=audio.to_dict(), text=text.to_dict())


def _disable_spec_augment(config) -> None:
    # MMER fine-tunes without SpecAugment; with mask probabilities at 0 HF also skips the masked_spec_embed weight.
    config.apply_spec_augment = False
    config.mask_time_prob = 0.0
    config.mask_feature_prob = 0.0


class AudioEncoder(nn.Module):
    """wav2vec2 made batch-invariant: its submodules run here with masks so padding never changes a valid frame.

    Three differences from ``Wav2Vec2Model.forward`` on a padded batch, all no-ops for an unpadded one:
    the first conv layer's GroupNorm (wav2vec2-base style) normalises each channel over the row's valid
    positions only; padded frames are zeroed before the positional convolution; every transformer layer gets
    an additive key mask. The positional convolution keeps HF's weight-norm parametrisation, so pretrained and
    checkpoint weights load unchanged; export/ removes it (folds the weight) before tracing.
    """

    def __init__(self, wav2vec2, freeze_feature_encoder: bool = True):
        super().__init__()
        if wav2vec2.config.add_adapter:
            raise ValueError("wav2vec2 configs with add_adapter=True are not supported: AudioEncoder runs the "
                             "encoder layers itself and has no adapter stage; use a config without adapters")
        self.wav2vec2 = wav2vec2
        self.config = wav2vec2.config
        if freeze_feature_encoder:
            wav2vec2.freeze_feature_encoder()

    @property
    def hidden_size(self) -> int:
        return self.config.hidden_size

    def frame_lengths(self, sample_lengths: Tensor) -> Tensor:
        """Output frames of the conv front end for each input length (0 when shorter than its receptive field)."""
        lengths = sample_lengths.long()
        for kernel, stride in zip(self.config.conv_kernel, self.config.conv_stride):
            lengths = conv_output_length(lengths, kernel, stride)
        return lengths

    def forward(self, input_values: Tensor, sample_mask: Tensor) -> tuple[Tensor, Tensor]:
        """input_values (B, N) normalised audio, sample_mask (B, N) -> hidden_states (B, J, Da), frame_mask (B, J).

        Padded frames of hidden_states are zero.
        """
        sample_lengths = sample_mask.long().sum(-1)
        return self.encode_features(self.conv_features(input_values, sample_lengths), sample_lengths)

    def conv_features(self, input_values: Tensor, sample_lengths: Tensor) -> Tensor:
        """The convolutional front end: (B, N) audio -> (B, J, conv_dim[-1]) features, time-major."""
        layers = self.wav2vec2.feature_extractor.conv_layers
        hidden = input_values.unsqueeze(1)
        first = 0
        if self.config.feat_extract_norm == "group":
            hidden = _masked_group_norm_conv(layers[0], hidden, sample_lengths)
            first = 1
        for layer in layers[first:]:
            hidden = layer(hidden)
        return hidden.transpose(1, 2)

    def encode_features(self, features: Tensor, sample_lengths: Tensor) -> tuple[Tensor, Tensor]:
        """Front-end features (B, J, conv_dim[-1]) -> hidden_states (B, J, Da), frame_mask (B, J).

        The seam where export/ substitutes its own rewrite of ``conv_features`` (export/frontend.py).
        """
        frame_mask = length_mask(self.frame_lengths(sample_lengths), features.shape[1])
        hidden_states, _ = self.wav2vec2.feature_projection(features)
        hidden_states = self._encode(hidden_states, frame_mask)
        return hidden_states * frame_mask.unsqueeze(-1).to(hidden_states.dtype), frame_mask

    def _encode(self, hidden_states: Tensor, frame_mask: Tensor) -> Tensor:
        encoder = self.wav2vec2.encoder
        pre_layer_norm = self.config.do_stable_layer_norm
        hidden_states = hidden_states * frame_mask.unsqueeze(-1).to(hidden_states.dtype)
        hidden_states = hidden_states + encoder.pos_conv_embed(hidden_states)
        if not pre_layer_norm:
            hidden_states = encoder.layer_norm(hidden_states)
        hidden_states = encoder.dropout(hidden_states)
        key_mask = _self_attention_mask(frame_mask, hidden_states.dtype)
        for layer in encoder.layers:
            # LayerDrop (https://arxiv.org/abs/1909.11556) as HF applies it: training only, one draw per layer.
            if self.training and self.config.layerdrop > 0.0 and torch.rand([]) < self.config.layerdrop:
                continue
            hidden_states = layer(hidden_states, attention_mask=key_mask)
        if pre_layer_norm:
            hidden_states = encoder.layer_norm(hidden_states)
        return hidden_states


def conv_output_length(lengths: Tensor, kernel: int, stride: int) -> Tensor:
    """Output length of an unpadded convolution for each input length (0 when shorter than the kernel)."""
    return torch.clamp(torch.div(lengths - kernel, stride, rounding_mode="floor") + 1, min=0)


def length_mask(lengths: Tensor, width: int) -> Tensor:
    """(B,) lengths -> (B, width) int64 mask, 1 on the first ``length`` positions of each row."""
    positions = torch.arange(width, device=lengths.device)
    return (positions.unsqueeze(0) < lengths.unsqueeze(1)).long()


def _additive_key_mask(mask: Tensor, dtype: torch.dtype) -> Tensor:
    """(B, K) 1/0 mask -> (B, 1, 1, K) scores to add: 0 on valid keys, MASKED_SCORE on padded ones."""
    return ((1.0 - mask.to(dtype)) * MASKED_SCORE)[:, None, None, :]


def _self_attention_mask(mask: Tensor, dtype: torch.dtype) -> Tensor:
    """(B, J) 1/0 mask -> (B, 1, J, J) scores to add: the values of ``_additive_key_mask``, spelled as transformers'
    own 4-D mask (expand to the query length, invert, masked_fill) because that is the form onnxruntime's Attention
    fusion recognises; the (B, 1, 1, J) form left every wav2vec2 layer unfused (export/DESIGN.md)."""
    expanded = mask[:, None, None, :].expand(-1, 1, mask.shape[1], -1).to(dtype)
    inverted = 1.0 - expanded
    return inverted.masked_fill(inverted.to(torch.bool), MASKED_SCORE)


def _masked_group_norm_conv(layer, waveform: Tensor, sample_lengths: Tensor) -> Tensor:
    """HF's Wav2Vec2GroupNormConvLayer, with each channel's statistics taken over the valid positions only."""
    conv = layer.conv(waveform)
    valid_length = conv_output_length(sample_lengths, layer.conv.kernel_size[0], layer.conv.stride[0])
    valid = length_mask(valid_length, conv.shape[-1]).to(conv.dtype).unsqueeze(1)
    count = valid.sum(-1, keepdim=True).clamp(min=1.0)  # clamp: a too-short row must not divide by zero
    mean = (conv * valid).sum(-1, keepdim=True) / count
    variance = (((conv - mean) * valid) ** 2).sum(-1, keepdim=True) / count
    norm = layer.layer_norm
    normalised = (conv - mean) / torch.sqrt(variance + norm.eps)
    normalised = normalised * norm.weight[None, :, None] + norm.bias[None, :, None]
    return layer.activation(normalised)


class TextEncoder(nn.Module):
    """A RoBERTa-family (or BERT) encoder's last hidden state; frozen by default, and then kept in eval mode."""

    def __init__(self, model, frozen: bool = True):
        super().__init__()
        self.model = model
        self.frozen = frozen
        if frozen:
            self.model.requires_grad_(False)
            self.model.eval()

    @property
    def hidden_size(self) -> int:
        return self.model.config.hidden_size

    def train(self, mode: bool = True) -> "TextEncoder":
        super().train(mode)
        if self.frozen:
            self.model.eval()  # a frozen encoder's dropout would only add noise to fixed features
        return self

    def forward(self, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
        """input_ids, attention_mask (B, M) int64 -> token_embeddings (B, M, Dt)."""
        return self.model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state


class FusionLayer(nn.Module):
    """One BERT-style post-LayerNorm transformer layer; queries and keys/values may come from different streams.

    The residual connection comes from the query stream, so the output has the query's length.
    """

    def __init__(self, hidden: int, heads: int, ffn: int, dropout: float, eps: float, attn_implementation: str):
        super().__init__()
        if hidden % heads:
            raise ValueError(f"fusion hidden size {hidden} is not divisible by fusion_heads={heads}")
        self.heads = heads
        self.attn_implementation = attn_implementation
        self.query = nn.Linear(hidden, hidden)
        self.key = nn.Linear(hidden, hidden)
        self.value = nn.Linear(hidden, hidden)
        self.attention_output = nn.Linear(hidden, hidden)
        self.attention_norm = nn.LayerNorm(hidden, eps=eps)
        self.intermediate = nn.Linear(hidden, ffn)
        self.output = nn.Linear(ffn, hidden)
        self.output_norm = nn.LayerNorm(hidden, eps=eps)
        self.dropout = nn.Dropout(dropout)

    def forward(self, query_states: Tensor, key_value_states: Tensor, key_mask: Tensor) -> Tensor:
        context = self._attend(query_states, key_value_states, _additive_key_mask(key_mask, query_states.dtype))
        attended = self.attention_norm(query_states + self.dropout(self.attention_output(context)))
        feed_forward = self.output(F.gelu(self.intermediate(attended)))  # F.gelu is the exact erf form
        return self.output_norm(attended + self.dropout(feed_forward))

    def _attend(self, query_states: Tensor, key_value_states: Tensor, scores_mask: Tensor) -> Tensor:
        query = self._split_heads(self.query(query_states))
        key = self._split_heads(self.key(key_value_states))
        value = self._split_heads(self.value(key_value_states))
        dropout = self.dropout.p if self.training else 0.0
        if self.attn_implementation == "sdpa":
            context = F.scaled_dot_product_attention(query, key, value, attn_mask=scores_mask, dropout_p=dropout)
        else:
            scores = query @ key.transpose(-1, -2) / math.sqrt(query.shape[-1]) + scores_mask
            context = F.dropout(scores.softmax(-1), p=dropout, training=self.training) @ value
        batch, _, length, _ = context.shape
        return context.transpose(1, 2).reshape(batch, length, -1)

    def _split_heads(self, states: Tensor) -> Tensor:
        batch, length, hidden = states.shape
        return states.view(batch, length, self.heads, hidden // self.heads).transpose(1, 2)


def masked_max(values: Tensor, mask: Tensor) -> Tensor:
    """Max over axis 1 of (B, L, D) values, over positions where the (B, L) mask is 1; padding never wins."""
    padded = (mask == 0).unsqueeze(-1)
    return values.masked_fill(padded, torch.finfo(values.dtype).min).amax(dim=1)


class FusionBlock(nn.Module):
    """The MMI module (docs/mmer-model.md, "Fusion" steps 1-7): text self-attention, three cross-attentions,
    a gate, masked max pools and the classifier. Returns the logits and the fused vector z = [a; m].
    """

    def __init__(self, config: MMERConfig, audio_hidden: int, text_hidden: int):
        super().__init__()
        layer_args = (text_hidden, config.fusion_heads, config.fusion_ffn, config.fusion_dropout,
                      config.layer_norm_eps, config.attn_implementation)
        self.text_dropout = nn.Dropout(config.fusion_dropout)
        self.text_self_attention = FusionLayer(*layer_args)
        self.audio_to_text_keys = nn.Linear(audio_hidden, text_hidden)  # L_a
        self.audio_to_text_queries = nn.Linear(audio_hidden, text_hidden)  # L_b
        self.text_attends_audio = FusionLayer(*layer_args)  # q
        self.audio_attends_text = FusionLayer(*layer_args)  # p
        self.text_attends_fused_audio = FusionLayer(*layer_args)  # r
        self.gate = nn.Linear(2 * text_hidden, text_hidden)
        self.text_pool_projection = nn.Linear(2 * text_hidden, text_hidden)
        self.classifier = nn.Linear(audio_hidden + text_hidden, len(config.labels))
        self.apply(_bert_init)

    def forward(
        self, hidden_states: Tensor, frame_mask: Tensor, token_embeddings: Tensor, attention_mask: Tensor
    ) -> tuple[Tensor, Tensor]:
        """A (B, J, Da), frame_mask (B, J), T0 (B, M, Dt), attention_mask (B, M) -> logits (B, C), z (B, Da+Dt)."""
        dropped = self.text_dropout(token_embeddings)
        text = self.text_self_attention(dropped, dropped, attention_mask)
        q = self.text_attends_audio(text, self.audio_to_text_keys(hidden_states), frame_mask)
        p = self.audio_attends_text(self.audio_to_text_queries(hidden_states), text, attention_mask)
        r = self.text_attends_fused_audio(text, p, frame_mask)
        g = torch.sigmoid(self.gate(torch.cat([r, q], dim=-1)))
        fused_text = torch.cat([r, g * q], dim=-1)
        m = self.text_pool_projection(masked_max(fused_text, attention_mask))
        a = masked_max(hidden_states, frame_mask)
        z = torch.cat([a, m], dim=-1)
        return self.classifier(z), z


def _bert_init(module: nn.Module) -> None:
    # The published fusion layers are BERT layers and start from BERT's initialisation.
    if isinstance(module, nn.Linear):
        nn.init.normal_(module.weight, std=0.02)
        nn.init.zeros_(module.bias)
    elif isinstance(module, nn.LayerNorm):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)


def projection_mlp(in_features: int, hidden: int) -> nn.Sequential:
    """The contrastive heads' MLP: Linear(z -> Dt), exact GELU, Linear(Dt -> Dt)."""
    return nn.Sequential(nn.Linear(in_features, hidden), nn.GELU(), nn.Linear(hidden, hidden))


@dataclass
class MMEROutput:
    """One forward pass. ``scl_embeddings`` = MLP_o(z) serves SCL and the original side of ACL;
    ``acl_embeddings`` = MLP_a(z) is used on the augmented pass only."""

    logits: Tensor
    z: Tensor
    ctc_logits: Tensor
    hidden_states: Tensor
    frame_mask: Tensor
    scl_embeddings: Tensor
    acl_embeddings: Tensor


class MMER(nn.Module):
    """The whole model: audio and text encoders, the CTC head, the fusion block and the two contrastive heads."""

    def __init__(self, config: MMERConfig, wav2vec2, text_model):
        super().__init__()
        self.config = config
        self.audio_encoder = AudioEncoder(wav2vec2, config.freeze_feature_encoder)
        self.text_encoder = TextEncoder(text_model, config.freeze_text_encoder)
        audio_hidden, text_hidden = self.audio_encoder.hidden_size, self.text_encoder.hidden_size
        self.ctc_dropout = nn.Dropout(config.ctc_dropout)
        self.ctc_head = nn.Linear(audio_hidden, config.ctc_vocab_size)
        self.fusion = FusionBlock(config, audio_hidden, text_hidden)
        self.scl_head = projection_mlp(audio_hidden + text_hidden, text_hidden)
        self.acl_head = projection_mlp(audio_hidden + text_hidden, text_hidden)

    @classmethod
    def from_config(cls, config: MMERConfig, load_pretrained: bool = True) -> "MMER":
        """Build with random weights, or with the encoders of ``audio_pretrained`` / ``text_pretrained``.

        With ``load_pretrained=False`` the ``*_pretrained`` names are ignored (``load_checkpoint`` uses this:
        the weights then come from the checkpoint). The returned model's ``config`` holds the encoders' actual
        configs, so it describes the model fully.
        """
        wav2vec2 = _build_wav2vec2(config, load_pretrained and config.audio_pretrained)
        text_model = _build_text_model(config, load_pretrained and config.text_pretrained)
        resolved = dataclasses.replace(config, audio=wav2vec2.config.to_dict(), text=text_model.config.to_dict())
        return cls(resolved, wav2vec2, text_model)

    def forward(self, input_values: Tensor, sample_mask: Tensor, input_ids: Tensor, attention_mask: Tensor) -> MMEROutput:
        hidden_states, frame_mask = self.audio_encoder(input_values, sample_mask)
        ctc_logits = self.ctc_head(self.ctc_dropout(hidden_states))
        token_embeddings = self.text_encoder(input_ids, attention_mask)
        logits, z = self.fusion(hidden_states, frame_mask, token_embeddings, attention_mask)
        return MMEROutput(logits, z, ctc_logits, hidden_states, frame_mask, self.scl_head(z), self.acl_head(z))

    def set_attn_implementation(self, name: str) -> None:
        """Switch both encoders and the fusion block to "eager" or "sdpa" attention (same weights, same maths)."""
        if name not in ATTN_IMPLEMENTATIONS:
            raise ValueError(f"attention implementation {name!r} is not one of {ATTN_IMPLEMENTATIONS}")
        self.audio_encoder.wav2vec2.set_attn_implementation(name)
        self.text_encoder.model.set_attn_implementation(name)
        for module in self.fusion.modules():
            if isinstance(module, FusionLayer):
                module.attn_implementation = name
        self.config = dataclasses.replace(self.config, attn_implementation=name)


def _build_wav2vec2(config: MMERConfig, pretrained: str | None):
    from transformers import Wav2Vec2Config, Wav2Vec2Model

    if pretrained:
        model = Wav2Vec2Model.from_pretrained(
            pretrained, attn_implementation=config.attn_implementation,
            apply_spec_augment=False, mask_time_prob=0.0, mask_feature_prob=0.0,
        )
    else:
        audio_config = Wav2Vec2Config.from_dict(config.audio)
        _disable_spec_augment(audio_config)
        model = Wav2Vec2Model(audio_config)
        model.set_attn_implementation(config.attn_implementation)
    return model


def _build_text_model(config: MMERConfig, pretrained: str | None):
    from transformers import AutoModel
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING

    # The pooler is never used: MMER reads the token embeddings.
    options = {"attn_implementation": config.attn_implementation, "add_pooling_layer": False}
    if pretrained:
        return AutoModel.from_pretrained(pretrained, **options)
    model_type = config.text["model_type"]
    if model_type not in CONFIG_MAPPING:
        raise ValueError(f"MMERConfig.text has an unknown model_type {model_type!r} for transformers")
    return AutoModel.from_config(CONFIG_MAPPING[model_type].from_dict(config.text), **options)


def count_parameters(model: nn.Module) -> dict[str, int]:
    """Parameter counts: ``total``, ``trainable`` and one entry per top-level component."""
    counts = {name: sum(p.numel() for p in child.parameters()) for name, child in model.named_children()}
    counts = {name: n for name, n in counts.items() if n}
    counts["total"] = sum(p.numel() for p in model.parameters())
    counts["trainable"] = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return counts


PRESETS = {"tiny": tiny_config, "small": small_config, "base": base_config}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description="Print the parameter counts of an MMER preset (random weights); optionally save it as a checkpoint."
    )
    parser.add_argument("--preset", choices=sorted(PRESETS), default="base")
    parser.add_argument("--save", metavar="DIR", help="write a random-weight checkpoint there (for export timing)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    torch.manual_seed(args.seed)
    model = MMER.from_config(PRESETS[args.preset]()).eval()
    for name, count in count_parameters(model).items():
        print(f"{name:<16}{count:>14,}")
    if args.save:
        import tempfile

        from .checkpoint import save_checkpoint
        from .tokenizer import build_tokenizer

        with tempfile.TemporaryDirectory() as scratch:
            # A small byte-level BPE stands in for the pretrained tokenizer: its ids fit every preset's vocabulary.
            words = ["the weather is fine today", "why would you do that", "I am so happy for you", "leave me alone"]
            tokenizer = build_tokenizer(words * 4, 320, f"{scratch}/tokenizer.json")
            print(f"saved {save_checkpoint(model, args.save, tokenizer)}")


if __name__ == "__main__":
    main()
