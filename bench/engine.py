"""Honest engine benchmark (issue 14 item 5): predict ÷ the bare model, the engine's own
ceiling, bytes read, network pixels and start-up, all in one run on the bundled model.

    .venv/bin/python bench/engine.py [--size 4096] [--repeats 5] [--workdir DIR]
                                     [--runtime auto|openvino|keras] [--precision auto|float32|bfloat16]
                                     [--compress deflate|none|...]

Input: the bundled Sentinel-2 scene (real pixels) mirrored (``np.pad(mode="symmetric")``)
out to size x size, written as a tiled 512 px deflate GeoTIFF (as tests/test_distributed.py
builds its ``inputs``). Model: the bundled ``geoseg/data/s2_water.geoseg``; options: the
engine's defaults (``PredictOptions()``, the runtime and precision as given: by default what
``auto`` resolves to here, printed). In this one process:

1. **predict ÷ bare forward.** A first ``predict_raster`` run (the warm-up) goes through a
   forward function that records every batch it is given: the *actual* normalised batches
   the plan schedules, kept in memory (up to ``--capture-mb``; beyond it a batch is replayed
   as the first recorded real batch of its shape). The recorded batch shapes are checked
   against the schedule derived from ``make_plan`` + ``Batcher`` alone. The bare forward then
   replays exactly those batches, in that order, through the same compiled function
   (``load_forward(ModelRef.of(model))``) that ``predict_raster`` gets as ``forward=``.
   Bare replays and predict runs are interleaved (order alternating), ``--repeats`` pairs,
   each timed in wall time and process CPU time (all threads). ratio = predict throughput ÷
   bare throughput = bare wall ÷ predict wall, per pair. Goal >= 0.95.
2. **The engine's ceiling**: ``predict_raster`` with a zero-cost model (a constant
   probability array per batch shape, made once and returned again: no allocation per call)
   on the same input, in the same interleaved loop: scene Mpx/s of read + normalise + batch
   + merge + write, and ceiling ÷ real predict per repeat. Goal >= 10x.
3. **Bytes read ÷ file bytes** of each predict run (the process's read() bytes,
   /proc/self/io rchar, as bench/read_once.py counts; "plan" = make_plan's reads, "run" =
   run_plan's), and network pixels ÷ scene pixels (``input_pixels / (width * height)``).
4. **Start-up**: ``geoseg predict MODEL tiny.tif out.tif`` (64 x 64 crop of the bundled
   scene) in a fresh subprocess, with the converted-model cache warm (a cache of the
   benchmark's own, filled first) and with none (``GEOSEG_CACHE_DIR=off``), and a split of
   the warm case in another fresh subprocess: ``import geoseg.model, geoseg.predict``,
   ``load_forward(ModelRef.of(model))``, the first forward call, a ``predict_raster`` of the
   tiny input, and whether TensorFlow was imported; median of 3, interleaved.
6. **CPU budget**: core-seconds per scene Mpx of the bare model and of the zero-cost engine;
   with every core busy, predict ÷ bare cannot exceed model ÷ (model + engine).
5. **The model-busy share** geoseg reports (``RunStats.model_seconds`` ÷ predict wall)
   beside the true ratio of item 1.

Prints a table, then one JSON line with every figure.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

ROOT = Path(__file__).resolve().parents[1]
MODEL = ROOT / "geoseg" / "data" / "s2_water.geoseg"
SCENE = ROOT / "geoseg" / "data" / "s2_shanghai_scene.tif"


def rchar() -> int:
    """Bytes this process has read with read() and friends (all threads)."""
    with open("/proc/self/io") as f:
        for line in f:
            if line.startswith("rchar:"):
                return int(line.split()[1])
    raise RuntimeError("no rchar in /proc/self/io")


def real_scene(path: Path, size: int, interleave: str, compress: str = "deflate") -> Path:
    """The bundled scene mirrored out to size x size, tiled 512 px, deflate (or as
    ``compress`` says; "none": uncompressed)."""
    import rasterio
    if path.exists():
        return path
    with rasterio.open(SCENE) as s:
        a, prof = s.read(), s.profile
    big = np.pad(a, ((0, 0), (0, max(0, size - a.shape[1])), (0, max(0, size - a.shape[2]))),
                 mode="symmetric")[:, :size, :size]
    prof.pop("compress", None)
    prof.update(width=size, height=size, tiled=True, blockxsize=512, blockysize=512,
                **({} if compress == "none" else {"compress": compress}),
                interleave=interleave)
    tmp = path.with_name(path.name + ".part.tif")
    with rasterio.open(tmp, "w", **prof) as o:
        o.write(big)
    os.replace(tmp, path)
    return path


def tiny_scene(path: Path, side: int = 64) -> Path:
    import rasterio
    if path.exists():
        return path
    with rasterio.open(SCENE) as s:
        a, prof = s.read(window=rasterio.windows.Window(0, 0, side, side)), s.profile
    prof.update(width=side, height=side, tiled=False)
    prof.pop("blockxsize", None)
    prof.pop("blockysize", None)
    with rasterio.open(path, "w", **prof) as o:
        o.write(a)
    return path


def plan_schedule(src: Path, meta, options) -> tuple[list[tuple[int, ...]], object]:
    """The batch shapes of the plan's schedule, from make_plan + Batcher alone (every
    window run: the input has no nodata), without reading a pixel."""
    from geoseg.sources import RasterSource
    from geoseg.unit import Batcher, UnitInput, make_plan
    with RasterSource(src) as s:
        plan = make_plan(s, meta, options)
    nb = len(plan.bands)
    b = Batcher(plan.batch_size)
    shapes: list[tuple[int, ...]] = []
    for task in plan.tasks():
        for u in task:
            inputs = [np.broadcast_to(np.float32(0), (nb, w.read.height, w.read.width)) for w in u.windows]
            uin = UnitInput(u, np.ones((1, 1), bool), list(inputs), list(range(len(u.windows))))
            for batch in b.add(uin):
                c, h, w = batch[0][0].uin.inputs[batch[0][1]].shape  # windows are (bands, h, w) views
                shapes.append((len(batch), h, w, c))
        for batch in b.end_task():
            c, h, w = batch[0][0].uin.inputs[batch[0][1]].shape
            shapes.append((len(batch), h, w, c))
    return shapes, plan


def stat(xs: list[float]) -> dict:
    return {"median": statistics.median(xs), "min": min(xs), "max": max(xs), "n": len(xs)}


def fmt(s: dict, f: str = ".3f") -> str:
    return f"{s['median']:{f}} [{s['min']:{f}}–{s['max']:{f}}]"


SPLIT_CHILD = r"""
import json, sys, time
t0 = time.perf_counter()
sys.path.insert(0, {root!r})
import numpy as np
import geoseg.model as gm
from geoseg.predict import predict_raster
t1 = time.perf_counter()
fwd = gm.load_forward(gm.ModelRef.of({model!r}, "none", {runtime!r}, {precision!r}))
t2 = time.perf_counter()
fwd(np.zeros((1, 64, 64, 6), np.float32))
t3 = time.perf_counter()
predict_raster({tiny!r}, {out!r}, gm.ModelRef.of({model!r}, "none", {runtime!r}, {precision!r}), overwrite=True)
t4 = time.perf_counter()
print(json.dumps({{"import_geoseg": t1 - t0, "load_forward": t2 - t1, "first_call": t3 - t2,
                  "predict_tiny": t4 - t3, "tensorflow_imported": float("tensorflow" in sys.modules)}}))
"""


def startup(work: Path, runtime: str, precision: str, repeats: int = 3) -> dict:
    """Fresh processes: the CLI with the converted-model cache warm (a cache of this
    benchmark's own, filled by a first run) and with no cache (``GEOSEG_CACHE_DIR=off``:
    TensorFlow imported, the model loaded and converted), and a split of the warm case."""
    tiny = tiny_scene(work / "tiny64.tif")
    geoseg_exe = Path(sys.executable).parent / "geoseg"
    cli_cmd = [str(geoseg_exe)] if geoseg_exe.exists() else [sys.executable, "-m", "geoseg_cli.main"]
    flags = ["--runtime", runtime, "--precision", precision]
    warm_env = {**os.environ, "GEOSEG_CACHE_DIR": str(work / "model-cache")}
    cold_env = {**os.environ, "GEOSEG_CACHE_DIR": "off"}
    subprocess.run(cli_cmd + ["predict", str(MODEL), str(tiny), str(work / "tiny_fill.tif"), "--overwrite", *flags],
                   capture_output=True, env=warm_env, check=True)
    cli, cold, split_wall, parts = [], [], [], {}
    for i in range(repeats):
        for env, times in ((warm_env, cli), (cold_env, cold)):
            out = work / f"tiny_out_{i}.tif"
            for p in (out, out.with_suffix(".qml")):
                p.unlink(missing_ok=True)
            t0 = time.perf_counter()
            r = subprocess.run(cli_cmd + ["predict", str(MODEL), str(tiny), str(out), *flags], capture_output=True,
                               text=True, cwd=ROOT, env=env, check=False)
            times.append(time.perf_counter() - t0)
            if r.returncode != 0:
                raise SystemExit(f"geoseg predict failed: {r.stderr[-2000:]}")
        code = SPLIT_CHILD.format(root=str(ROOT), model=str(MODEL), tiny=str(tiny),
                                  out=str(work / f"tiny_split_{i}.tif"), runtime=runtime, precision=precision)
        t0 = time.perf_counter()
        r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=warm_env, check=False)
        split_wall.append(time.perf_counter() - t0)
        if r.returncode != 0:
            raise SystemExit(f"start-up split failed: {r.stderr[-2000:]}")
        d = json.loads(r.stdout.strip().splitlines()[-1])
        tf_imported = d.pop("tensorflow_imported")
        d["interpreter_and_exit"] = split_wall[-1] - sum(d.values())
        d["tensorflow_imported"] = tf_imported
        for k, v in d.items():
            parts.setdefault(k, []).append(v)
    return {"cli_wall": stat(cli), "cli_wall_no_cache": stat(cold), "split_wall": stat(split_wall),
            "parts": {k: stat(v) for k, v in parts.items()}}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--size", type=int, default=4096)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--workdir", default=None)
    ap.add_argument("--interleave", default="band", choices=("band", "pixel"),
                    help="input interleave (band: as the bundled scene and the tests' fixture)")
    ap.add_argument("--capture-mb", type=float, default=2048,
                    help="the most memory the recorded real batches may take")
    ap.add_argument("--no-startup", action="store_true", help="skip the start-up subprocesses")
    ap.add_argument("--compress", default="deflate", help="the input's compression (none: uncompressed)")
    ap.add_argument("--runtime", default="auto", help="geoseg.unit.RUNTIMES (default auto)")
    ap.add_argument("--precision", default="auto", help="geoseg.unit.PRECISIONS (default auto)")
    a = ap.parse_args()
    work = Path(a.workdir or tempfile.mkdtemp(prefix="geoseg-bench-engine-"))
    work.mkdir(parents=True, exist_ok=True)
    t_all = time.perf_counter()
    src = real_scene(work / f"real_{a.size}_{a.interleave}_{a.compress}.tif", a.size, a.interleave, a.compress)
    file_bytes = src.stat().st_size

    import logging
    logging.getLogger("geoseg").addFilter(lambda rec: "has no band names" not in rec.getMessage())
    import geoseg.predict as gp
    from geoseg.bundle import read_metadata
    from geoseg.model import ModelRef, load_forward
    from geoseg.predict import PredictOptions, predict_raster

    meta = read_metadata(MODEL)
    options = PredictOptions(runtime=a.runtime, precision=a.precision)
    expected, plan = plan_schedule(src, meta, options)
    k_out = 2 if meta.head == "sigmoid" else meta.n_classes

    # bytes read per phase of each predict run (wrapping the names predict_raster calls)
    # and the wall time of each (make_plan runs before the model starts, on the calling thread)
    phase: dict[str, int] = {}
    phase_s: dict[str, float] = {}

    def counted(name, fn):
        def run(*args, **kw):
            r0, t0 = rchar(), time.perf_counter()
            try:
                return fn(*args, **kw)
            finally:
                phase[name] = phase.get(name, 0) + rchar() - r0
                phase_s[name] = phase_s.get(name, 0.0) + time.perf_counter() - t0
        return run
    gp.make_plan, gp.run_plan = counted("plan", gp.make_plan), counted("run", gp.run_plan)

    ref = ModelRef.of(MODEL, "none", a.runtime, a.precision)
    fwd = load_forward(ref)

    # warm-up and capture: the real normalised batches, in schedule order
    limit = a.capture_mb * 2**20
    captured: list[np.ndarray | None] = []
    shapes: list[tuple[int, ...]] = []
    first_of: dict[tuple[int, ...], np.ndarray] = {}
    held = [0]

    def recording(x: np.ndarray) -> np.ndarray:
        shapes.append(x.shape)
        keep = held[0] + x.nbytes <= limit
        first_of.setdefault(x.shape[1:], x)
        captured.append(x if keep else None)  # x is np.stack's fresh array: the engine drops it after
        held[0] += x.nbytes if keep else 0
        return fwd(x)

    dst = work / "pred.tif"
    t0 = time.perf_counter()
    predict_raster(src, dst, MODEL, options, overwrite=True, forward=recording)
    t_warm = time.perf_counter() - t0
    if [tuple(s) for s in shapes] != [tuple(s) for s in expected]:
        raise SystemExit(f"the recorded batches ({len(shapes)}) differ from the plan's schedule ({len(expected)})")
    replay = []
    for x, s in zip(captured, shapes):
        if x is None:  # over --capture-mb: the first real batch of the same window shape
            f = first_of[s[1:]]
            x = f[: s[0]] if f.shape[0] >= s[0] else np.concatenate([f] * -(-s[0] // f.shape[0]))[: s[0]]
        replay.append(x)
    n_captured = sum(x is not None for x in captured)
    captured.clear()  # the replay list holds the batches now
    net_px = sum(s[0] * s[1] * s[2] for s in shapes)
    n_windows = sum(s[0] for s in shapes)

    zeros: dict[tuple, np.ndarray] = {}

    def zero_cost(x: np.ndarray) -> np.ndarray:
        key = x.shape[:3]
        y = zeros.get(key)
        if y is None:
            y = np.zeros(key + (k_out,), np.float32)
            y[..., 0] = 1.0
            zeros[key] = y
        return y

    def bare() -> tuple[float, float]:
        c0, t0 = time.process_time(), time.perf_counter()
        for x in replay:
            fwd(x)
        return time.perf_counter() - t0, time.process_time() - c0

    def predict(forward) -> tuple[float, float, object, dict]:
        phase.clear()
        phase_s.clear()
        r0, c0, t0 = rchar(), time.process_time(), time.perf_counter()
        r = predict_raster(src, dst, MODEL, options, overwrite=True, forward=forward)
        wall, cpu = time.perf_counter() - t0, time.process_time() - c0
        return wall, cpu, r, {"total": rchar() - r0, **phase, "plan_s": phase_s["plan"], "run_s": phase_s["run"]}

    # warm the bare replay (one batch per shape) and the zero-cost engine
    for s, x in first_of.items():
        fwd(x)
    predict(zero_cost)

    rows = {"bare": [], "predict": [], "zero": []}
    for rep in range(a.repeats):
        order = ("bare", "predict", "zero") if rep % 2 == 0 else ("zero", "predict", "bare")
        for what in order:
            if what == "bare":
                w, c = bare()
                rows["bare"].append({"wall": w, "cpu": c})
            else:
                w, c, r, rd = predict(fwd if what == "predict" else zero_cost)
                rows[what].append({"wall": w, "cpu": c, "model_s": r.model_seconds, "batches": r.batches,
                                   "net_scene": r.input_pixels / (r.width * r.height), "read": rd,
                                   "input_pixels": r.input_pixels})
        b, p, z = rows["bare"][-1], rows["predict"][-1], rows["zero"][-1]
        print(f"rep {rep}: bare {b['wall']:.2f} s (cpu {b['cpu']:.2f}), predict {p['wall']:.2f} s "
              f"(cpu {p['cpu']:.2f}, model {p['model_s']:.2f}), zero-cost {z['wall']:.2f} s (cpu {z['cpu']:.2f}); "
              f"ratio {b['wall'] / p['wall']:.3f}", flush=True)

    for r in rows["predict"] + rows["zero"]:
        if r["batches"] != len(shapes) or r["input_pixels"] != net_px:
            raise SystemExit("a predict run scheduled other batches than the recorded ones")
    mpx = a.size * a.size / 1e6
    B, P, Z = rows["bare"], rows["predict"], rows["zero"]
    ratio = stat([b["wall"] / p["wall"] for b, p in zip(B, P)])
    ratio_cpu = stat([b["cpu"] / p["cpu"] for b, p in zip(B, P)])
    busy = stat([p["model_s"] / p["wall"] for p in P])
    ceil_ratio = stat([p["wall"] / z["wall"] for p, z in zip(P, Z)])
    figs = {
        "size": a.size, "repeats": a.repeats, "interleave": a.interleave, "file_mb": file_bytes / 2**20,
        "tile": plan.grid.tile, "overlap": plan.grid.overlap, "batch_size": plan.batch_size,
        "batches": len(shapes), "windows": n_windows, "batches_in_memory": n_captured,
        "bare_wall_s": stat([b["wall"] for b in B]), "predict_wall_s": stat([p["wall"] for p in P]),
        "zero_wall_s": stat([z["wall"] for z in Z]),
        "bare_cpu_per_wall": stat([b["cpu"] / b["wall"] for b in B]),
        "predict_cpu_per_wall": stat([p["cpu"] / p["wall"] for p in P]),
        "zero_cpu_per_wall": stat([z["cpu"] / z["wall"] for z in Z]),
        "bare_net_mpx_s": stat([net_px / 1e6 / b["wall"] for b in B]),
        "predict_scene_mpx_s": stat([mpx / p["wall"] for p in P]),
        "zero_scene_mpx_s": stat([mpx / z["wall"] for z in Z]),
        "ratio_predict_over_bare": ratio, "ratio_cpu_bare_over_predict": ratio_cpu,
        "predict_cpu_extra_s": stat([p["cpu"] - b["cpu"] for b, p in zip(B, P)]),
        "ceiling_over_predict": ceil_ratio,
        "model_busy_share": busy,
        "bytes_read_over_file": stat([p["read"]["total"] / file_bytes for p in P]),
        "bytes_read_plan_over_file": stat([p["read"].get("plan", 0) / file_bytes for p in P]),
        "bytes_read_run_over_file": stat([p["read"].get("run", 0) / file_bytes for p in P]),
        "bytes_read_zero_over_file": stat([z["read"]["total"] / file_bytes for z in Z]),
        "net_over_scene": P[0]["net_scene"],
        # predict's wall = make_plan + run_plan (model time inside it) + the rest (open, writer's
        # finish, styling, commit); the bare forward's time for the same batches beside it
        "predict_plan_s": stat([p["read"]["plan_s"] for p in P]),
        "predict_run_plan_s": stat([p["read"]["run_s"] for p in P]),
        "predict_model_s": stat([p["model_s"] for p in P]),
        "predict_other_s": stat([p["wall"] - p["read"]["plan_s"] - p["read"]["run_s"] for p in P]),
        "zero_plan_s": stat([z["read"]["plan_s"] for z in Z]),
        "warmup_predict_s": t_warm,
        "runtime": f"{ref.runtime} {ref.precision}",
        # CPU budget: core-seconds per scene Mpx of the model (bare) and of the engine
        # (zero-cost run); on a machine whose cores both are busy, predict ÷ bare can
        # reach at most model ÷ (model + engine)
        "model_cpu_s_per_scene_mpx": stat([b["cpu"] / mpx for b in B]),
        "engine_cpu_s_per_scene_mpx": stat([z["cpu"] / mpx for z in Z]),
    }
    figs["ratio_bound_from_cpu"] = (figs["model_cpu_s_per_scene_mpx"]["median"]
                                    / (figs["model_cpu_s_per_scene_mpx"]["median"]
                                       + figs["engine_cpu_s_per_scene_mpx"]["median"]))
    if not a.no_startup:
        figs["startup"] = startup(work, a.runtime, a.precision)
    figs["total_s"] = time.perf_counter() - t_all

    print()
    print(f"runtime: {figs['runtime']}")
    print(f"bundled water model, real pixels (bundled scene mirrored to {a.size}², {a.interleave}-interleaved, "
          f"tiled 512 {a.compress}, {figs['file_mb']:.1f} MB), PredictOptions(): window {plan.grid.tile}, overlap "
          f"{plan.grid.overlap}, batch {plan.batch_size}; {len(shapes)} batches, {n_windows} windows "
          f"({n_captured} of {len(shapes)} batches replayed as captured, the rest as a real batch of their shape); "
          f"{a.repeats} interleaved repeats, median [min–max]")
    rowsfmt = [
        ("predict ÷ bare forward (wall; goal >= 0.95)", fmt(ratio)),
        ("  bare forward network Mpx/s", fmt(figs["bare_net_mpx_s"], ".2f")),
        ("  predict scene Mpx/s", fmt(figs["predict_scene_mpx_s"], ".2f")),
        ("  bare CPU s ÷ predict CPU s", fmt(ratio_cpu)),
        ("  CPU ÷ wall: bare / predict / zero-cost",
         (f"{figs['bare_cpu_per_wall']['median']:.2f} / {figs['predict_cpu_per_wall']['median']:.2f} / "
          f"{figs['zero_cpu_per_wall']['median']:.2f}")),
        ("  predict CPU s beyond the bare forward's", fmt(figs["predict_cpu_extra_s"], ".2f")),
        ("  CPU s per scene Mpx: model (bare) / engine (zero-cost)",
         f"{figs['model_cpu_s_per_scene_mpx']['median']:.3f} / {figs['engine_cpu_s_per_scene_mpx']['median']:.3f}"),
        ("  bound on predict ÷ bare from that budget: model ÷ (model + engine)",
         f"{figs['ratio_bound_from_cpu']:.3f}"),
        ("engine ceiling (zero-cost model) scene Mpx/s", fmt(figs["zero_scene_mpx_s"], ".2f")),
        ("  ceiling ÷ real predict (goal >= 10)", fmt(ceil_ratio, ".2f")),
        ("bytes read ÷ file bytes, predict (goal <= 1.05)", fmt(figs["bytes_read_over_file"])),
        ("  of which make_plan / run_plan",
         f"{figs['bytes_read_plan_over_file']['median']:.3f} / {figs['bytes_read_run_over_file']['median']:.3f}"),
        ("  zero-cost runs", fmt(figs["bytes_read_zero_over_file"])),
        ("network pixels ÷ scene pixels", f"{figs['net_over_scene']:.3f}"),
        ("predict wall split (s): make_plan + run_plan + rest",
         (f"{figs['predict_plan_s']['median']:.2f} + {figs['predict_run_plan_s']['median']:.2f} + "
          f"{figs['predict_other_s']['median']:.2f}")),
        ("  model time inside run_plan vs bare forward (s)",
         f"{figs['predict_model_s']['median']:.2f} vs {figs['bare_wall_s']['median']:.2f}"),
        ("PredictResult.model_seconds ÷ wall (not an overhead measure)", fmt(busy)),
        ("  vs the true predict ÷ bare", f"{ratio['median']:.3f}"),
    ]
    if "startup" in figs:
        st = figs["startup"]
        rowsfmt.append(("start-up: `geoseg predict` 64² input, fresh process, model cache warm (s)",
                        fmt(st["cli_wall"], ".2f")))
        rowsfmt.append(("  the same with no model cache (GEOSEG_CACHE_DIR=off) (s)", fmt(st["cli_wall_no_cache"], ".2f")))
        parts = {k: v for k, v in st["parts"].items() if k != "tensorflow_imported"}
        rowsfmt.append(("  split (s): " + " + ".join(parts), " + ".join(
            f"{v['median']:.2f}" for v in parts.values()) + f" = {st['split_wall']['median']:.2f}; TensorFlow "
            f"imported: {'yes' if st['parts']['tensorflow_imported']['max'] else 'no'}"))
    w = max(len(r[0]) for r in rowsfmt)
    for k, v in rowsfmt:
        print(f"{k:<{w}}  {v}")
    print(f"total {figs['total_s']:.0f} s")
    print(json.dumps(figs))


if __name__ == "__main__":
    main()
