"""The dynamic batcher: concurrent requests queued, grouped by length under the Recognizer's budget, run together.

No web framework here: plain asyncio on the caller's event loop, with two thread pools so that the loop never
blocks (one decodes and resamples each request as it arrives, one runs the graphs). The rule is Triton's dynamic
batcher's: a batch is closed when it is full (the Recognizer's :class:`~mmer_rt.BatchBudget`, as
:func:`~mmer_rt.batching.plan_batches` fills it) or when the oldest waiting request has waited ``max_wait_ms``;
at most ``workers`` batches run at once. A bounded queue in front refuses at once when full, rather than grow.
"""

from __future__ import annotations

import asyncio
import functools
import io
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Callable

from ..audio import AudioSource
from ..batching import plan_batches
from ..errors import AudioError, MMERError
from ..recognizer import Decoded, Prediction, Recognizer

logger = logging.getLogger("mmer_rt.serve")


class QueueFullError(MMERError):
    """The batcher already holds ``max_queue`` requests; try again later (HTTP: 503 with Retry-After)."""


class ShuttingDownError(MMERError):
    """The batcher is draining for shutdown and takes no new requests."""


class AudioTooLongError(AudioError):
    """Audio longer than the server's ``max_audio_seconds``."""


class BatchError(MMERError):
    """A graph run failed for reasons not of the request's making; every request of that batch gets it."""


@dataclass(frozen=True)
class BatcherConfig:
    """How the batcher waits, queues and runs.

    Attributes:
      max_wait_ms: the longest a request waits for company before its batch is closed (0: never wait).
      max_queue: requests held at most (being decoded or waiting for a batch); the next one is refused.
      workers: graph runs at once; each is one batch on the shared Recognizer (onnxruntime sessions are
        thread-safe). 1 suits one device: a second run would only compete for the same cores.
      decode_threads: threads decoding and resampling incoming audio.
      max_audio_seconds: longer audio is refused (checked from the file's header before decoding, when it has
        one, and after); None: no limit.
    """

    max_wait_ms: float = 5.0
    max_queue: int = 256
    workers: int = 1
    decode_threads: int = 2
    max_audio_seconds: float | None = 60.0

    def __post_init__(self):
        if not self.max_wait_ms >= 0:
            raise ValueError(f"max_wait_ms must be >= 0; got {self.max_wait_ms!r}")
        for name in ("max_queue", "workers", "decode_threads"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer; got {value!r}")
        if self.max_audio_seconds is not None and not self.max_audio_seconds > 0:
            raise ValueError(f"max_audio_seconds must be positive or None; got {self.max_audio_seconds!r}")


@dataclass(frozen=True)
class BatchReport:
    """What one graph batch did, given to observers (the HTTP layer turns it into metrics)."""

    requests: int
    rows: int
    audio_seconds: float
    run_seconds: float
    failed: bool


@dataclass
class _Entry:
    decoded: Decoded
    future: asyncio.Future
    arrived: float


class Batcher:
    """Dynamic batching of single-utterance requests onto one :class:`~mmer_rt.Recognizer`.

    Use from one asyncio event loop: ``prediction = await batcher.predict(audio, text)``. It starts on the first
    call; ``await batcher.close()`` takes no new requests, finishes every accepted one and stops the threads.
    The answer equals ``recognizer.predict(audio, text)`` whatever else shared its batch.
    """

    def __init__(self, recognizer: Recognizer, config: BatcherConfig | None = None):
        self.recognizer = recognizer
        self.config = config or BatcherConfig()
        self._observers: list[Callable[[BatchReport], None]] = []
        self._pending: list[_Entry] = []
        self._admitted = 0  # accepted and not yet in a batch: being decoded, or in _pending
        self._closing = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self._scheduler: asyncio.Task | None = None
        self._running: set[asyncio.Task] = set()
        self._wake: asyncio.Event | None = None
        self._free: asyncio.Semaphore | None = None
        self._decode_pool = ThreadPoolExecutor(self.config.decode_threads, thread_name_prefix="mmer-decode")
        self._graph_pool = ThreadPoolExecutor(self.config.workers, thread_name_prefix="mmer-graph")

    @property
    def queue_depth(self) -> int:
        """Requests accepted and not yet running: being decoded or waiting for a batch."""
        return self._admitted

    @property
    def waiting(self) -> int:
        """Requests decoded and waiting for a batch."""
        return len(self._pending)

    @property
    def running(self) -> int:
        """Batches in their graph run now."""
        return len(self._running)

    @property
    def accepting(self) -> bool:
        return not self._closing

    def add_observer(self, observer: Callable[[BatchReport], None]) -> None:
        """Call ``observer(report)`` on the event loop after every batch."""
        self._observers.append(observer)

    async def predict(self, audio: AudioSource, text: str | None = None, sample_rate: int | None = None) -> Prediction:
        """Queue one utterance and wait for its answer.

        Raises:
          QueueFullError: ``max_queue`` requests are already held. ShuttingDownError: after :meth:`close`.
          AudioError, TextError: the request's own input (AudioTooLongError over ``max_audio_seconds``).
          InferenceError: onnxruntime failed on this request, run alone.
          BatchError: the graph run of its batch failed otherwise.
        """
        if self._closing:
            raise ShuttingDownError("the server is shutting down and takes no new requests")
        if self._admitted >= self.config.max_queue:
            raise QueueFullError(f"the queue is full ({self.config.max_queue} requests waiting); retry shortly")
        self._start()
        self._admitted += 1
        try:
            decoded = await self._loop.run_in_executor(self._decode_pool, self._decode, audio, text, sample_rate)
        except BaseException:
            self._admitted -= 1
            self._wake.set()  # a draining scheduler may be waiting for this request
            raise
        entry = _Entry(decoded, self._loop.create_future(), self._loop.time())
        self._pending.append(entry)
        self._wake.set()
        try:
            return await entry.future
        except asyncio.CancelledError:  # the caller has gone (a client disconnected): never run it
            self._withdraw(entry)
            raise

    async def close(self) -> None:
        """Take no new requests, answer every accepted one, then stop the threads."""
        self._closing = True
        if self._scheduler is not None:
            self._wake.set()
            await self._scheduler
            if self._running:
                await asyncio.gather(*self._running, return_exceptions=True)
        self._decode_pool.shutdown(wait=False)
        self._graph_pool.shutdown(wait=False)

    def _start(self) -> None:
        if self._scheduler is not None:
            return
        self._loop = asyncio.get_running_loop()
        self._wake = asyncio.Event()
        self._free = asyncio.Semaphore(self.config.workers)
        self._scheduler = self._loop.create_task(self._schedule(), name="mmer-batcher")

    def _decode(self, audio: AudioSource, text: str | None, sample_rate: int | None) -> Decoded:
        limit = self.config.max_audio_seconds
        if limit is not None:
            declared = _declared_seconds(audio)
            if declared is not None and declared > limit:
                raise AudioTooLongError(f"audio: its header says {declared:.1f} s, more than this server's limit "
                                        f"of {limit:g} s")
        decoded = self.recognizer.decode(audio, text, sample_rate)
        if limit is not None and decoded.duration > limit:
            raise AudioTooLongError(f"audio: {decoded.duration:.1f} s, more than this server's limit of {limit:g} s")
        return decoded

    async def _schedule(self) -> None:
        while True:
            await self._free.acquire()
            batch = await self._next_batch()
            if batch is None:
                self._free.release()
                return
            task = self._loop.create_task(self._run(batch))
            self._running.add(task)
            task.add_done_callback(self._running.discard)

    async def _next_batch(self) -> list[_Entry] | None:
        """Wait until a batch should close and take its requests out of the queue; None once drained."""
        while True:
            self._drop_cancelled()
            if not self._pending:
                if self._closing and self._admitted == 0:
                    return None
                self._wake.clear()
                await self._wake.wait()
                continue
            oldest = min(self._pending, key=lambda entry: entry.arrived)
            deadline = oldest.arrived + self.config.max_wait_ms / 1000
            chosen = self._choose(oldest, expired=self._closing or self._loop.time() >= deadline)
            if chosen is not None:
                taken = set(map(id, chosen))
                self._pending = [entry for entry in self._pending if id(entry) not in taken]
                self._admitted -= len(chosen)
                return chosen
            self._wake.clear()
            try:
                await asyncio.wait_for(self._wake.wait(), max(deadline - self._loop.time(), 0))
            except asyncio.TimeoutError:
                pass

    def _choose(self, oldest: _Entry, expired: bool) -> list[_Entry] | None:
        """The requests of the batch to run now, or None to wait for company.

        The queue's rows (one per waveform; several for a windowed request) are planned as the Recognizer plans
        a call: by plan_batches under its budget. Every planned batch but the last is full (the next row did not
        fit); the last is full at max_items. The oldest request's batch goes first when full or due, else any
        full one.
        """
        owners = [entry for entry in self._pending for _ in entry.decoded.waveforms]
        lengths = [len(w) for entry in self._pending for w in entry.decoded.waveforms]
        budget = self.recognizer.batch_budget
        plan = plan_batches(lengths, budget, self.recognizer.manifest.sample_rate)
        groups = [_unique(owners[row] for row in batch) for batch in plan]
        full = [group for group, batch in zip(groups, plan)
                if batch is not plan[-1] or len(batch) >= budget.max_items]
        with_oldest = next(group for group in groups if any(entry is oldest for entry in group))
        if expired or any(group is with_oldest for group in full):
            return with_oldest
        return full[0] if full else None

    def _withdraw(self, entry: _Entry) -> None:
        for index, waiting in enumerate(self._pending):
            if waiting is entry:
                del self._pending[index]
                self._admitted -= 1
                self._wake.set()  # a draining scheduler may be waiting for the queue to empty
                return

    def _drop_cancelled(self) -> None:
        kept = [entry for entry in self._pending if not entry.future.done()]
        self._admitted -= len(self._pending) - len(kept)
        self._pending = kept

    async def _run(self, batch: list[_Entry]) -> None:
        started = time.perf_counter()
        failed = False
        try:
            # errors="return": onnxruntime failing on the batch reruns its requests one by one, and only one that
            # fails alone gets its InferenceError.
            results = await self._loop.run_in_executor(
                self._graph_pool, functools.partial(self.recognizer.predict_decoded,
                                                    [entry.decoded for entry in batch], errors="return"))
            for entry, result in zip(batch, results):
                if entry.future.done():
                    continue
                if isinstance(result, BaseException):
                    entry.future.set_exception(result)
                else:
                    entry.future.set_result(result)
        except Exception as error:  # noqa: BLE001 - any failure of a graph run fails only its own batch
            failed = True
            logger.exception("a batch of %d requests failed", len(batch))
            failure = BatchError(f"the model failed on this request's batch ({type(error).__name__}: {error})")
            for entry in batch:
                if not entry.future.done():
                    entry.future.set_exception(failure)
        finally:
            self._free.release()
        report = BatchReport(
            requests=len(batch), rows=sum(len(entry.decoded.waveforms) for entry in batch),
            audio_seconds=sum(entry.decoded.duration for entry in batch),
            run_seconds=time.perf_counter() - started, failed=failed,
        )
        for observer in self._observers:
            observer(report)


def _unique(entries) -> list[_Entry]:
    seen, kept = set(), []
    for entry in entries:
        if id(entry) not in seen:
            seen.add(id(entry))
            kept.append(entry)
    return kept


def _declared_seconds(audio: AudioSource) -> float | None:
    """The duration a file's header states, read without decoding; None for arrays or unreadable headers
    (decoding then reports the problem)."""
    if not isinstance(audio, (bytes, bytearray, memoryview)):
        return None
    import soundfile

    try:
        info = soundfile.info(io.BytesIO(bytes(audio)))
    except Exception:  # noqa: BLE001 - the decoder gives the typed error for a bad file
        return None
    return info.frames / info.samplerate if info.samplerate > 0 else None

