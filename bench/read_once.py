"""Bytes read per byte of input file, and peak RSS, of ``predict`` on compressed tiled
scenes, with the engine's own work only (a zero-cost model), each size in a fresh process.

    .venv/bin/python bench/read_once.py [--sizes 2048,4096,10980] [--cache MB]

Bytes read are the process's read() bytes (Linux /proc/self/io rchar) during the run,
divided by the input file's size: 1.0 means every compressed byte was read (and every
block decoded) once. "plan" is what planning reads (the decimated sample behind the
radiometry and nodata checks), "run" what the windows read. Goal (issue 14): <= 1.05 at every width, peak RSS flat.
``--cache MB`` sets GDAL_CACHEMAX for comparison (default: the engine's own choice).
"""

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

CHILD = r"""
import json, resource, sys, time
import numpy as np
sys.path.insert(0, {root!r})
import geoseg.predict as gp
from geoseg.predict import PredictOptions, predict_raster

phase = {{}}
def timed(name, fn):
    def run(*a, **k):
        r = rchar()
        try:
            return fn(*a, **k)
        finally:
            phase[name] = phase.get(name, 0) + rchar() - r
    return run
gp.make_plan, gp.run_plan = timed("plan", gp.make_plan), timed("run", gp.run_plan)

def rchar():
    for line in open("/proc/self/io"):
        if line.startswith("rchar:"):
            return int(line.split()[1])

def fwd(x):
    p = np.zeros(x.shape[:3] + (2,), np.float32)
    p[..., 0] = 1
    return p

# a first run on another (small) scene: imports, PROJ's database, the bundle's
# metadata are read then, not counted against the scene
predict_raster({warm!r}, {warm_dst!r}, {model!r}, PredictOptions(), overwrite=True, forward=fwd)
phase.clear()
r0, t0 = rchar(), time.perf_counter()
r = predict_raster({src!r}, {dst!r}, {model!r}, PredictOptions(), overwrite=True, forward=fwd)
dt, r1 = time.perf_counter() - t0, rchar()
print(json.dumps({{"read": r1 - r0, "plan": phase["plan"], "run": phase["run"], "seconds": dt,
                  "rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}}))
"""


def make_scene(path: Path, size: int) -> Path:
    """A size² 6-band uint16 GeoTIFF, tiled 512, deflate, smooth (compressible) content."""
    import numpy as np
    import rasterio
    from rasterio.transform import from_origin
    if path.exists():
        return path
    rng = np.random.default_rng(0)
    prof = dict(driver="GTiff", width=size, height=size, count=6, dtype="uint16", crs="EPSG:32651",
                transform=from_origin(300000, 3500000, 10, 10), tiled=True, blockxsize=512, blockysize=512,
                compress="deflate", interleave="pixel")
    tmp = path.with_name(path.name + ".part")
    with rasterio.open(tmp, "w", **prof) as dst:
        for r in range(0, size, 512):
            h = min(512, size - r)
            base = rng.integers(200, 4000, (6, h // 8 + 1, size // 8 + 1)).astype(np.uint16)
            dst.write(np.repeat(np.repeat(base, 8, axis=1), 8, axis=2)[:, :h, :size],
                      window=rasterio.windows.Window(0, r, size, h))
    os.replace(tmp, path)
    return path


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", default="2048,4096,10980")
    ap.add_argument("--cache", type=float, default=None, help="GDAL_CACHEMAX in MB (default: the engine's)")
    ap.add_argument("--workdir", default="bench/out")
    args = ap.parse_args()
    root = Path(__file__).resolve().parents[1]
    work = Path(args.workdir)
    work.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ)
    if args.cache is not None:
        env["GDAL_CACHEMAX"] = str(int(args.cache * 2**20))
    print(f"{'size':>6} {'file MB':>8} {'read/file':>9} {'plan':>6} {'run':>6} {'peak RSS MB':>11} {'s':>6}")
    for size in (int(s) for s in args.sizes.split(",")):
        src = make_scene(work / f"deflate_{size}.tif", size)
        warm = make_scene(work / "deflate_600.tif", 600)
        code = CHILD.format(root=str(root), src=str(src), dst=str(work / f"ro_{size}_classes.tif"),
                            warm=str(warm), warm_dst=str(work / "ro_warm_classes.tif"),
                            model=str(root / "geoseg" / "data" / "s2_water.geoseg"))
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
        if out.returncode != 0:
            raise SystemExit(out.stderr[-2000:])
        res = json.loads(out.stdout.strip().splitlines()[-1])
        fb = src.stat().st_size
        print(f"{size:>6} {fb / 2**20:8.1f} {res['read'] / fb:9.3f} {res['plan'] / fb:6.3f} {res['run'] / fb:6.3f} "
              f"{res['rss_mb']:11.0f} {res['seconds']:6.1f}",
              flush=True)


if __name__ == "__main__":
    main()
