import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import rasterio
from click.testing import CliRunner

from geoseg_cli.main import cli

GEOSEG = [sys.executable, "-m", "geoseg_cli.main"]


@pytest.fixture
def runner():
    return CliRunner()


def invoke(runner, *args):
    return runner.invoke(cli, [str(a) for a in args], catch_exceptions=False)


def assert_clean_error(res, pattern):
    assert res.exit_code != 0, res.output
    out = res.output.strip()
    assert "Traceback" not in out
    lines = [l for l in out.splitlines() if l.startswith("Error")]
    assert len(lines) == 1, out
    assert pattern.lower() in lines[0].lower(), out


def test_info(runner, tiny_bundle):
    res = invoke(runner, "info", tiny_bundle)
    assert res.exit_code == 0 and "classes:" in res.output and "b1, b2, b3" in res.output
    res = invoke(runner, "info", "--json", tiny_bundle)
    assert '"format": "geoseg-model"' in res.output


def test_predict_and_areas(runner, tiny_bundle, rgb_byte, tmp_path):
    out = tmp_path / "o.tif"
    res = invoke(runner, "predict", tiny_bundle, rgb_byte, out, "--areas", "--preview", "--confidence",
                 "--batch-size", 4)
    assert res.exit_code == 0, res.output
    for name in ("o.tif", "o.qml", "o_areas.csv", "o_preview.png", "o_confidence.tif"):
        assert (tmp_path / name).exists(), name
    res = invoke(runner, "areas", out)
    assert res.exit_code == 0
    assert res.output.splitlines()[0] == "class_id,class_name,pixels,area_m2,area_ha,area_km2,percent"
    assert res.output == (tmp_path / "o_areas.csv").read_text()
    # the CSV of `areas` on the output equals the one counted while predicting
    res = invoke(runner, "areas", out, "-o", tmp_path / "b.csv")
    assert res.exit_code == 0 and (tmp_path / "b.csv").read_text() == (tmp_path / "o_areas.csv").read_text()
    res = invoke(runner, "areas", out, "-o", tmp_path / "b.csv")
    assert_clean_error(res, "exists")


def test_predict_many_into_directory(runner, tiny_bundle, rgb_byte, tmp_path):
    a = tmp_path / "a.tif"
    b = tmp_path / "b.tif"
    shutil.copy(rgb_byte, a)
    shutil.copy(rgb_byte, b)
    outdir = tmp_path / "out"
    outdir.mkdir()
    res = invoke(runner, "predict", tiny_bundle, a, b, outdir, "--areas")
    assert res.exit_code == 0, res.output
    assert sorted(p.name for p in outdir.iterdir()) == sorted(
        ["a_classes.tif", "a_classes.qml", "a_classes.tif.aux.xml", "a_classes_areas.csv",
         "b_classes.tif", "b_classes.qml", "b_classes.tif.aux.xml", "b_classes_areas.csv"])
    res = invoke(runner, "predict", tiny_bundle, a, b, tmp_path / "nodir")
    assert_clean_error(res, "existing directory")


def test_areas_options(runner, make_geotiff, tmp_path):
    p = make_geotiff(np.array([[0, 1], [1, 1]], np.uint8), nodata=0)
    res = invoke(runner, "areas", p, "--nodata", "none", "--class-names", "0=land,1=water")
    assert res.exit_code == 0
    assert res.output.splitlines()[1:] == ["0,land,1,1.000,0.000100,0.00000100,25.0000",
                                           "1,water,3,3.000,0.000300,0.00000300,75.0000"]
    assert_clean_error(invoke(runner, "areas", p, "--nodata", "abc"), "not a number")
    assert_clean_error(invoke(runner, "areas", p, "--class-names", "land"), "ID=NAME")
    assert_clean_error(invoke(runner, "areas", p, "--zone-field", "x"), "needs --aoi")


def _truncated(src, dst):
    data = Path(src).read_bytes()
    dst.write_bytes(data[: len(data) // 3])
    return dst


@pytest.mark.parametrize("case", ["missing", "not_raster", "zero_byte", "truncated", "band_count", "band_names",
                                  "same_as_input", "exists", "missing_dir", "unwritable_dir", "corrupt_model",
                                  "no_metadata", "bad_tile", "bad_overlap", "model_missing"])
def test_bad_input_one_line_error_nothing_left(runner, tiny_bundle, rgb_byte, make_geotiff, tmp_path, case):
    work = tmp_path / "w"
    work.mkdir()
    src = work / "in.tif"
    shutil.copy(rgb_byte, src)
    out = work / "out.tif"
    model = tiny_bundle
    extra = []
    expect = {"missing": "not found", "not_raster": "cannot open", "zero_byte": "empty", "truncated": "",
              "band_count": "4 bands but the model expects 3", "band_names": "unknown band name",
              "same_as_input": "same file as the input", "exists": "exists", "missing_dir": "does not exist",
              "unwritable_dir": "", "corrupt_model": "not a geoseg model bundle", "no_metadata": "geoseg.json",
              "bad_tile": "tile size", "bad_overlap": "less than half", "model_missing": "model file not found"}[case]
    if case == "missing":
        src = work / "nope.tif"
    elif case == "not_raster":
        src = work / "notes.tif"
        src.write_text("this is not a raster\n" * 100)
    elif case == "zero_byte":
        src = work / "empty.tif"
        src.write_bytes(b"")
    elif case == "truncated":
        src = _truncated(Path(__file__).resolve().parents[1] / "geoseg" / "data" / "s2_shanghai_scene.tif",
                         work / "trunc.tif")
        extra = ["--bands", "1,2,3"]
    elif case == "band_count":
        src = make_geotiff(np.ones((4, 20, 20), np.uint8), name="four.tif")
        shutil.move(src, work / "four.tif")
        src = work / "four.tif"
    elif case == "band_names":
        extra = ["--bands", "red,green,blue"]
    elif case == "same_as_input":
        out = src
        extra = ["--overwrite"]
    elif case == "exists":
        out.write_bytes(b"keep me")
    elif case == "missing_dir":
        out = work / "no" / "such" / "out.tif"
    elif case == "unwritable_dir":
        out = Path("/proc/geoseg-test/out.tif") if os.geteuid() == 0 else work / "ro" / "out.tif"
        if os.geteuid() != 0:
            (work / "ro").mkdir()
            (work / "ro").chmod(0o500)
    elif case == "corrupt_model":
        model = work / "m.geoseg"
        model.write_bytes(b"\x00" * 1000)
    elif case == "no_metadata":
        import zipfile
        model = work / "m.geoseg"
        with zipfile.ZipFile(tiny_bundle) as zi, zipfile.ZipFile(model, "w") as zo:
            zo.writestr("model.keras", zi.read("model.keras"))
    elif case == "bad_tile":
        extra = ["--tile-size", "31"]
    elif case == "bad_overlap":
        extra = ["--overlap", "16"]
    elif case == "model_missing":
        model = work / "nomodel.geoseg"
    before = {p: p.stat().st_mtime_ns for p in work.rglob("*")}
    res = invoke(runner, "predict", model, src, out, "--areas", *extra)
    assert_clean_error(res, expect)
    after = {p: p.stat().st_mtime_ns for p in work.rglob("*")}
    assert after == before  # nothing written, nothing changed (inputs and old outputs untouched)


def test_demo_command_fails_cleanly_on_file_target(runner, tmp_path):
    f = tmp_path / "file"
    f.write_text("x")
    assert_clean_error(invoke(runner, "demo", f), "is a file")


def _env():
    env = dict(os.environ)
    env["PYTHONPATH"] = str(Path(__file__).resolve().parents[1]) + os.pathsep + env.get("PYTHONPATH", "")
    return env


def test_subprocess_help_and_error():
    r = subprocess.run(GEOSEG + ["--help"], capture_output=True, text=True, env=_env(), timeout=120)
    assert r.returncode == 0 and "predict" in r.stdout and "areas" in r.stdout
    r = subprocess.run(GEOSEG + ["areas", "/nonexistent.tif"], capture_output=True, text=True, env=_env(),
                       timeout=120)
    assert r.returncode == 1 and r.stderr.strip() == "Error: input not found: /nonexistent.tif"


def test_subprocess_killed_midway_leaves_nothing(tiny_bundle, make_geotiff, tmp_path):
    """SIGTERM (cleanup runs) and SIGKILL (no cleanup) both leave no file at the target."""
    rng = np.random.default_rng(0)
    src = make_geotiff((rng.random((3, 1500, 1500)) * 255).astype(np.uint8), name="big.tif")
    for sig in (signal.SIGTERM, signal.SIGKILL):
        out = tmp_path / f"out_{sig}.tif"
        p = subprocess.Popen(GEOSEG + ["predict", str(tiny_bundle), str(src), str(out), "--areas",
                                       "--tile-size", "32", "--overlap", "8", "--batch-size", "2"],
                             env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        deadline = time.time() + 120
        # wait until the temporary output exists, i.e. the run is under way
        while time.time() < deadline and not list(tmp_path.glob(f".out_{sig}.geoseg-tmp-*")):
            if p.poll() is not None:
                break
            time.sleep(0.05)
        assert p.poll() is None, p.stderr.read().decode()
        time.sleep(0.5)
        p.send_signal(sig)
        p.wait(60)
        assert p.returncode != 0
        assert not out.exists() and not (tmp_path / f"out_{sig}_areas.csv").exists()
        if sig == signal.SIGTERM:
            assert not list(tmp_path.glob(".out_*geoseg-tmp*"))


def test_areas_and_info_never_load_tensorflow(tmp_path):
    """The plugin and the areas command must load fast and work without TensorFlow."""
    code = ("import sys, runpy; sys.argv = ['geoseg', '-q', 'areas', sys.argv[1]]\n"
            "from geoseg_cli.main import cli\n"
            "try:\n    cli.main(standalone_mode=False)\nexcept SystemExit:\n    pass\n"
            "from geoseg.bundle import read_metadata\nfrom geoseg.demo import MODEL\nread_metadata(MODEL)\n"
            "print('TF' if 'tensorflow' in sys.modules or 'keras' in sys.modules else 'NO-TF')")
    r = subprocess.run([sys.executable, "-c", code, str(Path(__file__).parent / "data" / "nc_strata.tif")],
                       capture_output=True, text=True, env=_env(), timeout=120)
    assert r.stdout.strip().splitlines()[-1] == "NO-TF", r.stdout + r.stderr
