"""Keras callbacks of the training workflow, and the training history they read.

* :func:`progress_callback`: reports batches done through a
  :class:`~geoseg.progress.Reporter` and stops the run when the caller cancels.
* :func:`curves_callback` / :func:`plot_curves`: loss and mean IoU per epoch as a PNG.
* :func:`read_history`: ``history.csv`` (Keras' CSVLogger) as columns.
* :func:`epoch_preview_callback`: after each epoch, segment a few images with the
  engine and save quick-look PNGs (the seed's ``epoch_change_(tiled)infer``).

Keras is imported when a callback is made (:mod:`geoseg.model`); matplotlib when a
plot is drawn.
"""

from __future__ import annotations

import csv
import logging
import os
import tempfile
from pathlib import Path
from typing import Sequence

from .bundle import ModelMeta
from .model import LoadedModel, keras_module, make_forward
from .predict import PredictOptions, predict_raster
from .progress import CancelFn, Reporter

__all__ = ["progress_callback", "curves_callback", "plot_curves", "read_history", "epoch_preview_callback"]


def progress_callback(reporter: Reporter, steps_per_epoch: int):
    """Report ``epoch * steps_per_epoch + batches`` done after every training batch (in
    the thread that runs ``fit``, the caller's), then raise
    :class:`~geoseg.errors.Cancelled` out of ``fit`` if the caller has cancelled."""
    keras = keras_module()

    class Progress(keras.callbacks.Callback):
        epoch = 0

        def on_epoch_begin(self, epoch, logs=None):
            self.epoch = epoch  # a resumed run starts at the epoch it stopped at

        def on_train_batch_end(self, batch, logs=None):
            reporter.done = self.epoch * steps_per_epoch + batch + 1
            reporter.report()
            reporter.check()

    return Progress()


def read_history(csv_path: str | os.PathLike) -> dict[str, list[float]]:
    """history.csv (CSVLogger) as columns; all epochs, across resumed runs."""
    hist: dict[str, list[float]] = {}
    try:
        with open(csv_path, newline="") as f:
            for row in csv.DictReader(f):
                for key, v in row.items():
                    if key != "epoch" and v not in ("", None):
                        hist.setdefault(key, []).append(float(v))
    except FileNotFoundError:
        pass
    return hist


def curves_callback(path: str | os.PathLike, csv_path: str | os.PathLike | None = None):
    """Redraw the training curves PNG at each epoch end: every epoch so far from
    ``csv_path`` (written by a CSVLogger placed before this callback), else the
    epochs of this run from Keras' logs."""
    keras = keras_module()

    class Curves(keras.callbacks.Callback):
        def __init__(self):
            super().__init__()
            self.hist: dict[str, list[float]] = {}

        def on_epoch_end(self, epoch, logs=None):
            if csv_path is not None:  # the CSV logger has written this epoch: plot every epoch so far
                self.hist = read_history(csv_path)
            else:
                for key, v in (logs or {}).items():
                    self.hist.setdefault(key, []).append(float(v))
            plot_curves(self.hist, path)

    return Curves()


def plot_curves(hist: dict[str, list[float]], path: str | os.PathLike) -> None:
    """Loss and mean IoU per epoch (train and validation) as a PNG."""
    # matplotlib's object API: no pyplot state and no process-wide backend switch
    # (a host application such as QGIS keeps its own)
    from matplotlib.figure import Figure  # noqa: PLC0415  (optional, heavy)

    fig = Figure(figsize=(9, 3.5), dpi=100)
    axes = fig.subplots(1, 2)
    for ax, key in zip(axes, ("loss", "mean_iou")):
        for k2, style in ((key, "-"), ("val_" + key, "--")):
            if k2 in hist:
                ax.plot(range(1, len(hist[k2]) + 1), hist[k2], style, label=k2)
        ax.set_xlabel("epoch")
        ax.set_title(key + (" (excl. background)" if key == "mean_iou" else ""))
        ax.legend()
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)


def epoch_preview_callback(images: Sequence[str | os.PathLike], out_dir: str | os.PathLike, meta: ModelMeta,
                           options: PredictOptions, is_cancelled: CancelFn | None = None):
    """After each epoch, segment ``images`` with the network being trained (tiled, as
    ``predict`` does, scaled as ``meta`` says) and save ``epochNNN_NAME.png`` quick looks
    into ``out_dir``. The forward pass is made once per epoch, for all the images (on
    JAX it holds the epoch's weights)."""
    keras = keras_module()
    out = Path(out_dir)

    class EpochPreview(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            lm = LoadedModel(meta, self.model)
            forward = make_forward(self.model, meta.input.n_bands, meta.head)
            # no TensorFlow "retracing" notice for each new window shape of each epoch
            tf_log = logging.getLogger("tensorflow")
            level = tf_log.level
            tf_log.setLevel(logging.ERROR)
            try:
                with tempfile.TemporaryDirectory() as tmp:
                    for img in images:
                        name = f"epoch{epoch + 1:03d}_{Path(img).stem}.png"
                        predict_raster(img, Path(tmp) / "classes.tif", lm, options, overwrite=True,
                                       preview_path=out / name, forward=forward,
                                       is_cancelled=is_cancelled)
            finally:
                tf_log.setLevel(level)

    return EpochPreview()

