"""The bounded stage pipeline: order, policies, errors, interrupts, stats; with real clips and writers."""

from __future__ import annotations

import _thread
import random
import signal
import threading
import time

import numpy as np
import pytest

from capture.stream import Pipeline, VideoError, VideoReader, VideoWriter
from capture.stream.clips import make_test_clip, read_frame_number
from capture.stream.pipeline import LIVE_IN_FLIGHT


def _jitter(seed: int, fn=lambda x: x, max_ms: float = 3.0):
    rng = random.Random(seed)
    lock = threading.Lock()

    def stage(x):
        with lock:
            delay = rng.random() * max_ms / 1e3
        time.sleep(delay)
        return fn(x)

    return stage


def _numbers(path):
    with VideoReader(path) as r:  # raises VideoError if the file is not complete and playable
        return [read_frame_number(f.image) for f in r]


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    path = tmp_path_factory.mktemp("clips") / "src.mp4"
    make_test_clip(path, frames=30, fps=25, audio=True)
    return path


def test_order_preserved_under_random_stage_delays():
    out = []
    stats = Pipeline(
        range(80),
        stages=[("a", _jitter(1, lambda x: x * 3)), ("b", _jitter(2, lambda x: x + 1)), ("c", _jitter(3))],
        sink=out.append, policy="offline", depth=2,
    ).run()
    assert out == [3 * i + 1 for i in range(80)]
    assert (stats.frames_in, stats.frames_out, stats.dropped) == (80, 80, 0)
    assert stats.reason == "end of input" and not stats.interrupted
    assert set(stats.stages) == {"source", "a", "b", "c", "sink"}
    assert all(s.count == 80 for s in stats.stages.values() if s.name != "source")



@pytest.mark.parametrize("workers", [2, 3])
def test_a_stage_with_workers_runs_items_at_once_and_keeps_their_order(workers):
    """(name, fn, workers): that many threads call fn on consecutive items at the same time; whatever each call
    takes, the results leave in the order the items came, every one once, and the end comes after the last."""
    running, most, lock = [0], [0], threading.Lock()
    rng = random.Random(workers)

    def slow(x):
        with lock:
            running[0] += 1
            most[0] = max(most[0], running[0])
            delay = rng.random() * 6e-3
        time.sleep(delay)
        with lock:
            running[0] -= 1
        return x * 2

    out = []
    stats = Pipeline(range(60), stages=[("a", _jitter(8)), ("slow", slow, workers), ("c", _jitter(9, lambda x: x + 1))],
                     sink=out.append, depth=2).run()
    assert out == [2 * i + 1 for i in range(60)]
    assert most[0] == workers  # the calls overlapped
    assert stats.stages["slow"].count == 60 and stats.frames_out == 60 and stats.reason == "end of input"
    assert Pipeline(range(0), stages=[("slow", slow, workers)], sink=out.append).run().frames_out == 0


def test_a_failing_worker_stops_the_run_and_its_error_is_raised():
    def explode(x):
        if x == 7:
            raise ValueError("worker fails on 7")
        time.sleep(0.002)
        return x

    seen = []
    with pytest.raises(ValueError, match="worker fails on 7"):
        Pipeline(range(1000), stages=[("w", explode, 2)], sink=seen.append).run()
    assert seen == list(range(len(seen))) and len(seen) < 1000
    with pytest.raises(ValueError, match="workers must be >= 1"):
        Pipeline(range(3), stages=[("w", explode, 0)])


def test_stop_drains_a_stage_with_workers_in_order():
    out = []
    holder = {}

    def source():
        for i in range(10_000):
            if i == 40:
                holder["p"].stop()
            yield i

    p = Pipeline(source(), stages=[("w", _jitter(10, lambda x: -x), 2)], sink=out.append)
    holder["p"] = p
    stats = p.run()
    assert out == [-i for i in range(stats.frames_in)] and stats.frames_out == stats.frames_in >= 40


def test_live_policy_with_a_stage_of_workers_drops_at_the_source_and_keeps_order():
    """A camera faster than the stage's two workers: frames are dropped at the source queue only, and those that
    get through leave in order, each once."""
    def camera():
        for i in range(80):
            time.sleep(0.002)
            yield i

    out = []
    stats = Pipeline(camera(), stages=[("w", _jitter(11, max_ms=20.0), 2), ("b", _jitter(12))], sink=out.append,
                     policy="live", depth=1, in_flight=3).run()
    assert out == sorted(set(out)) and out[-1] == 79
    assert stats.dropped > 0 and stats.frames_out + stats.dropped == stats.frames_in == 80


def test_offline_never_drops_with_a_slow_consumer():
    out = []
    stats = Pipeline(range(40), stages=[("id", lambda x: x)],
                     sink=lambda x: (time.sleep(0.004), out.append(x)), policy="offline", depth=1).run()
    assert out == list(range(40)) and stats.dropped == 0


def test_live_drops_oldest_and_counts_drops_with_a_slow_consumer():
    def camera():  # a fast source that must never wait for the consumer
        for i in range(60):
            time.sleep(0.001)
            yield i

    out = []
    stats = Pipeline(camera(), stages=[("id", lambda x: x)],
                     sink=lambda x: (time.sleep(0.02), out.append(x)), policy="live", depth=1).run()
    assert stats.dropped > 20
    assert stats.frames_in == 60 and stats.frames_out + stats.dropped == 60 == len(out) + stats.dropped
    assert out == sorted(out)  # still in order
    assert out[-1] == 59  # the newest frame survives (drop-newest would have lost it)


def _most_in_flight(in_flight):
    """Most items at once between entering the first of three slow stages and leaving the sink (live policy)."""
    lock, now, most = threading.Lock(), [0], [0]

    def enter(x):
        with lock:
            now[0] += 1
            most[0] = max(most[0], now[0])
        time.sleep(0.005)
        return x

    def leave(x):
        with lock:
            now[0] -= 1

    def camera():
        for i in range(80):
            time.sleep(0.001)
            yield i

    slow = lambda x: (time.sleep(0.005), x)[1]  # noqa: E731
    stats = Pipeline(camera(), stages=[("a", enter), ("b", slow), ("c", slow)], sink=leave, policy="live", depth=1,
                     in_flight=in_flight).run()
    assert stats.frames_out + stats.dropped == 80 and stats.dropped > 0
    return most[0]


def test_live_keeps_at_most_in_flight_frames_past_the_source_queue():
    """Live: frames never queue behind each other in front of every stage; the newest waits at the source."""
    assert Pipeline([], policy="live").in_flight == LIVE_IN_FLIGHT and Pipeline([]).in_flight == 0
    assert _most_in_flight(None) <= LIVE_IN_FLIGHT
    assert _most_in_flight(1) == 1
    assert _most_in_flight(0) > LIVE_IN_FLIGHT  # without the limit every queue holds a frame


def test_stage_timing_stats_measure_the_stage():
    stats = Pipeline(range(15), stages=[("sleep", lambda x: (time.sleep(0.01), x)[1])]).run()
    s = stats.stages["sleep"]
    assert s.count == 15 and 9.5 <= s.median_ms <= 30 and s.median_ms <= s.p95_ms
    assert stats.stages["sink"].median_ms < 5


def test_stage_exception_propagates_and_writer_output_is_playable(clip, tmp_path):
    out = tmp_path / "out.mp4"

    def explode(frame):
        if frame.index == 15:
            raise ValueError("bad frame 15")
        return frame

    with VideoReader(clip) as r:
        w = VideoWriter(out, r.width, r.height, fps=r.fps, time_base=r.time_base, audio_from=clip)
        with pytest.raises(ValueError, match="bad frame 15"):
            Pipeline(r, stages=[("jitter", _jitter(4)), ("explode", explode)], sink=w.write_frame,
                     finalize=w.close).run()
    with pytest.raises(VideoError, match="after close"):
        w.write(np.zeros((r.height, r.width, 3), np.uint8))
    assert not any(t.name in ("source", "jitter", "explode", "sink")
                                 for t in threading.enumerate())
    got = _numbers(out)
    assert got == list(range(len(got))) and len(got) <= 15


def test_first_error_wins():
    def a(x):
        if x == 2:
            raise RuntimeError("A failed")
        return x

    def b(x):
        time.sleep(0.1)
        raise RuntimeError("B failed")

    with pytest.raises(RuntimeError, match="A failed"):
        Pipeline(range(10), stages=[("a", a), ("b", b)]).run()


def test_keyboard_interrupt_from_source_leaves_exact_partial_file(clip, tmp_path):
    out = tmp_path / "partial.mp4"
    with VideoReader(clip) as r:

        def source():
            for frame in r:
                if frame.index == 20:
                    raise KeyboardInterrupt
                yield frame

        with VideoWriter(out, r.width, r.height, fps=r.fps, time_base=r.time_base, audio_from=clip) as w:
            stats = Pipeline(source(), stages=[("a", _jitter(5)), ("b", _jitter(6))],
                             sink=w.write_frame, depth=2).run()
    assert stats.interrupted and stats.frames_in == stats.frames_out == 20
    assert _numbers(out) == list(range(20))


def test_ctrl_c_in_calling_thread_drains_and_returns():
    def endless():  # bounded, so a lost Ctrl-C fails the test instead of hanging it
        for i in range(10_000):
            time.sleep(0.002)
            yield i

    out = []
    threading.Timer(0.2, _thread.interrupt_main).start()
    stats = Pipeline(endless(), stages=[("s", _jitter(7))], sink=out.append).run()
    assert stats.interrupted and stats.reason == "interrupted"
    assert stats.frames_in == stats.frames_out == len(out) > 10 and out == list(range(len(out)))


def test_sigint_handler_is_taken_during_run_and_restored():
    before = signal.getsignal(signal.SIGINT)
    during = []
    Pipeline(iter(range(3)), sink=lambda x: during.append(signal.getsignal(signal.SIGINT))).run()
    assert during and all(h is not before for h in during)
    assert signal.getsignal(signal.SIGINT) is before


def test_quit_event_stops_gracefully():
    quit_event = threading.Event()
    out = []

    def sink(x):
        out.append(x)
        if x == 9:
            quit_event.set()

    stats = Pipeline(iter(range(1000)), sink=sink, quit_event=quit_event, depth=1).run()
    assert stats.reason == "stopped" and not stats.interrupted
    assert 10 <= len(out) == stats.frames_in < 1000 and out == list(range(len(out)))


def test_truncated_source_is_written_then_error_raised(clip, tmp_path):
    cut, out = tmp_path / "cut.mkv", tmp_path / "out.mp4"
    full = tmp_path / "full.mkv"
    make_test_clip(full, frames=50, fps=25)
    data = full.read_bytes()
    cut.write_bytes(data[: len(data) // 2])
    with VideoReader(cut) as r:
        with VideoWriter(out, r.width, r.height, fps=r.fps, time_base=r.time_base) as w:
            seen = []
            with pytest.raises(VideoError, match="truncated"):
                Pipeline(r, stages=[("n", lambda f: (seen.append(f.index), f)[1])], sink=w.write_frame).run()
    assert _numbers(out)[:10] == list(range(10)) and len(_numbers(out)) == len(seen) > 10


def test_package_docstring_example(clip, tmp_path):
    """The example in capture/stream/__init__.py, run as written (with a concrete stage)."""
    from capture.stream import VideoReader as VR
    from capture.stream import VideoWriter as VW
    from capture.stream.reader import Frame

    def flip(f):
        return Frame(f.index, np.ascontiguousarray(f.image[:, ::-1]), f.pts, f.time_base, f.time)

    out = str(tmp_path / "out.mp4")
    with VR(clip) as reader, VW(out, reader.width, reader.height, fps=reader.fps,
                                time_base=reader.time_base, audio_from=clip) as writer:
        stats = Pipeline(reader, stages=[("flip", flip)], sink=writer.write_frame).run()
    assert stats.frames_out == 30
    with VideoReader(out) as r:
        first = next(iter(r)).image
    assert read_frame_number(first[:, ::-1]) == 0 and first[2:6, -6:-2, 0].mean() > 200  # marker now top-right


def test_bad_arguments():
    with pytest.raises(ValueError, match="policy"):
        Pipeline([], policy="fast")
    with pytest.raises(ValueError, match="depth"):
        Pipeline([], depth=0)
    with pytest.raises(ValueError, match="unique"):
        Pipeline([], stages=[("a", id), ("a", id)])


def test_live_file_source_recording_with_drops(tmp_path):
    from capture.stream import open_camera

    src, out = tmp_path / "cam.mp4", tmp_path / "rec.mp4"
    make_test_clip(src, frames=20, fps=50)
    with open_camera(str(src)) as cam, VideoWriter(out, cam.width, cam.height, fps=cam.fps,
                                                   time_base=cam.time_base, origin=None) as w:
        stats = Pipeline(cam, stages=[("slow", lambda f: (time.sleep(0.05), f)[1])], sink=w.write_frame,
                         policy="live", depth=1).run()
    assert cam.ended_reason == "end of file"
    assert stats.dropped > 5 and stats.frames_out + stats.dropped == 20
    with VideoReader(out) as r:
        frames = list(r)
    numbers = [read_frame_number(f.image) for f in frames]
    assert len(frames) == stats.frames_out and numbers == sorted(numbers) and numbers[-1] == 19
    # Recorded at the source's own times, shifted so the first kept frame is at 0.
    assert [f.time for f in frames] == pytest.approx([(n - numbers[0]) / 50 for n in numbers])
