"""Keras callbacks of the training workflow, and the training history they read.

* :func:`progress_callback`: reports batches done through a
  :class:`~geoseg.progress.Reporter` and stops the run when the caller cancels.
* :func:`curves_callback` / :func:`plot_curves`: loss and mean IoU per epoch as a PNG.
* :func:`read_history`: ``history.csv`` (Keras' CSVLogger) as columns.
* :func:`resume_callback`: a resumed or extended run's checkpoint, early stopping and
  learning-rate reducer go on from the best epoch in ``history.csv``.
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

__all__ = ["progress_callback", "curves_callback", "plot_curves", "read_history", "resume_callback",
           "epoch_preview_callback"]


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


def resume_callback(csv_path: str | os.PathLike, best_path: str | os.PathLike, monitor: str, mode: str,
                    checkpoint, early=None, reducer=None):
    """For a run that goes on from earlier epochs (resumed from its backup, or a
    finished run extended): set the state Keras' callbacks reset at the start of
    ``fit`` from the epochs before it in ``history.csv``, so that the best epoch so far
    counts. ``checkpoint`` (ModelCheckpoint) and ``early`` (EarlyStopping) start from
    the best monitored value, early stopping's patience from the epochs since then
    and its best weights from ``best_path`` (that epoch's checkpoint), so a worse
    later epoch replaces neither ``best.keras`` nor the weights the run ends with;
    ``reducer`` (ReduceLROnPlateau) from the best value and the epochs since it or
    since the last change of learning rate. Place it after those callbacks."""
    keras = keras_module()
    import numpy as np  # noqa: PLC0415

    class Resume(keras.callbacks.Callback):
        def on_train_begin(self, logs=None):
            hist = read_history(csv_path)
            # the epochs before this run: BackupAndRestore's (resumed), else all of them (extended)
            done = self.model._initial_epoch or len(hist.get("loss", []))
            values = hist.get(monitor, [])[:done]
            if not values:
                return
            best_i = int(np.argmin(values) if mode == "min" else np.argmax(values))
            best, since = float(values[best_i]), len(values) - 1 - best_i
            checkpoint.best = best
            if early is not None:
                early.best, early.best_epoch, early.wait = best, best_i, since
                if early.restore_best_weights and os.path.exists(best_path):
                    from .model import load_keras_file  # noqa: PLC0415
                    early.best_weights = load_keras_file(best_path).get_weights()
            if reducer is not None:
                lrs = hist.get("learning_rate", [])[:len(values)]
                changed = max([i for i in range(1, len(lrs)) if lrs[i] != lrs[i - 1]], default=0)
                reducer.best = best
                reducer.wait = len(values) - 1 - max(best_i, changed)

    return Resume()


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

    from matplotlib.ticker import MaxNLocator  # noqa: PLC0415

    fig = Figure(figsize=(9, 3.5), dpi=100)
    axes = fig.subplots(1, 2)
    for ax, key in zip(axes, ("loss", "mean_iou")):
        for k2, style in ((key, "-"), ("val_" + key, "--")):
            if k2 in hist:
                ax.plot(range(1, len(hist[k2]) + 1), hist[k2], style, label=k2)
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # epochs are whole numbers
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

