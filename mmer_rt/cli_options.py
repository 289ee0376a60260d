"""The command-line flags that choose how a model directory is run, shared by predict, serve, score and timeline."""

from __future__ import annotations

import argparse

from .engines import ENGINES
from .modeldir import PRECISIONS
from .recognizer import LONG_AUDIO_POLICIES
from .session import DEVICES


def add_model_options(parser: argparse.ArgumentParser) -> None:
    """``--device``, ``--precision`` and ``--engine``, with the same meaning and help in every command."""
    parser.add_argument("--device", choices=DEVICES, default="auto",
                        help="auto: CUDA when onnxruntime offers it and it starts, else the CPU (default: %(default)s)")
    parser.add_argument("--precision", choices=("auto", *PRECISIONS), default="auto",
                        help="graphs to run; auto: fp16 on CUDA, int8 on the CPU, where the directory holds them, "
                             "else fp32; with --engine openvino: fp32 graphs in bf16 where the CPU has AMX or "
                             "AVX512-BF16 (default: %(default)s)")
    parser.add_argument("--engine", choices=ENGINES, default="onnxruntime",
                        help="onnxruntime; openvino (the [openvino] extra, CPU only); auto: the faster of the two on "
                             "this machine, timed once and remembered (default: %(default)s)")


def add_long_audio_option(parser: argparse.ArgumentParser) -> None:
    """``--long-audio``: what happens to audio longer than the model's maximum."""
    parser.add_argument("--long-audio", choices=LONG_AUDIO_POLICIES, default="truncate",
                        help="audio longer than the model's maximum: truncate to its start, or window (average "
                             "full-length windows) (default: %(default)s)")


def model_options(args: argparse.Namespace) -> dict:
    """The keyword arguments of ``Recognizer.from_dir`` that :func:`add_model_options` parsed."""
    return {"device": args.device, "precision": args.precision, "engine": args.engine}


def positive_int(text: str) -> int:
    """argparse type: an integer of 1 or more."""
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return int(text)
