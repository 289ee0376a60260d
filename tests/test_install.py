"""Tests of scripts/install.sh's choice of Python: a project .venv where the system Python is externally managed.

Each test builds a stand-in "system" Python: a copy of this interpreter's binary in its own prefix, whose standard
library is made of links to the real one, with pip in its site-packages, and (for Debian 12+/Ubuntu 23.04+) the
PEP 668 ``EXTERNALLY-MANAGED`` marker beside it, so that its pip refuses to install, as there. The real
scripts/install.sh and scripts/python_env.sh run against it from a copy of the project's scripts folder, with
MMER_INSTALL_ONLY naming a tiny wheel built here in place of torch and the project, so the choice is the real one
and a run takes seconds.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PROBE = "mmer_install_probe"  # the tiny package installed in place of the real ones

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="the installer is for Debian/Ubuntu")


def make_system_python(prefix: Path, managed: bool, ensurepip: bool = True) -> Path:
    """A non-venv interpreter in ``prefix`` (bin/python3), marked externally managed if ``managed``, without the
    ensurepip module (as Debian without python3-venv) unless ``ensurepip``."""
    binary = Path(os.path.realpath(getattr(sys, "_base_executable", sys.executable)))
    stdlib = Path(sysconfig.get_path("stdlib"))
    (prefix / "bin").mkdir(parents=True)
    python = prefix / "bin" / "python3"
    shutil.copy2(binary, python)  # a copy, not a link: Python finds its prefix from where the binary lies
    fake_stdlib = prefix / stdlib.relative_to(stdlib.parent.parent)  # lib/python3.X
    fake_stdlib.mkdir(parents=True)
    for entry in stdlib.iterdir():
        if entry.name in ("site-packages", "dist-packages", "EXTERNALLY-MANAGED"):
            continue
        if entry.name == "ensurepip" and not ensurepip:
            continue
        (fake_stdlib / entry.name).symlink_to(entry)
    if managed:
        (fake_stdlib / "EXTERNALLY-MANAGED").write_text("[externally-managed]\nError=use a virtual environment\n")
    found = ask(python, "import sys, sysconfig; print(sys.prefix); print(sysconfig.get_path('purelib'))")
    assert found[0] == str(prefix), f"the stand-in Python took {found[0]} as its prefix, not {prefix}"
    site_packages = Path(found[1])
    site_packages.mkdir(parents=True, exist_ok=True)
    import pip

    pip_dir = Path(pip.__file__).parent
    for entry in [pip_dir, *pip_dir.parent.glob("pip-*.dist-info")]:
        (site_packages / entry.name).symlink_to(entry)
    return python


def ask(python: Path, code: str) -> list[str]:
    done = subprocess.run([str(python), "-c", code], capture_output=True, text=True, env=clean_env(), timeout=60)
    assert done.returncode == 0, done.stderr
    return done.stdout.splitlines()


def imports_probe(python: Path) -> bool:
    return subprocess.run([str(python), "-c", f"import {PROBE}"], env=clean_env(), capture_output=True,
                          timeout=60).returncode == 0


def clean_env(**extra: str) -> dict[str, str]:
    """This environment without any active virtual environment or Python path of the test run's own."""
    env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PYTHONPATH", "PYTHONHOME")}
    env["PIP_NO_INDEX"] = "1"  # the probe wheel has no dependencies: nothing needs the network
    env.update(extra)
    return env


@pytest.fixture(scope="module")
def probe_wheel(tmp_path_factory) -> Path:
    """A minimal pure-Python wheel (no dependencies) that pip installs offline in a second."""
    path = tmp_path_factory.mktemp("wheel") / f"{PROBE}-0.1-py3-none-any.whl"
    info = f"{PROBE}-0.1.dist-info"
    files = {
        f"{PROBE}.py": "VALUE = 1\n",
        f"{info}/METADATA": f"Metadata-Version: 2.1\nName: {PROBE}\nVersion: 0.1\n",
        f"{info}/WHEEL": "Wheel-Version: 1.0\nGenerator: tests/test_install.py\nRoot-Is-Purelib: true\n"
                         "Tag: py3-none-any\n",
    }
    with zipfile.ZipFile(path, "w") as wheel:
        for name, text in files.items():
            wheel.writestr(name, text)
        wheel.writestr(f"{info}/RECORD", "".join(f"{name},,\n" for name in [*files, f"{info}/RECORD"]))
    return path


@pytest.fixture
def project(tmp_path) -> Path:
    """A project folder holding a copy of the real installer scripts."""
    (tmp_path / "project" / "scripts").mkdir(parents=True)
    for name in ("install.sh", "python_env.sh"):
        shutil.copy2(ROOT / "scripts" / name, tmp_path / "project" / "scripts" / name)
    return tmp_path / "project"


@pytest.fixture
def stub_bin(tmp_path) -> Path:
    """apt-get and sudo stand-ins: apt-get logs its arguments and, for python3-venv, adds ensurepip to the stand-in
    Python named in $STUB_STDLIB (when $STUB_APT_WORKS is 1)."""
    folder = tmp_path / "stub-bin"
    folder.mkdir()
    (folder / "apt-get").write_text(
        '#!/bin/bash\necho "$*" >> "$STUB_LOG"\n'
        'if [[ " $* " == *" python3-venv "* && "$STUB_APT_WORKS" == 1 ]]; then\n'
        '  ln -s "$REAL_ENSUREPIP" "$STUB_STDLIB/ensurepip"\nfi\n'
    )
    (folder / "sudo").write_text('#!/bin/bash\nexec "$@"\n')
    for stub in folder.iterdir():
        stub.chmod(0o755)
    return folder


def install(project: Path, python: Path, wheel: Path, **extra: str) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(project / "scripts" / "install.sh")], capture_output=True, text=True,
                          timeout=300, env=clean_env(PYTHON=str(python), MMER_INSTALL_ONLY=str(wheel), **extra))


def chosen_python(project: Path, python: Path) -> subprocess.CompletedProcess:
    """What scripts/demo.sh and scripts/test.sh run after the install."""
    return subprocess.run(["bash", "-c", "source scripts/python_env.sh && mmer_python"], cwd=project,
                          capture_output=True, text=True, timeout=60, env=clean_env(PYTHON=str(python)))


def test_externally_managed_python_gets_a_project_venv(tmp_path, project, probe_wheel):
    system = make_system_python(tmp_path / "system", managed=True)
    # The stand-in refuses as Debian's does: the marker is in force.
    refused = subprocess.run([str(system), "-m", "pip", "install", str(probe_wheel)], capture_output=True,
                             text=True, env=clean_env(), timeout=120)
    assert refused.returncode != 0 and "externally-managed-environment" in refused.stderr + refused.stdout

    done = install(project, system, probe_wheel)
    assert done.returncode == 0, done.stdout + done.stderr
    venv_python = project / ".venv" / "bin" / "python"
    assert imports_probe(venv_python)
    assert not imports_probe(system)  # nothing went into the system Python
    assert "externally managed" in done.stderr and "source .venv/bin/activate" in done.stderr
    assert f"installing into {project / '.venv'}" in done.stdout

    chosen = chosen_python(project, system)
    assert chosen.returncode == 0 and chosen.stdout.strip() == str(venv_python)

    again = install(project, system, probe_wheel)  # a second run uses the .venv made by the first
    assert again.returncode == 0, again.stdout + again.stderr
    assert "using the project's virtual environment .venv" in again.stderr and "creating" not in again.stderr


def test_python_without_ensurepip_gets_python3_venv_from_apt(tmp_path, project, probe_wheel, stub_bin):
    system = make_system_python(tmp_path / "system", managed=True, ensurepip=False)
    stdlib = Path(ask(system, "import sysconfig; print(sysconfig.get_path('stdlib'))")[0])
    log = tmp_path / "apt.log"
    done = install(project, system, probe_wheel, PATH=f"{stub_bin}:{os.environ['PATH']}", STUB_LOG=str(log),
                   STUB_APT_WORKS="1", STUB_STDLIB=str(stdlib),
                   REAL_ENSUREPIP=str(Path(sysconfig.get_path("stdlib")) / "ensurepip"))
    assert done.returncode == 0, done.stdout + done.stderr
    assert "install -y -q python3-venv" in log.read_text()
    assert imports_probe(project / ".venv" / "bin" / "python") and not imports_probe(system)


def test_no_venv_module_even_after_apt_is_a_clear_error(tmp_path, project, probe_wheel, stub_bin):
    system = make_system_python(tmp_path / "system", managed=True, ensurepip=False)
    done = install(project, system, probe_wheel, PATH=f"{stub_bin}:{os.environ['PATH']}",
                   STUB_LOG=str(tmp_path / "apt.log"), STUB_APT_WORKS="0")
    assert done.returncode != 0
    version = "%d.%d" % sys.version_info[:2]
    assert f"install python{version}-venv" in done.stderr
    assert not (project / ".venv").exists() and not imports_probe(system)


def test_python_that_is_not_externally_managed_is_installed_into_as_it_is(tmp_path, project, probe_wheel):
    system = make_system_python(tmp_path / "system", managed=False)
    done = install(project, system, probe_wheel)
    assert done.returncode == 0, done.stdout + done.stderr
    assert imports_probe(system) and not (project / ".venv").exists()
    assert chosen_python(project, system).stdout.strip() == str(system)


def test_an_active_virtual_environment_is_used(tmp_path, project, probe_wheel):
    system = make_system_python(tmp_path / "system", managed=True)
    own = tmp_path / "own-venv"
    subprocess.run([str(system), "-m", "venv", str(own)], check=True, env=clean_env(), timeout=120)
    done = install(project, own / "bin" / "python", probe_wheel)
    assert done.returncode == 0, done.stdout + done.stderr
    assert imports_probe(own / "bin" / "python") and not imports_probe(system)
    assert not (project / ".venv").exists()
