"""The unit of work: read a block's windows, normalise, run the model, merge.

::

    unit (= one output block) ──> read_unit: one padded, masked read of its windows,
        normalised ((DN + offset) * scale - mean) / std, all-nodata windows skipped
        ──> forward (batched by the schedule below, test-time augmentation inside)
        ──> merge_unit: centre crop | cosine blending ──> class block (+ confidence)

* :func:`make_plan` fixes everything a run needs (bands, grid, scaling, schedule)
  from a source, the bundle's metadata and the options. A :class:`Plan` is pure,
  picklable data: any executor (the local pipeline, a Dask worker) can follow it.
* **The schedule is a pure function of the plan**: windows are batched in plan
  order, one batch per ``batch_size`` windows of one shape, and batches never cross
  a task (a row of output blocks; :meth:`Plan.tasks`). So which windows share a
  batch depends neither on prefetch depth nor on thread timing, and every executor
  that follows the plan writes the same bytes.
* :func:`process_task` runs one task start to end (the unit of work of other
  executors); the local pipeline (:mod:`geoseg.pipeline`) runs the same schedule
  with reading and writing overlapped.
"""

from __future__ import annotations

import itertools
import logging
import math
import os
import threading
import warnings
from collections import deque
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable, Literal, Sequence

import numpy as np

from .bundle import InputSpec, ModelMeta
from .errors import ConfigError, InputLevelWarning, PixelSizeWarning, RasterError, UndeclaredNodataWarning
from .sources import (CLASS_NODATA, RasterSource, Source, is_georeferenced, owned_source, read_rect, reflect_pad,
                      resolve_bands)
from .windows import Grid, Rect, Unit, make_grid, validate_tiling

log = logging.getLogger("geoseg")

__all__ = ["Forward", "BLENDS", "TTA_VIEWS", "PredictOptions", "Plan", "make_plan", "release_sample",
           "read_unit_rect", "input_gain_bias",
           "UnitInput", "UnitResult", "read_unit", "blend_weights", "merge_unit", "tta_forward", "Batcher",
           "process_task", "default_window", "default_batch", "sample_rects"]

#: ``(N, h, w, bands) float32 -> (N, h, w, K)`` class probabilities.
Forward = Callable[[np.ndarray], np.ndarray]

#: How overlapping windows are merged: keep each window's centre, or average the
#: probabilities with smooth (sin²) weights.
BLENDS = ("crop", "cosine")

#: How the model's forward pass runs (:func:`geoseg.model.resolve_runtime`). "keras":
#: the Keras model itself (TensorFlow's oneDNN kernels in a ``tf.function``, or
#: ``jax.jit``). "openvino": the same TensorFlow graph converted to OpenVINO and compiled
#: for this CPU: the same classes as Keras, faster (README "Benchmarks",
#: bench/forward.py). "auto": OpenVINO where it is installed and Keras runs on
#: TensorFlow, else Keras.
RUNTIMES = ("auto", "openvino", "keras")
#: "bfloat16" (OpenVINO only, on a CPU with native bfloat16 — AVX512_BF16 or AMX):
#: matrix products in bfloat16, faster than float32, classes as float32's on >= 99.9 %
#: of pixels (bench/forward.py measures both). "auto": bfloat16 where OpenVINO runs on
#: such a CPU, else float32; "float32" gives Keras's own classes on every machine.
PRECISIONS = ("auto", "float32", "bfloat16")

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
        raise ConfigError(f"test-time augmentation must be one of {', '.join(TTA_VIEWS)}, got {mode!r}",
                          option="tta")
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


@dataclass(frozen=True)
class PredictOptions:
    """Options of a prediction run (``None`` = the model's recommendation).

    Attributes:
        tile_size: window size in pixels (a multiple of the model's ``tile_multiple``);
            default :func:`default_window` (twice the model's training chip, up to 512).
        overlap: pixels shared by neighbouring windows (< tile_size / 2).
        batch_size: windows per forward pass; default :func:`default_batch` (about the
            pixels of 8 training chips, whatever the window size).
        blend: ``"crop"`` keeps each window's centre only; ``"cosine"`` averages the
            class probabilities of overlapping windows with smooth (sin²) weights.
        block_size: output GeoTIFF internal tile size (default: a multiple of the
            stride near 512).
        bands: raster bands feeding the model (1-based indexes or band descriptions).
        confidence: also produce the winning class's probability (0-100 %).
        prefetch: units read ahead / waiting to be written (memory, not results:
            the output is the same for any value).
        tta: test-time augmentation, ``"none"``, ``"flip"`` (4 views, 4x the model
            time) or ``"d4"`` (8 views, 8x): probabilities averaged over flipped /
            rotated copies of every window (:func:`tta_forward`).
        input_scale, input_offset: the input's conversion to the model's physical
            units, ``physical = (DN + input_offset) * input_scale`` (one value, or one
            per model band); each overrides what the input states (product metadata,
            GDAL scale/offset) and the model's own convention. E.g. a Sentinel-2 L2A
            product of processing baseline >= 04.00 without its metadata:
            ``input_offset=-1000``.
        src_nodata: input nodata value(s) (one, or one per model band): a pixel is
            nodata where all its bands hold it; overrides what the input declares.
        resample: how a Sentinel-2 product's 20 m bands reach the 10 m grid
            (``"nearest"``: each 20 m pixel 2 x 2, exact; or ``"bilinear"``).
        mask_scl: the scene classification (SCL) classes of an L2A product made
            nodata (None: no data, saturated/defective, cloud shadow, medium/high cloud
            probability, cirrus — ``geoseg.sentinel2.DEFAULT_SCL_MASK``; () for none).
        runtime: how the model runs (:data:`RUNTIMES`): ``"auto"`` (OpenVINO
            where installed, else Keras), ``"openvino"`` or ``"keras"``.
        precision: ``"float32"``, ``"bfloat16"`` (OpenVINO on a CPU with native
            bfloat16: faster, classes as float32's on >= 99.9 % of pixels) or ``"auto"``
            (bfloat16 where possible, else float32); the output's ``GEOSEG_RUNTIME`` tag
            says which ran.
    """

    tile_size: int | None = None
    overlap: int | None = None
    batch_size: int | None = None
    blend: Literal["crop", "cosine"] = "crop"
    block_size: int | None = None
    bands: tuple[int | str, ...] | None = None
    confidence: bool = False
    prefetch: int = 3
    tta: Literal["none", "flip", "d4"] = "none"
    input_scale: float | tuple[float, ...] | None = None
    input_offset: float | tuple[float, ...] | None = None
    src_nodata: float | tuple[float, ...] | None = None
    resample: str = "nearest"
    mask_scl: tuple[int, ...] | None = None
    runtime: str = "auto"
    precision: str = "auto"

    def product_options(self) -> dict[str, Any]:
        """What opening a Sentinel-2 product or STAC item takes from these options."""
        return {"resample": self.resample, **({"mask_scl": self.mask_scl} if self.mask_scl is not None else {})}

    def __post_init__(self) -> None:
        if self.resample not in ("nearest", "bilinear"):
            raise ConfigError(f"resample must be nearest or bilinear, got {self.resample!r}", option="resample")
        for name in ("input_scale", "input_offset", "src_nodata"):
            v = getattr(self, name)
            vals = v if isinstance(v, tuple) else () if v is None else (v,)
            if not all(isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x) for x in vals):
                raise ConfigError(f"{name} must be finite numbers, got {v!r}", option=name)
            if name == "input_scale" and any(x == 0 for x in vals):
                raise ConfigError("input_scale must not be 0", option=name)
        if self.batch_size is not None and (not isinstance(self.batch_size, int) or isinstance(self.batch_size, bool)
                                            or self.batch_size < 1):
            raise ConfigError(f"batch size must be a positive integer, got {self.batch_size!r}", option="batch_size")
        if self.blend not in BLENDS:
            raise ConfigError(f"blend must be one of {', '.join(BLENDS)}, got {self.blend!r}", option="blend")
        if not isinstance(self.prefetch, int) or self.prefetch < 1:
            raise ConfigError("prefetch must be at least 1", option="prefetch")
        for name, allowed in (("runtime", RUNTIMES), ("precision", PRECISIONS)):
            if getattr(self, name) not in allowed:
                raise ConfigError(f"{name} must be one of {', '.join(allowed)}, got {getattr(self, name)!r}",
                                  option=name)
        if self.tta not in TTA_VIEWS:
            raise ConfigError(f"tta must be one of {', '.join(TTA_VIEWS)}, got {self.tta!r}", option="tta")
        if self.bands is not None:
            seen = [str(b).strip() for b in self.bands]
            dup = sorted({b for b in seen if seen.count(b) > 1})
            if dup:
                raise ConfigError(f"band {dup[0]} is chosen twice", option="bands")


def input_gain_bias(spec: InputSpec) -> tuple[np.ndarray, np.ndarray]:
    """Per band ``(gain, bias)`` with ``x * gain + bias == ((DN + offset) * scale - mean) / std``."""
    off, sc = np.asarray(spec.offset, np.float64), np.asarray(spec.scale, np.float64)
    mean, std = np.asarray(spec.mean, np.float64), np.asarray(spec.std, np.float64)
    return (sc / std).astype(np.float32), ((off * sc - mean) / std).astype(np.float32)


@dataclass(frozen=True, eq=False)
class Plan:
    """Everything fixed for one run over one source: pure data, picklable.

    ``source`` reopens the input anywhere (:func:`geoseg.sources.open_source`): a
    GDAL name, or the in-memory source itself."""

    source: Any
    bands: tuple[int, ...]
    masked: bool
    grid: Grid
    gain: np.ndarray   # per band: x * gain + bias == ((DN + offset) * scale - mean) / std
    bias: np.ndarray
    class_ids: np.ndarray  # model output channel -> class id (uint8)
    blend: str
    confidence: bool
    batch_size: int
    src_nodata: tuple[float, ...] | None = None   # per plan band; None: the input's own nodata
    tags: tuple[tuple[str, str], ...] = ()        # what the plan decided, for the output's tags
    kept: int | None = None  # this process's key of the sample blocks kept for the run (make_plan)

    def tasks(self) -> list[tuple[Unit, ...]]:
        """The schedule's tasks: the units of each row of output blocks, in order."""
        rows: dict[int, list[Unit]] = {}
        for u in self.grid.units:
            rows.setdefault(u.region.row, []).append(u)
        return [tuple(v) for _, v in sorted(rows.items())]


#: The share of the machine's memory one forward pass may take.
MEMORY_SHARE = 0.75


def batch_memory_bytes(meta: ModelMeta, tile: int, batch: int) -> int:
    """About the peak memory of one forward pass over ``batch`` windows of ``tile`` px:
    the input, the probabilities and the activations, which for geoseg's UNet come to
    about 6 x base_filters float32 channels per pixel (measured: 226-257 B/px for the
    bundled 8-filter model at 512-2048 px windows)."""
    f = int(meta.architecture.get("base_filters") or 16)
    return batch * tile * tile * 4 * (meta.input.n_bands + 2 * len(meta.classes) + 6 * f)


def machine_memory_bytes() -> int | None:
    """Physical memory, or the container's limit when lower (cgroup v2); None if unknown."""
    try:
        total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return None
    try:
        limit = Path("/sys/fs/cgroup/memory.max").read_text().strip()
        if limit.isdigit():
            total = min(total, int(limit))
    except OSError:
        pass
    return total


def check_memory(meta: ModelMeta, tile: int, batch: int) -> None:
    """Refuse, before anything is allocated, windows and batches this machine cannot hold."""
    need, have = batch_memory_bytes(meta, tile, batch), machine_memory_bytes()
    if have and need > MEMORY_SHARE * have:
        raise ConfigError(f"windows of {tile} px in batches of {batch} need about {need / 2**30:,.1f} GB per batch, "
                          f"more than {MEMORY_SHARE:.0%} of this machine's {have / 2**30:,.1f} GB; choose a smaller "
                          "window size or batch size", option="tile_size")


#: Pixels of one forward pass by default, in training chips of the model.
BATCH_CHIPS = 8
#: The default inference window grows to twice the training chip up to this size.
WINDOW_TARGET = 512


def default_window(meta: ModelMeta) -> int:
    """The inference window when none is asked for: twice the model's training chip,
    up to :data:`WINDOW_TARGET` px (a chip already larger is kept), on the model's
    pooling lattice, and the chip itself where the machine could not hold a batch.

    A fully convolutional model runs any window on its lattice, and the context margin
    (the overlap) does not grow with the window: the network looks at
    ``(W / (W - overlap))²`` times the scene's pixels, 1.31 at the bundled model's
    256 px chip (overlap 32) and 1.14 at 512 px, and a larger window has fewer seams.
    Measured with ``bench/windows.py`` (bundled model, 4096²): 512 px windows in
    batches of 2 run 1.14x faster than 256 px in batches of 8 (768: 1.15x, 1024:
    1.18x with a wider spread), every pixel of the bundled scene as one window gives.
    """
    tile, m = meta.tile_size, max(meta.tile_multiple, 1)
    want = max(tile, min(2 * tile, WINDOW_TARGET))
    want -= want % m
    if want <= tile:
        return tile
    have = machine_memory_bytes()
    if have and batch_memory_bytes(meta, want, default_batch(meta, want)) > MEMORY_SHARE * have:
        return tile
    return want


def default_batch(meta: ModelMeta, tile: int) -> int:
    """Windows per forward pass when none is asked for: about the pixels of
    :data:`BATCH_CHIPS` training chips (8 at the chip size, 2 at twice it, 1 from
    about three times it), so memory per pass does not grow with the window."""
    return max(1, round(BATCH_CHIPS * meta.tile_size ** 2 / (tile * tile)))


def make_plan(src: Source, meta: ModelMeta, options: PredictOptions, *, keep_sample: bool = False) -> Plan:
    """The plan of a run over the open source ``src`` (see :class:`Plan`).

    ``keep_sample``: a run in this process will read the plan's windows (not a
    cluster's workers): the input blocks the plan's checks decoded are kept for that
    run's reader to take instead of decoding them again (:func:`read_unit_rect`; a
    compressed GeoTIFF only, at most :data:`KEEP_SAMPLE_BYTES`, where they are more than
    :data:`KEEP_SAMPLE_SHARE` of its blocks), until it has read them or
    :func:`release_sample` is called."""
    tile = options.tile_size or default_window(meta)
    overlap = meta.overlap if options.overlap is None else options.overlap
    batch_size = options.batch_size or default_batch(meta, tile)
    validate_tiling(tile, overlap, meta.tile_multiple)
    bands = resolve_bands(src, meta.input, options.bands)
    for b in bands:
        dt = np.dtype(src.dtypes[b - 1])
        if not (np.issubdtype(dt, np.integer) or np.issubdtype(dt, np.floating) or dt == np.bool_):
            raise RasterError(f"band {b} of {src.name} holds {dt} values; a model takes real numbers")
    grid = make_grid(src.width, src.height, tile, overlap, options.block_size, align=meta.tile_multiple)
    windows = [w.read for u in grid.units for w in u.windows]
    side = math.isqrt(max((w.height * w.width for w in windows), default=0))
    check_memory(meta, side, min(batch_size, len(windows)))
    spec = meta.input
    if spec.pixel_size and is_georeferenced(src) and src.crs.is_projected:
        res = math.sqrt(abs(src.transform.determinant))
        if abs(res / spec.pixel_size - 1) > 0.25:
            warnings.warn(f"input pixel size {res:g} differs from the model's {spec.pixel_size:g}; "
                          "results may be poor", PixelSizeWarning, stacklevel=2)
    src_nodata = _per_band(options.src_nodata, len(bands), "src_nodata")
    masked = src_nodata is not None or src.has_masks(bands)
    sample = _Sample(src, bands)
    conv, how = input_conversion(src, meta, bands, options, sample)
    gain, bias = input_gain_bias(conv)
    if not masked:
        sample.warn_zero_border()
    tags = [("GEOSEG_INPUT_CONVERSION", how),
            ("GEOSEG_INPUT_OFFSET", ",".join(f"{v:g}" for v in conv.offset)),
            ("GEOSEG_INPUT_SCALE", ",".join(f"{v:g}" for v in conv.scale))]
    level = getattr(src, "level", "")
    if level:
        tags.append(("GEOSEG_INPUT_LEVEL", level))
        want = meta.input_level
        if want and want != level:
            warnings.warn(f"{src.name} is a {level} product but the model was trained on {want}: results may "
                          "be poor", InputLevelWarning, stacklevel=2)
            tags.append(("GEOSEG_LEVEL_MISMATCH", f"input {level}, model {want}"))
    kept = _keep(sample, grid, src) if keep_sample else None
    return Plan(src.spec, tuple(bands), masked, grid, gain, bias,
                np.array([c.id for c in meta.classes], dtype=np.uint8), options.blend, options.confidence,
                batch_size, src_nodata, tuple(tags), kept)


def _per_band(v: float | tuple[float, ...] | None, n: int, option: str) -> tuple[float, ...] | None:
    if v is None:
        return None
    vals = v if isinstance(v, tuple) else (v,) * n
    if len(vals) != n:
        raise ConfigError(f"{option} gives {len(vals)} values for {n} model bands (give one, or one per band)",
                          option=option)
    return tuple(float(x) for x in vals)


#: The plan's checks (radiometry, nodata border) read at most this many input blocks
#: per side of a lattice over the scene (corners and edges included): 16 blocks.
SAMPLE_LATTICE = 4


def sample_rects(src: Source, n: int = SAMPLE_LATTICE) -> list[Rect]:
    """Up to ``n`` x ``n`` whole input blocks on a lattice over the raster (its first and
    last block rows and columns included, where a nodata border shows), so a sample
    decodes each of them once and no other: the input's own blocks (GDAL's tiles, a
    dask array's chunks), else 256 px squares; whole-width strips shorter than 256 rows
    are stacked to 256 rows."""
    bh, bw = _sample_block(src)
    rows = -(-src.height // bh)
    cols = -(-src.width // bw)
    pick_r = np.unique(np.linspace(0, rows - 1, min(n, rows)).round().astype(int))
    pick_c = np.unique(np.linspace(0, cols - 1, min(n, cols)).round().astype(int))
    return [Rect(int(c) * bw, int(r) * bh, min(bw, src.width - int(c) * bw), min(bh, src.height - int(r) * bh))
            for r in pick_r for c in pick_c]


def _sample_block(src: Source) -> tuple[int, int]:
    """The (rows, cols) of the lattice's blocks: the input's own blocks, else 256 px
    squares; whole-width strips shorter than 256 rows stacked to 256 rows."""
    bh, bw = getattr(src, "block_shape", None) or (256, 256)
    bh, bw = max(1, min(int(bh), src.height)), max(1, min(int(bw), src.width))
    if bh < 256 and bw == src.width:  # whole-width strips: enough of them for a 256-row sample
        bh = min(src.height, -(-256 // bh) * bh)
    return bh, bw


class _Sample:
    """What the plan's checks look at: the plan's bands in up to 16 whole input blocks
    on a lattice over the scene (:func:`sample_rects`), read once and only when a check
    needs it — not the whole file, which the run then reads again."""

    def __init__(self, src: Source, bands: list[int]):
        self.src, self.bands = src, bands
        self._data = None
        #: the blocks read, ``(rect, data (bands, h, w) float32, valid (h, w))``
        self.parts: list[tuple[Rect, np.ndarray, np.ndarray]] | None = None

    def get(self) -> tuple[np.ndarray, np.ndarray]:
        """``(data (bands, 1, n) float32, valid (1, n))`` of the sampled pixels."""
        if self._data is None:
            rects = sample_rects(self.src)
            parts = [self.src.read(self.bands, r, True) for r in rects]
            self.parts = [(r, d, v) for r, (d, v) in zip(rects, parts)]
            data = np.concatenate([d.reshape(len(self.bands), -1) for d, _ in parts], axis=1)[:, None, :]
            valid = np.concatenate([v.reshape(-1) for _, v in parts])[None, :]
            self._data = (data, valid)
        return self._data

    def warn_zero_border(self) -> None:
        data, _ = self.get()
        zero = np.all(data == 0, axis=0).mean()  # (the sample is the raw values: valid says nothing here)
        if zero >= 0.01:
            warnings.warn(f"{self.src.name}: {100 * zero:.0f} % of the scene is 0 in every band and no nodata is "
                          "declared: those pixels are classified and counted; declare src_nodata=0 if they hold "
                          "no data", UndeclaredNodataWarning, stacklevel=3)


#: The most a local run keeps of the blocks its plan's checks decoded (bytes, held in
#: the input's own integer type where it has one): 16 blocks of 512 px x 6 uint16 bands
#: are 48 MB.
KEEP_SAMPLE_BYTES = 96 << 20
#: ... and only where decoding them again would cost more than this share of the
#: file's blocks (16 of 64 blocks at 4096² in 512 px tiles: kept; 16 of 484 in a
#: Sentinel-2 tile: read again, 3 % more decoding rather than 48 MB held all run).
KEEP_SAMPLE_SHARE = 0.04


class _Kept:
    """Sample blocks kept for a run's reader: ``rect -> [data, valid, reads left]``."""

    def __init__(self, block: tuple[int, int], blocks: dict[Rect, list]):
        self.block = block
        self.blocks = blocks


_KEPT: dict[int, _Kept] = {}
_KEPT_LOCK = threading.Lock()
_KEPT_KEYS = itertools.count(1)


def _keep(sample: _Sample, grid: Grid, src: Source) -> int | None:
    """Keep the blocks ``sample`` decoded, where taking them from memory gives the run
    exactly what reading the file would (a GeoTIFF read by windows, no resampling) and
    saves decoding them again (a compressed one); each with the number of unit reads
    that will take a piece of it."""
    ds = getattr(src, "ds", None)
    if (sample.parts is None or not isinstance(src, RasterSource) or ds is None or ds.driver != "GTiff"
            or ds.compression is None):
        return None
    dts = {np.dtype(src.dtypes[b - 1]) for b in sample.bands}
    dt = dts.pop() if len(dts) == 1 else np.dtype(np.float32)
    if not (np.issubdtype(dt, np.integer) and dt.itemsize <= 2):
        dt = np.dtype(np.float32)  # float32 holds every value of these exactly
    bh, bw = _sample_block(src)
    n_blocks = -(-src.height // bh) * -(-src.width // bw)
    if (len(sample.parts) <= KEEP_SAMPLE_SHARE * n_blocks
            or sum(d.size * dt.itemsize + v.size for _, d, v in sample.parts) > KEEP_SAMPLE_BYTES):
        return None
    image = Rect(0, 0, src.width, src.height)
    reads = dict.fromkeys((r for r, _, _ in sample.parts), 0)
    for u in grid.units:
        inside = u.read_rect.intersection(image)
        for r in reads:
            if inside is not None and inside.intersection(r) is not None:
                reads[r] += 1
    blocks = {r: [d.astype(dt) if dt != d.dtype else d, v, reads[r]] for r, d, v in sample.parts if reads[r]}
    if not blocks:
        return None
    key = next(_KEPT_KEYS)
    with _KEPT_LOCK:
        _KEPT[key] = _Kept((bh, bw), blocks)
    return key


def release_sample(plan: Plan) -> None:
    """Drop what :func:`make_plan` kept for ``plan``'s run (at its end, whatever happened)."""
    if plan.kept is not None:
        with _KEPT_LOCK:
            _KEPT.pop(plan.kept, None)


def read_unit_rect(src: Source, plan: Plan, rect: Rect) -> tuple[np.ndarray, np.ndarray]:
    """:func:`geoseg.sources.read_rect` of a unit's window ``rect``, taking the pieces
    that lie in blocks the plan kept from memory (the same values: a kept block is
    what reading it gives) and reading the rest block by block; a kept block is
    dropped once the last unit that reads it has."""
    kept = _KEPT.get(plan.kept) if plan.kept is not None else None
    image = Rect(0, 0, src.width, src.height)
    inside = rect.intersection(image)
    hits = []
    if kept is not None and inside is not None:
        with _KEPT_LOCK:
            hits = [r for r in kept.blocks if inside.intersection(r) is not None]
    if not hits:
        return read_rect(src, plan.bands, rect, plan.masked)
    bh, bw = kept.block
    data = np.empty((len(plan.bands), inside.height, inside.width), np.float32)
    valid = np.empty((inside.height, inside.width), bool)
    for r0 in range(inside.row // bh * bh, inside.row + inside.height, bh):
        for c0 in range(inside.col // bw * bw, inside.col + inside.width, bw):
            block = Rect(c0, r0, min(bw, src.width - c0), min(bh, src.height - r0))
            cell = block.intersection(inside)
            dst = cell.slices(inside)
            with _KEPT_LOCK:
                entry = kept.blocks.get(block)
            if entry is not None:
                at = cell.slices(block)
                data[(slice(None),) + dst] = entry[0][(slice(None),) + at]
                valid[dst] = entry[1][at] if plan.masked else True
            else:
                d, v = src.read(plan.bands, cell, plan.masked)
                data[(slice(None),) + dst] = d
                valid[dst] = v
    with _KEPT_LOCK:
        for r in hits:
            entry = kept.blocks.get(r)
            if entry is not None:
                entry[2] -= 1
                if entry[2] <= 0:
                    del kept.blocks[r]
    if inside != rect:  # only ever overhangs right/bottom, as read_rect
        pr, pc = rect.height - inside.height, rect.width - inside.width
        data, valid = reflect_pad(data, pr, pc), reflect_pad(valid, pr, pc)
    return data, valid


def input_conversion(src: Source, meta: ModelMeta, bands: Sequence[int], options: PredictOptions,
                     sample: "_Sample | None" = None) -> tuple[InputSpec, str]:
    """The model's input spec with the input's own conversion to physical units, and
    where it came from (``"options"``, ``"input metadata"``, ``"model convention"``).

    Precedence, per band: the options' ``input_scale``/``input_offset``; what the input
    states (product metadata, GDAL scale/offset) when the model's physical units are
    known; the model's own convention (the training data's). Where nothing says how
    the input converts and it looks like a Sentinel-2 product with the BOA offset
    (baseline >= 04.00: DN = reflectance x 10000 + 1000), it is refused: never a
    silently wrong map."""
    spec = meta.input
    n = len(bands)
    opt_sc = _per_band(options.input_scale, n, "input_scale")
    opt_of = _per_band(options.input_offset, n, "input_offset")
    if opt_of is None and hasattr(src, "check_radiometry"):
        src.check_radiometry()  # a product that should state its offset and does not: refused
    stated = getattr(src, "radiometry", None)
    use_stated = stated is not None and bool(spec.physical_units)
    scale, offset, hows = [], [], set()
    for i, b in enumerate(bands):
        r = stated[b - 1] if use_stated else None
        if opt_sc is not None:
            sc = opt_sc[i]
        elif r is not None:
            sc = r[0]
        else:
            sc = spec.scale[i]
        if opt_of is not None:
            of = opt_of[i]
        elif r is not None:
            of = r[1] / r[0]
        else:
            of = spec.offset[i]
        hows.add("options" if opt_sc is not None or opt_of is not None else
                 "input metadata" if r is not None else "model convention")
        scale.append(float(sc))
        offset.append(float(of))
    how = " + ".join(sorted(hows))
    if stated is not None and not use_stated and opt_sc is None and opt_of is None:
        log.warning("%s states a scale/offset but the model does not say what physical units it takes: "
                    "the model's own convention is used", src.name)
    conv = replace(spec, scale=tuple(scale), offset=tuple(offset))
    if (how == "model convention" and spec.physical_units == "reflectance" and sample is not None
            and _looks_offset(sample, conv)):
        raise RasterError(
            f"{src.name} looks like a Sentinel-2 product with the BOA offset of processing baseline 04.00 or "
            "later (its darkest pixels are all at reflectance 0.1 or more in every band, as DN = reflectance x "
            "10000 + 1000 gives) and nothing states its offset: give the input offset (-1000 for such products, "
            "0 if the data hold none)", option="input_offset")
    return conv, how


def _looks_offset(sample: "_Sample", conv: InputSpec) -> bool:
    data, valid = sample.get()
    if not valid.any():
        return False
    for k in range(data.shape[0]):
        v = data[k][valid & (data[k] != 0)]
        if v.size == 0:
            return False
        refl = (np.percentile(v, 1) + conv.offset[k]) * conv.scale[k]
        if refl < 0.1:
            return False
    return True


@dataclass
class UnitInput:
    """A unit read and normalised: windows ready for the model."""

    unit: Unit
    valid: np.ndarray                  # (h, w) validity of the unit's region
    inputs: list[np.ndarray | None]    # (bands, win_h, win_w) float32 views, one per window to run
    run: list[int]                     # indexes into unit.windows that need the model


@dataclass(frozen=True)
class UnitResult:
    unit: Unit
    classes: np.ndarray               # (h, w) uint8, 255 = nodata
    confidence: np.ndarray | None     # (h, w) uint8 percent, 255 = nodata


def read_unit(src: Source, unit: Unit, plan: Plan) -> UnitInput:
    """Read a unit's windows in one read, mask, normalise; skip all-nodata windows.

    Nodata pixels enter the model as 0 (the normalised mean), so a nodata value such
    as -9999 never leaks into valid neighbours through the receptive field."""
    rect = unit.read_rect
    data, valid = read_unit_rect(src, plan, rect)
    if plan.src_nodata is not None:  # the declared values replace the input's own (GDAL's all-bands rule)
        valid = ~np.all([data[k] == v for k, v in enumerate(plan.src_nodata)], axis=0)
        valid &= np.all(np.isfinite(data), axis=0)
    region_valid = valid[unit.region.slices(rect)]
    run = []
    for i, w in enumerate(unit.windows):
        contrib = w.core if plan.blend == "crop" else (w.read.intersection(unit.region) or w.core)
        if region_valid[contrib.slices(unit.region)].any():
            run.append(i)
    if not run:
        return UnitInput(unit, region_valid, [], run)
    # normalised in place (the read is this unit's own float32 array); the windows stay
    # views into it, band first, until the batch they run in is filled (Batcher.run)
    if data.dtype != np.float32 or not data.flags.writeable:
        data = data.astype(np.float32)
    data *= plan.gain[:, None, None]
    data += plan.bias[:, None, None]
    if plan.masked:
        data[:, ~valid] = 0.0
    inputs: list[np.ndarray | None] = [data[(slice(None),) + unit.windows[i].read.slices(rect)] for i in run]
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


def winning_class(p: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(np.argmax(p, -1), p.max(-1))`` of ``(h, w, K)`` probabilities, the same values
    (ties to the lower index, NaN as NumPy treats it), 4-25x faster for few classes:
    NumPy reduces a short last axis pixel by pixel; this compares whole planes."""
    k = p.shape[-1]
    if k > 32:
        return np.argmax(p, axis=-1), p.max(axis=-1)
    best = p[..., 0].copy()
    idx = np.zeros(best.shape, np.intp)
    for c in range(1, k):
        pc = p[..., c]
        idx[pc > best] = c
        np.maximum(best, pc, out=best)
    if np.isnan(best).any():  # NumPy's argmax points at the first NaN: its rule, exactly
        return np.argmax(p, axis=-1), p.max(axis=-1)
    return idx, best


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
                idx, top = winning_class(probs[j][win.core.slices(win.read)])
                sl = win.core.slices(reg)
                classes[sl] = plan.class_ids[idx]
                if conf is not None:
                    conf[sl] = np.rint(100.0 * top).astype(np.uint8)
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
                acc[dst_sl] += probs[j][src_sl] * weights[src_sl]
                wsum[dst_sl] += weights[src_sl]
            np.divide(acc, np.maximum(wsum, 1e-12), out=acc)
            idx, top = winning_class(acc)
            classes[:] = plan.class_ids[idx]
            if conf is not None:
                conf[:] = np.rint(100.0 * top).astype(np.uint8)
        classes[~uin.valid] = CLASS_NODATA
        if conf is not None:
            conf[~uin.valid] = CLASS_NODATA
    return UnitResult(unit, classes, conf)


class _Slot:
    """A unit waiting for its windows' probabilities."""

    __slots__ = ("uin", "probs", "missing")

    def __init__(self, uin: UnitInput):
        self.uin = uin
        self.probs: list[np.ndarray | None] = [None] * len(uin.run)
        self.missing = len(uin.run)


class Batcher:
    """The schedule, as a small state machine both executors share.

    Units enter in plan order (:meth:`add`); their windows queue per shape (border
    windows are trimmed, and a batch has one shape). A queue that reaches
    ``batch_size`` becomes a batch at once; at the end of a task (:meth:`end_task`)
    what is left of each queue becomes one short batch, queues in the order their
    shapes first appeared. Finished units leave in plan order (:meth:`done`).
    """

    def __init__(self, batch_size: int):
        self.batch_size = batch_size
        self._queues: dict[tuple, deque] = {}
        self._open: deque[_Slot] = deque()

    def add(self, uin: UnitInput) -> list[list[tuple[_Slot, int]]]:
        """Queue a unit's windows; returns the batches that are full."""
        slot = _Slot(uin)
        self._open.append(slot)
        ready = []
        for j, x in enumerate(uin.inputs):
            q = self._queues.setdefault(x.shape, deque())
            q.append((slot, j))
            if len(q) == self.batch_size:
                ready.append([q.popleft() for _ in range(self.batch_size)])
        return ready

    def end_task(self) -> list[list[tuple[_Slot, int]]]:
        """The short batches left at the end of a task."""
        ready = [list(q) for q in self._queues.values() if q]
        self._queues.clear()
        return ready

    @staticmethod
    def run(batch: list[tuple[_Slot, int]], forward: Forward) -> tuple[int, int]:
        """Run one batch; returns (windows, input pixels)."""
        first = batch[0][0].uin.inputs[batch[0][1]]
        c, h, w = first.shape
        x = np.empty((len(batch), h, w, c), np.float32)  # the model's band-last batch, filled once
        for k, (slot, j) in enumerate(batch):
            np.copyto(x[k], slot.uin.inputs[j].transpose(1, 2, 0))
        y = forward(x)
        for (slot, j), p in zip(batch, y):
            slot.probs[j] = p
            slot.missing -= 1
            slot.uin.inputs[j] = None  # the input is no longer needed
        return x.shape[0], x.shape[0] * x.shape[1] * x.shape[2]

    def done(self, plan: Plan) -> list[UnitResult]:
        """Merge and return the finished units at the head of the plan order."""
        out = []
        while self._open and self._open[0].missing == 0:
            s = self._open.popleft()
            out.append(merge_unit(s.uin, s.probs if s.uin.run else None, plan))
        return out

    @property
    def idle(self) -> bool:
        return not self._open


def process_task(plan: Plan, units: Sequence[Unit], forward: Forward, src: Source | None = None) -> list[UnitResult]:
    """Run one task of the schedule (see :meth:`Plan.tasks`) start to end: the pure unit
    of work of other executors. Opens the source itself unless one is given, so it can
    run wherever the input can be read. The results are exactly the local run's."""
    with owned_source(plan.source if src is None else src) as src:
        b = Batcher(plan.batch_size)
        out: list[UnitResult] = []
        for u in units:
            for batch in b.add(read_unit(src, u, plan)):
                b.run(batch, forward)
            out += b.done(plan)
        for batch in b.end_task():
            b.run(batch, forward)
        out += b.done(plan)
        assert b.idle
        return out
