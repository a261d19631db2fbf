"""geoseg: streaming, seam-free UNet segmentation of GeoTIFFs with correct class areas.

The public functions are imported lazily, so ``import geoseg`` stays light (no
TensorFlow, no rasterio until used)::

    from geoseg import predict_raster, class_areas, load_model
"""

__version__ = "0.1.0"

_EXPORTS = {
    "predict_raster": "geoseg.predict", "predict_many": "geoseg.predict", "PredictOptions": "geoseg.predict",
    "process_unit": "geoseg.predict", "make_plan": "geoseg.predict",
    "class_areas": "geoseg.areas", "write_areas_csv": "geoseg.areas",
    "load_model": "geoseg.model", "save_model": "geoseg.model", "build_unet": "geoseg.model",
    "read_metadata": "geoseg.bundle", "ModelMeta": "geoseg.bundle",
    "make_grid": "geoseg.windows",
    "evaluate_rasters": "geoseg.evaluate", "evaluate_chips": "geoseg.evaluate",
    "tile_rasters": "geoseg.dataset", "tile_folders": "geoseg.dataset",
    "load_config": "geoseg.config", "train": "geoseg.train",
}

__all__ = ["__version__", *_EXPORTS]


def __getattr__(name):
    if name in _EXPORTS:
        import importlib
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'geoseg' has no attribute {name!r}")
