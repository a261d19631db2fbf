"""``geoseg areas`` throughput on a 10980 x 10980 class raster, planar vs geodesic.

    .venv/bin/python bench/areas.py [--size 10980] [--repeat 3]

Two rasters with the same pixels (tiled 512, deflate): one in UTM (planar pixel
area), one in EPSG:4326 (geodesic area per row). Runs interleaved, best and median of N.
Goals: >= 200 Mpx/s; geodesic <= 10 % slower than planar.
"""

import argparse
import time
from pathlib import Path

import numpy as np

import common  # noqa: F401  (sets sys.path)


def make(path: Path, size: int, crs: str, transform) -> Path:
    import rasterio
    if path.exists():
        return path
    rng = np.random.default_rng(0)
    prof = dict(driver="GTiff", width=size, height=size, count=1, dtype="uint8", crs=crs, transform=transform,
                tiled=True, blockxsize=512, blockysize=512, compress="deflate", nodata=255)
    with rasterio.open(path, "w", **prof) as d:
        for r in range(0, size, 512):
            h = min(512, size - r)
            small = rng.integers(0, 7, (h // 4 + 1, size // 4 + 1)).astype(np.uint8)
            block = np.repeat(np.repeat(small, 4, 0), 4, 1)[:h, :size]
            d.write(block, 1, window=rasterio.windows.Window(0, r, size, h))
    return path


def main():
    from rasterio.transform import from_origin
    from geoseg.areas import class_areas
    ap = argparse.ArgumentParser()
    ap.add_argument("--size", type=int, default=10980)
    ap.add_argument("--repeat", type=int, default=9)
    ap.add_argument("--workdir", default="bench/out")
    args = ap.parse_args()
    work = Path(args.workdir)
    work.mkdir(parents=True, exist_ok=True)
    n = args.size
    planar = make(work / f"classes_utm_{n}.tif", n, "EPSG:32633", from_origin(300000, 5000000, 10, 10))
    geo = make(work / f"classes_4326_{n}.tif", n, "EPSG:4326", from_origin(10.0, 50.0, 1e-4, 1e-4))
    times = {"planar": [], "geodesic": []}
    for rep in range(args.repeat):  # interleaved, so both see the same machine load
        for name, p in (("planar", planar), ("geodesic", geo)):
            t0 = time.perf_counter()
            t = class_areas(p)
            times[name].append(time.perf_counter() - t0)
            assert sum(r.pixels for r in t.rows) == n * n
    best = {k: min(v) for k, v in times.items()}
    med = {k: sorted(v)[len(v) // 2] for k, v in times.items()}
    mpx = n * n / 1e6
    for name, dt in best.items():
        print(f"{name:9s} {dt:.3f} s  {mpx / dt:7.1f} Mpx/s  ({n}^2, best of {args.repeat})")
    print(f"geodesic / planar time = {best['geodesic'] / best['planar']:.3f} (best), "
          f"{med['geodesic'] / med['planar']:.3f} (median)  (goal <= 1.10)")


if __name__ == "__main__":
    main()
