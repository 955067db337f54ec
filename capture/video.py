"""`python -m capture.video IN -o OUT [--target IMG]`: retarget every frame of a video onto an avatar.

IN and OUT are videos or image sequences (a folder of numbered images, or a pattern such as frame_%04d.png;
frame N of a sequence is at N / fps, and written frames are named by the source frame they show). Every input
frame gives exactly one output frame with the input's timestamp; the audio is copied (re-encoded when the
output container cannot hold it; written beside an image sequence as a WAV; the summary says which). Stages
(decode, crop, network + render, encode) run in their own threads with lossless back-pressure. Ctrl-C, SIGTERM
and SIGHUP stop reading and finalise a playable file holding every frame processed so far.

Exit status: 0 done; 1 the input ended early (truncated: the output holds every frame that decoded) or the
output could not be written (disk full: the unplayable partial file is removed); 2 bad arguments or files;
3 done, but damaged packets of the input (or images of a sequence that do not decode) were skipped (counted in
the summary); 128 + signal when stopped by one (130 Ctrl-C, 143 SIGTERM, 129 SIGHUP).
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Optional

import numpy as np

from .cli_common import (
    ChannelOutputs,
    CliError,
    add_channel_arguments,
    add_model_arguments,
    build_model_side,
    check_background,
    run_cli,
)
from .console import add_version_argument, command, plural, prog, progress_bar
from .meshio import write_obj
from .session import FrameOutput
from .stream.pipeline import Pipeline
from .stream.reader import VideoError, open_input
from .stream.sequence import (
    DEFAULT_FPS,
    check_frames_not_input,
    check_output,
    find_sequence,
    is_written_as_images,
    make_frames_folder,
    open_video,
    open_writer,
    sequence_of,
)
from .stream.writer import PRESETS, REALTIME, check_not_input, check_writable


class CodeRecorder:
    """Per-frame merged codes with timestamps, saved as one .npz (NaN rows where a frame passed through)."""

    def __init__(self):
        self.rows: list[Optional[dict]] = []
        self.pts, self.times, self.face, self.held = [], [], [], []

    def add(self, out: FrameOutput) -> None:
        self.rows.append(out.codes)
        self.pts.append(out.frame.pts)
        self.times.append(out.frame.time)
        self.face.append(out.face)
        self.held.append(out.held)

    def save(self, path: Path, time_base) -> None:
        template = next((r for r in self.rows if r is not None), None)
        arrays = {"pts": np.asarray(self.pts, np.int64), "time": np.asarray(self.times, np.float64),
                  "time_base": np.asarray([time_base.numerator, time_base.denominator], np.int64),
                  "face_found": np.asarray(self.face), "held": np.asarray(self.held)}
        if template is not None:
            for key, value in template.items():
                blank = np.full_like(value, np.nan, dtype=np.float32)
                arrays[key] = np.stack([blank if r is None else r[key].astype(np.float32) for r in self.rows])
        np.savez(path, **arrays)


CALIBRATION_SECONDS = 10.0  # the landmark fit learns the performer's face from this much of the video first ...
CALIBRATION_FRAMES = 40  # ... at most this many frames of it, evenly spaced


def calibration_frames(path: str, start: Optional[float], duration: Optional[float], fps: Optional[float] = None):
    """Up to CALIBRATION_FRAMES evenly spaced frames of the first CALIBRATION_SECONDS of the input (a second,
    separate pass: the run itself still reads every frame). A damaged file just gives fewer."""
    seconds = CALIBRATION_SECONDS if duration is None else min(duration, CALIBRATION_SECONDS)
    try:
        reader = open_video(path, start=start, duration=seconds, fps=fps)
    except (ValueError, VideoError):
        return
    try:
        in_window = int(seconds * (reader.fps or 30))
        total = min(reader.frame_count, in_window) if reader.frame_count else in_window
        step = max(1, total // CALIBRATION_FRAMES)
        for i, frame in enumerate(reader):
            if i % step == 0:
                yield frame.image
    except VideoError:
        return
    finally:
        reader.close()


def frames_to_seconds(spec: str, sequence, args) -> tuple[Optional[float], Optional[float]]:
    """--frames FIRST-LAST of an image sequence -> (--start, --duration) in seconds from its first frame (CliError
    for a video, a malformed range, or one used with --start / --duration)."""
    if sequence is None:
        raise CliError(f"--frames is for an image sequence; {args.input} is a video (use --start / --duration)")
    if args.start is not None or args.duration is not None:
        raise CliError("--frames takes the place of --start / --duration: give one or the other")
    first_text, dash, last_text = spec.partition("-")
    try:
        lo = int(first_text)
        hi = int(last_text) if last_text else None
    except ValueError:
        raise CliError(f"--frames {spec!r}: give FIRST-LAST frame numbers, e.g. 1050-1080 or 1050-") from None
    if not dash:
        hi = lo
    if hi is not None and hi < lo:
        raise CliError(f"--frames {spec!r}: the last frame comes before the first")
    fps = args.fps or DEFAULT_FPS
    start = max(0, lo - sequence.first) / fps
    duration = None if hi is None else (hi - max(lo, sequence.first) + 0.5) / fps  # half a frame past the last
    if duration is not None and duration <= 0:
        raise CliError(f"--frames {spec!r}: the sequence starts at frame {sequence.first}")
    return start, duration


def check_audio_file(path: str) -> None:
    """--audio FILE: VideoError unless it opens and holds a sound stream (before any work; one line, run_cli)."""
    with open_input(path, what="--audio file") as container:
        if not container.streams.audio:
            raise VideoError(f"--audio {path}: no audio stream in it")


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog=prog("capture-video", "capture.video"), description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_version_argument(parser)
    parser.add_argument("input", help="input video (anything FFmpeg reads), or an image sequence: a folder of numbered "
                                      "images, or a pattern such as shot/frame_%%04d.png or shot/frame.####.exr")
    parser.add_argument("-o", "--output", required=True,
                        help="output video (.mp4, .mkv, .mov, .webm...), or an image sequence: a pattern such as "
                             "out/frame_%%04d.png (.png, .jpg, .tif, .exr: numbered by the source frame, audio beside"
                             " as WAV)")
    add_model_arguments(parser)
    parser.add_argument("--smooth", action="store_true", help="One-Euro filter the codes over time")
    parser.add_argument("--codes", default=None, metavar="NPZ", help="save per-frame codes with timestamps")
    parser.add_argument("--meshes", default=None, metavar="DIR",
                        help="write one OBJ of the avatar per frame, all using DIR/avatar.mtl (albedo, tangent-space "
                             "normal map)")
    parser.add_argument("--start", type=float, default=None, metavar="S", help="start time in seconds")
    parser.add_argument("--duration", type=float, default=None, metavar="S", help="seconds to process")
    parser.add_argument("--frames", default=None, metavar="FIRST-LAST",
                        help="frame numbers of an image sequence to process, both included (1050-1080, or 1050-)")
    parser.add_argument("--fps", type=float, default=None,
                        help="frame rate of an image-sequence input (default 25, as FFmpeg's); a video keeps its own")
    parser.add_argument("--audio", default=None, metavar="FILE",
                        help="the sound of the output from this file instead of the input (an image sequence's "
                             "separate WAV: its 0 s is the sequence's first frame)")
    parser.add_argument("--codec", default=None, help="video encoder (default: libx264, libvpx-vp9 for .webm)")
    parser.add_argument("--crf", type=int, default=18, help="encoder quality (lower = better, default 18)")
    parser.add_argument("--preset", default=REALTIME, choices=PRESETS, metavar="PRESET",
                        help="encoder speed preset (libx264/libx265): realtime (default; x264's superfast keeping "
                             "veryfast's macroblock tree: about veryfast's file size for ~60%% of its CPU time), or "
                             "any x264 preset: ultrafast (larger files), veryfast, medium, slow (smaller, slower)")
    add_channel_arguments(parser, export=True)
    parser.add_argument("--no-progress", action="store_true")
    return parser.parse_args(argv)


@command
def main(argv=None) -> int:
    args = parse_args(argv)
    say = lambda text: print(text, flush=True)  # noqa: E731
    out_path = Path(args.output)
    sequence = find_sequence(args.input)
    if args.frames:
        args.start, args.duration = frames_to_seconds(args.frames, sequence, args)
    inputs = [args.input, args.target, args.audio] + ([f for _, f in sequence.frames] if sequence is not None else [])
    if args.audio:
        check_audio_file(args.audio)
    if out_path.resolve() == Path(args.input).resolve():
        raise CliError(f"{args.output}: the output would overwrite the input")
    check_not_input(out_path, inputs)  # hard links and symlinks: the same file under another name
    check_frames_not_input(out_path, inputs)  # an output pattern over the input's own frames
    if args.codes:
        check_not_input(args.codes, inputs, what="--codes file")
    if args.meshes:
        try:
            Path(args.meshes).mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise CliError(f"--meshes {args.meshes}: cannot create the folder ({exc.strerror})") from None
    make_frames_folder(out_path)  # an image sequence's own folder
    check_writable(str(out_path))  # before any expensive work
    transparent = check_background(args)
    codec = check_output(out_path, args.codec, alpha=transparent)
    if args.codes:
        check_writable(args.codes)
    needs_vertices = bool(args.meshes)
    if args.export or args.osc:  # the format and address are checked before any expensive work
        from .takes import take_writer_for
        from .vmc import parse_address

        try:
            for path in args.export:
                needs_vertices |= take_writer_for(path).needs_vertices
            if args.osc:
                parse_address(args.osc)
        except ValueError as exc:
            raise CliError(str(exc)) from None
    try:
        reader = open_video(args.input, start=args.start, duration=args.duration, fps=args.fps)
    except ValueError as exc:
        raise CliError(str(exc)) from None
    if sequence is None and (whole := sequence_of(args.input)) is not None:
        say(f"note: {args.input} is one image of a sequence ({whole.describe()}): give the pattern or its folder"
            " to read them all")
    model = build_model_side(args, say, lambda: calibration_frames(args.input, args.start, args.duration, args.fps))
    frame_size = (reader.height, reader.width)
    session = model.session(frame_size, layout=args.layout, pose_mode=args.pose, smooth=args.smooth,
                            background=args.background, antialias=args.antialias,
                            hold_seconds=args.hold, keep_vertices=needs_vertices)
    if session.source.needs_landmarks:
        calibrated = session.calibrate(calibration_frames(args.input, args.start, args.duration, args.fps))
        span = min(CALIBRATION_SECONDS, args.duration or CALIBRATION_SECONDS, reader.duration or CALIBRATION_SECONDS)
        say(f"performer calibrated on {plural(calibrated, 'frame')} of the first {span:.3g} s")
    out_h, out_w = session.output_size
    writer = open_writer(out_path, out_w, out_h, fps=reader.fps or 30, time_base=reader.time_base,
                         codec=codec, crf=args.crf, preset=args.preset,
                         audio_from=args.audio or (args.input if reader.has_audio else None),
                         # a separate sound file starts at the plate's first frame (frame N is at N / fps)
                         audio_offset=float(sequence.first / reader.fps) if args.audio and sequence else 0.0,
                         # written frames are named by the source frame they show; a video starts at 0 when it is
                         # trimmed or of a sequence (whose frame N is at N / fps)
                         origin=0.0 if is_written_as_images(out_path) or (args.start is None and sequence is None)
                         else None,
                         first_number=0 if sequence is not None else 1, alpha=transparent)
    what = args.input if sequence is None else f"image sequence {sequence.describe()}"
    rate = f"{reader.fps:.2f} fps"
    if sequence is not None:
        rate += " (--fps)" if args.fps else " (a sequence's default: --fps sets it)"
    say(f"{what}: {reader.width}x{reader.height}, ~{plural(reader.frame_count, 'frame')} at {rate}"
        f"{', audio' if reader.has_audio else ''}; target {args.target}"
        f"{' (cached avatar)' if model.avatar_cached else ''}; backend {model.inference.backend_name}; "
        f"LBS {session.renderer.lbs_backend}; layout {args.layout}")

    context = None
    if args.export:
        from .takes import take_context

        context = take_context(model.deca, model.avatar, reader.fps)
    material = None
    if args.meshes:
        from .meshio import avatar_albedo, avatar_normal_map, write_sequence_material

        if context is not None:
            albedo, normal_map = context.albedo, context.normal_map
        else:
            albedo, normal_map = avatar_albedo(model.deca, model.avatar), avatar_normal_map(model.deca, model.avatar)
        material = write_sequence_material(Path(args.meshes), albedo, normal_map)
    channels = (ChannelOutputs(model.deca, args.export, args.osc, inputs=inputs, context=context)
                if args.export or args.osc else None)
    recorder = CodeRecorder() if args.codes else None
    progress = None
    if not args.no_progress:
        progress = progress_bar(reader.frame_count or None, unit="frame")
    latencies = []

    def sink(out: FrameOutput) -> None:
        writer.write(out.picture, out.frame.pts, out.frame.time_base)
        latencies.append(out.latency)
        if recorder is not None:
            recorder.add(out)
        if channels is not None:
            channels.add(out)
        if args.meshes and out.vertices is not None:
            number = out.frame.pts if sequence is not None else out.frame.index  # a plate's frames keep theirs
            write_obj(Path(args.meshes) / f"frame_{number:06d}.obj", out.vertices, model.deca.pack.uv.faces,
                      model.deca.pack.uv.uvcoords, model.deca.pack.uv.uvfaces, material=material)
        if progress is not None:
            progress.update(1)

    started = time.perf_counter()
    pipeline = Pipeline(reader, stages=session.stages, sink=sink,
                        policy="offline", depth=2, finalize=writer.close)
    try:
        try:
            stats = pipeline.run()
        except VideoError as exc:
            if writer.failed is not None:  # disk full: the partial file is gone, the line says so
                raise CliError(str(exc), code=1) from None
            if not reader.truncated:
                raise
            stats = pipeline.snapshot()  # frames read before the damage are written; the file is final
    finally:
        if progress is not None:
            progress.close()
        session.close()
        reader.close()
        if channels is not None:
            channels.close()
    elapsed = time.perf_counter() - started
    if recorder is not None:
        recorder.save(Path(args.codes), reader.time_base)

    c = session.counters
    stopped = f"stopped ({stats.reason}): " if stats.interrupted else ""
    damage = f"; {reader.skipped_noun}s skipped: {reader.skipped_packets}" if reader.skipped_packets else ""
    resized = (f"; frames rescaled to the first frame's {reader.width}x{reader.height} (the input changes size):"
               f" {reader.rescaled}" if reader.rescaled else "")
    say(f"{stopped}wrote {plural(writer.frames_written, 'frame')} to {out_path} "
        f"in {elapsed:.1f} s ({writer.frames_written / max(elapsed, 1e-9):.1f} FPS); "
        f"frames without a face: {c.without_face} (held {c.held}, passed through {c.passed_through}); "
        f"audio: {writer.audio_summary}{damage}{resized}; backend: {model.inference.backend_name}; "
        f"codes from {model.codes_from}; D_detail reused on {plural(session.renderer.detail_reused, 'frame')}")
    if channels is not None:
        say(channels.summary())
    say("per stage (median / p95 ms): " + ", ".join(
        f"{name} {s.median_ms:.1f}/{s.p95_ms:.1f}" for name, s in stats.stages.items() if s.count))
    if reader.truncated:
        print(f"error: {args.input}: the input ended early (truncated or corrupt); the output holds the "
              f"{plural(writer.frames_written, 'frame')} that decoded", file=sys.stderr)
        return 1
    if stats.interrupted:
        return stats.exit_status
    if reader.skipped_packets:
        print(f"warning: {args.input}: {plural(reader.skipped_packets, reader.skipped_noun)} could not be decoded and"
              f" {'was' if reader.skipped_packets == 1 else 'were'} skipped; the output holds the"
              f" {plural(writer.frames_written, 'frame')} that decoded (exit status 3)",
              file=sys.stderr)
        return 3
    return 0


if __name__ == "__main__":
    run_cli(main)
