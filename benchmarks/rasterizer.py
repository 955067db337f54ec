#!/usr/bin/env python3
"""`python benchmarks/rasterizer.py [--demo-head]`: the CPU rasterizer's two kernels (C and torch) on a ~10k-triangle
sphere at 224x224 and 1280x720 (min and median of 20 calls). `--demo-head`: the C kernel alone (thread CPU) on the
product's own draws instead, the demo head of the synthetic performer clip in its raster window at 640x360 and
1280x720, as the pipeline rasterises it (median of 5 passes over the clip's frames)."""
import sys
import time

import torch

from capture.render.cpu import CpuRasterizer, c_kernel_error, rasterize_c, snap_into_window


def main() -> None:
    """Print timings for a ~10k-triangle sphere at 224x224 and 1280x720 with both kernels."""
    def sphere(n_lat: int, n_lon: int):
        lat = torch.linspace(0, torch.pi, n_lat)
        lon = torch.linspace(0, 2 * torch.pi, n_lon + 1)[:-1]
        la, lo = torch.meshgrid(lat, lon, indexing="ij")
        verts = torch.stack([la.sin() * lo.cos(), la.cos(), la.sin() * lo.sin()], -1).reshape(-1, 3)
        i = torch.arange(n_lat - 1)[:, None] * n_lon
        j = torch.arange(n_lon)[None, :]
        a, b = i + j, i + (j + 1) % n_lon
        c, d = a + n_lon, b + n_lon
        tris = torch.cat([torch.stack([a, b, c], -1).reshape(-1, 3), torch.stack([b, d, c], -1).reshape(-1, 3)])
        return verts, tris

    verts, tris = sphere(51, 100)
    verts = (verts * 0.8)[None]
    print(f"sphere: {tris.shape[0]} triangles, torch threads {torch.get_num_threads()}")
    for kernel in ("c", "torch"):
        if kernel == "c" and c_kernel_error():
            print("c kernel unavailable:", c_kernel_error())
            continue
        rast = CpuRasterizer(kernel=kernel)
        for size in ((224, 224), (720, 1280)):
            v = verts.clone()
            v[..., 0] *= size[0] / size[1]  # round on screen
            rast.rasterize(v, tris, size)
            times = []
            for _ in range(20):
                t0 = time.perf_counter()
                frags = rast.rasterize(v, tris, size)
                times.append(time.perf_counter() - t0)
            times.sort()
            print(f"{kernel:6s} {size[0]}x{size[1]}: min {times[0] * 1e3:7.2f} ms, median "
                  f"{times[len(times) // 2] * 1e3:7.2f} ms, coverage {frags.mask.float().mean():.3f}")


def demo_head(sizes=("640x360", "1280x720"), n_frames: int = 60) -> None:
    """Thread CPU of the C kernel on the demo head's raster windows of the synthetic clip at each size."""
    from capture import fps
    from capture.views import covering_window

    torch.set_num_threads(1)
    for size in sizes:
        args = fps.parse_args(["--frames", str(n_frames), "--no-eager", "--backends", "onnxruntime",
                               "--codes-from", "landmarks", "--size", size, "--quiet"])
        bench = fps.Bench(args, lambda text: None)
        engines = fps.make_engines("onnxruntime", bench.pack, bench.device, args, bench.calibration,
                                   bench.codes_from)
        session = bench.session(engines)
        faces = session.renderer.assets.faces.to(torch.int64).contiguous()
        frame_size = session.renderer.frame_size
        draws = []
        for frame in bench.frames(n_frames):
            prepared = session.detail_codes(session.infer_codes(session.crop(frame))).prepared
            if prepared is None:
                continue
            draws.append(snap_into_window(prepared.screen, frame_size, covering_window(prepared.screen, frame_size)))
        session.close()
        passes = []
        for _ in range(5):
            start = time.thread_time()
            for fx, fy, z, valid, window_size in draws:
                rasterize_c(fx, fy, z, valid, faces, window_size)
            passes.append((time.thread_time() - start) / len(draws) * 1e3)
        height, width = draws[0][4]
        print(f"demo head {size}: {len(draws)} frames, window {width} wide x {height} tall (first frame), "
              f"C kernel median {sorted(passes)[2]:.2f} ms a frame (thread CPU)")


if __name__ == "__main__":
    if "--demo-head" in sys.argv[1:]:
        demo_head()
    else:
        main()
