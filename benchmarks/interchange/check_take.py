"""Check the take files of one `capture.video ... --export T.glb --export T.usda --export T.csv` run with the real
tools, and print what an animator would look at:

    python benchmarks/interchange/check_take.py T.glb T.usda T.csv [--validator DIR] [--no-blender]

- the Khronos glTF validator's counts and messages (node + `npm install gltf-validator` in DIR, default
  $GLTF_VALIDATOR_DIR or ~/.cache/capture/gltf-validator);
- Blender importing the .glb and playing it (blender_check.py beside this file; `apt-get install blender
  python3-numpy`);
- usd-core reading the time samples: fps, start/end, sample count;
- the jawOpen / eyeBlink curves in each file (CSV columns, USD attributes, glTF jaw rotation and eye morphs),
  how they agree, and how far the glTF rig is from the session's vertices (the USD points);
- file sizes.
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parents[1] / "tests"))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("glb")
    ap.add_argument("usd")
    ap.add_argument("csv")
    ap.add_argument("--validator", default=os.environ.get("GLTF_VALIDATOR_DIR",
                                                          str(Path.home() / ".cache/capture/gltf-validator")))
    ap.add_argument("--no-blender", action="store_true")
    args = ap.parse_args()
    ok = True
    for f in (args.glb, args.usd, args.csv):
        print(f"{f}: {os.path.getsize(f) / 1e6:.2f} MB")

    if shutil.which("node") and (Path(args.validator) / "node_modules" / "gltf-validator").is_dir():
        run = subprocess.run(["node", str(HERE / "validate_gltf.js"), args.glb], capture_output=True, text=True,
                             env={**os.environ, "NODE_PATH": str(Path(args.validator) / "node_modules")})
        report = json.loads(run.stdout)
        issues = report["issues"]
        print(f"glTF validator {report.get('validatorVersion', '')}: {issues['numErrors']} errors, "
              f"{issues['numWarnings']} warnings, {issues['numInfos']} infos, {issues['numHints']} hints")
        for m in issues["messages"][:20]:
            print(f"  {m['severity']} {m['code']} {m.get('pointer', '')}: {m['message']}")
        ok &= issues["numErrors"] == 0
    else:
        print("glTF validator: not installed (npm install gltf-validator)")

    if not args.no_blender and shutil.which("blender"):
        run = subprocess.run(["blender", "-b", "--factory-startup", "--python", str(HERE / "blender_check.py"), "--",
                              args.glb], capture_output=True, text=True)
        line = next((x for x in run.stdout.splitlines() if x.startswith("BLENDER_CHECK ")), None)
        print("Blender:", line[len("BLENDER_CHECK "):] if line else run.stdout[-1500:] + run.stderr[-1500:])
        ok &= line is not None and json.loads(line[len("BLENDER_CHECK "):])["ok"]
    else:
        print("Blender: skipped")

    from pxr import Usd, UsdGeom

    from gltf_reader import Glb

    rows = list(csv.reader(open(args.csv, newline="")))
    header, body = rows[0], rows[1:]
    col = lambda name: np.array([float(r[header.index(name)]) for r in body])  # noqa: E731
    stage = Usd.Stage.Open(args.usd)
    points = UsdGeom.Mesh(stage.GetPrimAtPath("/Take/Avatar")).GetPointsAttr()
    samples = points.GetTimeSamples()
    channels = stage.GetPrimAtPath("/Take/Channels")
    print(f"USD: timeCodesPerSecond {stage.GetTimeCodesPerSecond()}, time codes {stage.GetStartTimeCode()}.."
          f"{stage.GetEndTimeCode()}, {len(samples)} point samples; CSV: {len(body)} rows")
    glb = Glb(args.glb)
    glb.check_structure()
    anim = glb.doc["animations"][0]
    jaw_node = next(i for i, n in enumerate(glb.doc["nodes"]) if n.get("name") == "jaw")
    jaw_sampler = next(c["sampler"] for c in anim["channels"] if c["target"]["node"] == jaw_node)
    q = glb.accessor(anim["samplers"][jaw_sampler]["output"]).astype(np.float64)
    jaw_x = 2 * np.arctan2(q[:, 0], q[:, 3])  # the rotation's x part (the jaw opens about x)
    extras = glb.doc["meshes"][0]["extras"]
    weights_channel = next(c["sampler"] for c in anim["channels"] if c["target"]["path"] == "weights")
    weights = glb.accessor(anim["samplers"][weights_channel]["output"]).reshape(len(q), -1)
    for csv_name, usd_name in (("JawOpen", "jawOpen"), ("EyeBlinkLeft", "eyeBlinkLeft"),
                               ("EyeBlinkRight", "eyeBlinkRight")):
        c = col(csv_name)
        u = np.array([channels.GetAttribute(f"arkit:{usd_name}").Get(s) for s in samples])
        print(f"  {csv_name}: CSV min {c.min():.3f} max {c.max():.3f} mean {c.mean():.3f}; "
              f"USD max |diff| {np.abs(u - c).max():.2e}")
    print(f"  glTF jaw rotation about x: {jaw_x.min():.3f}..{jaw_x.max():.3f} rad, correlation with JawOpen "
          f"{np.corrcoef(jaw_x, col('JawOpen'))[0, 1]:.3f}")
    for name, blink in (("eyeClose_L", "EyeBlinkLeft"), ("eyeClose_R", "EyeBlinkRight")):
        if name in extras["targetNames"]:
            w = weights[:, extras["targetNames"].index(name)]
            print(f"  glTF morph {name}: max weight {w.max():.3f}, correlation with {blink} "
                  f"{np.corrcoef(w, col(blink))[0, 1]:.3f}")
    src = np.asarray(extras["flameVertex"])
    err = [np.abs(glb.vertices_at(k) - np.array(points.Get(s))[src]).max() for k, s in enumerate(samples)]
    print(f"  glTF rig vs the session's vertices (USD points): max {1e3 * max(err):.2f} mm, "
          f"median {1e3 * float(np.median(err)):.2f} mm")
    print("ok" if ok else "FAILED")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
