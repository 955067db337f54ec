"""`.usd` / `.usda` / `.usdc` takes (usd-core's `pxr`): the avatar mesh with time-sampled points, and the
named channels as time-sampled attributes.

Layout of the stage (`defaultPrim` = `/Take`, Y up, metres: `metersPerUnit` = 1):

- `/Take/Avatar` (UsdGeom.Mesh): FLAME's triangles (`faceVertexCounts` all 3, `faceVertexIndices`, right-handed:
  counter-clockwise seen from outside), subdivision "none", the UVs as `primvars:st` (texCoord2f, faceVarying,
  indexed by the pack's uvfaces; v up, as USD's st and FLAME's OBJ both have it), and `points` + `extent`
  with one time sample per output frame: the vertices the session skinned for that frame (FLAME metres, the
  head's rotation applied, no camera translation). `points` at the default time is the neutral face.
- `/Take/Materials/avatar`: a UsdPreviewSurface bound to the mesh, its diffuseColor from `<file stem>_albedo.png`
  and its normal from `<file stem>_normals.png` (tangent space, capture.meshio), PNGs written beside the file
  and named relative to it.
- `/Take/Channels` (a Scope): the 52 ARKit blendshapes as float attributes `arkit:eyeBlinkLeft`, ... (ARKit's
  names, 0..1) and the head and eye angles `head:yaw`, `head:pitch`, `head:roll`, `eyes:leftYaw`, ...
  (radians, the Live Link Face take's meaning), one time sample per frame each.
- Time: `timeCodesPerSecond` = `framesPerSecond` = the input's frame rate; a frame at input time t seconds
  (`Frame.time`, on the input's own timeline) is sampled at time code t x fps, so `startTimeCode` /
  `endTimeCode` are the first and last frames' times x fps (not renumbered from 0; frames of a variable-rate
  input land on fractional time codes). `customLayerData` holds `capture:startTime` (seconds) and
  `capture:fps`.

A frame without a face repeats the last frame's samples (the neutral face and zeros before the first face),
as the CSV take does. Samples are handed to the USD layer as each frame arrives and nothing is kept on the
Python side, but an Sdf layer holds its samples in memory until `Save()` (about 12 bytes x V per frame:
60 KB for FLAME, 1 GB for a 10-minute take at 30 fps).
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import numpy as np
import torch
from pxr import Gf, Sdf, Tf, Usd, UsdGeom, UsdShade, Vt

from .channels import ARKIT_NAMES, Channels
from .takes import TakeContext, TakeFrame

ANGLE_NAMES = ("head:yaw", "head:pitch", "head:roll", "eyes:leftYaw", "eyes:leftPitch", "eyes:leftRoll",
               "eyes:rightYaw", "eyes:rightPitch", "eyes:rightRoll")
MESH_PATH = "/Take/Avatar"
CHANNELS_PATH = "/Take/Channels"


def channel_attribute_names() -> tuple[str, ...]:
    """The channel attributes on /Take/Channels, in the order of `Channels` (blendshapes, head, eyes)."""
    return tuple(f"arkit:{name}" for name in ARKIT_NAMES) + ANGLE_NAMES


class UsdTake:
    """A USD take: `add(frame)` writes the frame's samples into the stage; `close()` saves it."""

    needs_vertices = True  # the session's own skinned vertices, not a second evaluation here

    def __init__(self, path, context: TakeContext):
        self.path = Path(path)
        self.fps = float(context.fps)
        self._flame = context.flame
        self._shape = np.asarray(context.shape, np.float32).reshape(1, -1)
        try:
            self.stage = Usd.Stage.CreateNew(str(self.path))
        except Tf.ErrorException as exc:  # pxr reports a failed create this way, never with None
            reason = str(exc).strip().splitlines()[-1].strip() if str(exc).strip() else "unknown reason"
            raise OSError(f"{self.path}: USD cannot create this file ({reason})") from None
        stage = self.stage
        UsdGeom.SetStageUpAxis(stage, UsdGeom.Tokens.y)
        UsdGeom.SetStageMetersPerUnit(stage, 1.0)
        stage.SetTimeCodesPerSecond(self.fps)
        stage.SetFramesPerSecond(self.fps)
        root = UsdGeom.Xform.Define(stage, "/Take")
        stage.SetDefaultPrim(root.GetPrim())
        mesh = UsdGeom.Mesh.Define(stage, MESH_PATH)
        faces = np.asarray(context.faces, np.int32)
        mesh.CreateFaceVertexCountsAttr(Vt.IntArray.FromNumpy(np.full(len(faces), 3, np.int32)))
        mesh.CreateFaceVertexIndicesAttr(Vt.IntArray.FromNumpy(faces.reshape(-1)))
        mesh.CreateSubdivisionSchemeAttr(UsdGeom.Tokens.none)
        mesh.CreateOrientationAttr(UsdGeom.Tokens.rightHanded)
        st = UsdGeom.PrimvarsAPI(mesh).CreatePrimvar("st", Sdf.ValueTypeNames.TexCoord2fArray,
                                                     UsdGeom.Tokens.faceVarying)
        st.Set(Vt.Vec2fArray.FromNumpy(np.asarray(context.uvcoords, np.float32)))
        st.SetIndices(Vt.IntArray.FromNumpy(np.asarray(context.uvfaces, np.int32).reshape(-1)))
        if context.albedo is not None:
            self.textures = self._material(mesh, context.albedo, context.normal_map)
        self._neutral = self._skin(np.zeros(self._flame.n_exp, np.float32), np.zeros(6, np.float32))
        self._points = mesh.CreatePointsAttr(self._vec3(self._neutral))
        self._extent = mesh.CreateExtentAttr(self._bounds(self._neutral))
        scope = UsdGeom.Scope.Define(stage, CHANNELS_PATH).GetPrim()
        self._channel_attrs = [scope.CreateAttribute(name, Sdf.ValueTypeNames.Float, custom=True)
                               for name in channel_attribute_names()]
        self._last_vertices: np.ndarray = self._neutral
        self._last_channels: Channels = Channels.neutral()
        self.first_time: Optional[float] = None
        self.last_time: Optional[float] = None
        self.rows = 0
        self._closed = False

    def _material(self, mesh, albedo: np.ndarray, normal_map: Optional[np.ndarray]) -> list[Path]:
        """A UsdPreviewSurface reading the albedo (and the tangent-space normal map) through the st primvar."""
        from PIL import Image

        stage, root = self.stage, "/Take/Materials/avatar"
        material = UsdShade.Material.Define(stage, root)
        surface = UsdShade.Shader.Define(stage, f"{root}/surface")
        surface.CreateIdAttr("UsdPreviewSurface")
        surface.CreateInput("roughness", Sdf.ValueTypeNames.Float).Set(0.8)
        surface.CreateInput("metallic", Sdf.ValueTypeNames.Float).Set(0.0)
        st = UsdShade.Shader.Define(stage, f"{root}/st")
        st.CreateIdAttr("UsdPrimvarReader_float2")
        st.CreateInput("varname", Sdf.ValueTypeNames.Token).Set("st")
        st_out = st.CreateOutput("result", Sdf.ValueTypeNames.Float2)
        written = []
        maps = [("albedo", albedo, "sRGB", "rgb", "diffuseColor", Sdf.ValueTypeNames.Color3f)]
        if normal_map is not None:  # UsdPreviewSurface wants normals in -1..1: scale 2, bias -1
            maps.append(("normals", normal_map, "raw", "rgb", "normal", Sdf.ValueTypeNames.Normal3f))
        for name, image, colour_space, channel, target, kind in maps:
            png = self.path.with_name(f"{self.path.stem}_{name}.png")
            Image.fromarray(np.asarray(image, np.uint8)).save(png)
            written.append(png)
            tex = UsdShade.Shader.Define(stage, f"{root}/{name}")
            tex.CreateIdAttr("UsdUVTexture")
            tex.CreateInput("file", Sdf.ValueTypeNames.Asset).Set(f"./{png.name}")
            tex.CreateInput("sourceColorSpace", Sdf.ValueTypeNames.Token).Set(colour_space)
            tex.CreateInput("st", Sdf.ValueTypeNames.Float2).ConnectToSource(st_out)
            if name == "normals":
                tex.CreateInput("scale", Sdf.ValueTypeNames.Float4).Set(Gf.Vec4f(2, 2, 2, 1))
                tex.CreateInput("bias", Sdf.ValueTypeNames.Float4).Set(Gf.Vec4f(-1, -1, -1, 0))
            out = tex.CreateOutput(channel, Sdf.ValueTypeNames.Float3)
            surface.CreateInput(target, kind).ConnectToSource(out)
        material.CreateSurfaceOutput().ConnectToSource(surface.ConnectableAPI(), "surface")
        UsdShade.MaterialBindingAPI.Apply(mesh.GetPrim()).Bind(material)
        return written

    @staticmethod
    def _vec3(v: np.ndarray) -> Vt.Vec3fArray:
        return Vt.Vec3fArray.FromNumpy(np.ascontiguousarray(v, np.float32))

    @staticmethod
    def _bounds(v: np.ndarray) -> Vt.Vec3fArray:
        lo, hi = np.asarray(v, np.float32).min(0), np.asarray(v, np.float32).max(0)
        return Vt.Vec3fArray([Gf.Vec3f(*map(float, lo)), Gf.Vec3f(*map(float, hi))])

    def _skin(self, exp: np.ndarray, pose: np.ndarray) -> np.ndarray:
        """The avatar's vertices for codes (what the session computes; used for the neutral face, and for a
        frame that came without vertices)."""
        ref = self._flame.v_template
        with torch.inference_mode():
            out = self._flame(torch.as_tensor(self._shape, dtype=ref.dtype, device=ref.device),
                              torch.as_tensor(np.asarray(exp, np.float32).reshape(1, -1), device=ref.device),
                              torch.as_tensor(np.asarray(pose, np.float32).reshape(1, 6), device=ref.device))
        return out.vertices[0].cpu().numpy()

    def time_code(self, seconds: float) -> float:
        return seconds * self.fps

    def add(self, frame: TakeFrame) -> None:
        if frame.vertices is not None:
            self._last_vertices = np.asarray(frame.vertices, np.float32)
        elif frame.codes is not None:
            self._last_vertices = self._skin(frame.codes["exp"], frame.codes["pose"])
        if frame.channels is not None:
            self._last_channels = frame.channels
        t = self.time_code(frame.time)
        self._points.Set(self._vec3(self._last_vertices), t)
        self._extent.Set(self._bounds(self._last_vertices), t)
        c = self._last_channels
        values = np.concatenate([c.blendshapes, c.head, c.eyes]).astype(np.float64)
        for attr, value in zip(self._channel_attrs, values):
            attr.Set(float(value), t)
        if self.first_time is None:
            self.first_time = frame.time
        self.last_time = frame.time
        self.rows += 1

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self.first_time is not None:
            self.stage.SetStartTimeCode(self.time_code(self.first_time))
            self.stage.SetEndTimeCode(self.time_code(self.last_time))
        layer = self.stage.GetRootLayer()
        data = dict(layer.customLayerData)
        data.update({"capture:startTime": float(self.first_time or 0.0), "capture:fps": self.fps})
        layer.customLayerData = data
        self.stage.GetRootLayer().Save()
