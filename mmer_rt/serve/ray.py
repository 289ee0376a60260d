"""Ray: offline scoring as a Ray Data job, and the HTTP service as a Ray Serve application; one Recognizer per
actor or replica. Ray is imported only when one of them is used (the ``[ray]`` extra).

Both run where ``ray.init`` points: a local instance started for the job, the cluster ``ray start`` made on this
machine, ``RAY_ADDRESS``, or any cluster's address (``--ray HEAD:6379``, ``serve run --address``). Every node must
have mmer-rt installed and see the model directory and the audio files at the same paths (a shared file system),
since actors and replicas open them by path."""

from __future__ import annotations

import json
import logging
import re
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator, Sequence

import numpy as np

from ..errors import MMERError
from ..recognizer import Recognizer
from .score import ScoreItem, score_chunk

logger = logging.getLogger("mmer_rt")


def require_ray():
    """The ``ray`` module, or an MMERError that says how to install it."""
    try:
        import ray
    except ImportError as error:
        raise MMERError(f"Ray is not installed ({error}); install it with: pip install 'mmer-rt[ray]'") from error
    return ray


@contextmanager
def ray_connection(address: str | None) -> Iterator[None]:
    """Join Ray for the block: a connection this process already has, else ``ray.init(address)``, shut down after.

    ``address`` None or empty is Ray's own default: ``RAY_ADDRESS``, else the cluster ``ray start`` made on this
    machine, else a new local instance.
    """
    ray = require_ray()
    if ray.is_initialized():
        yield
        return
    try:
        ray.init(address=address or None, logging_level=logging.WARNING)
    except (ConnectionError, RuntimeError, ValueError) as error:
        where = f"the Ray cluster at {address}" if address else "Ray"
        raise MMERError(
            f"cannot join {where} ({error}); a cluster started with token authentication also needs "
            "RAY_AUTH_MODE=token and its token (~/.ray/auth_token or RAY_AUTH_TOKEN) on this machine"
        ) from error
    try:
        yield
    finally:
        ray.shutdown()


class ScoringActor:
    """A Ray Data actor: loads one Recognizer when it starts and scores the batches it is given."""

    def __init__(self, model_dir: str, recognizer_options: dict):
        self.recognizer = Recognizer.from_dir(model_dir, **recognizer_options)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        items = [ScoreItem.from_json(line) for line in batch["item"]]
        # Rows travel as JSON text: their fields vary (result or error, meta or none), which Arrow tables dislike.
        rows = [json.dumps(row, ensure_ascii=False) for row in score_chunk(self.recognizer, items)]
        return {"row": np.array(rows, dtype=object)}


def score_on_ray(
    model_dir: Path, items: Sequence[ScoreItem], write: Callable[[dict], None], *, address: str | None,
    actors: int | None, cpus_per_actor: float, chunk: int, recognizer_options: dict,
) -> None:
    """Score ``items`` with a pool of ``actors`` ScoringActors; ``write`` gets each row as its batch finishes.

    Rows come back in the order batches finish, not in input order. An error raised in an actor (a model
    directory that does not load there, say) stops the job with that error; rows already written stay written.
    """
    if cpus_per_actor <= 0:
        raise ValueError(f"cpus_per_actor must be positive; got {cpus_per_actor!r}")
    ray = require_ray()
    options = {"threads": max(1, int(cpus_per_actor)), **recognizer_options}
    with ray_connection(address):
        cluster_cpus = ray.cluster_resources().get("CPU", 0)
        if actors is None:
            actors = max(1, int(cluster_cpus // cpus_per_actor))
        if actors * cpus_per_actor > cluster_cpus:
            logger.warning("%d actor(s) x %g CPU ask for more than the cluster's %g CPUs: some wait until the "
                           "cluster grows", actors, cpus_per_actor, cluster_cpus)
        context = ray.data.DataContext.get_current()
        context.enable_progress_bars = sys.stderr.isatty()
        blocks = max(1, -(-len(items) // chunk))
        dataset = ray.data.from_items([{"item": item.to_json()} for item in items], override_num_blocks=blocks)
        scored = dataset.map_batches(
            ScoringActor, fn_constructor_kwargs={"model_dir": str(model_dir), "recognizer_options": options},
            batch_size=chunk, compute=ray.data.ActorPoolStrategy(size=actors), num_cpus=cpus_per_actor,
            batch_format="numpy",
        )
        try:
            for batch in scored.iter_batches(batch_size=None, batch_format="numpy"):
                for line in batch["row"]:
                    write(json.loads(line))
        except ray.exceptions.RayError as error:
            cause = _mmer_cause(error)
            if cause is not None:
                raise cause from error
            raise


def _mmer_cause(error: BaseException) -> MMERError | None:
    """The MMERError an actor raised, out of the Ray exception that stopped the job, if that is what happened.

    A task's error keeps the original exception (``RayTaskError.cause``); an actor that died in ``__init__``
    (a model directory it cannot load) keeps only its text, whose last line is ``module.Class: message``.
    """
    from .. import errors

    cause = getattr(error, "cause", None)
    if isinstance(cause, MMERError):
        return cause
    lines = str(error).strip().splitlines()
    match = re.match(r"(?:mmer_rt\.errors\.)?(\w+): (.*)", lines[-1].strip()) if lines else None
    kind = getattr(errors, match.group(1), None) if match else None
    if isinstance(kind, type) and issubclass(kind, MMERError):
        return kind(f"a Ray actor failed: {match.group(2)}")
    return None


BATCHING = ("batcher", "serve")


def serve_app(
    model_dir: str | Path, *, num_replicas: int = 1, cpus_per_replica: float = 1.0,
    recognizer_options: dict | None = None, serve_config=None, batching: str = "batcher",
):
    """The HTTP service (``mmer_rt.serve.http``'s app) as a Ray Serve application: ``serve.run(serve_app(...))``.

    Each of ``num_replicas`` replicas loads one Recognizer and serves the same FastAPI app through
    ``@serve.ingress``, so the routes, limits, errors and metrics are those of ``mmer-rt serve``; Ray Serve's proxy
    spreads requests over the replicas. Batching inside a replica:
      - ``"batcher"``: the server's own dynamic batcher (length-grouped under the Recognizer's BatchBudget,
        ``serve_config.batcher.max_wait_ms`` for company);
      - ``"serve"``: Ray Serve's ``@serve.batch`` (``max_batch_size`` = the budget's ``max_items``,
        ``batch_wait_timeout_s`` = ``max_wait_ms``); each batch still runs under the budget (plan_batches).
    A replica takes up to ``serve_config.batcher.max_queue`` requests at once (``max_ongoing_requests``), so
    that its batcher sees them together and its queue bound (503 with Retry-After) is the one that applies.

    Args:
      model_dir: the model directory, at the same path on every node.
      num_replicas: replicas (processes), each with its own Recognizer.
      cpus_per_replica: CPUs Ray reserves per replica; also its onnxruntime threads unless
        ``recognizer_options`` sets ``threads``.
      recognizer_options: keyword arguments of ``Recognizer.from_dir``.
      serve_config: a ``mmer_rt.serve.http.ServeConfig`` (None: its defaults).
      batching: ``"batcher"`` or ``"serve"``.
    """
    if batching not in BATCHING:
        raise ValueError(f"batching must be one of {', '.join(BATCHING)}; got {batching!r}")
    require_ray()
    from ray import serve

    from .http import ServeConfig

    config = serve_config or ServeConfig()
    options = {"threads": max(1, int(cpus_per_replica)), **(recognizer_options or {})}
    deployment = _deployment_class().options(
        num_replicas=num_replicas, ray_actor_options={"num_cpus": cpus_per_replica},
        max_ongoing_requests=config.batcher.max_queue,
    )
    return deployment.bind(str(Path(model_dir).expanduser().resolve()), options, config, batching)


_DEPLOYMENT = None


def _deployment_class():
    """The deployment class, made on first use so that ray is imported only then."""
    global _DEPLOYMENT
    if _DEPLOYMENT is not None:
        return _DEPLOYMENT
    from ray import serve

    @serve.deployment(name="mmer")
    @serve.ingress()
    class MMERDeployment:
        """One replica: a Recognizer, its batcher, and the HTTP app around them."""

        def __init__(self, model_dir: str, recognizer_options: dict, config, batching: str):
            self.recognizer = Recognizer.from_dir(model_dir, **recognizer_options)
            self.config = config
            self.batching = batching

        def __serve_build_asgi_app__(self):
            from .http import create_app

            if self.batching == "serve":
                return create_app(_serve_batcher(self.recognizer, self.config.batcher), self.config)
            return create_app(self.recognizer, self.config)

    _DEPLOYMENT = MMERDeployment
    return _DEPLOYMENT


def _serve_batcher(recognizer: Recognizer, config):
    """The server's Batcher with Ray Serve's ``@serve.batch`` in place of its scheduler (same decoding, queue
    bound, errors and batch reports), to measure one against the other."""
    import asyncio
    import functools
    import time

    from ray import serve

    from .batcher import Batcher, BatchError, BatchReport, QueueFullError, ShuttingDownError

    class ServeBatchBatcher(Batcher):
        def __init__(self):
            super().__init__(recognizer, config)
            self._run_batch.set_max_batch_size(recognizer.batch_budget.max_items)
            self._run_batch.set_batch_wait_timeout_s(config.max_wait_ms / 1000)

        async def predict(self, audio, text=None, sample_rate=None):
            if self._closing:
                raise ShuttingDownError("the server is shutting down and takes no new requests")
            if self._admitted >= self.config.max_queue:
                raise QueueFullError(f"the queue is full ({self.config.max_queue} requests waiting); retry shortly")
            loop = asyncio.get_running_loop()
            self._admitted += 1
            try:
                decoded = await loop.run_in_executor(self._decode_pool, self._decode, audio, text, sample_rate)
                result = await self._run_batch(decoded)
            finally:
                self._admitted -= 1
            if isinstance(result, BaseException):  # onnxruntime failed on this request alone
                raise result
            return result

        @serve.batch(max_batch_size=16, batch_wait_timeout_s=0.005)
        async def _run_batch(self, decoded: list) -> list:
            started = time.perf_counter()
            token = object()
            self._running.add(token)  # what the app's mmer_batches_running gauge counts
            try:
                # errors="return", as the server's batcher: a batch onnxruntime fails on is rerun one by one, and
                # only a request that fails alone gets its InferenceError (returned in its place, raised above).
                predictions = await asyncio.get_running_loop().run_in_executor(
                    self._graph_pool, functools.partial(self.recognizer.predict_decoded, decoded, errors="return"))
            except Exception as error:  # noqa: BLE001 - fails only this batch, as the server's batcher does
                logger.exception("a batch of %d requests failed", len(decoded))
                self._report(decoded, started, failed=True)
                # @serve.batch gives an exception raised here to every request of the batch.
                raise BatchError(f"the model failed on this request's batch ({type(error).__name__}: {error})") \
                    from error
            finally:
                self._running.discard(token)
            self._report(decoded, started, failed=False)
            return predictions

        def _report(self, decoded, started, failed):
            report = BatchReport(requests=len(decoded), rows=sum(len(d.waveforms) for d in decoded),
                                 audio_seconds=sum(d.duration for d in decoded),
                                 run_seconds=time.perf_counter() - started, failed=failed)
            for observer in self._observers:
                observer(report)

        async def close(self):
            self._closing = True
            while self._admitted:
                await asyncio.sleep(0.01)
            self._decode_pool.shutdown(wait=False)
            self._graph_pool.shutdown(wait=False)

    return ServeBatchBatcher()


# app()'s arguments: name -> (type, default); those of `mmer-rt serve` where they mean the same.
APP_ARGS = {
    "model": (str, None), "replicas": (int, 1), "cpus_per_replica": (float, 1.0), "batching": (str, "batcher"),
    "device": (str, "auto"), "precision": (str, "auto"), "threads": (int, None),
    "max_batch": (int, 16), "max_batch_seconds": (float, 80.0), "max_wait_ms": (float, 5.0),
    "max_queue": (int, 256), "max_audio_seconds": (float, 60.0), "max_body_mb": (float, 25.0),
}


def app(args: dict):
    """Ray Serve's application builder: ``serve run mmer_rt.serve.ray:app model=DIR replicas=2``, or
    ``import_path: mmer_rt.serve.ray:app`` with ``args:`` in a Serve config file. Arguments: see APP_ARGS."""
    from ..batching import BatchBudget
    from .batcher import BatcherConfig
    from .http import ServeConfig

    unknown = sorted(set(args) - set(APP_ARGS))
    if unknown:
        raise ValueError(f"unknown argument(s) {', '.join(unknown)}; mmer_rt.serve.ray:app takes "
                         f"{', '.join(APP_ARGS)}")
    if not args.get("model"):
        raise ValueError("mmer_rt.serve.ray:app needs model=DIR (the model directory)")
    value = {name: kind(args[name]) if args.get(name) is not None else default
             for name, (kind, default) in APP_ARGS.items()}
    options = {"device": value["device"], "precision": value["precision"],
               "batch_budget": BatchBudget(max_items=value["max_batch"], max_seconds=value["max_batch_seconds"])}
    if value["threads"] is not None:
        options["threads"] = value["threads"]
    config = ServeConfig(max_body_mb=value["max_body_mb"], batcher=BatcherConfig(
        max_wait_ms=value["max_wait_ms"], max_queue=value["max_queue"], max_audio_seconds=value["max_audio_seconds"]))
    return serve_app(value["model"], num_replicas=value["replicas"], cpus_per_replica=value["cpus_per_replica"],
                     recognizer_options=options, serve_config=config, batching=value["batching"])
