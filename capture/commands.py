"""The console commands that `pip install` puts on PATH ([project.scripts] in pyproject.toml), one function each.

Each does exactly what `python -m capture.<module>` does (the same main(), the same error handling and exit
status); the module is imported only when its command runs, so `capture-assets --version` stays quick.
"""
from __future__ import annotations

import importlib
import sys


def _run_cli(module: str) -> None:
    """Commands whose __main__ goes through cli_common.run_cli (one `error:` line, 128 + signal on a stop)."""
    from .cli_common import run_cli

    run_cli(importlib.import_module(module).main)


def _exit_with(module: str) -> None:
    """Commands that turn their own errors into an exit status."""
    try:
        sys.exit(importlib.import_module(module).main())
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)


def video() -> None:
    _run_cli("capture.video")


def live() -> None:
    _run_cli("capture.live")


def demo() -> None:
    _run_cli("capture.demo")


def train() -> None:
    importlib.import_module("capture.train.__main__").cli()


def reconstruct() -> None:
    _exit_with("capture.reconstruct")


def assets() -> None:
    _exit_with("capture.assets.__main__")


def export() -> None:
    _exit_with("capture.export_onnx")


def build_engines() -> None:
    _exit_with("capture.build_engines")


def fps() -> None:
    _exit_with("capture.fps")
