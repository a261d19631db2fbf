import ctypes

# TensorFlow exports sqlite3_* symbols with RTLD_GLOBAL; load the system library
# first so a process that also starts QGIS does not crash (see stack.md).
try:
    ctypes.CDLL("libsqlite3.so.0", mode=ctypes.RTLD_GLOBAL)
except OSError:
    pass

import os  # noqa: E402
import sys  # noqa: E402
import warnings  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import rasterio  # noqa: E402
from rasterio.transform import from_origin  # noqa: E402

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
# converted models (geoseg.model.cache_dir) go to a cache of this test session's own,
# never the user's; subprocesses inherit it
if "GEOSEG_CACHE_DIR" not in os.environ:
    import atexit  # noqa: E402
    import shutil  # noqa: E402
    import tempfile  # noqa: E402
    os.environ["GEOSEG_CACHE_DIR"] = tempfile.mkdtemp(prefix="geoseg-test-cache-")
    atexit.register(shutil.rmtree, os.environ["GEOSEG_CACHE_DIR"], True)

from geoseg.bundle import ClassInfo, InputSpec, ModelMeta  # noqa: E402
from geoseg.model import LoadedModel  # noqa: E402

DATA = Path(__file__).parent / "data"
SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"


@pytest.fixture
def runner():
    """A click ``CliRunner`` for the ``geoseg`` commands (rasterio's tests/conftest.py style)."""
    from click.testing import CliRunner  # noqa: PLC0415
    return CliRunner()


@pytest.fixture
def make_geotiff(tmp_path):
    """Factory: write a GeoTIFF with 1 m UTM pixels (areas exact) and return its path."""
    counter = {"n": 0}

    def make(data, *, crs="EPSG:32633", transform=None, nodata=None, name=None, dtype=None, **extra):
        data = np.asarray(data)
        if data.ndim == 2:
            data = data[None]
        count, h, w = data.shape
        counter["n"] += 1
        path = tmp_path / (name or f"img{counter['n']}.tif")
        prof = dict(driver="GTiff", width=w, height=h, count=count, dtype=dtype or data.dtype,
                    crs=crs, transform=transform if transform is not None else from_origin(500000, 4000000, 1, 1),
                    nodata=nodata)
        prof.update(extra)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", rasterio.errors.NotGeoreferencedWarning)
            with rasterio.open(path, "w", **prof) as dst:
                dst.write(data.astype(prof["dtype"]))
        return path

    return make


def make_meta(n_bands=3, classes=((0, "background", "#000000"), (1, "bright", "#FF0000")), tile=32, overlap=8,
              scale=1.0, multiple=1, **kw):
    return ModelMeta(
        name="test", classes=tuple(ClassInfo(*c) for c in classes),
        input=InputSpec(tuple(f"b{i + 1}" for i in range(n_bands)), (0.0,) * n_bands, (scale,) * n_bands,
                        (0.0,) * n_bands, (1.0,) * n_bands, None),
        tile_size=tile, overlap=overlap, tile_multiple=multiple, **kw)


def threshold_forward(threshold=0.5, k=2):
    """Pointwise 'model': class 1 where band 1 > threshold (soft probabilities)."""
    def fwd(x):
        p = 1.0 / (1.0 + np.exp(-(x[..., 0] - threshold) * 8.0))
        if k == 2:
            return np.stack([1 - p, p], -1).astype(np.float32)
        out = np.stack([np.abs(x[..., i % x.shape[-1]] - 0.3 * i) for i in range(k)], -1)
        e = np.exp(-out)
        return (e / e.sum(-1, keepdims=True)).astype(np.float32)
    return fwd


@pytest.fixture
def fake_model():
    """A LoadedModel without Keras plus a pointwise forward function."""
    meta = make_meta()
    return LoadedModel(meta, None), threshold_forward()


@pytest.fixture(scope="session")
def tiny_bundle(tmp_path_factory):
    """A tiny real Keras UNet saved as a .geoseg bundle (3 bands, 2 classes, untrained).

    Its weights are seeded, so its output is the same in every run: on RGB.byte it
    predicts both classes and is not flip-symmetric (``test_model.py`` checks both, so
    tests that compare a plain and a flip-TTA run can rely on a difference)."""
    from geoseg.model import build_unet, keras_module, save_model
    keras_module().utils.set_random_seed(0)
    model = build_unet(2, 3, base_filters=4, num_layers=2)
    meta = make_meta(n_bands=3, tile=32, overlap=8, multiple=2, scale=1 / 255)
    path = tmp_path_factory.mktemp("models") / "tiny.geoseg"
    save_model(path, model, meta)
    return path


@pytest.fixture
def rgb_byte():
    return DATA / "RGB.byte.tif"


WATER_MODEL_TOML = """[model]
image_width = 64
image_height = 64
image_channels = 6
num_classes = 2
base_filters = 4
num_layers = 3
loss = "ce_dice"
learning_rate = 0.003
"""


def water_config(train_keys: str, tail: str = "") -> str:
    """A training config template (``{d}``: a folder holding ``chips/`` cut from the S2
    sample) for the tiny 6-band water UNet: ``train_keys`` go into [train] beside the
    chip folders; ``tail`` adds sections."""
    return (WATER_MODEL_TOML + "\n[train]\n" + train_keys +
            'image_datapath = "{d}/chips/train/images"\nmask_datapath = "{d}/chips/train/masks"\n'
            '\n[eval]\nimage_datapath = "{d}/chips/valid/images"\nmask_datapath = "{d}/chips/valid/masks"\n' + tail)


def box_forward(radius=2, threshold=0.5, batch_sensitive=False):
    """A stand-in model with spatial context: class 1 where the (2r+1)² box mean of band 1
    (zero outside the window, like a CNN's 'same' padding) exceeds ``threshold``.

    With ``batch_sensitive`` the output also moves a little with the batch's mean, so
    two runs agree only when the same windows were batched together."""
    def fwd(x):
        a = x[..., 0].astype(np.float64)
        n, h, w = a.shape
        p = np.pad(a, ((0, 0), (radius + 1, radius), (radius + 1, radius)))
        c = p.cumsum(1).cumsum(2)
        k = 2 * radius + 1
        s = c[:, k:, k:] - c[:, :-k, k:] - c[:, k:, :-k] + c[:, :-k, :-k]
        m = s / (k * k)
        if batch_sensitive:
            m = m + 0.05 * np.tanh(a.mean())
        p1 = 1.0 / (1.0 + np.exp(-(m - threshold) * 8.0))
        return np.stack([1 - p1, p1], -1).astype(np.float32)
    return fwd


# --- headless QGIS 3.22 (tests/in_qgis): one QgsApplication per session (QGIS allows
# one), Processing initialised, the geoseg plugin loaded from the checkout.

REPO = Path(__file__).resolve().parents[1]
PLUGIN_DIR = REPO / "qgis_plugin"
GEOSEG_EXE = REPO / ".venv" / "bin" / "geoseg"
QGIS_PLUGINS = "/usr/share/qgis/python/plugins"


@pytest.fixture(scope="session")
def qgis_app():
    qgis_core = pytest.importorskip("qgis.core")
    os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
    app = qgis_core.QgsApplication([], False)
    app.initQgis()
    yield app
    # exitQgis() is left to process exit: it can crash after TensorFlow was loaded


@pytest.fixture(scope="session")
def qgis_processing(qgis_app):
    if QGIS_PLUGINS not in sys.path:
        sys.path.append(QGIS_PLUGINS)
    from processing.core.Processing import Processing  # noqa: PLC0415
    Processing.initialize()
    import processing  # noqa: PLC0415
    return processing


@pytest.fixture(scope="session")
def geoseg_plugin(qgis_processing):
    """The plugin as QGIS loads it (classFactory, initProcessing), from the checkout."""
    if str(PLUGIN_DIR) not in sys.path:
        sys.path.insert(0, str(PLUGIN_DIR))
    import geoseg_qgis  # noqa: PLC0415
    plugin = geoseg_qgis.classFactory(None)
    plugin.initProcessing()
    yield plugin
    plugin.unload()


@pytest.fixture
def geoseg_exe(monkeypatch):
    """geoseg found through the environment variable (the checkout's .venv)."""
    monkeypatch.setenv("GEOSEG_EXECUTABLE", str(GEOSEG_EXE))
    return GEOSEG_EXE
