"""Named expression channels: ARKit's 52 blendshapes and the head angles, measured on the animated head.

The channels are not a linear map of FLAME's coefficients (official FLAME's 50 PCA components have no names):
they are measured GEOMETRICALLY on the head that the codes animate, the way a tracker would measure a face —
lid gaps, lip gaps, mouth-corner and brow displacements — and normalised against a neutral of the same
identity, so that the same code serves the demo pack and official FLAME. The table of how each channel is
derived (and which are approximations or always 0) is in docs/conventions.md ("Expression channels").

- The measured head is the frame's MERGED codes as rendered (the avatar's shape, the performer's expression and
  jaw), with the global rotation removed (the measurements are in head space, so a head turn is not a smile).
- The neutral is the model's own face for the same shape with zero expression and THE SAME JAW: the jaw is a
  channel of its own (`jawOpen`, from the jaw pose), and the mouth channels measure what the lips do on top of
  it (a mouth that opens does not read as a frown).
- Displacements are divided by the neutral's eye width (outer eye corners, iBUG 36-45) and compared with a
  full-scale value given in millimetres at a reference eye distance of `REFERENCE_IOD_MM` (the demo head's
  expressions at 1.0 are real-face magnitudes; so are official FLAME's).
- Only the 68 landmark points (DECA's full embedding, iBUG numbering) and four cheek vertices are skinned: the
  measurement costs well under a millisecond a frame on a CPU (`SubsetLBS`, exact: the same LBS as
  `capture.flame.lbs` on a subset of the vertices).

Left/right are ARKit's: the subject's side. `eyeBlinkLeft` is the subject's left eye = FLAME +x = iBUG 42-47.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping

import numpy as np
import torch

from .flame import FLAME, blend_shapes, rigid_chain, rodrigues
from .meshio import vertex_normals

# Apple's ARFaceAnchor.BlendShapeLocation order (also Unreal's EARFaceBlendShape and the Live Link Face stream).
ARKIT_NAMES = (
    "eyeBlinkLeft", "eyeLookDownLeft", "eyeLookInLeft", "eyeLookOutLeft", "eyeLookUpLeft", "eyeSquintLeft",
    "eyeWideLeft", "eyeBlinkRight", "eyeLookDownRight", "eyeLookInRight", "eyeLookOutRight", "eyeLookUpRight",
    "eyeSquintRight", "eyeWideRight", "jawForward", "jawLeft", "jawRight", "jawOpen", "mouthClose", "mouthFunnel",
    "mouthPucker", "mouthLeft", "mouthRight", "mouthSmileLeft", "mouthSmileRight", "mouthFrownLeft",
    "mouthFrownRight", "mouthDimpleLeft", "mouthDimpleRight", "mouthStretchLeft", "mouthStretchRight",
    "mouthRollLower", "mouthRollUpper", "mouthShrugLower", "mouthShrugUpper", "mouthPressLeft", "mouthPressRight",
    "mouthLowerDownLeft", "mouthLowerDownRight", "mouthUpperUpLeft", "mouthUpperUpRight", "browDownLeft",
    "browDownRight", "browInnerUp", "browOuterUpLeft", "browOuterUpRight", "cheekPuff", "cheekSquintLeft",
    "cheekSquintRight", "noseSneerLeft", "noseSneerRight", "tongueOut",
)
assert len(ARKIT_NAMES) == 52
ARKIT_INDEX = {name: i for i, name in enumerate(ARKIT_NAMES)}
# Channels this measurement never moves (no such motion in FLAME's codes as DECA uses them): always 0.
ALWAYS_ZERO = ("eyeLookDownLeft", "eyeLookInLeft", "eyeLookOutLeft", "eyeLookUpLeft", "eyeLookDownRight",
               "eyeLookInRight", "eyeLookOutRight", "eyeLookUpRight", "jawForward", "mouthDimpleLeft",
               "mouthDimpleRight", "mouthRollLower", "mouthRollUpper", "mouthShrugLower", "mouthShrugUpper",
               "tongueOut")

REFERENCE_IOD_MM = 92.0  # outer eye corner distance the full-scale values below are given at (the demo head's)
# Full scale of each measured displacement, mm at REFERENCE_IOD_MM: the displacement that reads 1.0.
FULL_SCALE_MM = {
    "smile": 6.0,  # mouth corner up (iBUG 48 / 54)
    "frown": 5.5,  # mouth corner down
    "stretch": 6.0,  # mouth corner out from the lip midline, beyond what a smile carries
    "mouth_shift": 5.5,  # lip midline (51, 57, 62, 66) sideways
    "funnel_forward": 4.5,  # lip midline forward
    "funnel_open": 3.5,  # inner lips apart beyond the jaw's own gap
    "pucker_narrow": 13.0,  # mouth width lost (corner to corner)
    "pucker_forward": 6.0,
    "lower_down": 3.0,  # lower lip down, per side
    "upper_up": 2.5,  # upper lip up, per side
    "press": 3.5,  # lip (vermilion) height lost, per side
    "brow_outer_up": 6.0,  # outer brow (iBUG 17-18 / 25-26) up
    "brow_inner_up": 6.0,  # inner brows (21, 22) up
    "brow_down": 3.0,  # brow (inner half) down
    "eye_wide": 2.0,  # upper lid up, beyond the neutral lid gap
    "eye_squint": 1.5,  # lower lid up
    "cheek_squint": 3.5,  # cheek below the eye up
    "cheek_puff": 5.0,  # cheek at the mouth corners' height out along its normal
    "sneer": 3.0,  # nose wing (31 / 35) up
}
JAW_OPEN_FULL = 0.35  # rad of jaw rotation about x that reads jawOpen = 1 (about 20 degrees)
JAW_SIDE_FULL = 0.12  # rad of jaw rotation about y that reads jawLeft / jawRight = 1
BLINK_CLOSED = 0.1  # a lid gap at or below this fraction of the neutral gap reads eyeBlink = 1

# iBUG-68 points (docs/conventions.md, "Landmark correspondences"); "L"/"R" = the subject's left (+x) / right.
EYE = {"L": dict(corners=(42, 45), upper=(43, 44), lower=(47, 46)),
       "R": dict(corners=(39, 36), upper=(38, 37), lower=(40, 41))}
BROW = {"L": dict(inner=(22,), outer=(25, 26), inner_half=(22, 23, 24)),
        "R": dict(inner=(21,), outer=(18, 17), inner_half=(21, 20, 19))}
CORNER = {"L": 54, "R": 48}
LIP_MID = (51, 57, 62, 66)
UPPER_OUTER = {"L": 52, "R": 50}
LOWER_OUTER = {"L": 56, "R": 58}
UPPER_INNER = {"L": 63, "R": 61}
LOWER_INNER = {"L": 65, "R": 67}
INNER_GAP = ((61, 67), (62, 66), (63, 65))
ALAR = {"L": 35, "R": 31}
SIDES = {"L": 1.0, "R": -1.0}  # sign of x on that side


@dataclass
class Channels:
    """One frame's channels. blendshapes [52] float32 in 0..1, in ARKIT_NAMES order; head [3] = yaw, pitch,
    roll in radians; eyes [6] = left yaw, pitch, roll, right yaw, pitch, roll (radians, 0: DECA's eye pose
    is zero)."""

    blendshapes: np.ndarray
    head: np.ndarray
    eyes: np.ndarray

    def named(self) -> dict[str, float]:
        return {name: float(v) for name, v in zip(ARKIT_NAMES, self.blendshapes)}

    @classmethod
    def neutral(cls) -> "Channels":
        return cls(np.zeros(52, np.float32), np.zeros(3, np.float32), np.zeros(6, np.float32))


def head_angles(global_pose: np.ndarray) -> np.ndarray:
    """Axis-angle [3] -> (yaw, pitch, roll) radians with R = Ry(yaw) Rx(pitch) Rz(roll) in FLAME's axes
    (x: subject's left, y up, z towards the viewer). yaw > 0 turns the face to the subject's left, pitch > 0
    tips the chin down, roll > 0 is a rotation about +z (towards the subject's right shoulder: counter-clockwise
    as the viewer sees the face)."""
    R = rodrigues(torch.as_tensor(np.asarray(global_pose, np.float64)).reshape(1, 3))[0].numpy()
    pitch = np.arcsin(np.clip(-R[1, 2], -1.0, 1.0))
    yaw = np.arctan2(R[0, 2], R[2, 2])
    roll = np.arctan2(R[1, 0], R[1, 1])
    return np.array([yaw, pitch, roll])


class SubsetLBS:
    """FLAME's LBS (`capture.flame.lbs`, DECA's conventions) evaluated on a few vertices only, exactly: the
    joints depend on shape and expression through J_regressor, so its products with the template and the
    blendshape basis are precomputed over all vertices once."""

    def __init__(self, flame: FLAME, vertex_ids: np.ndarray):
        ids = torch.as_tensor(np.asarray(vertex_ids, np.int64))
        V = flame.v_template.shape[0]
        self.ids = ids
        self.v_template = flame.v_template[ids].detach().double().cpu()
        self.shapedirs = flame.shapedirs[ids].detach().double().cpu()
        posedirs = flame.posedirs.detach().double().cpu().reshape(-1, V, 3)
        self.posedirs = posedirs[:, ids].reshape(posedirs.shape[0], -1)
        self.weights = flame.lbs_weights[ids].detach().double().cpu()
        J = flame.J_regressor.detach().double().cpu()
        self.J_template = J @ flame.v_template.detach().double().cpu()
        self.J_dirs = torch.einsum("jv,vck->jck", J, flame.shapedirs.detach().double().cpu())
        self.parents = flame.joint_parents
        self.n_shape, self.n_exp = flame.n_shape, flame.n_exp

    def __call__(self, shape: torch.Tensor, exp: torch.Tensor, full_pose: torch.Tensor) -> torch.Tensor:
        """shape [B, n_shape], exp [B, n_exp], full_pose [B, 15] (global, neck, jaw, eyes) -> [B, S, 3]."""
        B = shape.shape[0]
        betas = torch.cat([shape, exp], dim=1)
        v_shaped = self.v_template + blend_shapes(betas, self.shapedirs)
        joints = self.J_template + blend_shapes(betas, self.J_dirs)
        J = joints.shape[1]
        rot = rodrigues(full_pose.reshape(B * J, 3)).reshape(B, J, 3, 3)
        eye = torch.eye(3, dtype=rot.dtype)
        pose_feature = (rot[:, 1:] - eye).reshape(B, -1)
        v_posed = v_shaped + (pose_feature @ self.posedirs).reshape(B, -1, 3)
        _, transforms = rigid_chain(rot, joints, self.parents)
        T = (self.weights @ transforms[:, :, :3, :].reshape(B, J, 12)).reshape(B, -1, 3, 4)
        return (T[..., :3] @ v_posed[..., None])[..., 0] + T[..., 3]


class ChannelModel:
    """Codes -> `Channels` on one head model. `ChannelModel(flame)`; `model(codes)` with the merged codes of one
    frame (a mapping or object with shape [n_shape], exp [n_exp], pose [6], batch 1 or unbatched)."""

    def __init__(self, flame: FLAME):
        self.flame = flame
        faces = flame.faces.detach().cpu().numpy()
        lmk_faces = flame.full_lmk_faces_idx.detach().cpu().numpy().reshape(-1)
        self._bary = flame.full_lmk_bary_coords.detach().double().cpu().numpy().reshape(-1, 3)
        corner_ids = faces[lmk_faces]  # [68, 3]
        # Cheek anchors, found once on the mean face (any topology): under each eye, and beside each mouth corner.
        mean = flame.v_template.detach().double().cpu().numpy()
        lmk = (self._bary[..., None] * mean[corner_ids]).sum(1)
        iod = np.linalg.norm(lmk[36] - lmk[45])
        normals = vertex_normals(mean, faces)
        anchors = []
        for side, sign in SIDES.items():
            c = EYE[side]["corners"]
            under_eye = 0.5 * (lmk[c[0]] + lmk[c[1]]) + np.array([0.0, -0.28 * iod, 0.0])
            beside_mouth = lmk[CORNER[side]] + np.array([sign * 0.2 * iod, 0.0, 0.0])
            for target in (under_eye, beside_mouth):
                front = normals[:, 2] > 0.3  # the face's outer surface, not the mouth or eye interiors
                cand = np.flatnonzero(front)
                anchors.append(int(cand[np.argmin(np.linalg.norm(mean[cand] - target, axis=1))]))
        self._anchor_normals = normals[anchors]  # [4, 3]: L under-eye, L mouth, R under-eye, R mouth
        ids = np.concatenate([corner_ids.reshape(-1), np.asarray(anchors)])
        self.lbs = SubsetLBS(flame, ids)
        self._n_lmk_ids = corner_ids.size

    def _points(self, shape, exp, pose) -> tuple[np.ndarray, np.ndarray]:
        """[B] heads -> landmarks [B, 68, 3] and anchors [B, 4, 3] in head space (metres)."""
        B = shape.shape[0]
        full = torch.zeros(B, 15, dtype=torch.float64)
        full[:, 6:9] = pose[:, 3:6]  # the jaw only: the global rotation is reported, not measured
        verts = self.lbs(shape, exp, full).numpy()
        tri = verts[:, : self._n_lmk_ids].reshape(B, 68, 3, 3)
        landmarks = (self._bary[None, :, :, None] * tri).sum(2)
        return landmarks, verts[:, self._n_lmk_ids:]

    def __call__(self, codes) -> Channels:
        get = (lambda k: codes[k]) if isinstance(codes, Mapping) else (lambda k: getattr(codes, k))
        as2d = lambda a: torch.as_tensor(np.asarray(  # noqa: E731
            a.detach().cpu().numpy() if isinstance(a, torch.Tensor) else a, np.float64)).reshape(1, -1)
        shape, exp, pose = as2d(get("shape")), as2d(get("exp")), as2d(get("pose"))
        if shape.shape[1] != self.lbs.n_shape or exp.shape[1] != self.lbs.n_exp or pose.shape[1] != 6:
            raise ValueError(f"ChannelModel: expected shape [{self.lbs.n_shape}], exp [{self.lbs.n_exp}], pose [6]; "
                             f"found {list(shape.shape)}, {list(exp.shape)}, {list(pose.shape)}")
        # The frame and its neutral: the same shape and jaw, zero expression.
        lmk, anc = self._points(torch.cat([shape, shape]), torch.cat([exp, torch.zeros_like(exp)]),
                                torch.cat([pose, pose]))
        values = measure(lmk[0], lmk[1], anc[0], anc[1], self._anchor_normals, pose[0, 3:6].numpy())
        blend = np.array([values.get(name, 0.0) for name in ARKIT_NAMES], np.float32)
        return Channels(np.clip(blend, 0.0, 1.0), head_angles(pose[0, :3].numpy()).astype(np.float32),
                        np.zeros(6, np.float32))


def _unit(x: float) -> float:
    return float(np.clip(x, 0.0, 1.0))


def measure(p: np.ndarray, n: np.ndarray, anchors: np.ndarray, anchors_n: np.ndarray, anchor_normals: np.ndarray,
            jaw: np.ndarray) -> dict[str, float]:
    """The geometric channels of one frame: landmarks p [68, 3] and their neutral n [68, 3], cheek anchors and
    their neutral [4, 3], the anchors' neutral normals [4, 3] (head space, metres), the jaw's axis-angle [3]."""
    iod = float(np.linalg.norm(n[36] - n[45]))
    ref_mm = REFERENCE_IOD_MM / max(iod, 1e-9)  # a length in this head's metres x ref_mm = reference mm
    d = (p - n) * ref_mm  # displacements from the neutral, reference mm
    scale = lambda key: FULL_SCALE_MM[key]  # noqa: E731
    dist = lambda q, a, b: float(np.linalg.norm(q[a] - q[b]))  # noqa: E731

    out: dict[str, float] = {}
    # Jaw: its own pose (FLAME rotates the jaw joint; nothing else moves the chin).
    out["jawOpen"] = _unit(jaw[0] / JAW_OPEN_FULL)
    out["jawLeft"] = _unit(jaw[1] / JAW_SIDE_FULL)  # about +y the chin goes to +x, the subject's left
    out["jawRight"] = _unit(-jaw[1] / JAW_SIDE_FULL)

    gap = np.mean([dist(p, a, b) for a, b in INNER_GAP]) * ref_mm
    gap_n = np.mean([dist(n, a, b) for a, b in INNER_GAP]) * ref_mm
    width = dist(p, 48, 54) * ref_mm
    width_n = dist(n, 48, 54) * ref_mm
    mid = d[list(LIP_MID)].mean(0)
    gap_extra = gap - gap_n  # the neutral has the same jaw: this is the lips' own parting
    openish = _unit(gap_extra / scale("funnel_open"))
    forward = mid[2]
    out["mouthFunnel"] = _unit(forward / scale("funnel_forward")) * openish
    out["mouthPucker"] = _unit(min((width_n - width) / scale("pucker_narrow"), forward / scale("pucker_forward"))) * (
        1.0 - openish)
    out["mouthLeft"] = _unit(mid[0] / scale("mouth_shift"))
    out["mouthRight"] = _unit(-mid[0] / scale("mouth_shift"))
    # mouthClose: lips together while the jaw is open (the neutral's gap is what the jaw alone opens).
    out["mouthClose"] = out["jawOpen"] * _unit((gap_n - gap) / max(gap_n, 1e-6))
    for side, sign in SIDES.items():
        name = "Left" if side == "L" else "Right"
        c = d[CORNER[side]]
        up = c[1]
        outward = sign * (c[0] - mid[0])  # relative to the lip midline: a mouth moved sideways is no stretch
        out[f"mouthSmile{name}"] = _unit(up / scale("smile"))
        out[f"mouthFrown{name}"] = _unit(-up / scale("frown"))
        out[f"mouthStretch{name}"] = _unit((outward - 0.8 * max(up, 0.0)) / scale("stretch"))
        out[f"mouthLowerDown{name}"] = _unit(
            -(d[LOWER_OUTER[side]][1] + d[LOWER_INNER[side]][1]) / 2 / scale("lower_down"))
        out[f"mouthUpperUp{name}"] = _unit((d[UPPER_OUTER[side]][1] + d[UPPER_INNER[side]][1]) / 2 / scale("upper_up"))
        thick = (dist(p, UPPER_OUTER[side], UPPER_INNER[side]) + dist(p, LOWER_OUTER[side], LOWER_INNER[side])) * ref_mm
        thick_n = (dist(n, UPPER_OUTER[side], UPPER_INNER[side])
                   + dist(n, LOWER_OUTER[side], LOWER_INNER[side])) * ref_mm
        out[f"mouthPress{name}"] = _unit((thick_n - thick) / scale("press"))

        e = EYE[side]
        lid = np.mean([dist(p, upper, lower) for upper, lower in zip(e["upper"], e["lower"])])
        lid_n = max(np.mean([dist(n, upper, lower) for upper, lower in zip(e["upper"], e["lower"])]), 1e-9)
        out[f"eyeBlink{name}"] = _unit((1.0 - lid / lid_n) / (1.0 - BLINK_CLOSED))
        upper_up = d[list(e["upper"])].mean(0)[1]
        lower_up = d[list(e["lower"])].mean(0)[1]
        out[f"eyeWide{name}"] = _unit(upper_up / scale("eye_wide"))
        # a closing eye raises its lower lid too: that part is the blink's
        out[f"eyeSquint{name}"] = _unit(lower_up / scale("eye_squint")) * (1.0 - out[f"eyeBlink{name}"])

        b = BROW[side]
        out[f"browOuterUp{name}"] = _unit(d[list(b["outer"])].mean(0)[1] / scale("brow_outer_up"))
        out[f"browDown{name}"] = _unit(-d[list(b["inner_half"])].mean(0)[1] / scale("brow_down"))
        k = 0 if side == "L" else 2
        out[f"cheekSquint{name}"] = _unit((anchors[k] - anchors_n[k])[1] * ref_mm / scale("cheek_squint"))
        out[f"noseSneer{name}"] = _unit((d[ALAR[side]][1] - 0.15 * max(up, 0.0)) / scale("sneer"))
    inner = (d[BROW["L"]["inner"][0]][1] + d[BROW["R"]["inner"][0]][1]) / 2
    out["browInnerUp"] = _unit(inner / scale("brow_inner_up"))
    puff = [float((anchors[k] - anchors_n[k]) @ anchor_normals[k]) * ref_mm for k in (1, 3)]
    out["cheekPuff"] = _unit(np.mean(puff) / scale("cheek_puff"))
    return out


# ------------------------------------------------------------------------------------------- VRM presets
VRM_PRESETS = ("Blink_L", "Blink_R", "A", "I", "U", "E", "O")


def vrm_presets(c: Mapping[str, float]) -> dict[str, float]:
    """VRM 0.x preset expressions from the ARKit channels (for receivers without perfect sync).

    Vowels from three measured quantities: open = jawOpen, wide = the mouth corners out or up (stretch/smile),
    round = pucker or funnel. A: open, neither wide nor round; I: wide and nearly closed; E: wide and half open;
    U: round and nearly closed; O: round and open."""
    open_ = c["jawOpen"]
    wide = max((c["mouthStretchLeft"] + c["mouthStretchRight"]) / 2, (c["mouthSmileLeft"] + c["mouthSmileRight"]) / 2)
    round_ = max(c["mouthPucker"], c["mouthFunnel"])
    half = 1.0 - abs(2.0 * min(open_, 1.0) - 1.0)  # peaks at half open
    return {
        "Blink_L": c["eyeBlinkLeft"], "Blink_R": c["eyeBlinkRight"],
        "A": _unit(open_ * (1.0 - round_) * (1.0 - 0.5 * wide)),
        "I": _unit(wide * (1.0 - open_) * (1.0 - round_)),
        "U": _unit(round_ * (1.0 - open_)),
        "E": _unit(wide * half * (1.0 - round_)),
        "O": _unit(round_ * open_ + c["mouthFunnel"] * (1.0 - open_) * 0.5),
    }
