"""How a command reports while it runs: a click progress bar for people, or the
JSON-lines protocol for programs (``geoseg --progress jsonl ...``; the QGIS plugin).

The protocol (version :data:`PROTOCOL`): one JSON object per line on standard output,
each with ``"v"`` and ``"event"``:

- ``{"event": "progress", "done": n, "total": m, "label": ...}`` as units finish;
- ``{"event": "log", "level": "warning", "message": ...}`` for warnings and log records;
- exactly one final event, the last line:

  - ``{"event": "result", "command": ..., "outputs": {...}, ...}`` (exit code 0), sent
    once the command has returned, so its outputs are in place; ``--help`` and
    ``--version`` (and anything else that ends without a result of its own) send a
    result with ``"text"``, what would have been printed;
  - ``{"event": "error", "message": ..., "exit_code": ...}`` (exit code 1, or 2 for a
    usage error; an unexpected failure says "please report"). When the command had
    results before it failed (``predict`` with several inputs, some failed) the error
    event carries them too (``results``, ``failed``);
  - ``{"event": "cancelled", "message": ..., "written": [...]}`` (exit code 130,
    SIGTERM or SIGINT): nothing half-written; ``written`` lists outputs finished
    before the interrupt (earlier inputs of several), usually none.

Human-readable logs still go to standard error; nothing else is written to standard
output in this mode.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import os
import sys
import threading

import click

PROTOCOL = 1
MODES = ("bar", "jsonl", "none")
FINAL = ("result", "error", "cancelled")
_lock = threading.Lock()
_protocol_out = {"stream": None}
#: forced: jsonl asked for on the command line (before a context exists: --help, usage
#: errors); pending: the command's result, sent when it returns; final: one was sent
_run = {"forced": False, "pending": None, "final": False}


def force_machine(on: bool) -> None:
    """``--progress jsonl`` seen on the command line, before click has parsed it."""
    _run["forced"] = on


def reset() -> None:
    """A new command: no result held, no final event sent yet."""
    _run["pending"], _run["final"] = None, False


def final_sent() -> bool:
    return _run["final"]


def claim_stdout() -> None:
    """In ``jsonl`` mode standard output carries protocol lines only: keep the real
    stdout for them and send everything else written to file descriptor 1 (prints,
    Keras progress, C libraries) to stderr."""
    if _protocol_out["stream"] is not None:
        return
    sys.stdout.flush()
    try:
        fd = os.dup(1)
        os.dup2(2, 1)
        _protocol_out["stream"] = os.fdopen(fd, "w", encoding="utf-8", buffering=1)
    except (OSError, ValueError, io.UnsupportedOperation):  # no real fds (e.g. click's test runner)
        _protocol_out["stream"] = sys.stdout
        sys.stdout = sys.stderr


def mode() -> str:
    """The running command's progress mode (``bar`` outside a geoseg command)."""
    ctx = click.get_current_context(silent=True)
    obj = ctx.find_root().obj if ctx is not None else None
    return obj.get("progress", "bar") if isinstance(obj, dict) else "bar"


def machine() -> bool:
    """True in ``--progress jsonl`` mode: standard output carries protocol lines only."""
    return _run["forced"] or mode() == "jsonl"


def emit(event: str, **fields) -> None:
    """Write one protocol line (a no-op unless in ``jsonl`` mode). Of the final events
    (:data:`FINAL`) only the first is sent: a run ends once."""
    if not machine():
        return
    if event in FINAL:
        if _run["final"]:
            return
        _run["final"] = True
    line = json.dumps({"v": PROTOCOL, "event": event, **fields}, default=str, allow_nan=False)
    out = _protocol_out["stream"] or sys.stdout
    with _lock:
        out.write(line + "\n")
        out.flush()


def table_records(table) -> list[dict]:
    """An area table as the rows of its CSV (same columns; numbers as numbers)."""
    from geoseg.areas import areas_csv_text  # noqa: PLC0415
    rows = []
    for r in csv.DictReader(io.StringIO(areas_csv_text(table))):
        rec = {}
        for k, v in r.items():
            if k in ("class_id", "pixels"):
                rec[k] = int(v)
            elif k in ("area_m2", "area_ha", "area_km2", "percent"):
                rec[k] = float(v) if v != "" else None
            else:
                rec[k] = v
        rows.append(rec)
    return rows


def emit_result(command: str, outputs: dict, **fields) -> None:
    """The command's ``result``: ``outputs`` maps a role to a path (None: not written).
    Held until the command returns (:func:`finish`): if it fails after this (several
    inputs, some failed), the ``error`` event carries these fields instead."""
    if machine():
        _run["pending"] = dict(command=command,
                               outputs={k: (None if v is None else str(v)) for k, v in outputs.items()}, **fields)


def finish(event: str | None = None, **fields) -> None:
    """Send the run's final event: the held result (``event`` None), or an ``error`` or
    ``cancelled`` event with ``fields`` and the held result's fields."""
    pending, _run["pending"] = _run["pending"], None
    if event is None:
        if pending is not None:
            emit("result", **pending)
        return
    emit(event, **{**(pending or {}), **fields})


@contextlib.contextmanager
def progress_bar(label: str, quiet: bool):
    """Yields a ``progress(done, total)`` callback: a bar on stderr (TTY only), or
    protocol ``progress`` events in ``jsonl`` mode."""
    if machine():
        def report(done: int, total: int) -> None:
            emit("progress", done=int(done), total=int(total), label=label)
        yield report
        return
    if quiet or mode() == "none" or not sys.stderr.isatty():
        yield None
        return
    state = {"bar": None, "done": 0}
    try:
        def cb(done: int, total: int) -> None:
            if state["bar"] is not None and done < state["done"]:  # next file
                state["bar"].__exit__(None, None, None)
                state["bar"], state["done"] = None, 0
            if state["bar"] is None:
                state["bar"] = click.progressbar(length=total, label=label, file=sys.stderr,
                                                 show_eta=True, show_percent=True)
                state["bar"].__enter__()
            state["bar"].update(done - state["done"])
            state["done"] = done
        yield cb
    finally:
        if state["bar"] is not None:
            state["bar"].__exit__(None, None, None)
