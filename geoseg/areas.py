"""Per-class areas of class rasters.

One counting routine serves both ``geoseg predict --areas`` (counts accumulated
block by block while writing, no second pass) and ``geoseg areas`` on any class
raster. Pixel areas:

* projected CRS: ``|det(transform)|`` (right for rotated/sheared grids) times the
  CRS's linear unit in metres per axis (US survey feet, ...);
* geographic CRS: the geodesic area of each pixel row's polygon on the CRS's
  ellipsoid (pyproj ``Geod``), so high latitudes are right;
* no CRS: pixel counts only, with a warning (or an explicit ``pixel_size``).
"""

from __future__ import annotations

import csv
import io
import math
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Sequence

import numpy as np

from .errors import ConfigError, NotGeoreferencedWarning, RasterError, VectorError, one_line
from .files import write_atomic
from .progress import CancelFn, ProgressFn, Reporter
from .sources import open_raster, read_class_names, resolve_nodata

__all__ = ["PixelAreas", "pixel_areas", "geodesic_of", "AreaAccumulator", "ClassArea", "AreaTable", "class_areas",
           "write_areas_csv", "read_zones", "Zone"]


@dataclass(frozen=True)
class PixelAreas:
    """Area of one pixel in m², constant or per row; ``kind='pixels'`` when unknown."""

    kind: Literal["planar", "geodesic", "pixels"]
    constant: float | None = None
    rows: np.ndarray | None = None  # m² per pixel of each row (geodesic)

    def row_areas(self, row0: int, n: int) -> np.ndarray:
        if self.rows is not None:
            return self.rows[row0:row0 + n]
        return np.full(n, self.constant if self.constant is not None else 1.0)


def _axis_factor(pc, kind: str) -> tuple[float, float]:
    axes = pc.axis_info[:2]
    if len(axes) < 2:
        raise RasterError(f"CRS {pc.name!r} has fewer than two axes")
    f = [a.unit_conversion_factor for a in axes]
    if any(v is None or v <= 0 for v in f):
        raise RasterError(f"CRS {pc.name!r} has an axis without a usable {kind} unit")
    return f[0], f[1]


def pixel_areas(crs, transform, width: int, height: int, pixel_size: float | None = None,
                warn: bool = True, hint: str = "") -> PixelAreas:
    """Pixel areas for a raster grid (see the module docstring). ``warn``: say so when
    the grid has no CRS (areas in pixels) — off where no area is reported; ``hint``:
    what the caller offers instead (only where it has a pixel size to give)."""
    if pixel_size is not None:
        if not pixel_size > 0:
            raise ConfigError(f"pixel size must be positive, got {pixel_size}")
        return PixelAreas("planar", float(pixel_size) ** 2)
    if crs is None or transform.is_identity:
        if not warn:
            return PixelAreas("pixels")
        warnings.warn("raster has no CRS/georeferencing: areas are reported in pixels" + (f" ({hint})" if hint else ""),
                      NotGeoreferencedWarning, stacklevel=2)
        return PixelAreas("pixels")
    import pyproj  # noqa: PLC0415
    pc = pyproj.CRS.from_user_input(crs.to_wkt() if hasattr(crs, "to_wkt") else crs)
    if pc.is_compound:
        pc = pc.sub_crs_list[0]
    if pc.is_geographic:
        return PixelAreas("geodesic", rows=_geodesic_rows(pc, transform, height))
    fx, fy = _axis_factor(pc, "linear")
    det = abs(transform.a * transform.e - transform.b * transform.d)
    return PixelAreas("planar", det * fx * fy)


def geodesic_of(crs) -> tuple[object, float] | None:
    """For a geographic CRS: its ellipsoid as a pyproj ``Geod`` and the degrees per CRS
    angular unit (what the geodesic pixel areas use); ``None`` for any other CRS."""
    import pyproj  # noqa: PLC0415
    pc = pyproj.CRS.from_user_input(crs.to_wkt() if hasattr(crs, "to_wkt") else crs)
    if pc.is_compound:
        pc = pc.sub_crs_list[0]
    if not pc.is_geographic:
        return None
    return pc.get_geod(), _axis_factor(pc, "angular")[0] * 180.0 / math.pi


def _geodesic_rows(pc, transform, height: int) -> np.ndarray:
    """Geodesic area (m²) of each row's pixel on the CRS's ellipsoid.

    The reference is the geodesic polygon through the pixel's four corners (what
    pyproj's ``Geod.polygon_area_perimeter`` measures). For pixels narrower than
    0.01° the row area uses the closed form of the area between two parallels
    (authalic latitude), vectorised; it differs from the geodesic polygon by less
    than 1e-7 relative at that width (the top/bottom geodesics bulge by ~Δλ²).
    Wider pixels, rotated grids and any grid of few rows use pyproj per row.
    """
    f = _axis_factor(pc, "angular")[0] * 180.0 / math.pi  # CRS angular unit -> degrees
    geod = pc.get_geod()
    t = transform
    north_up = t.b == 0 and t.d == 0
    dlon = abs(t.a) * f
    if north_up and dlon <= 0.01 and height > 64:
        lat = np.clip((t.f + t.e * np.arange(height + 1)) * f, -90.0, 90.0)
        s = _parallel_area_integral(np.radians(lat), geod.a, geod.f)
        return np.abs(np.diff(s)) * math.radians(dlon)
    out = np.empty(height, dtype=np.float64)
    for r in range(height):
        cx = [(0, r), (1, r), (1, r + 1), (0, r + 1)]
        pts = [(t.c + t.a * x + t.b * y, t.f + t.d * x + t.e * y) for x, y in cx]
        lons = [p[0] * f for p in pts]
        lats = [max(-90.0, min(90.0, p[1] * f)) for p in pts]
        area, _ = geod.polygon_area_perimeter(lons, lats)
        out[r] = abs(area)
    return out


def _parallel_area_integral(phi: np.ndarray, a: float, flattening: float) -> np.ndarray:
    """S(φ): area per radian of longitude between the equator and latitude φ."""
    e2 = flattening * (2 - flattening)
    b2 = (a * (1 - flattening)) ** 2
    s = np.sin(phi)
    if e2 == 0:
        return b2 * s
    e = math.sqrt(e2)
    return 0.5 * b2 * (s / (1 - e2 * s * s) + np.arctanh(e * s) / e)


#: The class id of the row for pixels left unclassified on purpose (the class rasters' nodata).
UNCLASSIFIED = 255
MAX_CLASSES = 1024   # more distinct values than this: not a class raster
_CHUNK_PX = 1 << 17  # pixels per counting chunk: the intp copy stays in cache


def count_uint8(block: np.ndarray, row_areas: np.ndarray | None, nodata: int | None
                ) -> tuple[np.ndarray, np.ndarray | None]:
    """Counts (256,) and, with ``row_areas`` (one per block row), areas (256,) of a uint8 block.

    Works in cache-sized chunks of whole rows. Per-row areas need a (rows, 256)
    table: one ``bincount`` per row for wide rows, else one per chunk with the
    values offset by ``256 * row``; the row areas weight the table.
    """
    h, w = block.shape
    if row_areas is not None and w >= 1024:
        # Wide rows: one bincount per row costs about what plain counting does.
        table = np.empty((h, 256), np.int64)
        for r in range(h):
            table[r] = np.bincount(block[r], minlength=256)
        counts, areas = table.sum(axis=0), row_areas @ table
        if nodata is not None and 0 <= nodata <= 255:
            counts[nodata] = 0
            areas[nodata] = 0.0
        return counts, areas
    counts = np.zeros(256, np.int64)
    areas = np.zeros(256) if row_areas is not None else None
    rows_per = max(1, min(h, _CHUNK_PX // max(w, 1)))
    buf = np.empty(rows_per * w, np.intp)
    offs = (np.arange(rows_per, dtype=np.intp) * 256)[:, None] if row_areas is not None else None
    for r0 in range(0, h, rows_per):
        chunk = block[r0:r0 + rows_per]
        n = chunk.shape[0]
        tmp = buf[:n * w].reshape(n, w)
        if areas is None:
            np.copyto(tmp, chunk, casting="unsafe")
            counts += np.bincount(tmp.reshape(-1), minlength=256)
        else:
            np.add(chunk, offs[:n], out=tmp, casting="unsafe")  # cast and offset in one pass
            per_row = np.bincount(tmp.reshape(-1), minlength=n * 256).reshape(n, 256)
            counts += per_row.sum(axis=0)
            areas += row_areas[r0:r0 + n] @ per_row
    if nodata is not None and 0 <= nodata <= 255:
        counts[nodata] = 0
        if areas is not None:
            areas[nodata] = 0.0
    return counts, areas


class AreaAccumulator:
    """Adds up per-class pixel counts and areas block by block (optionally per zone)."""

    def __init__(self, px: PixelAreas, nodata: int | float | None = 255):
        self.px = px
        self.nodata = nodata
        self.counts: dict[object, dict[int, int]] = {}
        self.areas: dict[object, dict[int, float]] = {}

    def _add(self, zone, counts: dict[int, int], areas: dict[int, float]) -> None:
        zc = self.counts.setdefault(zone, {})
        za = self.areas.setdefault(zone, {})
        for k, v in counts.items():
            zc[k] = zc.get(k, 0) + int(v)
            za[k] = za.get(k, 0.0) + float(areas.get(k, 0.0))

    def add(self, block: np.ndarray, row0: int, zone: object = None, mask: np.ndarray | None = None) -> None:
        """Count ``block`` whose first row is image row ``row0`` (``mask``: pixels to count)."""
        ra = self.px.row_areas(row0, block.shape[0])
        if block.dtype == np.uint8 and mask is None:
            counts, areas = count_uint8(block, ra if self.px.kind == "geodesic" else None,
                                        self.nodata if isinstance(self.nodata, (int, np.integer)) else None)
            nz = np.flatnonzero(counts)
            if self.px.kind != "geodesic":
                areas = counts * (self.px.constant if self.px.kind == "planar" else 0.0)
            self._add(zone, {int(k): counts[k] for k in nz}, {int(k): areas[k] for k in nz})
            return
        valid = np.ones(block.shape, bool) if mask is None else mask.copy()
        if self.nodata is not None:
            if isinstance(self.nodata, float) and math.isnan(self.nodata):
                pass
            else:
                valid &= block != self.nodata
        if np.issubdtype(block.dtype, np.floating):
            valid &= np.isfinite(block)
        rows = np.nonzero(valid)[0]
        vals = block[valid]
        if vals.size == 0:
            self.counts.setdefault(zone, {})
            self.areas.setdefault(zone, {})
            return
        if np.issubdtype(vals.dtype, np.floating):
            iv = np.round(vals).astype(np.int64)
            if not np.array_equal(iv, vals):
                raise RasterError("class raster holds non-integer values; is it really a class raster?")
            vals = iv
        uniq, inv, cnt = np.unique(vals, return_inverse=True, return_counts=True)
        area = np.bincount(inv, weights=ra[rows], minlength=len(uniq)) if self.px.kind != "pixels" \
            else np.zeros(len(uniq))
        self._add(zone, {int(u): int(c) for u, c in zip(uniq, cnt)}, {int(u): float(a) for u, a in zip(uniq, area)})


@dataclass
class ClassArea:
    zone: str | None
    class_id: int
    class_name: str
    pixels: int
    area_m2: float | None
    percent: float

    @property
    def area_ha(self) -> float | None:
        return None if self.area_m2 is None else self.area_m2 / 1e4

    @property
    def area_km2(self) -> float | None:
        return None if self.area_m2 is None else self.area_m2 / 1e6


@dataclass
class AreaTable:
    rows: list[ClassArea]
    kind: str  # planar | geodesic | pixels
    zone_field: str | None = None
    notes: list[str] = field(default_factory=list)

    def by_class(self, zone: str | None = None) -> dict[int, ClassArea]:
        return {r.class_id: r for r in self.rows if r.zone == zone and r.class_id != UNCLASSIFIED}

    def add_unclassified(self, name: str, pixels: int, px: PixelAreas) -> None:
        """A row (class id 255, no percent) for pixels left unclassified on purpose, e.g.
        masked as cloud: so the user knows how much of the scene was not classified."""
        area = pixels * px.constant if px.kind == "planar" and px.constant is not None else None
        self.rows.append(ClassArea(None, UNCLASSIFIED, name, int(pixels), area, float("nan")))
        self.notes.append(f"{name}: {pixels:,} px" + (f" ({area / 1e4:,.2f} ha)" if area is not None else ""))


def make_table(acc: AreaAccumulator, class_names: dict[int, str], zones: Sequence[object] | None = None,
               zone_field: str | None = None) -> AreaTable:
    rows = []
    zone_keys = list(zones) if zones is not None else [None]
    seen = set().union(*(set(c) for c in acc.counts.values())) if acc.counts else set()
    for z in zone_keys:
        counts = acc.counts.get(z, {})
        areas = acc.areas.get(z, {})
        ids = sorted(set(class_names) | seen)
        if acc.nodata is not None and not (isinstance(acc.nodata, float) and math.isnan(acc.nodata)):
            ids = [i for i in ids if i != acc.nodata or i in counts]
        total_px = sum(counts.values())
        total_a = sum(areas.values())
        for cid in ids:
            n = counts.get(cid, 0)
            a = areas.get(cid, 0.0) if acc.px.kind != "pixels" else None
            if acc.px.kind == "pixels":
                pct = 100.0 * n / total_px if total_px else 0.0
            else:
                pct = 100.0 * (a or 0.0) / total_a if total_a else 0.0
            rows.append(ClassArea(None if z is None else str(z), cid, class_names.get(cid, f"class_{cid}"),
                                  n, a, pct))
    return AreaTable(rows, acc.px.kind, zone_field)


def areas_csv_text(table: AreaTable) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    has_zone = table.zone_field is not None or any(r.zone is not None for r in table.rows)
    head = ["class_id", "class_name", "pixels", "area_m2", "area_ha", "area_km2", "percent"]
    w.writerow((["zone"] if has_zone else []) + head)
    for r in table.rows:
        vals = [r.class_id, r.class_name, r.pixels,
                "" if r.area_m2 is None else f"{r.area_m2:.3f}",
                "" if r.area_ha is None else f"{r.area_ha:.6f}",
                "" if r.area_km2 is None else f"{r.area_km2:.8f}",
                "" if math.isnan(r.percent) else f"{r.percent:.4f}"]
        w.writerow(([r.zone] if has_zone else []) + vals)
    return buf.getvalue()


def format_table(table: AreaTable) -> str:
    """A readable table for terminals."""
    has_zone = any(r.zone is not None for r in table.rows)
    unit = "pixels only (no CRS)" if table.kind == "pixels" else f"{table.kind} areas"
    lines = [f"  {'zone':<14} " * has_zone + f"  {'id':>3}  {'class':<20} {'pixels':>12} {'hectares':>14} {'%':>8}"]
    for r in table.rows:
        ha = "" if r.area_ha is None else f"{r.area_ha:,.2f}"
        z = f"  {str(r.zone)[:14]:<14} " if has_zone else ""
        pct = "" if math.isnan(r.percent) else f"{r.percent:>7.2f}%"
        lines.append(f"{z}  {r.class_id:>3}  {r.class_name[:20]:<20} {r.pixels:>12,} {ha:>14} {pct:>8}")
    lines.append(f"  ({unit})")
    return "\n".join(lines)


def write_areas_csv(table: AreaTable, path: str | os.PathLike) -> Path:
    """Write the table as CSV atomically (temporary file, then rename)."""
    return write_atomic(path, areas_csv_text(table))


@dataclass
class Zone:
    key: str
    geometry: object  # shapely geometry in the raster's CRS


def read_zones(path: str | os.PathLike, raster_crs, zone_field: str | None = None,
               layer: str | int | None = None) -> list[Zone]:
    """Read AOI polygons (GeoPackage, GeoJSON, Shapefile, ...) with pyogrio, reproject
    them to the raster's CRS and dissolve them by ``zone_field`` (or into one AOI)."""
    p = Path(path)
    if not p.exists():
        raise VectorError(f"AOI file not found: {p}")
    try:
        import pyogrio  # noqa: PLC0415
        import shapely  # noqa: PLC0415
    except ImportError as e:
        raise VectorError(f"reading an AOI needs pyogrio and shapely: {e}") from None
    try:
        info = pyogrio.read_info(p, layer=layer)
        fields = list(info["fields"])
        if zone_field is not None and zone_field not in fields:
            raise VectorError(f"AOI {p.name} has no field {zone_field!r} (fields: {', '.join(fields) or 'none'})")
        meta, _fids, geoms, field_data = pyogrio.raw.read(p, layer=layer, columns=[zone_field] if zone_field else [])
    except VectorError:
        raise
    except Exception as e:  # pyogrio raises DataSourceError, DataLayerError, ...
        raise VectorError(f"cannot read AOI {p}: {one_line(e)}") from None
    if geoms is None or len(geoms) == 0:
        raise VectorError(f"AOI {p.name} has no features")
    shapes = shapely.from_wkb(geoms)
    if raster_crs is None:
        raise VectorError("the raster has no CRS, so an AOI cannot be placed on it")
    vcrs = meta.get("crs")
    if vcrs:
        import pyproj  # noqa: PLC0415
        src_crs = pyproj.CRS.from_user_input(vcrs)
        dst_crs = pyproj.CRS.from_user_input(raster_crs.to_wkt())
        if not src_crs.equals(dst_crs, ignore_axis_order=True):
            tr = pyproj.Transformer.from_crs(src_crs, dst_crs, always_xy=True)
            shapes = shapely.transform(shapes, lambda xy: np.column_stack(tr.transform(xy[:, 0], xy[:, 1])))
    else:
        warnings.warn(f"AOI {p.name} has no CRS; assuming the raster's CRS", UserWarning, stacklevel=2)
    keys = [str(v) for v in field_data[0]] if zone_field else ["aoi"] * len(shapes)
    groups: dict[str, list] = {}
    for k, g in zip(keys, shapes):
        if g is None or g.is_empty:
            continue
        if g.geom_type not in ("Polygon", "MultiPolygon", "GeometryCollection"):
            continue
        groups.setdefault(k, []).append(shapely.make_valid(g))
    if not groups:
        raise VectorError(f"AOI {p.name} has no polygon features")
    return [Zone(k, shapely.union_all(v)) for k, v in sorted(groups.items())]


def class_areas(path: str | os.PathLike, *, nodata: float | None | Literal["auto"] = "auto",
                class_names: dict[int, str] | None = None, pixel_size: float | None = None,
                aoi: str | os.PathLike | None = None, zone_field: str | None = None,
                band: int = 1, progress: ProgressFn | None = None,
                is_cancelled: CancelFn | None = None) -> AreaTable:
    """Per-class pixel counts and areas of a class raster, block by block.

    Args:
        path: any single-band integer (or integral float) class raster.
        nodata: ``"auto"`` uses the raster's nodata; ``None`` counts every value;
            a number overrides the raster's (the S2 truth files wrongly declare 0).
        class_names: id -> name; default from the raster (geoseg tag, RAT or .qml).
        pixel_size: pixel side in metres, for rasters without a CRS (or to override).
        aoi: polygons limiting the count; ``zone_field`` splits it into zones.
        progress, is_cancelled: see :mod:`geoseg.progress`.
    """
    from rasterio.features import geometry_mask  # noqa: PLC0415
    from rasterio.windows import Window, bounds as wbounds, transform as wtransform  # noqa: PLC0415

    reporter = Reporter(progress, is_cancelled)
    reporter.check()
    with open_raster(path) as src:
        if not 1 <= band <= src.count:
            raise RasterError(f"{Path(path).name} has no band {band}")
        nd = resolve_nodata(src.nodatavals[band - 1], nodata)
        names = class_names if class_names is not None else read_class_names(src)
        px = pixel_areas(src.crs, src.transform, src.width, src.height, pixel_size,
                         hint="give a pixel size to get square metres")
        acc = AreaAccumulator(px, nd)
        zones = read_zones(aoi, src.crs, zone_field) if aoi else None
        # Strips of whole internal blocks: bounded memory, each block decoded once.
        # A reader thread decodes the next strip while this one is counted.
        bh = src.block_shapes[band - 1][0]
        step = max(bh, (8 * 1024 * 1024 // max(src.width, 1)) // bh * bh)
        starts = list(range(0, src.height, step))
        reporter.total = len(starts)

        import rasterio  # noqa: PLC0415

        def read(r0: int):
            win = Window(0, r0, src.width, min(step, src.height - r0))
            try:
                with rasterio.Env():  # GDAL's error handler is per thread
                    return win, src.read(band, window=win)
            except Exception as e:  # noqa: BLE001
                raise RasterError(f"cannot read {Path(path).name} (truncated or corrupt?): "
                                  f"{one_line(e)}") from None

        from concurrent.futures import ThreadPoolExecutor  # noqa: PLC0415
        with ThreadPoolExecutor(1, thread_name_prefix="geoseg-areas") as pool:
            fut = pool.submit(read, starts[0])
            for i in range(len(starts)):
                win, block = fut.result()
                if i + 1 < len(starts):
                    fut = pool.submit(read, starts[i + 1])
                r0 = starts[i]
                if zones is None:
                    acc.add(block, r0)
                else:
                    import shapely  # noqa: PLC0415
                    box = shapely.box(*wbounds(win, src.transform))
                    for z in zones:
                        if not z.geometry.intersects(box):
                            acc.counts.setdefault(z.key, {})
                            continue
                        inside = geometry_mask([z.geometry], out_shape=block.shape,
                                               transform=wtransform(win, src.transform), invert=True)
                        acc.add(block, r0, zone=z.key, mask=inside)
                if len(set().union(*acc.counts.values())) > MAX_CLASSES:
                    raise RasterError(f"{Path(path).name} band {band} holds more than {MAX_CLASSES} distinct "
                                      "values: is it a class raster?")
                reporter.step()
        table = make_table(acc, names, [z.key for z in zones] if zones else None, zone_field if aoi else None)
    return table
