import json
import math

import numpy as np
import pytest

from geoseg.demo import TRUTH
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
