"""Every command of the README's Usage block runs, as written, in a scratch folder."""
from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from face_clips import make_face_clip

ROOT = Path(__file__).resolve().parents[1]


def usage_commands() -> list[str]:
    text = (ROOT / "README.md").read_text()
    section = text.split("## Usage", 1)[1]
    block = re.search(r"```\n(.*?)```", section, re.S).group(1)
    return [line.strip() for line in block.splitlines() if line.strip().startswith("python ")]


def test_usage_block_is_found():
    commands = usage_commands()
    assert len(commands) >= 8
    assert any("capture.video" in c for c in commands) and any("capture.live" in c for c in commands)


@pytest.fixture(scope="module")
def scratch(tmp_path_factory, demo_pack_dir):
    folder = tmp_path_factory.mktemp("readme")
    make_face_clip(folder / "performer.mp4", 10, audio=True)
    return folder


@pytest.mark.slow
@pytest.mark.parametrize("command", usage_commands())
def test_readme_command(command, scratch):
    argv = shlex.split(command)
    argv[0] = sys.executable
    # scripts of the repository (export_onnx.py, benchmarks/fps.py) are run from the checkout
    argv = [str(ROOT / a) if a.endswith(".py") and (ROOT / a).is_file() else a for a in argv]
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    result = subprocess.run(argv, cwd=scratch, capture_output=True, text=True, timeout=600, env=env)
    assert result.returncode == 0, f"{command}\n{result.stdout[-2000:]}\n{result.stderr[-3000:]}"
    assert "Traceback" not in result.stderr
    if "--assets demo" in command or "capture.demo" in command:
        assert "SYNTHETIC" in result.stdout.splitlines()[0]


def api_example() -> str:
    section = (ROOT / "README.md").read_text().split("## Python API", 1)[1]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


@pytest.mark.slow
def test_readme_api_example_runs(scratch):
    """The README's Python example, as written, prints one line per frame of the clip (10 frames)."""
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    result = subprocess.run([sys.executable, "-c", api_example()], cwd=scratch, capture_output=True, text=True,
                            timeout=600, env=env)
    assert result.returncode == 0, f"{result.stdout[-2000:]}\n{result.stderr[-3000:]}"
    lines = result.stdout.splitlines()
    assert lines[0].startswith("capture ")
    assert lines[1].startswith("True (512, 512, 3)")  # the astronaut's face was found; the avatar layout keeps the size
    frames = [line for line in lines[2:] if line.endswith("no face") or "jawOpen" in line]
    assert len(frames) == 10 and all("jawOpen" in line for line in frames)
    assert "SYNTHETIC" in result.stderr  # the synthetic pack is announced
