"""The training workflow: ``train(cfg)``, chip folders -> a ``.geoseg`` bundle.

:func:`train` runs named steps, like torchgeo's ``configure_*``:

* :func:`_mask_rule`, :func:`_chip_sets`, :func:`_check_chips`: what the masks mean,
  the train/validation chips, their bands and size against ``[model]``;
* :func:`_input_scaling`: the scaling the bundle records (measured on the chips, or
  the start model's when fine-tuning from ``init_weights``);
* :func:`_network`: the FlexUNet or encoder UNet, started from ``init_weights``
  (:func:`load_init_weights`, :func:`copy_weights`), compiled with its loss and metric;
* :func:`_callbacks`: checkpoint, resume backup, history, early stopping, learning
  rate, curves, epoch previews, progress and cancel;
* :func:`_bundle_meta`: classes, scaling, tile size; after ``fit`` the validation
  scores and provenance are added and the bundle is written;
* :func:`_inference_jobs`, :func:`_infer`: ``[infer]``/``[tiledinfer]`` folders,
  checked before training and segmented with the new bundle after it through
  :func:`geoseg.predict.predict_many`.

The pieces it uses: :mod:`geoseg.chips` (chip files), :mod:`geoseg.loader` (chip
statistics, batches), :mod:`geoseg.losses`, :mod:`geoseg.callbacks`. The small
in-memory trainer the bundled demo model is made with is ``scripts/train_demo_model.py``.
"""

from __future__ import annotations

import json
import math
import shutil
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from .bundle import ClassInfo, InputSpec, ModelMeta
from .callbacks import curves_callback, epoch_preview_callback, progress_callback, read_history, resume_callback
from .chips import MaskRule, list_chips, list_images, read_chip
from .config import config_to_toml
from .errors import ConfigError, GeosegError, OutputExistsError
from .evaluate import Scores, scores_from_confusion
from .loader import chip_statistics, iter_batches, make_dataset, reader_errors
from .losses import make_confusion_metric, make_loss
from .model import build_backbone_unet, build_unet, keras_module, load_keras_file, load_model, save_model
from .predict import PredictOptions, predict_many
from .progress import CancelFn, ProgressFn, Reporter
from .unit import input_gain_bias

__all__ = ["train", "WorkflowResult", "InitWeights", "load_init_weights", "copy_weights", "resumable_epochs"]

#: Files a run writes into ``train.model_dir`` beside the bundle and the backup.
_RUN_FILES = frozenset({"config.toml", "history.csv", "best.keras", "training_curves.png"})

_PALETTE = ["#000000", "#E6194B", "#3CB44B", "#FFE119", "#4363D8", "#F58231", "#911EB4", "#46F0F0",
            "#F032E6", "#BCF60C", "#FABEBE", "#008080", "#E6BEFF", "#9A6324", "#800000", "#AAFFC3"]


@dataclass
class WorkflowResult:
    bundle: str
    history: dict
    val_scores: Scores            # on the validation chips, with the kept (best) weights
    seconds: float


def train(cfg, *, overwrite: bool = False, verbose: int = 1, progress: ProgressFn | None = None,
          is_cancelled: CancelFn | None = None) -> WorkflowResult:
    """``geoseg train``: chips from ``[train]``/``[eval]`` folders -> a model bundle.

    Writes into ``train.model_dir``: ``best.keras`` (best validation mean IoU),
    ``history.csv`` (losses and metrics per epoch), ``training_curves.png``,
    ``backup/`` (resumes an interrupted run), and the ``.geoseg`` bundle with
    classes, scaling, tile size and validation metrics.

    ``progress(done, total)`` counts training batches (``epochs * steps``); when
    ``is_cancelled()`` turns true the run stops after the current batch with
    :class:`~geoseg.errors.Cancelled`, writes no bundle, and removes a ``model_dir``
    it created unless that holds a resumable backup.

    Which run it is, from what ``model_dir`` holds:

    * ``backup/`` (an interrupted run): it resumes after the last finished epoch;
      ``history.csv`` goes on, and the best epoch so far (from the history) is what
      the checkpoint, early stopping and the learning-rate reducer start from;
    * a bundle (a finished run) and ``train.epochs`` more than the epochs in its
      ``history.csv``: it extends that run, from ``best.keras`` (the kept epoch's
      weights and optimizer state), numbering epochs on from the last one; with
      fewer epochs it is :class:`OutputExistsError` unless ``overwrite``, which
      starts over from epoch 1;
    * else a fresh run.
    """
    reporter = Reporter(progress, is_cancelled)
    reporter.check()
    keras = keras_module()
    m, t = cfg.model, cfg.train
    k = m.num_classes
    ignore = cfg.mask.ignore_index
    bg = None if t.background < 0 else t.background
    if bg is not None and bg >= k:
        raise ConfigError(f"train.background {bg} is not a class (num_classes = {k})")
    for what, n in (("class_names", len(t.class_names)), ("class_colors", len(t.class_colors)),
                    ("class_weights", len(t.class_weights))):
        if n and n != k:
            raise ConfigError(f"train.{what} has {n} entries but model.num_classes is {k}")
    rule = _mask_rule(cfg.mask)
    train_pairs, val_pairs = _chip_sets(cfg)
    out_dir = Path(t.model_dir)
    bundle = Path(t.output) if t.output else out_dir / "model.geoseg"
    start = _run_start(cfg, out_dir, bundle, overwrite)
    # the bundle is replaced only when asked or when this run goes on from it (extend,
    # resume); else it is created exclusively: one made meanwhile is never replaced
    replace_bundle = overwrite or (start != "fresh" and bundle.exists())
    n_bands, dtype = _check_chips(train_pairs[0], rule, ignore, m)
    jobs = _inference_jobs(cfg)
    init = load_init_weights(m.init_weights)
    spec = _input_scaling(cfg, init, n_bands, dtype, train_pairs, rule)
    spec = replace(spec, pixel_size=spec.pixel_size or _chip_pixel_size(train_pairs[0][0]))
    reporter.check()

    keras.utils.set_random_seed(t.seed)
    # endless (reshuffled each pass): Keras would otherwise cut an epoch short where a
    # pass through the chips ends, so steps_per_epoch would not hold
    steps = t.steps_per_epoch or -(-len(train_pairs) // t.batch_size)
    reporter.total = t.epochs * steps
    gain, bias = input_gain_bias(spec)
    kw = dict(rule=rule, ignore=ignore, gain=gain, bias=bias, batch_size=t.batch_size, seed=t.seed,
              chip_hw=(m.image_height, m.image_width), pipeline=t.input_pipeline)
    ds_train = make_dataset(train_pairs, shuffle=True, augment=t.augment, endless=True, **kw)
    ds_val = make_dataset(val_pairs, shuffle=False, augment=False, **kw)
    net, multiple, metric = _network(m, k, n_bands, init, ignore, bg, t.class_weights)
    meta = _bundle_meta(cfg, _bundle_name(cfg, bundle), spec, multiple, bg)

    made = [q for q in (_missing_root(d) for d in _run_dirs(cfg, out_dir)) if q is not None]
    existed = {n for n in _RUN_FILES if (out_dir / n).exists()}
    for d in _run_dirs(cfg, out_dir):
        d.mkdir(parents=True, exist_ok=True)
    try:
        if start == "extend":
            # a finished run goes on from its kept model: weights and optimizer state
            net.optimizer.build(net.trainable_variables)
            net.load_weights(str(out_dir / "best.keras"))
        cbs = _callbacks(cfg, out_dir, meta, val_pairs, reporter, steps, fresh=start == "fresh")
        (out_dir / "config.toml").write_text(config_to_toml(cfg))
        t0 = time.perf_counter()
        done = len(read_history(out_dir / "history.csv").get("loss", [])) if start == "extend" else 0
        with reader_errors():
            hist = net.fit(ds_train, validation_data=ds_val, epochs=t.epochs, steps_per_epoch=steps,
                           callbacks=cbs, verbose=verbose, shuffle=False,  # the input pipeline shuffles
                           initial_epoch=done)  # a resumed run: BackupAndRestore sets it
            seconds = time.perf_counter() - t0
            scores = _validation_scores(net, metric, ds_val, meta, reporter)
        reporter.check()
        meta = _final_meta(cfg, meta, scores, seconds, len(train_pairs), len(val_pairs),
                           len(read_history(out_dir / "history.csv").get("loss", [])))
        save_model(bundle, net, meta, overwrite=replace_bundle)
    except BaseException:
        if not (out_dir / "backup").exists():  # nothing to resume: leave nothing behind
            for n in _RUN_FILES - existed:
                (out_dir / n).unlink(missing_ok=True)
            for d in made:
                if bundle.exists() and d in bundle.parents:  # not ours (ours is written last): another run's
                    continue
                shutil.rmtree(d, ignore_errors=True)
        raise
    reporter.done = reporter.total  # early stopping may end the run before its last batch
    reporter.report()
    _infer(jobs, bundle, meta, is_cancelled)  # a cancel here keeps the bundle: training is done
    return WorkflowResult(str(bundle), {kk: [float(v) for v in vv] for kk, vv in hist.history.items()}, scores,
                          seconds)


# ------------------------------------------------------------------ steps

def _mask_rule(mask) -> MaskRule:
    """``[mask]``: colour masks through ``rgb_map``, grey masks binarized, else class indexes."""
    if mask.rgb_map:
        return MaskRule.colours(mask.rgb_map)
    if mask.binarize:
        return MaskRule.binarize(mask.threshold, mask.grayscaling)
    return MaskRule.indexes()


def _chip_sets(cfg) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
    """The training chips and the validation chips (``validation_steps``: a fixed,
    seeded subset of ``validation_steps * batch_size`` of them)."""
    t = cfg.train
    if not t.image_datapath or not t.mask_datapath:
        raise ConfigError("train.image_datapath and train.mask_datapath are required")
    train_pairs = list_chips(t.image_datapath, t.mask_datapath)
    if not cfg.eval.image_datapath:
        raise ConfigError("[eval] image_datapath and mask_datapath are required (validation chips)")
    val_pairs = list_chips(cfg.eval.image_datapath, cfg.eval.mask_datapath)
    if t.validation_steps:
        # the same random subset every epoch (not the first chips of the first image). It is
        # cut here: Keras, given validation_steps, would go on through the data set and score
        # each epoch on other chips, so epochs would not be comparable for checkpoints.
        order = np.random.default_rng(t.seed).permutation(len(val_pairs))
        val_pairs = [val_pairs[i] for i in order[: t.validation_steps * t.batch_size]]
    return train_pairs, val_pairs


def _run_start(cfg, out_dir: Path, bundle: Path, overwrite: bool) -> str:
    """How this run starts: ``"resume"`` (``model_dir/backup`` holds an interrupted
    run), ``"extend"`` (a finished run, and more ``train.epochs`` than it was given:
    than its ``config.toml`` says and than its history has), or ``"fresh"``; a
    finished run that cannot be extended is :class:`OutputExistsError` unless
    ``overwrite`` (which starts over). A run that stopped early is not extended by
    running it again as it was."""
    if resumable_epochs(out_dir) is not None:
        return "resume"
    if not bundle.exists() or overwrite:
        return "fresh"
    done = len(read_history(out_dir / "history.csv").get("loss", []))
    given = max(done, _epochs_given(out_dir / "config.toml"))
    if done and cfg.train.epochs > given and (out_dir / "best.keras").exists():
        return "extend"
    why = ""
    if done:
        why = (f" (its run has {done} epochs: more epochs extend it)" if done == given else
               f" (its run stopped early, after {done} of {given} epochs: more than {given} epochs extend it)")
    raise OutputExistsError(f"model exists: {bundle}{why}", option="overwrite")


def _epochs_given(path: Path) -> int:
    """``train.epochs`` of the config a run recorded in its ``model_dir`` (0 if none)."""
    import tomllib  # noqa: PLC0415
    try:
        return int(tomllib.loads(path.read_text())["train"]["epochs"])
    except (OSError, ValueError, KeyError, TypeError):
        return 0


def resumable_epochs(model_dir: str | Path) -> int | None:
    """The epochs an interrupted run in ``model_dir`` has finished (its resume backup
    says so), or None when there is nothing to resume."""
    meta = Path(model_dir) / "backup" / "training_metadata.json"
    try:
        return int(json.loads(meta.read_text())["epoch"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _bundle_name(cfg, bundle: Path) -> str:
    """The bundle's name: ``train.output``'s file name, else the ``model_dir``
    folder's (``work/binary_water`` -> ``binary_water``)."""
    if cfg.train.output:
        return bundle.stem
    return Path(cfg.train.model_dir).absolute().resolve().name or bundle.stem


def _chip_pixel_size(image: str) -> float | None:
    """The pixel size of a georeferenced chip in a projected CRS (its units, metres for
    UTM), which the bundle records so ``predict`` warns on other resolutions; None for
    an ungeoreferenced one."""
    import rasterio  # noqa: PLC0415

    from .sources import is_georeferenced  # noqa: PLC0415
    with rasterio.Env(GDAL_DISABLE_READDIR_ON_OPEN="EMPTY_DIR"), rasterio.open(image) as src:
        if not (is_georeferenced(src) and src.crs.is_projected):
            return None
        return round(math.sqrt(abs(src.transform.determinant)), 6)


def _check_chips(pair: tuple[str, str], rule: MaskRule, ignore: int, m) -> tuple[int, np.dtype]:
    """Bands and data type of the chips, checked against ``[model]`` on the first chip
    (the loader checks every chip as it reads it)."""
    x0, _ = read_chip(*pair, rule, ignore)
    n_bands = x0.shape[0]
    if n_bands != m.image_channels:
        raise ConfigError(f"chips have {n_bands} bands but model.image_channels is {m.image_channels}")
    if x0.shape[1:] != (m.image_height, m.image_width):
        raise ConfigError(f"chips are {x0.shape[2]} x {x0.shape[1]} px but model.image_width/height are "
                          f"{m.image_width} x {m.image_height}")
    return n_bands, x0.dtype


def _input_scaling(cfg, init: "InitWeights | None", n_bands: int, dtype: np.dtype, pairs, rule: MaskRule
                   ) -> InputSpec:
    """The bundle's input scaling ``((DN + offset) * scale - mean) / std``: the start
    model's when fine-tuning (its first layer expects it), else mean/std measured on
    the training chips after ``train.scale`` (default by data type) and ``train.offset``."""
    t = cfg.train
    bands = tuple(t.bands) or tuple(f"b{i + 1}" for i in range(n_bands))
    if len(bands) != n_bands:
        raise ConfigError(f"train.bands names {len(bands)} bands but the chips have {n_bands}")
    scale = t.scale or (1 / 255 if dtype == np.uint8 else 1e-4 if dtype == np.uint16 else 1.0)
    # measured also when fine-tuning: it checks the sampled masks' classes against num_classes
    stats = chip_statistics(pairs, rule, cfg.mask.ignore_index, cfg.model.num_classes, scale, t.offset,
                            seed=t.seed)
    if init is not None and init.meta is not None and init.meta.input.n_bands == n_bands:
        s = init.meta.input
        return InputSpec(bands, tuple(s.offset), tuple(s.scale), tuple(s.mean), tuple(s.std))
    return InputSpec(bands, (float(t.offset),) * n_bands, (float(scale),) * n_bands,
                     tuple(float(v) for v in stats.mean), tuple(float(v) for v in stats.std))


def _network(m, k: int, n_bands: int, init: "InitWeights | None", ignore: int, background: int | None,
             class_weights) -> tuple[Any, int, Any]:
    """The compiled network of ``[model]`` (started from ``init_weights``), its
    downsampling factor, and its confusion-matrix metric."""
    keras = keras_module()
    if m.model == "flexunet":
        net = build_unet(k, n_bands, base_filters=m.base_filters, base_kernels=m.base_kernels[0],
                         num_layers=m.num_layers, dropout_rate=m.dropout_rate, dilation=m.dilation[0],
                         batch_norm=m.batch_norm, head=m.head)
    else:
        net = build_backbone_unet(m.model, k, n_bands, weights=m.encoder_weights, head=m.head,
                                  dropout_rate=m.dropout_rate)
    multiple = m.tile_multiple
    if init is not None:
        copy_weights(init, net, m.init_weights)
    if m.show_summary:
        net.summary()
    metric = make_confusion_metric(k, ignore, background, m.head)
    opt = keras.optimizers.Adam(m.learning_rate, clipvalue=m.clipvalue) if m.clipvalue else \
        keras.optimizers.Adam(m.learning_rate)
    net.compile(optimizer=opt, loss=make_loss(m.loss, k, ignore, class_weights, m.head), metrics=[metric],
                jit_compile=m.jit_compile)
    return net, multiple, metric


def _bundle_meta(cfg, name: str, spec: InputSpec, multiple: int, background: int | None) -> ModelMeta:
    """The bundle's metadata known before training: classes, scaling, tiling."""
    t, k = cfg.train, cfg.model.num_classes
    names = list(t.class_names) or [f"class_{i}" for i in range(k)]
    colors = list(t.class_colors) or [_PALETTE[i % len(_PALETTE)] for i in range(k)]
    return ModelMeta(
        name=name, classes=tuple(ClassInfo(i, names[i], colors[i].upper()) for i in range(k)), input=spec,
        tile_size=t.tile_size, overlap=t.overlap,  # checked against the network when the config was read
        tile_multiple=multiple, head=cfg.model.head, background=background)


def _run_dirs(cfg, out_dir: Path) -> list[Path]:
    """Folders the run writes into during training: ``model_dir`` and the epoch previews'."""
    t = cfg.train
    dirs = [out_dir]
    if t.epoch_change_tiledinfer:
        dirs.append(Path(t.epoch_change_tiledinfer_dir))
    elif t.epoch_change_infer:
        dirs.append(Path(t.epoch_change_infer_dir))
    return dirs


def _missing_root(d: Path) -> Path | None:
    """The outermost folder on the way to ``d`` (``d`` included) that does not exist yet."""
    top = None
    for q in (d, *d.absolute().parents):
        if q.exists():
            break
        top = q
    return top


def _callbacks(cfg, out_dir: Path, meta: ModelMeta, val_pairs, reporter: Reporter, steps: int,
               fresh: bool = True) -> list:
    """Checkpoint (best validation score), resume backup, history CSV, early stopping,
    learning-rate reducer, the state they go on from in a resumed or extended run,
    curves, epoch previews, then progress and cancel."""
    keras = keras_module()
    t = cfg.train
    last = t.metrics[-1] if t.metrics else "val_iou"
    monitor, mode = ("val_loss", "min") if last.endswith("loss") else ("val_mean_iou", "max")
    if fresh:
        # not a resumed or extended run: the history of an earlier run here does not continue
        (out_dir / "history.csv").unlink(missing_ok=True)
    checkpoint = keras.callbacks.ModelCheckpoint(str(out_dir / "best.keras"), monitor=monitor, mode=mode,
                                                 save_best_only=True)
    cbs = [keras.callbacks.BackupAndRestore(str(out_dir / "backup")), checkpoint,
           keras.callbacks.CSVLogger(str(out_dir / "history.csv"), append=True)]
    early = reducer = None
    if t.patience > 0:
        early = keras.callbacks.EarlyStopping(monitor=monitor, mode=mode, patience=t.patience,
                                              restore_best_weights=True)
        cbs.append(early)
    if t.learning_rate_reducer:
        reducer = keras.callbacks.ReduceLROnPlateau(monitor=monitor, mode=mode, factor=t.reducer_factor,
                                                    patience=t.reducer_patience, min_lr=1e-7)
        cbs.append(reducer)
    if not fresh:
        cbs.append(resume_callback(out_dir / "history.csv", out_dir / "best.keras", monitor, mode, checkpoint,
                                   early, reducer))
    cbs.append(curves_callback(out_dir / "training_curves.png", out_dir / "history.csv"))
    if t.epoch_change_infer or t.epoch_change_tiledinfer:
        tiled = t.epoch_change_tiledinfer
        src_dir = cfg.tiledinfer.images_dir if tiled else cfg.infer.images_dir
        images = (list_images(src_dir, "folder of images to infer each epoch") if src_dir
                  else [p[0] for p in val_pairs])[: t.num_infer_images]
        opts = _tiled_options(cfg.tiledinfer)
        out = t.epoch_change_tiledinfer_dir if tiled else t.epoch_change_infer_dir
        cbs.append(epoch_preview_callback(images, out, meta, opts, reporter.cancelled))
    cbs.append(progress_callback(reporter, steps))
    return cbs


def _validation_scores(net, metric, ds_val, meta: ModelMeta, reporter: Reporter) -> Scores:
    """Scores on the validation chips with the kept (best) weights."""
    metric.reset_state()
    for xb, yb in iter_batches(ds_val):
        reporter.check()
        metric.update_state(yb, net(xb, training=False))
    k = meta.n_classes
    return scores_from_confusion(metric.matrix(), list(range(k)), [c.name for c in meta.classes],
                                 meta.background)


def _r(v) -> float | None:
    return None if v is None or (isinstance(v, float) and math.isnan(v)) else round(float(v), 4)


def _final_meta(cfg, meta: ModelMeta, scores: Scores, seconds: float, n_train: int, n_valid: int,
                epochs_run: int) -> ModelMeta:
    """``meta`` with the architecture, the provenance and the validation scores."""
    keras = keras_module()
    m, t = cfg.model, cfg.train
    names = [c.name for c in meta.classes]
    return replace(
        meta,
        architecture={"type": m.model, "base_filters": m.base_filters, "base_kernels": list(m.base_kernels),
                      "num_layers": m.num_layers, "dropout_rate": m.dropout_rate, "dilation": list(m.dilation),
                      "batch_norm": m.batch_norm, "encoder_weights": m.encoder_weights},
        provenance={"train_chips": n_train, "valid_chips": n_valid,
                    "train_images": t.image_datapath, "valid_images": cfg.eval.image_datapath,
                    "epochs_run": epochs_run, "loss": m.loss,
                    **({"init_weights": m.init_weights} if m.init_weights else {}),
                    "learning_rate": m.learning_rate, "batch_size": t.batch_size, "seed": t.seed,
                    "keras": keras.__version__, "backend": keras.backend.backend(), "train_seconds": round(seconds, 1)},
        metrics={"validation": {"mean_iou_excluding_background": _r(scores.mean_iou),
                                "mean_dice_excluding_background": _r(scores.mean_dice),
                                "overall_accuracy": _r(scores.overall_accuracy),
                                "per_class_iou": {names[i]: _r(v) for i, v in enumerate(scores.iou)},
                                "per_class_dice": {names[i]: _r(v) for i, v in enumerate(scores.dice)}}},
    )


def _inference_jobs(cfg) -> list[tuple[list[str], Path, PredictOptions]]:
    """[infer] / [tiledinfer]: (images, output folder, options) to segment with the new
    bundle after training (class GeoTIFF, areas CSV and preview per image); checked
    before training so a wrong folder is not found hours later."""
    jobs = []
    for sec, opts in ((cfg.infer, PredictOptions()), (cfg.tiledinfer, _tiled_options(cfg.tiledinfer))):
        if sec.images_dir and sec.output_dir:
            jobs.append((list_images(sec.images_dir, "images_dir"), Path(sec.output_dir), opts))
    return jobs


def _infer(jobs: list[tuple[list[str], Path, PredictOptions]], bundle: Path, meta: ModelMeta,
           is_cancelled: CancelFn | None = None) -> None:
    """Segment the folders of :func:`_inference_jobs` with the new bundle."""
    for images, dst, opts in jobs:
        dst.mkdir(parents=True, exist_ok=True)
        predict_many(images, dst, str(bundle), opts, areas=True, preview=True, overwrite=True,
                     is_cancelled=is_cancelled)


def _tiled_options(ti) -> PredictOptions:
    """``[tiledinfer]``'s windows as given (``tile_size`` 0: the bundle's); the config
    checked them against the network when it was read."""
    return PredictOptions(tile_size=ti.tile_size or None, overlap=ti.overlapping, blend=ti.blend)


# ------------------------------------------------------------------ init weights

@dataclass
class InitWeights:
    """``[model] init_weights``: a trained model to start from (fine-tuning)."""

    keras_model: Any
    meta: ModelMeta | None  # the bundle's metadata; None for a bare .keras file


def load_init_weights(path: str) -> InitWeights | None:
    """The model ``[model] init_weights`` names (a ``.geoseg`` bundle or a ``.keras``
    file), or None when it names none."""
    if not path:
        return None
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"model.init_weights: file not found: {p}")
    try:
        if p.suffix.lower() == ".keras":
            return InitWeights(load_keras_file(p), None)
        lm = load_model(p)
    except GeosegError as e:
        raise ConfigError(f"model.init_weights: {e}") from None
    return InitWeights(lm.keras_model, lm.meta)


def copy_weights(src: InitWeights, net, where: str) -> None:
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
