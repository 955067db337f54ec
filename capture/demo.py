"""`python -m capture.demo`: the whole pipeline on the built-in demo pack, no downloads.

0. Reconstructs skimage's astronaut photo (DECA's single-image demo) into `demo_reconstruct/`.
1. Renders a short performer clip from the demo pack: the demo head wearing the astronaut photo's texture
   (skimage's public-domain photo), with known jaw, expression and head-yaw sequences, plus a sine audio
   track (`demo_source.mp4`).
2. Runs `capture.video` on it onto a second demo identity (`--target demo`, the default) or onto the
   astronaut (`--target astronaut`) or any photo, side by side, into `demo_out.mp4`, and prints the summary.
The demo pack is synthetic (procedural head, seeded weights): this shows the pipeline working end to end,
not DECA's accuracy.
"""
from __future__ import annotations

import argparse
import math
from pathlib import Path

import numpy as np
import torch

from . import video
from .assets import ensure_demo_pack, load_pack
from .assets.locate import cache_dir
from .avatar import load_avatar
from .cli_common import CliError, add_backend_argument, run_cli
from .console import add_version_argument, command, plural, prog, progress_bar, say_once
from .crop import FaceDetector
from .deca import DECA
from .reconstruct import output_name, reconstruct_one
from .retarget import AvatarRenderer
from .sources import CODE_SOURCES, choose_source
from .stills import astronaut
from .stream.clips import make_test_clip
from .stream.writer import check_not_input, check_writable, same_file


def performer_sequence(n_frames: int, fps: float) -> dict[str, np.ndarray]:
    """Known motion: jaw opening (rad, about x), expression coefficients, head yaw (rad).

    The expression uses the demo head's named columns (capture.assets.demo_head.EXPRESSION_NAMES): blinks of
    each eye, smiles, a brow raise and a frown, so every part of the face the landmarks see moves."""
    from .assets.demo_head import EXPRESSION_NAMES

    col = {name: k for k, name in enumerate(EXPRESSION_NAMES)}
    t = np.arange(n_frames) / fps
    blink = lambda *centres: np.clip(sum(np.exp(-0.5 * ((t - c) / 0.07) ** 2) for c in centres), 0, 1)  # noqa: E731
    jaw = 0.22 * np.clip(np.sin(2 * math.pi * t / 1.6), 0, None)
    exp = np.zeros((n_frames, 50), np.float32)
    exp[:, col["eyeClose_L"]] = blink(0.7, 2.3)
    exp[:, col["eyeClose_R"]] = blink(0.7, 1.6)  # one blink together, then a wink each
    smile = 0.8 * np.clip(np.sin(2 * math.pi * t / 2.6 + 0.6), 0, None)
    exp[:, col["smile_L"]] = exp[:, col["smile_R"]] = smile
    brows = np.sin(2 * math.pi * t / 3.2 + 2.0)
    exp[:, col["browUp_L"]] = exp[:, col["browUp_R"]] = 0.8 * np.clip(brows, 0, None)
    exp[:, col["browDown_L"]] = exp[:, col["browDown_R"]] = 0.6 * np.clip(-brows, 0, None)
    yaw = 0.25 * np.sin(2 * math.pi * t / 3.0)
    return {"jaw": jaw.astype(np.float32), "exp": exp, "yaw": yaw.astype(np.float32)}


def render_performer_clip(deca: DECA, path: Path, n_frames: int, size: tuple[int, int], fps: float,
                          progress: bool = False) -> dict:
    """Write the performer clip (with audio); returns the known sequences. progress: a bar on stderr."""
    with FaceDetector() as detector:
        # the astronaut's face fitted onto the demo head by its landmarks, wearing her photo
        performer, _ = load_avatar(deca, "astronaut", detector, cache_dir() / "avatars", texture="photo",
                                   codes_from="landmarks")
    w, h = size
    renderer = AvatarRenderer(deca, performer, "avatar", (h, w), pose_mode="source")
    seq = performer_sequence(n_frames, fps)
    base = performer.codes
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float32)
    background = np.stack([0.35 + 0.2 * ys / h, 0.38 + 0.1 * xs / w, 0.42 + 0.0 * xs], 0)
    background_t = torch.as_tensor(background, device=deca.device)[None]

    def draw(index: int, _size) -> np.ndarray:
        pose = torch.zeros(1, 6, device=deca.device)
        pose[0, 1] = float(seq["yaw"][index])
        pose[0, 3] = float(seq["jaw"][index])
        codes = base.replace(exp=torch.as_tensor(seq["exp"][index : index + 1], device=deca.device), pose=pose,
                             cam=torch.tensor([[7.0, 0.0, 0.0]], device=deca.device))
        colour, alpha = renderer.draw(codes, None)
        picture = colour * alpha + background_t * (1 - alpha)
        if bar is not None:
            bar.update(1)
        return (picture[0].permute(1, 2, 0).clamp(0, 1) * 255 + 0.5).to(torch.uint8).cpu().numpy()

    bar = None
    if progress:
        bar = progress_bar(n_frames, unit="frame")
    try:
        make_test_clip(path, frames=n_frames, size=size, fps=fps, audio=True, draw=draw)
    finally:
        if bar is not None:
            bar.close()
    return seq


@command
def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog=prog("capture-demo", "capture.demo"), description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_version_argument(parser)
    parser.add_argument("--target", default="demo", help="'demo' (second demo identity), 'astronaut' or a photo")
    parser.add_argument("-o", "--output", default="demo_out.mp4")
    parser.add_argument("--source", default="demo_source.mp4", help="where the rendered performer clip goes")
    parser.add_argument("--frames", type=int, default=75)
    parser.add_argument("--size", default="640x360", help="performer clip size WxH")
    parser.add_argument("--fps", type=float, default=25.0)
    add_backend_argument(parser)
    parser.add_argument("--codes-from", default="auto", choices=CODE_SOURCES,
                        help="code source of the retargeting run (auto: landmarks on the synthetic demo pack)")
    parser.add_argument("--reconstruct-dir", default="demo_reconstruct", help="where the astronaut's "
                        "reconstruction goes ('' to skip)")
    args = parser.parse_args(argv)
    w, h = (int(v) for v in args.size.lower().split("x"))

    for path in (args.source, args.output):
        check_writable(path)  # before minutes of work
    if Path(args.source).resolve() == Path(args.output).resolve() or same_file(args.source, args.output):
        raise CliError(f"{args.output}: the output is the performer clip {args.source} (the same file); "
                       "give -o and --source different files")
    check_not_input(args.output, [args.target], what="output")
    check_not_input(args.source, [args.target], what="--source clip")
    pack_dir = ensure_demo_pack()
    pack = load_pack(pack_dir)
    say_once(lambda text: print(text, flush=True), pack.label)
    deca = DECA.from_pack(pack)
    if args.reconstruct_dir:
        out_dir = Path(args.reconstruct_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        inputs = [p for p in (args.target, args.source, args.output) if Path(p).exists()]
        name = output_name("astronaut", out_dir, inputs, set())  # never over the target photo or the clips
        print(f"reconstructing the astronaut photo (DECA's single-image demo) into {out_dir}/ ...", flush=True)
        with FaceDetector() as detector:
            written = reconstruct_one(deca, detector, astronaut(), name, out_dir,
                                      choose_source(args.codes_from, pack.synthetic)[0])
        print(f"  wrote {plural(len(written), 'file')}", flush=True)
    print(f"rendering a {args.frames}-frame performer clip ({w}x{h}, {args.fps:g} fps, with audio) "
          f"-> {args.source}", flush=True)
    render_performer_clip(deca, Path(args.source), args.frames, (w, h), args.fps, progress=True)
    return video.main([args.source, "-o", args.output, "--assets", str(pack_dir), "--target", args.target,
                       "--layout", "side-by-side", "--backend", args.backend, "--codes-from", args.codes_from])


if __name__ == "__main__":
    run_cli(main)
