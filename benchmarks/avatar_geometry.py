"""The five face signals of `face_signals.py` read off the avatar's own mesh instead of its rendered picture.

`capture.video --codes` saves each frame's FLAME codes. Here they drive FLAME with a neutral shape (head
rotation, jaw and expression as saved), and the signals are measured on the 68 iBUG landmarks of that mesh as
DECA's orthographic camera sees them (x and y; scale and shift cancel in the ratios): no renderer, no MediaPipe.
The head rotation stays because the performer's signals are 2-D too: on pexels_emotions and franck their brow
height follows the head's pitch (r = -0.64 and -0.68), and a mesh seen from the front would lose that.

The iBUG points are the ones `face_signals` uses on the face mesh (`capture.landmarks.MESH_TO_IBUG68`: 61/291 =
48/54, 13/14 = 62/66, 33/263 = 36/45, the brows' 105/66/107 = 19/20/21 and 334/296/336 = 24/23/22), except that
each eye has two lid pairs (37-41, 38-40 and 43-47, 44-46) where the face mesh has three. Compared with the
performer's signals, this separates what the capture gets wrong from what MediaPipe cannot read on the rendered
avatar (a lid gap of a few pixels, say).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from face_signals import SIGNALS, Points, landmark_signals

IBUG68 = Points(mouth_inner=(62, 66), mouth_corners=(48, 54),
                eye_left_lids=((43, 47), (44, 46)), eye_right_lids=((37, 41), (38, 40)),
                brow_right=(19, 20, 21), eye_right_corners=(36, 39),
                brow_left=(24, 23, 22), eye_left_corners=(42, 45), eye_outer=(36, 45))


def codes_signals(codes_npz: Path, assets: str = "demo", batch: int = 256) -> np.ndarray:
    """[N, 5] signals of the frames in a `capture.video --codes` file, NaN rows where it has no codes."""
    import torch

    from capture.assets import open_pack
    from capture.flame import FLAME

    with np.load(codes_npz) as z:
        exp, pose = z["exp"].astype(np.float32), z["pose"].astype(np.float32)
    out = np.full((len(exp), len(SIGNALS)), np.nan)
    ok = np.flatnonzero(np.isfinite(exp).all(1) & np.isfinite(pose).all(1))
    if not len(ok):
        return out
    flame = FLAME(open_pack(assets), n_exp=exp.shape[1])
    for start in range(0, len(ok), batch):
        rows = ok[start:start + batch]
        with torch.no_grad():
            lmk = flame(torch.zeros(len(rows), flame.n_shape), torch.from_numpy(exp[rows]),
                        torch.from_numpy(pose[rows])).landmarks3d
        for i, points in zip(rows, lmk.numpy()):
            out[i] = landmark_signals(points, IBUG68)
    return out
