"""Inference window size: speed, network pixels per scene pixel, and seam agreement.

    .venv/bin/python bench/windows.py [--size 4096] [--windows 256,512,768,1024] [--repeats 3]

A fully convolutional model can run windows larger than its training chips with the
same context margin (the overlap): fewer windows, less overlap, fewer seams. For each
window size (batch sized so a batch holds about as many pixels as 8 windows of the
model's chip: the same memory), on the bundled water model:

* speed: ``predict_raster`` on a synthetic 6-band 4096² scene, runs interleaved across
  sizes, median and range of scene Mpx/s, and the speed-up over the model's chip size;
* network ÷ scene pixels (the windows run ÷ the scene);
* seam agreement: the class raster of the bundled real scene tiled at that window size
  vs one window over the whole scene (the model sees everything at once: no seam);
  goal >= 99.9 % of pixels.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

from common import synthetic_s2

ROOT = Path(__file__).resolve().parents[1]
MODEL = ROOT / "geoseg" / "data" / "s2_water.geoseg"
SCENE = ROOT / "geoseg" / "data" / "s2_shanghai_scene.tif"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--size", type=int, default=4096)
    ap.add_argument("--windows", default="256,512,768,1024")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--workdir", default=None)
    a = ap.parse_args()
    out = Path(a.workdir or tempfile.mkdtemp(prefix="geoseg-bench-windows-"))
    out.mkdir(parents=True, exist_ok=True)
    src = synthetic_s2(out / f"s2_{a.size}.tif", a.size)

    from geoseg.bundle import read_metadata
    from geoseg.model import ModelRef, load_forward
    from geoseg.predict import PredictOptions, predict_array, predict_raster
    meta = read_metadata(MODEL)
    fwd = load_forward(ModelRef.of(MODEL))
    sizes = [int(s) for s in a.windows.split(",")]
    chip_px = meta.tile_size ** 2 * 8

    def opts(w: int, **kw) -> PredictOptions:
        return PredictOptions(tile_size=w, batch_size=max(1, round(chip_px / (w * w))), **kw)

    import rasterio
    with rasterio.open(SCENE) as s:
        scene = s.read()
    side = -(-max(scene.shape[1:]) // meta.tile_multiple) * meta.tile_multiple
    whole, _ = predict_array(scene, MODEL, PredictOptions(tile_size=side, batch_size=1, input_offset=0.0),
                             forward=fwd)
    for w in sizes:  # warm-up: every window shape traced once
        predict_raster(src, out / f"w{w}.tif", MODEL, opts(w), forward=fwd, overwrite=True)
    times: dict[int, list[float]] = {w: [] for w in sizes}
    cover: dict[int, float] = {}
    for _ in range(a.repeats):
        for w in sizes:
            t0 = time.perf_counter()
            r = predict_raster(src, out / f"w{w}.tif", MODEL, opts(w), forward=fwd, overwrite=True)
            times[w].append(time.perf_counter() - t0)
            cover[w] = r.input_pixels / (r.width * r.height)
    mpx = a.size * a.size / 1e6
    base = statistics.median(times[sizes[0]])
    print(f"bundled water model, {a.size}² synthetic scene, {a.repeats} interleaved runs; seams on the bundled scene "
          f"({scene.shape[2]}x{scene.shape[1]}) vs one {side}-px window:")
    print(f"{'window':>7} {'batch':>5} {'Mpx/s median':>13} {'range':>13} {'speed-up':>9} {'net/scene':>10} "
          f"{'agreement':>10}")
    for w in sizes:
        tiled, _ = predict_array(scene, MODEL, opts(w, input_offset=0.0), forward=fwd)
        agree = float(np.mean(tiled == whole))
        med = statistics.median(times[w])
        print(f"{w:>7} {opts(w).batch_size:>5} {mpx / med:>13.2f} "
              f"{mpx / max(times[w]):>6.2f}-{mpx / min(times[w]):<6.2f} {base / med:>8.2f}x {cover[w]:>10.3f} "
              f"{100 * agree:>9.3f}%")


if __name__ == "__main__":
    main()
