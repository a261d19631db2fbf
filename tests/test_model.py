import json
import os
from pathlib import Path
import zipfile

import numpy as np
import pytest
import rasterio

from conftest import make_meta
from geoseg.bundle import META_NAME, MODEL_NAME, format_metadata, read_metadata
from geoseg.errors import ModelError
from geoseg.model import build_unet, load_model, make_forward, save_model
from geoseg.predict import PredictOptions, predict_raster


@pytest.mark.parametrize("kw,out_ch", [({}, 3), ({"head": "softmax", "dropout_rate": 0.2, "dilation": 2,
                                                 "base_kernels": 7, "batch_norm": False}, 3)])
def test_build_unet_shapes(kw, out_ch):
    m = build_unet(3, 5, base_filters=4, num_layers=3, **kw)
    y = m(np.zeros((2, 32, 48, 5), np.float32))
    assert tuple(y.shape) == (2, 32, 48, out_ch)
    assert np.allclose(np.asarray(y).sum(-1), 1.0, atol=1e-5)
    if kw.get("base_kernels") == 7:
        assert m.get_layer("enc0_conv0").kernel_size == (7, 7)
        assert m.get_layer("enc1_conv0").kernel_size == (5, 5)
        assert m.get_layer("enc0_conv0").dilation_rate == (2, 2)


def test_sigmoid_head_gives_two_channels():
    m = build_unet(2, 3, base_filters=4, num_layers=2, head="sigmoid")
    assert m.outputs[0].shape[-1] == 1
    f = make_forward(m, 3, "sigmoid")
    p = f(np.random.default_rng(0).random((2, 16, 16, 3), dtype=np.float32))
    assert p.shape == (2, 16, 16, 2) and np.allclose(p.sum(-1), 1.0)


def test_bundle_round_trip(tiny_bundle):
    lm = load_model(tiny_bundle)
    assert lm.meta == read_metadata(tiny_bundle)
    x = np.random.default_rng(1).random((1, 32, 32, 3), dtype=np.float32)
    f = make_forward(lm.keras_model, 3)
    assert np.allclose(f(x), np.asarray(lm.keras_model(x)), atol=1e-5)
    text = format_metadata(lm.meta)
    assert "background" in text and "tile size:    32" in text


def _rewrite(src, dst, meta=None, drop=None, model_bytes=None):
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w") as zout:
        for name in zin.namelist():
            if name == drop:
                continue
            data = zin.read(name)
            if name == META_NAME and meta is not None:
                data = json.dumps(meta).encode()
            if name == MODEL_NAME and model_bytes is not None:
                data = model_bytes
            zout.writestr(name, data)
    return dst


def test_bad_bundles(tiny_bundle, tmp_path):
    corrupt = tmp_path / "corrupt.geoseg"
    corrupt.write_bytes(tiny_bundle.read_bytes()[:5000])
    with pytest.raises(ModelError, match="corrupt|not a geoseg"):
        load_model(corrupt)
    garbage = tmp_path / "garbage.geoseg"
    garbage.write_bytes(b"hello world")
    with pytest.raises(ModelError, match="not a geoseg model bundle"):
        read_metadata(garbage)
    with pytest.raises(ModelError, match="has no 'geoseg.json'"):
        load_model(_rewrite(tiny_bundle, tmp_path / "nometa.geoseg", drop=META_NAME))
    with pytest.raises(ModelError, match="has no 'model.keras'"):
        load_model(_rewrite(tiny_bundle, tmp_path / "nomodel.geoseg", drop=MODEL_NAME))
    with pytest.raises(ModelError, match="cannot load the Keras model"):
        load_model(_rewrite(tiny_bundle, tmp_path / "badkeras.geoseg", model_bytes=b"PK\x03\x04junk"))
    meta = json.loads(zipfile.ZipFile(tiny_bundle).read(META_NAME))
    bad = dict(meta, classes=[{"id": 0, "name": "a", "color": "red"}])
    with pytest.raises(ModelError, match="color"):
        read_metadata(_rewrite(tiny_bundle, tmp_path / "b1.geoseg", meta=bad))
    bad = dict(meta, classes=meta["classes"] + [{"id": 7, "name": "x", "color": "#000000"}])
    with pytest.raises(ModelError, match="outputs 2 channels but the metadata has 3 classes"):
        load_model(_rewrite(tiny_bundle, tmp_path / "b2.geoseg", meta=bad))
    bad = dict(meta, input=dict(meta["input"], bands=["x"], offset=[0], scale=[1], mean=[0], std=[1]))
    with pytest.raises(ModelError, match="takes 3 bands"):
        load_model(_rewrite(tiny_bundle, tmp_path / "b3.geoseg", meta=bad))
    bad = dict(meta, format_version=99)
    with pytest.raises(ModelError, match="version"):
        read_metadata(_rewrite(tiny_bundle, tmp_path / "b4.geoseg", meta=bad))
    # a plain Keras file is not a bundle
    plain = tmp_path / "plain.keras"
    build_unet(2, 3, base_filters=4, num_layers=2).save(plain)
    with pytest.raises(ModelError, match="plain Keras file"):
        read_metadata(plain)


def test_unsafe_lambda_layer_refused(tmp_path):
    import keras
    inp = keras.Input((None, None, 3))
    out = keras.layers.Lambda(lambda t: t[..., :2] * 0 + 0.5)(inp)
    m = keras.Model(inp, out)
    p = tmp_path / "lambda.geoseg"
    save_model(p, m, make_meta())
    with pytest.raises(ModelError, match="cannot load"):
        load_model(p)


def test_real_model_end_to_end(tiny_bundle, rgb_byte, tmp_path):
    r = predict_raster(rgb_byte, tmp_path / "o.tif", tiny_bundle, PredictOptions(batch_size=4),
                       areas_path=tmp_path / "a.csv")
    with rasterio.open(rgb_byte) as s, rasterio.open(r.output) as o:
        assert o.crs == s.crs and o.transform == s.transform
        out = o.read(1)
        nod = s.dataset_mask() == 0
    assert (out[nod] == 255).all() and (out[~nod] != 255).all()
    assert sum(r.counts.values()) == int((~nod).sum())


@pytest.mark.parametrize("backbone,bands", [("mobilenetv2", 3), ("efficientnetb0", 4), ("resnet50", 3),
                                            ("inceptionresnetv2", 3)])
def test_backbone_unets(backbone, bands, tmp_path):
    """keras.applications encoders: full-resolution output for any multiple of 32
    (InceptionResNetV2 too, rebuilt with 'same' padding), a bundle that round-trips,
    and encoder weights from a local file."""
    from geoseg.model import build_backbone_unet
    m = build_backbone_unet(backbone, 3, bands, dropout_rate=0.1)
    x = np.random.default_rng(2).random((1, 64, 96, bands), dtype=np.float32)
    y = np.asarray(m(x))
    assert y.shape == (1, 64, 96, 3) and np.allclose(y.sum(-1), 1.0, atol=1e-4)
    assert np.asarray(m(x[:, :32, :32])).shape == (1, 32, 32, 3)
    meta = make_meta(n_bands=bands, classes=((0, "a", "#000000"), (1, "b", "#FF0000"), (2, "c", "#00FF00")),
                     tile=64, overlap=8, multiple=32)
    save_model(tmp_path / "m.geoseg", m, meta)
    lm = load_model(tmp_path / "m.geoseg")
    assert np.allclose(np.asarray(lm.keras_model(x)), y, atol=1e-5)
    if backbone == "mobilenetv2":
        # a local encoder weights file is loaded into the encoder
        import keras
        enc = keras.applications.MobileNetV2(include_top=False, weights=None, input_shape=(None, None, bands))
        enc.save_weights(tmp_path / "enc.weights.h5")
        m2 = build_backbone_unet(backbone, 3, bands, weights=str(tmp_path / "enc.weights.h5"))
        w = m2.get_layer("Conv1").get_weights()[0]
        assert np.array_equal(w, enc.get_layer("Conv1").get_weights()[0])
        with pytest.raises(ModelError, match="cannot load encoder weights"):
            build_backbone_unet(backbone, 3, bands, weights=str(tmp_path / "nope.weights.h5"))
    with pytest.raises(ModelError, match="ImageNet encoder weights need 3 input bands"):
        build_backbone_unet(backbone, 3, 5, weights="imagenet")


def test_bundle_holds_no_optimizer_state(tmp_path):
    import io
    m = build_unet(2, 3, base_filters=4, num_layers=2)
    m.compile(optimizer="adam", loss="sparse_categorical_crossentropy")
    x = np.random.default_rng(3).random((2, 16, 16, 3), dtype=np.float32)
    m.fit(x, np.zeros((2, 16, 16), np.int32), epochs=1, verbose=0)
    save_model(tmp_path / "m.geoseg", m, make_meta(n_bands=3, tile=16, overlap=4, multiple=2))
    with zipfile.ZipFile(tmp_path / "m.geoseg") as z, zipfile.ZipFile(io.BytesIO(z.read(MODEL_NAME))) as inner:
        cfg = json.loads(inner.read("config.json"))
    assert not cfg.get("compile_config")
    lm = load_model(tmp_path / "m.geoseg")
    assert np.allclose(np.asarray(lm.keras_model(x)), np.asarray(m(x)), atol=1e-6)


def test_tiny_bundle_fixture_is_informative(tiny_bundle, rgb_byte, tmp_path):
    """The seeded fixture model predicts both classes on RGB.byte and is not flip-symmetric
    (tests comparing plain and flip-TTA runs rely on it); the same in every run."""
    outs = {}
    for tta in ("none", "flip"):
        predict_raster(rgb_byte, tmp_path / f"{tta}.tif", tiny_bundle, PredictOptions(tta=tta))
        with rasterio.open(tmp_path / f"{tta}.tif") as o:
            outs[tta] = o.read(1)
    valid = outs["none"] != 255
    share = (outs["none"][valid] == 1).mean()
    assert 0.05 < share < 0.95, share
    assert (outs["none"][valid] != outs["flip"][valid]).mean() > 0.01


@pytest.mark.parametrize("field,value,words", [
    ("std", [float("nan"), 1.0, 1.0], "input.std' holds a value that is not a finite number"),
    ("scale", [1.0, float("inf"), 1.0], "input.scale' holds a value that is not a finite number"),
    ("scale", [0.0, 1.0, 1.0], "'input.scale' must not be 0"),
    ("mean", [0.0, float("-inf"), 0.0], "input.mean' holds a value"),
    ("std", [1.0, -2.0, 1.0], "'input.std' must be positive"),
    ("tile_size", 1 << 20, "invalid 'tile_size'/'overlap'"),
    ("overlap", 16, "invalid 'tile_size'/'overlap'"),
    ("pixel_size", float("inf"), "pixel_size"),
])
def test_bundle_numbers_are_validated(tiny_bundle, tmp_path, field, value, words):
    """Metadata is checked as numbers, not only as types: the error names the field."""
    meta = json.loads(zipfile.ZipFile(tiny_bundle).read(META_NAME))
    if field in ("tile_size", "overlap"):
        meta[field] = value
    else:
        meta["input"][field] = value
    with pytest.raises(ModelError, match=words.replace("(", r"\(")):
        read_metadata(_rewrite(tiny_bundle, tmp_path / "bad.geoseg", meta=meta))


def test_bundle_reading_is_bounded(tmp_path, monkeypatch):
    """A member that would inflate far past any real model is refused before it is
    inflated; a model path that is a pipe is refused, not read (would block)."""
    import zipfile

    from geoseg import bundle
    from geoseg.errors import ModelError
    src = Path(__file__).resolve().parents[1] / "geoseg" / "data" / "s2_water.geoseg"
    bomb = tmp_path / "bomb.geoseg"
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(bomb, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr(bundle.META_NAME, zin.read(bundle.META_NAME))
        z.writestr(bundle.MODEL_NAME, b"\0" * (8 << 20))   # 8 MB of zeros, ~8 kB on disk
    assert bomb.stat().st_size < 100_000
    monkeypatch.setitem(bundle.MAX_MEMBER_BYTES, bundle.MODEL_NAME, 1 << 20)
    assert bundle.read_metadata(bomb).name            # the metadata is small: fine
    with pytest.raises(ModelError, match="would inflate to 8 MB.*refused"):
        bundle.read_bundle_member(bomb, bundle.MODEL_NAME)
    fifo = tmp_path / "model.geoseg"
    os.mkfifo(fifo)
    with pytest.raises(ModelError, match="not a regular file"):
        bundle.read_metadata(fifo)
