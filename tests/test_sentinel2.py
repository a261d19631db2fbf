"""Sentinel-2 products (SAFE folder, zip, MTD XML) and STAC items as input (issue 11).

The fixtures are made here from the bundled sample scene (B2 B3 B4 B8 B11 B12, 10 m,
625 x 545, PB 02.13): a minimal but faithful L2A SAFE — the product's folder layout,
an MTD_MSIL2A.xml with quantification, baseline and (PB 05.09) BOA offsets, lossless
JPEG 2000 band files at 10 m (B02 B03 B04 B08) and 20 m (B11 B12 and the SCL, plus a
20 m B02 the reader must not pick) — at baseline 02.13 (DN as in the scene) and
05.09 (DN + 1000, 0 kept 0), an L1C product, and STAC items in the Earth Search
(harmonised DN, ``earthsearch:boa_offset_applied``) and Planetary Computer (raw DN,
``s2:processing_baseline``) styles with GeoTIFF assets. The 20 m bands are the 2 x 2
means of the scene's (already 20 m-derived) B11/B12; an odd edge block is a 2 x 1,
1 x 2 or 1 x 1 mean, as the 20 m grid covers 626 x 546 pixels at 10 m.
"""

from __future__ import annotations

import json
import pickle
import shutil
import threading
import warnings
import zipfile
from pathlib import Path

import numpy as np
import pytest
import rasterio
from affine import Affine

from geoseg.demo import SCENE, TRUTH
from geoseg.errors import ConfigError, RadiometryWarning, RasterError
from geoseg.sentinel2 import (
    DEFAULT_SCL_MASK,
    ProductInfo,
    S2Source,
    S2Spec,
    is_s2_product,
    open_product,
    parse_baseline,
    parse_product_xml,
)
from geoseg.sources import Source
from geoseg.stac import StacSource, StacSpec, is_stac_item, stack_vrt
from geoseg.windows import Rect

TILE = "T51RUQ"
SENSING = "20190817T023551"
GRANULE = f"L2A_{TILE}_A021704_20190817T024250"
BASELINE_NAMES = {"02.13": "N0213", "05.09": "N0509"}
NODATA_CORNER = 60  # a zero-filled swath edge: rows + cols < this (10 m px) are 0 in every band


# ---------------------------------------------------------------------------- the scene

def _block_mean(a: np.ndarray) -> np.ndarray:
    """2 x 2 means of a (rows, cols) array on the 20 m grid (ceil sizes), rounded."""
    h, w = a.shape
    H, W = (h + 1) // 2, (w + 1) // 2
    s = np.zeros((H, W), np.float64)
    n = np.zeros((H, W), np.float64)
    for dr in (0, 1):
        for dc in (0, 1):
            part = a[dr::2, dc::2].astype(np.float64)
            s[:part.shape[0], :part.shape[1]] += part
            n[:part.shape[0], :part.shape[1]] += 1
    return np.rint(s / n).astype(a.dtype)


def _up(a20: np.ndarray, h: int, w: int) -> np.ndarray:
    """Nearest 2x upsampling: each 20 m pixel 2 x 2, cut to (h, w)."""
    return a20.repeat(2, 0).repeat(2, 1)[:h, :w]


class Scene:
    """The sample scene's bands as the fixture products hold them (02.13 DN).

    A zero-filled swath edge covers the top-left corner in every band; by default it
    follows the 20 m pixels (a 20 m pixel is 0 exactly where its four 10 m pixels are),
    so every pixel is 0 in all bands or in none, as in a stack of the same bands.
    ``ragged``: the 10 m bands' edge runs through 20 m pixels, as at a real swath edge
    where the footprints differ by a pixel (some pixels 0 in the 10 m bands only)."""

    def __init__(self, ragged: bool = False):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with rasterio.open(SCENE) as s:
                a = s.read()
                self.crs, self.transform = s.crs, s.transform
            with rasterio.open(TRUTH) as t:
                truth = t.read(1)
        _, self.h, self.w = a.shape
        H, W = (self.h + 1) // 2, (self.w + 1) // 2
        rr20, cc20 = np.mgrid[0:H, 0:W]
        if ragged:
            rr, cc = np.mgrid[0:self.h, 0:self.w]
            corner = rr + cc < NODATA_CORNER
            c20 = (2 * rr20) + (2 * cc20) + 2 < NODATA_CORNER  # 20 m pixels wholly inside the 10 m corner
        else:
            c20 = (2 * rr20) + (2 * cc20) < NODATA_CORNER
            corner = _up(c20, self.h, self.w)
        a[:, corner] = 0
        self.corner = corner
        self.b10 = {"B02": a[0], "B03": a[1], "B04": a[2], "B08": a[3]}
        self.b20 = {"B11": _block_mean(a[4]), "B12": _block_mean(a[5]), "B02": _block_mean(a[0])}
        for k in self.b20:
            self.b20[k][c20] = 0
        # the SCL: vegetation, water where the truth says so, a cloud (9), a cloud shadow (3),
        # thin cirrus (10), a snow patch (11), the swath edge no data (0)
        t20 = truth[::2, ::2]
        scl = np.where(t20 == 1, 6, 4).astype(np.uint8)
        scl[10:40, 200:260] = 9
        scl[45:60, 180:230] = 3
        scl[150:160, 20:40] = 10
        scl[200:210, 100:110] = 11
        scl[5:25, 280:313] = 6     # more water, next to the cloud
        scl[c20] = 0
        self.scl20 = scl
        self.transform20 = self.transform * Affine.scale(2)
        self.bands = ("B02", "B03", "B04", "B08", "B11", "B12")

    def expected(self) -> dict[str, np.ndarray]:
        """The 02.13 DN of every band on the 10 m grid (20 m bands replicated 2 x 2)."""
        out = dict(self.b10)
        for k in ("B11", "B12"):
            out[k] = _up(self.b20[k], self.h, self.w)
        return out


@pytest.fixture(scope="module")
def scene() -> Scene:
    return Scene()


def _write(path: Path, a: np.ndarray, transform, crs, driver: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    kw = dict(REVERSIBLE="YES", QUALITY=100) if driver == "JP2OpenJPEG" else {}
    with rasterio.open(path, "w", driver=driver, width=a.shape[1], height=a.shape[0], count=1, dtype=a.dtype,
                       crs=crs, transform=transform, **kw) as d:
        d.write(a, 1)


def _dn(a: np.ndarray, baseline: str) -> np.ndarray:
    """The product's DN at ``baseline``: + 1000 from 04.00 on, NODATA 0 kept 0."""
    if parse_baseline(baseline) >= (4, 0):
        return np.where(a == 0, 0, a + 1000).astype(np.uint16)
    return a.astype(np.uint16)


# ---------------------------------------------------------------------------- the product

def mtd_xml(level: str, baseline: str, image_files: list[str], offsets: bool | None = None,
            product_uri: str = "") -> str:
    """An MTD_MSIL2A.xml / MTD_MSIL1C.xml as ESA writes them (PSD 14.9), trimmed to
    what a reader needs. ``offsets``: the BOA/RADIO_ADD_OFFSET list (default: from
    04.00 on)."""
    l2a = level == "L2A"
    offsets = parse_baseline(baseline) >= (4, 0) if offsets is None else offsets
    ns = "https://psd-14.sentinel2.eo.esa.int/PSD/User_Product_Level-2A.xsd" if l2a else \
        "https://psd-14.sentinel2.eo.esa.int/PSD/User_Product_Level-1C.xsd"
    root = "Level-2A_User_Product" if l2a else "Level-1C_User_Product"
    files = "\n".join(f"              <IMAGE_FILE>{f}</IMAGE_FILE>" for f in image_files)
    physical = ["B1", "B2", "B3", "B4", "B5", "B6", "B7", "B8", "B8A", "B9", "B10", "B11", "B12"]
    spectral = "\n".join(f'          <Spectral_Information bandId="{i}" physicalBand="{b}"><RESOLUTION>10'
                         f'</RESOLUTION></Spectral_Information>' for i, b in enumerate(physical))
    if l2a:
        quant = ("<QUANTIFICATION_VALUES_LIST>\n"
                 '        <BOA_QUANTIFICATION_VALUE unit="none">10000</BOA_QUANTIFICATION_VALUE>\n'
                 '        <AOT_QUANTIFICATION_VALUE unit="none">1000.0</AOT_QUANTIFICATION_VALUE>\n'
                 '        <WVP_QUANTIFICATION_VALUE unit="cm">1000.0</WVP_QUANTIFICATION_VALUE>\n'
                 "      </QUANTIFICATION_VALUES_LIST>")
        offs = ("<BOA_ADD_OFFSET_VALUES_LIST>\n" + "\n".join(
            f'        <BOA_ADD_OFFSET band_id="{i}">-1000</BOA_ADD_OFFSET>' for i in range(13))
            + "\n      </BOA_ADD_OFFSET_VALUES_LIST>") if offsets else ""
    else:
        quant = '<QUANTIFICATION_VALUE unit="none">10000</QUANTIFICATION_VALUE>'
        offs = ("<Radiometric_Offset_List>\n" + "\n".join(
            f'        <RADIO_ADD_OFFSET band_id="{i}">-1000</RADIO_ADD_OFFSET>' for i in range(13))
            + "\n      </Radiometric_Offset_List>") if offsets else ""
    ptype = "S2MSI2A" if l2a else "S2MSI1C"
    return f"""<?xml version="1.0" encoding="UTF-8" standalone="no"?>
<n1:{root} xmlns:n1="{ns}" xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance">
  <n1:General_Info>
    <Product_Info>
      <PRODUCT_START_TIME>2019-08-17T02:35:51.024Z</PRODUCT_START_TIME>
      <PRODUCT_URI>{product_uri}</PRODUCT_URI>
      <PROCESSING_LEVEL>Level-{'2A' if l2a else '1C'}</PROCESSING_LEVEL>
      <PRODUCT_TYPE>{ptype}</PRODUCT_TYPE>
      <PROCESSING_BASELINE>{baseline}</PROCESSING_BASELINE>
      <Datatake datatakeIdentifier="GS2A_20190817T023551_021704_N{baseline.replace('.', '')}">
        <SPACECRAFT_NAME>Sentinel-2A</SPACECRAFT_NAME>
      </Datatake>
      <Product_Organisation>
        <Granule_List>
          <Granule datastripIdentifier="S2A_OPER_MSI_L2A_DS" granuleIdentifier="S2A_OPER_MSI_L2A_TL"
                   imageFormat="JPEG2000">
{files}
          </Granule>
        </Granule_List>
      </Product_Organisation>
    </Product_Info>
    <Product_Image_Characteristics>
      <Special_Values>
        <SPECIAL_VALUE_TEXT>NODATA</SPECIAL_VALUE_TEXT>
        <SPECIAL_VALUE_INDEX>0</SPECIAL_VALUE_INDEX>
      </Special_Values>
      <Special_Values>
        <SPECIAL_VALUE_TEXT>SATURATED</SPECIAL_VALUE_TEXT>
        <SPECIAL_VALUE_INDEX>65535</SPECIAL_VALUE_INDEX>
      </Special_Values>
      {quant}
      {offs}
      <Spectral_Information_List>
{spectral}
      </Spectral_Information_List>
    </Product_Image_Characteristics>
  </n1:General_Info>
</n1:{root}>
"""


def make_safe(scene: Scene, where: Path, baseline: str = "02.13", *, level: str = "L2A", offsets: bool | None = None,
              driver: str = "JP2OpenJPEG") -> Path:
    """A minimal but faithful SAFE folder of the scene (see the module docstring)."""
    ext = ".jp2" if driver == "JP2OpenJPEG" else ".tif"
    n = BASELINE_NAMES.get(baseline, "N" + baseline.replace(".", ""))
    name = f"S2A_MSI{level}_{SENSING}_{n}_R089_{TILE}_20190817T062041.SAFE"
    safe = where / name
    files = []
    if level == "L2A":
        img = f"GRANULE/{GRANULE}/IMG_DATA"
        for b, a in scene.b10.items():
            files.append((f"{img}/R10m/{TILE}_{SENSING}_{b}_10m", _dn(a, baseline), scene.transform))
        for b, a in scene.b20.items():
            files.append((f"{img}/R20m/{TILE}_{SENSING}_{b}_20m", _dn(a, baseline), scene.transform20))
        files.append((f"{img}/R20m/{TILE}_{SENSING}_SCL_20m", scene.scl20, scene.transform20))
    else:
        img = f"GRANULE/L1C_{TILE}_A021704_20190817T024250/IMG_DATA"
        for b, a in scene.b10.items():
            files.append((f"{img}/{TILE}_{SENSING}_{b}", _dn(a, baseline), scene.transform))
        for b in ("B11", "B12"):
            files.append((f"{img}/{TILE}_{SENSING}_{b}", _dn(scene.b20[b], baseline), scene.transform20))
    for rel, a, tr in files:
        _write(safe / (rel + ext), a, tr, scene.crs, driver)
    (safe / f"MTD_MSI{level}.xml").write_text(
        mtd_xml(level, baseline, [r for r, _, _ in files], offsets, product_uri=name), encoding="utf-8")
    for d in ("AUX_DATA", "DATASTRIP", "HTML", "rep_info"):
        (safe / d).mkdir(exist_ok=True)
    (safe / "manifest.safe").write_text("<xfdu:XFDU/>", encoding="utf-8")
    return safe


def zip_safe(safe: Path) -> Path:
    z = safe.with_name(safe.name[:-len(".SAFE")] + ".zip")
    with zipfile.ZipFile(z, "w", zipfile.ZIP_STORED) as f:
        for p in sorted(safe.rglob("*")):
            f.write(p, p.relative_to(safe.parent).as_posix())
    return z


@pytest.fixture(scope="module")
def products(scene, tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("s2")
    out = {}
    for pb in ("02.13", "05.09"):
        safe = make_safe(scene, root / pb.replace(".", ""), pb)
        out[pb] = safe
        out[pb + ".zip"] = zip_safe(safe)
    return out


def read_all(src, bands=None, masked=True):
    idx = list(range(1, src.count + 1)) if bands is None else bands
    return src.read(idx, Rect(0, 0, src.width, src.height), masked)


def reflectance(src) -> tuple[np.ndarray, np.ndarray]:
    data, valid = read_all(src)
    rad = np.asarray(src.radiometry, np.float64)
    return data.astype(np.float64) * rad[:, 0, None, None] + rad[:, 1, None, None], valid


def scl10(scene: Scene) -> np.ndarray:
    return _up(scene.scl20, scene.h, scene.w)


# ---------------------------------------------------------------------------- names, XML

@pytest.mark.parametrize("name, yes", [
    ("S2A_MSIL2A_20190817T023551_N0213_R089_T51RUQ_20190817T062041.SAFE", True),
    ("S2B_MSIL1C_20240101T000000_N0510_R089_T51RUQ_20240101T000000.zip", True),
    ("S2A_MSIL2A_20190817T023551_N0509_R089_T51RUQ_20230101T000000.SAFE.zip", True),
    ("some/dir/MTD_MSIL2A.xml", True), ("MTD_MSIL1C.xml", True),
    ("MTD_TL.xml", False), ("scene.tif", False), ("S2A_MSIL2A_x.tif", False), ("other.zip", False),
    ("/vsizip/S2A_MSIL2A_x.zip/B02.jp2", False), ("SENTINEL2_L2A:/x/MTD_MSIL2A.xml:10m:EPSG_32651", False)])
def test_product_names(name, yes):
    assert is_s2_product(name) is yes
    assert is_s2_product(Path(name)) is yes


def test_baselines_compare_as_numbers():
    """SNAP #65: a product-spec version compared as text skipped the offset for PB >= 05.11."""
    assert parse_baseline("05.11") > parse_baseline("04.00") > parse_baseline("02.13")
    assert parse_baseline("05.09") < parse_baseline("05.11") < parse_baseline("05.100")  # "05.100" < "05.99" as text
    assert parse_baseline("N0509") == (5, 9) == parse_baseline(" 05.09 ")
    assert parse_baseline("04.00") >= (4, 0) and parse_baseline("03.99") < (4, 0)
    assert parse_baseline("") is None and parse_baseline("latest") is None


@pytest.mark.parametrize("level, kind", [("L2A", "BOA_ADD_OFFSET"), ("L1C", "RADIO_ADD_OFFSET")])
def test_product_xml_is_parsed_whatever_the_namespace(level, kind):
    files = ["GRANULE/G/IMG_DATA/R10m/T_B02_10m", "GRANULE/G/IMG_DATA/R20m/T_SCL_20m"]
    text = mtd_xml(level, "05.09", files, product_uri="P.SAFE")
    for t in (text, text.replace("n1:", "").replace(' xmlns:n1="', ' xmlns:other="')):
        info = parse_product_xml(t)
        assert isinstance(info, ProductInfo)
        assert (info.level, info.baseline, info.quantification) == (level, (5, 9), 10000.0)
        assert info.offsets == {b: -1000.0 for b in ("B01", "B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A",
                                                      "B09", "B10", "B11", "B12")}
        assert info.special_values == {"NODATA": 0, "SATURATED": 65535}
        assert info.image_files == tuple(files) and info.product_uri == "P.SAFE"
        assert info.radiometry("B8A") == (1e-4, -0.1) and info.radiometry("B08") == (1e-4, -0.1)
    assert kind in text
    old = parse_product_xml(mtd_xml(level, "02.13", files))
    assert old.offsets == {} and old.radiometry("B02") == (1e-4, 0.0)


def test_offset_product_without_its_offset_list_is_refused_naming_the_option():
    text = mtd_xml("L2A", "05.09", [], offsets=False, product_uri="S2B_MSIL2A_X_N0509_Y.SAFE")
    with pytest.raises(RasterError) as e:
        parse_product_xml(text)
    msg = str(e.value)
    assert e.value.option == "input_offset" and "\n" not in msg and "--" not in msg
    assert "05.09" in msg and "offset" in msg
    info = parse_product_xml(text, strict=False)   # readable; the refusal waits for the radiometry
    with pytest.raises(RasterError) as e2:
        info.radiometry("B02")
    assert e2.value.option == "input_offset"
    # no baseline in the XML: the product name's N0509 says it
    nobase = text.replace("<PROCESSING_BASELINE>05.09</PROCESSING_BASELINE>", "")
    assert parse_product_xml(nobase, strict=False).baseline == (5, 9)
    with pytest.raises(RasterError, match="not a Sentinel-2"):
        parse_product_xml("<root><a>1</a></root>")
    with pytest.raises(RasterError, match="cannot parse"):
        parse_product_xml("<root>")


# ---------------------------------------------------------------------------- SAFE reads

def test_folder_zip_and_xml_read_identically_on_b02s_grid(scene, products):
    safe = products["05.09"]
    b02 = next(safe.rglob("*_B02_10m.jp2"))
    with rasterio.open(b02) as ref:
        grid = (ref.width, ref.height, ref.transform, ref.crs)
    reads = []
    for p in (safe, products["05.09.zip"], safe / "MTD_MSIL2A.xml", str(safe) + "/"):
        with open_product(p) as s:
            assert isinstance(s, S2Source) and s.level == "L2A" and s.info.baseline == (5, 9)
            assert (s.width, s.height, s.transform, s.crs) == grid
            assert s.transform == scene.transform  # exactly, not almost
            assert s.descriptions == scene.bands and s.count == 6
            assert s.dtypes == ("uint16",) * 6 and s.nodatavals == (0.0,) * 6
            assert isinstance(s, Source) and s.radiometry_error is None
            s.check_radiometry()
            assert s.has_masks([1])
            reads.append(read_all(s))
    for data, valid in reads[1:]:
        assert np.array_equal(data, reads[0][0]) and np.array_equal(valid, reads[0][1])
    exp = scene.expected()
    for i, b in enumerate(scene.bands):  # B02 from R10m, not the 20 m B02 of R20m
        assert reads[0][0].dtype == np.float32
        assert np.array_equal(reads[0][0][i], _dn(exp[b], "05.09")), b


def test_nearest_replicates_each_20m_pixel_2x2_and_windows_agree(scene, products):
    with S2Source(products["02.13"]) as s:
        full, valid = read_all(s)
        b11 = full[s.descriptions.index("B11")]
        assert np.array_equal(b11, _up(scene.b20["B11"], scene.h, scene.w))
        blocks = b11[:544, :624].reshape(272, 2, 312, 2)
        assert (blocks == blocks[:, :1, :, :1]).all()
        for r in (Rect(3, 5, 101, 77), Rect(1, 1, 1, 1), Rect(600, 500, 25, 45), Rect(0, 0, 625, 545)):
            d, v = s.read([5, 1, 6], r, True)
            sl = r.slices()
            assert np.array_equal(d, full[[4, 0, 5]][:, sl[0], sl[1]]) and np.array_equal(v, valid[sl])


def test_bilinear_is_a_choice_and_independent_of_the_window(scene, products):
    with S2Source(products["02.13"]) as n, S2Source(products["02.13"], resample="bilinear") as b:
        assert b.resample == "bilinear" and b.spec.resample == "bilinear"
        fn, _ = read_all(n)
        fb, _ = read_all(b)
        assert np.array_equal(fb[:4], fn[:4])        # 10 m bands untouched
        assert not np.array_equal(fb[4], fn[4])      # 20 m bands interpolated
        a20 = scene.b20["B11"].astype(np.float64)
        assert fb[4].min() >= a20.min() and fb[4].max() <= a20.max()
        assert np.abs(fb[4] - fn[4]).mean() < 0.1 * np.abs(fn[4]).mean()
        for r in (Rect(3, 5, 101, 77), Rect(300, 200, 64, 64), Rect(600, 500, 25, 45)):
            d, _ = b.read([5, 6], r, True)
            sl = r.slices()
            assert np.array_equal(d, fb[4:6, sl[0], sl[1]]), r
    with pytest.raises(ConfigError) as e:
        S2Source(products["02.13"], resample="cubic")
    assert e.value.option == "resample"


def test_radiometry_from_the_product_xml(scene, products):
    with S2Source(products["02.13"]) as old, S2Source(products["05.09.zip"]) as new:
        assert old.radiometry == ((1e-4, 0.0),) * 6
        assert new.radiometry == ((1e-4, -0.1),) * 6
        r_old, v_old = reflectance(old)
        r_new, v_new = reflectance(new)
        assert np.array_equal(v_old, v_new)
        assert np.allclose(r_new[:, v_new], r_old[:, v_old], rtol=0, atol=1e-12)
        assert old.describe()["reflectance_offset"] == "0" and new.describe()["reflectance_offset"] == "-0.1"
        assert new.describe()["processing_baseline"] == "05.09"


def test_offset_product_without_offsets_opens_but_its_radiometry_is_refused(scene, tmp_path):
    safe = make_safe(scene, tmp_path, "05.09", offsets=False)
    with S2Source(safe) as s:
        data, _ = read_all(s)                      # the pixels can be read (an offset may be given)
        assert data.max() > 10000
        assert s.radiometry == (None,) * 6 and s.radiometry_error.option == "input_offset"
        with pytest.raises(RasterError) as e:
            s.check_radiometry()
        assert e.value.option == "input_offset" and "\n" not in str(e.value) and "05.09" in str(e.value)
        assert s.describe()["reflectance_offset"].startswith("unknown")
        assert isinstance(s, Source)  # the protocol check reads every attribute: nothing raises


def test_scl_masks_clouds_and_shadows_never_water_or_snow(scene, products):
    scl = scl10(scene)
    exp = scene.expected()
    dn_valid = np.all(np.stack([exp[b] for b in scene.bands]) != 0, axis=0)
    assert not dn_valid.all()  # the zero corner
    with S2Source(products["05.09"]) as s:
        assert s.mask_scl == DEFAULT_SCL_MASK == (0, 1, 3, 8, 9, 10)
        _, valid = read_all(s)
        assert np.array_equal(valid, dn_valid & ~np.isin(scl, DEFAULT_SCL_MASK))
        for c in (3, 9, 10, 0):
            assert (scl == c).any() and not valid[scl == c].any(), c
        for c in (6, 11, 4):
            assert (scl == c).any() and valid[(scl == c) & dn_valid].all(), c
        _, unmasked = read_all(s, masked=False)
        assert unmasked.all()
        d, v = s.read_decimated([1, 2], 109, 125)
        rows, cols = (np.arange(109) * 5 + 2)[:, None], (np.arange(125) * 5 + 2)[None, :]
        assert d.shape == (2, 109, 125) and np.array_equal(v, valid[rows, cols])
    with S2Source(products["05.09"], mask_scl=()) as s:
        assert s.mask_scl == () and np.array_equal(read_all(s)[1], dn_valid)
    with S2Source(products["05.09"], mask_scl=[9, 11]) as s:
        assert np.array_equal(read_all(s)[1], dn_valid & ~np.isin(scl, (9, 11)))
    for bad in ((12,), ("cloud",), (True,)):
        with pytest.raises(ConfigError) as e:
            S2Source(products["05.09"], mask_scl=bad)
        assert e.value.option == "mask_scl"


def test_a_pixel_at_nodata_in_any_band_is_invalid(tmp_path):
    """Sentinel-2's NODATA is DN 0 in each band (no reflectance is stored as 0): at a
    ragged swath edge a pixel at 0 in the 10 m bands only is not data either."""
    ragged = Scene(ragged=True)
    with S2Source(make_safe(ragged, tmp_path, "05.09"), mask_scl=()) as s:
        data, valid = read_all(s)
        some = np.any(data == 0, axis=0) & ~np.all(data == 0, axis=0)
        assert some.sum() > 20 and not valid[some].any()
        assert np.array_equal(valid, ~ragged.corner)
        _, v4 = s.read([1, 2, 3, 4], Rect(0, 0, s.width, s.height), True)
        assert np.array_equal(v4, valid)  # the 10 m bands alone: the same pixels


def test_scl_counts_are_exact_on_the_10m_grid(scene, products):
    want = np.bincount(scl10(scene).ravel())
    want = {c: int(n) for c, n in enumerate(want) if n}
    for p in (products["02.13"], products["05.09.zip"]):
        with S2Source(p) as s:
            for strip in (512, 7, 1):
                assert s.scl_counts(strip_rows=strip) == want
            assert sum(want.values()) == s.width * s.height
            assert s.masked_pixels() == sum(want.get(c, 0) for c in DEFAULT_SCL_MASK)
            assert s.masked_pixels() == int((~read_all(s)[1] & np.isin(scl10(scene), DEFAULT_SCL_MASK)).sum())
    with S2Source(products["02.13"], mask_scl=()) as s:
        assert s.masked_pixels() == 0 and s.scl_counts() == want


def test_spec_reopens_the_same_source_in_another_thread(products):
    with S2Source(products["05.09.zip"], resample="bilinear", mask_scl=(3, 9)) as s:
        spec = pickle.loads(pickle.dumps(s.spec))
        assert spec == S2Spec(str(products["05.09.zip"].resolve()), "bilinear", (3, 9))
        here = read_all(s)
    got = {}

    def work():
        with open_product(spec) as t:
            got["r"] = read_all(t)
            got["rad"] = t.radiometry

    th = threading.Thread(target=work)
    th.start()
    th.join()
    assert np.array_equal(got["r"][0], here[0]) and np.array_equal(got["r"][1], here[1])
    assert got["rad"] == ((1e-4, -0.1),) * 6
    assert open_product("scene.tif") is None and open_product(np.zeros(3)) is None


def test_l1c_product(scene, tmp_path):
    safe = make_safe(scene, tmp_path, "05.09", level="L1C")
    assert (safe / "MTD_MSIL1C.xml").exists()
    with open_product(safe / "MTD_MSIL1C.xml") as s:
        assert s.level == "L1C" and s.mask_scl == () and s.scl_counts() == {} and s.masked_pixels() == 0
        assert s.descriptions == scene.bands and s.radiometry == ((1e-4, -0.1),) * 6
        data, valid = read_all(s)
        assert np.array_equal(data[4], _dn(scene.expected()["B11"], "05.09"))
        assert np.array_equal(valid, np.all(data != 0, axis=0))


def test_geotiff_band_files_and_broken_products(scene, tmp_path):
    safe = make_safe(scene, tmp_path / "tif", "02.13", driver="GTiff")
    with S2Source(safe) as s, S2Source(make_safe(scene, tmp_path / "jp2", "02.13")) as j:
        assert np.array_equal(read_all(s)[0], read_all(j)[0])
    with pytest.raises(RasterError, match="not found"):
        S2Source(tmp_path / "S2A_MSIL2A_nothing.SAFE")
    empty = tmp_path / "S2A_MSIL2A_empty.SAFE"
    empty.mkdir()
    with pytest.raises(RasterError, match="no MTD_MSIL1C.xml or MTD_MSIL2A.xml"):
        S2Source(empty)
    next(safe.rglob("*_B03_10m.tif")).unlink()
    with pytest.raises(RasterError, match="B03_10m is listed in the product XML but missing"):
        S2Source(safe)
    bad = tmp_path / "S2A_MSIL2A_bad.zip"
    bad.write_bytes(b"not a zip")
    with pytest.raises(RasterError, match="as a zip"):
        S2Source(bad)
    noscl = make_safe(scene, tmp_path / "noscl", "02.13")
    next(noscl.rglob("*_SCL_20m.jp2")).unlink()
    xml = noscl / "MTD_MSIL2A.xml"
    xml.write_text("\n".join(x for x in xml.read_text().splitlines() if "_SCL_" not in x))
    with pytest.raises(RasterError) as e:
        S2Source(noscl)
    assert e.value.option == "mask_scl"
    with S2Source(noscl, mask_scl=()) as s:
        assert s.scl_counts() == {}


def test_without_an_image_file_list_the_granule_folder_is_listed(scene, tmp_path):
    safe = make_safe(scene, tmp_path, "02.13")
    xml = safe / "MTD_MSIL2A.xml"
    xml.write_text("\n".join(x for x in xml.read_text().splitlines() if "IMAGE_FILE" not in x))
    with S2Source(safe) as s, S2Source(zip_safe(safe)) as z:
        assert s.descriptions == scene.bands == z.descriptions
        assert np.array_equal(read_all(s)[0], read_all(z)[0])


def test_the_stack_vrt_places_bands_by_their_transforms(scene, products):
    with S2Source(products["02.13"]) as s:
        vrt = s.vrt
    assert vrt.count("<DstRect") == 7  # 6 bands + SCL
    assert 'xSize="626" ySize="546"' in vrt and 'resampling="nearest"' in vrt
    assert callable(stack_vrt)


# ---------------------------------------------------------------------------- STAC items

def make_stac_item(scene: Scene, where: Path, style: str) -> Path:
    """An Earth Search v1 (harmonised DN, ``earthsearch:boa_offset_applied``,
    raster:bands offset -0.1 all the same) or Planetary Computer (raw DN of PB 05.09,
    ``s2:processing_baseline``, asset keys B02…, no raster:bands) style item, COG-like
    GeoTIFF assets, hrefs relative (E84) or absolute (PC)."""
    where.mkdir(parents=True, exist_ok=True)
    common = {"B02": "blue", "B03": "green", "B04": "red", "B08": "nir", "B11": "swir16", "B12": "swir22"}
    pb = "05.09"
    assets = {}
    for b in (*scene.bands, "SCL"):
        is10 = b in scene.b10
        a = scene.scl20 if b == "SCL" else (scene.b10[b] if is10 else scene.b20[b])
        if b != "SCL" and style == "pc":
            a = _dn(a, pb)  # raw DN; E84 serves the harmonised (02.13-like) DN
        f = where / f"{b}.tif"
        _write(f, a.astype(np.uint8 if b == "SCL" else np.uint16), scene.transform if is10 else scene.transform20,
               scene.crs, "GTiff")
        gsd = 10 if is10 else 20
        if style == "e84":
            key = "scl" if b == "SCL" else common[b]
            asset = {"href": f"./{f.name}", "type": "image/tiff; application=geotiff; profile=cloud-optimized",
                     "roles": ["data"], "gsd": gsd}
            if b != "SCL":
                asset["eo:bands"] = [{"name": b, "common_name": common[b]}]
                asset["raster:bands"] = [{"nodata": 0, "data_type": "uint16", "spatial_resolution": gsd,
                                          "scale": 0.0001, "offset": -0.1}]
                assets[key + "-jp2"] = {"href": f"s3://sentinel-s2-l2a/tiles/51/R/UQ/{b}.jp2",
                                        "type": "image/jp2", "roles": ["data"],
                                        "eo:bands": [{"name": b, "common_name": common[b]}]}
        else:
            key = b
            asset = {"href": str(f.resolve()), "type": "image/tiff; application=geotiff; profile=cloud-optimized",
                     "roles": ["data"], "gsd": gsd}
            if b != "SCL":
                asset["eo:bands"] = [{"name": b, "common_name": common[b]}]
        assets[key] = asset
    assets["visual"] = {"href": "./TCI.tif", "roles": ["visual"],
                        "eo:bands": [{"name": "B04"}, {"name": "B03"}, {"name": "B02"}]}
    assets["thumbnail"] = {"href": "https://example.invalid/thumb.jpg", "roles": ["thumbnail"]}
    props = {"datetime": "2019-08-17T02:35:51Z", "s2:processing_baseline": pb, "s2:product_type": "S2MSI2A",
             "proj:epsg": 32651}
    if style == "e84":
        props["earthsearch:boa_offset_applied"] = True
    item = {"type": "Feature", "stac_version": "1.0.0", "id": f"S2A_51RUQ_20190817_0_L2A_{style}",
            "collection": "sentinel-2-l2a" if style == "pc" else "sentinel-2-c1-l2a",
            "geometry": None, "properties": props, "assets": assets, "links": []}
    p = where / "item.json"
    p.write_text(json.dumps(item, indent=1), encoding="utf-8")
    return p


@pytest.fixture(scope="module")
def items(scene, tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("stac")
    return {s: make_stac_item(scene, root / s, s) for s in ("e84", "pc")}


def test_stac_items_give_the_reflectance_of_the_safe(scene, products, items):
    with S2Source(products["05.09"]) as safe:
        ref, ref_valid = reflectance(safe)
    with pytest.warns(RadiometryWarning, match="boa_offset_applied"):
        with open_product(items["e84"]) as e84:
            assert isinstance(e84, StacSource) and e84.level == "L2A"
            assert e84.assets["B02"] == "blue"  # not blue-jp2 (its s3 href is never opened)
            r, v = reflectance(e84)
            assert e84.radiometry == ((1e-4, 0.0),) * 6
    assert np.array_equal(v, ref_valid) and np.allclose(r[:, v], ref[:, v], rtol=0, atol=1e-12)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with StacSource(items["pc"]) as pc:
            assert pc.radiometry == ((1e-4, -0.1),) * 6 and pc.baseline == (5, 9)
            r, v = reflectance(pc)
            assert (pc.width, pc.height, pc.transform, pc.crs) == (safe.width, safe.height, safe.transform, safe.crs)
            assert pc.descriptions == scene.bands and pc.scl_counts() == safe.scl_counts()
    assert np.array_equal(v, ref_valid) and np.allclose(r[:, v], ref[:, v], rtol=0, atol=1e-12)


def test_stac_item_detection_spec_and_unknown_radiometry(scene, items, tmp_path):
    assert is_stac_item(items["pc"]) and is_stac_item(str(items["e84"]))
    assert not is_stac_item(SCENE) and not is_stac_item(tmp_path / "none.json")
    (tmp_path / "geo.json").write_text(json.dumps({"type": "Feature", "geometry": None, "properties": {}}))
    assert not is_stac_item(tmp_path / "geo.json")
    with StacSource(items["pc"], mask_scl=(9,)) as s:
        spec = pickle.loads(pickle.dumps(s.spec))
        assert isinstance(spec, StacSpec) and spec.mask_scl == (9,)
        here = read_all(s)
    with open_product(spec) as t:
        there = read_all(t)
    assert np.array_equal(here[0], there[0]) and np.array_equal(here[1], there[1])
    # an item collection holding one item (a search result saved to disk), moved: relative hrefs
    d = json.loads(items["e84"].read_text())
    d["properties"] = {k: v for k, v in d["properties"].items() if k != "s2:processing_baseline"}
    moved = tmp_path / "e84"
    shutil.copytree(items["e84"].parent, moved)
    (moved / "search.json").write_text(json.dumps({"type": "FeatureCollection", "features": [d]}))
    assert is_stac_item(moved / "search.json")
    with pytest.warns(RadiometryWarning), open_product(moved / "search.json") as s:
        assert s.radiometry == ((1e-4, 0.0),) * 6
    # neither the flag nor a baseline: raster:bands decides; without them, refused
    del d["properties"]["earthsearch:boa_offset_applied"]
    (moved / "rb.json").write_text(json.dumps(d))
    with StacSource(moved / "rb.json") as s:
        assert s.radiometry == ((1e-4, -0.1),) * 6
    for a in d["assets"].values():
        a.pop("raster:bands", None)
    (moved / "bare.json").write_text(json.dumps(d))
    with StacSource(moved / "bare.json") as s:
        assert s.radiometry == (None,) * 6
        with pytest.raises(RasterError) as e:
            s.check_radiometry()
        assert e.value.option == "input_offset" and "\n" not in str(e.value)
    (moved / "two.json").write_text(json.dumps({"type": "FeatureCollection", "features": [d, d]}))
    with pytest.raises(RasterError, match="2 STAC items"):
        StacSource(moved / "two.json")


# ---------------------------------------------------------------------------- the engine

def test_make_plan_reads_a_product_through_its_spec(products):
    from conftest import make_meta

    from geoseg.predict import PredictOptions
    from geoseg.unit import make_plan
    with S2Source(products["05.09.zip"]) as s:
        plan = make_plan(s, make_meta(n_bands=3), PredictOptions(bands=("B04", "B03", "B02")))
        assert plan.bands == (3, 2, 1) and plan.masked
        assert isinstance(plan.source, S2Spec) and pickle.loads(pickle.dumps(plan.source)) == s.spec
