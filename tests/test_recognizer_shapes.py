"""Fixed shapes for the GPU (mmer_rt/shapes.py): padded buckets give each utterance its answer alone, warmup runs
every bucket, and the CUDA-graph runner's buffers and bindings (mmer_rt/cudagraphs.py, rehearsed on the CPU)."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest

from mmer_rt import Recognizer
from mmer_rt.cudagraphs import CapturedRuns
from mmer_rt.errors import DeviceError
from mmer_rt.audio import audio_feeds
from mmer_rt.modeldir import AUDIO_INPUTS, AUDIO_INPUTS_V1, AUDIO_OUTPUTS, FUSION_INPUTS, FUSION_OUTPUTS, ModelManifest
from mmer_rt.session import Graph, open_session
from mmer_rt.shapes import ShapeBuckets, padding_waste

from test_recognizer_fixtures import TINY_MAX_AUDIO_SAMPLES, cuda_starts, noise, tiny_export, tiny_model_dir  # noqa: F401

RATE = 16_000
# Small buckets for the tiny model (0.5 s of audio at most): every batch below pads in rows, samples and tokens.
BUCKETS = ShapeBuckets(rows=(1, 4), samples=(2_000, 5_000, TINY_MAX_AUDIO_SAMPLES), tokens=(16, 64, 128))
LENGTHS = (1_300, 7_700, 4_100)
TEXTS = ("oh wow you came back for me", None, "we lost the house")


@pytest.fixture(scope="module")
def fp16_model_dir(tiny_export, tmp_path_factory):
    """The shared tiny checkpoint exported with fp32 and fp16 (the CPU provider runs fp16 graphs too)."""
    from export.to_onnx import export_model_dir

    out = tmp_path_factory.mktemp("shapes") / "model"
    export_model_dir(tiny_export[0], out, precisions=("fp32", "fp16"), log=lambda line: None)
    return out


def _items():
    return [(noise(n, seed=i, amplitude=0.1 * (i + 1)), text) for i, (n, text) in enumerate(zip(LENGTHS, TEXTS))]


def _probabilities(predictions, labels):
    return np.array([[p.scores[label] for label in labels] for p in predictions])


@pytest.mark.parametrize("precision, tolerance", [("fp32", 1e-5), ("fp16", 2e-3)])
def test_an_utterance_in_a_padded_bucket_gets_its_answer_alone(fp16_model_dir, precision, tolerance):
    bucketed = Recognizer.from_dir(fp16_model_dir, device="cpu", precision=precision, shapes=BUCKETS)
    plain = Recognizer.from_dir(fp16_model_dir, device="cpu", precision=precision, shapes=None)
    assert bucketed.shapes == BUCKETS and plain.shapes is None
    seen = []
    inner = bucketed._graphs["audio_encoder"].run
    bucketed._graphs["audio_encoder"].run = lambda feeds, **kw: seen.append(feeds["waveforms"].shape) or \
        inner(feeds, **kw)
    together = bucketed.predict_batch(_items(), sample_rate=RATE)
    assert seen == [(4, TINY_MAX_AUDIO_SAMPLES)]  # 3 rows padded to 4, 7,700 samples to 8,000
    alone = [plain.predict_batch([item], sample_rate=RATE)[0] for item in _items()]
    assert np.abs(_probabilities(together, plain.labels) - _probabilities(alone, plain.labels)).max() < tolerance
    assert [p.label for p in together] == [p.label for p in alone]
    assert [p.transcript for p in together] == [p.transcript for p in alone]  # the CTC row too


def test_warmup_runs_every_bucket_through_the_three_graphs(fp16_model_dir):
    recognizer = Recognizer.from_dir(fp16_model_dir, device="cpu", precision="fp32", shapes=BUCKETS)
    shapes = {name: set() for name in recognizer._graphs}
    for name, graph in recognizer._graphs.items():
        def run(feeds, _inner=graph.run, _name=name, **kw):
            shapes[_name].add(tuple(np.asarray(v).shape if not isinstance(v, ort.OrtValue) else tuple(v.shape())
                                    for v in feeds.values()))
            return _inner(feeds, **kw)
        graph.run = run
    assert recognizer.warmup() == len(BUCKETS.shapes()) == 2 * 3 * 3
    assert {s[0] for s in shapes["audio_encoder"]} == {(r, n) for r in BUCKETS.rows for n in BUCKETS.samples}
    assert {s[0] for s in shapes["text_encoder"]} == {(r, t) for r in BUCKETS.rows for t in BUCKETS.tokens}
    assert len(shapes["fusion"]) == len(BUCKETS.shapes())
    assert Recognizer.from_dir(fp16_model_dir, device="cpu", precision="fp32").warmup() == 0  # "auto": none on CPU


def test_bad_shape_settings_are_refused(fp16_model_dir):
    with pytest.raises(DeviceError, match="cuda_graphs=True needs the CUDA device"):
        Recognizer.from_dir(fp16_model_dir, device="cpu", cuda_graphs=True)
    with pytest.raises(ValueError, match="shapes must be 'auto', None or a ShapeBuckets"):
        Recognizer.from_dir(fp16_model_dir, device="cpu", shapes="fixed")
    with pytest.raises(ValueError, match="ShapeBuckets.rows must be positive integers in ascending order"):
        ShapeBuckets(rows=(4, 1), samples=(100,), tokens=(16,))


def test_buckets_for_a_model_cover_every_batch_it_can_make():
    buckets = ShapeBuckets.for_model(max_items=16, max_audio_samples=208_000, sample_rate=RATE, max_text_tokens=512)
    assert buckets.rows == (1, 2, 4, 8, 16) and buckets.tokens == (16, 32, 64, 128, 256, 512)
    assert buckets.samples[0] == RATE and buckets.samples[-1] == 208_000 and len(buckets.samples) == 13
    assert buckets.fit(3, "rows") == 4 and buckets.fit(RATE + 1, "samples") == 2 * RATE
    assert buckets.fit(600, "tokens") == 600  # beyond the largest: its own shape
    for feeds in (audio_feeds([np.array([1.0, 2.0], np.float32), np.array([3.0], np.float32)], AUDIO_INPUTS),
                  audio_feeds([np.array([1.0, 2.0], np.float32), np.array([3.0], np.float32)], AUDIO_INPUTS_V1)):
        padded = buckets.pad_audio(feeds)  # either format version: filler rows repeat row 0, new samples are 0
        values = padded.get("waveforms", padded.get("input_values"))
        assert values.shape == (2, RATE) and values[:, 2:].sum() == 0 and np.array_equal(values[0, :2], feeds[
            "waveforms" if "waveforms" in feeds else "input_values"][0])
        if "sample_lengths" in padded:
            assert padded["sample_lengths"].tolist() == [2, 1]
        else:
            assert padded["sample_mask"].sum(-1).tolist() == [2, 1]
    three = buckets.pad_audio(audio_feeds([np.ones(5, np.float32)] * 2 + [np.ones(3, np.float32)], AUDIO_INPUTS))
    assert three["sample_lengths"].tolist() == [5, 5, 3, 5] and three["waveforms"].shape == (4, RATE)
    ids, attention = buckets.pad_text(np.array([[0, 5, 2]]), np.array([[1, 1, 1]]), pad_id=1)
    assert ids.shape == (1, 16) and (ids[0, 3:] == 1).all() and attention.sum() == 3
    # The waste helper: one batch of 3 rows of 1 s, 2 s, 3 s, padded to 3 x 3 s, then to 4 x 3 s.
    lengths = [RATE, 2 * RATE, 3 * RATE]
    assert padding_waste(lengths, [[2, 1, 0]], buckets) == {"batch": 1.5, "bucketed": 2.0}


def test_captured_runs_keep_a_shape_s_buffers_and_feed_device_outputs_on(tiny_model_dir):
    # The CUDA-graph runner's bookkeeping on CPU OrtValues (the capture itself needs a GPU): a buffer set and a
    # binding per shape, filled in place on each run, the same output buffers again for the same shape, a new set
    # for a new one, and an OrtValue output fed on to the next graph.
    manifest = ModelManifest.read(tiny_model_dir)
    path = lambda name: tiny_model_dir / manifest.variants["fp32"].graphs[name].file  # noqa: E731
    plain = Graph(open_session(path("audio_encoder"), "cpu"), "audio_encoder", AUDIO_INPUTS, AUDIO_OUTPUTS)
    audio = Graph(open_session(path("audio_encoder"), "cpu"), "audio_encoder", AUDIO_INPUTS, AUDIO_OUTPUTS)
    audio.captured = CapturedRuns(audio.session, device="cpu")
    fusion = Graph(open_session(path("fusion"), "cpu"), "fusion", FUSION_INPUTS, FUSION_OUTPUTS)
    outputs = []
    for seed in (0, 1):
        feeds = audio_feeds(list(noise(2 * 3_000, seed).reshape(2, 3_000)), AUDIO_INPUTS)
        got = audio.run(feeds, host_outputs=("frame_mask",), device_outputs=("hidden_states",))
        want = plain.run(feeds, host_outputs=("frame_mask", "hidden_states"))
        assert isinstance(got["hidden_states"], ort.OrtValue)
        assert np.array_equal(got["hidden_states"].numpy(), want["hidden_states"])
        assert np.array_equal(got["frame_mask"], want["frame_mask"])
        outputs.append(got["hidden_states"].data_ptr())
    assert outputs[0] == outputs[1] and audio.captured.captured == 1  # one shape, one set of buffers
    audio.run(audio_feeds([noise(4_000)], AUDIO_INPUTS), host_outputs=("frame_mask",))
    assert audio.captured.captured == 2
    frames = got["frame_mask"].shape[1]
    logits = fusion.run({"hidden_states": got["hidden_states"], "frame_mask": got["frame_mask"],
                         "token_embeddings": np.zeros((2, 5, 32), np.float32),
                         "attention_mask": np.ones((2, 5), np.int64)}, host_outputs=("logits",))["logits"]
    assert logits.shape[0] == 2 and frames > 0 and np.isfinite(logits).all()


@pytest.mark.gpu
@pytest.mark.skipif(not cuda_starts(), reason="needs a CUDA GPU and onnxruntime-gpu whose CUDA provider starts")
def test_cuda_graphs_replay_each_bucket_with_the_answers_of_plain_runs(fp16_model_dir):
    # The part of mmer_rt/cudagraphs.py the CPU cannot rehearse: capture and replay (scripts/gpu_bench.sh smoke).
    graphs = Recognizer.from_dir(fp16_model_dir, device="cuda", precision="fp16", shapes=BUCKETS, cuda_graphs=True)
    plain = Recognizer.from_dir(fp16_model_dir, device="cpu", precision="fp32", shapes=None)
    assert graphs.warmup() == len(BUCKETS.shapes())
    want = _probabilities(plain.predict_batch(_items(), sample_rate=RATE), plain.labels)
    for _ in range(2):  # replayed, on buffers filled anew
        got = _probabilities(graphs.predict_batch(_items(), sample_rate=RATE), plain.labels)
        assert np.abs(got - want).max() < 2e-2
    alone = _probabilities([graphs.predict_batch([item], sample_rate=RATE)[0] for item in _items()], plain.labels)
    assert np.abs(alone - want).max() < 2e-2
