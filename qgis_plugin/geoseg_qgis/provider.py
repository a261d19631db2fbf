"""The ``geoseg`` Processing provider and its setting."""

from pathlib import Path

from qgis.core import QgsProcessingProvider
from qgis.PyQt.QtGui import QIcon

from .runner import SETTING

ICON = str(Path(__file__).with_name("icon.svg"))


class GeosegProvider(QgsProcessingProvider):
    def id(self):
        return "geoseg"

    def name(self):
        return "geoseg"

    def longName(self):  # noqa: N802
        return "geoseg: UNet segmentation, class areas, vectorize"

    def icon(self):
        return QIcon(ICON)

    def svgIconPath(self):  # noqa: N802
        return ICON

    def load(self):
        try:
            from processing.core.ProcessingConfig import ProcessingConfig, Setting
        except ImportError:  # no Processing plugin (e.g. a bare script): environment variable and PATH only
            pass
        else:
            ProcessingConfig.settingIcons[self.name()] = self.icon()
            ProcessingConfig.addSetting(Setting(
                self.name(), SETTING, "geoseg executable (the geoseg command, or a Python with geoseg installed)",
                "", valuetype=Setting.FILE))
            ProcessingConfig.readSettings()
        self.refreshAlgorithms()
        return True

    def unload(self):
        try:
            from processing.core.ProcessingConfig import ProcessingConfig
        except ImportError:
            return
        ProcessingConfig.removeSetting(SETTING)

    def loadAlgorithms(self):  # noqa: N802
        from .algorithms import ClassAreas, SegmentRaster, VectorizeClasses
        for alg in (SegmentRaster(), ClassAreas(), VectorizeClasses()):
            self.addAlgorithm(alg)

    def supportedOutputRasterLayerExtensions(self):  # noqa: N802  (geoseg writes GeoTIFF)
        return ["tif"]

    def supportedOutputVectorLayerExtensions(self):  # noqa: N802  (geoseg vectorize writes GeoPackage)
        return ["gpkg"]

    def supportedOutputTableExtensions(self):  # noqa: N802
        return ["csv"]
