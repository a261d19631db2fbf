"""The engine's seams: sources, the sink, the schedule, the model handle, cancel."""

import ast
import hashlib
import pickle
import zipfile
from pathlib import Path

import numpy as np
import pytest
import rasterio
from rasterio.transform import from_origin

from conftest import box_forward, make_meta, threshold_forward
from geoseg.areas import class_areas, pixel_areas
from geoseg.errors import Cancelled, RasterError
from geoseg.model import LoadedModel
from geoseg.output import ClassRasterWriter
from geoseg.predict import PredictOptions, predict_array, predict_raster
from geoseg.sources import ArraySource, RasterSource, open_source
from geoseg.unit import TTA_VIEWS, make_plan, process_task, tta_forward

GEOSEG = Path(__file__).resolve().parents[1] / "geoseg"


def sha(p) -> str:
    return hashlib.sha256(Path(p).read_bytes()).hexdigest()


@pytest.fixture
def scene(make_geotiff):
    """A 3-band 150 x 117 image (ragged against tile 32 / block 48), nodata block inside."""
    rng = np.random.default_rng(7)
    data = rng.random((3, 117, 150)).astype(np.float32)
    data[:, 40:60, 70:90] = -9999
    return make_geotiff(data, nodata=-9999, name="scene.tif"), data


def model():
    return LoadedModel(make_meta(n_bands=3, tile=32, overlap=8), None)


# ------------------------------------------------------------------ sources

def test_every_source_gives_the_same_class_raster(scene, tmp_path):
    """A GeoTIFF, the same file through /vsizip/, a VRT file, a VRT's XML text and the
    numpy array with its grid: byte-identical class rasters."""
    path, data = scene
    opts = PredictOptions(block_size=48)
    fwd = box_forward()
    with zipfile.ZipFile(tmp_path / "scene.zip", "w") as zf:
        zf.write(path, "inner/scene.tif")
    vrt = tmp_path / "scene.vrt"
    from osgeo import gdal
    gdal.UseExceptions()
    gdal.Translate(str(vrt), str(path), format="VRT")
    with rasterio.open(path) as src:
        crs, transform = src.crs, src.transform
    inputs = {
        "tif": str(path),
        "vsizip": f"/vsizip/{tmp_path / 'scene.zip'}/inner/scene.tif",
        "vrt": str(vrt),
        "vrt_xml": vrt.read_text().replace('relativeToVRT="1">scene.tif', f'relativeToVRT="0">{path}'),
        "array": ArraySource(data, crs=crs, transform=transform, nodata=-9999),
    }
    out = {}
    for k, src in inputs.items():
        dst = tmp_path / f"out_{k}.tif"
        predict_raster(src, dst, model(), opts, forward=fwd)
        out[k] = dst
    with rasterio.open(out["tif"]) as ref:
        expect = ref.read(1)
    assert (expect == 255).sum() == 20 * 20 and (expect == 1).any() and (expect == 0).any()
    for k, p in out.items():
        with rasterio.open(p) as o:
            assert np.array_equal(o.read(1), expect), k
            assert o.crs == crs and o.transform == transform, k
        assert sha(p) == sha(out["tif"]), k


def test_gdal_names_errors_show_the_name_as_given(tmp_path):
    name = f"/vsizip/{tmp_path}/missing.zip/a.tif"
    with pytest.raises(RasterError, match="missing.zip/a.tif"):
        RasterSource(name)
    with pytest.raises(RasterError, match=r"^input not found: nope\.tif$"):
        RasterSource("nope.tif")
    with pytest.raises(RasterError, match="SENTINEL2_L2A:"):
        RasterSource("SENTINEL2_L2A:/nowhere/MTD_MSIL2A.xml:10m:EPSG_32632")


def test_array_source_follows_gdal_nodata_rule():
    a = np.ones((2, 4, 5), np.float32)
    a[0, 0, 0] = 0          # one band at nodata: still valid (GDAL: nodata only when all bands are)
    a[:, 1, 1] = 0          # both bands: nodata
    a[1, 2, 2] = np.inf     # not finite: invalid
    a[0, 3, 3] = np.nan
    src = ArraySource(a, nodata=0)
    from geoseg.windows import Rect
    _, valid = src.read([1, 2], Rect(0, 0, 5, 4), masked=True)
    expect = np.ones((4, 5), bool)
    expect[1, 1] = expect[2, 2] = expect[3, 3] = False
    assert np.array_equal(valid, expect)
    assert open_source(a).count == 2
    # a band without nodata is valid everywhere, so no pixel is all-bands nodata
    _, valid2 = ArraySource(a, nodata=[0, None]).read([1, 2], Rect(0, 0, 5, 4), masked=True)
    expect2 = np.ones((4, 5), bool)
    expect2[2, 2] = expect2[3, 3] = False
    assert np.array_equal(valid2, expect2)
    with pytest.raises(RasterError, match="complex"):
        ArraySource(np.zeros((1, 4, 4), np.complex64))


def test_predict_array_equals_predict_raster(scene, tmp_path):
    path, data = scene
    opts = PredictOptions(block_size=48, blend="cosine", confidence=True)
    classes, conf = predict_array(data, model(), opts, nodata=-9999, forward=box_forward())
    predict_raster(path, tmp_path / "o.tif", model(), opts, forward=box_forward(),
                   confidence_path=tmp_path / "c.tif")
    with rasterio.open(tmp_path / "o.tif") as o, rasterio.open(tmp_path / "c.tif") as c:
        assert np.array_equal(classes, o.read(1))
        assert np.array_equal(conf, c.read(1))


# ------------------------------------------------------------------ schedule and sink

@pytest.mark.parametrize("blend,tta", [("crop", "none"), ("cosine", "none"), ("crop", "flip")])
def test_tasks_through_the_sink_equal_predict_raster_byte_for_byte(scene, tmp_path, blend, tta):
    """Mapping process_task over the plan's tasks (as another executor would, in any
    order) and committing through the sink in plan order writes the same bytes as the
    local pipeline: class raster, confidence, RAT, .qml. The stand-in model is
    batch-sensitive, so this holds only if both batch the same windows together."""
    path, _ = scene
    opts = PredictOptions(block_size=48, blend=blend, tta=tta, confidence=True, batch_size=3)
    fwd = box_forward(batch_sensitive=True)
    res = predict_raster(path, tmp_path / "local.tif", model(), opts, forward=fwd,
                         confidence_path=tmp_path / "local_conf.tif")
    meta = model().meta
    with RasterSource(path) as src:
        plan = make_plan(src, meta, opts)
        px = pixel_areas(src.crs, src.transform, src.width, src.height)
        tasks = plan.tasks()
        results = {i: process_task(plan, t, tta_forward(fwd, tta)) for i, t in reversed(list(enumerate(tasks)))}
        from geoseg.predict import output_tags
        tags = output_tags(meta, plan, opts, "given forward")
        with ClassRasterWriter(tmp_path / "tasks.tif", width=src.width, height=src.height, crs=src.crs,
                               transform=src.transform, block=plan.grid.block, classes=meta.classes,
                               pixel_areas=px, confidence_target=tmp_path / "tasks_conf.tif", tags=tags) as w:
            for i in range(len(tasks)):
                for r in results[i]:
                    w.write(r)
            w.finish()
            table = w.table()
            w.commit()
    assert len(tasks) == 3 and sum(len(t) for t in tasks) == len(plan.grid)
    for a, b in [("local.tif", "tasks.tif"), ("local_conf.tif", "tasks_conf.tif"), ("local.qml", "tasks.qml"),
                 ("local.tif.aux.xml", "tasks.tif.aux.xml")]:
        assert sha(tmp_path / a) == sha(tmp_path / b), a
    assert [(r.class_id, r.pixels) for r in table.rows] == [(r.class_id, r.pixels) for r in res.areas.rows]


def _count_batches(plan) -> int:
    """Batches the schedule must run, computed from the plan alone: per task, per window
    shape, ceil(windows / batch size) (windows with no valid pixel never run)."""
    n = 0
    for task in plan.tasks():
        shapes: dict[tuple, int] = {}
        for u in task:
            for w in u.windows:
                shapes[(w.read.height, w.read.width)] = shapes.get((w.read.height, w.read.width), 0) + 1
        n += sum(-(-c // plan.batch_size) for c in shapes.values())
    return n


def test_schedule_is_a_function_of_the_plan_not_of_prefetch(make_geotiff, tmp_path):
    rng = np.random.default_rng(3)
    path = make_geotiff(rng.random((3, 131, 201)).astype(np.float32), name="s.tif")
    calls = {}

    def recording(tag):
        inner = box_forward(batch_sensitive=True)

        def fwd(x):
            calls.setdefault(tag, []).append(hashlib.sha1(np.ascontiguousarray(x).tobytes()).hexdigest())
            return inner(x)
        return fwd

    outs = []
    for prefetch in (1, 2, 6):
        opts = PredictOptions(block_size=48, batch_size=5, prefetch=prefetch, blend="cosine")
        dst = tmp_path / f"p{prefetch}.tif"
        res = predict_raster(path, dst, model(), opts, forward=recording(prefetch))
        outs.append(sha(dst))
        with RasterSource(path) as src:
            assert res.batches == _count_batches(make_plan(src, model().meta, opts))
    assert calls[1] == calls[2] == calls[6]
    assert len(set(outs)) == 1


# ------------------------------------------------------------------ model handle

def test_model_ref_pickles_and_loads_once_per_process(tiny_bundle, rgb_byte, tmp_path):
    from geoseg.model import LOADS, ModelRef, load_forward
    from geoseg.predict import predict_many
    ref = ModelRef.of(tiny_bundle, "flip")
    assert pickle.loads(pickle.dumps(ref)) == ref
    assert ref.sha256 == sha(tiny_bundle)
    before = LOADS["count"]
    f1 = load_forward(ref)
    assert load_forward(pickle.loads(pickle.dumps(ref))) is f1
    srcs = []
    for i in range(3):
        p = tmp_path / f"in{i}.tif"
        p.write_bytes(Path(rgb_byte).read_bytes())
        srcs.append(p)
    out = tmp_path / "out"
    out.mkdir()
    predict_many(srcs, out, tiny_bundle, PredictOptions(tta="flip"))
    assert LOADS["count"] - before == 1
    assert len(list(out.glob("*_classes.tif"))) == 3
    # a reference is a model too; its augmentation must be the run's
    predict_raster(srcs[0], tmp_path / "ref.tif", ref, PredictOptions(tta="flip"))
    assert sha(tmp_path / "ref.tif") == sha(out / "in0_classes.tif")
    from geoseg.errors import ConfigError
    with pytest.raises(ConfigError, match="test-time augmentation"):
        predict_raster(srcs[0], tmp_path / "ref2.tif", ref, PredictOptions(tta="none"))
    assert LOADS["count"] - before == 1


# ------------------------------------------------------------------ cancel everywhere

def _cancel_after_first_progress():
    state = {"seen": False}

    def progress(done, total):
        if done > 0:
            state["seen"] = True

    return progress, lambda: state["seen"]


def test_cancel_predict_leaves_nothing(scene, tmp_path):
    path, _ = scene
    progress, cancelled = _cancel_after_first_progress()
    with pytest.raises(Cancelled):
        predict_raster(path, tmp_path / "o.tif", model(), PredictOptions(block_size=48), forward=box_forward(),
                       areas_path=tmp_path / "a.csv", preview_path=tmp_path / "p.png", progress=progress,
                       is_cancelled=cancelled)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["scene.tif"]


def test_cancel_areas(make_geotiff):
    path = make_geotiff(np.zeros((4000, 600), np.uint8), blockxsize=16, blockysize=16, tiled=True)
    progress, cancelled = _cancel_after_first_progress()
    with pytest.raises(Cancelled):
        class_areas(path, progress=progress, is_cancelled=cancelled)


def test_cancel_evaluate(make_geotiff, scene, tmp_path):
    from geoseg.evaluate import evaluate_model_on_raster, evaluate_rasters
    path, _ = scene
    truth = make_geotiff(np.ones((117, 150), np.uint8), name="truth.tif")
    big = make_geotiff(np.ones((3000, 800), np.uint8), name="big.tif")
    for run in (lambda p, c: evaluate_rasters(big, big, [0, 1], progress=p, is_cancelled=c),
                lambda p, c: evaluate_model_on_raster(model(), path, truth, PredictOptions(block_size=48),
                                                      forward=box_forward(), progress=p, is_cancelled=c)):
        progress, cancelled = _cancel_after_first_progress()
        with pytest.raises(Cancelled):
            run(progress, cancelled)


def test_evaluate_model_on_raster_scores_what_predict_writes(scene, make_geotiff, tmp_path):
    from geoseg.evaluate import confusion_matrix, evaluate_model_on_raster
    path, _ = scene
    rng = np.random.default_rng(1)
    truth = rng.integers(0, 2, (117, 150)).astype(np.uint8)
    truth[0:5] = 9  # not a class: not counted
    tpath = make_geotiff(truth, name="truth.tif")
    opts = PredictOptions(block_size=48, blend="cosine")
    s = evaluate_model_on_raster(model(), path, tpath, opts, forward=box_forward())
    predict_raster(path, tmp_path / "o.tif", model(), opts, forward=box_forward())
    with rasterio.open(tmp_path / "o.tif") as o:
        pred = o.read(1)
    assert np.array_equal(s.confusion, confusion_matrix(truth, pred, [0, 1]))
    assert s.unpredicted == int(((pred == 255) & (truth != 9)).sum()) == 400


# ------------------------------------------------------------------ layout rules

def _modules():
    return {p.stem: ast.parse(p.read_text()) for p in GEOSEG.glob("*.py")}


def test_core_imports_form_no_cycle_and_no_private_name_crosses_modules():
    graph: dict[str, set[str]] = {}
    for name, tree in _modules().items():
        graph[name] = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.level == 1 and node.module:
                graph[name].add(node.module.split(".")[0])
                private = [a.name for a in node.names if a.name.startswith("_")]
                assert not private, f"geoseg/{name}.py imports private {private} from .{node.module}"
    state: dict[str, int] = {}

    def visit(n, path):
        if state.get(n) == 1:
            raise AssertionError("import cycle: " + " -> ".join(path + [n]))
        if state.get(n) == 2:
            return
        state[n] = 1
        for m in graph.get(n, ()):
            visit(m, path + [n])
        state[n] = 2

    for n in graph:
        visit(n, [])


def test_core_never_names_cli_flags_nor_enters_catch_warnings():
    import re
    flag = re.compile(r"--[a-z][a-z-]+")
    for name, tree in _modules().items():
        docs = {id(n.body[0].value) for n in ast.walk(tree)
                if isinstance(n, (ast.Module, ast.FunctionDef, ast.ClassDef, ast.AsyncFunctionDef))
                and n.body and isinstance(n.body[0], ast.Expr) and isinstance(n.body[0].value, ast.Constant)}
        for node in ast.walk(tree):
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docs:
                assert not flag.search(node.value), f"geoseg/{name}.py names a CLI flag: {node.value!r}"
            if isinstance(node, ast.Attribute) and node.attr == "catch_warnings":
                raise AssertionError(f"geoseg/{name}.py enters warnings.catch_warnings (not thread-safe)")


def test_tta_choices_and_threshold_stand_in_still_agree(make_geotiff, tmp_path):
    """The pointwise stand-in gives the same classes whatever the window grid."""
    path = make_geotiff(np.random.default_rng(0).random((3, 70, 45)).astype(np.float32))
    assert set(TTA_VIEWS) == {"none", "flip", "d4"}
    outs = []
    for tile in (16, 32):
        dst = tmp_path / f"t{tile}.tif"
        predict_raster(path, dst, model(), PredictOptions(tile_size=tile, overlap=4), forward=threshold_forward())
        with rasterio.open(dst) as o:
            outs.append(o.read(1))
    assert np.array_equal(*outs)
    assert from_origin  # used by fixtures


def test_no_raw_gdal_messages_on_stderr(tmp_path, capfd):
    """GDAL's own warnings (the bundled scene has an odd photometric tag) go to logging,
    never as raw "Warning 1:" lines on the terminal: every GDAL call runs in an Env."""
    from geoseg.demo import SCENE
    meta = make_meta(n_bands=6, tile=64, overlap=8)
    predict_raster(SCENE, tmp_path / "o.tif", LoadedModel(meta, None), forward=threshold_forward(),
                   preview_path=tmp_path / "p.png", areas_path=tmp_path / "a.csv")
    class_areas(tmp_path / "o.tif")
    err = capfd.readouterr().err
    assert "Warning 1" not in err and "ERROR 1" not in err, err


@pytest.mark.parametrize("k", [2, 3, 7, 40])
def test_winning_class_is_numpy_argmax_and_max_exactly(k):
    """The merge's plane-wise argmax: NumPy's values, ties to the lower index, NaN
    pixels as NumPy treats them, on a strided view as the merge passes it."""
    from geoseg.unit import winning_class
    rng = np.random.default_rng(k)
    p = rng.random((2, 70, 90, k)).astype(np.float32).round(1)[1, 3:67, 5:85]  # many ties
    idx, top = winning_class(p)
    assert np.array_equal(idx, np.argmax(p, axis=-1)) and np.array_equal(top, p.max(axis=-1))
    q = p.copy()
    q[0, 0, k - 1] = np.nan
    q[1, 1, 0] = np.nan
    idx, top = winning_class(q)
    assert np.array_equal(idx, np.argmax(q, axis=-1))
    assert np.array_equal(top, q.max(axis=-1), equal_nan=True)
