"""geoseg vectorize: class raster -> polygons (GeoPackage), streamed by strips."""

import json
import math
import os
import subprocess
import sys
import textwrap
from importlib.util import find_spec
from pathlib import Path

import numpy as np
import pyogrio
import pyproj
import pytest
import rasterio
import shapely
from rasterio.features import shapes
from rasterio.transform import Affine, from_origin

from conftest import DATA
from geoseg.areas import class_areas
from geoseg.demo import TRUTH
from geoseg.errors import Cancelled, ConfigError, OutputExistsError, RasterError
from geoseg.vectorize import vectorize_classes
from geoseg_cli.main import cli

ROOT = Path(__file__).resolve().parents[1]
T10 = from_origin(500000, 4000000, 10, 10)  # 10 m UTM pixels: 100 m² each
TILED = dict(tiled=True, blockxsize=16, blockysize=16)


def designed(h=97, w=70) -> np.ndarray:
    """Blocky random classes 0-2 with shapes that cross block edges, holes, an island in
    a hole, pixels touching only at a corner across row 32 and a nodata corner (255)."""
    rng = np.random.default_rng(5)
    a = np.kron(rng.integers(0, 3, (25, 18)), np.ones((4, 4), int))[:97, :70].astype(np.uint8)
    a[rng.random(a.shape) < 0.05] = 1               # speckle
    a[10:81, 5:40] = 1                              # a frame of class 1 over many strips ...
    a[20:71, 15:30] = 2                             # ... around a hole of class 2 ...
    a[40:46, 20:25] = 1                             # ... holding an island of class 1
    a[50:90, 45:65] = 2                             # a second frame (class 2), its hole closed only
    a[55:85, 50:60] = 0                             # in a later strip
    a[28:36, 61:69] = 0                             # two class-1 pixels touching at a corner only,
    a[31, 63] = a[32, 64] = 1                       # across the block edge at row 32
    a[0:6, 50:70] = 255                             # nodata
    return a[:h, :w].copy()


@pytest.fixture
def blobs(make_geotiff):
    a = designed()
    return make_geotiff(a, transform=T10, nodata=255, name="blobs.tif", **TILED), a


def read_layer(path, layer=None):
    """(geometries, class_id, class_name, area_m2) of the polygon layer."""
    _meta, _fids, geoms, fields = pyogrio.raw.read(path, layer=layer or Path(path).stem)
    return shapely.from_wkb(geoms), fields[0], fields[1], fields[2]


def as_set(geoms, ids):
    return sorted((int(c), shapely.normalize(g).wkt) for g, c in zip(geoms, ids))


def oracle(a, mask, transform=T10, connectivity=4):
    """Whole-raster polygonize: what the streamed result must equal."""
    return [(shapely.geometry.shape(g), int(v))
            for g, v in shapes(a, mask=mask, connectivity=connectivity, transform=transform)]


def per_class(ids, values):
    out = {}
    for c, v in zip(ids, values):
        out[int(c)] = out.get(int(c), 0.0) + float(v)
    return out


# ------------------------------------------------------------------ streaming = whole raster

@pytest.mark.parametrize("strip_rows", [1, 7, 16, None])
def test_streamed_polygons_equal_whole_raster_polygonize(blobs, tmp_path, strip_rows):
    path, a = blobs
    r = vectorize_classes(path, tmp_path / "v.gpkg", strip_rows=strip_rows)
    assert r.strips == (math.ceil(97 / strip_rows) if strip_rows else 1)
    geoms, ids, _names, areas = read_layer(r.output)
    ref = oracle(a, a != 255)
    assert as_set(geoms, ids) == as_set([g for g, _ in ref], [c for _, c in ref])
    assert shapely.is_valid(geoms).all() and set(shapely.get_type_id(geoms)) == {3}  # Polygons
    assert r.features == len(ref)
    for c in r.classes:
        assert c.features == sum(1 for _, v in ref if v == c.class_id)
    # the designed shapes, spelled out
    frame = [g for g, c in zip(geoms, ids) if c == 1 and g.contains(shapely.Point(500000 + 55, 4000000 - 105))]
    assert len(frame) == 1 and len(frame[0].interiors) >= 1          # one polygon over 71 rows, with its hole
    island = shapely.box(500000 + 200, 4000000 - 460, 500000 + 250, 4000000 - 400)
    assert any(c == 1 and g.equals(island) for g, c in zip(geoms, ids))
    corner = shapely.box(500000 + 625, 4000000 - 325, 500000 + 645, 4000000 - 315)  # around the shared corner
    touching = [g for g, c in zip(geoms, ids) if c == 1 and g.intersects(corner)]
    assert sorted(g.area for g in touching) == [100.0, 100.0]          # 4-connectivity: two polygons
    if strip_rows and strip_rows <= 16:
        assert r.peak_open_vertices > 0


@pytest.mark.parametrize("seed", range(8))
def test_random_rasters_equal_whole_raster_polygonize(make_geotiff, tmp_path, seed):
    """Noisy blocky classes: many pieces per polygon, holes closed across strips, corners
    meeting on strip edges."""
    rng = np.random.default_rng(100 + seed)
    h, w, k, cell = int(rng.integers(20, 70)), int(rng.integers(20, 70)), int(rng.integers(2, 5)), int(rng.integers(1, 4))
    a = np.kron(rng.integers(0, k, (h // cell + 1, w // cell + 1)), np.ones((cell, cell), int))[:h, :w]
    a[rng.random((h, w)) < 0.15] = 0
    path = make_geotiff(a.astype(np.uint8), transform=T10)
    ref = oracle(a.astype(np.uint8), None)
    for rows in (1, 3):
        geoms, ids, _n, _a = read_layer(vectorize_classes(path, tmp_path / f"v{rows}.gpkg", strip_rows=rows).output)
        assert as_set(geoms, ids) == as_set([g for g, _ in ref], [c for _, c in ref])
        assert shapely.is_valid(geoms).all()


def test_eight_connectivity_joins_corners_and_equals_whole_raster(blobs, tmp_path):
    path, a = blobs
    for rows in (1, 16):
        r = vectorize_classes(path, tmp_path / f"v{rows}.gpkg", connectivity=8, strip_rows=rows)
        geoms, ids, _n, _a = read_layer(r.output)
        ref = oracle(a, a != 255, connectivity=8)
        assert len(geoms) == len(ref) and shapely.is_valid(geoms).all()
        key = lambda g, c: (c, round(g.area, 6), tuple(np.round(g.bounds, 6)))  # noqa: E731
        mine = sorted(((key(g, int(c)), g) for g, c in zip(geoms, ids)), key=lambda t: t[0])
        theirs = sorted(((key(g, c), shapely.make_valid(g)) for g, c in ref), key=lambda t: t[0])
        assert [k for k, _ in mine] == [k for k, _ in theirs]
        assert all(shapely.equals(g, h) for (_, g), (_, h) in zip(mine, theirs))
        corner = shapely.Point(500000 + 640, 4000000 - 320)
        assert [g.area for g, c in zip(geoms, ids) if c == 1 and g.intersects(corner)] == [200.0]


# ------------------------------------------------------------------ areas

@pytest.mark.parametrize("case", ["blobs", "s2_truth", "nc_float32"])
def test_polygon_areas_per_class_equal_raster_areas(blobs, tmp_path, case):
    path, nodata = {"blobs": (blobs[0], "auto"), "s2_truth": (TRUTH, None),
                    "nc_float32": (DATA / "nc_strata.tif", "auto")}[case]
    r = vectorize_classes(path, tmp_path / "v.gpkg", nodata=nodata, strip_rows=13)
    _g, ids, _n, areas = read_layer(r.output)
    table = class_areas(path, nodata=nodata).by_class()
    got = per_class(ids, areas)
    assert set(got) == set(table)
    for cid, row in table.items():
        assert got[cid] == pytest.approx(row.area_m2, rel=1e-12, abs=1e-6), cid
        assert r.by_class()[cid].area_m2 == pytest.approx(row.area_m2, rel=1e-12)
        assert r.by_class()[cid].features == int(np.sum(ids == cid))


def test_simplified_areas_within_the_tolerance_bound(blobs, tmp_path):
    path, _a = blobs
    tol = 15.0  # CRS units (m): 1.5 pixels
    exact = vectorize_classes(path, tmp_path / "exact.gpkg", strip_rows=16)
    simple = vectorize_classes(path, tmp_path / "simple.gpkg", simplify=tol, strip_rows=16)
    g0, ids0, _n0, a0 = read_layer(exact.output)
    g1, ids1, _n1, a1 = read_layer(simple.output)
    assert np.array_equal(ids0, ids1)  # the same polygons, in the same order
    assert shapely.is_valid(g1).all()
    assert np.array_equal(shapely.get_num_interior_rings(g1), shapely.get_num_interior_rings(g0))
    assert shapely.get_num_coordinates(g1).sum() < 0.8 * shapely.get_num_coordinates(g0).sum()
    # area_m2 is measured on the polygon as written, not carried over from the pixels
    assert np.allclose(a1, shapely.area(g1), rtol=1e-12)
    assert not np.allclose(a1, a0)
    # each outline moved by at most the tolerance (twice it next to a ring's first vertex, which
    # GEOS drops when it is within the tolerance of its neighbours' new segment), so each area
    # changed by at most the area of that band around the outline
    moved = 2 * tol
    assert (shapely.hausdorff_distance(g0, g1) <= moved * (1 + 1e-9)).all()
    rings = 1 + shapely.get_num_interior_rings(g0)
    bound = 2 * moved * shapely.length(g0) + rings * math.pi * moved ** 2
    assert (np.abs(a1 - a0) <= bound).all()
    table = class_areas(path).by_class()
    for cid, row in table.items():
        sel = ids1 == cid
        assert abs(a1[sel].sum() - row.area_m2) <= bound[sel].sum(), cid
    # the minimum area applies to the exact (pixel) area, before simplification
    limit = 650.0
    assert ((a0 >= limit) != (a1 >= limit)).any()  # polygons a filter after simplifying would judge otherwise
    both = vectorize_classes(path, tmp_path / "both.gpkg", simplify=tol, min_area=limit, strip_rows=16)
    g2, ids2, _n2, a2 = read_layer(both.output)
    assert np.array_equal(a2, a1[a0 >= limit]) and both.dropped == int((a0 < limit).sum())


def test_simplified_polygons_keep_their_holes_apart(make_geotiff, tmp_path):
    """Thin walls between holes and the outside: simplifying each ring on its own would
    make rings cross; the polygons written are valid and keep every hole."""
    rng = np.random.default_rng(0)
    a = np.zeros((30, 30), np.uint8)
    a[5:25, 5:25] = 1
    a[6:24, 6:24][rng.random((18, 18)) < 0.6] = 0
    a[rng.random((30, 30)) < 0.05] = 1
    path = make_geotiff(a, transform=T10)
    g0, _i, _n, _a = read_layer(vectorize_classes(path, tmp_path / "exact.gpkg").output)
    g1, _i, _n, _a = read_layer(vectorize_classes(path, tmp_path / "simple.gpkg", simplify=15.0).output)
    crossing = 0
    for g in g0[shapely.get_num_interior_rings(g0) > 0]:
        rings = shapely.simplify(shapely.get_rings(g), 15.0, preserve_topology=True)
        crossing += not shapely.polygons(rings[0], holes=rings[1:]).is_valid
    assert crossing >= 1
    assert shapely.is_valid(g1).all()
    assert np.array_equal(shapely.get_num_interior_rings(g1), shapely.get_num_interior_rings(g0))


def _geodesic(g, step):
    """Oracle: pyproj's geodesic area, edges cut to the pixel size (they follow parallels)."""
    g = shapely.segmentize(shapely.orient_polygons(g), step)
    return abs(pyproj.Geod(ellps="WGS84").geometry_area_perimeter(g)[0])


def test_geographic_crs_areas_are_geodesic(make_geotiff, tmp_path):
    a = designed(60, 50)
    t = from_origin(10.0, 61.0, 0.01, 0.01)  # ~ 540 m x 1.1 km pixels at 60° N
    path = make_geotiff(a, crs="EPSG:4326", transform=t, nodata=255, **TILED)
    r = vectorize_classes(path, tmp_path / "geo.gpkg", strip_rows=16)
    assert r.area_kind == "geodesic"
    geoms, ids, _n, areas = read_layer(r.output)
    table = class_areas(path).by_class()
    got = per_class(ids, areas)
    for cid, row in table.items():
        assert got[cid] == pytest.approx(row.area_m2, rel=1e-12)
    oracle_areas = np.array([_geodesic(g, 0.01) for g in geoms])
    assert np.allclose(areas, oracle_areas, rtol=1e-6)
    assert not np.allclose(areas, shapely.area(geoms) * 1.2e10, rtol=0.05)  # not degrees² scaled
    # simplified: measured on the written polygon
    r2 = vectorize_classes(path, tmp_path / "geo_s.gpkg", simplify=0.015, strip_rows=16)
    g2, _ids2, _n2, a2 = read_layer(r2.output)
    assert shapely.get_num_coordinates(g2).sum() < shapely.get_num_coordinates(geoms).sum()
    assert np.allclose(a2, [_geodesic(g, 0.01) for g in g2], rtol=1e-6)


# ------------------------------------------------------------------ filters and nodata

def test_classes_filter(blobs, tmp_path):
    path, a = blobs
    r = vectorize_classes(path, tmp_path / "c2.gpkg", classes=[2], strip_rows=16)
    geoms, ids, _n, _a = read_layer(r.output)
    assert set(ids) == {2} and [c.class_id for c in r.classes] == [2]
    ref = oracle(a, a == 2)
    assert as_set(geoms, ids) == as_set([g for g, _ in ref], [c for _, c in ref])
    r = vectorize_classes(path, tmp_path / "c01.gpkg", classes=(0, 1), strip_rows=16)
    assert set(read_layer(r.output)[1]) == {0, 1}


def test_min_area_drops_small_polygons_after_merging(blobs, tmp_path):
    path, a = blobs
    r = vectorize_classes(path, tmp_path / "m.gpkg", min_area=450.0, strip_rows=7)
    geoms, ids, _n, areas = read_layer(r.output)
    assert (areas >= 450.0).all()
    ref = oracle(a, a != 255)
    big = [(g, c) for g, c in ref if g.area >= 450.0]
    assert as_set(geoms, ids) == as_set([g for g, _ in big], [c for _, c in big])
    assert r.dropped == len(ref) - len(big) > 0
    # the frame is cut into 11 strips, each piece far below the threshold would it not be merged
    r = vectorize_classes(path, tmp_path / "m2.gpkg", classes=[1], min_area=150_000.0, strip_rows=7)
    assert r.features == 1


def test_nodata_is_never_vectorized(blobs, tmp_path):
    path, a = blobs
    nodata_box = shapely.box(500000 + 500, 4000000 - 60, 500000 + 700, 4000000)
    r = vectorize_classes(path, tmp_path / "a.gpkg", strip_rows=16)
    geoms, ids, _n, areas = read_layer(r.output)
    assert 255 not in set(ids) and 255 not in r.by_class()
    assert shapely.union_all(geoms).intersection(nodata_box).area == 0
    assert areas.sum() == pytest.approx(100.0 * (a != 255).sum(), rel=1e-12)
    # 'none': every value is a class, 255 too; a number overrides the raster's nodata
    r = vectorize_classes(path, tmp_path / "b.gpkg", nodata=None)
    got = per_class(read_layer(r.output)[1], read_layer(r.output)[3])
    assert got[255] == pytest.approx(100.0 * (a == 255).sum())
    r = vectorize_classes(path, tmp_path / "c.gpkg", nodata=0)
    assert set(read_layer(r.output)[1]) == {1, 2, 255}
    with pytest.raises(ConfigError, match="nodata") as e:
        vectorize_classes(path, tmp_path / "d.gpkg", classes=[255])
    assert e.value.option == "classes"


# ------------------------------------------------------------------ outputs, errors, cancel

def test_outputs_are_checked_first(blobs, tmp_path):
    path, _a = blobs
    out = tmp_path / "v.gpkg"
    vectorize_classes(path, out)
    with pytest.raises(OutputExistsError):
        vectorize_classes(path, out)
    assert vectorize_classes(path, out, overwrite=True, classes=[1]).by_class().keys() == {1}
    assert set(read_layer(out)[1]) == {1}
    with pytest.raises(RasterError, match="same file as the input"):
        vectorize_classes(path, path, overwrite=True)
    with pytest.raises(ConfigError, match="GeoPackage"):
        vectorize_classes(path, tmp_path / "v.shp")
    for bad in (dict(min_area=-1), dict(simplify=float("nan")), dict(connectivity=6)):
        with pytest.raises(ConfigError):
            vectorize_classes(path, tmp_path / "bad.gpkg", **bad)
    assert not (tmp_path / "bad.gpkg").exists()


def test_no_crs_needs_a_pixel_size(make_geotiff, tmp_path):
    a = np.array([[1, 1, 2], [1, 2, 2]], np.uint8)
    path = make_geotiff(a, crs=None, transform=Affine.identity())
    with pytest.raises(RasterError, match="no CRS") as e:
        vectorize_classes(path, tmp_path / "v.gpkg")
    assert e.value.option == "pixel_size" and "\n" not in str(e.value)
    assert not (tmp_path / "v.gpkg").exists()
    r = vectorize_classes(path, tmp_path / "v.gpkg", pixel_size=2.0)
    assert {c.class_id: c.area_m2 for c in r.classes} == {1: 12.0, 2: 12.0}


def test_cancel_after_the_first_progress_leaves_nothing(blobs, tmp_path, monkeypatch):
    path, _a = blobs
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    monkeypatch.setattr("geoseg.vectorize.BATCH", 5)  # features reach the temporary file early
    seen, files = [], []

    def progress(done, total):
        seen.append((done, total))
        files.extend(p.name for p in out_dir.iterdir())
    with pytest.raises(Cancelled):
        vectorize_classes(path, out_dir / "v.gpkg", strip_rows=8, progress=progress, is_cancelled=lambda: bool(seen))
    assert seen == [(1, 13)]
    assert any(".geoseg-tmp-" in f for f in files)  # something was written before the cancel ...
    assert list(out_dir.iterdir()) == []             # ... and nothing is left
    # an existing output is left as it was
    vectorize_classes(path, out_dir / "v.gpkg", classes=[1])
    before = (out_dir / "v.gpkg").read_bytes()
    seen.clear()
    with pytest.raises(Cancelled):
        vectorize_classes(path, out_dir / "v.gpkg", overwrite=True, strip_rows=8,
                          progress=lambda d, t: seen.append((d, t)), is_cancelled=lambda: bool(seen))
    assert [p.name for p in out_dir.iterdir()] == ["v.gpkg"] and (out_dir / "v.gpkg").read_bytes() == before


def test_progress_reaches_total(blobs, tmp_path):
    path, _a = blobs
    seen = []
    vectorize_classes(path, tmp_path / "v.gpkg", strip_rows=16, progress=lambda d, t: seen.append((d, t)))
    assert seen == [(i, 7) for i in range(1, 8)]


# ------------------------------------------------------------------ names and QGIS style

@pytest.fixture
def named(make_geotiff):
    a = designed(40, 30)
    a[a == 255] = 0
    path = make_geotiff(a, transform=T10, nodata=255, name="named.tif")
    classes = [{"id": 0, "name": "land", "color": "#D2B48C"}, {"id": 1, "name": "water", "color": "#0000FF"},
               {"id": 2, "name": "built", "color": "#FF0000"}]
    with rasterio.open(path, "r+") as d:
        d.update_tags(GEOSEG_CLASSES=json.dumps(classes))
    return path


def test_class_names_from_the_raster_and_a_qgis_style(named, tmp_path):
    r = vectorize_classes(named, tmp_path / "n.gpkg")
    _g, ids, names, _a = read_layer(r.output)
    assert {(int(i), n) for i, n in zip(ids, names)} == {(0, "land"), (1, "water"), (2, "built")}
    assert [(c.class_id, c.class_name) for c in r.classes] == [(0, "land"), (1, "water"), (2, "built")]
    r2 = vectorize_classes(named, tmp_path / "o.gpkg", class_names={1: "lake"}, classes=[1])
    assert set(read_layer(r2.output)[2]) == {"lake"}
    assert pyogrio.list_layers(r.output)[:, 0].tolist() == ["n", "layer_styles"]
    _m, _f, _geo, st = pyogrio.raw.read(r.output, layer="layer_styles")
    cols = dict(zip(pyogrio.read_info(r.output, layer="layer_styles")["fields"], st))
    assert cols["f_table_name"][0] == "n" and cols["f_geometry_column"][0] == "geom" and cols["useAsDefault"][0]
    qml = cols["styleQML"][0]
    assert 'type="categorizedSymbol"' in qml and 'attr="class_id"' in qml
    assert 'label="water"' in qml and "0,0,255,255" in qml and "210,180,140,255" in qml


def test_colours_from_a_colour_table(make_geotiff, tmp_path):
    a = designed(40, 30)
    path = make_geotiff(a, transform=T10, nodata=255)
    with rasterio.open(path, "r+") as d:
        d.write_colormap(1, {0: (10, 20, 30, 255), 1: (200, 100, 50, 255), 2: (90, 90, 90, 255)})
    r = vectorize_classes(path, tmp_path / "c.gpkg", class_names={0: "a", 1: "b", 2: "c"})
    qml = pyogrio.raw.read(r.output, layer="layer_styles", columns=["styleQML"])[3][0][0]
    for rgb in ("10,20,30", "200,100,50", "90,90,90"):
        assert f'name="color" value="{rgb},255"' in qml
    assert r.styled and not vectorize_classes(path, tmp_path / "n.gpkg", style=False).styled
    assert pyogrio.list_layers(tmp_path / "n.gpkg")[:, 0].tolist() == ["n"]


@pytest.mark.skipif(find_spec("qgis") is None, reason="QGIS Python bindings not installed")
def test_qgis_opens_the_layer_with_class_colours_and_names(named, tmp_path):
    r = vectorize_classes(named, tmp_path / "n.gpkg")
    script = textwrap.dedent(f"""
        import json
        from qgis.core import QgsApplication, QgsVectorLayer
        app = QgsApplication([], False)
        app.initQgis()
        layer = QgsVectorLayer({str(r.output)!r}, "v", "ogr")
        ren = layer.renderer()
        print(json.dumps({{"valid": layer.isValid(), "count": layer.featureCount(), "crs": layer.crs().authid(),
                          "type": ren.type(), "cats": [[str(c.value()), c.label(), c.symbol().color().name()]
                                                      for c in ren.categories()] if ren.type() == "categorizedSymbol" else []}}))
    """)
    env = dict(os.environ, QT_QPA_PLATFORM="offscreen")
    p = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=120)
    assert p.returncode == 0, p.stderr
    got = json.loads(p.stdout.strip().splitlines()[-1])
    assert got["valid"] and got["count"] == r.features and got["crs"] == "EPSG:32633"
    assert got["type"] == "categorizedSymbol"
    assert got["cats"] == [["0", "land", "#d2b48c"], ["1", "water", "#0000ff"], ["2", "built", "#ff0000"]]
    assert "partially supported" not in p.stderr  # a GeoPackage version QGIS 3.22's GDAL reads


# ------------------------------------------------------------------ CLI

def test_cli_vectorize(runner, blobs, tmp_path):
    path, _a = blobs
    out = tmp_path / "v.gpkg"
    res = runner.invoke(cli, ["vectorize", str(path), str(out), "--classes", "1,2", "--min-area", "200",
                              "--simplify", "5"])
    assert res.exit_code == 0, res.output
    geoms, ids, _n, areas = read_layer(out)
    assert set(ids) == {1, 2} and (shapely.is_valid(geoms)).all() and len(geoms) > 10
    assert f"wrote {len(geoms)} polygons" in res.stderr
    res = runner.invoke(cli, ["vectorize", str(path), str(out)])
    assert res.exit_code == 1 and "--overwrite" in res.output


@pytest.mark.parametrize("case", ["missing", "not_a_raster", "no_crs", "same_file"])
def test_cli_bad_input_is_one_line(runner, make_geotiff, tmp_path, case):
    if case == "missing":
        args, words = [str(tmp_path / "missing.tif"), str(tmp_path / "v.gpkg")], "not found"
    elif case == "not_a_raster":
        p = tmp_path / "notes.tif"
        p.write_text("not a raster")
        args, words = [str(p), str(tmp_path / "v.gpkg")], "notes.tif"
    elif case == "no_crs":
        p = make_geotiff(np.ones((4, 4), np.uint8), crs=None, transform=Affine.identity())
        args, words = [str(p), str(tmp_path / "v.gpkg")], "--pixel-size"
    else:
        p = make_geotiff(np.ones((4, 4), np.uint8))
        args, words = [str(p), str(p)], "same file"
    res = runner.invoke(cli, ["vectorize", *args])
    assert res.exit_code == 1, res.output
    lines = res.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: ") and words in lines[0], res.output
    assert "Traceback" not in res.output
    assert not (tmp_path / "v.gpkg").exists()


def test_cli_jsonl_result_event(blobs, tmp_path):
    path, _a = blobs
    out = tmp_path / "v.gpkg"
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    p = subprocess.run([sys.executable, "-m", "geoseg_cli.main", "--progress", "jsonl", "vectorize", str(path),
                        str(out), "--classes", "1,2"], capture_output=True, text=True, env=env, timeout=120)
    assert p.returncode == 0, p.stderr
    events = [json.loads(line) for line in p.stdout.splitlines()]
    assert events[-1]["event"] == "result" and events[-1]["command"] == "vectorize"
    assert [e["event"] for e in events].count("result") == 1
    assert events[-2]["event"] == "progress" and events[-2]["done"] == events[-2]["total"]
    res = events[-1]
    _g, ids, _n, areas = read_layer(out)
    assert res["outputs"]["output"] == str(out) and res["features"] == len(ids)
    assert [(c["class_id"], c["features"]) for c in res["classes"]] == [(1, int((ids == 1).sum())),
                                                                       (2, int((ids == 2).sum()))]
    assert sum(c["area_m2"] for c in res["classes"]) == pytest.approx(areas.sum())
