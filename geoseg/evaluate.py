"""Accuracy of class rasters: confusion matrix and per-class scores.

Scores from a confusion matrix ``C[truth, pred]`` (pixels counted once):

* IoU = TP / (TP + FP + FN); Dice = F1 = 2 TP / (2 TP + FP + FN);
  precision = TP / (TP + FP); recall = TP / (TP + FN); NaN where undefined;
* overall accuracy = trace / total;
* mean IoU and mean Dice leave out the background class (and ignored pixels are
  never counted): a mean that includes a dominant background looks better than
  the model is.

:func:`evaluate_rasters` compares two rasters on the same grid block by block, and
:func:`evaluate_model_on_raster` scores the engine's blocks as they are made through a
:class:`ConfusionSink` (nothing written, no whole-scene arrays), so both work on
scenes of any size.
"""

from __future__ import annotations

import io
import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
from rasterio.windows import Window

from .bundle import ModelMeta
from .errors import RasterError
from .files import write_atomic
from .pipeline import run_plan
from .predict import resolve_model
from .progress import CancelFn, ProgressFn, Reporter
from .sources import (CLASS_NODATA, ArraySource, RasterSource, check_same_grid, label_valid, open_raster,
                      owned_source, resolve_nodata)
from .unit import Forward, PredictOptions, input_gain_bias, make_plan

__all__ = ["Scores", "ConfusionSink", "confusion_matrix", "scores_from_confusion", "evaluate_rasters",
           "write_scores", "plot_confusion", "evaluate_model_on_raster", "evaluate_chips", "format_scores"]


@dataclass(frozen=True)
class Scores:
    """Scores of a confusion matrix (built by :func:`scores_from_confusion`)."""

    class_ids: list[int]
    class_names: list[str]
    confusion: np.ndarray          # (K, K) int64, rows = truth, columns = prediction
    background: int | None = None
    unpredicted: int = 0           # valid truth pixels the prediction left as nodata
    iou: list[float] = field(default_factory=list)
    dice: list[float] = field(default_factory=list)
    precision: list[float] = field(default_factory=list)
    recall: list[float] = field(default_factory=list)
    overall_accuracy: float = float("nan")
    mean_iou: float = float("nan")
    mean_dice: float = float("nan")

    def as_dict(self) -> dict:
        def clean(v):
            return None if isinstance(v, float) and math.isnan(v) else v
        return {
            "classes": [{"id": i, "name": n, "iou": clean(a), "dice": clean(b), "precision": clean(c),
                         "recall": clean(d), "truth_pixels": int(self.confusion[k].sum()),
                         "predicted_pixels": int(self.confusion[:, k].sum())}
                        for k, (i, n, a, b, c, d) in enumerate(zip(self.class_ids, self.class_names, self.iou,
                                                                   self.dice, self.precision, self.recall))],
            "background": self.background,
            "overall_accuracy": clean(self.overall_accuracy),
            "mean_iou_excluding_background": clean(self.mean_iou),
            "mean_dice_excluding_background": clean(self.mean_dice),
            "pixels": int(self.confusion.sum()),
            "unpredicted_pixels": int(self.unpredicted),
            "confusion_matrix": self.confusion.tolist(),
        }


def confusion_matrix(truth: np.ndarray, pred: np.ndarray, class_ids: Sequence[int],
                     valid: np.ndarray | None = None) -> np.ndarray:
    """``C[t, p]`` over pixels where ``valid`` and both values are among ``class_ids``."""
    ids = np.asarray(class_ids, np.int64)
    k = len(ids)
    size = int(ids.max()) + 1
    lut = np.full(size, -1, np.int64)
    lut[ids] = np.arange(k)

    def index(a: np.ndarray) -> np.ndarray:
        v = a.ravel()
        inside = (v >= 0) & (v < size)
        if np.issubdtype(v.dtype, np.floating):
            inside &= np.isfinite(v) & (v == np.floor(v))
        out = np.full(v.shape, -1, np.int64)
        out[inside] = lut[v[inside].astype(np.int64)]
        return out

    t, p = index(truth), index(pred)
    ok = (t >= 0) & (p >= 0)
    if valid is not None:
        ok &= valid.ravel()
    return np.bincount(t[ok] * k + p[ok], minlength=k * k).reshape(k, k).astype(np.int64)


def _div(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(b > 0, a / np.where(b > 0, b, 1), np.nan)


def scores_from_confusion(conf: np.ndarray, class_ids: Sequence[int], class_names: Sequence[str] | None = None,
                          background: int | None = None, unpredicted: int = 0) -> Scores:
    conf = np.asarray(conf, np.int64)
    tp = np.diag(conf).astype(np.float64)
    fp = conf.sum(axis=0) - tp
    fn = conf.sum(axis=1) - tp
    iou = _div(tp, tp + fp + fn)
    dice = _div(2 * tp, 2 * tp + fp + fn)
    keep = [k for k, c in enumerate(class_ids) if c != background]
    total = conf.sum()
    with np.errstate(all="ignore"):
        sub_i, sub_d = iou[keep], dice[keep]
        mean_iou = float(np.nanmean(sub_i)) if np.isfinite(sub_i).any() else float("nan")
        mean_dice = float(np.nanmean(sub_d)) if np.isfinite(sub_d).any() else float("nan")
    return Scores(class_ids=list(class_ids), class_names=list(class_names or [f"class_{c}" for c in class_ids]),
                  confusion=conf, background=background, unpredicted=unpredicted, iou=iou.tolist(),
                  dice=dice.tolist(), precision=_div(tp, tp + fp).tolist(), recall=_div(tp, tp + fn).tolist(),
                  overall_accuracy=float(tp.sum() / total) if total else float("nan"), mean_iou=mean_iou,
                  mean_dice=mean_dice)


class ConfusionSink:
    """A sink that scores finished blocks against a truth raster instead of writing
    them (memory bounded by the block, at any scene size).

    ``truth`` is a :class:`geoseg.sources.Source` on the prediction's grid (class
    values in band 1), or None when blocks are given to :meth:`add` directly. Pixels where the truth is nodata,
    not finite or one of ``ignore`` are not counted; valid truth pixels the
    prediction left as nodata are counted as ``unpredicted``.
    """

    def __init__(self, truth, class_ids: Sequence[int], truth_nodata=None, ignore: Sequence[int] = ()):
        self.truth = truth
        self.class_ids = [int(c) for c in class_ids]
        self.nodata = truth_nodata
        self.ignore = tuple(ignore)
        k = len(self.class_ids)
        self.confusion = np.zeros((k, k), np.int64)
        self.unpredicted = 0

    def write(self, res) -> None:
        """Count one finished block (a :class:`geoseg.unit.UnitResult`)."""
        self.add(res.classes, self.truth.read([1], res.unit.region, False)[0][0])

    def add(self, pred: np.ndarray, truth: np.ndarray, pred_nodata: float | None = CLASS_NODATA) -> None:
        valid = label_valid(truth, self.nodata)
        for v in self.ignore:
            valid &= truth != v
        if pred_nodata is not None:
            self.unpredicted += int(np.count_nonzero(valid & (pred == pred_nodata)))
        self.confusion += confusion_matrix(truth, pred, self.class_ids, valid)

    def scores(self, class_names: Sequence[str] | None = None, background: int | None = None) -> Scores:
        return scores_from_confusion(self.confusion, self.class_ids, class_names, background, self.unpredicted)


def evaluate_rasters(pred_path: str | os.PathLike, truth_path: str | os.PathLike, class_ids: Sequence[int],
                     class_names: Sequence[str] | None = None, background: int | None = None,
                     truth_nodata: float | None | str = "auto", ignore: Sequence[int] = (),
                     progress: ProgressFn | None = None, is_cancelled: CancelFn | None = None) -> Scores:
    """Compare a predicted class raster with a truth raster, block by block.

    ``truth_nodata``: ``"auto"`` honours the truth's declared nodata, ``None``
    ignores it (the S2 truth files wrongly declare 0), a value overrides it.
    Truth pixels in ``ignore`` are not counted. Prediction nodata (255) inside valid
    truth is counted as ``unpredicted``. Rasters not on the same grid are refused.
    """
    with open_raster(pred_path) as p, open_raster(truth_path) as t:
        check_same_grid(p, t)
        sink = ConfusionSink(None, class_ids, resolve_nodata(t.nodata, truth_nodata), ignore)
        step = max(1, (4 << 20) // max(p.width, 1))
        starts = range(0, p.height, step)
        reporter = Reporter(progress, is_cancelled, total=len(starts))
        reporter.check()
        for r0 in starts:
            win = Window(0, r0, p.width, min(step, p.height - r0))
            sink.add(p.read(1, window=win), t.read(1, window=win), CLASS_NODATA if p.nodata is None else p.nodata)
            reporter.step()
    return sink.scores(class_names, background)


def write_scores(scores: Scores, prefix: str | os.PathLike, overwrite: bool = True) -> list[Path]:
    """``PREFIX.json`` (everything), ``PREFIX.csv`` (one row per class plus means); without
    ``overwrite`` a file another run put there meanwhile is not replaced."""
    prefix = Path(prefix)
    out_json = prefix.with_name(prefix.name + ".json")
    out_csv = prefix.with_name(prefix.name + ".csv")
    write_atomic(out_json, json.dumps(scores.as_dict(), indent=2) + "\n", overwrite)
    lines = ["class_id,class_name,iou,dice,precision,recall,truth_pixels,predicted_pixels"]
    d = scores.as_dict()
    for c in d["classes"]:
        vals = ["" if c[k] is None else f"{c[k]:.6f}" for k in ("iou", "dice", "precision", "recall")]
        lines.append(",".join([str(c["id"]), c["name"], *vals, str(c["truth_pixels"]), str(c["predicted_pixels"])]))
    for key in ("mean_iou_excluding_background", "mean_dice_excluding_background", "overall_accuracy"):
        v = d[key]
        lines.append(f"{key},,{'' if v is None else f'{v:.6f}'},,,,,")
    write_atomic(out_csv, "\n".join(lines) + "\n", overwrite)
    return [out_json, out_csv]


def plot_confusion(scores: Scores, path: str | os.PathLike, title: str = "", overwrite: bool = True) -> Path:
    """Confusion-matrix PNG: rows (truth) normalised to 1, counts written in the cells."""
    from .preview import pyplot  # noqa: PLC0415  (matplotlib only when a plot is asked for)
    plt = pyplot()

    conf = scores.confusion.astype(np.float64)
    rows = conf.sum(axis=1, keepdims=True)
    norm = np.divide(conf, rows, out=np.zeros_like(conf), where=rows > 0)
    k = len(scores.class_ids)
    size = max(5.5, 0.9 * k + 2.5)
    fig, ax = plt.subplots(figsize=(size, size * 0.9), dpi=110)
    im = ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
    labels = [f"{i} {n}" for i, n in zip(scores.class_ids, scores.class_names)]
    ax.set_xticks(range(k), labels, rotation=45, ha="right")
    ax.set_yticks(range(k), labels)
    ax.set_xlabel("predicted")
    ax.set_ylabel("truth")
    for r in range(k):
        for c in range(k):
            ax.text(c, r, f"{norm[r, c]:.2f}\n{int(conf[r, c]):,}", ha="center", va="center", fontsize=7,
                    color="white" if norm[r, c] > 0.5 else "black")
    head = (f"mean IoU {scores.mean_iou:.3f}, mean Dice {scores.mean_dice:.3f}"
            + (" (excl. background)" if scores.background is not None else "")
            + f"\noverall accuracy {scores.overall_accuracy:.3f}")
    ax.set_title((title + "\n" if title else "") + head, fontsize=9)
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return write_atomic(path, buf.getvalue(), overwrite)


def evaluate_model_on_raster(model, image, truth_path: str | os.PathLike, options: PredictOptions | None = None,
                             truth_nodata: float | None | str = "auto", ignore: Sequence[int] = (),
                             background: int | None | str = "model", forward: Forward | None = None,
                             progress: ProgressFn | None = None, is_cancelled: CancelFn | None = None) -> Scores:
    """Segment ``image`` with the engine (windowed, as ``predict`` does) and score each
    finished block against ``truth_path`` as it comes: no prediction raster is written
    or read back, and memory stays bounded by the pipeline at any scene size.

    ``background``: the class left out of the means (``"model"``: the bundle's)."""
    options = options or PredictOptions()
    meta, get_forward = resolve_model(model, options, forward)
    bg = meta.background if background == "model" else background
    reporter = Reporter(progress, is_cancelled)
    reporter.check()
    with owned_source(image, **options.product_options()) as src, RasterSource(truth_path) as t:
        check_same_grid(src, t, ("image", "truth"))
        plan = make_plan(src, meta, options)
        reporter.total = len(plan.grid)
        ids = [c.id for c in meta.classes]
        sink = ConfusionSink(t, ids, resolve_nodata(t.nodatavals[0], truth_nodata), ignore)
        run_plan(plan, get_forward(), sink.write, reporter, options.prefetch)
    return sink.scores([c.name for c in meta.classes], bg)


def format_scores(scores: Scores) -> str:
    lines = [f"  {'id':>3}  {'class':<20} {'IoU':>7} {'Dice':>7} {'prec.':>7} {'recall':>7} {'truth px':>12}"]

    def f(v):
        return "    n/a" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:7.4f}"
    for k, (cid, name) in enumerate(zip(scores.class_ids, scores.class_names)):
        lines.append(f"  {cid:>3}  {name[:20]:<20} {f(scores.iou[k])} {f(scores.dice[k])} "
                     f"{f(scores.precision[k])} {f(scores.recall[k])} {int(scores.confusion[k].sum()):>12,}")
    excl = " (excluding background)" if scores.background is not None else ""
    lines.append(f"  mean IoU {f(scores.mean_iou).strip()}, mean Dice {f(scores.mean_dice).strip()}{excl}, "
                 f"overall accuracy {f(scores.overall_accuracy).strip()}")
    if scores.unpredicted:
        lines.append(f"  {scores.unpredicted:,} valid truth pixels were left as nodata by the prediction")
    return "\n".join(lines)


def evaluate_chips(model, image_dir: str | os.PathLike, mask_dir: str | os.PathLike,
                   rgb_map: dict | None = None, ignore_index: int = 255, batch_size: int = 8,
                   options: PredictOptions | None = None, ignore: Sequence[int] = (),
                   background: int | None | str = "model", forward: Forward | None = None,
                   progress: ProgressFn | None = None, is_cancelled: CancelFn | None = None) -> Scores:
    """Scores of a model on image/mask folders (masks as class indexes, or colours
    through ``rgb_map``; unmapped colours and ``ignore`` values are not counted).

    A chip that fits one window (a multiple of the model's tile multiple, no larger
    than its tile) is one batched forward pass, scaled as the bundle says; a larger
    image (e.g. a whole Dubai tile part) is segmented with the engine, windowed and
    overlapped as ``predict`` does with ``options``. ``background``: the class left
    out of the means (``"model"``: the bundle's)."""
    from .chips import MaskRule, list_chips, read_chip  # noqa: PLC0415

    options = options or PredictOptions()
    meta, get_forward = resolve_model(model, options, forward)
    spec = meta.input
    pairs = list_chips(image_dir, mask_dir)
    lut = MaskRule.colours(rgb_map) if rgb_map else MaskRule.indexes()
    gain, bias = input_gain_bias(spec)
    fwd = get_forward()
    ids = np.array([c.id for c in meta.classes], np.uint8)
    skip = [ignore_index, *ignore]
    sink = ConfusionSink(None, list(ids), None, skip)
    batch_x, batch_y = [], []
    reporter = Reporter(progress, is_cancelled, total=len(pairs))
    reporter.check()

    def flush():
        if not batch_x:
            return
        probs = fwd(np.stack(batch_x))
        for p, y in zip(probs, batch_y):
            sink.add(ids[np.argmax(p, axis=-1)], y, None)
        batch_x.clear()
        batch_y.clear()

    m = meta.tile_multiple
    for ip, mp in pairs:
        x, y = read_chip(ip, mp, lut, ignore_index)
        if x.shape[0] != spec.n_bands:
            raise RasterError(f"{os.path.basename(ip)} has {x.shape[0]} bands but the model takes {spec.n_bands}")
        if x.shape[1] % m or x.shape[2] % m or max(x.shape[1:]) > meta.tile_size:
            _engine_confusion(sink, x, y, os.path.basename(str(ip)), meta, fwd, options, is_cancelled)
        else:
            if batch_x and x.shape[1:] != batch_x[0].shape[:2]:
                flush()
            batch_x.append(np.moveaxis(x.astype(np.float32), 0, -1) * gain + bias)
            batch_y.append(y)
            if len(batch_x) == batch_size:
                flush()
        reporter.step()
    flush()
    bg = meta.background if background == "model" else background
    return sink.scores([c.name for c in meta.classes], bg)


def _engine_confusion(sink: ConfusionSink, image: np.ndarray, truth: np.ndarray, name: str, meta: ModelMeta,
                      forward: Forward, options: PredictOptions, is_cancelled: CancelFn | None = None) -> None:
    """Segment one image held in memory with the engine (windows, overlap, as
    ``predict``) and score its blocks against ``truth`` (class indexes)."""
    if image.shape[1:] != truth.shape:
        raise RasterError(f"{name}: image and mask sizes differ ({image.shape[2]} x {image.shape[1]} vs "
                          f"{truth.shape[1]} x {truth.shape[0]})")
    src = ArraySource(image, name=name)
    plan = make_plan(src, meta, options)
    part = ConfusionSink(ArraySource(truth), sink.class_ids, None, sink.ignore)
    run_plan(plan, forward, part.write, Reporter(is_cancelled=is_cancelled), options.prefetch)
    sink.confusion += part.confusion
