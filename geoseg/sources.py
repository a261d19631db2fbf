"""Reading: the sources the engine segments, and what it reads from any raster.

A *source* is anything with a size, bands, a grid and a ``read``: the engine
(:mod:`geoseg.unit`) needs nothing else. Two implementations:

* :class:`RasterSource`: any name GDAL opens — a file, ``/vsizip/…``, ``/vsicurl/…``,
  a VRT (a file or its XML text), a subdataset such as ``SENTINEL2_L2A:…`` — through
  rasterio. Existence checks apply only where the name is a plain path; every error
  is one line that shows the name as it was given.
* :class:`ArraySource`: an in-memory ``(bands, rows, cols)`` numpy array with an
  optional CRS, transform, nodata and band names (the xarray API builds on it).

Nodata follows GDAL's rule: a pixel is nodata when *all* its bands are masked (a
single band at the nodata value may be a real value); NaN or ±inf in any band makes
the pixel invalid, as the network cannot use it.

Also here: band resolution (:func:`resolve_bands`), padded window reads
(:func:`read_rect`), grid comparison (:func:`check_same_grid`), label validity and
class names read back from a class raster.
"""

from __future__ import annotations

import json
import logging
import os
import re
import warnings
import xml.etree.ElementTree as ET
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Any, Iterator, Protocol, Sequence, runtime_checkable

import numpy as np
import rasterio
from affine import Affine
from rasterio.enums import MaskFlags, Resampling
from rasterio.errors import NotGeoreferencedWarning as _RioNotGeoref
from rasterio.errors import RasterioError, RasterioIOError
from rasterio.windows import Window

from .bands import canonical_band
from .bundle import InputSpec
from .errors import RasterError, one_line
from .windows import Rect

log = logging.getLogger("geoseg")

__all__ = ["Source", "RasterSource", "ArraySource", "open_source", "open_raster", "is_plain_path",
           "resolve_bands", "read_rect", "to_window", "check_same_grid", "label_valid", "resolve_nodata",
           "read_class_names", "read_class_colours", "is_georeferenced", "owned_source", "thread_env",
           "CLASSES_TAG", "CLASS_NODATA"]

#: The tag holding a class raster's classes as JSON (written by :mod:`geoseg.output`).
CLASSES_TAG = "GEOSEG_CLASSES"
#: Class value of pixels without a class (input nodata, masked, outside the data).
CLASS_NODATA = 255

# geoseg reports a missing georeferencing itself (areas in pixels, a warning that says
# what it means); rasterio's own notice at every open of a photo or chip is noise.
# A filter installed once at import: ``warnings.catch_warnings`` is not thread-safe
# and QGIS Processing runs algorithms off the main thread.
warnings.filterwarnings("ignore", category=_RioNotGeoref)

_DRIVER_PREFIX = re.compile(r"^[A-Za-z][A-Za-z0-9_]+:")


def to_window(r: Rect) -> Window:
    """A :class:`~geoseg.windows.Rect` as a rasterio ``Window``."""
    return Window(r.col, r.row, r.width, r.height)


def thread_env():
    """A rasterio Env for this thread unless one is active: GDAL's messages then go to
    logging, not raw to stderr. Short-lived and properly nested, never held by an
    object (an Env closed out of order, or from another thread, is an error)."""
    return nullcontext() if rasterio.env.hasenv() else rasterio.Env()


def _label(spec: str) -> str:
    """A name for messages: a plain path's file name, a GDAL name as given (long ones
    shortened), or what a VRT given as XML text is."""
    if spec.lstrip().startswith("<VRTDataset"):
        return "a VRT given as XML text"
    if is_plain_path(spec):
        return Path(spec).name
    return spec if len(spec) <= 160 else spec[:100] + "…" + spec[-40:]


def is_plain_path(name: str | os.PathLike) -> bool:
    """True for a file-system path; False for the GDAL names that are not
    (``/vsi…/``, URLs, ``DRIVER:…`` subdatasets, VRT XML text)."""
    s = os.fspath(name)
    return not (s.startswith("/vsi") or "://" in s or s.lstrip().startswith("<") or _DRIVER_PREFIX.match(s))


@runtime_checkable
class Source(Protocol):
    """What the engine reads from. ``read`` is called from one thread at a time.

    ``spec`` is what :func:`open_source` turns into a source on the same data in
    another thread or process (a GDAL name; an in-memory source is its own spec). A
    source is a context manager; :func:`open_source` returns a source given to it
    unchanged, and its owner closes it."""

    spec: Any
    name: str                             # for messages
    width: int
    height: int
    count: int
    dtypes: tuple[str, ...]
    descriptions: tuple[str | None, ...]  # band names
    crs: Any                              # rasterio CRS or None
    transform: Affine
    nodatavals: tuple[float | None, ...]
    #: per band ``(scale, offset)``: physical value = DN * scale + offset, as the input
    #: states it (GDAL band scale/offset, product metadata), or None where it says nothing
    radiometry: tuple[tuple[float, float] | None, ...] | None
    level: str                            # product level when the input states it (L1C, L2A), else ""

    def has_masks(self, bands: Sequence[int]) -> bool:
        """True when the bands can hold invalid pixels (nodata, mask, alpha, float NaN)."""

    def read(self, bands: Sequence[int], rect: Rect, masked: bool) -> tuple[np.ndarray, np.ndarray]:
        """``(data (bands, h, w) float32, valid (h, w) bool)`` of ``rect`` inside the raster."""

    def read_decimated(self, bands: Sequence[int], height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
        """The whole raster at a smaller size (nearest), for quick looks; validity as in ``read``."""

    def close(self) -> None: ...

    def __enter__(self) -> "Source": ...

    def __exit__(self, *exc) -> None: ...


#: GDAL block cache (bytes) while the plan's sample reads every block once.
SAMPLE_CACHE = 4 << 20


def _float_invalid(data: np.ndarray) -> np.ndarray | None:
    if np.issubdtype(data.dtype, np.floating):
        return ~np.isfinite(data).all(axis=0)
    return None


class RasterSource:
    """A raster GDAL opens (see the module docstring). ``spec`` reopens it elsewhere."""

    def __init__(self, name: str | os.PathLike):
        self.spec = os.fspath(name)
        plain = is_plain_path(self.spec)
        self.name = _label(self.spec) if not plain else self.spec
        self.label = _label(self.spec)
        self.ds = None
        if plain:
            p = Path(self.spec)
            if not p.exists():
                raise RasterError(f"input not found: {self.name}")
            if p.is_dir():
                raise RasterError(f"input is a directory, not a raster: {self.name}")
            if p.stat().st_size == 0:
                raise RasterError(f"input is an empty (0-byte) file: {self.name}")
        try:
            with thread_env():
                self.ds = rasterio.open(self.spec)
        except RasterioIOError as e:
            what = "cannot open" if plain else "GDAL cannot open"
            raise RasterError(f"{what} {self.name} as a raster: {one_line(e)}") from None
        except RasterioError as e:
            raise RasterError(f"cannot open {self.name}: {one_line(e)}") from None
        ds = self.ds
        if ds.count < 1 or ds.width < 1 or ds.height < 1:
            self.close()
            raise RasterError(f"{self.name}: raster has no bands or no pixels")
        self.width, self.height, self.count = ds.width, ds.height, ds.count
        self.dtypes = tuple(ds.dtypes)
        self.descriptions = tuple(ds.descriptions)
        self.crs, self.transform, self.nodatavals = ds.crs, ds.transform, tuple(ds.nodatavals)
        stated = [(float(sc), float(of)) for sc, of in zip(ds.scales, ds.offsets)]
        self.radiometry = tuple(stated) if any(v != (1.0, 0.0) for v in stated) else None
        self.level = ""
        #: (rows, cols) of the input's internal blocks (tiles or strips), which reads align to
        self.block_shape = tuple(ds.block_shapes[0]) if ds.block_shapes else None

    def has_masks(self, bands: Sequence[int]) -> bool:
        with thread_env():  # GDAL reads the mask's directory here
            flags = self.ds.mask_flag_enums
        if any(flags[b - 1] != [MaskFlags.all_valid] for b in bands):
            return True
        return any(np.issubdtype(np.dtype(self.dtypes[b - 1]), np.floating) for b in bands)

    def read(self, bands: Sequence[int], rect: Rect, masked: bool) -> tuple[np.ndarray, np.ndarray]:
        win = to_window(rect)
        try:
            with thread_env():
                data = self.ds.read(list(bands), window=win, out_dtype=np.float32)
                if masked:
                    valid = np.any(self.ds.read_masks(list(bands), window=win) > 0, axis=0)
                else:
                    valid = np.ones(data.shape[1:], bool)
        except RasterioError as e:
            raise RasterError(f"cannot read {self.label} (truncated or corrupt?): {one_line(e)}") from None
        bad = _float_invalid(data) if masked else None
        if bad is not None:
            valid &= ~bad
        return data, valid

    def read_decimated(self, bands: Sequence[int], height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
        """Without overviews, block by block with every band at once: GDAL's own
        decimated read decodes a pixel-interleaved tile once per band (6 times the
        file for a 6-band scene); this decodes each block holding a sample pixel once."""
        shape = (len(bands), height, width)
        try:
            with thread_env():
                if self.ds.overviews(bands[0]) or (height, width) == (self.height, self.width):
                    data = self.ds.read(list(bands), out_shape=shape, resampling=Resampling.nearest,
                                        out_dtype="float32")
                    m = self.ds.read_masks(list(bands), out_shape=shape, resampling=Resampling.nearest)
                else:
                    data, m = self._sample_blocks(list(bands), height, width)
        except RasterioError as e:
            raise RasterError(f"cannot read {self.label} (truncated or corrupt?): {one_line(e)}") from None
        return data, np.any(m > 0, axis=0) & np.all(np.isfinite(data), axis=0)

    def _sample_blocks(self, bands: list[int], height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
        """Nearest decimation (the pixel under each sample's centre), read by blocks."""
        rows = ((np.arange(height) + 0.5) * self.height / height).astype(np.int64)
        cols = ((np.arange(width) + 0.5) * self.width / width).astype(np.int64)
        data = np.zeros((len(bands), height, width), np.float32)
        m = np.zeros((len(bands), height, width), np.uint8)
        with rasterio.Env(GDAL_CACHEMAX=SAMPLE_CACHE):  # each block is read once: no cache to grow
            self._sample_into(bands, rows, cols, data, m)
        return data, m

    def _sample_into(self, bands, rows, cols, data, m) -> None:
        for _, win in self.ds.block_windows(bands[0]):
            r0, c0 = int(win.row_off), int(win.col_off)
            ri = np.nonzero((rows >= r0) & (rows < r0 + win.height))[0]
            ci = np.nonzero((cols >= c0) & (cols < c0 + win.width))[0]
            if ri.size == 0 or ci.size == 0:
                continue
            sub = np.ix_(rows[ri] - r0, cols[ci] - c0)
            block = self.ds.read(bands, window=win)
            data[np.ix_(range(len(bands)), ri, ci)] = block[(slice(None),) + sub]
            mb = self.ds.read_masks(bands, window=win)
            m[np.ix_(range(len(bands)), ri, ci)] = mb[(slice(None),) + sub]

    def close(self) -> None:
        if self.ds is not None:
            self.ds.close()
            self.ds = None

    def __enter__(self) -> "RasterSource":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class ArraySource:
    """An in-memory raster: ``array`` is ``(bands, rows, cols)`` (or ``(rows, cols)``).

    Args:
        crs: anything ``rasterio.crs.CRS.from_user_input`` takes, or None.
        transform: an ``affine.Affine`` (default: the identity, pixel units).
        nodata: one value for every band, or one per band (None: no nodata).
        band_names: one name per band (matched against the model's bands).
        radiometry: per band ``(scale, offset)`` with physical value = DN * scale + offset.
        level: the product level of the data (``"L2A"``, ``"L1C"``) when known.
    """

    def __init__(self, array: np.ndarray, *, crs: Any = None, transform: Affine | None = None,
                 nodata: float | Sequence[float | None] | None = None,
                 band_names: Sequence[str | None] | None = None, name: str = "<array>",
                 radiometry: Sequence[tuple[float, float] | None] | None = None, level: str = ""):
        a = np.asarray(array)
        if a.ndim == 2:
            a = a[None]
        if a.ndim != 3 or min(a.shape) < 1:
            raise RasterError(f"{name}: expected a (bands, rows, cols) array, got shape {a.shape}")
        if not (np.issubdtype(a.dtype, np.integer) or np.issubdtype(a.dtype, np.floating) or a.dtype == bool):
            raise RasterError(f"{name}: cannot segment an array of {a.dtype}")
        self.array = a
        self.name = name
        self.count, self.height, self.width = a.shape
        self.dtypes = (str(a.dtype),) * self.count
        names = tuple(band_names) if band_names is not None else (None,) * self.count
        if len(names) != self.count:
            raise RasterError(f"{name}: {len(names)} band names for {self.count} bands")
        self.descriptions = names
        self.crs = None if crs is None else rasterio.crs.CRS.from_user_input(crs)
        self.transform = Affine.identity() if transform is None else Affine(*tuple(transform)[:6])
        nd = nodata if isinstance(nodata, (list, tuple)) else [nodata] * self.count
        if len(nd) != self.count:
            raise RasterError(f"{name}: {len(nd)} nodata values for {self.count} bands")
        self.nodatavals = tuple(None if v is None else float(v) for v in nd)
        if radiometry is not None and len(radiometry) != self.count:
            raise RasterError(f"{name}: {len(radiometry)} (scale, offset) pairs for {self.count} bands")
        self.radiometry = tuple(radiometry) if radiometry is not None else None
        self.level = level

    @property
    def spec(self) -> "ArraySource":
        return self

    def has_masks(self, bands: Sequence[int]) -> bool:
        return (any(self.nodatavals[b - 1] is not None for b in bands)
                or np.issubdtype(self.array.dtype, np.floating))

    def _valid(self, bands: Sequence[int], data: np.ndarray) -> np.ndarray:
        masked_all = np.ones(data.shape[1:], bool)
        for i, b in enumerate(bands):
            nd = self.nodatavals[b - 1]
            if nd is None or (isinstance(nd, float) and np.isnan(nd)):
                masked_all[:] = False  # a band without nodata is valid everywhere (GDAL's rule)
                break
            masked_all &= data[i] == nd
        valid = ~masked_all
        bad = _float_invalid(data)
        if bad is not None:
            valid &= ~bad
        return valid

    def read(self, bands: Sequence[int], rect: Rect, masked: bool) -> tuple[np.ndarray, np.ndarray]:
        sl = rect.slices()
        raw = self.array[[b - 1 for b in bands], sl[0], sl[1]]
        valid = self._valid(bands, raw) if masked else np.ones(raw.shape[1:], bool)
        return raw.astype(np.float32), valid

    def read_decimated(self, bands: Sequence[int], height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
        rows = (np.arange(height) * self.height // height)[:, None]
        cols = (np.arange(width) * self.width // width)[None, :]
        raw = self.array[[b - 1 for b in bands]][:, rows, cols]
        return raw.astype(np.float32), self._valid(bands, raw)

    def close(self) -> None:
        pass

    def __enter__(self) -> "ArraySource":
        return self

    def __exit__(self, *exc) -> None:
        pass


def open_source(src: Any, **product_options: Any) -> Source:
    """A :class:`Source` for a GDAL name or path, a Sentinel-2 product (``.SAFE``
    folder, its zip or its ``MTD_MSIL*.xml``), a STAC item JSON, a numpy array, or a
    source (as is). ``product_options`` (``resample``, ``mask_scl``) apply to a
    Sentinel-2 product or STAC item.

    The caller closes what this opens; a source passed in is returned unchanged and
    its owner closes it (see :func:`owned_source`)."""
    if isinstance(src, (RasterSource, ArraySource)):
        return src
    if isinstance(src, np.ndarray):
        return ArraySource(src)
    from .sentinel2 import open_product  # noqa: PLC0415  (sentinel2 builds on this module)
    product = open_product(src, **product_options)  # a Sentinel-2 product, a STAC item, or their specs
    if product is not None:
        return product
    if isinstance(src, (str, os.PathLike)):
        return RasterSource(src)
    if isinstance(src, Source):
        return src
    raise RasterError(f"cannot read from a {type(src).__name__}: give a path, a GDAL name or an array")


@contextmanager
def owned_source(src: Any, **product_options: Any) -> Iterator[Source]:
    """``with owned_source(x) as s``: :func:`open_source`, closing only what it opened."""
    s = open_source(src, **product_options)
    try:
        yield s
    finally:
        if s is not src:
            s.close()


@contextmanager
def open_raster(path: str | os.PathLike) -> Iterator[rasterio.io.DatasetReader]:
    """A rasterio dataset for reading (class rasters, truth, labels), with the same
    one-line errors and GDAL names as :class:`RasterSource`; GDAL's messages go to
    logging while it is open (an Env nested in the caller's ``with``)."""
    s = RasterSource(path)
    try:
        with thread_env():
            yield s.ds
    finally:
        s.close()


def resolve_nodata(declared: float | None, option: float | None | str = "auto") -> float | None:
    """The nodata value to honour: the raster's declared one for ``"auto"``, else the
    option's (``None``: count every value; the S2 truth files wrongly declare 0).
    An integral float becomes an int."""
    nd = declared if option == "auto" else option
    if isinstance(nd, float) and nd.is_integer():
        nd = int(nd)
    return nd


def is_georeferenced(src) -> bool:
    return src.crs is not None and not src.transform.is_identity


def resolve_bands(src: Source, spec: InputSpec, bands: Sequence[int | str] | None = None) -> list[int]:
    """1-based band indexes of ``src`` that feed the model's inputs, in the model's order.

    ``bands`` (the ``bands`` option) may give 1-based indexes or band names. Without
    it, the model's bands are matched by name through :data:`BAND_ALIASES` (B2 = B02 =
    blue; B8A never stands in for B8). A raster whose bands are named otherwise is
    refused with both lists; only a raster without band names is taken in order (when
    the counts agree), and that is logged.
    """
    n = src.count
    names = [d or "" for d in src.descriptions]
    canon = [canonical_band(d) if d else "" for d in names]
    want = spec.n_bands
    label = _label(src.name) if isinstance(src.name, str) else str(src.name)
    shown = ", ".join(f"{i + 1}={d}" for i, d in enumerate(names) if d) or "no band names"

    def find(b: str) -> int | None:
        if b in names:
            return names.index(b) + 1
        c = canonical_band(b)
        return canon.index(c) + 1 if c and c in canon else None

    if bands:
        if len(bands) != want:
            raise RasterError(f"{len(bands)} bands chosen but the model expects {want} ({', '.join(spec.bands)})",
                              option="bands")
        out = []
        for b in bands:
            if isinstance(b, (int, np.integer)) or (isinstance(b, str) and b.strip().isdigit()):
                i = int(b)
                if not 1 <= i <= n:
                    raise RasterError(f"band {i} does not exist: {label} has {n} bands", option="bands")
                out.append(i)
            else:
                i = find(b)
                if i is None:
                    raise RasterError(f"unknown band name {b!r}: {label} has {shown}", option="bands")
                out.append(i)
        if len(set(out)) != len(out):
            dup = next(i for i in out if out.count(i) > 1)
            raise RasterError(f"band {dup} is chosen twice", option="bands")
        return out
    found = [find(b) for b in spec.bands]
    if all(i is not None for i in found) and len(set(found)) == len(found):
        return found  # type: ignore[return-value]
    if any(names):
        missing = [b for b, i in zip(spec.bands, found) if i is None]
        raise RasterError(f"{label}'s bands ({shown}) do not include the model's {', '.join(missing)} "
                          f"(the model takes {', '.join(spec.bands)})", option="bands")
    if n == want:
        log.warning("%s has no band names: its %d bands are taken in order as the model's %s", label, n,
                    ", ".join(spec.bands))
        return list(range(1, n + 1))
    raise RasterError(f"{label} has {n} bands but the model expects {want} ({', '.join(spec.bands)})",
                      option="bands")


def reflect_pad(a: np.ndarray, pad_r: int, pad_c: int) -> np.ndarray:
    """Mirror the image into the overhang (numpy repeats the reflection for pads
    longer than the axis, and repeats the edge of a 1-pixel axis)."""
    if pad_r == 0 and pad_c == 0:
        return a
    widths = [(0, 0)] * (a.ndim - 2) + [(0, pad_r), (0, pad_c)]
    return np.pad(a, widths, mode="reflect")


def read_rect(src: Source, bands: Sequence[int], rect: Rect, masked: bool) -> tuple[np.ndarray, np.ndarray]:
    """Read ``rect`` (which may overhang the image's right/bottom edge when the image is
    smaller than a window): ``(data (bands, h, w) float32, valid (h, w))``; the overhang
    (never part of an output region) is a reflection of the image, mask included."""
    inside = rect.intersection(Rect(0, 0, src.width, src.height))
    if inside is None:
        raise RasterError("window outside the raster")
    data, valid = src.read(bands, inside, masked)
    if inside != rect:
        assert inside.col == rect.col and inside.row == rect.row  # only ever overhangs right/bottom
        pr, pc = rect.height - inside.height, rect.width - inside.width
        data = reflect_pad(data, pr, pc)
        valid = reflect_pad(valid, pr, pc)
    return data, valid


def check_same_grid(a, b, what: tuple[str, str] = ("prediction", "truth")) -> None:
    """Refuse two rasters that are not on the same pixel grid (size, transform, CRS;
    the same CRS spelled two ways, e.g. EPSG:32119 vs EPSG:3358, is the same)."""
    na, nb = what
    if (a.width, a.height) != (b.width, b.height):
        raise RasterError(f"{na} is {a.width} x {a.height} px but the {nb} is {b.width} x {b.height}")
    if not a.transform.almost_equals(b.transform):
        raise RasterError(f"{na} and {nb} are not on the same grid (transforms differ)")
    if a.crs and b.crs and a.crs != b.crs:
        import pyproj  # noqa: PLC0415
        ca, cb = pyproj.CRS.from_wkt(a.crs.to_wkt()), pyproj.CRS.from_wkt(b.crs.to_wkt())
        if not (ca.equals(cb, ignore_axis_order=True) or ca.to_proj4() == cb.to_proj4()):
            raise RasterError(f"{na} and {nb} have different CRSs ({ca.name} vs {cb.name})")


def label_valid(label: np.ndarray, nodata) -> np.ndarray:
    """True where a class/label raster holds a value: not ``nodata``, not NaN/inf."""
    valid = np.ones(label.shape, bool)
    if nodata is not None:
        valid &= label != nodata
    if np.issubdtype(label.dtype, np.floating):
        valid &= np.isfinite(label)
    return valid


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
    if is_plain_path(src.name) and qml.exists():
        try:
            return {int(e.get("value")): e.get("label") or "" for e in ET.parse(qml).iter("paletteEntry")}
        except (ET.ParseError, ValueError, TypeError):
            pass
    return {}


def read_class_colours(src, band: int = 1) -> dict[int, tuple[int, int, int]]:
    """Class colours (RGB) of a class raster: geoseg's tag, else the band's colour table
    (entries that are fully transparent are left out); ``{}`` when it has neither."""
    tag = src.tags().get(CLASSES_TAG)
    if tag:
        try:
            return {int(c["id"]): tuple(int(str(c["color"])[i:i + 2], 16) for i in (1, 3, 5))
                    for c in json.loads(tag)}
        except (ValueError, KeyError, TypeError, IndexError):
            pass
    try:
        cmap = src.colormap(band)
    except ValueError:  # no colour table
        return {}
    return {int(k): tuple(int(c) for c in v[:3]) for k, v in cmap.items() if len(v) < 4 or v[3] > 0}


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
