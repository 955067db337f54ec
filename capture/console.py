"""What the commands print, kept honest and readable: plural forms, notices said once per command, and the
native log lines of MediaPipe (absl, TF Lite) kept off the terminal, where they break the progress bar.

MediaPipe's C++ side writes its INFO/WARNING lines ("Created TensorFlow Lite XNNPACK delegate", "Feedback
manager requires a model with a single signature", "All log messages before absl::InitializeLog()") straight
to file descriptor 2, from its own threads, while a graph starts and while it runs its first faces; neither
GLOG_minloglevel nor TF_CPP_MIN_LOG_LEVEL reaches them (measured with mediapipe 0.10.21). `native_logs_silenced()`
points fd 2 through a filter thread for those moments that passes on everything but those lines.
`CAPTURE_NATIVE_LOGS=1` keeps the lines (for debugging a graph).
"""
from __future__ import annotations

import atexit
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
_filter = None  # the _LogFilter while silenced

# The native lines: glog/absl ("W0000 00:00:1796151621.148772   12538 file.cc:114] ..."), TF Lite's INFO line, absl's
# pre-initialisation warning. Everything else written to fd 2 in the window (Python's messages, a progress bar
# from another thread) is passed on as it comes.
_NATIVE = (rb"(?:[IWEF]\d{4} \d\d:\d\d:\d+\.\d+ +\d+ [^ ]+:\d+\]|INFO: Created TensorFlow Lite "
           rb"|WARNING: All log messages before absl::InitializeLog\(\))")
_NATIVE_LINE = re.compile(rb"^" + _NATIVE)
# where written text is cut into lines: after "\n" or "\r", and before a native line glued to an unfinished one
_SEGMENT_END = re.compile(rb"(?<=[\r\n])|(?=" + _NATIVE + rb")")
_HOLD_S = 0.1  # an unfinished line (a progress bar's "\r..." update) is passed on after this long without more


class _LogFilter:
    """fd 2 pointed into a pipe; a thread passes each line on to the real fd 2 unless it is a native log line.

    Lines end at "\n" or "\r" (a progress bar redraws with "\r"), so what Python and other threads write goes out
    as it comes; closing puts fd 2 back, passes on what is left in the pipe and stops the thread."""

    def __init__(self):
        self.out = os.dup(2)  # the real fd 2, for the thread (raises OSError without one)
        self.saved = os.dup(2)  # ... and to put back on close
        read, write = os.pipe()
        os.set_blocking(read, False)
        self.read = read
        self.wake_read, self.wake_write = os.pipe()
        os.dup2(write, 2)
        os.close(write)
        self.thread = threading.Thread(target=self._forward, name="capture-log-filter", daemon=True)
        self.thread.start()

    def _emit(self, segments: list[bytes]) -> None:
        kept = b"".join(seg for seg in segments if not _NATIVE_LINE.match(seg))
        if kept:
            with contextlib.suppress(OSError):
                os.write(self.out, kept)

    def _forward(self) -> None:
        import select

        pending = b""
        stopping = False
        while True:
            try:
                ready, _, _ = select.select([self.read, self.wake_read], [], [], _HOLD_S if pending else None)
                if self.wake_read in ready:
                    stopping = True
                chunk = b""
                if self.read in ready or stopping:
                    with contextlib.suppress(BlockingIOError):
                        chunk = os.read(self.read, 65536)
            except OSError:  # closed under us (close gave up waiting): nothing more to pass on
                break
            if chunk:
                segments = _SEGMENT_END.split(pending + chunk)
                pending = segments.pop()  # "" after a complete line
                self._emit(segments)
                continue
            if pending and (not ready or stopping):  # nothing more came: pass the unfinished line on
                self._emit([pending])
                pending = b""
            if stopping:  # the pipe is empty (a child process started in the window may still hold it open)
                break
        os.close(self.out)

    def close(self) -> None:
        with contextlib.suppress(Exception):
            sys.stderr.flush()
        os.dup2(self.saved, 2)
        os.close(self.saved)
        os.write(self.wake_write, b"x")
        self.thread.join(timeout=5)
        for fd in (self.read, self.wake_read, self.wake_write):
            os.close(fd)


def _close_at_exit() -> None:
    """A window still open at exit (a detector never closed, an error on the way out): pass the rest on."""
    global _silenced, _filter
    with _lock:
        if _filter is not None:
            _filter.close()
            _filter = None
        _silenced = 0


atexit.register(_close_at_exit)


@contextlib.contextmanager
def native_logs_silenced() -> Iterator[None]:
    """fd 2 through a filter for the duration (thread-safe, nestable): every line written there except MediaPipe's
    native log lines goes on to the real fd 2 as it comes. May stay open as long as needed (a face graph keeps it
    from its creation until it has found faces: the native lines come from MediaPipe's own threads)."""
    global _silenced, _filter
    if os.environ.get("CAPTURE_NATIVE_LOGS"):
        yield
        return
    with _lock:
        if _silenced == 0:
            with contextlib.suppress(Exception):
                sys.stderr.flush()
            try:
                _filter = _LogFilter()
            except OSError:  # no fd 2 at all (a detached process): nothing to silence
                _filter = None
        _silenced += 1
    try:
        yield
    finally:
        with _lock:
            _silenced = max(0, _silenced - 1)
            if _silenced == 0 and _filter is not None:
                _filter.close()
                _filter = None


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


# ------------------------------------------------------------------------------------ progress
LOG_PROGRESS_S = 30.0  # how often a progress bar writes a line when stderr is not a terminal


class _LinesOut:
    """A stream for tqdm that ends each redraw with a newline instead of starting it with a carriage return:
    in a log file or a CI console every update is one readable line."""

    def __init__(self, stream):
        self.stream = stream

    def write(self, text: str) -> None:
        text = text.replace("\r", "")
        if text.strip():
            self.stream.write(text if text.endswith("\n") else text + "\n")

    def flush(self) -> None:
        self.stream.flush()


def progress_bar(total, stream=None, **options):
    """A tqdm bar on stderr. On a terminal it redraws in place; elsewhere (a log, a pipe) it writes one line every
    LOG_PROGRESS_S seconds and one at the end, instead of a redraw ten times a second run together by '\\r'."""
    from tqdm import tqdm

    stream = sys.stderr if stream is None else stream
    if getattr(stream, "isatty", lambda: False)():
        return tqdm(total=total, file=stream, dynamic_ncols=True, **options)
    return tqdm(total=total, file=_LinesOut(stream), ncols=100, mininterval=LOG_PROGRESS_S, maxinterval=LOG_PROGRESS_S,
                **options)
