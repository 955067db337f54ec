"""The console commands that `pip install` puts on PATH ([project.scripts] in pyproject.toml), one function each.

Each does exactly what `python -m capture.<module>` does (the same main(), the same error handling and exit
status); the module is imported only when its command runs, so `capture-assets --version` stays quick.
"""
from __future__ import annotations

import importlib
import sys

# command function -> (the module `python -m` runs, how its errors become the exit status: "run_cli" = through
# cli_common.run_cli (one `error:` line, 128 + signal on a stop), "exit" = main()'s own status, "cli" = the
# module's own cli())
COMMANDS = {
    "video": ("capture.video", "run_cli"),
    "live": ("capture.live", "run_cli"),
    "demo": ("capture.demo", "run_cli"),
    "train": ("capture.train.__main__", "cli"),
    "reconstruct": ("capture.reconstruct", "exit"),
    "assets": ("capture.assets.__main__", "exit"),
    "export": ("capture.export_onnx", "exit"),
    "build_engines": ("capture.build_engines", "exit"),
    "fps": ("capture.fps", "run_cli"),
}


def run(command: str) -> None:
    """Run `command` (a key of COMMANDS) on sys.argv[1:]; always ends in SystemExit."""
    module_name, how = COMMANDS[command]
    module = importlib.import_module(module_name)
    if how == "run_cli":
        from .cli_common import run_cli

        run_cli(module.main)
    if how == "cli":
        module.cli()  # exits
    try:
        sys.exit(module.main())
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)


def video() -> None:
    run("video")


def live() -> None:
    run("live")


def demo() -> None:
    run("demo")


def train() -> None:
    run("train")


def reconstruct() -> None:
    run("reconstruct")


def assets() -> None:
    run("assets")


def export() -> None:
    run("export")


def build_engines() -> None:
    run("build_engines")


def fps() -> None:
    run("fps")
