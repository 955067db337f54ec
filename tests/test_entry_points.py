"""The console commands of pyproject's [project.scripts]: each target imports, each command's --version and --help
work without starting any model, and (slow) `pip install .` into a fresh venv puts them on PATH."""
from __future__ import annotations

import importlib
import subprocess
import sys
from pathlib import Path

import pytest

tomllib = pytest.importorskip("tomllib")  # Python >= 3.11

ROOT = Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
SCRIPTS = PYPROJECT["project"]["scripts"]
PACKAGES = {"capture.assets", "capture.train"}  # run through their __main__
# the module each command runs, as `python -m` runs it
MODULES = {"capture-video": "capture.video", "capture-live": "capture.live",
           "capture-reconstruct": "capture.reconstruct", "capture-demo": "capture.demo",
           "capture-assets": "capture.assets", "capture-train": "capture.train",
           "capture-export": "capture.export_onnx", "capture-build-engines": "capture.build_engines",
           "capture-fps": "capture.fps"}


def test_the_distribution_name_is_not_the_taken_one():
    assert PYPROJECT["project"]["name"] == "capture-deca"
    assert set(SCRIPTS) == set(MODULES)


@pytest.mark.parametrize("command", sorted(SCRIPTS))
def test_each_script_target_is_a_function(command):
    module, _, attr = SCRIPTS[command].partition(":")
    assert callable(getattr(importlib.import_module(module), attr))


def test_version_has_one_source():
    import capture
    from capture._version import __version__

    assert PYPROJECT["tool"]["setuptools"]["dynamic"]["version"] == {"attr": "capture._version.__version__"}
    assert capture.__version__ == __version__ and __version__.count(".") >= 2


@pytest.mark.parametrize("command", sorted(MODULES))
def test_every_command_answers_version_and_help(command, capsys):
    """In-process (the modules' main(), as `python -m` and the console command call it)."""
    from capture import __version__

    module = MODULES[command]
    main = importlib.import_module(f"{module}.__main__" if module in PACKAGES else module).main
    for flag in ("--version", "--help"):
        with pytest.raises(SystemExit) as stop:
            main([flag])
        assert stop.value.code == 0
        out = capsys.readouterr().out
        if flag == "--version":
            assert out.strip() == f"python -m {module} (capture-deca {__version__})"
        else:
            assert out.startswith(f"usage: python -m {module}")


def test_python_dash_m_and_the_version_flag_in_a_fresh_process():
    from capture import __version__

    result = subprocess.run([sys.executable, "-m", "capture.video", "--version"], capture_output=True, text=True,
                            cwd=ROOT, timeout=120)
    assert result.returncode == 0 and result.stdout.strip() == f"python -m capture.video (capture-deca {__version__})"


@pytest.mark.parametrize("script", ["export_onnx.py", "build_engines.py"])
def test_top_level_scripts_are_wrappers_over_the_package(script):
    text = (ROOT / script).read_text()
    assert len([line for line in text.splitlines() if line.strip()]) <= 7 and "from capture." in text
    result = subprocess.run([sys.executable, str(ROOT / script), "--version"], capture_output=True, text=True,
                            cwd=ROOT, timeout=120)
    assert result.returncode == 0 and result.stdout.startswith(f"python {script} (capture-deca")


def test_import_capture_is_cheap():
    code = "import sys, capture; print(sorted(m for m in ('torch', 'mediapipe', 'cv2', 'numpy') if m in sys.modules))"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert result.returncode == 0 and result.stdout.strip() == "[]"
    code = "import capture; print(capture.Retargeter.__module__, 'Retargeter' in dir(capture))"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert result.stdout.split() == ["capture.api", "True"]


@pytest.mark.slow
def test_pip_install_into_a_fresh_venv_gives_the_commands(tmp_path):
    """`pip install .` into a fresh venv puts every [project.scripts] command on its PATH, and each answers
    --version as the installed command. Offline and quick: the venv has no pip of its own, this interpreter's pip
    and setuptools install into it (--no-build-isolation), and the dependencies (torch, ...) come from this
    interpreter's site-packages through PYTHONPATH (--no-deps)."""
    import os
    import site
    import venv

    from capture import __version__

    env_dir = tmp_path / "venv"
    venv.EnvBuilder(with_pip=False).create(env_dir)
    python = env_dir / "bin" / "python"
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(site.getsitepackages()))
    install = subprocess.run([str(python), "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation",
                              str(ROOT)], capture_output=True, text=True, timeout=600, cwd=tmp_path, env=env)
    assert install.returncode == 0, install.stderr
    for command in SCRIPTS:
        result = subprocess.run([str(env_dir / "bin" / command), "--version"], capture_output=True, text=True,
                                timeout=120, env=env, cwd=tmp_path)
        assert result.returncode == 0 and result.stdout.strip() == f"{command} (capture-deca {__version__})", \
            result.stderr
    where = subprocess.run([str(python), "-c", "import capture; print(capture.__file__)"], capture_output=True,
                           text=True, env=env, cwd=tmp_path)
    assert where.stdout.startswith(str(env_dir))  # the installed copy, not the checkout
