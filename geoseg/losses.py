"""Losses and metrics of the training workflow, written with ``keras.ops`` (any backend).

* :func:`make_loss`: cross-entropy, Dice, their sum, or focal loss over the valid
  (non-ignore) pixels, optionally class-weighted; softmax or sigmoid heads.
* :func:`make_confusion_metric`: a Keras metric that accumulates the confusion
  matrix and reports the mean IoU without the background (``mean_iou``).
"""

from __future__ import annotations

import numpy as np

from .errors import ConfigError
from .model import keras_module

__all__ = ["LOSSES", "make_loss", "make_confusion_metric"]


def _sigmoid_p1(y_true, y_pred):
    """A sigmoid head's probability of class 1, shaped as the masks ``y_true`` (N, H, W).

    The head outputs (N, H, W, 1), but Keras' loss wrapper squeezes a trailing axis of
    1 when the masks have one rank less, so the loss may get (N, H, W): taking
    ``[..., 0]`` of that would drop the last pixel axis (issue 17: "Incompatible
    shapes: [8,128,2] vs. [8,128,128,2]" at the first step)."""
    if len(y_pred.shape) == len(y_true.shape) + 1:
        return y_pred[..., 0]
    if len(y_pred.shape) == len(y_true.shape):
        return y_pred
    raise ValueError(f"a sigmoid head's output {tuple(y_pred.shape)} does not fit masks {tuple(y_true.shape)}")

#: ``[model] loss`` values (the last two with a sigmoid head).
LOSSES = ("categorical_crossentropy", "dice", "ce_dice", "focal", "binary_crossentropy", "bce_dice")


def make_loss(name: str, n_classes: int, ignore: int, class_weights=(), head: str = "softmax"):
    """Loss over valid (non-ignore) pixels: categorical_crossentropy, dice, ce_dice, focal;
    with a sigmoid head: binary_crossentropy, dice, bce_dice."""
    keras = keras_module()
    ops = keras.ops
    if name not in LOSSES:
        raise ConfigError(f"model.loss must be one of {', '.join(LOSSES)}; got {name!r}")
    cw = ops.convert_to_tensor(np.asarray(class_weights if class_weights else [1.0] * n_classes, np.float32))
    eps = 1e-6

    def probs_and_onehot(y_true, y_pred):
        y = ops.cast(y_true, "int32")
        valid = ops.cast(ops.not_equal(y, ignore), "float32")
        yc = ops.where(ops.equal(y, ignore), ops.zeros_like(y), y)
        if head == "sigmoid":
            p1 = ops.clip(_sigmoid_p1(y_true, y_pred), eps, 1 - eps)
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
                pr = ops.cast(ops.reshape(_sigmoid_p1(y_true, y_pred), (-1,)) > 0.5, "int32")
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
