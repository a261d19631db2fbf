"""Class rasters to polygons: one GeoPackage layer with class id, class name and area.

::

    vectorize_classes("water.tif", "water.gpkg", classes=[1], min_area=500, simplify=5)

**Streaming.** The raster is read in strips of whole block rows (about 4 Mpx each) and
each strip is polygonized by GDAL (``GDALPolygonize`` through
``rasterio.features.shapes``) in pixel coordinates, where every vertex is an integer,
so the pieces of a polygon cut by strip edges join exactly. A polygon whose pixels
reach a strip's last row stays *open*; in the next strip, the pieces of the same class
that share a stretch of that edge with it (4-connectivity: pixels that touch only at a
corner stay apart; with 8-connectivity a corner joins them) join its group, and a group
none of whose pieces reach the new strip's last row is *closed*: its pieces are joined
(:func:`_merge`: the edge pairs they share cancel and the rest are linked into rings, in
numpy; with 8-connectivity GEOS's union), measured, filtered, simplified and written
(pyogrio). The layer is the one polygonizing the whole raster at once gives.

**Memory bound.** At any time geoseg holds one strip (its pixels and GDAL's polygons of
it), the features waiting to be written (at most :data:`BATCH`) and the *open* polygons:
those crossing the current strip edge, whole, holes included. That last part is not
bounded by the strip: a class that forms one connected region across the raster (a
background with islands of other classes) is held until its last strip, with every
hole — about as much memory as that polygon takes in the output, plus a few copies of
its coordinates while it is joined. :attr:`VectorizeResult.peak_open_vertices` says how
many vertices were held at most (10980² of smooth random blobs in 3 classes: 3.1 M
vertices in one region, a peak of about 630 MB; ``bench/vectorize.py``).

**Areas** (``area_m2``), as :mod:`geoseg.areas` measures pixels:

* projected CRS: planar, through the CRS's linear unit (``|det(transform)|`` per pixel);
* geographic CRS: geodesic on the CRS's ellipsoid. An unsimplified polygon's area is
  the sum of its pixels' geodesic areas (row by row, exactly what
  :func:`geoseg.areas.class_areas` adds up); a simplified one is measured by pyproj's
  ``Geod.geometry_area_perimeter`` with its edges cut to the pixel size, so that edges
  follow the CRS's lines (parallels) as pixel edges do;
* no CRS: refused, unless a pixel size in metres is given.

``min_area`` (m²) is compared with the unsimplified area, after merging; dropped
polygons leave a gap (they are not given to a neighbour). ``simplify`` is a
Douglas-Peucker tolerance in CRS units with each polygon's topology kept (GEOS's
topology-preserving simplifier through shapely, ring by ring, see :func:`_simplify`):
polygons stay valid and keep every hole. The outline moves by at most the tolerance,
except next to a ring's first vertex, which GEOS also drops when it lies within the
tolerance of its neighbours' new edge: there up to twice the tolerance. Neighbouring
polygons are simplified independently, so their shared edges may then part or overlap.
``area_m2`` is measured on the polygon as written.

**Style.** Unless ``style=False``, the GeoPackage also holds a categorized QGIS style
(class colours from the raster's geoseg tag or colour table, names as labels) in its
``layer_styles`` table, QGIS's place for a layer's default style.
"""

from __future__ import annotations

import math
import os
import warnings
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable, Iterable, Literal

import numpy as np

from .areas import MAX_CLASSES, PixelAreas, geodesic_of, pixel_areas
from .errors import ConfigError, RasterError, VectorError, one_line
from .files import AtomicOutput
from .output import check_output_path
from .pipeline import gdal_env
from .progress import CancelFn, ProgressFn, Reporter
from .sources import open_raster, read_class_colours, read_class_names, resolve_nodata

__all__ = ["ClassPolygons", "VectorizeResult", "vectorize_classes", "STRIP_PIXELS", "BATCH", "FIELDS"]

#: Pixels per strip (rounded to whole block rows): the pixels held at once.
STRIP_PIXELS = 1 << 22
#: Features buffered before each write to the GeoPackage.
BATCH = 20_000
#: The layer's fields.
FIELDS = ("class_id", "class_name", "area_m2")
#: Colours for classes the raster gives none (QGIS-like qualitative palette).
PALETTE = ((31, 120, 180), (51, 160, 44), (227, 26, 28), (255, 127, 0), (106, 61, 154),
           (166, 206, 227), (178, 223, 138), (251, 154, 153), (253, 191, 111), (202, 178, 214))
_POLYGONIZE_DTYPES = ("uint8", "uint16", "int16", "int32")


@dataclass(frozen=True)
class ClassPolygons:
    """What was written for one class: polygons and their total ``area_m2``."""

    class_id: int
    class_name: str
    features: int
    area_m2: float


@dataclass
class VectorizeResult:
    output: Path
    layer: str
    classes: list[ClassPolygons]
    area_kind: Literal["planar", "geodesic"]
    dropped: int = 0             # polygons smaller than ``min_area``
    styled: bool = False         # a QGIS style is stored in the GeoPackage
    strips: int = 0
    peak_open_vertices: int = 0  # most vertices of open polygons held at once
    notes: list[str] = field(default_factory=list)

    @property
    def features(self) -> int:
        return sum(c.features for c in self.classes)

    def by_class(self) -> dict[int, ClassPolygons]:
        return {c.class_id: c for c in self.classes}


def vectorize_classes(src: str | os.PathLike, dst: str | os.PathLike, *,
                      classes: Iterable[int] | None = None, min_area: float = 0.0, simplify: float = 0.0,
                      nodata: float | None | Literal["auto"] = "auto", class_names: dict[int, str] | None = None,
                      pixel_size: float | None = None, connectivity: int = 4, band: int = 1,
                      layer: str | None = None, strip_rows: int | None = None, style: bool = True,
                      overwrite: bool = False, progress: ProgressFn | None = None,
                      is_cancelled: CancelFn | None = None) -> VectorizeResult:
    """Polygons of a class raster's classes, written to a GeoPackage (see the module docstring).

    Args:
        src: a single-band integer (or integral float) class raster, any name GDAL opens.
        dst: the ``.gpkg`` to write (atomically: nothing is left on error or cancel).
        classes: class ids to vectorize (default: every value but nodata).
        min_area: drop polygons smaller than this (m², before simplification).
        simplify: simplification tolerance in CRS units (0: exact pixel outlines).
        nodata: ``"auto"`` the raster's; ``None`` vectorizes every value; a number overrides it.
        class_names: id -> name; default from the raster (geoseg tag, RAT or .qml), else
            ``class_<id>``.
        pixel_size: pixel side in metres, for rasters without a CRS (or to override).
        connectivity: 4 (pixels sharing an edge form a polygon) or 8 (corners too).
        layer: the layer's name (default: the output file's stem).
        strip_rows: rows per strip (default: whole blocks, about :data:`STRIP_PIXELS`).
        style: store a categorized QGIS style (class colours, names) in the GeoPackage.
        overwrite: replace an existing output (never the input).
        progress, is_cancelled: see :mod:`geoseg.progress` (one unit per strip).
    """
    import shapely  # noqa: PLC0415
    from rasterio.features import shapes  # noqa: PLC0415
    from rasterio.transform import Affine  # noqa: PLC0415
    from rasterio.windows import Window  # noqa: PLC0415

    if connectivity not in (4, 8):
        raise ConfigError(f"connectivity must be 4 or 8, got {connectivity!r}", option="connectivity")
    for what, opt, v in (("minimum area", "min_area", min_area), ("simplification tolerance", "simplify", simplify)):
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v < 0:
            raise ConfigError(f"{what} must be a finite number >= 0, got {v!r}", option=opt)
    if strip_rows is not None and strip_rows < 1:
        raise ConfigError(f"rows per strip must be >= 1, got {strip_rows}", option="strip_rows")
    keep = None if classes is None else frozenset(int(c) for c in classes)
    target = check_output_path(dst, [src], overwrite, "output")
    if target.suffix.lower() != ".gpkg":
        raise ConfigError(f"output must be a GeoPackage (.gpkg): {target.name}")
    layer_name = layer or target.stem
    reporter = Reporter(progress, is_cancelled)
    reporter.check()

    with open_raster(src) as ds:
        label = Path(str(src)).name
        if not 1 <= band <= ds.count:
            raise RasterError(f"{label} has no band {band}")
        nd = resolve_nodata(ds.nodatavals[band - 1], nodata)
        if keep is not None and nd in keep:
            raise ConfigError(f"class {nd} is the raster's nodata value, which is never vectorized",
                              option="classes")
        names = dict(class_names) if class_names is not None else read_class_names(ds)
        px = pixel_areas(ds.crs, ds.transform, ds.width, ds.height, pixel_size, warn=False)
        if px.kind == "pixels":
            raise RasterError(f"{label} has no CRS, so polygon areas would be in pixels: "
                              "give its pixel size in metres", option="pixel_size")
        measure = _Measure(px, ds.transform, geodesic_of(ds.crs) if px.kind == "geodesic" else None, ds.height)
        colours = read_class_colours(ds, band)
        crs_wkt = ds.crs.to_wkt() if ds.crs is not None else None
        width, height = ds.width, ds.height
        bh = ds.block_shapes[band - 1][0]
        step = strip_rows or max(bh, (STRIP_PIXELS // max(width, 1)) // bh * bh)
        starts = list(range(0, height, step))
        # each block is decoded once, a strip at a time: GDAL's cache need hold no more
        cache = 2 * width * step * np.dtype(ds.dtypes[band - 1]).itemsize + (16 << 20)
        reporter.total = len(starts)

        out = AtomicOutput(target, overwrite)
        geometry_type = "Polygon" if connectivity == 4 else "MultiPolygon"
        writer = _LayerWriter(out.tmp, target.name, layer_name, crs_wkt, geometry_type)
        seen: set[int] = set()
        counts: dict[int, int] = {}
        areas: dict[int, float] = {}
        dropped = 0

        def close(cid: int, pieces: list) -> None:
            """A finished polygon: merge its pieces, measure, filter, simplify, write."""
            nonlocal dropped
            if len(pieces) > 1 and connectivity == 4:
                # the region's rings from numpy, measured and mapped to the CRS before
                # GEOS holds them once: a region can be the size of the raster
                xy, offsets = _merge(pieces)
                area = measure.rings(xy, offsets)
                if area < min_area:
                    dropped += 1
                    return
                g = shapely.from_ragged_array(shapely.GeometryType.POLYGON, measure.xy_to_crs(xy),
                                              (offsets, np.array([0, len(offsets) - 1])))[0]
            else:
                g = pieces[0]
                if len(pieces) > 1:  # 8-connectivity: pieces may meet at a corner only
                    g = shapely.simplify(shapely.union_all(pieces), 0, preserve_topology=False)
                if connectivity == 8 and not g.is_valid:  # GDAL's rings touch themselves at corners
                    g = shapely.make_valid(g, method="structure", keep_collapsed=False)
                area = measure.pixels(g)
                if area < min_area:
                    dropped += 1
                    return
                g = measure.to_crs(g)
            if simplify > 0:
                g = _simplify(g, simplify)
                if g.is_empty:
                    dropped += 1
                    return
                area = measure.geometry(g)
            writer.add(g, cid, names.get(cid, f"class_{cid}"), area)
            counts[cid] = counts.get(cid, 0) + 1
            areas[cid] = areas.get(cid, 0.0) + area

        strips = _Strips(touch_corners=connectivity == 8, close=close)
        try:
            for r0 in starts:
                r1 = min(r0 + step, height)
                try:
                    with gdal_env(cache=cache):
                        block = ds.read(band, window=Window(0, r0, width, r1 - r0))
                except Exception as e:  # noqa: BLE001
                    raise RasterError(f"cannot read {label} (truncated or corrupt?): {one_line(e)}") from None
                values, mask = _classes_of(block, nd, keep, label)
                if values.dtype != np.uint8:
                    seen.update(int(v) for v in np.unique(values[mask]))
                    if len(seen) > MAX_CLASSES:
                        raise RasterError(f"{label} band {band} holds more than {MAX_CLASSES} distinct values: "
                                          "is it a class raster?")
                pieces = []
                if mask.any():
                    for geom, value in shapes(values, mask=mask, connectivity=connectivity,
                                              transform=Affine.translation(0, r0)):
                        pieces.append((shapely.geometry.shape(geom), int(value)))
                seen.update(cid for _, cid in pieces)
                strips.add(r0, r1, pieces, last=r1 == height)
                reporter.step()
            writer.flush()
            ids = sorted(i for i in (set(names) | seen) if i != nd and (keep is None or i in keep))
            result_classes = [ClassPolygons(i, names.get(i, f"class_{i}"), counts.get(i, 0), areas.get(i, 0.0))
                              for i in ids]
            styled = False
            if style:
                palette = iter(PALETTE * (len(ids) // len(PALETTE) + 1))
                cats = [(c.class_id, c.class_name, colours.get(c.class_id) or next(palette)) for c in result_classes]
                writer.write_style(_categorized_qml(cats))
                styled = True
            out.commit()
        except BaseException:
            out.discard()
            _remove_sqlite_files(out.tmp)
            raise
    notes = [f"{dropped} polygons smaller than {min_area:g} m² dropped"] if dropped else []
    return VectorizeResult(target, layer_name, result_classes, "geodesic" if px.kind == "geodesic" else "planar",
                           dropped, styled, len(starts), strips.peak_vertices, notes)


def _simplify(g, tolerance: float):
    """Douglas-Peucker with topology kept (GEOS ``TopologyPreservingSimplifier``), ring by
    ring: each ring stays simple and none disappears. If the rings so simplified make a
    valid polygon (no ring crosses another), that is the result; else the polygon is
    simplified whole, which also keeps rings apart but costs far more for a polygon with
    many holes (a minute and a gigabyte for a region of 3 M vertices and 9 000 holes,
    where ring by ring takes seconds)."""
    import shapely  # noqa: PLC0415
    if g.geom_type != "Polygon" or not len(g.interiors):
        return shapely.simplify(g, tolerance, preserve_topology=True)
    rings = shapely.simplify(shapely.get_rings(g), tolerance, preserve_topology=True)
    out = shapely.polygons(rings[0], holes=rings[1:])
    return out if out.is_valid else shapely.simplify(g, tolerance, preserve_topology=True)


def _classes_of(block: np.ndarray, nd, keep: frozenset[int] | None, label: str) -> tuple[np.ndarray, np.ndarray]:
    """The block as a type GDAL polygonizes (integral values checked) and the mask of
    pixels to vectorize (not nodata, finite, among ``keep``)."""
    valid = np.ones(block.shape, bool)
    if nd is not None and not (isinstance(nd, float) and math.isnan(nd)):
        valid &= block != nd
    if np.issubdtype(block.dtype, np.floating):
        valid &= np.isfinite(block)
        vals = block[valid]
        if vals.size and (not np.array_equal(np.round(vals), vals) or np.abs(vals).max() > 2 ** 31 - 1):
            raise RasterError(f"{label} holds non-integer values; is it really a class raster?")
        block = np.where(valid, block, 0).astype(np.int32)
    elif block.dtype.name not in _POLYGONIZE_DTYPES:
        vals = block[valid]
        if vals.size and (vals.min() < -2 ** 31 or vals.max() > 2 ** 31 - 1):
            raise RasterError(f"{label} holds class values beyond 32-bit integers; is it really a class raster?")
        block = np.where(valid, block, 0).astype(np.int32)
    if keep is not None:
        valid &= np.isin(block, np.fromiter(keep, np.int64, len(keep)))
    return block, valid


class _Measure:
    """Areas in m² (see the module docstring) and the pixel -> CRS coordinate map."""

    def __init__(self, px: PixelAreas, transform, geo, height: int):
        t = transform
        self.t = (t.a, t.b, t.c, t.d, t.e, t.f)
        self.geo = geo
        self.constant = px.constant
        # cumulative area of rows 0..r (m²) for the geodesic pixel-exact sum
        self.cum = None if px.rows is None else np.concatenate([[0.0], np.cumsum(px.row_areas(0, height))])
        det = abs(t.a * t.e - t.b * t.d)
        self.planar_factor = None if px.constant is None else px.constant / det  # m² per CRS unit²
        self.segment = min(math.hypot(t.a, t.d), math.hypot(t.b, t.e))

    def pixels(self, g) -> float:
        """Area of a polygon in pixel coordinates (rows and columns on integers): the
        sum of its pixels' areas."""
        import shapely  # noqa: PLC0415
        if self.cum is None:
            return float(g.area) * self.constant  # exact: integer coordinates
        _kind, xy, offsets = shapely.to_ragged_array(shapely.get_parts(g))
        ring_off, part_off = offsets[0], offsets[1]
        return sum(self.rings(xy[ring_off[p0]:ring_off[p1]], ring_off[p0:p1 + 1] - ring_off[p0])
                   for p0, p1 in zip(part_off[:-1].tolist(), part_off[1:].tolist()))

    def rings(self, xy: np.ndarray, offsets: np.ndarray) -> float:
        """Area of one polygon given as closed rings in pixel coordinates (``offsets``:
        where each ring starts; the exterior first): the sum of its pixels' areas,
        ``∮ x dW(y)`` per ring with ``W`` the cumulative row area (exact: every vertex
        is on the pixel grid)."""
        x = xy[:, 0]
        if self.cum is None:
            dw = np.diff(xy[:, 1]) * self.constant
        else:
            dw = np.diff(self.cum[np.rint(xy[:, 1]).astype(np.int64)])
        seg = x[:-1] * dw
        seg[offsets[1:-1] - 1] = 0.0              # no edge from one ring to the next
        s = np.abs(np.add.reduceat(seg, offsets[:-1])) if len(seg) else np.zeros(1)
        return float(s[0] - s[1:].sum())

    def xy_to_crs(self, xy: np.ndarray) -> np.ndarray:
        a, b, c, d, e, f = self.t
        x, y = xy[:, 0], xy[:, 1]
        return np.column_stack([c + x * a + y * b, f + x * d + y * e])

    def to_crs(self, g):
        import shapely  # noqa: PLC0415
        return shapely.transform(g, self.xy_to_crs)

    def geometry(self, g) -> float:
        """Area of a polygon in CRS coordinates: planar, or geodesic with its edges cut
        to the pixel size."""
        import shapely  # noqa: PLC0415
        if self.geo is None:
            return float(g.area) * self.planar_factor
        geod, deg = self.geo
        g = shapely.segmentize(shapely.orient_polygons(g, exterior_cw=False), self.segment)
        if deg != 1.0:
            g = shapely.transform(g, lambda xy: xy * deg)
        return float(abs(geod.geometry_area_perimeter(g)[0]))


def _merge(pieces: list) -> tuple[np.ndarray, np.ndarray]:
    """One polygon from the pieces of a 4-connected region cut by strip edges, as closed
    rings (exterior first): coordinates and ring offsets, in pixel coordinates.

    The pieces' outlines meet along strip edges only, and their holes never reach a
    strip edge. Every vertex any piece has on a strip edge is added to the others' edges
    there, so shared stretches match edge for edge; oriented alike, the outlines run
    along a shared stretch in opposite directions. Those edge pairs cancel, and the runs
    of edges left are linked end to start into the region's boundary cycles
    (:func:`_stitch`): numpy over the vertices, Python over the runs only, so memory
    stays a few copies of the coordinates (a union in GEOS holds hundreds of bytes per
    vertex). Collinear vertices left on the strip edges are dropped and the pieces' own
    holes added: the polygon polygonizing the region whole gives. Should the cycles not
    make one exterior ring, GEOS's coverage union does the work.
    """
    import shapely  # noqa: PLC0415
    arr = np.empty(len(pieces), dtype=object)
    arr[:] = pieces
    _kind, xy, (ring_off, geom_off) = shapely.to_ragged_array(arr)
    ext = geom_off[:-1]                     # each piece's first ring: its exterior
    is_ext = np.zeros(len(ring_off) - 1, bool)
    is_ext[ext] = True
    b = shapely.bounds(arr)
    seams = np.array(sorted(set(b[:, 1].tolist()) & set(b[:, 3].tolist())))
    ext_v = np.repeat(is_ext, np.diff(ring_off))
    on = ext_v & np.isin(xy[:, 1], seams)
    breaks = {y: np.unique(xy[on & (xy[:, 1] == y), 0]) for y in seams.tolist()}
    del on
    shells = []
    for k, r in enumerate(ext.tolist()):
        ring = _with_breaks(xy[ring_off[r]:ring_off[r + 1]], {y: breaks[y] for y in (b[k, 1], b[k, 3]) if y in breaks})
        ring = ring[:-1]  # open
        shells.append(ring if _signed_area(ring) > 0 else ring[::-1])
    cycles = _stitch(shells, seams)
    if cycles is None:  # not one exterior ring: let GEOS decide
        union = shapely.coverage_union_all([shapely.polygons(np.vstack([r, r[:1]])) for r in shells])
        _kind, cxy, (coff, _g) = shapely.to_ragged_array([union])
        cycles = [cxy[coff[m]:coff[m + 1] - 1] for m in range(len(coff) - 1)]
    del shells
    rings = [_without_collinear(c) for c in cycles]
    holes = xy[~ext_v]                       # closed rings, as GDAL made them
    lens = np.r_[[len(r) for r in rings], np.diff(ring_off)[~is_ext]]
    return np.concatenate(rings + [holes]), np.r_[0, np.cumsum(lens)]


def _without_collinear(ring: np.ndarray) -> np.ndarray:
    """An open ring (integer coordinates) closed, without the vertices that lie on a
    straight line between their neighbours."""
    d = np.diff(ring, axis=0, append=ring[:1])      # edge leaving each vertex
    din = np.roll(d, 1, axis=0)                     # edge reaching it
    kept = ring[din[:, 0] * d[:, 1] - din[:, 1] * d[:, 0] != 0].astype(np.float64)
    return np.vstack([kept, kept[:1]])


def _signed_area(ring: np.ndarray) -> float:
    """Shoelace area of an open or closed ring (positive: counter-clockwise with y up)."""
    x, y = ring[:, 0].astype(np.float64), ring[:, 1].astype(np.float64)
    return 0.5 * float(np.dot(x, np.roll(y, -1)) - np.dot(np.roll(x, -1), y))


def _stitch(shells: list[np.ndarray], seams: np.ndarray) -> list[np.ndarray] | None:
    """The boundary cycles of the union of ``shells`` (open rings, oriented alike, integer
    coordinates, meeting edge for edge along the lines ``y in seams``): the exterior ring
    first, then the holes the union closes. ``None`` when the cycles are not one
    exterior ring and holes (never seen for pieces of one 4-connected region)."""
    lens = np.array([len(r) for r in shells])
    first = np.r_[0, np.cumsum(lens)[:-1]]
    v = np.concatenate(shells).astype(np.int64)
    n = len(v)
    ring = np.repeat(np.arange(len(shells)), lens)
    i = np.arange(n)
    nxt = i + 1
    nxt[first + lens - 1] = first
    prev = np.empty(n, np.int64)
    prev[nxt] = i
    p, q = v, v[nxt]
    width = int(v.max()) + 2  # above every x and y: keys x * width + y are unique
    sel = np.flatnonzero((p[:, 1] == q[:, 1]) & np.isin(p[:, 1], seams.astype(np.int64)))
    key = (p[sel, 1] * width + np.minimum(p[sel, 0], q[sel, 0])) * width + np.maximum(p[sel, 0], q[sel, 0])
    _u, inv, cnt = np.unique(key, return_inverse=True, return_counts=True)
    if (cnt > 2).any():
        return None
    paired = cnt[inv] == 2
    pairs = sel[paired][np.argsort(key[paired], kind="stable")]  # the two edges of a pair side by side
    if ((q[pairs[0::2], 0] - p[pairs[0::2], 0]) != -(q[pairs[1::2], 0] - p[pairs[1::2], 0])).any():
        return None  # not opposite: the shells are not oriented alike
    cancel = np.zeros(n, bool)
    cancel[pairs] = True
    alive = ~cancel
    if not cancel.any() or (np.bincount(ring[cancel], minlength=len(shells)) == 0).any() \
            or (np.bincount(ring[alive], minlength=len(shells)) == 0).any():
        return None
    run_starts = np.flatnonzero(alive & cancel[prev])
    run_ends = np.flatnonzero(alive & cancel[nxt])
    j = np.searchsorted(run_ends, run_starts)
    same = (j < len(run_ends)) & (ring[run_ends[np.minimum(j, len(run_ends) - 1)]] == ring[run_starts])
    ends = run_ends[np.where(same, j, np.searchsorted(run_ends, first[ring[run_starts]]))]
    start_key = (v[run_starts, 0] * width + v[run_starts, 1]).tolist()
    where = {k: r for r, k in enumerate(start_key)}
    if len(where) != len(start_key):
        return None  # two runs leave one point: ambiguous
    end_pt = v[nxt[ends]]
    follow = [where.get(k, -1) for k in (end_pt[:, 0] * width + end_pt[:, 1]).tolist()]
    if min(follow) < 0:
        return None
    seen = np.zeros(len(run_starts), bool)
    cycles = []
    for r0 in range(len(run_starts)):
        if seen[r0]:
            continue
        parts, r = [], r0
        while not seen[r]:
            seen[r] = True
            s, e = run_starts[r], ends[r]
            if e >= s:
                parts.append(v[s:e + 1])
            else:  # the run wraps past its ring's start
                f = first[ring[s]]
                parts.append(v[s:f + lens[ring[s]]])
                parts.append(v[f:e + 1])
            r = follow[r]
        if r != r0:
            return None
        cycles.extend(_split_touching(np.concatenate(parts), width))
    area = np.array([_signed_area(c) for c in cycles])
    if (area > 0).sum() != 1 or (area == 0).any():
        return None
    k = int(np.argmax(area))
    return [cycles[k]] + [c for m, c in enumerate(cycles) if m != k]


def _split_touching(cycle: np.ndarray, width: int) -> list[np.ndarray]:
    """A ring that passes a point twice (two pieces' corners meeting on a strip edge) as
    simple rings: the OGC form, where a hole may touch the exterior at a point."""
    out, todo = [], [cycle]
    while todo:
        c = todo.pop()
        key = c[:, 0] * width + c[:, 1]
        order = np.argsort(key, kind="stable")
        dup = np.flatnonzero(key[order][1:] == key[order][:-1])
        if len(dup) == 0:
            out.append(c)
            continue
        i, j = sorted((int(order[dup[0]]), int(order[dup[0] + 1])))
        todo.append(c[i:j])
        todo.append(np.concatenate([c[:i], c[j:]]))
    return out


def _with_breaks(ring: np.ndarray, breaks: dict[float, np.ndarray]) -> np.ndarray:
    """A closed ring's coordinates with the x positions ``breaks[y]`` inserted into its
    edges lying on each line ``y``, in the edges' direction."""
    x, y = ring[:, 0], ring[:, 1]
    pos, vals = [], []
    for yy, bx in breaks.items():
        for i in np.flatnonzero((y[:-1] == yy) & (y[1:] == yy)).tolist():
            a, c = x[i], x[i + 1]
            k0, k1 = np.searchsorted(bx, min(a, c), "right"), np.searchsorted(bx, max(a, c), "left")
            if k1 > k0:
                v = bx[k0:k1] if a < c else bx[k0:k1][::-1]
                pos.append(np.full(len(v), i + 1))
                vals.append(np.column_stack([v, np.full(len(v), yy)]))
    if not pos:
        return ring
    return np.insert(ring, np.concatenate(pos), np.concatenate(vals), axis=0)


@dataclass
class _Group:
    cid: int
    pieces: list
    bottom: list  # (x0, x1) stretches of the strip's lower edge it covers


def _seam(g, y: float) -> list[tuple[float, float]]:
    """Stretches (x0, x1) of the horizontal line ``y`` on the polygon's exterior."""
    import shapely  # noqa: PLC0415
    xy = shapely.get_coordinates(shapely.get_exterior_ring(shapely.get_parts(g)))
    on = (xy[:-1, 1] == y) & (xy[1:, 1] == y)
    x0, x1 = xy[:-1, 0][on], xy[1:, 0][on]
    return sorted(zip(np.minimum(x0, x1).tolist(), np.maximum(x0, x1).tolist()))


class _Strips:
    """Joins the pieces of polygons that strip edges cut (see the module docstring).

    Pieces are keyed by the strip edge they reach: a piece of strip k reaching its last
    row (``y = r1``) joins the pieces of strip k+1 of the same class whose first-row
    stretches on ``y = r1`` overlap its own by a positive length (or touch, with
    ``touch_corners``). Connected pieces form a group; ``close(class_id, pieces)`` is
    called once per group when no piece of it reaches the current strip's last row.
    """

    def __init__(self, touch_corners: bool, close: Callable[[int, list], None]):
        self.touch = touch_corners
        self.close = close
        self.open: list[_Group] = []
        self.peak_vertices = 0

    def add(self, r0: int, r1: int, pieces: list[tuple[object, int]], last: bool) -> None:
        import shapely  # noqa: PLC0415
        n_open = len(self.open)
        parent = list(range(n_open + len(pieces)))

        def find(i: int) -> int:
            while parent[i] != i:
                parent[i] = parent[parent[i]]
                i = parent[i]
            return i

        if n_open:
            sides: dict[int, tuple[list, list]] = {}
            for gi, grp in enumerate(self.open):
                sides.setdefault(grp.cid, ([], []))[0].extend((a, b, gi) for a, b in grp.bottom)
            for pi, (g, cid) in enumerate(pieces):
                if cid in sides and g.bounds[1] == r0:
                    sides[cid][1].extend((a, b, n_open + pi) for a, b in _seam(g, r0))
            for above, below in sides.values():
                for i, j in self._overlaps(sorted(above), sorted(below)):
                    ri, rj = find(i), find(j)
                    if ri != rj:
                        parent[max(ri, rj)] = min(ri, rj)
        members: dict[int, list[int]] = {}
        for i in range(len(parent)):
            members.setdefault(find(i), []).append(i)
        still_open = []
        for group in members.values():  # in order of first member: open groups, then GDAL's order
            geoms: list = []
            bottom: list = []
            cid = 0
            for m in group:
                if m < n_open:
                    geoms.extend(self.open[m].pieces)
                    cid = self.open[m].cid
                else:
                    g, cid = pieces[m - n_open]
                    geoms.append(g)
                    if not last and g.bounds[3] == r1:
                        bottom.extend(_seam(g, r1))
            if bottom:
                still_open.append(_Group(cid, geoms, bottom))
            else:
                self.close(cid, geoms)
        self.open = still_open
        if still_open:
            held = sum(int(shapely.get_num_coordinates(grp.pieces).sum()) for grp in still_open)
            self.peak_vertices = max(self.peak_vertices, held)

    def _overlaps(self, above: list, below: list):
        """Pairs (i, j) of sorted, disjoint stretches of the two lists that overlap."""
        i = j = 0
        while i < len(above) and j < len(below):
            a0, a1, ai = above[i]
            b0, b1, bj = below[j]
            lo, hi = max(a0, b0), min(a1, b1)
            if hi > lo or (self.touch and hi == lo):
                yield ai, bj
            if a1 <= b1:
                i += 1
            else:
                j += 1


class _LayerWriter:
    """Buffers features and appends them to the GeoPackage layer through pyogrio."""

    def __init__(self, path: Path, label: str, layer: str, crs_wkt: str | None, geometry_type: str):
        self.path, self.label, self.layer = path, label, layer
        self.crs = crs_wkt
        self.geometry_type = geometry_type
        self.buf: list[tuple[object, int, str, float]] = []
        self.created = False

    def add(self, g, cid: int, name: str, area: float) -> None:
        self.buf.append((g, cid, name, area))
        if len(self.buf) >= BATCH:
            self.flush()

    def _write(self, geometry, field_data, fields, **kw) -> None:
        import pyogrio.raw  # noqa: PLC0415
        if kw.get("geometry_type") and self.crs is None:
            # pyogrio warns about a layer without a CRS: here that is a raster without one, whose
            # pixel size was given on purpose. A narrow process-wide filter (installed where it
            # applies): ``warnings.catch_warnings`` is not thread-safe, QGIS runs algorithms
            # off the main thread.
            warnings.filterwarnings("ignore", message="'crs' was not provided", category=UserWarning)
        try:
            pyogrio.raw.write(self.path, geometry, field_data, fields=list(fields), driver="GPKG", **kw)
        except Exception as e:  # noqa: BLE001  (pyogrio's DataSourceError, FieldError, ...)
            raise VectorError(f"cannot write {self.label}: {one_line(e)}") from None

    def flush(self) -> None:
        """Write the buffered features (the first call creates the layer, even empty)."""
        import shapely  # noqa: PLC0415
        if self.created and not self.buf:
            return
        geoms = np.empty(len(self.buf), dtype=object)
        geoms[:] = [b[0] for b in self.buf]
        data = [np.array([b[1] for b in self.buf], np.int32),
                np.array([b[2] for b in self.buf], dtype=object),
                np.array([b[3] for b in self.buf], np.float64)]
        self._write(shapely.to_wkb(geoms) if len(geoms) else geoms, data, FIELDS, layer=self.layer,
                    geometry_type=self.geometry_type, crs=self.crs, append=self.created,
                    promote_to_multi=self.geometry_type == "MultiPolygon",
                    # GeoPackage 1.2: read without a warning by older GDALs (QGIS 3.22's 3.6)
                    dataset_options=None if self.created else {"VERSION": "1.2"})
        self.created = True
        self.buf.clear()

    def write_style(self, qml: str) -> None:
        """The layer's default QGIS style, in the ``layer_styles`` table as QGIS writes it."""
        now = np.datetime64(datetime.now(timezone.utc).replace(tzinfo=None), "ms")
        rows = {"f_table_catalog": "", "f_table_schema": "", "f_table_name": self.layer,
                "f_geometry_column": "geom", "styleName": self.layer, "styleQML": qml, "styleSLD": "",
                "useAsDefault": True, "description": "geoseg: class colours and names", "owner": "",
                "ui": "", "update_time": now}
        data = [np.array([v], dtype=bool if isinstance(v, bool) else None if isinstance(v, np.datetime64)
                         else object) for v in rows.values()]
        self._write(None, data, rows, layer="layer_styles", geometry_type=None, layer_options={"FID": "id"})


def _categorized_qml(cats: list[tuple[int, str, tuple[int, int, int]]]) -> str:
    """A QGIS vector style: fill colour per ``class_id``, the class names as labels."""
    root = ET.Element("qgis", version="3.22.0", styleCategories="Symbology")
    r = ET.SubElement(root, "renderer-v2", type="categorizedSymbol", attr="class_id", symbollevels="0",
                      enableorderby="0", forceraster="0")
    cat_el = ET.SubElement(r, "categories")
    sym_el = ET.SubElement(r, "symbols")
    for k, (cid, name, rgb) in enumerate(cats):
        ET.SubElement(cat_el, "category", value=str(cid), symbol=str(k), label=name, render="true")
        sym = ET.SubElement(sym_el, "symbol", type="fill", name=str(k), alpha="1", clip_to_extent="1",
                            force_rhr="0")
        lay = ET.SubElement(sym, "layer", {"class": "SimpleFill", "enabled": "1", "locked": "0", "pass": "0"})
        edge = tuple(int(v * 0.7) for v in rgb)
        props = {"color": "{},{},{},255".format(*rgb), "outline_color": "{},{},{},255".format(*edge),
                 "outline_style": "solid", "outline_width": "0.1", "outline_width_unit": "MM", "style": "solid",
                 "joinstyle": "bevel"}
        opt = ET.SubElement(lay, "Option", type="Map")  # QGIS >= 3.26 reads these,
        for key, v in props.items():
            ET.SubElement(opt, "Option", name=key, value=v, type="QString")
        for key, v in props.items():                    # QGIS 3.22 these
            ET.SubElement(lay, "prop", k=key, v=v)
    ET.indent(root)
    return "<!DOCTYPE qgis PUBLIC 'http://mrcc.com/qgis.dtd' 'SYSTEM'>\n" + ET.tostring(root, encoding="unicode")


def _remove_sqlite_files(tmp: Path) -> None:
    for suffix in ("-journal", "-wal", "-shm"):
        tmp.with_name(tmp.name + suffix).unlink(missing_ok=True)
