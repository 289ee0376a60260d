"""Parity of exported graphs against the PyTorch fp32 model, measured on a probe set that includes loud audio and,
when the user gives a data manifest, real speech."""

from __future__ import annotations

import random
import string
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from mmer_rt.audio import load_audio, pad_batch, pad_waveforms
from mmer_rt.corpus import read_manifest
from mmer_rt.modeldir import AUDIO_INPUTS_V1, FUSION_INPUTS, TEXT_INPUTS
from mmer_rt.text import TextTokenizer
from training.model import MMER

from .errors import ExportError, ParityError

# The largest max |delta probability| a variant may show against PyTorch fp32 before the export stops.
# fp32: the bound. fp16 and int8: several times the worst error measured on random and base-size
# models (export/DESIGN.md), tight enough that a broken conversion (NaN, an overflow, a lost mask) fails.
# "openvino": the fp32 graphs run by OpenVINO (bf16 arithmetic where the CPU has it, mmer_rt/engines.py), measured
# when OpenVINO is installed; bf16 keeps 8 bits of mantissa, so it gets int8's bound.
TOLERANCES = {"fp32": 1e-4, "fp16": 2e-2, "int8": 5e-2, "openvino": 5e-2}

# Probe lengths as fractions of the longest probe: 2 s, or the model's maximum audio length if shorter.
PROBE_SECONDS = 2.0
PROBE_FRACTIONS = (0.2, 0.45, 0.7, 1.0)  # ordinary clips of several lengths
LOUD_PROBE_FRACTIONS = (0.33, 0.85)  # near full-scale clips, clipped at +-1 like an overdriven recording


@dataclass
class Probes:
    """One padded batch of probe inputs, as the runtime would feed the graphs (numpy, int64 masks)."""

    input_values: np.ndarray
    sample_mask: np.ndarray
    input_ids: np.ndarray
    attention_mask: np.ndarray
    description: str
    # The same audio zero-padded as decoded, not normalised: what format-version-2 audio graphs take (they
    # normalise it themselves). None: input_values stands in (normalising it again changes it by rounding only).
    waveforms: np.ndarray | None = None


def make_probes(tokenizer_path: Path, sample_rate: int, max_samples: int, seed: int = 0) -> Probes:
    """Random speech-like clips (noise under a syllable-rate envelope, several lengths), loud clipping-level
    clips, and transcripts of random words, normalised and padded by mmer_rt exactly as the runtime does."""
    rng = np.random.default_rng(seed)
    longest = min(int(PROBE_SECONDS * sample_rate), max_samples)
    ordinary = [int(f * longest) for f in PROBE_FRACTIONS]
    loud = [int(f * longest) for f in LOUD_PROBE_FRACTIONS]
    waves = [_speech_like(rng, n, sample_rate) for n in ordinary] + [_loud(rng, n) for n in loud]
    input_values, sample_mask = pad_batch(waves)
    raw, _ = pad_waveforms(waves)
    encoded = TextTokenizer(tokenizer_path).encode_batch(_random_transcripts(seed, len(waves)))
    description = (f"speech-like clips of {ordinary} samples, clipped full-scale clips of {loud} samples "
                   f"(seed {seed}), random-word transcripts")
    return Probes(input_values, sample_mask, encoded.input_ids, encoded.attention_mask, description, raw)


# Speech probes run in batches of this many clips of similar length, as the Recognizer batches them.
SPEECH_BATCH = 8


@dataclass
class ProbeSet:
    """What each variant is measured on: the synthetic batch, and batches of real speech when a manifest was given.

    The synthetic probes alone can miss a loss that speech shows: on a trained model, int8 convolutions passed
    them (max |delta p| 8e-6) while moving 11% of its held-out clips' decisions (export/DESIGN.md).
    """

    synthetic: Probes
    speech: list[Probes]
    description: str


def make_probe_set(tokenizer_path: Path, sample_rate: int, max_samples: int, min_samples: int, max_tokens: int,
                   speech_manifest: Path | None = None, speech_count: int = 32) -> ProbeSet:
    """The synthetic probes, plus up to ``speech_count`` utterances of ``speech_manifest`` when one is given."""
    synthetic = make_probes(tokenizer_path, sample_rate, max_samples)
    if speech_manifest is None:
        return ProbeSet(synthetic, [], synthetic.description)
    speech, description = speech_probes(speech_manifest, tokenizer_path, max_samples, min_samples, max_tokens,
                                        speech_count)
    return ProbeSet(synthetic, speech, f"{synthetic.description}; {description}")


def speech_probes(manifest: Path, tokenizer_path: Path, max_samples: int, min_samples: int, max_tokens: int,
                  count: int) -> tuple[list[Probes], str]:
    """Up to ``count`` utterances spread evenly over a data manifest, with their transcripts, as the runtime feeds
    them: decoded and resampled to 16 kHz, cut to ``max_samples``, normalised, padded in batches of similar length.

    Clips shorter than ``min_samples`` (the front end's receptive field, which the runtime refuses) are left out;
    ``count`` is at least 1 (``export_model_dir`` checks it before any work).

    Raises:
      ManifestError, AudioError: the manifest or one of the chosen clips cannot be read.
      ExportError: no chosen clip is long enough.
    """
    utterances = read_manifest(manifest)
    picks = sorted(set(np.linspace(0, len(utterances) - 1, min(count, len(utterances))).round().astype(int)))
    clips = [(utterances[i], load_audio(utterances[i].audio)[:max_samples]) for i in picks]
    clips = sorted((clip for clip in clips if len(clip[1]) >= min_samples), key=lambda clip: len(clip[1]))
    if not clips:
        raise ExportError(f"{manifest}: none of the chosen clips is as long as the model's receptive field "
                         f"({min_samples} samples)")
    tokenizer = TextTokenizer(tokenizer_path, max_tokens)
    batches = []
    for start in range(0, len(clips), SPEECH_BATCH):
        chunk = clips[start: start + SPEECH_BATCH]
        values, mask = pad_batch([wave for _, wave in chunk])
        encoded = tokenizer.encode_batch([utterance.text for utterance, _ in chunk])
        batches.append(Probes(values, mask, encoded.input_ids, encoded.attention_mask, "",
                              pad_waveforms([wave for _, wave in chunk])[0]))
    return batches, f"{len(clips)} utterances of {Path(manifest).name} with their transcripts"


def _speech_like(rng: np.random.Generator, samples: int, sample_rate: int) -> np.ndarray:
    time = np.arange(samples) / sample_rate
    envelope = 0.5 + 0.5 * np.sin(2 * np.pi * rng.uniform(3.0, 6.0) * time) ** 2
    voiced = np.sin(2 * np.pi * rng.uniform(100.0, 250.0) * time)
    return (0.1 * envelope * (voiced + 0.3 * rng.standard_normal(samples))).astype(np.float32)


def _loud(rng: np.random.Generator, samples: int) -> np.ndarray:
    return np.clip(4.0 * rng.standard_normal(samples), -1.0, 1.0).astype(np.float32)


def _random_transcripts(seed: int, count: int) -> list[str]:
    chooser = random.Random(seed)
    def word() -> str:
        return "".join(chooser.choice(string.ascii_lowercase) for _ in range(chooser.randint(1, 9)))
    return [" ".join(word() for _ in range(chooser.randint(1, 14))) for _ in range(count)]


def reference_outputs(model: MMER, probes: Probes) -> dict[str, np.ndarray]:
    """The PyTorch fp32 model's outputs on the probes (eval mode, as loaded from the checkpoint)."""
    feeds = {name: torch.from_numpy(getattr(probes, name)) for name in (*AUDIO_INPUTS_V1, *TEXT_INPUTS)}
    with torch.no_grad():
        out = model.eval()(**feeds)
        token_embeddings = model.text_encoder(feeds["input_ids"], feeds["attention_mask"])
    return {"logits": out.logits.numpy(), "hidden_states": out.hidden_states.numpy(),
            "frame_mask": out.frame_mask.numpy(), "ctc_logits": model.ctc_head(out.hidden_states).detach().numpy(),
            "token_embeddings": token_embeddings.numpy()}


def reference_for(model: MMER, probe_set: ProbeSet) -> dict:
    """The PyTorch fp32 outputs on every batch of a probe set."""
    return {"synthetic": reference_outputs(model, probe_set.synthetic),
            "speech": [reference_outputs(model, batch) for batch in probe_set.speech]}


def measure(sessions: dict, probe_set: ProbeSet, reference: dict) -> dict:
    """A variant's parity report: ``compare`` on the synthetic probes, and under "speech" on the speech probes."""
    report = compare(reference["synthetic"], run_graphs(sessions, probe_set.synthetic))
    if probe_set.speech:
        exported = [run_graphs(sessions, batch) for batch in probe_set.speech]
        report["speech"] = {"clips": sum(len(batch.input_values) for batch in probe_set.speech),
                            **compare_batches(reference["speech"], exported)}
    return report


class OpenVINOSession:
    """An OpenVINO-compiled graph (mmer_rt.engines) behind onnxruntime's ``run(names, feeds)``, for run_graphs."""

    def __init__(self, graph, outputs):
        self.graph, self.outputs = graph, tuple(outputs)

    def get_inputs(self):
        from types import SimpleNamespace

        return [SimpleNamespace(name=port.any_name) for port in self.graph.compiled.inputs]

    def run(self, names, feeds):
        wanted = tuple(names or self.outputs)
        results = self.graph.run(feeds, host_outputs=wanted)
        return [results[name] for name in wanted]


def openvino_sessions(folder: Path, format_version: int) -> tuple[dict, str] | None:
    """The three fp32 graphs of ``folder`` (a model directory of ``format_version``) compiled by OpenVINO in the
    arithmetic the runtime would pick on this CPU (bf16 on AMX or AVX512-BF16, else fp32), and that precision; None
    when OpenVINO is not installed."""
    from mmer_rt import engines

    if not engines.openvino_available():
        return None
    precision = engines.openvino_precision("auto")
    sessions = {name: OpenVINOSession(engines.open_openvino_graph(folder / f"{name}.onnx", name, precision, None,
                                                                  format_version), outputs)
                for name, outputs in engines.GRAPH_OUTPUTS.items()}
    return sessions, precision


def run_graphs(sessions: dict, probes: Probes) -> dict[str, np.ndarray]:
    """Run the three onnxruntime sessions in sequence on the probes, as the Recognizer does."""
    audio = dict(zip(("hidden_states", "frame_mask", "ctc_logits"), sessions["audio_encoder"].run(
        None, audio_feeds_of(probes, [node.name for node in sessions["audio_encoder"].get_inputs()]))))
    (token_embeddings,) = sessions["text_encoder"].run(None, {name: getattr(probes, name) for name in TEXT_INPUTS})
    streams = {**audio, "token_embeddings": token_embeddings, "attention_mask": probes.attention_mask}
    (logits,) = sessions["fusion"].run(None, {name: streams[name] for name in FUSION_INPUTS})
    return {**audio, "token_embeddings": token_embeddings, "logits": logits}


def audio_feeds_of(probes: Probes, input_names) -> dict[str, np.ndarray]:
    """The probes as an audio graph of either format version takes them (by its input names)."""
    if "sample_mask" in input_names:
        return {"input_values": probes.input_values, "sample_mask": probes.sample_mask}
    waveforms = probes.input_values if probes.waveforms is None else probes.waveforms
    return {"waveforms": waveforms, "sample_lengths": probes.sample_mask.sum(-1).astype(np.int64)}


def compare(reference: dict[str, np.ndarray], exported: dict[str, np.ndarray]) -> dict[str, float]:
    """Max |delta logit|, max |delta probability|, top-1 agreement, and each stream's max |delta|."""
    probabilities = [_softmax(outputs["logits"].astype(np.float64)) for outputs in (reference, exported)]
    frame_mask = reference["frame_mask"].astype(bool)
    return {
        "max_abs_logit": _max_abs(reference["logits"], exported["logits"]),
        "max_abs_probability": float(np.abs(probabilities[0] - probabilities[1]).max()),
        "top1_agreement": float((reference["logits"].argmax(-1) == exported["logits"].argmax(-1)).mean()),
        "frame_mask_equal": bool(np.array_equal(reference["frame_mask"], exported["frame_mask"])),
        "max_abs_hidden_states": _max_abs(reference["hidden_states"][frame_mask], exported["hidden_states"][frame_mask]),
        "max_abs_ctc_logits": _max_abs(reference["ctc_logits"][frame_mask], exported["ctc_logits"][frame_mask]),
        "max_abs_token_embeddings": _max_abs(reference["token_embeddings"], exported["token_embeddings"]),
    }


def compare_batches(references: list[dict], exported: list[dict]) -> dict[str, float]:
    """``compare`` over several batches: the worst of each max, top-1 agreement over all rows."""
    reports = [compare(r, e) for r, e in zip(references, exported)]
    rows = [len(r["logits"]) for r in references]
    merged: dict = {key: max(report[key] for report in reports) for key in reports[0] if key.startswith("max_abs")}
    merged["top1_agreement"] = sum(r["top1_agreement"] * n for r, n in zip(reports, rows)) / sum(rows)
    merged["frame_mask_equal"] = all(report["frame_mask_equal"] for report in reports)
    return merged


def check_report(precision: str, report: dict, tolerance: float, advice: str | None = None) -> None:
    """``check_tolerance`` on the synthetic probes' figures and, where measured, the speech probes'."""
    check_tolerance(precision, report, tolerance, advice=advice)
    if "speech" in report:
        check_tolerance(precision, report["speech"], tolerance, probes="the speech probes", advice=advice)


def check_tolerance(precision: str, report: dict, tolerance: float, probes: str = "the synthetic probes",
                    advice: str | None = None) -> None:
    """Raise ParityError when a variant's probabilities drift past ``tolerance`` or its frame mask differs;
    ``advice`` replaces the default way out the message offers."""
    worst = report["max_abs_probability"]
    if not np.isfinite(worst) or worst > tolerance or not report["frame_mask_equal"]:
        advice = advice or (f"Leave {precision} out of --precision, or raise its tolerance with "
                            f"--tolerance {precision}=VALUE if the difference is acceptable")
        raise ParityError(
            f"the {precision} variant does not match the PyTorch fp32 model on {probes}: "
            f"max |delta probability| = {worst:.3g} "
            f"(tolerance {tolerance:g}), max |delta logit| = {report['max_abs_logit']:.3g}, top-1 agreement "
            f"{report['top1_agreement']:.0%}, frame masks {'equal' if report['frame_mask_equal'] else 'DIFFER'}; "
            f"nothing was written. {advice}"
        )


def _softmax(logits: np.ndarray) -> np.ndarray:
    shifted = np.exp(logits - logits.max(-1, keepdims=True))
    return shifted / shifted.sum(-1, keepdims=True)


def _max_abs(a: np.ndarray, b: np.ndarray) -> float:
    if a.size == 0:
        return 0.0
    return float(np.abs(a.astype(np.float64) - b.astype(np.float64)).max())
