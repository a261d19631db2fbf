"""Minimal training: a FlexUNet on random chips from one image/label raster pair.

This is the small, honest trainer the bundled demo model is made with (and that
tests use). It holds the chosen rows of one scene in memory, so it suits sample
scenes; the full workflow (tiling big rasters and folders, chips streamed from
disk through tf.data or a Keras PyDataset, callbacks, seed-compatible configs)
builds on the same model and bundle code.
"""

from __future__ import annotations

import contextlib
import os
import time
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from .bundle import ClassInfo, InputSpec, ModelMeta
from .errors import ConfigError

__all__ = ["TrainResult", "train_on_raster", "iou_scores", "train", "WorkflowResult", "make_loss",
           "make_confusion_metric", "make_dataset", "list_chips", "plot_curves"]


@dataclass
class TrainResult:
    meta: ModelMeta
    keras_model: object
    history: dict
    seconds: float


def iou_scores(pred: np.ndarray, truth: np.ndarray, class_ids: Sequence[int]) -> dict[int, float]:
    """IoU per class over pixels where both are valid (255 = nodata in either)."""
    ok = (pred != 255) & (truth != 255)
    out = {}
    for c in class_ids:
        p, t = (pred == c) & ok, (truth == c) & ok
        union = np.count_nonzero(p | t)
        out[c] = float(np.count_nonzero(p & t) / union) if union else float("nan")
    return out


def train_on_raster(image_path: str | os.PathLike, label_path: str | os.PathLike, *,
                    classes: Sequence[ClassInfo], bands: Sequence[str], rows: tuple[int, int],
                    scale: float | Sequence[float] = 1.0, offset: float | Sequence[float] = 0.0,
                    chip: int = 128, epochs: int = 30, steps_per_epoch: int = 40, batch_size: int = 8,
                    base_filters: int = 16, num_layers: int = 4, learning_rate: float = 2e-3,
                    tile_size: int = 256, overlap: int = 32, seed: int = 42, name: str = "model",
                    description: str = "", rgb: Sequence[str] | None = None, background: int | None = 0,
                    verbose: int = 0) -> TrainResult:
    """Train on rows ``rows[0]:rows[1]`` of an image/label pair (labels = class ids).

    Chips are drawn at random positions with random flips/90° rotations; the input is
    scaled as the bundle will record it: ``((DN + offset) * scale - mean) / std``,
    with mean/std measured on the training rows.
    """
    import rasterio  # noqa: PLC0415

    from .model import build_unet, keras_module  # noqa: PLC0415

    keras = keras_module()
    r0, r1 = rows
    with rasterio.open(image_path) as src, rasterio.open(label_path) as lab:
        if len(bands) != src.count:
            raise ConfigError(f"{len(bands)} band names given for {src.count} bands")
        win = rasterio.windows.Window(0, r0, src.width, r1 - r0)
        x = src.read(window=win).astype(np.float32)
        y = lab.read(1, window=win)
        pixel_size = abs(src.transform.a) if src.crs is not None else None
    n = len(bands)
    off = np.broadcast_to(np.asarray(offset, np.float64), (n,))
    sc = np.broadcast_to(np.asarray(scale, np.float64), (n,))
    x = ((x + off[:, None, None]) * sc[:, None, None]).astype(np.float32)
    mean = x.reshape(n, -1).mean(axis=1, dtype=np.float64)
    std = x.reshape(n, -1).std(axis=1, dtype=np.float64) + 1e-6
    x = np.moveaxis((x - mean[:, None, None]) / std[:, None, None], 0, -1).astype(np.float32)
    ids = [c.id for c in classes]
    lut = np.full(256, 255, np.uint8)
    for i, c in enumerate(ids):
        lut[c] = i
    yi = lut[y.astype(np.uint8)]
    h, w = yi.shape
    if h < chip or w < chip:
        raise ConfigError(f"training rows ({h} x {w}) are smaller than one chip ({chip})")

    rng = np.random.default_rng(seed)
    keras.utils.set_random_seed(seed)

    def batches():
        while True:
            xb = np.empty((batch_size, chip, chip, n), np.float32)
            yb = np.empty((batch_size, chip, chip), np.int32)
            for b in range(batch_size):
                i, j = rng.integers(0, h - chip + 1), rng.integers(0, w - chip + 1)
                xc, yc = x[i:i + chip, j:j + chip], yi[i:i + chip, j:j + chip]
                k = rng.integers(4)
                xc, yc = np.rot90(xc, k), np.rot90(yc, k)
                if rng.random() < 0.5:
                    xc, yc = xc[:, ::-1], yc[:, ::-1]
                xb[b], yb[b] = xc, yc
            yield xb, yb

    model = build_unet(len(classes), n, base_filters=base_filters, num_layers=num_layers, name=name)
    model.compile(optimizer=keras.optimizers.Adam(learning_rate),
                  loss=keras.losses.SparseCategoricalCrossentropy(), metrics=["accuracy"])
    t0 = time.perf_counter()
    cb = [keras.callbacks.ReduceLROnPlateau("loss", factor=0.5, patience=4, min_lr=1e-5)]
    hist = model.fit(batches(), epochs=epochs, steps_per_epoch=steps_per_epoch, verbose=verbose, callbacks=cb,
                     shuffle=False)
    seconds = time.perf_counter() - t0
    meta = ModelMeta(
        name=name, classes=tuple(classes),
        input=InputSpec(tuple(bands), tuple(float(v) for v in off), tuple(float(v) for v in sc),
                        tuple(float(v) for v in mean), tuple(float(v) for v in std), pixel_size,
                        tuple(rgb) if rgb else None),
        tile_size=tile_size, overlap=overlap, tile_multiple=2 ** (num_layers - 1), head="softmax",
        background=background, description=description,
        architecture={"type": "flexunet", "base_filters": base_filters, "base_kernels": 3,
                      "num_layers": num_layers, "dropout_rate": 0.0, "dilation": 1, "batch_norm": True},
        provenance={"trained_on": os.path.basename(str(image_path)), "label": os.path.basename(str(label_path)),
                    "rows": [r0, r1], "chip": chip, "epochs": epochs, "steps_per_epoch": steps_per_epoch,
                    "batch_size": batch_size, "learning_rate": learning_rate, "seed": seed,
                    "keras": keras.__version__, "backend": keras.backend.backend(),
                    "train_seconds": round(seconds, 1)},
    )
    return TrainResult(meta, model, {k: [float(v) for v in vals] for k, vals in hist.history.items()}, seconds)


# ====================================================================== full workflow

_PALETTE = ["#000000", "#E6194B", "#3CB44B", "#FFE119", "#4363D8", "#F58231", "#911EB4", "#46F0F0",
            "#F032E6", "#BCF60C", "#FABEBE", "#008080", "#E6BEFF", "#9A6324", "#800000", "#AAFFC3"]


def list_chips(image_dir: str | os.PathLike, mask_dir: str | os.PathLike) -> list[tuple[str, str]]:
    """(image, mask) file pairs matched by file stem."""
    from pathlib import Path  # noqa: PLC0415

    from .dataset import IMAGE_EXT  # noqa: PLC0415
    idir, mdir = Path(image_dir), Path(mask_dir)
    for d, what in ((idir, "image"), (mdir, "mask")):
        if not d.is_dir():
            raise ConfigError(f"{what} folder not found: {d}")
    masks = {p.stem: p for p in mdir.iterdir() if p.suffix.lower() in IMAGE_EXT}
    pairs = []
    for p in sorted(idir.iterdir()):
        if p.suffix.lower() not in IMAGE_EXT:
            continue
        if p.stem not in masks:
            raise ConfigError(f"no mask for {p.name} in {mdir}")
        pairs.append((str(p), str(masks[p.stem])))
    if not pairs:
        raise ConfigError(f"no chips (.tif .png .jpg) in {idir}")
    return pairs


def _read_chip(image_path: str, mask_path: str, lut, ignore: int) -> tuple[np.ndarray, np.ndarray]:
    """An image chip (bands, rows, cols) and its class mask. ``lut`` is a colour map (from
    :func:`geoseg.dataset.colour_map_lut`), a ``("binarize", threshold, grayscaling)``
    rule for grey masks, or None for class-index masks."""
    with _quiet_chips(), _fast_open():
        return _read_chip_raw(image_path, mask_path, lut, ignore)


def _fast_open():
    """No GDAL directory listing at every open: chips sit thousands to a folder (2x
    slower). rasterio's Env is per thread, so each reader thread enters its own."""
    import rasterio  # noqa: PLC0415
    return rasterio.Env(GDAL_DISABLE_READDIR_ON_OPEN="EMPTY_DIR")


@contextlib.contextmanager
def _quiet_chips():
    """No "not georeferenced" warning for chips (training never uses their georeferencing).
    Python's warning filters are process-wide and ``catch_warnings`` is not thread-safe:
    enter this in the main thread only; tf.data's reader threads see its filter."""
    import warnings  # noqa: PLC0415

    import rasterio  # noqa: PLC0415
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", rasterio.errors.NotGeoreferencedWarning)
        yield


class _NeverRaised(Exception):
    pass


@contextlib.contextmanager
def _reader_errors():
    """An error in the chip reader (a chip of another size, an unreadable file) reaches
    Keras wrapped in a TensorFlow error with a Python traceback: make it one line."""
    import re  # noqa: PLC0415
    from .model import tensorflow_module  # noqa: PLC0415
    tf = tensorflow_module()
    # another backend: reader errors arrive as they were raised
    op_error: type[BaseException] = tf.errors.OpError if tf is not None else _NeverRaised
    try:
        yield
    except op_error as e:
        found = re.findall(r"^\s*([\w.]*(?:Error|Exception)): (.+)$", str(e), re.MULTILINE)
        if not found:
            raise
        name, msg = found[-1]
        raise ConfigError(msg if name.startswith("geoseg.errors.") else
                          f"cannot read a chip: {name.rsplit('.', 1)[-1]}: {msg}") from None


def _read_chip_raw(image_path: str, mask_path: str, lut, ignore: int) -> tuple[np.ndarray, np.ndarray]:
    import rasterio  # noqa: PLC0415

    from .errors import RasterError  # noqa: PLC0415
    try:
        return _read_chip_pair(image_path, mask_path, lut, ignore)
    except rasterio.errors.RasterioError as e:
        raise RasterError(f"cannot read chip: {e}") from None


def _read_chip_pair(image_path: str, mask_path: str, lut, ignore: int) -> tuple[np.ndarray, np.ndarray]:
    import rasterio  # noqa: PLC0415

    from .dataset import _read_rgb_mask, mask_to_classes  # noqa: PLC0415
    with rasterio.open(image_path) as s:
        x = s.read()
    with rasterio.open(mask_path) as m:
        if isinstance(lut, tuple) and isinstance(lut[0], str) and lut[0] == "binarize":
            _, threshold, grayscaling = lut
            if m.count >= 3 and grayscaling:
                r, g, b = m.read([1, 2, 3]).astype(np.float32)
                grey = 0.299 * r + 0.587 * g + 0.114 * b
            else:
                grey = m.read(1)
            y = (grey >= threshold).astype(np.uint8)
        elif lut is not None and (m.count >= 3 or _has_palette(m)):
            y, _ = mask_to_classes(_read_rgb_mask(m), lut, ignore)  # colour masks, seed style
        else:
            y = m.read(1)  # class-index masks (geoseg tile)
    return x, y


def _has_palette(src) -> bool:
    try:
        return bool(src.colormap(1))
    except ValueError:
        return False


@dataclass
class ChipStats:
    dtype: str
    n_bands: int
    mean: np.ndarray
    std: np.ndarray
    class_pixels: np.ndarray


def chip_statistics(pairs, lut, ignore: int, n_classes: int, scale: float, offset: float,
                    sample: int = 200, seed: int = 0) -> ChipStats:
    """Per-band mean/std (after scaling) and class pixel counts from a sample of chips."""
    rng = np.random.default_rng(seed)
    idx = rng.permutation(len(pairs))[:sample]
    s1 = s2 = None
    n = 0
    counts = np.zeros(n_classes, np.int64)
    dtype = None
    for i in idx:
        x, y = _read_chip(*pairs[i], lut, ignore)
        dtype = dtype or str(x.dtype)
        xf = (x.astype(np.float64) + offset) * scale
        s1 = xf.sum(axis=(1, 2)) if s1 is None else s1 + xf.sum(axis=(1, 2))
        s2 = (xf ** 2).sum(axis=(1, 2)) if s2 is None else s2 + (xf ** 2).sum(axis=(1, 2))
        n += x.shape[1] * x.shape[2]
        v = y[y != ignore]
        if v.size and v.max() >= n_classes:
            raise ConfigError(f"mask {os.path.basename(pairs[i][1])} holds class {int(v.max())} but "
                              f"model.num_classes is {n_classes}")
        counts += np.bincount(v, minlength=n_classes)[:n_classes]
    mean = s1 / n
    std = np.sqrt(np.maximum(s2 / n - mean ** 2, 1e-12))
    return ChipStats(dtype or "uint8", len(mean), mean, std, counts)


def _batch_loader(pairs, *, lut, ignore: int, gain: np.ndarray, bias: np.ndarray, augment: bool,
                  chip_hw: tuple[int, int]):
    """``load(idx, rng) -> (x, y)``: the chips ``idx`` read, checked, augmented and
    normalised into one (N, h, w, bands) float32 batch and its (N, h, w) int32 masks.

    Random flips / 90° rotations on image and mask alike (the 8 of a square chip;
    flips only for oblong ones), brightness/contrast on the image only. On a small CPU
    host the loader shares the cores with the train step, so its CPU cost is what slows
    training: flips and rotations are free views folded into the single pass that
    normalises the chip (``bench/train_input.py`` measures the share).
    """
    paths_i = [p[0] for p in pairs]
    paths_m = [p[1] for p in pairs]
    n_bands = len(gain)
    h, w = chip_hw
    gain = np.asarray(gain, np.float32)
    bias = np.asarray(bias, np.float32)

    def load(idx, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        xs = np.empty((len(idx), h, w, n_bands), np.float32)
        ys = np.empty((len(idx), h, w), np.int32)
        draws = rng.random((len(idx), 5)) if augment else None
        with _fast_open():
            for j, i in enumerate(idx):
                x, y = _read_chip_raw(paths_i[i], paths_m[i], lut, ignore)
                if x.shape != (n_bands, h, w) or y.shape != (h, w):
                    raise ConfigError(f"chip {os.path.basename(paths_i[i])} is {x.shape[0]} bands x "
                                      f"{x.shape[1]} x {x.shape[2]} px (mask {y.shape[0]} x {y.shape[1]}); "
                                      f"expected {n_bands} bands x {h} x {w}")
                x = np.moveaxis(x, 0, -1)
                gj, bj = gain, bias
                if augment:
                    d = draws[j]
                    if d[0] < 0.5:
                        x, y = x[:, ::-1], y[:, ::-1]
                    if d[1] < 0.5:
                        x, y = x[::-1], y[::-1]
                    if d[2] < 0.5 and h == w:
                        x, y = x.transpose(1, 0, 2), y.T
                    contrast, brightness = 0.85 + 0.3 * d[3], -0.2 + 0.4 * d[4]
                    # brightness / contrast on the normalised image: (x g + b) c + br
                    gj, bj = gain * contrast, bias * contrast + brightness
                xs[j] = x  # the one copy (and cast) of the chip
                ys[j] = y
                xs[j] *= gj
                xs[j] += bj
        return xs, ys
    return load


PIPELINES = ("auto", "tf.data", "keras")


def _pipeline_kind(pipeline: str) -> str:
    """``[train] input_pipeline``: "auto" is tf.data under the TensorFlow backend and a
    Keras PyDataset (reader threads) under any other (JAX, where TensorFlow may be absent)."""
    from .model import keras_module  # noqa: PLC0415
    backend = keras_module().backend.backend()
    if pipeline not in PIPELINES:
        raise ConfigError(f"train.input_pipeline must be one of {', '.join(PIPELINES)}, got {pipeline!r}")
    if pipeline == "auto":
        return "tf.data" if backend == "tensorflow" else "keras"
    if pipeline == "tf.data" and backend != "tensorflow":
        raise ConfigError(f"train.input_pipeline = \"tf.data\" needs the TensorFlow backend (Keras runs on "
                          f"{backend}); use \"keras\" or \"auto\"")
    return pipeline


def make_dataset(pairs, *, lut, ignore: int, gain: np.ndarray, bias: np.ndarray, batch_size: int,
                 shuffle: bool, augment: bool, seed: int, chip_hw: tuple[int, int], endless: bool = False,
                 pipeline: str = "auto"):
    """Batches of chips streamed from disk, read a batch at a time in parallel ahead of
    the train step (see :func:`_batch_loader` for augmentation and scaling).

    ``endless``: an unending stream, reshuffled at each pass through the chips (for
    ``fit`` with ``steps_per_epoch``, so that every epoch has its steps); otherwise one
    pass. ``pipeline``: ``"tf.data"`` (``tf.numpy_function`` per batch, parallel map,
    prefetch) or ``"keras"`` (a ``keras.utils.PyDataset`` with reader threads: any
    backend, no TensorFlow needed); ``"auto"`` picks tf.data under TensorFlow.
    """
    load = _batch_loader(pairs, lut=lut, ignore=ignore, gain=gain, bias=bias, augment=augment,
                         chip_hw=chip_hw)
    if _pipeline_kind(pipeline) == "keras":
        return _keras_batches(load, len(pairs), batch_size, shuffle, seed, endless)
    from .model import tensorflow_module  # noqa: PLC0415
    tf = tensorflow_module()

    h, w = chip_hw
    n_bands = len(gain)
    rng = np.random.default_rng(seed)  # thread-safe: numpy's generators hold a lock

    def tf_load(idx):
        x, y = tf.numpy_function(lambda i: load(i, rng), [idx], [tf.float32, tf.int32])
        x.set_shape([None, h, w, n_bands])
        y.set_shape([None, h, w])
        return x, y

    ds = tf.data.Dataset.range(len(pairs))
    if shuffle:
        ds = ds.shuffle(len(pairs), seed=seed, reshuffle_each_iteration=True)
    if endless:
        ds = ds.repeat()
    ds = ds.batch(batch_size).map(tf_load, num_parallel_calls=tf.data.AUTOTUNE, deterministic=not shuffle)
    return ds.prefetch(tf.data.AUTOTUNE)


def _keras_batches(load, n: int, batch_size: int, shuffle: bool, seed: int, endless: bool):
    """A ``keras.utils.PyDataset`` over the chips: batch ``g`` of the stream holds the
    chips at positions ``g*B .. g*B+B-1`` of the passes' orders (a fresh permutation
    per pass when shuffling), augmented with a generator seeded by (seed, g): the same
    batches in any thread order."""
    import math  # noqa: PLC0415
    import threading  # noqa: PLC0415

    from .model import keras_module  # noqa: PLC0415
    keras = keras_module()
    workers = max(1, min(4, os.cpu_count() or 1))

    class ChipBatches(keras.utils.PyDataset):
        def __init__(self):
            super().__init__(workers=workers, use_multiprocessing=False, max_queue_size=2 * workers)
            self._orders: dict[int, np.ndarray] = {}
            self._lock = threading.Lock()
            self._epoch = 0

        @property
        def num_batches(self):
            return None if endless else math.ceil(n / batch_size)

        def _order(self, p: int) -> np.ndarray:
            with self._lock:
                if p not in self._orders:
                    self._orders[p] = (np.random.default_rng([seed, p]).permutation(n) if shuffle
                                       else np.arange(n))
                    for old in [q for q in self._orders if q < p - 2]:
                        del self._orders[old]
                return self._orders[p]

        def __getitem__(self, g: int):
            if endless:
                pos = np.arange(g * batch_size, (g + 1) * batch_size)
                idx = np.array([self._order(int(q // n))[q % n] for q in pos])
                return load(idx, np.random.default_rng([seed, 1, g]))
            if not 0 <= g * batch_size < n:
                raise IndexError(g)
            idx = self._order(self._epoch)[g * batch_size:(g + 1) * batch_size]
            return load(idx, np.random.default_rng([seed, 2, self._epoch, g]))

        def on_epoch_end(self):
            self._epoch += 1  # one pass done: the next one in another order

    return ChipBatches()


def _batches(ds):
    """Iterate a data set from :func:`make_dataset` (one pass) as numpy/tensor batches."""
    if hasattr(ds, "num_batches") and hasattr(ds, "__getitem__"):
        for g in range(ds.num_batches):
            yield ds[g]
        ds.on_epoch_end()
    else:
        yield from ds


def make_loss(name: str, n_classes: int, ignore: int, class_weights=(), head: str = "softmax"):
    """Loss over valid (non-ignore) pixels: categorical_crossentropy, dice, ce_dice, focal;
    with a sigmoid head: binary_crossentropy, dice, bce_dice."""
    from .model import keras_module  # noqa: PLC0415
    keras = keras_module()
    ops = keras.ops
    known = ("categorical_crossentropy", "dice", "ce_dice", "focal", "binary_crossentropy", "bce_dice")
    if name not in known:
        raise ConfigError(f"model.loss must be one of {', '.join(known)}; got {name!r}")
    cw = ops.convert_to_tensor(np.asarray(class_weights if class_weights else [1.0] * n_classes, np.float32))
    eps = 1e-6

    def probs_and_onehot(y_true, y_pred):
        y = ops.cast(y_true, "int32")
        valid = ops.cast(ops.not_equal(y, ignore), "float32")
        yc = ops.where(ops.equal(y, ignore), ops.zeros_like(y), y)
        if head == "sigmoid":
            p1 = ops.clip(y_pred[..., 0], eps, 1 - eps)
            p = ops.stack([1 - p1, p1], axis=-1)
        else:
            p = ops.clip(y_pred, eps, 1.0)
        return p, ops.one_hot(yc, n_classes), valid

    def ce(p, oh, valid, gamma=0.0):
        pt = ops.sum(p * oh, axis=-1)
        wpx = ops.sum(oh * cw, axis=-1) * valid
        term = -ops.log(pt)
        if gamma:
            term = term * ops.power(1.0 - pt, gamma)
        return ops.sum(term * wpx) / (ops.sum(wpx) + eps)

    def dice(p, oh, valid):
        v = valid[..., None]
        inter = ops.sum(p * oh * v, axis=(0, 1, 2))
        denom = ops.sum((p + oh) * v, axis=(0, 1, 2))
        d = (2 * inter + 1.0) / (denom + 1.0)
        if head == "sigmoid":
            return 1.0 - d[1]  # the positive class
        return 1.0 - ops.mean(d)

    def loss(y_true, y_pred):
        p, oh, valid = probs_and_onehot(y_true, y_pred)
        if name in ("categorical_crossentropy", "binary_crossentropy"):
            return ce(p, oh, valid)
        if name == "dice":
            return dice(p, oh, valid)
        if name in ("ce_dice", "bce_dice"):
            return ce(p, oh, valid) + dice(p, oh, valid)
        return ce(p, oh, valid, gamma=2.0)  # focal

    loss.__name__ = name
    return loss


def make_confusion_metric(n_classes: int, ignore: int, background: int | None, head: str = "softmax"):
    """A Keras metric accumulating the confusion matrix; reports mean IoU without the
    background (``mean_iou``); per-class IoU/Dice are computed at epoch end from it."""
    from .model import keras_module  # noqa: PLC0415
    keras = keras_module()
    ops = keras.ops
    keep = [k for k in range(n_classes) if k != background]

    class ConfusionIoU(keras.metrics.Metric):
        def __init__(self, name="mean_iou", **kw):
            super().__init__(name=name, **kw)
            self.cm = self.add_variable(shape=(n_classes, n_classes), initializer="zeros", dtype="float32",
                                        name="cm")

        def update_state(self, y_true, y_pred, sample_weight=None):
            y = ops.reshape(ops.cast(y_true, "int32"), (-1,))
            if head == "sigmoid":
                pr = ops.cast(ops.reshape(y_pred[..., 0], (-1,)) > 0.5, "int32")
            else:
                pr = ops.reshape(ops.argmax(y_pred, axis=-1), (-1,))
            valid = ops.not_equal(y, ignore)
            # one-hot product instead of bincount: XLA compiles it (bincount it cannot)
            oh_true = ops.one_hot(ops.where(valid, y, 0), n_classes) * ops.cast(valid, "float32")[:, None]
            oh_pred = ops.one_hot(ops.cast(pr, "int32"), n_classes)
            self.cm.assign_add(ops.matmul(ops.transpose(oh_true), oh_pred))

        def result(self):
            tp = ops.diagonal(self.cm)
            denom = ops.sum(self.cm, axis=0) + ops.sum(self.cm, axis=1) - tp
            iou = tp / ops.maximum(denom, 1.0)
            present = ops.cast(denom > 0, "float32")
            sel = ops.take(iou * present, keep)
            return ops.sum(sel) / ops.maximum(ops.sum(ops.take(present, keep)), 1.0)

        def reset_state(self):
            self.cm.assign(ops.zeros((n_classes, n_classes)))

        def matrix(self) -> np.ndarray:
            return np.asarray(self.cm.numpy() if hasattr(self.cm, "numpy") else self.cm).astype(np.int64)

    return ConfusionIoU()


@dataclass
class WorkflowResult:
    bundle: str
    history: dict
    val_scores: object            # geoseg.evaluate.Scores on the validation chips
    seconds: float


def train(cfg, *, overwrite: bool = False, verbose: int = 1, progress=None) -> WorkflowResult:
    """``geoseg train``: chips from ``[train]``/``[eval]`` folders -> a model bundle.

    Writes into ``train.model_dir``: ``best.keras`` (best validation mean IoU),
    ``history.csv`` (losses and metrics per epoch), ``training_curves.png``,
    ``backup/`` (resumes an interrupted run), and the ``.geoseg`` bundle with
    classes, scaling, tile size and validation metrics.
    """
    import time  # noqa: PLC0415
    from pathlib import Path  # noqa: PLC0415

    from .bundle import ClassInfo, InputSpec, ModelMeta  # noqa: PLC0415
    from .config import config_to_toml  # noqa: PLC0415
    from .dataset import colour_map_lut  # noqa: PLC0415
    from .evaluate import scores_from_confusion  # noqa: PLC0415
    from .model import build_backbone_unet, build_unet, keras_module, save_model  # noqa: PLC0415

    keras = keras_module()
    m, t = cfg.model, cfg.train
    k = m.num_classes
    ignore = cfg.mask.ignore_index
    bg = None if t.background < 0 else t.background
    if bg is not None and bg >= k:
        raise ConfigError(f"train.background {bg} is not a class (num_classes = {k})")
    if cfg.mask.rgb_map:
        lut = colour_map_lut(cfg.mask.rgb_map)
    elif cfg.mask.binarize:
        lut = ("binarize", cfg.mask.threshold, cfg.mask.grayscaling)
    else:
        lut = None
    if not t.image_datapath or not t.mask_datapath:
        raise ConfigError("train.image_datapath and train.mask_datapath are required")
    train_pairs = list_chips(t.image_datapath, t.mask_datapath)
    if cfg.eval.image_datapath:
        val_pairs = list_chips(cfg.eval.image_datapath, cfg.eval.mask_datapath)
    else:
        raise ConfigError("[eval] image_datapath and mask_datapath are required (validation chips)")
    if t.validation_steps:
        # the same random subset every epoch (not the first chips of the first image). It is
        # cut here: Keras, given validation_steps, would go on through the data set and score
        # each epoch on other chips, so epochs would not be comparable for checkpoints.
        order = np.random.default_rng(t.seed).permutation(len(val_pairs))
        val_pairs = [val_pairs[i] for i in order[: t.validation_steps * t.batch_size]]
    out_dir = Path(t.model_dir)
    bundle = Path(t.output) if t.output else out_dir / "model.geoseg"
    if bundle.exists() and not overwrite:
        raise ConfigError(f"model exists: {bundle} (use --overwrite)")
    out_dir.mkdir(parents=True, exist_ok=True)
    for what, n in (("class_names", len(t.class_names)), ("class_colors", len(t.class_colors)),
                    ("class_weights", len(t.class_weights))):
        if n and n != k:
            raise ConfigError(f"train.{what} has {n} entries but model.num_classes is {k}")
    x0, _ = _read_chip(*train_pairs[0], lut, ignore)
    n_bands = x0.shape[0]
    if n_bands != m.image_channels:
        raise ConfigError(f"chips have {n_bands} bands but model.image_channels is {m.image_channels}")
    if x0.shape[1:] != (m.image_height, m.image_width):
        raise ConfigError(f"chips are {x0.shape[2]} x {x0.shape[1]} px but model.image_width/height are "
                          f"{m.image_width} x {m.image_height}")
    scale = t.scale or (1 / 255 if x0.dtype == np.uint8 else 1e-4 if x0.dtype == np.uint16 else 1.0)
    stats = chip_statistics(train_pairs, lut, ignore, k, scale, t.offset, seed=t.seed)
    init = _init_source(m.init_weights)
    if init is not None and init.meta is not None and init.meta.input.n_bands == n_bands:
        # fine-tuning: the network's first layer expects the scaling it was trained with
        spec = init.meta.input
        in_off, in_sc = np.asarray(spec.offset), np.asarray(spec.scale)
        in_mean, in_std = np.asarray(spec.mean), np.asarray(spec.std)
    else:
        in_off, in_sc = np.full(n_bands, float(t.offset)), np.full(n_bands, float(scale))
        in_mean, in_std = stats.mean, stats.std
    gain = (in_sc / in_std).astype(np.float32)
    bias = ((in_off * in_sc - in_mean) / in_std).astype(np.float32)
    keras.utils.set_random_seed(t.seed)
    kw = dict(lut=lut, ignore=ignore, gain=gain, bias=bias, batch_size=t.batch_size, seed=t.seed,
              chip_hw=(m.image_height, m.image_width), pipeline=t.input_pipeline)
    # endless (reshuffled each pass): Keras would otherwise cut an epoch short where a
    # pass through the chips ends, so steps_per_epoch would not hold
    steps = t.steps_per_epoch or -(-len(train_pairs) // t.batch_size)
    ds_train = make_dataset(train_pairs, shuffle=True, augment=t.augment, endless=True, **kw)
    ds_val = make_dataset(val_pairs, shuffle=False, augment=False, **kw)
    if m.model == "flexunet":
        net = build_unet(k, n_bands, base_filters=m.base_filters, base_kernels=m.base_kernels[0],
                         num_layers=m.num_layers, dropout_rate=m.dropout_rate, dilation=m.dilation[0],
                         batch_norm=m.batch_norm, head=m.head)
        multiple = 2 ** (m.num_layers - 1)
    else:
        net = build_backbone_unet(m.model, k, n_bands, weights=m.encoder_weights, head=m.head,
                                  dropout_rate=m.dropout_rate)
        multiple = 32
    if init is not None:
        _copy_weights(init, net, m.init_weights)
    if m.show_summary:
        net.summary()
    metric = make_confusion_metric(k, ignore, bg, m.head)
    opt = keras.optimizers.Adam(m.learning_rate, clipvalue=m.clipvalue) if m.clipvalue else \
        keras.optimizers.Adam(m.learning_rate)
    net.compile(optimizer=opt, loss=make_loss(m.loss, k, ignore, t.class_weights, m.head), metrics=[metric],
                jit_compile=m.jit_compile)
    last = t.metrics[-1] if t.metrics else "val_iou"
    monitor, mode = ("val_loss", "min") if last.endswith("loss") else ("val_mean_iou", "max")
    if not (out_dir / "backup").exists():
        # a fresh run (not a resumed one): the history of an earlier run here does not continue
        (out_dir / "history.csv").unlink(missing_ok=True)
    cbs = [keras.callbacks.BackupAndRestore(str(out_dir / "backup")),
           keras.callbacks.ModelCheckpoint(str(out_dir / "best.keras"), monitor=monitor, mode=mode,
                                           save_best_only=True),
           keras.callbacks.CSVLogger(str(out_dir / "history.csv"), append=True),
           keras.callbacks.EarlyStopping(monitor=monitor, mode=mode, patience=t.patience,
                                         restore_best_weights=True) if t.patience > 0 else None,
           keras.callbacks.ReduceLROnPlateau(monitor=monitor, mode=mode, factor=t.reducer_factor,
                                             patience=t.reducer_patience, min_lr=1e-7)
           if t.learning_rate_reducer else None,
           _CurvesCallback(keras, out_dir / "training_curves.png", out_dir / "history.csv")]
    cbs = [c for c in cbs if c is not None]
    names = list(t.class_names) or [f"class_{i}" for i in range(k)]
    colors = list(t.class_colors) or [_PALETTE[i % len(_PALETTE)] for i in range(k)]
    bands = tuple(t.bands) or tuple(f"b{i + 1}" for i in range(n_bands))
    if len(bands) != n_bands:
        raise ConfigError(f"train.bands names {len(bands)} bands but the chips have {n_bands}")
    base_meta = ModelMeta(
        name=bundle.stem, classes=tuple(ClassInfo(i, names[i], colors[i].upper()) for i in range(k)),
        input=InputSpec(bands, tuple(float(v) for v in in_off), tuple(float(v) for v in in_sc),
                        tuple(float(v) for v in in_mean), tuple(float(v) for v in in_std)),
        tile_size=max(multiple, (t.tile_size // multiple) * multiple), overlap=min(t.overlap, t.tile_size // 2 - 1),
        tile_multiple=multiple, head=m.head, background=bg)
    if t.epoch_change_infer or t.epoch_change_tiledinfer:
        cbs.append(_epoch_preview_callback(keras, cfg, base_meta, val_pairs))
    (out_dir / "config.toml").write_text(config_to_toml(cfg))
    t0 = time.perf_counter()
    with _quiet_chips(), _reader_errors():
        hist = net.fit(ds_train, validation_data=ds_val, epochs=t.epochs, steps_per_epoch=steps,
                       callbacks=cbs, verbose=verbose,
                       shuffle=False)  # the input pipeline shuffles
        seconds = time.perf_counter() - t0
        # final validation confusion matrix with the kept (best) weights
        metric.reset_state()
        for xb, yb in _batches(ds_val):
            metric.update_state(yb, net(xb, training=False))
    scores = scores_from_confusion(metric.matrix(), list(range(k)), names, bg)
    from dataclasses import replace as _replace  # noqa: PLC0415
    meta = _replace(
        base_meta,
        architecture={"type": m.model, "base_filters": m.base_filters, "base_kernels": list(m.base_kernels),
                      "num_layers": m.num_layers, "dropout_rate": m.dropout_rate, "dilation": list(m.dilation),
                      "batch_norm": m.batch_norm, "encoder_weights": m.encoder_weights},
        provenance={"train_chips": len(train_pairs), "valid_chips": len(val_pairs),
                    "train_images": t.image_datapath, "valid_images": cfg.eval.image_datapath,
                    "epochs_run": len(_read_history(out_dir / "history.csv").get("loss", [])), "loss": m.loss,
                    **({"init_weights": m.init_weights} if m.init_weights else {}),
                    "learning_rate": m.learning_rate, "batch_size": t.batch_size, "seed": t.seed,
                    "keras": keras.__version__, "backend": keras.backend.backend(), "train_seconds": round(seconds, 1)},
        metrics={"validation": {"mean_iou_excluding_background": _r(scores.mean_iou),
                                "mean_dice_excluding_background": _r(scores.mean_dice),
                                "overall_accuracy": _r(scores.overall_accuracy),
                                "per_class_iou": {names[i]: _r(v) for i, v in enumerate(scores.iou)},
                                "per_class_dice": {names[i]: _r(v) for i, v in enumerate(scores.dice)}}},
    )
    save_model(bundle, net, meta)
    _infer_after_training(cfg, bundle)
    return WorkflowResult(str(bundle), {kk: [float(v) for v in vv] for kk, vv in hist.history.items()}, scores,
                          seconds)


@dataclass
class _InitSource:
    keras_model: object
    meta: object  # the bundle's ModelMeta, None for a bare .keras file


def _init_source(path: str) -> _InitSource | None:
    """``[model] init_weights``: the trained model to start from (fine-tuning)."""
    if not path:
        return None
    from pathlib import Path  # noqa: PLC0415

    from .errors import GeosegError  # noqa: PLC0415
    from .model import load_keras_file, load_model  # noqa: PLC0415
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"model.init_weights: file not found: {p}")
    try:
        if p.suffix.lower() == ".keras":
            return _InitSource(load_keras_file(p), None)
        lm = load_model(p)
    except GeosegError as e:
        raise ConfigError(f"model.init_weights: {e}") from None
    return _InitSource(lm.keras_model, lm.meta)


def _copy_weights(src: _InitSource, net, where: str) -> None:
    """Copy every layer's weights from ``src`` into ``net`` (same architecture, layer by
    layer). A last layer of another shape (a new class count) keeps its fresh weights."""
    a = [lay for lay in src.keras_model.layers if lay.get_weights()]
    b = [lay for lay in net.layers if lay.get_weights()]
    if len(a) != len(b):
        raise ConfigError(f"model.init_weights: {where} has {len(a)} layers with weights, the network of "
                          f"[model] has {len(b)}: not the same architecture")
    for i, (la, lb) in enumerate(zip(a, b)):
        wa, wb = la.get_weights(), lb.get_weights()
        if [w.shape for w in wa] == [w.shape for w in wb]:
            lb.set_weights(wa)
        elif i < len(b) - 1:
            raise ConfigError(f"model.init_weights: layer {lb.name} of [model] has weights "
                              f"{[tuple(w.shape) for w in wb]}, {where} has {[tuple(w.shape) for w in wa]}: "
                              "not the same architecture")
        # else: the classification head of another class count starts fresh


def _epoch_preview_callback(keras, cfg, meta, val_pairs):
    """The seed's epoch_change_(tiled)infer: after each epoch, segment a few images
    with the engine (tiled, as predict does) and save quick-look PNGs."""
    import tempfile  # noqa: PLC0415
    from pathlib import Path  # noqa: PLC0415

    from .dataset import IMAGE_EXT  # noqa: PLC0415
    from .model import LoadedModel  # noqa: PLC0415
    from .predict import PredictOptions, predict_raster  # noqa: PLC0415

    t = cfg.train
    tiled = t.epoch_change_tiledinfer
    src_dir = cfg.tiledinfer.images_dir if tiled else cfg.infer.images_dir
    if src_dir:
        if not Path(src_dir).is_dir():
            raise ConfigError(f"folder of images to infer each epoch not found: {src_dir}")
        images = sorted(str(p) for p in Path(src_dir).iterdir() if p.suffix.lower() in IMAGE_EXT)
    else:
        images = [p[0] for p in val_pairs]
    images = images[: t.num_infer_images]
    out = Path(t.epoch_change_tiledinfer_dir if tiled else t.epoch_change_infer_dir)
    out.mkdir(parents=True, exist_ok=True)
    overlap = min(cfg.tiledinfer.overlapping, meta.tile_size // 2 - 1)
    opts = PredictOptions(overlap=overlap, blend=cfg.tiledinfer.blend)

    class EpochPreview(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            import logging  # noqa: PLC0415
            import warnings  # noqa: PLC0415
            lm = LoadedModel(meta, self.model)
            # quick looks of (often ungeoreferenced) chips: no "areas in pixels" noise each epoch,
            # and no TensorFlow "retracing" notice for each new window shape of each epoch
            tf_log = logging.getLogger("tensorflow")
            level = tf_log.level
            tf_log.setLevel(logging.ERROR)
            try:
                with tempfile.TemporaryDirectory() as tmp, warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    for img in images:
                        name = f"epoch{epoch + 1:03d}_{Path(img).stem}.png"
                        predict_raster(img, Path(tmp) / "classes.tif", lm, opts, overwrite=True,
                                       preview_path=out / name)
            finally:
                tf_log.setLevel(level)

    return EpochPreview()


def _infer_after_training(cfg, bundle) -> None:
    """[infer] / [tiledinfer]: segment images_dir into output_dir (class GeoTIFF,
    areas CSV and preview per image) with the new bundle, through the engine."""
    from pathlib import Path  # noqa: PLC0415

    from .dataset import IMAGE_EXT  # noqa: PLC0415
    from .model import load_model  # noqa: PLC0415
    from .predict import PredictOptions, predict_raster, sidecar_paths  # noqa: PLC0415
    jobs = []
    for sec, opts in ((cfg.infer, PredictOptions()),
                      (cfg.tiledinfer, PredictOptions(overlap=cfg.tiledinfer.overlapping,
                                                      blend=cfg.tiledinfer.blend))):
        if sec.images_dir and sec.output_dir:
            src = Path(sec.images_dir)
            if not src.is_dir():
                raise ConfigError(f"images_dir not found: {src}")
            jobs.append((src, Path(sec.output_dir), opts))
    if not jobs:
        return
    lm = load_model(bundle)
    for src, out, opts in jobs:
        out.mkdir(parents=True, exist_ok=True)
        ov = min(opts.overlap if opts.overlap is not None else lm.meta.overlap, lm.meta.tile_size // 2 - 1)
        from dataclasses import replace as _rep  # noqa: PLC0415
        opts = _rep(opts, overlap=ov)
        for img in sorted(p for p in src.iterdir() if p.suffix.lower() in IMAGE_EXT):
            dst = out / (img.stem + "_classes.tif")
            predict_raster(img, dst, lm, opts, overwrite=True, **sidecar_paths(dst, areas=True, preview=True))


def _r(v) -> float | None:
    import math  # noqa: PLC0415
    return None if v is None or (isinstance(v, float) and math.isnan(v)) else round(float(v), 4)


def _read_history(csv_path) -> dict[str, list[float]]:
    """history.csv (CSVLogger) as columns; all epochs, across resumed runs."""
    import csv  # noqa: PLC0415
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


def _CurvesCallback(keras, path, csv_path=None):  # noqa: N802  (a factory: keras is imported lazily)
    class Curves(keras.callbacks.Callback):
        def __init__(self):
            super().__init__()
            self.hist: dict[str, list[float]] = {}

        def on_epoch_end(self, epoch, logs=None):
            if csv_path is not None:  # the CSV logger has written this epoch: plot every epoch so far
                self.hist = _read_history(csv_path)
            else:
                for key, v in (logs or {}).items():
                    self.hist.setdefault(key, []).append(float(v))
            plot_curves(self.hist, path)

    return Curves()


def plot_curves(hist: dict, path) -> None:
    """Loss and mean IoU per epoch (train and validation) as a PNG."""
    import warnings  # noqa: PLC0415
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Unable to import Axes3D")
        import matplotlib  # noqa: PLC0415
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt  # noqa: PLC0415
        fig, axes = plt.subplots(1, 2, figsize=(9, 3.5), dpi=100)
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
    plt.close(fig)
