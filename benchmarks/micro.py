"""What the micro-benchmarks share: ONNX models built by hand, and interleaved timing rounds.

Used by machine.py (the sgemm peak), skip_layer_norm.py, per_token_int8.py and compare_graphs.py.
"""

from __future__ import annotations

import time
from typing import Callable, Mapping

OPSET = 17
# opset 17's IR version. onnx's default is its own newest IR, which an older onnxruntime refuses (onnx 1.23 writes
# 14; onnxruntime-gpu 1.31, the GPU kit's, reads up to 13).
IR_VERSION = 8


def onnx_model(graph, contrib: bool = False):
    """A ModelProto of ``graph`` at opset 17 and IR 8; ``contrib`` adds onnxruntime's com.microsoft domain."""
    from onnx import helper

    opsets = [helper.make_opsetid("", OPSET)] + ([helper.make_opsetid("com.microsoft", 1)] if contrib else [])
    return helper.make_model(graph, opset_imports=opsets, ir_version=IR_VERSION)


def interleaved_rounds(calls: Mapping[str, Callable[[], object]], rounds: int) -> dict[str, list[float]]:
    """Seconds of each call in ``rounds`` rounds that take every call in turn, so that a busy moment of a shared
    machine slows them all alike. Warm up first: every call here is timed."""
    times: dict[str, list[float]] = {name: [] for name in calls}
    for _ in range(rounds):
        for name, call in calls.items():
            started = time.perf_counter()
            call()
            times[name].append(time.perf_counter() - started)
    return times
