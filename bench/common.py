"""Helpers shared by the benchmarks: synthetic rasters and a benchmark model."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def synthetic_s2(path: Path, size: int, seed: int = 0, compress: str | None = None) -> Path:
    """A size x size 6-band uint16 GeoTIFF (tiled 512, uncompressed unless ``compress``),
    written strip by strip."""
    import rasterio
    from rasterio.transform import from_origin
    if path.exists():
        return path
    rng = np.random.default_rng(seed)
    prof = dict(driver="GTiff", width=size, height=size, count=6, dtype="uint16", crs="EPSG:32651",
                transform=from_origin(300000, 3500000, 10, 10), tiled=True, blockxsize=512, blockysize=512,
                interleave="pixel", **({"compress": compress} if compress else {}))
    tmp = path.with_name(path.name + ".part")
    with rasterio.open(tmp, "w", **prof) as dst:
        for r in range(0, size, 512):
            h = min(512, size - r)
            base = rng.integers(200, 4000, (6, h // 8 + 1, size // 8 + 1)).astype(np.uint16)
            block = np.repeat(np.repeat(base, 8, axis=1), 8, axis=2)[:, :h, :size]
            dst.write(block, window=rasterio.windows.Window(0, r, size, h))
    os.replace(tmp, path)
    return path


def bench_model(path: Path, base_filters: int = 16, num_layers: int = 4) -> Path:
    """A UNet bundle shaped like a real one (6 bands, 2 classes, random weights)."""
    from geoseg.bundle import ClassInfo, InputSpec, ModelMeta
    from geoseg.model import build_unet, save_model
    if path.exists():
        return path
    m = build_unet(2, 6, base_filters=base_filters, num_layers=num_layers)
    meta = ModelMeta("bench", (ClassInfo(0, "a", "#000000"), ClassInfo(1, "b", "#FF0000")),
                     InputSpec(("B2", "B3", "B4", "B8", "B11", "B12"), (0.0,) * 6, (1e-4,) * 6, (0.1,) * 6,
                               (0.05,) * 6, 10.0),
                     256, 32, 2 ** (num_layers - 1))
    save_model(path, m, meta)
    return path


def peak_rss_mb() -> float:
    import resource
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
