"""Progress reporting and cancellation, independent of any UI.

Every long operation (predict, areas, tile, evaluate, train) takes the same two
optional callbacks: ``progress(done, total)`` as units of work finish and
``is_cancelled()`` before starting more, both called from the thread that called
the operation. A cancelled operation raises :class:`geoseg.errors.Cancelled` and
leaves no output behind. The CLI draws a click progress bar from the first; the
QGIS plugin forwards both to ``QgsProcessingFeedback``.
"""

from __future__ import annotations

from typing import Callable, Optional

from .errors import Cancelled

ProgressFn = Callable[[int, int], None]
CancelFn = Callable[[], bool]

__all__ = ["ProgressFn", "CancelFn", "Reporter"]


class Reporter:
    """Wraps the optional callbacks so the engine can call them unconditionally."""

    def __init__(self, progress: Optional[ProgressFn] = None, is_cancelled: Optional[CancelFn] = None,
                 total: int = 0) -> None:
        self._progress = progress
        self._is_cancelled = is_cancelled
        self.total = total
        self.done = 0
        self._reported = -1

    def cancelled(self) -> bool:
        """Whether the caller has asked to cancel (a ``CancelFn`` to hand on)."""
        return self._is_cancelled is not None and bool(self._is_cancelled())

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
