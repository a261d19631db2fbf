import hashlib
from pathlib import Path
from dataclasses import replace
import warnings

import numpy as np
import pytest
import rasterio
from rasterio.transform import from_origin

from conftest import box_forward, make_meta, threshold_forward
from geoseg.errors import Cancelled, ConfigError, OutputExistsError, RasterError
from geoseg.model import LoadedModel
from geoseg.predict import PredictOptions, predict_raster
from geoseg.unit import blend_weights


def run(src, dst, model, fwd, **kw):
    opts = kw.pop("options", PredictOptions())
    return predict_raster(src, dst, model, opts, forward=fwd, **kw)


def smooth_image(h, w, bands=3, seed=0):
    rng = np.random.default_rng(seed)
    base = rng.random((bands, h // 8 + 2, w // 8 + 2))
    img = np.kron(base, np.ones((8, 8)))[:, :h, :w]
    return img.astype(np.float32)


@pytest.mark.parametrize("blend", ["crop", "cosine"])
@pytest.mark.parametrize("shape", [(70, 45), (100, 133), (17, 200)])
def test_pointwise_model_tiled_equals_single_window(make_geotiff, tmp_path, blend, shape):
    """A model that looks at each pixel alone must give the same classes however it is tiled."""
    img = smooth_image(*shape)
    src = make_geotiff(img)
    meta = make_meta(tile=32, overlap=8)
    fwd = threshold_forward()
    tiled = run(src, tmp_path / f"t_{blend}.tif", LoadedModel(meta, None), fwd,
                options=PredictOptions(blend=blend, block_size=16 * 3))
    expected = np.argmax(fwd(np.moveaxis(img, 0, -1)[None])[0], -1)
    with rasterio.open(tiled.output) as ds:
        out = ds.read(1)
    assert (out == expected).all()
    assert tiled.counts == {k: int(v) for k, v in zip(*np.unique(expected, return_counts=True))}


def test_georeferencing_and_profile_preserved(make_geotiff, tmp_path, fake_model):
    model, fwd = fake_model
    t = from_origin(358920.0, 3460330.0, 10.0, 10.0)
    src = make_geotiff(smooth_image(70, 45), crs="EPSG:32651", transform=t)
    r = run(src, tmp_path / "o.tif", model, fwd)
    with rasterio.open(r.output) as ds:
        assert ds.crs.to_epsg() == 32651 and ds.transform == t
        assert (ds.width, ds.height, ds.count, ds.dtypes[0]) == (45, 70, 1, "uint8")
        assert ds.nodata == 255 and ds.profile["tiled"] and ds.compression.name.lower() == "deflate"
        assert ds.colormap(1)[1] == (255, 0, 0, 255)
        assert "GEOSEG_CLASSES" in ds.tags()
    assert (tmp_path / "o.qml").exists()
    qml = (tmp_path / "o.qml").read_text()
    assert 'label="bright"' in qml and 'type="paletted"' in qml


def test_rat_written_by_gdal(make_geotiff, tmp_path, fake_model):
    gdal = pytest.importorskip("osgeo.gdal")
    model, fwd = fake_model
    r = run(make_geotiff(smooth_image(40, 40)), tmp_path / "o.tif", model, fwd)
    ds = gdal.Open(str(r.output))
    rat = ds.GetRasterBand(1).GetDefaultRAT()
    assert rat is not None and rat.GetRowCount() == 2
    assert [rat.GetValueAsString(i, 1) for i in range(2)] == ["background", "bright"]


def test_nodata_nan_and_masks(make_geotiff, tmp_path, fake_model):
    model, fwd = fake_model
    img = smooth_image(64, 64)
    img[:, 10:20, 10:20] = -9999          # nodata value
    src = make_geotiff(img, nodata=-9999)
    r = run(src, tmp_path / "a.tif", model, fwd)
    with rasterio.open(r.output) as ds:
        out = ds.read(1)
    assert (out[10:20, 10:20] == 255).all() and (out[:10] != 255).all()
    assert sum(r.counts.values()) == 64 * 64 - 100

    img2 = smooth_image(64, 64)
    img2[1, 30:40, :] = np.nan             # NaN in one band only: pixel invalid
    r2 = run(make_geotiff(img2), tmp_path / "b.tif", model, fwd)
    with rasterio.open(r2.output) as ds:
        out = ds.read(1)
    assert (out[30:40] == 255).all() and (out[:30] != 255).all()

    # alpha band / internal mask
    img3 = (smooth_image(64, 64) * 200).astype(np.uint8)
    p = tmp_path / "masked.tif"
    with rasterio.open(p, "w", driver="GTiff", width=64, height=64, count=3, dtype="uint8",
                       crs="EPSG:32633", transform=from_origin(0, 64, 1, 1)) as ds:
        ds.write(img3)
        m = np.full((64, 64), 255, np.uint8)
        m[:, :16] = 0
        ds.write_mask(m)
    meta = make_meta(scale=1 / 200)
    r3 = run(p, tmp_path / "c.tif", LoadedModel(meta, None), fwd)
    with rasterio.open(r3.output) as ds:
        out = ds.read(1)
    assert (out[:, :16] == 255).all() and (out[:, 16:] != 255).all()


def test_all_nodata_raster_runs_no_model(make_geotiff, tmp_path, fake_model):
    model, _ = fake_model
    calls = []

    def fwd(x):
        calls.append(len(x))
        return threshold_forward()(x)

    src = make_geotiff(np.full((3, 50, 70), -1, np.float32), nodata=-1)
    from geoseg.errors import NoValidDataWarning
    with pytest.warns(NoValidDataWarning, match="no valid input pixel"):
        r = run(src, tmp_path / "o.tif", model, fwd, areas_path=tmp_path / "a.csv")
    assert calls == [] and r.n_windows_run == 0 and r.counts == {}
    assert any("no valid input pixel" in n for n in r.areas.notes)
    with rasterio.open(r.output) as ds:
        assert (ds.read(1) == 255).all()
    lines = (tmp_path / "a.csv").read_text().splitlines()
    assert lines[1].startswith("0,background,0,0.000") and lines[2].startswith("1,bright,0,0.000")


@pytest.mark.parametrize("shape", [(1, 1), (1, 300), (300, 1), (5, 7), (31, 33)])
def test_tiny_and_thin_rasters(make_geotiff, tmp_path, fake_model, shape):
    model, fwd = fake_model
    img = smooth_image(*shape)
    r = run(make_geotiff(img), tmp_path / "o.tif", model, fwd)
    expected = np.argmax(fwd(np.moveaxis(img, 0, -1)[None])[0], -1)
    with rasterio.open(r.output) as ds:
        assert ds.shape == shape
        assert (ds.read(1) == expected).all()


@pytest.mark.parametrize("dtype,scale", [("uint8", 1 / 255), ("uint16", 1e-4), ("int16", 1e-4), ("float32", 1.0)])
def test_input_dtypes(make_geotiff, tmp_path, dtype, scale):
    img = smooth_image(40, 50)
    data = (img / scale).astype(dtype)
    meta = make_meta(scale=scale)
    fwd = threshold_forward()
    r = run(make_geotiff(data), tmp_path / "o.tif", LoadedModel(meta, None), fwd)
    x = np.moveaxis(data.astype(np.float32) * np.float32(scale), 0, -1)[None]
    with rasterio.open(r.output) as ds:
        assert (ds.read(1) == np.argmax(fwd(x)[0], -1)).all()


def test_no_crs_gives_output_without_crs_and_pixel_areas(make_geotiff, tmp_path, fake_model):
    model, fwd = fake_model
    src = make_geotiff(smooth_image(30, 40), crs=None, transform=rasterio.Affine.identity())
    with pytest.warns(UserWarning, match="no CRS"):
        r = run(src, tmp_path / "o.tif", model, fwd, areas_path=tmp_path / "a.csv")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with rasterio.open(r.output) as ds:
            assert ds.crs is None
    rows = (tmp_path / "a.csv").read_text().splitlines()
    assert rows[0].startswith("class_id") and ",," in rows[1]  # no m² without a CRS
    assert sum(int(l.split(",")[2]) for l in rows[1:]) == 1200


def test_same_input_gives_byte_identical_output(make_geotiff, tmp_path, fake_model):
    model, fwd = fake_model
    src = make_geotiff(smooth_image(300, 200))
    digests = []
    for i in range(2):
        r = run(src, tmp_path / f"o{i}.tif", model, fwd, options=PredictOptions(blend="cosine", batch_size=3))
        digests.append(hashlib.sha256(r.output.read_bytes()).hexdigest())
    assert digests[0] == digests[1]


def test_cancel_and_errors_leave_nothing(make_geotiff, tmp_path, fake_model):
    model, fwd = fake_model
    src = make_geotiff(smooth_image(300, 300))
    dst = tmp_path / "o.tif"
    n = {"calls": 0}
    with pytest.raises(Cancelled):
        predict_raster(src, dst, model, PredictOptions(block_size=64), forward=fwd, areas_path=tmp_path / "a.csv",
                       progress=lambda d, t: n.__setitem__("calls", d), is_cancelled=lambda: n["calls"] >= 3)

    def broken(x):
        raise RuntimeError("boom")
    with pytest.raises(RuntimeError):
        predict_raster(src, dst, model, PredictOptions(), forward=broken)
    assert sorted(p.name for p in tmp_path.iterdir()) == [src.name]


def test_existing_output_and_same_as_input(make_geotiff, tmp_path, fake_model):
    model, fwd = fake_model
    src = make_geotiff(smooth_image(20, 20))
    dst = tmp_path / "o.tif"
    dst.write_bytes(b"old")
    with pytest.raises(OutputExistsError):
        run(src, dst, model, fwd)
    assert dst.read_bytes() == b"old"
    run(src, dst, model, fwd, overwrite=True)
    assert dst.read_bytes() != b"old"
    with pytest.raises(RasterError, match="same file as the input"):
        run(src, src, model, fwd, overwrite=True)
    with pytest.raises(ConfigError, match="give the output a .tif name"):
        run(src, tmp_path / "o.png", model, fwd)


def test_band_selection(make_geotiff, tmp_path):
    img = smooth_image(20, 20, bands=5)
    src = make_geotiff(img)
    fwd = threshold_forward()
    meta = make_meta(n_bands=3)
    with pytest.raises(RasterError, match="5 bands but the model expects 3"):
        run(src, tmp_path / "o.tif", LoadedModel(meta, None), fwd)
    r = run(src, tmp_path / "o.tif", LoadedModel(meta, None), fwd, options=PredictOptions(bands=(5, 1, 2)))
    with rasterio.open(r.output) as ds:
        assert (ds.read(1) == (img[4] > 0.5)).all()
    with pytest.raises(RasterError, match="unknown band name"):
        run(src, tmp_path / "o2.tif", LoadedModel(meta, None), fwd, options=PredictOptions(bands=("B4", "B3", "B2")))
    # by band description
    with rasterio.open(src, "r+") as ds:
        for i, d in enumerate(["x", "b3", "b1", "y", "b2"]):
            ds.set_band_description(i + 1, d)
    r = run(src, tmp_path / "o3.tif", LoadedModel(meta, None), fwd)
    with rasterio.open(r.output) as ds:
        assert (ds.read(1) == (img[2] > 0.5)).all()


def test_invalid_options(make_geotiff, tmp_path, fake_model):
    model, fwd = fake_model
    src = make_geotiff(smooth_image(20, 20))
    with pytest.raises(ConfigError, match="less than half"):
        run(src, tmp_path / "o.tif", model, fwd, options=PredictOptions(tile_size=32, overlap=16))
    with pytest.raises(ConfigError):
        PredictOptions(batch_size=0)
    meta = make_meta(multiple=8)
    with pytest.raises(ConfigError, match="multiple of 8"):
        run(src, tmp_path / "o.tif", LoadedModel(meta, None), fwd, options=PredictOptions(tile_size=36, overlap=4))


def test_confidence_cog_preview(make_geotiff, tmp_path, fake_model):
    model, fwd = fake_model
    src = make_geotiff(smooth_image(100, 90))
    r = run(src, tmp_path / "o.tif", model, fwd, confidence_path=tmp_path / "c.tif", cog=True,
            preview_path=tmp_path / "p.png")
    with rasterio.open(r.output) as ds:
        assert ds.colormap(1)[1] == (255, 0, 0, 255)
        assert "LAYOUT" in ds.tags(ns="IMAGE_STRUCTURE") and ds.tags(ns="IMAGE_STRUCTURE")["LAYOUT"] == "COG"
    with rasterio.open(tmp_path / "c.tif") as ds:
        c = ds.read(1)
        assert c.min() >= 50 and c.max() <= 100
    with rasterio.open(tmp_path / "p.png") as ds:
        assert ds.count == 3 and ds.width == 90
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        [src.name, "o.tif", "o.qml", "o.tif.aux.xml", "c.tif", "p.png"])


def test_blend_weights_partition_of_unity():
    w = blend_weights(64, 64, 16)[0] / blend_weights(64, 64, 16)[0].max()
    # two windows overlapping by 16 px: weights sum to 1 across the overlap
    s = w[48:] + w[:16]
    assert np.allclose(s, 1.0, atol=1e-3)


def test_writer_failure_is_raised_and_leaves_nothing(make_geotiff, tmp_path, fake_model, monkeypatch):
    model, fwd = fake_model
    src = make_geotiff(smooth_image(300, 300))
    from geoseg import areas

    def boom(self, *a, **k):
        raise OSError("No space left on device")
    monkeypatch.setattr(areas.AreaAccumulator, "add", boom)
    with pytest.raises(OSError, match="No space left"):
        run(src, tmp_path / "o.tif", model, fwd, options=PredictOptions(block_size=32, prefetch=1))
    assert sorted(p.name for p in tmp_path.iterdir()) == [src.name]


def test_small_raster_padding_reflects_the_image(make_geotiff, tmp_path):
    """Where a window overhangs a small image, the model sees a mirror image, not zeros."""
    seen = []

    def fwd(x):
        seen.append(x.copy())
        return threshold_forward()(x)
    img = smooth_image(20, 10) + 1.0
    meta = make_meta(tile=32, overlap=8, multiple=8)
    run(make_geotiff(img), tmp_path / "o.tif", LoadedModel(meta, None), fwd)
    x = seen[0][0]
    assert x.shape == (24, 16, 3)  # the image rounded up to the alignment (8)
    assert np.allclose(x[20:, :10], x[18:14:-1, :10])  # rows 20.. mirror rows 18, 17, ...
    assert (x != 0).all()


def test_progress_reported_from_calling_thread(make_geotiff, tmp_path, fake_model):
    import threading
    model, fwd = fake_model
    calls = []
    run(make_geotiff(smooth_image(200, 150)), tmp_path / "o.tif", model, fwd,
        options=PredictOptions(block_size=48),
        progress=lambda d, t: calls.append((d, t, threading.current_thread() is threading.main_thread())))
    assert calls and all(c[2] for c in calls)
    assert [c[0] for c in calls] == sorted(c[0] for c in calls)
    assert calls[-1][:2] == (20, 20)  # 5 x 4 blocks of 48 px


def directional_forward():
    """A 'model' that is not symmetric at all: class 1 from running sums along rows and
    columns and the pixel's row, so every flip or rotation changes its answer."""
    def fwd(x):
        h = x.shape[1]
        z = (np.cumsum(x[..., 0], axis=2) / x.shape[2] - np.cumsum(x[..., 1], axis=1) / h
             + np.arange(h, dtype=np.float32)[None, :, None] / h - 0.3 * x[..., 2])
        p = 1.0 / (1.0 + np.exp(-4.0 * z))
        return np.stack([1 - p, p], -1).astype(np.float32)
    return fwd


D4 = [lambda a: a, lambda a: a[:, ::-1], lambda a: a[:, :, ::-1], lambda a: a[:, ::-1, ::-1],
      lambda a: a.transpose(0, 2, 1, 3), lambda a: np.rot90(a, 1, axes=(1, 2)),
      lambda a: np.rot90(a, -1, axes=(1, 2)), lambda a: np.rot90(a, 1, axes=(1, 2))[:, ::-1]]


@pytest.mark.parametrize("mode, n_sym", [("flip", 4), ("d4", 8)])
def test_tta_output_is_equivariant_for_any_model(mode, n_sym):
    """Averaging mapped-back views makes the output follow the image under each symmetry
    of the mode, even for a model that ignores symmetry: wrong inverses would break it."""
    from geoseg.unit import tta_forward
    rng = np.random.default_rng(3)
    x = rng.random((2, 24, 24, 3)).astype(np.float32)
    fwd = directional_forward()
    g = tta_forward(fwd, mode)
    gx = g(x)
    assert gx.shape == (2, 24, 24, 2) and np.allclose(gx.sum(-1), 1, atol=1e-5)
    for k, t in enumerate(D4):
        same = np.allclose(g(np.ascontiguousarray(t(x))), t(gx), atol=1e-5)
        assert same == (k < n_sym), (mode, k)           # the flips only for "flip"; all 8 for "d4"
        if k:
            assert not np.allclose(fwd(np.ascontiguousarray(t(x))), t(fwd(x)), atol=1e-3)  # the model is not
    # an oblong window keeps its shape; a pointwise model is unchanged by TTA
    xo = rng.random((1, 16, 40, 3)).astype(np.float32)
    assert g(xo).shape == (1, 16, 40, 2)
    assert np.allclose(tta_forward(threshold_forward(), mode)(xo), threshold_forward()(xo), atol=1e-6)
    assert tta_forward(fwd, "none") is fwd
    with pytest.raises(ConfigError, match="one of none, flip, d4"):
        tta_forward(fwd, "d8")


def test_tta_through_the_engine(make_geotiff, tmp_path):
    """predict --tta: every window is seen 8 times; a pointwise model gives the same
    classes; a one-window raster gives the argmax of the averaged views."""
    from geoseg.unit import tta_forward
    meta = make_meta(tile=32, overlap=8)
    img = smooth_image(70, 45)
    src = make_geotiff(img)
    calls = []

    def counting(x):
        calls.append(x.shape)
        return threshold_forward()(x)
    plain = run(src, tmp_path / "a.tif", LoadedModel(meta, None), threshold_forward())
    tta = run(src, tmp_path / "b.tif", LoadedModel(meta, None), counting, options=PredictOptions(tta="d4"))
    assert len(calls) == 8 * tta.batches
    with rasterio.open(plain.output) as a, rasterio.open(tta.output) as b:
        assert (a.read(1) == b.read(1)).all()
        assert b.tags()["GEOSEG_TTA"] == "d4" and a.tags()["GEOSEG_TTA"] == "none"
    small = smooth_image(32, 32, seed=5)
    src1 = make_geotiff(small)
    fwd = directional_forward()
    r = run(src1, tmp_path / "c.tif", LoadedModel(meta, None), fwd, options=PredictOptions(tta="flip"))
    with rasterio.open(r.output) as ds:
        out = ds.read(1)
    x = np.moveaxis(small, 0, -1)[None]
    assert (out == np.argmax(tta_forward(fwd, "flip")(x)[0], -1)).all()
    assert not (out == np.argmax(fwd(x)[0], -1)).all()
    with pytest.raises(ConfigError, match="tta must be one of"):
        PredictOptions(tta="yes")


# ---------------------------------------------------------------- stand-ins that can see the bug

def _sig(v):
    return 1.0 / (1.0 + np.exp(-(v - 0.5) * 8.0))


def test_confidence_is_the_winning_probability_and_nodata_255(make_geotiff, tmp_path):
    """Oracle: numpy on the pointwise stand-in: rint(100 * max(p, 1 - p)); 255 on nodata."""
    rng = np.random.default_rng(5)
    data = rng.random((3, 40, 50)).astype(np.float32)
    data[:, 5:9, 10:20] = np.nan
    path = make_geotiff(data)
    m = LoadedModel(make_meta(n_bands=3, tile=32, overlap=8), None)
    predict_raster(path, tmp_path / "o.tif", m, forward=threshold_forward(), confidence_path=tmp_path / "c.tif")
    with rasterio.open(tmp_path / "c.tif") as c:
        conf = c.read(1)
    p = _sig(np.nan_to_num(data[0].astype(np.float64)))
    want = np.rint(100 * np.maximum(p, 1 - p)).astype(np.uint8)
    want[5:9, 10:20] = 255
    assert np.abs(conf.astype(int) - want.astype(int)).max() <= 1  # float32 vs float64 at .5
    assert (conf[5:9, 10:20] == 255).all() and (conf != 255).sum() == 40 * 50 - 40


def _ramp_oracle(r):
    i = np.arange(r)
    return np.sin(0.5 * np.pi * (i + 0.5) / r) ** 2


def test_cosine_blending_weights_by_hand(make_geotiff, tmp_path):
    """A stand-in whose probability is the pixel's column inside its window: the blended
    value in an overlap is sum(w r) / sum(w), with sin² ramps written out here."""
    from geoseg.windows import make_grid
    h, w, tile, ov = 30, 90, 32, 12
    path = make_geotiff(np.zeros((3, h, w), np.float32))

    def position(x):
        n, hh, ww, _ = x.shape
        r = np.broadcast_to(np.arange(ww, dtype=np.float32) / (ww - 1), (n, hh, ww))
        return np.stack([1 - r, r], -1)

    m = LoadedModel(make_meta(n_bands=3, tile=tile, overlap=ov), None)
    predict_raster(path, tmp_path / "o.tif", m, PredictOptions(tile_size=tile, blend="cosine", block_size=208),
                   forward=position, confidence_path=tmp_path / "c.tif")
    with rasterio.open(tmp_path / "c.tif") as c:
        conf = c.read(1).astype(int)
    acc = np.zeros((h, w))
    wsum = np.zeros((h, w))
    for unit in make_grid(w, h, tile, ov, 208):
        for win in unit.windows:
            rw = win.read
            wr = np.ones(rw.width)
            k = min(ov, rw.width // 2)
            wr[:k], wr[rw.width - k:] = _ramp_oracle(k), _ramp_oracle(k)[::-1]
            wr = np.maximum(wr, 1e-3)
            cols = slice(rw.col, rw.col + rw.width)
            acc[:, cols] += wr * (np.arange(rw.width) / (rw.width - 1))
            wsum[:, cols] += wr
    r = acc / wsum
    want = np.rint(100 * np.maximum(r, 1 - r))
    assert np.abs(conf - want).max() <= 1
    # the overlaps really blend (a uniform weighting would give other values there)
    assert len(make_grid(w, h, tile, ov, 208).units[0].windows) >= 3


def test_model_input_is_scaled_as_the_bundle_says(make_geotiff, tmp_path):
    """Non-trivial offset/scale/mean/std: the model receives ((DN + offset) * scale - mean) / std,
    checked against numpy on the raw DNs (one window covers the image)."""
    from geoseg.bundle import InputSpec
    rng = np.random.default_rng(2)
    dn = rng.integers(1000, 6000, (2, 32, 32)).astype(np.uint16)
    path = make_geotiff(dn)
    spec = InputSpec(("b1", "b2"), (-1000.0, -500.0), (1e-4, 2e-4), (0.1, 0.3), (0.05, 0.2))
    meta = replace(make_meta(n_bands=2, tile=32, overlap=0), input=spec)
    seen = []

    def record(x):
        seen.append(x.copy())
        return threshold_forward()(x)

    predict_raster(path, tmp_path / "o.tif", LoadedModel(meta, None), forward=record)
    assert len(seen) == 1 and seen[0].shape == (1, 32, 32, 2)
    for b in range(2):
        want = ((dn[b].astype(np.float64) + spec.offset[b]) * spec.scale[b] - spec.mean[b]) / spec.std[b]
        np.testing.assert_allclose(seen[0][0, ..., b], want, rtol=1e-5, atol=1e-5)


def test_nodata_does_not_leak_into_valid_neighbours(make_geotiff, tmp_path):
    """A -9999 nodata block enters the model as 0: valid pixels next to it match a run
    where the block holds 0 and no nodata is declared (a 5x5 box-mean stand-in)."""
    from conftest import box_forward
    rng = np.random.default_rng(4)
    data = rng.random((3, 60, 70)).astype(np.float32)
    with_nd = data.copy()
    with_nd[:, 20:35, 25:40] = -9999
    zeros = data.copy()
    zeros[:, 20:35, 25:40] = 0
    m = LoadedModel(make_meta(n_bands=3, tile=32, overlap=8), None)
    a = make_geotiff(with_nd, nodata=-9999, name="a.tif")
    b = make_geotiff(zeros, name="b.tif")
    predict_raster(a, tmp_path / "a_o.tif", m, forward=box_forward(threshold=0.4))
    predict_raster(b, tmp_path / "b_o.tif", m, forward=box_forward(threshold=0.4))
    with rasterio.open(tmp_path / "a_o.tif") as oa, rasterio.open(tmp_path / "b_o.tif") as ob:
        ca, cb = oa.read(1), ob.read(1)
    inside = np.zeros(ca.shape, bool)
    inside[20:35, 25:40] = True
    assert (ca[inside] == 255).all()
    assert np.array_equal(ca[~inside], cb[~inside])
    ring = np.zeros(ca.shape, bool)
    ring[17:38, 22:43] = True
    assert (cb[ring & ~inside] == 0).any() and (cb[ring & ~inside] == 1).any()  # the ring is informative


def test_one_band_at_nodata_is_still_valid(make_geotiff, tmp_path, fake_model):
    """GDAL's rule: a pixel is nodata only when all its bands are (oracle: dataset_mask)."""
    data = np.full((3, 40, 40), 200, np.uint8)
    data[1, 5:15, 5:15] = 0            # one band at the nodata value: valid
    data[:, 25:30, 25:30] = 0          # all bands: nodata
    path = make_geotiff(data, nodata=0)
    m, fwd = fake_model
    predict_raster(path, tmp_path / "o.tif", m, forward=fwd)
    with rasterio.open(tmp_path / "o.tif") as o, rasterio.open(path) as src:
        out = o.read(1)
        mask = src.dataset_mask()
    assert np.array_equal(out == 255, mask == 0)
    assert (out[5:15, 5:15] != 255).all() and (out[25:30, 25:30] == 255).all()


def test_windows_without_valid_pixels_are_not_run(make_geotiff, tmp_path, fake_model):
    """Oracle: the windows whose core holds a valid pixel, counted from the grid and the mask."""
    from geoseg.windows import make_grid
    data = np.random.default_rng(0).random((3, 100, 100)).astype(np.float32)
    data[:, :, 48:72] = np.nan          # the left cores of the second block column are all nodata
    path = make_geotiff(data)
    m, fwd = fake_model
    res = predict_raster(path, tmp_path / "o.tif", m, PredictOptions(tile_size=32, block_size=48), forward=fwd)
    valid = ~np.isnan(data[0])
    want = sum(bool(valid[w.core.slices()].any()) for u in make_grid(100, 100, 32, 8, 48) for w in u.windows)
    assert res.n_windows_run == want < res.n_windows


def test_overwrite_without_gdal_removes_the_stale_rat(make_geotiff, tmp_path, fake_model, monkeypatch):
    """An output overwritten where no RAT can be written (no GDAL bindings) loses the old
    .aux.xml, which would describe other data; the colour table is opaque for classes."""
    import geoseg.output
    path = make_geotiff(np.random.default_rng(0).random((3, 40, 40)).astype(np.float32))
    m, fwd = fake_model
    out = tmp_path / "o.tif"
    predict_raster(path, out, m, forward=fwd)
    aux = tmp_path / "o.tif.aux.xml"
    assert aux.exists()
    with rasterio.open(out) as o:
        assert o.colormap(1)[1] == (255, 0, 0, 255) and o.colormap(1)[0] == (0, 0, 0, 255)
    monkeypatch.setattr(geoseg.output, "write_rat", lambda *a, **k: False)
    predict_raster(path, out, m, forward=fwd, overwrite=True)
    assert not aux.exists()
    assert (tmp_path / "o.qml").exists()


def test_predict_areas_on_a_geographic_grid_equal_areas_of_the_written_file(make_geotiff, tmp_path, fake_model):
    """Geodesic row areas: the counts made while writing (block by block, many block rows)
    equal those of ``class_areas`` reading the finished file in its own strips."""
    from rasterio.transform import from_origin

    from geoseg.areas import class_areas
    data = np.random.default_rng(9).random((3, 200, 60)).astype(np.float32)
    path = make_geotiff(data, crs="EPSG:4326", transform=from_origin(10.0, 70.0, 0.25, 0.25))
    m, fwd = fake_model
    res = predict_raster(path, tmp_path / "o.tif", m, PredictOptions(block_size=48), forward=fwd,
                         areas_path=tmp_path / "o.csv")
    again = class_areas(tmp_path / "o.tif")
    assert res.areas.kind == again.kind == "geodesic"
    for cid in (0, 1):
        assert res.areas.by_class()[cid].pixels == again.by_class()[cid].pixels
        assert res.areas.by_class()[cid].area_m2 == pytest.approx(again.by_class()[cid].area_m2, rel=1e-12)


def test_seam_free_on_the_pooling_lattice(make_geotiff, tmp_path):
    """A stand-in that is not shift-invariant (2x2 average pooling on the lattice, then a
    3x3 box, receptive field within overlap/2) gives exactly the one-window result when
    tiled with crop blending — only if every window starts on the pooling lattice."""
    rng = np.random.default_rng(11)
    data = rng.random((3, 130, 203)).astype(np.float32)
    path = make_geotiff(data)

    def pooled(x):
        n, h, w, _ = x.shape
        a = x[..., 0].reshape(n, h // 2, 2, w // 2, 2).mean(axis=(2, 4))
        a = np.repeat(np.repeat(a, 2, axis=1), 2, axis=2)
        p = np.pad(a, ((0, 0), (1, 1), (1, 1)), mode="edge")
        m = sum(p[:, i:i + h, j:j + w] for i in range(3) for j in range(3)) / 9.0
        q = 1.0 / (1.0 + np.exp(-(m - 0.5) * 40.0))
        return np.stack([1 - q, q], -1).astype(np.float32)

    meta = make_meta(n_bands=3, tile=32, overlap=12, multiple=2)
    tiled = tmp_path / "tiled.tif"
    predict_raster(path, tiled, LoadedModel(meta, None), PredictOptions(block_size=48), forward=pooled)
    whole = pooled(np.moveaxis(np.pad(data, ((0, 0), (0, 0), (0, 1)), mode="reflect"), 0, -1)[None])[0]
    expect = np.argmax(whole, -1)[:, :203]
    with rasterio.open(tiled) as o:
        got = o.read(1)
    assert np.array_equal(got, expect)


def test_a_failed_overwrite_leaves_the_old_outputs_untouched(make_geotiff, tmp_path, fake_model):
    path = make_geotiff(np.random.default_rng(0).random((3, 50, 60)).astype(np.float32))
    m, fwd = fake_model
    out, csv = tmp_path / "o.tif", tmp_path / "o.csv"
    predict_raster(path, out, m, forward=fwd, areas_path=csv, confidence_path=tmp_path / "c.tif")
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}

    def broken(x):
        raise RuntimeError("the model failed")

    with pytest.raises(RuntimeError, match="the model failed"):
        predict_raster(path, out, m, forward=broken, areas_path=csv, confidence_path=tmp_path / "c.tif",
                       overwrite=True)
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before


def test_complex_input_is_refused(make_geotiff, tmp_path, fake_model):
    path = make_geotiff(np.ones((3, 20, 20), np.complex64), name="c.tif")
    m, fwd = fake_model
    with pytest.raises(RasterError, match="complex64 values; a model takes real numbers"):
        predict_raster(path, tmp_path / "o.tif", m, forward=fwd)
    assert not (tmp_path / "o.tif").exists()


def test_no_crs_warning_offers_nothing_predict_lacks(make_geotiff, tmp_path, fake_model):
    """predict has no pixel-size option, so its warning for a photo does not suggest one;
    the areas command, which has it, does."""
    from geoseg.areas import class_areas
    from geoseg.errors import NotGeoreferencedWarning
    path = make_geotiff(np.ones((3, 20, 20), np.float32), crs=None, transform=rasterio.Affine.identity())
    m, fwd = fake_model
    with pytest.warns(NotGeoreferencedWarning) as rec:
        predict_raster(path, tmp_path / "o.tif", m, forward=fwd, areas_path=tmp_path / "o.csv")
    assert all("pixel size" not in str(w.message) for w in rec)
    with pytest.warns(NotGeoreferencedWarning, match="give a pixel size"):
        class_areas(tmp_path / "o.tif")


def _rchar() -> int:
    for line in open("/proc/self/io"):
        if line.startswith("rchar:"):
            return int(line.split()[1])
    raise RuntimeError("no rchar")


@pytest.mark.skipif(not Path("/proc/self/io").exists(), reason="Linux /proc/self/io read counters")
def test_each_compressed_input_byte_is_read_once_per_pass(tmp_path, monkeypatch):
    """On a deflate-compressed, tiled, pixel-interleaved 6-band input wider than the
    default GDAL cache could hold by accident: the windows read every byte once (the
    block cache sized to the width; rasterio's int GDAL_CACHEMAX is bytes), and the
    plan's decimated sample once (not once per band)."""
    import rasterio
    from rasterio.transform import from_origin

    import geoseg.predict as gp
    rng = np.random.default_rng(0)

    def scene(path, size):
        prof = dict(driver="GTiff", width=size, height=size, count=6, dtype="uint16", crs="EPSG:32651",
                    transform=from_origin(300000, 3500000, 10, 10), tiled=True, blockxsize=256, blockysize=256,
                    compress="deflate", interleave="pixel")
        with rasterio.open(path, "w", **prof) as dst:  # noisy like real reflectance: tiles of ~100 kB
            dst.write(rng.integers(200, 1200, (6, size, size)).astype(np.uint16))
        return path

    model6 = LoadedModel(make_meta(n_bands=6), None)
    def zero(x):
        p = np.zeros(x.shape[:3] + (2,), np.float32)
        p[..., 0] = 1
        return p
    warm = scene(tmp_path / "warm.tif", 512)
    big = scene(tmp_path / "big.tif", 1792)
    gp.predict_raster(warm, tmp_path / "w.tif", model6, PredictOptions(), forward=zero)
    phase = {}

    def counted(name, fn):
        def run(*a, **k):
            r = _rchar()
            try:
                return fn(*a, **k)
            finally:
                phase[name] = _rchar() - r
        return run
    monkeypatch.setattr(gp, "make_plan", counted("plan", gp.make_plan))
    monkeypatch.setattr(gp, "run_plan", counted("run", gp.run_plan))
    gp.predict_raster(big, tmp_path / "b.tif", model6, PredictOptions(), forward=zero)
    size = big.stat().st_size
    assert phase["run"] / size <= 1.05, phase
    assert phase["plan"] / size <= 1.05, phase
    # and the blocks the plan's checks decoded are not read again: the file once in all
    assert (phase["plan"] + phase["run"]) / size <= 1.05, phase
    assert phase["plan"] / size > 0.2  # (the checks did read their 16 blocks of the 49)


@pytest.mark.parametrize("dtype,blend", [("uint16", "crop"), ("uint16", "cosine"), ("float32", "crop")])
def test_kept_sample_blocks_give_the_same_bytes_and_are_released(tmp_path, monkeypatch, dtype, blend):
    """The run takes the blocks the plan's checks decoded from memory instead of the
    file: the outputs are byte for byte those of reading them (masks, NaN, the
    overhang reflected), and nothing stays kept after the run, nor after a failed one."""
    import hashlib

    import rasterio
    from rasterio.transform import from_origin

    import geoseg.unit as gu
    rng = np.random.default_rng(3)
    size = (700, 900)
    a = rng.integers(200, 1200, (6,) + size).astype(dtype)
    nodata = 0 if dtype == "uint16" else None
    a[:, 100:260, 300:700] = 0 if dtype == "uint16" else np.nan  # a hole across blocks
    path = tmp_path / "in.tif"
    with rasterio.open(path, "w", driver="GTiff", width=size[1], height=size[0], count=6, dtype=dtype,
                       crs="EPSG:32651", transform=from_origin(300000, 3500000, 10, 10), tiled=True,
                       blockxsize=128, blockysize=128, compress="deflate", nodata=nodata) as o:
        o.write(a)
    from dataclasses import replace
    meta = make_meta(n_bands=6, tile=64, overlap=16, multiple=4, scale=1e-4)
    # Sentinel-2 band names: a reflectance model, whose radiometry check reads the sample
    meta = replace(meta, input=replace(meta.input, bands=("B2", "B3", "B4", "B8", "B11", "B12")))
    assert meta.input.physical_units == "reflectance"
    model6 = LoadedModel(meta, None)
    fwd = box_forward(threshold=0.07)
    opts = PredictOptions(blend=blend, confidence=True, tile_size=96)
    outs = {}
    taken = []
    real = gu.read_unit_rect

    def spy(src, plan, rect):
        taken.append(plan.kept is not None and plan.kept in gu._KEPT and bool(gu._KEPT[plan.kept].blocks))
        return real(src, plan, rect)
    monkeypatch.setattr(gu, "read_unit_rect", spy)
    for keep in (True, False):
        monkeypatch.setattr(gu, "KEEP_SAMPLE_BYTES", 96 << 20 if keep else 0)
        taken.clear()
        out = tmp_path / f"{keep}.tif"
        predict_raster(path, out, model6, opts, forward=fwd, confidence_path=tmp_path / f"{keep}_c.tif")
        assert any(taken) == keep
        outs[keep] = [hashlib.sha256(p.read_bytes()).hexdigest() for p in (out, tmp_path / f"{keep}_c.tif")]
        assert gu._KEPT == {}
    assert outs[True] == outs[False]
    monkeypatch.setattr(gu, "KEEP_SAMPLE_BYTES", 96 << 20)
    # where the sample is a small share of the file's blocks, nothing is held
    monkeypatch.setattr(gu, "KEEP_SAMPLE_SHARE", 0.5)  # 16 of these 48 blocks: 0.33
    taken.clear()
    predict_raster(path, tmp_path / "s.tif", model6, opts, forward=fwd)
    assert taken and not any(taken)
    monkeypatch.setattr(gu, "KEEP_SAMPLE_SHARE", 0.04)

    def broken(x):
        raise RuntimeError("model failed")
    with pytest.raises(RuntimeError, match="model failed"):
        predict_raster(path, tmp_path / "x.tif", model6, opts, forward=broken)
    assert gu._KEPT == {} and not (tmp_path / "x.tif").exists()


def test_default_window_is_twice_the_chip_and_the_batch_keeps_its_pixels(monkeypatch):
    """Twice the training chip up to 512 (a larger chip is kept), on the model's
    lattice; batches of about 8 chips of pixels; the chip where memory is short."""
    import geoseg.unit as gu
    from geoseg.unit import default_batch, default_window
    assert default_window(make_meta(tile=32, multiple=2)) == 64
    assert default_window(make_meta(tile=256, multiple=8)) == 512
    assert default_window(make_meta(tile=384, multiple=8)) == 512
    assert default_window(make_meta(tile=512, multiple=8)) == 512
    assert default_window(make_meta(tile=200, multiple=16)) == 400
    m = make_meta(tile=256, multiple=8)
    assert [default_batch(m, t) for t in (256, 512, 768, 1024)] == [8, 2, 1, 1]
    monkeypatch.setattr(gu, "machine_memory_bytes", lambda: 200 << 20)
    assert default_window(m) == 256
    plan_opts = PredictOptions()
    assert plan_opts.batch_size is None and plan_opts.tile_size is None
