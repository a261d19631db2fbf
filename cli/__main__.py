"""``python -m geoseg_cli``: the ``geoseg`` command (as the QGIS plugin runs it)."""

from .main import main

main()
