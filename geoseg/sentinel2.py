"""Sentinel-2 products as input: SAFE folders, their zips and ``MTD_MSIL*.xml``.

A product is read as one source on the **B02 10 m grid** (its CRS and transform
exactly): the 10 m bands B02 B03 B04 B08 as they are and the 20 m bands B05 B06 B07
B8A B11 B12 upsampled by ``resample`` — ``"nearest"`` (the default: each 20 m pixel
becomes exactly 2 x 2 pixels, as the grids share their origin) or ``"bilinear"``.
The stack is a GDAL VRT built in memory over the JPEG 2000 band files (through
``/vsizip/`` for a zip), opened with rasterio (:class:`geoseg.stac.StackSource`, shared
with STAC items); GDAL's SENTINEL2 driver is not used, and the radiometry is read from
the product XML by geoseg, not from GDAL band metadata (GDAL 3.6 does not expose the
offsets).

Radiometry (:attr:`S2Source.radiometry`): reflectance = DN * scale + offset with
scale = 1 / quantification value and offset = add-offset / quantification value,
the add-offset being ``BOA_ADD_OFFSET`` (L2A) or ``RADIO_ADD_OFFSET`` (L1C) of the
band. Products of processing baseline 04.00 and later store DN = reflectance x 10000
+ 1000; baselines are compared as numbers (``(5, 11) > (4, 0)``). A baseline >= 04.00
without an offset list is refused (``option="input_offset"``), never guessed.

Validity: DN 0 (the product's NODATA) in any of the bands read makes a pixel
invalid (not GDAL's all-bands rule: no reflectance is stored as 0, and at a swath
edge the 10 m and 20 m footprints differ by a pixel); for L2A products, pixels whose scene classification (SCL, 20 m,
resampled nearest) is in ``mask_scl`` are invalid too (default
:data:`DEFAULT_SCL_MASK`: no data, saturated/defective, cloud shadow, medium and high
cloud probability, thin cirrus; water and snow never).

:func:`open_product` is the one entry point for products, STAC items and their specs.
"""

from __future__ import annotations

import os
import re
import xml.etree.ElementTree as ET
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

from .errors import RasterError, one_line
from .stac import (
    DEFAULT_SCL_MASK,
    OFFSET_BASELINE,
    RESAMPLE_METHODS,
    S2_BANDS,
    SCL_CLASSES,
    BandFile,
    StackSource,
    StacSource,
    StacSpec,
    check_scl_mask,
    format_baseline,
    is_stac_item,
    parse_baseline,
)

__all__ = [
    "BAND_IDS",
    "DEFAULT_SCL_MASK",
    "RESAMPLE_METHODS",
    "S2_BANDS",
    "SCL_CLASSES",
    "ProductInfo",
    "S2Source",
    "S2Spec",
    "is_s2_product",
    "open_product",
    "parse_baseline",
    "parse_product_xml",
]

#: Band names of the spectral bands in ``band_id`` order (0..12) of the product XML.
BAND_IDS = ("B01", "B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B09", "B10", "B11", "B12")

_ZIP_NAME = re.compile(r"^S2[A-Z_]*_MSIL(1C|2A)_.*\.zip$", re.IGNORECASE)
_MTD_NAME = re.compile(r"^MTD_MSIL(1C|2A)\.xml$", re.IGNORECASE)
_NAME_BASELINE = re.compile(r"_N(\d{2})(\d{2})_")
_BAND_FILE = re.compile(r"_(B\d\d|B8A|SCL)(?:_(\d+)m)?$", re.IGNORECASE)


# ---------------------------------------------------------------------------- product XML

@dataclass(frozen=True)
class ProductInfo:
    """What geoseg reads from a product's ``MTD_MSIL1C.xml``/``MTD_MSIL2A.xml``.

    ``offsets`` are the add-offsets in DN by band name (``"B02"``…), empty when the
    product has no offset list; ``special_values`` maps ``"NODATA"``/``"SATURATED"``
    to their DN; ``image_files`` are the product-relative band file paths without
    extension, as the XML lists them."""

    level: str                                  # "L1C" or "L2A"
    baseline: tuple[int, ...] | None            # (5, 9) for "05.09"
    quantification: float | None
    offsets: dict[str, float] = field(default_factory=dict)
    special_values: dict[str, int] = field(default_factory=dict)
    image_files: tuple[str, ...] = ()
    product_uri: str = ""
    product_type: str = ""

    @property
    def baseline_text(self) -> str:
        return format_baseline(self.baseline)

    @property
    def needs_offsets(self) -> bool:
        """True when the product's DN carry an add-offset (baseline >= 04.00), or when
        its baseline is unknown (then only an offset list settles it)."""
        return self.baseline is None or self.baseline >= OFFSET_BASELINE

    def check_offsets(self) -> None:
        """Refuse a product whose radiometry cannot be known: baseline >= 04.00 (or
        unknown) and no offset list; quantification missing."""
        what = self.product_uri or f"this {self.level} product"
        if not self.quantification:
            raise RasterError(f"{what}: the product XML gives no quantification value; "
                              "its DN cannot be converted to reflectance", option="input_scale")
        if not self.offsets and self.needs_offsets:
            kind = "BOA_ADD_OFFSET" if self.level == "L2A" else "RADIO_ADD_OFFSET"
            why = (f"processing baseline {self.baseline_text} stores DN with an add-offset"
                   if self.baseline is not None else "the processing baseline is unknown")
            raise RasterError(f"{what}: {why} but the product lacks its offset list ({kind}); "
                              "the reflectance offset must be given", option="input_offset")

    def radiometry(self, band: str) -> tuple[float, float]:
        """``(scale, offset)`` of a band with reflectance = DN * scale + offset."""
        self.check_offsets()
        q = float(self.quantification)  # type: ignore[arg-type]
        if self.offsets:
            if band not in self.offsets:
                raise RasterError(f"{self.product_uri or 'product'}: the offset list has no value for {band}",
                                  option="input_offset")
            add = self.offsets[band]
        else:
            add = 0.0
        return 1.0 / q, add / q


def _local(tag: str) -> str:
    return tag.rsplit("}", 1)[-1] if isinstance(tag, str) else ""


def _band_name(physical: str) -> str | None:
    """``"B1"``/``"B01"`` -> ``"B01"``, ``"B8A"`` -> ``"B8A"``."""
    m = re.fullmatch(r"B0*(\d{1,2})(A?)", physical.strip().upper())
    if not m:
        return None
    return f"B{int(m.group(1)):02d}" if not m.group(2) else f"B{int(m.group(1))}A"


def parse_product_xml(text: str | bytes, *, strict: bool = True) -> ProductInfo:
    """The :class:`ProductInfo` of a product XML (any namespace; ``xml.etree``).

    With ``strict`` (the default), a product whose radiometry cannot be known is
    refused here (:meth:`ProductInfo.check_offsets`: baseline >= 04.00 without an
    offset list -> :class:`RasterError` with ``option="input_offset"``); without it
    the refusal waits for :meth:`ProductInfo.radiometry`, so the product can still be
    read with an offset given by the caller."""
    try:
        root = ET.fromstring(text)
    except ET.ParseError as e:
        raise RasterError(f"cannot parse the product XML: {one_line(e)}") from None
    first: dict[str, str] = {}
    image_files: list[str] = []
    offsets_by_id: dict[int, float] = {}
    special: dict[str, int] = {}
    id_to_band: dict[int, str] = {}
    quant: str | None = None
    level = ""
    root_tag = _local(root.tag)
    if "Level-2A" in root_tag:
        level = "L2A"
    elif "Level-1C" in root_tag:
        level = "L1C"
    for el in root.iter():
        tag = _local(el.tag)
        txt = (el.text or "").strip()
        if tag in ("IMAGE_FILE", "IMAGE_FILE_2A") and txt:
            image_files.append(txt)
        elif tag in ("BOA_ADD_OFFSET", "RADIO_ADD_OFFSET") and el.get("band_id") is not None and txt:
            try:
                offsets_by_id[int(el.get("band_id"))] = float(txt)
            except ValueError:
                raise RasterError(f"product XML: bad {tag} {txt!r} for band_id {el.get('band_id')}") from None
        elif tag == "Special_Values":
            kids = {_local(k.tag): (k.text or "").strip() for k in el}
            if kids.get("SPECIAL_VALUE_TEXT") and kids.get("SPECIAL_VALUE_INDEX", "").lstrip("-").isdigit():
                special[kids["SPECIAL_VALUE_TEXT"]] = int(kids["SPECIAL_VALUE_INDEX"])
        elif tag == "Spectral_Information" and el.get("bandId") is not None:
            b = _band_name(el.get("physicalBand") or "")
            if b and el.get("bandId", "").isdigit():
                id_to_band[int(el.get("bandId"))] = b
        elif tag.endswith("BOA_QUANTIFICATION_VALUE") or tag == "QUANTIFICATION_VALUE":
            # L2A: (L2A_)BOA_QUANTIFICATION_VALUE; L1C: QUANTIFICATION_VALUE
            if quant is None or "BOA" in tag:
                quant = txt
        elif tag not in first and txt:
            first[tag] = txt
    ptype = first.get("PRODUCT_TYPE", "")
    plevel = first.get("PROCESSING_LEVEL", "")
    for s in (ptype, plevel):
        if "2A" in s:
            level = "L2A"
        elif "1C" in s:
            level = level or "L1C"
    if not level:
        raise RasterError("the XML is not a Sentinel-2 L1C or L2A product metadata file")
    uri = first.get("PRODUCT_URI", "")
    baseline = parse_baseline(first.get("PROCESSING_BASELINE"))
    if baseline is None:
        m = _NAME_BASELINE.search(uri)
        baseline = (int(m.group(1)), int(m.group(2))) if m else None
    try:
        q = float(quant) if quant else None
    except ValueError:
        raise RasterError(f"product XML: bad quantification value {quant!r}") from None
    names = dict(enumerate(BAND_IDS))
    names.update(id_to_band)
    offsets = {names[i]: v for i, v in offsets_by_id.items() if i in names}
    special.setdefault("NODATA", 0)
    info = ProductInfo(level=level, baseline=baseline, quantification=q, offsets=offsets,
                       special_values=special, image_files=tuple(image_files), product_uri=uri,
                       product_type=ptype)
    if strict:
        info.check_offsets()
    return info


# ---------------------------------------------------------------------------- names

def is_s2_product(name: Any) -> bool:
    """True for a Sentinel-2 L1C/L2A product: a ``*.SAFE`` directory, a
    ``S2*_MSIL1C_*``/``S2*_MSIL2A_*`` ``.zip`` or an ``MTD_MSIL1C.xml``/``MTD_MSIL2A.xml``."""
    if not isinstance(name, (str, os.PathLike)):
        return False
    s = os.fspath(name)
    if not isinstance(s, str) or s.startswith("/vsi") or "://" in s or s.lstrip().startswith("<"):
        return False
    p = Path(s.rstrip("/\\") or s)
    if _MTD_NAME.match(p.name) or _ZIP_NAME.match(p.name):
        return True
    return p.name.upper().endswith(".SAFE") and (p.is_dir() or not p.exists())


# ---------------------------------------------------------------------------- SAFE products

@dataclass(frozen=True)
class S2Spec:
    """What reopens an :class:`S2Source` elsewhere (picklable): the product's path and
    the reading options. :func:`open_product` takes it."""

    path: str
    resample: str = "nearest"
    mask_scl: tuple[int, ...] = DEFAULT_SCL_MASK

    def open(self) -> S2Source:
        return S2Source(self.path, resample=self.resample, mask_scl=self.mask_scl)


class _Product:
    """Where a product's files are: a folder or a zip (with the SAFE folder inside)."""

    def __init__(self, path: str):
        p = Path(path)
        self.given = p
        if not p.exists():
            raise RasterError(f"input not found: {p}")
        self.inner = ""
        if p.is_dir():
            mtds = sorted(p.glob("MTD_MSIL*.xml"))
            if not mtds:
                raise RasterError(f"{p.name}: no MTD_MSIL1C.xml or MTD_MSIL2A.xml in the folder; "
                                  "not a Sentinel-2 product")
            self.root, self.mtd = p, mtds[0]
            self.xml = self.mtd.read_bytes()
            self.label = p.name
        elif p.suffix.lower() == ".zip":
            try:
                z = zipfile.ZipFile(p)
                members = z.namelist()
            except (zipfile.BadZipFile, OSError) as e:
                raise RasterError(f"cannot read {p.name} as a zip: {one_line(e)}") from None
            mtds = sorted(m for m in members if _MTD_NAME.match(PurePosixPath(m).name)
                          and len(PurePosixPath(m).parts) <= 2)
            if not mtds:
                z.close()
                raise RasterError(f"{p.name}: no MTD_MSIL1C.xml or MTD_MSIL2A.xml in the zip; "
                                  "not a Sentinel-2 product")
            self.inner = str(PurePosixPath(mtds[0]).parent)  # the SAFE folder in the zip ("." if none)
            self.members = set(members)
            self.xml = z.read(mtds[0])
            z.close()
            self.label = p.name
            self.root = p
        else:
            self.root, self.mtd = p.parent, p
            self.xml = p.read_bytes()
            self.label = p.parent.name if p.parent.name.upper().endswith(".SAFE") else p.name
        self.is_zip = p.is_file() and p.suffix.lower() == ".zip"

    def _member(self, rel: str) -> str:
        return rel if self.inner in ("", ".") else f"{self.inner}/{rel}"

    def find(self, rel: str) -> str | None:
        """The GDAL name of a band file given without extension, or None."""
        for ext in (".jp2", ".tif", ".tiff", ".JP2", ".TIF"):
            if self.is_zip:
                m = self._member(rel + ext)
                if m in self.members:
                    return f"/vsizip/{self.root.resolve().as_posix()}/{m}"
            else:
                f = self.root / (rel + ext)
                if f.is_file():
                    return str(f.resolve())
        return None

    def listing(self) -> list[str]:
        """Band files (product-relative, no extension) found under GRANULE/*/IMG_DATA."""
        if self.is_zip:
            pre = "" if self.inner in ("", ".") else self.inner + "/"
            rels = [m[len(pre):] for m in self.members if m.startswith(pre)]
        else:
            rels = [f.relative_to(self.root).as_posix() for f in self.root.glob("GRANULE/*/IMG_DATA/**/*")]
        return sorted(str(PurePosixPath(r).with_suffix("")) for r in rels
                      if "/IMG_DATA/" in r and PurePosixPath(r).suffix.lower() in (".jp2", ".tif", ".tiff"))


class S2Source(StackSource):
    """A Sentinel-2 L1C/L2A product (a ``.SAFE`` folder, its zip or its
    ``MTD_MSIL*.xml``) as one source on the B02 10 m grid (see the module docstring).

    Attributes beyond the Source protocol: ``info`` (:class:`ProductInfo`),
    ``level``, ``radiometry`` (per band ``(scale, offset)``: reflectance = DN * scale
    + offset; None per band for a baseline >= 04.00 product without its offset list,
    whose refusal is then ``radiometry_error``, raised by :meth:`check_radiometry`),
    ``resample``, ``mask_scl`` (the classes masked: always () for L1C),
    :meth:`scl_counts`, :meth:`masked_pixels`, :meth:`describe`.
    """

    def __init__(self, path: str | os.PathLike, *, resample: str = "nearest",
                 mask_scl: Sequence[int] | None = DEFAULT_SCL_MASK):
        path = os.fspath(path)
        self.ds = None
        prod = _Product(path)
        self.name = prod.label
        self.info = parse_product_xml(prod.xml, strict=False)
        self.level = self.info.level
        files = self._band_files(prod)
        bands = [BandFile(b, files[b]) for b in S2_BANDS if b in files]
        if "B02" not in files:
            raise RasterError(f"{self.name}: no B02 band file found in the product (its 10 m grid)")
        scl = BandFile("SCL", files["SCL"]) if "SCL" in files and self.level == "L2A" else None
        self._build(bands, scl, resample=resample, mask_scl=mask_scl, ref="B02", label=self.name)
        try:
            self.radiometry = tuple(self.info.radiometry(b) for b in self.descriptions)
        except RasterError as e:
            self.radiometry, self.radiometry_error = (None,) * self.count, e
        self.spec = S2Spec(os.path.abspath(path), resample, check_scl_mask(mask_scl))

    def _band_files(self, prod: _Product) -> dict[str, str]:
        rels = list(self.info.image_files) or prod.listing()
        granules = {PurePosixPath(r).parts[1] for r in rels
                    if len(PurePosixPath(r).parts) > 2 and PurePosixPath(r).parts[0] == "GRANULE"}
        if len(granules) > 1:
            raise RasterError(f"{self.name}: the product holds {len(granules)} granules; "
                              "geoseg reads single-tile products")
        found: dict[str, dict[int, str]] = {}
        for rel in rels:
            m = _BAND_FILE.search(PurePosixPath(rel).name)
            if not m:
                continue
            name = m.group(1).upper()
            res = int(m.group(2)) if m.group(2) else S2_BANDS.get(name, 20 if name == "SCL" else 60)
            found.setdefault(name, {})[res] = rel
        out = {}
        for name, by_res in found.items():
            native = S2_BANDS.get(name, 20)
            for res in sorted(by_res, key=lambda r: (r != native, r)):
                gdal_name = prod.find(by_res[res])
                if gdal_name:
                    out[name] = gdal_name
                    break
            else:
                if name in S2_BANDS or name == "SCL":
                    raise RasterError(f"{self.name}: band file {by_res[native if native in by_res else min(by_res)]} "
                                      "is listed in the product XML but missing")
        return out

    def describe(self) -> dict[str, str]:
        """What geoseg derived from the product, as strings (for logs, tags, ``info``)."""
        offset = (", ".join(f"{o:g}" for o in sorted({round(o, 6) for _, o in self.radiometry}))
                  if self.radiometry_error is None else "unknown (no offset list)")
        return {"input_kind": f"Sentinel-2 {self.level} product", "product": self.info.product_uri or self.name,
                "level": self.level, "processing_baseline": self.info.baseline_text,
                "quantification": f"{self.info.quantification:g}" if self.info.quantification else "unknown",
                "reflectance_offset": offset, "bands": " ".join(self.descriptions), "resample": self.resample,
                "scl_masked": ",".join(map(str, self.mask_scl)) or "none"}


@dataclass(frozen=True)
class BandFilesSpec:
    """What reopens a :class:`BandFilesSource` elsewhere (picklable)."""

    paths: tuple[str, ...]
    resample: str = "nearest"
    mask_scl: tuple[int, ...] = DEFAULT_SCL_MASK

    def open(self) -> "BandFilesSource":
        return BandFilesSource(self.paths, resample=self.resample, mask_scl=self.mask_scl)


def band_of_file(path: str | os.PathLike) -> str | None:
    """The Sentinel-2 band a file holds by its name (``…_B02_10m.jp2``, ``T51RUQ_…_B8A.jp2``,
    ``B11.tif``, ``…_SCL_20m.jp2``), else None."""
    stem = Path(path).name.split(".")[0]
    m = _BAND_FILE.search(stem) or re.fullmatch(r"(B\d\d|B8A|SCL)", stem, re.IGNORECASE)
    return m.group(1).upper() if m else None


def is_band_folder(path: Any) -> bool:
    """A folder (not a ``.SAFE``) holding Sentinel-2 band files: one scene."""
    if not isinstance(path, (str, os.PathLike)) or is_s2_product(path):
        return False
    p = Path(path)
    return p.is_dir() and any(band_of_file(q) not in (None, "SCL") for q in p.iterdir()
                              if q.suffix.lower() in (".jp2", ".tif", ".tiff"))


class BandFilesSource(StackSource):
    """Several Sentinel-2 band files given together (or a folder of them) as one scene,
    stacked like a product on the grid of its finest band (B02 where given); an SCL
    file among them masks as in a product. Nothing states the radiometry: the model's
    convention, the options, or the refusal of an offset-looking input decide."""

    def __init__(self, paths: Sequence[str | os.PathLike], *, resample: str = "nearest",
                 mask_scl: Sequence[int] | None = DEFAULT_SCL_MASK):
        self.ds = None
        files: list[str] = []
        for p in paths:
            q = Path(p)
            if q.is_dir():
                files += sorted(str(f) for f in q.iterdir() if f.suffix.lower() in (".jp2", ".tif", ".tiff")
                                and band_of_file(f))
            else:
                files.append(os.fspath(p))
        self.name = f"{len(files)} band files" if len(paths) != 1 else os.fspath(paths[0])
        by_band: dict[str, str] = {}
        for f in files:
            b = band_of_file(f)
            if b is None:
                raise RasterError(f"{Path(f).name}: not a Sentinel-2 band file (its name names no band, "
                                  "e.g. ..._B02_10m.jp2)")
            if b in by_band:
                raise RasterError(f"band {b} is given twice ({Path(by_band[b]).name}, {Path(f).name})")
            if not Path(f).is_file():
                raise RasterError(f"band file not found: {f}")
            by_band[b] = f
        bands = [BandFile(b, by_band[b]) for b in S2_BANDS if b in by_band]
        if not bands:
            raise RasterError(f"{self.name}: no Sentinel-2 band among the files")
        scl = BandFile("SCL", by_band["SCL"]) if "SCL" in by_band else None
        self.level = "L2A" if scl is not None else ""
        self._build(bands, scl, resample=resample, mask_scl=mask_scl if scl is not None else (),
                    ref="B02" if "B02" in by_band else None, label=self.name)
        self.radiometry = None
        self.spec = BandFilesSpec(tuple(os.path.abspath(f) for f in files), resample,
                                  check_scl_mask(mask_scl) if scl is not None else ())


def open_product(name: Any, **opts) -> StackSource | None:
    """A source for a Sentinel-2 product (``.SAFE``, zip, ``MTD_MSIL*.xml``), a STAC
    item JSON, or their specs (:class:`S2Spec`, :class:`geoseg.stac.StacSpec`); None
    for anything else. ``opts``: ``resample``, ``mask_scl`` (ignored for a spec,
    which carries its own)."""
    if isinstance(name, (S2Spec, StacSpec, BandFilesSpec)):
        return name.open()
    if isinstance(name, (list, tuple)) and name and all(isinstance(n, (str, os.PathLike)) for n in name):
        return BandFilesSource(name, **opts)
    if not isinstance(name, (str, os.PathLike)):
        return None
    if is_s2_product(name):
        return S2Source(name, **opts)
    if is_stac_item(name):
        return StacSource(name, **opts)
    if is_band_folder(name):
        return BandFilesSource([name], **opts)
    return None
