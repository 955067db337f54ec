"""`python -m capture.live --cam 0 --target IMG`: camera in, avatar out, live.

The source never waits: when the network falls behind, the oldest waiting frame is dropped (counted), so
latency stays bounded. A preview window shows FPS and latency (`q` or Esc quits); `--record OUT` writes what is
shown with the camera's timestamps. Ctrl-C, SIGTERM, SIGHUP, `--max-seconds` or a lost camera end the run
cleanly with the recording finalised (exit status 128 + signal when a signal stopped it, 1 for a lost camera).
`--cam` also takes a video file or URL (played at its own pace) to run the live path without a camera.
"""
from __future__ import annotations

import argparse
import os
import sys
import threading
import time
from collections import deque
from pathlib import Path

from .cli_common import (
    ChannelOutputs,
    CliError,
    add_channel_arguments,
    add_model_arguments,
    build_model_side,
    check_background,
    run_cli,
)
from .console import add_version_argument, command, plural, prog
from .session import FrameOutput
from .stream.camera import open_camera
from .stream.pipeline import Pipeline
from .stream.reader import VideoError
from .stream.sequence import check_frames_not_input, check_output, find_sequence, make_frames_folder, open_writer
from .stream.writer import check_not_input, check_writable

WINDOW = "capture live (q to quit)"
# Recording live: x264 ultrafast has no lookahead and no B-frames, so each frame is encoded as it arrives (the
# offline default, "realtime", holds ~13 frames for its macroblock tree and B-frames), for a larger file.
RECORD_PRESET = "ultrafast"


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog=prog("capture-live", "capture.live"), description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_version_argument(parser)
    parser.add_argument("--cam", default="0",
                        help="camera index or device, or a video file / URL, or an image sequence (a folder of "
                             "numbered images or a pattern such as f_%%04d.png)")
    add_model_arguments(parser)
    parser.add_argument("--no-display", action="store_true", help="no preview window")
    parser.add_argument("--record", default=None, metavar="OUT",
                        help="record the output video (or frames: a pattern such as rec/f_%%04d.png)")
    parser.add_argument("--max-seconds", type=float, default=None, help="stop after this many seconds")
    parser.add_argument("--no-smooth", action="store_true",
                        help="turn off the One-Euro code filter (on by default for network and hybrid codes; the "
                             "landmark source smooths its points and head rotation itself)")
    parser.add_argument("--size", default=None, metavar="WxH", help="requested camera mode, e.g. 1280x720")
    parser.add_argument("--fps", type=float, default=None,
                        help="requested camera frame rate (an image sequence's frame rate: default 25)")
    add_channel_arguments(parser, export=False)
    args = parser.parse_args(argv)
    if args.layout == "side-by-side" and "--layout" not in (argv if argv is not None else sys.argv):
        args.layout = "avatar"  # live default: the avatar alone, at camera resolution
    return args


class Preview:
    """OpenCV window drawn from the sink thread only (HighGUI wants a single thread)."""

    def __init__(self, quit_event: threading.Event):
        import cv2

        self.cv2 = cv2
        self.quit_event = quit_event
        self.times: deque[float] = deque(maxlen=30)

    def show(self, out: FrameOutput, latency: float) -> None:
        cv2 = self.cv2
        now = time.perf_counter()
        self.times.append(now)
        fps = (len(self.times) - 1) / (self.times[-1] - self.times[0]) if len(self.times) > 1 else 0.0
        image = cv2.cvtColor(out.image, cv2.COLOR_RGB2BGR)
        label = f"{fps:5.1f} FPS  latency {latency * 1e3:5.1f} ms" + ("" if out.face else "  no face")
        cv2.putText(image, label, (10, 24), cv2.FONT_HERSHEY_SIMPLEX, 0.6, (255, 255, 255), 2, cv2.LINE_AA)
        cv2.imshow(WINDOW, image)
        if cv2.waitKey(1) & 0xFF in (ord("q"), 27):
            self.quit_event.set()

    def close(self) -> None:
        try:
            self.cv2.destroyWindow(WINDOW)
        except Exception:  # noqa: BLE001 - the window may never have opened
            pass


class ShownLatency:
    """Latency as the performer sees it: from the moment the camera reader hands a frame over (decoded) to
    the end of the sink for that frame (shown and/or recorded), median and p95 over the frames shown.

    The camera's own exposure, transfer and driver buffering come before the hand-over and are not in it.
    """

    def __init__(self, window: int = 100_000):
        self._arrived: deque[tuple[int, float]] = deque()  # (frame index, time), appended by the source thread
        self.samples: deque[float] = deque(maxlen=window)

    def stamp(self, frames):
        for frame in frames:
            self._arrived.append((frame.index, time.perf_counter()))
            yield frame

    def _arrival(self, index: int) -> float | None:
        while self._arrived and self._arrived[0][0] < index:  # frames dropped on the way
            self._arrived.popleft()
        return self._arrived[0][1] if self._arrived and self._arrived[0][0] == index else None

    def so_far(self, index: int) -> float:
        arrived = self._arrival(index)
        return 0.0 if arrived is None else time.perf_counter() - arrived

    def shown(self, index: int) -> None:
        arrived = self._arrival(index)
        if arrived is not None:
            self.samples.append(time.perf_counter() - arrived)
            self._arrived.popleft()

    def percentiles_ms(self) -> tuple[float, float] | None:
        if not self.samples:
            return None
        import numpy as np

        a = np.fromiter(self.samples, dtype=np.float64) * 1e3
        return float(np.median(a)), float(np.percentile(a, 95))

    def summary(self) -> str:
        p = self.percentiles_ms()
        if p is None:
            return "latency camera frame -> shown: no frame shown"
        return (f"latency camera frame -> shown/recorded: median {p[0]:.0f} ms, p95 {p[1]:.0f} ms "
                f"over {len(self.samples)} frames")


@command
def main(argv=None) -> int:
    args = parse_args(argv)
    say = lambda text: print(text, flush=True)  # noqa: E731
    cam = int(args.cam) if args.cam.isdigit() else args.cam
    size = None
    if args.size:
        try:
            size = tuple(int(v) for v in args.size.lower().split("x"))
        except ValueError:
            raise CliError(f"--size {args.size}: expected WxH, e.g. 1280x720") from None
    display = not args.no_display
    if display and sys.platform.startswith("linux") and not (os.environ.get("DISPLAY")
                                                             or os.environ.get("WAYLAND_DISPLAY")):
        print("warning: no display found; running without a preview window (--no-display)", file=sys.stderr)
        display = False
    transparent = check_background(args)
    if args.record:
        make_frames_folder(args.record)  # an image sequence's own folder
        check_writable(args.record)
        check_not_input(args.record, [args.cam, args.target], what="--record file")
        cam_sequence = find_sequence(args.cam) if not str(args.cam).isdigit() else None
        check_frames_not_input(args.record, [args.cam, args.target]
                               + ([f for _, f in cam_sequence.frames] if cam_sequence is not None else []))
        check_output(args.record, alpha=transparent)
    if args.osc:
        from .vmc import parse_address

        try:
            parse_address(args.osc)
        except ValueError as exc:
            raise CliError(str(exc)) from None
    source = open_camera(cam, size=size, fps=args.fps)  # a missing camera fails before the model loads
    try:
        model = build_model_side(args, say, schedule="live")
    except BaseException:
        source.close()
        raise
    frame_size = (source.height, source.width)
    session = model.session(frame_size, layout=args.layout, pose_mode=args.pose, background=args.background,
                            antialias=args.antialias,
                            smooth=not args.no_smooth and model.codes_from != "landmarks", hold_seconds=args.hold)
    out_h, out_w = session.output_size
    writer = None
    if args.record:
        writer = open_writer(Path(args.record), out_w, out_h, fps=source.fps or 30, time_base=source.time_base,
                             origin=None, preset=RECORD_PRESET, alpha=transparent)  # a pattern: from 1
    say(f"live from {source.name} ({source.format_name}, {source.width}x{source.height}); "
        f"backend {model.inference.backend_name}; layout {args.layout}"
        + (f"; recording to {args.record}" if writer else ""))

    channels = ChannelOutputs(model.deca, osc=args.osc) if args.osc else None
    quit_event = threading.Event()
    preview = Preview(quit_event) if display else None
    last_pts = [None]
    latency = ShownLatency()

    def sink(out: FrameOutput) -> None:
        if writer is not None:
            pts = round(out.frame.time / writer.time_base)
            if last_pts[0] is None or pts > last_pts[0]:  # a camera can repeat a timestamp; keep it monotonic
                writer.write(out.picture, pts)
                last_pts[0] = pts
        if channels is not None:
            channels.add(out)
        if preview is not None:
            preview.show(out, latency.so_far(out.frame.index))
        latency.shown(out.frame.index)

    def finalize() -> None:
        if writer is not None:
            writer.close()
        if preview is not None:
            preview.close()
        if channels is not None:
            channels.close()

    timer = None
    if args.max_seconds:
        timer = threading.Timer(args.max_seconds, quit_event.set)
        timer.daemon = True
        timer.start()
    pipeline = Pipeline(latency.stamp(source), stages=session.stages, sink=sink,
                        policy="live", depth=1, in_flight=model.inference.live_in_flight, finalize=finalize,
                        quit_event=quit_event)
    try:
        try:
            stats = pipeline.run()
        except VideoError as exc:
            if writer is not None and writer.failed is not None:  # disk full: one line, partial file removed
                raise CliError(str(exc), code=1) from None
            raise
    finally:
        if timer is not None:
            timer.cancel()
        session.close()
        source.close()
    c = session.counters
    ended = stats.reason if stats.interrupted else (source.ended_reason or stats.reason)
    say(f"stopped ({ended}): {plural(stats.frames_out, 'frame')} shown, {stats.dropped} dropped, {stats.fps:.1f} FPS; "
        f"frames without a face: {c.without_face}"
        + (f"; recorded {plural(writer.frames_written, 'frame')}" if writer else "")
        + (f"; {channels.summary()}" if channels is not None else ""))
    say(latency.summary())
    say("per stage (median / p95 ms): " + ", ".join(
        f"{name} {s.median_ms:.1f}/{s.p95_ms:.1f}" for name, s in stats.stages.items() if s.count))
    if source.disconnected:
        print(f"error: {source.ended_reason}", file=sys.stderr)
        return 1
    return stats.exit_status


if __name__ == "__main__":
    run_cli(main)
