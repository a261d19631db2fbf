"""Running the plan on a Dask cluster: the same tasks, the same writer, the same bytes.

::

    client: make_plan ──> submit task i (a row of output blocks) in a sliding window
                    ──> commit task i's blocks in plan order through the run's writer
    worker: load_forward(model ref) once per process ──> process_task(plan, row i)
                    (reads its own windows, normalises, batches, runs the model, merges)

Each task is :func:`geoseg.unit.process_task` over one row of the plan's output
blocks, batched exactly as the local pipeline batches it, and the client hands the
blocks to the same :class:`geoseg.output.ClassRasterWriter` in plan order, so the
class raster, confidence, style, RAT and area CSV are the bytes a local run writes.

* The model travels as a :class:`geoseg.model.ModelRef` (path and content hash):
  a worker compiles it once per process. Workers that cannot see the path (an
  external cluster without shared storage) get the bundle's bytes, shipped once per
  worker as a task result they fetch, never a pickled Keras object.
* Workers read their windows themselves: inputs must be on storage every worker sees
  (a shared file system, ``/vsicurl/``, ``/vsis3/``...). Relative paths are made
  absolute on the client.
* The client holds at most ``window`` task results (rows of class blocks), not the
  scene; a cancel (Ctrl-C, the progress callback) cancels the outstanding futures.
* A worker that dies is replaced by its nanny and Dask re-runs its task elsewhere:
  the task is pure, so the output is unchanged.

Dask (``distributed``) is an optional dependency: ``pip install 'geoseg[xarray]'``.
"""

from __future__ import annotations

import contextlib
import logging
import os
import tempfile
import time
import uuid
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np

from .errors import ConfigError, MissingDependencyError, ModelError
from .pipeline import RunStats, cache_bytes, gdal_env, set_cache
from .progress import Reporter
from .sources import is_plain_path, owned_source
from .unit import Plan, UnitResult, process_task

log = logging.getLogger("geoseg")

__all__ = ["local_cluster", "connect", "cluster_client", "run_plan_distributed", "worker_threads", "quiet_dask",
           "model_loads"]


def _distributed():
    try:
        import distributed  # noqa: PLC0415
    except ImportError:
        raise MissingDependencyError("running on a Dask cluster needs dask.distributed: "
                                     "pip install 'geoseg[xarray]' (or 'distributed>=2024.8')") from None
    return distributed


def worker_threads(workers: int, cores: int | None = None) -> int:
    """Model threads per worker process so that ``workers`` processes share the
    machine's cores without oversubscribing them (at least 1)."""
    if cores is None:
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, cores // max(1, workers))


def _worker_env(threads: int) -> dict[str, str]:
    """Environment of worker processes: TensorFlow's thread pools sized to the worker's
    share of the machine (it reads TF_NUM_*_THREADS), its C++ start-up lines silenced.
    (JAX on CPU takes its threads from XLA_FLAGS, left as the user sets it.)"""
    return {"TF_NUM_INTRAOP_THREADS": str(threads), "TF_NUM_INTEROP_THREADS": "1", "TF_CPP_MIN_LOG_LEVEL": "2"}


def local_cluster(workers: int, *, threads: int | None = None, dashboard: bool = False,
                  memory_limit: str | int = "auto"):
    """A :class:`distributed.LocalCluster` on loopback: ``workers`` processes, one Dask
    thread each, the model's threads set to ``threads`` per worker (default: the
    machine's cores shared out), no dashboard unless asked (then on port 8787)."""
    if not isinstance(workers, int) or isinstance(workers, bool) or workers < 1:
        raise ConfigError(f"workers must be a positive integer, got {workers!r}", option="workers")
    distributed = _distributed()
    threads = threads or worker_threads(workers)
    return distributed.LocalCluster(
        n_workers=workers, threads_per_worker=1, processes=True, host="127.0.0.1",
        dashboard_address=":8787" if dashboard else None, memory_limit=memory_limit,
        # without a dashboard the scheduler's HTTP endpoint (health, metrics) still
        # listens: on a free loopback port, not on 8787 (two runs at once collide there)
        scheduler_kwargs={} if dashboard else {"dashboard": False, "dashboard_address": "127.0.0.1:0"},
        silence_logs=logging.ERROR, env=_worker_env(threads))


def connect(address: str):
    """A client of the Dask scheduler at ``address`` (``tcp://host:8786``, or a
    scheduler file path), with a one-line error when it cannot be reached."""
    distributed = _distributed()
    try:
        if address.endswith(".json") and Path(address).is_file():
            return distributed.Client(scheduler_file=address, timeout="20s")
        return distributed.Client(address, timeout="20s")
    except (OSError, TimeoutError, ValueError) as e:
        raise ConfigError(f"cannot reach the Dask scheduler at {address}: {e}", option="scheduler") from None


@contextlib.contextmanager
def cluster_client(workers: int | None = None, scheduler: str | None = None, *,
                   dashboard: bool = False) -> Iterator[Any]:
    """``with cluster_client(workers=4) as client``: a LocalCluster (closed at the end)
    or the existing cluster at ``scheduler``; yields None when neither is given."""
    if workers is not None and scheduler is not None:
        raise ConfigError("give either a number of local workers or a scheduler address, not both",
                          option="workers")
    if workers is None and scheduler is None:
        yield None
        return
    with quiet_dask():
        yield from _client(workers, scheduler, dashboard)


@contextlib.contextmanager
def quiet_dask() -> Iterator[None]:
    """Dask's INFO lines (cluster start-up, connections, a closed comm's traceback)
    kept out of geoseg's log unless debugging (``-vv``); warnings (a worker lost and
    restarted) still show."""
    _distributed()  # its import configures its loggers: quieten them after that
    loggers = [lg for name, lg in logging.Logger.manager.loggerDict.items()
               if isinstance(lg, logging.Logger) and (name == "distributed" or name.startswith("distributed."))]
    old = [lg.level for lg in loggers]
    if not logging.getLogger().isEnabledFor(logging.DEBUG):
        for lg in loggers:
            lg.setLevel(max(lg.getEffectiveLevel(), logging.WARNING))
    try:
        yield
    finally:
        for lg, level in zip(loggers, old):
            lg.setLevel(level)


def _client(workers: int | None, scheduler: str | None, dashboard: bool) -> Iterator[Any]:
    if scheduler is not None:
        client = connect(scheduler)
        try:
            yield client
        finally:
            client.close()
        return
    distributed = _distributed()
    with local_cluster(workers, dashboard=dashboard) as cluster, distributed.Client(cluster) as client:
        if dashboard:
            log.warning("Dask dashboard: %s", client.dashboard_link)
        yield client


# --------------------------------------------------------------------------- workers

#: How many times this process built a forward function from shipped bundle bytes.
_SHIPPED: dict[str, str] = {}


def _worker_forward(ref, shipped: bytes | None):
    """The worker's compiled forward pass of ``ref`` (once per process): from the path
    when this worker sees the same bundle there, else from the shipped bytes, written
    once to a local file named by their hash."""
    from dataclasses import replace  # noqa: PLC0415
    from .model import load_forward  # noqa: PLC0415  (Keras on workers only)
    p = Path(ref.path)
    if shipped is None:
        if not p.is_file():
            raise ModelError(f"worker cannot read the model bundle {ref.path}: put it on storage every worker "
                             "sees, or let geoseg ship it (ship_model=True)")
        return load_forward(ref)
    local = _SHIPPED.get(ref.sha256)
    if local is None:
        d = Path(tempfile.gettempdir()) / "geoseg-models"
        d.mkdir(exist_ok=True)
        local = str(d / f"{ref.sha256}.geoseg")
        if not Path(local).is_file():
            tmp = Path(local + f".{os.getpid()}.tmp")
            tmp.write_bytes(shipped)
            os.replace(tmp, local)
        _SHIPPED[ref.sha256] = local
    return load_forward(replace(ref, path=local))


@dataclass
class _TaskOut:
    blocks: list[tuple[np.ndarray, np.ndarray | None]]
    windows: int
    pixels: int
    batches: int
    seconds: float


def _run_task(plan: Plan, ref, shipped: bytes | None, index: int) -> _TaskOut:
    """One task on a worker: a row of output blocks, exactly as the local run makes it."""
    fwd = _worker_forward(ref, shipped)
    out = _TaskOut([], 0, 0, 0, 0.0)

    def counted(x: np.ndarray) -> np.ndarray:
        t0 = time.perf_counter()
        y = fwd(x)
        out.seconds += time.perf_counter() - t0
        out.batches += 1
        out.windows += x.shape[0]
        out.pixels += x.shape[0] * x.shape[1] * x.shape[2]
        return y

    units = plan.tasks()[index]
    with gdal_env(None), owned_source(plan.source) as src:
        set_cache(cache_bytes(plan, src))
        results = process_task(plan, units, counted, src)
    out.blocks = [(r.classes, r.confidence) for r in results]
    return out


def _identity(x):
    return x


def model_loads() -> int:
    """Bundles this process loaded (run on workers by tests: once per worker)."""
    from .model import LOADS  # noqa: PLC0415
    return LOADS["count"]


def _sees_bundle(path: str, sha256: str) -> bool:
    from .model import file_sha256  # noqa: PLC0415
    p = Path(path)
    return p.is_file() and file_sha256(p) == sha256


# --------------------------------------------------------------------------- client

def _absolute_source(plan: Plan) -> Plan:
    s = plan.source
    if isinstance(s, (str, os.PathLike)) and is_plain_path(s) and not Path(s).is_absolute():
        return replace(plan, source=str(Path(s).absolute()))
    return plan


def _n_workers(client) -> int:
    try:
        return len(client.scheduler_info(n_workers=-1).get("workers", {}))
    except TypeError:  # older distributed: no n_workers argument
        return len(client.scheduler_info().get("workers", {}))


def run_plan_distributed(client, plan: Plan, ref, write: Callable[[UnitResult], None], reporter: Reporter, *,
                         window: int | None = None, ship_model: bool | None = None) -> RunStats:
    """Run ``plan`` on the cluster of ``client``, writing every block through ``write``
    in plan order (the output is the local run's, byte for byte).

    Args:
        ref: the model's :class:`geoseg.model.ModelRef`.
        window: tasks in flight (default: 2 per worker, at least 2); the client holds
            at most this many rows of class blocks.
        ship_model: send the bundle's bytes to the workers (once each) instead of its
            path; None: only when some worker cannot read the path.
    """
    distributed = _distributed()
    plan = _absolute_source(plan)
    tasks = plan.tasks()
    stats = RunStats()
    if not tasks:
        return stats
    n_workers = _n_workers(client)
    if n_workers == 0:
        log.warning("the Dask cluster has no workers yet: the tasks wait until one joins")
    if ship_model is None:
        seen = client.run(_sees_bundle, ref.path, ref.sha256)
        ship_model = not seen or not all(seen.values())
    token = uuid.uuid4().hex[:12]
    # Plan and bundle bytes enter the cluster once, as task results the scheduler can
    # recompute (their workers may die); every task depends on them.
    plan_f = client.submit(_identity, plan, key=f"geoseg-plan-{token}", pure=False)
    shipped = client.submit(_identity, Path(ref.path).read_bytes(), key=f"geoseg-model-{token}",
                            pure=False) if ship_model else None
    window = window or max(2, 2 * n_workers)
    futures: dict[int, Any] = {}
    submitted = 0
    try:
        for i, units in enumerate(tasks):
            while submitted < len(tasks) and submitted < i + window:
                futures[submitted] = client.submit(_run_task, plan_f, ref, shipped, submitted,
                                                   key=f"geoseg-task-{token}-{submitted}", pure=False)
                submitted += 1
            fut = futures.pop(i)
            while True:
                reporter.check()
                reporter.report()
                try:
                    out = fut.result(timeout=0.2)
                    break
                except (FutureTimeout, distributed.TimeoutError):
                    continue
            stats.model_seconds += out.seconds
            stats.batches += out.batches
            stats.windows_run += out.windows
            stats.input_pixels += out.pixels
            for unit, (classes, conf) in zip(units, out.blocks, strict=True):
                write(UnitResult(unit, classes, conf))
                reporter.advance()
            del out, fut
    finally:
        pending = list(futures.values()) + [plan_f] + ([shipped] if shipped is not None else [])
        client.cancel(pending)
    reporter.report()
    return stats
