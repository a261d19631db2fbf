"""Keras models: the UNet, saving/loading bundles, and the compiled forward pass.

This is the only geoseg module that imports TensorFlow/Keras (:func:`keras_module`,
:func:`tensorflow_module`), and it does so lazily, inside functions, so ``import
geoseg`` stays light (the QGIS plugin and ``geoseg areas`` never pay for TensorFlow).
Keras 3 runs on TensorFlow where it is installed; with ``KERAS_BACKEND=jax``, or
where TensorFlow is absent and JAX is installed (a GPU host with JAX only), the same
code runs on JAX: jit-compiled forward pass, training fed by a Keras PyDataset.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import hashlib
import logging
import os
import sys
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np

from .bundle import MODEL_NAME, ModelMeta, read_bundle_member, read_metadata, write_bundle
from .errors import ConfigError, MissingDependencyError, ModelError, one_line

__all__ = ["build_unet", "save_model", "load_model", "LoadedModel", "make_forward", "keras_module", "ModelRef",
           "load_forward", "forward_of", "file_sha256", "resolve_runtime", "cache_dir"]

log = logging.getLogger(__name__)

_PRELOADED = False


def _preload_sqlite() -> None:
    """TensorFlow exports sqlite3_* symbols globally; QGIS then segfaults (stack.md).

    Loading the system libsqlite3 with RTLD_GLOBAL first makes every later user bind to it.
    """
    global _PRELOADED
    if not _PRELOADED:
        try:
            ctypes.CDLL("libsqlite3.so.0", mode=ctypes.RTLD_GLOBAL)
        except OSError:
            pass
        _PRELOADED = True


@contextlib.contextmanager
def _native_stderr_silenced(active: bool = True):
    """Silence file descriptor 2 while TensorFlow loads: its C++ start-up lines (absl's
    "All log messages before absl::InitializeLog()", oneDNN notices) ignore
    ``TF_CPP_MIN_LOG_LEVEL``. Kept when debug logging is on (``-vv``). Python errors
    still propagate as exceptions."""
    if not active or logging.getLogger().isEnabledFor(logging.DEBUG):
        yield
        return
    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except (OSError, ValueError):  # no usable fd 2 (embedded interpreters)
        yield
        return
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


def keras_module():
    """Import and return ``keras`` (Keras 3), with a clear error when it is missing.

    Without ``KERAS_BACKEND`` set, Keras would pick TensorFlow even where only JAX is
    installed (and fail to import): then JAX is chosen."""
    import importlib.util  # noqa: PLC0415
    _preload_sqlite()
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    if ("KERAS_BACKEND" not in os.environ and "keras" not in sys.modules
            and importlib.util.find_spec("tensorflow") is None and importlib.util.find_spec("jax") is not None):
        os.environ["KERAS_BACKEND"] = "jax"
    try:
        with _native_stderr_silenced("keras" not in sys.modules):
            import keras  # noqa: PLC0415
    except ImportError as e:
        raise MissingDependencyError(
            f"Keras/TensorFlow is needed for this command ({e}); install it with "
            "'pip install \"tensorflow-cpu>=2.21,<2.22\"'") from None
    if int(keras.__version__.split(".")[0]) < 3:
        raise MissingDependencyError(f"Keras 3 is needed, found {keras.__version__}")
    return keras


def tensorflow_module():
    """``tensorflow`` when Keras runs on it (the tf.data input pipeline, tf.function
    inference), else None."""
    keras = keras_module()
    if keras.backend.backend() != "tensorflow":
        return None
    import tensorflow as tf  # noqa: PLC0415
    return tf


def build_unet(n_classes: int, n_bands: int, *, base_filters: int = 16, base_kernels: int = 3,
               num_layers: int = 4, dropout_rate: float = 0.0, dilation: int = 1,
               batch_norm: bool = True, head: str = "softmax", name: str = "flexunet"):
    """The seed's FlexUNet, configurable.

    Args:
        n_classes: output classes (2 with ``head="sigmoid"`` gives one sigmoid channel).
        n_bands: input bands.
        base_filters: filters of the first level; doubled at each level down.
        base_kernels: kernel size of the first level's convolutions; 2 smaller per level
            down, never below 3 (the seed's FlexUNet rule).
        num_layers: depth including the bridge; input sizes must be a multiple of
            ``2 ** (num_layers - 1)``.
        dropout_rate: dropout between the two convolutions of each block (0 = none).
        dilation: dilation rate of the encoder and bridge convolutions.
        batch_norm: batch normalisation after each convolution.
        head: ``"softmax"`` (n_classes channels) or ``"sigmoid"`` (binary, 1 channel).
    """
    keras = keras_module()
    L = keras.layers
    if num_layers < 2:
        raise ModelError("num_layers must be at least 2 (one level plus the bridge)")
    if head not in ("softmax", "sigmoid"):
        raise ModelError(f"head must be 'softmax' or 'sigmoid', got {head!r}")
    if head == "sigmoid" and n_classes != 2:
        raise ModelError("a sigmoid head is for 2 classes (background/foreground)")

    def block(x, filters, kernel, dil, tag):
        for j in range(2):
            x = L.Conv2D(filters, kernel, padding="same", dilation_rate=dil, use_bias=not batch_norm,
                         kernel_initializer="he_normal", name=f"{tag}_conv{j}")(x)
            if batch_norm:
                x = L.BatchNormalization(name=f"{tag}_bn{j}")(x)
            x = L.Activation("relu", name=f"{tag}_relu{j}")(x)
            if j == 0 and dropout_rate > 0:
                x = L.Dropout(dropout_rate, name=f"{tag}_drop")(x)
        return x

    inputs = keras.Input((None, None, n_bands), name="image")
    x, skips = inputs, []
    for i in range(num_layers - 1):
        k = max(3, base_kernels - 2 * i)
        x = block(x, base_filters * 2 ** i, k, dilation, f"enc{i}")
        skips.append(x)
        x = L.MaxPooling2D(2, name=f"pool{i}")(x)
    x = block(x, base_filters * 2 ** (num_layers - 1), 3, dilation, "bridge")
    for i in reversed(range(num_layers - 1)):
        f = base_filters * 2 ** i
        x = L.Conv2DTranspose(f, 2, strides=2, padding="same", name=f"up{i}")(x)
        x = L.Concatenate(name=f"cat{i}")([x, skips[i]])
        x = block(x, f, 3, 1, f"dec{i}")
    n_out = 1 if head == "sigmoid" else n_classes
    outputs = L.Conv2D(n_out, 1, activation=head, dtype="float32", name="head")(x)
    return keras.Model(inputs, outputs, name=name)


def save_model(path: str | os.PathLike, model: Any, meta: ModelMeta, *, overwrite: bool = True) -> None:
    """Save ``model`` and ``meta`` as one ``.geoseg`` bundle (atomically), without
    optimizer state (a trained model's Adam moments would triple the file). Without
    ``overwrite`` an existing file at ``path`` is never replaced
    (:class:`~geoseg.errors.OutputExistsError`)."""
    keras_module()
    _check_model_fits(model, meta, str(path))
    if getattr(model, "optimizer", None) is not None or getattr(model, "compiled", False):
        plain = type(model).from_config(model.get_config())  # clone_model would keep the compile state
        plain.set_weights(model.get_weights())
        model = plain
    with tempfile.TemporaryDirectory() as tmp:
        f = Path(tmp) / MODEL_NAME
        model.save(f)
        write_bundle(path, meta, f.read_bytes(), overwrite=overwrite)


@dataclass(frozen=True)
class LoadedModel:
    """A bundle loaded in this process: its metadata and the Keras model."""

    meta: ModelMeta
    keras_model: Any
    path: str = ""


@dataclass(frozen=True)
class ModelRef:
    """A picklable reference to a model bundle for any process (a thread pool, a Dask
    worker): the bundle's path and content hash, the test-time augmentation to run it
    with, and the runtime and precision (:data:`geoseg.unit.RUNTIMES`; made directly,
    Keras in float32; :meth:`of` resolves ``auto`` on this machine). :func:`load_forward`
    turns it into a compiled forward function once per process; a Keras object is never
    pickled or shipped."""

    path: str
    sha256: str
    tta: str = "none"
    runtime: str = "keras"
    precision: str = "float32"

    @classmethod
    def of(cls, path: str | os.PathLike, tta: str = "none", runtime: str = "auto",
           precision: str = "auto") -> "ModelRef":
        """The reference of a bundle file (read and checked now: a bad bundle is a
        one-line ModelError here, not in a worker later), with the runtime and precision
        resolved on this machine (:func:`resolve_runtime`): every process that loads the
        reference runs the model the same way."""
        p = Path(path)
        read_metadata(p)
        return cls(str(p.absolute()), file_sha256(p), tta, *resolve_runtime(runtime, precision))


def _keras_backend_name() -> str:
    """The backend Keras runs on (or will, once imported), without importing it."""
    import importlib.util  # noqa: PLC0415
    if "keras" in sys.modules:
        return sys.modules["keras"].backend.backend()
    if os.environ.get("KERAS_BACKEND"):
        return os.environ["KERAS_BACKEND"]
    return "tensorflow" if importlib.util.find_spec("tensorflow") is not None else "jax"


def _openvino():
    """``openvino``, or None where it is not installed."""
    try:
        import openvino  # noqa: PLC0415
    except ImportError:
        return None
    return openvino


def _require_openvino():
    """``openvino``, or the one-line error that it is not installed."""
    ov = _openvino()
    if ov is None:
        raise ConfigError("the OpenVINO runtime is not installed: pip install openvino (or use the keras "
                          "runtime)", option="runtime")
    return ov


def _not_on(backend: str) -> ConfigError:
    return ConfigError(f"the OpenVINO runtime converts the model through TensorFlow; Keras runs on {backend} "
                       "here: use the keras runtime", option="runtime")


@functools.lru_cache(maxsize=None)
def _cpu_has_bf16(ov) -> bool:
    try:
        return "BF16" in ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")
    except Exception:  # noqa: BLE001  (no CPU plugin: no bfloat16)
        return False


def resolve_runtime(runtime: str = "auto", precision: str = "auto") -> tuple[str, str]:
    """The runtime and precision a forward pass will use on this machine.

    ``auto`` runtime: OpenVINO where it is installed and Keras runs on TensorFlow (the
    graph is converted from TensorFlow), else Keras. ``auto`` precision: bfloat16 on
    OpenVINO where the CPU computes it natively (the classes agree with float32 on
    >= 99.9 % of pixels: bench/forward.py, tests/test_runtime.py), else float32.
    Asking for what this machine cannot do is a one-line ConfigError (OpenVINO not
    installed, OpenVINO under JAX, bfloat16 without OpenVINO or on a CPU without native
    bfloat16) — never a silent fallback to something else."""
    from .unit import PRECISIONS, RUNTIMES  # noqa: PLC0415  (unit imports rasterio: keep this module light)
    if runtime not in RUNTIMES:
        raise ConfigError(f"runtime must be one of {', '.join(RUNTIMES)}, got {runtime!r}", option="runtime")
    if precision not in PRECISIONS:
        raise ConfigError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}",
                          option="precision")
    backend = _keras_backend_name()
    asked = runtime
    ov = _openvino() if runtime != "keras" else None
    if runtime == "openvino":
        ov = _require_openvino()
        if backend != "tensorflow":
            raise _not_on(backend)
    if runtime == "auto":
        runtime = "openvino" if ov is not None and backend == "tensorflow" else "keras"
    if precision == "bfloat16":
        if runtime != "openvino":
            hint = "" if ov is not None or asked == "keras" else " (pip install openvino)"
            raise ConfigError(f"bfloat16 precision runs on the OpenVINO runtime only{hint}", option="precision")
        if not _cpu_has_bf16(ov):
            raise ConfigError("this CPU has no native bfloat16 (AVX512_BF16 or AMX): use float32",
                              option="precision")
    if precision == "auto":
        precision = "bfloat16" if runtime == "openvino" and _cpu_has_bf16(ov) else "float32"
    return runtime, precision


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


#: How many times this process loaded a bundle to build a forward function (tests count it).
LOADS = {"count": 0}
_FORWARDS: dict[ModelRef, Callable[[np.ndarray], np.ndarray]] = {}
_LOAD_LOCK = threading.RLock()
_MAX_FORWARDS = 4


def _cache(ref: ModelRef, fwd: Callable[[np.ndarray], np.ndarray]) -> Callable[[np.ndarray], np.ndarray]:
    while len(_FORWARDS) >= _MAX_FORWARDS:
        _FORWARDS.pop(next(iter(_FORWARDS)))
    _FORWARDS[ref] = fwd
    return fwd


def load_forward(ref: ModelRef) -> Callable[[np.ndarray], np.ndarray]:
    """The compiled forward function (with test-time augmentation) of ``ref``, built
    once per process and cached. Refuses a bundle whose content changed since the
    reference was made (a worker must run the model the client planned with)."""
    from .unit import tta_forward  # noqa: PLC0415  (unit imports rasterio: keep this module light)
    if ref in _FORWARDS:
        return _FORWARDS[ref]
    with _LOAD_LOCK:  # tasks on threads (dask's threaded scheduler) wait for one load
        if ref in _FORWARDS:
            return _FORWARDS[ref]
        if file_sha256(Path(ref.path)) != ref.sha256:
            raise ModelError(f"{ref.path}: the bundle changed since this run started")
        LOADS["count"] += 1
        if ref.runtime == "openvino":
            meta = read_metadata(ref.path)
            run = _openvino_run(_openvino_model_of(ref, meta), ref.precision)
            return _cache(ref, tta_forward(_with_head(run, meta.head), ref.tta))
        lm = load_model(ref.path)
        return _cache(ref, tta_forward(make_forward(lm.keras_model, lm.meta.input.n_bands, lm.meta.head,
                                                    runtime=ref.runtime, precision=ref.precision), ref.tta))


def forward_of(model: LoadedModel, tta: str = "none", runtime: str = "auto",
               precision: str = "auto") -> Callable[[np.ndarray], np.ndarray]:
    """The forward function of a model held in memory. A model loaded from a bundle
    shares the per-process cache of :func:`load_forward` (compiled once from the
    Keras model already in memory); one built in memory (training) is compiled now."""
    from .unit import tta_forward  # noqa: PLC0415
    runtime, precision = resolve_runtime(runtime, precision)
    ref = (ModelRef.of(model.path, tta, runtime, precision) if model.path and Path(model.path).is_file()
           else None)
    if ref is not None and ref in _FORWARDS:
        return _FORWARDS[ref]
    fwd = tta_forward(make_forward(model.keras_model, model.meta.input.n_bands, model.meta.head,
                                   runtime=runtime, precision=precision), tta)
    return _cache(ref, fwd) if ref is not None else fwd


def load_model(path: str | os.PathLike) -> LoadedModel:
    """Load and validate a bundle: metadata first (cheap), then Keras in safe mode."""
    meta = read_metadata(path)
    data = read_bundle_member(path, MODEL_NAME)
    with tempfile.TemporaryDirectory() as tmp:
        f = Path(tmp) / MODEL_NAME
        f.write_bytes(data)
        model = load_keras_file(f, where=str(path))
    _check_model_fits(model, meta, str(path))
    return LoadedModel(meta, model, str(path))


def load_keras_file(path: str | os.PathLike, where: str = "") -> Any:
    """A ``.keras`` file, uncompiled, in safe mode; a bad file is a one-line ModelError."""
    keras = keras_module()
    try:
        return keras.saving.load_model(path, compile=False, safe_mode=True)
    except Exception as e:  # Keras raises many types for a bad file
        msg = one_line(e)
        raise ModelError(f"{where or path}: cannot load the Keras model: {msg}") from None


def _check_model_fits(model: Any, meta: ModelMeta, where: str) -> None:
    try:
        in_shape = tuple(model.inputs[0].shape)
        out_shape = tuple(model.outputs[0].shape)
    except (AttributeError, IndexError):
        raise ModelError(f"{where}: the Keras model has no single image input/output") from None
    if len(in_shape) != 4 or len(out_shape) != 4:
        raise ModelError(f"{where}: model must map (batch, h, w, bands) to (batch, h, w, classes)")
    if in_shape[-1] != meta.input.n_bands:
        raise ModelError(f"{where}: the network takes {in_shape[-1]} bands but the metadata lists "
                         f"{meta.input.n_bands}")
    want = 1 if meta.head == "sigmoid" else meta.n_classes
    if out_shape[-1] != want:
        raise ModelError(f"{where}: the network outputs {out_shape[-1]} channels but the metadata "
                         f"has {meta.n_classes} classes ({meta.head} head)")


def make_forward(model: Any, n_bands: int, head: str = "softmax", *, runtime: str = "keras",
                 precision: str = "float32") -> Callable[[np.ndarray], np.ndarray]:
    """A compiled forward pass: ``(N, h, w, bands) float32 -> (N, h, w, K)`` probabilities.

    TensorFlow backend: one ``tf.function`` whose signature leaves batch and window
    sizes open (no retracing for short batches or trimmed border windows; about 25 %
    faster than ``model.predict``, see stack.md). JAX backend: ``jax.jit`` over
    ``stateless_call`` (compiled once per window shape). ``runtime="openvino"``: that
    ``tf.function``'s graph converted to OpenVINO and compiled for this CPU in
    ``precision`` (see :data:`geoseg.unit.RUNTIMES`; ``"auto"`` values go through
    :func:`resolve_runtime`). A sigmoid head is returned as two channels ``[1 - p, p]``.
    """
    keras = keras_module()
    backend = keras.backend.backend()
    if "auto" in (runtime, precision):
        runtime, precision = resolve_runtime(runtime, precision)
    if runtime == "openvino":
        run = _openvino_forward(model, n_bands, precision)
    elif backend == "tensorflow":
        import tensorflow as tf  # noqa: PLC0415
        _fwd = _tf_function(model, n_bands)

        def run(x: np.ndarray) -> np.ndarray:
            return _fwd(tf.constant(x)).numpy()
    elif backend == "jax":
        import jax  # noqa: PLC0415
        tv = [v.value for v in model.trainable_variables]
        ntv = [v.value for v in model.non_trainable_variables]

        @jax.jit
        def _jfwd(tv, ntv, x):
            y, _ = model.stateless_call(tv, ntv, x, training=False)
            return y

        def run(x: np.ndarray) -> np.ndarray:
            return np.asarray(_jfwd(tv, ntv, x))
    else:
        def run(x: np.ndarray) -> np.ndarray:
            return np.asarray(model.predict_on_batch(x))

    return _with_head(run, head)


def _with_head(run: Callable[[np.ndarray], np.ndarray], head: str) -> Callable[[np.ndarray], np.ndarray]:
    if head == "sigmoid":
        def run2(x: np.ndarray) -> np.ndarray:
            p = run(x).astype(np.float32)
            return np.concatenate([1.0 - p, p], axis=-1)
        return run2

    def run_softmax(x: np.ndarray) -> np.ndarray:
        return run(x).astype(np.float32, copy=False)
    return run_softmax


def _tf_function(model: Any, n_bands: int):
    """The model's inference as one ``tf.function`` open in batch and window size."""
    import tensorflow as tf  # noqa: PLC0415

    @tf.function(input_signature=[tf.TensorSpec([None, None, None, n_bands], tf.float32)])
    def fwd(x):
        return model(x, training=False)
    return fwd


def _model_threads() -> int | None:
    """The threads a model may use in this process: set per Dask worker through
    ``TF_NUM_INTRAOP_THREADS`` (geoseg.distributed), else the runtime's own choice."""
    v = os.environ.get("TF_NUM_INTRAOP_THREADS", "")
    return int(v) if v.isdigit() and int(v) > 0 else None


def _openvino_forward(model: Any, n_bands: int, precision: str) -> Callable[[np.ndarray], np.ndarray]:
    """The Keras model converted to OpenVINO and compiled for this CPU."""
    return _openvino_run(_openvino_convert(model, n_bands), precision)


def _openvino_convert(model: Any, n_bands: int):
    """The Keras model as an OpenVINO model, converted from its TensorFlow graph with
    batch and window sizes left open."""
    ov = _require_openvino()
    if tensorflow_module() is None:
        raise _not_on(keras_module().backend.backend())
    try:
        with _native_stderr_silenced():
            return ov.convert_model(_tf_function(model, n_bands).get_concrete_function())
    except Exception as e:  # noqa: BLE001  (OpenVINO raises OpConversionFailure and others)
        raise ModelError(f"OpenVINO cannot convert this model ({one_line(e)}); use the keras runtime") from None


def _openvino_run(converted: Any, precision: str) -> Callable[[np.ndarray], np.ndarray]:
    """``converted`` compiled for this CPU in ``precision``: one infer request per
    calling thread (dask's threaded scheduler calls a cached forward from several)."""
    ov = _openvino()
    if precision == "bfloat16" and not _cpu_has_bf16(ov):  # e.g. a cluster's worker on another CPU
        raise ConfigError("this CPU has no native bfloat16 (AVX512_BF16 or AMX): run with float32 precision",
                          option="precision")
    config: dict[str, Any] = {"PERFORMANCE_HINT": "LATENCY",
                              "INFERENCE_PRECISION_HINT": "bf16" if precision == "bfloat16" else "f32",
                              # several processes on one machine (Dask workers) must not pin
                              # their threads onto the same cores
                              "ENABLE_CPU_PINNING": False}
    threads = _model_threads()
    if threads:
        config["INFERENCE_NUM_THREADS"] = threads
    try:
        compiled = ov.Core().compile_model(converted, "CPU", config)
    except Exception as e:  # noqa: BLE001
        raise ModelError(f"OpenVINO cannot compile this model ({one_line(e)}); use the keras runtime") from None
    local = threading.local()

    def run(x: np.ndarray) -> np.ndarray:
        req = getattr(local, "request", None)
        if req is None:
            req = local.request = compiled.create_infer_request()
        return req.infer([np.ascontiguousarray(x, np.float32)])[0]
    return run


def cache_dir() -> Path | None:
    """Where geoseg keeps converted models between runs: ``GEOSEG_CACHE_DIR``, else
    ``$XDG_CACHE_HOME/geoseg``, else ``~/.cache/geoseg``; ``GEOSEG_CACHE_DIR=off`` (or
    empty) keeps none."""
    v = os.environ.get("GEOSEG_CACHE_DIR")
    if v is not None:
        return Path(v) if v.strip() and v.strip().lower() != "off" else None
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "geoseg"


def _ir_path(ref: ModelRef) -> Path | None:
    d = cache_dir()
    ov = _openvino()
    if d is None or ov is None:
        return None
    version = ov.__version__.split("-")[0]
    return d / "openvino" / f"{ref.sha256}-ov{version}.xml"


def _openvino_model_of(ref: ModelRef, meta: ModelMeta):
    """The bundle's OpenVINO model: from the cache (an IR named by the bundle's sha256
    and OpenVINO's version: no TensorFlow import, no Keras load), else converted from
    the Keras model and stored there for the next run (float32 weights, written
    atomically; a cache that cannot be written or read is skipped, never an error)."""
    ov = _require_openvino()
    xml = _ir_path(ref)
    want_out = 1 if meta.head == "sigmoid" else meta.n_classes
    if xml is not None and xml.is_file():
        try:
            m = ov.Core().read_model(str(xml))
            if (len(m.inputs) == 1 and len(m.outputs) == 1
                    and m.inputs[0].get_partial_shape()[3].get_length() == meta.input.n_bands
                    and m.outputs[0].get_partial_shape()[3].get_length() == want_out):
                return m
            log.debug("%s: not this model's shapes: converting again", xml)
        except Exception as e:  # noqa: BLE001  (a damaged cache entry: convert again)
            log.debug("%s: unreadable (%s): converting again", xml, one_line(e))
    lm = load_model(ref.path)
    converted = _openvino_convert(lm.keras_model, meta.input.n_bands)
    if xml is not None:
        tmp = xml.with_name(f".{xml.stem}.{os.getpid()}.{threading.get_ident()}.xml")
        try:
            xml.parent.mkdir(parents=True, exist_ok=True)
            ov.save_model(converted, str(tmp), compress_to_fp16=False)
            os.replace(tmp.with_suffix(".bin"), xml.with_suffix(".bin"))  # weights first: an .xml
            os.replace(tmp, xml)                                           # seen has its .bin
        except OSError as e:
            log.debug("cannot keep the converted model in %s: %s", xml.parent, one_line(e))
        finally:
            for p in (tmp, tmp.with_suffix(".bin")):
                with contextlib.suppress(OSError):
                    p.unlink()
    return converted


#: keras.applications encoders: constructor name and the layers whose outputs feed
#: the decoder, from 1/2 to 1/16 resolution, then the 1/32 bottleneck.
BACKBONES = {
    "resnet50": ("ResNet50", ["conv1_relu", "conv2_block3_out", "conv3_block4_out", "conv4_block6_out"],
                 "conv5_block3_out"),
    "efficientnetb0": ("EfficientNetB0", ["block2a_expand_activation", "block3a_expand_activation",
                                          "block4a_expand_activation", "block6a_expand_activation"],
                       "top_activation"),
    "mobilenetv2": ("MobileNetV2", ["block_1_expand_relu", "block_3_expand_relu", "block_6_expand_relu",
                                    "block_13_expand_relu"], "out_relu"),
    # the seed's Dubai encoder. Its stem convolutions and poolings are 'valid', which
    # leaves odd feature sizes (127, 61, 29...) that a UNet cannot concatenate and needs
    # windows of >= 75 px: geoseg rebuilds it with 'same' padding (same weights, so
    # ImageNet or local weights still load), giving exact 1/2..1/32 grids for any
    # multiple of 32. The stem's 1/2 and 1/4 features are the inputs of its two
    # max-poolings (their layer names are numbered per session, not fixed).
    "inceptionresnetv2": ("InceptionResNetV2", ["@pool0", "@pool1", "block35_10_ac", "block17_20_ac"],
                          "conv_7b_ac"),
}


def _same_padding_copy(keras, enc):
    """``enc`` with every 'valid' convolution/pooling made 'same', weights copied."""
    def clone(layer):
        cfg = layer.get_config()
        if cfg.get("padding") == "valid":
            cfg["padding"] = "same"
        return layer.__class__.from_config(cfg)
    out = keras.models.clone_model(enc, clone_function=clone)
    out.set_weights(enc.get_weights())
    return out


def _feature(keras, enc, name):
    if name.startswith("@pool"):
        pools = [ly for ly in enc.layers if isinstance(ly, keras.layers.MaxPooling2D)]
        return pools[int(name[5:])].input
    return enc.get_layer(name).output


def build_backbone_unet(backbone: str, n_classes: int, n_bands: int, *, weights: str = "none",
                        head: str = "softmax", decoder_filters=(256, 128, 64, 32, 16), dropout_rate: float = 0.0):
    """A UNet whose encoder is a keras.applications network.

    ``weights``: ``"none"`` (random), ``"imagenet"`` (3 bands; Keras must find the
    file in its cache, nothing is downloaded by the tests) or a path to a weights
    file for the encoder. Inputs must be multiples of 32 px.
    """
    keras = keras_module()
    L = keras.layers
    key = backbone.lower()
    if key not in BACKBONES:
        raise ModelError(f"unknown encoder {backbone!r}; known: flexunet, {', '.join(BACKBONES)}")
    ctor_name, skip_names, bottom = BACKBONES[key]
    if weights == "imagenet" and n_bands != 3:
        raise ModelError("ImageNet encoder weights need 3 input bands")
    inputs = keras.Input((None, None, n_bands), name="image")
    ctor = getattr(keras.applications, ctor_name)
    w = "imagenet" if weights == "imagenet" else None
    kwargs = {"include_top": False, "weights": w, "input_tensor": inputs}
    try:
        enc = ctor(**kwargs)
    except Exception as e:  # noqa: BLE001  (a download attempt offline, a bad file, ...)
        raise ModelError(f"cannot build the {ctor_name} encoder with weights={weights}: "
                         f"{one_line(e)}") from None
    if weights not in ("none", "imagenet", "", None):
        try:
            enc.load_weights(weights)
        except Exception as e:  # noqa: BLE001
            raise ModelError(f"cannot load encoder weights {weights}: {one_line(e)}") from None
    if key == "inceptionresnetv2":
        enc = _same_padding_copy(keras, enc)
        inputs = enc.inputs[0]
    x = _feature(keras, enc, bottom)
    skips = [_feature(keras, enc, n) for n in reversed(skip_names)]
    for i, f in enumerate(decoder_filters):
        x = L.UpSampling2D(2, name=f"dec{i}_up")(x)
        if i < len(skips):
            x = L.Concatenate(name=f"dec{i}_cat")([x, skips[i]])
        for j in range(2):
            x = L.Conv2D(f, 3, padding="same", use_bias=False, name=f"dec{i}_conv{j}")(x)
            x = L.BatchNormalization(name=f"dec{i}_bn{j}")(x)
            x = L.Activation("relu", name=f"dec{i}_relu{j}")(x)
        if dropout_rate > 0 and i == 0:
            x = L.Dropout(dropout_rate, name="dec_drop")(x)
    n_out = 1 if head == "sigmoid" else n_classes
    outputs = L.Conv2D(n_out, 1, activation=head, dtype="float32", name="head")(x)
    return keras.Model(inputs, outputs, name=f"{key}_unet")
