"""Model-directory format version 2: the audio graph normalises the waveforms itself and takes their lengths; the
reader still takes version 1 directories (normalised input and a sample mask) and answers the same."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest
import torch

from export.graphs import WaveformNorm
from mmer_rt import Recognizer
from mmer_rt.audio import audio_feeds, pad_batch, pad_waveforms
from mmer_rt.modeldir import AUDIO_INPUTS, AUDIO_INPUTS_V1, FORMAT_VERSION, ModelManifest

from test_recognizer_fixtures import noise, tiny_export, tiny_model_dir  # noqa: F401

RATE = 16_000


@pytest.fixture(scope="module")
def v1_model_dir(tiny_export, tmp_path_factory):
    from export.to_onnx import export_model_dir

    out = tmp_path_factory.mktemp("format_v1") / "model"
    export_model_dir(tiny_export[0], out, precisions=("fp32",), log=lambda line: None, format_version=1)
    return out


def _waves():
    rng = np.random.default_rng(0)
    # Quiet, loud and DC-offset rows of different lengths.
    return [(0.01 * rng.standard_normal(5_000)).astype(np.float32), (0.9 * rng.standard_normal(8_000)).astype(
        np.float32), (0.1 + 0.1 * rng.standard_normal(3_000)).astype(np.float32)]


def test_the_graph_normalises_as_the_host_did():
    raw, lengths = pad_waveforms(_waves())
    normalised, mask = pad_batch(_waves())
    assert np.array_equal(mask.sum(-1), lengths)
    with torch.no_grad():
        inside = WaveformNorm()(torch.from_numpy(raw), torch.from_numpy(lengths)).numpy()
    assert np.abs(inside - normalised).max() < 1e-4 and (inside[mask == 0] == 0).all()


def test_version_2_is_written_and_version_1_still_read_with_the_same_answers(tiny_model_dir, v1_model_dir):
    new, old = ModelManifest.read(tiny_model_dir), ModelManifest.read(v1_model_dir)
    assert new.format_version == FORMAT_VERSION == 2 and old.format_version == 1
    for directory, manifest, names in ((tiny_model_dir, new, AUDIO_INPUTS), (v1_model_dir, old, AUDIO_INPUTS_V1)):
        path = directory / manifest.variants["fp32"].graphs["audio_encoder"].file
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        assert [node.name for node in session.get_inputs()] == list(names)
        assert set(audio_feeds(_waves(), names)) == set(names)
    items = [(wave, "okay fine") for wave in _waves()] + [(noise(7_000, seed=3), None)]
    answers = {}
    for name, directory in (("v2", tiny_model_dir), ("v1", v1_model_dir)):
        recognizer = Recognizer.from_dir(directory, device="cpu", precision="fp32")
        predictions = recognizer.predict_batch(items, sample_rate=RATE)
        answers[name] = (np.array([[p.scores[label] for label in recognizer.labels] for p in predictions]),
                         [p.transcript for p in predictions])
    assert np.abs(answers["v2"][0] - answers["v1"][0]).max() < 1e-5
    assert answers["v2"][1] == answers["v1"][1]
