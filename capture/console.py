"""What the commands print, kept honest and readable: plural forms, notices said once per command, and the
native log lines of MediaPipe (absl, TF Lite) kept off the terminal, where they break the progress bar.

MediaPipe's C++ side writes its INFO/WARNING lines ("Created TensorFlow Lite XNNPACK delegate", "Feedback
manager requires a model with a single signature", "All log messages before absl::InitializeLog()") straight
to file descriptor 2 while a graph is created and while it runs its first image; neither GLOG_minloglevel nor
TF_CPP_MIN_LOG_LEVEL reaches them (measured with mediapipe 0.10.21). `native_logs_silenced()` points fd 2 into a
pipe for exactly those moments and passes on everything but those lines when it closes.
`CAPTURE_NATIVE_LOGS=1` keeps the lines (for debugging a graph).
"""
from __future__ import annotations

import contextlib
import functools
import os
import re
import sys
import threading
from pathlib import Path
from typing import Callable, Iterator

_lock = threading.Lock()
_silenced = 0  # nesting depth over all threads
_saved_fd = -1  # the real fd 2 while silenced
_pipe_fd = -1  # read end of the pipe fd 2 points at while silenced

# The native lines: glog/absl ("W0000 00:00:1796151621.148772   12538 file.cc:114] ..."), TF Lite's INFO line, absl's
# pre-initialisation warning. Everything else written to fd 2 in the window (Python's messages, a progress bar
# from another thread) is passed on when the window closes, not lost.
_NATIVE_LINE = re.compile(rb"^(?:[IWEF]\d{4} \d\d:\d\d:\d+\.\d+ +\d+ [^ ]+:\d+\]|INFO: Created TensorFlow Lite "
                          rb"|WARNING: All log messages before absl::InitializeLog\(\))")


def _drain(fd: int) -> bytes:
    chunks = []
    while True:
        try:
            chunk = os.read(fd, 65536)
        except BlockingIOError:  # a child process started in the window may still hold the write end
            break
        if not chunk:
            break
        chunks.append(chunk)
    return b"".join(chunks)


@contextlib.contextmanager
def native_logs_silenced() -> Iterator[None]:
    """fd 2 into a pipe for the duration (thread-safe, nestable); when the outermost window closes, every line
    written there except MediaPipe's native log lines goes on to the real fd 2. Keep it to graph creation and
    first runs: what other threads write in the window shows when it closes, and a single write larger than the
    pipe (64 KiB) would wait for that."""
    global _silenced, _saved_fd, _pipe_fd
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
                read, write = os.pipe()
                os.set_blocking(read, False)
                os.dup2(write, 2)
                os.close(write)
                _pipe_fd = read
            _saved_fd = saved
        _silenced += 1
    try:
        yield
    finally:
        with _lock:
            _silenced -= 1
            if _silenced == 0 and _saved_fd >= 0:
                with contextlib.suppress(Exception):
                    sys.stderr.flush()
                os.dup2(_saved_fd, 2)
                os.close(_saved_fd)
                _saved_fd = -1
                written = _drain(_pipe_fd)
                os.close(_pipe_fd)
                _pipe_fd = -1
                kept = b"".join(line for line in written.splitlines(keepends=True) if not _NATIVE_LINE.match(line))
                if kept:
                    with contextlib.suppress(OSError):
                        os.write(2, kept)


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
