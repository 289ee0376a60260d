"""Reliability (issue 12): the hostile corpus through predict, predict_batch and the command line; every bad input a
typed error naming it; nothing lost for one bad item; bounded resampling; manifests checked against their graphs;
property-based tests of audio loading and manifest reading."""

from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import sys
import warnings

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import mmer_rt.cli
from mmer_rt import (
    AudioError, BatchBudget, InferenceError, MMERError, ModelDirError, Prediction, Recognizer, TextError, Utterance,
    load_audio,
)
from mmer_rt.audio import MAX_SAMPLE_RATE, MIN_SAMPLE_RATE, load_clip, normalize
from mmer_rt.cli import EXIT_BROKEN_PIPE, EXIT_CRASH, main
from mmer_rt.modeldir import MANIFEST_NAME, ModelManifest
from hostile_corpus import RATE, build_corpus, speech_like, wav_bytes
from test_recognizer_fixtures import (  # noqa: F401
    TINY_MAX_AUDIO_SAMPLES, edit_manifest, model_copy, tiny_export, tiny_model_dir)

PROPERTY = settings(max_examples=60, deadline=None, derandomize=True, database=None,
                    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])


@pytest.fixture(scope="module")
def recognizer(tiny_model_dir) -> Recognizer:
    return Recognizer.from_dir(tiny_model_dir, device="cpu", precision="fp32", threads=1)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return build_corpus(tmp_path_factory.mktemp("hostile"))


def assert_sound(result, recognizer):
    """A Prediction whose scores are finite probabilities of every label summing to 1."""
    assert isinstance(result, Prediction), result
    values = np.array(list(result.scores.values()))
    assert sorted(result.scores) == sorted(recognizer.labels)
    assert np.isfinite(values).all() and (values >= 0).all() and abs(values.sum() - 1) < 1e-6
    assert result.label == max(result.scores, key=result.scores.get)
    assert np.isfinite(result.duration) and result.duration > 0


def assert_expected(case, result, recognizer, index=0):
    if case.expect is None:
        assert_sound(result, recognizer)
        return
    kind, fragment = case.expect
    assert type(result) is kind, (case.name, result)
    assert fragment in str(result), (case.name, str(result))
    # The message names the input: its path, or its place in the batch.
    assert str(result).startswith(case.source if case.is_file else f"item {index}: "), (case.name, str(result))


def outcome(call):
    try:
        return call()
    except MMERError as error:
        return error


# --- the hostile corpus -------------------------------------------------------------------------------------------

def test_the_corpus_is_large_and_varied(corpus):
    files = [case for case in corpus if case.is_file]
    arrays = [case for case in corpus if isinstance(case.source, np.ndarray)]
    assert len(corpus) >= 40 and len(files) >= 40 and len(arrays) >= 20
    assert sum(case.expect is not None for case in corpus) >= 40
    assert sum(case.name.startswith("format_") for case in corpus) >= 40  # every container x PCM/float subtype


def test_corpus_through_predict(corpus, recognizer):
    for case in corpus:
        result = outcome(lambda: recognizer.predict(case.source, case.text, case.sample_rate))
        assert_expected(case, result, recognizer)


def test_corpus_through_predict_batch(corpus, recognizer):
    items = [Utterance(case.source, case.text, case.sample_rate) for case in corpus]
    results = recognizer.predict_batch(items, errors="return")
    assert len(results) == len(corpus)
    good = []
    for index, (case, result) in enumerate(zip(corpus, results)):
        assert_expected(case, result, recognizer, index)
        if case.expect is None:
            good.append((case, result))
    # Each good item's answer is the one it gets alone (fp32: the same alone or in any batch).
    for case, result in good:
        alone = recognizer.predict(case.source, case.text, case.sample_rate)
        assert result.label == alone.label and result.transcript == alone.transcript, case.name
        assert result.scores == pytest.approx(alone.scores, abs=1e-5), case.name
    first_bad = next(i for i, case in enumerate(corpus) if case.expect is not None)
    with pytest.raises(corpus[first_bad].expect[0], match=corpus[first_bad].expect[1]):
        recognizer.predict_batch(items)


def test_corpus_through_the_command_line(corpus, tiny_model_dir, capsys):
    files = [case for case in corpus if case.is_file]
    status = main(["predict", *[case.source for case in files], "--model", str(tiny_model_dir), "--json",
                   "--precision", "fp32"])
    out, err = capsys.readouterr()
    rows = [json.loads(line) for line in out.splitlines()]
    assert status == 1
    assert [row["file"] for row in rows] == [case.source for case in files]
    failed = 0
    for case, row in zip(files, rows):
        # The command line gives no transcripts, so the CTC head's is used and no transcript can be bad.
        expect = None if case.expect is not None and case.expect[0] is TextError else case.expect
        if expect is None:
            assert "error" not in row and row["label"] in row["scores"], (case.name, row)
            assert abs(sum(row["scores"].values()) - 1) < 1e-6
        else:
            failed += 1
            assert row["error_type"] == expect[0].__name__ and expect[1] in row["error"], (case.name, row)
            assert f"mmer-rt: error: {case.source}" in err
    assert err.count("mmer-rt: error: ") == failed and f"{failed} of {len(files)} files failed" in err
    assert "Traceback" not in err


# --- nothing lost for one bad item --------------------------------------------------------------------------------

def test_a_bad_item_costs_no_good_one_and_takes_no_batch_place(tiny_model_dir, recognizer):
    paired = Recognizer.from_dir(tiny_model_dir, device="cpu", precision="fp32", batch_budget=BatchBudget(2, None))
    goods = [Utterance(speech_like(n, seed=n), "okay fine", RATE) for n in (3_000, 2_900, 2_800, 1_000)]
    bads = [Utterance(b"not audio"), Utterance(speech_like(3_000), b"bytes"), Utterance(np.zeros(10), None, RATE)]
    mixed = [goods[0], bads[0], goods[1], bads[1], goods[2], bads[2], goods[3]]
    results = paired.predict_batch(mixed, errors="return")
    assert [type(r) for r in results] == [Prediction, AudioError, Prediction, TextError, Prediction, AudioError,
                                          Prediction]
    assert [str(results[i]).split(":")[0] for i in (1, 3, 5)] == ["item 1", "item 3", "item 5"]
    # The good ones are batched as if the bad ones had never been given.
    without = paired.predict_batch(goods)
    assert [results[i] for i in (0, 2, 4, 6)] == without
    assert str(results[1]) == "item 1: <9 bytes>: cannot decode audio (Format not recognised.)"
    assert paired.predict_batch([], errors="return") == []


def test_an_item_onnxruntime_fails_on_does_not_take_its_batch_mates_down(tiny_model_dir, monkeypatch):
    batched = Recognizer.from_dir(tiny_model_dir, device="cpu", precision="fp32", batch_budget=BatchBudget(4, None))
    items = [Utterance(speech_like(n, seed=n), "okay fine", RATE) for n in (3_000, 2_999, 2_998, 2_997)]
    alone = [batched.predict(item.audio, item.text, item.sample_rate) for item in items]
    graph = batched._graphs["audio_encoder"]
    original = graph._run

    def failing_on_2998(feeds, host_outputs, device_outputs):
        if 2_998 in feeds["sample_lengths"]:  # onnxruntime failing on one input, as out of memory might
            from onnxruntime.capi.onnxruntime_pybind11_state import Fail
            raise Fail("[ONNXRuntimeError] : 1 : FAIL : poisoned")
        return original(feeds, host_outputs, device_outputs)

    monkeypatch.setattr(graph, "_run", failing_on_2998)
    results = batched.predict_batch(items, errors="return")
    assert isinstance(results[2], InferenceError)
    assert str(results[2]) == "item 2: the audio_encoder graph failed: [ONNXRuntimeError] : 1 : FAIL : poisoned"
    for i in (0, 1, 3):
        assert results[i].scores == pytest.approx(alone[i].scores, abs=1e-5)
    with pytest.raises(InferenceError, match="items 0, 1, 2, 3: the audio_encoder graph failed"):
        batched.predict_batch(items)


def test_unknown_error_policy_is_refused(recognizer):
    with pytest.raises(ValueError, match="errors must be one of raise, return"):
        recognizer.predict_batch([speech_like(2_000)], sample_rate=RATE, errors="ignore")


# --- resampling bounded before it starts, overflow-safe normalisation ---------------------------------------------

@pytest.fixture
def resampled_lengths(monkeypatch):
    import soxr

    lengths = []
    original = soxr.resample

    def recording(samples, in_rate, out_rate, **kwargs):
        lengths.append(len(samples))
        return original(samples, in_rate, out_rate, **kwargs)

    monkeypatch.setattr(soxr, "resample", recording)
    return lengths


def test_only_the_audio_that_will_be_heard_is_resampled(tiny_model_dir, recognizer, resampled_lengths):
    rate = 44_100
    long_file = wav_bytes(speech_like(rate * 3, seed=8), rate)  # 3 s; the tiny model hears 0.5 s
    prediction = recognizer.predict(long_file, "okay")
    assert prediction.truncated and prediction.duration == pytest.approx(3.0)
    heard = TINY_MAX_AUDIO_SAMPLES * rate / RATE
    assert resampled_lengths == [pytest.approx(heard + 0.25 * rate, abs=2)]  # the margin soxr's filter needs
    windowed = Recognizer.from_dir(tiny_model_dir, device="cpu", precision="fp32", long_audio="window")
    assert windowed.predict(long_file, "okay").windows == 6
    assert resampled_lengths[1] == rate * 3  # "window" hears everything


@pytest.mark.parametrize("rate", [MIN_SAMPLE_RATE, 8_000, 44_100, MAX_SAMPLE_RATE])
def test_resampling_the_head_equals_the_head_of_the_whole(rate):
    samples = speech_like(rate * 2, seed=rate)
    whole = load_audio(samples, rate)
    clip = load_clip(samples, rate, max_samples=12_345)
    assert clip.truncated and clip.duration == pytest.approx(2.0) and len(clip.samples) == 12_345
    np.testing.assert_allclose(clip.samples, whole[:12_345], atol=1e-6)
    short = load_clip(samples[: rate // 2], rate, max_samples=12_345)
    assert not short.truncated and len(short.samples) == len(load_audio(samples[: rate // 2], rate))


@pytest.mark.parametrize("rate", [1, 999, MAX_SAMPLE_RATE + 1, 2**31 - 1])
def test_absurd_rates_are_refused_before_any_work(rate, resampled_lengths):
    header = wav_bytes(np.zeros(32_000, np.float32))
    patched = bytearray(header)
    patched[24:28] = rate.to_bytes(4, "little")  # a 64 KB file that claims a 1 Hz rate: 2 GB once resampled
    for source, given in ((bytes(patched), None), (np.zeros(32_000, np.float32), rate)):
        with pytest.raises(AudioError, match=f"{rate} Hz is outside the range mmer-rt accepts"):
            load_audio(source, given)
    assert resampled_lengths == []


@pytest.mark.parametrize("amplitude", [1e18, 1e25, 1e37])
def test_loud_audio_is_normalised_not_taken_for_silence(recognizer, amplitude):
    clip = speech_like(4_000, seed=9)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        loud = normalize(clip / np.abs(clip).max() * np.float32(amplitude))
    np.testing.assert_allclose(loud, normalize(clip), atol=1e-5)
    expected = recognizer.predict(clip, "okay", RATE)
    for dtype in (np.float32, np.float64):
        got = recognizer.predict((clip / np.abs(clip).max() * amplitude).astype(dtype), "okay", RATE)
        assert got.scores == pytest.approx(expected.scores, abs=1e-4)
    silence = recognizer.predict(np.zeros(4_000, np.float32), "okay", RATE)
    assert got.scores != pytest.approx(silence.scores, abs=1e-4)


def test_a_file_cut_short_is_reported(tmp_path):
    data = wav_bytes(speech_like(32_000), RATE)  # 2 s
    path = tmp_path / "cut.wav"
    path.write_bytes(data[: 44 + 32_000])  # 1 s of it
    with pytest.raises(AudioError, match=r"cut\.wav: the file is truncated: its header announces 64000 bytes .* "
                                         r"holds 32000"):
        load_audio(path)
    # An intact file with a padded odd-length data chunk is not "truncated".
    odd = wav_bytes(np.full(101, 0.25, np.float32), RATE, subtype="PCM_U8")
    assert len(load_audio(odd)) == 101


# --- sources that are not audio -----------------------------------------------------------------------------------

def test_sources_that_are_not_audio_files_are_named_as_such(tmp_path):
    with pytest.raises(AudioError, match=f"{tmp_path}: is a directory, not an audio file"):
        load_audio(tmp_path)
    with pytest.raises(AudioError, match="cannot open the audio file \\(File name too long\\)"):
        load_audio(tmp_path / ("a" * 300 + ".wav"))
    if os.path.exists("/dev/zero"):
        with pytest.raises(AudioError, match="/dev/zero: is not a regular file"):
            load_audio("/dev/zero")
    path = tmp_path / "clip.wav"
    path.write_bytes(wav_bytes(speech_like(2_000), RATE))
    with open(path, "rb") as handle:
        pass
    with pytest.raises(AudioError, match=f"{path}: the file object is closed"):
        load_audio(handle)
    with open(path, encoding="latin-1") as text_handle:
        with pytest.raises(AudioError, match="opened in text mode; open it with 'rb'"):
            load_audio(text_handle)


def test_a_transcript_holding_a_lone_surrogate_is_a_text_error(recognizer):
    with pytest.raises(TextError, match="item 0: the transcript is not valid Unicode text"):
        recognizer.predict(speech_like(2_000), "caf\udce9", RATE)


# --- the command line ---------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def two_clips(tmp_path_factory):
    folder = tmp_path_factory.mktemp("cli_clips")
    paths = []
    for i in range(2):
        path = folder / f"clip{i}.wav"
        path.write_bytes(wav_bytes(speech_like(3_000, seed=i), RATE))
        paths.append(str(path))
    return paths


def test_cli_answers_every_good_file_and_reports_each_bad_one(two_clips, tmp_path, tiny_model_dir, capsys):
    bad = tmp_path / "bad.wav"
    bad.write_bytes(b"not audio at all")
    files = [two_clips[0], str(bad), two_clips[1], str(tmp_path / "missing.wav")]
    assert main(["predict", *files, "--model", str(tiny_model_dir), "--precision", "fp32"]) == 1
    out, err = capsys.readouterr()
    assert [line.split("\t")[0] for line in out.splitlines()] == two_clips
    assert f"mmer-rt: error: {bad}: cannot decode audio" in err
    assert f"mmer-rt: error: {tmp_path / 'missing.wav'}: no such audio file" in err
    assert "2 of 4 files failed" in err
    # --fail-fast keeps the old behaviour: the first failure stops the run, and its chunk prints nothing.
    assert main(["predict", *files, "--model", str(tiny_model_dir), "--fail-fast"]) == 1
    out, err = capsys.readouterr()
    assert out == "" and err == f"mmer-rt: error: {bad}: cannot decode audio (Format not recognised.)\n"


def test_cli_non_utf8_text_and_file_names(two_clips, tmp_path, tiny_model_dir, capsys):
    assert main(["predict", two_clips[0], "--model", str(tiny_model_dir), "--text", "caf\udce9"]) == 1
    assert "--text is not valid UTF-8" in capsys.readouterr().err
    odd_name = os.fsdecode(bytes(tmp_path) + b"/caf\xe9.wav")
    shutil.copy(two_clips[0], odd_name)
    assert main(["predict", odd_name, "--model", str(tiny_model_dir), "--json"]) == 0
    row = json.loads(capsys.readouterr().out)
    assert row["file"].endswith("caf\\xe9.wav") and row["label"]


def test_cli_crash_has_its_own_status(two_clips, tiny_model_dir, capsys, monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("a bug")

    monkeypatch.setattr(Recognizer, "predict_batch", broken)
    assert main(["predict", two_clips[0], "--model", str(tiny_model_dir)]) == EXIT_CRASH == 70
    err = capsys.readouterr().err
    assert "Traceback" in err and "mmer-rt: internal error, please report it: RuntimeError: a bug" in err


@pytest.mark.parametrize("unbuffered", ["1", ""])
def test_cli_into_a_closed_pipe_exits_quietly(two_clips, tiny_model_dir, unbuffered):
    # The reader (``| head -1``) is gone before the first line is written, whether stdout is buffered or not.
    env = {**os.environ, "PYTHONUNBUFFERED": unbuffered}
    process = subprocess.Popen([sys.executable, "-m", "mmer_rt", "predict", *two_clips * 3, "--model",
                                str(tiny_model_dir)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env,
                               cwd=os.path.dirname(os.path.dirname(mmer_rt.cli.__file__)))
    process.stdout.close()
    err = process.stderr.read().decode()
    assert process.wait(timeout=120) == EXIT_BROKEN_PIPE == 141
    assert err == "", err


# --- manifests checked against their graphs -----------------------------------------------------------------------

@pytest.mark.parametrize("change, message", [
    (lambda m: m["labels"].pop(), "labels: 3 labels, but the fusion graph scores 4 classes"),
    (lambda m: m["labels"].append("bored"), "labels: 5 labels, but the fusion graph scores 4 classes"),
    (lambda m: m.update(labels=["happy", "happy", "neutral", "sad"]), "labels: 'happy' appears twice"),
    (lambda m: m.update(ctc_vocab=m["ctc_vocab"][:10]), "ctc_vocab: 10 symbols, but the audio graph's CTC head "
                                                        "scores 32"),
    (lambda m: m.update(ctc_vocab=m["ctc_vocab"] + ["@"]), "ctc_vocab: 33 symbols"),
    (lambda m: m["extra"].update(min_audio_samples=10), "extra.min_audio_samples: 10 samples are below the audio "
                                                        "encoder's receptive field"),
    (lambda m: m["extra"].update(max_text_tokens=300), "extra.max_text_tokens: the text or fusion graph fails on "
                                                       "a transcript of 300 tokens"),
    (lambda m: m["extra"].update(max_text_tokens=2), "extra.max_text_tokens: 2 leaves no room for a word"),
    (lambda m: m["extra"].pop("max_text_tokens"), "extra.max_text_tokens \\(not given: 512 by default\\): .* 512 "
                                                  "tokens"),
    (lambda m: m.update(sample_rate=8000), "sample_rate: 8000 Hz, but the graphs of this format take 16000 Hz"),
])
def test_a_manifest_that_disagrees_with_its_graphs_is_refused(model_copy, change, message):
    edit_manifest(model_copy, change)
    with pytest.raises(ModelDirError, match=f"mmer.json: .*{message}"):
        Recognizer.from_dir(model_copy, device="cpu", precision="fp32")


def test_the_probe_accepts_the_true_limits(model_copy):
    # The tiny text encoder has 128 positions and the front end 60 samples: exactly those pass.
    manifest = json.loads((model_copy / MANIFEST_NAME).read_text())
    assert manifest["extra"]["max_text_tokens"] == 128 and manifest["extra"]["min_audio_samples"] == 60
    edit_manifest(model_copy, lambda m: m["extra"].update(max_text_tokens=129))
    with pytest.raises(ModelDirError, match="129 tokens"):
        Recognizer.from_dir(model_copy, device="cpu", precision="fp32")


# --- property-based tests -----------------------------------------------------------------------------------------

ARRAY_DTYPES = st.sampled_from([np.float16, np.float32, np.float64, np.int8, np.int16, np.int32, np.uint8,
                                np.uint16, np.bool_, np.complex64])
RATES = st.one_of(st.sampled_from([8_000, 16_000, 22_050, 44_100, 48_000]),
                  st.integers(-10, 2 * MAX_SAMPLE_RATE), st.none(), st.just(16_000.0))


@PROPERTY
@given(array=hnp.arrays(ARRAY_DTYPES, st.one_of(hnp.array_shapes(min_dims=1, max_dims=1, min_side=0, max_side=3_000),
                                                hnp.array_shapes(min_dims=2, max_dims=3, min_side=0, max_side=700))),
       rate=RATES)
def test_property_any_array_gives_a_typed_error_or_a_sound_answer(recognizer, array, rate):
    result = outcome(lambda: recognizer.predict(array, "okay", rate))
    if not isinstance(result, MMERError):
        assert_sound(result, recognizer)


@PROPERTY
@given(edits=st.lists(st.tuples(st.integers(0, 80), st.integers(0, 255)), max_size=6),
       cut=st.one_of(st.none(), st.integers(0, 4_000)), subtype=st.sampled_from(["PCM_16", "FLOAT", "PCM_U8"]))
def test_property_damaged_file_bytes_give_a_typed_error_or_a_sound_answer(recognizer, edits, cut, subtype):
    data = bytearray(wav_bytes(speech_like(2_000, seed=1), RATE, subtype=subtype))
    for position, value in edits:
        data[position] = value
    data = bytes(data[:cut] if cut is not None else data)
    result = outcome(lambda: recognizer.predict(data, None))
    if not isinstance(result, MMERError):
        assert_sound(result, recognizer)
    clip = outcome(lambda: load_clip(io.BytesIO(data), max_samples=TINY_MAX_AUDIO_SAMPLES))
    if not isinstance(clip, MMERError):
        assert clip.samples.dtype == np.float32 and np.isfinite(clip.samples).all()


JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers(-2**40, 2**40) | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3),
    max_leaves=6,
)


def _paths(value, prefix=()):
    """Every key path into a JSON document."""
    yield prefix
    children = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, list) else ()
    for key, child in children:
        yield from _paths(child, (*prefix, key))


def _mutated(manifest: dict, data) -> dict:
    document = json.loads(json.dumps(manifest))
    path = data.draw(st.sampled_from([p for p in _paths(document) if p]))
    parent = document
    for key in path[:-1]:
        parent = parent[key]
    action = data.draw(st.sampled_from(["replace", "delete", "add"]))
    if action == "replace":
        parent[path[-1]] = data.draw(JSON_VALUES)
    elif action == "delete":
        del parent[path[-1]]
    elif isinstance(parent, dict):
        parent[data.draw(st.text(min_size=1, max_size=6))] = data.draw(JSON_VALUES)
    else:
        parent.append(data.draw(JSON_VALUES))
    return document


@pytest.fixture(scope="module")
def scratch_model(tiny_model_dir, tmp_path_factory):
    """A copy of the tiny model directory whose manifest the property tests rewrite; and the original manifest."""
    folder = shutil.copytree(tiny_model_dir, tmp_path_factory.mktemp("scratch") / "model")
    return folder, json.loads((tiny_model_dir / MANIFEST_NAME).read_text())


@PROPERTY
@given(data=st.data())
def test_property_a_damaged_manifest_reads_or_is_a_model_dir_error(scratch_model, data):
    folder, manifest = scratch_model
    (folder / MANIFEST_NAME).write_text(json.dumps(_mutated(manifest, data)))
    read = outcome(lambda: ModelManifest.read(folder))
    assert isinstance(read, (ModelManifest, ModelDirError)), read


@settings(PROPERTY, max_examples=25)
@given(data=st.data())
def test_property_a_damaged_manifest_loads_and_answers_soundly_or_is_refused(scratch_model, data):
    folder, manifest = scratch_model
    (folder / MANIFEST_NAME).write_text(json.dumps(_mutated(manifest, data)))
    loaded = outcome(lambda: Recognizer.from_dir(folder, device="cpu", threads=1))
    if isinstance(loaded, MMERError):
        assert isinstance(loaded, ModelDirError), loaded
        return
    for text in ("okay fine", None):
        assert_sound(loaded.predict(speech_like(3_000, seed=3), text, RATE), loaded)
