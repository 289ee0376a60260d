"""pytest wiring of the benchmark suite: the --quick option, the case list, and the session that holds the inputs,
the loaded route, the parity reference and the machine's peaks.

    pytest benchmarks/ --benchmark-json .benchmarks/cpu.json          full size (minutes to an hour)
    pytest benchmarks/ --quick                                         tiny model, for CI (no timing asserted)
"""

from __future__ import annotations

import gc
from dataclasses import asdict

import pytest

from .artifacts import RouteUnavailable, artifacts_for
from .machine import (
    arithmetic_for, arithmetic_peaks, describe, measured_matmul_gflops, onnxruntime_matmul_gflops,
    theoretical_cpu_gflops,
)
from .memory import case_key, probe_in_subprocess
from .routes import CPU_ROUTES, GPU_ROUTES, build_route
from .suite import Settings, settings_from_env
from .workload import make_workload

REFERENCE_ROUTE = "pytorch-sdpa"  # fp32 on the CPU: the parity reference for every route


def pytest_addoption(parser):
    parser.addoption("--quick", action="store_true", default=False,
                     help="MMER benchmarks: tiny model and clips, a few rounds (same as MMER_BENCH_QUICK=1)")


def _settings(config) -> Settings:
    return settings_from_env(quick=config.getoption("--quick"))


def pytest_generate_tests(metafunc):
    if "case" not in metafunc.fixturenames:
        return
    settings = _settings(metafunc.config)
    cases = [(route, seconds, batch) for route in CPU_ROUTES for batch in settings.batches
             for seconds in settings.clips]
    cases += [(route, seconds, batch) for route in GPU_ROUTES for batch in settings.gpu_batches
              for seconds in settings.clips]
    metafunc.parametrize("case", cases, ids=[f"{r}-{s:g}s-b{b}" for r, s, b in cases])


class BenchSession:
    """What the cases share: settings, inputs, one loaded route at a time, parity references, memory probes."""

    def __init__(self, settings: Settings):
        self.settings = settings
        self.artifacts = artifacts_for(settings.size, settings.seed)
        self.tokenizer = self.artifacts.tokenizer()
        self._workloads: dict = {}
        self._route_name: str | None = None
        self._route = None
        self._unavailable: dict[str, str] = {}
        self._references: dict = {}
        self._memory: dict[str, dict] = {}
        self.peaks = self._measure_peaks()

    def workload(self, clip_seconds: float, batch_size: int):
        key = (clip_seconds, batch_size)
        if key not in self._workloads:
            self._workloads[key] = make_workload(clip_seconds, batch_size, self.tokenizer, self.settings.seed)
        return self._workloads[key]

    def token_counts(self, workload) -> list[int]:
        return self.tokenizer.encode_batch(list(workload.transcripts)).attention_mask.sum(axis=1).tolist()

    def route(self, name: str):
        """The loaded route; the previous one is released first, so idle sessions cannot take CPU or memory."""
        if name in self._unavailable:
            pytest.skip(self._unavailable[name])
        if name != self._route_name:
            self._route_name, self._route = None, None
            gc.collect()
            try:
                self._route = build_route(name, self.artifacts, self.settings.threads)
            except RouteUnavailable as reason:
                self._unavailable[name] = str(reason)
                pytest.skip(str(reason))
            self._route_name = name
        return self._route

    def reference(self, workload):
        """The PyTorch fp32 sdpa probabilities for a workload. All are computed on first use by one model, loaded
        for that alone and then released, so the routes under test never share a process with an idle copy."""
        if not self._references:
            reference_route = build_route(REFERENCE_ROUTE, self.artifacts, self.settings.threads)
            for key in self._all_workload_keys():
                self._references[key] = reference_route.run(self.workload(*key))
            del reference_route
            gc.collect()
        return self._references[(workload.clip_seconds, workload.batch_size)]

    def _all_workload_keys(self) -> list[tuple[float, int]]:
        import torch

        batches = set(self.settings.batches) | (set(self.settings.gpu_batches) if torch.cuda.is_available() else set())
        return [(seconds, batch) for batch in sorted(batches) for seconds in self.settings.clips]

    def memory(self, route_name: str, workload) -> dict:
        if not self.settings.memory:
            return {}
        if route_name not in self._memory:
            cases = [(s, b) for b in self._batches(route_name) for s in self.settings.clips]
            self._memory[route_name] = probe_in_subprocess(route_name, self.artifacts, self.settings.threads, cases)
        found = self._memory[route_name]
        return {"load_mb": found["load_mb"], **found["cases"][case_key(workload.clip_seconds, workload.batch_size)]}

    def peak_for(self, device: str, precision: str) -> dict[str, float | None]:
        """The peaks a route's achieved FLOP rate is compared with: its device's, in its arithmetic's precision."""
        if device == "cuda":
            kind = "fp16" if precision == "fp16" else "fp32"
            return {f"gpu_{kind}_matmul_peak": self.peaks.get(f"gpu_{kind}_matmul")}
        return {"cpu_arithmetic_peak": self.peaks.get(f"cpu_{self.arithmetic(device, precision)}"),
                "cpu_fp32_peak": self.peaks["cpu_fp32_theoretical"], "cpu_sgemm": self.peaks["cpu_fp32_matmul"]}

    def arithmetic(self, device: str, precision: str) -> str | None:
        """The arithmetic whose peak a CPU route is held to: fp32 FMA, VNNI or AMX int8, AMX or AVX512 bf16."""
        if device != "cpu":
            return None
        return arithmetic_for(precision, {k.removeprefix("cpu_"): v for k, v in self.peaks.items()})

    def _batches(self, route_name: str) -> tuple[int, ...]:
        return self.settings.gpu_batches if route_name in GPU_ROUTES else self.settings.batches

    def _measure_peaks(self) -> dict:
        seconds, size = (0.3, 1024) if self.settings.quick else (2.0, 2048)
        threads = self.settings.threads
        peaks = {"cpu_fp32_theoretical": theoretical_cpu_gflops(threads),
                 "cpu_fp32_matmul_torch": measured_matmul_gflops("cpu", "float32", threads, size, seconds),
                 "cpu_fp32_matmul_onnxruntime": onnxruntime_matmul_gflops(threads, size, seconds)}
        peaks["cpu_fp32_matmul"] = max(peaks["cpu_fp32_matmul_torch"], peaks["cpu_fp32_matmul_onnxruntime"])
        peaks.update({f"cpu_{name}": value for name, value in arithmetic_peaks(threads).items()})
        import torch

        if torch.cuda.is_available():
            peaks["gpu_fp16_matmul"] = measured_matmul_gflops("cuda", "float16", None, 8192, seconds)
            peaks["gpu_fp32_matmul"] = measured_matmul_gflops("cuda", "float32", None, 8192, seconds)
        return {name: round(value, 1) if value else value for name, value in peaks.items()}


@pytest.fixture(scope="session")
def bench(request) -> BenchSession:
    session = BenchSession(_settings(request.config))
    request.config._mmer_bench = session  # read by the machine-info hook below
    return session


def pytest_benchmark_update_machine_info(config, machine_info):
    session = getattr(config, "_mmer_bench", None)
    settings = session.settings if session else _settings(config)
    machine_info["mmer"] = {
        "settings": asdict(settings),
        "machine": describe(settings.threads),
        "peaks_gflops": session.peaks if session else {},
        "optimum": session.artifacts.peer_report() if session else None,
    }
