"""The README's "Scale-out on Ray" commands, run as written in a scratch folder laid out as the demo leaves it.

What differs from a user's machine, and why: `mmer-rt` is `python -m mmer_rt` (this tree's code); ports 6379 and 8000
are free ones and `HEAD_IP` is 127.0.0.1 (other users of this machine may hold those ports); the head node is
started with `--block`, `--temp-dir` and `--include-dashboard=false` and stopped by ending that process, instead of
`ray stop`, which stops every Ray process of the machine, other users' too; `--temp-dir` also keeps the head's
address out of /tmp/ray, where other users' `ray.init()` would find and join it. `ray start --address=HEAD_IP:6379`
is not run: it is for another machine.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import pytest
import soundfile

from benchmarks.loopback import free_port
from mmer_rt import Recognizer
from test_recognizer_fixtures import noise, tiny_export, tiny_model_dir  # noqa: F401
from test_score import BAD, GOOD, OPTIONS, check_rows, make_corpus, read_rows

REPO = Path(__file__).resolve().parent.parent
RATE = 16_000


def section() -> str:
    text = (REPO / "README.md").read_text()
    start = text.index("## Scale-out on Ray")
    end = text.index("\n## ", start + 1)
    return text[start:end]


def blocks(kind: str = "") -> list[str]:
    """The section's fenced code blocks whose info string is ``kind``."""
    found, current, info = [], None, None
    for line in section().splitlines():
        if line.startswith("```"):
            if current is None:
                current, info = [], line[3:].strip()
            else:
                if info == kind:
                    found.append("\n".join(current) + "\n")
                current = None
        elif current is not None:
            current.append(line)
    return found



@pytest.fixture(scope="module")
def demo(tmp_path_factory, tiny_model_dir):
    """A folder as the demo leaves it: runs/demo/model and runs/demo/corpus (manifest.jsonl, wav/), and clip.wav."""
    work = tmp_path_factory.mktemp("readme_ray")
    model = work / "runs" / "demo" / "model"
    shutil.copytree(tiny_model_dir, model)
    # fp32 only, so that precision "auto" is exact against Recognizer.predict (int8 answers move with the batch).
    manifest = json.loads((model / "mmer.json").read_text())
    del manifest["variants"]["int8"]
    (model / "mmer.json").write_text(json.dumps(manifest))
    shutil.rmtree(model / "int8")
    make_corpus(work / "runs" / "demo" / "corpus")
    (work / "runs" / "demo" / "corpus" / "wav" / "corrupt.wav").unlink()  # a folder scored whole: keep it clean
    soundfile.write(work / "clip.wav", noise(6_000, seed=7), RATE)
    return work


def run(line: str, cwd: Path, env: dict, timeout: float = 300) -> subprocess.CompletedProcess:
    words = shlex.split(line)
    if words[0] == "mmer-rt":
        words = [sys.executable, "-m", "mmer_rt", *words[1:]]
    else:
        words[0] = shutil.which(words[0], path=env["PATH"]) or words[0]
    done = subprocess.run(words, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, f"{line}\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return done


def environment(**extra) -> dict:
    """This environment without RAY_ADDRESS, with this tree on PYTHONPATH and this Python's scripts (ray, serve)
    first on PATH: a virtual environment's are not on PATH unless it was activated."""
    env = {key: value for key, value in os.environ.items() if key != "RAY_ADDRESS"}
    path = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    return {**env, "PYTHONPATH": str(REPO), "PATH": path, **extra}


def test_the_commands_of_the_section_run_as_written(demo, tiny_model_dir):
    single, cluster = [block.strip().splitlines() for block in blocks() if "mmer-rt score" in block]
    yaml_text = blocks("yaml")[0]
    serve_lines = next(block for block in blocks() if block.startswith("serve run serve.yaml")).strip().splitlines()
    recognizer = Recognizer.from_dir(tiny_model_dir, **OPTIONS)
    ray_port, http_port = free_port(), free_port()
    assert "model: /srv/mmer/model" in yaml_text and "port: 8000" in yaml_text
    (demo / "serve.yaml").write_text(yaml_text.replace("port: 8000", f"port: {http_port}")
                                     .replace("/srv/mmer/model", str(demo / "runs" / "demo" / "model")))
    env = environment()

    # One machine: in process, then a Ray job on a local instance the command starts and stops itself.
    assert len(single) == 2 and "--ray" not in single[0] and single[1].endswith("--ray --actors 2")
    run(single[0], demo, env)
    manifest = demo / "runs" / "demo" / "corpus" / "manifest.jsonl"
    check_rows(read_rows(demo / "runs" / "demo" / "scores.jsonl"), manifest, recognizer)
    run(single[1], demo, env)
    rows = {row["id"]: row for row in read_rows(demo / "runs" / "demo" / "wav-scores.jsonl")}
    assert sorted(rows) == sorted(f"{name}.wav" for name in [f"clip{i}" for i in range(GOOD)] + ["too_short"])
    expected = recognizer.predict(demo / "runs" / "demo" / "corpus" / "wav" / "clip3.wav")
    assert rows["clip3.wav"]["scores"] == pytest.approx(expected.scores, abs=1e-6)
    assert rows["too_short.wav"]["error_type"] == "AudioError"

    # A cluster: the head on this machine, the job and the service sent to its address.
    generate, auth, head, _other_node, join, score_line, serve_line, stop = cluster
    assert (generate, head, stop) == ("ray get-auth-token --generate", "ray start --head --port=6379", "ray stop")
    assert serve_line == serve_lines[0] == "serve run serve.yaml"
    run(generate, demo, env)  # makes ~/.ray/auth_token where there is none; prints the token
    env = {**env, **exported(auth)}
    temp_dir = tempfile.mkdtemp(prefix="ray", dir="/tmp")  # short: Ray's socket paths must stay under 108 bytes
    head_words = [*shlex.split(head.replace("6379", str(ray_port))), "--block", f"--temp-dir={temp_dir}",
                  "--include-dashboard=false", "--num-cpus=2", "--disable-usage-stats"]
    head_words[0] = shutil.which(head_words[0], path=env["PATH"]) or head_words[0]
    head_process = subprocess.Popen(head_words, cwd=demo, env=env, stdout=subprocess.DEVNULL,
                                    stderr=subprocess.DEVNULL, start_new_session=True)
    env = {**env, **exported(join.replace("HEAD_IP:6379", f"127.0.0.1:{ray_port}"))}
    try:
        wait_for_port(ray_port, head_process, 90)
        (demo / "runs" / "demo" / "scores.jsonl").unlink()
        run(score_line, demo, env)
        check_rows(read_rows(demo / "runs" / "demo" / "scores.jsonl"), manifest, recognizer)
        serve_and_ask(serve_line, serve_lines[1].replace("8000", str(http_port)), http_port, demo, env, recognizer)
    finally:
        head_process.terminate()  # --block: the head's processes end with it
        try:
            head_process.wait(60)
        except subprocess.TimeoutExpired:
            os.killpg(head_process.pid, signal.SIGKILL)
            head_process.wait()
        shutil.rmtree(temp_dir, ignore_errors=True)


def serve_and_ask(line: str, curl: str, port: int, cwd: Path, env: dict, recognizer: Recognizer) -> None:
    """Run a `serve run` line until the service is ready, ask it with the README's curl line, stop it (Ctrl-C)."""
    words = shlex.split(line)
    words[0] = shutil.which(words[0], path=env["PATH"]) or words[0]
    server = subprocess.Popen(words, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              text=True, start_new_session=True)
    try:
        wait_ready(port, server, 180)
        answer = json.loads(run(curl, cwd, env).stdout)
        alone = recognizer.predict(cwd / "clip.wav")
        assert answer["label"] == alone.label
        assert [s["score"] for s in answer["scores"]] == pytest.approx(list(alone.scores.values()), abs=1e-5)
    finally:
        server.send_signal(signal.SIGINT)  # serve run's Ctrl-C: deletes the application and shuts Serve down
        try:
            server.wait(60)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait()


def exported(line: str) -> dict:
    """``export NAME=VALUE`` as the environment entry it makes."""
    assert line.startswith("export "), line
    name, value = line.removeprefix("export ").split("=", 1)
    return {name: value}


def wait_for_port(port: int, process: subprocess.Popen, seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while True:
        assert process.poll() is None, "ray start --head exited"
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        assert time.monotonic() < deadline, f"nothing listens on {port} after {seconds} s"
        time.sleep(0.5)


def wait_ready(port: int, process: subprocess.Popen, seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while True:
        if process.poll() is not None:
            raise AssertionError(f"serve run exited:\n{process.stdout.read()[-3000:]}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/v2/health/ready", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        assert time.monotonic() < deadline, f"the service on {port} was not ready after {seconds} s"
        time.sleep(0.5)
