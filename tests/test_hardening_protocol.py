"""Hardening: `--progress jsonl` ends every run with exactly one final event (help,
version, usage errors, bugs, every command, several inputs with failures); an
unexpected error is one line, the traceback only with -v."""

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path


from geoseg.demo import SCENE, TRUTH

from conftest import water_config

ROOT = Path(__file__).resolve().parents[1]
GEOSEG = [sys.executable, "-m", "geoseg_cli.main"]


def _env():
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    return env


def run(*args, cwd=None, timeout=300):
    return subprocess.run(GEOSEG + [str(a) for a in args], capture_output=True, text=True, env=_env(), cwd=cwd,
                          timeout=timeout)


def final(r) -> dict:
    """Every stdout line is a protocol event; exactly one final event, the last line."""
    events = [json.loads(line) for line in r.stdout.splitlines()]
    assert events and all(e["v"] == 1 for e in events), r.stdout
    finals = [e for e in events if e["event"] in ("result", "error", "cancelled")]
    assert len(finals) == 1 and finals[0] is events[-1], r.stdout
    return events[-1]


def test_help_version_and_usage_errors_are_protocol_events():
    for args in (["--help"], ["--version"], ["predict", "--help"], ["-h"]):
        r = run("--progress", "jsonl", *args)
        assert r.returncode == 0, r.stderr
        ev = final(r)
        assert ev["event"] == "result" and ("Usage:" in ev["text"] or "version" in ev["text"]), ev
    assert "geoseg, version" in final(run("--progress=jsonl", "--version"))["text"]
    for args, msg in ((["nosuch"], "No such command"), (["predict"], "Missing argument"),
                      (["areas", "x.tif", "--bogus"], "No such option"),
                      (["predict", "m.geoseg", "a.tif", "o.tif", "--tile-size", "x"], "Invalid value")):
        r = run("--progress", "jsonl", *args)
        assert r.returncode == 2, r.stderr
        ev = final(r)
        assert ev["event"] == "error" and ev["exit_code"] == 2 and msg in ev["message"], ev
        assert "Traceback" not in r.stderr


BUG = """
    import geoseg.bundle as b
    def read_metadata(*a, **k):
        raise UnicodeEncodeError("ascii", "\\xe9", 0, 1, "ordinal not in range(128)")
    b.read_metadata = read_metadata
"""


def _patched(patch, *args):
    code = textwrap.dedent(patch) + "\nimport sys\nfrom geoseg_cli.main import main\nsys.argv = ['geoseg', *sys.argv[1:]]\nmain()\n"
    return subprocess.run([sys.executable, "-c", code, *map(str, args)], capture_output=True, text=True, env=_env(),
                          timeout=120)


def test_an_unexpected_error_is_one_line_and_an_error_event(tiny_bundle):
    r = _patched(BUG, "--progress", "jsonl", "info", tiny_bundle)
    assert r.returncode == 1
    ev = final(r)
    assert ev["event"] == "error" and "UnicodeEncodeError" in ev["message"] and "please report" in ev["message"]
    assert "Traceback" not in r.stdout + r.stderr
    r = _patched(BUG, "info", tiny_bundle)
    assert r.returncode == 1 and r.stdout == ""
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: internal error: UnicodeEncodeError") \
        and "please report" in lines[0], r.stderr
    r = _patched(BUG, "-v", "info", tiny_bundle)   # -v: the traceback too, on stderr
    assert r.returncode == 1 and "Traceback" in r.stderr and r.stderr.strip().splitlines()[-1].startswith("Error:")


def test_several_inputs_one_failed_is_one_error_event_with_the_results(tiny_bundle, rgb_byte, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    bad = tmp_path / "bad.tif"
    bad.write_text("not a raster")
    good = tmp_path / "good.tif"
    shutil.copy(rgb_byte, good)
    r = run("--progress", "jsonl", "predict", tiny_bundle, good, bad, out, "--tile-size", "64", "--overlap", "8")
    assert r.returncode == 1, r.stderr
    ev = final(r)
    assert ev["event"] == "error" and "bad.tif" in ev["message"]
    assert [x["outputs"]["classes"] for x in ev["results"]] == [str(out / "good_classes.tif")]
    assert [f["input"] for f in ev["failed"]] == [str(bad)]
    assert (out / "good_classes.tif").exists() and not (out / "bad_classes.tif").exists()


TRAIN = water_config("""epochs = 1
steps_per_epoch = 2
batch_size = 4
model_dir = "{d}/run"
""")


def test_tile_demo_and_train_end_with_a_result_event(tmp_path):
    r = run("--progress", "jsonl", "tile", tmp_path / "chips", "--image", SCENE, "--label", TRUTH, "--chip", "64",
            "--regions", "3", "--label-nodata", "none", "--seed", "3")
    assert r.returncode == 0, r.stderr
    ev = final(r)
    assert ev["event"] == "result" and ev["command"] == "tile" and ev["chips"]["train"] > 0
    assert Path(ev["outputs"]["manifest"]).is_file() and Path(ev["outputs"]["stats"]).is_file()

    r = run("--progress", "jsonl", "demo", tmp_path / "demo")
    assert r.returncode == 0, r.stderr
    ev = final(r)
    assert ev["event"] == "result" and ev["command"] == "demo"
    assert all(Path(p).is_file() for p in ev["outputs"].values()) and ev["areas"]

    cfg = tmp_path / "t.toml"
    cfg.write_text(TRAIN.format(d=tmp_path))
    r = run("--progress", "jsonl", "train", cfg)
    assert r.returncode == 0, r.stderr
    ev = final(r)
    assert ev["event"] == "result" and ev["command"] == "train" and ev["epochs"] == 1
    assert ev["outputs"]["bundle"] == str(tmp_path / "run" / "model.geoseg") and Path(ev["outputs"]["bundle"]).is_file()
