"""The seed's tiled inference beside geoseg's predict, same model and scene (issue 14 item 5).

    .venv/bin/python bench/seed_method.py [--sizes 0,4096] [--repeats 3] [--workdir DIR]

The seed (the antillia TensorflowUNet scripts geoseg replaces; their code is not in this
repository) segmented a large image with ``TensorflowUNet.infer_tiles``, configured by
``[tiledinfer] overlapping`` (32 in examples/s2_water). This script reproduces that method
step by step on the bundled model, with numpy in place of PIL for the 6 float bands
(PIL holds no 6-band float image; the steps and their costs are the seed's):

1. the whole image in memory (the seed opened it whole with PIL), converted to the model's
   normalised units once;
2. split into ``split_size`` squares (the model's image width: the bundled model's 256 px
   training tile) in row-major order; each square is cropped with ``overlapping`` extra
   pixels on every side, clipped at the image's edges;
3. the crop *resized* to split_size x split_size (bilinear: the seed's ``PIL.resize``), one
   ``model.predict`` call on a batch of one (the seed's ``TensorflowUNet.predict``);
4. the class map (argmax) resized back to the crop's size (nearest), the margins cut off,
   pasted into a full-size in-memory class image, which is written at the end (a
   georeferenced GeoTIFF here, where the seed wrote a PNG).

geoseg: ``predict_raster`` with its defaults (OpenVINO, bfloat16 where the CPU has it) and
with ``--runtime keras --precision float32`` (the same Keras/TensorFlow as the seed). All
three take turns, ``--repeats`` each; each is also scored against the bundled truth (water
IoU; the truth is mirrored like the scene). Size 0 = the bundled scene itself (625 x 545).
Prints a table and one JSON line.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from engine import MODEL, SCENE, stat  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
TRUTH = ROOT / "geoseg" / "data" / "s2_shanghai_truth.tif"
OVERLAPPING = 32  # examples/s2_water [tiledinfer] overlapping


def mirrored(src: Path, dst: Path, size: int) -> Path:
    """``src`` mirrored (np.pad symmetric) out to size x size (size 0: a copy), tiled 512, deflate."""
    import rasterio
    if dst.exists():
        return dst
    with rasterio.open(src) as s:
        a, prof = s.read(), s.profile
    if size:
        a = np.pad(a, ((0, 0), (0, max(0, size - a.shape[1])), (0, max(0, size - a.shape[2]))),
                   mode="symmetric")[:, :size, :size]
    prof.update(width=a.shape[2], height=a.shape[1], tiled=True, blockxsize=512, blockysize=512,
                compress="deflate")
    with rasterio.open(dst, "w", **prof) as o:
        o.write(a)
    return dst


def resize_bilinear(a: np.ndarray, h: int, w: int) -> np.ndarray:
    """(H, W, C) -> (h, w, C), bilinear with half-pixel centres (PIL's convention)."""
    H, W = a.shape[:2]
    if (H, W) == (h, w):
        return a
    ys = np.clip((np.arange(h) + 0.5) * H / h - 0.5, 0, H - 1)
    xs = np.clip((np.arange(w) + 0.5) * W / w - 0.5, 0, W - 1)
    y0, x0 = np.floor(ys).astype(int), np.floor(xs).astype(int)
    y1, x1 = np.minimum(y0 + 1, H - 1), np.minimum(x0 + 1, W - 1)
    fy, fx = (ys - y0)[:, None, None], (xs - x0)[None, :, None]
    top = a[y0][:, x0] * (1 - fx) + a[y0][:, x1] * fx
    bot = a[y1][:, x0] * (1 - fx) + a[y1][:, x1] * fx
    return (top * (1 - fy) + bot * fy).astype(a.dtype)


def resize_nearest(m: np.ndarray, h: int, w: int) -> np.ndarray:
    H, W = m.shape
    ys = np.minimum(((np.arange(h) + 0.5) * H / h).astype(int), H - 1)
    xs = np.minimum(((np.arange(w) + 0.5) * W / w).astype(int), W - 1)
    return m[ys][:, xs]


def seed_tiled(src: Path, dst: Path, keras_model, meta) -> np.ndarray:
    import rasterio
    from geoseg.unit import input_gain_bias
    with rasterio.open(src) as s:
        img, prof = s.read().astype(np.float32), s.profile
    gain, bias = input_gain_bias(meta.input)
    img = (img * gain[:, None, None] + bias[:, None, None]).transpose(1, 2, 0)  # (H, W, bands)
    h, w = img.shape[:2]
    split = meta.tile_size
    out = np.zeros((h, w), np.uint8)
    for top in range(0, h, split):
        for left in range(0, w, split):
            lm, um = min(OVERLAPPING, left), min(OVERLAPPING, top)
            crop = img[top - um:min(top + split + OVERLAPPING, h), left - lm:min(left + split + OVERLAPPING, w)]
            ch, cw = crop.shape[:2]
            x = resize_bilinear(crop, split, split)[None]
            prob = keras_model.predict(x, verbose=0)[0]
            mask = resize_nearest(prob.argmax(-1).astype(np.uint8), ch, cw)
            part = mask[um:um + split, lm:lm + split]
            out[top:top + part.shape[0], left:left + part.shape[1]] = part
    prof.update(count=1, dtype="uint8", nodata=None, compress="deflate")
    with rasterio.open(dst, "w", **prof) as o:
        o.write(out, 1)
    return out


def water_iou(pred: np.ndarray, truth: np.ndarray) -> float:
    p, t = pred == 1, truth == 1
    return float((p & t).sum() / max(1, (p | t).sum()))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sizes", default="0,4096", help="scene sizes; 0 = the bundled scene as it is")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--workdir", default=None)
    a = ap.parse_args()
    work = Path(a.workdir or tempfile.mkdtemp(prefix="geoseg-bench-seed-"))
    work.mkdir(parents=True, exist_ok=True)

    import logging
    logging.getLogger("geoseg").addFilter(lambda rec: "has no band names" not in rec.getMessage())
    import rasterio
    from geoseg.model import load_model, resolve_runtime
    from geoseg.predict import PredictOptions, predict_raster

    lm = load_model(MODEL)
    default_rt = " ".join(resolve_runtime())
    methods = {
        "seed tiled (Keras predict)": lambda s, d: seed_tiled(s, d, lm.keras_model, lm.meta),
        f"geoseg default ({default_rt})": lambda s, d: predict_raster(s, d, MODEL, PredictOptions(), overwrite=True),
        "geoseg keras float32": lambda s, d: predict_raster(s, d, MODEL, PredictOptions(runtime="keras"),
                                                            overwrite=True),
    }
    names = list(methods)
    figs: dict = {"overlapping": OVERLAPPING, "split_size": lm.meta.tile_size, "sizes": {}}
    for size in [int(x) for x in a.sizes.split(",")]:
        src = mirrored(SCENE, work / f"scene_{size}.tif", size)
        with rasterio.open(mirrored(TRUTH, work / f"truth_{size}.tif", size)) as t:
            truth = t.read(1)
        for name in names:  # warm-up: compile, caches
            methods[name](src, work / f"warm_{size}.tif")
        walls: dict[str, list] = {n: [] for n in names}
        for rep in range(a.repeats):
            for name in names[rep % len(names):] + names[:rep % len(names)]:
                t0 = time.perf_counter()
                methods[name](src, work / f"{size}_{names.index(name)}.tif")
                walls[name].append(time.perf_counter() - t0)
        geo = statistics.median(walls[names[1]])
        label = f"{truth.shape[1]} x {truth.shape[0]}"
        print(f"{label} ({a.repeats} interleaved runs):")
        figs["sizes"][label] = {}
        for i, name in enumerate(names):
            with rasterio.open(work / f"{size}_{i}.tif") as o:
                iou = water_iou(o.read(1), truth)
            med = statistics.median(walls[name])
            figs["sizes"][label][name] = {"wall_s": stat(walls[name]), "over_geoseg_default": med / geo,
                                          "water_iou": iou}
            print(f"  {name:<34} {med:7.2f} s [{min(walls[name]):.2f}–{max(walls[name]):.2f}]  "
                  f"{med / geo:5.2f}x geoseg's time   water IoU {iou:.3f}")
    print(json.dumps(figs))


if __name__ == "__main__":
    main()
