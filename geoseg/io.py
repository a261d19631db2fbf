"""Raster input/output: opening with clear errors, band selection, padded window
reads with validity masks, class-raster profiles and styling, atomic outputs.
"""

from __future__ import annotations

import json
import os
import uuid
import warnings
import xml.etree.ElementTree as ET
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
import rasterio
from rasterio.enums import MaskFlags
from rasterio.errors import NotGeoreferencedWarning as _RioNotGeoref
from rasterio.errors import RasterioError, RasterioIOError
from rasterio.windows import Window

from .bundle import ClassInfo, InputSpec
from .errors import ConfigError, OutputExistsError, RasterError
from .windows import Rect

__all__ = ["open_raster", "resolve_bands", "check_output_path", "AtomicOutput", "read_rect",
           "valid_mask", "class_profile", "style_class_raster", "tag_class_dataset", "write_qml", "read_class_names",
           "CLASS_NODATA", "CLASSES_TAG", "is_georeferenced"]

CLASS_NODATA = 255
CLASSES_TAG = "GEOSEG_CLASSES"


def _quiet():
    ctx = warnings.catch_warnings()
    ctx.__enter__()
    warnings.simplefilter("ignore", _RioNotGeoref)
    return ctx


@contextmanager
def open_raster(path: str | os.PathLike, mode: str = "r") -> Iterator[rasterio.io.DatasetReader]:
    """Open a raster for reading, turning every failure into a one-line :class:`RasterError`."""
    p = Path(path)
    if not p.exists():
        raise RasterError(f"input not found: {p}")
    if p.is_dir():
        raise RasterError(f"input is a directory, not a raster: {p}")
    if p.stat().st_size == 0:
        raise RasterError(f"input is an empty (0-byte) file: {p}")
    # An Env for the dataset's whole life routes GDAL's messages to logging (a bare
    # read outside one prints raw "Warning 1: ..." lines on stderr).
    env = rasterio.Env()
    env.__enter__()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", _RioNotGeoref)
        try:
            src = rasterio.open(p, mode)
        except RasterioIOError as e:
            env.__exit__(None, None, None)
            raise RasterError(f"cannot open {p} as a raster: {_one_line(e)}") from None
        except RasterioError as e:
            env.__exit__(None, None, None)
            raise RasterError(f"cannot open {p}: {_one_line(e)}") from None
    try:
        if src.count < 1 or src.width < 1 or src.height < 1:
            raise RasterError(f"{p}: raster has no bands or no pixels")
        yield src
    finally:
        src.close()
        env.__exit__(None, None, None)


def _one_line(e: BaseException) -> str:
    s = str(e).strip().splitlines()
    return s[0] if s else type(e).__name__


def is_georeferenced(src) -> bool:
    return src.crs is not None and not src.transform.is_identity


def resolve_bands(src, spec: InputSpec, bands: Sequence[int | str] | None = None) -> list[int]:
    """1-based raster band indexes that feed the model's inputs, in the model's order.

    ``bands`` (``--bands``) may give 1-based indexes or the raster's band
    descriptions. Without it, bands are matched by description when the raster names
    all of the model's bands, else taken in order when the counts agree.
    """
    n = src.count
    names = [d or "" for d in src.descriptions]
    want = spec.n_bands
    if bands:
        if len(bands) != want:
            raise RasterError(f"--bands lists {len(bands)} bands but the model expects {want} "
                              f"({', '.join(spec.bands)})")
        out = []
        for b in bands:
            if isinstance(b, int) or (isinstance(b, str) and b.strip().isdigit()):
                i = int(b)
                if not 1 <= i <= n:
                    raise RasterError(f"band {i} does not exist: {src.name} has {n} bands")
                out.append(i)
            else:
                if b not in names:
                    shown = ", ".join(f"{i + 1}={d}" for i, d in enumerate(names) if d) or "no band names"
                    raise RasterError(f"unknown band name {b!r}: {Path(src.name).name} has {shown}")
                out.append(names.index(b) + 1)
        return out
    if all(b in names for b in spec.bands):
        return [names.index(b) + 1 for b in spec.bands]
    if n == want:
        return list(range(1, n + 1))
    raise RasterError(f"{Path(src.name).name} has {n} bands but the model expects {want} "
                      f"({', '.join(spec.bands)}); choose them with --bands")


def check_output_path(dst: str | os.PathLike, inputs: Sequence[str | os.PathLike] = (),
                      overwrite: bool = False, what: str = "output") -> Path:
    """Refuse outputs that would clobber an input, an existing file (without
    ``overwrite``) or that cannot be written. Returns the absolute path."""
    d = Path(dst).expanduser().absolute()
    for i in inputs:
        ip = Path(i).expanduser().absolute()
        same = ip == d
        if not same and ip.exists() and d.exists():
            same = os.path.samefile(ip, d)
        if same:
            raise RasterError(f"{what} {d} is the same file as the input; choose another path")
    if d.is_dir():
        raise RasterError(f"{what} {d} is a directory; give a file name")
    if not d.parent.is_dir():
        raise RasterError(f"{what} directory does not exist: {d.parent}")
    if not os.access(d.parent, os.W_OK | os.X_OK):
        raise RasterError(f"{what} directory is not writable: {d.parent}")
    if d.exists() and not overwrite:
        raise OutputExistsError(f"{what} exists: {d} (use --overwrite to replace it)")
    return d


class AtomicOutput:
    """A temporary path beside ``target``, renamed onto it by :meth:`commit`.

    GDAL side-car files (``.aux.xml``) and a ``.qml`` style follow the main file.
    :meth:`discard` removes everything, so a failed or cancelled run never leaves a
    half-written file at the target path.
    """

    SIDECARS = (".aux.xml", ".qml")

    def __init__(self, target: str | os.PathLike):
        self.target = Path(target)
        tag = uuid.uuid4().hex[:8]
        self.tmp = self.target.with_name(f".{self.target.stem}.geoseg-tmp-{tag}{self.target.suffix}")
        self.extra: list[Path] = []

    def scratch(self, suffix: str) -> Path:
        """Another temporary file beside the target (removed by commit/discard)."""
        p = self.tmp.with_name(self.tmp.stem + f"-{len(self.extra)}{suffix}")
        self.extra.append(p)
        return p

    def _sidecar(self, base: Path, ext: str) -> Path:
        return base.with_name(base.name + ext) if ext == ".aux.xml" else base.with_suffix(ext)

    def commit(self) -> Path:
        for ext in self.SIDECARS:
            s = self._sidecar(self.tmp, ext)
            t = self._sidecar(self.target, ext)
            if s.exists():
                os.replace(s, t)
            elif t.exists() and ext == ".aux.xml":
                t.unlink()  # a stale side-car of an overwritten output would describe old data
        os.replace(self.tmp, self.target)
        self._cleanup_extra()
        return self.target

    def discard(self) -> None:
        for p in [self.tmp] + [self._sidecar(self.tmp, e) for e in self.SIDECARS]:
            try:
                p.unlink()
            except FileNotFoundError:
                pass
        self._cleanup_extra()

    def _cleanup_extra(self) -> None:
        for p in self.extra:
            for q in (p, p.with_name(p.name + ".aux.xml")):
                try:
                    q.unlink()
                except FileNotFoundError:
                    pass


def _reflect_pad(a: np.ndarray, pad_r: int, pad_c: int) -> np.ndarray:
    """Mirror the image into the overhang (numpy repeats the reflection for pads
    longer than the axis, and repeats the edge of a 1-pixel axis)."""
    if pad_r == 0 and pad_c == 0:
        return a
    widths = [(0, 0)] * (a.ndim - 2) + [(0, pad_r), (0, pad_c)]
    return np.pad(a, widths, mode="reflect")


def has_masks(src, bands: Sequence[int]) -> bool:
    """True when the bands carry nodata, an internal mask or alpha (or are float: NaN)."""
    for b in bands:
        flags = src.mask_flag_enums[b - 1]
        if flags != [MaskFlags.all_valid]:
            return True
    return any(np.issubdtype(np.dtype(src.dtypes[b - 1]), np.floating) for b in bands)


def valid_mask(src, bands: Sequence[int], window: Window, data: np.ndarray | None = None) -> np.ndarray:
    """Boolean (rows, cols): False where the pixel is nodata or NaN.

    GDAL's convention for nodata and masks: a pixel is nodata when *all* its bands
    are masked (a single band at the nodata value may be a real value). A NaN in any
    band makes the pixel invalid, as the network cannot use it.
    """
    m = src.read_masks(list(bands), window=window)
    valid = np.any(m > 0, axis=0)
    if data is not None and np.issubdtype(data.dtype, np.floating):
        valid &= ~np.any(np.isnan(data), axis=0)
    return valid


def read_rect(src, bands: Sequence[int], rect: Rect, masked: bool, dtype=np.float32) -> tuple[np.ndarray, np.ndarray]:
    """Read ``rect`` (which may overhang the image when the image is smaller than a
    window): returns ``(data (bands, h, w), valid (h, w))``; the overhang (never part
    of an output region) is a reflection of the image, validity mask included."""
    inside = rect.intersection(Rect(0, 0, src.width, src.height))
    if inside is None:
        raise RasterError("window outside the raster")
    win = Window(inside.col, inside.row, inside.width, inside.height)
    try:
        data = src.read(list(bands), window=win, out_dtype=dtype)
        valid = valid_mask(src, bands, win, data) if masked else np.ones(data.shape[1:], bool)
    except RasterioError as e:
        raise RasterError(f"cannot read {Path(src.name).name} (truncated or corrupt?): {_one_line(e)}") from None
    if inside != rect:
        assert inside.col == rect.col and inside.row == rect.row  # only ever overhangs right/bottom
        pr, pc = rect.height - inside.height, rect.width - inside.width
        data = _reflect_pad(data, pr, pc)
        valid = _reflect_pad(valid, pr, pc)  # the overhang mirrors the image, mask included
    return data, valid


def class_profile(src, block: int, *, crs=None, transform=None, compress: str = "deflate") -> dict:
    """Profile of a uint8 class GeoTIFF on the grid of ``src``."""
    prof = {
        "driver": "GTiff", "dtype": "uint8", "count": 1, "width": src.width, "height": src.height,
        "crs": src.crs if crs is None else crs, "transform": src.transform if transform is None else transform,
        "nodata": CLASS_NODATA, "tiled": True, "blockxsize": block, "blockysize": block,
        "compress": compress, "interleave": "band",
    }
    if block > max(src.width, src.height) and max(src.width, src.height) < 16:
        prof["blockxsize"] = prof["blockysize"] = 16
    return prof


def colormap(classes: Sequence[ClassInfo]) -> dict[int, tuple[int, int, int, int]]:
    """Colour table 0..max class id (ids without a class are transparent)."""
    cmap = {i: (0, 0, 0, 0) for i in range(max(c.id for c in classes) + 1)}
    for c in classes:
        cmap[c.id] = (*c.rgb, 255)
    return cmap


def tag_class_dataset(dst, classes: Sequence[ClassInfo], extra_tags: dict | None = None) -> None:
    """Colour table, class-name tag and band description on an open dataset."""
    tags = {CLASSES_TAG: json.dumps([{"id": c.id, "name": c.name, "color": c.color} for c in classes])}
    tags.update(extra_tags or {})
    dst.write_colormap(1, colormap(classes))
    dst.update_tags(**tags)
    dst.set_band_description(1, "class")


def style_class_raster(path: str | os.PathLike, classes: Sequence[ClassInfo], extra_tags: dict | None = None,
                       qml_path: str | os.PathLike | None = None, tag: bool = True) -> None:
    """Colour table and class-name tags (unless ``tag=False``: already done while
    writing), a GDAL raster attribute table (``.aux.xml``, written by GDAL itself when
    its Python bindings are available) and a QGIS ``.qml`` style."""
    if tag:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", _RioNotGeoref)
            with rasterio.open(path, "r+") as dst:
                tag_class_dataset(dst, classes, extra_tags)
    write_rat(path, classes)
    write_qml(qml_path or Path(path).with_suffix(".qml"), classes)


def write_rat(path: str | os.PathLike, classes: Sequence[ClassInfo]) -> bool:
    """Attach a raster attribute table (Value, Class, Red, Green, Blue) through GDAL."""
    try:
        from osgeo import gdal  # noqa: PLC0415
    except ImportError:
        return False
    gdal.UseExceptions()
    gdal.PushErrorHandler("CPLQuietErrorHandler")
    ds = gdal.Open(str(path), gdal.GA_Update)
    try:
        band = ds.GetRasterBand(1)
        rat = gdal.RasterAttributeTable()
        rat.CreateColumn("Value", gdal.GFT_Integer, gdal.GFU_MinMax)
        rat.CreateColumn("Class", gdal.GFT_String, gdal.GFU_Name)
        for name, usage in (("Red", gdal.GFU_Red), ("Green", gdal.GFU_Green), ("Blue", gdal.GFU_Blue)):
            rat.CreateColumn(name, gdal.GFT_Integer, usage)
        for row, c in enumerate(sorted(classes, key=lambda c: c.id)):
            rat.SetValueAsInt(row, 0, c.id)
            rat.SetValueAsString(row, 1, c.name)
            for j, v in enumerate(c.rgb):
                rat.SetValueAsInt(row, 2 + j, int(v))
        band.SetDefaultRAT(rat)
        band.FlushCache()
    finally:
        ds = None  # noqa: F841  (closing writes the .aux.xml)
        gdal.PopErrorHandler()
    return True


def write_qml(path: str | os.PathLike, classes: Sequence[ClassInfo]) -> None:
    """A QGIS layer style (paletted renderer with class names) that QGIS loads
    automatically for a raster of the same base name."""
    root = ET.Element("qgis", version="3.22", styleCategories="AllStyleCategories")
    pipe = ET.SubElement(root, "pipe")
    rr = ET.SubElement(pipe, "rasterrenderer", type="paletted", band="1", opacity="1",
                       alphaBand="-1", nodataColor="")
    ET.SubElement(rr, "rasterTransparency")
    pal = ET.SubElement(rr, "colorPalette")
    for c in sorted(classes, key=lambda c: c.id):
        ET.SubElement(pal, "paletteEntry", value=str(c.id), color=c.color.lower(), label=c.name, alpha="255")
    ET.SubElement(pipe, "brightnesscontrast", brightness="0", contrast="0")
    ET.SubElement(pipe, "huesaturation", saturation="0", grayscaleMode="0", colorizeOn="0")
    ET.indent(root)
    body = ET.tostring(root, encoding="unicode")
    Path(path).write_text("<!DOCTYPE qgis PUBLIC 'http://mrcc.com/qgis.dtd' 'SYSTEM'>\n" + body + "\n")


def read_class_names(src) -> dict[int, str]:
    """Class names of a class raster: geoseg's tag, else a GDAL RAT, else a ``.qml``."""
    tag = src.tags().get(CLASSES_TAG)
    if tag:
        try:
            return {int(c["id"]): str(c["name"]) for c in json.loads(tag)}
        except (ValueError, KeyError, TypeError):
            pass
    names = _rat_names(src.name)
    if names:
        return names
    qml = Path(src.name).with_suffix(".qml")
    if qml.exists():
        try:
            return {int(e.get("value")): e.get("label") or "" for e in ET.parse(qml).iter("paletteEntry")}
        except (ET.ParseError, ValueError, TypeError):
            pass
    return {}


def _rat_names(path: str) -> dict[int, str]:
    try:
        from osgeo import gdal  # noqa: PLC0415
    except ImportError:
        return {}
    gdal.UseExceptions()
    gdal.PushErrorHandler("CPLQuietErrorHandler")
    try:
        return _rat_names_gdal(gdal, path)
    except RuntimeError:
        return {}
    finally:
        gdal.PopErrorHandler()


def _rat_names_gdal(gdal, path: str) -> dict[int, str]:
    ds = gdal.Open(str(path))
    rat = ds.GetRasterBand(1).GetDefaultRAT()
    if rat is None:
        cats = ds.GetRasterBand(1).GetCategoryNames() or []
        return {i: n for i, n in enumerate(cats) if n}
    vcol = ncol = None
    for j in range(rat.GetColumnCount()):
        u = rat.GetUsageOfCol(j)
        if u in (gdal.GFU_MinMax, gdal.GFU_Min) and vcol is None:
            vcol = j
        elif u == gdal.GFU_Name and ncol is None:
            ncol = j
    if vcol is None or ncol is None:
        return {}
    return {rat.GetValueAsInt(i, vcol): rat.GetValueAsString(i, ncol) for i in range(rat.GetRowCount())}


def label_valid(label: np.ndarray, nodata) -> np.ndarray:
    """True where a class/label raster holds a value: not ``nodata``, not NaN/inf."""
    valid = np.ones(label.shape, bool)
    if nodata is not None:
        valid &= label != nodata
    if np.issubdtype(label.dtype, np.floating):
        valid &= np.isfinite(label)
    return valid


def parse_bands_option(text: str | None) -> tuple[int | str, ...] | None:
    if not text:
        return None
    items = [t.strip() for t in text.split(",")]
    if any(not t for t in items):
        raise ConfigError(f"--bands: empty item in {text!r}")
    return tuple(int(t) if t.isdigit() else t for t in items)
