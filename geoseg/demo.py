"""The bundled sample: a Sentinel-2 L2A scene crop over Shanghai, its water truth
and a small water model trained on the scene's northern part (see data/README.md)."""

from __future__ import annotations

from pathlib import Path

DATA = Path(__file__).resolve().parent / "data"
SCENE = DATA / "s2_shanghai_scene.tif"
TRUTH = DATA / "s2_shanghai_truth.tif"
MODEL = DATA / "s2_water.geoseg"
S2_BANDS = ("B2", "B3", "B4", "B8", "B11", "B12")

__all__ = ["DATA", "SCENE", "TRUTH", "MODEL", "S2_BANDS", "run_demo"]


def run_demo(out_dir: str | Path, overwrite: bool = False, progress=None):
    """Segment the bundled scene with the bundled model into ``out_dir``: class GeoTIFF
    (+ .qml style), areas CSV and quick-look PNG."""
    from .errors import RasterError  # noqa: PLC0415
    from .predict import PredictOptions, predict_raster  # noqa: PLC0415

    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise RasterError(f"{out} exists and is not a directory")
    out.mkdir(parents=True, exist_ok=True)
    from .predict import sidecar_paths  # noqa: PLC0415
    dst = out / "s2_water_classes.tif"
    return predict_raster(SCENE, dst, MODEL, PredictOptions(), overwrite=overwrite, progress=progress,
                          **sidecar_paths(dst, areas=True, preview=True))
