"""``mmer-rt serve``: one Recognizer behind an HTTP server (uvicorn), with dynamic batching, until SIGINT/SIGTERM.

On SIGINT or SIGTERM uvicorn stops accepting connections and waits for the requests in flight; the app's shutdown
then drains the batcher, so every accepted request is answered before the process exits.
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
from typing import Sequence

from ..batching import BatchBudget
from ..cli_options import add_long_audio_option, add_model_options, model_options, positive_int
from ..recognizer import Recognizer
from .batcher import BatcherConfig

logger = logging.getLogger("mmer_rt.serve")

MISSING_EXTRA = "mmer-rt serve needs the [serve] extra: pip install 'mmer-rt[serve]' ({error})"


def parser() -> argparse.ArgumentParser:
    defaults, budget = BatcherConfig(), BatchBudget()
    p = argparse.ArgumentParser(
        prog="mmer-rt serve", description="Serve a model directory over HTTP: /v1/predict, the KServe v2 routes "
        "(/v2/...), /metrics and the OpenAPI page /docs.",
    )
    p.add_argument("--model", required=True, metavar="DIR", help="model directory")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=_port, default=8080, help="TCP port to listen on (default %(default)s)")
    add_model_options(p)
    p.add_argument("--threads", type=positive_int, default=None, help="CPU threads per graph run (default: all)")
    add_long_audio_option(p)
    p.add_argument("--max-batch", type=positive_int, default=budget.max_items,
                   help="most utterances in one graph run (default %(default)s)")
    p.add_argument("--max-batch-seconds", type=_positive_float, default=budget.max_seconds,
                   help="most padded seconds of audio in one graph run (default %(default)s)")
    p.add_argument("--max-wait-ms", type=_non_negative_float, default=defaults.max_wait_ms,
                   help="longest a request waits for others to share its graph run (default %(default)s)")
    p.add_argument("--max-queue", type=positive_int, default=defaults.max_queue,
                   help="requests held at most; more get 503 with Retry-After (default %(default)s)")
    p.add_argument("--max-audio-seconds", type=_positive_float, default=defaults.max_audio_seconds,
                   help="longer audio gets 413 (default %(default)s)")
    p.add_argument("--max-body-mb", type=_positive_float, default=25.0,
                   help="largest request body in MiB; larger gets 413 (default %(default)s)")
    p.add_argument("--workers", type=positive_int, default=defaults.workers,
                   help="graph runs at once on the one model (default %(default)s)")
    p.add_argument("--decode-threads", type=positive_int, default=defaults.decode_threads,
                   help="threads decoding and resampling requests (default %(default)s)")
    p.add_argument("--log-level", choices=("debug", "info", "warning", "error"), default="info",
                   help="the server's and uvicorn's log level (default %(default)s)")
    return p


def main(argv: Sequence[str]) -> int:
    """Parse ``argv`` (the words after ``mmer-rt serve``), load the model and serve until stopped."""
    args = parser().parse_args(argv)
    try:
        import fastapi, prometheus_client, python_multipart, uvicorn  # noqa: F401, E401 - the [serve] extra
    except ImportError as error:
        print(f"mmer-rt: error: {MISSING_EXTRA.format(error=error)}", file=sys.stderr)
        return 1
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    serve(load_recognizer(args), serve_config(args), args.host, args.port, args.log_level)
    return 0


def load_recognizer(args: argparse.Namespace, cls: type[Recognizer] = Recognizer) -> Recognizer:
    """The Recognizer that the parsed arguments describe (``cls``: Recognizer or a subclass)."""
    return cls.from_dir(
        args.model, **model_options(args), threads=args.threads,
        batch_budget=BatchBudget(max_items=args.max_batch, max_seconds=args.max_batch_seconds),
        long_audio=args.long_audio,
    )


def serve_config(args: argparse.Namespace):
    """The :class:`~mmer_rt.serve.http.ServeConfig` that the parsed arguments describe."""
    from .http import ServeConfig

    return ServeConfig(
        max_body_mb=args.max_body_mb,
        batcher=BatcherConfig(max_wait_ms=args.max_wait_ms, max_queue=args.max_queue, workers=args.workers,
                              decode_threads=args.decode_threads, max_audio_seconds=args.max_audio_seconds),
    )


def serve(recognizer: Recognizer, config, host: str, port: int, log_level: str = "info") -> None:
    """Run the app around ``recognizer`` under uvicorn until SIGINT/SIGTERM (then drain and return)."""
    import uvicorn

    from .http import create_app

    app = create_app(recognizer, config)
    logger.info("mmer-rt serve: %s on %s (%s), max batch %d, max wait %g ms, queue %d; listening on http://%s:%d",
                recognizer.model_dir, recognizer.device, recognizer.precision, recognizer.batch_budget.max_items,
                config.batcher.max_wait_ms, config.batcher.max_queue, host, port)
    # uvicorn's own handlers catch SIGINT/SIGTERM: stop accepting, finish requests in flight, run the shutdown.
    # Then it raises the signal again under the handlers it found: these make that a normal return (status 0),
    # since the shutdown was clean, instead of a KeyboardInterrupt traceback or death by SIGTERM.
    previous = signal.signal(signal.SIGTERM, _stopped)
    try:
        uvicorn.run(app, host=host, port=port, log_level=log_level, access_log=False,
                    timeout_graceful_shutdown=None)
    except (KeyboardInterrupt, _Stopped):
        pass
    finally:
        signal.signal(signal.SIGTERM, previous)
    logger.info("mmer-rt serve: stopped")


class _Stopped(Exception):
    pass


def _stopped(signum, frame):
    raise _Stopped()


def _port(text: str) -> int:
    if not text.isdigit() or not 0 < int(text) < 65536:
        raise argparse.ArgumentTypeError(f"expected a port number 1-65535, got {text!r}")
    return int(text)


def _positive_float(text: str) -> float:
    value = _float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}")
    return value


def _non_negative_float(text: str) -> float:
    value = _float(text)
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"expected a number >= 0, got {text!r}")
    return value


def _float(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
