"""What a QGIS user sees when opening geoseg's outputs (headless QGIS)."""

import numpy as np
import pytest

qgis_core = pytest.importorskip("qgis.core")

from conftest import make_meta, threshold_forward  # noqa: E402
from geoseg.model import LoadedModel  # noqa: E402
from geoseg.predict import PredictOptions, predict_raster  # noqa: E402


def test_class_raster_opens_with_names_colours_and_place(qgis_app, make_geotiff, tmp_path):
    from rasterio.transform import from_origin
    rng = np.random.default_rng(0)
    img = rng.random((3, 60, 80)).astype(np.float32)
    src = make_geotiff(img, crs="EPSG:32651", transform=from_origin(358920, 3460330, 10, 10))
    meta = make_meta(classes=((0, "non-water", "#000000"), (1, "water", "#00FFFF")))
    r = predict_raster(src, tmp_path / "water.tif", LoadedModel(meta, None), PredictOptions(),
                       forward=threshold_forward())
    layer = qgis_core.QgsRasterLayer(str(r.output), "water")
    assert layer.isValid()
    assert layer.crs().authid() == "EPSG:32651"
    ext = layer.extent()
    assert (ext.xMinimum(), ext.yMaximum(), ext.xMaximum(), ext.yMinimum()) == (358920, 3460330, 359720, 3459730)
    renderer = layer.renderer()
    assert renderer.type() == "paletted"
    classes = [(int(c.value), c.label, c.color.name()) for c in renderer.classes()]
    assert classes == [(0, "non-water", "#000000"), (1, "water", "#00ffff")]
    dp = layer.dataProvider()
    assert dp.sourceHasNoDataValue(1) and dp.sourceNoDataValue(1) == 255


def test_names_show_without_the_qml(qgis_app, make_geotiff, tmp_path):
    """QGIS 3.22 labels a paletted layer with the GDAL category names geoseg writes (PAM
    .aux.xml beside the file): a class raster copied without its .qml still shows names."""
    import shutil

    from rasterio.transform import from_origin
    rng = np.random.default_rng(0)
    src = make_geotiff(rng.random((3, 40, 50)).astype(np.float32), crs="EPSG:32651",
                       transform=from_origin(358920, 3460330, 10, 10))
    meta = make_meta(classes=((0, "non-water", "#000000"), (1, "water", "#00FFFF")))
    r = predict_raster(src, tmp_path / "water.tif", LoadedModel(meta, None), PredictOptions(),
                       forward=threshold_forward())
    moved = tmp_path / "copy"
    moved.mkdir()
    shutil.copy(r.output, moved / "w.tif")
    shutil.copy(str(r.output) + ".aux.xml", moved / "w.tif.aux.xml")
    layer = qgis_core.QgsRasterLayer(str(moved / "w.tif"), "w")
    labels = {int(c.value): c.label for c in layer.renderer().classes()}
    assert labels[0] == "non-water" and labels[1] == "water"
