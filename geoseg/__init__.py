"""geoseg: streaming, seam-free UNet segmentation of GeoTIFFs with correct class areas.

The public verbs are imported lazily, so ``import geoseg`` stays light (no
TensorFlow, no rasterio until used)::

    from geoseg import predict_raster, predict_array, class_areas, vectorize_classes

Engine internals stay importable from their modules (``geoseg.unit.make_plan``,
``geoseg.unit.process_task``, ``geoseg.windows.make_grid``, ``geoseg.sources``,
``geoseg.output.ClassRasterWriter``).
"""

__version__ = "0.1.0"

_EXPORTS = {
    "predict_raster": "geoseg.predict", "predict_many": "geoseg.predict", "predict_array": "geoseg.predict",
    "PredictOptions": "geoseg.unit", "ArraySource": "geoseg.sources",
    "class_areas": "geoseg.areas", "write_areas_csv": "geoseg.areas", "vectorize_classes": "geoseg.vectorize",
    "evaluate_rasters": "geoseg.evaluate", "evaluate_model_on_raster": "geoseg.evaluate",
    "evaluate_chips": "geoseg.evaluate",
    "tile_rasters": "geoseg.dataset", "tile_folders": "geoseg.dataset",
    "load_config": "geoseg.config", "train": "geoseg.train",
    "load_model": "geoseg.model", "ModelRef": "geoseg.model", "read_metadata": "geoseg.bundle",
}

__all__ = ["__version__", *_EXPORTS]


def __getattr__(name):
    if name in _EXPORTS:
        import importlib
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'geoseg' has no attribute {name!r}")
