"""Where a Recognizer call's time goes on a GPU, and what the CUDA provider's options change.

    python -m benchmarks.gpu_profile --out DIR [--size base] [--seconds 5] [--batches 1,32] [--rounds 10]

Writes DIR/gpu_profile.md (and .json), section by section as each is measured, so a run stopped by a time limit
still leaves what it measured. On one machine, in one run:

1. Stages of one ``predict_batch`` call: host work (decoding checks, normalisation, padding, tokenising,
   CTC/softmax) and each graph's run, against the PyTorch fp16-autocast reference on the same workload.
2. The audio graph alone, A/B: the exported one (on CUDA its front end as time-major MatMuls) and the same model
   traced with the other front-end layout (Conv), each under the CUDA provider's convolution options: ours
   (cudnn_conv_algo_search=DEFAULT), HEURISTIC, EXHAUSTIVE, 1-D convolutions padded as N,C,1,D, and NHWC. Timed
   in interleaved rounds after a warm-up, so that a busy moment slows every variant alike; a combination that
   fails is recorded as refused, with the reason.
3. The GPU kernels that take the time (torch.profiler, which records every kernel in the process through CUPTI,
   onnxruntime's included): the audio graph in both layouts with our options, and the PyTorch reference's audio
   encoder.

Without CUDA it runs on the CPU provider (one option set, CPU activities only): a rehearsal of the code path,
not a GPU measurement. Nothing here is asserted; it records.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import time
from functools import partial
from pathlib import Path

import numpy as np

import mmer_rt.session as rt_session
from mmer_rt.audio import SAMPLE_RATE, pad_batch
from mmer_rt.batching import BatchBudget
from mmer_rt.modeldir import AUDIO_INPUTS, AUDIO_OUTPUTS, ModelManifest
from mmer_rt.recognizer import Recognizer
from mmer_rt.session import Graph

from .artifacts import Artifacts
from .micro import interleaved_rounds
from .workload import make_workload

CUDA_VARIANTS = {
    "ours (DEFAULT)": {"cudnn_conv_algo_search": "DEFAULT"},
    "HEURISTIC": {"cudnn_conv_algo_search": "HEURISTIC"},
    "EXHAUSTIVE": {"cudnn_conv_algo_search": "EXHAUSTIVE"},
    "conv1d as N,C,1,D": {"cudnn_conv_algo_search": "DEFAULT", "cudnn_conv1d_pad_to_nc1d": "1"},
    "NHWC": {"cudnn_conv_algo_search": "DEFAULT", "prefer_nhwc": "1"},
}
CPU_VARIANTS = {"cpu": None}  # without CUDA: the rehearsal's one "option set"
GRAPHS = ("audio_encoder", "text_encoder", "fusion")


class Report:
    """The Markdown and JSON record, rewritten after every section."""

    def __init__(self, out: Path, header: list[str]):
        self.out = out
        self.lines = ["# Where the time goes", "", *header, ""]
        self.data: dict = {}
        out.mkdir(parents=True, exist_ok=True)
        self.flush()

    def section(self, title: str, lines: list[str], data) -> None:
        self.lines += [f"## {title}", "", *lines, ""]
        self.data[title] = data
        self.flush()
        print("\n".join([f"## {title}", *lines]), flush=True)

    def flush(self) -> None:
        (self.out / "gpu_profile.md").write_text("\n".join(self.lines) + "\n")
        (self.out / "gpu_profile.json").write_text(json.dumps(self.data, indent=1, default=str) + "\n")


@contextlib.contextmanager
def cuda_options(options: dict | None):
    """Sessions opened inside use these CUDA provider options (the runtime reads its module-level default)."""
    saved = rt_session.CUDA_OPTIONS
    if options is not None:
        rt_session.CUDA_OPTIONS = options
    try:
        yield
    finally:
        rt_session.CUDA_OPTIONS = saved


def recognizer(model_dir: Path, device: str, options: dict | None) -> Recognizer:
    with cuda_options(options):
        return Recognizer.from_dir(model_dir, device=device, precision="fp16" if device == "cuda" else "fp32",
                                   batch_budget=BatchBudget(max_items=1024, max_seconds=None))


def timed_graphs(rec: Recognizer) -> dict[str, list[float]]:
    """Wrap each graph's run with a wall clock (each run ends synchronised: IOBinding waits for the device)."""
    spent: dict[str, list[float]] = {name: [] for name in GRAPHS}
    for name in GRAPHS:
        graph = rec._graphs[name]
        inner = graph.run

        def run(*args, _inner=inner, _name=name, **kwargs):
            started = time.perf_counter()
            result = _inner(*args, **kwargs)
            spent[_name].append(time.perf_counter() - started)
            return result

        graph.run = run
    return spent


def ms(values) -> float:
    return round(1000 * float(np.median(values)), 3)


def stages(rec: Recognizer, reference, items, rounds: int) -> dict:
    spent = timed_graphs(rec)
    totals = []
    rec.predict_batch(items, sample_rate=SAMPLE_RATE)  # warm-up
    for values in spent.values():
        values.clear()
    for _ in range(rounds):
        started = time.perf_counter()
        rec.predict_batch(items, sample_rate=SAMPLE_RATE)
        totals.append(time.perf_counter() - started)
    row = {"total": ms(totals), **{name: ms(spent[name]) for name in GRAPHS}}
    row["host"] = round(row["total"] - sum(row[name] for name in GRAPHS), 3)
    if reference is not None:
        row["pytorch"] = ms(interleaved_rounds({"pytorch": reference}, rounds)["pytorch"])
    return row


def audio_graph_in_layout(artifacts: Artifacts, layout: str, fp16: bool, folder: Path) -> Path:
    """The artifacts' audio graph traced with its front end in ``layout`` and fused as the export fuses it (fp16
    with SkipLayerNormalization for CUDA, else fp32 for the CPU): the A/B partner of the exported one."""
    import shutil

    from export import graphs, precision
    from export.to_onnx import fuse_encoder

    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    model = graphs.exportable_copy(artifacts.load_torch_model())
    spec = graphs.GRAPH_SPECS[0]
    traced = graphs.export_graph(model, spec, graphs.example_inputs(model)[spec.name], folder / "traced.onnx",
                                 layout=layout)
    fused = folder / "fused.onnx"
    fuse_encoder(model, spec.name, traced, fused, gpu=fp16)
    return precision.to_fp16(fused, folder / "fp16.onnx") if fp16 else fused


def audio_feeds(workload) -> dict[str, np.ndarray]:
    values, sample_mask = pad_batch(list(workload.waveforms))
    return {"input_values": values, "sample_mask": sample_mask}


def audio_run(graph: Graph, feeds: dict[str, np.ndarray]):
    """One audio-graph run as the Recognizer makes it (hidden states kept on the device), ready to call."""
    return partial(graph.run, feeds, host_outputs=("frame_mask",), device_outputs=("hidden_states",))


def top_kernels(run, steps: int, cuda: bool, limit: int = 15) -> list[str]:
    """The kernels (or, without CUDA, the CPU operators) that take the most time over ``steps`` calls."""
    import torch
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    with profile(activities=activities) as prof:
        for _ in range(steps):
            run()
        if cuda:
            torch.cuda.synchronize()
    # Self time: a kernel's own, while the CPU-side operator that launched it has no device time of its own.
    key = "self_device_time_total" if cuda else "self_cpu_time_total"
    events = [e for e in prof.key_averages() if (getattr(e, key, 0) or 0) > 0]
    events.sort(key=lambda e: getattr(e, key), reverse=True)
    if not events:
        return ["- nothing recorded (on the CPU, torch.profiler does not see onnxruntime's operators)"]
    total = sum(getattr(e, key) for e in events)
    lines = [f"- total {total / 1000 / steps:.2f} ms per call over {len(events)} distinct kernels"]
    for event in events[:limit]:
        spent = getattr(event, key)
        lines.append(f"- {100 * spent / total:5.1f}%  {spent / 1000 / steps:8.3f} ms/call  x{event.count // steps}"
                     f"  `{event.key[:110]}`")
    return lines


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--size", default="base", choices=("base", "quick"))
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--batches", default="1,32")
    parser.add_argument("--rounds", type=int, default=10)
    args = parser.parse_args(argv)
    batches = [int(b) for b in args.batches.split(",")]

    import torch

    from .routes import build_route

    cuda = rt_session.cuda_available() and torch.cuda.is_available()
    device = "cuda" if cuda else "cpu"
    artifacts = Artifacts(args.size)
    started = time.perf_counter()
    precision = "fp16" if cuda else "fp32"
    model_dir = artifacts.model_dir((precision,))
    import onnxruntime as ort

    header = [
        f"- {torch.cuda.get_device_name(0) if cuda else 'no CUDA: CPU rehearsal'}; onnxruntime {ort.__version__}, "
        f"torch {torch.__version__}; size {args.size}; clips of {args.seconds} s, batches {batches}; "
        f"{args.rounds} timed rounds after a warm-up; medians in ms",
        f"- model directory ready in {time.perf_counter() - started:.0f} s",
        f"- command: `python -m benchmarks.gpu_profile --size {args.size} --seconds {args.seconds} "
        f"--batches {args.batches} --rounds {args.rounds}`",
    ]
    report = Report(args.out, header)
    tokenizer = artifacts.tokenizer()
    workloads = {b: make_workload(args.seconds, b, tokenizer) for b in batches}
    variants = CUDA_VARIANTS if cuda else CPU_VARIANTS

    # 1. Stages, with our options, against the PyTorch reference.
    ours = recognizer(model_dir, device, next(iter(variants.values())))
    # Every core for both, as the Recognizer's threads=None takes them.
    reference_route = build_route("pytorch-sdpa-fp16" if cuda else "pytorch-sdpa", artifacts, os.cpu_count() or 1)
    lines = [f"| batch | total | host | audio graph | text graph | fusion graph | PyTorch {'fp16' if cuda else 'fp32'} "
             "end to end |",
             "|---|---|---|---|---|---|---|"]
    data = {}
    for batch, workload in workloads.items():
        items = list(zip(workload.waveforms, workload.transcripts))
        row = stages(ours, lambda w=workload: reference_route.run(w), items, args.rounds)
        data[batch] = row
        lines.append(f"| {batch} | {row['total']} | {row['host']} | {row['audio_encoder']} | {row['text_encoder']} "
                     f"| {row['fusion']} | {row.get('pytorch')} |")
    report.section("Stages of one predict_batch call (ms)", lines, data)

    # 2. The audio graph alone: front-end layouts (the model directory's, and the other one built here) under each
    #    set of provider options, in interleaved rounds.
    shipped = model_dir / ModelManifest.read(model_dir).variants[precision].graphs["audio_encoder"].file
    layouts = {"shipped": shipped}
    try:
        layouts["other layout"] = audio_graph_in_layout(artifacts, "channels" if cuda else "time", cuda,
                                                        args.out.parent / f".{args.out.name}-layout")
    except Exception as error:
        report.section("Other front-end layout", [f"- not built: {type(error).__name__}: {error}"[:400]], {})
    graphs, errors = {}, {}
    for layout, path in layouts.items():
        for name, options in variants.items():
            key = f"{layout}, {name}"
            try:
                with cuda_options(options):
                    session = rt_session.open_session(path, device)
                graphs[key] = Graph(session, "audio_encoder", AUDIO_INPUTS, AUDIO_OUTPUTS,
                                    bind_device="cuda" if cuda else None)
            except Exception as error:  # an option this onnxruntime build refuses is a finding, not a crash
                errors[key] = f"{type(error).__name__}: {error}"[:300]
    data = {}
    for batch, workload in workloads.items():
        feeds = audio_feeds(workload)
        calls = {}
        for key, graph in graphs.items():
            if key in errors:
                continue
            call = audio_run(graph, feeds)
            try:
                call()  # warm-up: plans are built for this shape here
            except Exception as error:  # e.g. cuDNN finding no engine for a convolution under these options
                errors[key] = f"b{batch}: {type(error).__name__}: {str(error).splitlines()[0]}"[:300]
                continue
            calls[key] = call
        data[batch] = {key: ms(value) for key, value in interleaved_rounds(calls, args.rounds).items()}
    lines = ["| front end, options | " + " | ".join(f"b{b}" for b in batches) + " |",
             "|---|" + "---|" * len(batches)]
    for key in (f"{layout}, {name}" for layout in layouts for name in variants):
        if key in errors:
            lines.append(f"| {key} | refused: {errors[key]} |" + " |" * (len(batches) - 1))
        else:
            lines.append(f"| {key} | " + " | ".join(str(data[b].get(key)) for b in batches) + " |")
    lines.append("")
    lines.append(f"- shipped: `{shipped.relative_to(model_dir)}` (front end "
                 f"{'time-major MatMuls' if cuda else 'Conv'}); other layout: the same model traced with the front "
                 f"end {'as Conv' if cuda else 'as time-major MatMuls'}")
    report.section(f"Audio graph alone, {args.seconds} s clips (ms)", lines, {"times": data, "refused": errors})

    # 3. Kernels.
    batch = max(batches)
    feeds = audio_feeds(workloads[batch])
    graph = ours._graphs["audio_encoder"]
    steps = 3
    kernel_lines = [f"Audio graph, our options, {args.seconds} s x {batch}:", ""]
    try:
        kernel_lines += top_kernels(audio_run(graph, feeds), steps, cuda)
    except Exception as error:
        kernel_lines.append(f"- profiler failed: {type(error).__name__}: {error}")
    other = graphs.get(f"other layout, {next(iter(variants))}")
    if other is not None:
        kernel_lines += ["", f"Audio graph in the other front-end layout, our options, {args.seconds} s x {batch}:", ""]
        try:
            kernel_lines += top_kernels(audio_run(other, feeds), steps, cuda)
        except Exception as error:
            kernel_lines.append(f"- profiler failed: {type(error).__name__}: {error}")
    kernel_lines += ["", f"PyTorch reference audio encoder (fp16 autocast where CUDA), {args.seconds} s x {batch}:", ""]
    try:
        from .reference import TorchReference

        reference = TorchReference(artifacts.load_torch_model(), "sdpa", device, torch.float16 if cuda else None)
        inputs = reference.prepare(workloads[batch], tokenizer)

        def torch_audio():
            with torch.no_grad(), reference._autocast():
                reference.model.audio_encoder(inputs.input_values, inputs.sample_mask)

        torch_audio()
        kernel_lines += top_kernels(torch_audio, steps, cuda)
    except Exception as error:
        kernel_lines.append(f"- profiler failed: {type(error).__name__}: {error}")
    report.section("Kernels", kernel_lines, kernel_lines)
    print(f"wrote {args.out / 'gpu_profile.md'}")


if __name__ == "__main__":
    main()
