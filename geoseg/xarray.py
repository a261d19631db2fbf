"""geoseg from xarray: segment a ``(band, y, x)`` DataArray, get a class DataArray.

::

    da (numpy or dask, rioxarray / odc-geo CRS) ──> make_plan (bands by name, nodata,
        radiometry from the array) ──> numpy: the local pipeline, now
                                    ──> dask: one delayed task per row of output blocks
                                        (process_task on that row's input rows), lazy
    ──> uint8 (y, x) DataArray: classes, nodata 255, CF flag_values/flag_meanings,
        the input's coordinates and CRS; chunks = geoseg's output blocks

The pixels are those :func:`geoseg.predict.predict_raster` writes for the same data
and options, whatever the input's chunking: every task reads exactly the input rows
its windows need (with their context margin) and batches its windows as the local
run does. :func:`areas` gives the per-class area table (the CSV's columns) and
:func:`to_geotiff` writes the result through geoseg's styled, atomic writer.

Needs the ``xarray`` extra (``pip install 'geoseg[xarray]'``: xarray, rioxarray,
dask, distributed, odc-geo). On a ``dask.distributed`` cluster the tasks run on the
workers, which load the model bundle once each (the bundle path must be on storage
they see).

Example::

    import rioxarray, geoseg.xarray as gx
    da = rioxarray.open_rasterio("scene.tif", chunks={"x": 2048, "y": 2048})
    classes = gx.predict(da, "water.geoseg", blend="cosine")   # lazy
    print(gx.areas(classes))                                     # computes
    gx.to_geotiff(classes, "water.tif")
"""

from __future__ import annotations

import io
import json
import os
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Sequence

import numpy as np

from .areas import AreaAccumulator, AreaTable, areas_csv_text, make_table, pixel_areas
from .bundle import ClassInfo
from .errors import ConfigError, MissingDependencyError, RasterError
from .sources import CLASS_NODATA, ArraySource
from .unit import PredictOptions, make_plan, process_task
from .windows import Rect

__all__ = ["predict", "areas", "to_geotiff", "DataArraySource"]

#: dims taken as the raster's rows and columns, in order of preference
_Y_DIMS = ("y", "latitude", "lat", "northing", "rows")
_X_DIMS = ("x", "longitude", "lon", "easting", "cols")


def _xr():
    try:
        import xarray  # noqa: PLC0415
    except ImportError:
        raise MissingDependencyError("geoseg.xarray needs xarray: pip install 'geoseg[xarray]'") from None
    try:  # the .rio accessor (CRS, transform, nodata) when rioxarray is installed
        import rioxarray  # noqa: F401,PLC0415
    except ImportError:
        pass
    return xarray


def _is_dask(data: Any) -> bool:
    return type(data).__module__.startswith("dask.")


def _dims(da) -> tuple[str, str, str | None]:
    """(band dim or None, y dim, x dim) of a 2-D or 3-D DataArray."""
    rio = getattr(da, "rio", None)
    y = x = None
    if rio is not None:
        try:
            y, x = rio.y_dim, rio.x_dim
        except Exception:  # noqa: BLE001 - rioxarray raises its own MissingSpatialDimensionError
            y = x = None
    if y is None:
        y = next((d for d in _Y_DIMS if d in da.dims), None)
        x = next((d for d in _X_DIMS if d in da.dims), None)
    if y is None or x is None:
        raise RasterError(f"cannot tell the DataArray's rows and columns from its dims {tuple(da.dims)}: "
                          "name them y and x (or latitude and longitude)")
    others = [d for d in da.dims if d not in (y, x)]
    if len(others) > 1:
        raise RasterError(f"expected a (band, y, x) DataArray, got dims {tuple(da.dims)}: select one time step "
                          "first (e.g. da.isel(time=0))")
    return (others[0] if others else None), y, x


def _crs_transform(da):
    """The DataArray's CRS and affine transform (rioxarray, then odc-geo conventions)."""
    crs = transform = None
    rio = getattr(da, "rio", None)
    if rio is not None:
        try:
            crs = rio.crs
            transform = rio.transform(recalc=False)
        except Exception:  # noqa: BLE001
            crs = transform = None
    if crs is None:
        try:
            import odc.geo.xr  # noqa: F401,PLC0415  (registers .odc)
            gb = da.odc.geobox
            if gb is not None:
                crs, transform = str(gb.crs), gb.affine
        except Exception:  # noqa: BLE001
            pass
    if transform is None or (crs is None and transform.is_identity):
        from affine import Affine  # noqa: PLC0415
        transform = Affine.identity() if transform is None else transform
    return crs, transform


def _per_band(value: Any, n: int) -> list:
    if value is None:
        return [None] * n
    if np.ndim(value) == 0:
        return [value] * n
    vals = list(np.asarray(value).ravel())
    return vals if len(vals) == n else [None] * n


def _nodata(da, n: int) -> list[float | None]:
    """Per band nodata: rioxarray's, else ``_FillValue`` in attrs or encoding, else
    GDAL's ``nodatavals``. NaN means none (NaN pixels are invalid anyway)."""
    nd = None
    rio = getattr(da, "rio", None)
    if rio is not None:
        try:
            nd = rio.nodata
            if nd is None:
                nd = rio.encoded_nodata
        except Exception:  # noqa: BLE001
            nd = None
    if nd is None:
        nd = da.attrs.get("_FillValue", da.encoding.get("_FillValue", da.attrs.get("nodatavals")))
    vals = []
    for v in _per_band(nd, n):
        v = None if v is None else float(v)
        vals.append(None if v is None or np.isnan(v) else v)
    return vals


def _band_names(da, band_dim: str | None, n: int) -> list[str | None]:
    """Band names from the band coordinate (strings), else rioxarray's ``long_name``."""
    if band_dim is not None and band_dim in da.coords:
        vals = [v.item() if hasattr(v, "item") else v for v in da.coords[band_dim].values]
        if all(isinstance(v, str) for v in vals):
            return list(vals)
    ln = da.attrs.get("long_name")
    if isinstance(ln, (list, tuple)) and len(ln) == n and all(isinstance(v, str) for v in ln):
        return list(ln)
    return [None] * n


def _radiometry(da, n: int) -> list[tuple[float, float]] | None:
    """Per band (scale, offset) when the array still holds raw DNs with CF
    ``scale_factor``/``add_offset`` attributes (rioxarray without mask_and_scale)."""
    sc, of = da.attrs.get("scale_factor"), da.attrs.get("add_offset")
    if sc is None and of is None:
        return None
    scales = _per_band(1.0 if sc is None else sc, n)
    offsets = _per_band(0.0 if of is None else of, n)
    pairs = [(float(s), float(o)) for s, o in zip(scales, offsets) if s is not None and o is not None]
    return pairs if len(pairs) == n and any(p != (1.0, 0.0) for p in pairs) else None


class DataArraySource(ArraySource):
    """A ``(band, y, x)`` DataArray as a :class:`geoseg.sources.Source`: its CRS,
    transform, band names, nodata and radiometry as the DataArray states them. A
    dask-backed array stays lazy: ``read`` computes only the rows asked for."""

    def __init__(self, da, *, nodata: float | Sequence[float | None] | None = None, name: str = "<DataArray>"):
        band_dim, ydim, xdim = _dims(da)
        if band_dim is None:
            da = da.expand_dims("band")
            band_dim = "band"
        da = da.transpose(band_dim, ydim, xdim)
        data = da.data
        n = data.shape[0]
        crs, transform = _crs_transform(da)
        nd = nodata if nodata is not None else _nodata(da, n)
        lazy = _is_dask(data)
        # ArraySource checks and stores the metadata; a lazy array is not converted
        super().__init__(np.empty((n, 1, 1), data.dtype) if lazy else np.asarray(data), crs=crs,
                         transform=transform, nodata=nd, band_names=_band_names(da, band_dim, n),
                         name=name or str(da.name), radiometry=_radiometry(da, n))
        self.array = data
        self.count, self.height, self.width = data.shape
        self.dims = (band_dim, ydim, xdim)
        self.lazy = lazy
        #: a dask array's chunk (rows, cols): the plan's sample reads whole chunks
        self.block_shape = (data.chunks[1][0], data.chunks[2][0]) if lazy else None

    def read(self, bands: Sequence[int], rect: Rect, masked: bool) -> tuple[np.ndarray, np.ndarray]:
        sl = rect.slices()
        raw = np.asarray(self.array[[b - 1 for b in bands], sl[0], sl[1]])
        valid = self._valid(bands, raw) if masked else np.ones(raw.shape[1:], bool)
        return raw.astype(np.float32), valid

    def read_decimated(self, bands: Sequence[int], height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
        """The whole array decimated (nearest; quick looks only: the plan's checks read
        whole chunks on a lattice, :func:`geoseg.unit.sample_rects`)."""
        rows = ((np.arange(height) + 0.5) * self.height / height).astype(np.int64)
        cols = ((np.arange(width) + 0.5) * self.width / width).astype(np.int64)
        raw = np.asarray(self.array[[b - 1 for b in bands]][:, rows][:, :, cols])
        return raw.astype(np.float32), self._valid(bands, raw)


class _RowsSource(ArraySource):
    """The input rows ``row0 ..`` of a ``height`` x ``width`` raster, held in memory
    (the plan's bands only, in plan order): what one task reads."""

    def __init__(self, array: np.ndarray, row0: int, height: int, nodata: Sequence[float | None]):
        super().__init__(array, nodata=list(nodata))
        self.row0, self.height = row0, height

    def read(self, bands, rect: Rect, masked: bool):
        return super().read(bands, Rect(rect.col, rect.row - self.row0, rect.width, rect.height), masked)


def _model_handle(model: Any, options: PredictOptions):
    """The bundle's metadata and what a task turns into a forward pass: a ModelRef
    (picklable, loaded once per process) or, for a model in memory, its forward."""
    from .predict import resolve_model  # noqa: PLC0415
    if isinstance(model, (str, os.PathLike)):
        from .model import ModelRef  # noqa: PLC0415
        model = ModelRef.of(model, options.tta, options.runtime, options.precision)
    meta, get_forward = resolve_model(model, options)
    from .model import ModelRef  # noqa: PLC0415
    return meta, (model if isinstance(model, ModelRef) else get_forward())


def _forward(handle):
    from .model import ModelRef, load_forward  # noqa: PLC0415
    return load_forward(handle) if isinstance(handle, ModelRef) else handle


def _row_task(piece: np.ndarray, plan, index: int, row0: int, nodata: tuple, handle) -> tuple:
    """One task: the row ``index`` of output blocks from the input rows it needs."""
    src = _RowsSource(np.asarray(piece), row0, plan.grid.height, nodata)
    results = process_task(plan, plan.tasks()[index], _forward(handle), src)
    classes = np.concatenate([r.classes for r in results], axis=1)
    conf = np.concatenate([r.confidence for r in results], axis=1) if plan.confidence else None
    return classes, conf


def _options(options: PredictOptions | None, kw: dict) -> PredictOptions:
    if options is not None and kw:
        raise ConfigError("give options either as a PredictOptions or as keywords, not both")
    if options is None:
        try:
            options = PredictOptions(**kw)
        except TypeError as e:
            raise ConfigError(f"unknown option: {e}") from None
    return options


def predict(da, model: Any, *, confidence: bool = False, nodata: float | Sequence[float | None] | None = None,
            options: PredictOptions | None = None, **kw: Any):
    """Segment a ``(band, y, x)`` DataArray (numpy- or dask-backed) with a model bundle.

    Args:
        da: the image; CRS and transform as rioxarray or odc-geo state them; band
            names from the band coordinate (or rioxarray's ``long_name``) matched to
            the model's through the same alias table as the CLI (B2 = B02 = blue).
        model: a ``.geoseg`` bundle path (or a ModelRef / LoadedModel).
        confidence: also return the winning probability (uint8 %, nodata 255): the
            result is then a Dataset with ``classes`` and ``confidence``.
        nodata: override the array's nodata (``_FillValue``, rioxarray's nodata);
            NaN is always nodata.
        options / keywords: :class:`geoseg.predict.PredictOptions` (tile_size,
            overlap, blend, tta, bands, input_scale, input_offset, src_nodata...).

    Returns:
        a uint8 ``(y, x)`` DataArray with the input's coordinates and CRS, nodata 255,
        CF ``flag_values``/``flag_meanings`` and the class colours (``flag_colors``).
        Lazy when ``da`` is dask-backed, chunked as geoseg's output blocks; the pixels
        are those :func:`geoseg.predict.predict_raster` writes, for any chunking.
    """
    xr = _xr()
    if not isinstance(da, xr.DataArray):
        raise ConfigError(f"expected an xarray.DataArray, got {type(da).__name__} (a Dataset: pick its "
                          "bands with ds.to_array('band'))")
    opts = _options(options, kw)
    if confidence and not opts.confidence:
        opts = replace(opts, confidence=True)
    src = DataArraySource(da, nodata=nodata, name=str(da.name) if da.name is not None else "<DataArray>")
    meta, handle = _model_handle(model, opts)
    plan = make_plan(src, meta, opts)
    h, w = src.height, src.width
    if src.lazy:
        classes, conf = _lazy(src, plan, handle)
    else:  # in memory: the local pipeline, now
        from .pipeline import run_plan  # noqa: PLC0415
        from .predict import ArraySink  # noqa: PLC0415
        from .progress import Reporter  # noqa: PLC0415
        sink = ArraySink(h, w, opts.confidence)
        run_plan(plan, _forward(handle), sink.write, Reporter(None, None, total=len(plan.grid)), opts.prefetch)
        classes, conf = sink.classes, sink.confidence
    _, ydim, xdim = src.dims
    from .model import ModelRef  # noqa: PLC0415
    from .predict import output_tags, runtime_label  # noqa: PLC0415
    runtime = runtime_label(handle if isinstance(handle, ModelRef) else model, opts)
    attrs = _class_attrs(meta.classes, meta.background, output_tags(meta, plan, opts, runtime))
    coords = {d: da.coords[d] for d in (ydim, xdim) if d in da.coords}
    for name, c in da.coords.items():  # scalar coords (spatial_ref, time) travel along
        if name not in coords and not c.dims:
            coords[name] = c
    out = xr.DataArray(classes, dims=(ydim, xdim), coords=coords, name="classes", attrs=attrs)
    out = _georeference(out, src)
    assert out.shape == (h, w)
    if not opts.confidence:
        return out
    c = xr.DataArray(conf, dims=(ydim, xdim), coords=coords, name="confidence",
                     attrs={"long_name": "winning class probability", "units": "%", "_FillValue": CLASS_NODATA})
    c = _georeference(c, src, nodata_attr=False)
    return xr.Dataset({"classes": out, "confidence": c})


def _lazy(src: DataArraySource, plan, handle):
    """Dask arrays of classes (and confidence), one delayed task per row of output
    blocks over exactly the input rows its windows read, chunked as the blocks."""
    import dask  # noqa: PLC0415
    import dask.array as dsa  # noqa: PLC0415
    band_idx = [b - 1 for b in plan.bands]
    task_plan = replace(plan, source=None, bands=tuple(range(1, len(band_idx) + 1)))
    nodata = tuple(src.nodatavals[i] for i in band_idx)
    plan_d = dask.delayed(task_plan, pure=True)
    handle_d = dask.delayed(handle, pure=True)
    full = Rect(0, 0, src.width, src.height)
    rows_c, rows_p = [], []
    for i, units in enumerate(plan.tasks()):
        rect = units[0].read_rect
        for u in units[1:]:
            rect = rect.union(u.read_rect)
        inside = rect.intersection(full)
        piece = src.array[band_idx, inside.row:inside.row_stop, :]
        part = dask.delayed(_row_task, pure=True, nout=2)(piece, plan_d, i, inside.row, nodata, handle_d)
        bh = units[0].region.height
        rows_c.append(dsa.from_delayed(part[0], (bh, src.width), np.uint8))
        if plan.confidence:
            rows_p.append(dsa.from_delayed(part[1], (bh, src.width), np.uint8))
    b = plan.grid.block
    classes = dsa.concatenate(rows_c, axis=0).rechunk((b, b))
    conf = dsa.concatenate(rows_p, axis=0).rechunk((b, b)) if plan.confidence else None
    return classes, conf


def _class_attrs(classes: Sequence[ClassInfo], background: int | None, tags: dict[str, str]) -> dict[str, Any]:
    """CF flags (names with spaces as underscores), colours, and geoseg's own record
    of the classes and run (so :func:`to_geotiff` writes the same styled file)."""
    return {
        "long_name": "classes", "flag_values": np.array([c.id for c in classes], np.uint8),
        "flag_meanings": " ".join(c.name.replace(" ", "_") for c in classes),
        "flag_colors": " ".join(c.color for c in classes),
        "geoseg_classes": json.dumps([{"id": c.id, "name": c.name, "color": c.color} for c in classes]),
        **({"geoseg_background": int(background)} if background is not None else {}),
        "geoseg_tags": json.dumps(tags),
    }


def _georeference(out, src: DataArraySource, nodata_attr: bool = True):
    """CRS, transform and nodata in rioxarray's conventions (when installed)."""
    if getattr(out, "rio", None) is not None:
        if src.crs is not None:
            out = out.rio.write_crs(src.crs.to_wkt())
        out = out.rio.write_transform(src.transform)
        if nodata_attr:
            out = out.rio.write_nodata(CLASS_NODATA, encoded=False)
    elif nodata_attr:
        out.attrs["_FillValue"] = CLASS_NODATA
    return out


def _classes_of(da) -> tuple[list[ClassInfo], int | None]:
    """The classes a result DataArray carries (geoseg's record, else CF flags)."""
    rec = da.attrs.get("geoseg_classes")
    if rec:
        classes = [ClassInfo(int(c["id"]), str(c["name"]), str(c["color"])) for c in json.loads(rec)]
    elif "flag_values" in da.attrs:
        vals = [int(v) for v in np.atleast_1d(da.attrs["flag_values"])]
        names = str(da.attrs.get("flag_meanings", "")).split() or [f"class_{v}" for v in vals]
        colors = str(da.attrs.get("flag_colors", "")).split() or ["#808080"] * len(vals)
        if not (len(names) == len(colors) == len(vals)):
            raise RasterError("flag_values, flag_meanings and flag_colors disagree in length")
        classes = [ClassInfo(v, n.replace("_", " "), c) for v, n, c in zip(vals, names, colors)]
    else:
        raise RasterError("the DataArray does not say its classes (no flag_values): is it a class raster "
                          "from geoseg.xarray.predict?")
    bg = da.attrs.get("geoseg_background")
    return classes, (None if bg is None else int(bg))


def _classes_array(obj):
    xr = _xr()
    if isinstance(obj, xr.Dataset):
        if "classes" not in obj:
            raise RasterError("the Dataset has no 'classes' variable")
        return obj["classes"], obj.get("confidence")
    if not isinstance(obj, xr.DataArray):
        raise ConfigError(f"expected a DataArray or Dataset from geoseg.xarray.predict, got {type(obj).__name__}")
    return obj, None


def _strips(da, ydim: str, rows: int):
    """Row strips of ``rows`` rows as numpy arrays, computed one at a time."""
    for r0 in range(0, da.sizes[ydim], rows):
        yield r0, np.asarray(da.isel({ydim: slice(r0, r0 + rows)}).values)


def _grid_of(da):
    if da.ndim != 2:
        raise RasterError(f"expected a (y, x) class DataArray, got dims {tuple(da.dims)}")
    _, ydim, xdim = _dims(da)
    da = da.transpose(ydim, xdim)
    crs, transform = _crs_transform(da)
    return da, ydim, crs, transform


def areas(obj) -> Any:
    """The per-class area table of a class DataArray (or predict's Dataset) as a
    pandas DataFrame with the area CSV's columns (class_id, class_name, pixels,
    area_m2, area_ha, area_km2, percent); geodesic areas for a geographic CRS. Equal
    to ``geoseg areas`` on the GeoTIFF :func:`to_geotiff` writes. Computes a dask
    array strip by strip (memory: one strip)."""
    import pandas as pd  # noqa: PLC0415  (installed with xarray)
    da, _ = _classes_array(obj)
    table = _area_table(da)
    df = pd.read_csv(io.StringIO(areas_csv_text(table)))
    df.attrs["kind"] = table.kind
    df.attrs["notes"] = list(table.notes)
    return df


def _area_table(da) -> AreaTable:
    classes, _ = _classes_of(da)
    da, ydim, crs, transform = _grid_of(da)
    h, w = da.shape
    px = pixel_areas(crs, transform, w, h, warn=False)
    acc = AreaAccumulator(px, CLASS_NODATA)
    for r0, strip in _strips(da, ydim, _strip_rows(da, ydim)):
        acc.add(strip.astype(np.uint8, copy=False), r0)
    table = make_table(acc, {c.id: c.name for c in classes})
    if px.kind == "pixels":
        table.notes.append("no CRS: areas in pixels")
    return table


def _strip_rows(da, ydim: str) -> int:
    chunks = getattr(da, "chunksizes", {}) or {}
    if ydim in chunks and chunks[ydim]:
        return int(chunks[ydim][0])
    return 512


def to_geotiff(obj, path: str | os.PathLike, *, confidence_path: str | os.PathLike | None = None,
               areas_path: str | os.PathLike | None = None, overwrite: bool = False, cog: bool = False,
               creation_options: dict[str, Any] | None = None, overviews: bool = False) -> Path:
    """Write a class DataArray (or predict's Dataset) as geoseg's styled class GeoTIFF
    (colours, names, ``.qml``, RAT; atomically, never over an existing file unless
    ``overwrite``), optionally its confidence and area CSV. A dask array is computed
    strip by strip (memory: one strip of blocks)."""
    from .output import ClassRasterWriter, check_output_path  # noqa: PLC0415
    da, conf_da = _classes_array(obj)
    if confidence_path is not None and conf_da is None:
        raise ConfigError("no confidence in this result: predict with confidence=True", option="confidence")
    classes, background = _classes_of(da)
    tags = json.loads(da.attrs.get("geoseg_tags", "{}"))
    da, ydim, crs, transform = _grid_of(da)
    h, w = da.shape
    if Path(path).suffix.lower() not in (".tif", ".tiff"):
        raise ConfigError(f"the class raster is a GeoTIFF: give the output a .tif name, not {Path(path).name}")
    targets = {"output": path, "confidence output": confidence_path, "areas CSV": areas_path}
    resolved = {k: check_output_path(p, (), overwrite, k) for k, p in targets.items() if p is not None}
    check_output_path(resolved["output"].with_suffix(".qml"), (), overwrite, "style")
    block = _strip_rows(da, ydim)
    block = block if block % 16 == 0 and 16 <= block <= 4096 else 512
    px = pixel_areas(crs, transform, w, h, warn=areas_path is not None)
    if conf_da is not None and confidence_path is not None:
        conf_da = conf_da.transpose(*da.dims)
    with ClassRasterWriter(resolved["output"], width=w, height=h, crs=crs, transform=transform, block=block,
                           classes=classes, pixel_areas=px, confidence_target=resolved.get("confidence output"),
                           tags=tags, cog=cog, background=background, creation_options=creation_options,
                           overviews=overviews, overwrite=overwrite) as sink:
        index = 0
        conf_strips = _strips(conf_da, ydim, block) if confidence_path is not None else None
        for r0, strip in _strips(da, ydim, block):
            cstrip = next(conf_strips)[1] if conf_strips is not None else None
            for c0 in range(0, w, block):
                region = Rect(c0, r0, min(block, w - c0), strip.shape[0])
                sl = (slice(None), slice(c0, c0 + region.width))
                sink.write(SimpleNamespace(unit=SimpleNamespace(index=index, region=region),
                                           classes=np.ascontiguousarray(strip[sl], np.uint8),
                                           confidence=None if cstrip is None else
                                           np.ascontiguousarray(cstrip[sl], np.uint8)))
                index += 1
        sink.finish()
        if areas_path is not None:
            from .areas import write_areas_csv  # noqa: PLC0415
            write_areas_csv(sink.table(), sink.scratch(resolved["areas CSV"], ".csv"))
        sink.commit()
    return resolved["output"]
