"""Band files stacked on one grid, and STAC items as input.

:class:`StackSource` is a :class:`geoseg.sources.Source` over single-band files
(JPEG 2000, GeoTIFF, COGs, any GDAL name) stacked by a GDAL VRT built in memory
(:func:`stack_vrt`) on the grid of the finest band: a 20 m band on a 10 m grid is
placed with a ``DstRect`` twice its size and resampled by GDAL (``"nearest"``: each
pixel exactly 2 x 2, or ``"bilinear"``). DN 0 in any band read is nodata (S2's NODATA); with an
SCL (scene classification) band, its classes in ``mask_scl`` are invalid too. It is
the machinery of both Sentinel-2 products (:mod:`geoseg.sentinel2`) and STAC items.

:class:`StacSource` reads a local STAC item JSON (as saved from a STAC API search;
an item collection holding one item too) whose asset hrefs are local paths (relative
to the JSON or absolute), ``file://`` or ``http(s)``/``s3`` URLs (read by GDAL). The
Sentinel-2 bands are found by asset key (``B02``…) or by their ``eo:bands`` name or
common name (``blue``, ``nir08``, ``swir16``…) through :mod:`geoseg.bands`. No STAC
library and no network access are needed for local items.

Radiometry of a STAC item (reflectance = DN * scale + offset; scale from
``raster:bands`` or 1e-4): Earth Search's ``earthsearch:boa_offset_applied: true`` ->
offset 0 (the DN are harmonised); else a ``s2:processing_baseline`` >= 04.00 -> offset
-1000 DN (the Planetary Computer serves the product's DN), < 04.00 -> 0; else the
``raster:bands`` offset; else unknown (refused, ``option="input_offset"``). Where
``raster:bands`` says otherwise than the rule used, a :class:`RadiometryWarning` says
which was used (Earth Search items state -0.1 even when it is already applied).
"""

from __future__ import annotations

import json
import os
import re
import urllib.parse
import warnings
import xml.etree.ElementTree as ET
from collections.abc import Sequence
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import rasterio
from affine import Affine
from rasterio.enums import Resampling
from rasterio.errors import RasterioError
from rasterio.windows import Window

from .bands import BAND_ALIASES, canonical_band
from .errors import ConfigError, RadiometryWarning, RasterError, one_line
from .windows import Rect

__all__ = [
    "DEFAULT_SCL_MASK",
    "OFFSET_BASELINE",
    "RESAMPLE_METHODS",
    "S2_BANDS",
    "SCL_CLASSES",
    "BandFile",
    "Geometry",
    "StacSource",
    "StacSpec",
    "StackSource",
    "check_scl_mask",
    "format_baseline",
    "is_stac_item",
    "parse_baseline",
    "probe",
    "stack_vrt",
]

#: The Sentinel-2 bands a product or item source exposes, in spectral order, with
#: their native pixel size (m).
S2_BANDS: dict[str, int] = {"B02": 10, "B03": 10, "B04": 10, "B05": 20, "B06": 20, "B07": 20, "B08": 10,
                            "B8A": 20, "B11": 20, "B12": 20}
#: Scene classification (SCL) classes of L2A products.
SCL_CLASSES: dict[int, str] = {
    0: "no data", 1: "saturated or defective", 2: "dark area or topographic shadow", 3: "cloud shadow",
    4: "vegetation", 5: "not vegetated", 6: "water", 7: "unclassified", 8: "cloud medium probability",
    9: "cloud high probability", 10: "thin cirrus", 11: "snow or ice"}
#: SCL classes that are invalid by default: no data, saturated/defective, cloud shadow,
#: cloud medium/high probability, thin cirrus. Water (6) and snow (11) never.
DEFAULT_SCL_MASK: tuple[int, ...] = (0, 1, 3, 8, 9, 10)
RESAMPLE_METHODS = ("nearest", "bilinear")
#: The first baseline whose products store reflectance with an add-offset (2022-01-25).
OFFSET_BASELINE = (4, 0)


_GDAL_TYPES = {"uint8": "Byte", "int8": "Int8", "uint16": "UInt16", "int16": "Int16", "uint32": "UInt32",
               "int32": "Int32", "float32": "Float32", "float64": "Float64"}


def _thread_env():
    """As :func:`geoseg.sources.thread_env` (not imported: sources imports this module)."""
    return nullcontext() if rasterio.env.hasenv() else rasterio.Env()


def _window(r: Rect) -> Window:
    return Window(r.col, r.row, r.width, r.height)


def parse_baseline(text: str | None) -> tuple[int, ...] | None:
    """A processing baseline as numbers: ``"05.09"`` -> ``(5, 9)``, ``"N0213"`` ->
    ``(2, 13)``; None when there is none. Compared as tuples, ``"05.11" > "04.00"``."""
    if not text:
        return None
    s = text.strip()
    m = re.fullmatch(r"N?(\d{2})(\d{2})", s)
    if m:
        return int(m.group(1)), int(m.group(2))
    m = re.fullmatch(r"(\d+)(?:\.(\d+))?", s)
    if not m:
        return None
    return int(m.group(1)), int(m.group(2) or 0)


def format_baseline(b: tuple[int, ...] | None) -> str:
    return "unknown" if b is None else ".".join(f"{v:02d}" for v in b)


# ---------------------------------------------------------------------------- the VRT stack

@dataclass(frozen=True)
class BandFile:
    """One band of a stack: its name (``"B02"``), a GDAL name and the band in it."""

    name: str
    path: str
    band: int = 1


@dataclass(frozen=True)
class Geometry:
    width: int
    height: int
    transform: Affine
    crs: Any
    dtype: str
    block: tuple[int, int]  # (rows, cols)


def probe(path: str, label: str) -> Geometry:
    try:
        with _thread_env(), rasterio.open(path) as ds:
            return Geometry(ds.width, ds.height, ds.transform, ds.crs, ds.dtypes[0], tuple(ds.block_shapes[0]))
    except RasterioError as e:
        raise RasterError(f"{label}: cannot open band file {path.rsplit('/', 1)[-1]}: {one_line(e)}") from None


def _num(v: float) -> str:
    return str(int(round(v))) if abs(v - round(v)) < 1e-9 else repr(float(v))


def stack_vrt(ref: Geometry, members: Sequence[tuple[BandFile, Geometry, str]], label: str = "stack",
              nodata: float | None = 0) -> str:
    """VRT XML text stacking ``members`` — ``(band file, its geometry, resampling)`` —
    on the grid of ``ref``: each file is placed by a ``DstRect`` computed from its
    transform (a 20 m band on a 10 m grid: twice its size), resampled by GDAL with the
    given method (``"nearest"`` with a 2x ``DstRect`` replicates each pixel 2 x 2)."""
    R = ref.transform
    if R.b or R.d:
        raise RasterError(f"{label}: rotated grids are not supported")
    root = ET.Element("VRTDataset", rasterXSize=str(ref.width), rasterYSize=str(ref.height))
    if ref.crs is not None:
        ET.SubElement(root, "SRS", dataAxisToSRSAxisMapping="1,2").text = ref.crs.to_wkt()
    ET.SubElement(root, "GeoTransform").text = ", ".join(repr(float(v)) for v in (R.c, R.a, R.b, R.f, R.d, R.e))
    for i, (bf, g, method) in enumerate(members, start=1):
        T = g.transform
        if T.b or T.d:
            raise RasterError(f"{label}: band {bf.name} is on a rotated grid")
        if ref.crs is not None and g.crs is not None and g.crs != ref.crs:
            raise RasterError(f"{label}: band {bf.name} is not in the CRS of the stack ({g.crs} vs {ref.crs})")
        if method not in RESAMPLE_METHODS:
            raise ConfigError(f"resample must be one of {', '.join(RESAMPLE_METHODS)}, got {method!r}",
                              option="resample")
        xoff, yoff = (T.c - R.c) / R.a, (T.f - R.f) / R.e
        xsize, ysize = g.width * T.a / R.a, g.height * T.e / R.e
        gdt = _GDAL_TYPES.get(g.dtype)
        if gdt is None:
            raise RasterError(f"{label}: band {bf.name} holds {g.dtype} values")
        band = ET.SubElement(root, "VRTRasterBand", dataType=gdt, band=str(i))
        if nodata is not None and bf.name != "SCL":
            ET.SubElement(band, "NoDataValue").text = _num(nodata)
        ET.SubElement(band, "Description").text = bf.name
        src = ET.SubElement(band, "SimpleSource", resampling=method)
        ET.SubElement(src, "SourceFilename", relativeToVRT="0").text = bf.path
        ET.SubElement(src, "SourceBand").text = str(bf.band)
        ET.SubElement(src, "SourceProperties", RasterXSize=str(g.width), RasterYSize=str(g.height), DataType=gdt,
                      BlockXSize=str(g.block[1]), BlockYSize=str(g.block[0]))
        ET.SubElement(src, "SrcRect", xOff="0", yOff="0", xSize=str(g.width), ySize=str(g.height))
        ET.SubElement(src, "DstRect", xOff=_num(xoff), yOff=_num(yoff), xSize=_num(xsize), ySize=_num(ysize))
    return ET.tostring(root, encoding="unicode")


def check_scl_mask(mask_scl: Sequence[int] | None) -> tuple[int, ...]:
    if mask_scl is None:
        return ()
    if isinstance(mask_scl, (int, np.integer)):
        mask_scl = (int(mask_scl),)
    out = []
    for c in mask_scl:
        if isinstance(c, bool) or not isinstance(c, (int, np.integer)) or c not in SCL_CLASSES:
            raise ConfigError(f"SCL classes are integers 0-11, got {c!r}", option="mask_scl")
        out.append(int(c))
    return tuple(sorted(set(out)))


class StackSource:
    """A :class:`geoseg.sources.Source` over band files stacked on one grid by a VRT
    (the common part of :class:`geoseg.sentinel2.S2Source` and :class:`StacSource`).

    Subclasses set ``name``, ``level`` and ``spec``, give the band files and the SCL
    file (or None) to :meth:`_build`, and provide ``radiometry``. The reference grid
    is band ``ref``, else the first of the finest bands. Beyond the Source protocol:
    ``resample``, ``mask_scl`` (the SCL classes masked; () without SCL masking),
    ``vrt`` (the VRT XML text), :meth:`scl_mask`, :meth:`scl_counts`,
    :meth:`masked_pixels`."""

    spec: Any
    name: str
    level: str = ""
    #: per band ``(scale, offset)``, reflectance = DN * scale + offset; None where unknown
    radiometry: tuple[tuple[float, float] | None, ...] | None = None
    #: why the radiometry is unknown (``option="input_offset"``), or None
    radiometry_error: RasterError | None = None

    def check_radiometry(self) -> None:
        """Raise the refusal of an input whose radiometry cannot be known (unless the
        caller states the offset itself)."""
        e = self.radiometry_error
        if e is not None:
            raise type(e)(str(e), option=e.option)

    def _build(self, bands: Sequence[BandFile], scl: BandFile | None, *, resample: str, mask_scl,
               ref: str | None = None, label: str) -> None:
        self.ds = None
        if resample not in RESAMPLE_METHODS:
            raise ConfigError(f"resample must be one of {', '.join(RESAMPLE_METHODS)}, got {resample!r}",
                              option="resample")
        self.resample = resample
        mask = check_scl_mask(mask_scl)
        if not bands:
            raise RasterError(f"{label}: no Sentinel-2 band found")
        geos = {bf.name: probe(bf.path, label) for bf in bands}
        refname = ref if ref in geos else min(geos, key=lambda n: abs(geos[n].transform.a))
        g0 = geos[refname]
        members = []
        for bf in bands:
            g = geos[bf.name]
            same = (g.width, g.height) == (g0.width, g0.height) and g.transform.almost_equals(g0.transform)
            members.append((bf, g, "nearest" if same else resample))
        self.scl_index: int | None = None
        self._scl_geo: Geometry | None = None
        self._scl_file = scl
        if scl is not None:
            self._scl_geo = probe(scl.path, label)
            members.append((scl, self._scl_geo, "nearest"))
            self.scl_index = len(members)
        self.vrt = stack_vrt(g0, members, label)
        try:
            with _thread_env():
                self.ds = rasterio.open(self.vrt)
        except RasterioError as e:
            raise RasterError(f"cannot open {label}: {one_line(e)}") from None
        self.bandfiles = tuple(bands)
        self.count = len(bands)
        self.width, self.height = g0.width, g0.height
        self.crs, self.transform = g0.crs, g0.transform
        self.dtypes = tuple(geos[b.name].dtype for b in bands)
        self.descriptions = tuple(b.name for b in bands)
        self.nodatavals = (0.0,) * self.count
        self.mask_scl = mask if self.level == "L2A" else ()
        if self.mask_scl and scl is None:
            self.close()
            raise RasterError(f"{label}: no scene classification (SCL) band to mask clouds with; "
                              "read it without the SCL mask", option="mask_scl")

    # -- Source protocol ------------------------------------------------------
    def has_masks(self, bands: Sequence[int]) -> bool:
        return True  # DN 0 is NODATA; SCL classes

    def _read(self, indexes: list[int], **kw) -> np.ndarray:
        try:
            with _thread_env():
                return self.ds.read(indexes, **kw)
        except RasterioError as e:
            raise RasterError(f"cannot read {self.name} (truncated or corrupt?): {one_line(e)}") from None

    def _valid(self, data: np.ndarray, scl: np.ndarray | None) -> np.ndarray:
        # DN 0 is Sentinel-2's NODATA in every band: no reflectance is stored as 0 (from
        # baseline 04.00 on it would read -0.1), so a pixel with a band at 0 — a swath
        # edge where the 10 m and 20 m footprints differ — is not read as data.
        valid = np.all(data != 0, axis=0)
        if scl is not None:
            valid &= ~np.isin(scl, self.mask_scl)
        return valid

    def read(self, bands: Sequence[int], rect: Rect, masked: bool) -> tuple[np.ndarray, np.ndarray]:
        win = _window(rect)
        data = self._read(list(bands), window=win, out_dtype=np.float32)
        if not masked:
            return data, np.ones(data.shape[1:], bool)
        scl = self._read([self.scl_index], window=win)[0] if self.mask_scl else None
        return data, self._valid(data, scl)

    def read_decimated(self, bands: Sequence[int], height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
        kw = dict(out_shape=(len(bands), height, width), resampling=Resampling.nearest)
        data = self._read(list(bands), out_dtype=np.float32, **kw)
        scl = None
        if self.mask_scl:
            scl = self._read([self.scl_index], out_shape=(1, height, width), resampling=Resampling.nearest)[0]
        return data, self._valid(data, scl)

    def scl_mask(self, rect: Rect | None = None) -> np.ndarray | None:
        """The SCL classes (uint8) of ``rect`` (default: the whole scene) on the 10 m
        grid, None without an SCL band."""
        if self.scl_index is None:
            return None
        rect = rect or Rect(0, 0, self.width, self.height)
        return self._read([self.scl_index], window=_window(rect))[0]

    def scl_counts(self, strip_rows: int = 512) -> dict[int, int]:
        """Pixels per SCL class on the 10 m grid over the whole scene (empty without an
        SCL band). The SCL file is streamed in strips; where it sits on the grid at an
        integer factor and offset (a 20 m SCL: every pixel is 2 x 2 pixels at 10 m,
        fewer at a cut edge) its pixels are counted with their weights, else the
        resampled band is counted."""
        g = self._scl_geo
        if g is None:
            return {}
        R, T = self.transform, g.transform
        fx, fy = T.a / R.a, T.e / R.e
        ox, oy = (T.c - R.c) / R.a, (T.f - R.f) / R.e
        exact = all(abs(v - round(v)) < 1e-9 and round(v) >= 0 for v in (fx, fy, ox, oy)) and min(fx, fy) >= 1
        counts: dict[int, int] = {}

        def add(values: np.ndarray, weights: np.ndarray | None = None) -> None:
            n = np.bincount(values.ravel().astype(np.int64), weights=weights)
            for c in np.flatnonzero(n):
                counts[int(c)] = counts.get(int(c), 0) + int(np.rint(n[c]))

        if exact:
            fx, fy, ox, oy = (int(round(v)) for v in (fx, fy, ox, oy))
            wc = self._weights(g.width, fx, ox, self.width)
            wr = self._weights(g.height, fy, oy, self.height)
            try:
                with _thread_env(), rasterio.open(self._scl_file.path) as ds:
                    for r0 in range(0, g.height, strip_rows):
                        h = min(strip_rows, g.height - r0)
                        if wr[r0:r0 + h].any():
                            a = ds.read(self._scl_file.band, window=Window(0, r0, g.width, h))
                            add(a, np.outer(wr[r0:r0 + h], wc).ravel())
            except RasterioError as e:
                raise RasterError(f"cannot read the SCL of {self.name}: {one_line(e)}") from None
        else:
            for r0 in range(0, self.height, strip_rows):
                add(self.scl_mask(Rect(0, r0, self.width, min(strip_rows, self.height - r0))))
        return dict(sorted(counts.items()))

    @staticmethod
    def _weights(n_src: int, f: int, off: int, n_dst: int) -> np.ndarray:
        """Pixels of the destination axis ``[0, n_dst)`` each source pixel covers."""
        start = off + f * np.arange(n_src)
        return np.clip(np.minimum(start + f, n_dst) - np.maximum(start, 0), 0, None).astype(np.float64)

    def masked_pixels(self) -> int:
        """Pixels of the scene the SCL mask makes invalid (0 without masking)."""
        if not self.mask_scl:
            return 0
        c = self.scl_counts()
        return sum(c.get(k, 0) for k in self.mask_scl)

    def close(self) -> None:
        if getattr(self, "ds", None) is not None:
            self.ds.close()
            self.ds = None

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __del__(self):  # a source left open by an error path
        try:
            self.close()
        except Exception:  # noqa: BLE001
            pass


# ---------------------------------------------------------------------------- STAC items

#: The first baseline whose products store reflectance with an add-offset of -1000 DN.
_S2_OFFSET_DN = -1000.0
_S2_QUANTIFICATION = 10000.0
_MAX_ITEM_BYTES = 50 * 2**20


def _product_band(canonical: str) -> str | None:
    """``"B2"`` -> ``"B02"``, ``"B8A"`` -> ``"B8A"``; None for a non-band."""
    m = re.fullmatch(r"B(\d{1,2})(A?)", canonical)
    if not m or canonical not in BAND_ALIASES:
        return None
    return f"B{int(m.group(1))}A" if m.group(2) else f"B{int(m.group(1)):02d}"


def is_stac_item(path: Any) -> bool:
    """True for a local JSON file holding a STAC item (``"type": "Feature"`` and a
    ``stac_version``), or an item collection of STAC items."""
    if not isinstance(path, (str, os.PathLike)):
        return False
    s = os.fspath(path)
    if not isinstance(s, str) or s.startswith("/vsi") or "://" in s or s.lstrip().startswith("<"):
        return False
    p = Path(s)
    if p.suffix.lower() not in (".json", ".geojson"):
        return False
    try:
        if not p.is_file() or p.stat().st_size > _MAX_ITEM_BYTES:
            return False
        d = json.loads(p.read_text(encoding="utf-8"))
    except (OSError, ValueError, UnicodeDecodeError):
        return False
    return isinstance(d, dict) and (_is_item(d) or (d.get("type") == "FeatureCollection" and bool(d.get("features"))
                                                   and all(_is_item(f) for f in d["features"])))


def _is_item(d: Any) -> bool:
    return isinstance(d, dict) and d.get("type") == "Feature" and "stac_version" in d


def _load_item(path: Path) -> dict:
    try:
        d = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise RasterError(f"input not found: {path}") from None
    except (OSError, ValueError, UnicodeDecodeError) as e:
        raise RasterError(f"cannot read {path.name} as a STAC item: {one_line(e)}") from None
    if isinstance(d, dict) and d.get("type") == "FeatureCollection":
        feats = [f for f in d.get("features") or [] if _is_item(f)]
        if len(feats) != 1:
            raise RasterError(f"{path.name} holds {len(feats)} STAC items; give one item (one scene)")
        d = feats[0]
    if not _is_item(d):
        raise RasterError(f"{path.name} is not a STAC item (a GeoJSON Feature with a stac_version)")
    if not isinstance(d.get("assets"), dict):
        raise RasterError(f"{path.name}: the STAC item has no assets")
    return d


def _gdal_href(href: str, base: Path) -> str:
    """A GDAL name for an asset href: local paths relative to the item's folder."""
    u = urllib.parse.urlparse(href)
    if u.scheme == "file":
        return urllib.parse.unquote(u.path)
    if u.scheme in ("http", "https"):
        return "/vsicurl/" + href
    if u.scheme == "s3":
        return f"/vsis3/{u.netloc}{u.path}"
    if u.scheme in ("gs", "gcs"):
        return f"/vsigs/{u.netloc}{u.path}"
    if href.startswith("/vsi") or (u.scheme and len(u.scheme) > 1):
        return href
    p = Path(href)
    return str(p if p.is_absolute() else (base / p).resolve())


def _asset_bands(asset: dict) -> list[dict]:
    """The band objects of an asset: ``eo:bands`` (STAC 1.0) or ``bands`` (1.1)."""
    b = asset.get("eo:bands")
    if not isinstance(b, list):
        b = asset.get("bands")
    return [x for x in b if isinstance(x, dict)] if isinstance(b, list) else []


def _raster_band(asset: dict) -> dict:
    """``scale``/``offset``/``nodata`` of a one-band asset (``raster:bands`` of STAC
    1.0, the ``raster:`` fields of 1.1 ``bands``)."""
    rb = asset.get("raster:bands")
    if isinstance(rb, list) and len(rb) == 1 and isinstance(rb[0], dict):
        return rb[0]
    bands = asset.get("bands")
    if isinstance(bands, list) and len(bands) == 1 and isinstance(bands[0], dict):
        b = bands[0]
        return {k: b[f"raster:{k}"] for k in ("scale", "offset") if f"raster:{k}" in b}
    return {}


def _band_of(key: str, asset: dict) -> tuple[str | None, bool]:
    """The product band name (``"B02"``, ``"SCL"``) of an asset and whether its key
    names it (rather than its ``eo:bands``)."""
    bands = _asset_bands(asset)
    if len(bands) > 1:
        return None, False
    if key.strip().lower() == "scl":
        return "SCL", True
    b = _product_band(canonical_band(key))
    if b:
        return b, True
    if bands:
        for k in ("name", "common_name", "eo:common_name"):
            v = bands[0].get(k)
            if isinstance(v, str):
                if v.strip().lower() == "scl":
                    return "SCL", False
                b = _product_band(canonical_band(v))
                if b:
                    return b, False
    return None, False


@dataclass(frozen=True)
class StacSpec:
    """What reopens a :class:`StacSource` elsewhere (picklable)."""

    path: str
    resample: str = "nearest"
    mask_scl: tuple[int, ...] = DEFAULT_SCL_MASK

    def open(self) -> StacSource:
        return StacSource(self.path, resample=self.resample, mask_scl=self.mask_scl)


class StacSource(StackSource):
    """A Sentinel-2 STAC item (a local JSON) as one source on the grid of its first
    10 m band (see the module docstring). Attributes beyond the Source protocol:
    ``item`` (the JSON), ``level`` ("L2A", "L1C" or ""), ``baseline``, ``assets``
    (band -> asset key used), ``radiometry`` (per band ``(scale, offset)``,
    reflectance = DN * scale + offset; None per band when unknown, the refusal then
    in ``radiometry_error``), and those of :class:`StackSource`."""

    def __init__(self, path: str | os.PathLike, *, resample: str = "nearest",
                 mask_scl: Sequence[int] | None = DEFAULT_SCL_MASK):
        self.ds = None
        p = Path(os.fspath(path))
        item = _load_item(p)
        self.item = item
        self.name = p.name
        props = item.get("properties") or {}
        self.properties = props
        self.level = self._level(item, props)
        self.baseline = self._baseline(item, props)
        chosen: dict[str, tuple[tuple[int, int, int], str, dict]] = {}
        for i, (key, asset) in enumerate(item["assets"].items()):
            if not isinstance(asset, dict) or not isinstance(asset.get("href"), str):
                continue
            band, by_key = _band_of(key, asset)
            if band is None or (band != "SCL" and band not in S2_BANDS):
                continue
            rank = (0 if by_key else 1, 1 if key.lower().endswith("-jp2") else 0, i)
            if band not in chosen or rank < chosen[band][0]:
                chosen[band] = (rank, key, asset)
        self.assets = {b: chosen[b][1] for b in chosen}   # band -> asset key
        base = p.resolve().parent
        bands = [BandFile(b, _gdal_href(chosen[b][2]["href"], base)) for b in S2_BANDS if b in chosen]
        if not bands:
            raise RasterError(f"{p.name}: no Sentinel-2 band among the item's assets "
                              f"({', '.join(item['assets']) or 'none'})")
        scl = (BandFile("SCL", _gdal_href(chosen["SCL"][2]["href"], base))
               if "SCL" in chosen and self.level == "L2A" else None)
        ten = [b.name for b in bands if S2_BANDS[b.name] == 10]
        self._build(bands, scl, resample=resample, mask_scl=mask_scl, ref=ten[0] if ten else None, label=p.name)
        self.spec = StacSpec(str(p.resolve()), resample, check_scl_mask(mask_scl))
        try:
            self.radiometry = self._resolve_radiometry()
        except RasterError as e:
            self.radiometry, self.radiometry_error = (None,) * self.count, e

    @staticmethod
    def _level(item: dict, props: dict) -> str:
        for v in (props.get("s2:product_type"), props.get("processing:level"), item.get("collection"),
                  props.get("s2:product_uri"), item.get("id")):
            if isinstance(v, str):
                u = v.upper()
                if "2A" in u:
                    return "L2A"
                if "1C" in u:
                    return "L1C"
        if any(k.lower() == "scl" for k in item.get("assets", {})):
            return "L2A"
        return ""

    @staticmethod
    def _baseline(item: dict, props: dict) -> tuple[int, ...] | None:
        for k in ("s2:processing_baseline", "processing:version"):
            b = parse_baseline(str(props[k])) if props.get(k) is not None else None
            if b is not None:
                return b
        for v in (props.get("s2:product_uri"), item.get("id")):
            m = re.search(r"_N(\d{2})(\d{2})(?:_|\.|$)", v) if isinstance(v, str) else None
            if m:
                return int(m.group(1)), int(m.group(2))
        return None

    def _resolve_radiometry(self) -> tuple[tuple[float, float], ...]:
        """Per band ``(scale, offset)`` (see the module docstring); a warning when the
        item's ``raster:bands`` disagree with the rule used."""
        flag = self.properties.get("earthsearch:boa_offset_applied")
        out, disagree = [], []
        for bf in self.bandfiles:
            rb = _raster_band(self.item["assets"][self.assets[bf.name]])
            scale = float(rb["scale"]) if isinstance(rb.get("scale"), (int, float)) and rb["scale"] else None
            offset = float(rb["offset"]) if isinstance(rb.get("offset"), (int, float)) else None
            s = scale if scale is not None else 1.0 / _S2_QUANTIFICATION
            if flag is True:
                o, why = 0.0, "earthsearch:boa_offset_applied is true (the offset is already applied)"
            elif self.baseline is not None:
                o = _S2_OFFSET_DN * s if self.baseline >= OFFSET_BASELINE else 0.0
                why = f"processing baseline {format_baseline(self.baseline)} stores DN with offset {o / s:g}"
            elif offset is not None:
                o, why = offset, ""
            else:
                raise RasterError(f"{self.name}: the STAC item gives neither raster:bands offsets nor a "
                                  "processing baseline; the reflectance offset must be given", option="input_offset")
            if offset is not None and abs(offset - o) > 1e-12:
                disagree.append((bf.name, offset))
            out.append((s, o))
        if disagree:
            offs = sorted({v for _, v in disagree})
            warnings.warn(f"{self.name}: raster:bands gives offset {', '.join(f'{v:g}' for v in offs)} for "
                          f"{' '.join(b for b, _ in disagree)} but {why}; using offset {out[0][1]:g}",
                          RadiometryWarning, stacklevel=3)
        return tuple(out)

    def describe(self) -> dict[str, str]:
        """What geoseg derived from the item, as strings (for logs, tags, ``info``)."""
        offset = (", ".join(f"{o:g}" for o in sorted({round(o, 6) for _, o in self.radiometry}))
                  if self.radiometry_error is None else "unknown")
        return {"input_kind": f"STAC item ({self.level or 'level unknown'})", "product": self.item.get("id", ""),
                "level": self.level, "processing_baseline": format_baseline(self.baseline),
                "reflectance_offset": offset, "bands": " ".join(self.descriptions), "resample": self.resample,
                "scl_masked": ",".join(map(str, self.mask_scl)) or "none"}
