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
from geoseg.errors import Cancelled, ConfigError, RasterError, SplitWarning
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
    for overwrite in (False, True):  # a folder that is not a tiling run's: refused either way
        with pytest.raises(RasterError, match="not empty and holds keep.txt") as e:
            tile_rasters([(SCENE, TRUTH)], tmp_path / "full", label_nodata=None, overwrite=overwrite)
        assert e.value.option is None and "--" not in str(e.value)
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


# --- tile --overwrite: the earlier run is replaced, nothing else is touched -----------------------------------


def _files(root):
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())


def test_tile_overwrite_replaces_the_earlier_run(tmp_path, make_geotiff):
    r = CliRunner()
    out = tmp_path / "chips"
    args = ["tile", str(out), "--image", str(SCENE), "--label", str(TRUTH), "--label-nodata", "none",
            "--regions", "2"]
    res = r.invoke(cli, [*args, "--chip", "128"])
    assert res.exit_code == 0, res.output
    first = _files(out)
    # again without --overwrite: refused, with the hint; the earlier run stays as it was
    res = r.invoke(cli, [*args, "--chip", "64"])
    assert res.exit_code == 1 and res.output.strip().splitlines()[-1] == (
        f"Error: output directory {out} is not empty (chips of an earlier run) (use --overwrite to replace it)")
    assert _files(out) == first
    # a failing run with --overwrite leaves the earlier run as it was, and no hidden folder
    with rasterio.open(SCENE) as sc:  # a label on the scene's grid, failing at the first chip
        bad = make_geotiff(np.full((sc.height, sc.width), 300, np.uint16), name="bad.tif", crs=sc.crs,
                           transform=sc.transform)
    res = r.invoke(cli, ["tile", str(out), "--image", str(SCENE), "--label", str(bad), "--label-nodata", "none",
                         "--chip", "64", "--overwrite"])
    assert res.exit_code == 1 and "300" in res.output
    assert _files(out) == first and sorted(p.name for p in tmp_path.iterdir()) == ["bad.tif", "chips"]
    # --overwrite: only the new chips remain, and the manifest lists exactly the files on disk
    res = r.invoke(cli, [*args, "--chip", "64", "--overwrite"])
    assert res.exit_code == 0, res.output
    rows = manifest(out)
    on_disk = [f for f in _files(out) if f not in ("manifest.csv", "stats.json")]
    assert sorted([r["image"] for r in rows] + [r["mask"] for r in rows]) == on_disk
    for f in on_disk:
        with rasterio.open(out / f) as d:
            assert (d.width, d.height) == (64, 64)
    stats = json.loads((out / "stats.json").read_text())
    assert sum(stats["chips"].values()) == len(rows)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.tif", "chips"]  # no hidden folders left


@pytest.mark.parametrize("foreign,named", [("notes.txt", "notes.txt"), ("train/images/my_photo.jpg", None),
                                           ("train/labels/a.tif", "train/labels"), ("old/x.tif", "old")])
def test_tile_refuses_a_folder_with_files_it_did_not_write(tmp_path, foreign, named):
    """With and without --overwrite: a one-line error naming the file, nothing deleted."""
    r = CliRunner()
    out = tmp_path / "chips"
    args = ["tile", str(out), "--image", str(SCENE), "--label", str(TRUTH), "--label-nodata", "none",
            "--regions", "2", "--chip", "128"]
    assert r.invoke(cli, args).exit_code == 0
    (out / foreign).parent.mkdir(parents=True, exist_ok=True)
    (out / foreign).write_text("mine")
    before = {f: (out / f).read_bytes() for f in _files(out)}
    for extra in ([], ["--overwrite"]):
        res = r.invoke(cli, [*args, "--chip", "64", *extra])
        lines = res.output.strip().splitlines()
        assert res.exit_code == 1 and len(lines) == 1, res.output
        assert lines[0] == (f"Error: output directory {out} is not empty and holds {named or foreign}, which "
                            "tiling did not write: choose a new or empty folder (nothing was deleted)")
        assert {f: (out / f).read_bytes() for f in _files(out)} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["chips"]


# --- splits stratified by class presence -----------------------------------------------------------------------


def test_split_is_stratified_by_class_presence(tmp_path):
    """The bundled scene in 3 x 3 regions: the seeded order alone put a region without
    water in valid (validation IoU 0 every epoch); stratified, water is in every split."""
    names = [f"s2_shanghai_scene.tif#r{i}c{j}" for i in range(3) for j in range(3)]
    plain = assign_splits(names, TileOptions())
    with warnings.catch_warnings():
        warnings.simplefilter("error", SplitWarning)
        rep = tile_rasters([(SCENE, TRUTH)], tmp_path / "c", TileOptions(chip=128, stride=64, regions=3),
                           label_nodata=None)
    for split in ("train", "valid", "test"):
        assert rep.class_pixels[split].get(1, 0) > 0 and rep.class_pixels[split].get(0, 0) > 0
    stats = json.loads((tmp_path / "c" / "stats.json").read_text())
    assert stats["missing_classes"] == {} and stats["notes"] == []
    # the split sizes are the requested ones, and a swap made the difference
    after = {s: sp for sp, srcs in rep.sources.items() for s in srcs}
    assert sorted(after.values()) == sorted(plain.values()) and after != plain
    # deterministic, and unchanged when no class is missing anywhere
    classes = {s: {0, 1} for s in names}
    assert assign_splits(names, TileOptions(), classes) == plain
    water = {s: {0} | ({1} if s.endswith(("r0c0", "r1c2")) else set()) for s in names}
    a = assign_splits(names, TileOptions(), water)
    assert a == assign_splits(list(reversed(names)), TileOptions(), water)
    # two sources hold class 1: train and one held-out split get it (train first)
    assert min(a[s] for s in names if 1 in water[s]) == "train"
    assert len({a[s] for s in names if 1 in water[s]}) == 2


def test_split_missing_a_class_warns_and_records_it(tmp_path, make_geotiff):
    """Water in one region only: no split can give it to valid and test; the run warns
    (through the warnings module) and stats.json records it; the region trains."""
    img = make_geotiff(np.random.default_rng(0).integers(0, 255, (2, 96, 96), dtype=np.uint8), name="i.tif")
    lab = np.zeros((96, 96), np.uint8)
    lab[70:80, 70:80] = 1  # region r2c2 of 3 x 3
    lp = make_geotiff(lab, name="l.tif")
    with pytest.warns(SplitWarning) as rec:
        rep = tile_rasters([(img, lp)], tmp_path / "c", TileOptions(chip=32, regions=3), label_nodata=None)
    assert rep.class_pixels["train"][1] == 100 and 1 not in rep.class_pixels["valid"]
    msgs = [str(w.message) for w in rec if w.category is SplitWarning]
    assert len(msgs) == 2 and "valid split" in msgs[0] and "test split" in msgs[1]
    assert "class 1: 1 source" in msgs[0]
    stats = json.loads((tmp_path / "c" / "stats.json").read_text())
    assert stats["missing_classes"] == {"valid": [1], "test": [1]} and stats["notes"] == msgs
    # the CLI shows the warning
    res = CliRunner().invoke(cli, ["tile", str(tmp_path / "c2"), "--image", str(img), "--label", str(lp),
                                   "--chip", "32", "--regions", "3", "--label-nodata", "none"])
    assert res.exit_code == 0 and "Warning: class 1 has no pixel in the valid split" in res.output
