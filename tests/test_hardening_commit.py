"""Hardening: every run's outputs are placed all or nothing and exclusively unless
--overwrite (the trained bundle too); a SIGTERM stops a run where it checks, and after
the outputs are placed it never claims that nothing was written."""

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from geoseg import files
from geoseg.dataset import TileOptions, tile_rasters
from geoseg.demo import SCENE, TRUTH
from geoseg.errors import OutputExistsError
from geoseg_cli.main import cli

from conftest import threshold_forward, water_config

ROOT = Path(__file__).resolve().parents[1]


def _env():
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    return env


def _geoseg_patched(patch: str, *args, timeout=300):
    """`geoseg ARGS` in a subprocess, after running ``patch`` (Python) in it."""
    code = textwrap.dedent(patch) + "\nimport sys\nfrom geoseg_cli.main import main\nsys.argv = ['geoseg', *sys.argv[1:]]\nmain()\n"
    return subprocess.run([sys.executable, "-c", code, *map(str, args)], capture_output=True, text=True, env=_env(),
                          timeout=timeout)


# ---------------------------------------------------------------- all or nothing

def test_place_all_takes_back_what_it_placed(tmp_path):
    """A move that fails after others were placed: created files removed, replaced ones
    restored, a file this run did not put there never touched."""
    a_tmp, b_tmp, c_tmp = (tmp_path / f".{n}.geoseg-tmp-x" for n in "abc")
    for p in (a_tmp, b_tmp, c_tmp):
        p.write_text("new " + p.name)
    (tmp_path / "b").write_text("old b")
    (tmp_path / "c").write_text("someone else's c")
    with pytest.raises(OutputExistsError, match="another run wrote it meanwhile"):
        files.place_all([(a_tmp, tmp_path / "a", True), (b_tmp, tmp_path / "b", False), (c_tmp, tmp_path / "c", True)])
    assert not (tmp_path / "a").exists()
    assert (tmp_path / "b").read_text() == "old b" and (tmp_path / "c").read_text() == "someone else's c"
    assert not list(tmp_path.glob("*.bak"))   # no backup left
    # with overwrite: an OS error on the last move (a directory there) restores the replaced file
    (tmp_path / "d").mkdir()
    a_tmp.write_text("new a")
    b_tmp.write_text("new b")
    with pytest.raises(OSError):
        files.place_all([(b_tmp, tmp_path / "b", False), (a_tmp, tmp_path / "d", False)])
    assert (tmp_path / "b").read_text() == "old b" and (tmp_path / "d").is_dir()
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(   # (b's temporary file went into b)
        [".a.geoseg-tmp-x", ".c.geoseg-tmp-x", "b", "c", "d"])


def test_a_side_output_made_meanwhile_leaves_nothing_of_the_run(make_geotiff, tmp_path, monkeypatch):
    """Another run creates only the areas CSV between the check and the commit: the class
    raster, its style, RAT and confidence are not left behind (they were placed first
    before), the other run's CSV stays as it was."""
    import geoseg.predict as gp
    from geoseg.predict import PredictOptions, predict_raster
    rng = np.random.default_rng(0)
    src = make_geotiff(rng.random((3, 70, 90)).astype(np.float32), name="in.tif")
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    csv = out_dir / "c_areas.csv"
    real = gp.write_areas_csv

    def write_then_race(table, path):
        real(table, path)
        csv.write_text("another run's table\n")   # after the checks, before the commit
    monkeypatch.setattr(gp, "write_areas_csv", write_then_race)
    from conftest import make_meta
    from geoseg.model import LoadedModel
    model = LoadedModel(make_meta(), None)
    with pytest.raises(OutputExistsError, match="c_areas.csv"):
        predict_raster(src, out_dir / "c.tif", model, PredictOptions(tile_size=32, overlap=8),
                       forward=threshold_forward(), areas_path=csv, confidence_path=out_dir / "c_confidence.tif",
                       preview_path=out_dir / "c_preview.png")
    assert sorted(p.name for p in out_dir.iterdir()) == ["c_areas.csv"]
    assert csv.read_text() == "another run's table\n"


# ---------------------------------------------------------------- the trained bundle

@pytest.fixture(scope="module")
def chips(tmp_path_factory):
    d = tmp_path_factory.mktemp("train")
    tile_rasters([(SCENE, TRUTH)], d / "chips", TileOptions(chip=64, regions=3, seed=3), label_nodata=None)
    return d


TRAIN = water_config("""epochs = 1
steps_per_epoch = 2
batch_size = 4
model_dir = "{run}"
""")


def test_train_never_replaces_a_bundle_made_meanwhile(chips, tmp_path, monkeypatch):
    """A bundle that appears while training (another run) is not replaced without
    --overwrite: one-line error naming it and --overwrite; with --overwrite it is."""
    import geoseg.train as gt
    run = tmp_path / "run"
    cfg = tmp_path / "t.toml"
    cfg.write_text(TRAIN.format(d=chips, run=run))
    bundle = run / "model.geoseg"
    real = gt._final_meta

    def meanwhile(*a, **k):
        bundle.write_text("another run's model")
        return real(*a, **k)
    monkeypatch.setattr(gt, "_final_meta", meanwhile)
    r = CliRunner().invoke(cli, ["-q", "train", str(cfg)])
    assert r.exit_code == 1, r.output
    last = r.output.strip().splitlines()[-1]
    assert last.startswith(f"Error: output exists: {bundle}") and "--overwrite" in last, r.output
    assert bundle.read_text() == "another run's model"
    assert not list(run.glob(".*geoseg-tmp*"))
    r = CliRunner().invoke(cli, ["-q", "train", str(cfg), "--overwrite"])
    assert r.exit_code == 0, r.output
    from geoseg.bundle import read_metadata
    assert read_metadata(bundle).n_classes == 2


# ---------------------------------------------------------------- SIGTERM

def test_sigterm_after_the_outputs_are_placed_says_nothing_false(tiny_bundle, rgb_byte, tmp_path):
    """SIGTERM between the commit and the exit (here: while the summary prints): the run
    ends as it would have (exit 0, its result event), never "no output was written"."""
    out = tmp_path / "c.tif"
    patch = """
        import os, signal
        import geoseg_cli.predict as cp
        real = cp._report
        def report(*a, **k):
            os.kill(os.getpid(), signal.SIGTERM)
            for _ in range(100000):   # Python code running: where a handler that raises would raise
                pass
            return real(*a, **k)
        cp._report = report
    """
    r = _geoseg_patched(patch, "--progress", "jsonl", "predict", tiny_bundle, rgb_byte, out, "--areas",
                        "--tile-size", "64", "--overlap", "8")
    assert "no output was written" not in r.stderr, r.stderr
    assert r.returncode == 0, r.stderr
    events = [json.loads(line) for line in r.stdout.splitlines()]
    assert events[-1]["event"] == "result" and out.exists() and (tmp_path / "c_areas.csv").exists()


def test_sigterm_whose_interrupt_is_swallowed_still_cancels(tiny_bundle, rgb_byte, tmp_path):
    """A SIGTERM arriving in code that swallows KeyboardInterrupt (C-call wrappers, imports
    with bare except) still stops the run at its next cancel check: exit 130, nothing left."""
    out = tmp_path / "c.tif"
    patch = """
        import os, signal, time
        import geoseg.predict as gp
        real = gp.make_plan
        def make_plan(*a, **k):
            try:
                os.kill(os.getpid(), signal.SIGTERM)
                time.sleep(0.3)
            except BaseException:   # swallowed, as some library code does
                pass
            return real(*a, **k)
        gp.make_plan = make_plan
    """
    r = _geoseg_patched(patch, "predict", tiny_bundle, rgb_byte, out, "--areas", "--tile-size", "64",
                        "--overlap", "8")
    assert r.returncode == 130, r.stderr
    assert r.stderr.strip().splitlines()[-1] == "geoseg: interrupted; no output was written"
    assert sorted(p.name for p in tmp_path.iterdir()) == []
