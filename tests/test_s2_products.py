"""Sentinel-2 products and STAC items straight into predict (end to end, the real
bundled water model); fixtures built from the bundled scene by tests/test_sentinel2.py."""

import hashlib

import numpy as np
import pytest
import rasterio

from geoseg.demo import MODEL
from geoseg.predict import PredictOptions, predict_many, predict_raster
from geoseg.sentinel2 import S2Source
from test_sentinel2 import Scene, _up, make_safe, make_stac_item, zip_safe


@pytest.fixture(scope="module")
def scene():
    return Scene()


@pytest.fixture(scope="module")
def products(scene, tmp_path_factory):
    root = tmp_path_factory.mktemp("s2e2e")
    out = {}
    for pb in ("02.13", "05.09"):
        safe = make_safe(scene, root / pb.replace(".", ""), pb)
        out[pb] = safe
        out[pb + ".zip"] = zip_safe(safe)
    out["pc"] = make_stac_item(scene, root / "pc", "pc")
    out["e84"] = make_stac_item(scene, root / "e84", "e84")
    return out


def pixels(path):
    with rasterio.open(path) as o:
        return o.read(1)


def stack(scene, path):
    """The same bands as one 6-band GeoTIFF (the 20 m ones replicated 2 x 2), nodata 0."""
    exp = scene.expected()
    data = np.stack([exp[b] for b in scene.bands])
    with rasterio.open(path, "w", driver="GTiff", width=scene.w, height=scene.h, count=6, dtype=data.dtype,
                       crs=scene.crs, transform=scene.transform, nodata=0) as dst:
        dst.write(data)
    return path


def test_both_baselines_equal_the_band_stack(scene, products, tmp_path):
    """PB 02.13 and PB 05.09 (DN + 1000, BOA offset -1000 in the XML) give the class raster
    of the plain 6-band stack, byte for byte where the pixels are concerned (SCL masking
    off here, as the stack has no SCL); the folder, the zip and the XML agree exactly."""
    ref = tmp_path / "stack.tif"
    predict_raster(stack(scene, tmp_path / "stack_in.tif"), ref, MODEL)
    expect = pixels(ref)
    opts = PredictOptions(mask_scl=())
    outs = {}
    for key in ("02.13", "05.09", "05.09.zip"):
        dst = tmp_path / f"{key}.tif"
        predict_raster(products[key], dst, MODEL, opts)
        outs[key] = dst
        assert np.array_equal(pixels(dst), expect), key
    xml = products["05.09"] / "MTD_MSIL2A.xml"
    predict_raster(xml, tmp_path / "xml.tif", MODEL, opts)
    sha = {k: hashlib.sha256(p.read_bytes()).hexdigest() for k, p in
           {"folder": outs["05.09"], "zip": outs["05.09.zip"], "xml": tmp_path / "xml.tif"}.items()}
    assert len(set(sha.values())) == 1, sha
    with rasterio.open(outs["05.09"]) as o:
        tags = o.tags()
        assert o.crs == scene.crs and o.transform == scene.transform
    assert tags["GEOSEG_INPUT_CONVERSION"] == "input metadata" and tags["GEOSEG_INPUT_OFFSET"].startswith("-1000")
    assert tags["GEOSEG_INPUT_LEVEL"] == "L2A"


def test_scl_masked_pixels_are_nodata_and_not_counted(scene, products, tmp_path):
    res = predict_raster(products["05.09"], tmp_path / "o.tif", MODEL, areas_path=tmp_path / "o.csv")
    out = pixels(tmp_path / "o.tif")
    scl = _up(scene.scl20, scene.h, scene.w)
    masked = np.isin(scl, (0, 1, 3, 8, 9, 10))
    assert (out[masked] == 255).all()
    assert (out[~masked & ~scene.corner] != 255).all()      # water (6) and snow (11) are never masked
    assert sum(res.counts.values()) == int((~masked & ~scene.corner).sum())
    none = predict_raster(products["05.09"], tmp_path / "n.tif", MODEL, PredictOptions(mask_scl=()))
    assert sum(none.counts.values()) == int((~scene.corner).sum())


def test_stac_items_give_what_the_safe_gives(products, tmp_path):
    """A Planetary Computer style item (raw DN, s2:processing_baseline) and an Earth
    Search style one (harmonised DN, raster:bands offsets, boa_offset_applied)."""
    from geoseg.errors import RadiometryWarning
    predict_raster(products["05.09"], tmp_path / "safe.tif", MODEL)
    predict_raster(products["pc"], tmp_path / "pc.tif", MODEL)
    with pytest.warns(RadiometryWarning):
        predict_raster(products["e84"], tmp_path / "e84.tif", MODEL)
    assert np.array_equal(pixels(tmp_path / "safe.tif"), pixels(tmp_path / "pc.tif"))
    assert np.array_equal(pixels(tmp_path / "safe.tif"), pixels(tmp_path / "e84.tif"))


def test_products_in_a_folder_run_and_cli(products, tmp_path, runner):
    from geoseg_cli.main import cli
    out = tmp_path / "out"
    out.mkdir()
    predict_many([products["05.09"] / "MTD_MSIL2A.xml", products["02.13.zip"]], out, MODEL)
    names = sorted(p.name for p in out.glob("*_classes.tif"))
    assert len(names) == 2 and all(n.startswith("S2A_MSIL2A_") for n in names)
    res = runner.invoke(cli, ["predict", str(MODEL), str(products["05.09.zip"]), str(tmp_path / "c.tif"),
                              "--areas", "--mask-scl", "3,8,9,10", "--resample", "bilinear"])
    assert res.exit_code == 0, res.output
    with S2Source(products["05.09.zip"], mask_scl=(3, 8, 9, 10), resample="bilinear") as s:
        assert s.mask_scl == (3, 8, 9, 10)
    res = runner.invoke(cli, ["predict", str(MODEL), str(products["05.09"]), str(tmp_path / "d.tif"),
                              "--mask-scl", "12"])
    assert res.exit_code == 2 and "classes 0-11" in res.output


def test_areas_csv_reports_the_masked_area(scene, products, tmp_path):
    res = predict_raster(products["05.09"], tmp_path / "o.tif", MODEL, areas_path=tmp_path / "o.csv")
    scl = _up(scene.scl20, scene.h, scene.w)
    n = int(np.isin(scl, (0, 1, 3, 8, 9, 10)).sum())
    rows = (tmp_path / "o.csv").read_text().splitlines()
    masked = [r for r in rows if r.startswith("255,")]
    assert masked == [f"255,\"masked: scene classification 0,1,3,8,9,10\",{n},{n * 100:.3f},{n / 100:.6f},"
                      f"{n / 1e4:.8f},"]
    assert sum(r.pixels for r in res.areas.rows if r.class_id != 255) == sum(res.counts.values())
    assert sum(r.percent for r in res.areas.rows if r.class_id != 255) == pytest.approx(100.0)


def test_band_files_given_together_are_one_scene(products, tmp_path, runner):
    """--stack: the product's own band files (10 m, 20 m and SCL) as one scene give the
    product's map; the same files of a 05.09 product, which state no offset, are refused
    until the offset is given."""
    from geoseg_cli.main import cli
    for pb in ("02.13", "05.09"):
        predict_raster(products[pb], tmp_path / f"safe{pb}.tif", MODEL)
    files = sorted(str(p) for p in products["02.13"].rglob("IMG_DATA/R*m/*.jp2"))
    assert any("_SCL_" in f for f in files) and len(files) == 8  # 4 x 10 m, B02/B11/B12 x 20 m, SCL
    files = [f for f in files if not ("_B02_20m" in f)]
    res = runner.invoke(cli, ["predict", str(MODEL), *files, str(tmp_path / "stack.tif"), "--stack"])
    assert res.exit_code == 0, res.output
    assert np.array_equal(pixels(tmp_path / "stack.tif"), pixels(tmp_path / "safe02.13.tif"))
    files09 = sorted(str(p) for p in products["05.09"].rglob("IMG_DATA/R*m/*.jp2") if "_B02_20m" not in p.name)
    res = runner.invoke(cli, ["predict", str(MODEL), *files09, str(tmp_path / "s09.tif"), "--stack"])
    assert res.exit_code == 1 and "--input-offset" in res.output
    res = runner.invoke(cli, ["predict", str(MODEL), *files09, str(tmp_path / "s09.tif"), "--stack",
                              "--input-offset", "-1000"])
    assert res.exit_code == 0, res.output
    assert np.array_equal(pixels(tmp_path / "s09.tif"), pixels(tmp_path / "safe05.09.tif"))
    # a folder of band files is one scene too; the 10 m folder alone lacks B11/B12
    with pytest.raises(Exception, match="B11"):
        predict_raster(next(products["02.13"].rglob("R10m")), tmp_path / "r10.tif", MODEL)


def test_l1c_product_into_the_l2a_model_warns_and_is_tagged(scene, tmp_path):
    from geoseg.errors import InputLevelWarning
    l1c = make_safe(scene, tmp_path / "l1c", "02.13", level="L1C")
    with pytest.warns(InputLevelWarning, match="L1C product but the model was trained on L2A"):
        predict_raster(l1c, tmp_path / "o.tif", MODEL)
    with rasterio.open(tmp_path / "o.tif") as o:
        assert o.tags()["GEOSEG_LEVEL_MISMATCH"] == "input L1C, model L2A"
