"""A small, independent glTF 2.0 reader and evaluator for the tests: parses a .glb, checks its structure, and
evaluates skinning + morph targets at an animation key the way the glTF specification defines them
(node TRS -> global matrices, joint matrix = global(joint) x inverseBindMatrix, vertex = sum_i w_i
joint_i (base + sum_k weight_k delta_k)). It shares no code with capture.gltf."""
from __future__ import annotations

import json
import struct

import numpy as np

_COMPONENTS = {5120: np.int8, 5121: np.uint8, 5122: np.int16, 5123: np.uint16, 5125: np.uint32, 5126: np.float32}
_WIDTH = {"SCALAR": 1, "VEC2": 2, "VEC3": 3, "VEC4": 4, "MAT4": 16}


class Glb:
    def __init__(self, path):
        data = open(path, "rb").read()
        magic, version, length = struct.unpack_from("<III", data, 0)
        assert magic == 0x46546C67 and version == 2 and length == len(data), (magic, version, length, len(data))
        json_len, json_type = struct.unpack_from("<II", data, 12)
        assert json_type == 0x4E4F534A and json_len % 4 == 0
        self.doc = json.loads(data[20:20 + json_len])
        at = 20 + json_len
        bin_len, bin_type = struct.unpack_from("<II", data, at)
        assert bin_type == 0x004E4942 and bin_len % 4 == 0 and at + 8 + bin_len == len(data)
        self.bin = data[at + 8: at + 8 + bin_len]
        assert self.doc["buffers"][0]["byteLength"] <= bin_len

    def check_structure(self) -> None:
        """Every view inside the buffer, every accessor inside its view and aligned, min/max as stored."""
        size = self.doc["buffers"][0]["byteLength"]
        for v in self.doc["bufferViews"]:
            assert v["byteOffset"] + v["byteLength"] <= size
            assert v["byteOffset"] % 4 == 0
        for i, a in enumerate(self.doc["accessors"]):
            view = self.doc["bufferViews"][a["bufferView"]]
            item = np.dtype(_COMPONENTS[a["componentType"]]).itemsize * _WIDTH[a["type"]]
            start = view["byteOffset"] + a.get("byteOffset", 0)
            assert start % np.dtype(_COMPONENTS[a["componentType"]]).itemsize == 0
            assert a.get("byteOffset", 0) + a["count"] * item <= view["byteLength"], i
            if "min" in a:
                values = self.accessor(i).reshape(a["count"], -1)
                np.testing.assert_array_equal(values.min(0), np.asarray(a["min"], values.dtype))
                np.testing.assert_array_equal(values.max(0), np.asarray(a["max"], values.dtype))

    def accessor(self, i: int) -> np.ndarray:
        a = self.doc["accessors"][i]
        view = self.doc["bufferViews"][a["bufferView"]]
        dtype = np.dtype(_COMPONENTS[a["componentType"]])
        width = _WIDTH[a["type"]]
        start = view["byteOffset"] + a.get("byteOffset", 0)
        out = np.frombuffer(self.bin, dtype, a["count"] * width, start)
        return out.reshape(a["count"], width) if width > 1 else out

    def image_bytes(self, i: int) -> bytes:
        view = self.doc["bufferViews"][self.doc["images"][i]["bufferView"]]
        return self.bin[view["byteOffset"]: view["byteOffset"] + view["byteLength"]]

    # ----------------------------------------------------------------------------------- evaluation
    def key_values(self, key: int) -> tuple[dict, np.ndarray]:
        """The animation's values at key `key`: {node: quaternion (x, y, z, w)} and the morph weights."""
        anim = self.doc["animations"][0]
        rotations, weights = {}, None
        for ch in anim["channels"]:
            sampler = anim["samplers"][ch["sampler"]]
            n = len(self.accessor(sampler["input"]))
            out = self.accessor(sampler["output"]).astype(np.float64)
            if ch["target"]["path"] == "rotation":
                rotations[ch["target"]["node"]] = out[key]
            elif ch["target"]["path"] == "weights":
                weights = out.reshape(n, -1)[key]
        return rotations, weights

    def vertices_at(self, key: int) -> np.ndarray:
        """World positions [N, 3] of the skinned mesh at animation key `key` (float64)."""
        doc = self.doc
        rotations, weights = self.key_values(key)
        mesh_node = next(i for i, n in enumerate(doc["nodes"]) if "skin" in n)
        prim = doc["meshes"][doc["nodes"][mesh_node]["mesh"]]["primitives"][0]
        pos = self.accessor(prim["attributes"]["POSITION"]).astype(np.float64)
        for k, target in enumerate(prim.get("targets", [])):
            pos = pos + weights[k] * self.accessor(target["POSITION"]).astype(np.float64)
        parent = {c: i for i, n in enumerate(doc["nodes"]) for c in n.get("children", [])}

        def local(i):
            n = doc["nodes"][i]
            M = np.eye(4)
            x, y, z, w = rotations.get(i, n.get("rotation", [0, 0, 0, 1]))
            M[:3, :3] = [[1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)],
                         [2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)],
                         [2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)]]
            M[:3, :3] = M[:3, :3] * np.asarray(n.get("scale", [1, 1, 1]))
            M[:3, 3] = n.get("translation", [0, 0, 0])
            return M

        def world(i):
            return world(parent[i]) @ local(i) if i in parent else local(i)

        skin = doc["skins"][doc["nodes"][mesh_node]["skin"]]
        ibm = self.accessor(skin["inverseBindMatrices"]).astype(np.float64).reshape(-1, 4, 4).transpose(0, 2, 1)
        joint_mats = np.stack([world(j) @ ibm[k] for k, j in enumerate(skin["joints"])])  # [J, 4, 4]
        joints = self.accessor(prim["attributes"]["JOINTS_0"]).astype(np.int64)
        w = self.accessor(prim["attributes"]["WEIGHTS_0"]).astype(np.float64)
        M = (w[..., None, None] * joint_mats[joints]).sum(1)  # [N, 4, 4]
        return (M[:, :3, :3] @ pos[..., None])[..., 0] + M[:, :3, 3]
