"""A click progress bar fed by the core's progress callback."""

from __future__ import annotations

import contextlib
import sys

import click


@contextlib.contextmanager
def progress_bar(label: str, quiet: bool):
    """Yields a ``progress(done, total)`` callback drawing a bar on stderr (TTY only)."""
    if quiet or not sys.stderr.isatty():
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
