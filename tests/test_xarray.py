"""geoseg.xarray: DataArrays in, the pixels predict_raster writes out, lazily with dask."""

from __future__ import annotations

import hashlib
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import rasterio

xr = pytest.importorskip("xarray")
rioxarray = pytest.importorskip("rioxarray")
dsa = pytest.importorskip("dask.array")

import geoseg.xarray as gx  # noqa: E402
from geoseg.errors import ConfigError, OutputExistsError, RasterError  # noqa: E402
from geoseg.predict import PredictOptions, predict_raster  # noqa: E402

DATA = Path(__file__).resolve().parents[1] / "geoseg" / "data"
BUNDLED = DATA / "s2_water.geoseg"
GEOSEG = Path(sys.executable).with_name("geoseg")


def md5(p) -> str:
    return hashlib.md5(Path(p).read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def scene(tmp_path_factory):
    d = tmp_path_factory.mktemp("xr")
    p = d / "scene.tif"
    shutil.copy(DATA / "s2_shanghai_scene.tif", p)
    return p


@pytest.fixture(scope="module")
def reference(scene, tmp_path_factory):
    """predict_raster's files for crop and for cosine + flip TTA."""
    d = tmp_path_factory.mktemp("xr_ref")
    out = {}
    for name, kw in {"crop": {}, "cosine": {"blend": "cosine", "tta": "flip"}}.items():
        dst = d / f"{name}.tif"
        predict_raster(scene, dst, BUNDLED, PredictOptions(confidence=True, **kw), confidence_path=d / f"{name}_c.tif",
                       areas_path=d / f"{name}.csv")
        with rasterio.open(dst) as r, rasterio.open(d / f"{name}_c.tif") as c:
            out[name] = {"classes": r.read(1), "confidence": c.read(1), "path": dst, "kw": kw,
                         "block": r.block_shapes[0]}
    return out


@pytest.mark.slow
def test_numpy_backed_equals_predict_raster_with_crs_coords_and_flags(scene, reference):
    da = rioxarray.open_rasterio(scene)
    out = gx.predict(da, BUNDLED)
    ref = reference["crop"]["classes"]
    assert isinstance(out.data, np.ndarray) and out.dtype == np.uint8 and out.dims == ("y", "x")
    assert np.array_equal(out.values, ref)
    assert np.array_equal(out.x.values, da.x.values) and np.array_equal(out.y.values, da.y.values)
    assert out.rio.crs == da.rio.crs and out.rio.transform() == da.rio.transform()
    assert out.rio.nodata == 255
    assert list(out.attrs["flag_values"]) == [0, 1] and out.attrs["flag_meanings"] == "non-water water"
    assert out.attrs["flag_colors"].split()[1].lower() == "#00ffff"


@pytest.mark.slow
@pytest.mark.parametrize("chunks", [{"x": 100, "y": 77}, {"x": -1, "y": -1}, {"x": 256, "y": 300, "band": 2}])
@pytest.mark.parametrize("mode", ["crop", "cosine"])
def test_dask_backed_is_lazy_chunked_as_blocks_and_equal_for_any_chunking(scene, reference, chunks, mode,
                                                                           tmp_path):
    """Any input chunking gives predict_raster's pixels; nothing runs before compute
    (at most 16 input chunks are read for the plan's checks); output chunks are the
    output GeoTIFF's blocks."""
    from geoseg import model as gm
    model = tmp_path / "m.geoseg"  # a bundle this process has not compiled: loads count
    shutil.copy(BUNDLED, model)
    base = rioxarray.open_rasterio(scene, chunks=chunks)
    reads = []

    def counted(block):
        if block.size:  # not dask's own zero-size probe
            reads.append(block.shape)
        return block

    da = base.copy(data=base.data.map_blocks(counted, dtype=base.dtype))
    loads = gm.LOADS["count"]
    ds = gx.predict(da, model, confidence=True, **reference[mode]["kw"])
    nb = da.data.numblocks
    assert len(reads) <= min(16, nb[1] * nb[2]) * nb[0]  # the planning sample only: <= 16 spatial chunks
    assert gm.LOADS["count"] == loads  # no model run yet
    assert isinstance(ds.classes.data, dsa.Array) and isinstance(ds.confidence.data, dsa.Array)
    bh, bw = reference[mode]["block"]
    assert all(c == bh for c in ds.classes.chunks[0][:-1]) and all(c == bw for c in ds.classes.chunks[1][:-1])
    got = ds.compute()  # both variables from one pass of the tasks
    classes, conf = got.classes.values, got.confidence.values
    assert np.array_equal(classes, reference[mode]["classes"])
    assert np.array_equal(conf, reference[mode]["confidence"])
    assert gm.LOADS["count"] == loads + 1  # compiled once for all tasks
    assert ds.classes.rio.crs == base.rio.crs


@pytest.mark.slow
def test_to_geotiff_is_predict_rasters_file_and_areas_match_geoseg_areas(scene, reference, tmp_path):
    ds = gx.predict(rioxarray.open_rasterio(scene, chunks={"x": 200, "y": 200}), BUNDLED, confidence=True)
    out = gx.to_geotiff(ds, tmp_path / "x.tif", confidence_path=tmp_path / "x_c.tif",
                        areas_path=tmp_path / "x.csv")
    ref = reference["crop"]["path"]
    assert md5(out) == md5(ref)  # same pixels, tags, style, blocks: the same bytes
    assert md5(tmp_path / "x.qml") == md5(ref.with_suffix(".qml"))
    assert md5(tmp_path / "x_c.tif") == md5(ref.with_name("crop_c.tif"))
    assert (tmp_path / "x.csv").read_text() == ref.with_name("crop.csv").read_text()
    r = subprocess.run([str(GEOSEG), "areas", str(out)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    table = gx.areas(ds)
    assert table.to_csv(index=False, float_format="%.3f").splitlines()[0] == r.stdout.splitlines()[0]
    for line, (_, row) in zip(r.stdout.splitlines()[1:], table.iterrows()):
        f = line.split(",")
        assert (int(f[0]), f[1], int(f[2])) == (row.class_id, row.class_name, row.pixels)
        assert abs(float(f[3]) - row.area_m2) < 1e-3 and abs(float(f[6]) - row.percent) < 1e-4
    with pytest.raises(OutputExistsError):
        gx.to_geotiff(ds, tmp_path / "x.tif")
    assert md5(out) == md5(ref)


@pytest.mark.slow
def test_bands_matched_by_name_and_nodata_from_fill_value(scene, reference):
    """The band coordinate's names pick the model's bands whatever their order;
    rioxarray's _FillValue (and NaN in a float array) is nodata: 255 out."""
    da = rioxarray.open_rasterio(scene)
    names = ["B02", "B03", "B04", "B08", "B11", "B12"]
    named = da.assign_coords(band=names).isel(band=[5, 2, 0, 4, 1, 3])  # shuffled, names kept
    assert np.array_equal(gx.predict(named, BUNDLED).values, reference["crop"]["classes"])
    holed = da.copy(data=da.values.copy())
    holed.values[:, :50, :60] = 0
    holed = holed.rio.write_nodata(0)
    out = gx.predict(holed, BUNDLED).values
    assert (out[:50, :60] == 255).all() and (out[60:, 70:] != 255).all()
    f = da.astype("float32")
    f.values[:, -20:, -30:] = np.nan
    out = gx.predict(f, BUNDLED, input_offset=0.0).values
    assert (out[-20:, -30:] == 255).all() and (out[:-21, :-31] != 255).all()


def test_bad_inputs_are_one_line_errors(scene):
    da = rioxarray.open_rasterio(scene)
    with pytest.raises(RasterError, match="select one time step"):
        gx.predict(da.expand_dims(time=[0, 1]), BUNDLED)
    with pytest.raises(ConfigError, match="to_array"):
        gx.predict(da.to_dataset(name="img"), BUNDLED)
    with pytest.raises(RasterError, match="rows and columns"):
        gx.predict(xr.DataArray(np.zeros((6, 8, 8)), dims=("b", "r", "c")), BUNDLED)
    with pytest.raises(ConfigError, match="unknown option"):
        gx.predict(da, BUNDLED, tile=3)
    with pytest.raises(RasterError, match="flag_values"):
        gx.areas(da.isel(band=0))


@pytest.mark.slow
def test_lazy_result_computes_on_a_dask_cluster(scene, reference):
    from geoseg.distributed import cluster_client
    with cluster_client(workers=1) as client:
        out = gx.predict(rioxarray.open_rasterio(scene, chunks={"x": 300, "y": 300}), BUNDLED)
        got = client.compute(out.data).result()
    assert np.array_equal(got, reference["crop"]["classes"])


def _readme_blocks(section: str) -> list[str]:
    import re
    text = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    body = text.split(f"## {section}\n", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```python\n(.*?)```", body, re.S)


@pytest.mark.slow
def test_readme_xarray_and_cluster_examples_run_as_written(tmp_path, monkeypatch, capsys):
    (xr_code,) = _readme_blocks("From Python / xarray")
    (cluster_code,) = _readme_blocks("On a cluster")
    monkeypatch.chdir(tmp_path)
    exec(compile(xr_code, "README.md", "exec"), {"__name__": "__main__"})  # noqa: S102 - the README's own example
    exec(compile(cluster_code, "README.md", "exec"), {"__name__": "__main__"})  # noqa: S102
    out = capsys.readouterr().out
    assert "uint8 (545, 625)" in out and "non-water water" in out and "class_name" in out
    assert "blocks from 2 workers" in out
    with rasterio.open(tmp_path / "water_xr.tif") as a, rasterio.open(tmp_path / "water_cluster.tif") as b:
        assert np.array_equal(a.read(1), b.read(1))  # both cosine: the lazy xarray run equals the cluster's file
        assert a.colormap(1)[1][:3] == (0, 255, 255)


@pytest.mark.slow
def test_odc_geo_dataarray(scene, reference):
    """An odc-geo DataArray (GeoBox, band dim first via ``axis``) keeps its grid."""
    from odc.geo.geobox import GeoBox
    from odc.geo.xr import wrap_xr
    with rasterio.open(scene) as s:
        data, crs, transform = s.read(), s.crs, s.transform
    gb = GeoBox(data.shape[1:], transform, str(crs))
    da = wrap_xr(data, gb, axis=1, dims=("band", "y", "x"), nodata=None)
    out = gx.predict(da, BUNDLED)
    assert np.array_equal(out.values, reference["crop"]["classes"])
    assert out.rio.crs == crs and out.rio.transform() == transform
    assert out.odc.geobox == gb
