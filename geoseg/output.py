"""Writing: output paths, atomic commits, GeoTIFF profiles, class styling, and the sink.

* :func:`check_output_path` refuses outputs that would clobber an input or an
  existing file (unless overwriting was asked for), or that cannot be written.
* :class:`~geoseg.files.AtomicOutput` (in :mod:`geoseg.files`): a temporary file
  beside the target, renamed onto it at the end; a failure or a cancellation leaves
  the target as it was.
* :data:`PROFILES`: GDAL creation options, defined once (class rasters, COGs, chips).
* :func:`style_class_raster`: colour table, class-name tags, a GDAL raster attribute
  table (``.aux.xml``) and a QGIS ``.qml`` style.
* :class:`ClassRasterWriter`: the sink every executor writes through. It takes
  finished blocks in plan order and owns block writes, area counting, tags, colour
  table, RAT and ``.qml``, COG conversion and the atomic commit — so a local run, a
  Dask run or the xarray writer produce the same bytes.
"""

from __future__ import annotations

import copy
import errno
import json
import os
import re
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any, Mapping, Sequence

import rasterio

from .areas import AreaAccumulator, AreaTable, PixelAreas, make_table
from .bundle import ClassInfo
from .errors import ConfigError, GeosegError, OutputExistsError, RasterError, one_line
from .files import AtomicOutput, place_all
from .sources import CLASS_NODATA, CLASSES_TAG, thread_env

__all__ = ["PROFILES", "check_output_path", "class_profile", "check_creation_options", "with_options",
           "build_overviews", "overview_factors",
           "colormap", "tag_class_dataset", "style_class_raster", "write_rat", "write_qml", "to_cog",
           "ClassRasterWriter"]

#: GDAL creation options by use; :func:`profile` returns a copy.
PROFILES: dict[str, dict[str, Any]] = {
    "class": {"driver": "GTiff", "tiled": True, "compress": "deflate", "interleave": "band",
              "num_threads": "all_cpus"},   # GDAL compresses blocks on worker threads
    "cog": {"driver": "COG", "COMPRESS": "DEFLATE", "BLOCKSIZE": 512, "OVERVIEW_RESAMPLING": "NEAREST",
            "NUM_THREADS": "ALL_CPUS"},
    "chip": {"driver": "GTiff", "compress": "deflate"},
}


def quiet_libtiff() -> int:
    """Turn off libtiff's own error printer in the libtiff GDAL writes through.

    GDAL's GeoTIFF driver reports libtiff errors through GDAL (and rasterio raises
    them), except those of its file I/O callbacks (``_tiffWriteProc``,
    ``_tiffSeekProc``), which call libtiff's process-wide error handler — by default
    a ``fprintf(stderr, ...)``, so a full disk printed raw lines before geoseg's one
    line. The failed write still fails through GDAL, so nothing is lost. Returns the
    number of libtiff libraries handled (0 where none is found: nothing changes)."""
    import ctypes  # noqa: PLC0415
    import glob  # noqa: PLC0415
    found: list[str] = []
    try:
        with open("/proc/self/maps") as f:   # Linux: the libtiff(s) loaded in this process
            found = sorted({ln.split()[-1] for ln in f if "/libtiff" in ln and ".so" in ln})
    except OSError:   # macOS, Windows: the one bundled with rasterio's wheel
        base = Path(rasterio.__file__).parent
        for pattern in (".dylibs/libtiff*.dylib", "../rasterio.libs/*tiff*.dll", "*tiff*.dll"):
            found += glob.glob(str(base / pattern))
    done = 0
    for path in found:
        try:
            lib = ctypes.CDLL(path)
            lib.TIFFSetErrorHandler.argtypes = [ctypes.c_void_p]
            lib.TIFFSetErrorHandler.restype = ctypes.c_void_p
            lib.TIFFSetErrorHandler(None)
            done += 1
        except (OSError, AttributeError):
            continue
    return done


quiet_libtiff()


def profile(name: str) -> dict[str, Any]:
    """A copy of the creation options :data:`PROFILES` holds for ``name``."""
    return copy.deepcopy(PROFILES[name])


#: GTiff creation options the engine fixes: its output blocks are the engine's blocks,
#: one uint8 band with a colour table.
FIXED_OPTIONS = frozenset({"TILED", "BLOCKXSIZE", "BLOCKYSIZE", "INTERLEAVE", "PHOTOMETRIC", "NBITS",
                           "PIXELTYPE"})


def check_creation_options(options: Mapping[str, Any] | None, driver: str = "GTiff") -> dict[str, str]:
    """User creation options (``{"COMPRESS": "ZSTD"}``), upper-cased and checked against
    the driver's option list (where GDAL's Python bindings can tell it) and the options
    the engine fixes."""
    out = {str(k).strip().upper(): str(v).strip() for k, v in (options or {}).items()}
    for k in out:
        if not re.fullmatch(r"[A-Z0-9_]+", k):
            raise ConfigError(f"creation option {k!r} is not a GDAL option name")
        if driver == "GTiff" and k in FIXED_OPTIONS:
            raise ConfigError(f"creation option {k} is fixed by geoseg (tiled, one band, blocks = the engine's "
                              "output blocks)")
    known = _driver_options(driver)
    unknown = sorted(set(out) - known) if known else []
    if unknown:
        raise ConfigError(f"the {driver} driver has no creation option {', '.join(unknown)} (its options: "
                          f"https://gdal.org/drivers/raster/{driver.lower()}.html)")
    return out


def _driver_options(driver: str) -> set[str]:
    """The creation option names GDAL lists for ``driver`` (empty when unknown)."""
    try:
        from osgeo import gdal  # noqa: PLC0415
    except ImportError:
        return set()
    drv = gdal.GetDriverByName(driver)
    xml = drv.GetMetadataItem("DMD_CREATIONOPTIONLIST") if drv is not None else None
    if not xml:
        return set()
    return {o.get("name", "").upper() for o in ET.fromstring(xml).iter("Option")} - {""}


def with_options(prof: dict[str, Any], options: Mapping[str, str]) -> dict[str, Any]:
    """``prof`` with the creation ``options`` replacing any spelling of the same key."""
    up = {k.upper() for k in options}
    out = {k: v for k, v in prof.items() if k.upper() not in up}
    out.update(options)
    return out


_GDAL_FILE = re.compile(r'^[A-Za-z0-9_]+:"?(?P<path>[^":]+(?::\\[^":]*)?)"?(?::.*)?$')


def input_files(name: str | os.PathLike) -> list[str]:
    """The files behind an input name: itself, and for GDAL names the file they live in
    (``GPKG:proj.gpkg:table``, ``NETCDF:"f.nc":var``, ``/vsizip/a.zip/x.tif``,
    ``/vsigzip/x.tif.gz``, ``x.tif|option:…``), so no spelling of an input is an output."""
    s = os.fspath(name).strip()
    out = [s]
    base = s.split("|", 1)[0]
    out.append(base)
    if base.startswith("/vsi") and not base.startswith(("/vsicurl", "/vsis3", "/vsigs", "/vsiaz", "/vsimem")):
        rest = base.split("/", 2)[2] if base.count("/") >= 2 else ""
        # the archive or compressed file: the longest existing prefix of the rest
        parts = rest.split("/")
        for k in range(len(parts), 0, -1):
            cand = "/".join(parts[:k])
            if cand and os.path.isfile(cand):
                out.append(cand)
                break
    else:
        m = _GDAL_FILE.match(base)
        if m and not base.startswith(("http:", "https:")):
            out.append(m["path"])
    return out


def check_output_path(dst: str | os.PathLike, inputs: Sequence[str | os.PathLike] = (),
                      overwrite: bool = False, what: str = "output") -> Path:
    """Refuse outputs that would clobber an input, an existing file (without
    ``overwrite``) or that cannot be written. Returns the absolute path."""
    d = Path(dst).expanduser().absolute()
    for i in inputs:
        if not isinstance(i, (str, os.PathLike)):
            continue
        for f in input_files(i):
            ip = Path(f).expanduser().absolute()
            same = ip == d
            if not same and ip.exists() and d.exists():
                same = os.path.samefile(ip, d)
            if same:
                raise RasterError(f"{what} {d} is the same file as the input {i}; choose another path")
    if d.is_dir():
        raise RasterError(f"{what} {d} is a directory; give a file name")
    if d.is_symlink() or (d.exists() and not d.is_file()):
        kind = "a symbolic link" if d.is_symlink() else "not a regular file (a pipe, socket or device)"
        raise RasterError(f"{what} {d} is {kind}; geoseg writes and replaces regular files only")
    if not d.parent.is_dir():
        raise RasterError(f"{what} directory does not exist: {d.parent}")
    if not os.access(d.parent, os.W_OK | os.X_OK):
        raise RasterError(f"{what} directory is not writable: {d.parent}")
    if d.exists() and not overwrite:
        raise OutputExistsError(f"{what} exists: {d}", option="overwrite")
    return d


def class_profile(width: int, height: int, crs, transform, block: int) -> dict:
    """Profile of a uint8 class GeoTIFF (tiled, deflate, nodata 255)."""
    prof = profile("class")
    prof.update(dtype="uint8", count=1, width=width, height=height, crs=crs, transform=transform,
                nodata=CLASS_NODATA, blockxsize=block, blockysize=block)
    if block > max(width, height) and max(width, height) < 16:
        prof["blockxsize"] = prof["blockysize"] = 16
    return prof


def colormap(classes: Sequence[ClassInfo], background: int | None = None) -> dict[int, tuple[int, int, int, int]]:
    """Colour table 0..max class id (ids without a class, and the model's background
    class, are transparent: the imagery shows through in a GIS)."""
    cmap = {i: (0, 0, 0, 0) for i in range(max(c.id for c in classes) + 1)}
    for c in classes:
        cmap[c.id] = (*c.rgb, 0 if c.id == background else 255)
    return cmap


def tag_class_dataset(dst, classes: Sequence[ClassInfo], extra_tags: dict | None = None,
                      background: int | None = None) -> None:
    """Colour table, class-name tag and band description on an open dataset."""
    tags = {CLASSES_TAG: json.dumps([{"id": c.id, "name": c.name, "color": c.color} for c in classes])}
    tags.update(extra_tags or {})
    dst.write_colormap(1, colormap(classes, background))
    dst.update_tags(**tags)
    dst.set_band_description(1, "class")


def style_class_raster(path: str | os.PathLike, classes: Sequence[ClassInfo], extra_tags: dict | None = None,
                       qml_path: str | os.PathLike | None = None, tag: bool = True,
                       background: int | None = None) -> None:
    """Colour table and class-name tags (unless ``tag=False``: already done while
    writing), a GDAL raster attribute table and category names (``.aux.xml``, written
    by GDAL itself when its Python bindings are available) and a QGIS ``.qml`` style.
    The ``background`` class is drawn transparent."""
    if tag:
        with thread_env(), rasterio.open(path, "r+") as dst:
            tag_class_dataset(dst, classes, extra_tags, background)
    write_rat(path, classes)
    write_qml(qml_path or Path(path).with_suffix(".qml"), classes, background)


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
        # category names: what QGIS shows as legend labels when no .qml came with the file
        by_id = {c.id: c.name for c in classes}
        band.SetCategoryNames([by_id.get(i, "") for i in range(max(by_id) + 1)])
        band.FlushCache()
    finally:
        ds = None  # noqa: F841  (closing writes the .aux.xml)
        gdal.PopErrorHandler()
    return True


def write_qml(path: str | os.PathLike, classes: Sequence[ClassInfo], background: int | None = None) -> None:
    """A QGIS layer style (paletted renderer with class names) that QGIS loads
    automatically for a raster of the same base name; the ``background`` class is
    transparent (give it a colour in the layer's symbology to show it; the GeoTIFF's
    colour table keeps the model's colour)."""
    root = ET.Element("qgis", version="3.22", styleCategories="AllStyleCategories")
    pipe = ET.SubElement(root, "pipe")
    rr = ET.SubElement(pipe, "rasterrenderer", type="paletted", band="1", opacity="1",
                       alphaBand="-1", nodataColor="")
    ET.SubElement(rr, "rasterTransparency")
    pal = ET.SubElement(rr, "colorPalette")
    for c in sorted(classes, key=lambda c: c.id):
        # QGIS draws legend swatches without their alpha: the hidden class shows an empty
        # (white) swatch rather than its colour, which the map does not show
        bg = c.id == background
        ET.SubElement(pal, "paletteEntry", value=str(c.id), color="#ffffff" if bg else c.color.lower(),
                      label=c.name, alpha="0" if bg else "255")
    ET.SubElement(pipe, "brightnesscontrast", brightness="0", contrast="0")
    ET.SubElement(pipe, "huesaturation", saturation="0", grayscaleMode="0", colorizeOn="0")
    ET.indent(root)
    body = ET.tostring(root, encoding="unicode")
    Path(path).write_text("<!DOCTYPE qgis PUBLIC 'http://mrcc.com/qgis.dtd' 'SYSTEM'>\n" + body + "\n")


def _no_space(target: Path, e: BaseException) -> bool:
    if getattr(e, "errno", None) == errno.ENOSPC or "no space left" in str(e).lower():
        return True
    try:
        st = os.statvfs(target.parent)
    except OSError:
        return False
    return st.f_bavail * st.f_frsize < 1 << 20


def write_error(target: str | os.PathLike, e: BaseException) -> RasterError:
    """A failed write as one line: a full disk named as such."""
    target = Path(target)
    if _no_space(target, e):
        return RasterError(f"no space left on device writing {target}")
    return RasterError(f"could not write {target}: {one_line(e)}")


def verify_written(path: Path, target: Path) -> None:
    """Reopen a GeoTIFF just closed and read it back: GDAL does not always report a
    failed flush (a full disk) when it closes a file. The last row of blocks always;
    every block when the disk is nearly full."""
    from rasterio.windows import Window  # noqa: PLC0415
    try:
        with rasterio.open(path) as ds:
            st = os.statvfs(path.parent)
            if st.f_bavail * st.f_frsize < max(64 << 20, 2 * path.stat().st_size):
                for _, win in ds.block_windows(1):
                    ds.read(1, window=win)
            else:
                h = ds.block_shapes[0][0]
                ds.read(1, window=Window(0, max(0, ds.height - h), ds.width, min(h, ds.height)))
    except Exception as e:  # noqa: BLE001
        raise write_error(target, e) from None


def to_cog(out: AtomicOutput, options: Mapping[str, str] | None = None) -> None:
    """Rewrite a finished GeoTIFF as a Cloud-Optimised GeoTIFF (same temporary path)."""
    from rasterio.shutil import copy as rio_copy  # noqa: PLC0415
    tmp2 = out.scratch(".tif")
    rio_copy(out.tmp, tmp2, **with_options(profile("cog"), options or {}))
    os.replace(tmp2, out.tmp)


def overview_factors(width: int, height: int, smallest: int = 256) -> list[int]:
    """Overview decimation factors 2, 4, 8 ... until the overview fits in ``smallest`` px."""
    factors, f = [], 2
    while max(width, height) / (f // 2) > smallest:
        factors.append(f)
        f *= 2
    return factors


def build_overviews(path: str | os.PathLike) -> None:
    """Internal overviews (nearest: class ids are never averaged), as GIS users expect
    of a large GeoTIFF."""
    from rasterio.enums import Resampling  # noqa: PLC0415
    with rasterio.open(path, "r+") as ds:
        factors = overview_factors(ds.width, ds.height)
        if factors:
            ds.build_overviews(factors, Resampling.nearest)
            ds.update_tags(ns="rio_overview", resampling="nearest")


class ClassRasterWriter:
    """The sink for class rasters: blocks in, a styled, atomically committed GeoTIFF out.

    Usage (every executor)::

        with ClassRasterWriter(dst, grid=..., ...) as w:   # discards on error
            for res in results_in_plan_order:
                w.write(res)
            w.finish()              # tags, RAT, .qml, COG; areas in w.table
            w.commit()              # every output renamed into place

    Args:
        target: the class GeoTIFF to write (already checked by :func:`check_output_path`).
        width, height, crs, transform, block: the output grid and internal tile size.
        classes: the model's classes (colours, names).
        pixel_areas: pixel areas of the grid (:func:`geoseg.areas.pixel_areas`).
        confidence_target: also write the winning probability (uint8 %, nodata 255).
        tags: extra GeoTIFF tags (model, tiling, blending).
        cog: convert the finished files to COGs.
    """

    def __init__(self, target: str | os.PathLike, *, width: int, height: int, crs, transform, block: int,
                 classes: Sequence[ClassInfo], pixel_areas: PixelAreas,
                 confidence_target: str | os.PathLike | None = None, tags: dict[str, str] | None = None,
                 cog: bool = False, background: int | None = None,
                 creation_options: Mapping[str, Any] | None = None, overviews: bool = False,
                 overwrite: bool = True):
        self._committed = False
        self.overwrite = overwrite
        self.creation_options = check_creation_options(creation_options, "COG" if cog else "GTiff")
        self.overviews = overviews and not cog  # a COG has its own overviews
        self.classes = tuple(classes)
        self.background = background
        self.tags = dict(tags or {})
        self.cog = cog
        self.main = AtomicOutput(target, overwrite)
        self.conf = AtomicOutput(confidence_target, overwrite) if confidence_target is not None else None
        self.acc = AreaAccumulator(pixel_areas, CLASS_NODATA)
        self.georeferenced = pixel_areas.kind != "pixels"
        self._extra: list[tuple[Path, Path]] = []
        self._next = 0
        self._finished = False
        prof = class_profile(width, height, crs, transform, block)
        if not cog:
            prof = with_options(prof, self.creation_options)
        # Blocks are written from whatever thread calls write() (the pipeline's writer
        # thread enters its own rasterio Env); no Env is held by this object.
        self._dst = self._cdst = None
        try:
            with thread_env():
                self._dst = rasterio.open(self.main.tmp, "w", **prof)
                if self.conf is not None:
                    self._cdst = rasterio.open(self.conf.tmp, "w", **prof)
        except BaseException:
            self.discard()
            raise

    @property
    def outputs(self) -> list[AtomicOutput]:
        return [o for o in (self.main, self.conf) if o is not None]

    def write(self, res) -> None:
        """Write one unit's block (a :class:`geoseg.unit.UnitResult`), in plan order."""
        if res.unit.index != self._next:
            raise RuntimeError(f"blocks out of order: got unit {res.unit.index}, expected {self._next}")
        from .sources import to_window  # noqa: PLC0415
        win = to_window(res.unit.region)
        try:
            self._dst.write(res.classes, 1, window=win)
            if self._cdst is not None:
                self._cdst.write(res.confidence, 1, window=win)
        except Exception as e:  # noqa: BLE001
            raise write_error(self.main.target, e) from None
        self.acc.add(res.classes, res.unit.region.row)
        self._next += 1

    def table(self, class_names: dict[int, str] | None = None) -> AreaTable:
        """The area table of what was written (by class id; names from the classes)."""
        names = class_names if class_names is not None else {c.id: c.name for c in self.classes}
        table = make_table(self.acc, names)
        if not self.georeferenced:
            table.notes.append("no CRS: areas in pixels")
        return table

    @property
    def counts(self) -> dict[int, int]:
        return dict(self.acc.counts.get(None, {}))

    def finish(self) -> None:
        """Tags and colour table, close, RAT and ``.qml``, COG conversion (not committed yet).
        A write that failed (e.g. a full disk) is one :class:`RasterError`."""
        try:
            self._finish()
        except GeosegError:
            raise
        except Exception as e:  # noqa: BLE001  (GDAL, libtiff, OS errors while writing)
            raise write_error(self.main.target, e) from None
        self._finished = True

    def _finish(self) -> None:
        with thread_env():
            tag_class_dataset(self._dst, self.classes, self.tags, self.background)
            if self._cdst is not None:
                self._cdst.set_band_description(1, "confidence (%)")
                self._cdst.update_tags(UNITS="percent", **{k: v for k, v in self.tags.items() if k == "GEOSEG_MODEL"})
            self._close()
            for o in self.outputs:
                verify_written(o.tmp, o.target)
            if self.overviews:
                for o in self.outputs:
                    build_overviews(o.tmp)
            # RAT (.aux.xml) and .qml before a COG copy: the colour table and tags travel
            # inside the file, the side-cars stay beside the temporary path.
            style_class_raster(self.main.tmp, self.classes, qml_path=self.main.tmp.with_suffix(".qml"), tag=False,
                               background=self.background)
            if self.cog:
                for o in self.outputs:
                    to_cog(o, self.creation_options)

    def scratch(self, target: str | os.PathLike, suffix: str) -> Path:
        """A temporary path for a side output (CSV, preview) renamed to ``target`` at commit."""
        p = self.main.scratch(suffix)
        self._extra.append((p, Path(target)))
        return p

    def commit(self) -> Path:
        """Move every finished output into place, all or nothing
        (:func:`geoseg.files.place_all`): the class raster first (without ``overwrite``
        it decides which run wins), then its side-cars, the confidence raster and the
        side outputs. If one cannot be placed, what this run placed is taken back."""
        if not self._finished:
            raise RuntimeError("commit before finish")
        moves = self.main.moves()
        if self.conf is not None:
            moves += self.conf.moves()
        moves += [(tmp, target, not self.overwrite) for tmp, target in self._extra]
        place_all(moves)
        self._committed = True
        for o in self.outputs:
            o.cleanup_scratch()  # e.g. the COG conversion's
        return self.main.target

    def _close(self) -> None:
        for d in (self._dst, self._cdst):
            if d is not None:
                d.close()
        self._dst = self._cdst = None

    def discard(self) -> None:
        """Remove every temporary file: the targets stay as they were."""
        self._close()
        for o in self.outputs:
            o.discard()

    def __enter__(self) -> "ClassRasterWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if not self._committed:  # an error, or a caller that never committed: nothing stays
            self.discard()
