"""The target identity: one photo -> shape, albedo/texture, light, detail code; computed once, cached on disk.

The cache key is the photo's bytes and the weights' hash, so a new photo or new weights never reuse a stale
avatar. Without an albedo model in the pack the avatar's colour comes from the photo itself (DECA's extracted
texture), de-lit once with the photo's own estimated light so that per-frame SH shading with the detail
normals adds wrinkles without lighting the face twice.
"""
from __future__ import annotations

import hashlib
import io
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np
import torch

from .appearance import extract_texture, sh_shading
from .artifacts import build_lock, write_bytes_atomic
from .conventions import INPUT_SIZE
from .crop import FaceDetector
from .deca import DECA, Codes
from .projection import crop_to_image_ndc
from .stills import FaceCrop, ImageError, astronaut, crop_largest_face, load_image

AVATAR_FORMAT = 2
DELIGHT_FLOOR = 0.25  # shading below this is treated as shadow, not divided out (avoids blowing up noise)
GREY_ALBEDO = 0.7  # DECA's constant outside the face when there is no albedo model


@dataclass
class Avatar:
    codes: Codes  # batch 1: the target's full code (shape, tex, light, detail, pose, cam, exp)
    albedo_uv: Optional[torch.Tensor]  # [1, 3, 256, 256] de-lit photo texture, or None to use the albedo model
    source: str
    key: str

    def to(self, device) -> "Avatar":
        albedo = None if self.albedo_uv is None else self.albedo_uv.to(device)
        return Avatar(self.codes.to(device), albedo, self.source, self.key)


def _image_bytes(target: str) -> tuple[np.ndarray, bytes]:
    if target == "astronaut":
        image = astronaut()
        return image, image.tobytes()
    path = Path(target)
    image = load_image(path)
    return image, path.read_bytes()


def avatar_key(image_bytes: bytes, weights_sha256: str, texture: str) -> str:
    digest = hashlib.sha256()
    for part in (f"avatar-v{AVATAR_FORMAT}".encode(), image_bytes, weights_sha256.encode(), texture.encode()):
        digest.update(hashlib.sha256(part).digest())
    return digest.hexdigest()[:32]


def default_light(device) -> torch.Tensor:
    """[1, 9, 3] SH light: a soft key light from the front and slightly above (no estimate from a photo)."""
    # SH band 0 times c0 = 0.282 is the ambient part, band 1 times c1 = 1.023 the directional one: shading
    # ~1.0 on a frontal normal, ~0.6 on a profile one, so the albedo is not washed out.
    light = torch.zeros(1, 9, 3)
    light[0, 0] = 2.1
    light[0, 3] = 0.4  # from the front (+z)
    light[0, 2] = 0.15  # and slightly from above
    return light.to(device)


def fit_identity(deca: DECA, face: "FaceCrop", network: Codes, codes_from: str) -> Codes:
    """The target's shape, head pose and camera fitted to its face-mesh landmarks (one image).

    Detail code (and, in hybrid mode, albedo and light) still come from the networks; in landmarks mode the
    albedo code is the model's mean and the light a default one, since a synthetic pack's networks cannot
    estimate them.
    """
    from .fit import LandmarkBases, LandmarkFitter
    from .sources import N_SHAPE_TARGET, codes_from_state, fit_config, landmarks_to_crop_ndc, state_from_codes

    bases = LandmarkBases.from_pack(deca.pack, deca.flame.n_shape, deca.flame.n_exp)
    fitter = LandmarkFitter(bases, n_shape=N_SHAPE_TARGET, config=fit_config(deca.pack, iterations_first=20))
    target = landmarks_to_crop_ndc(face.face.landmarks, face.image_to_crop)
    prior = state_from_codes(network) if codes_from == "hybrid" else None
    state = fitter.fit(target, prior_state=prior)
    for _ in range(3):  # alternate shape and the rest a few more times: one image, no hurry
        fitter.update_shape(iterations=3)
        state = fitter.fit(target, prior_state=prior)
    template = network if codes_from == "hybrid" else network.replace(
        tex=torch.zeros_like(network.tex), light=default_light(deca.device))
    return codes_from_state(state, fitter.shape, deca.device, n_shape=network.shape.shape[1], template=template)


def build_avatar(deca: DECA, image: np.ndarray, detector: FaceDetector, source: str, key: str,
                 texture: str = "auto", codes_from: str = "network") -> Avatar:
    """texture: 'photo' (extracted from the image), 'model' (albedo model), 'auto' (model if the pack has one).
    codes_from: 'network' (E_flame's codes of the photo), 'landmarks' or 'hybrid' (shape, pose and camera
    fitted to the face mesh, see `fit_identity`)."""
    face = crop_largest_face(image, detector, source=source)
    codes = deca.encode(face.crop[None])
    if codes_from in ("landmarks", "hybrid") and face.face.landmarks is not None:
        codes = fit_identity(deca, face, codes, codes_from)
    use_photo = texture == "photo" or (texture == "auto" and deca.pack.albedo is None)
    if not use_photo:
        return Avatar(codes=codes, albedo_uv=None, source=source, key=key)
    h, w = image.shape[:2]
    T = torch.as_tensor(face.image_to_crop, dtype=torch.float32, device=deca.device)
    geo = deca.geometry(codes)
    photo = torch.as_tensor(image, dtype=torch.float32, device=deca.device).permute(2, 0, 1)[None] / 255.0
    screen = crop_to_image_ndc(geo.screen, T, INPUT_SIZE, (h, w))
    assets = deca.assets
    coarse_uv_normals = assets.uv_sampler.sample(geo.normals)
    shading = sh_shading(coarse_uv_normals, codes.light)
    if deca.pack.albedo is not None:
        fallback = deca.albedo(codes) * shading
    else:
        fallback = torch.full_like(photo[:, :, :1, :1].expand(-1, -1, *shading.shape[-2:]), GREY_ALBEDO) * shading
    texture_lit = extract_texture(photo, screen, assets.uv_sampler, assets.face_eye_mask, fallback.clamp(0, 1))
    albedo = texture_lit / shading.clamp(min=DELIGHT_FLOOR)
    return Avatar(codes=codes, albedo_uv=albedo.clamp(0, 1.5), source=source, key=key)


def demo_identity(deca: DECA, seed: int = 1) -> Avatar:
    """A second identity defined by codes alone (demo pack): seeded shape, albedo and detail, frontal light.

    Needs no photo and no face detection, so `--target demo` always works with the demo pack.
    """
    g = torch.Generator().manual_seed(seed)
    n = lambda *shape, scale=1.0: (torch.randn(*shape, generator=g) * scale).to(deca.device)  # noqa: E731
    light = default_light("cpu")
    codes = Codes(shape=n(1, 100, scale=0.8), tex=n(1, 50, scale=0.8), exp=n(1, 50, scale=0.0),
                  pose=torch.zeros(1, 6, device=deca.device),
                  cam=torch.tensor([[10.0, 0.0, 0.024]], device=deca.device),
                  light=light.to(deca.device), detail=n(1, 128))
    return Avatar(codes=codes, albedo_uv=None, source=f"demo identity {seed}", key=f"demo-{seed}")


def load_avatar(deca: DECA, target: str, detector: FaceDetector, cache_dir: Optional[Path],
                texture: str = "auto", codes_from: str = "network") -> tuple[Avatar, bool]:
    """The avatar for `target` (a path or 'astronaut'), from the cache when possible. Returns (avatar, cached)."""
    if target == "demo":
        return demo_identity(deca), False
    image, raw = _image_bytes(target)
    key = avatar_key(raw, str(deca.pack.meta.get("weights_sha256", "")), f"{texture}|{codes_from}")
    path = cache_dir / f"avatar-{key}.npz" if cache_dir is not None else None
    if path is None:
        return _build(deca, image, detector, target, key, texture, codes_from, None), False
    cached = _read_cached(deca, path, target, key)
    if cached is not None:
        return cached, True
    with build_lock(path):  # commands started together build it once
        cached = _read_cached(deca, path, target, key)
        if cached is not None:
            return cached, True
        return _build(deca, image, detector, target, key, texture, codes_from, path), False


def _read_cached(deca: DECA, path: Path, target: str, key: str) -> Optional[Avatar]:
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as data:
            codes = Codes.from_numpy({k: data[k] for k in data.files if not k.startswith("_")}, device=deca.device)
            albedo = torch.as_tensor(data["_albedo_uv"], device=deca.device) if "_albedo_uv" in data.files else None
        return Avatar(codes=codes, albedo_uv=albedo, source=target, key=key)
    except (OSError, ValueError, KeyError):
        path.unlink(missing_ok=True)  # a damaged cache entry is rebuilt, never trusted
        return None


def _build(deca: DECA, image, detector: FaceDetector, target: str, key: str, texture: str, codes_from: str,
           path: Optional[Path]) -> Avatar:
    from .console import notice

    notice(f"building the avatar of {target!r} (once per photo and pack; cached)...")
    avatar = build_avatar(deca, image, detector, target, key, texture, codes_from)
    if path is not None:
        arrays = avatar.codes.numpy()
        if avatar.albedo_uv is not None:
            arrays["_albedo_uv"] = avatar.albedo_uv.cpu().numpy().astype(np.float32)
        buf = io.BytesIO()
        np.savez(buf, **arrays)
        write_bytes_atomic(path, buf.getvalue())
    return avatar


__all__ = ["Avatar", "ImageError", "avatar_key", "build_avatar", "demo_identity", "load_avatar"]
