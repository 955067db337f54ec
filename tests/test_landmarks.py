"""MediaPipe face mesh -> iBUG-68: the correspondence table checked on a real face (skimage's astronaut)."""
from __future__ import annotations

import numpy as np
import pytest

from capture.crop import FaceDetector
from capture.landmarks import IBUG68_MIRROR, MESH_TO_IBUG68, ibug68_from_mesh
from capture.stills import astronaut


@pytest.fixture(scope="module")
def meshes():
    image = astronaut()
    with FaceDetector() as det:
        face = det.detect(image)[0]
        flipped = det.detect(np.ascontiguousarray(image[:, ::-1]))[0]
    return image.shape[1], face.landmarks, flipped.landmarks


def test_table_is_a_mirror_symmetric_permutation():
    assert len(set(MESH_TO_IBUG68)) == 68
    assert sorted(IBUG68_MIRROR.tolist()) == list(range(68))
    assert (IBUG68_MIRROR[IBUG68_MIRROR] == np.arange(68)).all()


def test_mirror_pairs_swap_on_a_mirrored_photo(meshes):
    """iBUG point k on the mirrored photo is iBUG point mirror(k) on the photo, mirrored: the table's left and
    right halves are the same anatomical points (MediaPipe's mesh is itself symmetric)."""
    w, mesh, mesh_flipped = meshes
    p = ibug68_from_mesh(mesh)
    q = ibug68_from_mesh(mesh_flipped)
    q[:, 0] = (w - 1) - q[:, 0]
    iod = np.linalg.norm(p[36] - p[45])
    err = np.linalg.norm(q - p[IBUG68_MIRROR], axis=1) / iod
    assert err[17:].max() < 0.06  # inner points
    assert err[:17].max() < 0.12  # the jaw contour is a silhouette: looser


def test_points_are_where_ibug_puts_them(meshes):
    """Order and side on a frontal face: subject's right (image left) first, as in iBUG."""
    _, mesh, _ = meshes
    p = ibug68_from_mesh(mesh)
    x, y = p[:, 0], p[:, 1]
    assert np.all(np.diff(y[0:9]) > 0) and np.all(np.diff(y[8:17]) < 0)  # jaw: down to the chin, then up
    assert x[:8].max() < x[8] < x[9:17].min()  # ... from the image left to the right
    assert y[8] == y[:17].max()  # chin lowest
    assert x[36] < x[39] < x[42] < x[45]  # eye corners left to right
    assert y[37] < y[41] and y[44] < y[46]  # upper lids above lower lids
    assert y[[19, 24]].max() < y[[37, 44]].min()  # brows above eyes
    assert y[27] < y[28] < y[29] < y[30]  # nose bridge down to the tip
    assert x[48] < x[51] < x[54] and y[51] < y[62] <= y[66] < y[57]  # mouth: corners, lips top to bottom
    assert abs(x[8] - x[27]) < 0.1 * (x[16] - x[0])  # midline points on the midline
