"""Train the bundled Sentinel-2 water model and report its held-out accuracy.

    .venv/bin/python scripts/train_demo_model.py [--epochs 60] [--out geoseg/data/s2_water.geoseg]
    .venv/bin/python scripts/train_demo_model.py --reevaluate geoseg/data/s2_water.geoseg

Trains on the northern rows (0-299) of the bundled Shanghai scene, predicts the
whole scene with the geoseg engine (default tiling), and reports the IoU of the
water class on the held-out southern rows (300-544), beside the MNDWI > 0
baseline on the same pixels. ``--reevaluate`` recomputes those figures for an
existing bundle with the current engine and rewrites its metadata (the network is
left as it is).
"""

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import rasterio

from geoseg.bundle import ClassInfo
from geoseg.demo import SCENE, TRUTH, S2_BANDS
from geoseg.model import LoadedModel, save_model
from geoseg.predict import PredictOptions, predict_raster
from geoseg.train import iou_scores, train_on_raster

SPLIT = 300


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
    from dataclasses import replace

    if args.reevaluate:
        from geoseg.bundle import MODEL_NAME, read_bundle_member, write_bundle
        from geoseg.model import load_model
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
