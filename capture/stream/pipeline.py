"""A bounded stage pipeline: source -> stage threads -> sink, in order, with back-pressure or dropping.

    stats = Pipeline(reader, stages=[("crop", crop), ("infer", infer)], sink=writer.write_frame,
                     policy="offline", finalize=writer.close).run()

Each stage runs in its own named thread and takes items from a bounded `queue.Queue(depth)`; one thread
per stage and FIFO queues keep the order of items. A stage given as (name, fn, workers) with workers > 1 runs
that many threads on consecutive items at once (fn must then be safe to call concurrently: a pure step such as
a network's forward pass), and hands its results on in the order the items came. Policies:

- offline: every put blocks while the next queue is full (lossless back-pressure: the source is read only
  as fast as the slowest stage).
- live: the source never waits; when the first queue is full its oldest item is discarded to make room for
  the newest (`PipelineStats.dropped` counts them). Later queues block as in offline mode, and at most
  `in_flight` items (default `LIVE_IN_FLIGHT`) are between the first stage and the sink: a frame that cannot
  enter waits in the source queue, where a newer frame replaces it, instead of queueing behind the others in
  front of every stage. Latency is then about the sum of the stage times, not the queue depth times the
  slowest stage, and the frames dropped are the ones that would have been shown late.

Stopping:
- end of input: everything in flight is processed, then the sink is finalised.
- `stop()`, the `quit_event`, a first Ctrl-C (SIGINT while `run()` runs in the main thread, a
  KeyboardInterrupt in the calling thread, or one raised by the source), SIGTERM or SIGHUP (`kill`, a closed
  terminal, a process manager stopping the job: handled exactly like Ctrl-C, `PipelineStats.signal` says
  which) or a source error (e.g. a truncated file): reading stops and the frames already read are
  drained through every stage to the sink (at most depth x (stages + 1) frames), so the output holds
  exactly the frames read so far. A second Ctrl-C aborts and discards what is in flight.
- an exception in a stage or the sink: all threads stop at once, in-flight items are discarded.
In every case `run()` returns or raises only after all threads have stopped and `finalize` has run. The
first error wins and is re-raised by `run()`; an interrupt is not an error: `run()` returns stats with
`interrupted=True`.
"""

from __future__ import annotations

import contextlib
import functools
import queue
import signal
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Sequence

import numpy as np

__all__ = ["Pipeline", "PipelineStats", "StageStats", "StepTimes"]

_END = object()
_SKIP = object()  # a stage worker that found the end after another one took it
_POLL_S = 0.05
LIVE_IN_FLIGHT = 2  # live policy: frames between the first stage and the sink (two keep two cores busy)
_WINDOW = 100_000  # timing samples kept per stage (percentiles over the most recent frames)


class _Abort(Exception):
    """Raised inside pipeline threads to unwind when the run is aborted."""


@dataclass(frozen=True)
class StageStats:
    """Wall time of one stage's calls: count over the whole run, ms figures over the recent window."""

    name: str
    count: int
    median_ms: float
    p95_ms: float
    mean_ms: float


@dataclass(frozen=True)
class PipelineStats:
    frames_in: int  # items taken from the source
    frames_out: int  # items the sink accepted
    dropped: int  # live policy: items discarded at the source queue
    wall_s: float
    fps: float  # frames_out / wall_s
    stages: dict[str, StageStats] = field(default_factory=dict)  # "source", each stage, "sink"
    interrupted: bool = False
    reason: str = ""
    signal: int = 0  # the signal that stopped the run (SIGINT, SIGTERM, SIGHUP), 0 when none did

    @property
    def exit_status(self) -> int:
        """The shell's convention for a stopped run: 128 + signal (130 Ctrl-C, 143 SIGTERM, 129 SIGHUP);
        130 for a KeyboardInterrupt without a signal; 0 otherwise."""
        if self.signal:
            return 128 + self.signal
        return 130 if self.interrupted else 0

    def summary(self) -> str:
        lines = [
            f"{self.frames_out} frames out of {self.frames_in} read, {self.dropped} dropped, "
            f"{self.wall_s:.2f} s, {self.fps:.1f} FPS ({self.reason})"
        ]
        for s in self.stages.values():
            lines.append(f"  {s.name:>10}: median {s.median_ms:7.2f} ms  p95 {s.p95_ms:7.2f} ms  n={s.count}")
        return "\n".join(lines)


class _Timer:
    def __init__(self, name: str):
        self.name = name
        self.count = 0
        self.samples: deque[float] = deque(maxlen=_WINDOW)
        self._lock = threading.Lock()

    def add(self, seconds: float) -> None:
        with self._lock:  # a stage's workers share its timer
            self.count += 1
            self.samples.append(seconds)

    def stats(self) -> StageStats:
        with self._lock:
            s = np.fromiter(list(self.samples), dtype=np.float64) * 1e3
        if s.size == 0:
            return StageStats(self.name, self.count, 0.0, 0.0, 0.0)
        return StageStats(self.name, self.count, float(np.median(s)), float(np.percentile(s, 95)), float(s.mean()))


class StepTimes:
    """Wall time of named steps inside stages (e.g. "E_flame", "rasterize"), recorded from any thread.

        times = StepTimes()
        with times("rasterize"):
            ...
        times.stats()["rasterize"].median_ms

    sync: called before each clock reading (e.g. `torch.cuda.synchronize`) so that asynchronous device work
    is charged to the step that queued it; leave None on the CPU. Steps recorded by different threads may
    overlap in time: their sum is work, not wall time. cpu: also record the CPU time of the thread that runs
    each step (`cpu_ms`; what other threads do for it, an encoder's or ONNX Runtime's, is not counted).
    """

    def __init__(self, sync: Callable[[], Any] | None = None, cpu: bool = False):
        self._sync = sync
        self._cpu = cpu
        self._timers: dict[str, _Timer] = {}
        self._cpu_totals: dict[str, list[float]] = {}  # name -> [seconds, count]
        self._lock = threading.Lock()

    def add(self, name: str, seconds: float, cpu_seconds: float | None = None) -> None:
        timer = self._timers.get(name)
        if timer is None:
            with self._lock:
                timer = self._timers.setdefault(name, _Timer(name))
        timer.add(seconds)
        if cpu_seconds is not None:
            with self._lock:
                total = self._cpu_totals.setdefault(name, [0.0, 0])
                total[0] += cpu_seconds
                total[1] += 1

    @contextlib.contextmanager
    def __call__(self, name: str):
        if self._sync is not None:
            self._sync()
        t, c = time.perf_counter(), time.thread_time() if self._cpu else None
        try:
            yield
        finally:
            if self._sync is not None:
                self._sync()
            self.add(name, time.perf_counter() - t, None if c is None else time.thread_time() - c)

    def cpu_ms(self) -> dict[str, float]:
        """Mean CPU ms of the running thread per step, for the steps recorded with CPU time."""
        with self._lock:
            return {name: 1e3 * total / count for name, (total, count) in self._cpu_totals.items() if count}

    def stats(self) -> dict[str, StageStats]:
        with self._lock:
            timers = list(self._timers.values())
        return {t.name: t.stats() for t in timers}


def no_times(name: str):
    """The do-nothing stand-in for a `StepTimes` (a shared null context: no cost per step)."""
    return _NULL


_NULL = contextlib.nullcontext()


class _Stage:
    """One stage's function and its worker threads. With one worker items go through in the queue's order; with
    several, `take` numbers the items as they are taken and `hand_on` lets each result out only after the one
    before it, so the order holds however long each call takes."""

    def __init__(self, name: str, fn: Callable[[Any], Any], workers: int = 1):
        if int(workers) < 1:
            raise ValueError(f"stage {name!r}: workers must be >= 1, got {workers}")
        self.name, self.fn, self.workers = name, fn, int(workers)
        self._taking = threading.Lock()  # held while a worker waits for the next item: numbers follow the queue
        self._turn = threading.Condition()
        self._taken = 0  # items numbered so far
        self._out = 0  # the number of the next result to hand on
        self._ended = False

    def take(self, q: queue.Queue, get: Callable[[queue.Queue], Any]) -> tuple[Any, Any]:
        """(next item, its number: None with one worker); (_END, number) for the worker that takes the end,
        (_END, _SKIP) for the others (the end goes back into the queue for the next worker to find)."""
        if self.workers == 1:
            return get(q), None
        with self._taking:
            item = get(q)
            if item is _END:
                q.put_nowait(_END)  # room: the item just taken was the last the queue will get
                if self._ended:
                    return _END, _SKIP
                self._ended = True
            turn = self._taken
            self._taken += 1
            return item, turn

    def hand_on(self, turn: int | None, put: Callable[[], None], abort: threading.Event) -> None:
        """Run put() once every earlier result has been handed on (at once with one worker)."""
        if turn is None:
            put()
            return
        with self._turn:
            while self._out != turn:
                if abort.is_set():
                    raise _Abort
                self._turn.wait(_POLL_S)
        put()  # outside the condition: a full queue blocks this worker, not the others' wake-ups
        with self._turn:
            self._out += 1
            self._turn.notify_all()


class Pipeline:
    """source: iterable of items (e.g. `Frame`s); stages: (name, fn) pairs, fn(item) -> item, run in order (or
    (name, fn, workers): `workers` threads call fn on consecutive items, results kept in order);
    sink(item): consumes the last stage's output; finalize(): called once at the end, whatever happened
    (e.g. `VideoWriter.close`). policy: "offline" or "live"; depth: capacity of each queue (>= 1).
    quit_event: setting it stops the run gracefully (as stop() does), e.g. from a preview window.
    in_flight: most items between the first stage and the sink (0: no limit; default `LIVE_IN_FLIGHT` for the
    live policy, no limit offline)."""

    def __init__(
        self,
        source: Iterable[Any],
        stages: Sequence[tuple[str, Callable[[Any], Any]]] = (),
        sink: Callable[[Any], Any] = lambda item: None,
        *,
        policy: str = "offline",
        depth: int = 2,
        finalize: Callable[[], Any] | None = None,
        quit_event: threading.Event | None = None,
        in_flight: int | None = None,
    ):
        if policy not in ("offline", "live"):
            raise ValueError(f"policy must be 'offline' or 'live', got {policy!r}")
        if depth < 1:
            raise ValueError(f"depth must be >= 1, got {depth}")
        if in_flight is None:
            in_flight = LIVE_IN_FLIGHT if policy == "live" else 0
        if in_flight < 0:
            raise ValueError(f"in_flight must be >= 1 (or 0: no limit), got {in_flight}")
        stages = [_Stage(*spec) for spec in stages]
        names = [stage.name for stage in stages]
        if len(set(names)) != len(names) or {"source", "sink"} & set(names):
            raise ValueError(f"stage names must be unique and not 'source'/'sink', got {names}")
        self._source = source
        self._stages = stages
        self._sink = sink
        self._finalize = finalize
        self.policy = policy
        self.depth = depth
        self.quit_event = quit_event or threading.Event()
        self.in_flight = in_flight
        self._slots = threading.Semaphore(in_flight) if in_flight and self._stages else None
        self._queues = [queue.Queue(maxsize=depth) for _ in range(len(self._stages) + 1)]
        self._timers = {n: _Timer(n) for n in ["source", *names, "sink"]}
        self._stop_reading = threading.Event()
        self._abort = threading.Event()
        self._done = threading.Event()
        self._lock = threading.Lock()
        self._error: BaseException | None = None
        self._interrupted = False
        self._signal = 0
        self._reason = ""
        self._frames_in = 0
        self._frames_out = 0
        self._dropped = 0
        self._t0: float | None = None
        self._t1: float | None = None
        self._ran = False

    # ----------------------------------------------------------------------------------------- control
    def stop(self) -> None:
        """Stop reading; frames already read are still processed and delivered (thread-safe)."""
        self._stop_reading.set()

    def _fail(self, exc: BaseException, where: str) -> None:
        with self._lock:
            if self._error is None:
                self._error = exc
                self._reason = f"error in {where}: {type(exc).__name__}: {exc}"
        self._abort.set()

    def _interrupt(self, drain: bool, signum: int = 0) -> None:
        with self._lock:
            self._interrupted = True
            if signum and not self._signal:
                self._signal = signum
            if not self._reason:
                by = f" by {signal.Signals(signum).name}" if signum and signum != signal.SIGINT else ""
                self._reason = "interrupted" + by + ("" if drain else ", in-flight frames discarded")
        (self._stop_reading if drain else self._abort).set()

    def _on_signal(self, signum, frame) -> None:
        # A first signal drains what was read to the sink; a second one aborts what is in flight.
        self._interrupt(drain=not self._interrupted, signum=signum)

    # ----------------------------------------------------------------------------------------- queues
    def _put(self, q: queue.Queue, item: Any) -> None:
        while True:
            if self._abort.is_set():
                raise _Abort
            try:
                q.put(item, timeout=_POLL_S)
                return
            except queue.Full:
                continue

    def _put_newest(self, q: queue.Queue, item: Any) -> None:
        """Live source put: never wait; evict the oldest queued item instead."""
        while True:
            try:
                q.put_nowait(item)
                return
            except queue.Full:
                try:
                    q.get_nowait()
                    with self._lock:
                        self._dropped += 1
                except queue.Empty:
                    pass

    def _get(self, q: queue.Queue) -> Any:
        while True:
            if self._abort.is_set():
                raise _Abort
            try:
                return q.get(timeout=_POLL_S)
            except queue.Empty:
                continue

    # ----------------------------------------------------------------------------------------- threads
    def _run_source(self) -> None:
        q = self._queues[0]
        put = self._put_newest if self.policy == "live" else self._put
        timer = self._timers["source"]
        try:
            it = iter(self._source)
            while not self._stop_reading.is_set() and not self.quit_event.is_set():
                t = time.perf_counter()
                try:
                    item = next(it)
                except StopIteration:
                    break
                except KeyboardInterrupt:
                    self._interrupt(drain=True)
                    break
                except BaseException as e:  # noqa: BLE001 - drain what was read, then report it
                    # Keep what was read: drain it to the sink, then report the source's error.
                    with self._lock:
                        if self._error is None:
                            self._error = e
                            self._reason = f"source failed: {type(e).__name__}: {e}"
                    break
                timer.add(time.perf_counter() - t)
                with self._lock:
                    self._frames_in += 1
                put(q, item)
            with self._lock:
                if (self.quit_event.is_set() or self._stop_reading.is_set()) and not self._reason:
                    self._reason = "stopped"
            # The end marker must get through even in live mode, where put would evict frames instead.
            self._put(q, _END)
        except _Abort:
            pass
        except BaseException as e:  # noqa: BLE001 - a source failure of any type is reported by the pipeline
            self._fail(e, "source")

    def _take_slot(self) -> None:
        """First stage, `in_flight` limit: wait until fewer than that many items are past it."""
        while not self._slots.acquire(timeout=_POLL_S):
            if self._abort.is_set():
                raise _Abort

    def _run_stage(self, index: int) -> None:
        stage = self._stages[index]
        q_in, q_out = self._queues[index], self._queues[index + 1]
        timer = self._timers[stage.name]
        slots = self._slots if index == 0 else None
        try:
            while True:
                if slots is not None:
                    self._take_slot()
                item, turn = stage.take(q_in, self._get)
                if item is _END:
                    if slots is not None:
                        slots.release()
                    if turn is not _SKIP:  # one worker hands the end on, after every earlier result
                        stage.hand_on(turn, functools.partial(self._put, q_out, _END), self._abort)
                    return
                t = time.perf_counter()
                out = stage.fn(item)
                timer.add(time.perf_counter() - t)
                stage.hand_on(turn, functools.partial(self._put, q_out, out), self._abort)
        except _Abort:
            pass
        except KeyboardInterrupt:
            self._interrupt(drain=False)
        except BaseException as e:  # noqa: BLE001 - a stage failure of any type drains the pipeline and is reported
            self._fail(e, f"stage {stage.name!r}")

    def _run_sink(self) -> None:
        q_in = self._queues[-1]
        timer = self._timers["sink"]
        try:
            while True:
                item = self._get(q_in)
                if item is _END:
                    return
                t = time.perf_counter()
                try:
                    self._sink(item)
                finally:
                    if self._slots is not None:
                        self._slots.release()
                timer.add(time.perf_counter() - t)
                with self._lock:
                    self._frames_out += 1
        except _Abort:
            pass
        except KeyboardInterrupt:
            self._interrupt(drain=False)
        except BaseException as e:  # noqa: BLE001 - a sink failure of any type drains the pipeline and is reported
            self._fail(e, "sink")
        finally:
            self._done.set()

    # ----------------------------------------------------------------------------------------- run
    def run(self) -> PipelineStats:
        """Run to the end (or stop/interrupt/error); see the module doc for what happens to frames."""
        if self._ran:
            raise RuntimeError("a Pipeline runs once; build a new one")
        self._ran = True
        self._t0 = time.perf_counter()
        threads = [threading.Thread(target=self._run_source, name="source", daemon=True)]
        threads += [
            threading.Thread(target=self._run_stage, args=(i,), name=stage.name if stage.workers == 1 else
                             f"{stage.name}-{k}", daemon=True)
            for i, stage in enumerate(self._stages) for k in range(stage.workers)
        ]
        threads.append(threading.Thread(target=self._run_sink, name="sink", daemon=True))
        finalize_error: BaseException | None = None
        previous_handlers = self._take_signals()
        try:
            for t in threads:
                t.start()
            self._wait(threads)
        finally:
            for signum, handler in previous_handlers.items():
                signal.signal(signum, handler if handler is not None else signal.SIG_DFL)
            self._t1 = time.perf_counter()
            if self._finalize is not None:
                try:
                    self._finalize()
                except BaseException as e:  # noqa: BLE001 - kept and reported after the run's own error
                    finalize_error = e
        if self._error is not None:
            if finalize_error is not None and hasattr(self._error, "add_note"):  # Python >= 3.11
                self._error.add_note(f"finalize() also failed: {type(finalize_error).__name__}: {finalize_error}")
            raise self._error
        if finalize_error is not None:
            raise finalize_error
        if not self._reason:
            self._reason = "end of input"
        return self.snapshot()

    def _take_signals(self) -> dict[int, Any]:
        """In the main thread: Ctrl-C, SIGTERM and SIGHUP call `_interrupt` instead of raising or killing the
        process; returns {signal: handler to restore}. Killed by SIGTERM's default action, a writer never writes
        its trailer and every processed frame is lost (an MP4 without its index does not play).

        A KeyboardInterrupt raised by Python's default handler lands wherever the main thread happens to be,
        and when that is a finaliser (`__del__`, a weakref callback, run by the garbage collector) it is
        printed as "Exception ignored" and lost: the pipeline then never hears of the Ctrl-C. A handler that
        only sets flags cannot be lost that way. Elsewhere (a worker thread) signals cannot be handled.
        """
        if threading.current_thread() is not threading.main_thread():
            return {}
        taken = {}
        for name in ("SIGINT", "SIGTERM", "SIGHUP"):
            signum = getattr(signal, name, None)  # no SIGHUP on Windows
            if signum is None:
                continue
            try:
                taken[signum] = signal.signal(signum, self._on_signal)
            except (ValueError, OSError):  # e.g. an embedded interpreter without signal support
                continue
        return taken

    def _wait(self, threads: list[threading.Thread]) -> None:
        """Wait for the sink to finish (or an abort), then for every thread; Ctrl-C escalates."""
        while True:
            try:
                while not self._done.wait(_POLL_S):
                    if self.quit_event.is_set():
                        self._stop_reading.set()
                    if self._abort.is_set():
                        break
                for t in threads:
                    # A source blocked inside a device read cannot be woken; do not hang on it forever.
                    t.join(timeout=5.0 if t.name == "source" else None)
                return
            except KeyboardInterrupt as e:
                self._interrupt(drain=not self._interrupted, signum=getattr(e, "signum", 0))

    def snapshot(self) -> PipelineStats:
        """Statistics so far (callable while running, e.g. for a live FPS readout)."""
        end = self._t1 if self._t1 is not None else time.perf_counter()
        wall = (end - self._t0) if self._t0 is not None else 0.0
        with self._lock:
            fin, fout, dropped = self._frames_in, self._frames_out, self._dropped
            interrupted, reason, signum = self._interrupted, self._reason, self._signal
        return PipelineStats(
            frames_in=fin, frames_out=fout, dropped=dropped, wall_s=wall,
            fps=fout / wall if wall > 0 else 0.0,
            stages={n: t.stats() for n, t in self._timers.items()},
            interrupted=interrupted, reason=reason, signal=signum,
        )
