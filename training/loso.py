"""Leave-one-session-out cross-validation: one training run per session held out, then the mean and spread.

    python -m training.loso --manifest corpus/manifest.jsonl --out runs/loso [any training.train flag]

Each fold trains in ``OUT/<session>`` (so an interrupted cross-validation resumes fold by fold with --resume) and
selects its model on speakers drawn from its own training sessions; ``OUT/loso.json`` holds every fold's test scores
and the mean and standard deviation of WA and UA.
"""

from __future__ import annotations

import dataclasses
import json
import sys
from pathlib import Path

import numpy as np

from mmer_rt.corpus import read_manifest

from .data import sessions
from .train import STATE_NAME, Trainer, parse_args


def run_folds(argv: list[str] | None = None) -> dict:
    base = parse_args(argv, prog="python -m training.loso", description=__doc__.split("\n")[0])
    if base.test_session:
        raise SystemExit("error: --test-session is chosen by the cross-validation itself; leave it out")
    folds = sessions(read_manifest(base.manifest, check_audio=False))
    if len(folds) < 2:
        raise SystemExit(f"error: {base.manifest} has {len(folds)} session(s); cross-validation needs at least 2")
    root = Path(base.out)
    results = {}
    for session in folds:
        fold_dir = root / session
        done = fold_dir / "results.json"
        if done.is_file():
            results[session] = json.loads(done.read_text())
            print(f"{session}: already finished, kept")
            continue
        resume = (fold_dir / "last" / STATE_NAME).is_file()
        config = dataclasses.replace(base, out=str(fold_dir), test_session=session, resume=resume)
        print(f"=== fold {session} ({'resuming' if resume else 'training'}) ===")
        results[session] = Trainer(config).fit()
    summary = summarise(results)
    root.mkdir(parents=True, exist_ok=True)
    (root / "loso.json").write_text(json.dumps({"folds": results, "summary": summary}, indent=2) + "\n")
    print(f"leave-one-session-out over {len(folds)} folds: WA {summary['wa_mean']:.4f} ± {summary['wa_std']:.4f}  "
          f"UA {summary['ua_mean']:.4f} ± {summary['ua_std']:.4f}")
    return summary


def summarise(results: dict) -> dict:
    """Mean and (population) standard deviation of the folds' test WA and UA."""
    wa = np.array([r["test"]["wa"] for r in results.values()])
    ua = np.array([r["test"]["ua"] for r in results.values()])
    return {"folds": len(results), "wa_mean": float(wa.mean()), "wa_std": float(wa.std()),
            "ua_mean": float(ua.mean()), "ua_std": float(ua.std())}


if __name__ == "__main__":
    run_folds(sys.argv[1:])
