"""How the forward pass runs (issue 14 item 4): Keras, or OpenVINO in float32 or
bfloat16; what ``auto`` picks on this machine, the classes each gives, and the one-line
errors when a choice is not available."""

import shutil
import threading

import numpy as np
import pytest
import rasterio

import geoseg.model as gm
from geoseg.demo import MODEL, SCENE
from geoseg.errors import ConfigError
from geoseg.model import ModelRef, load_forward, load_model, make_forward, resolve_runtime
from geoseg.predict import PredictOptions, predict_raster
from geoseg_cli.main import cli

HAS_OV = gm._openvino() is not None
needs_ov = pytest.mark.skipif(not HAS_OV, reason="OpenVINO is not installed")


def test_auto_picks_openvino_and_bfloat16_where_this_machine_has_them(monkeypatch):
    runtime, precision = resolve_runtime()
    assert runtime == ("openvino" if HAS_OV else "keras")
    assert precision == ("bfloat16" if HAS_OV and gm._cpu_has_bf16(gm._openvino()) else "float32")
    monkeypatch.setattr(gm, "_cpu_has_bf16", lambda ov: False)
    assert resolve_runtime("auto", "auto") == (runtime, "float32")
    assert resolve_runtime("keras", "auto") == ("keras", "float32")
    monkeypatch.setattr(gm, "_openvino", lambda: None)
    assert resolve_runtime() == ("keras", "float32")


@pytest.mark.parametrize("runtime,precision,pattern", [
    ("openvino", "auto", "OpenVINO runtime is not installed"),
    ("keras", "bfloat16", "bfloat16 precision runs on the OpenVINO runtime only"),
    ("auto", "bfloat16", "pip install openvino"),
    ("tpu", "auto", "runtime must be one of auto, openvino, keras"),
    ("auto", "float16", "precision must be one of auto, float32, bfloat16"),
])
def test_impossible_choices_are_one_line_config_errors(monkeypatch, runtime, precision, pattern):
    monkeypatch.setattr(gm, "_openvino", lambda: None)
    with pytest.raises(ConfigError, match=pattern) as e:
        resolve_runtime(runtime, precision)
    assert "\n" not in str(e.value)
    if runtime in ("tpu",) or precision in ("float16",):
        with pytest.raises(ConfigError, match=pattern):
            PredictOptions(runtime=runtime, precision=precision)


@needs_ov
def test_bfloat16_on_a_cpu_without_it_is_refused_not_emulated(monkeypatch):
    monkeypatch.setattr(gm, "_cpu_has_bf16", lambda ov: False)
    with pytest.raises(ConfigError, match="no native bfloat16"):
        resolve_runtime("openvino", "bfloat16")
    with pytest.raises(ConfigError, match="no native bfloat16"):
        ModelRef.of(MODEL, "none", "auto", "bfloat16")


@needs_ov
def test_openvino_float32_gives_keras_classes_and_tags_say_how_it_ran(tiny_bundle, rgb_byte, tmp_path):
    outs = {}
    for runtime in ("keras", "openvino"):
        out = tmp_path / f"{runtime}.tif"
        predict_raster(rgb_byte, out, tiny_bundle, PredictOptions(runtime=runtime, precision="float32",
                                                                 confidence=True),
                       confidence_path=tmp_path / f"{runtime}_conf.tif")
        with rasterio.open(out) as o, rasterio.open(tmp_path / f"{runtime}_conf.tif") as c:
            outs[runtime] = o.read(1), c.read(1)
            assert o.tags()["GEOSEG_RUNTIME"] == f"{runtime} float32"
    (kc, kconf), (oc, oconf) = outs["keras"], outs["openvino"]
    assert len(np.unique(kc)) > 1  # the fixture model predicts both classes
    assert np.array_equal(kc, oc)
    assert np.abs(kconf.astype(int) - oconf.astype(int)).max() <= 1  # probabilities within rounding


@needs_ov
def test_openvino_forward_matches_keras_per_window_and_across_threads(tiny_bundle):
    lm = load_model(tiny_bundle)
    rng = np.random.default_rng(1)
    x = rng.normal(size=(3, 64, 96, 3)).astype(np.float32)
    k = make_forward(lm.keras_model, 3, runtime="keras")(x)
    ov = make_forward(lm.keras_model, 3, runtime="openvino", precision="float32")
    y = ov(x)
    assert y.shape == k.shape and y.dtype == np.float32 and np.abs(y - k).max() < 1e-4
    assert np.array_equal(ov(x[1:2]), y[1:2])  # a window's result does not depend on its batch
    assert ov(np.asfortranarray(x)).shape == k.shape  # any memory layout
    # threads (dask's threaded scheduler) each get their own infer request: same results
    res: dict[int, np.ndarray] = {}

    def go(i):
        for _ in range(5):
            res[i] = ov(x)
    ts = [threading.Thread(target=go, args=(i,)) for i in range(4)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    assert all(np.array_equal(r, y) for r in res.values())


@needs_ov
def test_shipped_model_in_bfloat16_keeps_its_classes_and_areas(tmp_path):
    """The shipped model on its scene: bfloat16's classes equal Keras float32's on
    >= 99.9 % of pixels and the water area moves by < 0.5 %; float32 on OpenVINO is
    Keras's classes exactly."""
    if not gm._cpu_has_bf16(gm._openvino()):
        pytest.skip("this CPU has no native bfloat16")
    scene = tmp_path / "scene.tif"
    shutil.copy(SCENE, scene)
    got = {}
    for runtime, precision in (("keras", "float32"), ("openvino", "float32"), ("openvino", "bfloat16")):
        out = tmp_path / f"{runtime}-{precision}.tif"
        r = predict_raster(scene, out, MODEL, PredictOptions(runtime=runtime, precision=precision))
        with rasterio.open(out) as o:
            got[precision if runtime == "openvino" else "keras"] = o.read(1), r.counts.get(1, 0)
    (k, kw), (f, fw), (b, bw) = got["keras"], got["float32"], got["bfloat16"]
    assert np.array_equal(k, f)
    agree = np.mean(k == b)
    assert 0.999 <= agree < 1.0, agree  # bfloat16 really ran (some pixel differs) and stays close
    assert abs(bw - kw) / kw < 0.005


@needs_ov
def test_a_model_reference_carries_what_the_client_resolved(tiny_bundle, monkeypatch):
    ref = ModelRef.of(tiny_bundle, "none", "openvino", "float32")
    assert (ref.runtime, ref.precision) == ("openvino", "float32")
    # a worker that loads the reference runs what it says, whatever its own default
    monkeypatch.setattr(gm, "_cpu_has_bf16", lambda ov: False)
    assert load_forward(ref)(np.zeros((1, 32, 32, 3), np.float32)).shape == (1, 32, 32, 2)
    # and refuses what its CPU cannot do rather than run something else than the client planned
    bf = ModelRef(ref.path, ref.sha256, "none", "openvino", "bfloat16")
    with pytest.raises(ConfigError, match="no native bfloat16"):
        load_forward(bf)
    with pytest.raises(ConfigError, match="runs runtime 'openvino' but the options ask for 'keras'"):
        predict_raster(np.zeros((3, 32, 32), np.uint8), "unused.tif", ref, PredictOptions(runtime="keras"))


def test_cli_choices_and_errors(runner, tiny_bundle, rgb_byte, tmp_path, monkeypatch):
    out = tmp_path / "k.tif"
    res = runner.invoke(cli, ["predict", str(tiny_bundle), str(rgb_byte), str(out), "--runtime", "keras"])
    assert res.exit_code == 0, res.output
    with rasterio.open(out) as o:
        assert o.tags()["GEOSEG_RUNTIME"] == "keras float32"
    bad = tmp_path / "b.tif"
    res = runner.invoke(cli, ["predict", str(tiny_bundle), str(rgb_byte), str(bad), "--runtime", "keras",
                              "--precision", "bfloat16"])
    assert res.exit_code == 1 and "Traceback" not in res.output
    assert res.output.strip().splitlines()[-1] == ("Error: bfloat16 precision runs on the OpenVINO runtime only "
                                                   "(see --precision)")
    assert not bad.exists() and not bad.with_suffix(".qml").exists()
    monkeypatch.setattr(gm, "_openvino", lambda: None)
    res = runner.invoke(cli, ["predict", str(tiny_bundle), str(rgb_byte), str(bad), "--runtime", "openvino"])
    assert res.exit_code == 1 and "OpenVINO runtime is not installed" in res.output.strip().splitlines()[-1]
    assert not bad.exists()
    res = runner.invoke(cli, ["evaluate", str(out), str(out), "--precision", "float32"])
    assert res.exit_code == 2 and "give --model" in res.output


CACHE_CHILD = r"""
import json, sys
import numpy as np
import geoseg.model as gm
f = gm.load_forward(gm.ModelRef.of(sys.argv[1], "none", "openvino", "float32"))
x = np.random.default_rng(0).normal(size=(2, 64, 96, 6)).astype(np.float32)
np.save(sys.argv[2], f(x))
print(json.dumps({"tensorflow": "tensorflow" in sys.modules, "keras": "keras" in sys.modules}))
"""


@needs_ov
def test_the_converted_model_is_cached_and_the_next_process_skips_tensorflow(tmp_path):
    import json
    import os
    import subprocess
    import sys
    cache = tmp_path / "cache"

    def child(name, cache_dir=cache):
        env = {**os.environ, "GEOSEG_CACHE_DIR": str(cache_dir)}
        r = subprocess.run([sys.executable, "-c", CACHE_CHILD, str(MODEL), str(tmp_path / name)], env=env,
                           capture_output=True, text=True, timeout=300)
        assert r.returncode == 0, r.stderr[-3000:]
        return json.loads(r.stdout.strip().splitlines()[-1]), np.load(tmp_path / f"{name}.npy")

    first, y1 = child("a")
    assert first == {"tensorflow": True, "keras": True}  # converted from the Keras model
    xml = list((cache / "openvino").glob("*.xml"))
    assert [p.name.split("-")[0] for p in xml] == [gm.file_sha256(MODEL)]
    assert xml[0].with_suffix(".bin").stat().st_size > 4 * 100_000  # float32 weights (122 k parameters)
    assert not [p for p in (cache / "openvino").iterdir() if p.name.startswith(".")]  # no temporaries
    second, y2 = child("b")
    assert second == {"tensorflow": False, "keras": False}  # from the cache: no TensorFlow at all
    assert np.array_equal(y1, y2)
    # a damaged entry is converted again and replaced, with the same result
    xml[0].write_text("<net>garbage")
    third, y3 = child("c")
    assert third["tensorflow"] and np.array_equal(y1, y3)
    assert child("d")[0] == {"tensorflow": False, "keras": False}
    # off: nothing kept
    off, y5 = child("e", cache_dir="off")
    assert off["tensorflow"] and np.array_equal(y1, y5)
    assert not (tmp_path / "off").exists() and not list(tmp_path.glob("**/off"))
