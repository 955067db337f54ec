"""capture.Retargeter: frames and streams through the same session as the commands, checked against what is known
independently: the demo performer clip's jaw sequence, the input's timestamps and frame count, a frame without
a face passing through unchanged."""
from __future__ import annotations

import numpy as np
import pytest

from face_clips import make_face_clip


@pytest.fixture(scope="module")
def retargeter(demo_pack_dir):
    from capture import Retargeter

    with pytest.warns(UserWarning, match="SYNTHETIC"):
        rt = Retargeter(target="demo", assets="demo", backend="torch")
    yield rt
    rt.close()


@pytest.fixture(scope="module")
def performer(tmp_path_factory, retargeter):
    """The demo's performer clip: the demo head with a known jaw sequence (capture.demo)."""
    from capture.demo import render_performer_clip

    path = tmp_path_factory.mktemp("api") / "performer.mp4"
    seq = render_performer_clip(retargeter.model.deca, path, n_frames=40, size=(480, 360), fps=25.0)
    return path, seq


def test_process_returns_the_frame_with_named_channels_and_vertices(retargeter):
    from skimage.data import astronaut

    from capture.channels import ARKIT_NAMES

    image = astronaut()
    result = retargeter.process(image, time=0.0)
    assert result.face and not result.held
    assert result.image.shape == image.shape and result.image.dtype == np.uint8  # avatar layout: the input's size
    assert not np.array_equal(result.image, image)  # the avatar was drawn
    assert list(result.blendshapes) == list(ARKIT_NAMES)
    assert all(0.0 <= v <= 1.0 for v in result.blendshapes.values())
    assert result.vertices.shape == (retargeter.model.deca.flame.v_template.shape[0], 3)
    assert result.codes["exp"].shape == (50,) and len(result.head) == 3


def test_a_frame_without_a_face_passes_through_unchanged(retargeter):
    blank = np.full((240, 320, 3), 90, np.uint8)  # a new size: a new session, nothing to hold
    result = retargeter.process(blank, time=10.0)
    assert not result.face and result.codes is None and result.blendshapes is None and result.vertices is None
    assert np.array_equal(result.image, blank)


def test_stream_follows_the_performers_jaw(retargeter, performer):
    path, seq = performer
    results = list(retargeter.stream(str(path)))
    assert [r.index for r in results] == list(range(40))
    assert np.allclose([r.time for r in results], np.arange(40) / 25.0, atol=1e-3)  # the input's timestamps
    jaw_open = np.array([r.blendshapes["jawOpen"] if r.face else np.nan for r in results])
    assert np.isfinite(jaw_open).all()
    assert np.corrcoef(jaw_open, seq["jaw"])[0, 1] > 0.8
    assert retargeter.stats.frames_out == 40


def test_stream_with_a_callback(retargeter, tmp_path):
    clip = tmp_path / "clip.mp4"
    make_face_clip(clip, 12, audio=False)
    seen = []
    stats = retargeter.stream(str(clip), seen.append)
    assert [r.index for r in seen] == list(range(12)) and stats.frames_out == 12 and all(r.face for r in seen)
    # process() calls the networks alone, a file stream as capture.video does; torch's modules serve both
    model = retargeter.model
    assert model.inference.schedule == "alone" and model.inference_for("offline").schedule == "offline"
    assert model.inference_for("offline").engines is model.inference.engines


def test_breaking_out_of_a_stream_stops_reading(retargeter, performer):
    import threading

    path, _ = performer
    first = []
    for result in retargeter.stream(str(path)):
        first.append(result.index)
        if len(first) == 3:
            break
    assert first == [0, 1, 2]
    assert retargeter.stats.frames_in < 40  # back-pressure: the 40-frame clip was not read to the end
    assert not [t for t in threading.enumerate() if t.name == "capture-stream"]


def test_stream_reads_an_image_sequence_at_its_frame_rate(retargeter, tmp_path):
    from PIL import Image

    from face_clips import SIZE, _astronaut_frame

    for k, n in enumerate([1, 2, 4]):  # frame 3 was never rendered
        Image.fromarray(_astronaut_frame(k, SIZE)).save(tmp_path / f"shot_{n:03d}.png")
    results = list(retargeter.stream(str(tmp_path / "shot_%03d.png"), fps=24))
    assert np.allclose([r.time for r in results], [1 / 24, 2 / 24, 4 / 24]) and all(r.face for r in results)


def test_a_transparent_background_comes_with_the_coverage(demo_pack_dir):
    from skimage.data import astronaut

    from capture import Retargeter

    with pytest.warns(UserWarning, match="SYNTHETIC"):
        rt = Retargeter(target="demo", assets="demo", backend="torch", background="transparent")
    try:
        result = rt.process(astronaut(), time=0.0)
    finally:
        rt.close()
    assert result.face and result.alpha.shape == result.image.shape[:2]
    assert {0, 255} <= set(np.unique(result.alpha)) and result.alpha[0, 0] == 0
    assert (result.image[result.alpha == 0] == 0).all()  # black under what the head does not cover
    # the outline's pixels have their covered share, and the head's own colour (straight alpha, not darkened)
    edge = (result.alpha > 0) & (result.alpha < 255)
    assert 0 < edge.sum() < (result.alpha == 255).sum() / 4
    assert result.image[edge].mean() > 0.6 * result.image[result.alpha == 255].mean()
