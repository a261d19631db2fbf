"""geoseg for QGIS: a Processing provider (Segment raster, Class areas, Vectorize classes).

Loading the plugin imports neither TensorFlow nor the geoseg core: the model runs in
geoseg's own Python environment through ``geoseg --progress jsonl`` (see runner.py).
"""


def classFactory(iface):  # noqa: N802  (QGIS's name)
    from .plugin import GeosegPlugin
    return GeosegPlugin(iface)
