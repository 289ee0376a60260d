"""Routes side by side: several routes of the benchmark loaded in one process and timed in interleaved rounds.

    python -m benchmarks.interleaved [--routes pytorch-sdpa,pytorch-sdpa-bf16,...] [--clip 5] [--batches 1,8]
        [--rounds 3] [--threads 2] [--json FILE]

The suite (``pytest benchmarks/``) times one route after another, so on a machine shared with other work a busy
minute lands on whichever route runs then. Here every round calls each route once on the same workload, in turn,
so load slows them alike and the ratios of medians hold; parity is against PyTorch fp32 sdpa on the same inputs.
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

from .artifacts import RouteUnavailable, artifacts_for
from .micro import interleaved_rounds
from .routes import PYTORCH_PREFIX, build_route
from .suite import parity_figures
from .workload import make_workload

DEFAULT_ROUTES = ("pytorch-sdpa", "pytorch-sdpa-bf16", "pytorch-int8-dynamic", "mmer-rt-fp32", "mmer-rt-int8",
                  "mmer-rt-openvino", "optimum-openvino")


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--routes", default=",".join(DEFAULT_ROUTES))
    parser.add_argument("--size", default="base", choices=("base", "quick"))
    parser.add_argument("--clip", type=float, default=5.0)
    parser.add_argument("--batches", default="1,8")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)

    artifacts = artifacts_for(args.size)
    tokenizer = artifacts.tokenizer()
    routes, skipped = {}, {}
    for name in ["pytorch-sdpa", *[r for r in args.routes.split(",") if r != "pytorch-sdpa"]]:
        try:
            routes[name] = build_route(name, artifacts, args.threads)
        except RouteUnavailable as reason:
            skipped[name] = str(reason)
    report = {"size": args.size, "clip_seconds": args.clip, "threads": args.threads, "rounds": args.rounds,
              "skipped": skipped, "cases": {}}
    for batch in (int(b) for b in args.batches.split(",")):
        workload = make_workload(args.clip, batch, tokenizer, artifacts.seed)
        outputs = {name: route.run(workload) for name, route in routes.items()}  # warm-up, and the parity inputs
        times = interleaved_rounds({name: (lambda r=route: r.run(workload)) for name, route in routes.items()},
                                   args.rounds)
        medians = {name: statistics.median(values) for name, values in times.items()}
        fastest_torch = min(v for name, v in medians.items() if name.startswith(PYTORCH_PREFIX))
        report["cases"][f"{args.clip:g}x{batch}"] = {
            name: {"median_ms": round(1000 * medians[name], 1), "vs_fastest_pytorch": round(fastest_torch / medians[name], 2),
                   "precision": routes[name].precision, **parity_figures(outputs[name], outputs["pytorch-sdpa"])}
            for name in routes}
    print(_table(report))
    if args.json:
        args.json.write_text(json.dumps(report, indent=2) + "\n")
    return report


def _table(report: dict) -> str:
    cases = list(report["cases"])
    lines = [f"| route | " + " | ".join(f"{c.replace('x', ' s x ')} ms (vs fastest PyTorch)" for c in cases)
             + " | max abs delta p | top-1 |", "|---" * (len(cases) + 3) + "|"]
    for name in report["cases"][cases[0]]:
        rows = [report["cases"][c][name] for c in cases]
        cells = [f"{r['median_ms']:.0f} ({r['vs_fastest_pytorch']:.2f}x)" for r in rows]
        worst = max(r["max_abs_dprob"] for r in rows)
        top1 = min(r["top1_agreement"] for r in rows)
        lines.append(f"| {name} ({rows[0]['precision']}) | " + " | ".join(cells) + f" | {worst:.1e} | {top1:.0%} |")
    for name, reason in report["skipped"].items():
        lines.append(f"- {name}: skipped ({reason})")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
