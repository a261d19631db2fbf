"""Segmenting rasters: the public verbs over the engine.

::

    windows ──> sources (read) ──> unit (normalise, model, merge) ──> pipeline (batching,
    threads) ──> output (write, style, COG, commit) ──> areas

* :func:`predict_raster`: one raster (any GDAL name, an array, a source) to a styled
  class GeoTIFF, with optional area CSV, confidence raster and quick-look PNG.
* :func:`predict_many`: several rasters into a folder, the model compiled once.
* :func:`predict_array`: an array in, class (and confidence) arrays out, in memory.

The model is given as a bundle path (compiled once per process through
:class:`geoseg.model.ModelRef`), a :class:`geoseg.model.LoadedModel`, or a ready
``forward`` function (tests, benchmarks).
"""

from __future__ import annotations

import os
import time
import warnings
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from .areas import AreaTable, pixel_areas, write_areas_csv
from .bundle import ModelMeta, read_metadata
from .errors import BatchError, Cancelled, ConfigError, GeosegError, NoValidDataWarning, RasterError
from .output import ClassRasterWriter, check_creation_options, check_output_path
from .pipeline import run_plan
from .progress import CancelFn, ProgressFn, Reporter
from .sources import CLASS_NODATA, ArraySource, Source, is_plain_path, open_source
from .unit import Forward, PredictOptions, UnitResult, make_plan, release_sample, tta_forward

__all__ = ["PredictOptions", "PredictResult", "predict_raster", "predict_many", "predict_array", "sidecar_paths",
           "resolve_model", "output_tags", "cluster_model", "ArraySink"]


@dataclass(frozen=True)
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
    #: wall time inside the forward calls. Not the engine's overhead: on a machine whose
    #: cores the reader and writer threads share, the model's own calls run slower inside
    #: a run than alone (bench/engine.py measures predict ÷ bare forward instead)
    model_seconds: float = 0.0
    input_pixels: int = 0      # pixels the network looked at (sum of the run windows)
    batches: int = 0


def resolve_model(model: Any, options: PredictOptions, forward: Forward | None = None
                  ) -> tuple[ModelMeta, Callable[[], Forward]]:
    """The model's metadata, and a function that returns its forward pass (with the
    options' test-time augmentation) when first needed: bundle paths through the
    per-process cache of :func:`geoseg.model.load_forward`, so a model is loaded once."""
    from .model import ModelRef, forward_of, load_forward  # noqa: PLC0415  (Keras only when a model runs)
    if isinstance(model, ModelRef):
        _check_ref(model, options)
        meta = read_metadata(model.path)
    elif isinstance(model, (str, os.PathLike)):
        meta = read_metadata(model)
    else:
        meta = model.meta
    if forward is not None:
        return meta, lambda: tta_forward(forward, options.tta)
    if isinstance(model, (str, os.PathLike)):
        model = ModelRef.of(model, options.tta, options.runtime, options.precision)
    if isinstance(model, ModelRef):
        return meta, lambda ref=model: load_forward(ref)
    return meta, lambda: forward_of(model, options.tta, options.runtime, options.precision)


def _check_ref(ref: Any, options: PredictOptions) -> None:
    """A model reference must run what the options ask for."""
    if ref.tta != options.tta:
        raise ConfigError(f"the model reference runs test-time augmentation {ref.tta!r} but the options "
                          f"ask for {options.tta!r}", option="tta")
    for name in ("runtime", "precision"):
        if getattr(options, name) not in ("auto", getattr(ref, name)):
            raise ConfigError(f"the model reference runs {name} {getattr(ref, name)!r} but the options "
                              f"ask for {getattr(options, name)!r}", option=name)


def runtime_label(model: Any, options: PredictOptions, forward: Forward | None = None) -> str:
    """How the model runs, as the ``GEOSEG_RUNTIME`` tag says: ``"openvino float32"``,
    ``"keras float32"``..., or ``"given forward"`` for a caller's forward function."""
    from .model import ModelRef, resolve_runtime  # noqa: PLC0415  (no Keras import)
    if forward is not None:
        return "given forward"
    if isinstance(model, ModelRef):
        return f"{model.runtime} {model.precision}"
    return " ".join(resolve_runtime(options.runtime, options.precision))


def output_tags(meta: ModelMeta, plan, options: PredictOptions, runtime: str | None = None) -> dict[str, str]:
    """The GeoTIFF tags a run writes: the model, how it ran, the tiling, and what the
    plan decided about the input (its conversion to the model's units, its product level)."""
    return {"GEOSEG_MODEL": meta.name, **({"GEOSEG_RUNTIME": runtime} if runtime else {}),
            "GEOSEG_TILE_SIZE": str(plan.grid.tile),
            "GEOSEG_OVERLAP": str(plan.grid.overlap), "GEOSEG_BLEND": plan.blend, "GEOSEG_TTA": options.tta,
            **dict(plan.tags)}


def predict_raster(src: Any, dst_path: str | os.PathLike, model: Any,
                   options: PredictOptions = PredictOptions(), *, overwrite: bool = False,
                   areas_path: str | os.PathLike | None = None,
                   confidence_path: str | os.PathLike | None = None,
                   preview_path: str | os.PathLike | None = None, cog: bool = False,
                   creation_options: Mapping[str, Any] | None = None, overviews: bool = False,
                   forward: Forward | None = None, progress: ProgressFn | None = None,
                   is_cancelled: CancelFn | None = None, client: Any = None) -> PredictResult:
    """Segment ``src`` into a class GeoTIFF at ``dst_path``.

    Args:
        src: a path or any name GDAL opens (``/vsizip/``, ``/vsicurl/``, VRT,
            subdatasets), a Sentinel-2 product (``.SAFE`` folder, zip, ``MTD_MSIL*.xml``),
            a STAC item JSON, a list of Sentinel-2 band files (one scene), a
            ``(bands, rows, cols)`` numpy array, or a
            :class:`geoseg.sources.Source` (e.g. an :class:`~geoseg.sources.ArraySource`
            with a CRS and transform).
        model: a ``.geoseg`` bundle path, a :class:`geoseg.model.ModelRef` or a
            :class:`geoseg.model.LoadedModel`.
        options: tiling, blending, batching, band selection, test-time augmentation.
        areas_path: also write the per-class area CSV (counted while writing).
        confidence_path: also write the winning probability (uint8 %, nodata 255).
        preview_path: also write a quick-look PNG (class colours over the image).
        cog: write a Cloud-Optimised GeoTIFF.
        creation_options: GDAL creation options for the GeoTIFF (or COG) driver, e.g.
            ``{"COMPRESS": "ZSTD"}``; the tiling options are the engine's and refused.
        overviews: build internal overviews (nearest) in a plain GeoTIFF.
        forward: a ready forward function (tests, benchmarks) instead of the model's.
        progress, is_cancelled: see :mod:`geoseg.progress`.
        client: a ``dask.distributed.Client``: the windows are read and run on its
            workers (one task per row of output blocks) and written here, in plan
            order: the same bytes as a local run (:mod:`geoseg.distributed`). The model
            must be a bundle (path or ModelRef) and the input on storage the workers see.

    Everything is written to temporary files beside the targets and renamed at the
    end; an error or a cancellation leaves the targets as they were.
    """
    t_start = time.perf_counter()
    creation_options = check_creation_options(creation_options, "COG" if cog else "GTiff")
    if client is not None:
        ref = cluster_model(model, options, forward)
        meta, get_forward = read_metadata(ref.path), None
    else:
        meta, get_forward = resolve_model(model, options, forward)
    if confidence_path is not None and not options.confidence:
        options = replace(options, confidence=True)
    if Path(dst_path).suffix.lower() not in (".tif", ".tiff"):
        raise ConfigError(f"the class raster is a GeoTIFF: give the output a .tif name, not {Path(dst_path).name}")
    if confidence_path is not None and Path(confidence_path).suffix.lower() not in (".tif", ".tiff"):
        raise ConfigError("the confidence output is a GeoTIFF: give it a .tif name")
    given = list(src) if isinstance(src, (list, tuple)) else [src]
    inputs = [p for p in given if isinstance(p, (str, os.PathLike))]  # GDAL names too: their files count
    if isinstance(model, (str, os.PathLike)):
        inputs.append(model)
    elif getattr(model, "path", ""):
        inputs.append(model.path)
    outs = {"output": dst_path, "areas CSV": areas_path, "confidence output": confidence_path,
            "preview": preview_path}
    resolved: dict[str, Path] = {}
    for what, p in outs.items():
        if p is not None:
            rp = check_output_path(p, inputs, overwrite, what)
            if rp in resolved.values():
                raise RasterError(f"{what} {rp} is also given as another output")
            resolved[what] = rp
    # the style QGIS loads with the output: never an input's own style, never replaced unasked
    own_styles = [Path(p).with_suffix(".qml") for p in inputs if is_plain_path(p)]
    check_output_path(resolved["output"].with_suffix(".qml"), inputs + own_styles, overwrite, "style")
    reporter = Reporter(progress, is_cancelled)
    reporter.check()
    source = open_source(src, **options.product_options())
    plan = None
    try:
        # a local run takes the blocks the plan's checks decoded instead of decoding them again
        plan = make_plan(source, meta, options, keep_sample=client is None)
        px = pixel_areas(source.crs, source.transform, source.width, source.height, warn=areas_path is not None)
        reporter.total = len(plan.grid)
        reporter.report()
        fwd = get_forward() if client is None else None
        runtime = runtime_label(ref if client is not None else model, options, forward)
        with ClassRasterWriter(resolved["output"], width=source.width, height=source.height, crs=source.crs,
                               transform=source.transform, block=plan.grid.block, classes=meta.classes,
                               pixel_areas=px, confidence_target=resolved.get("confidence output"),
                               tags=output_tags(meta, plan, options, runtime),
                               cog=cog, background=meta.background,
                               creation_options=creation_options, overviews=overviews,
                               overwrite=overwrite) as sink:
            if client is None:
                stats = run_plan(plan, fwd, sink.write, reporter, options.prefetch)
            else:
                from .distributed import run_plan_distributed  # noqa: PLC0415  (Dask only when asked)
                stats = run_plan_distributed(client, plan, ref, sink.write, reporter)
            sink.finish()
            table = sink.table()
            masked = getattr(source, "mask_scl", ())
            if masked:  # a product masked by its scene classification: say how much
                table.add_unclassified("masked: scene classification " + ",".join(map(str, masked)),
                                       source.masked_pixels(), px)
            if stats.windows_run == 0:
                note = "no valid input pixel: every pixel is nodata (255) and no class was counted"
                table.notes.append(note)
                warnings.warn(f"{getattr(source, 'label', source.name)}: {note}", NoValidDataWarning, stacklevel=2)
            if areas_path is not None:
                write_areas_csv(table, sink.scratch(resolved["areas CSV"], ".csv"))
            if preview_path is not None:
                from .preview import write_preview  # noqa: PLC0415  (matplotlib-free, but PNG only when asked)
                write_preview(source, sink.main.tmp, sink.scratch(resolved["preview"], ".png"), meta, plan.bands)
            reporter.check()
            sink.commit()
    finally:
        if plan is not None:
            release_sample(plan)
        if source is not src:
            source.close()
    return PredictResult(
        output=resolved["output"], width=plan.grid.width, height=plan.grid.height, n_units=len(plan.grid),
        n_windows=plan.grid.n_windows, n_windows_run=stats.windows_run, counts=sink.counts, areas=table,
        confidence=resolved.get("confidence output"), areas_csv=resolved.get("areas CSV"),
        preview=resolved.get("preview"), seconds=time.perf_counter() - t_start, model_seconds=stats.model_seconds,
        input_pixels=stats.input_pixels, batches=stats.batches)


def cluster_model(model: Any, options: PredictOptions, forward: Forward | None = None):
    """The :class:`geoseg.model.ModelRef` a cluster's workers load: a bundle path or
    reference (a model held in memory or a forward function cannot be shipped)."""
    from .model import ModelRef  # noqa: PLC0415  (no Keras import: a ref is path and hash)
    if forward is not None:
        raise ConfigError("a forward function runs in this process only: give a model bundle to run on a cluster",
                          option="client")
    if isinstance(model, ModelRef):
        _check_ref(model, options)
        return model
    if isinstance(model, (str, os.PathLike)):
        return ModelRef.of(model, options.tta, options.runtime, options.precision)
    path = getattr(model, "path", None)
    if path and Path(path).is_file():
        return ModelRef.of(path, options.tta, options.runtime, options.precision)
    raise ConfigError("a model held in memory cannot be sent to a cluster: save it as a bundle "
                      "(geoseg.model.save_model) and give its path", option="client")


def output_stem(src: str | os.PathLike) -> str:
    """The name an input's outputs take in a folder: its file name without extension;
    for a Sentinel-2 product's ``MTD_MSIL*.xml``, the product's name."""
    p = Path(src)
    if p.name.upper().startswith("MTD_MSI") and p.suffix.lower() == ".xml":
        p = p.parent
    return p.name[:-len(".SAFE")] if p.name.upper().endswith(".SAFE") else p.stem


def sidecar_paths(dst: str | os.PathLike, areas: bool = False, confidence: bool = False,
                  preview: bool = False) -> dict[str, Path | None]:
    """Names of the optional outputs beside ``dst``: ``NAME_areas.csv``,
    ``NAME_confidence.tif`` and ``NAME_preview.png`` (keyword arguments of
    :func:`predict_raster`)."""
    stem = str(Path(dst).with_suffix(""))
    return {"areas_path": Path(stem + "_areas.csv") if areas else None,
            "confidence_path": Path(stem + "_confidence.tif") if confidence else None,
            "preview_path": Path(stem + "_preview.png") if preview else None}


def predict_many(src_paths: Sequence[str | os.PathLike], out_dir: str | os.PathLike, model: Any,
                 options: PredictOptions = PredictOptions(), *, areas: bool = False, confidence: bool = False,
                 preview: bool = False, cog: bool = False, overwrite: bool = False, suffix: str = "_classes.tif",
                 creation_options: Mapping[str, Any] | None = None, overviews: bool = False,
                 forward: Forward | None = None,
                 progress_for: Callable[[Path], ProgressFn | None] | None = None,
                 is_cancelled: CancelFn | None = None, client: Any = None) -> list[PredictResult]:
    """Segment several rasters into ``out_dir`` as ``NAME_classes.tif`` (plus side
    outputs); the model is loaded and compiled once (per process, by its bundle).

    Every target is checked before the first run, so a name clash or an existing
    output is reported before hours of work. An input that fails (not a raster, other
    bands...) leaves no output and does not stop the others: at the end a
    :class:`~geoseg.errors.BatchError` lists what failed and holds the results of
    what did not.
    """
    out_dir = Path(out_dir)
    creation_options = check_creation_options(creation_options, "COG" if cog else "GTiff")
    if not out_dir.is_dir():
        raise RasterError(f"output directory does not exist: {out_dir}")
    stems = [output_stem(p) for p in src_paths]
    if len(set(stems)) != len(stems):
        raise RasterError("several inputs have the same file name; their outputs would collide")
    jobs = []
    for p in src_paths:
        dst = out_dir / (output_stem(p) + suffix)
        side = sidecar_paths(dst, areas, confidence, preview)
        for what, q in [("output", dst)] + [(k, v) for k, v in side.items() if v is not None]:
            check_output_path(q, list(src_paths), overwrite, what)
        jobs.append((p, dst, side))
    if client is not None:
        model = cluster_model(model, options, forward)  # the cluster's workers share it
    elif isinstance(model, (str, os.PathLike)) and forward is None:
        from .model import ModelRef  # noqa: PLC0415
        model = ModelRef.of(model, options.tta, options.runtime, options.precision)  # hashed and compiled once for all inputs
    results = []
    failures: list[tuple[Path, GeosegError]] = []
    for p, dst, side in jobs:
        cb = progress_for(Path(p)) if progress_for else None
        try:
            results.append(predict_raster(p, dst, model, options, overwrite=overwrite, cog=cog, forward=forward,
                                          creation_options=creation_options, overviews=overviews,
                                          progress=cb, is_cancelled=is_cancelled, client=client, **side))
        except Cancelled:
            raise
        except GeosegError as e:  # this input is bad: report it, segment the others
            failures.append((Path(p), e))
    if failures:
        raise BatchError(results, failures)
    return results


class ArraySink:
    """Blocks into in-memory class (and confidence) arrays (a sink for any executor)."""

    def __init__(self, height: int, width: int, confidence: bool):
        self.classes = np.full((height, width), CLASS_NODATA, np.uint8)
        self.confidence = np.full((height, width), CLASS_NODATA, np.uint8) if confidence else None

    def write(self, res: UnitResult) -> None:
        sl = res.unit.region.slices()
        self.classes[sl] = res.classes
        if self.confidence is not None:
            self.confidence[sl] = res.confidence


def predict_array(array: np.ndarray | Source, model: Any, options: PredictOptions = PredictOptions(), *,
                  nodata: float | Sequence[float | None] | None = None,
                  band_names: Sequence[str | None] | None = None, forward: Forward | None = None,
                  progress: ProgressFn | None = None, is_cancelled: CancelFn | None = None
                  ) -> tuple[np.ndarray, np.ndarray | None]:
    """Segment an in-memory ``(bands, rows, cols)`` array (or any source) with the same
    engine, windows and schedule as :func:`predict_raster`.

    Returns ``(classes, confidence)``: uint8 ``(rows, cols)`` arrays, 255 = nodata;
    ``confidence`` (winning probability in %) is None unless ``options.confidence``.
    The class array equals the pixels :func:`predict_raster` writes for the same data.
    """
    meta, get_forward = resolve_model(model, options, forward)
    source = array if isinstance(array, (ArraySource,)) or not isinstance(array, np.ndarray) \
        else ArraySource(array, nodata=nodata, band_names=band_names)
    plan = make_plan(source, meta, options)
    reporter = Reporter(progress, is_cancelled, total=len(plan.grid))
    sink = ArraySink(source.height, source.width, options.confidence)
    run_plan(plan, get_forward(), sink.write, reporter, options.prefetch)
    return sink.classes, sink.confidence
