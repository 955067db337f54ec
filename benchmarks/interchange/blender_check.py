"""Import a `.glb` take into Blender and check that its animation plays (run by Blender, not by Python):

    blender -b --factory-startup --python benchmarks/interchange/blender_check.py -- TAKE.glb [EXPECTED.json]

Prints one JSON line `BLENDER_CHECK {...}`: the armature and its bones, the shape keys, the action(s) and
their frame range, and the evaluated mesh at the first and last keys (how far the vertices moved between them). With
EXPECTED.json (`frames` [K] scene frames, `vertices` [K, N, 3] in glTF's axes, as tests/test_gltf.py computes
them from the file), also the largest distance between Blender's evaluated mesh and those vertices.
Exit status 0 when the checks pass, 1 otherwise. Plain Python (Debian's Blender has no numpy).
"""
import json
import sys

import bpy

try:  # Blender 3.4's glTF importer uses `np.bool`, which NumPy 1.24 removed (Debian 12 ships such a NumPy)
    import numpy

    if "bool" not in numpy.__dict__:
        numpy.bool = bool
except ImportError:
    pass  # the importer needs NumPy: the import below then fails and says so

argv = sys.argv[sys.argv.index("--") + 1:] if "--" in sys.argv else []
path = argv[0]
expected = json.load(open(argv[1])) if len(argv) > 1 else None

bpy.ops.wm.read_factory_settings(use_empty=True)
bpy.ops.import_scene.gltf(filepath=path)
scene = bpy.context.scene
report = {"file": path, "fps": scene.render.fps / scene.render.fps_base}
arm = [o for o in scene.objects if o.type == "ARMATURE"]
meshes = [o for o in scene.objects if o.type == "MESH"]
report["armatures"] = [o.name for o in arm]
report["bones"] = [b.name for b in arm[0].data.bones] if arm else []
mesh = meshes[0]
keys = mesh.data.shape_keys.key_blocks if mesh.data.shape_keys else []
report["shape_keys"] = len(keys) - 1 if keys else 0  # minus the Basis
report["first_shape_keys"] = [k.name for k in list(keys)[1:6]]
report["actions"] = {a.name: [float(a.frame_range[0]), float(a.frame_range[1]), len(a.fcurves)]
                     for a in bpy.data.actions}
report["vertices"] = len(mesh.data.vertices)


def evaluated(frame):
    scene.frame_set(int(frame), subframe=float(frame) - int(frame))
    graph = bpy.context.evaluated_depsgraph_get()
    ev = mesh.evaluated_get(graph)
    data = ev.to_mesh()
    world = mesh.matrix_world
    out = []
    for v in data.vertices:
        p = world @ v.co
        out.append((p.x, p.z, -p.y))  # Blender's z-up back to glTF's y-up
    ev.to_mesh_clear()
    return out


def max_diff(p, q):
    return max(abs(a - b) for u, v in zip(p, q) for a, b in zip(u, v))


ranges = [a.frame_range for a in bpy.data.actions]
lo, hi = min(r[0] for r in ranges), max(r[1] for r in ranges)
a, b = evaluated(lo), evaluated(hi)
report["moved_max_m"] = max_diff(a, b)
ok = bool(arm) and report["shape_keys"] > 0 and bool(report["actions"]) and report["moved_max_m"] > 1e-4
if expected is not None:
    errors = []
    for frame, verts in zip(expected["frames"], expected["vertices"]):
        got = evaluated(float(frame))
        errors.append(max_diff(got, verts) if len(got) == len(verts) else float("inf"))
    report["max_error_vs_expected_m"] = errors
    ok = ok and max(errors) < float(expected["tolerance"])
report["ok"] = ok
print("BLENDER_CHECK " + json.dumps(report))
sys.exit(0 if ok else 1)
