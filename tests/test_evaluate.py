import json
import math

import numpy as np
import pytest

from geoseg.demo import TRUTH
from geoseg.errors import RasterError
from geoseg.evaluate import confusion_matrix, evaluate_rasters, scores_from_confusion, write_scores


def test_scores_from_known_confusion_matrix():
    # rows truth, columns prediction; classes 0 (background), 1, 2
    conf = np.array([[50, 2, 3],
                     [4, 30, 1],
                     [0, 5, 5]])
    s = scores_from_confusion(conf, [0, 1, 2], ["bg", "a", "b"], background=0)
    # class 1: TP 30, FP 2 + 5 = 7, FN 4 + 1 = 5
    assert s.iou[1] == pytest.approx(30 / 42)
    assert s.dice[1] == pytest.approx(60 / 72)
    assert s.precision[1] == pytest.approx(30 / 37) and s.recall[1] == pytest.approx(30 / 35)
    # class 2: TP 5, FP 3 + 1 = 4, FN 5
    assert s.iou[2] == pytest.approx(5 / 14) and s.dice[2] == pytest.approx(10 / 19)
    assert s.overall_accuracy == pytest.approx(85 / 100)
    assert s.mean_iou == pytest.approx((30 / 42 + 5 / 14) / 2)       # background left out
    assert s.mean_dice == pytest.approx((60 / 72 + 10 / 19) / 2)
    with_bg = scores_from_confusion(conf, [0, 1, 2])
    assert with_bg.mean_dice > s.mean_dice                               # why background is left out


def test_absent_class_is_nan_not_zero():
    s = scores_from_confusion(np.array([[5, 0], [0, 0]]), [0, 1], background=0)
    assert math.isnan(s.iou[1]) and math.isnan(s.mean_iou)


def test_confusion_matrix_ignores_unknown_values():
    t = np.array([0, 1, 1, 7, 255])
    p = np.array([0, 1, 0, 1, 1])
    assert confusion_matrix(t, p, [0, 1]).tolist() == [[1, 0], [1, 1]]


def test_raster_evaluation_equals_in_memory(make_geotiff, tmp_path):
    rng = np.random.default_rng(0)
    truth = rng.integers(0, 3, (700, 300)).astype(np.uint8)
    pred = truth.copy()
    flip = rng.random(truth.shape) < 0.2
    pred[flip] = rng.integers(0, 3, int(flip.sum()))
    pred[:5, :5] = 255
    truth[10:20, :] = 9  # nodata in the truth
    t = make_geotiff(truth, nodata=9, name="truth.tif")
    p = make_geotiff(pred, nodata=255, name="pred.tif")
    import geoseg.evaluate as ev
    s = evaluate_rasters(p, t, [0, 1, 2], background=0)
    valid = truth != 9
    expect = confusion_matrix(truth, pred, [0, 1, 2], valid)
    assert (s.confusion == expect).all()
    assert s.unpredicted == 25
    files = write_scores(s, tmp_path / "eval")
    d = json.loads(files[0].read_text())
    assert d["confusion_matrix"] == expect.tolist()
    assert files[1].read_text().splitlines()[0].startswith("class_id,class_name,iou,dice")


def test_s2_truth_declares_nodata_zero():
    s = evaluate_rasters(TRUTH, TRUTH, [0, 1], truth_nodata=None, background=0)
    assert s.confusion.tolist() == [[316446, 0], [0, 24179]] and s.mean_iou == 1.0
    s2 = evaluate_rasters(TRUTH, TRUTH, [0, 1])  # honouring the wrong nodata drops every land pixel
    assert s2.confusion[0, 0] == 0


def test_evaluate_cli_raster_and_model(tmp_path, tiny_bundle, rgb_byte):
    from click.testing import CliRunner

    from geoseg_cli.main import cli
    r = CliRunner()
    # a truth on the RGB.byte grid: class 1 where the red band is bright
    import rasterio
    with rasterio.open(rgb_byte) as s:
        prof = s.profile
        red = s.read(1)
    prof.update(count=1, nodata=255)
    truth = tmp_path / "truth.tif"
    with rasterio.open(truth, "w", **prof) as d:
        d.write(np.where(red == 0, 255, (red > 100).astype(np.uint8)), 1)
    res = r.invoke(cli, ["evaluate", "--model", str(tiny_bundle), str(rgb_byte), str(truth),
                         "-o", str(tmp_path / "ev")], catch_exceptions=False)
    assert res.exit_code == 0, res.output
    for name in ("ev.csv", "ev.json", "ev_confusion.png"):
        assert (tmp_path / name).exists()
    d = json.loads((tmp_path / "ev.json").read_text())
    assert d["pixels"] == int(((red != 0)).sum()) - d["unpredicted_pixels"]
    # the prediction written by predict carries its class names: no --model needed
    pred = tmp_path / "pred.tif"
    assert r.invoke(cli, ["predict", str(tiny_bundle), str(rgb_byte), str(pred)]).exit_code == 0
    res = r.invoke(cli, ["evaluate", str(pred), str(truth)])
    assert res.exit_code == 0 and json.loads(res.stdout)["confusion_matrix"] == d["confusion_matrix"]
    # refuses to overwrite, and grids must match
    res = r.invoke(cli, ["evaluate", str(pred), str(truth), "-o", str(tmp_path / "ev")])
    assert res.exit_code == 1 and "exists" in res.output
    res = r.invoke(cli, ["evaluate", str(pred), str(TRUTH)])
    assert res.exit_code == 1 and "px but the truth is" in res.output
    # test-time augmentation: evaluate --model --tta scores what predict --tta writes
    pred4 = tmp_path / "pred4.tif"
    assert r.invoke(cli, ["predict", str(tiny_bundle), str(rgb_byte), str(pred4), "--tta", "flip"]).exit_code == 0
    res = r.invoke(cli, ["evaluate", "--model", str(tiny_bundle), str(rgb_byte), str(truth), "--tta", "flip"])
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout) == json.loads(r.invoke(cli, ["evaluate", str(pred4), str(truth)]).stdout)
    with rasterio.open(pred) as a, rasterio.open(pred4) as b:
        assert (a.read(1) != b.read(1)).any()  # the untrained model is not flip-symmetric
    res = r.invoke(cli, ["evaluate", str(pred), str(truth), "--tta", "d4"])
    assert res.exit_code == 2 and "--tta applies to a model" in res.output


def test_nc_crs_spelled_differently_is_the_same_grid(tmp_path):
    """NC image files say EPSG:32119 (unnamed LCC WKT) and the labels EPSG:3358: same grid."""
    from conftest import DATA
    s = evaluate_rasters(DATA / "nc_strata.tif", DATA / "nc_strata.tif", list(range(1, 8)))
    assert s.overall_accuracy == 1.0


def test_evaluate_whole_images_with_colour_masks(tmp_path, tiny_bundle):
    """Folders of whole photos (larger than the model's tile, not a multiple of it)
    with colour masks: each image is segmented windowed by the engine, colours are
    mapped through --rgb-map, unmapped colours are not counted."""
    from click.testing import CliRunner
    from PIL import Image

    from geoseg.predict import predict_raster
    from geoseg.model import load_model
    from geoseg_cli.main import cli
    import rasterio
    rng = np.random.default_rng(5)
    (tmp_path / "img").mkdir()
    (tmp_path / "msk").mkdir()
    img = rng.integers(0, 256, (70, 93, 3), dtype=np.uint8)
    Image.fromarray(img).save(tmp_path / "img" / "part_001.png")
    truth = rng.integers(0, 3, (70, 93))                       # 2 = a colour not in the map
    colours = np.array([[0, 0, 255], [255, 0, 0], [0, 255, 0]], np.uint8)
    Image.fromarray(colours[truth]).save(tmp_path / "msk" / "part_001.png")

    pred_path = tmp_path / "pred.tif"
    predict_raster(tmp_path / "img" / "part_001.png", pred_path, load_model(tiny_bundle))
    with rasterio.open(pred_path) as src:
        pred = src.read(1)
    expect = confusion_matrix(truth, pred, [0, 1], truth != 2)
    assert expect.sum() == (truth != 2).sum()

    res = CliRunner().invoke(cli, ["evaluate", "--model", str(tiny_bundle), str(tmp_path / "img"),
                                   str(tmp_path / "msk"), "--rgb-map", "#0000FF=0,#FF0000=1",
                                   "-o", str(tmp_path / "ev")])
    assert res.exit_code == 0, res.output
    got = json.loads((tmp_path / "ev.json").read_text())
    assert np.array(got["confusion_matrix"]).tolist() == expect.tolist()


def test_evaluate_ignore_list_by_hand(make_geotiff):
    """Truth pixels in ``ignore`` are not counted (hand-made confusion matrix)."""
    truth = np.array([[0, 0, 1, 1], [2, 2, 1, 0]], np.uint8)
    pred = np.array([[0, 1, 1, 0], [1, 0, 1, 0]], np.uint8)
    t = make_geotiff(truth, name="t.tif")
    p = make_geotiff(pred, name="p.tif")
    s = evaluate_rasters(p, t, [0, 1, 2], ignore=[2])
    # counted pixels: (0,0)->0 (0,1)->1 (1,2)->1 (1,3)->0 | (r1: 1->1, 0->0); the two 2s are ignored
    assert s.confusion.tolist() == [[2, 1, 0], [1, 2, 0], [0, 0, 0]]
    s_all = evaluate_rasters(p, t, [0, 1, 2])
    assert s_all.confusion[2].tolist() == [1, 1, 0]


def test_evaluate_refuses_misaligned_truth(make_geotiff):
    """A truth shifted by one pixel, or in another CRS, is refused, not scored."""
    from rasterio.transform import from_origin
    data = np.zeros((8, 8), np.uint8)
    p = make_geotiff(data, name="p.tif")
    shifted = make_geotiff(data, name="s.tif", transform=from_origin(500001, 4000000, 1, 1))
    other = make_geotiff(data, name="o.tif", crs="EPSG:32632")
    with pytest.raises(RasterError, match="transforms differ"):
        evaluate_rasters(p, shifted, [0, 1])
    with pytest.raises(RasterError, match="different CRSs"):
        evaluate_rasters(p, other, [0, 1])
