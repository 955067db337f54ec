"""Every command of the README's Usage block runs, as written, in a scratch folder."""
from __future__ import annotations

import re
import shlex
import warnings
from pathlib import Path

import pytest

from cli_runs import run_main
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


def _module_of(argv: list[str]) -> tuple[str, Path | None]:
    """`python -m capture.x ...` -> ("capture.x", None); `python script.py ...` (a checkout's wrapper script) ->
    (the module whose main it runs, the script)."""
    if argv[1] == "-m":
        return argv[2], None
    script = ROOT / argv[1]
    return re.search(r"^from (capture[\w.]*) import main$", script.read_text(), re.M).group(1), script


@pytest.mark.slow
@pytest.mark.parametrize("command", usage_commands())
def test_readme_command(command, scratch, monkeypatch):
    """Run in this process as its console command runs it (tests/cli_runs.py), in the scratch folder; the
    commands' start in a fresh process is tested by test_entry_points and the signal tests."""
    import torch

    argv = shlex.split(command)
    module, script = _module_of(argv)
    args = argv[3:] if script is None else argv[2:]
    monkeypatch.chdir(scratch)
    threads = torch.get_num_threads()
    try:
        result = run_main(module, *args, script=script)
    finally:
        torch.set_num_threads(threads)  # fps.py gives its eager reference every core
    assert result.returncode == 0, f"{command}\n{result.stdout[-2000:]}\n{result.stderr[-3000:]}"
    assert "Traceback" not in result.stderr
    if "--assets demo" in command or "capture.demo" in command:
        assert "SYNTHETIC" in result.stdout.splitlines()[0]


def api_example() -> str:
    section = (ROOT / "README.md").read_text().split("## Python API", 1)[1]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


@pytest.mark.slow
def test_readme_api_example_runs(scratch, monkeypatch, capsys):
    """The README's Python example, as written (run in this process), prints one line per frame of the clip."""
    monkeypatch.chdir(scratch)
    with warnings.catch_warnings(record=True) as said:
        warnings.simplefilter("always")
        exec(compile(api_example(), "README.md", "exec"), {"__name__": "__main__"})
    out, _ = capsys.readouterr()
    lines = out.splitlines()
    assert lines[0].startswith("capture ")
    assert lines[1].startswith("True (512, 512, 3)")  # the astronaut's face was found; the avatar layout keeps the size
    frames = [line for line in lines[2:] if line.endswith("no face") or "jawOpen" in line]
    assert len(frames) == 10 and all("jawOpen" in line for line in frames)
    assert any("SYNTHETIC" in str(w.message) for w in said)  # the synthetic pack is announced (a warning)
