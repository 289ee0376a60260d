"""The serve tests' harness: a real server process (benchmarks.loopback.ServerProcess: a free loopback port, ready
when /v2/health/ready says so, stopped with a signal; the test then reads its exit status and log), the commands
that start one, and a Prometheus sample reader."""

from __future__ import annotations

import sys
from pathlib import Path

from benchmarks.loopback import REPO, ServerProcess, free_port  # noqa: F401 (the serve tests import them from here)


def serve_command(model_dir: Path, *options: str) -> list[str]:
    return [sys.executable, "-m", "mmer_rt", "serve", "--model", str(model_dir), "--port", "{port}", *options]


def hooked_command(model_dir: Path, gate: Path, *options: str) -> list[str]:
    return [sys.executable, str(REPO / "tests" / "serve_hooked.py"), "--gate", str(gate), "--model",
            str(model_dir), "--port", "{port}", *options]


def metric(text: str, name: str, **labels: str) -> float | None:
    """The value of one sample in Prometheus text format (None when absent)."""
    want = ",".join(f'{key}="{value}"' for key, value in sorted(labels.items()))
    for line in text.splitlines():
        if line.startswith("#"):
            continue
        key, _, value = line.rpartition(" ")
        sample, _, label_text = key.partition("{")
        if sample == name and ",".join(sorted(label_text.rstrip("}").split(","))) == want:
            return float(value)
    return None
