"""Quick-look PNG: class colours blended over a contrast-stretched image."""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Sequence

import numpy as np

from .bundle import ModelMeta
from .sources import CLASS_NODATA, Source

__all__ = ["write_preview", "pyplot"]


def pyplot():
    """``matplotlib.pyplot`` on the headless Agg backend (plots are files, never windows).

    Debian's mpl_toolkits (installed with QGIS) beside a pip matplotlib warns "Unable to
    import Axes3D" at import: that one message is filtered, once, for the process
    (``warnings.catch_warnings`` is not thread-safe, and QGIS runs algorithms off the
    main thread)."""
    warnings.filterwarnings("ignore", message="Unable to import Axes3D")
    import matplotlib  # noqa: PLC0415
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415
    return plt


def _stretch(band: np.ndarray, valid: np.ndarray) -> np.ndarray:
    v = band[valid]
    if v.size == 0:
        return np.zeros(band.shape, np.uint8)
    lo, hi = np.percentile(v, [2, 98])
    if hi <= lo:
        hi = lo + 1
    return (np.clip((band - lo) / (hi - lo), 0, 1) * 255).astype(np.uint8)


def write_preview(src: Source, class_path: str | os.PathLike, out_path: str | os.PathLike,
                  meta: ModelMeta, bands: Sequence[int], max_size: int = 1024, alpha: float = 0.45) -> None:
    """Write a PNG at most ``max_size`` px on its long side (decimated reads: bounded memory)."""
    import rasterio  # noqa: PLC0415
    from rasterio.enums import Resampling  # noqa: PLC0415

    with rasterio.Env():
        scale = min(1.0, max_size / max(src.width, src.height))
        w, h = max(1, round(src.width * scale)), max(1, round(src.height * scale))
        if meta.input.rgb:
            rgb = [bands[meta.input.bands.index(b)] for b in meta.input.rgb]
        elif len(bands) >= 3:
            rgb = list(bands[:3])
        else:
            rgb = [bands[0]] * 3
        img, valid = src.read_decimated(rgb, h, w)
        with rasterio.open(class_path) as cls:
            classes = cls.read(1, out_shape=(h, w), resampling=Resampling.nearest)
        base = np.stack([_stretch(img[i], valid) for i in range(3)]).astype(np.float32)
        lut = np.zeros((256, 3), np.float32)
        for c in meta.classes:
            lut[c.id] = c.rgb
        col = np.moveaxis(lut[classes], -1, 0)
        has = classes != CLASS_NODATA
        if meta.background is not None:
            has &= classes != meta.background
        out = np.where(has[None], (1 - alpha) * base + alpha * col, base)
        out[:, classes == CLASS_NODATA] *= 0.4
        out = np.clip(np.rint(out), 0, 255).astype(np.uint8)
        with rasterio.open(out_path, "w", driver="PNG", width=w, height=h, count=3, dtype="uint8") as dst:
            dst.write(out)
    aux = Path(str(out_path) + ".aux.xml")
    if aux.exists():
        aux.unlink()
