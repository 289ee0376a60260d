"""Where a Recognizer call's time goes on a GPU, and what the CUDA provider's options change.

    python -m benchmarks.gpu_profile --out DIR [--size base] [--seconds 5] [--batches 1,32] [--rounds 10]

Writes DIR/gpu_profile.md (and .json), section by section as each is measured, so a run stopped by a time limit
still leaves what it measured. On one machine, in one run:

1. Stages of one ``predict_batch`` call, for each Recognizer setting: fixed shapes (batches padded to length
   buckets, mmer_rt/shapes.py), dynamic shapes, and on CUDA fixed shapes with a CUDA graph captured per shape
   (mmer_rt/cudagraphs.py); host work (decoding checks, normalisation, padding, tokenising, CTC/softmax) and each
   graph's run, against the PyTorch fp16-autocast reference on the same workload; what ``warmup()`` costs each.
2. The audio graph alone, A/B: the exported one (on CUDA no Conv at all: front end and positional convolution as
   MatMuls) against the same model traced with the positional convolution as Conv, and with every convolution as
   Conv (the CPU graphs' form), the Conv forms under the CUDA provider's convolution options: ours
   (cudnn_conv_algo_search=DEFAULT), HEURISTIC and EXHAUSTIVE. Timed in interleaved rounds after a warm-up, so
   that a busy moment slows every variant alike; a combination that fails is recorded as refused, with the reason.
3. The positional convolution alone (base size): Conv, 16-tap chunks, all taps unfolded (benchmarks/positional.py).
4. The GPU kernels that take the time (torch.profiler, which records every kernel in the process through CUPTI,
   onnxruntime's included): the shipped audio graph and the PyTorch reference's audio encoder.

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
from mmer_rt.audio import SAMPLE_RATE
from mmer_rt.audio import audio_feeds as mmer_audio_feeds
from mmer_rt.batching import BatchBudget
from mmer_rt.modeldir import AUDIO_INPUTS, AUDIO_OUTPUTS, ModelManifest
from mmer_rt.recognizer import Recognizer
from mmer_rt.session import Graph

from . import positional
from .artifacts import Artifacts
from .micro import interleaved_rounds
from .workload import make_workload

CUDA_VARIANTS = {
    "ours (DEFAULT)": {"cudnn_conv_algo_search": "DEFAULT"},
    "HEURISTIC": {"cudnn_conv_algo_search": "HEURISTIC"},
    "EXHAUSTIVE": {"cudnn_conv_algo_search": "EXHAUSTIVE"},
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


def audio_graph_in_layout(artifacts: Artifacts, form: dict, fp16: bool, folder: Path) -> Path:
    """The artifacts' audio graph traced in ``form`` (export.graphs.AudioGraph's ``layout`` and ``positional``)
    and fused as the export fuses it (fp16 with SkipLayerNormalization for CUDA, else fp32 for the CPU): an A/B
    partner of the exported one."""
    import shutil

    from export import graphs, precision
    from export.to_onnx import fuse_encoder

    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    model = graphs.exportable_copy(artifacts.load_torch_model())
    spec = graphs.GRAPH_SPECS[0]
    traced = graphs.export_graph(model, spec, graphs.example_inputs(model)[spec.name], folder / "traced.onnx",
                                 **form)
    fused = folder / "fused.onnx"
    fuse_encoder(model, spec.name, traced, fused, gpu=fp16)
    return precision.to_fp16(fused, folder / "fp16.onnx") if fp16 else fused


def audio_feeds(workload) -> dict[str, np.ndarray]:
    return mmer_audio_feeds(list(workload.waveforms), AUDIO_INPUTS)


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


def recognizer_variants(model_dir: Path, device: str, batches: list[int]) -> dict[str, dict]:
    """The Recognizer settings section 1 compares: fixed shapes (the buckets a server sized for these batches would
    use), dynamic shapes, and on CUDA fixed shapes with a CUDA graph per shape."""
    from .routes import bench_shapes

    shapes = bench_shapes(model_dir)
    shapes = type(shapes)(rows=tuple(sorted(set(batches))), samples=shapes.samples, tokens=shapes.tokens)
    variants = {"fixed shapes": {"shapes": shapes}, "dynamic shapes": {"shapes": None}}
    if device == "cuda":
        variants["fixed shapes + CUDA graphs"] = {"shapes": shapes, "cuda_graphs": True}
    return variants


def audio_layouts(cuda: bool) -> dict[str, dict]:
    """The audio graph's forms section 2 builds beside the shipped one (export.graphs.AudioGraph options)."""
    if cuda:  # shipped: front end and positional convolution as MatMuls, no Conv at all
        return {"positional as Conv": {"layout": "time", "positional": "conv"},
                "all Conv (CPU graphs' form)": {"layout": "channels", "positional": "conv"}}
    # shipped on the CPU: all Conv
    return {"no Conv (fp16 graph's form)": {"layout": "time", "positional": "matmul"}}


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
    ours_options = next(iter(variants.values()))

    # 1. Stages of a call, per Recognizer setting, against the PyTorch reference; and what warming up costs.
    reference_route = build_route("pytorch-sdpa-fp16" if cuda else "pytorch-sdpa", artifacts, os.cpu_count() or 1)
    lines = [f"| Recognizer | batch | total | host | audio graph | text graph | fusion graph | PyTorch "
             f"{'fp16' if cuda else 'fp32'} end to end |", "|---|---|---|---|---|---|---|---|"]
    data, warmups, recognizers = {}, [], {}
    for label, settings in recognizer_variants(model_dir, device, batches).items():
        try:
            with cuda_options(ours_options):
                rec = Recognizer.from_dir(model_dir, device=device, precision=precision,
                                          batch_budget=BatchBudget(max_items=1024, max_seconds=None), **settings)
            begun = time.perf_counter()
            shapes = rec.warmup()
            warmups.append(f"- {label}: warmup ran {shapes} shapes in {time.perf_counter() - begun:.1f} s")
        except Exception as error:  # e.g. a graph onnxruntime will not capture: a finding, not a crash
            warmups.append(f"- {label}: refused: {type(error).__name__}: {error}"[:400])
            continue
        recognizers[label] = rec
        for batch, workload in workloads.items():
            items = list(zip(workload.waveforms, workload.transcripts))
            try:
                row = stages(rec, lambda w=workload: reference_route.run(w), items, args.rounds)
            except Exception as error:
                lines.append(f"| {label} | {batch} | failed: {type(error).__name__}: {error} |"[:400])
                continue
            data[f"{label}, b{batch}"] = row
            lines.append(f"| {label} | {batch} | {row['total']} | {row['host']} | {row['audio_encoder']} | "
                         f"{row['text_encoder']} | {row['fusion']} | {row.get('pytorch')} |")
    report.section("Stages of one predict_batch call (ms)", lines + [""] + warmups, {"stages": data,
                                                                                    "warmup": warmups})

    # 2. The audio graph alone: the shipped form against the others, each under the provider's convolution options
    #    (the shipped CUDA form has no Conv, so only ours), in interleaved rounds.
    shipped = model_dir / ModelManifest.read(model_dir).variants[precision].graphs["audio_encoder"].file
    paths = {"shipped": shipped}
    for label, form in audio_layouts(cuda).items():
        try:
            paths[label] = audio_graph_in_layout(artifacts, form, cuda,
                                                 args.out.parent / f".{args.out.name}-{form['layout']}-{form['positional']}")
        except Exception as error:
            report.section(f"Audio graph form {label}", [f"- not built: {type(error).__name__}: {error}"[:400]], {})
    graphs, errors = {}, {}
    for label, path in paths.items():
        for name, options in variants.items():
            if cuda and label == "shipped" and options is not ours_options:
                continue  # no Conv: the convolution options change nothing
            key = f"{label}, {name}"
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
    lines = ["| form, options | " + " | ".join(f"b{b}" for b in batches) + " |",
             "|---|" + "---|" * len(batches)]
    for key in list(graphs) + [k for k in errors if k not in graphs]:
        if key in errors:
            lines.append(f"| {key} | refused: {errors[key]} |" + " |" * (len(batches) - 1))
        else:
            lines.append(f"| {key} | " + " | ".join(str(data[b].get(key)) for b in batches) + " |")
    lines += ["", f"- shipped: `{shipped.relative_to(model_dir)}` ("
              f"{'no Conv: front end and positional convolution as MatMuls' if cuda else 'Conv front end'})"]
    report.section(f"Audio graph alone, {args.seconds} s clips (ms)", lines, {"times": data, "refused": errors})

    # 3. The positional convolution alone, in each form (benchmarks/positional.py): which chunk size.
    if args.size == "base":
        try:
            lines = positional.measure(device, args.seconds, batches, args.rounds)
        except Exception as error:
            lines = [f"- failed: {type(error).__name__}: {error}"[:400]]
        report.section("Positional convolution alone", lines, lines)

    # 4. Kernels.
    batch = max(batches)
    feeds = audio_feeds(workloads[batch])
    steps = 3
    kernel_lines = [f"Audio graph as shipped, our options, {args.seconds} s x {batch}:", ""]
    try:
        kernel_lines += top_kernels(audio_run(graphs[f"shipped, {next(iter(variants))}"], feeds), steps, cuda)
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
