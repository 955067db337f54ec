"""What the commands print, kept honest and readable: plural forms, notices said once per command, and the
native log lines of MediaPipe (absl, TF Lite) kept off the terminal, where they break the progress bar.

MediaPipe's C++ side writes its INFO/WARNING lines ("Created TensorFlow Lite XNNPACK delegate", "Feedback
manager requires a model with a single signature", "All log messages before absl::InitializeLog()") straight
to file descriptor 2 while a graph is created and while it runs its first image; neither GLOG_minloglevel nor
TF_CPP_MIN_LOG_LEVEL reaches them (measured with mediapipe 0.10.21). `native_logs_silenced()` points fd 2 at
the null device for exactly those moments; Python's own messages raised there still surface as exceptions.
`CAPTURE_NATIVE_LOGS=1` keeps the lines (for debugging a graph).
"""
from __future__ import annotations

import contextlib
import functools
import os
import sys
import threading
from pathlib import Path
from typing import Callable, Iterator

_lock = threading.Lock()
_silenced = 0  # nesting depth over all threads
_saved_fd = -1


@contextlib.contextmanager
def native_logs_silenced() -> Iterator[None]:
    """fd 2 to the null device for the duration (thread-safe, nestable). Python-level writes to stderr in that
    window are lost too, so keep it to graph creation and first runs."""
    global _silenced, _saved_fd
    if os.environ.get("CAPTURE_NATIVE_LOGS"):
        yield
        return
    with _lock:
        if _silenced == 0:
            with contextlib.suppress(Exception):
                sys.stderr.flush()
            try:
                saved = os.dup(2)
            except OSError:  # no fd 2 at all (a detached process): nothing to silence
                saved = -1
            if saved >= 0:
                null = os.open(os.devnull, os.O_WRONLY)
                os.dup2(null, 2)
                os.close(null)
            _saved_fd = saved
        _silenced += 1
    try:
        yield
    finally:
        with _lock:
            _silenced -= 1
            if _silenced == 0 and _saved_fd >= 0:
                os.dup2(_saved_fd, 2)
                os.close(_saved_fd)
                _saved_fd = -1


def prog(command: str, module: str) -> str:
    """The name a command's usage line shows: `capture-video` when run as the installed command, the script's
    name when run as a checkout's top-level script (export_onnx.py), else `python -m capture.video`."""
    path = Path(sys.argv[0]) if sys.argv and sys.argv[0] else Path()
    if path.name in (command, command + ".exe"):
        return command
    if path.suffix == ".py" and path.resolve().parent != Path(__file__).resolve().parent and path.name != "__main__.py":
        return f"python {path.name}"
    return f"python -m {module}"


def add_version_argument(parser) -> None:
    """`--version` on an argparse parser: the distribution and package version (capture/_version.py)."""
    from ._version import __version__

    parser.add_argument("--version", action="version", version=f"%(prog)s (capture-deca {__version__})")


def plural(n: int, noun: str, plural_form: str | None = None) -> str:
    """'1 frame', '2 frames', '0 frames'."""
    return f"{n} {noun if n == 1 else (plural_form or noun + 's')}"


# ------------------------------------------------------------------------------------ once per command
_said: set[str] = set()
_depth = 0


def command(main: Callable) -> Callable:
    """Decorate a command's main(): notices said with `say_once` are said once per outermost command, even
    when one command runs another in-process (capture.demo runs capture.video)."""

    @functools.wraps(main)
    def wrapper(*args, **kwargs):
        global _depth
        if _depth == 0:
            _said.clear()
        _depth += 1
        try:
            return main(*args, **kwargs)
        finally:
            _depth -= 1

    return wrapper


def say_once(say: Callable[[str], None], text: str) -> None:
    """say(text) unless this command has already said it."""
    if text in _said:
        return
    _said.add(text)
    say(text)


def notice(text: str) -> None:
    """A one-line progress notice on stderr (before a long first-run step), once per command."""
    say_once(lambda t: print(t, file=sys.stderr, flush=True), text)
