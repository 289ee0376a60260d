"""Score a checkpoint on a manifest: WA (overall accuracy), UA (mean per-class recall) and the confusion matrix.

    python -m training.evaluate runs/fold1/best --manifest corpus/manifest.jsonl --session Session5
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

from mmer_rt.corpus import read_manifest
from mmer_rt.errors import CorpusError, MMERError
from mmer_rt.text import TextTokenizer

from .checkpoint import load_checkpoint
from .data import Collator
from .metrics import Scores, score
from .train import choose_device, predict, threads_for


def evaluate_checkpoint(checkpoint: str | Path, manifest: str | Path, sessions=(), speakers=(),
                        batch_size: int = 8, device: str = "auto", threads: int = 0) -> Scores:
    """Score ``checkpoint`` on the manifest's utterances, optionally only those of some sessions or speakers.

    ``threads``: intra-op CPU threads, 0 for the measured default, one per core (``training.train.threads_for``).
    """
    torch.set_num_threads(threads_for(threads, training=False))
    model, tokenizer_path = load_checkpoint(checkpoint)
    labels = list(model.config.labels)
    utterances = read_manifest(manifest, labels=labels)
    if sessions:
        utterances = [u for u in utterances if u.session in set(sessions)]
    if speakers:
        utterances = [u for u in utterances if u.speaker in set(speakers)]
    if not utterances:
        raise CorpusError(f"{manifest}: no utterances match sessions={list(sessions)} speakers={list(speakers)}")
    torch_device = choose_device(device)
    model.to(torch_device)
    with torch.no_grad():
        y_true, probabilities = predict(model, utterances, labels, Collator(TextTokenizer(tokenizer_path), model.config.ctc_vocab),
                                        model.config.max_audio_samples, batch_size, torch_device, "evaluate")
    return score(y_true, probabilities.argmax(-1), labels)


def main(argv: list[str] | None = None) -> Scores:
    parser = argparse.ArgumentParser(prog="python -m training.evaluate", description=__doc__.split("\n")[0])
    parser.add_argument("checkpoint", type=Path, help="checkpoint directory written by training (RUN/best)")
    parser.add_argument("--manifest", type=Path, required=True,
                        help="data manifest (JSONL) whose utterances are scored; its labels must be the model's")
    parser.add_argument("--session", action="append", default=[],
                        help="keep only this session (repeatable; default: every session)")
    parser.add_argument("--speaker", action="append", default=[],
                        help="keep only this speaker (repeatable; default: every speaker)")
    parser.add_argument("--batch-size", type=int, default=8, help="utterances per batch (default: %(default)s)")
    parser.add_argument("--device", default="auto",
                        help="auto (CUDA when torch sees a GPU), cpu, cuda or any torch device name "
                             "(default: %(default)s)")
    parser.add_argument("--threads", type=int, default=0,
                        help="intra-op CPU threads (default: 0 = the measured choice, one per core; see the README's "
                             "'Training on several GPUs or machines')")
    parser.add_argument("--json", type=Path, help="also write the scores to this JSON file")
    args = parser.parse_args(argv)
    try:
        scores = evaluate_checkpoint(args.checkpoint, args.manifest, args.session, args.speaker, args.batch_size,
                                     args.device, args.threads)
    except MMERError as error:
        raise SystemExit(f"error: {error}") from error
    print(f"WA {scores.wa:.4f}  UA {scores.ua:.4f}  ({int(scores.confusion.sum())} utterances)")
    print(scores.table())
    if args.json:
        args.json.write_text(json.dumps(scores.to_dict(), indent=2) + "\n")
    return scores


if __name__ == "__main__":
    main(sys.argv[1:])
