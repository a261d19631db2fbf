"""Exception and warning hierarchy.

Every error geoseg raises on bad input derives from :class:`GeosegError`, and each
also derives from the built-in type a Python caller would expect (``ValueError``,
``OSError``, ...). Adapters (the CLI, the QGIS plugin) turn a ``GeosegError`` into a
one-line message; anything else is a bug and keeps its traceback.
"""


class GeosegError(Exception):
    """Root of all geoseg errors."""


class ConfigError(GeosegError, ValueError):
    """An option or configuration value is invalid."""


class RasterError(GeosegError, OSError):
    """A raster cannot be opened, read or written, or does not fit the job."""


class OutputExistsError(GeosegError, FileExistsError):
    """The output exists and overwriting was not asked for."""


class ModelError(GeosegError, ValueError):
    """A model bundle is corrupt, incomplete or does not fit the input."""


class VectorError(GeosegError, OSError):
    """An AOI vector file cannot be read or used."""


class MissingDependencyError(GeosegError, ModuleNotFoundError):
    """An optional dependency (TensorFlow/Keras) is not installed."""


class Cancelled(GeosegError):
    """The run was cancelled through the progress callback."""


class GeosegWarning(UserWarning):
    """Root of geoseg warnings."""


class NotGeoreferencedWarning(GeosegWarning):
    """The raster has no CRS: areas are reported in pixels."""


class PixelSizeWarning(GeosegWarning):
    """The input pixel size differs from the one the model was trained at."""
