"""Training throughput (chips/s) and the share of step time spent waiting for input.

    .venv/bin/python bench/train_input.py [--chip 128] [--batch-size 8] [--steps 20]

Cuts chips from the bundled Sentinel-2 scene with ``geoseg tile``, then trains the
same FlexUNet for the same steps, side by side: fed by geoseg's streaming tf.data
pipeline (reads from disk, augmentation), by its Keras PyDataset pipeline (the one
backends without TensorFlow use, e.g. JAX on a GPU host), and from batches already in
memory. Input wait share = 1 - (in-memory step time / streaming step time).
Goal: <= 10 %. The train step is compiled as ``geoseg train`` compiles it (XLA, with
the confusion-matrix metric); a third run without XLA gives the XLA speed-up.
"""

import argparse
import os
import tempfile
import time
from pathlib import Path

import numpy as np

import common  # noqa: F401  (sets sys.path)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--chip", type=int, default=128)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--base-filters", type=int, default=16)
    ap.add_argument("--repeat", type=int, default=3, help="interleaved runs of each kind (the median is reported)")
    args = ap.parse_args()
    from geoseg.dataset import TileOptions, tile_rasters
    from geoseg.demo import SCENE, TRUTH
    from geoseg.model import build_unet, keras_module
    from geoseg.chips import MaskRule, list_chips
    from geoseg.loader import chip_statistics, make_dataset
    from geoseg.losses import make_confusion_metric, make_loss

    keras = keras_module()
    import tensorflow as tf
    with tempfile.TemporaryDirectory() as tmp:
        tile_rasters([(SCENE, TRUTH)], Path(tmp) / "c", TileOptions(chip=args.chip, stride=args.chip // 2, regions=1,
                                                                     fractions=(1, 0, 0)), label_nodata=None)
        pairs = list_chips(Path(tmp) / "c/train/images", Path(tmp) / "c/train/masks")
        st = chip_statistics(pairs, MaskRule.indexes(), 255, 2, 1e-4, 0.0)
        gain = (1e-4 / st.std).astype(np.float32)
        bias = (-st.mean / st.std).astype(np.float32)
        ds = make_dataset(pairs, ignore=255, gain=gain, bias=bias, batch_size=args.batch_size,
                          shuffle=True, augment=True, seed=1, chip_hw=(args.chip, args.chip), endless=True,
                          pipeline="tf.data")
        ds_keras = make_dataset(pairs, ignore=255, gain=gain, bias=bias, batch_size=args.batch_size,
                                shuffle=True, augment=True, seed=1, chip_hw=(args.chip, args.chip), endless=True,
                                pipeline="keras")
        mem = [b for b in ds.take(args.steps)]
        ds_mem = tf.data.Dataset.from_tensor_slices(
            (tf.concat([x for x, _ in mem], 0), tf.concat([y for _, y in mem], 0))).batch(args.batch_size).repeat()

        def run(data, jit=True):
            net = build_unet(2, 6, base_filters=args.base_filters, num_layers=4)
            net.compile(optimizer=keras.optimizers.Adam(1e-3), loss=make_loss("ce_dice", 2, 255),
                        metrics=[make_confusion_metric(2, 255, 0)], jit_compile=jit)
            net.fit(data, epochs=1, steps_per_epoch=3, verbose=0, shuffle=False)  # compile / warm up
            t0 = time.perf_counter()
            net.fit(data, epochs=1, steps_per_epoch=args.steps, verbose=0, shuffle=False)
            return (time.perf_counter() - t0) / args.steps

        # the pipeline alone: CPU time it costs per batch (it shares the cores with the step)
        it = iter(ds)
        next(it)
        c0, w0 = time.process_time(), time.perf_counter()
        for _ in range(3 * args.steps):
            next(it)
        in_cpu, in_wall = (time.process_time() - c0) / (3 * args.steps), (time.perf_counter() - w0) / (3 * args.steps)
        del it

        res = {"stream": [], "keras": [], "memory": [], "nojit": []}
        for _ in range(args.repeat):  # interleaved: all see the same machine load
            res["stream"].append(run(ds))
            res["keras"].append(run(ds_keras))
            res["memory"].append(run(ds_mem))
            res["nojit"].append(run(ds, jit=False))
    ts, tk, tm, tn = (float(np.median(res[k])) for k in ("stream", "keras", "memory", "nojit"))
    shares = [max(0.0, 1 - m / s) for s, m in zip(res["stream"], res["memory"])]
    kshares = [max(0.0, 1 - m / s) for s, m in zip(res["keras"], res["memory"])]
    print(f"{len(pairs)} chips of {args.chip}² x 6 bands, batch {args.batch_size}, {args.steps} steps, "
          f"FlexUNet base {args.base_filters}")
    print(f"streaming from disk: {ts:.3f} s/step  ({args.batch_size / ts:.1f} chips/s)")
    print(f"streaming, PyDataset: {tk:.3f} s/step  ({args.batch_size / tk:.1f} chips/s)")
    print(f"from memory:         {tm:.3f} s/step  ({args.batch_size / tm:.1f} chips/s)")
    print(f"streaming, no XLA:   {tn:.3f} s/step  ({args.batch_size / tn:.1f} chips/s)")
    print(f"input pipeline alone: {in_wall * 1e3:.0f} ms/batch wall, {in_cpu * 1e3:.0f} ms/batch CPU "
          f"({in_cpu / (tm * os.cpu_count()):.3f} of the cores' time in one in-memory step)")
    print(f"input wait share per run: {', '.join(f'{v:.3f}' for v in shares)}")
    print(f"input wait share per run, PyDataset pipeline: {', '.join(f'{v:.3f}' for v in kshares)}")
    print(f"INPUT WAIT SHARE = {max(0.0, 1 - tm / ts):.3f} tf.data, {max(0.0, 1 - tm / tk):.3f} PyDataset "
          "(medians)   (goal <= 0.10)")
    print(f"XLA SPEED-UP = {tn / ts:.2f}x")


if __name__ == "__main__":
    main()
