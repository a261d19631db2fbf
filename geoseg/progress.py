"""Progress reporting and cancellation, independent of any UI.

Every long operation (predict, areas, tile, evaluate, train) takes the same two
optional callbacks: ``progress(done, total)`` as units of work finish and
``is_cancelled()`` before starting more, both called from the thread that called
the operation. A cancelled operation raises :class:`geoseg.errors.Cancelled` and
leaves no output behind. The CLI draws a click progress bar from the first; the
QGIS plugin forwards both to ``QgsProcessingFeedback``.

A process can also be asked to stop from outside (the CLI's SIGTERM/SIGINT handler
calls :func:`signal_cancel`): every :class:`Reporter` then reports a cancel at its
next check, whatever callback it was given, so a signal stops a run where the run
itself checks, never in the middle of a C call, an import or the placing of the
outputs (:func:`shielded`). Where nothing checks (start-up, no operation running)
the signal handler interrupts at once, and where a check does not come within
:data:`GRACE_S` it interrupts then.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from pathlib import Path
from typing import Callable, Optional

from .errors import Cancelled

ProgressFn = Callable[[int, int], None]
CancelFn = Callable[[], bool]

__all__ = ["ProgressFn", "CancelFn", "Reporter", "signal_cancel", "cancel_requested", "shielded", "note_written",
           "written", "reset_run", "GRACE_S"]

#: Seconds a signal waits for a cancel check before it interrupts the run anyway.
GRACE_S = 1.0


class _Run:
    """What this process's signal handler needs to know about the running operation."""

    def __init__(self) -> None:
        self.requested = False        # a signal asked to stop
        self.seen = False             # a cancel check has seen it: the run is stopping there
        self.polling = False          # an operation with cancel checks is running
        self.shield = 0               # > 0: outputs are being placed; a signal waits for the end
        self.written: list[Path] = []  # outputs placed so far


_run = _Run()


def reset_run() -> None:
    """Forget earlier requests and outputs (a new command in this process)."""
    global _run
    _run = _Run()


def cancel_requested() -> bool:
    """Whether a signal asked this process to stop (what every check also sees)."""
    if _run.requested:
        _run.seen = True
    return _run.requested


def signal_cancel(signum: int | None = None, grace: float = GRACE_S) -> bool:
    """Ask the running operation to stop at its next cancel check (for a signal
    handler, on the main thread). Returns True when the handler should interrupt at
    once instead (raise ``KeyboardInterrupt``): nothing checks (start-up, between
    operations), or a second signal came that no check has seen yet.

    A run that has placed outputs (or is placing them) is never interrupted by the
    handler: it stops at its next check, if any, and otherwise ends as it would have.
    Without ``signal.pthread_kill`` (Windows) every signal interrupts at once, unless
    outputs were placed."""
    again = _run.requested and not _run.seen
    _run.requested = True
    if _run.shield or _run.written or _run.seen:
        return False
    if not _run.polling or again or signum is None or not hasattr(signal, "pthread_kill"):
        return True
    run, main = _run, threading.main_thread().ident

    def escalate() -> None:  # no check came: signal again, which interrupts (see above)
        if run is _run and not run.seen:
            try:
                signal.pthread_kill(main, signum)
            except (OSError, ValueError):
                pass
    t = threading.Timer(grace, escalate)
    t.daemon = True
    t.start()
    return False


@contextlib.contextmanager
def shielded():
    """Placing outputs: a signal arriving meanwhile waits (:func:`signal_cancel`)."""
    _run.shield += 1
    try:
        yield
    finally:
        _run.shield -= 1


def note_written(paths) -> None:
    """Outputs placed (by :mod:`geoseg.files`): an interrupt after this says so."""
    _run.written.extend(Path(p) for p in paths)


def written() -> list[Path]:
    """The outputs this process placed since :func:`reset_run`."""
    return list(_run.written)


class Reporter:
    """Wraps the optional callbacks so the engine can call them unconditionally."""

    def __init__(self, progress: Optional[ProgressFn] = None, is_cancelled: Optional[CancelFn] = None,
                 total: int = 0) -> None:
        self._progress = progress
        self._is_cancelled = is_cancelled
        self.total = total
        self.done = 0
        self._reported = -1
        _run.polling = True

    def cancelled(self) -> bool:
        """Whether the caller (or a signal, :func:`signal_cancel`) has asked to cancel
        (a ``CancelFn`` to hand on)."""
        return cancel_requested() or (self._is_cancelled is not None and bool(self._is_cancelled()))

    def check(self) -> None:
        if self.cancelled():
            raise Cancelled("cancelled")

    def advance(self, n: int = 1) -> None:
        """Count finished units (any thread); :meth:`report` tells the callback."""
        self.done += n

    def step(self, n: int = 1) -> None:
        """For single-threaded loops: count ``n`` finished units, report, then stop
        here if the caller has asked to cancel."""
        self.advance(n)
        self.report()
        self.check()

    def report(self) -> None:
        """Call the progress callback if there is news (from the calling thread only,
        so a UI callback never runs on a worker thread)."""
        done = self.done
        if self._progress is not None and done != self._reported:
            self._reported = done
            self._progress(done, self.total)
