"""Turn pytest-benchmark JSON from ``pytest benchmarks/`` into Markdown tables and a PNG chart per device.

    python -m benchmarks.report .benchmarks/cpu.json [more.json ...] --out benchmarks/results/

Speed-ups are ratios of median latencies measured in the same run on the same inputs, against the fastest
PyTorch route on the same device for that case; the report prints them and how they stand against the targets.
"""

from __future__ import annotations

import argparse
import json
import math
from dataclasses import dataclass
from pathlib import Path

from .routes import CPU_ROUTES, GPU_ROUTES, PYTORCH_PREFIX

# The targets, reported and never asserted: (route, minimum speed-up, minimum top-1 agreement).
TARGETS = (("mmer-rt-fp32", 1.25, None), ("mmer-rt-int8", 2.0, 0.99), ("mmer-rt-openvino", 2.0, 0.99))
PEER_FOR = {"mmer-rt-fp32": "optimum-fp32", "mmer-rt-int8": "optimum-int8", "mmer-rt-openvino": "optimum-openvino"}
# Issue 15's targets on an AMX CPU, per case (clip seconds, batch) -> minimum speed-up over the fastest PyTorch route
# (bf16 autocast and dynamic int8 included), for the Recognizer's faster CPU routes.
CASE_TARGETS = {(5.0, 8): 2.5, (5.0, 1): 2.0}
CASE_TARGET_ROUTES = ("mmer-rt-int8", "mmer-rt-openvino")
# On the GPU (issue 17, for the H200): a 5 s clip alone within 3 ms end to end, 5,000 utterances/s at 5 s, and
# 1.5x the fastest PyTorch route (eager fp16 autocast or torch.compile) in the geometric mean over the table; judged
# for each of the Recognizer's GPU routes present.
GPU_ROUTES_JUDGED = ("mmer-rt-fp16", "mmer-rt-fp16-cudagraphs")
GPU_TARGET_CLIP, GPU_MAX_LATENCY_MS, GPU_MIN_THROUGHPUT, GPU_MIN_SPEEDUP = 5.0, 3.0, 5000.0, 1.5
COLUMNS = (
    ("route", "route", "{}"), ("p50 ms", "latency_p50_ms", "{:.1f}"), ("p90 ms", "latency_p90_ms", "{:.1f}"),
    ("p99 ms", "latency_p99_ms", "{:.1f}"), ("utt/s", "utterances_per_s", "{:.2f}"), ("RTFx", "rtfx", "{:.1f}"),
    ("vs PyTorch", "speedup", "{:.2f}x"), ("GFLOP/utt", "gflop_per_utterance", "{:.3g}"),
    ("GFLOP/s", "achieved_gflops", "{:.3g}"), ("arithmetic", "arithmetic", "{}"), ("% peak", "percent_of_peak", "{:.1f}%"),
    ("% matmul", "percent_of_matmul", "{:.0f}%"),
    ("peak MB", "peak_mb", "{:.0f}"), ("max Δp", "max_abs_dprob", "{:.1e}"), ("top-1", "top1_agreement", "{:.0%}"),
)


# Which recorded fraction fills each column: the theoretical peak where known, else (on a GPU) a measured one.
PEAK_FRACTIONS = ("fraction_of_cpu_arithmetic_peak", "fraction_of_cpu_fp32_peak", "fraction_of_gpu_fp16_matmul_peak",
                  "fraction_of_gpu_fp32_matmul_peak")
MATMUL_FRACTIONS = ("fraction_of_cpu_sgemm", "fraction_of_gpu_fp16_matmul_peak", "fraction_of_gpu_fp32_matmul_peak")


class ReportError(ValueError):
    """A JSON file that is not pytest-benchmark output of this suite."""


@dataclass
class Run:
    """The cases of one or more JSON files, and the machine they ran on (taken from the first file)."""

    cases: list[dict]
    machine: dict
    sources: list[str]


def load_runs(paths: list[Path]) -> Run:
    cases, machine = [], {}
    for path in paths:
        try:
            data = json.loads(Path(path).read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as error:
            raise ReportError(f"{path}: cannot read pytest-benchmark JSON ({error})") from error
        entries = [b for b in data.get("benchmarks", []) if "route" in b.get("extra_info", {})]
        if not entries:
            raise ReportError(f"{path}: no MMER benchmark cases in it; write it with "
                              "pytest benchmarks/ --benchmark-json FILE")
        cases.extend(dict(b["extra_info"]) for b in entries)
        machine = machine or data.get("machine_info", {})
    add_speedups(cases)
    return Run(cases, machine, [str(p) for p in paths])


def add_speedups(cases: list[dict]) -> None:
    """Set ``speedup`` (fastest PyTorch p50 / this p50, same device and case) and ``percent_of_peak``."""
    fastest: dict[tuple, float] = {}
    for case in cases:
        if case["route"].startswith(PYTORCH_PREFIX):
            key = _case_key(case)
            fastest[key] = min(fastest.get(key, math.inf), case["latency_p50_ms"])
    for case in cases:
        baseline = fastest.get(_case_key(case))
        case["speedup"] = baseline / case["latency_p50_ms"] if baseline else None
        case["percent_of_peak"] = _percent(case, PEAK_FRACTIONS)
        case["percent_of_matmul"] = _percent(case, MATMUL_FRACTIONS)


def geometric_mean_speedup(cases: list[dict], route: str, device: str) -> float | None:
    values = [c["speedup"] for c in cases if c["route"] == route and c["device"] == device and c["speedup"]]
    return math.exp(sum(map(math.log, values)) / len(values)) if values else None


def target_lines(cases: list[dict], device: str = "cpu") -> list[str]:
    """How the Recognizer's fp32 and int8 (CPU) or fp16 (CUDA) stand against the issue's targets."""
    if device == "cuda":
        return _gpu_target_lines(cases)
    lines = []
    for route, wanted, min_top1 in TARGETS:
        mean = geometric_mean_speedup(cases, route, device)
        if mean is None:
            lines.append(f"- {route}: not in this run")
            continue
        mine = [c for c in cases if c["route"] == route and c["device"] == device]
        worst = min(c["speedup"] for c in mine if c["speedup"])
        text = (f"- {route}: {mean:.2f}x the fastest PyTorch (geometric mean over {len(mine)} cases, worst "
                f"{worst:.2f}x); target {wanted}x: {'met' if mean >= wanted else 'not met'}")
        if min_top1 is not None:
            top1 = min(c["top1_agreement"] for c in mine)
            text += f"; lowest top-1 agreement {top1:.0%} on random weights (target {min_top1:.0%} on the demo model)"
        peer = geometric_mean_speedup(cases, PEER_FOR[route], device)
        if peer is not None:
            text += f"; optimum-onnx {peer:.2f}x, so {'ahead of' if mean > peer else 'behind'} optimum"
        lines.append(text)
    for route in CASE_TARGET_ROUTES:
        for (seconds, batch), wanted in CASE_TARGETS.items():
            found = [c for c in cases if c["route"] == route and c["device"] == device
                     and c["clip_seconds"] == seconds and c["batch_size"] == batch and c["speedup"]]
            if found:
                got = found[0]["speedup"]
                lines.append(f"- {route} at {seconds:g} s x {batch}: {got:.2f}x the fastest PyTorch route; target "
                             f"{wanted}x: {'met' if got >= wanted else 'not met'}")
    return lines


def _gpu_target_lines(cases: list[dict]) -> list[str]:
    lines = []
    for route in GPU_ROUTES_JUDGED:
        lines += _gpu_route_target_lines(cases, route)
    return lines


def _gpu_route_target_lines(cases: list[dict], route: str) -> list[str]:
    mine = [c for c in cases if c["route"] == route and c["device"] == "cuda"]
    if not mine:
        return [f"- {route}: not in this run"]
    lines = []
    mean = geometric_mean_speedup(cases, route, "cuda")
    if mean is not None:
        lines.append(f"- {route}: {mean:.2f}x the fastest PyTorch on the GPU (geometric mean over {len(mine)} "
                     f"cases); target at least {GPU_MIN_SPEEDUP:g}x: {'met' if mean >= GPU_MIN_SPEEDUP else 'not met'}"
                     f"; lowest top-1 agreement {min(c['top1_agreement'] for c in mine):.0%}")
    alone = [c for c in mine if c["clip_seconds"] == GPU_TARGET_CLIP and c["batch_size"] == 1]
    if alone:
        latency = alone[0]["latency_p50_ms"]
        lines.append(f"- {route}: a {GPU_TARGET_CLIP:g} s clip alone in {latency:.1f} ms (p50); target at most "
                     f"{GPU_MAX_LATENCY_MS:g} ms: {'met' if latency <= GPU_MAX_LATENCY_MS else 'not met'}")
    at_clip = [c for c in mine if c["clip_seconds"] == GPU_TARGET_CLIP]
    if at_clip:
        best = max(at_clip, key=lambda c: c["utterances_per_s"])
        rate = best["utterances_per_s"]
        lines.append(f"- {route}: {rate:,.0f} utterances/s at {GPU_TARGET_CLIP:g} s (batch {best['batch_size']}); "
                     f"target at least {GPU_MIN_THROUGHPUT:,.0f}: {'met' if rate >= GPU_MIN_THROUGHPUT else 'not met'}")
    return lines


def markdown(run: Run, command: str | None = None) -> str:
    lines = ["# MMER benchmark", ""]
    lines += _machine_lines(run.machine)
    if command:
        lines += ["", f"Command: `{command}`"]
    for device in _devices(run.cases):
        device_cases = [c for c in run.cases if c["device"] == device]
        lines += ["", f"## {device.upper()}", "", "Targets (reported, not asserted):", ""]
        lines += target_lines(run.cases, device)
        lines += ["", _speedup_table(device_cases), "", _detail_table(device_cases)]
        missing = [r for r in (GPU_ROUTES if device == "cuda" else CPU_ROUTES)
                   if r not in {c["route"] for c in device_cases}]
        if missing:
            lines += ["", f"Not in this run (skipped; see the pytest log for why): {', '.join(missing)}."]
    lines += ["", ("Speed-up: the fastest PyTorch route's median latency over this route's, same case, same run. "
                   "GFLOP/utt counts useful work (no padding); % peak is of the theoretical peak of the route's "
                   "arithmetic (CPU: fp32_fma for fp32 routes, amx_bf16 or avx512_bf16 for bf16, amx_int8 or "
                   "vnni_int8 for int8: threads x operations per cycle x the clock /proc/cpuinfo reports, which "
                   "boost can exceed; the int8 and bf16 routes keep some work in fp32, so their fractions "
                   "understate how busy those units were), % matmul of a large "
                   "fp32 matrix product measured in the same run (on a GPU both are of a measured fp16 or fp32 "
                   "matmul). Parity: against PyTorch fp32 sdpa on the CPU, same inputs."), ""]
    return "\n".join(lines)


def chart(run: Run, path: Path) -> Path:
    """One panel per device: speed-up over the fastest PyTorch route, per case and route."""
    import matplotlib

    matplotlib.use("Agg")  # no display: the chart is a file
    import matplotlib.pyplot as plt

    devices = _devices(run.cases)
    figure, axes = plt.subplots(len(devices), 1, figsize=(11, 4.2 * len(devices)), squeeze=False)
    for axis, device in zip(axes[:, 0], devices):
        cases = [c for c in run.cases if c["device"] == device and c["speedup"]]
        keys = sorted({_case_key(c)[1:] for c in cases}, key=lambda k: (k[1], k[0]))
        routes = [r for r in _route_order(cases)]
        width = 0.8 / max(len(routes), 1)
        for i, route in enumerate(routes):
            by_key = {_case_key(c)[1:]: c["speedup"] for c in cases if c["route"] == route}
            xs = [k + (i - (len(routes) - 1) / 2) * width for k in range(len(keys))]
            axis.bar(xs, [by_key.get(k, 0.0) for k in keys], width, label=route)
        axis.axhline(1.0, color="black", linewidth=0.8)
        for target, style in ((1.25, "--"), (2.0, ":")):
            axis.axhline(target, color="grey", linestyle=style, linewidth=0.8)
        axis.set_xticks(range(len(keys)), [f"{s:g} s x {b}" for s, b in keys])
        axis.set_ylabel("speed-up vs fastest PyTorch")
        axis.set_title(f"{device.upper()}: end to end, median latency ratio (dashed 1.25x, dotted 2x)")
        axis.legend(fontsize=8, ncol=min(len(routes), 4))
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path


def _speedup_table(cases: list[dict]) -> str:
    keys = sorted({_case_key(c)[1:] for c in cases}, key=lambda k: (k[1], k[0]))
    header = "| route | " + " | ".join(f"{s:g} s x {b}" for s, b in keys) + " | geo. mean |"
    rows = [header, "|---" * (len(keys) + 2) + "|"]
    for route in _route_order(cases):
        by_key = {_case_key(c)[1:]: c["speedup"] for c in cases if c["route"] == route}
        cells = [f"{by_key[k]:.2f}x" if by_key.get(k) else "-" for k in keys]
        mean = geometric_mean_speedup(cases, route, cases[0]["device"])
        rows.append(f"| {route} | " + " | ".join(cells) + f" | {_format(mean, '{:.2f}x')} |")
    return "\n".join(rows)


def _detail_table(cases: list[dict]) -> str:
    rows = ["| case | " + " | ".join(title for title, _, _ in COLUMNS) + " |", "|---" * (len(COLUMNS) + 1) + "|"]
    order = _route_order(cases)
    for case in sorted(cases, key=lambda c: (c["batch_size"], c["clip_seconds"], order.index(c["route"]))):
        cells = [_format(case.get(key), spec) for _, key, spec in COLUMNS]
        rows.append(f"| {case['clip_seconds']:g} s x {case['batch_size']} | " + " | ".join(cells) + " |")
    return "\n".join(rows)


def _machine_lines(machine_info: dict) -> list[str]:
    mmer = machine_info.get("mmer", {})
    described, settings, peaks = mmer.get("machine", {}), mmer.get("settings", {}), mmer.get("peaks_gflops", {})
    cpu = described.get("cpu", {})
    versions = ", ".join(f"{k} {v}" for k, v in described.get("versions", {}).items() if v)
    batches = f"{settings.get('batches')}"
    if described.get("gpu"):
        batches += f" on the CPU, {settings.get('gpu_batches')} on the GPU"
    lines = [
        f"- CPU: {cpu.get('model', '?')}, {cpu.get('logical_cpus', '?')} logical CPUs, {cpu.get('simd', '?')}, "
        f"{cpu.get('mhz') or '?'} MHz; {settings.get('threads', '?')} threads for every route",
        f"- ISA features: {', '.join(cpu.get('isa', [])) or '?'}",
        f"- GPU: {described.get('gpu') or 'none'}",
        "- Peaks (GFLOP/s): " + ", ".join(f"{k} {v}" for k, v in peaks.items() if v),
        f"- Size: {settings.get('size', '?')} (random weights); clips {settings.get('clips')} s, batches {batches}; "
        f"{settings.get('seconds_per_case')} s of rounds per case",
        f"- Python {described.get('python', '?')}; {versions}",
    ]
    optimum = mmer.get("optimum")
    if optimum:
        peer_versions = ", ".join(f"{k} {v}" for k, v in optimum.get("versions", {}).items())
        lines.append(f"- Peer: optimum-onnx export in its own environment ({peer_versions}), our fp32 fusion graph; "
                     "its wav2vec2 graph takes no attention mask, so padded rows of a batch differ (see max Δp)")
        lines += [f"  - {name}: {entry.get('note') or entry.get('error')}"
                  for name, entry in optimum.get("variants", {}).items() if entry.get("note") or entry.get("error")]
    return lines


def _percent(case: dict, keys: tuple[str, ...]) -> float | None:
    found = [case[key] for key in keys if case.get(key) is not None]
    return 100 * found[0] if found else None


def _devices(cases: list[dict]) -> list[str]:
    return [d for d in ("cpu", "cuda") if any(c["device"] == d for c in cases)]


def _route_order(cases: list[dict]) -> list[str]:
    present = {c["route"] for c in cases}
    return [r for r in CPU_ROUTES + GPU_ROUTES if r in present] + sorted(present - set(CPU_ROUTES + GPU_ROUTES))


def _case_key(case: dict) -> tuple:
    return case["device"], case["clip_seconds"], case["batch_size"]


def _format(value, spec: str) -> str:
    if value is None:
        return "-"
    return spec.format(value)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("json", nargs="+", type=Path, help="pytest-benchmark JSON files (--benchmark-json)")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results"), help="folder for .md and .png")
    parser.add_argument("--name", default=None, help="file stem of the outputs (default: the first JSON's)")
    parser.add_argument("--command", default=None, help="the command that produced the JSON, quoted in the report")
    args = parser.parse_args(argv)
    try:
        run = load_runs(args.json)
    except ReportError as error:
        parser.exit(2, f"error: {error}\n")
    stem = args.name or args.json[0].stem
    args.out.mkdir(parents=True, exist_ok=True)
    markdown_path = args.out / f"{stem}.md"
    markdown_path.write_text(markdown(run, args.command), encoding="utf-8")
    chart_path = chart(run, args.out / f"{stem}.png")
    print(markdown_path.read_text(encoding="utf-8"))
    print(f"wrote {markdown_path} and {chart_path}")


if __name__ == "__main__":
    main()
