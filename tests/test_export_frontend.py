"""export/frontend.py: the rewritten front end computes AudioEncoder.conv_features."""

from __future__ import annotations

import pytest
import torch

from export.frontend import FrontEnd, strided_frames
from export.graphs import exportable_copy
from training.model import MMER, small_config, tiny_config

CONFIGS = {
    "group-norm (wav2vec2-base)": lambda: tiny_config(),
    "layer-norm (wav2vec2-large)": lambda: tiny_config(group_norm=False),
    "group-norm, 320x downsampling": lambda: small_config(),
}


def _audio_encoder(name: str, conv_bias: bool = False):
    torch.manual_seed(0)
    config = CONFIGS[name]()
    config.audio["conv_bias"] = conv_bias or config.audio["conv_bias"]
    return exportable_copy(MMER.from_config(config).eval()).audio_encoder


def _padded(lengths: list[int], scale: float = 1.0, offset: float = 0.0) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(1)
    lengths_tensor = torch.tensor(lengths)
    valid = torch.arange(max(lengths))[None, :] < lengths_tensor[:, None]
    values = (torch.randn(len(lengths), max(lengths), generator=generator) * scale + offset) * valid
    return values, lengths_tensor


@pytest.mark.parametrize("layout", ["channels", "time"])
@pytest.mark.parametrize("name", list(CONFIGS))
def test_front_end_matches_the_model_on_a_padded_batch(name, layout):
    encoder = _audio_encoder(name, conv_bias=layout == "time")  # the time layout's bias path too
    values, lengths = _padded([9000, 5003, 2417])
    with torch.no_grad():
        expected = encoder.conv_features(values, lengths)
        actual = FrontEnd(encoder, layout)(values, lengths)
    assert actual.shape == expected.shape
    assert (actual - expected).abs().max() < 1e-5 * expected.abs().max()


def test_time_layout_runs_the_later_layers_as_matmuls_and_refuses_unknown_layouts():
    encoder = _audio_encoder("group-norm (wav2vec2-base)")
    front_end = FrontEnd(encoder, "time")
    assert not any(isinstance(module, torch.nn.Conv1d) for module in front_end.modules())
    with pytest.raises(ValueError, match="front-end layout 'rows' is not one of channels, time"):
        FrontEnd(encoder, "rows")


def test_folded_group_norm_keeps_its_precision_on_loud_and_offset_audio():
    encoder = _audio_encoder("group-norm (wav2vec2-base)", conv_bias=True)
    for scale, offset in ((30.0, 0.0), (0.01, 5.0)):  # far beyond normalised audio: large, and mostly DC
        values, lengths = _padded([12_000, 7000], scale, offset)
        with torch.no_grad():
            expected = encoder.conv_features(values, lengths)
            actual = FrontEnd(encoder)(values, lengths)
        assert (actual - expected).abs().max() < 1e-4 * expected.abs().max(), (scale, offset)


def test_a_row_shorter_than_the_receptive_field_stays_finite():
    encoder = _audio_encoder("group-norm (wav2vec2-base)")
    values, lengths = _padded([4000, 7])  # the second row yields no frame at all
    with torch.no_grad():
        features = FrontEnd(encoder)(values, lengths)
    assert torch.isfinite(features).all()


def test_strided_frames_lays_each_window_side_by_side():
    hidden = torch.arange(2 * 9 * 2, dtype=torch.float32).reshape(2, 9, 2)
    frames = strided_frames(hidden, kernel=3, stride=2)  # windows at 0, 2, 4, 6
    assert frames.shape == (2, 4, 6)
    assert torch.equal(frames[1, 2], hidden[1, 4:7].reshape(-1))
    pairs = strided_frames(hidden, kernel=2, stride=2)  # the 9th position is left over
    assert pairs.shape == (2, 4, 4) and torch.equal(pairs[0, 3], hidden[0, 6:8].reshape(-1))
    blocks = strided_frames(hidden, kernel=4, stride=2)  # windows of two stride-long blocks: 0, 2, 4
    assert blocks.shape == (2, 3, 8) and torch.equal(blocks[1, 2], hidden[1, 4:8].reshape(-1))

