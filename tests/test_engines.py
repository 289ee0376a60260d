"""The engines (mmer_rt/engines.py): OpenVINO against onnxruntime on the same model directory, bf16 and fp32, batch
invariance, threads, thread safety, errors, the bf16 GroupConvolution rewrite, engine="auto" and the export's record."""

from __future__ import annotations

import json
import shutil
import sys
import threading

import numpy as np
import pytest

from mmer_rt import BatchBudget, DeviceError, ModelDirError, Recognizer, Utterance, engines
from mmer_rt.modeldir import MANIFEST_NAME, sha256_file
from test_recognizer_fixtures import tiny_export, tiny_model_dir  # noqa: F401

openvino = pytest.importorskip("openvino", reason="the openvino extra is not installed")
BF16 = engines.bf16_supported()
needs_bf16 = pytest.mark.skipif(not BF16, reason="this CPU has no bf16 dot products (AMX or AVX512-BF16)")

RATE = 16_000
# bf16 keeps 8 bits of mantissa: on the tiny random model its probabilities stayed within 1e-3 of fp32's (5e-4
# measured); the audio graph's hidden states within 5% of their largest magnitude (2% measured).
BF16_PROBABILITY_TOLERANCE = 5e-3
BF16_HIDDEN_RELATIVE_TOLERANCE = 0.05
ITEMS = [(700, "oh wow you came back for me"), (7_900, None), (2_500, "okay fine"), (4_100, "we lost the house"),
         (1_300, "leave me alone please"), (6_000, None)]


def noise(samples: int, seed: int = 0) -> np.ndarray:
    return (0.1 * np.random.default_rng(seed).standard_normal(samples)).astype(np.float32)


def utterances():
    return [Utterance(noise(n, seed=i), text, RATE) for i, (n, text) in enumerate(ITEMS)]


def probabilities(recognizer, predictions) -> np.ndarray:
    return np.array([[p.scores[label] for label in recognizer.labels] for p in predictions])


@pytest.fixture(scope="module")
def onnxruntime_fp32(tiny_model_dir):
    return Recognizer.from_dir(tiny_model_dir, device="cpu", precision="fp32", threads=1)


@pytest.fixture(scope="module", params=["fp32", pytest.param("bf16", marks=needs_bf16)])
def openvino_recognizer(request, tiny_model_dir):
    return Recognizer.from_dir(tiny_model_dir, device="cpu", engine="openvino", precision=request.param, threads=1)


def test_openvino_matches_onnxruntime(openvino_recognizer, onnxruntime_fp32):
    assert openvino_recognizer.engine == "openvino" and onnxruntime_fp32.engine == "onnxruntime"
    assert openvino_recognizer.providers == [f"OpenVINO CPU ({openvino_recognizer.precision})"]
    expected = probabilities(onnxruntime_fp32, onnxruntime_fp32.predict_batch(utterances()))
    got = probabilities(openvino_recognizer, openvino_recognizer.predict_batch(utterances()))
    tolerance = 1e-5 if openvino_recognizer.precision == "fp32" else BF16_PROBABILITY_TOLERANCE
    np.testing.assert_allclose(got, expected, atol=tolerance)
    if openvino_recognizer.precision == "fp32":
        # CTC transcripts come from the audio graph's own logits: the same words in both engines. (Not in bf16: a
        # random model's CTC logits are full of near ties, and bf16 flips a few characters of its gibberish.)
        assert [p.transcript for p in openvino_recognizer.predict_batch(utterances())] == \
            [p.transcript for p in onnxruntime_fp32.predict_batch(utterances())]


@needs_bf16
def test_bf16_hidden_states_stay_close_to_fp32(tiny_model_dir):
    # The probabilities of a random tiny model barely move even when an encoder is badly wrong (a broken bf16
    # GroupConvolution moved them by 1.5e-2 while the hidden states were off by 1.9, as large as the values), so
    # the audio graph's output is checked directly.
    from mmer_rt.audio import audio_feeds
    from mmer_rt.modeldir import ModelManifest, audio_inputs

    manifest = ModelManifest.read(tiny_model_dir)
    path = tiny_model_dir / manifest.variants["fp32"].graphs["audio_encoder"].file
    feeds = audio_feeds([noise(n, seed=i) for i, (n, _) in enumerate(ITEMS)], audio_inputs(manifest.format_version))
    outputs = ("hidden_states", "frame_mask")
    version = manifest.format_version
    fp32 = engines.open_openvino_graph(path, "audio_encoder", "fp32", 1, version).run(feeds, outputs)
    bf16 = engines.open_openvino_graph(path, "audio_encoder", "bf16", 1, version).run(feeds, outputs)
    valid = fp32["frame_mask"].astype(bool)
    scale = np.abs(fp32["hidden_states"][valid]).max()
    assert np.abs(bf16["hidden_states"][valid] - fp32["hidden_states"][valid]).max() < \
        BF16_HIDDEN_RELATIVE_TOLERANCE * scale


@pytest.mark.parametrize("channels_per_group, rewritten", [(8, 1), (16, 0), (2, 0)])
def test_narrow_group_convolutions_are_rewritten_to_exact_dense_ones(channels_per_group, rewritten):
    ops = openvino.opset13
    groups, kernel = 4, 16
    channels = groups * channels_per_group
    rng = np.random.default_rng(0)
    weight = (0.1 * rng.standard_normal((groups, channels_per_group, channels_per_group, kernel))).astype(np.float32)
    source = ops.parameter([-1, channels, -1], np.float32)

    def model():
        out = ops.group_convolution(source, ops.constant(weight), [1], [kernel // 2], [kernel // 2], [1])
        return openvino.Model([out], [source])

    inputs = rng.standard_normal((2, channels, 120)).astype(np.float32)
    core = openvino.Core()
    expected = core.compile_model(model(), "CPU", {"INFERENCE_PRECISION_HINT": "f32"}).create_infer_request() \
        .infer({0: inputs})[0]
    changed = model()
    assert engines.dense_small_group_convolutions(changed) == rewritten
    got = core.compile_model(changed, "CPU", {"INFERENCE_PRECISION_HINT": "f32"}).create_infer_request() \
        .infer({0: inputs})[0]
    np.testing.assert_allclose(got, expected, atol=1e-5)  # the rewrite is exact in fp32
    if BF16:
        in_bf16 = core.compile_model(changed, "CPU", {"INFERENCE_PRECISION_HINT": "bf16"}).create_infer_request() \
            .infer({0: inputs})[0]
        assert np.abs(in_bf16 - expected).max() < 0.02 * np.abs(expected).max()


def test_same_answer_alone_or_in_any_batch(openvino_recognizer):
    items = utterances()
    alone = np.concatenate([probabilities(openvino_recognizer, openvino_recognizer.predict_batch([item]))
                            for item in items])
    together = probabilities(openvino_recognizer, openvino_recognizer.predict_batch(items))
    reverse = probabilities(openvino_recognizer, openvino_recognizer.predict_batch(items[::-1])[::-1])
    # fp32 as onnxruntime's fp32 is; bf16 was measured exactly batch-invariant here too (its products accumulate in
    # fp32 per row), but the tolerance allows for kernels that block rows differently by batch size.
    tolerance = 1e-6 if openvino_recognizer.precision == "fp32" else 1e-3
    np.testing.assert_allclose(together, alone, atol=tolerance)
    np.testing.assert_allclose(reverse, alone, atol=tolerance)


def test_thread_count_reaches_the_plugin(tiny_model_dir):
    recognizer = Recognizer.from_dir(tiny_model_dir, device="cpu", engine="openvino", precision="fp32", threads=2)
    for graph in recognizer._graphs.values():
        assert graph.compiled.get_property("INFERENCE_NUM_THREADS") == 2
    with pytest.raises(ValueError, match="threads must be a positive integer"):
        Recognizer.from_dir(tiny_model_dir, device="cpu", engine="openvino", threads=0)


def test_predictions_from_several_threads_equal_serial_ones(openvino_recognizer):
    items = utterances()
    serial = [probabilities(openvino_recognizer, [openvino_recognizer.predict_batch([item])[0]]) for item in items]
    results: dict[int, np.ndarray] = {}

    def work(index: int) -> None:
        for _ in range(3):
            results[index] = probabilities(openvino_recognizer, openvino_recognizer.predict_batch([items[index]]))

    threads = [threading.Thread(target=work, args=(i,)) for i in range(len(items))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for index, expected in enumerate(serial):
        np.testing.assert_array_equal(results[index], expected)


# --- choosing a precision, and errors -------------------------------------------------------------------------------

def test_auto_precision_is_bf16_exactly_where_the_cpu_has_bf16_dot_products(tiny_model_dir, monkeypatch):
    chosen = Recognizer.from_dir(tiny_model_dir, device="cpu", engine="openvino", threads=1)
    assert chosen.precision == ("bf16" if BF16 else "fp32")
    monkeypatch.setattr(engines, "cpu_flags", lambda: frozenset({"avx512f", "avx512_vnni"}))  # no bf16
    assert not engines.bf16_supported()
    assert Recognizer.from_dir(tiny_model_dir, device="cpu", engine="openvino", threads=1).precision == "fp32"
    with pytest.raises(DeviceError, match="neither AMX-BF16 nor AVX512-BF16"):
        Recognizer.from_dir(tiny_model_dir, device="cpu", engine="openvino", precision="bf16")


@pytest.mark.parametrize("precision", ["int8", "fp16"])
def test_onnxruntime_variants_are_refused_under_openvino(tiny_model_dir, precision):
    with pytest.raises(DeviceError, match=f"precision='{precision}' is an onnxruntime variant"):
        Recognizer.from_dir(tiny_model_dir, device="cpu", engine="openvino", precision=precision)


def test_bad_engine_names_and_devices(tiny_model_dir, monkeypatch):
    with pytest.raises(ValueError, match="engine must be one of onnxruntime, openvino, auto; got 'tensorrt'"):
        Recognizer.from_dir(tiny_model_dir, engine="tensorrt")
    with pytest.raises(ValueError, match="precision must be one of auto, bf16, fp32 with engine='openvino'"):
        Recognizer.from_dir(tiny_model_dir, device="cpu", engine="openvino", precision="double")
    import onnxruntime

    monkeypatch.setattr(onnxruntime, "get_available_providers", lambda: ["CUDAExecutionProvider", "CPUExecutionProvider"])
    with pytest.raises(DeviceError, match="engine='openvino' runs on the CPU"):
        Recognizer.from_dir(tiny_model_dir, device="cuda", engine="openvino")


def test_missing_openvino_is_a_clear_error(tiny_model_dir, monkeypatch):
    monkeypatch.setitem(sys.modules, "openvino", None)  # makes `import openvino` raise ImportError
    monkeypatch.setattr(engines, "_CORE", None)
    with pytest.raises(DeviceError, match=r"pip install 'mmer-rt\[openvino\]'"):
        Recognizer.from_dir(tiny_model_dir, device="cpu", engine="openvino")
    chosen = Recognizer.from_dir(tiny_model_dir, device="cpu", engine="auto", threads=1)
    assert chosen.engine == "onnxruntime" and chosen.engine_choice["reason"] == "openvino is not installed"


@pytest.fixture
def model_copy(tiny_model_dir, tmp_path):
    return shutil.copytree(tiny_model_dir, tmp_path / "model")


def test_a_graph_openvino_cannot_read_is_a_model_dir_error(model_copy):
    graph = model_copy / "fp32" / "fusion.onnx"
    graph.write_bytes(b"not an onnx file")
    manifest = json.loads((model_copy / MANIFEST_NAME).read_text())
    manifest["variants"]["fp32"]["graphs"]["fusion"]["sha256"] = sha256_file(graph)
    (model_copy / MANIFEST_NAME).write_text(json.dumps(manifest))
    with pytest.raises(ModelDirError, match="fusion.onnx: OpenVINO cannot load this graph"):
        Recognizer.from_dir(model_copy, device="cpu", engine="openvino", precision="fp32")


def test_a_directory_without_fp32_is_refused(model_copy):
    manifest = json.loads((model_copy / MANIFEST_NAME).read_text())
    del manifest["variants"]["fp32"]
    (model_copy / MANIFEST_NAME).write_text(json.dumps(manifest))
    with pytest.raises(ModelDirError, match="holds no fp32 variant, which engine='openvino' reads"):
        Recognizer.from_dir(model_copy, device="cpu", engine="openvino")


# --- engine="auto" ---------------------------------------------------------------------------------------------------

@pytest.fixture
def cache_home(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    return tmp_path / "cache"


@pytest.mark.parametrize("faster", ["onnxruntime", "openvino"])
def test_auto_takes_the_faster_engine_and_remembers_it(tiny_model_dir, cache_home, monkeypatch, faster):
    timed = []

    def fake_timing(recognizers, sample_rate, max_samples):
        timed.append(sorted(recognizers))
        return {name: (1.0 if name == faster else 2.0) for name in recognizers}

    monkeypatch.setattr(engines, "time_engines", fake_timing)
    first = Recognizer.from_dir(tiny_model_dir, device="cpu", engine="auto", threads=1)
    assert first.engine == faster and first.engine_choice["reason"] == "measured now"
    assert timed == [["onnxruntime", "openvino"]]
    assert first.engine_choice["seconds"] == {faster: 1.0, ({"onnxruntime", "openvino"} - {faster}).pop(): 2.0}
    assert (cache_home / "mmer-rt" / engines.CACHE_NAME).is_file()

    again = Recognizer.from_dir(tiny_model_dir, device="cpu", engine="auto", threads=1)
    assert again.engine == faster and again.engine_choice["reason"].startswith("measured before")
    assert len(timed) == 1  # the cached choice: nothing timed
    Recognizer.from_dir(tiny_model_dir, device="cpu", engine="auto", threads=2)
    assert len(timed) == 2  # another thread count is another measurement


def test_auto_times_both_engines_for_real(tiny_model_dir, cache_home):
    chosen = Recognizer.from_dir(tiny_model_dir, device="cpu", engine="auto", threads=1)
    seconds = chosen.engine_choice["seconds"]
    assert set(seconds) == {"onnxruntime", "openvino"} and all(value > 0 for value in seconds.values())
    assert chosen.engine == min(seconds, key=seconds.get)
    prediction = chosen.predict(noise(4_000), "okay fine", RATE)
    assert set(prediction.scores) == set(chosen.labels)


def test_auto_uses_onnxruntime_for_its_own_variants_without_timing(tiny_model_dir, cache_home, monkeypatch):
    monkeypatch.setattr(engines, "time_engines", lambda *args: pytest.fail("nothing should be timed"))
    chosen = Recognizer.from_dir(tiny_model_dir, device="cpu", engine="auto", precision="int8", threads=1)
    assert chosen.engine == "onnxruntime" and chosen.precision == "int8"
    if BF16:
        assert Recognizer.from_dir(tiny_model_dir, device="cpu", engine="auto", precision="bf16").engine == "openvino"


def test_an_unreadable_cache_is_measured_again(tiny_model_dir, cache_home, monkeypatch):
    (cache_home / "mmer-rt").mkdir(parents=True)
    (cache_home / "mmer-rt" / engines.CACHE_NAME).write_text("{ not json")
    monkeypatch.setattr(engines, "time_engines", lambda recognizers, *a: {"onnxruntime": 1.0, "openvino": 3.0})
    assert Recognizer.from_dir(tiny_model_dir, device="cpu", engine="auto", threads=1).engine == "onnxruntime"
    assert json.loads((cache_home / "mmer-rt" / engines.CACHE_NAME).read_text())


# --- the export's record ----------------------------------------------------------------------------------------------

def test_the_export_records_openvino_parity(tiny_model_dir):
    parity = json.loads((tiny_model_dir / MANIFEST_NAME).read_text())["variants"]["fp32"]["parity"]["openvino"]
    assert parity["measured"] and parity["inference_precision"] == ("bf16" if BF16 else "fp32")
    assert parity["version"] == openvino.__version__
    assert 0 <= parity["max_abs_probability"] <= parity["tolerance_probability"]
    assert parity["top1_agreement"] == 1.0 and parity["frame_mask_equal"]


def test_the_export_says_when_openvino_was_not_measured(tiny_export, monkeypatch):
    from export import parity as export_parity
    from export.to_onnx import _measure_openvino

    monkeypatch.setattr(engines, "openvino_available", lambda: False)
    report: dict = {}
    _measure_openvino(tiny_export[1] / "fp32", None, None, report, 0.05)
    assert report["openvino"] == {"measured": False, "reason": "openvino is not installed"}
    assert export_parity.TOLERANCES["openvino"] == 0.05


def test_the_split_audio_graph_in_f32_equals_the_whole_graph(tiny_model_dir, onnxruntime_fp32, tmp_path):
    """benchmarks/openvino_split.py's pieces, all in f32, give the whole graph's answers: its cuts lose nothing, so
    its figures for mixed precisions measure the precisions, not the cutting."""
    from benchmarks.openvino_split import FIRST_LAYER, FRONT_END, PROJECTION, SplitAudioGraph, layer_plans

    fp32 = tiny_model_dir / "fp32" / "audio_encoder.onnx"
    recognizer = Recognizer.from_dir(tiny_model_dir, device="cpu", engine="openvino", precision="fp32", threads=1)
    recognizer._graphs["audio_encoder"] = SplitAudioGraph(fp32, [FIRST_LAYER, FRONT_END, PROJECTION], ["fp32"] * 4,
                                                          1, tmp_path)
    assert len(recognizer._graphs["audio_encoder"].pieces) == 4
    expected = probabilities(onnxruntime_fp32, onnxruntime_fp32.predict_batch(utterances()))
    got = probabilities(recognizer, recognizer.predict_batch(utterances()))
    np.testing.assert_allclose(got, expected, atol=1e-5)
    # The tiny front end has two layers after the first: one plan each, cut after every layer and the projection.
    plans = layer_plans(fp32)
    assert len(plans) == 2 and all(len(cuts) == 3 and len(precisions) == 4 for cuts, precisions, _ in plans.values())
