import csv
import json
import warnings

import numpy as np
import pytest
import rasterio
from click.testing import CliRunner

from geoseg.chips import colour_map_lut, mask_to_classes
from geoseg.dataset import TileOptions, assign_splits, tile_folders, tile_rasters
from geoseg.demo import SCENE, TRUTH
from geoseg.errors import Cancelled, ConfigError, RasterError
from geoseg.windows import chip_origins
from geoseg_cli.main import cli


def manifest(out):
    with open(out / "manifest.csv") as f:
        return list(csv.DictReader(f))


@pytest.mark.parametrize("length,chip,stride", [(100, 32, 32), (100, 32, 20), (32, 32, 32), (10, 32, 32), (97, 32, 50)])
def test_chip_origins_cover_the_axis(length, chip, stride):
    starts = chip_origins(length, chip, stride)
    covered = np.zeros(length, bool)
    for s in starts:
        assert 0 <= s and (s + chip <= length or length < chip)
        covered[s:s + chip] = True
    assert starts == sorted(set(starts))
    if stride <= chip:  # a stride beyond the chip samples sparsely by design
        assert covered.all()


def test_split_by_source_is_deterministic_and_exclusive():
    sources = [f"img{i:02d}" for i in range(40)]
    a = assign_splits(sources, TileOptions(seed=1))
    assert a == assign_splits(list(reversed(sources)), TileOptions(seed=1))  # order does not matter
    assert [list(a.values()).count(s) for s in ("train", "valid", "test")] == [28, 6, 6]
    assert a != assign_splits(sources, TileOptions(seed=2))
    b = assign_splits(["Tile 1/a.jpg", "Tile 7/b.jpg", "Tile 7/c.jpg"], TileOptions(valid_sources=("Tile 7/*",)))
    assert b == {"Tile 1/a.jpg": "train", "Tile 7/b.jpg": "valid", "Tile 7/c.jpg": "valid"}
    c = assign_splits(["Tile 1/a.jpg", "Tile 7/b.jpg", "Tile 8/c.jpg"],
                      TileOptions(valid_sources=("Tile 7/*",), test_sources=("Tile 8/*",)))
    assert c == {"Tile 1/a.jpg": "train", "Tile 7/b.jpg": "valid", "Tile 8/c.jpg": "test"}


def test_tile_big_raster_pair(tmp_path):
    out = tmp_path / "chips"
    rep = tile_rasters([(SCENE, TRUTH)], out, TileOptions(chip=128, stride=100, regions=3), label_nodata=None)
    rows = manifest(out)
    assert len(rows) == sum(rep.chips.values()) > 0
    # a source (region) is never on two sides of the split
    side = {}
    for r in rows:
        assert side.setdefault(r["source"], r["split"]) == r["split"]
    assert len(set(side.values())) == 3
    with rasterio.open(TRUTH) as t, rasterio.open(SCENE) as s:
        truth = t.read(1)
        for r in rows[:: max(1, len(rows) // 7)]:
            with rasterio.open(out / r["mask"]) as m, rasterio.open(out / r["image"]) as im:
                row, col = int(r["row"]), int(r["col"])
                assert (m.read(1) == truth[row:row + 128, col:col + 128]).all()
                # chips keep their georeferencing
                assert im.crs == s.crs and im.transform.c == s.transform.c + 10 * col
                assert im.transform.f == s.transform.f - 10 * row and im.count == 6 and im.dtypes[0] == "uint16"
    # every chip lies inside one region: the union of chips covers the scene
    cover = np.zeros(truth.shape, bool)
    for r in rows:
        cover[int(r["row"]):int(r["row"]) + 128, int(r["col"]):int(r["col"]) + 128] = True
    assert cover.all()
    stats = json.loads((out / "stats.json").read_text())
    assert sum(sum(v.values()) for v in stats["class_pixels"].values()) == sum(
        int(c.split(":")[1]) for r in rows for c in r["classes"].split())


def _write(path, data, palette=None):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with rasterio.open(path, "w", driver="PNG" if str(path).endswith(".png") else "GTiff",
                           width=data.shape[2], height=data.shape[1], count=data.shape[0], dtype="uint8") as d:
            d.write(data)
            if palette:
                d.write_colormap(1, palette)


def test_tile_folders_colour_and_palette_masks(tmp_path):
    rgb_map = {(60, 16, 152): 0, (226, 169, 41): 1}
    imgs, msks = tmp_path / "A" / "images", tmp_path / "A" / "masks"
    imgs.mkdir(parents=True)
    msks.mkdir(parents=True)
    rng = np.random.default_rng(0)
    # an RGB mask with one unmapped colour (black gap)
    m = np.zeros((3, 40, 50), np.uint8)
    m[:, :, :25] = np.array([60, 16, 152])[:, None, None]
    m[:, :, 25:] = np.array([226, 169, 41])[:, None, None]
    m[:, 0:2, 0:3] = 0
    _write(imgs / "one.png", rng.integers(0, 255, (3, 40, 50), dtype=np.uint8))
    _write(msks / "one.png", m)
    # a palette mask: index 0 -> class 0 colour, 1 -> class 1 colour, 2 -> unmapped
    idx = np.zeros((1, 40, 50), np.uint8)
    idx[0, 20:] = 1
    idx[0, 39, :4] = 2
    pal = {0: (60, 16, 152, 255), 1: (226, 169, 41, 255), 2: (9, 9, 9, 255)}
    _write(imgs / "two.png", rng.integers(0, 255, (3, 40, 50), dtype=np.uint8))
    _write(msks / "two.png", idx, pal)
    out = tmp_path / "chips"
    rep = tile_folders([imgs], [msks], out, rgb_map, TileOptions(chip=32, fractions=(1.0, 0.0, 0.0)))
    assert rep.unmapped_colours == {"#000000": 6, "#090909": 4}
    rows = manifest(out)
    assert {r["source"] for r in rows} == {"A/images/one.png", "A/images/two.png"}
    one = [r for r in rows if r["source"].endswith("one.png") and r["row"] == "0" and r["col"] == "0"][0]
    with rasterio.open(out / one["mask"]) as d:
        mk = d.read(1)
    assert (mk[0:2, 0:3] == 255).all() and mk[5, 10] == 0 and mk[5, 30] == 1
    two = [r for r in rows if r["source"].endswith("two.png") and r["row"] == "8" and r["col"] == "0"][0]
    with rasterio.open(out / two["mask"]) as d:
        mk = d.read(1)
    assert mk[0, 0] == 0 and mk[12, 0] == 1 and (mk[31, :4] == 255).all()


def test_mask_lookup_is_exact():
    lut = colour_map_lut({(1, 2, 3): 4, (255, 255, 255): 0})
    rgb = np.array([[[1, 255, 1]], [[2, 255, 2]], [[3, 255, 4]]], np.uint8)
    cls, un = mask_to_classes(rgb, lut)
    assert cls.tolist() == [[4, 0, 255]] and un == {(1 << 16) | (2 << 8) | 4: 1}


def test_all_ignore_chips_are_skipped(make_geotiff, tmp_path):
    img = make_geotiff(np.ones((2, 64, 64), np.uint8), name="i.tif")
    lab = np.full((64, 64), 9, np.uint8)
    lab[:8, :8] = 1
    lp = make_geotiff(lab, nodata=9, name="l.tif")
    rep = tile_rasters([(img, lp)], tmp_path / "c", TileOptions(chip=32, regions=1, fractions=(1, 0, 0)))
    assert rep.chips["train"] == 1 and rep.skipped_chips == 3


def test_tile_errors_leave_nothing(tmp_path, make_geotiff):
    r = CliRunner()
    out = tmp_path / "out"
    res = r.invoke(cli, ["tile", str(out), "--images", str(tmp_path / "nope"), "--masks", str(tmp_path / "nope2"),
                         "--rgb-map", "#000000=0"])
    assert res.exit_code == 1 and "folder not found" in res.output and not out.exists()
    res = r.invoke(cli, ["tile", str(tmp_path / "o2"), "--images", "a", "--masks", "b",
                         "--rgb-map", "#000000=0,#000000=1"])
    assert res.exit_code == 2 and "given twice" in res.output  # click: a bad --rgb-map value
    big = make_geotiff(np.ones((1, 40, 40), np.uint8), name="big.tif")
    other = make_geotiff(np.ones((1, 30, 40), np.uint8), name="other.tif")
    res = r.invoke(cli, ["tile", str(tmp_path / "o3"), "--image", str(big), "--label", str(other)])
    assert res.exit_code == 1 and "30" in res.output and not (tmp_path / "o3").exists()
    # missing parent folders are made (mkdir -p) and removed again on failure
    res = r.invoke(cli, ["tile", str(tmp_path / "new" / "deep" / "o4"), "--image", str(big), "--label", str(other)])
    assert res.exit_code == 1 and not (tmp_path / "new").exists()
    res = r.invoke(cli, ["tile", str(tmp_path / "new" / "deep" / "o5"), "--image", str(big), "--label", str(big),
                         "--chip", "16"])
    assert res.exit_code == 0, res.output
    assert (tmp_path / "new" / "deep" / "o5" / "manifest.csv").exists()
    with pytest.raises(ConfigError):
        TileOptions(fractions=(0.5, 0.2, 0.2))
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "keep.txt").write_text("x")
    with pytest.raises(RasterError, match="not empty") as e:
        tile_rasters([(SCENE, TRUTH)], tmp_path / "full", label_nodata=None)
    assert e.value.option == "overwrite" and "--" not in str(e.value)
    assert (tmp_path / "full" / "keep.txt").read_text() == "x"
    bad = make_geotiff(np.full((40, 40), 300, np.uint16), name="bad.tif")
    with pytest.raises(RasterError, match="label value 300 is not a class index 0..254") as e:
        tile_rasters([(big, bad)], tmp_path / "o6", TileOptions(chip=16), label_nodata=None)
    assert e.value.option == "label_nodata" and "--" not in str(e.value) and not (tmp_path / "o6").exists()


def test_cancelled_tiling_leaves_nothing(tmp_path):
    """progress counts sources (regions, images); a cancel seen after the first one
    stops the run with Cancelled and removes what it wrote: a new folder, and the
    chips written into a folder that was there."""
    calls = []
    out = tmp_path / "new" / "chips"
    with pytest.raises(Cancelled):
        tile_rasters([(SCENE, TRUTH)], out, TileOptions(chip=64, regions=2), label_nodata=None,
                     progress=lambda done, total: calls.append((done, total)), is_cancelled=lambda: bool(calls))
    assert calls == [(1, 4)] and not (tmp_path / "new").exists()
    imgs, msks = tmp_path / "A" / "images", tmp_path / "A" / "masks"
    imgs.mkdir(parents=True)
    msks.mkdir(parents=True)
    for name in ("one.png", "two.png"):
        _write(imgs / name, np.full((3, 40, 50), 7, np.uint8))
        _write(msks / name, np.zeros((3, 40, 50), np.uint8))
    (tmp_path / "there").mkdir()
    calls.clear()
    with pytest.raises(Cancelled):
        tile_folders([imgs], [msks], tmp_path / "there", {(0, 0, 0): 0}, TileOptions(chip=32),
                     progress=lambda done, total: calls.append((done, total)), is_cancelled=lambda: bool(calls))
    assert calls == [(1, 2)] and list((tmp_path / "there").iterdir()) == []
