"""End-to-end tests of mmer_rt.Recognizer on a tiny exported MMER: parity, batching, sources, policies, errors."""

from __future__ import annotations

import io
import json
import warnings
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import onnxruntime as ort
import pytest
import soundfile

import mmer_rt.recognizer
from mmer_rt import (
    AudioError, BatchBudget, DeviceError, IntegrityError, ModelDirError, Prediction, Recognizer, TextError, Utterance,
)
from mmer_rt.audio import pad_batch
from mmer_rt.modeldir import MANIFEST_NAME
from mmer_rt.session import CPU_PROVIDER, CUDA_PROVIDER
from mmer_rt.text import TextTokenizer, ctc_greedy_decode
from test_recognizer_fixtures import (  # noqa: F401
    TINY_MAX_AUDIO_SAMPLES, cuda_starts, edit_manifest, model_copy, noise, tiny_export, tiny_model_dir)

RATE = 16_000
LENGTHS = (800, 3_000, 5_555, TINY_MAX_AUDIO_SAMPLES)  # 0.05 s to the longest the model takes
TEXT = "oh wow [LAUGHTER] you came back"


@pytest.fixture(scope="module")
def recognizer(tiny_model_dir) -> Recognizer:
    return Recognizer.from_dir(tiny_model_dir, device="cpu", precision="fp32", threads=1)


@pytest.fixture(scope="module")
def reference(tiny_export):
    """probabilities(waveforms, texts) -> (probabilities, ctc_logits, frame_mask) from the PyTorch model."""
    import torch

    from training.checkpoint import load_checkpoint

    model, tokenizer_path = load_checkpoint(tiny_export[0])
    tokenizer = TextTokenizer(tokenizer_path)

    def run(waveforms, texts):
        values, mask = pad_batch(waveforms)
        encoded = tokenizer.encode_batch(texts)
        with torch.no_grad():
            out = model(torch.from_numpy(values), torch.from_numpy(mask), torch.from_numpy(encoded.input_ids),
                        torch.from_numpy(encoded.attention_mask))
        return torch.softmax(out.logits.double(), -1).numpy(), out.ctc_logits.numpy(), out.frame_mask.numpy()

    return run


def probabilities(recognizer: Recognizer, prediction: Prediction) -> np.ndarray:
    return np.array([prediction.scores[label] for label in recognizer.labels])


def wav_bytes(samples, rate=RATE):
    buffer = io.BytesIO()
    soundfile.write(buffer, samples, rate, format="WAV", subtype="FLOAT")
    return buffer.getvalue()


# --- what a prediction holds --------------------------------------------------------------------------------------

def test_prediction_fields(recognizer):
    prediction = recognizer.predict(noise(4_000), TEXT, sample_rate=RATE)
    values = list(prediction.scores.values())
    assert list(prediction.scores) != [] and sorted(prediction.scores) == sorted(recognizer.labels)
    assert values == sorted(values, reverse=True) and abs(sum(values) - 1) < 1e-9
    assert prediction.label == next(iter(prediction.scores)) and prediction.score == values[0]
    assert prediction.transcript == "oh wow you came back" and prediction.transcript_source == "given"
    assert prediction.duration == pytest.approx(0.25) and not prediction.truncated and prediction.windows == 1
    assert json.loads(json.dumps(prediction.to_dict()))["label"] == prediction.label


def test_loaded_model_describes_itself(recognizer, tiny_model_dir):
    assert recognizer.device == "cpu" and recognizer.precision == "fp32"
    assert recognizer.providers == [CPU_PROVIDER]
    assert recognizer.labels == json.loads((tiny_model_dir / MANIFEST_NAME).read_text())["labels"]


# --- parity with the PyTorch reference ----------------------------------------------------------------------------

@pytest.mark.parametrize("length", LENGTHS)
def test_probabilities_match_pytorch(recognizer, reference, length):
    waveform = noise(length, seed=length)
    expected, _, _ = reference([waveform], [TEXT])
    got = probabilities(recognizer, recognizer.predict(waveform, TEXT, sample_rate=RATE))
    np.testing.assert_allclose(got, expected[0], atol=1e-4)


def test_ctc_transcript_and_probabilities_match_pytorch(recognizer, reference):
    waveform = noise(5_000, seed=7)
    _, ctc_logits, frame_mask = reference([waveform], ["unused"])
    transcript = ctc_greedy_decode(ctc_logits[0], int(frame_mask[0].sum()))
    expected, _, _ = reference([waveform], [transcript])
    prediction = recognizer.predict(waveform, sample_rate=RATE)
    assert prediction.transcript_source == "ctc" and prediction.transcript == transcript
    np.testing.assert_allclose(probabilities(recognizer, prediction), expected[0], atol=1e-4)


def test_batched_probabilities_match_pytorch_batched(recognizer, reference):
    waveforms = [noise(n, seed=n) for n in LENGTHS]
    texts = ["leave me alone", "", "we lost the house and everything", TEXT]
    expected, _, _ = reference(waveforms, texts)
    got = recognizer.predict_batch([Utterance(w, t, RATE) for w, t in zip(waveforms, texts)])
    np.testing.assert_allclose([probabilities(recognizer, p) for p in got], expected, atol=1e-4)


# --- batching -----------------------------------------------------------------------------------------------------

def test_same_answer_alone_or_in_any_batch(tiny_model_dir, recognizer):
    waveforms = [noise(n, seed=i) for i, n in enumerate((700, 7_900, 2_500, 4_100, 1_300, 6_000))]
    texts = [TEXT, None, "okay fine", None, "leave me alone please", "we lost"]
    alone = [probabilities(recognizer, recognizer.predict(w, t, RATE)) for w, t in zip(waveforms, texts)]
    items = [Utterance(w, t, RATE) for w, t in zip(waveforms, texts)]
    for budget in (BatchBudget(6, None), BatchBudget(2, None), BatchBudget(6, 0.6)):
        batched = Recognizer.from_dir(tiny_model_dir, device="cpu", precision="fp32", batch_budget=budget)
        got = batched.predict_batch(items)
        np.testing.assert_allclose([probabilities(recognizer, p) for p in got], alone, atol=1e-5)
    reversed_got = recognizer.predict_batch(items[::-1])[::-1]
    np.testing.assert_allclose([probabilities(recognizer, p) for p in reversed_got], alone, atol=1e-5)


def test_int8_one_utterance_per_batch_gives_the_answer_alone(tiny_model_dir):
    # int8's dynamic quantisation scales activations per batch, so an utterance's answer moves with its
    # neighbours; BatchBudget(max_items=1), as the README says, takes that away.
    square = np.sign(np.sin(np.arange(5_000) * 0.05)).astype(np.float32)  # other activations than noise's
    items = [(noise(3_000, seed=1), TEXT), (square, "okay fine"), (noise(2_000, seed=3), None)]
    batched = Recognizer.from_dir(tiny_model_dir, device="cpu", precision="int8")
    single = Recognizer.from_dir(tiny_model_dir, device="cpu", precision="int8", batch_budget=BatchBudget(1, None))
    alone = np.array([probabilities(batched, batched.predict(w, t, RATE)) for w, t in items])
    got = single.predict_batch([Utterance(w, t, RATE) for w, t in items])
    np.testing.assert_array_equal([probabilities(single, p) for p in got], alone)
    together = batched.predict_batch([Utterance(w, t, RATE) for w, t in items])
    moved = np.abs(np.array([probabilities(batched, p) for p in together]) - alone).max()
    assert 0 < moved < 0.05


def test_results_come_back_in_input_order(recognizer):
    lengths = (500, 7_000, 1_000, 5_000, 2_000)
    got = recognizer.predict_batch([(noise(n, seed=n), None) for n in lengths], sample_rate=RATE)
    assert [p.duration for p in got] == pytest.approx([n / RATE for n in lengths])
    assert recognizer.predict_batch([]) == []


def test_batch_items_may_be_sources_pairs_or_utterances(recognizer, tmp_path):
    waveform = noise(3_000, seed=3)
    path = tmp_path / "clip.wav"
    path.write_bytes(wav_bytes(waveform))
    got = recognizer.predict_batch([path, (str(path), TEXT), Utterance(waveform, TEXT, RATE)])
    assert [p.transcript_source for p in got] == ["ctc", "given", "given"]
    np.testing.assert_allclose(probabilities(recognizer, got[1]), probabilities(recognizer, got[2]), atol=1e-6)
    with pytest.raises(TextError, match="must be \\(audio, text\\)"):
        recognizer.predict_batch([(waveform, TEXT, RATE)])


def test_predictions_from_several_threads_equal_serial_ones(recognizer):
    jobs = [(noise(n, seed=n), TEXT if n % 2 else None) for n in (900, 2_000, 3_100, 4_200, 5_300, 6_400, 7_500)]
    serial = [recognizer.predict(w, t, RATE) for w, t in jobs]
    with ThreadPoolExecutor(max_workers=4) as pool:
        parallel = list(pool.map(lambda job: recognizer.predict(job[0], job[1], RATE), jobs * 3))
    assert parallel == serial * 3


# --- audio sources --------------------------------------------------------------------------------------------------

def test_every_audio_source_gives_the_same_answer(recognizer, tmp_path):
    waveform = noise(4_000, seed=11)
    expected = recognizer.predict(waveform, TEXT, RATE)
    path = tmp_path / "clip.wav"
    path.write_bytes(wav_bytes(waveform))
    with open(path, "rb") as handle:
        sources = [path, str(path), path.read_bytes(), handle]
        for source in sources:
            assert recognizer.predict(source, TEXT).scores == expected.scores
    stereo = np.stack([waveform, waveform], axis=1)
    np.testing.assert_allclose(probabilities(recognizer, recognizer.predict(stereo, TEXT, RATE)),
                               probabilities(recognizer, expected), atol=1e-6)
    int16 = np.round(waveform * 32767).astype(np.int16)
    np.testing.assert_allclose(probabilities(recognizer, recognizer.predict(int16, TEXT, RATE)),
                               probabilities(recognizer, expected), atol=1e-3)


def test_other_sample_rates_are_resampled(recognizer):
    t = np.arange(22_050 // 4) / 22_050
    tone = (0.3 * np.sin(2 * np.pi * 300 * t)).astype(np.float32)
    prediction = recognizer.predict(tone, TEXT, sample_rate=22_050)
    assert prediction.duration == pytest.approx(0.25, abs=1e-4)
    t16 = np.arange(RATE // 4) / RATE
    same_tone = recognizer.predict((0.3 * np.sin(2 * np.pi * 300 * t16)).astype(np.float32), TEXT, RATE)
    np.testing.assert_allclose(probabilities(recognizer, prediction), probabilities(recognizer, same_tone),
                               atol=1e-3)


# --- transcripts ----------------------------------------------------------------------------------------------------

def test_empty_transcripts_still_work(recognizer, reference, monkeypatch):
    waveform = noise(3_000, seed=5)
    expected, _, _ = reference([waveform], [""])
    given_empty = recognizer.predict(waveform, "[NOISE]", RATE)
    assert given_empty.transcript == "" and given_empty.transcript_source == "given"
    np.testing.assert_allclose(probabilities(recognizer, given_empty), expected[0], atol=1e-4)
    # Random weights rarely decode to nothing, so force the CTC head's transcript to be empty.
    monkeypatch.setattr(mmer_rt.recognizer, "ctc_greedy_decode", lambda *args: "")
    ctc_empty = recognizer.predict(waveform, sample_rate=RATE)
    assert ctc_empty.transcript == "" and ctc_empty.transcript_source == "ctc"
    assert ctc_empty.scores == given_empty.scores


def test_non_string_transcript_is_refused(recognizer):
    with pytest.raises(TextError, match="item 0: the transcript must be a str or None, got bytes"):
        recognizer.predict(noise(2_000), b"hello", RATE)


# --- long audio -----------------------------------------------------------------------------------------------------

def test_long_audio_is_truncated_by_default(recognizer):
    waveform = noise(TINY_MAX_AUDIO_SAMPLES * 2 + 123, seed=21)
    prediction = recognizer.predict(waveform, TEXT, RATE)
    head = recognizer.predict(waveform[:TINY_MAX_AUDIO_SAMPLES], TEXT, RATE)
    assert prediction.truncated and prediction.windows == 1
    assert prediction.duration == pytest.approx(len(waveform) / RATE)
    assert prediction.scores == head.scores
    assert not head.truncated


def test_window_policy_averages_full_length_windows(tiny_model_dir, recognizer):
    windowed = Recognizer.from_dir(tiny_model_dir, device="cpu", precision="fp32", long_audio="window",
                                   batch_budget=BatchBudget(2, None))
    size = TINY_MAX_AUDIO_SAMPLES
    waveform = noise(size * 2 + 3_000, seed=22)
    # Windows start every max_audio_samples; the last one ends where the audio ends.
    windows = [waveform[:size], waveform[size : 2 * size], waveform[-size:]]
    for text in (TEXT, None):
        prediction = windowed.predict(waveform, text, RATE)
        parts = [recognizer.predict(w, text, RATE) for w in windows]
        expected = np.mean([probabilities(recognizer, p) for p in parts], axis=0)
        assert prediction.windows == 3 and not prediction.truncated
        np.testing.assert_allclose(probabilities(recognizer, prediction), expected, atol=1e-6)
        joined = " ".join(p.transcript for p in parts if p.transcript)
        assert prediction.transcript == (parts[0].transcript if text else joined)
    short = windowed.predict(waveform[:size], TEXT, RATE)
    assert short.windows == 1 and short.scores == recognizer.predict(waveform[:size], TEXT, RATE).scores


def test_unknown_long_audio_policy_is_refused(tiny_model_dir):
    with pytest.raises(ValueError, match="long_audio must be one of truncate, window"):
        Recognizer.from_dir(tiny_model_dir, long_audio="chunk")


# --- bad audio ------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize(
    "audio, rate, message",
    [
        (np.zeros(0, np.float32), RATE, "empty"),
        (np.array([0.1, np.nan] * 500, np.float32), RATE, "NaN or infinite"),
        (np.array([0.1, np.inf] * 500, np.float32), RATE, "NaN or infinite"),
        (np.ones(1000, np.complex64), RATE, "unsupported audio dtype"),
        (np.ones(1000, np.float32), 0, "sample rate must be a positive integer"),
        (np.ones(1000, np.float32), -8000, "sample rate must be a positive integer"),
        (np.ones(1000, np.float32), None, "needs its sample_rate"),
        (b"RIFF this is no wave file", None, "cannot decode"),
        # The tiny model's front end needs 60 samples (its manifest's min_audio_samples).
        (np.ones(59, np.float32), RATE, "59 samples at 16000 Hz are too short"),
        (np.ones(14, np.float32), 4_000, "56 samples at 16000 Hz are too short"),
    ],
)
def test_bad_audio_is_a_clear_audio_error(recognizer, audio, rate, message):
    with pytest.raises(AudioError, match=message):
        recognizer.predict(audio, TEXT, sample_rate=rate)


def test_unsupported_file_is_refused_with_its_name(recognizer, tmp_path):
    text_file = tmp_path / "notes.txt"
    text_file.write_text("this is not audio\n" * 20)
    with pytest.raises(AudioError, match=r"notes\.txt: cannot decode"):
        recognizer.predict(text_file)
    with pytest.raises(AudioError, match=r"missing\.wav: no such audio file"):
        recognizer.predict_batch([noise(2_000), tmp_path / "missing.wav"], sample_rate=RATE)


# --- bad model directories ------------------------------------------------------------------------------------------

def test_missing_directory_graph_or_tokenizer(model_copy, tmp_path):
    with pytest.raises(ModelDirError, match="model directory not found"):
        Recognizer.from_dir(tmp_path / "nowhere")
    (model_copy / "fp32" / "fusion.onnx").unlink()
    with pytest.raises(ModelDirError, match="graph file missing"):
        Recognizer.from_dir(model_copy, precision="fp32")
    (model_copy / "tokenizer.json").unlink()
    with pytest.raises(ModelDirError, match="tokenizer file missing"):
        Recognizer.from_dir(model_copy, precision="fp32")


def test_graph_not_matching_its_hash_is_refused(model_copy):
    graph = model_copy / "fp32" / "text_encoder.onnx"
    graph.write_bytes(graph.read_bytes() + b"\0")
    with pytest.raises(IntegrityError, match="does not match the manifest"):
        Recognizer.from_dir(model_copy, precision="fp32")


def test_unknown_manifest_version_is_refused(model_copy):
    edit_manifest(model_copy, lambda m: m.update(format_version=99))
    with pytest.raises(ModelDirError, match="format version 99 is not supported"):
        Recognizer.from_dir(model_copy)


def test_other_text_cleaning_rule_is_refused(model_copy):
    edit_manifest(model_copy, lambda m: m.update(text_cleaning="lowercase/v9"))
    with pytest.raises(ModelDirError, match="text cleaning rule 'lowercase/v9'"):
        Recognizer.from_dir(model_copy)


def test_damaged_tokenizer_is_refused(model_copy):
    (model_copy / "tokenizer.json").write_text("{")
    with pytest.raises(ModelDirError, match="cannot read the tokenizer"):
        Recognizer.from_dir(model_copy)


def test_graph_breaking_the_contract_is_refused(model_copy):
    def swap(manifest):
        graphs = manifest["variants"]["fp32"]["graphs"]
        graphs["fusion"], graphs["text_encoder"] = graphs["text_encoder"], graphs["fusion"]

    edit_manifest(model_copy, swap)
    with pytest.raises(ModelDirError, match="does not follow the graph contract"):
        Recognizer.from_dir(model_copy, precision="fp32")


# --- devices and precisions -----------------------------------------------------------------------------------------

def test_auto_precision_on_the_cpu_prefers_int8(tiny_model_dir, model_copy, recognizer):
    int8 = Recognizer.from_dir(tiny_model_dir, device="cpu")
    assert int8.precision == "int8"
    waveform = noise(4_000, seed=31)
    # Dynamic int8 quantisation of random weights moves probabilities a little, never wildly.
    np.testing.assert_allclose(probabilities(int8, int8.predict(waveform, TEXT, RATE)),
                               probabilities(recognizer, recognizer.predict(waveform, TEXT, RATE)), atol=0.05)
    edit_manifest(model_copy, lambda m: m["variants"].pop("int8"))
    assert Recognizer.from_dir(model_copy, device="cpu").precision == "fp32"


def test_precision_the_directory_lacks_is_refused(tiny_model_dir):
    with pytest.raises(ModelDirError, match="holds no fp16 variant \\(it has fp32, int8\\)"):
        Recognizer.from_dir(tiny_model_dir, precision="fp16")
    with pytest.raises(ValueError, match="precision must be auto or one of"):
        Recognizer.from_dir(tiny_model_dir, precision="bf16")


@pytest.mark.skipif(CUDA_PROVIDER in ort.get_available_providers(), reason="this onnxruntime offers CUDA")
def test_cuda_without_cuda_is_a_clear_error(tiny_model_dir):
    with pytest.raises(DeviceError, match="no CUDA execution provider"):
        Recognizer.from_dir(tiny_model_dir, device="cuda")


@pytest.mark.skipif(cuda_starts(), reason="CUDA really starts here")
def test_cuda_that_does_not_start_is_reported(tiny_model_dir, monkeypatch):
    # Where onnxruntime has no CUDA provider, pretend it offers one: the sessions then fall back to the CPU, as
    # onnxruntime-gpu's do on a machine with no GPU or without its CUDA libraries.
    monkeypatch.setattr(ort, "get_available_providers", lambda: [CUDA_PROVIDER, CPU_PROVIDER])
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Specified provider 'CUDAExecutionProvider'")
        with pytest.raises(DeviceError, match="CUDA execution provider did not start"):
            Recognizer.from_dir(tiny_model_dir, device="cuda")
        with pytest.warns(RuntimeWarning, match="CUDA is unavailable, running on the CPU instead"):
            fallback = Recognizer.from_dir(tiny_model_dir, device="auto")
    assert fallback.device == "cpu" and fallback.precision == "int8" and fallback.providers == [CPU_PROVIDER]


def test_device_resident_pipeline_matches_the_host_one(tiny_model_dir, recognizer):
    # The CUDA path binds outputs with IOBinding and chains OrtValues between graphs; run that path on the CPU.
    bound = Recognizer.from_dir(tiny_model_dir, device="cpu", precision="fp32")
    for graph in bound._graphs.values():
        graph.bind_device = "cpu"
    items = [Utterance(noise(n, seed=n), t, RATE) for n, t in ((1_000, None), (6_000, TEXT), (3_000, "okay"))]
    expected = recognizer.predict_batch(items)
    got = bound.predict_batch(items)
    for a, b in zip(got, expected):
        assert a.transcript == b.transcript
        np.testing.assert_allclose(probabilities(bound, a), probabilities(recognizer, b), atol=1e-6)


@pytest.mark.gpu
@pytest.mark.skipif(not cuda_starts(), reason="needs a CUDA GPU and onnxruntime-gpu whose CUDA provider starts")
def test_cuda_matches_cpu(tiny_model_dir, recognizer):
    cuda = Recognizer.from_dir(tiny_model_dir, device="cuda", precision="fp32")
    assert cuda.providers[0] == CUDA_PROVIDER
    options = cuda._graphs["audio_encoder"].session.get_provider_options()[CUDA_PROVIDER]
    assert options["cudnn_conv_algo_search"] == "DEFAULT"
    items = [Utterance(noise(n, seed=n), TEXT, RATE) for n in LENGTHS]
    for a, b in zip(cuda.predict_batch(items), recognizer.predict_batch(items)):
        np.testing.assert_allclose(probabilities(cuda, a), probabilities(recognizer, b), atol=1e-3)


def test_minimum_length_defaults_to_wav2vec2s_receptive_field(model_copy):
    # A manifest that does not state its front end's receptive field gets wav2vec2-base's 400 samples.
    edit_manifest(model_copy, lambda manifest: manifest["extra"].pop("min_audio_samples"))
    recognizer = Recognizer.from_dir(model_copy, device="cpu", precision="fp32", threads=1)
    with pytest.raises(AudioError, match="399 samples at 16000 Hz are too short .* at least 400"):
        recognizer.predict(np.ones(399, np.float32), TEXT, sample_rate=RATE)
    assert recognizer.predict(np.ones(400, np.float32), TEXT, sample_rate=RATE).duration == pytest.approx(0.025)
