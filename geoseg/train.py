"""Minimal training: a FlexUNet on random chips from one image/label raster pair.

This is the small, honest trainer the bundled demo model is made with (and that
tests use). It holds the chosen rows of one scene in memory, so it suits sample
scenes; the full workflow (tiling big rasters and folders, streaming tf.data,
callbacks, seed-compatible configs) builds on the same model and bundle code.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from .bundle import ClassInfo, InputSpec, ModelMeta
from .errors import ConfigError

__all__ = ["TrainResult", "train_on_raster", "iou_scores"]


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
    import rasterio  # noqa: PLC0415

    from .model import build_unet, keras_module  # noqa: PLC0415

    keras = keras_module()
    r0, r1 = rows
    with rasterio.open(image_path) as src, rasterio.open(label_path) as lab:
        if len(bands) != src.count:
            raise ConfigError(f"{len(bands)} band names given for {src.count} bands")
        win = rasterio.windows.Window(0, r0, src.width, r1 - r0)
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
    hist = model.fit(batches(), epochs=epochs, steps_per_epoch=steps_per_epoch, verbose=verbose, callbacks=cb)
    seconds = time.perf_counter() - t0
    import keras as _k  # noqa: PLC0415
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
                    "keras": _k.__version__, "backend": _k.backend.backend(),
                    "train_seconds": round(seconds, 1)},
    )
    return TrainResult(meta, model, {k: [float(v) for v in vals] for k, vals in hist.history.items()}, seconds)
