"""What the commands print: plural forms, notices once per command, MediaPipe's native log lines kept off stderr."""
from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

from capture import console

ROOT = Path(__file__).resolve().parents[1]


def test_plural():
    assert [console.plural(n, "frame") for n in (0, 1, 2)] == ["0 frames", "1 frame", "2 frames"]
    assert console.plural(1, "was", "were") == "1 was" and console.plural(3, "was", "were") == "3 were"


def test_say_once_is_once_per_outermost_command():
    said = []

    @console.command
    def inner():
        console.say_once(said.append, "pack")
        return 0

    @console.command
    def outer():
        console.say_once(said.append, "pack")
        return inner()

    assert outer() == 0 and said == ["pack"]  # demo -> video in-process: the pack is named once
    outer()
    assert said == ["pack", "pack"]  # a second command names it again


def _stderr_of(code: str) -> str:
    result = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, cwd=ROOT,
                            timeout=300)
    assert result.returncode == 0, result.stderr
    return result.stderr


def test_native_log_lines_are_dropped_inside_and_everything_else_kept():
    err = _stderr_of("""
        import os, sys
        from capture.console import native_logs_silenced
        os.write(2, b"before\\n")
        with native_logs_silenced():
            os.write(2, b"W0000 00:00:1796151621.148772   12538 inference_feedback_manager.cc:114] noise\\n")
            with native_logs_silenced():
                os.write(2, b"INFO: Created TensorFlow Lite XNNPACK delegate for CPU.\\n")
                print("a message from Python", file=sys.stderr)
            os.write(2, b"WARNING: All log messages before absl::InitializeLog() is called are written to STDERR\\n")
            os.write(2, b"I0000 00:00:1796151621.1   12538 gl_context.cc:369] more noise\\n")
        os.write(2, b"W0000 00:00:1796151621.2   12538 outside.cc:1] after the window: shown\\n")
    """)
    assert err.splitlines() == ["before", "a message from Python",
                                "W0000 00:00:1796151621.2   12538 outside.cc:1] after the window: shown"]


def test_the_window_passes_lines_on_as_they_come_and_its_rest_at_exit(tmp_path):
    """A window may stay open for minutes (a face graph keeps it until it has found faces): Python's lines and a
    progress bar's unfinished "\\r" line reach the real stderr while it is open; one left open at exit (with an
    uncaught error) still passes the traceback on."""
    log = tmp_path / "stderr.txt"
    code = textwrap.dedent(f"""
        import os, sys, time
        from capture.console import native_logs_silenced
        window = native_logs_silenced()
        window.__enter__()
        print("a warning", file=sys.stderr, flush=True)
        os.write(2, b"I0000 00:00:1796151621.1   12538 gl_context.cc:369] noise\\n")
        os.write(2, b"\\r 50%|#####     |")
        os.write(2, b"W0000 00:00:1796151621.2   12538 inference_feedback_manager.cc:114] glued to the bar\\n")
        want = b"a warning\\n\\r 50%|#####     |"
        for _ in range(100):  # a busy machine may take a while to run the filter thread (0.1 s hold, then out)
            time.sleep(0.1)
            if open({str(log)!r}, "rb").read() == want:
                break
        assert open({str(log)!r}, "rb").read() == want, open({str(log)!r}, "rb").read()
        raise SystemExit("stopped with the window open")
    """)
    with open(log, "wb") as fh:
        result = subprocess.run([sys.executable, "-c", code], stderr=fh, cwd=ROOT, timeout=300)
    assert result.returncode == 1
    assert log.read_bytes() == b"a warning\n\r 50%|#####     |stopped with the window open\n"


def test_mediapipe_graphs_start_without_log_lines():
    """Without the silencing, MediaPipe 0.10 prints 'INFO: Created TensorFlow Lite XNNPACK delegate', 'All log
    messages before absl::InitializeLog()' and 'W0000 ... inference_feedback_manager.cc' lines here; the landmark
    model logs again ('landmark_projection_calculator.cc') the first time a face is found, which a clip that opens
    without a face reaches only later."""
    err = _stderr_of("""
        import os
        import numpy as np
        from skimage.data import astronaut
        from capture.crop import FaceDetector, FaceTracker
        with FaceTracker() as tracker:
            for i in range(6):
                found = tracker.update(astronaut() if i >= 3 else np.full((512, 512, 3), 90, np.uint8)).face
                assert (found is not None) == (i >= 3)
        with FaceDetector() as detector:
            assert len(detector.detect(astronaut())) == 1
        os.write(2, b"done\\n")
    """)
    assert err.strip() == "done"


def test_progress_bar_in_a_log_writes_lines_not_redraws(monkeypatch):
    """Off a terminal the bar writes whole lines (no carriage returns), one at the start, at most one per
    LOG_PROGRESS_S while it runs, and one at the end with the final count."""
    import io

    class FakeClock:
        now = 0.0

    monkeypatch.setattr("tqdm.std.time", lambda: FakeClock.now)  # the bar's clock: nothing sleeps
    log = io.StringIO()
    bar = console.progress_bar(300, stream=log, unit="frame")
    for _ in range(300):
        FakeClock.now += 0.5  # 150 s in all: about 5 lines of progress
        bar.update(1)
    bar.close()
    text = log.getvalue()
    lines = text.splitlines()
    assert "\r" not in text and text.endswith("\n")
    assert 3 <= len(lines) <= 2 + 150 / console.LOG_PROGRESS_S + 1
    assert "300/300" in lines[-1] and "0/300" in lines[0]
