"""Render what a QGIS user sees of the geoseg plugin, as PNGs for the README.

    .venv/bin/python scripts/render_qgis.py [--out DIR]      (default DIR: docs/)

Writes, and prints the paths of:

- ``qgis_segment_result.png``: *Segment raster* run through Processing exactly as the
  toolbox runs it (``processing.runAndLoadResults("geoseg:segment", …)`` on the bundled
  Sentinel-2 scene and demo water model, class raster and areas CSV), so the class layer
  is styled by the plugin's layer post-processor as a user gets it; drawn with a print
  layout over the scene in true colour (B4, B3, B2; cumulative cut 2–98 %), with the
  layer's legend, a scale bar and the data credit.
- ``qgis_segment_dialog.png``: the Processing dialog of *Segment raster* (input layer and
  model filled in, advanced parameters expanded), grabbed offscreen.

Needs PyQGIS (Debian ``python3-qgis``, visible to the venv through system site packages)
and geoseg itself for the run: the plugin finds it through ``GEOSEG_EXECUTABLE`` (set
here to this checkout's ``.venv/bin/geoseg`` unless already set). Runs offscreen
(``QT_QPA_PLATFORM=offscreen``); text uses the DejaVu fonts (``fonts-dejavu-core``).
The segmentation is deterministic: re-running gives byte-identical PNGs (on the same
QGIS, fonts and Pillow). They are palette-quantised with Pillow when it is installed
(~250 KB and ~40 KB instead of ~1 MB and ~150 KB).

The system SQLite is preloaded (``RTLD_GLOBAL``) before QGIS is imported: TensorFlow and
QGIS in one process crash without it (here TensorFlow runs in geoseg's child process
only, but the preload costs nothing and keeps the script safe if the core gets imported).
"""

from __future__ import annotations

import argparse
import ctypes
import os
import shutil
import sys
import tempfile
from pathlib import Path

# before anything that loads SQLite (QGIS, GDAL, TensorFlow): see the docstring
ctypes.CDLL("libsqlite3.so.0", mode=ctypes.RTLD_GLOBAL)

REPO = Path(__file__).resolve().parents[1]
DATA = REPO / "geoseg" / "data"
SCENE = DATA / "s2_shanghai_scene.tif"
MODEL = DATA / "s2_water.geoseg"
PLUGIN_DIR = REPO / "qgis_plugin"
FONT = "DejaVu Sans"
FIGURE_WIDTH_PX = 1200


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=REPO / "docs", help="folder for the PNGs (default: docs/)")
    return ap.parse_args(argv)


def start_qgis():
    os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
    dejavu = Path("/usr/share/fonts/truetype/dejavu")
    if dejavu.is_dir():
        os.environ.setdefault("QT_QPA_FONTDIR", str(dejavu))
    exe = REPO / ".venv" / "bin" / "geoseg"
    if exe.is_file():
        os.environ.setdefault("GEOSEG_EXECUTABLE", str(exe))
    from qgis.core import QgsApplication
    from qgis.PyQt.QtGui import QFont

    app = QgsApplication([], True)
    app.initQgis()
    app.setFont(QFont(FONT, 9))
    return app


class Iface:
    """The few parts of QGIS's ``iface`` the Processing dialog touches."""

    def __init__(self):
        from qgis.gui import QgsBrowserGuiModel, QgsMapCanvas, QgsMessageBar
        from qgis.PyQt.QtWidgets import QMainWindow
        self._main = QMainWindow()
        self._canvas = QgsMapCanvas(self._main)
        self._bar = QgsMessageBar(self._main)
        self._browser = QgsBrowserGuiModel(self._main)

    def mainWindow(self):
        return self._main

    def mapCanvas(self):
        return self._canvas

    def messageBar(self):
        return self._bar

    def browserModel(self):
        return self._browser

    def activeLayer(self):
        return None

    def __getattr__(self, name):  # anything else: a no-op
        return lambda *a, **k: None


def init_processing():
    import qgis.utils
    qgis.utils.iface = Iface()  # before Processing's GUI modules import it
    sys.path.append("/usr/share/qgis/python/plugins")
    from processing.core.Processing import Processing
    Processing.initialize()
    sys.path.insert(0, str(PLUGIN_DIR))
    import geoseg_qgis
    plugin = geoseg_qgis.classFactory(None)
    plugin.initProcessing()
    return plugin


def run_segment(tmp: Path, scene: Path):
    """Segment raster as the toolbox runs it: results loaded into the project, the class
    layer styled by the plugin's post-processor."""
    import processing
    from qgis.core import QgsProcessingFeedback, QgsProject

    class Feedback(QgsProcessingFeedback):
        def reportError(self, error, fatalError=False):
            print("error:", error, file=sys.stderr)

    before = set(QgsProject.instance().mapLayers())
    res = processing.runAndLoadResults("geoseg:segment", {
        "INPUT": str(scene), "MODEL": str(MODEL),
        "OUTPUT": str(tmp / "s2_shanghai_water.tif"), "AREAS": str(tmp / "s2_shanghai_water_areas.csv"),
    }, feedback=Feedback())
    if not res:
        raise SystemExit("geoseg:segment failed")
    new = [QgsProject.instance().mapLayer(i) for i in set(QgsProject.instance().mapLayers()) - before]

    def loaded(path):
        found = [lyr for lyr in new if lyr.source().split("|")[0] == path]
        if not found:
            raise SystemExit(f"{path} was not loaded into the project: {[lyr.source() for lyr in new]}")
        return found[0]
    classes, areas = loaded(res["OUTPUT"]), loaded(res["AREAS"])
    print(f"loaded: {classes.name()!r} ({classes.renderer().type()} renderer: "
          + ", ".join(f"{c.label} {c.color.name()} alpha {c.color.alpha()}" for c in classes.renderer().classes())
          + f"); {areas.name()!r} (table, {areas.featureCount()} rows)", file=sys.stderr)
    return classes, areas


def add_imagery(scene: Path):
    """The scene as a user would show it: true colour, cumulative cut 2–98 %."""
    from qgis.core import (
        QgsContrastEnhancement,
        QgsMultiBandColorRenderer,
        QgsProject,
        QgsRasterLayer,
        QgsRasterMinMaxOrigin,
    )
    layer = QgsRasterLayer(str(scene), SCENE.stem, "gdal")
    if not layer.isValid():
        raise SystemExit(f"cannot open {SCENE}")
    renderer = QgsMultiBandColorRenderer(layer.dataProvider(), 3, 2, 1)  # B4, B3, B2
    layer.setRenderer(renderer)
    layer.setContrastEnhancement(QgsContrastEnhancement.StretchToMinimumMaximum,
                                 QgsRasterMinMaxOrigin.CumulativeCut, layer.extent())
    QgsProject.instance().addMapLayer(layer, False)
    QgsProject.instance().layerTreeRoot().addLayer(layer)  # bottom of the layer tree
    return layer


def text_format(size: float, bold: bool = False):
    from qgis.core import QgsTextFormat
    from qgis.PyQt.QtGui import QFont
    f = QgsTextFormat()
    font = QFont(FONT)
    font.setBold(bold)
    f.setFont(font)
    f.setSize(size)
    return f


def render_result(path: Path, imagery, classes, areas) -> None:
    from qgis.core import (
        QgsLayoutExporter,
        QgsLayoutFrame,
        QgsLayoutItemAttributeTable,
        QgsLayoutItemLabel,
        QgsLayoutItemLegend,
        QgsLayoutItemMap,
        QgsLayoutItemScaleBar,
        QgsLayoutPoint,
        QgsLayoutSize,
        QgsLayoutTable,
        QgsLayoutUtils,
        QgsLegendRenderer,
        QgsLegendStyle,
        QgsMapLayerLegendUtils,
        QgsPrintLayout,
        QgsProject,
        QgsUnitTypes,
    )
    from qgis.PyQt.QtCore import QSize, Qt
    from qgis.PyQt.QtGui import QColor, QFont

    project = QgsProject.instance()
    project.setCrs(imagery.crs())
    layout = QgsPrintLayout(project)
    layout.initializeDefaults()
    mm = QgsUnitTypes.LayoutMillimeters
    page_w, margin, legend_w = 300.0, 8.0, 78.0
    ext = imagery.extent()
    map_w = page_w - 3 * margin - legend_w
    map_h = map_w * ext.height() / ext.width()
    top = 24.0
    page_h = top + map_h + 14.0
    page = layout.pageCollection().page(0)
    page.setPageSize(QgsLayoutSize(page_w, page_h, mm))

    title = QgsLayoutItemLabel(layout)
    title.setText("geoseg ▸ Segment raster: water in Sentinel-2 (Shanghai, 2019-08-17)")
    title.setFont(QFont(FONT, 17, QFont.Bold))
    title.attemptMove(QgsLayoutPoint(margin, 7, mm))
    title.attemptResize(QgsLayoutSize(page_w - 2 * margin, 12, mm))
    layout.addLayoutItem(title)

    m = QgsLayoutItemMap(layout)
    m.attemptMove(QgsLayoutPoint(margin, top, mm))
    m.attemptResize(QgsLayoutSize(map_w, map_h, mm))
    m.setLayers([classes, imagery])  # top first
    m.setExtent(ext)
    m.setFrameEnabled(True)
    m.setFrameStrokeColor(QColor("#404040"))
    layout.addLayoutItem(m)

    legend = QgsLayoutItemLegend(layout)
    legend.setTitle("Layers")
    legend.setAutoUpdateModel(False)
    root = legend.model().rootGroup()
    root.removeAllChildren()
    # the class names only: without QGIS's band line ("Band 1: class (Palette)") for the classes,
    # and the imagery by its name alone (its band entries read "Band 3 (Blue)": the file's
    # colour interpretation, not Sentinel-2's)
    class_node = root.addLayer(classes)
    n = len(classes.legend().createLayerTreeModelLegendNodes(class_node))
    QgsMapLayerLegendUtils.setLegendNodeOrder(class_node, list(range(1, n)))
    scene_node = root.addLayer(imagery)
    scene_node.setUseLayerName(False)
    scene_node.setName(f"{imagery.name()}~true colour (B4, B3, B2)")
    QgsMapLayerLegendUtils.setLegendNodeOrder(scene_node, [])
    for node in (class_node, scene_node):
        legend.model().refreshLayerLegend(node)
    legend.setLinkedMap(m)
    legend.setStyleFont(QgsLegendStyle.Title, QFont(FONT, 15, QFont.Bold))
    legend.setStyleFont(QgsLegendStyle.Subgroup, QFont(FONT, 13, QFont.Bold))
    legend.setStyleFont(QgsLegendStyle.SymbolLabel, QFont(FONT, 12))
    legend.setSymbolWidth(9)
    legend.setSymbolHeight(6)
    legend.setWrapString("~")
    legend.setBoxSpace(0)
    legend.attemptMove(QgsLayoutPoint(margin * 2 + map_w, top, mm))
    layout.addLayoutItem(legend)
    # its size (adjustBoxSize() waits for a first paint): to place the areas table below it
    ctx = QgsLayoutUtils.createRenderContextForLayout(layout, None)
    legend_h = QgsLegendRenderer(legend.model(), legend.legendSettings()).minimumSize(ctx).height()

    # the "Class areas" table the run loaded (the AREAS output), under the legend
    table = QgsLayoutItemAttributeTable(layout)
    layout.addMultiFrame(table)
    table.setVectorLayer(areas)
    # edit the table's own columns: setColumns() with new QgsLayoutTableColumn objects
    # crashes QGIS 3.22 once a layer is set
    table.setDisplayedFields(["class_name", "area_ha", "percent"])
    cols = table.columns()
    for c, (heading, expr, align) in zip(cols, (
            ("class", '"class_name"', Qt.AlignLeft),
            ("hectares", 'format_number(to_real("area_ha"), 1)', Qt.AlignRight),
            ("% of scene", 'format_number(to_real("percent"), 1)', Qt.AlignRight))):
        c.setHeading(heading)
        c.setAttribute(expr)
        c.setHAlignment(align)
    table.setColumns(cols)
    table.setHeaderTextFormat(text_format(11, bold=True))
    table.setContentTextFormat(text_format(11))
    table.setHeaderHAlignment(QgsLayoutTable.FollowColumn)
    table.setCellMargin(1.6)
    table.setGridStrokeWidth(0.2)
    table.setGridColor(QColor("#808080"))
    table_top = top + legend_h + 6  # below the legend
    caption = QgsLayoutItemLabel(layout)
    caption.setText(areas.name())
    caption.setFont(QFont(FONT, 13, QFont.Bold))
    caption.setMarginX(0)
    caption.setMarginY(0)
    caption.attemptMove(QgsLayoutPoint(margin * 2 + map_w, table_top, mm))
    caption.attemptResize(QgsLayoutSize(legend_w, 8, mm))
    layout.addLayoutItem(caption)
    frame = QgsLayoutFrame(layout, table)
    frame.attemptMove(QgsLayoutPoint(margin * 2 + map_w, table_top + 9, mm))
    frame.attemptResize(QgsLayoutSize(legend_w, 30, mm))
    table.addFrame(frame)
    table.refresh()

    bar = QgsLayoutItemScaleBar(layout)
    bar.setStyle("Single Box")
    bar.setLinkedMap(m)
    bar.setUnits(QgsUnitTypes.DistanceKilometers)
    bar.setUnitLabel("km")
    bar.setNumberOfSegments(2)
    bar.setNumberOfSegmentsLeft(0)
    bar.setUnitsPerSegment(1.0)
    bar.setTextFormat(text_format(11))
    bar.setBackgroundEnabled(True)
    bar.setBackgroundColor(QColor(255, 255, 255, 210))
    layout.addLayoutItem(bar)
    bar.update()
    bar.attemptMove(QgsLayoutPoint(margin + 3, top + map_h - 16, mm))

    credit = QgsLayoutItemLabel(layout)
    credit.setText("Contains modified Copernicus Sentinel data 2019 (Earth Surface Water Dataset, Luo 2021, "
                   "CC BY 4.0). Model: geoseg demo s2_water; rendered by QGIS " + _qgis_version())
    credit.setFont(QFont(FONT, 8))
    credit.setFontColor(QColor("#505050"))
    credit.attemptMove(QgsLayoutPoint(margin, top + map_h + 3, mm))
    credit.attemptResize(QgsLayoutSize(page_w - 2 * margin, 8, mm))
    layout.addLayoutItem(credit)

    # renderPageToImage, not exportToImage: that one georeferences the PNG through GDAL
    # (which cannot update PNGs: "ERROR 6") and writes a world file; a README picture needs neither
    image = QgsLayoutExporter(layout).renderPageToImage(0, QSize(), FIGURE_WIDTH_PX / (page_w / 25.4))
    if image.isNull() or not image.save(str(path)):
        raise SystemExit(f"could not render the layout to {path}")


def _qgis_version() -> str:
    from qgis.core import Qgis
    return Qgis.version().split("-")[0]


def render_dialog(path: Path, imagery) -> None:
    from processing.gui.AlgorithmDialog import AlgorithmDialog
    from qgis.core import QgsApplication
    from qgis.gui import QgsCollapsibleGroupBoxBasic
    from qgis.PyQt import sip
    from qgis.PyQt.QtWidgets import QApplication, QGroupBox, QScrollArea

    alg = QgsApplication.processingRegistry().createAlgorithmById("geoseg:segment")
    dlg = AlgorithmDialog(alg)
    dlg.setParameters({"INPUT": imagery, "MODEL": str(MODEL)})
    dlg.show()
    QApplication.processEvents()
    for box in dlg.findChildren(QGroupBox):  # "Advanced Parameters" (collapsed when shown)
        if box.objectName() == "grpAdvanced":
            sip.cast(box, QgsCollapsibleGroupBoxBasic).setCollapsed(False)
    dlg.resize(1000, 800)
    QApplication.processEvents()
    scroll = max(dlg.findChildren(QScrollArea), key=lambda a: a.widget().sizeHint().height() if a.widget() else 0)
    missing = scroll.widget().sizeHint().height() - scroll.viewport().height()
    if missing > 0:  # tall enough to show every parameter without a scroll bar
        dlg.resize(1000, 800 + missing + 4)
    for _ in range(20):
        QApplication.processEvents()
    dlg.grab().save(str(path))
    dlg.close()


def shrink_png(path: Path, method: str) -> None:
    """Palette-quantise to 256 colours (about a quarter of the size; nothing visible is lost:
    the screenshot has few colours, and "maxcoverage" keeps the imagery's hues, which
    "mediancut" washes out)."""
    try:
        from PIL import Image
    except ImportError:  # keep the full-colour PNG
        return
    img = Image.open(path).convert("RGB")
    img.quantize(colors=256, method=getattr(Image.Quantize, method.upper())).save(path, optimize=True)


def render(out: Path) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="geoseg-render-") as t:
        tmp = Path(t)
        # QGIS writes statistics (.aux.xml) beside every raster it opens: work on a copy
        scene = Path(shutil.copy(SCENE, tmp / SCENE.name))
        classes, areas = run_segment(tmp, scene)
        imagery = add_imagery(scene)
        result_png = out / "qgis_segment_result.png"
        render_result(result_png, imagery, classes, areas)
        dialog_png = out / "qgis_segment_dialog.png"
        render_dialog(dialog_png, imagery)
    shrink_png(result_png, "maxcoverage")
    shrink_png(dialog_png, "fastoctree")
    return [result_png, dialog_png]


def main(argv=None) -> None:
    args = parse_args(argv)
    app = start_qgis()  # noqa: F841  (kept alive to the end)
    plugin = init_processing()  # noqa: F841  (an unreferenced provider is collected)
    code = 0
    try:
        for p in render(args.out):
            print(p)
    except SystemExit as e:
        print(f"render_qgis: {e}", file=sys.stderr)
        code = 1
    except Exception:  # noqa: BLE001  (report it, then still skip QGIS's teardown)
        import traceback
        traceback.print_exc()
        code = 1
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)  # skip QGIS's exit teardown (it can crash offscreen)


if __name__ == "__main__":
    main()
