"""A real server process for tests: started on a free loopback port, ready when /v2/health/ready says so, stopped
with a signal; the test then reads its exit status and log."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class ServerProcess:
    """``command`` (argv, with ``{port}`` filled in) run from the repository root, its output in ``log_path``."""

    def __init__(self, command: list[str], log_path: Path, env: dict | None = None, cwd: Path = REPO):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = log_path
        environment = {**os.environ, "PYTHONPATH": str(REPO), **(env or {})}
        with open(log_path, "wb") as log:
            self.process = subprocess.Popen([part.format(port=self.port) for part in command], cwd=cwd,
                                            stdout=log, stderr=subprocess.STDOUT, env=environment)

    def wait_ready(self, timeout: float = 120.0) -> "ServerProcess":
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"the server exited with {self.process.returncode}:\n{self.log()}")
            try:
                if httpx.get(f"{self.url}/v2/health/ready", timeout=2).status_code == 200:
                    return self
            except httpx.TransportError:
                pass
            time.sleep(0.2)
        self.kill()
        raise RuntimeError(f"the server was not ready after {timeout} s:\n{self.log()}")

    def stop(self, sig: int | None = signal.SIGTERM, timeout: float = 60.0) -> int:
        """Send ``sig`` (None: it was sent already) and wait for the exit; returns the exit status (killed, and an
        error, past ``timeout``)."""
        if sig is not None and self.process.poll() is None:
            self.process.send_signal(sig)
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise RuntimeError(f"the server did not stop within {timeout} s of {sig!r}:\n{self.log()}")

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


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
