"""Train the bundled Sentinel-2 water model and report its held-out accuracy.

    .venv/bin/python scripts/train_demo_model.py [--epochs 60] [--out geoseg/data/s2_water.geoseg]
    .venv/bin/python scripts/train_demo_model.py --reevaluate geoseg/data/s2_water.geoseg

Trains on the northern rows (0-299) of the bundled Shanghai scene, predicts the
whole scene with the geoseg engine (default tiling), and reports the IoU of the
water class on the held-out southern rows (300-544), beside the MNDWI > 0
baseline on the same pixels. ``--reevaluate`` recomputes those figures for an
existing bundle with the current engine and rewrites its metadata (the network is
left as it is).

The trainer here (:func:`train_on_raster`) is small and honest: a FlexUNet on random
chips (flips, 90° rotations) from rows of one image/label raster pair held in memory,
which suits a sample scene. The full workflow (chip folders streamed from disk,
callbacks, resumable runs, configs) is ``geoseg train`` (:mod:`geoseg.train`).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Sequence

import numpy as np
import rasterio
from rasterio.windows import Window

from geoseg.bundle import MODEL_NAME, ClassInfo, InputSpec, ModelMeta, read_bundle_member, write_bundle
from geoseg.demo import SCENE, TRUTH, S2_BANDS
from geoseg.errors import ConfigError
from geoseg.model import LoadedModel, build_unet, keras_module, load_model, save_model
from geoseg.predict import PredictOptions, predict_raster

SPLIT = 300


@dataclass
class TrainResult:
    meta: ModelMeta
    keras_model: object
    history: dict
    seconds: float


def iou_scores(pred: np.ndarray, truth: np.ndarray, class_ids: Sequence[int]) -> dict[int, float]:
    """IoU per class over pixels where both are valid (255 = nodata in either)."""
    ok = (pred != 255) & (truth != 255)
    out = {}
    for c in class_ids:
        p, t = (pred == c) & ok, (truth == c) & ok
        union = np.count_nonzero(p | t)
        out[c] = float(np.count_nonzero(p & t) / union) if union else float("nan")
    return out


def train_on_raster(image_path: str | os.PathLike, label_path: str | os.PathLike, *,
                    classes: Sequence[ClassInfo], bands: Sequence[str], rows: tuple[int, int],
                    scale: float | Sequence[float] = 1.0, offset: float | Sequence[float] = 0.0,
                    chip: int = 128, epochs: int = 30, steps_per_epoch: int = 40, batch_size: int = 8,
                    base_filters: int = 16, num_layers: int = 4, learning_rate: float = 2e-3,
                    tile_size: int = 256, overlap: int = 32, seed: int = 42, name: str = "model",
                    description: str = "", rgb: Sequence[str] | None = None, background: int | None = 0,
                    verbose: int = 0) -> TrainResult:
    """Train on rows ``rows[0]:rows[1]`` of an image/label pair (labels = class ids).

    Chips are drawn at random positions with random flips/90° rotations; the input is
    scaled as the bundle will record it: ``((DN + offset) * scale - mean) / std``,
    with mean/std measured on the training rows.
    """
    keras = keras_module()
    r0, r1 = rows
    with rasterio.open(image_path) as src, rasterio.open(label_path) as lab:
        if len(bands) != src.count:
            raise ConfigError(f"{len(bands)} band names given for {src.count} bands")
        win = Window(0, r0, src.width, r1 - r0)
        x = src.read(window=win).astype(np.float32)
        y = lab.read(1, window=win)
        pixel_size = abs(src.transform.a) if src.crs is not None else None
    n = len(bands)
    off = np.broadcast_to(np.asarray(offset, np.float64), (n,))
    sc = np.broadcast_to(np.asarray(scale, np.float64), (n,))
    x = ((x + off[:, None, None]) * sc[:, None, None]).astype(np.float32)
    mean = x.reshape(n, -1).mean(axis=1, dtype=np.float64)
    std = x.reshape(n, -1).std(axis=1, dtype=np.float64) + 1e-6
    x = np.moveaxis((x - mean[:, None, None]) / std[:, None, None], 0, -1).astype(np.float32)
    ids = [c.id for c in classes]
    lut = np.full(256, 255, np.uint8)
    for i, c in enumerate(ids):
        lut[c] = i
    yi = lut[y.astype(np.uint8)]
    h, w = yi.shape
    if h < chip or w < chip:
        raise ConfigError(f"training rows ({h} x {w}) are smaller than one chip ({chip})")

    rng = np.random.default_rng(seed)
    keras.utils.set_random_seed(seed)

    def batches():
        while True:
            xb = np.empty((batch_size, chip, chip, n), np.float32)
            yb = np.empty((batch_size, chip, chip), np.int32)
            for b in range(batch_size):
                i, j = rng.integers(0, h - chip + 1), rng.integers(0, w - chip + 1)
                xc, yc = x[i:i + chip, j:j + chip], yi[i:i + chip, j:j + chip]
                k = rng.integers(4)
                xc, yc = np.rot90(xc, k), np.rot90(yc, k)
                if rng.random() < 0.5:
                    xc, yc = xc[:, ::-1], yc[:, ::-1]
                xb[b], yb[b] = xc, yc
            yield xb, yb

    model = build_unet(len(classes), n, base_filters=base_filters, num_layers=num_layers, name=name)
    model.compile(optimizer=keras.optimizers.Adam(learning_rate),
                  loss=keras.losses.SparseCategoricalCrossentropy(), metrics=["accuracy"])
    t0 = time.perf_counter()
    cb = [keras.callbacks.ReduceLROnPlateau("loss", factor=0.5, patience=4, min_lr=1e-5)]
    hist = model.fit(batches(), epochs=epochs, steps_per_epoch=steps_per_epoch, verbose=verbose, callbacks=cb,
                     shuffle=False)
    seconds = time.perf_counter() - t0
    meta = ModelMeta(
        name=name, classes=tuple(classes),
        input=InputSpec(tuple(bands), tuple(float(v) for v in off), tuple(float(v) for v in sc),
                        tuple(float(v) for v in mean), tuple(float(v) for v in std), pixel_size,
                        tuple(rgb) if rgb else None),
        tile_size=tile_size, overlap=overlap, tile_multiple=2 ** (num_layers - 1), head="softmax",
        background=background, description=description,
        architecture={"type": "flexunet", "base_filters": base_filters, "base_kernels": 3,
                      "num_layers": num_layers, "dropout_rate": 0.0, "dilation": 1, "batch_norm": True},
        provenance={"trained_on": os.path.basename(str(image_path)), "label": os.path.basename(str(label_path)),
                    "rows": [r0, r1], "chip": chip, "epochs": epochs, "steps_per_epoch": steps_per_epoch,
                    "batch_size": batch_size, "learning_rate": learning_rate, "seed": seed,
                    "keras": keras.__version__, "backend": keras.backend.backend(),
                    "train_seconds": round(seconds, 1)},
    )
    return TrainResult(meta, model, {k: [float(v) for v in vals] for k, vals in hist.history.items()}, seconds)



def held_out_metrics(model) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "pred.tif"
        predict_raster(SCENE, out, model, PredictOptions())
        with rasterio.open(out) as p, rasterio.open(TRUTH) as t, rasterio.open(SCENE) as s:
            pred = p.read(1)[SPLIT:]
            truth = t.read(1)[SPLIT:]
            img = s.read().astype(np.float64)[:, SPLIT:]
    mndwi = (img[1] - img[4]) / np.maximum(img[1] + img[4], 1e-9)
    base = (mndwi > 0).astype(np.uint8)
    m = iou_scores(pred, truth, [0, 1])
    b = iou_scores(base, truth, [0, 1])
    return {
        "evaluated_on": f"rows {SPLIT}-544 (southern part, held out) of the bundled scene",
        "water_iou": round(m[1], 4), "non_water_iou": round(m[0], 4),
        "mndwi_gt_0_water_iou": round(b[1], 4), "held_out_water_pixels": int((truth == 1).sum()),
    }


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--epochs", type=int, default=60)
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--base-filters", type=int, default=8)
    ap.add_argument("--out", default="geoseg/data/s2_water.geoseg")
    ap.add_argument("--reevaluate", metavar="BUNDLE", help="recompute the metrics of an existing bundle")
    args = ap.parse_args()
    if args.reevaluate:
        lm = load_model(args.reevaluate)
        metrics = held_out_metrics(lm)
        write_bundle(args.reevaluate, replace(lm.meta, metrics=metrics), read_bundle_member(args.reevaluate, MODEL_NAME))
        print(json.dumps(metrics, indent=2))
        return 0
    classes = (ClassInfo(0, "non-water", "#000000"), ClassInfo(1, "water", "#00FFFF"))
    res = train_on_raster(SCENE, TRUTH, classes=classes, bands=S2_BANDS, rows=(0, SPLIT), scale=1e-4,
                          offset=0.0, epochs=args.epochs, steps_per_epoch=args.steps, base_filters=args.base_filters,
                          name="s2-water-shanghai",
                          description="Surface water from Sentinel-2 L2A 6 bands (B2 B3 B4 B8 B11 B12), "
                                      "10 m. Demo model trained on one scene crop: expect it to need "
                                      "fine-tuning elsewhere.",
                          rgb=("B4", "B3", "B2"), verbose=2)
    metrics = held_out_metrics(LoadedModel(res.meta, res.keras_model))
    save_model(args.out, res.keras_model, replace(res.meta, metrics=metrics))
    print(json.dumps({"train_seconds": round(res.seconds, 1), **metrics}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
