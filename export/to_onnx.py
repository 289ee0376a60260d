"""``python -m export.to_onnx CHECKPOINT_DIR --out MODEL_DIR``: a training checkpoint to a checked model directory.

Steps: load the checkpoint; trace the audio encoder (with its CTC head), the text encoder and the fusion block
with the legacy exporter; fuse the encoders with onnxruntime's transformer optimizer; derive the fp16 and int8
variants; measure each variant against the PyTorch fp32 model on a probe set; write graphs, tokenizer and
manifest. Everything is built in a hidden staging directory beside MODEL_DIR and moved into place only after
every variant passed its parity check, so a failed export leaves no half-written model directory.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable, Sequence

import onnx

import mmer_rt
from mmer_rt.audio import SAMPLE_RATE
from mmer_rt.modeldir import (
    FORMAT_VERSION, GRAPH_NAMES, PRECISIONS, TOKENIZER_NAME, GraphEntry, ModelManifest, VariantEntry, sha256_file,
)
from mmer_rt.text import TEXT_CLEANING_RULE
from training.model import MMER

from . import graphs, parity, precision
from .errors import ExportError
from .optimize import optimize_encoder

ENCODERS = {"audio_encoder": "audio", "text_encoder": "text"}  # graph name -> MMERConfig field of its encoder
# Text encoders whose position ids start after the pad id (RoBERTa's convention), which costs pad_id + 1 slots.
_PADDING_OFFSET_POSITIONS = {"roberta", "xlm-roberta", "camembert"}


class _Steps:
    """Numbered step logging with timings: the export's progress display."""

    def __init__(self, total: int, log: Callable[[str], None]):
        self.total, self.done, self.log = total, 0, log

    def run(self, title: str, action: Callable, *args):
        self.done += 1
        started = time.perf_counter()
        self.log(f"[{self.done}/{self.total}] {title} ...")
        result = action(*args)
        self.log(f"[{self.done}/{self.total}] {title}: {time.perf_counter() - started:.1f} s")
        return result


def export_model_dir(
    checkpoint_dir: str | Path,
    out_dir: str | Path,
    precisions: Sequence[str] = PRECISIONS,
    force: bool = False,
    tolerances: dict[str, float] | None = None,
    log: Callable[[str], None] = print,
    speech_manifest: str | Path | None = None,
    speech_count: int = 32,
    format_version: int = FORMAT_VERSION,
    int8_logit_tolerance: float | None = None,
) -> ModelManifest:
    """Export a checkpoint to the model directory ``out_dir``; returns the manifest written there.

    Parity is measured on synthetic probes and, with ``speech_manifest`` (a data manifest, mmer_rt/corpus.py), on
    up to ``speech_count`` of its utterances as well; the tolerances hold on both.

    ``int8_logit_tolerance``: the int8 variant keeps in fp32 the fewest of the audio graph's node groups (most
    sensitive first) that bring its max |delta logit| on the probes within this (``_tune_int8``); None quantises
    every group.

    Raises:
      training.checkpoint.CheckpointError: the checkpoint is missing, unreadable or of another format.
      ExportError: ``out_dir`` is a non-empty directory and ``force`` is False, or an option is invalid.
      ManifestError, AudioError: the speech manifest or one of its chosen clips cannot be read.
      ParityError: a variant differs from the PyTorch fp32 model by more than its tolerance.
    """
    from training.checkpoint import load_checkpoint

    precisions = _check_precisions(precisions)
    tolerances = {**parity.TOLERANCES, **(tolerances or {})}
    out_dir = Path(out_dir)
    _check_out_dir(out_dir, force)
    if speech_count < 1:
        raise ExportError(f"--speech-probes {speech_count}: give a positive number of utterances")
    if int8_logit_tolerance is not None and not int8_logit_tolerance > 0:
        raise ExportError(f"--int8-logit-tolerance {int8_logit_tolerance}: give a positive number")
    steps = _Steps(5 + 2 * len(precisions), log)
    model, tokenizer_path = steps.run(f"loading checkpoint {checkpoint_dir}", load_checkpoint, checkpoint_dir)
    probe_set = steps.run("preparing the parity probes", _probe_set, model, tokenizer_path,
                          None if speech_manifest is None else Path(speech_manifest), speech_count)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.partial-", dir=out_dir.parent))
    try:
        manifest = _build(model, tokenizer_path, probe_set, staging, precisions, tolerances, steps, format_version,
                          int8_logit_tolerance)
        _publish(staging, out_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return manifest


def _probe_set(model: MMER, tokenizer_path: Path, speech_manifest: Path | None, speech_count: int) -> parity.ProbeSet:
    return parity.make_probe_set(
        tokenizer_path, SAMPLE_RATE, model.config.max_audio_samples, min_samples=graphs.samples_for_frames(model, 1),
        max_tokens=_max_text_tokens(model.config.text), speech_manifest=speech_manifest, speech_count=speech_count)


def _build(model: MMER, tokenizer_path: Path, probes: parity.ProbeSet, staging: Path, precisions: list[str],
           tolerances: dict[str, float], steps: _Steps, format_version: int = FORMAT_VERSION,
           int8_logit_tolerance: float | None = None) -> ModelManifest:
    traced = staging / ".traced"
    traced.mkdir()
    fp32 = staging / "fp32"
    fp32.mkdir()
    steps.run("tracing the three graphs (torch.onnx legacy exporter)", _trace, model, traced, "fp16" in precisions,
              format_version)
    fused = steps.run("fusing the encoders (onnxruntime transformer optimizer)", _fuse, model, traced, fp32,
                      "fp16" in precisions)
    reference = steps.run("running the PyTorch fp32 reference on the probes", parity.reference_for, model, probes)
    variants, kept, fp16_tables = {}, None, {}
    for name in precisions:
        folder, tables = steps.run(f"building the {name} graphs", _build_variant, name, fp32, traced, staging)
        if tables:
            fp16_tables[name] = tables
        if name == "int8" and int8_logit_tolerance is not None:
            kept = _tune_int8(fp32, folder, probes, reference, int8_logit_tolerance, steps.log)
        title = f"measuring {name} parity" + (" (onnxruntime, and OpenVINO)" if name == "fp32" else "")
        variants[name] = steps.run(title, _measure_variant, name, folder, staging, probes, reference,
                                   tolerances[name], tolerances["openvino"], format_version)
    shutil.rmtree(traced)
    if "fp32" not in precisions:
        shutil.rmtree(fp32)
    shutil.copyfile(tokenizer_path, staging / TOKENIZER_NAME)
    manifest = _manifest(model, variants, fused, probes.description)
    # Tables stored in fp16 inside a variant's fp32 arithmetic (export/precision.py FP16_TABLE_INDICES).
    manifest.extra["fp16_tables"] = fp16_tables
    if kept is not None:
        manifest.extra["int8_kept_fp32"] = {"groups": kept, "logit_tolerance": int8_logit_tolerance}
    manifest.format_version = format_version
    manifest.write(staging)
    return manifest


# The fp16 variant's audio graph is traced apart with no Conv left: its front end in the "time" layout and its
# positional convolution as grouped MatMuls over chunks of taps (cuBLAS, not cuDNN's fallback engines on CUDA:
# export/frontend.py, export/positional.py).
_GPU_AUDIO = "audio_encoder.time.onnx"
GPU_AUDIO_FORM = {"layout": "time", "positional": "matmul"}


def _trace(model: MMER, folder: Path, gpu: bool, format_version: int = FORMAT_VERSION) -> None:
    export_model = graphs.exportable_copy(model)
    examples = graphs.example_inputs(export_model)
    # Format version 1 (normalised input, sample mask) only when asked: the reader's version-1 path is tested so.
    audio, audio_example = graphs.GRAPH_SPECS[0], examples["audio_encoder"]
    if format_version == 1:
        audio, audio_example = graphs.AUDIO_SPEC_V1, examples["audio_encoder_v1"]
    graphs.export_graph(export_model, audio, audio_example, folder / "audio_encoder.onnx",
                        format_version=format_version)
    for spec in graphs.GRAPH_SPECS[1:]:
        graphs.export_graph(export_model, spec, examples[spec.name], folder / f"{spec.name}.onnx")
    if gpu:
        graphs.export_graph(export_model, audio, audio_example, folder / _GPU_AUDIO, format_version=format_version,
                            **GPU_AUDIO_FORM)


def _fuse(model: MMER, traced: Path, fp32: Path, gpu: bool) -> dict[str, dict[str, dict[str, int]]]:
    """Fused fp32 graphs for the CPU into ``fp32``, and with ``gpu`` the GPU's (SkipLayerNormalization fused:
    export/optimize.py; the audio graph the one traced with the time-major front end) into ``traced/gpu`` for the
    fp16 variant; returns the fused-operator counts of each."""
    targets = {"cpu": fp32}
    if gpu:
        targets["gpu"] = traced / "gpu"
        targets["gpu"].mkdir()
    counts = {device: {} for device in targets}
    for device, folder in targets.items():
        for graph_name in ENCODERS:
            gpu_audio = device == "gpu" and graph_name == "audio_encoder"
            source = traced / (_GPU_AUDIO if gpu_audio else f"{graph_name}.onnx")
            counts[device][graph_name] = fuse_encoder(model, graph_name, source, folder / f"{graph_name}.onnx",
                                                      gpu=device == "gpu")
        # The fusion block is not a BERT stack; onnxruntime's own session-time optimisations are all it needs.
        shutil.copyfile(traced / "fusion.onnx", folder / "fusion.onnx")
    return counts


def fuse_encoder(model: MMER, graph_name: str, source: Path, target: Path, gpu: bool) -> dict[str, int]:
    """One traced encoder graph fused as the export fuses it: for the CUDA provider (``gpu``: SkipLayerNormalization
    too) or for the CPU; returns the fused-operator counts."""
    config = getattr(model.config, ENCODERS[graph_name])
    return optimize_encoder(source, target, num_heads=config["num_attention_heads"],
                            hidden_size=config["hidden_size"], skip_layer_norm=gpu)


def _build_variant(name: str, fp32: Path, traced: Path, staging: Path) -> tuple[Path, dict[str, list[str]]]:
    """The variant's folder, and the tables (by graph) it stores in fp16 inside fp32 arithmetic."""
    if name == "fp32":
        return fp32, {}
    folder = staging / name
    folder.mkdir()
    fp16_tables = {}
    for graph_name in GRAPH_NAMES:
        if name == "fp16":
            precision.to_fp16(traced / "gpu" / f"{graph_name}.onnx", folder / f"{graph_name}.onnx")
        elif graph_name in precision.INT8_GRAPHS:
            precision.to_int8(fp32 / f"{graph_name}.onnx", folder / f"{graph_name}.onnx")
        elif graph_name == "text_encoder":  # fp32 arithmetic, its word-embedding table stored in fp16
            fp16_tables[graph_name] = precision.fp16_embedding_table(fp32 / f"{graph_name}.onnx",
                                                                     folder / f"{graph_name}.onnx")
        else:  # kept fp32 inside the int8 variant (precision.INT8_GRAPHS says why)
            shutil.copyfile(fp32 / f"{graph_name}.onnx", folder / f"{graph_name}.onnx")
    return folder, fp16_tables


def _tune_int8(fp32: Path, folder: Path, probes: parity.ProbeSet, reference: dict, tolerance: float,
               log: Callable[[str], None]) -> list[str]:
    """Keep in fp32 the fewest audio-graph node groups that bring the int8 variant's max |delta logit| on the
    probes (synthetic and speech) within ``tolerance``; rewrites ``folder``'s audio graph; returns the groups kept.

    Logits, not probabilities: on utterances a model was trained on its probabilities are saturated, and int8 moved
    them 100 times less than on unseen voices, while its logits' error was within 2-4 times (export/DESIGN.md, "int8,
    layer by layer"); a softmax moves no probability by more than half the largest change in the logits. Each
    group's error alone orders them; the number kept is then found by bisection, the error falling as more are kept.
    """
    import onnxruntime

    source, target = fp32 / "audio_encoder.onnx", folder / "audio_encoder.onnx"
    groups = precision.int8_node_groups(onnx.load(str(source), load_external_data=False))
    every = [node for nodes in groups.values() for node in nodes]
    # The variant as _build_variant wrote it (every group int8); trials rewrite and reopen the audio graph only.
    sessions, _ = _open_sessions(folder, prefer_cuda=False)

    def measured() -> float:
        report = parity.measure(sessions, probes, reference)
        return max(report["max_abs_logit"], report.get("speech", {}).get("max_abs_logit", 0.0))

    def error(keep: list[str]) -> float:
        precision.to_int8(source, target, keep_fp32=keep)
        sessions["audio_encoder"] = onnxruntime.InferenceSession(str(target), providers=["CPUExecutionProvider"])
        return measured()

    found = measured()
    if found <= tolerance:
        log(f"  int8: max |delta logit| {found:.2e} with every group quantised, within {tolerance:g}")
        return []
    log(f"  int8: max |delta logit| {found:.2e} with every group quantised, over {tolerance:g}: measuring each of "
        f"{len(groups)} groups alone ...")
    alone = {}
    for index, (group, nodes) in enumerate(groups.items(), 1):
        alone[group] = error([node for node in every if node not in nodes])
        log(f"  int8: {index}/{len(groups)} {group} alone: max |delta logit| {alone[group]:.2e}")
    order = sorted(groups, key=lambda group: -alone[group])
    # Keeping all `high` groups is as close as the graph gets (no int8 left: fp32's own error against PyTorch, and
    # the text graph's fp16 word-embedding table).
    low, high = 0, len(order)
    while high - low > 1:
        middle = (low + high) // 2
        found = error([node for group in order[:middle] for node in groups[group]])
        log(f"  int8: the {middle} most sensitive in fp32: max |delta logit| {found:.2e}")
        if found <= tolerance:
            high = middle
        else:
            low = middle
    kept = order[:high]
    found = error([node for group in kept for node in groups[group]])
    log(f"  int8: kept in fp32 {', '.join(kept)} ({len(kept)} of {len(order)} groups): max |delta logit| "
        f"{found:.2e}, " + (f"within {tolerance:g}" if found <= tolerance else
                            f"still over {tolerance:g} with no group in int8 (the fp32 graphs' own difference, the "
                            "fp16 word-embedding table's)"))
    return kept


def _measure_variant(name: str, folder: Path, staging: Path, probes: parity.ProbeSet, reference: dict,
                     tolerance: float, openvino_tolerance: float,
                     format_version: int = FORMAT_VERSION) -> VariantEntry:
    sessions, provider = _open_sessions(folder, prefer_cuda=name == "fp16")
    report = parity.measure(sessions, probes, reference)
    report.update(tolerance_probability=tolerance, provider=provider)
    parity.check_report(name, report, tolerance)
    if name == "fp32":
        _measure_openvino(folder, probes, reference, report, openvino_tolerance, format_version)
    entries = {}
    for graph_name in GRAPH_NAMES:
        path = folder / f"{graph_name}.onnx"
        entries[graph_name] = GraphEntry(
            file=path.relative_to(staging).as_posix(), sha256=sha256_file(path), opset=_opset(path),
        )
    return VariantEntry(precision=name, graphs=entries, parity=report)


def _measure_openvino(folder: Path, probes: parity.ProbeSet, reference: dict, report: dict, tolerance: float,
                      format_version: int = FORMAT_VERSION):
    """With OpenVINO installed, the fp32 graphs' parity under it (``engine="openvino"``), kept in the fp32 report
    under "openvino" and held to its own tolerance."""
    opened = parity.openvino_sessions(folder, format_version)
    if opened is None:
        report["openvino"] = {"measured": False, "reason": "openvino is not installed"}
        return
    sessions, precision = opened
    found = parity.measure(sessions, probes, reference)
    found.update(measured=True, inference_precision=precision, tolerance_probability=tolerance)
    import openvino

    found["version"] = openvino.__version__
    report["openvino"] = found
    parity.check_report(f"fp32 (run by OpenVINO in {precision})", found, tolerance, advice=(
        "Raise its tolerance with --tolerance openvino=VALUE if the difference is acceptable, or export where "
        "the openvino package is not installed (the model directory is then not checked under it)"))


def _open_sessions(folder: Path, prefer_cuda: bool) -> tuple[dict, str]:
    """onnxruntime sessions for a variant's three graphs, and the execution provider that actually runs them.

    fp16 is measured on CUDA where there is one; elsewhere on the CPU provider (correct there, only slow).
    """
    import onnxruntime

    providers = ["CPUExecutionProvider"]
    if prefer_cuda and "CUDAExecutionProvider" in onnxruntime.get_available_providers():
        providers.insert(0, "CUDAExecutionProvider")
    sessions = {
        name: onnxruntime.InferenceSession(str(folder / f"{name}.onnx"), providers=providers)
        for name in GRAPH_NAMES
    }
    # A CUDA provider that failed to load falls back silently; report the one each session really uses.
    used = {session.get_providers()[0] for session in sessions.values()}
    return sessions, "+".join(sorted(used))


def _opset(path: Path) -> int:
    model = onnx.load(str(path), load_external_data=False)
    return next(entry.version for entry in model.opset_import if entry.domain in ("", "ai.onnx"))


def _manifest(model: MMER, variants: dict[str, VariantEntry], fused: dict, probe_description: str) -> ModelManifest:
    return ModelManifest(
        labels=list(model.config.labels),
        sample_rate=SAMPLE_RATE,
        max_audio_samples=model.config.max_audio_samples,
        ctc_vocab=list(model.config.ctc_vocab),  # the checkpoint's own order
        text_cleaning=TEXT_CLEANING_RULE,
        tokenizer=TOKENIZER_NAME,
        variants=variants,
        versions=_versions(),
        extra={
            "max_text_tokens": _max_text_tokens(model.config.text),
            # The front end's receptive field: shorter audio yields no frame at all.
            "min_audio_samples": graphs.samples_for_frames(model, 1),
            "exporter": f"torch.onnx.export (TorchScript, dynamo=False), opset {graphs.OPSET}",
            # Per variant: the CPU graphs (fp32, int8) keep residual Adds apart from LayerNorm, fp16's fuse them.
            "fused_ops": {name: fused["gpu" if name == "fp16" else "cpu"] for name in variants},
            # The int8 variant quantises only these graphs; its others are fp32 (export/precision.py INT8_GRAPHS).
            "int8_graphs": list(precision.INT8_GRAPHS) if "int8" in variants else [],
            "parity_probes": probe_description,
        },
    )


def _max_text_tokens(text_config: dict) -> int:
    positions = int(text_config["max_position_embeddings"])
    if text_config.get("model_type") in _PADDING_OFFSET_POSITIONS:
        positions -= int(text_config.get("pad_token_id", 1)) + 1
    return positions


def _versions() -> dict[str, str]:
    import onnxruntime
    import torch
    import transformers

    return {"torch": torch.__version__, "transformers": transformers.__version__, "onnx": onnx.__version__,
            "onnxruntime": onnxruntime.__version__, "mmer_rt": mmer_rt.__version__}


def _check_precisions(precisions: Sequence[str]) -> list[str]:
    chosen = [p for p in PRECISIONS if p in precisions]  # the manifest lists variants in a fixed order
    unknown = sorted(set(precisions) - set(PRECISIONS))
    if unknown or not chosen:
        raise ExportError(f"--precision takes a comma-separated subset of {','.join(PRECISIONS)}; got "
                          f"{','.join(precisions) or 'nothing'}")
    return chosen


def _check_out_dir(out_dir: Path, force: bool) -> None:
    if out_dir.exists() and not out_dir.is_dir():
        raise ExportError(f"--out {out_dir} is a file; give a directory path for the model directory")
    if out_dir.is_dir() and any(out_dir.iterdir()) and not force:
        raise ExportError(f"--out {out_dir} exists and is not empty; choose another directory, or pass --force "
                          "to replace it")


def _publish(staging: Path, out_dir: Path) -> None:
    if out_dir.exists():
        shutil.rmtree(out_dir)
    staging.rename(out_dir)


def _parse_tolerances(items: Sequence[str]) -> dict[str, float]:
    tolerances = {}
    for item in items:
        name, _, value = item.partition("=")
        try:
            tolerances[name] = float(value)
        except ValueError:
            raise ExportError(f"--tolerance {item!r}: expected PRECISION=NUMBER, for example fp16=0.02") from None
        if name not in parity.TOLERANCES or not tolerances[name] > 0:
            raise ExportError(f"--tolerance {item!r}: the precision must be one of {', '.join(parity.TOLERANCES)} "
                              "and the tolerance a positive number")
    return tolerances


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m export.to_onnx",
        description="Export an MMER training checkpoint to an mmer-rt model directory (ONNX graphs, tokenizer, "
                    "manifest with a parity report against the PyTorch model).",
    )
    parser.add_argument("checkpoint", type=Path, help="checkpoint directory written by training")
    parser.add_argument("--out", type=Path, required=True, help="model directory to write")
    parser.add_argument("--precision", default=",".join(PRECISIONS),
                        help="comma-separated variants to write (default: %(default)s)")
    parser.add_argument("--force", action="store_true", help="replace --out if it exists and is not empty")
    parser.add_argument("--speech-manifest", type=Path, metavar="MANIFEST",
                        help="also measure parity on utterances of this data manifest (JSONL, as for training): "
                             "real speech can show losses the synthetic probes miss")
    parser.add_argument("--speech-probes", type=int, default=32, metavar="N",
                        help="how many of its utterances, spread evenly over it (default: %(default)s)")
    parser.add_argument("--int8-logit-tolerance", type=float, default=None, metavar="MAX",
                        help="keep in fp32 the fewest groups of the int8 audio graph (its layers' attention and "
                             "feed-forward blocks, the feature projection, the CTC head) that bring its max |delta "
                             "logit| on the parity probes within MAX; with --speech-manifest the speech counts too "
                             "(default: every group in int8)")
    parser.add_argument("--tolerance", action="append", default=[], metavar="PRECISION=MAX",
                        help="override a variant's max |delta probability| against PyTorch fp32 (defaults: "
                             + ", ".join(f"{k}={v:g}" for k, v in parity.TOLERANCES.items()) + ")")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    log = lambda message: print(message, file=sys.stderr, flush=True)  # noqa: E731 - stdout stays for data
    try:
        precisions = [p.strip() for p in args.precision.split(",") if p.strip()]
        manifest = export_model_dir(args.checkpoint, args.out, precisions, args.force,
                                    _parse_tolerances(args.tolerance), log, args.speech_manifest, args.speech_probes,
                                    int8_logit_tolerance=args.int8_logit_tolerance)
    except mmer_rt.MMERError as error:
        log(f"error: {error}")
        return 1
    for name, variant in manifest.variants.items():
        report = variant.parity
        line = (f"{name}: max |delta probability| {report['max_abs_probability']:.2e}, max |delta logit| "
                f"{report['max_abs_logit']:.2e}, top-1 agreement {report['top1_agreement']:.0%}")
        if "speech" in report:
            speech = report["speech"]
            line += (f"; on {speech['clips']} speech clips {speech['max_abs_probability']:.2e}, "
                     f"{speech['max_abs_logit']:.2e}, {speech['top1_agreement']:.0%}")
        log(f"{line} ({report['provider']})")
        if report.get("openvino", {}).get("measured"):
            found = report["openvino"]
            log(f"{name} under OpenVINO {found['inference_precision']}: max |delta probability| "
                f"{found['max_abs_probability']:.2e}, top-1 agreement {found['top1_agreement']:.0%}"
                + (f"; on speech {found['speech']['max_abs_probability']:.2e}, {found['speech']['top1_agreement']:.0%}"
                   if "speech" in found else ""))
    log(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
