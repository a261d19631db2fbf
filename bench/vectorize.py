"""``geoseg vectorize``: peak memory and time on synthetic class rasters, 2048² and 10980².

    .venv/bin/python bench/vectorize.py [--sizes 2048,10980] [--simplify 0] [--connectivity 4]

Each size gets a uint8 class raster (tiled 512, deflate, 10 m UTM pixels, nodata 255):
smooth random blobs (a sum of 24 plane waves with random directions, wavelengths
40-400 px and phases) cut into 3 classes at the terciles of the first strip, plus a
nodata corner. Written strip by strip into a temporary folder. Each size is vectorized
in a fresh process (``python bench/vectorize.py --child RASTER``), which prints its peak
RSS (``VmHWM``), the RSS right after the imports, seconds, polygons and the most
vertices of open polygons held at once.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

import common  # noqa: F401  (sets sys.path)


def rss_mb(field: str = "VmHWM") -> float:
    """This process's peak (``VmHWM``) or current (``VmRSS``) resident memory in MB.
    ``ru_maxrss`` is not used: on Linux it keeps the parent's peak across fork + exec."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def make(path: Path, size: int, seed: int = 0) -> Path:
    import rasterio
    from rasterio.transform import from_origin
    rng = np.random.default_rng(seed)
    k = 24
    theta = rng.uniform(0, np.pi, k)
    lam = np.exp(rng.uniform(np.log(40), np.log(400), k))
    kx, ky = np.cos(theta) * 2 * np.pi / lam, np.sin(theta) * 2 * np.pi / lam
    phase = rng.uniform(0, 2 * np.pi, k)
    prof = dict(driver="GTiff", width=size, height=size, count=1, dtype="uint8", crs="EPSG:32633",
                transform=from_origin(300000, 5000000, 10, 10), tiled=True, blockxsize=512, blockysize=512,
                compress="deflate", nodata=255)
    x = np.arange(size, dtype=np.float64)
    cuts = None
    with rasterio.open(path, "w", **prof) as dst:
        for r0 in range(0, size, 512):
            h = min(512, size - r0)
            y = np.arange(r0, r0 + h, dtype=np.float64)[:, None]
            f = np.zeros((h, size))
            for i in range(k):
                f += np.sin(kx[i] * x[None, :] + ky[i] * y + phase[i])
            if cuts is None:
                cuts = np.quantile(f, [1 / 3, 2 / 3])
            block = np.digitize(f, cuts).astype(np.uint8)
            block[:, : size // 10][(y[:, 0] < size // 10)] = 255  # a nodata corner
            dst.write(block, 1, window=rasterio.windows.Window(0, r0, size, h))
    return path


def child(raster: str, simplify: float, connectivity: int) -> None:
    from geoseg.vectorize import vectorize_classes
    import pyogrio  # noqa: F401  (imported before the baseline, as vectorize does)
    import shapely  # noqa: F401
    import rasterio.features  # noqa: F401
    base = rss_mb("VmRSS")
    out = Path(raster).with_suffix(".gpkg")
    t0 = time.perf_counter()
    res = vectorize_classes(raster, out, simplify=simplify, connectivity=connectivity, overwrite=True)
    dt = time.perf_counter() - t0
    print(json.dumps({"seconds": dt, "peak_rss_mb": rss_mb(), "rss_after_imports_mb": base,
                      "features": res.features, "peak_open_vertices": res.peak_open_vertices,
                      "strips": res.strips, "gpkg_mb": out.stat().st_size / 2 ** 20}))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", default="2048,10980")
    ap.add_argument("--simplify", type=float, default=0.0)
    ap.add_argument("--connectivity", type=int, default=4)
    ap.add_argument("--child", default=None)
    args = ap.parse_args()
    if args.child:
        child(args.child, args.simplify, args.connectivity)
        return
    with tempfile.TemporaryDirectory(prefix="geoseg-bench-vec-") as d:
        for n in (int(s) for s in args.sizes.split(",")):
            raster = make(Path(d) / f"classes_{n}.tif", n)
            proc = subprocess.run([sys.executable, __file__, "--child", str(raster), "--simplify", str(args.simplify),
                                   "--connectivity", str(args.connectivity)],
                                  capture_output=True, text=True, check=True)
            r = json.loads(proc.stdout.strip().splitlines()[-1])
            print(f"{n:>5}²  simplify {args.simplify:g}, {args.connectivity}-connected: {r['seconds']:7.1f} s  peak RSS {r['peak_rss_mb']:7.0f} MB "
                  f"(after imports {r['rss_after_imports_mb']:.0f} MB)  {r['features']:>8,} polygons  "
                  f"{r['strips']} strips  open vertices at most {r['peak_open_vertices']:,}  "
                  f"GeoPackage {r['gpkg_mb']:.0f} MB", flush=True)


if __name__ == "__main__":
    main()
