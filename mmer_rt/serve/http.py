"""The HTTP face of the serving layer: a FastAPI app with the predict route, the KServe v2 (Open Inference Protocol)
REST routes, request limits, the mapping of errors to status codes, and Prometheus metrics.

Building the app around a Recognizer (what ``mmer-rt serve`` does, and what a Ray Serve deployment wraps)::

    from mmer_rt import BatchBudget, Recognizer
    from mmer_rt.serve.batcher import BatcherConfig
    from mmer_rt.serve.http import ServeConfig, create_app

    recognizer = Recognizer.from_dir("model", batch_budget=BatchBudget(max_items=16))
    app = create_app(recognizer, ServeConfig(max_body_mb=25, batcher=BatcherConfig(max_wait_ms=5)))
    # uvicorn.run(app, host="127.0.0.1", port=8080)

``create_app(target, config)`` takes a Recognizer (a :class:`~mmer_rt.serve.batcher.Batcher` is made around it
from ``config.batcher``) or a ready Batcher. The batch budget is the Recognizer's own. The batcher starts on the
first request, on whatever event loop serves it, and the app's lifespan shutdown drains it (every accepted request
is answered) — so the app needs nothing else to start, under uvicorn or under ``@serve.ingress(app)``. The app's
state holds ``app.state.batcher`` and ``app.state.metrics`` (a :class:`Metrics`, its own Prometheus registry).

fastapi, prometheus-client and python-multipart come with the ``[serve]`` extra; they are imported when
:func:`create_app` runs, never by ``import mmer_rt``.
"""


import asyncio
import base64
import binascii
import contextlib
import json
import logging
import math
import struct
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .. import __version__
from ..errors import AudioError, MMERError, TextError, TimelineError
from ..recognizer import Prediction, Recognizer
from .batcher import (
    AudioTooLongError, BatcherConfig, BatchReport, Batcher, QueueFullError, ShuttingDownError,
)

logger = logging.getLogger("mmer_rt.serve")

PLATFORM = "mmer-rt"
BINARY_HEADER = "inference-header-content-length"  # Triton's binary tensor data extension
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128)
CLIENT_CLOSED = 499  # nginx's code for "client closed the request": only in metrics, nobody is there to read it


class RequestError(MMERError):
    """A request that is malformed for the API (a missing field, a bad KServe tensor): HTTP 400."""


class UnsupportedMediaTypeError(RequestError):
    """A /v1/predict body that is neither multipart/form-data nor audio/* nor application/octet-stream: 415."""


class BodyTooLargeError(MMERError):
    """A request body over ``max_body_mb``: HTTP 413, refused before the body is read whole."""


@dataclass(frozen=True)
class ServeConfig:
    """The HTTP limits and names, and the batcher's configuration.

    Attributes:
      max_body_mb: largest request body (MiB); larger ones get 413 (from Content-Length before reading, or as
        soon as a chunked body passes it). Protects memory from one huge upload.
      model_name: the model's name in the KServe routes (``/v2/models/{model_name}``).
      retry_after_s: the ``Retry-After`` of a 503 when the queue is full.
      batcher: waiting, queue bound, workers and the audio-length limit (used when given a Recognizer).
    """

    max_body_mb: float = 25.0
    model_name: str = "mmer"
    retry_after_s: int = 1
    batcher: BatcherConfig = field(default_factory=BatcherConfig)

    def __post_init__(self):
        if not self.max_body_mb > 0:
            raise ValueError(f"max_body_mb must be positive; got {self.max_body_mb!r}")

    @property
    def max_body_bytes(self) -> int:
        return int(self.max_body_mb * 1024 * 1024)


class Metrics:
    """The server's Prometheus metrics, in a registry of their own (several apps may live in one process)."""

    def __init__(self, batcher: Batcher):
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

        self.registry = CollectorRegistry()
        self.requests = Counter("mmer_requests_total", "HTTP requests by route and status code",
                                ["route", "status"], registry=self.registry)
        self.latency = Histogram("mmer_request_duration_seconds", "HTTP request latency, from the first byte "
                                 "received to the answer", ["route"], buckets=LATENCY_BUCKETS, registry=self.registry)
        self.queue_depth = Gauge("mmer_queue_depth", "requests accepted and not yet running (decoding or "
                                 "waiting for a batch)", registry=self.registry)
        self.queue_depth.set_function(lambda: batcher.queue_depth)
        self.batches_running = Gauge("mmer_batches_running", "batches in their graph run now",
                                     registry=self.registry)
        self.batches_running.set_function(lambda: batcher.running)
        self.batch_size = Histogram("mmer_batch_size", "requests per graph batch", buckets=BATCH_BUCKETS,
                                    registry=self.registry)
        self.batch_duration = Histogram("mmer_batch_duration_seconds", "time of one batch's graph runs",
                                        buckets=LATENCY_BUCKETS, registry=self.registry)
        self.batch_failures = Counter("mmer_batch_failures_total", "batches whose graph run failed",
                                      registry=self.registry)
        self.audio_seconds = Counter("mmer_audio_seconds_total", "seconds of audio answered",
                                     registry=self.registry)
        batcher.add_observer(self.observe_batch)

    def observe_batch(self, report: BatchReport) -> None:
        self.batch_size.observe(report.requests)
        self.batch_duration.observe(report.run_seconds)
        if report.failed:
            self.batch_failures.inc()
        else:
            self.audio_seconds.inc(report.audio_seconds)

    def render(self) -> tuple[bytes, str]:
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

        return generate_latest(self.registry), CONTENT_TYPE_LATEST


def create_app(target: Recognizer | Batcher, config: ServeConfig | None = None):
    """The FastAPI app serving ``target`` (a Recognizer, or a Batcher around one); see the module docstring."""
    from fastapi import FastAPI, Request
    from fastapi.responses import JSONResponse, Response
    from starlette.concurrency import run_in_threadpool
    from starlette.exceptions import HTTPException as StarletteHTTPException
    from starlette.requests import ClientDisconnect

    config = config or ServeConfig()
    batcher = target if isinstance(target, Batcher) else Batcher(target, config.batcher)
    recognizer = batcher.recognizer
    metrics = Metrics(batcher)
    name = config.model_name

    @contextlib.asynccontextmanager
    async def lifespan(app):
        yield
        logger.info("draining: %d requests still queued", batcher.queue_depth)
        await batcher.close()
        logger.info("drained; stopped")

    app = FastAPI(
        title="mmer-rt", version=__version__, lifespan=lifespan,
        description="Speech emotion recognition (MMER) on onnxruntime, with dynamic batching across requests.",
    )
    app.state.batcher = batcher
    app.state.metrics = metrics
    app.state.config = config
    routes: set[str] = set()  # filled below; the metrics' route label is one of these or "other"
    app.add_middleware(_Guard, max_body_bytes=config.max_body_bytes, metrics=metrics, routes=routes)

    @app.exception_handler(MMERError)
    async def _mmer_error(request: Request, error: MMERError):
        status = _status_of(error)
        headers = {"Retry-After": str(config.retry_after_s)} if isinstance(error, QueueFullError) else None
        return JSONResponse({"error": str(error), "error_type": type(error).__name__}, status, headers=headers)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, error: StarletteHTTPException):
        # The framework's own refusals (404, 405, a malformed multipart body) in the same JSON shape as ours.
        return JSONResponse({"error": str(error.detail), "error_type": "HTTPError"}, error.status_code,
                            headers=getattr(error, "headers", None))

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, error: Exception):
        logger.error("unexpected %s on %s", type(error).__name__, request.url.path, exc_info=error)
        return JSONResponse({"error": f"internal error ({type(error).__name__})", "error_type": "InternalError"}, 500)

    @app.exception_handler(ClientDisconnect)
    async def _client_gone(request: Request, error: ClientDisconnect):
        # Nobody is left to read this; the status only reaches the metrics.
        return Response(status_code=CLIENT_CLOSED)

    @app.post(
        "/v1/predict", summary="Recognise the emotion of one utterance",
        openapi_extra={"requestBody": _PREDICT_BODY},
        responses={200: {"description": "the prediction", "content": {"application/json": {
            "example": {"label": "angry", "scores": [{"label": "angry", "score": 0.71},
                                                         {"label": "neutral", "score": 0.2}],
                        "transcript": "leave me alone", "transcript_source": "given", "duration": 2.4,
                        "truncated": False, "windows": 1}}}},
                   **_ERROR_RESPONSES},
    )
    async def predict(request: Request):
        """The audio as a multipart file field ``audio`` (optional form field ``text``), or as the raw body with
        an ``audio/*`` or ``application/octet-stream`` content type (optional query ``text=``). Without a
        transcript the model's CTC transcript is used."""
        audio, text = await _predict_inputs(request)
        prediction = await _unless_gone(request, batcher.predict(audio, text))
        return prediction_json(prediction)

    @app.post("/v1/timeline", summary="The emotion timeline of a long recording (needs the [timeline] extra)",
              responses=_ERROR_RESPONSES)
    async def timeline_route(request: Request):
        """The audio as a multipart file field ``audio``, with optional files ``rttm`` (speaker turns) and
        ``transcript`` (timed words: .vtt, .srt or .json, told by its file name) and the field
        ``channels_as_speakers`` ("true"); or as the raw body (``audio/*``, ``application/octet-stream``) with the
        query ``channels_as_speakers=true``. Answers ``Timeline.to_dict()``: segments (start, end, speaker, label,
        scores, transcript, transcript_source) in time order, speech regions, the per-speaker summary, settings.
        Runs in a thread of its own, its windows batched under the Recognizer's budget, not the batcher's queue."""
        from .timeline_inputs import timeline_inputs

        async with timeline_inputs(request, RequestError, UnsupportedMediaTypeError) as inputs:
            result = await _unless_gone(request, run_in_threadpool(
                recognizer.timeline, inputs.audio, speakers=inputs.rttm, transcript=inputs.transcript,
                channels_as_speakers=inputs.channels_as_speakers))
        return result.to_dict()

    @app.get("/v2", summary="KServe v2 server metadata")
    async def server_metadata():
        return {"name": PLATFORM, "version": __version__, "extensions": ["binary_tensor_data"]}

    @app.get("/v2/health/live", summary="KServe v2 liveness")
    async def live():
        return {"live": True}

    @app.get("/v2/health/ready", summary="KServe v2 readiness: false (503) while draining for shutdown")
    async def ready():
        return JSONResponse({"ready": batcher.accepting}, 200 if batcher.accepting else 503)

    @app.get(f"/v2/models/{name}", summary="KServe v2 model metadata")
    async def model_metadata():
        return _model_metadata(name, recognizer)

    @app.get(f"/v2/models/{name}/ready", summary="KServe v2 model readiness")
    async def model_ready():
        return JSONResponse({"name": name, "ready": batcher.accepting}, 200 if batcher.accepting else 503)

    @app.post(f"/v2/models/{name}/infer", summary="KServe v2 inference (JSON, or Triton's binary tensor data)",
              openapi_extra={"requestBody": _INFER_BODY}, responses=_ERROR_RESPONSES)
    async def infer(request: Request):
        """Input ``audio``: BYTES, one audio file per element (binary data, or base64 strings with the input's
        ``parameters.content_type`` = ``"base64"``); optional ``text``: BYTES, one UTF-8 transcript per element.
        Outputs: ``label`` (BYTES [N]), ``scores`` (FP32 [N, C], in the order of ``labels``), ``labels`` (BYTES
        [C])."""
        body = await request.body()
        # In a thread: JSON and base64 of a large body would hold up the event loop.
        header, audios, texts = await run_in_threadpool(_parse_infer, body, request.headers.get(BINARY_HEADER))
        predictions = await _unless_gone(
            request, _gather([batcher.predict(audio, text) for audio, text in zip(audios, texts)]))
        payload, binary = _infer_response(header, name, recognizer.labels, predictions)
        if binary is None:
            return JSONResponse(payload)
        head = json.dumps(payload).encode()
        return Response(head + binary, media_type="application/octet-stream",
                        headers={"Inference-Header-Content-Length": str(len(head))})

    @app.get("/metrics", summary="Prometheus metrics")
    async def prometheus():
        content, media_type = metrics.render()
        return Response(content, media_type=media_type)

    routes.update(route.path for route in app.routes)
    return app


def prediction_json(prediction: Prediction) -> dict[str, Any]:
    """The /v1/predict answer: the transformers audio-classification list under ``scores``, highest first."""
    return {
        "label": prediction.label,
        "scores": [{"label": label, "score": score} for label, score in prediction.scores.items()],
        "transcript": prediction.transcript,
        "transcript_source": prediction.transcript_source,
        "duration": prediction.duration,
        "truncated": prediction.truncated,
        "windows": prediction.windows,
    }


def _status_of(error: MMERError) -> int:
    if isinstance(error, (QueueFullError, ShuttingDownError)):
        return 503
    if isinstance(error, (AudioTooLongError, BodyTooLargeError)):
        return 413
    if isinstance(error, UnsupportedMediaTypeError):
        return 415
    if isinstance(error, RequestError):
        return 400
    if isinstance(error, (AudioError, TextError, TimelineError)):
        return 422
    return 500  # BatchError, and anything unforeseen: the server's fault, not the request's


async def _unless_gone(request, call):
    """Await ``call``, cancelling it if the client disconnects first: its request then leaves the queue unrun."""
    from starlette.requests import ClientDisconnect

    async def disconnected():
        # The body has been read, so the next ASGI message can only be the disconnect.
        while (await request.receive())["type"] != "http.disconnect":
            pass

    work, watch = asyncio.ensure_future(call), asyncio.ensure_future(disconnected())
    try:
        await asyncio.wait({work, watch}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        if not work.done():
            work.cancel()
        watch.cancel()
    if work.cancelled():
        raise ClientDisconnect()
    return work.result()


async def _gather(calls: list) -> list:
    """Await all; on the first error cancel the rest (their requests leave the queue) and raise it."""
    tasks = [asyncio.ensure_future(call) for call in calls]
    try:
        return await asyncio.gather(*tasks)
    except BaseException:
        for task in tasks:
            task.cancel()
        raise


async def _predict_inputs(request) -> tuple[bytes, str | None]:
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type == "multipart/form-data":
        async with request.form(max_files=1, max_fields=4) as form:  # closing it removes spooled files
            upload, text = form.get("audio"), form.get("text")
            if upload is None or isinstance(upload, str):
                raise RequestError("the multipart form needs a file field 'audio'")
            if text is not None and not isinstance(text, str):
                raise RequestError("the form field 'text' must be a plain field, not a file")
            return await upload.read(), text
    if content_type.startswith("audio/") or content_type == "application/octet-stream":
        body = await request.body()
        if not body:
            raise AudioError("the request body is empty: send the audio file's bytes")
        return body, request.query_params.get("text")
    raise UnsupportedMediaTypeError(
        f"unsupported content type {content_type or '(none)'!r}: send multipart/form-data with a file field "
        "'audio', or the audio file as the body with an audio/* or application/octet-stream content type"
    )


def _parse_infer(body: bytes, header_length: str | None) -> tuple[dict, list[bytes], list[str | None]]:
    """A KServe v2 request, JSON or Triton binary: (its JSON header, audio files, transcripts or None)."""
    if header_length is not None:
        try:
            size = int(header_length)
        except ValueError:
            size = -1
        if not 0 <= size <= len(body):
            raise RequestError(f"Inference-Header-Content-Length is {header_length!r} but the body holds "
                               f"{len(body)} bytes")
        head, binary = body[:size], body[size:]
    else:
        head, binary = body, b""
    try:
        header = json.loads(head)
    except (UnicodeDecodeError, ValueError) as error:
        raise RequestError(f"the inference request is not valid JSON ({error})") from error
    if not isinstance(header, dict) or not isinstance(header.get("inputs"), list):
        raise RequestError("the inference request must be a JSON object with a list 'inputs'")
    tensors, offset = {}, 0
    for tensor in header["inputs"]:
        if not isinstance(tensor, dict) or not isinstance(tensor.get("name"), str):
            raise RequestError("every input must be an object with a 'name'")
        input_name = tensor["name"]
        if input_name not in ("audio", "text"):
            raise RequestError(f"unknown input {input_name!r}: this model takes 'audio' and optionally 'text'")
        if tensor.get("datatype") != "BYTES":
            raise RequestError(f"input {input_name!r}: datatype must be BYTES, got {tensor.get('datatype')!r}")
        elements, offset = _tensor_elements(tensor, binary, offset)
        shape = tensor.get("shape")
        if not (isinstance(shape, list) and all(isinstance(d, int) and d >= 0 for d in shape)
                and math.prod(shape) == len(elements)):
            raise RequestError(f"input {input_name!r}: shape {shape!r} does not hold its {len(elements)} elements")
        tensors[input_name] = elements
    if offset != len(binary):
        raise RequestError(f"the binary data holds {len(binary)} bytes but the inputs name {offset}")
    if "audio" not in tensors or not tensors["audio"]:
        raise RequestError("the request needs a non-empty BYTES input 'audio' (one audio file per element)")
    audios = tensors["audio"]
    if "text" not in tensors:
        return header, audios, [None] * len(audios)
    if len(tensors["text"]) != len(audios):
        raise RequestError(f"input 'text' has {len(tensors['text'])} elements for {len(audios)} audio files")
    texts = []
    for index, raw in enumerate(tensors["text"]):
        try:
            texts.append(raw.decode("utf-8"))
        except UnicodeDecodeError as error:
            raise TextError(f"text element {index} is not UTF-8 ({error})") from error
    return header, audios, texts


def _tensor_elements(tensor: dict, binary: bytes, offset: int) -> tuple[list[bytes], int]:
    name = tensor["name"]
    parameters = tensor.get("parameters") or {}
    if not isinstance(parameters, dict):
        raise RequestError(f"input {name!r}: parameters must be an object")
    size = parameters.get("binary_data_size")
    if size is not None:
        if isinstance(size, bool) or not isinstance(size, int) or size < 0 or offset + size > len(binary):
            raise RequestError(f"input {name!r}: binary_data_size {size!r} runs past the body's binary data")
        return _unpack_bytes(name, binary[offset:offset + size]), offset + size
    data = tensor.get("data")
    flat = list(_flatten(data)) if isinstance(data, list) else None
    if flat is None or not all(isinstance(item, str) for item in flat):
        raise RequestError(f"input {name!r}: 'data' must be a list of strings (or use binary data)")
    if parameters.get("content_type") == "base64":
        try:
            return [base64.b64decode(item, validate=True) for item in flat], offset
        except binascii.Error as error:
            raise RequestError(f"input {name!r}: invalid base64 ({error})") from error
    if name == "audio":
        raise RequestError("input 'audio' in JSON must be base64 strings with parameters.content_type = "
                           "'base64' (or send it as binary data)")
    return [item.encode("utf-8") for item in flat], offset


def _unpack_bytes(name: str, raw: bytes) -> list[bytes]:
    """Triton's BYTES serialisation: each element is a 4-byte little-endian length and that many bytes."""
    elements, offset = [], 0
    while offset < len(raw):
        if offset + 4 > len(raw):
            raise RequestError(f"input {name!r}: truncated BYTES element length at byte {offset}")
        (length,) = struct.unpack_from("<I", raw, offset)
        offset += 4
        if offset + length > len(raw):
            raise RequestError(f"input {name!r}: a BYTES element of {length} bytes runs past its data")
        elements.append(raw[offset:offset + length])
        offset += length
    return elements


def _pack_bytes(elements: list[bytes]) -> bytes:
    return b"".join(struct.pack("<I", len(element)) + element for element in elements)


def _flatten(data):
    for item in data:
        if isinstance(item, list):
            yield from _flatten(item)
        else:
            yield item


def _infer_response(header: dict, name: str, labels: list[str], predictions: list[Prediction]):
    """(the JSON answer, the binary tail or None): outputs as asked, binary where the request asks for it."""
    scores = np.array([[p.scores[label] for label in labels] for p in predictions], dtype=np.float32)
    tensors = {
        "label": ("BYTES", [len(predictions)], [p.label for p in predictions]),
        "scores": ("FP32", list(scores.shape), scores),
        "labels": ("BYTES", [len(labels)], list(labels)),
    }
    parameters = header.get("parameters") if isinstance(header.get("parameters"), dict) else {}
    all_binary = bool(parameters.get("binary_data_output", False))
    asked = header.get("outputs")
    if asked is None:
        wanted = [(output, all_binary) for output in ("label", "scores", "labels")]
    else:
        if not isinstance(asked, list) or not all(isinstance(o, dict) and o.get("name") in tensors for o in asked):
            raise RequestError(f"outputs must name some of {', '.join(tensors)}")
        wanted = [(o["name"], bool((o.get("parameters") or {}).get("binary_data", all_binary))) for o in asked]
    outputs, tail = [], []
    for output, binary in wanted:
        datatype, shape, values = tensors[output]
        entry: dict[str, Any] = {"name": output, "datatype": datatype, "shape": shape}
        if binary:
            raw = _pack_bytes([v.encode() for v in values]) if datatype == "BYTES" else values.tobytes()
            entry["parameters"] = {"binary_data_size": len(raw)}
            tail.append(raw)
        else:
            entry["data"] = list(values) if datatype == "BYTES" else values.reshape(-1).tolist()
        outputs.append(entry)
    payload: dict[str, Any] = {"model_name": name, "model_version": "1", "outputs": outputs}
    if "id" in header:
        payload["id"] = header["id"]
    return payload, (b"".join(tail) if any(binary for _, binary in wanted) else None)


def _model_metadata(name: str, recognizer: Recognizer) -> dict[str, Any]:
    return {
        "name": name, "versions": ["1"], "platform": PLATFORM,
        "inputs": [{"name": "audio", "datatype": "BYTES", "shape": [-1]},
                   {"name": "text", "datatype": "BYTES", "shape": [-1]}],
        "outputs": [{"name": "label", "datatype": "BYTES", "shape": [-1]},
                    {"name": "scores", "datatype": "FP32", "shape": [-1, len(recognizer.labels)]},
                    {"name": "labels", "datatype": "BYTES", "shape": [len(recognizer.labels)]}],
        "parameters": {"labels": ",".join(recognizer.labels), "precision": recognizer.precision,
                       "device": recognizer.device},
    }


class _Guard:
    """ASGI middleware: the body limit (413 before the body is read whole) and per-request metrics."""

    def __init__(self, app, max_body_bytes: int, metrics: Metrics, routes: set[str]):
        self.app = app
        self.max_body_bytes = max_body_bytes
        self.metrics = metrics
        self.routes = routes

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        started = time.perf_counter()
        route = scope["path"] if scope["path"] in self.routes else "other"  # bounded label values
        state = {"status": None, "received": 0}

        async def tracked_send(message):
            if message["type"] == "http.response.start":
                state["status"] = message["status"]
            await send(message)

        async def limited_receive():
            message = await receive()
            if message["type"] == "http.request":
                state["received"] += len(message.get("body", b""))
                if state["received"] > self.max_body_bytes:
                    raise _TooLarge()
            return message

        try:
            declared = _content_length(scope)
            if declared is not None and declared > self.max_body_bytes:
                await self._too_large(tracked_send, declared)
            else:
                await self.app(scope, limited_receive, tracked_send)
        except _TooLarge:
            if state["status"] is None:
                await self._too_large(tracked_send, None)
        finally:
            status = state["status"] or CLIENT_CLOSED
            self.metrics.requests.labels(route, str(status)).inc()
            self.metrics.latency.labels(route).observe(time.perf_counter() - started)

    async def _too_large(self, send, declared: int | None) -> None:
        size = f"{declared} bytes" if declared is not None else "more"
        body = json.dumps({"error": f"the request body ({size}) is over this server's limit of "
                                    f"{self.max_body_bytes} bytes", "error_type": "BodyTooLargeError"}).encode()
        await send({"type": "http.response.start", "status": 413,
                    "headers": [(b"content-type", b"application/json"), (b"connection", b"close"),
                                (b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})


class _TooLarge(Exception):
    pass


def _content_length(scope) -> int | None:
    for key, value in scope.get("headers", ()):
        if key == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None


_ERROR_RESPONSES = {
    status: {"description": description, "content": {"application/json": {"example": {
        "error": example, "error_type": error_type}}}}
    for status, description, error_type, example in (
        (400, "a malformed request", "RequestError", "the multipart form needs a file field 'audio'"),
        (413, "a body over --max-body-mb, or audio over --max-audio-seconds", "AudioTooLongError",
         "audio: 75.0 s, more than this server's limit of 60 s"),
        (415, "an unsupported content type", "UnsupportedMediaTypeError", "unsupported content type 'text/plain'"),
        (422, "audio or text that cannot be used", "AudioError", "item 0: cannot decode audio (...)"),
        (500, "the model failed on this request (InferenceError) or on its batch (BatchError)", "BatchError",
         "the model failed on this request's batch (RuntimeError: ...)"),
        (503, "the queue is full (with Retry-After), or the server is shutting down", "QueueFullError",
         "the queue is full (256 requests waiting); retry shortly"),
    )
}

_PREDICT_BODY = {
    "required": True,
    "content": {
        "multipart/form-data": {"schema": {"type": "object", "required": ["audio"], "properties": {
            "audio": {"type": "string", "format": "binary", "description": "the audio file"},
            "text": {"type": "string", "description": "its transcript (optional)"}}}},
        "audio/*": {"schema": {"type": "string", "format": "binary"}},
        "application/octet-stream": {"schema": {"type": "string", "format": "binary"}},
    },
}

_INFER_BODY = {
    "required": True,
    "content": {"application/json": {"example": {
        "inputs": [{"name": "audio", "datatype": "BYTES", "shape": [1], "parameters": {"content_type": "base64"},
                    "data": ["UklGRi...base64 of a WAV file..."]},
                   {"name": "text", "datatype": "BYTES", "shape": [1], "data": ["leave me alone"]}]}}},
}
