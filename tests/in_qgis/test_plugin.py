"""The QGIS plugin on real headless QGIS 3.22: the provider, its three algorithms, the
runner protocol, cancel, discovery errors, packaging and qgis_process."""

import ast
import configparser
import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest

qgis_core = pytest.importorskip("qgis.core")

from conftest import GEOSEG_EXE, PLUGIN_DIR, REPO  # noqa: E402

DATA = REPO / "geoseg" / "data"
MODEL = DATA / "s2_water.geoseg"
# QGIS writes statistics/histograms into an .aux.xml beside every raster it opens: the
# tests open copies of the bundled rasters, never the repository's files.
SCENE = TRUTH = None


@pytest.fixture(scope="module", autouse=True)
def _data_copies(tmp_path_factory):
    global SCENE, TRUTH
    d = tmp_path_factory.mktemp("data")
    SCENE = Path(shutil.copy(DATA / "s2_shanghai_scene.tif", d))
    TRUTH = Path(shutil.copy(DATA / "s2_shanghai_truth.tif", d))
    yield
    assert not list(DATA.glob("*.aux.xml")), "a test wrote beside the bundled data"
QGIS_PROCESS = shutil.which("qgis_process.bin") or "/usr/bin/qgis_process.bin"


def sha(path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def geoseg_cli(*args, check=True):
    proc = subprocess.run([str(GEOSEG_EXE), *map(str, args)], capture_output=True, text=True)
    if check:
        assert proc.returncode == 0, proc.stderr
    return proc


class Recorder(qgis_core.QgsProcessingFeedback):
    """Feedback that records progress and messages (and can cancel at the first progress)."""

    def __init__(self, cancel_at_first_progress=False):
        super().__init__()
        self.values, self.warnings, self.infos = [], [], []
        self.cancel_at_first_progress = cancel_at_first_progress
        self.cancelled_at = None
        self.progressChanged.connect(self.on_progress)

    def on_progress(self, value):
        self.values.append(value)
        if self.cancel_at_first_progress and self.cancelled_at is None:
            self.cancelled_at = time.monotonic()
            self.cancel()

    def pushWarning(self, text):  # noqa: N802
        self.warnings.append(text)
        super().pushWarning(text)

    def pushInfo(self, text):  # noqa: N802
        self.infos.append(text)
        super().pushInfo(text)


# ---------------------------------------------------------------- the plugin itself

def test_metadata_and_provider(geoseg_plugin):
    import geoseg
    meta = configparser.ConfigParser()
    meta.read(PLUGIN_DIR / "geoseg_qgis" / "metadata.txt")
    g = meta["general"]
    for key in ("name", "qgisMinimumVersion", "description", "about", "version", "author", "email",
                "repository", "tracker", "category", "icon", "hasProcessingProvider"):
        assert g.get(key), key
    assert g["version"] == geoseg.__version__
    assert g["qgisMinimumVersion"] == "3.22" and g["hasProcessingProvider"] == "yes" and g["category"] == "Raster"
    assert (PLUGIN_DIR / "geoseg_qgis" / g["icon"]).is_file()
    reg = qgis_core.QgsApplication.processingRegistry()
    assert reg.providerById("geoseg") is geoseg_plugin.provider
    assert {a.id() for a in geoseg_plugin.provider.algorithms()} == {
        "geoseg:segment", "geoseg:classareas", "geoseg:vectorize"}
    assert not geoseg_plugin.provider.icon().isNull()


def test_choices_match_the_core():
    from geoseg.unit import BLENDS, PRECISIONS, RUNTIMES, TTA_VIEWS
    from geoseg_qgis import algorithms
    assert list(algorithms.BLENDS) == list(BLENDS)
    assert list(algorithms.TTA) == list(TTA_VIEWS)
    assert list(algorithms.RUNTIMES) == list(RUNTIMES)
    assert list(algorithms.PRECISIONS) == list(PRECISIONS)


def test_no_lambda_handed_to_qgis():
    """QGIS crashes on temporary lambdas given to some of its callbacks: the plugin uses none."""
    for p in (PLUGIN_DIR / "geoseg_qgis").glob("*.py"):
        tree = ast.parse(p.read_text())
        assert not [n for n in ast.walk(tree) if isinstance(n, ast.Lambda)], p.name


def test_loading_imports_neither_tensorflow_nor_the_core(tmp_path):
    """In a fresh QGIS process with TensorFlow made unimportable: the plugin loads, and
    all three algorithms work (Segment through geoseg's own environment)."""
    script = tmp_path / "run.py"
    out = tmp_path / "out"
    out.mkdir()
    script.write_text(f"""
import os, sys, json
sys.modules["tensorflow"] = None          # as in QGIS's own Python: TensorFlow cannot be imported
os.environ["QT_QPA_PLATFORM"] = "offscreen"
os.environ["GEOSEG_EXECUTABLE"] = {str(GEOSEG_EXE)!r}
from qgis.core import QgsApplication
app = QgsApplication([], False); app.initQgis()
sys.path.append("/usr/share/qgis/python/plugins"); sys.path.insert(0, {str(PLUGIN_DIR)!r})
from processing.core.Processing import Processing; Processing.initialize()
import processing, geoseg_qgis
plugin = geoseg_qgis.classFactory(None); plugin.initProcessing()
loaded = sorted(m for m in sys.modules if m.split(".")[0] in ("geoseg", "keras") and sys.modules[m] is not None)
o = {str(out)!r}
processing.run("geoseg:segment", {{"INPUT": {str(SCENE)!r}, "MODEL": {str(MODEL)!r}, "OUTPUT": o + "/c.tif"}})
processing.run("geoseg:classareas", {{"INPUT": o + "/c.tif", "OUTPUT": o + "/a.csv"}})
processing.run("geoseg:vectorize", {{"INPUT": o + "/c.tif", "OUTPUT": o + "/v.gpkg"}})
print(json.dumps({{"loaded_at_start": loaded, "tf": sys.modules.get("tensorflow") is not None}}))
os._exit(0)
""")
    proc = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    info = json.loads(proc.stdout.strip().splitlines()[-1])
    assert info == {"loaded_at_start": [], "tf": False}
    ref = tmp_path / "ref.tif"
    geoseg_cli("predict", MODEL, SCENE, ref)
    assert sha(out / "c.tif") == sha(ref)
    assert (out / "a.csv").read_text() == geoseg_cli("areas", ref).stdout
    import pyogrio
    assert pyogrio.read_info(out / "v.gpkg")["features"] > 0


# ---------------------------------------------------------------- Segment raster

@pytest.mark.parametrize("options,cli_options", [
    ({}, []),
    ({"BLEND": 1, "TTA": 1, "OVERLAP": 48, "BATCH_SIZE": 3, "BANDS": "1,2,3,4,5,6"},
     ["--blend", "cosine", "--tta", "flip", "--overlap", "48", "--batch-size", "3", "--bands", "1,2,3,4,5,6"]),
    ({"RUNTIME": 2, "PRECISION": 1}, ["--runtime", "keras", "--precision", "float32"]),
])
def test_segment_equals_the_cli(geoseg_plugin, qgis_processing, geoseg_exe, tmp_path, options, cli_options):
    fb = Recorder()
    params = {"INPUT": str(SCENE), "MODEL": str(MODEL), "OUTPUT": str(tmp_path / "q.tif"),
              "CONFIDENCE": str(tmp_path / "q_conf.tif"), "AREAS": str(tmp_path / "q.csv"), **options}
    res = qgis_processing.run("geoseg:segment", params, feedback=fb)
    assert res["OUTPUT"] == str(tmp_path / "q.tif")
    geoseg_cli("predict", MODEL, SCENE, tmp_path / "c.tif", "--confidence", "--areas", *cli_options)
    assert sha(tmp_path / "q.tif") == sha(tmp_path / "c.tif")
    assert sha(tmp_path / "q_conf.tif") == sha(tmp_path / "c_confidence.tif")
    assert (tmp_path / "q.csv").read_text() == (tmp_path / "c_areas.csv").read_text()
    if "RUNTIME" in options:
        import rasterio
        with rasterio.open(tmp_path / "q.tif") as o:
            assert o.tags()["GEOSEG_RUNTIME"] == "keras float32"
    # progress: monotonic, reaches 100
    assert fb.values and fb.values == sorted(fb.values) and fb.values[-1] == 100
    assert any("water" in line for line in fb.infos)  # the area table in the log


def test_segment_loads_a_styled_layer_and_the_table(geoseg_plugin, qgis_processing, geoseg_exe, tmp_path):
    project = qgis_core.QgsProject.instance()
    project.removeAllMapLayers()
    qgis_processing.runAndLoadResults("geoseg:segment", {
        "INPUT": str(SCENE), "MODEL": str(MODEL), "OUTPUT": str(tmp_path / "w.tif"),
        "AREAS": str(tmp_path / "w.csv")})
    layers = list(project.mapLayers().values())
    rasters = [lyr for lyr in layers if lyr.type() == qgis_core.QgsMapLayerType.RasterLayer]
    tables = [lyr for lyr in layers if lyr.type() == qgis_core.QgsMapLayerType.VectorLayer]
    assert len(rasters) == 1 and len(tables) == 1
    assert rasters[0].name() == "s2_shanghai_scene classes"
    r = rasters[0].renderer()
    assert r.type() == "paletted"
    entries = [(int(c.value), c.label, c.color.name(), c.color.alpha()) for c in r.classes()]
    # the background class (marked in the bundle) is transparent so the imagery shows through
    assert entries == [(0, "non-water", "#ffffff", 0), (1, "water", "#00ffff", 255)]
    t = tables[0]
    assert t.featureCount() == 2
    assert [f["class_name"] for f in t.getFeatures()] == ["non-water", "water"]
    project.removeAllMapLayers()


def test_segment_refuses_a_layer_that_is_not_a_file(geoseg_plugin, qgis_processing, geoseg_exe):
    wms = qgis_core.QgsRasterLayer("type=xyz&url=https://tile.openstreetmap.org/%7Bz%7D/%7Bx%7D/%7By%7D.png",
                                   "osm", "wms")
    qgis_core.QgsProject.instance().addMapLayer(wms)
    try:
        with pytest.raises(qgis_core.QgsProcessingException, match="export it first"):
            qgis_processing.run("geoseg:segment", {"INPUT": wms.id(), "MODEL": str(MODEL),
                                                   "OUTPUT": "TEMPORARY_OUTPUT"})
    finally:
        qgis_core.QgsProject.instance().removeMapLayer(wms.id())


def test_segment_error_is_the_core_one_line_message(geoseg_plugin, qgis_processing, geoseg_exe, tmp_path):
    with pytest.raises(qgis_core.QgsProcessingException) as e:
        qgis_processing.run("geoseg:segment", {"INPUT": str(SCENE), "MODEL": str(MODEL), "BANDS": "1,2,3",
                                               "OUTPUT": str(tmp_path / "x.tif")})
    msg = str(e.value)
    assert "\n" not in msg.strip() and "Traceback" not in msg and "6" in msg and "3" in msg
    assert list(tmp_path.iterdir()) == []


def test_cancel_stops_within_2_s_and_leaves_nothing(geoseg_plugin, qgis_processing, geoseg_exe, tmp_path,
                                                   make_geotiff):
    rng = np.random.default_rng(0)
    big = make_geotiff((rng.random((6, 2048, 2048)) * 3000).astype(np.uint16), name="big.tif")
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    fb = Recorder(cancel_at_first_progress=True)
    with pytest.raises(qgis_core.QgsProcessingException, match="cancelled"):
        qgis_processing.run("geoseg:segment", {"INPUT": str(big), "MODEL": str(MODEL), "BANDS": "1,2,3,4,5,6",
                                               "OUTPUT": str(out_dir / "c.tif"), "AREAS": str(out_dir / "c.csv"),
                                               "CONFIDENCE": str(out_dir / "conf.tif")}, feedback=fb)
    assert fb.cancelled_at is not None and time.monotonic() - fb.cancelled_at < 2.5
    assert list(out_dir.iterdir()) == []  # no output, no temporary file


def test_missing_or_wrong_geoseg_gives_the_install_message(geoseg_plugin, qgis_processing, monkeypatch, tmp_path):
    from geoseg_qgis import runner
    monkeypatch.setattr(runner, "_handshakes", {})
    monkeypatch.setenv("GEOSEG_EXECUTABLE", "/nonexistent/geoseg")
    with pytest.raises(qgis_core.QgsProcessingException) as e:
        qgis_processing.run("geoseg:segment", {"INPUT": str(SCENE), "MODEL": str(MODEL),
                                               "OUTPUT": str(tmp_path / "x.tif")})
    msg = str(e.value)
    assert "GEOSEG_EXECUTABLE" in msg and "/nonexistent/geoseg" in msg and "bootstrap.sh" in msg
    assert "Processing ▸ Options ▸ Providers ▸ geoseg" in msg
    monkeypatch.setenv("GEOSEG_EXECUTABLE", shutil.which("true"))
    with pytest.raises(qgis_core.QgsProcessingException, match="is not a working geoseg"):
        qgis_processing.run("geoseg:segment", {"INPUT": str(SCENE), "MODEL": str(MODEL),
                                               "OUTPUT": str(tmp_path / "x.tif")})
    # nothing configured and nothing on PATH or in a checkout: what to install and what to set
    monkeypatch.delenv("GEOSEG_EXECUTABLE")
    monkeypatch.setenv("PATH", "/usr/bin:/bin")
    monkeypatch.setattr(runner, "_checkout_candidate", lambda: None)
    with pytest.raises(qgis_core.QgsProcessingException, match="geoseg was not found.*bootstrap.sh"):
        qgis_processing.run("geoseg:segment", {"INPUT": str(SCENE), "MODEL": str(MODEL),
                                               "OUTPUT": str(tmp_path / "x.tif")})
    assert list(tmp_path.iterdir()) == []


def test_a_python_interpreter_is_accepted_as_the_setting(geoseg_plugin, monkeypatch):
    from geoseg_qgis import runner
    monkeypatch.setattr(runner, "_handshakes", {})
    monkeypatch.setenv("GEOSEG_EXECUTABLE", str(GEOSEG_EXE.with_name("python")))
    cmd = runner.find_geoseg()
    assert cmd[1:] == ["-m", "geoseg_cli"]
    import geoseg
    assert runner.handshake(cmd)["geoseg"] == geoseg.__version__


def test_child_environment_is_clean(monkeypatch):
    from geoseg_qgis import runner
    for k in ("PYTHONPATH", "PYTHONHOME", "PROJ_LIB", "GDAL_DATA", "QGIS_PREFIX_PATH"):
        monkeypatch.setenv(k, "/qgis/own")
    env = runner.clean_env()
    assert not {"PYTHONPATH", "PYTHONHOME", "PROJ_LIB", "GDAL_DATA", "QGIS_PREFIX_PATH"} & set(env)
    assert env["PATH"] == os.environ["PATH"]


# ---------------------------------------------------------------- Class areas, Vectorize

@pytest.fixture
def zones(tmp_path):
    """Two polygon zones over the bundled scene, in EPSG:4326 (reprojected by the core)."""
    import pyproj
    import rasterio
    import shapely
    with rasterio.open(TRUTH) as src:
        b, crs = src.bounds, src.crs
    midx = (b.left + b.right) / 2
    polys = [shapely.box(b.left + 500, b.bottom + 500, midx, b.top - 500), shapely.box(midx, b.bottom, b.right, b.top)]
    tr = pyproj.Transformer.from_crs(crs, "EPSG:4326", always_xy=True)
    polys = [shapely.transform(shapely.segmentize(p, 50), lambda xy: np.column_stack(tr.transform(xy[:, 0], xy[:, 1])))
             for p in polys]
    path = tmp_path / "zones.gpkg"
    from pyogrio.raw import write
    write(path, geometry=shapely.to_wkb(polys), field_data=[np.array(["west", "east"], dtype=object)],
          fields=["district"], layer="zones", driver="GPKG", geometry_type="Polygon", crs="EPSG:4326")
    return path


@pytest.mark.parametrize("in_process", [True, False])
@pytest.mark.parametrize("with_aoi", [False, True])
def test_class_areas_equals_geoseg_areas(geoseg_plugin, qgis_processing, geoseg_exe, tmp_path, zones, monkeypatch,
                                         in_process, with_aoi):
    from geoseg_qgis import algorithms
    monkeypatch.setattr(algorithms, "core_importable", lambda: in_process)
    params = {"INPUT": str(TRUTH), "OUTPUT": str(tmp_path / "q.csv")}
    cli = ["areas", TRUTH, "-o", tmp_path / "c.csv"]
    if with_aoi:
        aoi_layer = qgis_core.QgsVectorLayer(f"{zones}|layername=zones", "zones", "ogr")
        assert aoi_layer.isValid()
        qgis_core.QgsProject.instance().addMapLayer(aoi_layer)
        params.update(AOI=aoi_layer.id(), ZONE_FIELD="district")
        cli += ["--aoi", zones, "--zone-field", "district"]
    try:
        qgis_processing.run("geoseg:classareas", params)
    finally:
        if with_aoi:
            qgis_core.QgsProject.instance().removeMapLayer(aoi_layer.id())
    geoseg_cli(*cli)
    text = (tmp_path / "q.csv").read_text()
    assert text == (tmp_path / "c.csv").read_text()
    if with_aoi:
        assert text.startswith("zone,class_id") and "west" in text and "east" in text


def test_class_areas_geographic_is_geodesic(geoseg_plugin, qgis_processing, tmp_path, make_geotiff):
    from rasterio.transform import from_origin
    from geoseg.areas import class_areas
    cls = np.zeros((50, 40), np.uint8)
    cls[10:30] = 1
    src = make_geotiff(cls, crs="EPSG:4326", transform=from_origin(10.0, 60.0, 0.01, 0.01), nodata=255)
    qgis_processing.run("geoseg:classareas", {"INPUT": str(src), "OUTPUT": str(tmp_path / "g.csv")})
    want = class_areas(src)
    rows = (tmp_path / "g.csv").read_text().splitlines()[1:]
    got = {int(r.split(",")[0]): float(r.split(",")[3]) for r in rows}
    assert want.kind == "geodesic"
    for r in want.rows:
        assert got[r.class_id] == pytest.approx(r.area_m2, abs=1e-3)


@pytest.mark.parametrize("in_process", [True, False])
def test_vectorize_areas_equal_raster_areas(geoseg_plugin, qgis_processing, geoseg_exe, tmp_path, monkeypatch,
                                            in_process):
    import pyogrio
    from geoseg.areas import class_areas
    from geoseg_qgis import algorithms
    monkeypatch.setattr(algorithms, "core_importable", lambda: in_process)
    out = tmp_path / "v.gpkg"
    fb = Recorder()
    qgis_processing.run("geoseg:vectorize", {"INPUT": str(TRUTH), "OUTPUT": str(out)}, feedback=fb)
    meta, _, geoms, fields = pyogrio.raw.read(out)
    names = list(meta["fields"])
    class_id = fields[names.index("class_id")]
    area = fields[names.index("area_m2")]
    table = class_areas(TRUTH)
    for r in table.rows:
        assert area[class_id == r.class_id].sum() == pytest.approx(r.area_m2, rel=1e-9)
    # simplified: areas within what the tolerance can move (perimeter x tolerance)
    out2 = tmp_path / "v2.gpkg"
    qgis_processing.run("geoseg:vectorize", {"INPUT": str(TRUTH), "OUTPUT": str(out2), "SIMPLIFY": 5.0,
                                             "CLASSES": "1", "MIN_AREA": 1000})
    meta2, _, geoms2, fields2 = pyogrio.raw.read(out2)
    cid2 = fields2[list(meta2["fields"]).index("class_id")]
    assert set(cid2) == {1}
    import shapely
    g2 = shapely.from_wkb(geoms2)
    assert shapely.area(g2).min() >= 1000 - 5.0 * shapely.length(g2).max()
    water = table.by_class()[1].area_m2
    small = area[(class_id == 1) & (area < 1000)].sum()
    assert abs(shapely.area(g2).sum() - (water - small)) <= 5.0 * shapely.length(g2).sum()


# ---------------------------------------------------------------- packaging, qgis_process

def test_built_zip_installs_into_a_fresh_plugin_path_and_loads(tmp_path):
    import geoseg
    build = subprocess.run([sys.executable, str(REPO / "scripts" / "build_qgis_plugin.py"), "--out", str(tmp_path)],
                           capture_output=True, text=True)
    assert build.returncode == 0, build.stderr
    zpath = Path(build.stdout.strip())
    assert zpath.name == f"geoseg_qgis-{geoseg.__version__}.zip"
    names = zipfile.ZipFile(zpath).namelist()
    assert "geoseg_qgis/metadata.txt" in names and "geoseg_qgis/__init__.py" in names
    assert all(n.startswith("geoseg_qgis/") for n in names)
    assert not [n for n in names if n.endswith(".pyc") or "__pycache__" in n or "test" in n.lower()]
    plugins = tmp_path / "plugins"
    zipfile.ZipFile(zpath).extractall(plugins)
    script = f"""
import os, sys
os.environ["QT_QPA_PLATFORM"] = "offscreen"
from qgis.core import QgsApplication
app = QgsApplication([], False); app.initQgis()
sys.path.append("/usr/share/qgis/python/plugins")
import qgis.utils
qgis.utils.plugin_paths = [{str(plugins)!r}]
sys.path.insert(0, {str(plugins)!r})
from processing.core.Processing import Processing; Processing.initialize()
assert qgis.utils.loadPlugin("geoseg_qgis"), "loadPlugin"
assert qgis.utils.startPlugin("geoseg_qgis"), "startPlugin"
assert QgsApplication.processingRegistry().algorithmById("geoseg:segment") is not None
assert qgis.utils.plugins["geoseg_qgis"].__class__.__module__.startswith("geoseg_qgis")
assert sys.modules["geoseg_qgis"].__file__.startswith({str(plugins)!r})
print("ok")
os._exit(0)
"""
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert proc.stdout.strip().endswith("ok"), proc.stderr[-2000:]


@pytest.mark.skipif(not Path(QGIS_PROCESS).exists(), reason="qgis_process.bin (Debian package qgis) not installed")
def test_qgis_process_runs_segment_and_class_areas(tmp_path):
    """The headless recipe of the README: fresh HOME, QGIS_PLUGINPATH, plugins enable, run.
    qgis_process runs Debian's own Python (numpy 1.24, no geoseg): Segment and Class
    areas both go through geoseg's environment."""
    plugins = tmp_path / "plugins"
    plugins.mkdir()
    (plugins / "geoseg_qgis").symlink_to(PLUGIN_DIR / "geoseg_qgis")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "VIRTUAL_ENV"))}
    env.update(HOME=str(tmp_path), QT_QPA_PLATFORM="offscreen", XDG_RUNTIME_DIR=str(tmp_path),
               QGIS_PLUGINPATH=str(plugins), GEOSEG_EXECUTABLE=str(GEOSEG_EXE))
    env["PATH"] = "/usr/bin:/bin"
    enable = subprocess.run([QGIS_PROCESS, "plugins", "enable", "geoseg_qgis"], env=env, capture_output=True,
                            text=True, timeout=120)
    assert enable.returncode == 0, enable.stderr
    run = subprocess.run([QGIS_PROCESS, "--json", "run", "geoseg:segment", "--", f"INPUT={SCENE}", f"MODEL={MODEL}",
                          f"OUTPUT={tmp_path / 'q.tif'}", f"AREAS={tmp_path / 'q.csv'}"],
                         env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-2000:]
    results = json.loads(run.stdout)["results"]
    assert results["OUTPUT"] == str(tmp_path / "q.tif")
    geoseg_cli("predict", MODEL, SCENE, tmp_path / "c.tif", "--areas")
    assert sha(tmp_path / "q.tif") == sha(tmp_path / "c.tif")
    run = subprocess.run([QGIS_PROCESS, "--json", "run", "geoseg:classareas", "--", f"INPUT={tmp_path / 'q.tif'}",
                          f"OUTPUT={tmp_path / 'a.csv'}"], env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-2000:]
    assert (tmp_path / "a.csv").read_text() == (tmp_path / "c_areas.csv").read_text()


def test_the_processing_setting_comes_first(geoseg_plugin, monkeypatch):
    """Processing ▸ Options ▸ Providers ▸ geoseg ▸ geoseg executable beats the environment
    variable; a wrong setting names itself in the error."""
    from processing.core.ProcessingConfig import ProcessingConfig

    from geoseg_qgis import runner
    monkeypatch.setattr(runner, "_handshakes", {})
    assert ProcessingConfig.getSetting(runner.SETTING) is not None or runner.SETTING in ProcessingConfig.settings
    monkeypatch.setenv("GEOSEG_EXECUTABLE", "/nonexistent/geoseg")
    ProcessingConfig.setSettingValue(runner.SETTING, str(GEOSEG_EXE))
    try:
        assert runner.find_geoseg() == [str(GEOSEG_EXE)]
        ProcessingConfig.setSettingValue(runner.SETTING, shutil.which("true"))   # exists, is not geoseg
        with pytest.raises(qgis_core.QgsProcessingException,
                           match="Processing setting 'geoseg executable'.*is not a working geoseg"):
            runner.find_geoseg()
    finally:
        ProcessingConfig.setSettingValue(runner.SETTING, "")


@pytest.mark.parametrize("alg", ["classareas", "vectorize"])
def test_cancel_in_process_algorithms_leaves_nothing(geoseg_plugin, qgis_processing, tmp_path, make_geotiff, alg):
    from rasterio.transform import from_origin
    rng = np.random.default_rng(1)
    cls = np.repeat(np.repeat((rng.random((128, 128)) > 0.5).astype(np.uint8), 16, 0), 16, 1)
    src = make_geotiff(cls, transform=from_origin(0, 0, 10, 10), nodata=255, name="cls.tif",
                       tiled=True, blockxsize=256, blockysize=256)
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    out = out_dir / ("a.csv" if alg == "classareas" else "v.gpkg")
    fb = Recorder(cancel_at_first_progress=True)
    with pytest.raises(qgis_core.QgsProcessingException, match="cancelled"):
        qgis_processing.run(f"geoseg:{alg}", {"INPUT": str(src), "OUTPUT": str(out)}, feedback=fb)
    assert fb.cancelled_at is not None
    assert list(out_dir.iterdir()) == []


def test_layers_in_archives_and_inputs_never_outputs(geoseg_plugin, qgis_processing, geoseg_exe, tmp_path,
                                                      monkeypatch):
    """A raster layer inside a zip reaches geoseg as GDAL's name for it; in-process Class
    areas refuses its own input as the output (as the child process does)."""
    import zipfile

    from geoseg_qgis import algorithms
    with zipfile.ZipFile(tmp_path / "a.zip", "w") as z:
        z.write(TRUTH, "t.tif")
    layer = qgis_core.QgsRasterLayer(f"/vsizip/{tmp_path}/a.zip/t.tif", "zipped")
    assert layer.isValid()
    qgis_core.QgsProject.instance().addMapLayer(layer)
    try:
        qgis_processing.run("geoseg:classareas", {"INPUT": layer.id(), "OUTPUT": str(tmp_path / "z.csv")})
    finally:
        qgis_core.QgsProject.instance().removeMapLayer(layer.id())
    assert (tmp_path / "z.csv").read_text() == geoseg_cli("areas", TRUTH).stdout
    victim = tmp_path / "victim.tif"
    shutil.copy(TRUTH, victim)
    before = victim.read_bytes()
    for in_process in (True, False):
        monkeypatch.setattr(algorithms, "core_importable", lambda v=in_process: v)
        with pytest.raises(qgis_core.QgsProcessingException, match="same file as the input"):
            qgis_processing.run("geoseg:classareas", {"INPUT": str(victim), "OUTPUT": str(victim)})
    assert victim.read_bytes() == before


@pytest.mark.parametrize("in_process", [True, False])
def test_vectorize_accepts_processings_geopackage_destination(geoseg_plugin, qgis_processing, geoseg_exe, tmp_path,
                                                             monkeypatch, in_process):
    """"Save to GeoPackage…" gives ogr:dbname='x.gpkg' table="name" (geom): the polygons go
    to that file as layer "name"; into an existing GeoPackage its other layers stay."""
    import pyogrio
    from geoseg_qgis import algorithms
    monkeypatch.setattr(algorithms, "core_importable", lambda: in_process)
    truth = Path(shutil.copy(TRUTH, tmp_path / "truth.tif"))
    gpkg = tmp_path / "polys.gpkg"
    res = qgis_processing.run("geoseg:vectorize", {
        "INPUT": str(truth), "CLASSES": "1", "OUTPUT": f"ogr:dbname='{gpkg}' table=\"water\" (geom)"})
    assert res["OUTPUT"] == f"{gpkg}|layername=water"
    def layers():
        return sorted(name for name, _ in pyogrio.list_layers(gpkg) if name != "layer_styles")
    assert layers() == ["water"]
    n_water = len(pyogrio.raw.read(gpkg, layer="water", read_geometry=False)[3][0])
    assert n_water > 0
    qgis_processing.run("geoseg:vectorize", {"INPUT": str(truth),
                                             "OUTPUT": f"ogr:dbname='{gpkg}' table=\"all classes\" (geom)"})
    assert layers() == ["all classes", "water"]
    assert len(pyogrio.raw.read(gpkg, layer="water", read_geometry=False)[3][0]) == n_water
    layer = qgis_core.QgsVectorLayer(f"{gpkg}|layername=all classes", "v", "ogr")
    assert layer.isValid() and layer.featureCount() == n_water   # (class 0 is the truth's nodata)
    layer.loadDefaultStyle()   # the class colours came along
    assert layer.renderer().type() == "categorizedSymbol"
    assert sorted(p.name for p in tmp_path.iterdir() if not p.name.startswith("truth")) == ["polys.gpkg"]


def test_segment_output_without_extension_gets_tif(geoseg_plugin, qgis_processing, geoseg_exe, tmp_path):
    """As QGIS's own raster destinations: a name without the format's extension gets .tif."""
    res = qgis_processing.run("geoseg:segment", {"INPUT": str(SCENE), "MODEL": str(MODEL),
                                                 "OUTPUT": str(tmp_path / "water"),
                                                 "CONFIDENCE": str(tmp_path / "conf")})
    assert res["OUTPUT"] == str(tmp_path / "water.tif") and res["CONFIDENCE"] == str(tmp_path / "conf.tif")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["conf.tif", "water.aux.xml", "water.qml", "water.tif"] \
        or sorted(p.name for p in tmp_path.iterdir()) == ["conf.tif", "water.qml", "water.tif", "water.tif.aux.xml"]
