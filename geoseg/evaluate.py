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

__all__ = ["Scores", "confusion_matrix", "scores_from_confusion", "evaluate_rasters", "write_scores",
           "plot_confusion", "evaluate_model_on_raster", "format_scores"]


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

    from .io import CLASS_NODATA, label_valid, open_raster  # noqa: PLC0415

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
            valid = label_valid(tr, nd)
            for v in ignore:
                valid &= tr != v
            pnd = CLASS_NODATA if p.nodata is None else p.nodata
            unpredicted += int(np.count_nonzero(valid & (pr == pnd)))
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


def plot_confusion(scores: Scores, path: str | os.PathLike, title: str = "") -> Path:
    """Confusion-matrix PNG: rows (truth) normalised to 1, counts written in the cells."""
    import warnings  # noqa: PLC0415

    with warnings.catch_warnings():  # Debian's mpl_toolkits beside a pip matplotlib
        warnings.filterwarnings("ignore", message="Unable to import Axes3D")
        import matplotlib  # noqa: PLC0415
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt  # noqa: PLC0415
        fig, ax = plt.subplots(figsize=(1, 1))
        plt.close(fig)

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
    out = Path(path)
    fig.savefig(out)
    plt.close(fig)
    return out


def evaluate_model_on_raster(model, image_path: str | os.PathLike, truth_path: str | os.PathLike,
                             options=None, truth_nodata: float | None | str = "auto",
                             ignore: Sequence[int] = (), keep_prediction: str | os.PathLike | None = None,
                             progress=None) -> Scores:
    """Segment ``image_path`` with the engine (windowed, as ``predict`` does) and
    compare the result with ``truth_path`` block by block."""
    import tempfile  # noqa: PLC0415

    from .predict import PredictOptions, predict_raster  # noqa: PLC0415

    if isinstance(model, (str, os.PathLike)):
        from .model import load_model  # noqa: PLC0415
        model = load_model(model)
    meta = model.meta
    with tempfile.TemporaryDirectory() as tmp:
        pred = Path(keep_prediction) if keep_prediction else Path(tmp) / "prediction.tif"
        predict_raster(image_path, pred, model, options or PredictOptions(), overwrite=bool(keep_prediction),
                       progress=progress)
        return evaluate_rasters(pred, truth_path, [c.id for c in meta.classes], [c.name for c in meta.classes],
                                meta.background, truth_nodata, ignore)


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
                   options=None, progress=None, ignore: Sequence[int] = ()) -> Scores:
    """Scores of a model on image/mask folders (masks as class indexes, or colours
    through ``rgb_map``; unmapped colours and ``ignore`` values are not counted).

    A chip that fits one window (a multiple of the model's tile multiple, no larger
    than its tile) is one batched forward pass, scaled as the bundle says; a larger
    image (e.g. a whole Dubai tile part) is segmented with the engine, windowed and
    overlapped as ``predict`` does with ``options``."""
    from .dataset import colour_map_lut  # noqa: PLC0415
    from .train import _read_chip, list_chips  # noqa: PLC0415

    if isinstance(model, (str, os.PathLike)):
        from .model import load_model  # noqa: PLC0415
        model = load_model(model)
    from .model import make_forward  # noqa: PLC0415
    meta = model.meta
    spec = meta.input
    pairs = list_chips(image_dir, mask_dir)
    lut = colour_map_lut(rgb_map) if rgb_map else None
    gain = (np.array(spec.scale) / np.array(spec.std)).astype(np.float32)
    bias = ((np.array(spec.offset) * np.array(spec.scale) - np.array(spec.mean)) / np.array(spec.std)).astype(np.float32)
    from .predict import PredictOptions, tta_forward  # noqa: PLC0415
    fwd = tta_forward(make_forward(model.keras_model, meta.tile_size, spec.n_bands, meta.head),
                      (options or PredictOptions()).tta)
    ids = np.array([c.id for c in meta.classes], np.uint8)
    k = len(ids)
    conf = np.zeros((k, k), np.int64)
    batch_x, batch_y = [], []

    def flush():
        nonlocal conf
        if not batch_x:
            return
        probs = fwd(np.stack(batch_x))
        for p, y in zip(probs, batch_y):
            pred = ids[np.argmax(p, axis=-1)]
            conf += confusion_matrix(y, pred, list(ids), ~np.isin(y, skip))
        batch_x.clear()
        batch_y.clear()

    m = meta.tile_multiple
    skip = [ignore_index, *ignore]
    for n, (ip, mp) in enumerate(pairs):
        x, y = _read_chip(ip, mp, lut, ignore_index)
        if x.shape[0] != spec.n_bands:
            raise RasterError(f"{os.path.basename(ip)} has {x.shape[0]} bands but the model takes {spec.n_bands}")
        if progress is not None:
            progress(n, len(pairs))
        if x.shape[1] % m or x.shape[2] % m or max(x.shape[1:]) > meta.tile_size:
            conf += _engine_confusion(model, ip, y, list(ids), skip, options)
            continue
        if batch_x and x.shape[1:] != batch_x[0].shape[:2]:
            flush()
        batch_x.append(np.moveaxis(x.astype(np.float32), 0, -1) * gain + bias)
        batch_y.append(y)
        if len(batch_x) == batch_size:
            flush()
    flush()
    if progress is not None:
        progress(len(pairs), len(pairs))
    return scores_from_confusion(conf, [c.id for c in meta.classes], [c.name for c in meta.classes],
                                 meta.background)


def _engine_confusion(model, image_path, truth: np.ndarray, ids: list[int], skip: list[int],
                      options=None) -> np.ndarray:
    """Segment one image with the engine (windows, overlap, as predict) and count it
    against ``truth`` (already mapped to class indexes)."""
    import tempfile  # noqa: PLC0415
    import warnings  # noqa: PLC0415

    from .predict import PredictOptions, predict_raster  # noqa: PLC0415
    with tempfile.TemporaryDirectory() as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore")  # plain photos: no georeferencing, areas in pixels - irrelevant here
        out = Path(tmp) / "classes.tif"
        predict_raster(image_path, out, model, options or PredictOptions(), overwrite=True)
        import rasterio  # noqa: PLC0415
        with rasterio.open(out) as src:
            pred = src.read(1)
    if pred.shape != truth.shape:
        raise RasterError(f"{os.path.basename(str(image_path))}: image and mask sizes differ "
                          f"({pred.shape[1]} x {pred.shape[0]} vs {truth.shape[1]} x {truth.shape[0]})")
    return confusion_matrix(truth, pred, ids, ~np.isin(truth, skip))
