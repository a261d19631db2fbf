"""The forward pass's runtimes side by side (issue 14 item 4): speed, achieved GFLOP/s
against this CPU's peak, agreement with Keras float32, and what each gives end to end.

    .venv/bin/python bench/forward.py [--size 2048] [--repeats 3] [--workdir DIR]

Model: the bundled ``geoseg/data/s2_water.geoseg``. Input: the bundled Sentinel-2 scene
mirrored out to size x size (as bench/engine.py builds it). A first ``predict_raster``
run records the real normalised batches the engine schedules (default options: 512 px
windows, 2 per batch); every runtime then replays exactly those batches:

* ``keras`` float32 — today's ``tf.function`` on TensorFlow's oneDNN kernels (the reference);
* ``keras-xla`` — the same ``tf.function`` with ``jit_compile=True`` (XLA);
* ``openvino`` float32 and ``openvino`` bfloat16 — :func:`geoseg.model.make_forward` with
  ``runtime="openvino"`` (the graph converted from TensorFlow, compiled for this CPU);
* ``onnxruntime`` float32 — converted with tf2onnx, only where ``onnxruntime`` and
  ``tf2onnx`` are importable (they are not geoseg dependencies);
* ``openvino-int8`` — NNCF's post-training quantisation of the converted model, calibrated
  on the first 12 windows of the same scene, only where ``nncf`` is importable.

Runtimes take turns (the order rotates each repeat); wall and process CPU time per replay.
Figures: network Mpx/s, ms per batch, achieved GFLOP/s (the model's multiply-adds counted
from its convolution layers, x2) and that as a share of the CPU's float32 peak
(``cores x MHz x --flops-per-cycle``; 32 for two 256-bit FMA pipes, which is how Zen 4
runs AVX-512; bfloat16's dot products double it), and the share of pixels whose class
equals Keras float32's, with the largest probability difference.

Then end to end: ``predict_raster`` of the whole scene with each runtime's forward
(interleaved, ``--repeats`` each): scene Mpx/s and speed-up over Keras, and the class
raster's agreement with Keras's. Prints a table, then one JSON line with every figure.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from engine import MODEL, real_scene, stat  # noqa: E402  (the same scene and figures as bench/engine.py)


def model_flops(keras_model, n_bands: int, side: int = 512) -> float:
    """Floating-point operations of one side x side window: 2 x the multiply-adds of
    every convolution and transposed convolution, from the layers' real shapes."""
    import keras
    convs = [la for la in keras_model.layers if type(la).__name__ in ("Conv2D", "Conv2DTranspose")]
    sub = keras.Model(keras_model.inputs, [la.output for la in convs] + [la.input for la in convs])
    outs = sub([np.zeros((1, side, side, n_bands), np.float32)])
    total = 0
    for la, o, i in zip(convs, outs[:len(convs)], outs[len(convs):]):
        kh, kw, a, b = la.kernel.shape
        # Conv2D kernel (kh, kw, in, out) over its output; Conv2DTranspose (kh, kw, out, in) per input pixel
        px = o.shape[1] * o.shape[2] if type(la).__name__ == "Conv2D" else i.shape[1] * i.shape[2]
        total += 2 * px * kh * kw * a * b
    return float(total)


def cpu_peak(flops_per_cycle: float) -> tuple[float, int, float]:
    mhz = []
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("cpu MHz"):
                mhz.append(float(line.split(":")[1]))
    cores = os.cpu_count() or 1
    ghz = (max(mhz) if mhz else 0.0) / 1000
    return cores * ghz * flops_per_cycle, cores, ghz


def int8_forward(lm, calibration: list[np.ndarray]):
    """OpenVINO int8: the converted model quantised by NNCF's post-training quantisation,
    calibrated on ``calibration`` (real normalised windows of the same scene), or a
    reason it is absent (nncf is not a geoseg dependency)."""
    try:
        import nncf
    except ImportError as e:
        return f"absent: {e}"
    import openvino as ov
    from geoseg.model import _openvino_convert
    q = nncf.quantize(_openvino_convert(lm.keras_model, lm.meta.input.n_bands), nncf.Dataset(calibration),
                      subset_size=len(calibration))
    req = ov.Core().compile_model(q, "CPU", {"PERFORMANCE_HINT": "LATENCY"}).create_infer_request()
    return lambda x: req.infer([np.ascontiguousarray(x)])[0]


def runtimes(lm) -> dict:
    """name -> forward function (N, h, w, bands) -> (N, h, w, K), or a reason it is absent."""
    from geoseg.model import make_forward, resolve_runtime
    m, nb, head = lm.keras_model, lm.meta.input.n_bands, lm.meta.head
    out: dict = {"keras": make_forward(m, nb, head, runtime="keras")}
    import tensorflow as tf

    @tf.function(input_signature=[tf.TensorSpec([None, None, None, nb], tf.float32)], jit_compile=True)
    def xla(x):
        return m(x, training=False)
    out["keras-xla"] = lambda x: xla(tf.constant(x)).numpy()
    for prec in ("float32", "bfloat16"):
        try:
            resolve_runtime("openvino", prec)
            out[f"openvino-{prec}"] = make_forward(m, nb, head, runtime="openvino", precision=prec)
        except Exception as e:  # noqa: BLE001  (not installed / no bfloat16 on this CPU)
            out[f"openvino-{prec}"] = f"absent: {e}"
    try:
        import onnxruntime as ort
        import tf2onnx
        spec = (tf.TensorSpec([None, None, None, nb], tf.float32, name="x"),)

        @tf.function(input_signature=spec)
        def f(x):
            return m(x, training=False)
        proto, _ = tf2onnx.convert.from_function(f, input_signature=spec, opset=17)
        so = ort.SessionOptions()
        so.intra_op_num_threads = os.cpu_count() or 1
        sess = ort.InferenceSession(proto.SerializeToString(), so, providers=["CPUExecutionProvider"])
        name = sess.get_inputs()[0].name
        out["onnxruntime-float32"] = lambda x: sess.run(None, {name: x})[0]
    except ImportError as e:
        out["onnxruntime-float32"] = f"absent: {e}"
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--size", type=int, default=2048)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--workdir", default=None)
    ap.add_argument("--flops-per-cycle", type=float, default=32.0,
                    help="float32 FLOP per cycle per core (32: two 256-bit FMA pipes, e.g. Zen 4)")
    ap.add_argument("--no-end-to-end", action="store_true")
    a = ap.parse_args()
    work = Path(a.workdir or tempfile.mkdtemp(prefix="geoseg-bench-forward-"))
    work.mkdir(parents=True, exist_ok=True)
    src = real_scene(work / f"real_{a.size}_band_deflate.tif", a.size, "band")

    import logging
    logging.getLogger("geoseg").addFilter(lambda rec: "has no band names" not in rec.getMessage())
    from geoseg.model import load_model
    from geoseg.predict import PredictOptions, predict_raster
    import rasterio

    lm = load_model(MODEL)
    fwds = runtimes(lm)
    ref = fwds["keras"]
    batches: list[np.ndarray] = []

    def recording(x: np.ndarray) -> np.ndarray:
        batches.append(np.array(x, copy=True))
        return ref(x)
    options = PredictOptions(runtime="keras")
    predict_raster(src, work / "keras.tif", MODEL, options, overwrite=True, forward=recording)
    net_px = sum(b.shape[0] * b.shape[1] * b.shape[2] for b in batches)
    flops_512 = model_flops(lm.keras_model, lm.meta.input.n_bands)
    flops = flops_512 / (512 * 512) * net_px
    peak, cores, ghz = cpu_peak(a.flops_per_cycle)

    fwds["openvino-int8"] = int8_forward(lm, [b[i:i + 1] for b in batches[:6] for i in range(b.shape[0])])
    live = {k: f for k, f in fwds.items() if callable(f)}
    for f in live.values():  # compile every shape once
        for b in {b.shape: b for b in batches}.values():
            f(b)
    # agreement with Keras float32 on every replayed window
    ref_out = [ref(b) for b in batches]
    agree: dict[str, dict] = {}
    for name, f in live.items():
        same = dp = 0.0
        for b, r in zip(batches, ref_out):
            y = f(b)
            same += float((y.argmax(-1) == r.argmax(-1)).sum())
            dp = max(dp, float(np.abs(y - r).max()))
        agree[name] = {"class_agreement": same / net_px, "max_abs_dp": dp}

    rows: dict[str, list] = {k: [] for k in live}
    names = list(live)
    for rep in range(a.repeats):
        for name in names[rep % len(names):] + names[:rep % len(names)]:
            f = live[name]
            c0, t0 = time.process_time(), time.perf_counter()
            for b in batches:
                f(b)
            rows[name].append((time.perf_counter() - t0, time.process_time() - c0))

    figs: dict = {"size": a.size, "batches": len(batches), "batch_shape": list(batches[0].shape),
                  "network_mpx": net_px / 1e6, "gflop_per_512_window": flops_512 / 1e9,
                  "kflop_per_pixel": flops_512 / (512 * 512) / 1e3, "cores": cores, "ghz": ghz,
                  "peak_fp32_gflops": peak, "runtimes": {}, "absent": {k: v for k, v in fwds.items()
                                                                        if not callable(v)}}
    base = statistics.median(w for w, _ in rows["keras"])
    print(f"model: {flops_512 / 1e9:.2f} GFLOP per 512² window ({flops_512 / 512 / 512 / 1e3:.1f} kFLOP/px); "
          f"CPU float32 peak {peak:.0f} GFLOP/s ({cores} cores x {ghz:.2f} GHz x {a.flops_per_cycle:g})")
    print(f"{len(batches)} real batches of {batches[0].shape}, {net_px / 1e6:.1f} network Mpx, "
          f"{a.repeats} interleaved repeats")
    print(f"{'runtime':<22}{'ms/batch':>16}{'Mpx/s':>8}{'GFLOP/s':>9}{'% peak':>8}{'x keras':>8}"
          f"{'cpu/wall':>9}{'classes = keras':>17}{'max |dp|':>10}")
    for name in names:
        w = [x for x, _ in rows[name]]
        c = [y / x for x, y in rows[name]]
        med = statistics.median(w)
        d = {"wall_s": stat(w), "ms_per_batch": stat([x / len(batches) * 1e3 for x in w]),
             "net_mpx_s": net_px / 1e6 / med, "gflops": flops / 1e9 / med,
             "share_of_fp32_peak": flops / 1e9 / med / peak if peak else None,
             "speedup_over_keras": base / med, "cpu_per_wall": statistics.median(c), **agree[name]}
        figs["runtimes"][name] = d
        ms = d["ms_per_batch"]
        print(f"{name:<22}{ms['median']:>7.1f} [{ms['min']:.0f}–{ms['max']:.0f}]{d['net_mpx_s']:>8.2f}"
              f"{d['gflops']:>9.1f}{100 * d['share_of_fp32_peak']:>7.0f}%{d['speedup_over_keras']:>8.2f}"
              f"{d['cpu_per_wall']:>9.2f}{100 * d['class_agreement']:>16.4f}%{d['max_abs_dp']:>10.1e}")
    for k, v in figs["absent"].items():
        print(f"{k:<22}{v}")

    if not a.no_end_to_end:
        batches.clear()
        e2e = [k for k in ("keras", "openvino-float32", "openvino-bfloat16") if k in live]
        walls: dict[str, list] = {k: [] for k in e2e}
        for rep in range(a.repeats):
            for name in e2e[rep % len(e2e):] + e2e[:rep % len(e2e)]:
                t0 = time.perf_counter()
                predict_raster(src, work / f"{name}.tif", MODEL, options, overwrite=True, forward=live[name])
                walls[name].append(time.perf_counter() - t0)
        with rasterio.open(work / "keras.tif") as r:
            kc = r.read(1)
        base = statistics.median(walls["keras"])
        figs["end_to_end"] = {}
        print(f"end to end, predict_raster of the {a.size}² scene (default options), {a.repeats} interleaved:")
        for name in e2e:
            with rasterio.open(work / f"{name}.tif") as r:
                same = float((r.read(1) == kc).mean())
            med = statistics.median(walls[name])
            figs["end_to_end"][name] = {"wall_s": stat(walls[name]), "scene_mpx_s": a.size ** 2 / 1e6 / med,
                                        "speedup_over_keras": base / med, "class_agreement": same}
            print(f"  {name:<20} {med:6.2f} s [{min(walls[name]):.2f}–{max(walls[name]):.2f}]  "
                  f"{a.size ** 2 / 1e6 / med:5.2f} Mpx/s  x{base / med:.2f}  classes = keras {100 * same:.4f}%")
    print(json.dumps(figs))


if __name__ == "__main__":
    main()
