"""`.glb` takes: the target avatar as a glTF 2.0 rig, animated by the take (written with numpy + struct).

What the file holds (one binary .glb: JSON chunk, then one BIN chunk with every buffer view):

- **Mesh**: FLAME's template with the avatar's identity baked in (`v_template + shapedirs[:, :, :n_shape] @
  shape`), UVs (TEXCOORD_0 = (u, 1 - v): glTF's texture origin is the top-left, FLAME's OBJ v points up),
  smooth normals of that base mesh, and the albedo as an embedded PNG (baseColorTexture, roughness 0.8,
  metallic 0) with the avatar's detail as a tangent-space normalTexture (the map of `--meshes`, see
  capture.meshio) and the TANGENT attribute that map was made in (+u on the surface, orthogonal to the
  normal; w = +-1 puts the bitangent N x T along +v). glTF has one UV per vertex, so every FLAME vertex is
  repeated once per distinct UV it has (the demo head's 5162 vertices give 5361 glTF vertices);
  `mesh.extras.flameVertex` maps each glTF vertex back.
- **Morph targets**: the expression basis (the n_exp = 50 coefficients the codes use), named in
  `mesh.extras.targetNames` (what Blender and three.js read): the pack's expression names, `exp00`, `exp01`,
  ... for unnamed columns. FLAME's coefficients are signed and unbounded, but DCC tools treat shape keys as
  0..1 sliders (Blender's importer widens a key's slider range from the first animation key only, and clamps
  every later value to it), so each column used in both directions is two targets, `name` (+m x column) and
  `name_neg` (-m' x column), scaled by the largest coefficient of the take in that direction (m, m'): every
  weight of the animation lies in 0..1. `mesh.extras.targetComponent` (k) and `targetScale` (+-m) give each
  target's column and scale: FLAME's coefficient k = sum over its targets of scale x weight. A column never
  used is one unit target.
- **Skin**: FLAME's five joints as nodes `root` (FLAME's global rotation), `neck`, `jaw`, `eye_left`,
  `eye_right` (FLAME's tree), at the identity's rest joints (`J_regressor @ base`); inverse bind matrices =
  translations by minus those joints; JOINTS_0 / WEIGHTS_0 = each vertex's four largest FLAME LBS weights,
  renormalised to sum 1 (FLAME has five joints; a weight on the fifth is dropped: `dropped_weight` says
  how much at most).
- **Animation** "take": one key per output frame, LINEAR; rotations (quaternions from the codes' axis-angle:
  root = global pose, jaw = jaw pose, neck and eyes 0 as DECA uses them) and the morph weights (exp). Key
  times are the input's timestamps minus the first frame's (glTF key times start at 0 by convention; the
  input's own time of key 0 is `animations[0].extras.startTime`, seconds). A frame without a face repeats
  the last key (zeros before the first face), as the CSV take does.

What glTF cannot represent, and is approximated: FLAME's pose correctives (`posedirs`, the vertex offsets
driven by the joint rotations, a few millimetres at a wide-open jaw) are dropped, and the joints stay where
the identity puts them at rest, while FLAME moves them with the expression (J_regressor applied to the
expression offsets, a fraction of a millimetre). At a frame with no rotation the file reproduces FLAME
exactly; with rotations and no expression, exactly FLAME without posedirs (tests/test_gltf.py).

Only the per-frame codes are kept until `close()` (65 floats a frame): a 10-minute take at 30 fps is about
10 MB.
"""
from __future__ import annotations

import io
import json
import struct
from pathlib import Path
from typing import Optional

import numpy as np

from .meshio import tangent_frames, vertex_normals
from .takes import TakeContext, TakeFrame

JOINT_NAMES = ("root", "neck", "jaw", "eye_left", "eye_right")  # FLAME's joint order
ROUGHNESS = 0.8

# glTF enums
FLOAT, UNSIGNED_BYTE, UNSIGNED_SHORT, UNSIGNED_INT = 5126, 5121, 5123, 5125
ARRAY_BUFFER, ELEMENT_ARRAY_BUFFER = 34962, 34963
TRIANGLES = 4
_TYPES = {1: "SCALAR", 2: "VEC2", 3: "VEC3", 4: "VEC4", 16: "MAT4"}
_DTYPES = {FLOAT: np.float32, UNSIGNED_BYTE: np.uint8, UNSIGNED_SHORT: np.uint16, UNSIGNED_INT: np.uint32}


def axis_angle_to_quaternion(aa: np.ndarray) -> np.ndarray:
    """[..., 3] axis-angle (radians) -> [..., 4] unit quaternions in glTF's (x, y, z, w) order."""
    aa = np.asarray(aa, np.float64)
    theta = np.linalg.norm(aa, axis=-1, keepdims=True)
    half = 0.5 * theta
    # sin(t/2)/t, with its series near 0 so that a zero rotation is exact
    k = np.where(theta > 1e-8, np.sin(half) / np.maximum(theta, 1e-300), 0.5 - theta**2 / 48.0)
    return np.concatenate([aa * k, np.cos(half)], axis=-1)


def continuous_quaternions(q: np.ndarray) -> np.ndarray:
    """[N, 4] -> the same rotations with each key in the hemisphere of the one before (q and -q are one
    rotation; interpolating between opposite signs would take the long way round)."""
    q = np.array(q, np.float64)
    for i in range(1, len(q)):
        if np.dot(q[i], q[i - 1]) < 0:
            q[i] = -q[i]
    return q


def split_uv_vertices(faces: np.ndarray, uvfaces: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One glTF vertex per distinct (vertex, uv-vertex) corner pair. Returns the FLAME vertex [N] and
    uv-vertex [N] of each glTF vertex and the triangles [F, 3] in glTF vertex indices."""
    pairs = np.stack([np.asarray(faces, np.int64).reshape(-1), np.asarray(uvfaces, np.int64).reshape(-1)], 1)
    unique, inverse = np.unique(pairs, axis=0, return_inverse=True)
    return unique[:, 0], unique[:, 1], inverse.reshape(-1, 3)


def top_weights(weights: np.ndarray, k: int = 4) -> tuple[np.ndarray, np.ndarray, float]:
    """[V, J] LBS weights -> joints [V, k] uint8, weights [V, k] float32 (the k largest, summing to 1; unused
    slots joint 0 weight 0) and the largest weight dropped."""
    w = np.clip(np.asarray(weights, np.float64), 0.0, None)
    order = np.argsort(-w, axis=1, kind="stable")[:, :k]
    kept = np.take_along_axis(w, order, axis=1)
    dropped = float((w.sum(1) - kept.sum(1)).max()) if w.shape[1] > k else 0.0
    kept = kept / np.maximum(kept.sum(1, keepdims=True), 1e-12)
    joints = np.where(kept > 0, order, 0).astype(np.uint8)
    kept32 = kept.astype(np.float32)
    # float32 rounding: put what is left of 1 on the largest weight so each row sums to 1 as closely as float32 can
    kept32[:, 0] += np.float32(1.0) - kept32.sum(1, dtype=np.float32)
    return joints, kept32, dropped


def target_scales(exp: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The morph targets for a take's coefficients exp [N, K]: each column k with positive values gets a target of
    scale +max, with negative values one of scale -max|.|, an unused column one of scale 1. Returns the
    column [T] and the scale [T] of each target, columns in order, + before -."""
    targets = []
    for k in range(exp.shape[1]):
        up = float(exp[:, k].max(initial=0.0))
        down = float(exp[:, k].min(initial=0.0))
        targets += [(k, m) for m in (up, down) if m != 0.0] or [(k, 1.0)]
    components = [k for k, _ in targets]
    scales = [m for _, m in targets]
    return np.asarray(components, np.int64), np.asarray(scales, np.float64)


def vertex_tangents(positions: np.ndarray, normals: np.ndarray, triangles: np.ndarray, uv: np.ndarray) -> np.ndarray:
    """glTF TANGENT [N, 4]: the direction of +u (uv [N, 2], v up) made orthogonal to the unit normal, and w = +-1
    so that w (N x T) points along +v: the frame of capture.meshio's tangent-space normal maps."""
    t, b = tangent_frames(positions, triangles, uv, triangles)
    t = t - normals * (t * normals).sum(1, keepdims=True)
    length = np.linalg.norm(t, axis=1, keepdims=True)
    # a vertex whose UV faces are all degenerate: any direction orthogonal to the normal
    other = np.where(np.abs(normals[:, :1]) < 0.9, np.array([[1.0, 0.0, 0.0]]), np.array([[0.0, 1.0, 0.0]]))
    fallback = np.cross(normals, other)
    fallback /= np.linalg.norm(fallback, axis=1, keepdims=True)
    t = np.where(length > 1e-12, t / np.maximum(length, 1e-12), fallback)
    w = np.where((np.cross(normals, t) * b).sum(1) < 0, -1.0, 1.0)
    return np.concatenate([t, w[:, None]], 1)


class _GlbBuilder:
    """Accumulates buffer views and accessors into one BIN chunk (each view 4-byte aligned)."""

    def __init__(self):
        self.chunks: list[bytes] = []
        self.offset = 0
        self.views: list[dict] = []
        self.accessors: list[dict] = []

    def view(self, data: bytes, target: Optional[int] = None) -> int:
        pad = (-self.offset) % 4
        if pad:
            self.chunks.append(b"\0" * pad)
            self.offset += pad
        view = {"buffer": 0, "byteOffset": self.offset, "byteLength": len(data)}
        if target is not None:
            view["target"] = target
        self.chunks.append(data)
        self.offset += len(data)
        self.views.append(view)
        return len(self.views) - 1

    def accessor(self, array: np.ndarray, component: int, target: Optional[int] = None, bounds: bool = False) -> int:
        """array [N] or [N, C] (C in 1, 2, 3, 4, 16) stored as `component`; bounds: write min/max."""
        a = np.ascontiguousarray(np.asarray(array).astype(_DTYPES[component]))
        width = 1 if a.ndim == 1 else a.shape[1]
        acc = {"bufferView": self.view(a.tobytes(), target), "componentType": component, "count": int(a.shape[0]),
               "type": _TYPES[width]}
        if bounds:
            flat = a.reshape(a.shape[0], -1)
            cast = float if component == FLOAT else int
            acc["min"] = [cast(v) for v in flat.min(0)]
            acc["max"] = [cast(v) for v in flat.max(0)]
        self.accessors.append(acc)
        return len(self.accessors) - 1

    def binary(self) -> bytes:
        data = b"".join(self.chunks)
        return data + b"\0" * ((-len(data)) % 4)


def _png(image: np.ndarray) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.asarray(image, np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


def write_glb(path, document: dict, binary: bytes) -> None:
    """A .glb: 12-byte header, the JSON chunk (space-padded), the BIN chunk (zero-padded)."""
    text = json.dumps(document, separators=(",", ":")).encode("utf-8")
    text += b" " * ((-len(text)) % 4)
    total = 12 + 8 + len(text) + 8 + len(binary)
    with open(path, "wb") as f:
        f.write(struct.pack("<III", 0x46546C67, 2, total))
        f.write(struct.pack("<II", len(text), 0x4E4F534A) + text)
        f.write(struct.pack("<II", len(binary), 0x004E4942) + binary)


class AvatarRig:
    """The avatar's glTF rig (mesh, morph basis, skin) from a `TakeContext`: numpy arrays, float64."""

    def __init__(self, context: TakeContext):
        flame = context.flame
        as_np = lambda t: t.detach().double().cpu().numpy()  # noqa: E731
        n_shape = flame.n_shape
        shapedirs = as_np(flame.shapedirs)  # [V, 3, n_shape + n_exp]
        shape = np.asarray(context.shape, np.float64).reshape(-1)[:n_shape]
        self.base = as_np(flame.v_template) + shapedirs[:, :, :n_shape] @ shape  # [V, 3]
        self.expression_dirs = shapedirs[:, :, n_shape:]  # [V, 3, n_exp]
        self.joints = as_np(flame.J_regressor) @ self.base  # [J, 3] rest joints of the identity
        self.parents = flame.joint_parents
        self.weights = as_np(flame.lbs_weights)
        self.n_exp = self.expression_dirs.shape[2]
        self.src, self.uv_src, self.triangles = split_uv_vertices(context.faces, context.uvfaces)
        uv = np.asarray(context.uvcoords, np.float64)[self.uv_src]
        self.texcoords = np.stack([uv[:, 0], 1.0 - uv[:, 1]], 1)
        faces = np.asarray(context.faces, np.int64)
        self.normals = vertex_normals(self.base, faces, fallback=(0.0, 0.0, 1.0))[self.src]
        names = list(context.expression_names)[: self.n_exp]
        self.target_names = names + [f"exp{k:02d}" for k in range(len(names), self.n_exp)]
        self.albedo = context.albedo
        self.normal_map = context.normal_map
        self.joint_ids, self.joint_weights, self.dropped_weight = top_weights(self.weights[self.src])
        self.tangents = vertex_tangents(self.base[self.src], self.normals, self.triangles, uv)


class GltfTake:
    """A `.glb` take: `add(frame)` keeps the frame's codes; `close()` writes the rig and the animation."""

    needs_vertices = False

    def __init__(self, path, context: TakeContext):
        self.path = Path(path)
        self.rig = AvatarRig(context)
        self.fps = float(context.fps)
        self.times: list[float] = []
        self._exp: list[np.ndarray] = []
        self._pose: list[np.ndarray] = []  # [15] full pose: global, neck, jaw, eyes
        self._last_exp = np.zeros(self.rig.n_exp)
        self._last_pose = np.zeros(15)
        self.rows = 0
        self._closed = False

    def add(self, frame: TakeFrame) -> None:
        if self.times and frame.time <= self.times[-1]:
            return  # glTF key times must increase strictly; the pipeline's pts always do
        if frame.codes is not None:
            exp = np.asarray(frame.codes["exp"], np.float64).reshape(-1)[: self.rig.n_exp]
            pose = np.asarray(frame.codes["pose"], np.float64).reshape(-1)
            full = np.zeros(15)
            full[:3], full[6:9] = pose[:3], pose[3:6]
            self._last_exp, self._last_pose = np.pad(exp, (0, self.rig.n_exp - exp.size)), full
        self.times.append(float(frame.time))
        self._exp.append(self._last_exp)
        self._pose.append(self._last_pose)
        self.rows += 1

    def document(self) -> tuple[dict, bytes]:
        """The glTF JSON and its BIN chunk."""
        rig, b = self.rig, _GlbBuilder()
        attributes = {
            "POSITION": b.accessor(rig.base[rig.src], FLOAT, ARRAY_BUFFER, bounds=True),
            "NORMAL": b.accessor(rig.normals, FLOAT, ARRAY_BUFFER),
            "TEXCOORD_0": b.accessor(rig.texcoords, FLOAT, ARRAY_BUFFER),
            "TANGENT": b.accessor(rig.tangents, FLOAT, ARRAY_BUFFER),
            "JOINTS_0": b.accessor(rig.joint_ids, UNSIGNED_BYTE, ARRAY_BUFFER),
            "WEIGHTS_0": b.accessor(rig.joint_weights, FLOAT, ARRAY_BUFFER),
        }
        index_type = UNSIGNED_SHORT if len(rig.src) < 65535 else UNSIGNED_INT
        indices = b.accessor(rig.triangles.reshape(-1), index_type, ELEMENT_ARRAY_BUFFER)
        exp = np.asarray(self._exp, np.float64).reshape(-1, rig.n_exp)
        components, scales = target_scales(exp)
        targets = [{"POSITION": b.accessor(m * rig.expression_dirs[rig.src, :, k], FLOAT, ARRAY_BUFFER, bounds=True)}
                   for k, m in zip(components, scales)]
        primitive = {"attributes": attributes, "indices": indices, "mode": TRIANGLES, "targets": targets}
        names = [rig.target_names[k] + ("_neg" if m < 0 else "") for k, m in zip(components, scales)]
        doc: dict = {"asset": {"version": "2.0", "generator": "capture (capture.gltf)"}, "scene": 0}
        if rig.albedo is not None:
            images = [("albedo", rig.albedo)] + ([("normals", rig.normal_map)] if rig.normal_map is not None else [])
            doc["images"] = [{"bufferView": b.view(_png(img)), "mimeType": "image/png", "name": name}
                             for name, img in images]
            doc["samplers"] = [{"magFilter": 9729, "minFilter": 9987, "wrapS": 33071, "wrapT": 33071}]
            doc["textures"] = [{"sampler": 0, "source": i} for i in range(len(images))]
            material = {"name": "avatar", "pbrMetallicRoughness": {
                "baseColorTexture": {"index": 0}, "metallicFactor": 0.0, "roughnessFactor": ROUGHNESS}}
            if rig.normal_map is not None:
                material["normalTexture"] = {"index": 1}
            doc["materials"] = [material]
            primitive["material"] = 0
        doc["meshes"] = [{"name": "avatar", "primitives": [primitive], "weights": [0.0] * len(targets),
                          "extras": {"targetNames": names, "targetComponent": [int(k) for k in components],
                                     "targetScale": [float(m) for m in scales], "flameVertex": rig.src.tolist()}}]
        # nodes: 0 = the skinned mesh (a scene root, no transform, as glTF asks), 1.. = FLAME's joints
        joint_nodes = []
        for j, name in enumerate(JOINT_NAMES[: len(rig.parents)]):
            parent = rig.parents[j]
            local = rig.joints[j] - (rig.joints[parent] if parent >= 0 else 0.0)
            joint_nodes.append({"name": name, "translation": [float(v) for v in local]})
        for j, parent in enumerate(rig.parents):
            if parent >= 0:
                joint_nodes[parent].setdefault("children", []).append(1 + j)
        ibm = np.tile(np.eye(4), (len(rig.parents), 1, 1))
        ibm[:, :3, 3] = -rig.joints
        ibm_accessor = b.accessor(ibm.transpose(0, 2, 1).reshape(-1, 16), FLOAT)  # glTF matrices are column-major
        doc["nodes"] = [{"name": "avatar", "mesh": 0, "skin": 0}] + joint_nodes
        doc["skins"] = [{"name": "flame", "joints": list(range(1, 1 + len(rig.parents))), "skeleton": 1,
                         "inverseBindMatrices": ibm_accessor}]
        doc["scenes"] = [{"name": "take", "nodes": [0, 1]}]
        if self.times:
            t0 = self.times[0]
            times = b.accessor(np.asarray(self.times) - t0, FLOAT, bounds=True)
            samplers, channels = [], []
            poses = np.asarray(self._pose).reshape(len(self.times), -1, 3)
            for j in range(len(rig.parents)):
                q = continuous_quaternions(axis_angle_to_quaternion(poses[:, j]))
                samplers.append({"input": times, "output": b.accessor(q, FLOAT), "interpolation": "LINEAR"})
                channels.append({"sampler": j, "target": {"node": 1 + j, "path": "rotation"}})
            weights = np.clip(exp[:, components] / scales, 0.0, 1.0)  # [N, targets]: only one sign is non-zero
            samplers.append({"input": times, "output": b.accessor(weights.reshape(-1), FLOAT),
                             "interpolation": "LINEAR"})
            channels.append({"sampler": len(samplers) - 1, "target": {"node": 0, "path": "weights"}})
            doc["animations"] = [{"name": "take", "samplers": samplers, "channels": channels,
                                  "extras": {"startTime": t0, "fps": self.fps}}]
        doc["accessors"] = b.accessors
        doc["bufferViews"] = b.views
        binary = b.binary()
        doc["buffers"] = [{"byteLength": len(binary)}]
        return doc, binary

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        doc, binary = self.document()
        write_glb(self.path, doc, binary)
