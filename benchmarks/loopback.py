"""Processes on the loopback interface, for the benchmarks and the tests: a free port, and a server process that is
ready when its /v2/health/ready route says so and is stopped with a signal."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class ServerProcess:
    """``command`` (argv, with ``{port}`` filled in) run from ``cwd``; its output in ``log_path``, or the caller's
    own output where ``log_path`` is None."""

    def __init__(self, command: list[str], log_path: Path | None, env: dict | None = None, cwd: Path = REPO):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = log_path
        environment = {**os.environ, "PYTHONPATH": str(REPO), **(env or {})}
        argv = [part.format(port=self.port) for part in command]
        if log_path is None:
            self.process = subprocess.Popen(argv, cwd=cwd, env=environment)
        else:
            with open(log_path, "wb") as log:
                self.process = subprocess.Popen(argv, cwd=cwd, stdout=log, stderr=subprocess.STDOUT, env=environment)

    def wait_ready(self, timeout: float = 120.0) -> "ServerProcess":
        import httpx

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
        return "" if self.log_path is None else self.log_path.read_text(errors="replace")
