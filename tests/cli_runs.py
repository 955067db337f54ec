"""A command run in the test process, its stdout and stderr captured, exactly as its console script runs it.

A subprocess costs every such check ~2.5 s of imports and a fresh pack load; the commands' start in a fresh process
(`python -m`, console scripts, the top-level scripts) is tested once per command elsewhere (test_entry_points, the
signal tests).
"""
from __future__ import annotations

import contextlib
import importlib
import importlib.util
import io
import signal
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from capture import commands


@dataclass
class Result:
    returncode: int
    stdout: str
    stderr: str


_SIGNALS = [getattr(signal, name) for name in ("SIGINT", "SIGTERM", "SIGHUP") if hasattr(signal, name)]


def command_of(module: str) -> str:
    """The `capture.commands` function that runs what `python -m module` runs."""
    for name, (target, _) in commands.COMMANDS.items():
        if target in (module, module + ".__main__"):
            return name
    raise KeyError(f"no console command runs {module} (capture.commands.COMMANDS)")


def run_main(module: str, *args, script: Optional[Path] = None) -> Result:
    """`python -m module args...` (or `python script args...` for a checkout's top-level script) in this process:
    the console command's function (`capture.commands.run`) on sys.argv, its exit status from SystemExit; the
    signal handlers it installs and sys.argv are put back afterwards."""
    name = command_of(module)
    target = commands.COMMANDS[name][0]
    argv0 = str(script) if script is not None else importlib.util.find_spec(target).origin
    out, err = io.StringIO(), io.StringIO()
    handlers = {s: signal.getsignal(s) for s in _SIGNALS}
    saved_argv = sys.argv
    sys.argv = [argv0, *map(str, args)]
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                commands.run(name)
                code = 0
            except SystemExit as exc:
                code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    finally:
        sys.argv = saved_argv
        for s, handler in handlers.items():
            signal.signal(s, handler)
    return Result(code, out.getvalue(), err.getvalue())
