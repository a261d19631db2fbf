import json
import math
import warnings

import numpy as np
import pyproj
import pytest
import rasterio
from rasterio.transform import Affine, from_origin

from conftest import DATA
from geoseg.areas import class_areas, pixel_areas, write_areas_csv
from geoseg.demo import TRUTH
from geoseg.errors import NotGeoreferencedWarning, VectorError


def test_s2_truth_water_area_exact():
    # The truth declares nodata=0 although 0 is "non-water": count every value.
    t = class_areas(TRUTH, nodata=None, class_names={0: "non-water", 1: "water"})
    water = t.by_class()[1]
    assert water.pixels == 24179 and water.area_m2 == 2417900.0
    assert t.by_class()[0].pixels == 316446
    # honouring the declared nodata hides the land class
    t2 = class_areas(TRUTH)
    assert t2.by_class()[1].pixels == 24179 and 0 not in t2.by_class()


def test_nc_landcover_water_area_exact():
    t = class_areas(DATA / "nc_strata.tif")  # float32 classes, nodata -99999, EPSG:3358, 28.5 m
    rows = t.by_class()
    assert rows[6].pixels == 4223
    assert rows[6].area_m2 == pytest.approx(4223 * 812.25, rel=1e-12)
    expected = {1: 65099, 2: 1433, 3: 23502, 4: 14532, 5: 107643, 6: 4223, 7: 194}
    assert {k: r.pixels for k, r in rows.items()} == expected
    assert sum(r.percent for r in rows.values()) == pytest.approx(100.0)


@pytest.mark.parametrize("lat0", [0.0, 45.0, 70.0, -33.0])
def test_geographic_pixel_area_matches_pyproj(make_geotiff, lat0):
    # one 1 deg x 1 deg pixel whose top edge is at lat0 + 1
    p = make_geotiff(np.ones((1, 1), np.uint8), crs="EPSG:4326", transform=from_origin(10.0, lat0 + 1, 1.0, 1.0))
    t = class_areas(p)
    geod = pyproj.Geod(ellps="WGS84")
    area, _ = geod.polygon_area_perimeter([10, 11, 11, 10], [lat0 + 1, lat0 + 1, lat0, lat0])
    assert t.by_class()[1].area_m2 == pytest.approx(abs(area), rel=1e-6)
    assert t.kind == "geodesic"


def test_geographic_rows_vary_with_latitude(make_geotiff):
    data = np.zeros((60, 10), np.uint8)
    data[:30] = 1  # north half (60N..75N), south half class 0 (45N..60N)
    p = make_geotiff(data, crs="EPSG:4326", transform=from_origin(0, 75, 0.5, 0.5))
    t = class_areas(p).by_class()
    assert t[1].pixels == t[0].pixels == 300
    assert t[1].area_m2 < 0.8 * t[0].area_m2
    geod = pyproj.Geod(ellps="WGS84")
    a1, _ = geod.polygon_area_perimeter([0, 5, 5, 0], [75, 75, 60, 60])
    # a polygon with geodesic edges vs a stack of thin rows: agree closely
    assert t[1].area_m2 == pytest.approx(abs(a1), rel=2e-3)


def test_feet_and_rotated_transforms(make_geotiff):
    data = np.ones((10, 10), np.uint8)
    # NAD83 / North Carolina (ftUS): 10 ft pixels
    p = make_geotiff(data, crs="EPSG:2264", transform=from_origin(2000000, 700000, 10, 10))
    ft = 1200 / 3937
    assert class_areas(p).by_class()[1].area_m2 == pytest.approx(100 * (10 * ft) ** 2, rel=1e-12)
    # rotated 30 degrees, 2 m x 3 m pixels: area is |det| = 6 m²
    rot = Affine.translation(500000, 4000000) * Affine.rotation(30) * Affine.scale(2, -3)
    p2 = make_geotiff(data, transform=rot)
    assert class_areas(p2).by_class()[1].area_m2 == pytest.approx(600.0, rel=1e-12)


def test_no_crs_pixels_and_pixel_size(make_geotiff):
    p = make_geotiff(np.array([[1, 2], [2, 2]], np.uint8), crs=None, transform=Affine.identity())
    with pytest.warns(NotGeoreferencedWarning):
        t = class_areas(p)
    assert t.kind == "pixels" and t.by_class()[2].pixels == 3 and t.by_class()[2].area_m2 is None
    assert t.by_class()[2].percent == pytest.approx(75.0)
    with warnings.catch_warnings():
        warnings.simplefilter("error", NotGeoreferencedWarning)
        t2 = class_areas(p, pixel_size=0.5)
    assert t2.by_class()[2].area_m2 == 0.75


def test_all_nodata_zero_areas(make_geotiff, tmp_path):
    p = make_geotiff(np.full((20, 30), 255, np.uint8), nodata=255)
    t = class_areas(p, class_names={0: "a", 1: "b"})
    assert [(r.class_id, r.pixels, r.area_m2, r.percent) for r in t.rows] == [(0, 0, 0.0, 0.0), (1, 0, 0.0, 0.0)]
    write_areas_csv(t, tmp_path / "a.csv")
    assert (tmp_path / "a.csv").read_text().splitlines()[0] == \
        "class_id,class_name,pixels,area_m2,area_ha,area_km2,percent"


def test_csv_columns_and_units(make_geotiff, tmp_path):
    data = np.zeros((100, 100), np.uint8)
    data[:25] = 1
    p = make_geotiff(data, transform=from_origin(0, 1000, 10, 10))
    t = class_areas(p, class_names={0: "land", 1: "water"})
    out = write_areas_csv(t, tmp_path / "a.csv")
    lines = out.read_text().splitlines()
    assert lines[1] == "0,land,7500,750000.000,75.000000,0.75000000,75.0000"
    assert lines[2] == "1,water,2500,250000.000,25.000000,0.25000000,25.0000"


def _geojson(path, features, crs=None):
    d = {"type": "FeatureCollection", "features": [
        {"type": "Feature", "properties": props, "geometry": geom} for props, geom in features]}
    if crs:
        d["crs"] = {"type": "name", "properties": {"name": crs}}
    path.write_text(json.dumps(d))
    return path


def test_aoi_zones(make_geotiff, tmp_path):
    data = np.zeros((100, 100), np.uint8)
    data[:, 50:] = 1
    # 1 m pixels, origin (500000, 4000000): columns 0..99 -> x 500000..500100
    p = make_geotiff(data)
    x0, y0 = 500000, 4000000

    def box(c0, r0, c1, r1):
        return {"type": "Polygon", "coordinates": [[[x0 + c0, y0 - r0], [x0 + c1, y0 - r0], [x0 + c1, y0 - r1],
                                                     [x0 + c0, y0 - r1], [x0 + c0, y0 - r0]]]}
    aoi = _geojson(tmp_path / "aoi.geojson", [({"name": "west"}, box(0, 0, 40, 10)),
                                              ({"name": "east"}, box(60, 0, 100, 20)),
                                              ({"name": "west"}, box(0, 50, 10, 60))],
                   crs="urn:ogc:def:crs:EPSG::32633")
    t = class_areas(p, aoi=aoi, zone_field="name")
    west, east = t.by_class("west"), t.by_class("east")
    assert west[0].pixels == 40 * 10 + 10 * 10      # hand count: the two "west" boxes
    assert west[1].pixels == 0
    assert east[1].pixels == 800 and east[0].pixels == 0
    t2 = class_areas(p, aoi=aoi)
    assert t2.by_class("aoi")[0].pixels == 500 and t2.by_class("aoi")[1].pixels == 800
    # the same AOI given in lon/lat is reprojected to the raster's CRS
    tr = pyproj.Transformer.from_crs(32633, 4326, always_xy=True)
    lon0, lat0 = tr.transform(x0 + 60, y0)
    lon1, lat1 = tr.transform(x0 + 100, y0 - 20)
    ll = _geojson(tmp_path / "ll.geojson", [({}, {"type": "Polygon", "coordinates": [[
        [lon0, lat0], [lon1, lat0], [lon1, lat1], [lon0, lat1], [lon0, lat0]]]})])
    assert class_areas(p, aoi=ll).by_class("aoi")[1].pixels == 800
    with pytest.raises(VectorError, match="no field"):
        class_areas(p, aoi=aoi, zone_field="nope")
    with pytest.raises(VectorError, match="not found"):
        class_areas(p, aoi=tmp_path / "missing.gpkg")


def test_pixel_areas_geodesic_rows_shape():
    px = pixel_areas(rasterio.crs.CRS.from_epsg(4326), from_origin(0, 10, 0.1, 0.1), 5, 100)
    assert px.kind == "geodesic" and px.rows.shape == (100,)
    assert np.all(np.diff(px.rows) > 0)  # towards the equator pixels grow
    assert math.isclose(px.rows[-1], abs(pyproj.Geod(ellps="WGS84").polygon_area_perimeter(
        [0, 0.1, 0.1, 0], [0.1, 0.1, 0, 0])[0]), rel_tol=1e-9)


@pytest.mark.parametrize("lat_top,res", [(50.0, 1e-4), (-10.0, 0.005), (84.0, 0.001)])
def test_vectorised_rows_match_pyproj_polygons(lat_top, res):
    t = from_origin(10.0, lat_top, res, res)
    px = pixel_areas(rasterio.crs.CRS.from_epsg(4326), t, 10, 1000)
    geod = pyproj.Geod(ellps="WGS84")
    for r in (0, 1, 500, 999):
        y0, y1 = lat_top - r * res, lat_top - (r + 1) * res
        ref = abs(geod.polygon_area_perimeter([10, 10 + res, 10 + res, 10], [y0, y0, y1, y1])[0])
        assert px.rows[r] == pytest.approx(ref, rel=1e-7)


def test_wide_geographic_rows_counted_per_row(make_geotiff):
    rng = np.random.default_rng(3)
    data = rng.integers(0, 4, (70, 1100)).astype(np.uint8)
    data[5, :7] = 255
    t = from_origin(20.0, 60.0, 0.001, 0.001)
    p = make_geotiff(data, crs="EPSG:4326", transform=t, nodata=255)
    tab = class_areas(p).by_class()
    rows = pixel_areas(rasterio.crs.CRS.from_epsg(4326), t, 1100, 70).rows
    for c in range(4):
        per_row = (data == c).sum(axis=1)
        assert tab[c].pixels == per_row.sum()
        assert tab[c].area_m2 == pytest.approx(float(rows @ per_row), rel=1e-12)


def test_not_a_class_raster(make_geotiff):
    from geoseg.errors import RasterError
    p = make_geotiff(np.arange(60 * 50, dtype=np.uint16).reshape(60, 50))
    with pytest.raises(RasterError, match="is it a class raster"):
        class_areas(p)
    p2 = make_geotiff(np.full((5, 5), 0.5, np.float32))
    with pytest.raises(RasterError, match="non-integer"):
        class_areas(p2)


def test_global_grid_sums_to_the_ellipsoid_area(make_geotiff):
    """An independent oracle for the geodesic rows: a 1° grid over the whole globe must
    add up to the surface area of the CRS's ellipsoid (closed form, no pyproj call)."""
    import math
    p = make_geotiff(np.ones((180, 360), np.uint8), crs="EPSG:4326", transform=from_origin(-180, 90, 1.0, 1.0))
    total = class_areas(p, nodata=None).by_class()[1].area_m2
    a, f = 6378137.0, 1 / 298.257223563
    b = a * (1 - f)
    e = math.sqrt(1 - (b / a) ** 2)
    ellipsoid = 2 * math.pi * a * a * (1 + (1 - e * e) / e * math.atanh(e))
    assert total == pytest.approx(ellipsoid, rel=1e-9)


def test_geodesic_area_uses_the_crs_own_ellipsoid(make_geotiff):
    """ED50 (International 1924) is not WGS 84: the pixel area follows the CRS's ellipsoid."""
    p = make_geotiff(np.ones((1, 1), np.uint8), crs="EPSG:4230", transform=from_origin(10.0, 41.0, 1.0, 1.0))
    got = class_areas(p).by_class()[1].area_m2
    intl = pyproj.Geod(ellps="intl")
    wgs = pyproj.Geod(ellps="WGS84")
    want, _ = intl.polygon_area_perimeter([10, 11, 11, 10], [41, 41, 40, 40])
    other, _ = wgs.polygon_area_perimeter([10, 11, 11, 10], [41, 41, 40, 40])
    assert got == pytest.approx(abs(want), rel=1e-7)
    assert abs(abs(other) / got - 1) > 1e-5  # the test can tell the two apart


def test_class_names_from_a_rat_alone_or_a_qml_alone(make_geotiff, tmp_path):
    """Names come from the geoseg tag, else a GDAL RAT, else a .qml beside the file."""
    from geoseg.bundle import ClassInfo
    from geoseg.output import write_qml, write_rat
    classes = [ClassInfo(0, "land", "#00FF00"), ClassInfo(1, "lake", "#0000FF")]
    data = np.array([[0, 1, 1], [1, 1, 0]], np.uint8)
    rat_only = make_geotiff(data, name="rat.tif")
    assert write_rat(rat_only, classes)
    assert {r.class_id: r.class_name for r in class_areas(rat_only).rows} == {0: "land", 1: "lake"}
    qml_only = make_geotiff(data, name="qml.tif")
    write_qml(tmp_path / "qml.qml", classes)
    assert not (tmp_path / "qml.tif.aux.xml").exists()
    assert {r.class_id: r.class_name for r in class_areas(qml_only).rows} == {0: "land", 1: "lake"}
    bare = make_geotiff(data, name="bare.tif")
    assert {r.class_id: r.class_name for r in class_areas(bare).rows} == {0: "class_0", 1: "class_1"}
