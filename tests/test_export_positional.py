"""export/positional.py: the positional convolution as grouped MatMuls over chunks of taps gives the Conv's values."""

from __future__ import annotations

import pytest
import torch

from export.graphs import AudioGraph, exportable_copy
from export.positional import ChunkedGroupedConv
from training.model import MMER, small_config, tiny_config


def _positional(kernel: int, bias: bool):
    from transformers import Wav2Vec2Config
    from transformers.models.wav2vec2.modeling_wav2vec2 import Wav2Vec2PositionalConvEmbedding
    from torch.nn.utils import parametrize

    torch.manual_seed(0)
    module = Wav2Vec2PositionalConvEmbedding(Wav2Vec2Config(
        hidden_size=24, num_conv_pos_embeddings=kernel, num_conv_pos_embedding_groups=4)).eval()
    parametrize.remove_parametrizations(module.conv, "weight", leave_parametrized=True)
    if not bias:
        module.conv.bias = None
    return module


@pytest.mark.parametrize("kernel", [16, 7])  # even (transformers drops the last frame) and odd
@pytest.mark.parametrize("taps_per_chunk", [1, 5, 16, 128])
@pytest.mark.parametrize("bias", [True, False])
def test_chunked_matmuls_equal_the_grouped_convolution(kernel, taps_per_chunk, bias):
    module = _positional(kernel, bias)
    hidden = torch.randn(3, 11, 24, generator=torch.Generator().manual_seed(1))
    hidden[1, 6:] = 0  # a padded row, zero beyond its length as the encoder masks it
    with torch.no_grad():
        expected = module(hidden)
        actual = ChunkedGroupedConv(module, taps_per_chunk)(hidden)
    assert actual.shape == expected.shape == hidden.shape
    assert (actual - expected).abs().max() < 1e-5 * expected.abs().max()


def test_a_bad_chunk_size_is_refused():
    with pytest.raises(ValueError, match="taps_per_chunk must be positive"):
        ChunkedGroupedConv(_positional(16, True), 0)


@pytest.mark.parametrize("make_config", [tiny_config, lambda: tiny_config(group_norm=False), small_config])
def test_audio_graph_without_any_conv_matches_the_model(make_config):
    torch.manual_seed(0)
    model = exportable_copy(MMER.from_config(make_config()).eval())
    lengths = torch.tensor([9000, 5003, 2417])
    mask = (torch.arange(9000)[None, :] < lengths[:, None]).long()
    values = torch.randn(3, 9000, generator=torch.Generator().manual_seed(2)) * mask
    conv_graph = AudioGraph(model)
    matmul_graph = AudioGraph(model, "time", "matmul")
    assert not any(isinstance(m, torch.nn.Conv1d) for m in [*matmul_graph.front_end.modules(),
                                                             *matmul_graph.positional.modules()])
    with torch.no_grad():
        expected = conv_graph(values, lengths)
        actual = matmul_graph(values, lengths)
    assert torch.equal(actual[1], expected[1])  # frame masks
    for got, want in ((actual[0], expected[0]), (actual[2], expected[2])):
        assert (got - want).abs().max() < 1e-5 * want.abs().max()
    # The swap lasts one call: the shared model keeps its own Conv for the other graphs and the CPU trace.
    assert isinstance(model.audio_encoder.wav2vec2.encoder.pos_conv_embed.conv, torch.nn.Conv1d)
    with pytest.raises(ValueError, match="positional form 'fft' is not one of conv, matmul"):
        AudioGraph(model, "time", "fft")
