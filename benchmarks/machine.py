"""What the benchmark ran on: CPU and GPU description, library versions, and the peak FLOP rates to compare with.

Two peaks are given, because neither alone is honest: the theoretical one (cores x FLOPs per cycle x clock, from
/proc/cpuinfo; a virtual machine's reported clock may not be its real one) and a measured one (a large fp32
matrix product at the benchmark's thread count, in PyTorch and in onnxruntime, the faster of the two: what a
well-tuned GEMM reaches here; on an AVX-512 AMD machine PyTorch's (MKL) reached about 200 GFLOP/s and
onnxruntime's (MLAS) about 450).
"""

from __future__ import annotations

import os
import platform
import time
from functools import lru_cache
from importlib.metadata import PackageNotFoundError, version

from .micro import onnx_model

# fp32 FLOPs per cycle per core: two FMA pipes x SIMD lanes x 2 (multiply and add). AVX-512 parts differ in FMA
# pipe count; two is the common server figure and the table says so rather than guessing per model.
FLOPS_PER_CYCLE = {"avx512f": 64, "avx2+fma": 32, "sse": 8}
# The peak that fits each arithmetic, in operations (a multiply-add is 2) per cycle per core, by the unit that would
# run it: AVX512-BF16's VDPBF16PS (16 lanes x 2 products, two ports), VNNI's VPDPBUSD (16 lanes x 4 int8 products,
# two ports; the 256-bit AVX-VNNI form half that), and AMX's tile products (TDPBF16PS 16x16x32 and TDPBSSD 16x16x64
# multiply-adds in 16 cycles: 1024 bf16 FLOP and 2048 int8 OP per cycle). Figures from Intel's instruction
# tables for Sapphire Rapids; a virtual CPU may give less.
ARITHMETIC_OPS_PER_CYCLE = {
    "amx_int8": ("amx_int8", 2048), "vnni_int8": ("avx512_vnni", 256), "avx_vnni_int8": ("avx_vnni", 128),
    "amx_bf16": ("amx_bf16", 1024), "avx512_bf16": ("avx512_bf16", 128),
}
# Per route precision, the units that could run its products, fastest first; the first the CPU has is its peak.
# fp32 routes: the FMA peak of the widest SIMD. An int8 route's graphs keep some work in fp32 (the front end), so
# its fraction of the int8 peak understates how busy the int8 units were.
ARITHMETIC_FOR_PRECISION = {
    "int8": ("amx_int8", "vnni_int8", "avx_vnni_int8"),
    "bf16": ("amx_bf16", "avx512_bf16"),
}
ISA_FEATURES = ("avx2", "fma", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16", "avx512_fp16", "amx_bf16",
                "amx_int8", "amx_tile")


def cpu_info() -> dict:
    """Model name, logical CPUs, clock (MHz) and the widest fp32 SIMD level, read from /proc/cpuinfo."""
    fields: dict[str, str] = {}
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as handle:
            for line in handle:
                key, _, value = line.partition(":")
                fields.setdefault(key.strip(), value.strip())
    except OSError:
        pass  # not Linux: the theoretical peak is then unknown and reported as such
    flags = set(fields.get("flags", "").split())
    if "avx512f" in flags:
        simd = "avx512f"
    elif {"avx2", "fma"} <= flags:
        simd = "avx2+fma"
    else:
        simd = "sse"
    mhz = float(fields["cpu MHz"]) if "cpu MHz" in fields else None
    return {
        "model": fields.get("model name", platform.processor() or platform.machine()),
        "logical_cpus": os.cpu_count(),
        "mhz": mhz,
        "simd": simd,
        "vnni": bool({"avx512_vnni", "avx_vnni"} & flags),
        "bf16": bool({"amx_bf16", "avx512_bf16"} & flags),
        "isa": [feature for feature in ISA_FEATURES if feature in flags],
    }


def arithmetic_peaks(threads: int) -> dict[str, float]:
    """Theoretical peaks in GOP/s of ``threads`` cores for each arithmetic this CPU has (``fp32_fma`` and the
    ARITHMETIC_OPS_PER_CYCLE units whose flag /proc/cpuinfo lists); empty when the clock is unknown."""
    info = cpu_info()
    if info["mhz"] is None:
        return {}
    peaks = {"fp32_fma": threads * FLOPS_PER_CYCLE[info["simd"]] * info["mhz"] / 1000.0}
    for name, (flag, per_cycle) in ARITHMETIC_OPS_PER_CYCLE.items():
        if flag in info["isa"]:
            peaks[name] = threads * per_cycle * info["mhz"] / 1000.0
    return {name: round(value, 1) for name, value in peaks.items()}


def arithmetic_for(precision: str, peaks: dict[str, float]) -> str:
    """The name of the peak a route of ``precision`` is measured against (see ARITHMETIC_FOR_PRECISION)."""
    return next((name for name in ARITHMETIC_FOR_PRECISION.get(precision, ()) if name in peaks), "fp32_fma")


def theoretical_cpu_gflops(threads: int) -> float | None:
    """fp32 peak of ``threads`` cores in GFLOP/s, or None when the clock is unknown."""
    info = cpu_info()
    if info["mhz"] is None:
        return None
    return threads * FLOPS_PER_CYCLE[info["simd"]] * info["mhz"] / 1000.0


@lru_cache(maxsize=None)
def measured_matmul_gflops(device: str = "cpu", dtype_name: str = "float32", threads: int | None = None,
                           size: int = 1024, seconds: float = 1.0) -> float:
    """GFLOP/s of repeated (size x size) matrix products in PyTorch: the achievable dense peak on this device."""
    import torch

    dtype = getattr(torch, dtype_name)
    if device == "cuda":
        size = max(size, 8192)  # a GPU needs large products to reach its peak
    if threads is not None and device == "cpu":
        torch.set_num_threads(threads)
    a = torch.randn(size, size, device=device, dtype=dtype)
    b = torch.randn(size, size, device=device, dtype=dtype)
    _ = a @ b  # warm-up: thread pool, kernels, clocks
    _synchronize(device)
    runs, started = 0, time.perf_counter()
    while time.perf_counter() - started < seconds:
        _ = a @ b
        runs += 1
        if device == "cuda" and runs % 10:
            continue
        _synchronize(device)
    _synchronize(device)
    elapsed = time.perf_counter() - started
    return 2 * size ** 3 * runs / elapsed / 1e9


@lru_cache(maxsize=None)
def onnxruntime_matmul_gflops(threads: int, size: int = 1024, seconds: float = 1.0) -> float:
    """GFLOP/s of repeated (size x size) fp32 matrix products run by onnxruntime's CPU provider (MLAS)."""
    import numpy as np
    import onnxruntime
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    weight = numpy_helper.from_array(rng.standard_normal((size, size), dtype=np.float32), "b")
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["a", "b"], ["c"])], "sgemm",
        [helper.make_tensor_value_info("a", TensorProto.FLOAT, [size, size])],
        [helper.make_tensor_value_info("c", TensorProto.FLOAT, [size, size])], [weight])
    model = onnx_model(graph)
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = threads
    session = onnxruntime.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    feeds = {"a": rng.standard_normal((size, size), dtype=np.float32)}
    session.run(None, feeds)  # warm-up: thread pool, packed weights
    runs, started = 0, time.perf_counter()
    while time.perf_counter() - started < seconds:
        session.run(None, feeds)
        runs += 1
    return 2 * size ** 3 * runs / (time.perf_counter() - started) / 1e9


def gpu_name() -> str | None:
    try:
        import torch
    except ImportError:
        return None
    return torch.cuda.get_device_name(0) if torch.cuda.is_available() else None


def describe(threads: int) -> dict:
    """The machine and versions, for the report's header."""
    return {
        "cpu": cpu_info(),
        "threads": threads,
        "gpu": gpu_name(),
        "python": platform.python_version(),
        "versions": {name: _version(name) for name in ("torch", "transformers", "onnxruntime", "onnxruntime-gpu")},
    }


def _version(package: str) -> str | None:
    try:
        return version(package)
    except PackageNotFoundError:
        return None


def _synchronize(device: str) -> None:
    if device == "cuda":
        import torch

        torch.cuda.synchronize()
