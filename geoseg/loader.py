"""Training input: chip statistics and batches of chips streamed from disk.

* :func:`chip_statistics`: per-band mean/std (after scaling) and class pixel counts
  of a sample of chips; the bundle records them as the model's input scaling.
* :func:`make_dataset`: batches read a batch at a time in parallel ahead of the
  train step, augmented and normalised, either as a ``tf.data`` pipeline or as a
  Keras ``PyDataset`` (reader threads; any backend, no TensorFlow needed).
* :func:`iter_batches`: one pass over either kind, for scoring.
* :func:`reader_errors`: a reader error surfacing from Keras as one line.

Keras and TensorFlow are imported only when a data set is made (:mod:`geoseg.model`).
"""

from __future__ import annotations

import contextlib
import gc
import math
import os
import re
import threading
from dataclasses import dataclass
from typing import Callable, Iterator, Sequence

import numpy as np

from .chips import MaskRule, read_chip
from .errors import ConfigError
from .model import keras_module, tensorflow_module

__all__ = ["ChipStats", "chip_statistics", "PIPELINES", "make_dataset", "iter_batches", "reader_errors"]

#: ``[train] input_pipeline`` values.
PIPELINES = ("auto", "tf.data", "keras")

Pairs = Sequence[tuple[str, str]]


@dataclass
class ChipStats:
    dtype: str
    n_bands: int
    mean: np.ndarray
    std: np.ndarray
    class_pixels: np.ndarray


def chip_statistics(pairs: Pairs, rule: MaskRule, ignore: int, n_classes: int, scale: float, offset: float,
                    sample: int = 200, seed: int = 0) -> ChipStats:
    """Per-band mean/std of ``(DN + offset) * scale`` and class pixel counts over a
    seeded sample of ``sample`` chips (all of them when there are fewer).

    Each chip's mean and sum of squared deviations are merged into the running ones
    (Chan et al.), so the std stays exact for values far from zero."""
    rng = np.random.default_rng(seed)
    idx = rng.permutation(len(pairs))[:sample]
    n = 0
    mean = m2 = None
    counts = np.zeros(n_classes, np.int64)
    dtype = None
    for i in idx:
        x, y = read_chip(*pairs[i], rule, ignore)
        dtype = dtype or str(x.dtype)
        xf = ((x.astype(np.float64) + offset) * scale).reshape(x.shape[0], -1)
        nb = xf.shape[1]
        mb = xf.mean(axis=1)
        m2b = ((xf - mb[:, None]) ** 2).sum(axis=1)
        if mean is None:
            n, mean, m2 = nb, mb, m2b
        else:
            delta = mb - mean
            tot = n + nb
            mean = mean + delta * (nb / tot)
            m2 = m2 + m2b + delta ** 2 * (n * nb / tot)
            n = tot
        v = y[y != ignore]
        if v.size and v.max() >= n_classes:
            raise ConfigError(f"mask {os.path.basename(pairs[i][1])} holds class {int(v.max())} but "
                              f"model.num_classes is {n_classes}")
        counts += np.bincount(v, minlength=n_classes)[:n_classes]
    if mean is None:
        raise ConfigError("no chips to measure")
    std = np.sqrt(np.maximum(m2 / n, 1e-12))
    return ChipStats(dtype or "uint8", len(mean), mean, std, counts)


Loader = Callable[[np.ndarray, np.random.Generator], tuple[np.ndarray, np.ndarray]]


def _batch_loader(pairs: Pairs, *, rule: MaskRule, ignore: int, gain: np.ndarray, bias: np.ndarray,
                  augment: bool, chip_hw: tuple[int, int]) -> Loader:
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
        for j, i in enumerate(idx):
            x, y = read_chip(paths_i[i], paths_m[i], rule, ignore)
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


def _pipeline_kind(pipeline: str) -> str:
    """``[train] input_pipeline``: "auto" is tf.data under the TensorFlow backend and a
    Keras PyDataset (reader threads) under any other (JAX, where TensorFlow may be absent)."""
    backend = keras_module().backend.backend()
    if pipeline not in PIPELINES:
        raise ConfigError(f"train.input_pipeline must be one of {', '.join(PIPELINES)}, got {pipeline!r}")
    if pipeline == "auto":
        return "tf.data" if backend == "tensorflow" else "keras"
    if pipeline == "tf.data" and backend != "tensorflow":
        raise ConfigError(f"train.input_pipeline = \"tf.data\" needs the TensorFlow backend (Keras runs on "
                          f"{backend}); use \"keras\" or \"auto\"")
    return pipeline


def make_dataset(pairs: Pairs, *, rule: MaskRule = MaskRule(), ignore: int, gain: np.ndarray, bias: np.ndarray,
                 batch_size: int, shuffle: bool, augment: bool, seed: int, chip_hw: tuple[int, int],
                 endless: bool = False, pipeline: str = "auto"):
    """Batches of chips streamed from disk, read a batch at a time in parallel ahead of
    the train step (see :func:`_batch_loader` for augmentation and scaling).

    ``endless``: an unending stream, reshuffled at each pass through the chips (for
    ``fit`` with ``steps_per_epoch``, so that every epoch has its steps); otherwise one
    pass. ``pipeline``: ``"tf.data"`` (``tf.numpy_function`` per batch, parallel map,
    prefetch) or ``"keras"`` (a ``keras.utils.PyDataset`` with reader threads: any
    backend, no TensorFlow needed); ``"auto"`` picks tf.data under TensorFlow.
    """
    load = _batch_loader(pairs, rule=rule, ignore=ignore, gain=gain, bias=bias, augment=augment,
                         chip_hw=chip_hw)
    if _pipeline_kind(pipeline) == "keras":
        return _keras_batches(load, len(pairs), batch_size, shuffle, seed, endless)
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


def _keras_batches(load: Loader, n: int, batch_size: int, shuffle: bool, seed: int, endless: bool):
    """A ``keras.utils.PyDataset`` over the chips: batch ``g`` of the stream holds the
    chips at positions ``g*B .. g*B+B-1`` of the passes' orders (a fresh permutation
    per pass when shuffling), augmented with a generator seeded by (seed, g): the same
    batches in any thread order."""
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


def iter_batches(ds) -> Iterator[tuple]:
    """One pass over a data set from :func:`make_dataset` as (x, y) numpy/tensor batches."""
    if hasattr(ds, "num_batches") and hasattr(ds, "__getitem__"):
        for g in range(ds.num_batches):
            yield ds[g]
        ds.on_epoch_end()
    else:
        yield from ds


class _NeverRaised(Exception):
    pass


def _release_input(e: BaseException) -> None:
    """Free the input pipeline a failed ``fit`` leaves behind, now.

    The frames ``fit`` ran in (Keras' epoch iterator, the tf.data iterator) stay alive
    after an error: the exception's traceback, and those of the errors it was raised
    from, hold them (Keras and TensorFlow cut their own frames out of a traceback, but
    a frame left in it still reaches them through ``f_back``). They would be freed by
    the garbage collection at interpreter exit, where the iterator's destructor waits
    for the reader calls in flight, which need the GIL that no thread may take any
    more: ``geoseg train`` printed its error and hung (issue 17). Clearing these
    finished frames' locals (a traceback still prints: it keeps code and line numbers)
    and collecting frees the iterator while its readers can still finish."""
    seen_e: set[int] = set()
    seen_f: set[int] = set()
    while e is not None and id(e) not in seen_e:
        seen_e.add(id(e))
        tb = e.__traceback__
        while tb is not None:
            f = tb.tb_frame
            while f is not None and id(f) not in seen_f:
                seen_f.add(id(f))
                try:
                    f.clear()
                except RuntimeError:  # still running (ours, our callers'): keeps its locals
                    pass
                f = f.f_back
            tb = tb.tb_next
        e = e.__cause__ or e.__context__
    gc.collect()


@contextlib.contextmanager
def reader_errors() -> Iterator[None]:
    """Around ``fit``: an error in the chip reader (a chip of another size, an
    unreadable file) reaches Keras wrapped in a TensorFlow error with a Python
    traceback: make it one line. Any error (a cancel too) frees the input pipeline
    before it propagates (see :func:`_release_input`)."""
    tf = tensorflow_module()
    # another backend: reader errors arrive as they were raised
    op_error: type[BaseException] = tf.errors.OpError if tf is not None else _NeverRaised
    try:
        yield
    except op_error as e:
        _release_input(e)
        found = re.findall(r"^\s*([\w.]*(?:Error|Exception)): (.+)$", str(e), re.MULTILINE)
        if not found:
            raise
        name, msg = found[-1]
        raise ConfigError(msg if name.startswith("geoseg.errors.") else
                          f"cannot read a chip: {name.rsplit('.', 1)[-1]}: {msg}") from None
    except BaseException as e:
        _release_input(e)
        raise
