"""The procedural demo head: FLAME-shaped arrays that behave like a head (capture.assets.demo_head).

Geometry is checked with small self-written references (signed volume, a rotation about the jaw joint,
barycentric landmark lookup), never against earlier output of the generator.
"""
import numpy as np
import pytest

from capture.assets.demo_head import EXPRESSION_NAMES, DemoHead, make_demo_head

# iBUG-68 mirror pairs (subject's right <-> left) and midline points.
MIRROR = ([(k, 16 - k) for k in range(8)]
          + [(17, 26), (18, 25), (19, 24), (20, 23), (21, 22), (31, 35), (32, 34)]
          + [(36, 45), (37, 44), (38, 43), (39, 42), (40, 47), (41, 46)]
          + [(48, 54), (49, 53), (50, 52), (55, 59), (56, 58), (60, 64), (61, 63), (65, 67)])
MIDLINE = [8, 27, 28, 29, 30, 33, 51, 57, 62, 66]


@pytest.fixture(scope="module")
def head() -> DemoHead:
    return make_demo_head(seed=0)


@pytest.fixture(scope="module")
def small() -> DemoHead:
    return make_demo_head(seed=0, n_vertices=600, albedo_resolution=32)


@pytest.fixture(params=["default", "small"])
def any_head(request, head, small) -> DemoHead:
    return head if request.param == "default" else small


def points_on_mesh(vertices, faces, face_idx, bary):
    """Barycentric points: sum_k bary[..., k] * vertices[faces[face_idx, k]]."""
    corners = vertices[faces[face_idx]]  # [..., 3, 3]
    return (np.asarray(bary, np.float64)[..., None] * corners).sum(-2)


def landmarks68(h: DemoHead, vertices=None):
    v = h.v_template if vertices is None else vertices
    return points_on_mesh(v, h.faces, h.full_lmk_faces_idx[0], h.full_lmk_bary_coords[0])


def rotate_jaw(h: DemoHead, angle: float):
    """Linear blend skinning of a single jaw rotation about +x (the other joints at rest)."""
    joints = h.J_regressor @ h.v_template
    c, s = np.cos(angle), np.sin(angle)
    R = np.array([[1, 0, 0], [0, c, -s], [0, s, c]])
    rotated = (h.v_template - joints[2]) @ R.T + joints[2]
    w = h.weights[:, 2:3]
    return (1 - w) * h.v_template + w * rotated


def test_shapes_and_dtypes(head):
    V = head.v_template.shape[0]
    F = head.faces.shape[0]
    T = head.uvcoords.shape[0]
    assert 4500 <= V <= 5500
    assert T >= V
    R = 256
    expected = {
        "v_template": ((V, 3), np.float64), "faces": ((F, 3), np.int64),
        "shapedirs": ((V, 3, 400), np.float64), "posedirs": ((V, 3, 36), np.float64),
        "J_regressor": ((5, V), np.float64), "weights": ((V, 5), np.float64),
        "kintree_table": ((2, 5), np.int64), "uvcoords": ((T, 2), np.float64), "uvfaces": ((F, 3), np.int64),
        "static_lmk_faces_idx": ((51,), np.int64), "static_lmk_bary_coords": ((51, 3), np.float64),
        "dynamic_lmk_faces_idx": ((79, 17), np.int64), "dynamic_lmk_bary_coords": ((79, 17, 3), np.float32),
        "full_lmk_faces_idx": ((1, 68), np.int64), "full_lmk_bary_coords": ((1, 68, 3), np.float32),
        "uv_face_eye_mask": ((256, 256, 4), np.uint8), "uv_face_mask": ((256, 256, 4), np.uint8),
        "fixed_displacement": ((256, 256), np.float64), "mean_texture": ((512, 512, 3), np.uint8),
        "albedo_mean": ((R * R * 3,), np.float32), "albedo_basis": ((R * R * 3, 50), np.float32),
    }
    for name, (shape, dtype) in expected.items():
        arr = getattr(head, name)
        assert arr.shape == shape, name
        assert arr.dtype == dtype, name
    np.testing.assert_array_equal(head.kintree_table, [[4294967295, 0, 1, 1, 1], [0, 1, 2, 3, 4]])
    assert head.faces.min() == 0 and head.faces.max() == V - 1
    assert head.uvfaces.min() == 0 and head.uvfaces.max() == T - 1
    # Every vertex is used; no degenerate triangles.
    assert np.unique(head.faces).size == V
    assert np.all(np.diff(np.sort(head.faces, 1), axis=1) > 0)


def test_head_size_and_placement(head):
    v = head.v_template
    width = v[:, 0].max() - v[:, 0].min()
    assert 0.14 < width < 0.20  # ear to ear
    assert abs(v[:, 0].mean()) < 1e-3  # symmetric
    assert v[:, 1].max() < 0.15 and v[:, 1].min() > -0.2
    nose_tip = landmarks68(head)[30]
    assert nose_tip[2] == pytest.approx(v[:, 2].max(), abs=0.005)  # the face looks toward +z


def test_regressor_and_weight_rows(any_head):
    h = any_head
    assert np.all(h.J_regressor >= 0) and np.all(h.weights >= 0)
    np.testing.assert_allclose(h.J_regressor.sum(1), 1.0, atol=1e-12)
    np.testing.assert_allclose(h.weights.sum(1), 1.0, atol=1e-12)


def test_joint_positions(any_head):
    h = any_head
    J = h.J_regressor @ h.v_template
    root, neck, jaw, eye_l, eye_r = J
    lmk = landmarks68(h)
    assert root[1] < neck[1] < jaw[1] < eye_l[1]  # neck base, neck, jaw hinge, eyes, from the bottom up
    np.testing.assert_allclose(J[:3, 0], 0.0, atol=1e-9)  # on the midline
    assert jaw[2] < lmk[62][2] - 0.05  # the hinge is well behind the mouth
    # Eyes: left (+x) and right (-x) at the eyeball centres, between the eye corners.
    assert eye_l[0] > 0 > eye_r[0]
    np.testing.assert_allclose(eye_l, eye_r * [-1, 1, 1], atol=1e-9)
    for eye, corners in ((eye_l, (42, 45)), (eye_r, (36, 39))):
        mid = lmk[list(corners)].mean(0)
        assert np.linalg.norm(mid[:2] - eye[:2]) < 0.006
        assert eye[2] < mid[2]  # behind the lids
        radius = np.linalg.norm(h.v_template[h.weights[:, 3 if eye is eye_l else 4] == 1] - eye, axis=1)
        assert radius.max() - radius.min() < 1e-9  # a sphere around the joint
        assert 0.009 < radius.mean() < 0.015


def test_outward_winding(any_head):
    h = any_head
    tri = h.v_template[h.faces]
    signed_volume = np.einsum("ij,ij->i", tri[:, 0], np.cross(tri[:, 1], tri[:, 2])).sum() / 6.0
    assert 2e-3 < signed_volume < 6e-3  # 2 to 6 litres, positive: counter-clockwise seen from outside
    normals = np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0])
    # Eyeball triangles face away from their joint.
    J = h.J_regressor @ h.v_template
    for joint in (3, 4):
        on_eye = np.all(h.weights[h.faces, joint] == 1.0, axis=1)
        assert on_eye.sum() > 10
        outward = np.einsum("ij,ij->i", normals[on_eye], tri[on_eye].mean(1) - J[joint])
        assert np.all(outward > 0)
    # Around the nose tip and on the crown the normals point forward / up.
    tip = landmarks68(h)[30]
    near_tip = np.linalg.norm(tri.mean(1) - tip, axis=1) < 0.004
    assert np.all(normals[near_tip][:, 2] > 0)
    top = tri.mean(1)[:, 1] > h.v_template[:, 1].max() - 0.01
    assert np.all(normals[top][:, 1] > 0)


def test_jaw_rotation_opens_the_mouth(any_head):
    h = any_head
    rest = landmarks68(h)
    opened = landmarks68(h, rotate_jaw(h, 0.3))
    # At rest the inner lips touch: the mesh is cut there (separate upper and lower vertices).
    assert np.linalg.norm(rest[62] - rest[66]) < 1e-3
    for lower in (57, 66):
        assert opened[lower][1] < rest[lower][1] - 0.006  # the lower lip goes down by more than 6 mm
    assert np.linalg.norm(opened[8] - rest[8]) > 0.01  # so does the chin (mostly backwards: it is below the hinge)
    for upper in (51, 62, 33):
        assert np.linalg.norm(opened[upper] - rest[upper]) < 5e-4  # upper lip and nose stay
    assert np.linalg.norm(opened[62] - opened[66]) > 0.008
    # The eyes do not move with the jaw.
    assert np.all(h.weights[h.weights[:, 3] > 0, 2] == 0)


def edges_away_from_the_mouth(h: DemoHead, margin: float = 0.02):
    """Edges [E, 2] with both ends farther than `margin` from the mouth line (where the lips part)."""
    f = h.faces
    edges = np.concatenate([f[:, [0, 1]], f[:, [1, 2]], f[:, [2, 0]]])
    lmk = landmarks68(h)
    a, b = lmk[48], lmk[54]
    p = h.v_template
    t = np.clip((p - a) @ (b - a) / np.dot(b - a, b - a), 0, 1)
    dist = np.linalg.norm(p - (a + t[:, None] * (b - a)), axis=1)
    return edges[np.all(dist[edges] > margin, axis=1)]


def test_skinning_weights_are_smooth(head):
    edges = edges_away_from_the_mouth(head)
    for joint in range(5):
        w = head.weights[:, joint]
        assert np.abs(w[edges[:, 0]] - w[edges[:, 1]]).max() < 0.3, joint


def test_landmark_layout(any_head):
    h = any_head
    lmk = landmarks68(h)
    v = h.v_template
    assert np.all(lmk >= v.min(0) - 1e-9) and np.all(lmk <= v.max(0) + 1e-9)
    eyes_y = lmk[36:48, 1].mean()
    assert eyes_y > lmk[30, 1] > lmk[51, 1] > lmk[57, 1] > lmk[8, 1]  # eyes, nose tip, lips, chin
    assert lmk[17:27, 1].min() > lmk[36:48, 1].max()  # brows above the eyes
    assert lmk[30, 2] == lmk[:, 2].max()  # the nose tip is the most forward point
    # Subject's right is -x: image-left points first.
    assert lmk[36, 0] < lmk[39, 0] < 0 < lmk[42, 0] < lmk[45, 0]
    assert lmk[0, 0] < lmk[36, 0] and lmk[16, 0] > lmk[45, 0]
    assert lmk[36, 0] < lmk[48, 0] < lmk[54, 0] < lmk[45, 0]  # mouth narrower than the eyes
    assert lmk[37, 1] > lmk[41, 1] and lmk[44, 1] > lmk[46, 1]  # upper lids above lower lids
    eye_w = lmk[45, 0] - lmk[42, 0]
    assert 0.015 < eye_w < 0.035
    for a, b in MIRROR:
        np.testing.assert_allclose(lmk[a], lmk[b] * [-1, 1, 1], atol=1.5e-3, err_msg=f"{a} vs {b}")
    np.testing.assert_allclose(lmk[MIDLINE, 0], 0.0, atol=1e-3)
    # Static embedding = the last 51 of the full one.
    np.testing.assert_array_equal(h.full_lmk_faces_idx[0, 17:], h.static_lmk_faces_idx)
    np.testing.assert_allclose(h.full_lmk_bary_coords[0, 17:], h.static_lmk_bary_coords, atol=1e-6)
    for bary in (h.static_lmk_bary_coords, h.dynamic_lmk_bary_coords, h.full_lmk_bary_coords):
        assert np.all(bary >= 0)
        np.testing.assert_allclose(bary.sum(-1), 1.0, atol=1e-5)


def test_dynamic_contour_follows_the_silhouette(any_head):
    h = any_head
    v, f = h.v_template, h.faces
    contour = points_on_mesh(v, f, h.dynamic_lmk_faces_idx, h.dynamic_lmk_bary_coords)  # [79, 17, 3]
    np.testing.assert_array_equal(h.dynamic_lmk_faces_idx[0], h.full_lmk_faces_idx[0, :17])
    # Negative yaw mirrors positive yaw (the head is symmetric): row 39 + k <-> row k, point j <-> 16 - j.
    for k in (10, 25, 39):
        np.testing.assert_allclose(contour[39 + k], contour[k][::-1] * [-1, 1, 1], atol=1.5e-3)
    # Turning the face toward +x (yaw > 0) hides the +x cheek: its contour moves toward the midline.
    assert np.all(contour[30, 14:17, 0] < contour[0, 14:17, 0] - 0.002)
    # The moved points lie on the silhouette: the surface normal is perpendicular to the view there.
    tri = v[f]
    fn = np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0])
    vn = np.zeros_like(v)
    for k in range(3):
        np.add.at(vn, f[:, k], fn)
    n = points_on_mesh(vn, f, h.dynamic_lmk_faces_idx[30], h.dynamic_lmk_bary_coords[30])
    n /= np.linalg.norm(n, axis=1, keepdims=True)
    yaw = np.deg2rad(30)
    view = np.array([-np.sin(yaw), 0.0, np.cos(yaw)])
    assert np.all(np.abs(n[14:17] @ view) < 0.35)
    assert np.all(contour[:, :, 1] < landmarks68(h)[36:48, 1].mean())  # the contour is on the lower face


def test_uv_layout(any_head):
    h = any_head
    assert h.uvcoords.min() >= 0.0 and h.uvcoords.max() <= 1.0
    uv = h.uvcoords[h.uvfaces]
    area = np.cross(uv[:, 1] - uv[:, 0], uv[:, 2] - uv[:, 0])
    assert np.all(area > 0)  # no fold-overs: every triangle keeps its orientation in the map
    # The face is in the middle of the map.
    lmk_uv = points_on_mesh(h.uvcoords, h.uvfaces, h.full_lmk_faces_idx[0], h.full_lmk_bary_coords[0])
    assert np.all(np.abs(lmk_uv[:, 0] - 0.5) < 0.36)
    assert np.all((lmk_uv[:, 1] > 0.15) & (lmk_uv[:, 1] < 0.9))
    assert lmk_uv[27, 1] > lmk_uv[30, 1] > lmk_uv[51, 1] > lmk_uv[57, 1]  # v up


def texel(image, uv):
    """Image value at uv (row 0 = v = 1)."""
    H, W = image.shape[:2]
    return image[min(int((1.0 - uv[1]) * H), H - 1), min(int(uv[0] * W), W - 1)]


def test_masks(any_head):
    h = any_head
    face_eye, face = h.uv_face_eye_mask, h.uv_face_mask
    for m in (face_eye, face):
        assert np.all(m[..., 3] == 255)
        assert np.array_equal(m[..., 0], m[..., 1]) and np.array_equal(m[..., 0], m[..., 2])
        assert len(np.unique(m[..., 0])) > 100  # soft edges
    cover_eye = np.mean(face_eye[..., 0] > 127)
    cover = np.mean(face[..., 0] > 127)
    assert 0.25 < cover_eye < 0.45
    assert 0.2 < cover < cover_eye
    lmk_uv = points_on_mesh(h.uvcoords, h.uvfaces, h.full_lmk_faces_idx[0], h.full_lmk_bary_coords[0])
    for k in (30, 51, 57, 19, 24):
        assert texel(face_eye, lmk_uv[k])[0] == 255 and texel(face, lmk_uv[k])[0] == 255
    assert face_eye[0, 128, 0] == 0 and face_eye[128, 0, 0] == 0  # crown and back of the head


def test_fixed_displacement(any_head):
    d = any_head.fixed_displacement
    assert np.abs(d).max() < 2e-3
    assert 1e-4 < np.abs(d).mean() < 4e-4
    assert 0.8 < np.mean(d != 0) < 0.95
    # Smooth: neighbouring texels differ by a small fraction of the range.
    assert np.abs(np.diff(d, axis=0)).max() < 0.25 * (d.max() - d.min())
    assert np.abs(np.diff(d, axis=1)).max() < 0.25 * (d.max() - d.min())


def test_mean_texture_and_albedo(any_head):
    h = any_head
    tex = h.mean_texture.astype(float) / 255
    lmk_uv = points_on_mesh(h.uvcoords, h.uvfaces, h.full_lmk_faces_idx[0], h.full_lmk_bary_coords[0])
    skin = texel(tex, 0.5 * (lmk_uv[30] + lmk_uv[19]) * [1, 1] + [0.06, 0])  # cheek-ish
    lip = texel(tex, lmk_uv[57] + 0.3 * (lmk_uv[66] - lmk_uv[57]))
    brow = texel(tex, lmk_uv[19])
    assert skin[0] > skin[1] > skin[2] and skin.mean() > 0.5  # skin tone
    assert lip[0] - lip[1] > skin[0] - skin[1]  # lips redder
    assert brow.mean() < 0.6 * skin.mean()  # brows darker
    # The eyeballs' front poles are dark pupils inside light sclera.
    for joint in (3, 4):
        ids = np.flatnonzero(h.weights[:, joint] == 1)
        front = ids[np.argmax(h.v_template[ids, 2])]
        face = np.flatnonzero(np.any(h.faces == front, axis=1))[0]
        uv = h.uvcoords[h.uvfaces[face][list(h.faces[face]).index(front)]]
        assert texel(tex, uv).mean() < 0.2
    # Albedo mean: BGR, rows top to bottom, same picture as the mean texture.
    R = int(round(np.sqrt(h.albedo_mean.size / 3)))
    mu = h.albedo_mean.reshape(R, R, 3)[..., ::-1]
    assert mu.min() >= 0 and mu.max() <= 1
    for uv in (lmk_uv[57] + 0.3 * (lmk_uv[66] - lmk_uv[57]), lmk_uv[30], lmk_uv[19] + [0, 0.05]):
        np.testing.assert_allclose(texel(mu, uv), texel(tex, uv), atol=0.12)
    basis = h.albedo_basis.reshape(R, R, 3, 50)
    assert np.sum(np.abs(basis).max(axis=(0, 1, 2)) > 0) >= (50 if R >= 128 else 45)
    for k in range(10):
        for sign in (-2, 2):
            varied = mu + sign * basis[..., ::-1, k]
            assert varied.min() > -0.1 and varied.max() < 1.15  # plausible colours at two standard deviations


def test_lid_and_lip_margin_lines(head):
    """Dark lash lines on the lid margins and a lip line along the slit, on the texels of the rim and slit
    vertices (so they move with the lids and lips), for the face mesh trackers to find the lids and the lips."""
    tex = head.mean_texture.astype(float) / 255
    lmk_uv = points_on_mesh(head.uvcoords, head.uvfaces, head.full_lmk_faces_idx[0], head.full_lmk_bary_coords[0])
    skin = texel(tex, 0.5 * (lmk_uv[30] + lmk_uv[19]) + [0.06, 0]).mean()
    for k in (37, 38, 43, 44):  # upper lid margins
        assert texel(tex, lmk_uv[k]).mean() < 0.35 * skin, k
    for k in (40, 41, 46, 47):  # lower lid margins: a lighter line
        assert texel(tex, lmk_uv[k]).mean() < 0.75 * skin, k
    lip = texel(tex, lmk_uv[57] + 0.3 * (lmk_uv[66] - lmk_uv[57])).mean()
    for k in (61, 62, 63):  # the slit (the upper and the lower lips share these texels)
        assert texel(tex, lmk_uv[k]).mean() < 0.75 * lip, k


def test_blendshapes(any_head):
    h = any_head
    mag = np.linalg.norm(h.shapedirs, axis=1).max(axis=0)  # [400] metres per unit coefficient
    ident, expr = mag[:300], mag[300:]
    assert 0.002 < ident[0] < 0.008  # a unit coefficient: a few mm
    assert ident[:10].mean() > 3 * ident[-10:].mean() > 0  # decreasing importance
    n_designed = len(EXPRESSION_NAMES)
    # Designed components: 1.0 = a strong real expression, a few mm to a centimetre; the random fill is weaker.
    assert np.all(expr[:n_designed] > 0.003) and np.all(expr[:n_designed] < 0.012)
    assert np.all(expr[n_designed:] > 0) and np.all(expr[n_designed:] < 0.0016)
    edges = edges_away_from_the_mouth(h)
    length = np.linalg.norm(h.v_template[edges[:, 0]] - h.v_template[edges[:, 1]], axis=1)
    lids_and_brows = ("eyeClose", "eyeWide", "browUp", "browDown", "browInnerUp")
    for c in (0, 5, 150, 299) + tuple(range(300, 300 + n_designed)) + (300 + n_designed, 350):
        d = h.shapedirs[:, :, c]
        strain = np.linalg.norm(d[edges[:, 0]] - d[edges[:, 1]], axis=1) / length
        name = EXPRESSION_NAMES[c - 300] if 300 <= c < 300 + n_designed else ""
        # Smooth fields: no tearing, no sharp creases. The skin between a lid's rim and its brow stretches
        # (in a real face it unfolds from under the lid crease), the more so as the lid's motion fades out
        # below the brow, which a closing eye leaves in place.
        assert strain.max() < (1.8 if name.startswith(lids_and_brows) else 0.5 if name else 0.35), (c, name)
    eyes = h.weights[:, 3] == 1
    eye_shift = h.shapedirs[eyes][:, :, :300]
    np.testing.assert_allclose(eye_shift, np.broadcast_to(eye_shift[:1], eye_shift.shape), atol=1e-12)  # rigid
    assert np.all(h.shapedirs[eyes][:, :, 300:] == 0)
    # Expressions act on the face, not on the back of the head.
    back = h.v_template[:, 2] < -0.05
    assert np.abs(h.shapedirs[back][:, :, 300:]).max() < 1e-4
    pose = np.linalg.norm(h.posedirs, axis=1).max(axis=0)
    assert pose.max() < 0.006 and np.all(pose[18:] == 0)  # small; nothing for the eyes
    assert pose[9:18].max() > 0.001  # the jaw has correctives


def test_deterministic_per_seed(small):
    again = make_demo_head(seed=0, n_vertices=600, albedo_resolution=32)
    np.testing.assert_array_equal(small.faces, again.faces)
    # Same seed, same head. Bit-identity is not promised: numpy's SIMD reductions may round differently with an
    # array's memory alignment (CI saw 1e-17 differences in near-zero shapedirs entries), so floats are compared
    # to 1e-12 of each array's scale -- nine orders of magnitude below what another seed changes.
    for name in ("v_template", "shapedirs", "weights", "dynamic_lmk_bary_coords", "mean_texture", "albedo_basis"):
        a, b = getattr(small, name), getattr(again, name)
        np.testing.assert_allclose(a, b, rtol=0, atol=1e-12 * float(np.abs(a).max()), err_msg=name)
    other = make_demo_head(seed=1, n_vertices=600, albedo_resolution=32)
    np.testing.assert_array_equal(other.faces, small.faces)  # same topology
    change = np.abs(other.v_template - small.v_template).max()
    assert 1e-4 < change < 0.01  # slightly different proportions


def test_small_variant(small):
    assert 450 <= small.v_template.shape[0] <= 750
    assert small.albedo_mean.shape == (32 * 32 * 3,)
    assert small.albedo_basis.shape == (32 * 32 * 3, 50)


def test_rejects_tiny_meshes():
    with pytest.raises(ValueError, match="n_vertices"):
        make_demo_head(n_vertices=100)


# ---------------------------------------------------------------------------------------------------------------
# The designed expression components (EXPRESSION_NAMES): what each column does at 1.0, checked on the landmarks
# and on the eyeballs, with the geometry computed here (linear blendshapes: v + c * shapedirs[..., 300 + k]).

EYE_RADIUS = 0.0122
LID_CLEARANCE = 0.0003
# (eyeball joint, upper-lid landmarks, the lower-lid landmarks they close onto)
EYES = {"L": (3, (43, 44), (47, 46)), "R": (4, (37, 38), (41, 40))}


def expr_column(h: DemoHead, name: str) -> np.ndarray:
    return h.shapedirs[:, :, 300 + EXPRESSION_NAMES.index(name)]


def lmk_moves(h: DemoHead, name: str, coefficient: float = 1.0) -> np.ndarray:
    """[68, 3] landmark displacement (metres) of one expression column at `coefficient`."""
    return landmarks68(h, h.v_template + coefficient * expr_column(h, name)) - landmarks68(h)


def head_mirror(h: DemoHead) -> np.ndarray:
    """mirror[i]: the head vertex at vertex i's mirror image (x -> -x); -1 for eyeball vertices and for the
    mouth slit's two copies of each point (upper and lower lip: the same position, told apart by topology)."""
    from scipy.spatial import cKDTree

    on_head = np.flatnonzero(h.weights[:, 3] + h.weights[:, 4] == 0)
    v = h.v_template[on_head]
    tree = cKDTree(v)
    dist, idx = tree.query(v * [-1, 1, 1])
    assert dist.max() < 1e-9  # the head (not the eyeballs, which expressions leave alone) is exactly symmetric
    twin = tree.query(v, k=2)[0][:, 1] < 1e-9
    assert twin.sum() < 0.05 * len(v)
    mirror = -np.ones(len(h.v_template), np.int64)
    mirror[on_head[~twin]] = on_head[idx[~twin]]
    return mirror


def test_expression_names():
    assert len(set(EXPRESSION_NAMES)) == len(EXPRESSION_NAMES) <= 50  # all within DECA's 50 columns
    for name in ("lipsPart", "eyeClose_L", "eyeClose_R", "browUp_L", "browUp_R", "browDown_L", "browDown_R",
                 "browInnerUp", "smile_L", "smile_R", "frown_L", "frown_R", "stretch_L", "stretch_R", "lipsPress",
                 "funnel", "pucker", "cheekRaise_L", "cheekRaise_R"):
        assert name in EXPRESSION_NAMES, name


@pytest.mark.parametrize("side", ["L", "R"])
def test_eye_closes_fully_over_the_eyeball(any_head, side):
    h = any_head
    joint, upper, lower = EYES[side]
    d = expr_column(h, f"eyeClose_{side}")
    centre = (h.J_regressor @ h.v_template)[joint]
    radius = np.linalg.norm(h.v_template[h.weights[:, joint] == 1] - centre, axis=1).mean()
    assert radius == pytest.approx(EYE_RADIUS, abs=1e-4)
    rest = landmarks68(h)
    closed = landmarks68(h, h.v_template + d)
    for a, b in zip(upper, lower):
        assert np.linalg.norm(rest[a] - rest[b]) > 0.006  # open at rest
        assert np.linalg.norm(closed[a] - closed[b]) < (0.0005 if h.n_vertices > 4000 else 0.0006), (a, b)
        assert closed[a][1] < rest[a][1] - 0.005  # the upper lid came down
        assert rest[b][1] < closed[b][1] < rest[b][1] + 0.003  # the lower lid rose a little
    # All the way from open to closed, every moving lid vertex stays outside the eyeball.
    moved = np.flatnonzero(np.linalg.norm(d, axis=1) > 1e-7)
    assert len(moved) >= 8
    for t in np.linspace(0.0, 1.0, 41):
        dist = np.linalg.norm(h.v_template[moved] + t * d[moved] - centre, axis=1)
        assert dist.min() >= radius + LID_CLEARANCE, t
    # The other eye, the brows' far ends and the mouth stay.
    other = EYES["R" if side == "L" else "L"]
    moves = np.linalg.norm(closed - rest, axis=1)
    assert moves[list(other[1] + other[2])].max() < 1e-4
    assert moves[48:68].max() < 1e-4


def test_no_expression_component_cuts_into_an_eyeball(head):
    """Every column DECA uses, at coefficients a fitter may reach, keeps the head out of both eyeballs."""
    h = head
    J = h.J_regressor @ h.v_template
    n = len(EXPRESSION_NAMES)
    on_head = h.weights[:, 3] + h.weights[:, 4] == 0
    near = on_head & (np.minimum(np.linalg.norm(h.v_template - J[3], axis=1),
                                 np.linalg.norm(h.v_template - J[4], axis=1)) < 0.03)
    for k in range(50):
        d = h.shapedirs[near, :, 300 + k]
        ts = np.linspace(0.0, 1.0, 11) if k < n else np.linspace(-3.0, 3.0, 13)  # designed: 0..1; random: +-3
        for t in ts:
            p = h.v_template[near] + t * d
            dist = np.minimum(np.linalg.norm(p - J[3], axis=1), np.linalg.norm(p - J[4], axis=1))
            assert dist.min() >= EYE_RADIUS + LID_CLEARANCE, (k, t)


def test_expression_components_keep_the_mesh_unfolded(any_head):
    h = any_head
    tri = h.v_template[h.faces]
    n0 = np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0])
    for name in EXPRESSION_NAMES:
        for t in (0.5, 1.0):
            tri = (h.v_template + t * expr_column(h, name))[h.faces]
            n1 = np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0])
            assert np.all(np.sum(n0 * n1, axis=1) > 0), (name, t)


def test_columns_move_the_landmarks_they_should(head):
    h = head
    mm = 1e-3
    m = {name: lmk_moves(h, name) for name in EXPRESSION_NAMES}
    rest = landmarks68(h)
    for s, sx, corner, other, brow, brow_other, inner in (("L", 1, 54, 48, 24, 19, 22), ("R", -1, 48, 54, 19, 24, 21)):
        smile = m[f"smile_{s}"]
        assert smile[corner][1] > 5 * mm and sx * smile[corner][0] > 3 * mm  # the corner goes up and out
        assert 8 * mm < np.linalg.norm(smile[corner]) < 11 * mm
        assert np.linalg.norm(smile[other]) < 0.5 * mm
        frown = m[f"frown_{s}"]
        assert frown[corner][1] < -5 * mm and np.linalg.norm(frown[other]) < 0.5 * mm
        stretch = m[f"stretch_{s}"]
        assert sx * stretch[corner][0] > 5 * mm and np.linalg.norm(stretch[other]) < 0.5 * mm
        up, down = m[f"browUp_{s}"], m[f"browDown_{s}"]
        assert 7 * mm < up[brow][1] < 10 * mm and np.linalg.norm(up[brow_other]) < 0.5 * mm
        assert down[brow][1] < -3 * mm and down[inner][1] < -4 * mm and sx * down[inner][0] < 0  # down and in
        assert np.linalg.norm(down[brow_other]) < 0.5 * mm
        _, upper, lower = EYES[s]
        assert np.abs(up[list(upper + lower)]).max() < 0.5 * mm  # a brow raise leaves the lid rims alone
        wide = m[f"eyeWide_{s}"]
        assert wide[list(upper), 1].min() > 2 * mm and np.abs(wide[list(lower)]).max() < 0.1 * mm
        cheek = m[f"cheekRaise_{s}"]
        assert cheek[list(lower), 1].min() > 1 * mm and np.abs(cheek[list(upper)]).max() < 0.1 * mm
        # Closing an eye leaves its brow where it is (MediaPipe on a render read a brow that sank 1.5 mm with the
        # lid as a lowered brow, against what real faces do).
        close = m[f"eyeClose_{s}"]
        brows = list(range(22, 27)) if s == "L" else list(range(17, 22))
        assert np.abs(close[brows]).max() < 0.3 * mm
    inner_up = m["browInnerUp"]
    assert inner_up[[21, 22], 1].min() > 4 * mm and inner_up[[17, 26], 1].max() < 0.5 * inner_up[[21, 22], 1].min()
    # Mouth: opening, pressing, rounding.
    part = m["lipsPart"]
    assert part[66][1] < -3 * mm and part[62][1] > 1 * mm and np.abs(part[[48, 54]]).max() < 0.5 * mm
    press = m["lipsPress"]
    assert press[51][1] < -1.5 * mm and press[57][1] > 1.5 * mm and press[51][2] < 0  # thinner, pulled in
    np.testing.assert_allclose(press[62], press[66], atol=1e-4)  # the lips stay together
    pucker = m["pucker"]

    def width(d):
        return (rest[54] + d[54] - rest[48] - d[48])[0]

    assert width(pucker) < width(np.zeros_like(pucker)) - 12 * mm and pucker[51][2] > 3 * mm
    np.testing.assert_allclose(pucker[62], pucker[66], atol=1e-4)
    funnel = m["funnel"]
    assert funnel[[51, 57], 2].min() > 3 * mm and (funnel[62] - funnel[66])[1] > 3 * mm
    assert m["sneer"][[31, 33, 35], 1].min() > 2 * mm
    assert m["mouthLeft"][[48, 51, 54, 57], 0].min() > 4 * mm
    puff = expr_column(h, "cheekPuff")
    cheek_points = np.flatnonzero(np.abs(np.abs(h.v_template[:, 0]) - 0.045) < 0.004)
    assert (np.abs(puff[cheek_points, 0]) * np.sign(h.v_template[cheek_points, 0])).max() > 3 * mm  # outward


def test_left_and_right_columns_are_mirror_images(any_head):
    h = any_head
    mirror = head_mirror(h)
    on_head = mirror >= 0
    flip = np.array([-1.0, 1.0, 1.0])
    for name in EXPRESSION_NAMES:
        d = expr_column(h, name)
        if name.endswith("_L"):
            right = expr_column(h, name[:-2] + "_R")
            np.testing.assert_allclose(right[on_head], d[mirror[on_head]] * flip, atol=1e-9, err_msg=name)
            assert np.abs(d[h.v_template[:, 0] < -0.02]).max() < 0.2 * np.abs(d).max()  # mostly on its side
        elif not name.endswith("_R") and name != "mouthLeft":
            np.testing.assert_allclose(d[on_head], d[mirror[on_head]] * flip, atol=1e-9, err_msg=name)
