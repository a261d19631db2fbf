"""The segmentation engine.

::

    window grid ──> read unit (+halo, padded, masked) ──> normalise ──> batch ──> model
        ──> merge (centre crop | cosine blending) ──> write block ──> count classes ──> areas

* :func:`make_plan` fixes everything a run needs (bands, grid, scaling) from the
  source, the bundle's metadata and the options.
* The unit of work is pure: :func:`read_unit` -> forward pass -> :func:`merge_unit`,
  composed by :func:`process_unit` (which a Dask worker can call as it is).
* :func:`predict_raster` runs units through a bounded pipeline: a reader thread reads
  ahead, the calling thread batches windows across units and runs the compiled model,
  a writer thread writes blocks in order and counts classes. Memory depends on the
  window/block sizes and queue depth, never on the scene size.
"""

from __future__ import annotations

import math
import os
import queue
import threading
import warnings
from collections import deque
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Literal, Sequence

import numpy as np

from .areas import AreaAccumulator, AreaTable, make_table, pixel_areas, write_areas_csv
from .bundle import ModelMeta
from .errors import ConfigError, GeosegError, PixelSizeWarning, RasterError
from .io import (CLASS_NODATA, AtomicOutput, check_output_path, class_profile, has_masks, open_raster,
                 read_rect, resolve_bands, style_class_raster, tag_class_dataset)
from .progress import CancelFn, ProgressFn, Reporter
from .windows import Grid, Rect, Unit, make_grid, validate_tiling

__all__ = ["PredictOptions", "Plan", "make_plan", "read_unit", "merge_unit", "process_unit",
           "predict_raster", "PredictResult", "UnitResult", "blend_weights", "tta_forward", "TTA_VIEWS"]

Forward = Callable[[np.ndarray], np.ndarray]

#: Test-time augmentation: the views of each window the model sees, as
#: (flip rows, flip columns, swap rows and columns). "flip": the four flips (the
#: identity, left-right, up-down, 180° rotation); "d4": the eight symmetries of the
#: square (the flips and their transposes: 90° rotations and diagonal mirrors).
TTA_VIEWS: dict[str, tuple[tuple[bool, bool, bool], ...]] = {
    "none": ((False, False, False),),
    "flip": ((False, False, False), (False, True, False), (True, False, False), (True, True, False)),
    "d4": tuple((fr, fc, t) for t in (False, True) for fr in (False, True) for fc in (False, True)),
}


def _view(x: np.ndarray, flip_rows: bool, flip_cols: bool, transpose: bool) -> np.ndarray:
    """One view of a batch (N, H, W, C): flip, then swap H and W."""
    if flip_rows:
        x = x[:, ::-1]
    if flip_cols:
        x = x[:, :, ::-1]
    if transpose:
        x = x.transpose(0, 2, 1, 3)
    return x


def _unview(y: np.ndarray, flip_rows: bool, flip_cols: bool, transpose: bool) -> np.ndarray:
    """The inverse of :func:`_view`: swap back, then undo the flips."""
    if transpose:
        y = y.transpose(0, 2, 1, 3)
    if flip_cols:
        y = y[:, :, ::-1]
    if flip_rows:
        y = y[:, ::-1]
    return y


def tta_forward(forward: Forward, mode: str = "d4") -> Forward:
    """``forward`` with test-time augmentation: the class probabilities of the views
    of each window (see :data:`TTA_VIEWS`), each mapped back onto the window, averaged.

    The result is exactly equivariant to the views' symmetries whatever the model,
    and costs one forward pass per view. Window sizes stay multiples of the model's
    tile multiple under every view, so the pooling lattice is unchanged.
    """
    if mode not in TTA_VIEWS:
        raise ConfigError(f"test-time augmentation must be one of {', '.join(TTA_VIEWS)}, got {mode!r}")
    views = TTA_VIEWS[mode]
    if len(views) == 1:
        return forward

    def run(x: np.ndarray) -> np.ndarray:
        acc = None
        for v in views:
            y = _unview(forward(np.ascontiguousarray(_view(x, *v))), *v)
            acc = y.astype(np.float32, copy=True) if acc is None else np.add(acc, y, out=acc)
        acc *= np.float32(1.0 / len(views))
        return acc
    return run

#: GDAL block cache during a run (MB), unless GDAL_CACHEMAX is set in the environment.
#: GDAL's default (5 % of RAM) would let the cache, and so memory, grow with the scene.
GDAL_CACHE_MB = 96


def _gdal_env(**extra):
    import rasterio  # noqa: PLC0415
    opts = dict(extra)
    if "GDAL_CACHEMAX" not in os.environ:
        opts["GDAL_CACHEMAX"] = GDAL_CACHE_MB
    return rasterio.Env(**opts)


@dataclass(frozen=True)
class PredictOptions:
    """Options of a prediction run (``None`` = the model's recommendation).

    Attributes:
        tile_size: window size in pixels (a multiple of the model's ``tile_multiple``).
        overlap: pixels shared by neighbouring windows (< tile_size / 2).
        batch_size: windows per forward pass.
        blend: ``"crop"`` keeps each window's centre only; ``"cosine"`` averages the
            class probabilities of overlapping windows with smooth (sin²) weights.
        block_size: output GeoTIFF internal tile size (default: a multiple of the
            stride near 512).
        bands: raster bands feeding the model (1-based indexes or band descriptions).
        confidence: also produce the winning class's probability (0-100 %).
        prefetch: units read ahead / waiting to be written.
        tta: test-time augmentation, ``"none"``, ``"flip"`` (4 views, 4x the model
            time) or ``"d4"`` (8 views, 8x): probabilities averaged over flipped /
            rotated copies of every window (:func:`tta_forward`).
    """

    tile_size: int | None = None
    overlap: int | None = None
    batch_size: int = 8
    blend: Literal["crop", "cosine"] = "crop"
    block_size: int | None = None
    bands: tuple[int | str, ...] | None = None
    confidence: bool = False
    prefetch: int = 3
    tta: Literal["none", "flip", "d4"] = "none"

    def __post_init__(self) -> None:
        if not isinstance(self.batch_size, int) or self.batch_size < 1:
            raise ConfigError(f"batch size must be a positive integer, got {self.batch_size!r}")
        if self.blend not in ("crop", "cosine"):
            raise ConfigError(f"blend must be 'crop' or 'cosine', got {self.blend!r}")
        if self.prefetch < 1:
            raise ConfigError("prefetch must be at least 1")
        if self.tta not in TTA_VIEWS:
            raise ConfigError(f"tta must be one of {', '.join(TTA_VIEWS)}, got {self.tta!r}")


@dataclass(frozen=True)
class Plan:
    """Everything fixed for one source raster: pure data, picklable for Dask."""

    src_path: str
    bands: tuple[int, ...]
    masked: bool
    grid: Grid
    gain: np.ndarray   # per band: x * gain + bias == ((DN + offset) * scale - mean) / std
    bias: np.ndarray
    class_ids: np.ndarray  # model output channel -> class id (uint8)
    blend: str
    confidence: bool


def make_plan(src, meta: ModelMeta, options: PredictOptions) -> Plan:
    tile = options.tile_size or meta.tile_size
    overlap = meta.overlap if options.overlap is None else options.overlap
    validate_tiling(tile, overlap, meta.tile_multiple)
    bands = resolve_bands(src, meta.input, options.bands)
    grid = make_grid(src.width, src.height, tile, overlap, options.block_size, align=meta.tile_multiple)
    spec = meta.input
    off, sc = np.array(spec.offset), np.array(spec.scale)
    mean, std = np.array(spec.mean), np.array(spec.std)
    gain = (sc / std).astype(np.float32)
    bias = ((off * sc - mean) / std).astype(np.float32)
    if spec.pixel_size and src.crs is not None and not src.transform.is_identity and src.crs.is_projected:
        res = math.sqrt(abs(src.transform.determinant))
        if abs(res / spec.pixel_size - 1) > 0.25:
            warnings.warn(f"input pixel size {res:g} differs from the model's {spec.pixel_size:g}; "
                          "results may be poor", PixelSizeWarning, stacklevel=2)
    return Plan(str(src.name), tuple(bands), has_masks(src, bands), grid, gain, bias,
                np.array([c.id for c in meta.classes], dtype=np.uint8), options.blend, options.confidence)


@dataclass
class UnitInput:
    """A unit read and normalised: windows ready for the model."""

    unit: Unit
    valid: np.ndarray              # (h, w) validity of the unit's region
    inputs: list[np.ndarray]       # (win_h, win_w, bands) float32, one per window to run
    run: list[int]                 # indexes into unit.windows that need the model


@dataclass
class UnitResult:
    unit: Unit
    classes: np.ndarray               # (h, w) uint8, 255 = nodata
    confidence: np.ndarray | None     # (h, w) uint8 percent, 255 = nodata
    counts: np.ndarray                # (256,) pixel counts per class value


def read_unit(src, unit: Unit, plan: Plan) -> UnitInput:
    """Read a unit's windows in one read, mask, normalise; skip all-nodata windows."""
    rect = unit.read_rect
    data, valid = read_rect(src, plan.bands, rect, plan.masked)
    region_valid = valid[unit.region.slices(rect)]
    run = []
    for i, w in enumerate(unit.windows):
        contrib = w.core if plan.blend == "crop" else (w.read.intersection(unit.region) or w.core)
        if region_valid[contrib.slices(unit.region)].any():
            run.append(i)
    if not run:
        return UnitInput(unit, region_valid, [], run)
    x = np.moveaxis(data, 0, -1)  # (h, w, bands) view
    x = x * plan.gain + plan.bias  # new contiguous float32 array
    if plan.masked:
        x[~valid] = 0.0
    inputs = [np.ascontiguousarray(x[unit.windows[i].read.slices(rect)]) for i in run]
    return UnitInput(unit, region_valid, inputs, run)


def _ramp(n: int, overlap: int) -> np.ndarray:
    w = np.ones(n, np.float64)
    r = min(overlap, n // 2)
    if r > 0:
        i = np.arange(r)
        ramp = np.sin(0.5 * np.pi * (i + 0.5) / r) ** 2
        w[:r] = ramp
        w[n - r:] = ramp[::-1]
    return np.maximum(w, 1e-3)


_WEIGHTS: dict[tuple[int, int, int], np.ndarray] = {}


def blend_weights(height: int, width: int, overlap: int) -> np.ndarray:
    """2-D window weights: 1 in the middle, sin² ramps over ``overlap`` px at each edge.

    Two windows that overlap by ``overlap`` px have weights summing to 1 there
    (sin² + cos² = 1); a small floor keeps image-edge pixels defined.
    """
    key = (height, width, overlap)
    if key not in _WEIGHTS:
        _WEIGHTS[key] = np.outer(_ramp(height, overlap), _ramp(width, overlap)).astype(np.float32)
    return _WEIGHTS[key]


def merge_unit(uin: UnitInput, probs: Sequence[np.ndarray] | None, plan: Plan) -> UnitResult:
    """Merge the run windows' probabilities (each ``(win_h, win_w, K)``) into the unit's block."""
    unit = uin.unit
    reg = unit.region
    h, w = reg.height, reg.width
    classes = np.full((h, w), CLASS_NODATA, np.uint8)
    conf = np.full((h, w), CLASS_NODATA, np.uint8) if plan.confidence else None
    if probs is not None and len(uin.run):
        if plan.blend == "crop":
            for j, i in enumerate(uin.run):
                win = unit.windows[i]
                p = probs[j][win.core.slices(win.read)]
                sl = win.core.slices(reg)
                classes[sl] = plan.class_ids[np.argmax(p, axis=-1)]
                if conf is not None:
                    conf[sl] = np.rint(100.0 * p.max(axis=-1)).astype(np.uint8)
        else:
            k = probs[0].shape[-1]
            acc = np.zeros((h, w, k), np.float32)
            wsum = np.zeros((h, w, 1), np.float32)
            for j, i in enumerate(uin.run):
                win = unit.windows[i]
                weights = blend_weights(win.read.height, win.read.width, plan.grid.overlap)[..., None]
                part = win.read.intersection(reg)
                src_sl = part.slices(win.read)
                dst_sl = part.slices(reg)
                wt = weights[src_sl]
                acc[dst_sl] += probs[j][src_sl] * wt
                wsum[dst_sl] += wt
            np.divide(acc, np.maximum(wsum, 1e-12), out=acc)
            classes[:] = plan.class_ids[np.argmax(acc, axis=-1)]
            if conf is not None:
                conf[:] = np.rint(100.0 * acc.max(axis=-1)).astype(np.uint8)
        classes[~uin.valid] = CLASS_NODATA
        if conf is not None:
            conf[~uin.valid] = CLASS_NODATA
    counts = np.bincount(classes.reshape(-1), minlength=256).astype(np.int64)
    counts[CLASS_NODATA] = 0
    return UnitResult(unit, classes, conf, counts)


def _forward_grouped(forward: Forward, inputs: Sequence[np.ndarray], batch_size: int) -> list[np.ndarray]:
    """Run windows through the model in batches of equal shape; results in input order."""
    out: list[np.ndarray | None] = [None] * len(inputs)
    groups: dict[tuple, list[int]] = {}
    for j, x in enumerate(inputs):
        groups.setdefault(x.shape, []).append(j)
    for idx in groups.values():
        for b in range(0, len(idx), batch_size):
            part = idx[b:b + batch_size]
            y = forward(np.stack([inputs[j] for j in part]))
            for j, p in zip(part, y):
                out[j] = p
    return out  # type: ignore[return-value]


def process_unit(plan: Plan, unit: Unit, forward: Forward, batch_size: int = 8, src=None) -> UnitResult:
    """The pure unit of work: (source, output block, model, options) -> class block, counts.

    Opens the source itself unless an open dataset is given, so it can run on any
    worker that sees the file.
    """
    if src is None:
        with open_raster(plan.src_path) as s:
            uin = read_unit(s, unit, plan)
    else:
        uin = read_unit(src, unit, plan)
    probs = _forward_grouped(forward, uin.inputs, batch_size) if uin.run else None
    return merge_unit(uin, probs, plan)


@dataclass
class PredictResult:
    output: Path
    width: int
    height: int
    n_units: int
    n_windows: int
    n_windows_run: int
    counts: dict[int, int]
    areas: AreaTable
    confidence: Path | None = None
    areas_csv: Path | None = None
    preview: Path | None = None
    seconds: float = 0.0
    model_seconds: float = 0.0
    input_pixels: int = 0      # pixels the network looked at (sum of the run windows)
    batches: int = 0
    extra: dict[str, Any] = field(default_factory=dict)


class _Stop(Exception):
    pass


def _run_pipeline(plan: Plan, forward: Forward, batch_size: int, prefetch: int,
                  consume: Callable[[UnitResult], None], reporter: Reporter,
                  units: Sequence[Unit] | None = None) -> dict[str, float]:
    """Reader thread -> batched inference (this thread) -> writer thread, in unit order."""
    import time  # noqa: PLC0415
    units = list(plan.grid.units if units is None else units)
    in_q: queue.Queue = queue.Queue(maxsize=prefetch)
    out_q: queue.Queue = queue.Queue(maxsize=prefetch)
    stop = threading.Event()
    errors: list[BaseException] = []
    stats = {"model_seconds": 0.0, "windows_run": 0, "input_pixels": 0, "batches": 0}

    def put(q: queue.Queue, item) -> None:
        while not stop.is_set():
            try:
                q.put(item, timeout=0.1)
                return
            except queue.Full:
                continue
        raise _Stop

    def reader() -> None:
        try:
            # GDAL error handlers are per thread: an Env routes this thread's GDAL
            # warnings to logging instead of raw stderr.
            with _gdal_env(), open_raster(plan.src_path) as src:
                for u in units:
                    if stop.is_set():
                        return
                    put(in_q, read_unit(src, u, plan))
            put(in_q, None)
        except _Stop:
            pass
        except BaseException as e:  # noqa: BLE001 - re-raised in the main thread
            errors.append(e)
            stop.set()

    def writer() -> None:
        try:
            while True:
                try:
                    item = out_q.get(timeout=0.1)
                except queue.Empty:
                    if stop.is_set():
                        return
                    continue
                if item is None:
                    return
                consume(item)
                reporter.advance()
        except BaseException as e:  # noqa: BLE001
            errors.append(e)
            stop.set()

    rt = threading.Thread(target=reader, name="geoseg-reader", daemon=True)
    wt = threading.Thread(target=writer, name="geoseg-writer", daemon=True)
    rt.start()
    wt.start()
    # Windows wait in one queue per shape (border windows are trimmed), so a batch
    # always has one shape; units leave in order once all their windows are done.
    pending: dict[tuple, deque] = {}                  # shape -> deque of (slot, j)
    open_units: deque[list] = deque()                  # slot = [UnitInput, probs list, n_done]
    max_open = prefetch + 2                            # bounds the units held in memory
    try:
        def run_batch(shape: tuple, n: int) -> None:
            q = pending[shape]
            items = [q.popleft() for _ in range(n)]
            x = np.stack([slot[0].inputs[j] for slot, j in items])
            t0 = time.perf_counter()
            y = forward(x)
            stats["batches"] += 1
            stats["model_seconds"] += time.perf_counter() - t0
            stats["windows_run"] += n
            stats["input_pixels"] += x.shape[0] * x.shape[1] * x.shape[2]
            for (slot, j), p in zip(items, y):
                slot[1][j] = p
                slot[2] += 1
                slot[0].inputs[j] = None  # the input is no longer needed

        def flush_done() -> None:
            while open_units and open_units[0][2] == len(open_units[0][0].run):
                uin, probs, _ = open_units.popleft()
                put(out_q, merge_unit(uin, probs, plan))

        def head_shape() -> tuple | None:
            """The shape queue holding the oldest unit's next waiting window."""
            head = open_units[0]
            for shape, q in pending.items():
                if q and q[0][0] is head:
                    return shape
            return None

        finished = False
        while not finished:
            reporter.check()
            reporter.report()
            if errors:
                break
            try:
                uin = in_q.get(timeout=0.1)
            except queue.Empty:
                if not rt.is_alive() and in_q.empty():
                    break
                continue
            if uin is None:
                finished = True
            else:
                slot = [uin, [None] * len(uin.run), 0]
                open_units.append(slot)
                for j, x in enumerate(uin.inputs):
                    pending.setdefault(x.shape, deque()).append((slot, j))
            for shape, q in pending.items():
                while len(q) >= batch_size:
                    run_batch(shape, batch_size)
            flush_done()
            # Too many units waiting on a rarely seen shape (the right-edge windows):
            # run a short batch rather than hold more units in memory.
            while open_units and (finished or len(open_units) > max_open):
                shape = head_shape()
                if shape is None:
                    break
                run_batch(shape, min(batch_size, len(pending[shape])))
                flush_done()
            flush_done()
        if not errors:
            put(out_q, None)
            while wt.is_alive() and not errors:
                wt.join(0.1)
                reporter.check()
                reporter.report()
    except _Stop:
        pass  # the writer or reader failed: its error is raised below
    except BaseException:
        stop.set()
        raise
    finally:
        if errors or wt.is_alive():
            stop.set()
        rt.join(30)
        wt.join(30)
    if errors:
        raise errors[0]
    reporter.report()
    return stats


def predict_raster(src_path: str | os.PathLike, dst_path: str | os.PathLike, model: Any,
                   options: PredictOptions = PredictOptions(), *, overwrite: bool = False,
                   areas_path: str | os.PathLike | None = None,
                   confidence_path: str | os.PathLike | None = None,
                   preview_path: str | os.PathLike | None = None, cog: bool = False,
                   forward: Forward | None = None, progress: ProgressFn | None = None,
                   is_cancelled: CancelFn | None = None) -> PredictResult:
    """Segment ``src_path`` into a class GeoTIFF at ``dst_path``.

    Args:
        model: a :class:`geoseg.model.LoadedModel`, or a path to a ``.geoseg`` bundle.
        options: tiling, blending, batching, band selection.
        areas_path: also write the per-class area CSV (counted while writing).
        confidence_path: also write the winning probability (uint8 %, nodata 255).
        preview_path: also write a quick-look PNG (class colours over the image).
        cog: write a Cloud-Optimised GeoTIFF.
        forward: a ready forward function (tests, benchmarks); default compiles the model's.
        progress, is_cancelled: see :mod:`geoseg.progress`.

    Everything is written to temporary files beside the targets and renamed at the
    end; an error or a cancellation leaves the targets as they were.
    """
    import time  # noqa: PLC0415
    import rasterio  # noqa: PLC0415

    t_start = time.perf_counter()
    src_path = Path(src_path)
    if isinstance(model, (str, os.PathLike)):
        from .model import load_model  # noqa: PLC0415
        model = load_model(model)
    meta: ModelMeta = model.meta
    if confidence_path is not None and not options.confidence:
        options = replace(options, confidence=True)
    if Path(dst_path).suffix.lower() not in (".tif", ".tiff"):
        raise ConfigError(f"the class raster is a GeoTIFF: give the output a .tif name, not {Path(dst_path).name}")
    if confidence_path is not None and Path(confidence_path).suffix.lower() not in (".tif", ".tiff"):
        raise ConfigError("the confidence output is a GeoTIFF: give it a .tif name")
    inputs = [src_path]
    outs = {"output": dst_path, "areas CSV": areas_path, "confidence output": confidence_path,
            "preview": preview_path}
    resolved: dict[str, Path] = {}
    for what, p in outs.items():
        if p is not None:
            rp = check_output_path(p, inputs, overwrite, what)
            if rp in resolved.values():
                raise RasterError(f"{what} {rp} is also given as another output")
            resolved[what] = rp
    with open_raster(src_path) as src:
        plan = make_plan(src, meta, options)
        prof = class_profile(src, plan.grid.block)
        px = pixel_areas(src.crs, src.transform, src.width, src.height)
        georef = src.crs is not None
    if forward is None:
        from .model import make_forward  # noqa: PLC0415
        forward = make_forward(model.keras_model, plan.grid.tile, meta.input.n_bands, meta.head)
    forward = tta_forward(forward, options.tta)

    main_out = AtomicOutput(resolved["output"])
    conf_out = AtomicOutput(resolved["confidence output"]) if confidence_path is not None else None
    acc = AreaAccumulator(px, CLASS_NODATA)
    reporter = Reporter(progress, is_cancelled, total=len(plan.grid))
    outputs = [o for o in (main_out, conf_out) if o is not None]
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", rasterio.errors.NotGeoreferencedWarning)
            write_prof = dict(prof)
            with _gdal_env(GDAL_NUM_THREADS="ALL_CPUS"), \
                    rasterio.open(main_out.tmp, "w", **write_prof) as dst:
                cdst = None
                if conf_out is not None:
                    cdst = rasterio.open(conf_out.tmp, "w", **write_prof)
                try:
                    from rasterio.windows import Window  # noqa: PLC0415

                    def consume(res: UnitResult) -> None:
                        r = res.unit.region
                        win = Window(r.col, r.row, r.width, r.height)
                        dst.write(res.classes, 1, window=win)
                        if cdst is not None:
                            cdst.write(res.confidence, 1, window=win)
                        acc.add(res.classes, r.row)

                    stats = _run_pipeline(plan, forward, options.batch_size, options.prefetch, consume, reporter)
                    tag_class_dataset(dst, meta.classes, {
                        "GEOSEG_MODEL": meta.name, "GEOSEG_TILE_SIZE": str(plan.grid.tile),
                        "GEOSEG_OVERLAP": str(plan.grid.overlap), "GEOSEG_BLEND": plan.blend,
                        "GEOSEG_TTA": options.tta})
                    if cdst is not None:
                        cdst.set_band_description(1, "confidence (%)")
                        cdst.update_tags(GEOSEG_MODEL=meta.name, UNITS="percent")
                finally:
                    if cdst is not None:
                        cdst.close()
        # RAT (.aux.xml) and .qml before a COG copy: the colour table and tags travel
        # inside the file, the side-cars stay beside the temporary path.
        style_class_raster(main_out.tmp, meta.classes, qml_path=main_out.tmp.with_suffix(".qml"), tag=False)
        if cog:
            _to_cog(main_out)
            if conf_out is not None:
                _to_cog(conf_out)
        table = make_table(acc, meta.class_names)
        if not georef:
            table.notes.append("no CRS: areas in pixels")
        preview_tmp = None
        if preview_path is not None:
            from .preview import write_preview  # noqa: PLC0415
            preview_tmp = main_out.scratch(".png")
            write_preview(src_path, main_out.tmp, preview_tmp, meta, plan.bands)
        # Everything is complete: move the outputs into place.
        if areas_path is not None:
            write_areas_csv(table, resolved["areas CSV"])
        if preview_tmp is not None:
            os.replace(preview_tmp, resolved["preview"])
            main_out.extra.remove(preview_tmp)
        if conf_out is not None:
            conf_out.commit()
        main_out.commit()
    except BaseException:
        for o in outputs:
            o.discard()
        raise
    counts = {cid: n for cid, n in acc.counts.get(None, {}).items()}
    return PredictResult(resolved["output"], plan.grid.width, plan.grid.height, len(plan.grid),
                         plan.grid.n_windows, int(stats["windows_run"]), counts, table,
                         resolved.get("confidence output"), resolved.get("areas CSV"), resolved.get("preview"),
                         time.perf_counter() - t_start, stats["model_seconds"], int(stats["input_pixels"]),
                         int(stats["batches"]))


def _to_cog(out: AtomicOutput) -> None:
    """Rewrite a finished GeoTIFF as a COG (same temp path)."""
    from rasterio.shutil import copy as rio_copy  # noqa: PLC0415
    tmp2 = out.scratch(".tif")
    rio_copy(out.tmp, tmp2, driver="COG", COMPRESS="DEFLATE", BLOCKSIZE=512, OVERVIEW_RESAMPLING="NEAREST",
             NUM_THREADS="ALL_CPUS")
    os.replace(tmp2, out.tmp)


def sidecar_paths(dst: str | os.PathLike, areas: bool = False, confidence: bool = False,
                  preview: bool = False) -> dict[str, Path | None]:
    """Names of the optional outputs beside ``dst``: ``NAME_areas.csv``,
    ``NAME_confidence.tif`` and ``NAME_preview.png``."""
    stem = str(Path(dst).with_suffix(""))
    return {"areas_path": Path(stem + "_areas.csv") if areas else None,
            "confidence_path": Path(stem + "_confidence.tif") if confidence else None,
            "preview_path": Path(stem + "_preview.png") if preview else None}


def predict_many(src_paths: Sequence[str | os.PathLike], out_dir: str | os.PathLike, model: Any,
                 options: PredictOptions = PredictOptions(), *, areas: bool = False, confidence: bool = False,
                 preview: bool = False, suffix: str = "_classes.tif",
                 progress_for: Callable[[Path], ProgressFn | None] | None = None,
                 **kwargs) -> list[PredictResult]:
    """Segment several rasters into ``out_dir`` as ``NAME_classes.tif`` (plus side
    outputs), loading the model and compiling its forward pass once.

    Every target is checked before the first run, so a name clash or an existing
    output is reported before hours of work.
    """
    out_dir = Path(out_dir)
    if not out_dir.is_dir():
        raise RasterError(f"output directory does not exist: {out_dir}")
    stems = [Path(p).stem for p in src_paths]
    if len(set(stems)) != len(stems):
        raise RasterError("several inputs have the same file name; their outputs would collide")
    if isinstance(model, (str, os.PathLike)):
        from .model import load_model  # noqa: PLC0415
        model = load_model(model)
    jobs = []
    for p in src_paths:
        dst = out_dir / (Path(p).stem + suffix)
        side = sidecar_paths(dst, areas, confidence, preview)
        for what, q in [("output", dst)] + [(k, v) for k, v in side.items() if v is not None]:
            check_output_path(q, src_paths, kwargs.get("overwrite", False), what)
        jobs.append((p, dst, side))
    results = []
    forwards: dict[int, Forward] = {}
    tile = options.tile_size or model.meta.tile_size
    for p, dst, side in jobs:
        if "forward" not in kwargs and tile not in forwards:
            from .model import make_forward  # noqa: PLC0415
            forwards[tile] = make_forward(model.keras_model, tile, model.meta.input.n_bands, model.meta.head)
        kw = dict(kwargs)
        kw.setdefault("forward", forwards.get(tile))
        cb = progress_for(Path(p)) if progress_for else None
        results.append(predict_raster(p, dst, model, options, progress=cb, **side, **kw))
    return results
