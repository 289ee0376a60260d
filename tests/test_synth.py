"""Tests of the espeak-ng emotional-speech corpus: reproducibility, manifest, prosody plan, clear errors."""

import hashlib
import shutil
from collections import Counter

import numpy as np
import pytest
import soundfile

from mmer_rt.corpus import read_manifest
from mmer_rt.errors import CorpusError
from training import synth

needs_espeak = pytest.mark.skipif(shutil.which("espeak-ng") is None, reason="espeak-ng is not installed")
VOICES = ["en-us+f3", "en-us+m3", "en+f2"]


def _digests(folder):
    return {p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def small_corpus(tmp_path_factory):
    folder = tmp_path_factory.mktemp("synth")
    return synth.synthesize_corpus(folder, seed=3, voices=VOICES, per_class=2)


@needs_espeak
def test_manifest_is_valid_16k_mono_with_sessions_of_voice_pairs(small_corpus):
    utterances = read_manifest(small_corpus, labels=synth.LABELS)
    assert len(utterances) == len(VOICES) * 4 * 2
    assert Counter(u.label for u in utterances) == {label: len(VOICES) * 2 for label in synth.LABELS}
    assert {u.speaker: u.session for u in utterances} == {
        "en-us+f3": "Session1", "en-us+m3": "Session1", "en+f2": "Session2"}
    info = soundfile.info(str(utterances[0].audio))
    assert (info.samplerate, info.channels) == (16_000, 1) and info.frames > 8_000
    wave, _ = soundfile.read(utterances[0].audio)
    assert np.isfinite(wave).all() and 0.5 < np.abs(wave).max() <= 1.0


@needs_espeak
def test_same_seed_gives_identical_files(small_corpus, tmp_path):
    again = synth.synthesize_corpus(tmp_path, seed=3, voices=VOICES, per_class=2, workers=1)
    assert _digests(again.parent) == _digests(small_corpus.parent)


@needs_espeak
def test_other_seed_gives_other_audio(small_corpus, tmp_path):
    other = synth.synthesize_corpus(tmp_path, seed=4, voices=VOICES[:1], per_class=2)
    first = _digests(small_corpus.parent)
    changed = [name for name, digest in _digests(other.parent).items() if name.endswith(".wav") and first[name] != digest]
    assert len(changed) == 8


@needs_espeak
def test_sad_speech_is_slower_than_angry_speech(tmp_path):
    plans = synth.plan_corpus(0, ["en-us+m3"], 1)
    angry = next(p for p in plans if p.label == "angry")
    sad = synth.ClipPlan("sad", angry.voice, angry.session, "sad", angry.text, synth.EMOTION_PROSODY["sad"])
    angry = synth.ClipPlan("angry", angry.voice, angry.session, "angry", angry.text, synth.EMOTION_PROSODY["angry"])
    espeak = shutil.which("espeak-ng")
    for plan in (sad, angry):
        synth._render(espeak, plan, tmp_path / f"{plan.id}.wav")
    assert soundfile.info(str(tmp_path / "sad.wav")).frames > 1.4 * soundfile.info(str(tmp_path / "angry.wav")).frames


def test_plan_is_deterministic_and_keyed_by_voice():
    assert synth.plan_corpus(1, VOICES, 3) == synth.plan_corpus(1, VOICES, 3)
    alone = [p for p in synth.plan_corpus(1, VOICES[2:], 3)]
    within = [p for p in synth.plan_corpus(1, VOICES, 3) if p.voice == VOICES[2]]
    assert [(p.text, p.prosody) for p in alone] == [(p.text, p.prosody) for p in within]


def test_plan_mixes_shared_and_emotion_sentences_and_orders_prosody():
    plans = synth.plan_corpus(0, list(synth.DEFAULT_VOICES[:10]), 20)
    shared = np.mean([p.text in synth.SHARED_SENTENCES for p in plans])
    assert 0.4 < shared < 0.6
    for label in synth.LABELS:
        own = {p.text for p in plans if p.label == label} - set(synth.SHARED_SENTENCES)
        assert own <= set(synth.EMOTION_SENTENCES[label]) and own
    mean = {label: np.mean([p.prosody.rate for p in plans if p.label == label]) for label in synth.LABELS}
    assert mean["sad"] < mean["neutral"] < mean["happy"] < mean["angry"]
    pitch_range = {label: np.mean([p.prosody.pitch_range for p in plans if p.label == label]) for label in synth.LABELS}
    assert pitch_range["sad"] < pitch_range["neutral"] < pitch_range["happy"]
    assert len({p.id for p in plans}) == len(plans)


def test_default_voices_hold_out_whole_sessions():
    sessions = {p.voice: p.session for p in synth.plan_corpus(0, list(synth.DEFAULT_VOICES[:10]), 1)}
    assert Counter(sessions.values()) == {f"Session{i}": 2 for i in range(1, 6)}


@needs_espeak
@pytest.mark.parametrize("voices, message", [
    (["en-us+nosuchvariant"], "unknown espeak-ng voice variant 'nosuchvariant'"),
    (["xx-nowhere"], "unknown espeak-ng voice 'xx-nowhere'"),
    (0, "voices must be between 1 and"),
    (["en-us+f3", "en-us+f3"], "voices repeat"),
])
def test_bad_voices_are_refused(tmp_path, voices, message):
    with pytest.raises(CorpusError, match=message):
        synth.synthesize_corpus(tmp_path, voices=voices, per_class=1)


def test_bad_per_class_is_refused(tmp_path):
    with pytest.raises(CorpusError, match="per_class must be at least 1"):
        synth.synthesize_corpus(tmp_path, voices=1, per_class=0)


@needs_espeak
def test_command_line_writes_the_corpus(tmp_path, capsys):
    synth.main(["--out", str(tmp_path), "--voices", "en-us+f3", "--per-class", "1", "--seed", "2"])
    assert "wrote 4 clips" in capsys.readouterr().out
    assert len(read_manifest(tmp_path / "manifest.jsonl", labels=synth.LABELS)) == 4
