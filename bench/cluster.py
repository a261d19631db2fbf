"""Scaling on a Dask cluster: 2 workers vs 1, and the client's memory on a Sentinel-2 tile.

    .venv/bin/python bench/cluster.py [--size 4096] [--repeats 3] [--rss-size 10980]

0. The machine's ceiling for two processes (see :func:`machine_ceiling`).
1. Scaling efficiency: two LocalClusters side by side, one worker process and two, each
   worker with one Dask thread and one model thread (TF_NUM_INTRAOP_THREADS=1), both warmed
   up (model loaded on every worker) before the clock starts; predict on the same
   synthetic 6-band scene with the bundled water model, runs interleaved (1, 2, 1, 2...),
   median and range of the speed-up. Goal >= 1.8x (on a machine with >= 2 free cores).
2. The client's peak RSS (the geoseg process only: workers are other processes) on a
   10980² tile with --workers 2, beside a local run's peak RSS on the same tile, each in
   a fresh subprocess. The client never imports TensorFlow and holds at most its window
   of block rows.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import synthetic_s2

ROOT = Path(__file__).resolve().parents[1]
MODEL = ROOT / "geoseg" / "data" / "s2_water.geoseg"

CEILING_CHILD = r"""
import os, sys, time
os.environ["TF_NUM_INTRAOP_THREADS"] = "1"; os.environ["TF_NUM_INTEROP_THREADS"] = "1"
sys.path.insert(0, {root!r})
import numpy as np
from geoseg.model import ModelRef, load_forward
fwd = load_forward(ModelRef.of({model!r}))
x = np.random.default_rng(0).normal(size=(8, 256, 256, 6)).astype(np.float32)
fwd(x)
print("ready", flush=True)
while sys.stdin.readline():
    t0 = time.perf_counter()
    for _ in range({n}):
        fwd(x)
    print(time.perf_counter() - t0, flush=True)
"""

ENGINE_CHILD = r"""
import os, sys, time
os.environ["TF_NUM_INTRAOP_THREADS"] = "1"; os.environ["TF_NUM_INTEROP_THREADS"] = "1"
sys.path.insert(0, {root!r})
from geoseg.model import ModelRef, load_forward
from geoseg.predict import predict_raster
ref = ModelRef.of({model!r})
load_forward(ref)
predict_raster({small!r}, {dst!r}, ref, overwrite=True)
print("ready", flush=True)
while sys.stdin.readline():
    t0 = time.perf_counter()
    predict_raster({src!r}, {dst!r}, ref, overwrite=True)
    print(time.perf_counter() - t0, flush=True)
"""

RSS_CHILD = r"""
import json, resource, sys, time
sys.path.insert(0, {root!r})
from geoseg.predict import predict_raster
t0 = time.perf_counter()
if {workers}:
    from distributed import Client
    from geoseg.distributed import local_cluster
    if __name__ == "__main__":
        with local_cluster({workers}) as cluster, Client(cluster) as client:
            predict_raster({src!r}, {dst!r}, {model!r}, client=client, overwrite=True)
else:
    predict_raster({src!r}, {dst!r}, {model!r}, overwrite=True)
if __name__ == "__main__":
    print(json.dumps({{"seconds": time.perf_counter() - t0,
                      "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                      "tensorflow_loaded": "tensorflow" in sys.modules}}))
"""


def scaling(src: Path, out: Path, repeats: int) -> dict:
    from distributed import Client

    from geoseg.distributed import local_cluster, quiet_dask
    from geoseg.predict import predict_raster
    quiet = quiet_dask()
    quiet.__enter__()
    clusters = {n: local_cluster(n, threads=1) for n in (1, 2)}
    clients = {n: Client(c) for n, c in clusters.items()}
    try:
        warm = out / "warm.tif"
        small = synthetic_s2(out / "small.tif", 1024, seed=1)
        for n, c in clients.items():  # every worker compiles the model before timing
            predict_raster(small, warm, MODEL, client=c, overwrite=True)
        times: dict[int, list[float]] = {1: [], 2: []}
        for _ in range(repeats):
            for n, c in clients.items():
                t0 = time.perf_counter()
                predict_raster(src, out / f"w{n}.tif", MODEL, client=c, overwrite=True)
                times[n].append(time.perf_counter() - t0)
        ratios = [a / b for a, b in zip(times[1], times[2])]
        return {"seconds_1_worker": times[1], "seconds_2_workers": times[2],
                "speedup_median": statistics.median(ratios), "speedup_range": [min(ratios), max(ratios)]}
    finally:
        for c in clients.values():
            c.close()
        for c in clusters.values():
            c.close()


def machine_ceiling(code: str) -> dict:
    """What two processes get from this machine: ``code`` (a child that times one piece
    of work per line on its stdin) timed alone, then in two processes at once. On two
    vCPUs that share a physical core or memory bandwidth, or a busy host, it is below 2."""
    def start():
        p = subprocess.Popen([sys.executable, "-c", code],
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        assert p.stdout.readline().strip() == "ready"
        return p

    def go(procs):
        for p in procs:
            p.stdin.write("\n")
            p.stdin.flush()
        return [float(p.stdout.readline()) for p in procs]

    alone, together = [], []
    for _ in range(2):
        procs = [start()]
        alone += go(procs)
        procs += [start()]  # the first process runs again, now beside a second one
        together.append(max(go(procs)))
        for p in procs:
            p.stdin.close()
            p.wait()
    a, t = statistics.median(alone), statistics.median(together)
    return {"alone_s": alone, "together_s": together, "ceiling": 2 * a / t}


def client_rss(src: Path, out: Path) -> dict:
    res = {}
    for workers in (2, 0):
        code = RSS_CHILD.format(root=str(ROOT), src=str(src), dst=str(out / f"rss{workers}.tif"), model=str(MODEL),
                                workers=workers)
        script = out / f"rss_child_{workers}.py"
        script.write_text(code)
        r = subprocess.run([sys.executable, str(script)], capture_output=True, text=True)
        if r.returncode:
            raise SystemExit(r.stderr[-2000:])
        res["cluster_client" if workers else "local"] = json.loads(r.stdout.strip().splitlines()[-1])
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--size", type=int, default=4096)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--rss-size", type=int, default=10980, help="0: skip the client RSS run")
    ap.add_argument("--workdir", default=None)
    a = ap.parse_args()
    out = Path(a.workdir or tempfile.mkdtemp(prefix="geoseg-bench-cluster-"))
    out.mkdir(parents=True, exist_ok=True)
    src = synthetic_s2(out / f"s2_{a.size}.tif", a.size)
    small = synthetic_s2(out / "small.tif", 1024, seed=1)
    ceilings = {
        "bare forward": machine_ceiling(CEILING_CHILD.format(root=str(ROOT), model=str(MODEL), n=12)),
        "local predict": machine_ceiling(ENGINE_CHILD.format(root=str(ROOT), model=str(MODEL), small=str(small),
                                                             src=str(src), dst=str(out / "engine.tif"))),
    }
    for what, c in ceilings.items():
        print(f"machine ceiling, {what} (1 model thread) alone {statistics.median(c['alone_s']):.2f} s, two "
              f"processes at once {statistics.median(c['together_s']):.2f} s: two give {c['ceiling']:.2f}x one")
    c = ceilings["local predict"]
    s = scaling(src, out, a.repeats)
    print(f"scaling on {a.size}² ({a.size * a.size / 1e6:.1f} Mpx), 1 model thread per worker:")
    print(f"  1 worker : {', '.join(f'{t:.1f}' for t in s['seconds_1_worker'])} s")
    print(f"  2 workers: {', '.join(f'{t:.1f}' for t in s['seconds_2_workers'])} s")
    print(f"  speed-up 2 vs 1: median {s['speedup_median']:.2f}x "
          f"(range {s['speedup_range'][0]:.2f}-{s['speedup_range'][1]:.2f}; goal >= 1.8); "
          f"{s['speedup_median'] / c['ceiling']:.2f} of this machine's ceiling for the engine")
    if a.rss_size:
        big = synthetic_s2(out / f"s2_{a.rss_size}.tif", a.rss_size)
        r = client_rss(big, out)
        c, loc = r["cluster_client"], r["local"]
        print(f"{a.rss_size}² tile: client peak RSS with --workers 2 {c['peak_rss_mb']:.0f} MB "
              f"({c['seconds']:.0f} s, TensorFlow in the client: {c['tensorflow_loaded']}); "
              f"local run {loc['peak_rss_mb']:.0f} MB ({loc['seconds']:.0f} s)")
    print(json.dumps({"scaling": s, "ceilings": ceilings, "size": a.size}))


if __name__ == "__main__":
    main()
