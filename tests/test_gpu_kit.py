"""The GPU kit's mechanics, with a stand-in wheel: scripts/gpu_kit.sh packs wheels into parts small enough for one
device call each; scripts/gpu_bench.sh keeps the parts a call carries, refuses an incomplete or damaged kit, and
installs a whole one. (Its CUDA half needs a GPU: it runs on a lent machine, see benchmarks/README.md.)"""

from __future__ import annotations

import base64
import hashlib
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parent.parent
TOOLS = ("bash", "xz", "tar", "split", "sha256sum")

pytestmark = pytest.mark.skipif(any(shutil.which(tool) is None for tool in TOOLS),
                                reason=f"needs {', '.join(TOOLS)}")


def _record_line(name: str, data: bytes) -> str:
    digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
    return f"{name},sha256={digest},{len(data)}"


def make_wheel(folder: Path, payload_bytes: int) -> Path:
    """A pure-Python wheel of the package ``kitprobe`` whose module carries ``payload_bytes`` random bytes (random,
    so that xz cannot shrink the kit below several parts)."""
    payload = np.random.default_rng(0).integers(0, 256, payload_bytes, dtype=np.uint8).tobytes()
    files = {
        "kitprobe/__init__.py": b"ANSWER = 42\n",
        "kitprobe/payload.bin": payload,
        "kitprobe-0.1.dist-info/METADATA": b"Metadata-Version: 2.1\nName: kitprobe\nVersion: 0.1\n",
        "kitprobe-0.1.dist-info/WHEEL": b"Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
    }
    record = "\n".join([_record_line(name, data) for name, data in files.items()]
                       + ["kitprobe-0.1.dist-info/RECORD,,", ""])
    path = folder / "kitprobe-0.1-py3-none-any.whl"
    with zipfile.ZipFile(path, "w") as wheel:
        for name, data in files.items():
            wheel.writestr(name, data)
        wheel.writestr("kitprobe-0.1.dist-info/RECORD", record)
    return path


def script(name: str, *args: str, env: dict) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(REPO / "scripts" / name), *args], capture_output=True, text=True,
                          env={**os.environ, "PYTHON": sys.executable, **env}, timeout=300)


@pytest.fixture
def kit(tmp_path):
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    make_wheel(wheels, 5 * 1024 * 1024 // 2)  # 2.5 MiB: three parts of 1 MiB
    folder = tmp_path / "kit"
    made = script("gpu_kit.sh", str(wheels), env={"GPU_KIT_DIR": str(folder), "GPU_KIT_PART_MIB": "1"})
    assert made.returncode == 0, made.stderr
    return folder, made.stdout


def carry(tmp_path: Path, kit_folder: Path, n: int | None) -> Path:
    """What one device call sees: a .gpu-kit holding SHA256SUMS and part-n (or no part)."""
    seen = tmp_path / f"call-{n}"
    seen.mkdir()
    shutil.copy(kit_folder / "SHA256SUMS", seen / "SHA256SUMS")
    if n is not None:
        shutil.copytree(kit_folder / f"part-{n}", seen / f"part-{n}")
    return seen


def test_the_kit_goes_over_in_parts_and_installs_only_when_whole(kit, tmp_path):
    folder, printed = kit
    parts = sorted(p.name for p in folder.glob("part-*"))
    assert parts == ["part-1", "part-2", "part-3"]
    assert all(chunk.stat().st_size <= 1024 * 1024 for chunk in folder.glob("part-*/chunk-*"))
    assert printed.count("gpu_bench.sh receive") == 3 and "gpu_bench.sh run" in printed
    store = tmp_path / "store"

    for n in (1, 2):
        got = script("gpu_bench.sh", "receive", env={"GPU_KIT_DIR": str(carry(tmp_path, folder, n)),
                                                     "GPU_KIT_STORE": str(store)})
        assert got.returncode == 0, got.stderr
    early = script("gpu_bench.sh", "unpack", env={"GPU_KIT_DIR": str(carry(tmp_path, folder, None)),
                                                  "GPU_KIT_STORE": str(store)})
    assert early.returncode == 2 and "kit incomplete or damaged" in early.stderr
    assert not (store / "site").exists()

    nothing = script("gpu_bench.sh", "receive", env={"GPU_KIT_DIR": str(tmp_path / "call-None"),
                                                     "GPU_KIT_STORE": str(store)})
    assert nothing.returncode == 2 and "no .gpu-kit/part-* was carried" in nothing.stderr
    got = script("gpu_bench.sh", "receive", env={"GPU_KIT_DIR": str(carry(tmp_path, folder, 3)),
                                                 "GPU_KIT_STORE": str(store)})
    assert got.returncode == 0 and "chunk-0 chunk-1 chunk-2" in got.stdout

    done = script("gpu_bench.sh", "unpack", env={"GPU_KIT_DIR": str(tmp_path / "call-None"),
                                                 "GPU_KIT_STORE": str(store)})
    assert done.returncode == 0, done.stderr
    code = ("import kitprobe, os; "
            "print(kitprobe.ANSWER, os.path.getsize(os.path.join(os.path.dirname(kitprobe.__file__), 'payload.bin')))")
    probe = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                           env={**os.environ, "PYTHONPATH": str(store / "site")})
    assert probe.stdout.split() == ["42", str(5 * 1024 * 1024 // 2)]


def test_a_damaged_part_is_refused(kit, tmp_path):
    folder, _ = kit
    store = tmp_path / "store"
    for n in (1, 2, 3):
        script("gpu_bench.sh", "receive", env={"GPU_KIT_DIR": str(carry(tmp_path, folder, n)),
                                               "GPU_KIT_STORE": str(store)})
    chunk = store / "chunk-1"
    data = bytearray(chunk.read_bytes())
    data[100] ^= 0xFF
    chunk.write_bytes(bytes(data))
    got = script("gpu_bench.sh", "unpack", env={"GPU_KIT_DIR": str(carry(tmp_path, folder, None)),
                                                "GPU_KIT_STORE": str(store)})
    assert got.returncode == 2 and "kit incomplete or damaged" in got.stderr
    assert not (store / "site").exists()


def test_gpu_bench_names_its_steps_when_given_none(tmp_path):
    got = script("gpu_bench.sh", env={"GPU_KIT_STORE": str(tmp_path / "store")})
    assert got.returncode == 2 and "usage: bash scripts/gpu_bench.sh receive|unpack|run" in got.stderr


def test_kit_from_a_folder_without_wheels_is_refused(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    got = script("gpu_kit.sh", str(empty), env={"GPU_KIT_DIR": str(tmp_path / "kit")})
    assert got.returncode == 2 and "no wheels" in got.stderr


def test_a_lease_without_cuda_stops_at_the_smoke_and_still_brings_its_logs_back(kit, tmp_path):
    # The rehearsal of `gpu_bench.sh lease` on a machine without CUDA: the kit installs, the smoke's CUDA tests
    # skip, and the call stops there (not an hour of CPU benchmarks), its logs packed into one file of $OUT.
    folder, _ = kit
    store, out = tmp_path / "store", tmp_path / "out"
    for n in (1, 2, 3):
        script("gpu_bench.sh", "receive", env={"GPU_KIT_DIR": str(carry(tmp_path, folder, n)),
                                               "GPU_KIT_STORE": str(store)})
    got = script("gpu_bench.sh", "lease", env={"GPU_KIT_DIR": str(carry(tmp_path, folder, None)),
                                               "GPU_KIT_STORE": str(store), "OUT": str(out)})
    assert got.returncode == 1 and "the CUDA smoke tests did not run" in got.stderr
    assert sorted(p.name for p in out.iterdir()) == ["logs.tar.gz"]
    import tarfile

    with tarfile.open(out / "logs.tar.gz") as packed:
        smoke = packed.extractfile("logs/smoke.log").read().decode()
    assert "skipped" in smoke and "needs a CUDA GPU" in smoke
