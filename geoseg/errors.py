"""Exception and warning hierarchy.

Every error geoseg raises on bad input derives from :class:`GeosegError`, and each
also derives from the built-in type a Python caller would expect (``ValueError``,
``OSError``, ...). Adapters (the CLI, the QGIS plugin) turn a ``GeosegError`` into a
one-line message; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations


class GeosegError(Exception):
    """Root of all geoseg errors.

    ``option`` names the parameter of the Python API (``"overwrite"``, ``"bands"``,
    ``"label_nodata"``...) whose setting would resolve the error. The core's messages
    never spell a command-line flag: each adapter adds its own hint from ``option``
    (the CLI "use --overwrite to replace it", the QGIS plugin its parameter's label),
    as rasterio keeps ``--overwrite`` in ``rio``'s helpers.
    """

    def __init__(self, *args: object, option: str | None = None) -> None:
        super().__init__(*args)
        self.option = option


class ConfigError(GeosegError, ValueError):
    """An option or configuration value is invalid."""


class RasterError(GeosegError, OSError):
    """A raster cannot be opened, read or written, or does not fit the job."""


class OutputExistsError(GeosegError, FileExistsError):
    """The output exists and overwriting was not asked for."""


class ModelError(GeosegError, ValueError):
    """A model bundle is corrupt, incomplete or does not fit the input."""


class VectorError(GeosegError, OSError):
    """A vector file (an AOI, a polygon output) cannot be read, written or used."""


class MissingDependencyError(GeosegError, ModuleNotFoundError):
    """An optional dependency (TensorFlow/Keras) is not installed."""


class Cancelled(GeosegError):
    """The run was cancelled through the progress callback."""


class BatchError(GeosegError):
    """Some inputs of a run over several failed; the others were written.

    ``results`` holds what succeeded, ``failures`` (input, error) pairs."""

    def __init__(self, results: list, failures: list) -> None:
        names = "; ".join(f"{getattr(p, 'name', p)}: {e}" for p, e in failures)
        super().__init__(f"{len(failures)} of {len(results) + len(failures)} inputs failed ({names})")
        self.results = results
        self.failures = failures


class GeosegWarning(UserWarning):
    """Root of geoseg warnings."""


class NotGeoreferencedWarning(GeosegWarning):
    """The raster has no CRS: areas are reported in pixels."""


class UnusedKeyWarning(GeosegWarning):
    """A configuration key is read (for compatibility) but has no effect."""


class NoValidDataWarning(GeosegWarning):
    """A result is empty for a reason the user would want to know (no valid input pixel)."""


class InputLevelWarning(GeosegWarning):
    """The input's product level (L1C, L2A) is not the one the model was trained on."""


class UndeclaredNodataWarning(GeosegWarning):
    """The input looks like it has a nodata border but declares no nodata."""


class RadiometryWarning(GeosegWarning):
    """An input's radiometry metadata disagree (e.g. STAC raster:bands vs its offset flag); the message says which was used."""


class PixelSizeWarning(GeosegWarning):
    """The input pixel size differs from the one the model was trained at."""


class SplitWarning(GeosegWarning):
    """A class of the chips is missing from one of the train/valid/test splits."""


def one_line(e: BaseException) -> str:
    """The first line of an exception's message (its type name if it has none). A
    wrapper's "see previous exception" text gives way to the cause it points at."""
    while "previous exception" in str(e) and e.__cause__ is not None:
        e = e.__cause__
    s = str(e).strip().splitlines()
    return s[0] if s else type(e).__name__
