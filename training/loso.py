"""Leave-one-session-out cross-validation: one training run per session held out, then the mean and spread.

    python -m training.loso --manifest corpus/manifest.jsonl --out runs/loso [any training.train flag]
    python -m training.loso ... --jobs 3                  # three folds at a time, one process each (CPU)
    python -m training.loso ... --devices 0,1             # one fold per GPU at a time

Each fold trains in ``OUT/<session>`` (so an interrupted cross-validation resumes fold by fold with --resume) and
selects its model on speakers drawn from its own training sessions; ``OUT/loso.json`` holds every fold's test scores
and the mean and standard deviation of WA and UA. A fold that fails is reported (its error, and with --jobs or
--devices its log ``OUT/<session>.log``) while the others run on; the mean and spread are then those of the folds
that finished, the failures are listed beside them, and the command exits with status 1.
"""

from __future__ import annotations

import dataclasses
import json
import os
import queue
import subprocess
import sys
import traceback
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from mmer_rt.corpus import read_manifest

from .data import sessions
from .train import STATE_NAME, TrainConfig, Trainer, build_parser, config_from_args

PACKAGE_ROOT = Path(__file__).resolve().parent.parent  # fold processes import this same training package


class FoldFailed(Exception):
    """A fold's training stopped with an error; the message says why and where its log is."""


def parse_loso_args(argv: list[str] | None) -> tuple[TrainConfig, int | None, list[str]]:
    """training.train's flags (--test-session excepted) plus --jobs and --devices, in one parser and one --help."""
    parser = build_parser("python -m training.loso", __doc__.split("\n")[0])
    parser.add_argument("--jobs", type=int, default=None,
                        help="folds trained at the same time, each in a process of its own (default: 1, one after "
                             "another in this process; with --devices, one per device)")
    parser.add_argument("--devices", default=None,
                        help="comma-separated CUDA device ids, one fold per device at a time (default: none; "
                             "for example 0,1); --jobs defaults to their number")
    args = vars(parser.parse_args(argv))
    devices = [d.strip() for d in args["devices"].split(",") if d.strip()] if args["devices"] else []
    return config_from_args(parser, args), args["jobs"], devices


def run_folds(argv: list[str] | None = None) -> dict:
    base, jobs, devices = parse_loso_args(argv)
    if base.test_session:
        raise SystemExit("error: --test-session is chosen by the cross-validation itself; leave it out")
    if jobs is not None and jobs < 1:
        raise SystemExit(f"error: --jobs {jobs}: give at least 1")
    jobs = min(jobs or len(devices), len(devices)) if devices else (jobs or 1)
    folds = sessions(read_manifest(base.manifest, check_audio=False))
    if len(folds) < 2:
        raise SystemExit(f"error: {base.manifest} has {len(folds)} session(s); cross-validation needs at least 2")
    root = Path(base.out)
    root.mkdir(parents=True, exist_ok=True)
    results, failed, pending = {}, {}, []
    for session in folds:
        done = root / session / "results.json"
        if done.is_file():
            results[session] = json.loads(done.read_text())
            print(f"{session}: already finished, kept")
        else:
            resume = (root / session / "last" / STATE_NAME).is_file()
            pending.append(dataclasses.replace(base, out=str(root / session), test_session=session, resume=resume))

    if jobs == 1 and not devices:
        for config in pending:
            print(f"=== fold {config.test_session} ({'resuming' if config.resume else 'training'}) ===", flush=True)
            try:
                results[config.test_session] = Trainer(config).fit()
            except (Exception, SystemExit) as error:  # one fold's failure must not cost the others
                failed[config.test_session] = _describe(error)
                print(f"fold {config.test_session} FAILED: {failed[config.test_session]}", flush=True)
    else:
        free = queue.Queue()
        for slot in devices or [None] * jobs:
            free.put(slot)

        def run(config: TrainConfig) -> None:
            device = free.get()
            try:
                results[config.test_session] = _fold_process(config, root, device)
            except FoldFailed as error:
                failed[config.test_session] = str(error)
                print(f"fold {config.test_session} FAILED: {error}", flush=True)
            finally:
                free.put(device)

        with ThreadPoolExecutor(max_workers=jobs) as pool:
            list(pool.map(run, pending))

    results = {session: results[session] for session in folds if session in results}
    summary = {**summarise(results), "failed": {s: failed[s] for s in folds if s in failed},
               "cut_short": [s for s, r in results.items() if r.get("cut_short")]}
    (root / "loso.json").write_text(json.dumps({"folds": results, "summary": summary}, indent=2) + "\n")
    _report(summary, len(folds))
    return summary


def _fold_process(config: TrainConfig, root: Path, device: str | None) -> dict:
    """Train one fold in a process of its own (``python -m training.train --config``), its output in a log."""
    session = config.test_session
    if device is not None:
        config = dataclasses.replace(config, device="cuda")  # the one GPU CUDA_VISIBLE_DEVICES leaves visible
    spec, log = root / f"{session}.train.json", root / f"{session}.log"
    spec.write_text(json.dumps(dataclasses.asdict(config), indent=2) + "\n")
    env = {**os.environ, "TQDM_DISABLE": "1",  # progress bars would fill the log; the epoch lines remain
           "PYTHONPATH": os.pathsep.join([str(PACKAGE_ROOT), *filter(None, [os.environ.get("PYTHONPATH")])])}
    if device is not None:
        env["CUDA_VISIBLE_DEVICES"] = device
    where = f"on GPU {device}" if device is not None else "on the CPU"
    print(f"=== fold {session}: {'resuming' if config.resume else 'training'} {where}; log {log} ===", flush=True)
    with open(log, "w", encoding="utf-8") as output:
        done = subprocess.run([sys.executable, "-m", "training.train", "--config", str(spec)], stdout=output,
                              stderr=subprocess.STDOUT, env=env)
    results = Path(config.out) / "results.json"
    if done.returncode != 0 or not results.is_file():
        lines = [line for line in log.read_text(encoding="utf-8", errors="replace").splitlines() if line.strip()]
        raise FoldFailed(f"exit status {done.returncode}: {lines[-1] if lines else 'no output'} (log: {log})")
    print(f"fold {session} finished", flush=True)
    return json.loads(results.read_text())


def _describe(error: BaseException) -> str:
    if isinstance(error, SystemExit):
        return str(error.code)
    frame = traceback.extract_tb(error.__traceback__)[-1]
    return f"{type(error).__name__}: {error} ({Path(frame.filename).name}:{frame.lineno})"


def _report(summary: dict, total: int) -> None:
    if summary["folds"]:
        print(f"leave-one-session-out over {summary['folds']} of {total} folds: "
              f"WA {summary['wa_mean']:.4f} ± {summary['wa_std']:.4f}  UA {summary['ua_mean']:.4f} ± "
              f"{summary['ua_std']:.4f}")
    for session, reason in summary["failed"].items():
        print(f"FAILED fold {session}: {reason}; the figures above leave it out")
    if summary["cut_short"]:
        print(f"WARNING: folds {', '.join(summary['cut_short'])} were CUT SHORT by --max-minutes; their results "
              "are not those of the configured runs")


def summarise(results: dict) -> dict:
    """Mean and (population) standard deviation of the folds' test WA and UA."""
    if not results:
        return {"folds": 0}
    wa = np.array([r["test"]["wa"] for r in results.values()])
    ua = np.array([r["test"]["ua"] for r in results.values()])
    return {"folds": len(results), "wa_mean": float(wa.mean()), "wa_std": float(wa.std()),
            "ua_mean": float(ua.mean()), "ua_std": float(ua.std())}


def main(argv: list[str] | None = None) -> int:
    summary = run_folds(argv)
    return 1 if summary["failed"] or not summary["folds"] else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
