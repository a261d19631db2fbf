"""geoseg on Keras' JAX backend in an environment with no TensorFlow at all (as on a GPU
host with JAX only): train -> bundle -> predict -> evaluate, and the bundle gives the
same classes under TensorFlow.

The JAX environment is ``.venv-jax`` (``bash scripts/bootstrap.sh --test`` makes it);
the test is skipped, saying so, where it is missing.
"""

import json
import os
import subprocess
from pathlib import Path

import numpy as np
import pytest
import rasterio

from conftest import water_config
from geoseg.dataset import TileOptions, tile_rasters
from geoseg.demo import SCENE, TRUTH

ROOT = Path(__file__).resolve().parent.parent
JAX_PY = ROOT / ".venv-jax" / "bin" / "python"

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(not JAX_PY.exists(), reason="no .venv-jax: run bash scripts/bootstrap.sh --test")]

CONFIG = water_config("""epochs = 2
steps_per_epoch = 4
batch_size = 4
model_dir = "{d}/model"
bands = ["B2", "B3", "B4", "B8", "B11", "B12"]
class_names = ["non-water", "water"]
epoch_change_infer = true
epoch_change_infer_dir = "{d}/epochs"
""")


def geoseg_jax(*args):
    env = {k: v for k, v in os.environ.items() if k not in ("KERAS_BACKEND", "PYTHONPATH")}
    return subprocess.run([str(JAX_PY), "-m", "geoseg_cli.main", *map(str, args)], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=600)


def test_jax_only_environment_trains_predicts_and_evaluates(tmp_path):
    probe = subprocess.run([str(JAX_PY), "-c", "import importlib.util as u; "
                            "print(u.find_spec('tensorflow') is None, u.find_spec('jax') is not None)"],
                           capture_output=True, text=True)
    assert probe.stdout.split() == ["True", "True"], probe.stdout + probe.stderr  # JAX, and no TensorFlow
    tile_rasters([(SCENE, TRUTH)], tmp_path / "chips", TileOptions(chip=64, regions=3, seed=3), label_nodata=None)
    cfg = tmp_path / "water.toml"
    cfg.write_text(CONFIG.format(d=tmp_path))
    res = geoseg_jax("train", cfg)
    assert res.returncode == 0, res.stderr[-3000:]
    bundle = tmp_path / "model" / "model.geoseg"
    meta = json.loads(geoseg_jax("info", "--json", bundle).stdout)
    assert meta["provenance"]["backend"] == "jax"
    assert len(list((tmp_path / "epochs").iterdir())) == 2  # the tiled-inference previews ran on JAX
    # predict (with test-time augmentation) and evaluate on JAX
    out_jax = tmp_path / "jax.tif"
    res = geoseg_jax("predict", bundle, SCENE, out_jax, "--tta", "flip", "--areas")
    assert res.returncode == 0, res.stderr[-3000:]
    with rasterio.open(out_jax) as o:
        assert o.tags()["GEOSEG_RUNTIME"] == "keras float32"  # auto: Keras on JAX
    res = geoseg_jax("predict", bundle, SCENE, tmp_path / "ov.tif", "--runtime", "openvino")
    assert res.returncode == 1 and "Traceback" not in res.stderr, res.stderr[-3000:]
    assert "OpenVINO" in res.stderr.strip().splitlines()[-1] and not (tmp_path / "ov.tif").exists()
    res = geoseg_jax("evaluate", "--model", bundle, tmp_path / "chips/test/images", tmp_path / "chips/test/masks")
    assert res.returncode == 0, res.stderr[-3000:]
    assert 0 <= json.loads(res.stdout)["overall_accuracy"] <= 1
    # the bundle made on JAX segments the same under TensorFlow (this process)
    from geoseg.predict import PredictOptions, predict_raster
    out_tf = tmp_path / "tf.tif"
    predict_raster(SCENE, out_tf, bundle, PredictOptions(tta="flip", runtime="keras"))
    with rasterio.open(out_jax) as a, rasterio.open(out_tf) as b:
        ja, tb = a.read(1), b.read(1)
    assert ja.shape == tb.shape and np.mean(ja == tb) > 0.999
