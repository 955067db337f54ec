"""benchmarks/gpu_check.py: its dry run (the same code on the CPU, PyAV/MediaPipe/TensorRT hidden as on the GPU
machine, CPU stand-ins) and its part runner (a part that fails or hangs loses only itself)."""
from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "gpu_check.py"


def _load():
    spec = importlib.util.spec_from_file_location("gpu_check", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules["gpu_check"] = module
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
def test_dry_run_runs_every_part_and_writes_the_report(tmp_path, demo_pack_dir):
    out = tmp_path / "report"
    proc = subprocess.run([sys.executable, str(SCRIPT), "--dry-run", "--out", str(out), "--assets", str(demo_pack_dir),
                           "--wheels", str(tmp_path)], capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    report = json.loads((out / "gpu_check.json").read_text())
    gc = _load()
    assert report["dry_run"] and list(report["parts"]) == list(gc.PARTS)
    for name, part in report["parts"].items():
        assert part["status"] == "ok", (name, part.get("error"), part.get("log_tail"))
    parts = {name: part["result"] for name, part in report["parts"].items()}
    assert parts["environment"]["versions"]["av"] is None  # hidden, as on the GPU machine
    assert all(b["vertices"]["max_abs"] < 1e-5 for b in parts["lbs"]["batches"])
    assert all(s["coverage_iou"] == 1.0 for s in parts["raster"]["sizes"])  # both CPU kernels are exact
    for network in ("E_flame", "D_detail"):
        assert parts["torch_cuda"]["networks"][network]["cpu fp32 eager"]["vs_cpu_fp32"]["max_abs"] < 1e-4
    e2e = parts["e2e"]
    assert e2e["input"]["faces_boxed"] == e2e["input"]["distinct_frames"]
    assert e2e["eager"]["fps"] > 0 and e2e["torch"]["fps"] > 0 and e2e["torch"]["ratio_to_eager"] > 0
    assert len(e2e["torch"]["chunk_fps"]) == 2 and {"E_flame", "rasterize", "D_detail"} <= set(e2e["torch"]["stages"])
    assert e2e["torch"]["vs_eager"]["frames_with_codes"] >= 1
    assert parts["pytest_gpu"]["counts"]["failures"] == 0
    markdown = (out / "gpu_check.md").read_text()
    assert "| e2e | ok |" in markdown and "dry run" in markdown


def test_a_failing_or_hanging_part_loses_only_itself(tmp_path, monkeypatch):
    gc = _load()

    def fine(ctx, rec):
        rec["value"] = 1
        rec.summary = "fine"

    def broken(ctx, rec):
        rec["before"] = "recorded"
        raise RuntimeError("the kernel blew up")

    def hangs(ctx, rec):
        rec["progress"] = "half"
        time.sleep(60)

    monkeypatch.setattr(gc, "PART_FUNCTIONS", {"environment": fine, "lbs": broken, "raster": hangs})
    args = gc.parse_args(["--out", str(tmp_path), "--dry-run"])
    for sub in ("parts", "logs"):
        (tmp_path / sub).mkdir()
    ok = gc.run_part("environment", args, tmp_path, 30)
    failed = gc.run_part("lbs", args, tmp_path, 30)
    started = time.perf_counter()
    timeout = gc.run_part("raster", args, tmp_path, 1.0)
    assert time.perf_counter() - started < 20
    assert ok["status"] == "ok" and ok["result"] == {"value": 1} and ok["summary"] == "fine"
    assert failed["status"] == "failed" and "the kernel blew up" in failed["error"]
    assert failed["result"] == {"before": "recorded"}
    assert timeout["status"] == "timeout" and timeout["result"] == {"progress": "half"}
    report = gc.Report(tmp_path, {"plan": ["environment", "lbs", "raster"]})
    for name, entry in (("environment", ok), ("lbs", failed), ("raster", timeout)):
        report.set_part(name, entry)
    text = (tmp_path / "gpu_check.md").read_text()
    assert "| lbs | failed |" in text and "| raster | timeout |" in text


def test_parts_are_checked(tmp_path):
    gc = _load()
    with pytest.raises(SystemExit):
        gc.parse_args(["--out", str(tmp_path), "--parts", "lbs,warp_drive"])
    assert sum(gc.LIMITS_S.values()) >= 450 and gc.parse_args(["--out", str(tmp_path)]).budget_s < 480
