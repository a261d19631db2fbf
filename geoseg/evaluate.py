"""Accuracy of class rasters: confusion matrix and per-class scores.

Scores from a confusion matrix ``C[truth, pred]`` (pixels counted once):

* IoU = TP / (TP + FP + FN); Dice = F1 = 2 TP / (2 TP + FP + FN);
  precision = TP / (TP + FP); recall = TP / (TP + FN); NaN where undefined;
* overall accuracy = trace / total;
* mean IoU and mean Dice leave out the background class (and ignored pixels are
  never counted): a mean that includes a dominant background looks better than
  the model is.

:func:`evaluate_rasters` compares two rasters on the same grid block by block (no
whole-scene arrays), so it works on scenes of any size.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np

from .errors import RasterError

__all__ = ["Scores", "confusion_matrix", "scores_from_confusion", "evaluate_rasters", "write_scores"]


@dataclass
class Scores:
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
    lut_size = int(max(ids.max(), truth.max(initial=0), pred.max(initial=0))) + 1
    lut = np.full(lut_size, -1, np.int64)
    lut[ids] = np.arange(k)
    t = lut[truth.astype(np.int64, copy=False).ravel()]
    p = lut[pred.astype(np.int64, copy=False).ravel()]
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
    s = Scores(list(class_ids), list(class_names or [f"class_{c}" for c in class_ids]), conf, background,
               unpredicted, iou.tolist(), dice.tolist(), _div(tp, tp + fp).tolist(), _div(tp, tp + fn).tolist(),
               float(tp.sum() / total) if total else float("nan"))
    with np.errstate(all="ignore"):
        sub_i, sub_d = iou[keep], dice[keep]
        s.mean_iou = float(np.nanmean(sub_i)) if np.isfinite(sub_i).any() else float("nan")
        s.mean_dice = float(np.nanmean(sub_d)) if np.isfinite(sub_d).any() else float("nan")
    return s


def _same_grid(a, b) -> None:
    if (a.width, a.height) != (b.width, b.height):
        raise RasterError(f"prediction is {a.width} x {a.height} px but the truth is {b.width} x {b.height}")
    if not a.transform.almost_equals(b.transform):
        raise RasterError("prediction and truth are not on the same grid (transforms differ)")
    if a.crs and b.crs and a.crs != b.crs:
        import pyproj  # noqa: PLC0415
        ca, cb = pyproj.CRS.from_wkt(a.crs.to_wkt()), pyproj.CRS.from_wkt(b.crs.to_wkt())
        # the same projection spelled differently (e.g. EPSG:32119 vs EPSG:3358 in the NC data) is fine
        if not (ca.equals(cb, ignore_axis_order=True) or ca.to_proj4() == cb.to_proj4()):
            raise RasterError(f"prediction and truth have different CRSs ({ca.name} vs {cb.name})")


def evaluate_rasters(pred_path: str | os.PathLike, truth_path: str | os.PathLike, class_ids: Sequence[int],
                     class_names: Sequence[str] | None = None, background: int | None = None,
                     truth_nodata: float | None | str = "auto", ignore: Sequence[int] = ()) -> Scores:
    """Compare a predicted class raster with a truth raster, block by block.

    ``truth_nodata``: ``"auto"`` honours the truth's declared nodata, ``None``
    ignores it (the S2 truth files wrongly declare 0), a value overrides it.
    Truth pixels in ``ignore`` are not counted. Prediction nodata (255) inside valid
    truth is counted as ``unpredicted``.
    """
    from rasterio.windows import Window  # noqa: PLC0415

    from .io import CLASS_NODATA, open_raster  # noqa: PLC0415

    k = len(class_ids)
    conf = np.zeros((k, k), np.int64)
    unpredicted = 0
    with open_raster(pred_path) as p, open_raster(truth_path) as t:
        _same_grid(p, t)
        nd = t.nodata if truth_nodata == "auto" else truth_nodata
        step = max(1, (4 << 20) // max(p.width, 1))
        for r0 in range(0, p.height, step):
            win = Window(0, r0, p.width, min(step, p.height - r0))
            pr = p.read(1, window=win)
            tr = t.read(1, window=win)
            valid = np.ones(tr.shape, bool)
            if nd is not None:
                valid &= tr != nd
            if np.issubdtype(tr.dtype, np.floating):
                valid &= np.isfinite(tr)
                tr = np.where(valid, tr, 0).astype(np.int64)
            for v in ignore:
                valid &= tr != v
            unpredicted += int(np.count_nonzero(valid & (pr == CLASS_NODATA)))
            conf += confusion_matrix(tr, pr, class_ids, valid)
    return scores_from_confusion(conf, class_ids, class_names, background, unpredicted)


def write_scores(scores: Scores, prefix: str | os.PathLike) -> list[Path]:
    """``PREFIX.json`` (everything), ``PREFIX.csv`` (one row per class plus means)."""
    prefix = Path(prefix)
    out_json = prefix.with_name(prefix.name + ".json")
    out_csv = prefix.with_name(prefix.name + ".csv")
    out_json.write_text(json.dumps(scores.as_dict(), indent=2) + "\n")
    lines = ["class_id,class_name,iou,dice,precision,recall,truth_pixels,predicted_pixels"]
    d = scores.as_dict()
    for c in d["classes"]:
        vals = ["" if c[k] is None else f"{c[k]:.6f}" for k in ("iou", "dice", "precision", "recall")]
        lines.append(",".join([str(c["id"]), c["name"], *vals, str(c["truth_pixels"]), str(c["predicted_pixels"])]))
    for key in ("mean_iou_excluding_background", "mean_dice_excluding_background", "overall_accuracy"):
        v = d[key]
        lines.append(f"{key},,{'' if v is None else f'{v:.6f}'},,,,,")
    out_csv.write_text("\n".join(lines) + "\n")
    return [out_json, out_csv]
