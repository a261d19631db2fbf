import json
import os
import shutil
import signal
import subprocess
import sys
import time
from importlib.metadata import entry_points
from pathlib import Path

import click
import numpy as np
import pytest
import rasterio

from geoseg.errors import OutputExistsError, RasterError
from geoseg.unit import BLENDS, TTA_VIEWS
from geoseg_cli.main import cli, error_message
from geoseg_cli.options import ColourMap

ROOT = Path(__file__).resolve().parents[1]
GEOSEG = [sys.executable, "-m", "geoseg_cli.main"]
RIO = Path(sys.executable).parent / "rio"


def invoke(runner, *args):
    return runner.invoke(cli, [str(a) for a in args], catch_exceptions=False)


def assert_clean_error(res, pattern, exit_code=None):
    """One ``Error...`` line (click may print its usage lines above it), no traceback."""
    assert res.exit_code != 0, res.output
    if exit_code is not None:
        assert res.exit_code == exit_code, res.output
    out = res.output.strip()
    assert "Traceback" not in out
    lines = [l for l in out.splitlines() if l.startswith("Error")]
    assert len(lines) == 1, out
    assert pattern, "give a real pattern"
    assert pattern.lower() in lines[0].lower(), out
    return lines[0]


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
    assert_clean_error(res, "exists: ")
    assert res.output.strip().endswith("(use --overwrite to replace it)")


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
    # a bad input among several: reported, the others written, exit 1, nothing of it left
    bad = tmp_path / "bad.tif"
    bad.write_text("not a raster")
    out2 = tmp_path / "out2"
    out2.mkdir()
    res = invoke(runner, "predict", tiny_bundle, a, bad, b, out2)
    assert_clean_error(res, "1 of 3 inputs failed (bad.tif: cannot open")
    assert sorted(p.name for p in out2.iterdir() if p.suffix == ".tif") == ["a_classes.tif", "b_classes.tif"]
    assert not any(p.name.startswith((".bad", "bad")) for p in out2.iterdir())


def test_areas_options(runner, make_geotiff, tmp_path):
    p = make_geotiff(np.array([[0, 1], [1, 1]], np.uint8), nodata=0)
    res = invoke(runner, "areas", p, "--nodata", "none", "--class-names", "0=land,1=water")
    assert res.exit_code == 0
    assert res.output.splitlines()[1:] == ["0,land,1,1.000,0.000100,0.00000100,25.0000",
                                           "1,water,3,3.000,0.000300,0.00000300,75.0000"]
    assert_clean_error(invoke(runner, "areas", p, "--zone-field", "x"), "needs --aoi", exit_code=2)


# --- parameter types, through the real commands ----------------------------------------------------------


def _classes(output: str) -> list[tuple[str, str, str]]:
    """(class_id, class_name, pixels) rows of an areas CSV."""
    return [tuple(r.split(",")[:3]) for r in output.splitlines()[1:]]


def test_nodata_type(runner, make_geotiff):
    p = make_geotiff(np.array([[0, 1], [1, 2]], np.uint8), nodata=0)
    assert _classes(invoke(runner, "areas", p).output) == [("1", "class_1", "2"), ("2", "class_2", "1")]
    assert _classes(invoke(runner, "areas", p, "--nodata", "auto").output) == [("1", "class_1", "2"),
                                                                              ("2", "class_2", "1")]
    assert [r[0] for r in _classes(invoke(runner, "areas", p, "--nodata", "none").output)] == ["0", "1", "2"]
    assert [r[0] for r in _classes(invoke(runner, "areas", p, "--nodata", "NONE").output)] == ["0", "1", "2"]
    assert [r[0] for r in _classes(invoke(runner, "areas", p, "--nodata", "1").output)] == ["0", "2"]
    assert [r[0] for r in _classes(invoke(runner, "areas", p, "--nodata", "2.0").output)] == ["0", "1"]


def test_class_names_type(runner, make_geotiff, tiny_bundle, tmp_path):
    p = make_geotiff(np.array([[0, 1], [1, 1]], np.uint8))
    names = tmp_path / "names.json"
    names.write_text('{"0": "land", "1": "water"}')
    res = invoke(runner, "areas", p, "--class-names", names)
    assert res.exit_code == 0 and [r[1] for r in _classes(res.output)] == ["land", "water"]
    res = invoke(runner, "areas", p, "--class-names", tiny_bundle)   # a .geoseg bundle: its classes
    assert res.exit_code == 0 and [r[1] for r in _classes(res.output)] == ["background", "bright"]
    res = invoke(runner, "areas", p, "--class-names", " 0 = land , 1=water ")
    assert res.exit_code == 0 and [r[1] for r in _classes(res.output)] == ["land", "water"]


def test_int_list_type(runner, tiny_bundle, rgb_byte, tmp_path):
    """--ignore 0 leaves truth class 0 out of the confusion matrix; 0,1 leaves everything out."""
    out = tmp_path / "o.tif"
    assert invoke(runner, "predict", tiny_bundle, rgb_byte, out).exit_code == 0
    res = runner.invoke(cli, ["evaluate", str(out), str(out)], catch_exceptions=False)
    full = json.loads(res.stdout)
    assert res.exit_code == 0 and full["classes"][0]["truth_pixels"] > 0
    res = runner.invoke(cli, ["evaluate", str(out), str(out), "--ignore", "0"], catch_exceptions=False)
    got = json.loads(res.stdout)
    assert got["classes"][0]["truth_pixels"] == 0
    assert got["classes"][1]["truth_pixels"] == full["classes"][1]["truth_pixels"]
    res = runner.invoke(cli, ["evaluate", str(out), str(out), "--ignore", "0,1"], catch_exceptions=False)
    assert json.loads(res.stdout)["pixels"] == 0


def test_bands_type(runner, tiny_bundle, rgb_byte, tmp_path):
    res = invoke(runner, "predict", tiny_bundle, rgb_byte, tmp_path / "a.tif", "--bands", "1,2,3")
    assert res.exit_code == 0, res.output
    res = invoke(runner, "predict", tiny_bundle, rgb_byte, tmp_path / "b.tif", "--bands", " 3, 2 ,1")
    assert res.exit_code == 0, res.output
    with rasterio.open(tmp_path / "a.tif") as a, rasterio.open(tmp_path / "b.tif") as b:
        assert not np.array_equal(a.read(1), b.read(1))    # the order reached the model
    # names are passed on as names: the core resolves them, and the CLI adds its hint
    res = invoke(runner, "predict", tiny_bundle, rgb_byte, tmp_path / "c.tif", "--bands", "red,green,blue")
    assert_clean_error(res, "unknown band name 'red'", exit_code=1)
    assert res.output.strip().endswith("(choose them with --bands)")


def _colour_folders(tmp_path):
    from PIL import Image
    rng = np.random.default_rng(3)
    (tmp_path / "img").mkdir()
    (tmp_path / "msk").mkdir()
    Image.fromarray(rng.integers(0, 256, (40, 40, 3), dtype=np.uint8)).save(tmp_path / "img" / "a.png")
    truth = np.zeros((40, 40), int)
    truth[:, 20:] = 1
    truth[:10] = 2                                   # a colour not in the map
    colours = np.array([[0, 0, 255], [255, 0, 0], [0, 255, 0]], np.uint8)
    Image.fromarray(colours[truth]).save(tmp_path / "msk" / "a.png")
    return tmp_path / "img", tmp_path / "msk"


def _mask_values(out_dir):
    vals = {}
    for p in sorted(Path(out_dir).rglob("masks/*")):
        with rasterio.open(p) as src:
            v, n = np.unique(src.read(1), return_counts=True)
        for a, b in zip(v.tolist(), n.tolist()):
            vals[a] = vals.get(a, 0) + b
    return vals


def test_rgb_map_and_fractions_types(runner, tmp_path):
    img, msk = _colour_folders(tmp_path)
    res = invoke(runner, "tile", tmp_path / "c1", "--images", img, "--masks", msk, "--chip", 40,
                 "--rgb-map", "#0000FF=0,ff0000=1", "--split", "1,0,0")
    assert res.exit_code == 0, res.output
    assert _mask_values(tmp_path / "c1") == {0: 20 * 30, 1: 20 * 30, 255: 10 * 40}
    # a config file: its [mask] rgb_map and ignore_index
    cfg = tmp_path / "colours.toml"
    cfg.write_text('[mask]\nrgb_map = {"#0000FF" = 0, "#00FF00" = 1}\nignore_index = 9\n')
    res = invoke(runner, "tile", tmp_path / "c2", "--images", img, "--masks", msk, "--chip", 40,
                 "--rgb-map", cfg, "--split", "1.0,0.0,0.0")
    assert res.exit_code == 0, res.output
    assert _mask_values(tmp_path / "c2") == {0: 20 * 30, 1: 10 * 40, 9: 20 * 30}


def test_rgb_map_type_convert():
    t = cli.commands["tile"]
    param = next(p for p in t.params if p.name == "rgb_map")
    assert param.type.convert("#3C1098=0, #8429F6 = 1", param, None) == ColourMap(
        {(0x3C, 0x10, 0x98): 0, (0x84, 0x29, 0xF6): 1}, None)


BAD_VALUES = [
    # (command line after the command's inputs, option, words of the message)
    ("areas", ["--nodata", "abc"], "--nodata", "'abc' is not a number, 'none' or 'auto'"),
    ("areas", ["--nodata", ""], "--nodata", "'' is not a number"),
    ("areas", ["--class-names", "land"], "--class-names", "expected ID=NAME pairs"),
    ("areas", ["--class-names", "0=land,,1=water"], "--class-names", "empty item"),
    ("areas", ["--class-names", "0=land,0=water"], "--class-names", "class 0 is named twice"),
    ("areas", ["--class-names", "0="], "--class-names", "expected ID=NAME pairs"),
    ("areas", ["--class-names", "NOFILE.json"], "--class-names", "file not found"),
    ("areas", ["--class-names", "BADJSON"], "--class-names", "expected a JSON object"),
    ("areas", ["--class-names", "NOFILE.geoseg"], "--class-names", "not found"),
    ("predict", ["--bands", "1,,2"], "--bands", "empty item"),
    ("predict", ["--bands", "1,2,"], "--bands", "empty item"),
    ("predict", ["--bands", "1,2,1"], "--bands", "band 1 is given twice"),
    ("predict", ["--bands", "red,red,blue"], "--bands", "band red is given twice"),
    ("predict", ["--bands", "0,1,2"], "--bands", "band indexes start at 1"),
    ("predict", ["--blend", "mean"], "--blend", "'mean' is not one of 'crop', 'cosine'"),
    ("predict", ["--tta", "d8"], "--tta", "'d8' is not one of 'none', 'flip', 'd4'"),
    ("evaluate", ["--ignore", "1,x"], "--ignore", "expected integers like 5 or 0,9"),
    ("evaluate", ["--ignore", "1,,2"], "--ignore", "empty item"),
    ("evaluate", ["--truth-nodata", "zero"], "--truth-nodata", "'zero' is not a number"),
    ("evaluate", ["--rgb-map", "#3C1098=0,#3c1098=1"], "--rgb-map", "colour #3c1098 is given twice"),
    ("tile", ["--rgb-map", "#3C1098"], "--rgb-map", "expected COLOUR=CLASS items"),
    ("tile", ["--rgb-map", "#3C10=1"], "--rgb-map", "is not a colour"),
    ("tile", ["--rgb-map", "#3C1098=255"], "--rgb-map", "must be 0..254"),
    ("tile", ["--rgb-map", "NOFILE.toml"], "--rgb-map", "config file not found"),
    ("tile", ["--split", "0.7,0.3"], "--split", "expected TRAIN,VALID,TEST fractions"),
    ("tile", ["--split", "a,b,c"], "--split", "expected TRAIN,VALID,TEST fractions"),
    ("tile", ["--split", "0.5,0.5,0.5"], "--split", "must sum to 1"),
    ("tile", ["--split", "1.5,-0.5,0"], "--split", "between 0 and 1"),
    ("tile", ["--label-nodata", "x"], "--label-nodata", "'x' is not a number"),
]


@pytest.mark.parametrize("command, args, option, words", BAD_VALUES,
                         ids=[f"{c}{a[0]}={a[1]}" for c, a, _, _ in BAD_VALUES])
def test_bad_option_values(runner, tiny_bundle, rgb_byte, tmp_path, command, args, option, words):
    """Each bad value: click's one-line "Invalid value for '--x': ..." and exit code 2,
    before anything is read or written."""
    if args[1] == "BADJSON":
        args = [args[0], str(tmp_path / "bad.json")]
        Path(args[1]).write_text("[1, 2]")
    args = [str(tmp_path / a) if a.startswith("NOFILE") else a for a in args]
    inputs = {"areas": [rgb_byte], "predict": [tiny_bundle, rgb_byte, tmp_path / "o.tif"],
              "evaluate": [rgb_byte, rgb_byte], "tile": [tmp_path / "chips", "--image", rgb_byte,
                                                         "--label", rgb_byte]}[command]
    before = sorted(tmp_path.iterdir())
    res = invoke(runner, command, *inputs, *args)
    line = assert_clean_error(res, f"Error: Invalid value for '{option}': ", exit_code=2)
    assert words.lower() in line.lower()
    assert sorted(tmp_path.iterdir()) == before


def test_blend_and_tta_choices_are_the_registries():
    for name in ("predict", "evaluate"):
        params = {p.name: p for p in cli.commands[name].params}
        assert list(params["tta"].type.choices) == list(TTA_VIEWS)
    params = {p.name: p for p in cli.commands["predict"].params}
    assert list(params["blend"].type.choices) == list(BLENDS)
    assert params["blend"].default in BLENDS and params["tta"].default in TTA_VIEWS


# --- core errors: one line plus the CLI's hint for the error's option --------------------------------------


def test_output_exists_gets_the_overwrite_hint(runner, tiny_bundle, rgb_byte, tmp_path):
    out = tmp_path / "o.tif"
    out.write_bytes(b"keep me")
    res = invoke(runner, "predict", tiny_bundle, rgb_byte, out)
    assert_clean_error(res, f"output exists: {out} (use --overwrite to replace it)", exit_code=1)
    assert out.read_bytes() == b"keep me"


def test_label_value_gets_the_label_nodata_hint(runner, make_geotiff, tmp_path):
    img = make_geotiff(np.ones((1, 16, 16), np.uint8), name="img.tif")
    lab = make_geotiff(np.full((1, 16, 16), 300, np.uint16), name="lab.tif")
    res = invoke(runner, "tile", tmp_path / "chips", "--image", img, "--label", lab, "--chip", 16)
    assert_clean_error(res, "300", exit_code=1)
    assert res.output.strip().endswith("(set --label-nodata?)")
    assert not (tmp_path / "chips").exists()


def test_error_message_hints():
    @click.command()
    @click.option("--tile-size", type=int)
    @click.option("--split", "fractions")
    def cmd(tile_size, fractions):
        pass

    e = OutputExistsError("output exists: /x.tif", option="overwrite")
    assert error_message(e, cmd) == "output exists: /x.tif"           # the command has no --overwrite
    assert error_message(e, cli.commands["predict"]) == "output exists: /x.tif (use --overwrite to replace it)"
    assert error_message(RasterError("too big", option="tile_size"), cmd) == "too big (see --tile-size)"
    assert error_message(RasterError("bad", option="fractions"), cmd) == "bad (see --split)"
    assert error_message(RasterError("two\nlines"), cmd) == "two lines"
    assert "--" not in error_message(RasterError("no option"), cli.commands["predict"])


# --- bad inputs: one line, nothing written ----------------------------------------------------------------


def _truncated(src, dst):
    data = Path(src).read_bytes()
    assert int.from_bytes(data[4:8], "little") < len(data) // 2   # the IFD survives the cut
    dst.write_bytes(data[: len(data) // 3])
    return dst


def _make_unwritable(d: Path) -> None:
    """A directory the refusal must catch, also as root (who may write into a 0o500 one)."""
    d.mkdir()
    if os.geteuid() != 0:
        d.chmod(0o500)
        return
    if shutil.which("chattr") is None:
        pytest.skip("running as root without chattr: cannot make a directory root may not write to")
    r = subprocess.run(["chattr", "+i", str(d)], capture_output=True, text=True)
    if r.returncode != 0:
        pytest.skip(f"running as root and chattr +i failed ({r.stderr.strip()}): no unwritable directory")


def _undo_unwritable(d: Path) -> None:
    if os.geteuid() == 0 and shutil.which("chattr"):
        subprocess.run(["chattr", "-i", str(d)], capture_output=True)
    elif d.exists():
        d.chmod(0o700)


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
    expect = {"missing": "not found", "not_raster": "cannot open", "zero_byte": "empty",
              "truncated": "truncated or corrupt",
              "band_count": "4 bands but the model expects 3", "band_names": "unknown band name",
              "same_as_input": "same file as the input", "exists": "exists", "missing_dir": "does not exist",
              "unwritable_dir": "not writable", "corrupt_model": "not a geoseg model bundle",
              "no_metadata": "geoseg.json", "bad_tile": "tile size", "bad_overlap": "less than half",
              "model_missing": "model file not found"}[case]
    if case == "missing":
        src = work / "nope.tif"
    elif case == "not_raster":
        src = work / "notes.tif"
        src.write_text("this is not a raster\n" * 100)
    elif case == "zero_byte":
        src = work / "empty.tif"
        src.write_bytes(b"")
    elif case == "truncated":   # the header opens, the pixels are cut off
        rng = np.random.default_rng(1)
        full = make_geotiff((rng.random((3, 200, 200)) * 255).astype(np.uint8), name="full.tif")
        src = _truncated(full, work / "trunc.tif")
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
        out = work / "ro" / "out.tif"
        _make_unwritable(out.parent)
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
        extra = ["--tile-size", "32", "--overlap", "16"]
    elif case == "model_missing":
        model = work / "nomodel.geoseg"
    before = {p: p.stat().st_mtime_ns for p in work.rglob("*")}
    try:
        res = invoke(runner, "predict", model, src, out, "--areas", *extra)
        after = {p: p.stat().st_mtime_ns for p in work.rglob("*")}
    finally:
        if case == "unwritable_dir":
            _undo_unwritable(out.parent)
    assert_clean_error(res, expect, exit_code=1)
    assert after == before  # nothing written, nothing changed (inputs and old outputs untouched)


def test_demo_command_fails_cleanly_on_file_target(runner, tmp_path):
    f = tmp_path / "file"
    f.write_text("x")
    assert_clean_error(invoke(runner, "demo", f), "is a file", exit_code=2)


# --- real processes: the console script, `rio geoseg`, signals, imports ----------------------------------


def _env():
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    return env


def test_subprocess_help_and_error():
    r = subprocess.run(GEOSEG + ["--help"], capture_output=True, text=True, env=_env(), timeout=120)
    assert r.returncode == 0 and "predict" in r.stdout and "areas" in r.stdout
    r = subprocess.run(GEOSEG + ["areas", "/nonexistent.tif"], capture_output=True, text=True, env=_env(),
                       timeout=120)
    assert r.returncode == 1 and r.stderr.strip() == "Error: input not found: /nonexistent.tif"


def _rio_plugin_installed() -> bool:
    return RIO.exists() and any(e.name == "geoseg" and e.value == "geoseg_cli.main:cli"
                                for e in entry_points(group="rasterio.rio_plugins"))


@pytest.mark.skipif(not _rio_plugin_installed(),
                    reason="the geoseg rasterio.rio_plugins entry point is not installed (pip install -e .)")
def test_rio_plugin(tmp_path):
    """`rio geoseg ...` is the same command group, with its error mapping and -q."""
    def rio(*args):
        return subprocess.run([str(RIO), *map(str, args)], capture_output=True, text=True, env=_env(),
                              timeout=120)

    r = rio("--help")
    assert r.returncode == 0 and "geoseg" in r.stdout
    r = rio("geoseg", "--help")
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("Usage: rio geoseg [OPTIONS] COMMAND")
    assert all(c in r.stdout for c in ("predict", "areas", "info", "evaluate", "tile", "train", "demo"))
    r = rio("geoseg", "info", ROOT / "geoseg" / "data" / "s2_water.geoseg")
    assert r.returncode == 0 and "classes:" in r.stdout and "water" in r.stdout, r.stderr
    raster = ROOT / "tests" / "data" / "nc_strata.tif"
    out = tmp_path / "a.csv"
    r = rio("geoseg", "areas", raster, "-o", out)
    assert r.returncode == 0 and f"wrote {out}" in r.stderr, r.stderr
    r = rio("geoseg", "areas", raster, "-o", out)
    assert r.returncode == 1 and r.stderr.strip().splitlines()[-1] == (
        f"Error: output exists: {out} (use --overwrite to replace it)")
    r = rio("-q", "geoseg", "areas", raster, "-o", out, "--overwrite")   # rio's -q reaches geoseg
    assert r.returncode == 0 and "wrote" not in r.stderr, r.stderr
    r = rio("geoseg", "areas", raster, "--nodata", "x")
    assert r.returncode == 2 and "Invalid value for '--nodata'" in r.stderr


def test_subprocess_killed_midway_leaves_nothing(tiny_bundle, make_geotiff, tmp_path):
    """SIGTERM (cleanup runs, exit code 130) and SIGKILL (no cleanup) both leave no file at the target."""
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
        if sig == signal.SIGTERM:
            assert p.returncode == 130, p.stderr.read().decode()
            assert not list(tmp_path.glob(".out_*geoseg-tmp*"))
        else:
            assert p.returncode == -signal.SIGKILL
        assert not out.exists() and not (tmp_path / f"out_{sig}_areas.csv").exists()


@pytest.mark.parametrize("args, output", [
    (["info", ROOT / "geoseg" / "data" / "s2_water.geoseg"], "classes:"),
    (["areas", ROOT / "tests" / "data" / "nc_strata.tif"], "class_id,class_name,pixels,"),
])
def test_areas_and_info_never_load_tensorflow(args, output):
    """The plugin and the areas/info commands must load fast and work without
    TensorFlow: a real `geoseg` process, every import it makes listed by -X importtime."""
    r = subprocess.run([sys.executable, "-X", "importtime", "-m", "geoseg_cli.main", *map(str, args)],
                       capture_output=True, text=True, env=_env(), timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    assert output in r.stdout
    imported = {line.rsplit("|", 1)[-1].strip() for line in r.stderr.splitlines()
                if line.startswith("import time:")}
    assert "geoseg_cli.options" in imported and "geoseg.bundle" in imported    # the listing is real
    assert not {"tensorflow", "keras", "jax", "torch"} & imported


def test_evaluate_background_goes_to_the_core(runner, tiny_bundle, rgb_byte, tmp_path):
    """--background overrides the model's background class; without it the model's is used."""
    from geoseg.bundle import read_metadata
    truth = tmp_path / "truth.tif"
    assert invoke(runner, "predict", tiny_bundle, rgb_byte, truth).exit_code == 0
    for args, expect in (([], read_metadata(tiny_bundle).background), (["--background", "1"], 1),
                         (["--background", "0"], 0)):
        res = runner.invoke(cli, ["evaluate", "--model", str(tiny_bundle), str(rgb_byte), str(truth), *args],
                            catch_exceptions=False)
        assert res.exit_code == 0, res.output
        got = json.loads(res.stdout)
        assert got["background"] == expect
        assert got["overall_accuracy"] == 1.0   # the same engine made the truth


# ---------------------------------------------------------------- --progress jsonl (the runner protocol)

def _events(stdout: str) -> list[dict]:
    """Every stdout line is one protocol event."""
    events = [json.loads(line) for line in stdout.splitlines()]
    assert all(e["v"] == 1 and "event" in e for e in events)
    return events


def test_jsonl_protocol_predict_and_areas(tiny_bundle, rgb_byte, tmp_path):
    out = tmp_path / "c.tif"
    r = subprocess.run(GEOSEG + ["--progress", "jsonl", "predict", str(tiny_bundle), str(rgb_byte), str(out),
                                 "--areas-csv", str(tmp_path / "a.csv"), "--confidence-tif", str(tmp_path / "p.tif"),
                                 "--tile-size", "64", "--overlap", "8"],
                       capture_output=True, text=True, env=_env(), timeout=300)
    assert r.returncode == 0, r.stderr
    # TensorFlow's C++ start-up lines (absl, oneDNN) are kept off stderr
    assert "absl" not in r.stderr and "oneDNN" not in r.stderr, r.stderr
    ev = _events(r.stdout)
    progress = [(e["done"], e["total"]) for e in ev if e["event"] == "progress"]
    assert len(progress) >= 3 and progress == sorted(progress) and progress[-1][0] == progress[-1][1]
    assert ev[-1]["event"] == "result" and [e["event"] for e in ev].count("result") == 1
    res = ev[-1]["results"][0]
    assert res["outputs"]["classes"] == str(out) and Path(res["outputs"]["qml"]).is_file()
    assert res["outputs"]["areas_csv"] == str(tmp_path / "a.csv") and res["outputs"]["confidence"] == str(tmp_path / "p.tif")
    assert (tmp_path / "p.tif").is_file() and not (tmp_path / "c_areas.csv").exists()
    # the result's area rows are the CSV's rows
    import csv
    rows = list(csv.DictReader((tmp_path / "a.csv").open()))
    assert [(str(a["class_id"]), a["class_name"], str(a["pixels"])) for a in res["areas"]] == \
        [(b["class_id"], b["class_name"], b["pixels"]) for b in rows]
    # areas without -o: the table travels in the result event, not as CSV on stdout
    r = subprocess.run(GEOSEG + ["--progress", "jsonl", "areas", str(out)], capture_output=True, text=True,
                       env=_env(), timeout=120)
    assert r.returncode == 0, r.stderr
    ev = _events(r.stdout)
    assert ev[-1]["event"] == "result" and ev[-1]["areas"] == res["areas"] and ev[-1]["kind"] == "planar"


def test_jsonl_protocol_errors_warnings_and_version(tiny_bundle, rgb_byte, make_geotiff, tmp_path):
    r = subprocess.run(GEOSEG + ["--progress", "jsonl", "predict", str(tiny_bundle), str(tmp_path / "no.tif"),
                                 str(tmp_path / "o.tif")], capture_output=True, text=True, env=_env(), timeout=120)
    assert r.returncode == 1
    ev = _events(r.stdout)
    assert ev[-1]["event"] == "error" and "no.tif" in ev[-1]["message"] and "\n" not in ev[-1]["message"]
    assert r.stderr.strip().splitlines()[-1] == "Error: " + ev[-1]["message"]
    # a warning reaches the protocol as a log event (no CRS: areas in pixels)
    src = make_geotiff(np.full((3, 40, 40), 100, np.uint8), crs=None, name="nocrs.tif")
    r = subprocess.run(GEOSEG + ["--progress", "jsonl", "predict", str(tiny_bundle), str(src), str(tmp_path / "n.tif"),
                                 "--areas"],
                       capture_output=True, text=True, env=_env(), timeout=120)
    assert r.returncode == 0, r.stderr
    logs = [e for e in _events(r.stdout) if e["event"] == "log"]
    assert any(e["level"] == "warning" and "CRS" in e["message"] for e in logs), logs
    # the handshake loads no TensorFlow
    code = ("import sys; from geoseg_cli.main import cli; cli(['version', '--json'], standalone_mode=False); "
            "assert 'tensorflow' not in sys.modules and 'keras' not in sys.modules")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=_env(), timeout=60)
    assert r.returncode == 0, r.stderr
    info = json.loads(r.stdout)
    assert info["protocol"] == 1 and info["geoseg"]


def test_jsonl_protocol_sigterm_is_a_cancelled_event(tiny_bundle, make_geotiff, tmp_path):
    rng = np.random.default_rng(0)
    src = make_geotiff((rng.random((3, 1500, 1500)) * 255).astype(np.uint8), name="big.tif")
    out = tmp_path / "o.tif"
    p = subprocess.Popen(GEOSEG + ["--progress", "jsonl", "predict", str(tiny_bundle), str(src), str(out),
                                   "--areas", "--tile-size", "32", "--overlap", "8", "--batch-size", "2"],
                         env=_env(), stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    first = json.loads(p.stdout.readline())
    while first["event"] != "progress":
        first = json.loads(p.stdout.readline())
    t0 = time.monotonic()
    p.send_signal(signal.SIGTERM)
    rest = p.stdout.read()
    p.wait(60)
    assert time.monotonic() - t0 < 5
    assert p.returncode == 130
    assert _events(rest)[-1]["event"] == "cancelled"
    assert sorted(x.name for x in tmp_path.iterdir()) == ["big.tif"]


def test_gdal_conventions_co_overviews_output_option_and_json_areas(runner, tiny_bundle, rgb_byte, tmp_path):
    """--co KEY=VALUE reaches GDAL, --overviews builds them, -o names the output, areas --format json."""
    out = tmp_path / "c.tif"
    r = invoke(runner, "predict", tiny_bundle, rgb_byte, "-o", out, "--co", "COMPRESS=ZSTD", "--co", "zstd_level=3",
               "--overviews", "--tile-size", "64", "--overlap", "8")
    assert r.exit_code == 0, r.output
    with rasterio.open(out) as ds:
        assert ds.compression.name.lower() == "zstd"
        assert ds.overviews(1) == [2, 4]       # 791 x 718 px: halved until it fits in 256 px
        assert ds.block_shapes[0][0] == ds.block_shapes[0][1]
        classes = ds.read(1)
    r = invoke(runner, "predict", tiny_bundle, rgb_byte, tmp_path / "plain.tif", "--tile-size", "64", "--overlap", "8")
    with rasterio.open(tmp_path / "plain.tif") as ds:
        assert ds.overviews(1) == [] and ds.compression.name.lower() == "deflate"
        assert (ds.read(1) == classes).all()
    for bad, words in ((["--co", "TILED=NO"], "fixed by geoseg"), (["--co", "FOO=1"], "no creation option FOO")):
        r = runner.invoke(cli, ["predict", str(tiny_bundle), str(rgb_byte), "-o", str(tmp_path / "x.tif"), *bad])
        assert r.exit_code == 1 and words in r.output and "Traceback" not in r.output
        assert not (tmp_path / "x.tif").exists()
    r = runner.invoke(cli, ["predict", str(tiny_bundle), str(rgb_byte), "-o", str(tmp_path / "x.tif"), "--co", "X"])
    assert r.exit_code == 2 and "KEY=VALUE" in r.output
    r = invoke(runner, "areas", out, "--format", "json")
    doc = json.loads(r.output)
    assert doc["kind"] == "planar" and [row["class_id"] for row in doc["rows"]] == [0, 1]
    assert sum(row["pixels"] for row in doc["rows"]) == classes.size - (classes == 255).sum()
    r = invoke(runner, "areas", out, "--format", "json", "-o", tmp_path / "a.json")
    assert json.loads((tmp_path / "a.json").read_text()) == doc


def test_stale_temporaries_of_killed_runs_are_swept(runner, tiny_bundle, rgb_byte, tmp_path):
    """What a SIGKILLed run left (a hidden temporary file, a tiling folder) is removed by
    the next run into the same folder; a live process's temporaries and fresh foreign
    ones are kept."""
    from geoseg import files
    dead = subprocess.Popen(["true"])
    dead.wait()
    host = files.temp_tag().split("p")[0]
    out = tmp_path / "out"
    out.mkdir()
    stale_file = out / f".c.geoseg-tmp-{host}p{dead.pid}r0011aabb.tif"
    stale_dir = out / f".chips.tile-new-{host}p{dead.pid}r0011aabb"
    live = out / f".c.geoseg-tmp-{host}p{os.getppid()}r0011aabb.tif"       # our parent still runs
    old_foreign = out / ".d.geoseg-tmp-9f3e2a1b.tif"                          # old-style name, 2 days old
    fresh_foreign = out / ".e.geoseg-tmp-ffffffffffp1r00aa.tif"                # another host's, fresh
    unrelated = out / ".c.something-else.tif"
    for p in (stale_file, live, old_foreign, fresh_foreign, unrelated):
        p.write_bytes(b"x")
    stale_dir.mkdir()
    (stale_dir / "chip.tif").write_bytes(b"x")
    two_days = time.time() - 2 * 86400
    os.utime(old_foreign, (two_days, two_days))
    r = invoke(runner, "predict", tiny_bundle, rgb_byte, out / "c.tif", "--tile-size", "64", "--overlap", "8")
    assert r.exit_code == 0, r.output
    left = {p.name for p in out.iterdir()}
    assert left == {"c.tif", "c.qml", "c.tif.aux.xml", live.name, fresh_foreign.name, unrelated.name}


def test_outputs_replace_regular_files_only_and_concurrent_runs_do_not_both_win(tiny_bundle, rgb_byte, tmp_path):
    """--overwrite never replaces a FIFO or a symbolic link; two runs racing for the same
    output without --overwrite: exactly one writes it, the other exits 1 and leaves nothing."""
    fifo = tmp_path / "fifo.tif"
    os.mkfifo(fifo)
    target = tmp_path / "real.tif"
    target.write_bytes(b"keep")
    link = tmp_path / "link.tif"
    link.symlink_to(target)
    for out, words in ((fifo, "not a regular file"), (link, "symbolic link")):
        r = subprocess.run(GEOSEG + ["predict", str(tiny_bundle), str(rgb_byte), str(out), "--overwrite"],
                           capture_output=True, text=True, env=_env(), timeout=120)
        assert r.returncode == 1 and words in r.stderr and "Traceback" not in r.stderr
    assert target.read_bytes() == b"keep" and link.is_symlink() and fifo.is_fifo()
    race = tmp_path / "race"
    race.mkdir()
    for attempt in range(2):
        for p in race.iterdir():
            p.unlink()
        procs = [subprocess.Popen(GEOSEG + ["predict", str(tiny_bundle), str(rgb_byte), str(race / "c.tif"), "--areas",
                                            "--tile-size", "64", "--overlap", "8"],
                                  stderr=subprocess.PIPE, text=True, env=_env()) for _ in range(2)]
        codes = sorted(p.wait(120) for p in procs)
        errs = [p.stderr.read() for p in procs]
        assert codes == [0, 1], errs
        assert any("output exists" in e for e in errs)
        assert sorted(p.name for p in race.iterdir()) == ["c.qml", "c.tif", "c.tif.aux.xml", "c_areas.csv"]


def test_window_memory_is_bounded_before_anything_is_allocated(tmp_path):
    """A window/batch this machine cannot hold is one line with the estimate and the
    limit, at once (no model loaded, nothing allocated, nothing written)."""
    from rasterio.transform import from_origin
    src = tmp_path / "sparse.tif"
    with rasterio.open(src, "w", driver="GTiff", width=9000, height=9000, count=6, dtype="uint16", tiled=True,
                       compress="deflate", crs="EPSG:32651", transform=from_origin(0, 0, 10, 10)):
        pass   # a sparse 9000 x 9000 x 6 file of a few kB
    out = tmp_path / "o.tif"
    t0 = time.monotonic()
    r = subprocess.run(["/usr/bin/time", "-f", "peak %M KB", *GEOSEG, "predict", str(ROOT / "geoseg/data/s2_water.geoseg"),
                        str(src), str(out), "--tile-size", "8192", "--overlap", "32", "--batch-size", "4"],
                       capture_output=True, text=True, env=_env(), timeout=120)
    assert r.returncode == 1
    err = [ln for ln in r.stderr.splitlines() if ln.startswith("Error")]
    assert len(err) == 1 and "GB per batch" in err[0] and "this machine's" in err[0] and "--tile-size" in err[0]
    assert "Traceback" not in r.stderr and not out.exists() and sorted(p.name for p in tmp_path.iterdir()) == [
        "sparse.tif"]
    peak_kb = int(r.stderr.strip().splitlines()[-1].split()[1])
    assert peak_kb < 400_000 and time.monotonic() - t0 < 30   # refused before TensorFlow or a window exists


def test_batch_memory_estimate_matches_the_measured_model():
    from geoseg.bundle import read_metadata
    from geoseg.unit import batch_memory_bytes
    meta = read_metadata(ROOT / "geoseg/data/s2_water.geoseg")
    per_px = batch_memory_bytes(meta, 1024, 1) / 1024 ** 2
    assert 200 <= per_px <= 260   # measured 226-257 B/px for this model (forward peak RSS growth)


@pytest.fixture
def tiny_disk(tmp_path):
    """A 300 kB file system (tmpfs; needs root, skipped elsewhere)."""
    mnt = tmp_path / "disk"
    mnt.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=300k", "tmpfs", str(mnt)], capture_output=True)
    if r.returncode != 0:
        pytest.skip("cannot mount a tmpfs here")
    yield mnt
    subprocess.run(["umount", str(mnt)], capture_output=True)


def test_full_disk_is_one_line_and_leaves_nothing(tiny_bundle, make_geotiff, tiny_disk):
    rng = np.random.default_rng(0)
    src = make_geotiff((rng.random((3, 900, 900)) * 255).astype(np.uint8), name="noise.tif")
    r = subprocess.run(GEOSEG + ["predict", str(tiny_bundle), str(src), str(tiny_disk / "o.tif"), "--areas",
                                 "--confidence", "--tile-size", "64", "--overlap", "8"],
                       capture_output=True, text=True, env=_env(), timeout=300)
    assert r.returncode == 1, r.stderr
    last = r.stderr.strip().splitlines()[-1]
    assert last.startswith(f"Error: no space left on device writing {tiny_disk / 'o'}") and last.endswith(".tif")
    assert "Traceback" not in r.stderr and "_tiff" not in r.stderr   # no raw libtiff lines
    assert list(tiny_disk.iterdir()) == []
    # -q (errors only): exactly geoseg's one line, nothing from libtiff or GDAL before it
    r = subprocess.run(GEOSEG + ["-q", "predict", str(tiny_bundle), str(src), str(tiny_disk / "o.tif"), "--areas",
                                 "--confidence", "--tile-size", "64", "--overlap", "8"],
                       capture_output=True, text=True, env=_env(), timeout=300)
    assert r.returncode == 1 and len(r.stderr.splitlines()) == 1, r.stderr
    assert r.stderr.startswith("Error: no space left on device writing ")
    assert list(tiny_disk.iterdir()) == []


def test_quiet_prints_errors_only(tiny_bundle, make_geotiff, tmp_path):
    """-q: no warnings, no summary, no TensorFlow lines; without -q the warning shows."""
    src = make_geotiff(np.full((3, 40, 40), 100, np.uint8), crs=None, name="nocrs.tif")
    for quiet in (True, False):
        r = subprocess.run(GEOSEG + (["-q"] if quiet else []) + ["predict", str(tiny_bundle), str(src),
                                                                  str(tmp_path / f"o{quiet}.tif"), "--areas"],
                           capture_output=True, text=True, env=_env(), timeout=120)
        assert r.returncode == 0, r.stderr
        if quiet:
            assert r.stderr == "" and r.stdout == ""
        else:
            assert "no CRS" in r.stderr and "windows run" in r.stderr


def test_progress_bar_appears_before_the_model_loads(tiny_bundle, rgb_byte, tmp_path):
    """On a terminal the bar is drawn at once (0 %), not after TensorFlow's seconds of loading."""
    import pty
    import select
    cmd = GEOSEG + ["predict", str(tiny_bundle), str(rgb_byte), str(tmp_path / "o.tif"), "--tile-size", "64",
                    "--overlap", "8"]
    t0 = time.monotonic()
    pid, fd = pty.fork()
    if pid == 0:  # child: stderr and stdout are the terminal
        os.environ.update(_env())
        os.environ["GEOSEG_CACHE_DIR"] = "off"  # TensorFlow loads (a cached model starts in ~0.5 s)
        os.execv(sys.executable, cmd)
    seen, first = b"", None
    while True:
        r, _, _ = select.select([fd], [], [], 120)
        if not r:
            break
        try:
            chunk = os.read(fd, 4096)
        except OSError:
            break
        if not chunk:
            break
        seen += chunk
        if first is None and b"segmenting" in seen:
            first = time.monotonic() - t0
    _, status = os.waitpid(pid, 0)
    total = time.monotonic() - t0
    assert os.waitstatus_to_exitcode(status) == 0, seen.decode(errors="replace")
    assert first is not None, seen.decode(errors="replace")
    # the bar shows while TensorFlow still loads: well before the end of the run
    assert first < total - 1.0, (first, total)


def test_jsonl_stdout_carries_protocol_lines_only(tiny_bundle, rgb_byte, tmp_path):
    """Every command in --progress jsonl mode: each stdout line is a protocol event, the
    last one its result; what would have gone to stdout (info's text, evaluate's JSON,
    areas' CSV, anything printed) is in the result event or on stderr."""
    out = tmp_path / "c.tif"
    runs = [
        ["predict", str(tiny_bundle), str(rgb_byte), str(out), "--tile-size", "64", "--overlap", "8"],
        ["info", str(tiny_bundle)],
        ["areas", str(out)],
        ["evaluate", str(out), str(out)],
        ["vectorize", str(out), str(tmp_path / "v.gpkg")],
        ["version"],
    ]
    for args in runs:
        r = subprocess.run(GEOSEG + ["--progress", "jsonl", *args], capture_output=True, text=True, env=_env(),
                           timeout=300)
        assert r.returncode == 0, (args, r.stderr)
        ev = _events(r.stdout)
        assert ev[-1]["event"] == "result" and ev[-1]["command"] == args[0], (args, r.stdout)
    assert ev[-1]["protocol"] == 1
    r = subprocess.run(GEOSEG + ["--progress", "jsonl", "info", str(tiny_bundle)], capture_output=True, text=True,
                       env=_env(), timeout=60)
    meta = _events(r.stdout)[-1]["metadata"]
    assert meta["format"] == "geoseg-model" and len(meta["classes"]) == 2


def test_no_spelling_of_an_input_is_an_output(tiny_bundle, rgb_byte, tmp_path):
    """GDAL names (/vsizip/, /vsigzip/, GPKG:file:table) point into files that are
    inputs too; an input's .qml style is never replaced; an existing style needs --overwrite."""
    import zipfile
    cls = tmp_path / "t.tif"
    shutil.copy(ROOT / "geoseg" / "data" / "s2_shanghai_truth.tif", cls)
    with zipfile.ZipFile(tmp_path / "a.zip", "w") as z:
        z.write(cls, "t.tif")
    before = (tmp_path / "a.zip").read_bytes()
    for args in (["areas", f"/vsizip/{tmp_path}/a.zip/t.tif", "-o", str(tmp_path / "a.zip"), "--overwrite"],
                 ["vectorize", f"/vsizip/{tmp_path}/a.zip/t.tif", str(tmp_path / "a.zip"), "--overwrite"]):
        r = subprocess.run(GEOSEG + args, capture_output=True, text=True, env=_env(), timeout=120)
        assert r.returncode == 1 and "same file as the input" in r.stderr, r.stderr
    assert (tmp_path / "a.zip").read_bytes() == before
    # the input's own style beside it (scene.tif + scene.qml) and an output scene.tiff
    scene = tmp_path / "scene.tif"
    shutil.copy(rgb_byte, scene)
    (tmp_path / "scene.qml").write_text("<qgis>user's style</qgis>")
    r = subprocess.run(GEOSEG + ["predict", str(tiny_bundle), str(scene), str(tmp_path / "scene.tiff"), "--overwrite",
                                 "--tile-size", "64", "--overlap", "8"], capture_output=True, text=True, env=_env(),
                       timeout=120)
    assert r.returncode == 1 and "style" in r.stderr and "same file as the input" in r.stderr, r.stderr
    assert (tmp_path / "scene.qml").read_text() == "<qgis>user's style</qgis>"
    (tmp_path / "w.qml").write_text("<qgis>kept</qgis>")
    r = subprocess.run(GEOSEG + ["predict", str(tiny_bundle), str(scene), str(tmp_path / "w.tif"), "--tile-size", "64",
                                 "--overlap", "8"], capture_output=True, text=True, env=_env(), timeout=120)
    assert r.returncode == 1 and "style" in r.stderr and "exists" in r.stderr and "--overwrite" in r.stderr
    assert not (tmp_path / "w.tif").exists() and (tmp_path / "w.qml").read_text() == "<qgis>kept</qgis>"
