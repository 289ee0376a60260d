"""Runs the README's examples as written, against a small exported model.

Convention (for anyone adding a README section): a fenced block opts in with an HTML comment on the line right
above its opening fence (GitHub does not show it):

    <!-- readme-test -->              run the block:
                                        ```python         exec'd in one namespace shared by all the README's python
                                                          blocks, in order (a block may use what an earlier defined)
                                        ``` / ```sh / ```bash / ```shell
                                                          run by bash (-e -x -o pipefail): every line must succeed;
                                                          `python`, `python3` and `mmer-rt` run this checkout's code
    <!-- readme-test file=NAME -->    not run: its text is written to NAME in the working folder first (an input
                                      file the README shows, e.g. transcripts.tsv)
    <!-- readme-test skip: WHY -->    not run, with the reason (for a block in an opted-in section that cannot run
                                      here, such as one that needs a GPU)

Once a section (## heading) has one marked block, every fenced block in it must carry a marker, so a new example
there cannot go untested by oversight. Every block runs in the same fresh working folder, which holds:

    runs/demo/model      the shared tiny model directory (tests/test_recognizer_fixtures.py: labels happy, angry,
                         neutral, sad; fp32 and int8 graphs; 0.5 s of audio at most)
    clip.wav a.wav b.wav b.flac
                         short 16 kHz noise clips standing for the user's audio files
    call.wav call.rttm call.srt stereo.wav
                         a 20 s synthetic call (training.synth_call), its turns and words; a stereo one

A section needing something else adds it in the ``workdir`` fixture below (and says so in this list).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
import soundfile

from test_recognizer_fixtures import noise, tiny_export, tiny_model_dir  # noqa: F401

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
MARKER = re.compile(r"^<!--\s*readme-test(?:\s+(?P<option>.*?))?\s*-->\s*$")
FENCE = re.compile(r"^```\s*(?P<lang>[\w+-]*)\s*$")
COMMAND_LANGUAGES = ("", "sh", "bash", "shell")


@dataclass(frozen=True)
class Block:
    section: str
    line: int  # of the opening fence, 1-based
    lang: str
    option: str | None  # None: not marked; "": run; "file=NAME"; "skip: WHY"
    text: str

    @property
    def name(self) -> str:
        return f"README.md:{self.line} ({self.section})"


def read_blocks(path: Path = README) -> list[Block]:
    """Every fenced block of the README with its section and marker."""
    lines = path.read_text(encoding="utf-8").splitlines()
    blocks, section, option, index = [], "", None, 0
    while index < len(lines):
        line = lines[index]
        if line.startswith("## "):
            section = line[3:].strip()
        marker = MARKER.match(line)
        fence = FENCE.match(line)
        if marker:
            if index + 1 >= len(lines) or not FENCE.match(lines[index + 1]):
                raise AssertionError(f"README.md:{index + 1}: a readme-test marker must sit right above a fence")
            option = marker.group("option") or ""
        elif fence:
            end = next((i for i in range(index + 1, len(lines)) if lines[i].strip() == "```"), None)
            if end is None:
                raise AssertionError(f"README.md:{index + 1}: a fenced block that never closes")
            blocks.append(Block(section, index + 1, fence.group("lang"), option, "\n".join(lines[index + 1 : end])))
            option, index = None, end
        index += 1
    return blocks


BLOCKS = read_blocks()
RUN = [block for block in BLOCKS if block.option == ""]
FILES = [block for block in BLOCKS if block.option and block.option.startswith("file=")]


@pytest.fixture(scope="module")
def workdir(tmp_path_factory, tiny_model_dir, synthetic_corpus) -> Path:
    """The working folder every block runs in (see the module's docstring)."""
    folder = tmp_path_factory.mktemp("readme")
    shutil.copytree(tiny_model_dir, folder / "runs" / "demo" / "model")
    for seed, name in enumerate(("clip.wav", "a.wav", "b.wav", "b.flac")):
        soundfile.write(folder / name, noise(4_000 + 1_000 * seed, seed=seed), 16_000)
    from training.synth_call import write_call, write_rttm, write_srt

    turns = write_call(folder / "call.wav", synthetic_corpus, 20.0, seed=1)
    write_rttm(folder / "call.rttm", turns, "call")
    write_srt(folder / "call.srt", turns)
    write_call(folder / "stereo.wav", synthetic_corpus, 20.0, seed=2, stereo=True)
    for block in FILES:
        (folder / block.option.split("=", 1)[1].strip()).write_text(block.text + "\n", encoding="utf-8")
    bin_dir = folder / ".readme-bin"
    bin_dir.mkdir()
    for command, module in (("python", ""), ("python3", ""), ("mmer-rt", "-m mmer_rt ")):
        (bin_dir / command).write_text(f'#!/bin/sh\nexec "{sys.executable}" {module}"$@"\n')
        (bin_dir / command).chmod(0o755)
    return folder


@pytest.fixture(scope="module")
def namespace() -> dict:
    """The python blocks' shared globals, with the lines of the blocks already run."""
    return {"__name__": "__readme__", "__ran__": set()}


def test_every_block_in_an_opted_in_section_has_a_marker():
    opted_in = {block.section for block in BLOCKS if block.option is not None}
    unmarked = [block.name for block in BLOCKS if block.section in opted_in and block.option is None]
    assert not unmarked, f"fenced blocks without a readme-test marker in sections that opted in: {unmarked}"
    unknown = [block.name for block in BLOCKS if block.option
               and not re.match(r"^(file=\S+|skip:\s*\S.*)$", block.option)]
    assert not unknown, f"readme-test markers with an unknown option: {unknown}"
    odd = [block.name for block in RUN if block.lang != "python" and block.lang not in COMMAND_LANGUAGES]
    assert not odd, f"marked blocks of a language the test does not run (python, sh, bash, shell): {odd}"


def test_the_usage_section_is_tested():
    kinds = {block.lang or "commands" for block in RUN if block.section == "Using a model"}
    assert kinds == {"python", "commands"}, kinds
    assert any(block.option == "file=transcripts.tsv" and block.section == "Using a model" for block in FILES)


@pytest.mark.parametrize("block", RUN, ids=[f"line{block.line}" for block in RUN])
def test_readme_block_runs_as_written(block, workdir, namespace, monkeypatch):
    monkeypatch.chdir(workdir)
    if block.lang == "python":
        # An earlier python block left out of this run (pytest -k) still defines what this one uses.
        for earlier in RUN:
            if earlier.lang == "python" and earlier.line < block.line and earlier.line not in namespace["__ran__"]:
                exec(compile(earlier.text, earlier.name, "exec"), namespace)
                namespace["__ran__"].add(earlier.line)
        exec(compile(block.text, block.name, "exec"), namespace)
        namespace["__ran__"].add(block.line)
        return
    env = dict(os.environ, PATH=f"{workdir / '.readme-bin'}{os.pathsep}{os.environ['PATH']}",
               PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
    done = subprocess.run(["bash", "-e", "-x", "-o", "pipefail", "-c", block.text], cwd=workdir, env=env,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, f"{block.name} failed:\n{done.stderr}\n{done.stdout}"
