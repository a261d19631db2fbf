"""The training workflow: a tiny real run, losses and metrics, bad configs."""

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import rasterio
from click.testing import CliRunner

from geoseg.chips import MaskRule, list_chips, read_chip
from geoseg.config import load_config
from geoseg.dataset import TileOptions, tile_rasters
from geoseg.demo import SCENE, TRUTH
from geoseg.errors import Cancelled, ConfigError, OutputExistsError
from geoseg_cli.main import cli

from conftest import water_config

ROOT = Path(__file__).resolve().parents[1]

CONFIG = water_config("""epochs = 2
batch_size = 8
model_dir = "{d}/model"
bands = ["B2", "B3", "B4", "B8", "B11", "B12"]
class_names = ["non-water", "water"]
class_colors = ["#000000", "#00FFFF"]
epoch_change_infer = true
epoch_change_infer_dir = "{d}/epochs"
num_infer_images = 1
""", """
[tiledinfer]
overlapping = 8
images_dir = "{d}/infer_in"
output_dir = "{d}/infer_out"
""")


@pytest.fixture(scope="module")
def chips(tmp_path_factory):
    d = tmp_path_factory.mktemp("train")
    tile_rasters([(SCENE, TRUTH)], d / "chips", TileOptions(chip=64, regions=3, seed=3), label_nodata=None)
    import shutil
    (d / "infer_in").mkdir()
    first = sorted((d / "chips" / "test" / "images").iterdir())[0]
    shutil.copy(first, d / "infer_in" / "scene_part.tif")
    return d


@pytest.fixture(scope="module")
def trained(chips):
    """The tiny training run through the CLI, once per module (tests using its bundle do
    not depend on test order)."""
    cfg_path = chips / "water.toml"
    cfg_path.write_text(CONFIG.format(d=chips))
    res = CliRunner().invoke(cli, ["train", str(cfg_path)], catch_exceptions=False)
    assert res.exit_code == 0, res.output
    return chips


def test_tiny_training_run_gives_a_bundle_predict_loads(trained, tmp_path):
    chips = trained
    cfg_path = chips / "water.toml"
    r = CliRunner()
    model_dir = chips / "model"
    for name in ("model.geoseg", "best.keras", "history.csv", "training_curves.png", "config.toml"):
        assert (model_dir / name).exists(), name
    assert len((model_dir / "history.csv").read_text().splitlines()) == 3  # header + 2 epochs
    # [tiledinfer] images were segmented with the new model after training
    assert sorted(p.name for p in (chips / "infer_out").iterdir()) == [
        "scene_part_classes.qml", "scene_part_classes.tif", "scene_part_classes.tif.aux.xml",
        "scene_part_classes_areas.csv", "scene_part_classes_preview.png"]
    previews = sorted(p.name for p in (chips / "epochs").iterdir())
    assert len(previews) == 2 and previews[0].startswith("epoch001_") and previews[1].startswith("epoch002_")
    info = r.invoke(cli, ["info", "--json", str(model_dir / "model.geoseg")])
    meta = json.loads(info.stdout)
    assert meta["input"]["bands"] == ["B2", "B3", "B4", "B8", "B11", "B12"] and meta["input"]["scale"][0] == 1e-4
    assert meta["tile_multiple"] == 4 and "mean_iou_excluding_background" in meta["metrics"]["validation"]
    out = tmp_path / "pred.tif"
    res = r.invoke(cli, ["predict", str(model_dir / "model.geoseg"), str(SCENE), str(out)])
    assert res.exit_code == 0, res.output
    with rasterio.open(out) as o:
        assert o.shape == (545, 625)
    # a second run refuses to overwrite the bundle
    res = r.invoke(cli, ["train", str(cfg_path)])
    assert res.exit_code == 1 and "exists" in res.output


KERAS_PIPELINE = water_config("""epochs = 2
steps_per_epoch = 3
batch_size = 4
input_pipeline = "keras"
model_dir = "{d}/model_keras"
""")


def test_training_with_the_keras_pipeline(chips):
    """input_pipeline = "keras" (the PyDataset reader threads that backends without
    TensorFlow use) trains the same way: a bundle with validation metrics that loads."""
    from geoseg.model import load_model
    cfg_path = chips / "keras_pipeline.toml"
    cfg_path.write_text(KERAS_PIPELINE.format(d=chips))
    res = CliRunner().invoke(cli, ["train", str(cfg_path)], catch_exceptions=False)
    assert res.exit_code == 0, res.output
    assert len((chips / "model_keras" / "history.csv").read_text().splitlines()) == 3
    lm = load_model(chips / "model_keras" / "model.geoseg")
    v = lm.meta.metrics["validation"]
    assert 0 <= v["overall_accuracy"] <= 1 and set(v["per_class_iou"]) == {"class_0", "class_1"}
    assert lm.meta.provenance["train_chips"] > 0


CANCEL = water_config("""epochs = 3
steps_per_epoch = 4
batch_size = 4
model_dir = "{run}"
""")


def test_cancelled_training_stops_at_a_batch_and_leaves_nothing(chips, tmp_path):
    """progress counts batches (epochs x steps); a cancel seen after the first batch
    stops fit there with Cancelled: no bundle, and the model_dir the run made is gone."""
    from geoseg.train import train
    p = tmp_path / "cancel.toml"
    run = tmp_path / "new" / "run"
    p.write_text(CANCEL.format(d=chips, run=run))
    calls = []
    with pytest.raises(Cancelled):
        train(load_config(p), verbose=0, progress=lambda done, total: calls.append((done, total)),
              is_cancelled=lambda: bool(calls))
    assert calls == [(1, 12)]
    assert not (tmp_path / "new").exists()  # the folders it made (mkdir -p) are gone
    # a model_dir that was there stays (with what it held), still without a bundle
    run.mkdir(parents=True)
    (run / "notes.txt").write_text("x")
    with pytest.raises(Cancelled):
        train(load_config(p), verbose=0, is_cancelled=lambda: True)
    assert sorted(q.name for q in run.iterdir()) == ["notes.txt"]  # cancelled before it started
    (run / "model.geoseg").write_text("an earlier model")
    with pytest.raises(OutputExistsError, match="model exists") as e:
        train(load_config(p), verbose=0)
    assert e.value.option == "overwrite" and "--" not in str(e.value)


def test_chip_statistics_are_numpys_mean_and_std(tmp_path, make_geotiff):
    """Per-band mean and std over all the chips' pixels, after offset and scale, as numpy
    computes them over the stacked chips (audit F17: a std without the mean subtracted,
    or per-chip stds averaged, fail here: band means are far from 0 and differ by chip)."""
    from geoseg.loader import chip_statistics
    rng = np.random.default_rng(7)
    (tmp_path / "i").mkdir()
    (tmp_path / "m").mkdir()
    xs, ys, pairs = [], [], []
    for k in range(5):
        x = rng.normal(3000 + 700 * k, 300, (2, 16, 12)) + np.array([0, 9000])[:, None, None]
        x = x.astype(np.uint16)
        y = rng.integers(0, 3, (16, 12)).astype(np.uint8)
        y[0, :5] = 255
        xs.append(x)
        ys.append(y)
        pairs.append((str(make_geotiff(x, name=f"i/{k}.tif")), str(make_geotiff(y, name=f"m/{k}.tif"))))
    st = chip_statistics(pairs, MaskRule.indexes(), 255, 3, scale=1e-4, offset=10.0)
    ref = (np.stack(xs).astype(np.float64) + 10.0) * 1e-4
    np.testing.assert_allclose(st.mean, ref.mean(axis=(0, 2, 3)), rtol=1e-12)
    np.testing.assert_allclose(st.std, ref.std(axis=(0, 2, 3)), rtol=1e-9)
    assert st.class_pixels.tolist() == [int((np.stack(ys) == c).sum()) for c in range(3)]
    assert (st.n_bands, st.dtype) == (2, "uint16")


def test_confusion_metric_matches_numpy():
    from geoseg.evaluate import confusion_matrix
    from geoseg.losses import make_confusion_metric
    rng = np.random.default_rng(0)
    y = rng.integers(0, 3, (2, 8, 8)).astype(np.int32)
    y[0, 0, :4] = 255
    logits = rng.random((2, 8, 8, 3)).astype(np.float32)
    m = make_confusion_metric(3, 255, background=0)
    m.update_state(y, logits)
    expect = confusion_matrix(y, logits.argmax(-1), [0, 1, 2])
    assert (m.matrix() == expect).all()
    from geoseg.evaluate import scores_from_confusion
    assert float(m.result()) == pytest.approx(scores_from_confusion(expect, [0, 1, 2], background=0).mean_iou,
                                              rel=1e-5)


def test_losses_ignore_pixels_and_match_hand_values():
    from geoseg.losses import make_loss
    y = np.array([[[0, 1], [255, 1]]], np.int32)
    p = np.array([[[[0.8, 0.2], [0.4, 0.6]], [[0.5, 0.5], [0.1, 0.9]]]], np.float32)
    ce = float(make_loss("categorical_crossentropy", 2, 255)(y, p))
    assert ce == pytest.approx(-(np.log(0.8) + np.log(0.6) + np.log(0.9)) / 3, rel=1e-5)
    # dice per class over valid pixels, smoothed by 1
    d0 = (2 * 0.8 + 1) / ((0.8 + 0.4 + 0.1) + 1 + 1)
    d1 = (2 * (0.6 + 0.9) + 1) / ((0.2 + 0.6 + 0.9) + 2 + 1)
    assert float(make_loss("dice", 2, 255)(y, p)) == pytest.approx(1 - (d0 + d1) / 2, rel=1e-5)
    w = float(make_loss("categorical_crossentropy", 2, 255, class_weights=(1.0, 3.0))(y, p))
    assert w == pytest.approx(-(np.log(0.8) + 3 * np.log(0.6) + 3 * np.log(0.9)) / 7, rel=1e-5)
    focal = float(make_loss("focal", 2, 255)(y, p))
    assert focal < ce
    with pytest.raises(ConfigError, match="model.loss must be one of"):
        make_loss("bce_iou_loss", 2, 255)


@pytest.mark.parametrize("edit,match", [
    (lambda c, d: c.replace(f'"{d}/chips/train/images"', f'"{d}/nope"'), "image folder not found"),
    (lambda c, d: c.replace("num_classes = 2", "num_classes = 1").replace('class_names = ["non-water", "water"]', "")
     .replace('class_colors = ["#000000", "#00FFFF"]', ""), "holds class 1 but model.num_classes is 1"),
    (lambda c, d: c.replace("image_channels = 6", "image_channels = 3"), "6 bands but model.image_channels is 3"),
    (lambda c, d: c.replace('class_names = ["non-water", "water"]', 'class_names = ["a"]'), "class_names has 1"),
])
def test_bad_training_configs(chips, edit, match):
    p = chips / "bad.toml"
    p.write_text(edit(CONFIG.format(d=chips), chips).replace("/model", "/model_bad"))
    with pytest.raises(ConfigError, match=match):
        from geoseg.train import train
        train(load_config(p), verbose=0)


def test_evaluate_test_chips_equals_manual(trained):
    from geoseg.evaluate import confusion_matrix, evaluate_chips
    from geoseg.unit import PredictOptions
    from geoseg.model import load_model
    chips = trained
    lm = load_model(chips / "model" / "model.geoseg")
    # the manual reference below runs Keras in float32: so does evaluate here
    s = evaluate_chips(lm, chips / "chips" / "test" / "images", chips / "chips" / "test" / "masks",
                       options=PredictOptions(runtime="keras", precision="float32"))
    spec = lm.meta.input
    conf = np.zeros((2, 2), np.int64)
    for ip, mp in list_chips(chips / "chips" / "test" / "images", chips / "chips" / "test" / "masks"):
        with rasterio.open(ip) as a, rasterio.open(mp) as b:
            x = ((a.read().astype(np.float64) + np.array(spec.offset)[:, None, None]) * np.array(spec.scale)[:, None, None]
                 - np.array(spec.mean)[:, None, None]) / np.array(spec.std)[:, None, None]
            y = b.read(1)
        p = np.asarray(lm.keras_model(np.moveaxis(x, 0, -1)[None].astype(np.float32)))[0].argmax(-1)
        conf += confusion_matrix(y, p, [0, 1], y != 255)
    assert (s.confusion == conf).all()


def test_binarized_grey_masks(tmp_path, make_geotiff):
    img = make_geotiff(np.ones((3, 4, 4), np.uint8), name="i.tif")
    grey = np.array([[0, 127, 128, 255]] * 4, np.uint8)
    msk = make_geotiff(grey, name="m.tif")
    _, y = read_chip(str(img), str(msk), MaskRule.binarize(128, False), 255)
    assert y.tolist()[0] == [0, 0, 1, 1]
    # grayscaling: an RGB mask is made grey (0.299 R + 0.587 G + 0.114 B) before the threshold
    rgb = np.zeros((3, 1, 3), np.uint8)
    rgb[:, 0, 0] = (255, 0, 0)      # grey 76: below
    rgb[:, 0, 1] = (0, 255, 0)      # grey 150: above
    rgb[:, 0, 2] = (200, 100, 50)   # grey 124.2: below
    msk3 = make_geotiff(rgb, name="m3.tif")
    img3 = make_geotiff(np.ones((3, 1, 3), np.uint8), name="i3.tif")
    _, y3 = read_chip(str(img3), str(msk3), MaskRule.binarize(128, True), 255)
    assert y3.tolist() == [[0, 1, 0]]
    _, y4 = read_chip(str(img3), str(msk3), MaskRule.binarize(128, False), 255)
    assert y4.tolist() == [[1, 0, 1]]  # without grayscaling: the first band (red) is the grey level


@pytest.mark.parametrize("text,match", [
    ("[train]\nmetrics = [\"dice_coef\", \"val_dice_coef\"]\n", "train.metrics"),
    ("[model]\nmetrics = [\"accuracy\"]\n", "model.metrics"),
    ("[mask]\nblur = true\n", "unknown key 'mask.blur'"),
    ("[mask]\nbinarize = true\nrgb_map = {\"#000000\" = 0}\n", "exclude each other"),
])
def test_keys_geoseg_cannot_honour_are_refused(tmp_path, text, match):
    p = tmp_path / "c.toml"
    p.write_text(text)
    with pytest.raises(ConfigError, match=match):
        load_config(p)
    ok = tmp_path / "ok.toml"
    ok.write_text("[train]\nmetrics = [\"iou_coef\", \"val_loss\"]\n")
    assert load_config(ok).train.metrics == ("iou_coef", "val_loss")


def test_colour_masks_read_through_the_rgb_map(tmp_path, make_geotiff):
    img = make_geotiff(np.ones((3, 2, 2), np.uint8), name="i.tif")
    rgb = np.zeros((3, 2, 2), np.uint8)
    rgb[:, 0, 0] = (226, 169, 41)
    msk = make_geotiff(rgb, name="m.tif")
    rule = MaskRule.colours({(0, 0, 0): 0, (226, 169, 41): 4})
    _, y = read_chip(str(img), str(msk), rule, 255)
    assert y.tolist() == [[4, 0], [0, 0]]
    cls = make_geotiff(np.array([[1, 2], [3, 255]], np.uint8), name="c.tif")
    _, y = read_chip(str(img), str(cls), rule, 255)  # class-index masks (geoseg tile) pass through
    assert y.tolist() == [[1, 2], [3, 255]]


def test_interrupted_training_resumes_where_it_stopped(chips, monkeypatch):
    """A run killed after epoch 1 of 3 resumes at epoch 2 from model_dir/backup:
    one history row per epoch, no epoch run twice, and the bundle is written."""
    import geoseg.train as tr
    from geoseg.model import keras_module
    text = CONFIG.format(d=chips).replace("/model", "/model_resume").replace("epochs = 2", "epochs = 3")
    text = text.replace("epoch_change_infer = true", "epoch_change_infer = false")
    text = text.replace('images_dir = "', 'images_dir = "" #')
    p = chips / "resume.toml"
    p.write_text(text)
    real = tr.curves_callback
    keras = keras_module()

    def crashing(path, csv_path=None):
        class Crash(keras.callbacks.Callback):
            def on_epoch_end(self, epoch, logs=None):
                if epoch == 0:
                    raise RuntimeError("simulated crash")
        return Crash()

    monkeypatch.setattr(tr, "curves_callback", crashing)
    with pytest.raises(RuntimeError, match="simulated crash"):
        tr.train(load_config(p), verbose=0)
    model_dir = chips / "model_resume"
    assert (model_dir / "backup").is_dir() and not (model_dir / "model.geoseg").exists()
    assert len((model_dir / "history.csv").read_text().splitlines()) == 2  # header + epoch 1

    seen = []

    def recording(path, csv_path=None):
        cb = real(path, csv_path)
        orig = cb.on_epoch_end

        def on_epoch_end(epoch, logs=None):
            seen.append(epoch)
            orig(epoch, logs)
        cb.on_epoch_end = on_epoch_end
        return cb

    monkeypatch.setattr(tr, "curves_callback", recording)
    res = tr.train(load_config(p), verbose=0)
    assert seen == [1, 2]  # epochs 2 and 3 only
    rows = (model_dir / "history.csv").read_text().splitlines()
    assert [r.split(",")[0] for r in rows[1:]] == ["0", "1", "2"]
    assert (model_dir / "model.geoseg").exists() and not (model_dir / "backup").exists()
    assert res.val_scores.mean_iou is not None and len(res.history["loss"]) == 2  # this run: 2 epochs
    from geoseg.bundle import read_metadata
    assert read_metadata(model_dir / "model.geoseg").provenance["epochs_run"] == 3


@pytest.mark.parametrize("pipeline", ["tf.data", "keras"])
@pytest.mark.parametrize("hw", [(16, 16), (12, 20)])
def test_augmentation_moves_image_and_mask_together(tmp_path, make_geotiff, hw, pipeline):
    """Flips/rotations are the same on image and mask; brightness/contrast touch the image
    only (so per chip the image stays an increasing affine function of the mask).
    Both input pipelines (tf.data, and Keras' PyDataset for backends without TensorFlow)."""
    if pipeline == "tf.data":
        pytest.importorskip("tensorflow")
    from geoseg.loader import iter_batches, make_dataset
    from geoseg.model import keras_module
    keras_module()
    h, w = hw
    mask = np.random.default_rng(3).integers(0, 4, (h, w)).astype(np.uint8)  # no symmetry
    (tmp_path / "i").mkdir()
    (tmp_path / "m").mkdir()
    pairs = []
    for k in range(4):
        pairs.append((str(make_geotiff(np.stack([mask * 50 + 10, mask * 20]).astype(np.uint16), name=f"i/{k}.tif")),
                      str(make_geotiff(mask, name=f"m/{k}.tif"))))
    gain, bias = np.array([0.02, 0.05], np.float32), np.array([-1.0, 0.0], np.float32)
    ds = make_dataset(pairs, ignore=255, gain=gain, bias=bias, batch_size=4, shuffle=True,
                      augment=True, seed=0, chip_hw=hw, pipeline=pipeline)
    views = {np.rot90(mask, k).tobytes() for k in range(4)} | {np.rot90(mask.T, k).tobytes() for k in range(4)}
    seen = set()
    for _ in range(8):
        for x, y in iter_batches(ds):
            x, y = np.asarray(x), np.asarray(y)
            assert x.shape == (4, h, w, 2) and y.shape == (4, h, w) and y.dtype == np.int32
            for xi, yi in zip(x, y):
                seen.add(yi.astype(np.uint8).tobytes())
                assert yi.astype(np.uint8).tobytes() in views
                for band, (g, b) in enumerate(zip(gain, bias)):
                    base = (yi * (50 if band == 0 else 20) + (10 if band == 0 else 0)) * g + b
                    a, c = np.polyfit(base.ravel(), xi[..., band].ravel(), 1)
                    assert 0.84 < a < 1.16 and abs(c) < 0.21
                    np.testing.assert_allclose(xi[..., band], a * base + c, atol=1e-4)
    assert len(seen) == (8 if h == w else 4)  # every rotation/flip turns up
    # no augmentation: the chips come back as they are, normalised
    ds = make_dataset(pairs, ignore=255, gain=gain, bias=bias, batch_size=3, shuffle=False,
                      augment=False, seed=0, chip_hw=hw, pipeline=pipeline)
    batches = list(iter_batches(ds))
    assert [len(b[1]) for b in batches] == [3, 1]
    np.testing.assert_array_equal(np.asarray(batches[0][1][0]), mask)
    np.testing.assert_allclose(np.asarray(batches[0][0][0])[..., 0], (mask * 50 + 10) * 0.02 - 1.0, atol=1e-5)


def test_keras_pipeline_stream_passes_and_determinism(tmp_path, make_geotiff):
    """The PyDataset pipeline's endless stream: each pass through the chips is a
    permutation (every chip once, batches straddle passes), each pass another order,
    and the same seed gives the same batches (augmentation included) in any order."""
    from geoseg.loader import make_dataset
    from geoseg.model import keras_module
    keras_module()
    (tmp_path / "i").mkdir()
    (tmp_path / "m").mkdir()
    pairs = []
    for k in range(7):
        img = np.full((1, 8, 8), k, np.uint8)
        pairs.append((str(make_geotiff(img, name=f"i/{k}.tif")), str(make_geotiff(img[0], name=f"m/{k}.tif"))))
    kw = dict(rule=MaskRule.indexes(), ignore=255, gain=np.array([1.0], np.float32), bias=np.array([0.0], np.float32),
              batch_size=3, shuffle=True, seed=5, chip_hw=(8, 8), endless=True, pipeline="keras")
    ds = make_dataset(pairs, augment=False, **kw)
    assert ds.num_batches is None
    ids = np.concatenate([ds[g][1][:, 0, 0] for g in range(7)])   # 21 chips = 3 passes
    passes = ids.reshape(3, 7)
    for p in passes:
        assert sorted(p) == list(range(7))
    assert len({tuple(p) for p in passes}) == 3
    a = make_dataset(pairs, augment=True, **kw)
    b = make_dataset(pairs, augment=True, **kw)
    late = b[9]
    assert all(np.array_equal(a[g][0], (late if g == 9 else b[g])[0]) for g in (9, 2, 0))
    with pytest.raises(ConfigError, match="input_pipeline must be one of"):
        make_dataset(pairs, augment=False, **{**kw, "pipeline": "torch"})


def test_training_starts_from_a_trained_model(chips, tmp_path):
    """[model] init_weights: fine-tuning starts from the bundle's weights and keeps its input
    scaling; a new class count re-initialises only the head; another architecture is refused."""
    from dataclasses import replace

    from geoseg.bundle import InputSpec
    from geoseg.model import build_unet, load_model, save_model
    from geoseg.train import copy_weights, load_init_weights
    from tests.conftest import make_meta

    src = build_unet(2, 6, base_filters=4, num_layers=3, batch_norm=False)  # no moving statistics
    spec = InputSpec(("B2", "B3", "B4", "B8", "B11", "B12"), (0.0,) * 6, (1e-4,) * 6,
                     (0.05, 0.06, 0.07, 0.2, 0.15, 0.1), (0.02, 0.03, 0.04, 0.1, 0.08, 0.06))
    meta = replace(make_meta(n_bands=6, tile=64, multiple=4), input=spec)
    bundle = tmp_path / "start.geoseg"
    save_model(bundle, src, meta)

    net = build_unet(3, 6, base_filters=4, num_layers=3, batch_norm=False)  # other class count: new head
    copy_weights(load_init_weights(str(bundle)), net, "start.geoseg")
    for a, b in zip(src.layers[:-1], net.layers[:-1]):
        for wa, wb in zip(a.get_weights(), b.get_weights()):
            np.testing.assert_array_equal(wa, wb)
    with pytest.raises(ConfigError, match="not the same architecture"):
        copy_weights(load_init_weights(str(bundle)), build_unet(2, 6, base_filters=8, num_layers=3, batch_norm=False),
                      "start.geoseg")
    with pytest.raises(ConfigError, match="model.init_weights: file not found"):
        load_init_weights(str(tmp_path / "missing.geoseg"))

    text = CONFIG.format(d=chips).replace('model_dir = "{d}/model"'.format(d=chips), f'model_dir = "{tmp_path}/ft"')
    text = text.replace("learning_rate = 0.003", f'learning_rate = 1e-9\nbatch_norm = false\ninit_weights = "{bundle}"')
    # more steps than one pass through the chips: epochs must not be cut where a pass ends
    steps = len(list((chips / "chips" / "train" / "images").iterdir())) // 8 + 2
    text = text.replace("epochs = 2", f"epochs = 3\nsteps_per_epoch = {steps}\nvalidation_steps = 1")
    text = text.replace("epoch_change_infer = true", "epoch_change_infer = false").split("[tiledinfer]")[0]
    (tmp_path / "ft.toml").write_text(text)
    res = CliRunner().invoke(cli, ["train", str(tmp_path / "ft.toml")], catch_exceptions=False)
    assert res.exit_code == 0, res.output
    assert "ran out of data" not in res.output
    out = load_model(tmp_path / "ft" / "model.geoseg")
    assert out.meta.input.mean == spec.mean and out.meta.input.std == spec.std  # the start model's scaling
    assert out.meta.provenance["init_weights"] == str(bundle)
    # validation_steps: the same chips every epoch (learning rate 1e-9: the same scores)
    assert out.meta.provenance["valid_chips"] == 8
    hist = np.genfromtxt(tmp_path / "ft" / "history.csv", delimiter=",", names=True)
    np.testing.assert_allclose(hist["val_loss"], hist["val_loss"][0], rtol=1e-4)  # other chips: 1.7 %
    np.testing.assert_allclose(out.keras_model.layers[1].get_weights()[0], src.layers[1].get_weights()[0],
                               atol=1e-6)  # learning rate 1e-9: still the start weights


#: ``geoseg`` whose chip reads in the reader threads take 0.3 s (reads in flight when a
#: reader error ends the run)
SLOW_READERS = """
import threading, time
import geoseg.loader
from geoseg_cli.main import main
read = geoseg.loader.read_chip
def slow_read(*a, **k):
    if threading.current_thread() is not threading.main_thread():
        time.sleep(0.3)
    return read(*a, **k)
geoseg.loader.read_chip = slow_read
main()
"""


@pytest.mark.parametrize("pipeline", ["tf.data", "keras"])
def test_a_bad_chip_met_while_training_is_a_one_line_error(tmp_path, make_geotiff, pipeline):
    """A chip of another size (or an unreadable one) found by the reader threads mid-run:
    one line, exit 1 (the process ends: it used to hang at exit with tf.data), no bundle,
    no model folder left behind."""
    if pipeline == "tf.data":
        pytest.importorskip("tensorflow")
    for split in ("train", "valid"):
        for k in range(8):
            s = 48 if (split, k) == ("train", 5) else 32
            make_geotiff(np.ones((3, s, s), np.uint8), name=f"{split}_images_{k}.tif")
            make_geotiff(np.zeros((s, s), np.uint8), name=f"{split}_masks_{k}.tif")
        for sub in ("images", "masks"):
            (tmp_path / split / sub).mkdir(parents=True)
            for k in range(8):
                (tmp_path / f"{split}_{sub}_{k}.tif").rename(tmp_path / split / sub / f"{k}.tif")
    cfg = tmp_path / "c.toml"
    cfg.write_text(f"""[model]
image_width = 32
image_height = 32
num_classes = 2
base_filters = 4
num_layers = 3
[train]
epochs = 1
batch_size = 4
input_pipeline = "{pipeline}"
model_dir = "{tmp_path}/m"
image_datapath = "{tmp_path}/train/images"
mask_datapath = "{tmp_path}/train/masks"
[eval]
image_datapath = "{tmp_path}/valid/images"
mask_datapath = "{tmp_path}/valid/masks"
""")
    # in a process of its own: the tf.data iterator the failed fit left behind was freed
    # only at interpreter exit, where the reads in flight cannot take the GIL: it hung
    # there (when reads were in flight: slow ones make sure they are)
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    t0 = time.perf_counter()
    r = subprocess.run([sys.executable, "-c", SLOW_READERS, "-q", "train", str(cfg)], capture_output=True,
                       text=True, env=env, timeout=120)
    assert r.returncode == 1, (time.perf_counter() - t0, r.stderr)
    errors = [ln for ln in r.stderr.splitlines() if ln.startswith("Error")]
    assert errors == ["Error: chip 5.tif is 3 bands x 48 x 48 px (mask 48 x 48); expected 3 bands x 32 x 32"]
    assert "Traceback" not in r.stderr and "Traceback" not in r.stdout
    assert not (tmp_path / "m").exists()  # no bundle, and no empty model folder
    (tmp_path / "train" / "images" / "2.tif").write_text("not a tiff")
    res = CliRunner().invoke(cli, ["train", str(cfg)])
    assert res.exit_code == 1 and "Traceback" not in res.output
    assert res.output.strip().splitlines()[-1].startswith("Error: cannot read chip: ")
    assert not (tmp_path / "m").exists()


SEPARABLE = """[model]
image_width = 32
image_height = 32
image_channels = 1
num_classes = 2
base_filters = 4
num_layers = 2
loss = "categorical_crossentropy"
learning_rate = 0.01

[train]
epochs = 4
steps_per_epoch = 10
batch_size = 8
patience = 0
model_dir = "{d}/model"
image_datapath = "{d}/chips/train/images"
mask_datapath = "{d}/chips/train/masks"

[eval]
image_datapath = "{d}/chips/valid/images"
mask_datapath = "{d}/chips/valid/masks"
"""


def test_training_learns_a_trivially_separable_set(tmp_path, make_geotiff):
    """Class 1 exactly where the one band is bright: a few dozen steps must learn it
    (validation IoU of class 1 > 0.9), and the recorded scaling equals numpy's
    statistics of the training chips."""
    from geoseg.model import load_model
    from geoseg.train import train
    rng = np.random.default_rng(0)
    label = (rng.random((24, 24)) > 0.5).repeat(8, 0).repeat(8, 1).astype(np.uint8)  # 192 x 192 blobs
    image = (label * 120 + 60 + rng.integers(0, 20, label.shape)).astype(np.uint8)
    img = make_geotiff(image, name="img.tif")
    lab = make_geotiff(label, name="lab.tif")
    tile_rasters([(img, lab)], tmp_path / "chips", TileOptions(chip=32, regions=3, seed=1), label_nodata=None)
    cfg = tmp_path / "sep.toml"
    cfg.write_text(SEPARABLE.format(d=tmp_path))
    res = train(load_config(cfg), verbose=0)
    assert res.val_scores.iou[1] > 0.9, res.val_scores.iou
    meta = load_model(res.bundle).meta
    chips = [read_chip(i, m, MaskRule.indexes(), 255)[0] for i, m in
             list_chips(tmp_path / "chips" / "train" / "images", tmp_path / "chips" / "train" / "masks")]
    x = np.stack(chips).astype(np.float64) * meta.input.scale[0]  # 8-bit chips: scale 1/255
    assert meta.input.scale[0] == pytest.approx(1 / 255)
    assert meta.input.mean[0] == pytest.approx(x.mean(), rel=1e-9)
    assert meta.input.std[0] == pytest.approx(x.std(), rel=1e-6)


def test_config_keys_reach_training(chips, tmp_path, monkeypatch):
    """The keys the README says are used reach Keras: early stopping and LR reducer
    patience/factor, the monitored metric (the last of train.metrics), clipvalue and the
    epochs (checked on what train hands to fit, which is stopped there)."""
    from geoseg.model import keras_module
    from geoseg.train import train
    keras = keras_module()
    seen = {}

    class Stop(Exception):
        pass

    def fake_fit(self, *args, **kwargs):
        seen["kwargs"] = kwargs
        seen["clip"] = self.optimizer.clipvalue
        raise Stop

    monkeypatch.setattr(keras.Model, "fit", fake_fit)
    p = tmp_path / "keys.toml"
    p.write_text(water_config("""epochs = 7
patience = 3
reducer_factor = 0.3
reducer_patience = 2
metrics = ["iou", "val_loss"]
model_dir = "{d}/keys_model"
""").format(d=chips).replace("learning_rate = 0.003", "learning_rate = 0.003\nclipvalue = 0.5"))
    with pytest.raises(Stop):
        train(load_config(p), verbose=0)
    cbs = {type(c).__name__: c for c in seen["kwargs"]["callbacks"]}
    assert seen["kwargs"]["epochs"] == 7 and seen["clip"] == 0.5
    assert cbs["EarlyStopping"].patience == 3 and cbs["EarlyStopping"].monitor == "val_loss"
    assert cbs["ReduceLROnPlateau"].factor == 0.3 and cbs["ReduceLROnPlateau"].patience == 2
    assert cbs["ReduceLROnPlateau"].monitor == "val_loss"


SIGMOID = water_config("""epochs = 2
steps_per_epoch = 3
batch_size = 8
patience = 0
model_dir = "{run}"
class_names = ["land", "water"]
""").replace('loss = "ce_dice"', 'head = "sigmoid"\nloss = "{loss}"')


@pytest.mark.parametrize("loss", ["dice", "binary_crossentropy"])
def test_a_sigmoid_head_trains_and_its_bundle_predicts_and_evaluates(chips, tmp_path, loss):
    """A binary model (one sigmoid channel, as examples/binary_water_dice) trains 2 epochs
    with Dice or binary cross-entropy (Keras squeezes the (N, H, W, 1) output to the
    masks' rank before the loss sees it), and its bundle segments a scene into the two
    classes and is scored by ``evaluate --model``."""
    from geoseg.model import load_model
    from geoseg.predict import predict_raster
    p = tmp_path / "binary.toml"
    p.write_text(SIGMOID.format(d=chips, run=tmp_path / "run", loss=loss))
    res = CliRunner().invoke(cli, ["train", str(p)], catch_exceptions=False)
    assert res.exit_code == 0, res.output
    bundle = tmp_path / "run" / "model.geoseg"
    lm = load_model(bundle)
    assert lm.meta.head == "sigmoid" and lm.keras_model.output_shape[-1] == 1
    # named after its model_dir (not "model"); the 10 m chips' pixel size is recorded
    assert lm.meta.name == "run" and lm.meta.input.pixel_size == 10.0
    hist = np.genfromtxt(tmp_path / "run" / "history.csv", delimiter=",", names=True)
    assert len(hist) == 2 and np.isfinite(hist["loss"]).all() and np.isfinite(hist["val_mean_iou"]).all()
    assert 0 <= lm.meta.metrics["validation"]["overall_accuracy"] <= 1
    out = tmp_path / "pred.tif"
    predict_raster(SCENE, out, lm)
    with rasterio.open(out) as o:
        cls = o.read(1)
    assert cls.shape == (545, 625) and set(np.unique(cls)) <= {0, 1}
    res = CliRunner().invoke(cli, ["evaluate", "--model", str(bundle), str(SCENE), str(TRUTH),
                                   "-o", str(tmp_path / "scene")])
    assert res.exit_code == 0, res.output
    assert sorted(q.name for q in tmp_path.glob("scene*"))
    # the loss and the metric see the output as Keras hands it: squeezed to the masks' rank or not
    from geoseg.losses import make_confusion_metric, make_loss
    y = np.array([[[0, 1], [255, 1]]], np.int32)
    p1 = np.array([[[0.2, 0.6], [0.5, 0.3]]], np.float32)
    f = make_loss(loss, 2, 255, head="sigmoid")
    assert float(f(y, p1)) == pytest.approx(float(f(y, p1[..., None])), rel=1e-6)
    if loss == "binary_crossentropy":
        assert float(f(y, p1)) == pytest.approx(-(np.log(0.8) + np.log(0.6) + np.log(0.3)) / 3, rel=1e-5)
    for pred in (p1, p1[..., None]):
        m = make_confusion_metric(2, 255, background=0, head="sigmoid")
        m.update_state(y, pred)
        assert m.matrix().tolist() == [[1, 0], [1, 1]]


RESUME = water_config("""epochs = 3
steps_per_epoch = 2
batch_size = 4
patience = 5
metrics = ["iou", "val_loss"]
model_dir = "{run}"
""")


def test_interrupt_and_resume_keep_the_best_epoch_overall(chips, tmp_path, monkeypatch):
    """Ctrl-C after epoch 2 of 3, epoch 1 the best (val_loss forced to 0.1, 0.5, then 0.3):
    the interrupt message says what was kept and how to resume; the same command goes on
    at epoch 3, and the best epoch from before the interruption stays the best: best.keras
    keeps epoch 1, and the bundle has its weights (early stopping restores them)."""
    import geoseg.train as tr
    from geoseg.model import keras_module, load_keras_file, load_model
    keras = keras_module()
    forced = {0: 0.1, 1: 0.5, 2: 0.3}

    class ForcedValLoss(keras.callbacks.BackupAndRestore):  # the first callback: the others see it
        def on_epoch_end(self, epoch, logs=None):
            logs["val_loss"] = forced[epoch]
            super().on_epoch_end(epoch, logs)

    monkeypatch.setattr(keras.callbacks, "BackupAndRestore", ForcedValLoss)
    real = tr.curves_callback

    def interrupting(path, csv_path=None):
        class CtrlC(keras.callbacks.Callback):
            def on_epoch_end(self, epoch, logs=None):
                if epoch == 1:
                    raise KeyboardInterrupt
        return CtrlC()

    monkeypatch.setattr(tr, "curves_callback", interrupting)
    run = tmp_path / "run"
    p = tmp_path / "resume.toml"
    p.write_text(RESUME.format(d=chips, run=run))
    res = CliRunner().invoke(cli, ["train", str(p)])
    assert res.exit_code == 130, res.output
    msg = res.output.strip().splitlines()[-1]
    assert msg.startswith("geoseg: interrupted after epoch 2 of 3; no model bundle was written; kept in ")
    assert "backup/, best.keras, history.csv" in msg
    assert msg.endswith(f"Resume from epoch 3 with the same command: geoseg train {p}")
    assert not (run / "model.geoseg").exists()
    best_epoch1 = load_keras_file(run / "best.keras").get_weights()

    monkeypatch.setattr(tr, "curves_callback", real)
    res = CliRunner().invoke(cli, ["train", str(p)])
    assert res.exit_code == 0, res.output
    hist = np.genfromtxt(run / "history.csv", delimiter=",", names=True)
    assert hist["epoch"].tolist() == [0, 1, 2] and hist["val_loss"].tolist() == [0.1, 0.5, 0.3]
    for a, b in zip(load_keras_file(run / "best.keras").get_weights(), best_epoch1):
        np.testing.assert_array_equal(a, b)  # epoch 3 (0.3) did not replace epoch 1 (0.1)
    for a, b in zip(load_model(run / "model.geoseg").keras_model.get_weights(), best_epoch1):
        np.testing.assert_array_equal(a, b)
    assert not (run / "backup").exists()


EXTEND = water_config("""epochs = 2
steps_per_epoch = 2
batch_size = 4
model_dir = "{run}"
""")


def test_more_epochs_extend_a_finished_run(chips, tmp_path):
    """--epochs N with N more than a finished run's epochs goes on from its last epoch
    (history 2 -> 3 rows, numbered on; the bundle is written again); as many epochs as
    it was given is 'model exists'; --overwrite starts over from epoch 1."""
    from geoseg.bundle import read_metadata
    run = tmp_path / "run"
    p = tmp_path / "extend.toml"
    p.write_text(EXTEND.format(d=chips, run=run))
    r = CliRunner()
    assert r.invoke(cli, ["train", str(p)]).exit_code == 0

    def epochs():
        return np.genfromtxt(run / "history.csv", delimiter=",", names=True)["epoch"].tolist()

    assert epochs() == [0, 1] and read_metadata(run / "model.geoseg").provenance["epochs_run"] == 2
    # a run that stopped early (here: as if given 5 epochs) is not extended by running it again
    recorded = (run / "config.toml").read_text()
    (run / "config.toml").write_text(recorded.replace("epochs = 2", "epochs = 5"))
    res = r.invoke(cli, ["train", str(p), "--epochs", "5"])
    assert res.exit_code == 1 and "stopped early, after 2 of 5 epochs: more than 5 epochs extend it" in res.output
    (run / "config.toml").write_text(recorded)
    res = r.invoke(cli, ["train", str(p), "--epochs", "3"])
    assert res.exit_code == 0, res.output
    assert epochs() == [0, 1, 2] and read_metadata(run / "model.geoseg").provenance["epochs_run"] == 3
    res = r.invoke(cli, ["train", str(p), "--epochs", "3"])
    assert res.exit_code == 1 and "model exists" in res.output and "its run has 3 epochs" in res.output
    assert "--overwrite" in res.output
    res = r.invoke(cli, ["train", str(p), "--overwrite"])
    assert res.exit_code == 0, res.output
    assert epochs() == [0, 1] and read_metadata(run / "model.geoseg").provenance["epochs_run"] == 2


def test_tiledinfer_window_reaches_previews_and_inference(chips, tmp_path, monkeypatch):
    """[tiledinfer] tile_size/overlapping (the seed's 512/128 kind of setting) reach the
    epoch previews and the post-training inference as given, not clamped to the
    bundle's window."""
    import geoseg.train as tr
    from geoseg.model import keras_module
    keras = keras_module()
    seen = {}

    class Stop(Exception):
        pass

    def fake_fit(self, *args, **kwargs):
        raise Stop

    def preview(images, out, meta, options, is_cancelled=None):
        seen["preview"] = options
        return keras.callbacks.Callback()

    monkeypatch.setattr(keras.Model, "fit", fake_fit)
    monkeypatch.setattr(tr, "epoch_preview_callback", preview)
    p = tmp_path / "tiled.toml"
    p.write_text(water_config("""epochs = 1
model_dir = "{d}/tiled_model"
tile_size = 64
overlap = 8
epoch_change_tiledinfer = true
epoch_change_tiledinfer_dir = "{d}/tiled_epochs"
""", """
[tiledinfer]
tile_size = 128
overlapping = 48
images_dir = "{d}/infer_in"
output_dir = "{d}/tiled_out"
""").format(d=chips))
    cfg = load_config(p)
    with pytest.raises(Stop):
        tr.train(cfg, verbose=0)
    assert (seen["preview"].tile_size, seen["preview"].overlap) == (128, 48)
    (_, _, opts), = tr._inference_jobs(cfg)
    assert (opts.tile_size, opts.overlap) == (128, 48)  # 48 >= 64 / 2: the bundle's window could not take it
    assert not (chips / "tiled_model").exists()  # the failed run leaves no empty model folder


def test_curves_have_whole_epoch_ticks_and_bundles_are_named(tmp_path, monkeypatch):
    """The curves' epoch axis is ticked at whole epochs (3 epochs gave 1.25, 1.5 ...); a
    bundle is named after train.output's file, else its model_dir."""
    from matplotlib.figure import Figure

    from geoseg.callbacks import plot_curves
    from geoseg.config import Config, TrainConfig
    from geoseg.train import _bundle_name
    figs = []
    save = Figure.savefig
    monkeypatch.setattr(Figure, "savefig", lambda self, *a, **k: (figs.append(self), save(self, *a, **k)))
    plot_curves({"loss": [0.9, 0.5, 0.4], "val_loss": [1.0, 0.6, 0.5], "mean_iou": [0.2, 0.5, 0.6]},
                tmp_path / "c.png")
    for ax in figs[0].axes:
        lo, hi = ax.get_xlim()
        ticks = [t for t in ax.get_xticks() if lo <= t <= hi]
        assert ticks and all(float(t).is_integer() for t in ticks), ticks
    cfg = Config(train=TrainConfig(model_dir=str(tmp_path / "water_s2")))
    assert _bundle_name(cfg, tmp_path / "water_s2" / "model.geoseg") == "water_s2"
    cfg = Config(train=TrainConfig(model_dir=str(tmp_path / "m"), output=str(tmp_path / "lakes.geoseg")))
    assert _bundle_name(cfg, tmp_path / "lakes.geoseg") == "lakes"
