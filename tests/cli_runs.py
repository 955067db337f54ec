"""A command's main() run in the test process, its stdout and stderr captured, as its console script runs it.

A subprocess costs every such check ~2.5 s of imports and a fresh pack load; the commands' start in a fresh process
(`python -m`, console scripts, the README's commands) is tested once per command elsewhere (test_entry_points,
test_readme, the signal tests).
"""
from __future__ import annotations

import contextlib
import importlib
import io
import signal
from dataclasses import dataclass

from capture.cli_common import run_cli


@dataclass
class Result:
    returncode: int
    stdout: str
    stderr: str


_SIGNALS = [getattr(signal, name) for name in ("SIGINT", "SIGTERM", "SIGHUP") if hasattr(signal, name)]
_UNDER_RUN_CLI = {"capture.video", "capture.live", "capture.demo"}  # the others' __main__: sys.exit(main())


def run_main(module: str, *args) -> Result:
    """`python -m module args...` in this process: main(argv) of `module` (or of its `__main__`) as its
    `__main__` block runs it (video, live, demo under `cli_common.run_cli`: its error lines and exit statuses);
    the signal handlers that installs are put back afterwards."""
    mod = importlib.import_module(module)
    if not hasattr(mod, "main"):
        mod = importlib.import_module(module + ".__main__")
    out, err = io.StringIO(), io.StringIO()
    handlers = {s: signal.getsignal(s) for s in _SIGNALS}
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            argv = [str(a) for a in args]
            try:
                if module in _UNDER_RUN_CLI:
                    run_cli(lambda: mod.main(argv))  # always exits
                code = mod.main(argv)
            except SystemExit as exc:
                code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    finally:
        for s, handler in handlers.items():
            signal.signal(s, handler)
    return Result(code, out.getvalue(), err.getvalue())
