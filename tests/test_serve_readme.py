"""The README's "Serving" section runs as written: its server command, every curl line and Python example against it,
and its load-test command (bounded to a few requests on the tiny model).

The only substitutions: the port (8080 in the README) becomes a free one, `runs/demo/model` is the tests' tiny
model directory (a link in a scratch folder), `clip.wav` is a second of noise there, and `mmer-rt` runs this
checkout's code (a shim on PATH).
"""

import json
import os
import re
import signal
import stat
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile

from serve_harness import ServerProcess, free_port
from test_recognizer_fixtures import noise, tiny_export, tiny_model_dir  # noqa: F401

REPO = Path(__file__).resolve().parent.parent
README_PORT = "8080"


def serving_section() -> str:
    text = (REPO / "README.md").read_text()
    start = text.index("\n## Serving\n")
    end = text.find("\n## ", start + 1)
    return text[start:end if end != -1 else len(text)]


def blocks(language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", serving_section(), flags=re.S)


def shell_lines() -> list[str]:
    return [line.strip() for block in blocks("sh") for line in block.splitlines()
            if line.strip() and not line.strip().startswith("#")]


def test_the_serving_section_follows_using_a_model():
    text = (REPO / "README.md").read_text()
    headings = re.findall(r"^## (.+)$", text, flags=re.M)
    assert headings[headings.index("Using a model") + 1] == "Serving"


@pytest.fixture
def scratch(tmp_path, tiny_model_dir):
    (tmp_path / "runs" / "demo").mkdir(parents=True)
    (tmp_path / "runs" / "demo" / "model").symlink_to(tiny_model_dir)
    soundfile.write(tmp_path / "clip.wav", noise(16_000), 16_000)
    shim = tmp_path / "bin" / "mmer-rt"
    shim.parent.mkdir()
    shim.write_text(f'#!/bin/sh\nexec "{sys.executable}" -m mmer_rt "$@"\n')
    shim.chmod(shim.stat().st_mode | stat.S_IEXEC)
    environment = {**os.environ, "PYTHONPATH": str(REPO), "PATH": f"{shim.parent}{os.pathsep}{os.environ['PATH']}"}
    return tmp_path, environment


def test_the_readme_commands_and_examples_run_as_written(scratch):
    folder, environment = scratch
    port = str(free_port())
    lines = [line.replace(README_PORT, port) for line in shell_lines()]
    start = [line for line in lines if line.startswith("mmer-rt serve")]
    assert len(start) == 1
    clients = [line for line in lines if line.startswith(("curl", "printf"))]
    assert len(clients) >= 3
    server = ServerProcess(["bash", "-c", f"exec {start[0]}"], folder / "server.log", env=environment, cwd=folder)
    server.port, server.url = int(port), f"http://127.0.0.1:{port}"
    try:
        server.wait_ready()
        assert f"listening on http://127.0.0.1:{port}" in server.log()
        for line in clients:
            done = subprocess.run(["bash", "-c", line], cwd=folder, env=environment, capture_output=True, text=True,
                                  timeout=120)
            assert done.returncode == 0, (line, done.stdout, done.stderr)
            answer = json.loads(done.stdout)
            assert "label" in answer or {o["name"] for o in answer["outputs"]} >= {"label", "scores"}, answer
        for code in blocks("python"):
            done = subprocess.run([sys.executable, "-c", code.replace(README_PORT, port)], cwd=folder,
                                  env=environment, capture_output=True, text=True, timeout=120)
            assert done.returncode == 0 and done.stdout.strip(), (code, done.stdout, done.stderr)
        status = server.stop(signal.SIGINT)  # Ctrl+C
        assert status == 0 and "drained; stopped" in server.log(), server.log()
    finally:
        server.kill()


def test_the_readme_load_test_command_runs_bounded(tmp_path):
    commands = [line for line in shell_lines() if line.startswith("python -m benchmarks.loadtest")]
    assert len(commands) == 1
    # The same command, held to a few requests on the tiny model (later options win in argparse).
    bounded = re.sub(r" --out \S+", "", commands[0].replace("python ", f"{sys.executable} ", 1))
    bounded += f" --size quick --clients 1,2 --compare-clients 2 --requests 4 --clips 4 --rounds 1 --out {tmp_path}/r.md"
    done = subprocess.run(["bash", "-c", bounded], cwd=REPO, capture_output=True, text=True, timeout=600,
                          env={**os.environ, "PYTHONPATH": str(REPO)})
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    report = (tmp_path / "r.md").read_text()
    for route in ("server, max batch", "server, max batch 1", "in-process predict_batch"):
        assert route in report
    rows = [line for line in report.splitlines() if line.startswith("| server")]
    assert len(rows) == 3 and all(" 4 |" in row for row in rows)  # every answer came back
    assert np.isfinite([float(row.split("|")[4]) for row in rows]).all()
