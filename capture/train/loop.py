"""What both stages share: encoders in the two training modes, the run folder, checkpoints, the CSV log."""
from __future__ import annotations

import csv
import hashlib
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Iterable, Optional

import torch
import torch.nn.functional as F
from torch import nn

from ..artifacts import atomic_write
from ..assets import load_pack
from ..assets.official import PACK_FILES
from ..nets import INPUT_SIZE, NETWORK_NAMES, ResNet50Encoder, build_networks, fold_batchnorms
from .config import ConfigError
from .dataset import Batch, FaceDataset

if TYPE_CHECKING:
    from .renderer import TrainRenderer

CHECKPOINT = "deca_model.tar"
STATE = "train_state.pt"


def encoder_input(images: torch.Tensor) -> torch.Tensor:
    """Crops at the render size -> [B, 3, 224, 224], the only size the encoders take."""
    if images.shape[-1] == INPUT_SIZE:
        return images
    return F.interpolate(images, size=(INPUT_SIZE, INPUT_SIZE), mode="bilinear", align_corners=False)


def freeze_batchnorm(module: nn.Module) -> None:
    """BatchNorm layers keep their running statistics: batches of a few images give too noisy statistics."""
    for m in module.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.eval()


FEATURE_PRECISIONS = ("auto", "float32", "bfloat16")


def feature_dtype(precision: str, device: torch.device | str = "cpu") -> torch.dtype:
    """The dtype a frozen backbone computes its cached features in (`data.feature_precision`).

    auto: bfloat16 on a CPU that computes it natively (AVX512-BF16 or AMX), else float32. Measured on one core
    of an AVX512-BF16 EPYC, ResNet-50 at 224: 66 ms a crop in bfloat16 against 154 in float32; E_flame's features
    of demo-pack crops differ from float32's by 1.2 % rms, 3.5 % of their spread between faces (what the
    standardised head learns from). Only the head is trained on them; inference runs float32 as before.
    Without native support bfloat16 is emulated (slower than float32), hence the check.
    """
    if precision not in FEATURE_PRECISIONS:
        raise ConfigError(f"data.feature_precision must be one of {', '.join(FEATURE_PRECISIONS)}, not {precision!r}")
    if precision == "auto":
        # torch's own CPU-feature probes (private: a torch without them means "not known to be native")
        probes = [getattr(torch.cpu, name, None) for name in ("_is_avx512_bf16_supported", "_is_amx_tile_supported")]
        native = torch.device(device).type == "cpu" and any(probe() for probe in probes if probe is not None)
        return torch.bfloat16 if native else torch.float32
    return torch.bfloat16 if precision == "bfloat16" else torch.float32


class TrainableEncoder:
    """E_flame or E_detail, trained whole (`train_backbone`) or as its MLP head on cached backbone features.

    Fine-tuning mode computes each fixed crop's 2048-d backbone feature once (`FaceDataset.crop_scales`), so a
    step costs an MLP instead of a ResNet-50; the checkpoint still holds the whole encoder. `standardise_head`
    then trains the first head layer in standardised feature coordinates (see there).
    """

    def __init__(self, encoder: ResNet50Encoder, train_backbone: bool, feature_precision: str = "auto"):
        self.encoder, self.train_backbone = encoder, bool(train_backbone)
        self.feature_dtype = feature_dtype(feature_precision, next(encoder.parameters()).device)
        self._features: dict[tuple[int, int], torch.Tensor] = {}
        self._standard: Optional[tuple[torch.Tensor, torch.Tensor, nn.Parameter, nn.Parameter]] = None
        self._frozen: Optional[nn.Module] = None  # the backbone's inference copy (`features`)
        encoder.requires_grad_(False)
        (encoder if train_backbone else encoder.layers).requires_grad_(True)

    def head_parameters(self) -> list[nn.Parameter]:
        if self._standard is None:
            return list(self.encoder.layers.parameters())
        return [self._standard[2], self._standard[3], *self.encoder.layers[2].parameters()]

    def param_groups(self, lr: float, lr_backbone: float) -> list[dict]:
        """The MLP head at `lr`; the backbone (when trained) at `lr_backbone`."""
        groups = [{"params": self.head_parameters(), "lr": lr}]
        if self.train_backbone:
            groups.append({"params": list(self.encoder.encoder.parameters()), "lr": lr_backbone})
        return groups

    def train(self) -> None:
        self.encoder.train()
        freeze_batchnorm(self.encoder)

    def cache_key(self, data: FaceDataset) -> str:
        """What the cached features depend on: backbone weights and precision, images (names, sizes, times),
        crops, size."""
        h = hashlib.sha256(f"{self.feature_dtype}/batchnorm folded".encode())
        for name, t in self.encoder.encoder.state_dict().items():
            h.update(name.encode())
            h.update(t.detach().cpu().contiguous().numpy().tobytes())
        for e in data.entries:
            st = (data.root / "images" / e.name).stat()
            h.update(f"{e.name}:{st.st_size}:{st.st_mtime_ns};".encode())
        h.update(data.crop_scales.tobytes())
        h.update(str(data.render_size).encode())
        return h.hexdigest()

    def cache_all(self, data: FaceDataset, reuse: Iterable[Path] = (), save: Optional[Path] = None,
                  chunk: int = 16) -> torch.Tensor:
        """Backbone features of every cached crop of `data` ([N * crops, 2048]), computed now in chunks.

        reuse: feature files (`save` of an earlier run) to take them from when their key matches (a coarse run
        started from a pretrain run on the same data skips the ResNet-50 passes); save: where to write them.
        """
        keys = [(i, c) for i in range(len(data)) for c in range(data.crop_scales.shape[1])]
        key = self.cache_key(data)
        for path in reuse:
            stored = _read_feature_file(Path(path))
            if stored is not None and stored["key"] == key and stored["features"].shape[0] == len(keys):
                self._features.update(zip(keys, stored["features"]))
                break
        for start in range(0, len(keys), chunk):
            part = [k for k in keys[start:start + chunk] if k not in self._features]
            if part:
                self.features(data.batch([i for i, _ in part], crops=[c for _, c in part]))
        feats = torch.stack([self._features[k] for k in keys])
        if save is not None:
            save.parent.mkdir(parents=True, exist_ok=True)
            torch.save({"key": key, "features": feats}, save)
        return feats

    def standardise_head(self, data: FaceDataset, reuse: Iterable[Path] = (), save: Optional[Path] = None) -> None:
        """Train the head's first Linear on standardised features: W' = W diag(sd), b' = b + W mean.

        The same function (the checkpoint gets W = W' / sd, b = b' - W mean back, `sync`), but Adam's steps
        act on centred, unit-spread inputs: on raw features, which share a large common part across faces,
        an update mostly shifts every face's code alike, and the per-face differences (jaw, expression) are
        learnt many times slower. Fine-tuning mode only (the features must be fixed).
        """
        if self.train_backbone:
            raise ValueError("standardise_head needs fixed backbone features (train_backbone = false)")
        feats = self.cache_all(data, reuse, save)
        mean = feats.mean(0)
        sd = feats.std(0)
        sd = sd.clamp_min(1e-3 * float(sd.mean().clamp_min(1e-12)))  # features constant on this data: no blow-up
        lin = self.encoder.layers[0]
        with torch.no_grad():
            w = nn.Parameter(lin.weight * sd)
            b = nn.Parameter(lin.bias + lin.weight @ mean)
        lin.requires_grad_(False)
        self._standard = (mean, sd, w, b)

    def sync(self) -> None:
        """Fold the standardised head back into the encoder's own Linear (before saving)."""
        if self._standard is None:
            return
        mean, sd, w, b = self._standard
        lin = self.encoder.layers[0]
        with torch.no_grad():
            lin.weight.copy_(w / sd)
            lin.bias.copy_(b - lin.weight @ mean)

    def features(self, batch: Batch) -> torch.Tensor:
        keys = list(zip(batch.index.tolist(), batch.crop.tolist()))
        todo = [j for j, k in enumerate(keys) if k not in self._features]
        if todo:
            if any(keys[j][1] < 0 for j in todo):
                raise ValueError("fine-tuning mode needs cached crops: sample batches with fresh=False")
            if self._frozen is None:
                # the backbone is frozen here: an inference copy with its BatchNorms folded into the convolutions
                # (~15 % faster), channels-last (the same convolutions ~1.3x faster on the CPU for these batches)
                self._frozen = fold_batchnorms(self.encoder.encoder).to(memory_format=torch.channels_last)
            backbone = self._frozen
            images = encoder_input(batch.images[todo]).contiguous(memory_format=torch.channels_last)
            low = self.feature_dtype != torch.float32
            with torch.no_grad(), torch.autocast(images.device.type, dtype=self.feature_dtype, enabled=low):
                feats = backbone(images).float()
            for j, f in zip(todo, feats):
                self._features[keys[j]] = f
        return torch.stack([self._features[k] for k in keys])

    def __call__(self, batch: Batch) -> torch.Tensor:
        if self.train_backbone:
            return self.encoder(encoder_input(batch.images))
        feats = self.features(batch)
        if self._standard is None:
            return self.encoder.layers(feats)
        mean, sd, w, b = self._standard
        hidden = torch.relu(F.linear((feats - mean) / sd, w, b))
        return self.encoder.layers[2](hidden)


def resolve_checkpoint(path: str | Path) -> Path:
    """A run folder, a pack folder or a deca_model.tar -> the checkpoint file."""
    path = Path(path)
    for candidate in (path, path / "pack" / CHECKPOINT, path / CHECKPOINT):
        if candidate.is_file():
            return candidate
    raise FileNotFoundError(f"{path}: no {CHECKPOINT} there (give a run folder, a pack folder or the file itself)")


def load_networks(path: str | Path) -> dict[str, nn.Module]:
    """Trainable copies of the three networks from a checkpoint (strictly validated)."""
    ckpt = torch.load(resolve_checkpoint(path), map_location="cpu", weights_only=True)
    nets = build_networks(ckpt)
    return {"E_flame": nets.e_flame, "E_detail": nets.e_detail, "D_detail": nets.d_detail}


def write_run_pack(out: Path, base_pack_dir: Path, networks: dict[str, nn.Module], note: str) -> Path:
    """RUN/pack/: a complete model pack (the base pack's files linked, the trained deca_model.tar written).

    `--assets RUN/pack` then works with every command; `load_pack(RUN/pack)` validates it like any pack.
    """
    pack = out / "pack"
    pack.mkdir(parents=True, exist_ok=True)
    for f in PACK_FILES:
        src = base_pack_dir / f.name
        dst = pack / f.name
        if f.name == CHECKPOINT or not src.is_file() or dst.exists():
            continue
        try:
            os.symlink(src.resolve(), dst)
        except OSError:  # no symlinks on this file system: copy
            dst.write_bytes(src.read_bytes())
    meta_path = base_pack_dir / "pack.json"
    meta = json.loads(meta_path.read_text()) if meta_path.is_file() else {}
    meta.pop("weights_sha256", None)
    meta["trained"] = note
    (pack / "pack.json").write_text(json.dumps(meta, indent=2) + "\n")
    # standard layout: fine-tuning keeps its frozen backbone channels-last, which a loaded pack would adopt
    ckpt = {name: {k: v.detach().cpu().clone(memory_format=torch.contiguous_format)
                   for k, v in networks[name].state_dict().items()}
            for name in NETWORK_NAMES}
    with atomic_write(pack / CHECKPOINT) as tmp:
        torch.save(ckpt, tmp)
    return pack


class CsvLog:
    """RUN/<stage>_log.csv: one row per logged step; columns fixed by the first row."""

    def __init__(self, path: Path, append: bool):
        self.path, self.columns = path, None
        if append and path.is_file():
            with open(path, newline="") as fh:
                header = next(csv.reader(fh), None)
            self.columns = header
        elif path.exists():
            path.unlink()

    def write(self, row: dict) -> None:
        if self.columns is None:
            self.columns = list(row)
            with open(self.path, "w", newline="") as fh:
                csv.writer(fh).writerow(self.columns)
        with open(self.path, "a", newline="") as fh:
            csv.writer(fh).writerow([f"{row[c]:.6g}" if isinstance(row.get(c), float) else row.get(c, "")
                                     for c in self.columns])


def progress(total: int, initial: int, desc: str, enabled: bool):
    from ..console import progress_bar

    return progress_bar(total, initial=initial, desc=desc, disable=not enabled, leave=True)


def warmup_factor(step: int, warmup_steps: int) -> float:
    """Learning-rate multiplier at 0-based `step`: rises linearly to 1 over `warmup_steps` steps.

    Adam's first updates move every weight by about the full learning rate whatever its gradient, which on the
    pretrained heads throws the codes (camera, pose) far off before the moment estimates settle; the ramp
    keeps those first steps small. It depends on the step alone, so a resumed run continues the same ramp.
    """
    if warmup_steps <= 0:
        return 1.0
    return min(1.0, (step + 1) / warmup_steps)


def adam(params: Iterable, lr: float) -> torch.optim.Adam:
    """Adam over `params` (tensors or param groups), fused where torch has a fused kernel for them (CPU and CUDA):
    one pass over the parameters instead of a dozen per tensor (the 2.3 M-parameter head on one core: 5.9 ->
    0.6 ms a step). The same update up to rounding."""
    params = list(params)
    try:
        return torch.optim.Adam(params, lr=lr, fused=True)
    except (RuntimeError, TypeError, ValueError):  # no fused kernel for these tensors (device, dtype, torch)
        return torch.optim.Adam(params, lr=lr)


def run_stage(stage: str, *, data: FaceDataset, pack_dir: Path, out: Path, networks: dict[str, nn.Module],
              params: Iterable[nn.Parameter], step_fn, cfg: dict, resume: Optional[Path], show_progress: bool,
              modules_for_train, fresh_crops: bool, before_save=lambda: None) -> list[dict]:
    """The loop both stages run: sample, losses, step, log, checkpoint. Returns the logged rows.

    before_save: called before each checkpoint (folds reparametrised weights back into the networks).
    """
    out.mkdir(parents=True, exist_ok=True)
    stage_cfg = cfg[stage]
    optimizer = adam(params, stage_cfg["lr"])
    base_lrs = [g["lr"] for g in optimizer.param_groups]
    start = 0
    state_path = out / f"{stage}_{STATE}"
    if resume is not None:
        rs = Path(resume) / f"{stage}_{STATE}" if Path(resume).is_dir() else None
        if rs is not None and rs.is_file():
            state = torch.load(rs, map_location="cpu", weights_only=True)
            optimizer.load_state_dict(state["optimizer"])
            start = int(state["step"])
    import numpy as np

    rng = np.random.default_rng(cfg["data"]["seed"] + start)
    log = CsvLog(out / f"{stage}_log.csv", append=start > 0)
    rows, t0 = [], time.perf_counter()
    steps = int(stage_cfg["steps"])
    bar = progress(steps, start, stage, show_progress)
    for step in range(start, steps):
        modules_for_train()
        batch = data.sample(cfg["data"]["identities_per_batch"], rng, fresh=fresh_crops)
        terms, total = step_fn(batch)
        factor = warmup_factor(step, stage_cfg["warmup_steps"])
        for group, lr in zip(optimizer.param_groups, base_lrs):
            group["lr"] = lr * factor
        optimizer.zero_grad(set_to_none=True)
        total.backward()
        optimizer.step()
        row = {"step": step + 1, "total": float(total.detach()), **{k: float(v.detach()) for k, v in terms.items()},
               "seconds": time.perf_counter() - t0}
        rows.append(row)
        if (step + 1) % stage_cfg["log_every"] == 0:
            log.write(row)
        bar.set_postfix({k: f"{v:.3g}" for k, v in row.items() if k not in ("step", "seconds")}, refresh=False)
        bar.update(1)
        if (step + 1) % stage_cfg["checkpoint_every"] == 0 or step + 1 == steps:
            before_save()
            write_run_pack(out, pack_dir, networks, f"{stage} stage, step {step + 1}")
            torch.save({"step": step + 1, "optimizer": optimizer.state_dict(), "config": json.dumps(cfg)}, state_path)
    bar.close()
    if start >= steps:
        before_save()
        write_run_pack(out, pack_dir, networks, f"{stage} stage, step {start}")
    return rows


def _read_feature_file(path: Path) -> Optional[dict]:
    """A saved feature cache {"key", "features"}, or None when absent or unreadable (it is only a cache)."""
    if not path.is_file():
        return None
    try:
        stored = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:  # noqa: BLE001 - a damaged cache is recomputed, never fatal
        return None
    if not isinstance(stored, dict) or not isinstance(stored.get("key"), str) \
            or not isinstance(stored.get("features"), torch.Tensor) or stored["features"].ndim != 2:
        return None
    return stored


def feature_cache_files(name: str, out: Path, init, resume) -> tuple[list[Path], Path]:
    """Where `name`'s cached backbone features may be found (resume, init, this run) and where they are saved."""
    own = Path(out) / f"features_{name}.pt"
    found = [Path(d) / f"features_{name}.pt" for d in (resume, init) if d is not None and Path(d).is_dir()]
    return found + [own], own


def load_base_pack(assets: Optional[str]):
    from ..assets import resolve_pack_dir

    pack_dir = resolve_pack_dir(assets or "demo")
    return pack_dir, load_pack(pack_dir)


@dataclass
class StageInputs:
    """What both stages start from: the base pack, the networks to train, the data and the renderer."""

    pack_dir: Path
    pack: object
    networks: dict[str, nn.Module]
    data: FaceDataset
    renderer: "TrainRenderer"


def prepare_stage(data_dir, cfg: dict, *, assets: Optional[str], init, resume) -> StageInputs:
    """Base pack, weights (resume > init > the pack's own), dataset with the config's crops, renderer."""
    from ..model_assets import ModelAssets  # imported here: these pull in the whole render stack
    from .renderer import TrainRenderer

    pack_dir, pack = load_base_pack(assets)
    start_from = resume if resume is not None else (init if init is not None else pack_dir)
    networks = load_networks(resolve_checkpoint(start_from))
    dcfg = cfg["data"]
    data = FaceDataset(data_dir, k=dcfg["k_per_identity"], render_size=dcfg["render_size"],
                       scale_min=dcfg["scale_min"], scale_max=dcfg["scale_max"],
                       crops_per_image=dcfg["crops_per_image"], seed=dcfg["seed"])
    renderer = TrainRenderer(ModelAssets.build(pack, fused_lbs=False), dcfg["render_size"])
    return StageInputs(pack_dir, pack, networks, data, renderer)

