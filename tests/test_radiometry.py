"""Radiometry belongs to the input: offsets, scales, band names, nodata, product level."""

import numpy as np
import pytest
import rasterio

from geoseg.demo import MODEL, SCENE
from geoseg.errors import InputLevelWarning, RasterError, UndeclaredNodataWarning
from geoseg.predict import PredictOptions, predict_raster
from geoseg.sources import ArraySource

S2 = ["B2", "B3", "B4", "B8", "B11", "B12"]


@pytest.fixture(scope="module")
def scene():
    with rasterio.open(SCENE) as src:
        return src.read(), src.profile


@pytest.fixture(scope="module")
def reference(scene, tmp_path_factory):
    out = tmp_path_factory.mktemp("ref") / "ref.tif"
    predict_raster(SCENE, out, MODEL)
    with rasterio.open(out) as o:
        return o.read(1)


def write(path, data, profile, **kw):
    prof = dict(profile, count=data.shape[0], dtype=str(data.dtype))
    prof.update({k: v for k, v in kw.items() if k not in ("scales", "offsets", "descriptions")})
    with rasterio.open(path, "w", **prof) as dst:
        dst.write(data)
        if "scales" in kw:
            dst.scales, dst.offsets = kw["scales"], kw["offsets"]
        for i, d in enumerate(kw.get("descriptions", [])):
            dst.set_band_description(i + 1, d)
    return path


def classes(path):
    with rasterio.open(path) as o:
        return o.read(1), o.tags()


def test_offset_product_without_metadata_is_refused_then_honoured(scene, reference, tmp_path):
    """A baseline >= 04.00 product (DN + 1000) with nothing stating its offset gave 0 %
    water silently; now it is refused, naming the option, and with input_offset=-1000
    it gives the original map exactly."""
    data, prof = scene
    shifted = write(tmp_path / "pb0509.tif", (data.astype(np.uint16) + 1000), prof)
    with pytest.raises(RasterError, match="looks like a Sentinel-2 product with the BOA offset") as e:
        predict_raster(shifted, tmp_path / "o.tif", MODEL)
    assert e.value.option == "input_offset" and not (tmp_path / "o.tif").exists()
    predict_raster(shifted, tmp_path / "o.tif", MODEL, PredictOptions(input_offset=-1000.0))
    got, tags = classes(tmp_path / "o.tif")
    assert np.array_equal(got, reference)
    assert tags["GEOSEG_INPUT_CONVERSION"] == "options" and tags["GEOSEG_INPUT_OFFSET"].startswith("-1000")


def test_gdal_scale_and_offset_in_the_file_are_used(scene, reference, tmp_path):
    """The same offset product stating its conversion as GDAL band scale/offset
    (reflectance = DN x 1e-4 - 0.1) gives the original map with no option."""
    data, prof = scene
    p = write(tmp_path / "stated.tif", data.astype(np.uint16) + 1000, prof,
              scales=[1e-4] * 6, offsets=[-0.1] * 6)
    predict_raster(p, tmp_path / "o.tif", MODEL)
    got, tags = classes(tmp_path / "o.tif")
    assert np.array_equal(got, reference)
    assert tags["GEOSEG_INPUT_CONVERSION"] == "input metadata"


@pytest.mark.parametrize("names", [["B02", "B03", "B04", "B08", "B11", "B12"],
                                   ["blue", "green", "red", "nir", "swir16", "swir22"],
                                   ["B12", "B11", "B08", "B04", "B03", "B02"]])
def test_bands_resolve_by_alias_in_any_order(scene, reference, tmp_path, names):
    data, prof = scene
    order = [S2.index(n) if n in S2 else ["B02", "B03", "B04", "B08", "B11", "B12"].index(n) if n.startswith("B")
             else ["blue", "green", "red", "nir", "swir16", "swir22"].index(n) for n in names]
    p = write(tmp_path / "named.tif", data[order], prof, descriptions=names)
    predict_raster(p, tmp_path / "o.tif", MODEL)
    assert np.array_equal(classes(tmp_path / "o.tif")[0], reference)


def test_other_band_names_are_refused_with_both_lists(scene, tmp_path):
    data, prof = scene
    p = write(tmp_path / "b8a.tif", data, prof, descriptions=["B02", "B03", "B04", "B8A", "B11", "B12"])
    with pytest.raises(RasterError, match=r"do not include the model's B8 \(the model takes B2, B3, B4, B8, B11, "
                                          r"B12\)") as e:
        predict_raster(p, tmp_path / "o.tif", MODEL)
    assert "4=B8A" in str(e.value) and e.value.option == "bands"


def test_src_nodata_and_the_zero_border_warning(scene, tmp_path):
    data, prof = scene
    d = data.copy()
    d[:, :, :100] = 0  # an undeclared swath edge
    p = write(tmp_path / "edge.tif", d, prof)
    with pytest.warns(UndeclaredNodataWarning, match="0 in every band and no nodata is declared"):
        r1 = predict_raster(p, tmp_path / "a.tif", MODEL)
    r2 = predict_raster(p, tmp_path / "b.tif", MODEL, PredictOptions(src_nodata=0))
    a, _ = classes(tmp_path / "a.tif")
    b, _ = classes(tmp_path / "b.tif")
    assert (a[:, :100] != 255).all() and (b[:, :100] == 255).all()
    assert sum(r2.counts.values()) == sum(r1.counts.values()) - 545 * 100
    assert np.array_equal(a[:, 260:], b[:, 260:])  # beyond the windows that see the edge


def test_level_mismatch_warns_and_is_tagged(scene, tmp_path):
    data, prof = scene
    src = ArraySource(data, crs=prof["crs"], transform=prof["transform"], band_names=S2, level="L1C")
    with pytest.warns(InputLevelWarning, match="L1C product but the model was trained on L2A"):
        predict_raster(src, tmp_path / "o.tif", MODEL)
    tags = classes(tmp_path / "o.tif")[1]
    assert tags["GEOSEG_INPUT_LEVEL"] == "L1C" and tags["GEOSEG_LEVEL_MISMATCH"] == "input L1C, model L2A"


def test_bundle_states_or_infers_its_physical_input(tmp_path):
    from geoseg.bundle import read_metadata
    meta = read_metadata(MODEL)
    assert meta.input.units == "" and meta.input.physical_units == "reflectance" and meta.input_level == "L2A"
    from conftest import make_meta
    assert make_meta().input.physical_units == ""  # not Sentinel-2 bands: nothing inferred


def test_cli_names_the_option_and_honours_it(scene, reference, tmp_path, runner):
    from geoseg_cli.main import cli
    data, prof = scene
    shifted = write(tmp_path / "pb0509.tif", (data.astype(np.uint16) + 1000), prof)
    res = runner.invoke(cli, ["predict", str(MODEL), str(shifted), str(tmp_path / "o.tif")])
    assert res.exit_code == 1 and "--input-offset" in res.output and "Traceback" not in res.output
    assert not (tmp_path / "o.tif").exists()
    res = runner.invoke(cli, ["predict", str(MODEL), str(shifted), str(tmp_path / "o.tif"), "--input-offset", "-1000"])
    assert res.exit_code == 0, res.output
    assert np.array_equal(classes(tmp_path / "o.tif")[0], reference)
    res = runner.invoke(cli, ["predict", str(MODEL), str(shifted), str(tmp_path / "p.tif"), "--input-scale", "0"])
    assert res.exit_code == 1 and "input_scale must not be 0" in res.output
