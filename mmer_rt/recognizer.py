"""The Recognizer: made once from a model directory, it turns audio (and a transcript, if any) into emotions."""

from __future__ import annotations

import contextlib
import logging
import threading
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Iterable, Sequence, Union

import numpy as np

from .audio import AudioSource, audio_feeds, load_clip
from .batching import BatchBudget, plan_batches
from .engines import check_engine, choose_engine, load_openvino_graphs
from .errors import AudioError, DeviceError, InferenceError, MMERError, ModelDirError, TextError
from .modeldir import (
    AUDIO_OUTPUTS, FUSION_INPUTS, FUSION_OUTPUTS, MANIFEST_NAME, PRECISIONS, TEXT_INPUTS, TEXT_OUTPUTS, audio_inputs,
    ModelManifest, verified_graph_path,
)
from .session import Graph, open_session, resolve_device
from .shapes import ShapeBuckets, warm_up
from .text import TEXT_CLEANING_RULE, TextTokenizer, clean_transcript, ctc_greedy_decode

logger = logging.getLogger("mmer_rt")

LONG_AUDIO_POLICIES = ("truncate", "window")
ERROR_POLICIES = ("raise", "return")
DEFAULT_MAX_TEXT_TOKENS = 512
# The receptive field of wav2vec2's convolutional feature encoder (25 ms at 16 kHz): shorter audio yields no
# frame at all. A manifest may state its own model's value as extra["min_audio_samples"].
DEFAULT_MIN_AUDIO_SAMPLES = 400


@dataclass(frozen=True)
class Prediction:
    """One utterance's result.

    Attributes:
      label: the most probable emotion.
      scores: the probability of every emotion, highest first.
      transcript: the cleaned transcript the text encoder read.
      transcript_source: ``"given"`` (the caller's) or ``"ctc"`` (the CTC head's greedy transcript).
      duration: seconds of input audio, before any truncation.
      truncated: True when only the first ``max_audio_samples`` were heard (the "truncate" policy).
      windows: how many windows were scored and averaged (1 unless the "window" policy split the audio).
    """

    label: str
    scores: dict[str, float]
    transcript: str
    transcript_source: str
    duration: float
    truncated: bool = False
    windows: int = 1

    @property
    def score(self) -> float:
        return self.scores[self.label]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Utterance:
    """One item of :meth:`Recognizer.predict_batch`: audio, its transcript if known, and an array's rate."""

    audio: AudioSource
    text: str | None = None
    sample_rate: int | None = None


BatchItem = Union[AudioSource, Utterance, tuple]


@dataclass
class _Piece:
    """What one row of a graph batch holds: a waveform (a whole utterance or one window) and its transcript."""

    owner: int
    waveform: np.ndarray
    text: str | None


@dataclass(frozen=True)
class Decoded:
    """An utterance made ready by :meth:`Recognizer.decode`: its 16 kHz waveform (one per window under the
    "window" policy, the heard part under "truncate"), its transcript, and what :class:`Prediction` reports."""

    waveforms: tuple[np.ndarray, ...]
    text: str | None
    duration: float
    truncated: bool


class Recognizer:
    """Speech emotion recognition with MMER on onnxruntime.

    Make one with :meth:`from_dir`; it is safe to call :meth:`predict` from several threads at once.

    Long audio (more than the manifest's ``max_audio_samples``, about 13 s for the published model):
      - ``"truncate"`` (default): only the first ``max_audio_samples`` are heard, as in training;
        ``Prediction.truncated`` says so.
      - ``"window"``: the audio is cut into windows of ``max_audio_samples`` (the last one ends at the end of the
        audio, overlapping its neighbour, so every window is full length); each window is scored with the
        whole given transcript, or with its own CTC transcript, and the probabilities are averaged. Windows
        are batched under the same budget as utterances, so memory stays bounded however long the audio is.
    """

    # Fixed shapes (mmer_rt/shapes.py), set by from_dir: the buckets batches are padded to (None: no padding), and
    # what serialises batches when CUDA graphs replay on fixed buffers.
    shapes: ShapeBuckets | None = None
    _batch_lock = contextlib.nullcontext()

    def __init__(
        self, model_dir: Path, manifest: ModelManifest, graphs: dict[str, Graph], tokenizer: TextTokenizer,
        device: str, precision: str, batch_budget: BatchBudget, long_audio: str, engine: str = "onnxruntime",
    ):
        self.model_dir = model_dir
        self.manifest = manifest
        self.labels = list(manifest.labels)
        self.device = device
        self.precision = precision
        self.batch_budget = batch_budget
        self.long_audio = long_audio
        self.engine = engine
        self.engine_choice: dict | None = None  # engine="auto": how the engine was chosen (mmer_rt/engines.py)
        self._graphs = graphs
        self._tokenizer = tokenizer

    @classmethod
    def from_dir(
        cls, path: str | Path, device: str = "auto", precision: str = "auto", threads: int | None = None,
        batch_budget: BatchBudget | None = None, long_audio: str = "truncate",
        shapes: ShapeBuckets | str | None = "auto", cuda_graphs: bool = False, engine: str = "onnxruntime",
    ) -> "Recognizer":
        """Load a model directory written by ``python -m export.to_onnx``.

        Args:
          path: the model directory.
          device: ``"cuda"``, ``"cpu"`` or ``"auto"`` (CUDA when onnxruntime offers it; if its CUDA provider
            then fails to start, a warning is given and the CPU is used).
          precision: ``"fp32"``, ``"fp16"``, ``"int8"`` or ``"auto"``: fp16 on CUDA, int8 on the CPU, each only
            if the directory holds it, otherwise fp32.
          threads: onnxruntime intra-op threads on the CPU (None: one per core).
          batch_budget: the most one graph run may take (items and seconds of padded audio).
          long_audio: ``"truncate"`` or ``"window"``; see the class docstring.
          shapes: fixed shapes for the GPU (mmer_rt/shapes.py): ``"auto"`` pads batches to
            ``ShapeBuckets.for_model``'s buckets on CUDA and not on the CPU, None never, or the buckets to use.
            Answers are the same either way (padding is masked).
          cuda_graphs: capture each bucket's shape as a CUDA graph and replay it (CUDA only; needs ``shapes``;
            see :meth:`warmup`). Off by default until measured on a GPU.
          engine: ``"onnxruntime"``; ``"openvino"`` (the ``openvino`` extra: OpenVINO's CPU plugin runs the fp32
            graphs, precision ``"auto"`` meaning bf16 arithmetic where the CPU has AMX or AVX512-BF16, else fp32;
            ``"bf16"`` or ``"fp32"`` to choose); or ``"auto"``: the faster of the two for this model, CPU, thread
            count and precision, timed on a probe clip at the first load and remembered (mmer_rt/engines.py).

        Raises:
          ModelDirError: a missing or unusable directory, manifest, tokenizer or graph, an unknown manifest
            version, a manifest field of the wrong type or out of range (the message names it), a manifest that
            disagrees with its graphs (labels against the fusion graph's output, ctc_vocab against the CTC
            head's, max_text_tokens and min_audio_samples against a probe run), or a requested precision the
            directory lacks.
          IntegrityError: a graph whose SHA-256 differs from the manifest's.
          DeviceError: ``device="cuda"`` where CUDA is not available or does not start; engine="openvino"
            without the openvino package, on CUDA, or with a precision it cannot give (int8, fp16; bf16 on a CPU
            without bf16 dot products).
          ValueError: an unknown device, precision, engine or long-audio policy, or a bad thread count.
        """
        if long_audio not in LONG_AUDIO_POLICIES:
            raise ValueError(f"long_audio must be one of {', '.join(LONG_AUDIO_POLICIES)}; got {long_audio!r}")
        model_dir = Path(path)
        manifest = ModelManifest.read(model_dir)
        _check_manifest(model_dir, manifest)
        tokenizer = _load_tokenizer(model_dir, manifest)
        resolved = resolve_device(device)
        if cuda_graphs and resolved != "cuda":
            raise DeviceError(f"cuda_graphs=True needs the CUDA device; device={device!r} resolved to {resolved!r}")
        if check_engine(engine) != "onnxruntime" and resolved == "cpu":
            recognizer = _other_engine(cls, model_dir, manifest, tokenizer, engine, precision, threads,
                                       batch_budget or BatchBudget(), long_audio)
            recognizer._fix_shapes(shapes, cuda_graphs)
            return recognizer
        if engine == "openvino":
            raise DeviceError(f"engine='openvino' runs on the CPU; device={device!r} resolved to {resolved!r}: "
                              "use device='cpu'")
        try:
            chosen, graphs = _load_variant(model_dir, manifest, resolved, precision, threads, cuda_graphs)
        except DeviceError as error:
            if device != "auto":
                raise
            message = f"CUDA is unavailable, running on the CPU instead: {error}"
            logger.warning(message)
            warnings.warn(message, RuntimeWarning, stacklevel=2)
            resolved = "cpu"
            chosen, graphs = _load_variant(model_dir, manifest, resolved, precision, threads)
        _probe(model_dir, manifest, graphs, tokenizer)
        logger.info("mmer_rt: %s on %s, %s precision", model_dir, resolved, chosen)
        recognizer = cls(model_dir, manifest, graphs, tokenizer, resolved, chosen, batch_budget or BatchBudget(),
                         long_audio)
        recognizer._fix_shapes(shapes, cuda_graphs)
        return recognizer

    def _fix_shapes(self, shapes: ShapeBuckets | str | None, cuda_graphs: bool) -> None:
        if shapes == "auto":
            shapes = None if self.device != "cuda" else ShapeBuckets.for_model(
                self.batch_budget.max_items, self.manifest.max_audio_samples, self.manifest.sample_rate,
                self._tokenizer.max_tokens)
        if shapes is not None and not isinstance(shapes, ShapeBuckets):
            raise ValueError(f"shapes must be 'auto', None or a ShapeBuckets; got {shapes!r}")
        if cuda_graphs and shapes is None:
            raise ValueError("cuda_graphs=True needs fixed shapes: give shapes='auto' or a ShapeBuckets")
        self.shapes = shapes
        if cuda_graphs:
            self._batch_lock = threading.Lock()

    def warmup(self) -> int:
        """Run every bucket's shape through the three graphs ahead of traffic (three times each under CUDA
        graphs, so that each is captured); returns how many (rows, samples, tokens) shapes ran. Without fixed
        shapes there is nothing to run: 0."""
        if self.shapes is None:
            return 0
        runs = 3 if self._graphs["audio_encoder"].captured is not None else 1
        with self._batch_lock:
            return warm_up(self._graphs, self.shapes, self._tokenizer.pad_id, runs,
                           audio_inputs(self.manifest.format_version))

    @property
    def providers(self) -> list[str]:
        """The execution providers the sessions actually run on, best first."""
        return self._graphs["audio_encoder"].providers

    def predict(self, audio: AudioSource, text: str | None = None, sample_rate: int | None = None) -> Prediction:
        """Recognise the emotion of one utterance.

        Args:
          audio: a path, the bytes of an audio file, a binary file object, or a numpy array (any float or
            integer dtype, mono or multi-channel) with its ``sample_rate``. It is resampled to 16 kHz; with the
            "truncate" policy only the part that will be heard is decoded and resampled.
          text: the transcript; None uses the CTC head's greedy transcript (less accurate than a real one).
          sample_rate: the rate of an array; for files, None or the file's own rate.

        Raises:
          AudioError: unusable audio (see :func:`mmer_rt.load_audio`), or audio shorter than the encoder's
            receptive field (400 samples, 25 ms, for wav2vec2).
          TextError: a transcript that is not a str, or not valid Unicode (a lone surrogate).
        """
        return self.predict_batch([Utterance(audio, text, sample_rate)])[0]

    def predict_batch(
        self, items: Iterable[BatchItem], sample_rate: int | None = None, errors: str = "raise",
        budget: BatchBudget | None = None,
    ) -> list[Prediction | MMERError]:
        """Recognise many utterances, batched by length; results come back in input order.

        Each item is an audio source, an ``(audio, text)`` pair or an :class:`Utterance`; ``sample_rate``
        applies to array items that do not carry their own. An utterance gets the same result alone or in any
        batch.

        Args:
          errors: ``"raise"`` (default): the first bad item raises, as :meth:`predict` does, and nothing is
            returned. ``"return"``: a bad item's place in the result holds its error (an :class:`MMERError`:
            AudioError or TextError) instead of a Prediction, and every other item is answered exactly as it
            would be without the bad one (bad items are set aside before batching, so they take no batch's place).
            Should onnxruntime fail on a batch, its items are rerun one by one and only one that fails alone
            gets an InferenceError. Errors name the item: its path, or ``item N`` (its index) for other sources.

        Raises:
          AudioError, TextError: with ``errors="raise"``, the first bad item's.
          InferenceError: with ``errors="raise"``, onnxruntime failed on a batch (the message names its items).
          ValueError: an unknown ``errors`` policy.

        ``budget``: this call's batch budget instead of the Recognizer's (``batch_budget``).
        """
        if errors not in ERROR_POLICIES:
            raise ValueError(f"errors must be one of {', '.join(ERROR_POLICIES)}; got {errors!r}")
        results: list[Prediction | MMERError | None] = []
        pieces: list[_Piece] = []
        clips = {}
        for index, item in enumerate(items):
            results.append(None)
            try:
                utterance, clip, windows = self._prepare(item, index, sample_rate)
            except MMERError as error:
                if errors == "raise":
                    raise
                results[index] = error
                continue
            clips[index] = (utterance.text is not None, clip)
            pieces.extend(_Piece(index, window, utterance.text) for window in windows)
        probabilities, transcripts, failed = self._run(pieces, errors, budget or self.batch_budget)
        rows: dict[int, list[int]] = {index: [] for index in clips}
        for row, piece in enumerate(pieces):
            rows[piece.owner].append(row)
        for index, (given, clip) in clips.items():
            results[index] = failed[index] if index in failed else self._combine(
                rows[index], probabilities, transcripts, given, clip.duration, clip.truncated)
        return results

    def timeline(self, audio: AudioSource, sample_rate: int | None = None, **options: Any):
        """The emotion timeline of a long recording: see :func:`mmer_rt.timeline.timeline` for the options."""
        from .timeline import timeline

        return timeline(self, audio, sample_rate, **options)

    def _prepare(self, item: BatchItem, index: int, sample_rate: int | None):
        """(utterance, clip, windows) of one batch item, or the MMERError that sets it aside, naming the item."""
        audio = item.audio if isinstance(item, Utterance) else item[0] if isinstance(item, tuple) and item else item
        label = str(audio) if isinstance(audio, (str, Path)) else f"item {index}"
        try:
            utterance = _as_utterance(item, sample_rate)
            _checked_text(utterance.text)
            limit = self.manifest.max_audio_samples
            clip = load_clip(utterance.audio, utterance.sample_rate, target_rate=self.manifest.sample_rate,
                             max_samples=limit if self.long_audio == "truncate" else None)
            self._check_length(clip.samples)
        except MMERError as error:
            if str(error).startswith(f"{label}:"):
                raise
            raise type(error)(f"{label}: {error}") from error
        return utterance, clip, self._windows(clip.samples)

    def decode(self, audio: AudioSource, text: str | None = None, sample_rate: int | None = None) -> "Decoded":
        """Decode and check one utterance without running a graph: the first half of :meth:`predict`.

        A server decodes each request on its own (in a thread pool, as requests arrive) and then runs many
        decoded utterances in one graph batch with :meth:`predict_decoded`. Raises as :meth:`predict` does.
        """
        utterance, clip, windows = self._prepare(Utterance(audio, text, sample_rate), 0, None)
        return Decoded(tuple(windows), utterance.text, clip.duration, clip.truncated)

    def predict_decoded(self, decoded: Sequence["Decoded"], errors: str = "raise") -> list:
        """Run utterances made by :meth:`decode`, batched by length under the budget; results in input order.

        ``predict_decoded([decode(a, t)])`` equals ``predict(a, t)``, alone or beside any other utterances.
        ``errors`` as in :meth:`predict_batch`: with ``"return"``, an utterance that onnxruntime fails on (rerun
        alone) gets its InferenceError in its place and the others their Predictions.
        """
        if errors not in ERROR_POLICIES:
            raise ValueError(f"errors must be one of {', '.join(ERROR_POLICIES)}; got {errors!r}")
        pieces = [_Piece(owner, waveform, item.text) for owner, item in enumerate(decoded)
                  for waveform in item.waveforms]
        probabilities, transcripts, failed = self._run(pieces, errors, self.batch_budget)
        rows: list[list[int]] = [[] for _ in decoded]
        for row, piece in enumerate(pieces):
            rows[piece.owner].append(row)
        return [
            failed[owner] if owner in failed else self._combine(
                rows[owner], probabilities, transcripts, item.text is not None, item.duration, item.truncated)
            for owner, item in enumerate(decoded)
        ]

    def _check_length(self, waveform: np.ndarray) -> None:
        minimum = _min_audio_samples(self.manifest)
        if len(waveform) < minimum:
            rate = self.manifest.sample_rate
            raise AudioError(
                f"{len(waveform)} samples at {rate} Hz are too short for the audio encoder, which needs "
                f"at least {minimum} ({1000 * minimum / rate:.0f} ms)"
            )

    def _windows(self, waveform: np.ndarray) -> list[np.ndarray]:
        limit = self.manifest.max_audio_samples
        if len(waveform) <= limit:
            return [waveform]
        if self.long_audio == "truncate":
            return [waveform[:limit]]
        starts = list(range(0, len(waveform) - limit, limit)) + [len(waveform) - limit]
        return [waveform[start : start + limit] for start in starts]

    def _run(self, pieces: Sequence[_Piece], errors: str,
             budget: BatchBudget) -> tuple[np.ndarray, list[str], dict[int, MMERError]]:
        """Every piece's probabilities and transcript, and the owners whose pieces onnxruntime failed on."""
        probabilities = np.zeros((len(pieces), len(self.labels)), dtype=np.float64)
        transcripts = [""] * len(pieces)
        failed: dict[int, MMERError] = {}
        lengths = [len(piece.waveform) for piece in pieces]
        batches = plan_batches(lengths, budget, self.manifest.sample_rate)[::-1]
        while batches:
            batch = batches.pop()
            try:
                with self._batch_lock:
                    batch_probabilities, batch_transcripts = self._run_batch([pieces[i] for i in batch])
            except InferenceError as error:
                owners = sorted({pieces[i].owner for i in batch})
                if errors == "raise":
                    raise InferenceError(f"item{'s' if len(owners) > 1 else ''} "
                                         f"{', '.join(map(str, owners))}: {error}") from error
                if len(batch) > 1:
                    # Any one item may be at fault: each runs alone, so that only that one loses its answer.
                    batches.extend([i] for i in batch[::-1])
                else:
                    failed.setdefault(owners[0], InferenceError(f"item {owners[0]}: {error}"))
                continue
            probabilities[batch] = batch_probabilities
            for i, transcript in zip(batch, batch_transcripts):
                transcripts[i] = transcript
        return probabilities, transcripts, failed

    def _run_batch(self, pieces: Sequence[_Piece]) -> tuple[np.ndarray, list[str]]:
        """Audio graph, transcripts, text graph, fusion graph, softmax, for one batch."""
        feeds = audio_feeds([piece.waveform for piece in pieces], audio_inputs(self.manifest.format_version))
        if self.shapes is not None:
            feeds = self.shapes.pad_audio(feeds)
        need_ctc = any(piece.text is None for piece in pieces)
        audio = self._graphs["audio_encoder"].run(
            feeds,
            host_outputs=("frame_mask", "ctc_logits") if need_ctc else ("frame_mask",),
            device_outputs=("hidden_states",),
        )
        frames = audio["frame_mask"].sum(axis=1)
        transcripts = [
            clean_transcript(piece.text) if piece.text is not None
            else ctc_greedy_decode(audio["ctc_logits"][row], int(frames[row]), self.manifest.ctc_vocab)
            for row, piece in enumerate(pieces)
        ]
        encoded = self._tokenizer.encode_batch(transcripts)
        if self.shapes is not None:
            encoded = type(encoded)(*self.shapes.pad_text(encoded.input_ids, encoded.attention_mask,
                                                          self._tokenizer.pad_id))
        text = self._graphs["text_encoder"].run(
            {"input_ids": encoded.input_ids, "attention_mask": encoded.attention_mask},
            device_outputs=("token_embeddings",),
        )
        fusion = self._graphs["fusion"].run(
            {"hidden_states": audio["hidden_states"], "frame_mask": audio["frame_mask"],
             "token_embeddings": text["token_embeddings"], "attention_mask": encoded.attention_mask},
            host_outputs=("logits",),
        )
        return _softmax(fusion["logits"][: len(pieces)]), transcripts

    def _combine(
        self, rows: list[int], probabilities: np.ndarray, transcripts: list[str], given: bool, duration: float,
        truncated: bool,
    ) -> Prediction:
        mean = probabilities[rows].mean(axis=0)
        order = np.argsort(-mean, kind="stable")
        scores = {self.labels[i]: float(mean[i]) for i in order}
        # A given transcript is shared by every window; CTC transcripts are one per window, in time order.
        transcript = transcripts[rows[0]] if given else " ".join(t for t in (transcripts[r] for r in rows) if t)
        return Prediction(
            label=self.labels[order[0]], scores=scores, transcript=transcript,
            transcript_source="given" if given else "ctc", duration=duration, truncated=truncated,
            windows=len(rows),
        )


def _other_engine(cls, model_dir: Path, manifest: ModelManifest, tokenizer: TextTokenizer, engine: str,
                  precision: str, threads: int | None, budget: BatchBudget, long_audio: str) -> "Recognizer":
    """engine="openvino", or engine="auto" on the CPU (mmer_rt/engines.py)."""
    if engine == "openvino":
        chosen, graphs = load_openvino_graphs(model_dir, manifest, precision, threads)
        _probe(model_dir, manifest, graphs, tokenizer)
        logger.info("mmer_rt: %s on the CPU under OpenVINO, fp32 graphs in %s arithmetic", model_dir, chosen)
        return cls(model_dir, manifest, graphs, tokenizer, "cpu", chosen, budget, long_audio, engine="openvino")

    def build(name: str) -> "Recognizer":
        if name == "openvino":
            return _other_engine(cls, model_dir, manifest, tokenizer, name, precision, threads, budget, long_audio)
        chosen, graphs = _load_variant(model_dir, manifest, "cpu", precision, threads)
        _probe(model_dir, manifest, graphs, tokenizer)
        return cls(model_dir, manifest, graphs, tokenizer, "cpu", chosen, budget, long_audio)

    recognizer, record = choose_engine(manifest, precision, threads, manifest.sample_rate,
                                       manifest.max_audio_samples, build)
    recognizer.engine_choice = record
    return recognizer


def _check_manifest(model_dir: Path, manifest: ModelManifest) -> None:
    if manifest.text_cleaning != TEXT_CLEANING_RULE:
        raise ModelDirError(
            f"{model_dir}: the model was exported with text cleaning rule {manifest.text_cleaning!r}, but this "
            f"mmer-rt applies {TEXT_CLEANING_RULE!r}; upgrade mmer-rt or re-export the model"
        )
    if _min_audio_samples(manifest) > manifest.max_audio_samples:
        raise ModelDirError(
            f"{model_dir / MANIFEST_NAME}: max_audio_samples: {manifest.max_audio_samples} is less than the "
            f"{_min_audio_samples(manifest)} samples the audio encoder needs (extra.min_audio_samples)"
        )


def _load_tokenizer(model_dir: Path, manifest: ModelManifest) -> TextTokenizer:
    path = model_dir / manifest.tokenizer
    if not path.is_file():
        raise ModelDirError(f"tokenizer file missing from the model directory: {path}")
    max_tokens = manifest.extra.get("max_text_tokens", DEFAULT_MAX_TEXT_TOKENS)
    try:
        tokenizer = TextTokenizer(path, max_tokens=max_tokens)
    except TextError as error:
        raise ModelDirError(f"{path}: unusable tokenizer ({error})") from error
    except Exception as error:  # the tokenizers library raises plain Exception on a malformed file
        raise ModelDirError(f"{path}: cannot read the tokenizer ({error})") from error
    specials = tokenizer.encode_batch([""]).input_ids.shape[1]
    if max_tokens <= specials:
        raise ModelDirError(
            f"{model_dir / MANIFEST_NAME}: extra.max_text_tokens: {max_tokens} leaves no room for a word beside "
            f"the tokenizer's {specials} special tokens"
        )
    return tokenizer


def _min_audio_samples(manifest: ModelManifest) -> int:
    return manifest.extra.get("min_audio_samples", DEFAULT_MIN_AUDIO_SAMPLES)


def _probe(model_dir: Path, manifest: ModelManifest, graphs: dict[str, Graph], tokenizer: TextTokenizer) -> None:
    """Run the three graphs once, on the shortest audio and the longest transcript the manifest promises, and
    compare what they give with what the manifest says: a manifest edited by hand, or written for other graphs,
    is refused here rather than failing (or answering wrongly) at every prediction."""
    where = model_dir / MANIFEST_NAME
    minimum = _min_audio_samples(manifest)
    feeds = audio_feeds([np.zeros(minimum, dtype=np.float32)], audio_inputs(manifest.format_version))
    try:
        audio = graphs["audio_encoder"].run(feeds,
                                            host_outputs=("frame_mask", "ctc_logits"),
                                            device_outputs=("hidden_states",))
    except InferenceError as error:
        raise ModelDirError(f"{where}: extra.min_audio_samples: {minimum} samples are below the audio encoder's "
                            f"receptive field: the audio graph fails on them ({error})") from error
    if audio["frame_mask"].sum() < 1:
        raise ModelDirError(f"{where}: extra.min_audio_samples: {minimum} samples are below the audio encoder's "
                            "receptive field: they give it no frame")
    width = audio["ctc_logits"].shape[-1]
    if width != len(manifest.ctc_vocab):
        raise ModelDirError(f"{where}: ctc_vocab: {len(manifest.ctc_vocab)} symbols, but the audio graph's CTC head "
                            f"scores {width}")
    longest = tokenizer.max_tokens
    encoded = tokenizer.encode_batch([" ".join(["a"] * longest)])
    try:
        text = graphs["text_encoder"].run(
            {"input_ids": encoded.input_ids, "attention_mask": encoded.attention_mask},
            device_outputs=("token_embeddings",))
        fusion = graphs["fusion"].run(
            {"hidden_states": audio["hidden_states"], "frame_mask": audio["frame_mask"],
             "token_embeddings": text["token_embeddings"], "attention_mask": encoded.attention_mask},
            host_outputs=("logits",))
    except InferenceError as error:
        stated = "" if "max_text_tokens" in manifest.extra else f" (not given: {DEFAULT_MAX_TEXT_TOKENS} by default)"
        raise ModelDirError(f"{where}: extra.max_text_tokens{stated}: the text or fusion graph fails on a transcript "
                            f"of {encoded.input_ids.shape[1]} tokens; is the value more than the text encoder's "
                            f"positions? ({error})") from error
    width = fusion["logits"].shape[-1]
    if width != len(manifest.labels):
        raise ModelDirError(f"{where}: labels: {len(manifest.labels)} labels, but the fusion graph scores {width} "
                            "classes")


def _choose_precision(model_dir: Path, manifest: ModelManifest, device: str, precision: str) -> str:
    if precision != "auto" and precision not in PRECISIONS:
        raise ValueError(f"precision must be auto or one of {', '.join(PRECISIONS)}; got {precision!r}")
    available = manifest.variants
    if precision == "auto":
        preferred = "fp16" if device == "cuda" else "int8"
        precision = preferred if preferred in available else "fp32"
    if precision not in available:
        raise ModelDirError(
            f"{model_dir} holds no {precision} variant (it has {', '.join(sorted(available)) or 'none'})"
        )
    return precision


def _load_variant(
    model_dir: Path, manifest: ModelManifest, device: str, precision: str, threads: int | None,
    cuda_graphs: bool = False,
) -> tuple[str, dict[str, Graph]]:
    chosen = _choose_precision(model_dir, manifest, device, precision)
    contract = {
        "audio_encoder": (audio_inputs(manifest.format_version), AUDIO_OUTPUTS),
        "text_encoder": (TEXT_INPUTS, TEXT_OUTPUTS),
        "fusion": (FUSION_INPUTS, FUSION_OUTPUTS),
    }
    graphs = {}
    for name, (inputs, outputs) in contract.items():
        path = verified_graph_path(model_dir, manifest.variants[chosen].graphs[name])
        session = open_session(path, device, threads, cuda_graph=cuda_graphs)
        graphs[name] = Graph(session, name, inputs, outputs, bind_device="cuda" if device == "cuda" else None,
                             cuda_graphs=cuda_graphs)
    return chosen, graphs


def _as_utterance(item: BatchItem, sample_rate: int | None) -> Utterance:
    if isinstance(item, Utterance):
        return item if item.sample_rate is not None or sample_rate is None else \
            Utterance(item.audio, item.text, sample_rate)
    if isinstance(item, tuple):
        if len(item) != 2:
            raise TextError(f"a batch item given as a tuple must be (audio, text); got {len(item)} elements")
        return Utterance(item[0], item[1], sample_rate)
    return Utterance(item, None, sample_rate)


def _checked_text(text: Any) -> str | None:
    if text is not None and not isinstance(text, str):
        raise TextError(f"the transcript must be a str or None, got {type(text).__name__}")
    if text is not None:
        try:
            text.encode("utf-8")
        except UnicodeEncodeError as error:
            raise TextError(f"the transcript is not valid Unicode text ({error.reason} at character "
                            f"{error.start}): a lone surrogate, as decoding bytes with errors='surrogateescape' "
                            "leaves; decode it with the right encoding") from None
    return text


def _softmax(logits: np.ndarray) -> np.ndarray:
    shifted = np.asarray(logits, dtype=np.float64)
    shifted = shifted - shifted.max(axis=-1, keepdims=True)
    exp = np.exp(shifted)
    return exp / exp.sum(axis=-1, keepdims=True)
