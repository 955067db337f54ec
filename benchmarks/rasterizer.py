#!/usr/bin/env python3
"""`python benchmarks/rasterizer.py`: the CPU rasterizer's two kernels (C and torch) on a ~10k-triangle sphere at
224x224 and 1280x720 (min and median of 20 calls)."""
import time

import torch

from capture.render.cpu import CpuRasterizer, c_kernel_error


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


if __name__ == "__main__":
    main()
