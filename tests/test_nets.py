"""DECA networks (capture.nets) and the demo checkpoint (capture.assets.demo_weights).

References are independent of the code under test: key lists and shapes written out from docs/formats.md 2.5,
forward passes written with torch.nn.functional from the architecture facts (docs/formats.md 2.2, 2.4).
"""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from capture.assets.demo_weights import make_demo_checkpoint
from capture.nets import (
    CODE_LAYOUT,
    DetailGenerator,
    ResNet50Encoder,
    build_networks,
    checkpoint_spec,
    detail_input,
    fold_batchnorms,
)

C0 = 1.0 / math.sqrt(4.0 * math.pi)  # SH band-0 constant, 0.282095
BLOCKS = (3, 4, 6, 3)
WIDTHS = ((64, 256), (128, 512), (256, 1024), (512, 2048))


# ----------------------------------------------------------------------------------------------------------
# Independent references


def expected_encoder_keys(out: int) -> dict[str, tuple[int, ...]]:
    """The E_flame / E_detail state dict written out from docs/formats.md 2.5."""
    keys: dict[str, tuple[int, ...]] = {}

    def bn(prefix: str, n: int) -> None:
        for p in ("weight", "bias", "running_mean", "running_var"):
            keys[f"{prefix}.{p}"] = (n,)
        keys[f"{prefix}.num_batches_tracked"] = ()

    keys["encoder.conv1.weight"] = (64, 3, 7, 7)
    bn("encoder.bn1", 64)
    in_ch = 64
    for li, (n_blocks, (width, out_ch)) in enumerate(zip(BLOCKS, WIDTHS), start=1):
        for b in range(n_blocks):
            p = f"encoder.layer{li}.{b}"
            keys[f"{p}.conv1.weight"] = (width, in_ch, 1, 1)
            bn(f"{p}.bn1", width)
            keys[f"{p}.conv2.weight"] = (width, width, 3, 3)
            bn(f"{p}.bn2", width)
            keys[f"{p}.conv3.weight"] = (out_ch, width, 1, 1)
            bn(f"{p}.bn3", out_ch)
            if b == 0:
                keys[f"{p}.downsample.0.weight"] = (out_ch, in_ch, 1, 1)
                bn(f"{p}.downsample.1", out_ch)
            in_ch = out_ch
    keys.update({"layers.0.weight": (1024, 2048), "layers.0.bias": (1024,)})
    keys.update({"layers.2.weight": (out, 1024), "layers.2.bias": (out,)})
    return keys


def ref_bn(x, sd, prefix, eps=1e-5):
    return F.batch_norm(
        x, sd[f"{prefix}.running_mean"], sd[f"{prefix}.running_var"], sd[f"{prefix}.weight"], sd[f"{prefix}.bias"],
        training=False, eps=eps,
    )


def ref_bottleneck(x, sd, p, stride):
    y = F.relu(ref_bn(F.conv2d(x, sd[f"{p}.conv1.weight"]), sd, f"{p}.bn1"))
    y = F.relu(ref_bn(F.conv2d(y, sd[f"{p}.conv2.weight"], stride=stride, padding=1), sd, f"{p}.bn2"))
    y = ref_bn(F.conv2d(y, sd[f"{p}.conv3.weight"]), sd, f"{p}.bn3")
    if f"{p}.downsample.0.weight" in sd:
        x = ref_bn(F.conv2d(x, sd[f"{p}.downsample.0.weight"], stride=stride), sd, f"{p}.downsample.1")
    return F.relu(y + x)


def ref_encoder(x, sd, features_only: bool = False):
    x = F.relu(ref_bn(F.conv2d(x, sd["encoder.conv1.weight"], stride=2, padding=3), sd, "encoder.bn1"))
    x = F.max_pool2d(x, 3, stride=2, padding=1)
    for li, n_blocks in enumerate(BLOCKS, start=1):
        for b in range(n_blocks):
            x = ref_bottleneck(x, sd, f"encoder.layer{li}.{b}", 2 if (b == 0 and li > 1) else 1)
    x = F.avg_pool2d(x, 7, stride=1).flatten(1)
    if features_only:
        return x
    x = F.relu(F.linear(x, sd["layers.0.weight"], sd["layers.0.bias"]))
    return F.linear(x, sd["layers.2.weight"], sd["layers.2.bias"])


def ref_detail(z, sd, eps_after=0.8):
    x = F.linear(z, sd["l1.0.weight"], sd["l1.0.bias"]).view(-1, 128, 8, 8)
    x = ref_bn(x, sd, "conv_blocks.0", eps=1e-5)
    for conv, bn in ((2, 3), (6, 7), (10, 11), (14, 15), (18, 19)):
        x = F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=False)
        x = F.conv2d(x, sd[f"conv_blocks.{conv}.weight"], sd[f"conv_blocks.{conv}.bias"], padding=1)
        x = F.leaky_relu(ref_bn(x, sd, f"conv_blocks.{bn}", eps=eps_after), 0.2)
    x = F.conv2d(x, sd["conv_blocks.21.weight"], sd["conv_blocks.21.bias"], padding=1)
    return torch.tanh(x) * 0.01


def randomise_bn(module: torch.nn.Module, gen: torch.Generator) -> dict[str, torch.Tensor]:
    """Non-trivial BN statistics and affine parameters, so that eps and the stats order matter."""
    with torch.no_grad():
        for m in module.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                n = m.num_features
                m.running_mean.copy_(0.2 * torch.randn(n, generator=gen))
                m.running_var.copy_(0.3 + 1.5 * torch.rand(n, generator=gen))
                m.weight.copy_(0.6 + 0.8 * torch.rand(n, generator=gen))
                m.bias.copy_(0.1 * torch.randn(n, generator=gen))
    return {k: v.clone() for k, v in module.state_dict().items()}


def face_crop(img: np.ndarray, cx: float, cy: float, side: float) -> torch.Tensor:
    from skimage.transform import resize

    if img.ndim == 2:
        img = np.repeat(img[..., None], 3, axis=2)
    h = side / 2
    crop = img[int(cy - h) : int(cy + h), int(cx - h) : int(cx + h), :3]
    crop = resize(crop, (224, 224), anti_aliasing=True)  # float64 in [0, 1]
    return torch.from_numpy(crop.astype(np.float32)).permute(2, 0, 1)


@pytest.fixture(scope="module")
def demo(demo_pack):
    """make_demo_checkpoint(0), as the session's demo pack holds it (written by whichever worker built the pack)."""
    return demo_pack.checkpoint


@pytest.fixture(scope="module")
def demo_nets(demo):
    return build_networks(demo)


@pytest.fixture(scope="module")
def two_faces():
    import skimage.data

    astronaut = face_crop(skimage.data.astronaut(), 228, 125, 200)
    cameraman = face_crop(skimage.data.camera(), 215, 140, 170)  # never seen by the calibration
    return torch.stack([astronaut, cameraman])


# ----------------------------------------------------------------------------------------------------------
# Code layout


def test_code_layout_matches_formats_table():
    s = CODE_LAYOUT.slices
    assert [(n, s[n].start, s[n].stop) for n in CODE_LAYOUT.names] == [
        ("shape", 0, 100), ("tex", 100, 150), ("exp", 150, 200),
        ("pose", 200, 206), ("cam", 206, 209), ("light", 209, 236),
    ]
    assert CODE_LAYOUT.total == 236 and CODE_LAYOUT.n_detail == 128
    code = torch.arange(2 * 236, dtype=torch.float32).reshape(2, 236)
    parts = CODE_LAYOUT.split(code)
    assert parts["light"].shape == (2, 9, 3)
    # light[b, k, c] is SH coefficient k of colour channel c: code[b, 209 + 3k + c]
    assert parts["light"][1, 4, 2].item() == code[1, 209 + 3 * 4 + 2].item()
    assert parts["pose"][0, 3].item() == 203.0  # jaw starts at 203
    assert torch.equal(CODE_LAYOUT.join(parts), code)
    with pytest.raises(ValueError, match="236"):
        CODE_LAYOUT.split(code[:, :200])


def test_detail_input_order_is_jaw_exp_detail():
    jaw, exp, det = torch.full((1, 3), 1.0), torch.full((1, 50), 2.0), torch.full((1, 128), 3.0)
    z = detail_input(jaw, exp, det)
    assert z.shape == (1, 181)
    assert z[0, :3].eq(1).all() and z[0, 3:53].eq(2).all() and z[0, 53:].eq(3).all()


# ----------------------------------------------------------------------------------------------------------
# Checkpoint specification


def test_parameter_counts_and_key_counts():
    spec = checkpoint_spec()
    counts = {}
    with torch.device("meta"):  # shapes are all that is counted
        modules = {"E_flame": ResNet50Encoder(236), "E_detail": ResNet50Encoder(128), "D_detail": DetailGenerator()}
    for name, module in modules.items():
        counts[name] = round(sum(p.numel() for p in module.parameters()) / 1e6, 2)
    assert counts == {"E_flame": 25.85, "E_detail": 25.74, "D_detail": 1.77}
    assert {k: len(v) for k, v in spec.items()} == {"E_flame": 322, "E_detail": 322, "D_detail": 44}
    assert sum(k.endswith("num_batches_tracked") for k in spec["E_flame"]) == 53


def test_encoder_spec_equals_formats_listing():
    spec = checkpoint_spec()
    assert spec["E_flame"] == expected_encoder_keys(236)
    assert spec["E_detail"] == expected_encoder_keys(128)


def test_spot_checks_from_formats():
    e, d = checkpoint_spec()["E_flame"], checkpoint_spec()["D_detail"]
    assert e["encoder.conv1.weight"] == (64, 3, 7, 7)
    assert e["encoder.bn1.num_batches_tracked"] == ()
    assert e["encoder.layer2.0.conv2.weight"] == (128, 128, 3, 3)
    assert e["encoder.layer3.5.conv3.weight"] == (1024, 256, 1, 1)
    for layer, shape in zip((1, 2, 3, 4), ((256, 64), (512, 256), (1024, 512), (2048, 1024))):
        assert e[f"encoder.layer{layer}.0.downsample.0.weight"] == shape + (1, 1)
        assert e[f"encoder.layer{layer}.0.downsample.1.running_var"] == (shape[0],)
    assert e["layers.0.weight"] == (1024, 2048) and e["layers.2.weight"] == (236, 1024) and e["layers.2.bias"] == (236,)
    assert "encoder.fc.weight" not in e
    assert d["l1.0.weight"] == (8192, 181) and d["l1.0.bias"] == (8192,)
    convs = {2: (128, 128), 6: (64, 128), 10: (64, 64), 14: (32, 64), 18: (16, 32), 21: (1, 16)}
    for i, (cout, cin) in convs.items():
        assert d[f"conv_blocks.{i}.weight"] == (cout, cin, 3, 3) and d[f"conv_blocks.{i}.bias"] == (cout,)
    for i, n in zip((0, 3, 7, 11, 15, 19), (128, 128, 64, 64, 32, 16)):
        for p in ("weight", "bias", "running_mean", "running_var"):
            assert d[f"conv_blocks.{i}.{p}"] == (n,)
        assert d[f"conv_blocks.{i}.num_batches_tracked"] == ()
    assert not any(k.startswith(f"conv_blocks.{i}.") for i in (1, 4, 5, 8, 9, 12, 13, 16, 17, 20, 22) for k in d)


def test_fresh_modules_use_torchvision_init():
    torch.manual_seed(0)
    enc = ResNet50Encoder(236)
    w = enc.encoder.layer3[1].conv2.weight  # (256, 256, 3, 3)
    fan_out = 256 * 3 * 3
    assert abs(w.std().item() - math.sqrt(2.0 / fan_out)) < 0.02 * math.sqrt(2.0 / fan_out)
    assert torch.all(enc.encoder.layer3[1].bn2.weight == 1) and torch.all(enc.encoder.layer3[1].bn2.bias == 0)


# ----------------------------------------------------------------------------------------------------------
# Forward passes against torch.nn.functional


def test_bottleneck_and_whole_encoder_match_functional_reference():
    gen = torch.Generator().manual_seed(1)
    torch.manual_seed(1)
    enc = ResNet50Encoder(236).eval()
    sd = randomise_bn(enc, gen)
    x = torch.rand(1, 3, 224, 224, generator=gen)
    with torch.no_grad():
        # block 0 of layer 2: stride 2 on the 3x3 conv, projection shortcut
        h = torch.randn(2, 256, 28, 28, generator=gen)
        block_ref = ref_bottleneck(h, sd, "encoder.layer2.0", 2)
        torch.testing.assert_close(enc.encoder.layer2[0](h), block_ref, rtol=1e-5, atol=1e-5)
        assert enc.encoder.layer2[0](h).shape == (2, 512, 14, 14)
        out, ref = enc(x), ref_encoder(x, sd)
    assert out.shape == (1, 236)
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)


def test_folded_batchnorms_give_the_reference_features_and_leave_the_backbone_alone():
    gen = torch.Generator().manual_seed(2)
    enc = ResNet50Encoder(236).eval()
    sd = randomise_bn(enc, gen)
    before = {k: v.clone() for k, v in enc.state_dict().items()}
    folded = fold_batchnorms(enc.encoder)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in folded.modules())
    assert sum(isinstance(m, torch.nn.Conv2d) for m in folded.modules()) == 53
    x = torch.rand(2, 3, 224, 224, generator=gen)
    with torch.no_grad():  # against the reference in float64: folding rounds differently, not less accurately
        ref = ref_encoder(x.double(), {k: v.double() for k, v in sd.items()}, features_only=True)
        scale = float(ref.abs().max())
        for inputs in (x, x.contiguous(memory_format=torch.channels_last)):
            torch.testing.assert_close(folded(inputs).double(), ref, rtol=0, atol=1e-6 * scale)
        torch.testing.assert_close(enc.encoder(x).double(), ref, rtol=0, atol=1e-6 * scale)  # as the unfolded one
    assert all(torch.equal(v, before[k]) for k, v in enc.state_dict().items())
    assert any(isinstance(m, torch.nn.BatchNorm2d) for m in enc.modules())


def test_encoder_rejects_other_sizes():
    enc = ResNet50Encoder(128)
    with pytest.raises(ValueError, match=r"224, 224.*\(1, 3, 256, 256\)"):
        enc(torch.zeros(1, 3, 256, 256))


def test_detail_generator_matches_functional_reference_and_eps_matters():
    gen = torch.Generator().manual_seed(2)
    torch.manual_seed(2)
    dec = DetailGenerator().eval()
    sd = randomise_bn(dec, gen)
    z = torch.randn(2, 181, generator=gen)
    with torch.no_grad():
        out = dec(z)
    assert out.shape == (2, 1, 256, 256)
    assert out.abs().max() <= 0.01
    # compare the tanh values (output / 0.01) at 1e-5
    torch.testing.assert_close(out / 0.01, ref_detail(z, sd) / 0.01, rtol=0, atol=1e-5)
    wrong_eps = ref_detail(z, sd, eps_after=1e-5) / 0.01
    assert (out / 0.01 - wrong_eps).abs().max() > 1e-2  # 1000x the tolerance: eps 0.8 is really used


# ----------------------------------------------------------------------------------------------------------
# Strict loading


def test_build_networks_loads_exactly(demo, demo_nets, two_faces):
    assert not demo_nets.e_flame.training and not demo_nets.d_detail.training
    sd = demo["E_flame"]
    with torch.no_grad():
        torch.testing.assert_close(demo_nets.e_flame(two_faces), ref_encoder(two_faces, sd), rtol=1e-5, atol=1e-5)


def test_missing_key_is_named(demo):
    broken = dict(demo, E_flame={k: v for k, v in demo["E_flame"].items() if k != "encoder.layer3.2.conv2.weight"})
    with pytest.raises(ValueError, match=r"E_flame.*missing keys: encoder\.layer3\.2\.conv2\.weight"):
        build_networks(broken)


def test_wrong_shape_is_named_with_both_shapes(demo):
    e_detail = dict(demo["E_detail"])
    e_detail["layers.2.weight"] = demo["E_flame"]["layers.2.weight"]  # 236 rows where E_detail has 128
    with pytest.raises(ValueError, match=r"E_detail.*layers\.2\.weight: expected \(128, 1024\), found \(236, 1024\)"):
        build_networks(dict(demo, E_detail=e_detail))


def test_unexpected_key_and_missing_network_are_named(demo):
    d = dict(demo["D_detail"], **{"conv_blocks.23.weight": torch.zeros(1)})
    with pytest.raises(ValueError, match=r"D_detail.*unexpected keys: conv_blocks\.23\.weight"):
        build_networks(dict(demo, D_detail=d))
    with pytest.raises(ValueError, match="D_detail"):
        build_networks({"E_flame": demo["E_flame"], "E_detail": demo["E_detail"]})


def test_missing_batch_counters_are_tolerated_and_extras_ignored(demo):
    stripped = {n: {k: v for k, v in sd.items() if not k.endswith("num_batches_tracked")} for n, sd in demo.items()}
    stripped["opt"] = {"lr": 1e-4}
    nets = build_networks(stripped)
    assert nets.e_detail.encoder.bn1.num_batches_tracked.item() == 0
    assert nets.d_detail.conv_blocks[3].eps == 0.8


# ----------------------------------------------------------------------------------------------------------
# Demo checkpoint


def test_demo_checkpoint_has_official_keys_shapes_dtypes(demo):
    spec = checkpoint_spec()
    assert set(demo) == {"E_flame", "E_detail", "D_detail"}
    for name, sd in demo.items():
        assert {k: tuple(v.shape) for k, v in sd.items()} == spec[name]
        for k, v in sd.items():
            assert v.device.type == "cpu"
            assert v.dtype == (torch.int64 if k.endswith("num_batches_tracked") else torch.float32), k
            assert torch.isfinite(v.float()).all(), k


@pytest.mark.slow
def test_demo_checkpoint_is_deterministic_and_leaves_global_rng(demo):
    state = torch.random.get_rng_state()
    again = make_demo_checkpoint(0)
    assert torch.equal(state, torch.random.get_rng_state())
    for name in demo:
        for k in demo[name]:
            assert torch.equal(demo[name][k], again[name][k]), (name, k)


def test_demo_codes_are_plausible_and_depend_on_the_image(demo_nets, two_faces):
    with torch.no_grad():
        parts = CODE_LAYOUT.split(demo_nets.e_flame(two_faces))
        detail = demo_nets.e_detail(two_faces)
    for name, std_range, max_abs in (("shape", (0.15, 1.0), 2.5), ("tex", (0.15, 1.0), 2.5), ("exp", (0.2, 1.2), 3.0)):
        std = parts[name].std(dim=1)
        assert torch.all((std > std_range[0]) & (std < std_range[1])), (name, std)
        assert parts[name].abs().max() < max_abs, name
    pose, cam, light = parts["pose"], parts["cam"], parts["light"]
    assert pose[:, :3].abs().max() < 0.25
    assert torch.all((pose[:, 3] > -0.1) & (pose[:, 3] < 0.3)), pose[:, 3]  # jaw opening about x
    assert pose[:, 4:].abs().max() < 0.05
    assert torch.all((cam[:, 0] > 9.0) & (cam[:, 0] < 11.0)) and cam[:, 1:].abs().max() < 0.1
    assert torch.all((C0 * light[:, 0] - 1.0).abs() < 0.15), light[:, 0]  # ambient ~ 1 in every channel
    assert torch.all((light[:, 3] > 0.1) & (light[:, 3] < 0.5))  # frontal (+z) band-1 term
    assert light[:, 4:].abs().max() < 0.3
    assert torch.all((detail.std(dim=1) > 0.4) & (detail.std(dim=1) < 1.6)) and detail.mean(dim=1).abs().max() < 0.5
    # different faces, different expressions (exp carries most of it; the jaw spread is only 0.06 rad)
    assert (parts["exp"][0] - parts["exp"][1]).abs().mean() > 0.2
    assert (pose[0, 3:] - pose[1, 3:]).abs().max() > 0.005


def test_demo_displacement_is_millimetric_smooth_and_expression_dependent(demo_nets, two_faces):
    with torch.no_grad():
        parts = CODE_LAYOUT.split(demo_nets.e_flame(two_faces))
        detail = demo_nets.e_detail(two_faces)
        same_person = detail[:1].expand(2, -1)  # only jaw and exp differ between the two rows
        disp = demo_nets.d_detail(detail_input(parts["pose"][:, 3:], parts["exp"], same_person))
    std = disp.std(dim=(1, 2, 3))
    assert torch.all((std > 0.0004) & (std < 0.0012)), std
    assert disp.mean(dim=(1, 2, 3)).abs().max() < 0.001  # a few large blobs: the map mean is not ~0
    step = (disp[..., 1:] - disp[..., :-1]).abs().mean(dim=(1, 2, 3))
    assert torch.all(step < 0.1 * std), (step, std)  # neighbouring texels differ by << the overall spread
    assert (disp[0] - disp[1]).abs().mean() > 0.2 * std.mean()
