"""The plugin object QGIS loads: registers the Processing provider."""

from qgis.core import QgsApplication


class GeosegPlugin:
    def __init__(self, iface=None):
        self.iface = iface
        self.provider = None

    def initProcessing(self):  # noqa: N802  (QGIS calls it; qgis_process calls only this one)
        if self.provider is None:
            from .provider import GeosegProvider
            self.provider = GeosegProvider()  # kept referenced: an unreferenced provider is collected
            QgsApplication.processingRegistry().addProvider(self.provider)

    def initGui(self):  # noqa: N802
        self.initProcessing()

    def unload(self):
        if self.provider is not None:
            QgsApplication.processingRegistry().removeProvider(self.provider)
            self.provider = None
