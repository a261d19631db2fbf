"""Running on a Dask cluster: the same bytes as a local run, whatever the workers do.

Every comparison is sha256 of the written files (class raster, confidence, .qml,
area CSV) between the in-process run and LocalClusters of 1, 2 and 3 worker
processes; a worker killed mid-run is replaced and the output is unchanged; each
worker loads a model once however many tasks it runs.
"""

from __future__ import annotations

import hashlib
import json
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

pytest.importorskip("distributed")

from geoseg.distributed import cluster_client, model_loads, run_plan_distributed  # noqa: E402
from geoseg.errors import Cancelled, ConfigError  # noqa: E402
from geoseg.predict import PredictOptions, predict_many, predict_raster, sidecar_paths  # noqa: E402

DATA = Path(__file__).resolve().parents[1] / "geoseg" / "data"
BUNDLED = DATA / "s2_water.geoseg"
GEOSEG = Path(sys.executable).with_name("geoseg")

OPTION_SETS = {"crop": PredictOptions(confidence=True),
               "cosine": PredictOptions(blend="cosine", overlap=48, confidence=True),
               "flip": PredictOptions(tta="flip", confidence=True)}


def sha(p: Path) -> str:
    return hashlib.sha256(Path(p).read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    """The bundled scene (a copy) and a 2048² synthetic in 256 px deflate tiles: the
    bundled scene mirrored out to 2048², so the model sees real Sentinel-2 pixels."""
    d = tmp_path_factory.mktemp("cluster_inputs")
    scene = d / "scene.tif"
    shutil.copy(DATA / "s2_shanghai_scene.tif", scene)
    with rasterio.open(scene) as s:
        a, prof = s.read(), s.profile
    big = np.pad(a, ((0, 0), (0, 2048 - a.shape[1]), (0, 2048 - a.shape[2])), mode="symmetric")
    prof.update(width=2048, height=2048, tiled=True, blockxsize=256, blockysize=256, compress="deflate")
    with rasterio.open(d / "big.tif", "w", **prof) as o:
        o.write(big)
    return {"scene": scene, "big": d / "big.tif"}


def run(src: Path, out_dir: Path, options: PredictOptions, client=None, model=BUNDLED, **kw) -> list[str]:
    """Predict with every side output; the sha256 of each file written."""
    out_dir.mkdir(parents=True, exist_ok=True)
    dst = out_dir / "classes.tif"
    sides = sidecar_paths(dst, areas=True, confidence=True)
    predict_raster(src, dst, model, options, client=client, **sides, **kw)
    files = [dst, dst.with_suffix(".qml"), sides["areas_path"], sides["confidence_path"]]
    return [sha(f) for f in files]


@pytest.fixture(scope="module")
def local_runs(inputs, tmp_path_factory):
    d = tmp_path_factory.mktemp("local")
    opts_big = PredictOptions(block_size=256, confidence=True)
    out = {(name, "scene"): run(inputs["scene"], d / f"scene_{name}", o) for name, o in OPTION_SETS.items()}
    out[("crop", "big")] = run(inputs["big"], d / "big_crop", opts_big)
    out[("cosine", "big")] = run(inputs["big"], d / "big_cosine", PredictOptions(block_size=256, blend="cosine",
                                                                                   confidence=True))
    return out


@pytest.mark.slow
@pytest.mark.parametrize("workers", [1, 2, 3])
def test_workers_write_the_local_bytes(workers, inputs, local_runs, tmp_path):
    """--workers 1, 2, 3: class raster, .qml, CSV and confidence identical to the
    in-process run, for crop and cosine blending and flip TTA on the bundled scene
    and for crop and cosine on the 2048² input (8 tasks of 256 px block rows)."""
    with cluster_client(workers=workers) as client:
        assert len(client.scheduler_info()["workers"]) == workers
        for name, o in OPTION_SETS.items():
            assert run(inputs["scene"], tmp_path / f"scene_{name}", o, client) == local_runs[(name, "scene")], name
        got = run(inputs["big"], tmp_path / "big_crop", PredictOptions(block_size=256, confidence=True), client)
        assert got == local_runs[("crop", "big")]
        got = run(inputs["big"], tmp_path / "big_cosine",
                  PredictOptions(block_size=256, blend="cosine", confidence=True), client)
        assert got == local_runs[("cosine", "big")]


@pytest.mark.slow
def test_killed_worker_is_replaced_and_the_output_unchanged(inputs, local_runs, tmp_path):
    with cluster_client(workers=2) as client:
        pids = client.run(os.getpid)
        victim = sorted(pids.values())[0]
        killed = []

        def progress(done, total):
            if done >= 1 and not killed:  # mid-run: the first block row is written, seven to go
                os.kill(victim, signal.SIGKILL)
                killed.append(done)

        got = run(inputs["big"], tmp_path / "big", PredictOptions(block_size=256, confidence=True), client,
                  progress=progress)
        assert killed and killed[0] < 64
        assert got == local_runs[("crop", "big")]
        assert victim not in client.run(os.getpid).values()  # the nanny started a new process


@pytest.mark.slow
def test_model_loaded_once_per_worker_over_many_tasks(inputs, tmp_path):
    """Two inputs of 16 tasks each (128 px block rows) share one cluster: each worker
    loads the bundle once (counted on the workers)."""
    model = tmp_path / "copy.geoseg"  # a bundle no worker has seen
    shutil.copy(BUNDLED, model)
    srcs = []
    for k in range(2):
        p = tmp_path / f"in{k}.tif"
        shutil.copy(inputs["big"], p)
        srcs.append(p)
    out = tmp_path / "out"
    out.mkdir()
    with cluster_client(workers=2) as client:
        before = client.run(model_loads)
        res = predict_many(srcs, out, model, PredictOptions(block_size=128), client=client)
        after = client.run(model_loads)
    assert len(res) == 2 and all(r.height // 128 == 16 for r in res)  # 32 tasks in all
    assert {w: after[w] - before[w] for w in after} == {w: 1 for w in after}


@pytest.mark.slow
def test_cancel_cancels_the_futures_and_leaves_nothing(inputs, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    calls = []
    with cluster_client(workers=2) as client:
        with pytest.raises(Cancelled):
            predict_raster(inputs["big"], out / "c.tif", BUNDLED, PredictOptions(block_size=128), client=client,
                           areas_path=out / "c.csv", progress=lambda d, t: calls.append(d),
                           is_cancelled=lambda: bool(calls) and calls[-1] >= 1)
        deadline = time.time() + 10
        while time.time() < deadline and any(client.processing().values()):
            time.sleep(0.1)
        assert not any(client.processing().values())  # no task left running for this run
    assert sorted(os.listdir(out)) == []


@pytest.mark.slow
def test_shipped_bundle_bytes_give_the_same_pixels(tiny_bundle, make_geotiff, tmp_path):
    """A worker that cannot see the bundle's path gets its bytes (once) and loads
    them: the same pixels as in-process."""
    from geoseg.bundle import read_metadata
    from geoseg.model import ModelRef
    from geoseg.predict import ArraySink, predict_array
    from geoseg.progress import Reporter
    from geoseg.sources import open_source
    from geoseg.unit import make_plan
    rng = np.random.default_rng(3)
    img = make_geotiff((rng.random((3, 300, 260)) * 255).astype(np.uint8))
    opts = PredictOptions(block_size=64)
    ref = ModelRef.of(tiny_bundle)
    want, _ = predict_array(open_source(img), ref, opts)
    with cluster_client(workers=1) as client, open_source(img) as src:
        plan = make_plan(src, read_metadata(tiny_bundle), opts)
        sink = ArraySink(src.height, src.width, False)
        run_plan_distributed(client, plan, ref, sink.write, Reporter(None, None, total=len(plan.grid)),
                             ship_model=True)
        shipped = client.run(lambda: sorted(__import__("geoseg.distributed").distributed._SHIPPED))
    assert np.array_equal(sink.classes, want)
    assert list(shipped.values()) == [[ref.sha256]]


def test_a_model_in_memory_cannot_go_to_a_cluster(fake_model, make_geotiff, tmp_path):
    model, forward = fake_model
    img = make_geotiff(np.zeros((3, 40, 40), np.uint8))
    with pytest.raises(ConfigError, match="save it as a bundle"):
        predict_raster(img, tmp_path / "o.tif", model, client=object())
    with pytest.raises(ConfigError, match="forward function runs in this process only"):
        predict_raster(img, tmp_path / "o.tif", model, forward=forward, client=object())
    assert not (tmp_path / "o.tif").exists()


def _geoseg(*args, cwd=None, timeout=180):
    return subprocess.run([str(GEOSEG), *map(str, args)], capture_output=True, text=True, cwd=cwd,
                          timeout=timeout)


@pytest.mark.slow
def test_cli_workers_same_bytes_and_clean_protocol(inputs, local_runs, tmp_path):
    """`geoseg --progress jsonl predict ... --workers 2`: the local bytes, stdout only
    protocol lines, no Dask chatter on stderr."""
    shutil.copy(inputs["scene"], tmp_path / "scene.tif")
    r = _geoseg("--progress", "jsonl", "predict", BUNDLED, "scene.tif", "out.tif", "--areas", "--confidence",
                "--workers", "2", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    events = [json.loads(line) for line in r.stdout.splitlines()]
    assert events[-1]["event"] == "result" and {e["event"] for e in events} <= {"progress", "log", "result"}
    assert "distributed" not in r.stderr and "Traceback" not in r.stderr
    out = tmp_path / "out.tif"
    got = [sha(out), sha(out.with_suffix(".qml")), sha(tmp_path / "out_areas.csv"),
           sha(tmp_path / "out_confidence.tif")]
    assert got == local_runs[("crop", "scene")]


def test_cli_cluster_errors_are_one_line(inputs, tmp_path):
    shutil.copy(inputs["scene"], tmp_path / "scene.tif")
    r = _geoseg("predict", BUNDLED, "scene.tif", "o.tif", "--scheduler", "tcp://127.0.0.1:9", cwd=tmp_path)
    assert r.returncode == 1 and "Traceback" not in r.stderr
    assert r.stderr.strip().splitlines()[-1].startswith("Error: cannot reach the Dask scheduler at tcp://127.0.0.1:9")
    r = _geoseg("predict", BUNDLED, "scene.tif", "o.tif", "--workers", "0", cwd=tmp_path)
    assert r.returncode == 2 and "--workers" in r.stderr
    r = _geoseg("predict", BUNDLED, "scene.tif", "o.tif", "--workers", "2", "--scheduler", "tcp://x:1",
                cwd=tmp_path)
    assert r.returncode == 1 and "not both" in r.stderr
    r = _geoseg("predict", BUNDLED, "scene.tif", "o.tif", "--dashboard", cwd=tmp_path)
    assert r.returncode == 2 and "--dashboard goes with --workers" in r.stderr
    assert sorted(os.listdir(tmp_path)) == ["scene.tif"]


@pytest.mark.slow
def test_scheduler_address_runs_on_an_existing_cluster(inputs, local_runs, tmp_path):
    """The README's multi-machine recipe on one machine: `dask scheduler`, `dask worker`
    processes started by hand, then `geoseg predict --scheduler`: the local bytes."""
    dask_cli = Path(sys.executable).with_name("dask")
    port = 18700 + os.getpid() % 200
    procs = [subprocess.Popen([str(dask_cli), "scheduler", "--port", str(port), "--no-dashboard"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)]
    try:
        procs.append(subprocess.Popen([str(dask_cli), "worker", f"tcp://127.0.0.1:{port}", "--nworkers", "1",
                                       "--nthreads", "1", "--no-dashboard"],
                                      env={**os.environ, "TF_NUM_INTRAOP_THREADS": "2"},
                                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        shutil.copy(inputs["scene"], tmp_path / "scene.tif")
        deadline = time.time() + 60
        while True:  # the scheduler and its worker take a few seconds to come up
            r = _geoseg("predict", BUNDLED, "scene.tif", "out.tif", "--areas", "--confidence", "--scheduler",
                        f"tcp://127.0.0.1:{port}", cwd=tmp_path)
            if r.returncode == 0 or time.time() > deadline:
                break
            time.sleep(1)
        assert r.returncode == 0, r.stderr
        out = tmp_path / "out.tif"
        got = [sha(out), sha(out.with_suffix(".qml")), sha(tmp_path / "out_areas.csv"),
               sha(tmp_path / "out_confidence.tif")]
        assert got == local_runs[("crop", "scene")]
    finally:
        for p in reversed(procs):
            p.terminate()
        for p in procs:
            p.wait(timeout=30)


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_cli_interrupt_with_workers_leaves_nothing(inputs, tmp_path, sig):
    """Ctrl-C (or SIGTERM) during `predict --workers 2`: exit 130, no output, no
    temporary file, and the worker processes gone with the cluster."""
    import psutil
    out = tmp_path / "out"
    out.mkdir()
    p = subprocess.Popen([str(GEOSEG), "--progress", "jsonl", "predict", str(BUNDLED), str(inputs["big"]),
                          str(out / "c.tif"), "--areas", "--workers", "2", "--tta", "d4",
                          # slow enough that the signal comes mid-run (OpenVINO bfloat16 ran
                          # the 512-px default windows to the end before it came)
                          "--runtime", "keras", "--tile-size", "256"],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                         # as from a terminal: a suite started as a background job (`cmd &`)
                         # passes SIGINT ignored to its children, and Python then keeps it so
                         preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        for line in p.stdout:  # the first written block row: the cluster is up and working
            ev = json.loads(line)
            if ev["event"] == "progress" and 0 < ev["done"] < ev["total"]:
                break
        children = psutil.Process(p.pid).children(recursive=True)
        assert len(children) >= 2
        p.send_signal(sig)
        rest, err = p.communicate(timeout=60)
    finally:
        if p.poll() is None:
            p.kill()
    assert p.returncode == 130, err
    assert json.loads(rest.strip().splitlines()[-1])["event"] == "cancelled"
    assert "Traceback" not in err
    assert sorted(os.listdir(out)) == []
    gone, alive = psutil.wait_procs(children, timeout=20)
    assert not alive
