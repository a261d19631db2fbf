"""The local executor: the plan's schedule with reading and writing overlapped.

::

    reader thread ──> (calling thread) Batcher + forward ──> writer thread ──> sink
       read_unit         batches as the plan fixes them         sink.write(UnitResult)
                                                                 in plan order

A reader thread reads units ahead, the calling thread batches windows exactly as
:class:`geoseg.unit.Batcher` says (so the output does not depend on ``prefetch`` or
timing) and runs the compiled model, and a writer thread hands finished blocks to
the sink in plan order. Memory depends on the window/block sizes and queue depth,
never on the scene size. Progress and cancellation are reported and checked from
the calling thread only.
"""

from __future__ import annotations

import os
import queue
import threading
import time
from dataclasses import dataclass
from typing import Callable

import numpy as np
import rasterio
import rasterio.env

from .progress import Reporter
from .sources import owned_source
from .unit import Batcher, Forward, Plan, UnitResult, read_unit

__all__ = ["run_plan", "RunStats", "GDAL_CACHE_MB", "gdal_env", "cache_bytes"]

#: The least GDAL block cache during a run (MB). The cache is sized to the scene's
#: width (see :func:`cache_bytes`) unless GDAL_CACHEMAX is set in the environment.
GDAL_CACHE_MB = 96
#: The most (MB): beyond it a very wide scene re-decodes some input blocks instead.
GDAL_CACHE_MAX_MB = 1024
#: For an uncompressed local GeoTIFF, whose blocks cost only a copy to read again (MB).
UNCOMPRESSED_CACHE_MB = 16


def cache_bytes(plan: Plan, src) -> int:
    """The GDAL block cache that lets every input block be decoded once.

    Units are read row by row, each with its context margin, so a row of units touches
    a band of input blocks ``ceil((block + 2 margin) / block height) + 1`` blocks tall
    across the whole width; the next row shares the bottom ones. Holding that band
    costs width x band height x bytes per pixel of the bands read: e.g. 3 x 512 rows x
    10980 px x 12 B = 135 MB (+10 %, +16 MB) for a Sentinel-2 tile of 6 uint16 bands in
    512 px tiles. An uncompressed local GeoTIFF gets a small cache: re-reading one of its
    blocks is a copy from the OS's page cache."""
    units = plan.grid.units
    ds = getattr(src, "ds", None)
    if not units:
        return GDAL_CACHE_MB << 20
    if ds is not None and ds.driver == "GTiff" and ds.compression is None and not str(ds.name).startswith("/vsi"):
        return UNCOMPRESSED_CACHE_MB << 20  # a block costs a copy from the OS's page cache: not worth memory
    rows = max(u.read_rect.height for u in units)
    bh = 256
    shapes = getattr(ds, "block_shapes", None)
    if shapes:
        bh = max(int(h) for h, _w in shapes)
    band_rows = (-(-rows // bh) + 1) * bh
    bpp = sum(np.dtype(src.dtypes[b - 1]).itemsize for b in plan.bands)
    need = int(1.1 * src.width * band_rows * bpp) + (16 << 20)
    return min(max(need, GDAL_CACHE_MB << 20), GDAL_CACHE_MAX_MB << 20)


def set_cache(nbytes: int) -> None:
    """Set GDAL's block cache (one per process) for this run and after it, unless
    GDAL_CACHEMAX is set in the environment. Not restored at the end of the run: an
    Env's exit would put back GDAL's default, 5 % of RAM, while the writer still writes."""
    if "GDAL_CACHEMAX" not in os.environ:
        rasterio.env.set_gdal_config("GDAL_CACHEMAX", int(nbytes))


def gdal_env(cache: int | None = GDAL_CACHE_MB << 20, **extra) -> rasterio.Env:
    """A rasterio Env for a thread: GDAL messages to logging, and a bounded block cache
    of ``cache`` bytes (rasterio takes an integer GDAL_CACHEMAX as bytes). GDAL's cache
    size is one per process: ``cache=None`` leaves it as it is (threads of one run)."""
    opts = dict(extra)
    if cache is not None and "GDAL_CACHEMAX" not in os.environ:
        opts["GDAL_CACHEMAX"] = int(cache)
    return rasterio.Env(**opts)


@dataclass
class RunStats:
    model_seconds: float = 0.0
    windows_run: int = 0
    input_pixels: int = 0      # pixels the network looked at (sum of the run windows)
    batches: int = 0


class _Stop(Exception):
    pass


def run_plan(plan: Plan, forward: Forward, write: Callable[[UnitResult], None], reporter: Reporter,
             prefetch: int = 3) -> RunStats:
    """Run every task of ``plan`` and pass each finished block to ``write`` in plan order.

    ``write`` runs on the writer thread; an exception in any thread stops the run and
    is raised here; ``reporter`` counts written blocks and may cancel the run."""
    tasks = plan.tasks()
    in_q: queue.Queue = queue.Queue(maxsize=prefetch)
    out_q: queue.Queue = queue.Queue(maxsize=prefetch)
    stop = threading.Event()
    errors: list[BaseException] = []
    stats = RunStats()
    end_of_task = object()

    def put(q: queue.Queue, item) -> None:
        while not stop.is_set():
            try:
                q.put(item, timeout=0.1)
                return
            except queue.Full:
                continue
        raise _Stop

    def reader() -> None:
        try:
            # GDAL error handlers are per thread: this thread's Env routes its warnings
            # to logging; the source is opened here, in the thread that reads it.
            with gdal_env(None), owned_source(plan.source) as src:
                set_cache(cache_bytes(plan, src))
                for task in tasks:
                    for u in task:
                        if stop.is_set():
                            return
                        put(in_q, read_unit(src, u, plan))
                    put(in_q, end_of_task)
            put(in_q, None)
        except _Stop:
            pass
        except BaseException as e:  # noqa: BLE001 - re-raised in the calling thread
            errors.append(e)
            stop.set()

    def writer() -> None:
        try:
            with gdal_env(None):  # this thread's GDAL messages to logging (the cache is the reader's)
                write_loop()
        except BaseException as e:  # noqa: BLE001
            errors.append(e)
            stop.set()

    def write_loop() -> None:
        while True:
            try:
                item = out_q.get(timeout=0.1)
            except queue.Empty:
                if stop.is_set():
                    return
                continue
            if item is None:
                return
            write(item)
            reporter.advance()

    def run(batch) -> None:
        t0 = time.perf_counter()
        n, px = Batcher.run(batch, forward)
        stats.model_seconds += time.perf_counter() - t0
        stats.batches += 1
        stats.windows_run += n
        stats.input_pixels += px

    rt = threading.Thread(target=reader, name="geoseg-reader", daemon=True)
    wt = threading.Thread(target=writer, name="geoseg-writer", daemon=True)
    rt.start()
    wt.start()
    batcher = Batcher(plan.batch_size)
    try:
        while True:
            reporter.check()
            reporter.report()
            if errors:
                break
            try:
                item = in_q.get(timeout=0.1)
            except queue.Empty:
                if not rt.is_alive() and in_q.empty():
                    break
                continue
            if item is None:
                break
            batches = batcher.end_task() if item is end_of_task else batcher.add(item)
            for batch in batches:
                run(batch)
            for res in batcher.done(plan):
                put(out_q, res)
        if not errors:
            put(out_q, None)
            while wt.is_alive() and not errors:
                wt.join(0.1)
                reporter.check()
                reporter.report()
    except _Stop:
        pass  # the writer or reader failed: its error is raised below
    except BaseException:
        stop.set()
        raise
    finally:
        if errors or wt.is_alive():
            stop.set()
        # Both threads end soon after ``stop`` (the writer after the block it is
        # writing): wait for them, so no dataset is closed under a thread still using it.
        rt.join()
        wt.join()
    if errors:
        raise errors[0]
    reporter.report()
    return stats
