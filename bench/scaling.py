"""Peak memory and time per megapixel of ``predict`` as the scene grows.

    .venv/bin/python bench/scaling.py [--sizes 1024,2048,4096,10980] [--base-filters 8] [--compress deflate]
                                      [--runtime auto] [--precision auto] [--batch-size N]

Each size runs in a fresh subprocess (so peak RSS is that run's own) on a synthetic
6-band uint16 scene; 10980 x 10980 is one Sentinel-2 tile, with the engine's default
options and runtime (the converted model cached first by another process, as after a
user's first run). Model loading and the first call are timed apart as start-up; sizes up to 4096 take the best
of 3 runs. Besides seconds per output megapixel it prints seconds per megapixel of
model input (the pixels of all windows run) and the coverage (model input / scene). Goals: peak RSS <= 1.2 GB
with the 10980^2 run within 1.1x of the 2048^2 run; seconds per megapixel flat within
10 % from 1k^2 to 10k^2.
"""

import argparse
import json
import subprocess
import sys
from pathlib import Path

from common import bench_model, synthetic_s2

CHILD = r"""
import json, sys, time, resource
import numpy as np
sys.path.insert(0, {root!r})
from geoseg.model import ModelRef, load_forward
from geoseg.predict import PredictOptions, predict_raster
from geoseg.unit import default_window
t0 = time.perf_counter()
ref = ModelRef.of({model!r}, "none", {runtime!r}, {precision!r})
fwd = load_forward(ref)
from geoseg.bundle import read_metadata
meta = read_metadata({model!r})
fwd(np.zeros((1, default_window(meta), default_window(meta), meta.input.n_bands), np.float32))
try:
    from osgeo import gdal  # one-off import used when styling the output
except ImportError:
    pass
startup = time.perf_counter() - t0   # load + compile: a fixed cost per process, not per pixel
dt = float("inf")
rss = None
for _ in range({repeat}):  # best of N: the machine is shared and noisy
    t0 = time.perf_counter()
    r = predict_raster({src!r}, {dst!r}, ref, PredictOptions(batch_size={batch}), overwrite=True,
                       areas_path={csv!r}, forward=fwd)
    dt = min(dt, time.perf_counter() - t0)
    if rss is None:  # the peak of one run (start-up included), before any repeat
        rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
print(json.dumps({{"seconds": dt, "startup": startup, "model_seconds": r.model_seconds, "windows": r.n_windows,
                  "input_pixels": r.input_pixels,
                  "rss_mb": rss, "tensorflow_imported": "tensorflow" in sys.modules}}))
"""


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", default="1024,2048,4096,10980")
    ap.add_argument("--base-filters", type=int, default=8)
    ap.add_argument("--batch-size", type=int, default=None, help="default: the engine's (PredictOptions())")
    ap.add_argument("--runtime", default="auto")
    ap.add_argument("--precision", default="auto")
    ap.add_argument("--repeat", type=int, default=3, help="best of N for sizes up to 4096")
    ap.add_argument("--workdir", default="bench/out")
    ap.add_argument("--compress", default=None, help="e.g. deflate: a compressed input (the GDAL cache is then "
                                                     "sized to hold what the next row of units reads again)")
    args = ap.parse_args()
    work = Path(args.workdir)
    work.mkdir(parents=True, exist_ok=True)
    root = str(Path(__file__).resolve().parents[1])
    model = str(bench_model(work / f"unet{args.base_filters}.geoseg", args.base_filters))
    # the model converted and cached once, in a process of its own, as a user's first
    # run does: the measured runs load it from the cache (no TensorFlow: its ~0.5 GB
    # would otherwise dominate every peak)
    subprocess.run([sys.executable, "-c", f"import sys; sys.path.insert(0, {root!r}); import geoseg.model as m; "
                    f"m.load_forward(m.ModelRef.of({model!r}, 'none', {args.runtime!r}, {args.precision!r}))"],
                   check=True, capture_output=True)
    rows = []
    for size in [int(s) for s in args.sizes.split(",")]:
        src = synthetic_s2(work / f"s2_{size}{'_' + args.compress if args.compress else ''}.tif", size,
                           compress=args.compress)
        code = CHILD.format(root=root, model=model, src=str(src), dst=str(work / f"pred_{size}.tif"),
                            csv=str(work / f"pred_{size}.csv"), batch=args.batch_size,
                            runtime=args.runtime, precision=args.precision,
                            repeat=args.repeat if size <= 4096 else 1)
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
        res = json.loads(out.stdout.strip().splitlines()[-1])
        mpx = size * size / 1e6
        # model input megapixels: how much the tiling makes the network look at
        in_mpx = res["input_pixels"] / 1e6
        res.update(size=size, mpx=mpx, s_per_mpx=res["seconds"] / mpx, s_per_in_mpx=res["seconds"] / in_mpx,
                   cover=in_mpx / mpx)
        rows.append(res)
        print(f"{size:>6}^2  {mpx:7.1f} Mpx  {res['seconds']:7.1f} s (+{res['startup']:.1f} s start-up)  "
              f"{res['s_per_mpx']:.3f} s/Mpx  {res['s_per_in_mpx']:.3f} s per window-Mpx  "
              f"{res['windows']} windows (x{res['cover']:.3f} coverage)  peak RSS {res['rss_mb']:6.0f} MB"
              f"{' (TensorFlow imported)' if res['tensorflow_imported'] else ''}",
              flush=True)
    spm = [r["s_per_mpx"] for r in rows]
    spi = [r["s_per_in_mpx"] for r in rows]
    print(f"s/Mpx spread: max/min = {max(spm) / min(spm):.3f}  (goal <= 1.10)")
    print(f"s per window-Mpx spread: max/min = {max(spi) / min(spi):.3f}  (pipeline cost per model input)")
    by = {r["size"]: r for r in rows}
    if 2048 in by and 10980 in by:
        print(f"peak RSS 10980^2 / 2048^2 = {by[10980]['rss_mb'] / by[2048]['rss_mb']:.3f}  (goal <= 1.10); "
              f"max {max(r['rss_mb'] for r in rows):.0f} MB (goal <= 1200)")


if __name__ == "__main__":
    main()
