"""The Processing algorithms: each is parameter handling over one geoseg call.

*Segment raster* always runs geoseg as a child process (TensorFlow never enters
QGIS). *Class areas* and *Vectorize classes* need no TensorFlow: they run inside
QGIS when the geoseg core is importable there, otherwise through the same child
process protocol.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import warnings
from pathlib import Path

from qgis.core import (QgsDataSourceUri, QgsProcessing, QgsProcessingAlgorithm, QgsProcessingContext, QgsProcessingException,
                       QgsProcessingLayerPostProcessorInterface, QgsProcessingParameterDefinition,
                       QgsProcessingParameterEnum, QgsProcessingParameterFeatureSource, QgsProcessingParameterField,
                       QgsProcessingParameterFile, QgsProcessingParameterFileDestination,
                       QgsProcessingParameterNumber, QgsProcessingParameterRasterDestination,
                       QgsProcessingParameterRasterLayer, QgsProcessingParameterString,
                       QgsProcessingParameterVectorDestination, QgsProcessingUtils, QgsProviderRegistry)
from qgis.PyQt.QtGui import QIcon

from .provider import ICON
from .runner import core_importable, run_geoseg

#: geoseg's choices (geoseg.unit.BLENDS, TTA_VIEWS, RUNTIMES, PRECISIONS; a test checks
#: they match the core)
BLENDS = ("crop", "cosine")
TTA = ("none", "flip", "d4")
RUNTIMES = ("auto", "openvino", "keras")
PRECISIONS = ("auto", "float32", "bfloat16")
#: AOI formats geoseg reads as one layer without a layer name (others are exported first)
AOI_FORMATS = ["shp", "geojson", "fgb", "json"]


class LoadStyle(QgsProcessingLayerPostProcessorInterface):
    """Applies a style file (or the layer's default style) to a layer Processing loads.

    Processing ignores the ``.qml`` beside an output (the layer would show grey).
    Instances are kept referenced in :data:`_KEEP`: QGIS holds only a C++ pointer.
    """

    def __init__(self, qml: str | None = None, name: str | None = None):
        super().__init__()
        self.qml = qml
        self.name = name

    def postProcessLayer(self, layer, context, feedback):  # noqa: N802
        if layer is None or not layer.isValid():
            return
        if self.qml and Path(self.qml).is_file():
            layer.loadNamedStyle(self.qml)
        else:
            layer.loadDefaultStyle()
        if self.name:
            layer.setName(self.name)
        layer.triggerRepaint()


_KEEP: list[LoadStyle] = []


def _post_process(context, output: str, qml: str | None = None, name: str | None = None) -> None:
    if output and context.willLoadLayerOnCompletion(output):
        pp = LoadStyle(qml, name)
        _KEEP.append(pp)
        context.layerToLoadOnCompletionDetails(output).setPostProcessor(pp)


def _load_table(context, path: str, name: str, output_name: str) -> None:
    """Load a CSV written by geoseg as a table when the run ends (not under
    processing.run or qgis_process, which load nothing)."""
    if path and context.project() is not None:
        details = QgsProcessingContext.LayerDetails(name, context.project(), output_name,
                                                    QgsProcessingUtils.LayerHint.Vector)
        context.addLayerToLoadOnCompletion(path, details)


def with_extension(context, dest: str, default: str, accepted: tuple[str, ...]) -> str:
    """A file destination with its format's extension, as QGIS's own file destinations
    behave: a name not ending in one of ``accepted`` gets ``default`` appended (and the
    layer Processing loads at the end follows it)."""
    if not dest or dest.lower().endswith(accepted):
        return dest
    new = dest + default
    _rename_output(context, dest, new)
    return new


def _rename_output(context, old: str, new: str) -> None:
    """Processing loads an output layer by the name it handed out: move that to ``new``."""
    layers = context.layersToLoadOnCompletion()
    if old in layers and old != new:
        layers[new] = layers.pop(old)
        context.setLayersToLoadOnCompletion(layers)


def gpkg_destination(dest: str) -> tuple[str, str | None]:
    """The GeoPackage file and layer name of a vector destination: a path, or the form
    Processing's "Save to GeoPackage…" gives, ``ogr:dbname='x.gpkg' table="name" (geom)``
    (layer None: the file's stem)."""
    if dest.startswith("ogr:"):
        uri = QgsDataSourceUri(dest[len("ogr:"):])
        if not uri.database():
            raise QgsProcessingException(f"not a GeoPackage destination: {dest}")
        return uri.database(), uri.table() or None
    return dest, None


def _same_file(src: str, path: str) -> bool:
    """Whether the raster ``src`` (a path or GDAL's ``GPKG:file:table``) is in the file ``path``."""
    f = src[len("GPKG:"):].rsplit(":", 1)[0] if src.upper().startswith("GPKG:") else src
    try:
        return os.path.samefile(f, path)
    except OSError:
        return False


def _place_copy(src: str, target: str) -> None:
    """Copy ``src`` onto ``target`` atomically (a hidden copy beside it, then a rename)."""
    t = Path(target)
    fd, tmp = tempfile.mkstemp(prefix=f".{t.name}.", suffix=".part", dir=t.parent)
    os.close(fd)
    try:
        shutil.copyfile(src, tmp)
        os.replace(tmp, t)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _insert_layer(src: str, target: str, layer: str) -> None:
    """Put layer ``layer`` of the GeoPackage ``src`` (with its style) into the existing
    GeoPackage ``target``, replacing a layer of that name and keeping the others, as
    Processing does for "Save to GeoPackage…"; the file changes atomically."""
    from osgeo import gdal
    from qgis.core import QgsVectorLayer
    t = Path(target)
    fd, work = tempfile.mkstemp(prefix=f".{t.name}.", suffix=".gpkg", dir=t.parent)
    os.close(fd)
    try:
        shutil.copyfile(target, work)
        gdal.UseExceptions()
        done = gdal.VectorTranslate(work, src, format="GPKG", accessMode="overwrite", layerName=layer,
                                    layers=[layer])
        if done is None:
            raise QgsProcessingException(f"could not add layer {layer!r} to {target}: {gdal.GetLastErrorMsg()}")
        done = None  # closes the file
        styled = QgsVectorLayer(f"{src}|layername={layer}", layer, "ogr")
        styled.loadDefaultStyle()
        dst = QgsVectorLayer(f"{work}|layername={layer}", layer, "ogr")
        if styled.isValid() and dst.isValid() and styled.renderer() is not None:
            dst.setRenderer(styled.renderer().clone())
            dst.saveStyleToDatabase(layer, "geoseg classes", True, "")
        del styled, dst
        os.replace(work, t)
    except BaseException:
        Path(work).unlink(missing_ok=True)
        raise


def raster_path(layer, what: str = "input") -> str:
    """The file (or GDAL dataset name) behind a raster layer; other layers are refused
    with what to do instead."""
    if layer is None:
        raise QgsProcessingException(f"no {what} raster layer")
    if layer.providerType() != "gdal":
        raise QgsProcessingException(
            f"layer {layer.name()!r} is a {layer.providerType()} layer, not a file; geoseg reads files: export it "
            "first (right-click the layer ▸ Export ▸ Save As…, format GeoTIFF) and run on the exported file")
    source = layer.source()
    parts = QgsProviderRegistry.instance().decodeUri("gdal", source)
    if parts.get("openOptions"):
        raise QgsProcessingException(
            f"layer {layer.name()!r} is opened with GDAL options ({', '.join(parts['openOptions'])}) that geoseg "
            "would not apply; export the layer as QGIS shows it (right-click ▸ Export ▸ Save As…) and run on that file")
    if parts.get("layerName") or not parts.get("path"):  # inside a GeoPackage or similar: GDAL's own name for it
        return source.split("|", 1)[0]
    # a file inside an archive: QGIS splits /vsizip//a.zip/x.tif into prefix, path and suffix
    return f"{parts.get('vsiPrefix') or ''}{parts['path']}{parts.get('vsiSuffix') or ''}"


def _numbers(text: str, what: str) -> list[int]:
    try:
        return [int(t) for t in text.replace(" ", "").split(",") if t]
    except ValueError:
        raise QgsProcessingException(f"{what}: expected class ids separated by commas, e.g. 1,2; got {text!r}") \
            from None


def _areas_lines(rows: list[dict]) -> list[str]:
    """The area table of a result event, as log lines."""
    out = []
    for r in rows:
        ha = "" if r.get("area_ha") is None else f"{r['area_ha']:,.2f} ha"
        pct = "" if r.get("percent") is None else f"{r['percent']:6.2f} %"
        zone = f"{r['zone']}: " if r.get("zone") is not None else ""
        out.append(f"{zone}{r['class_id']:>3} {r['class_name']:<20} {r['pixels']:>12,} px {ha:>16} {pct}")
    return out


class _Base(QgsProcessingAlgorithm):
    def createInstance(self):  # noqa: N802
        return type(self)()

    def icon(self):
        return QIcon(ICON)

    def helpUrl(self):  # noqa: N802
        return "https://github.com/geoseg/geoseg#use-it-in-qgis"

    def _in_process(self, feedback, fn, *args, **kwargs):
        """Call a geoseg core function inside QGIS with progress, cancel, warnings
        and errors mapped to Processing's."""
        from geoseg.errors import Cancelled as CoreCancelled
        from geoseg.errors import GeosegError

        def progress(done, total):
            if total:
                feedback.setProgress(100.0 * done / total)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            try:
                result = fn(*args, progress=progress, is_cancelled=feedback.isCanceled, **kwargs)
            except CoreCancelled:
                raise QgsProcessingException("geoseg: cancelled; no output was written") from None
            except GeosegError as e:
                raise QgsProcessingException(str(e).strip().splitlines()[0]) from None
            finally:
                for w in caught:
                    feedback.pushWarning(str(w.message))
        feedback.setProgress(100)
        return result


class SegmentRaster(_Base):
    INPUT, MODEL, BANDS = "INPUT", "MODEL", "BANDS"
    TILE_SIZE, OVERLAP, BATCH_SIZE, BLEND, TTA = "TILE_SIZE", "OVERLAP", "BATCH_SIZE", "BLEND", "TTA"
    RUNTIME, PRECISION = "RUNTIME", "PRECISION"
    OUTPUT, CONFIDENCE, AREAS = "OUTPUT", "CONFIDENCE", "AREAS"

    def name(self):
        return "segment"

    def displayName(self):  # noqa: N802
        return "Segment raster"

    def shortHelpString(self):  # noqa: N802
        return (
            "Runs a geoseg UNet model (.geoseg bundle) over a raster by overlapping windows, seam-free, and writes "
            "a class GeoTIFF styled with the model's class colours and names (nodata 255). Optionally also the "
            "confidence of each pixel (winning probability, %) and the area of each class as a CSV table "
            "(m², ha, km², %; geodesic for geographic CRSs).<br><br>"
            "<b>Bands</b>: empty matches the raster's band names to the model's (Sentinel-2 names such as B4, "
            "B04 or red all work), else takes the bands in order; or list them in the model's order as band "
            "numbers or names, e.g. 2,3,4,8,11,12.<br>"
            "<b>Advanced</b>: window size defaults to twice the model's training chip (up to 512 px), overlap to "
            "the model's; cosine blending averages "
            "overlapping windows; test-time augmentation (flip, d4) averages flipped/rotated views (4×/8× "
            "slower); the model runs on OpenVINO where installed (else Keras), in bfloat16 where the CPU has "
            "it (faster; the classes equal float32's on ≥ 99.9 % of pixels) — choose float32 for the same "
            "classes on every machine.<br><br>"
            "The model runs in geoseg's own Python environment (set it under Processing ▸ Options ▸ Providers ▸ "
            "geoseg), never inside QGIS. The input must be a file-based raster layer; export other layers "
            "(WMS, XYZ) to GeoTIFF first. Cancel stops the run and leaves no output.")

    def initAlgorithm(self, config=None):  # noqa: N802
        self.addParameter(QgsProcessingParameterRasterLayer(self.INPUT, "Input raster"))
        self.addParameter(QgsProcessingParameterFile(self.MODEL, "Model (.geoseg bundle)",
                                                     extension="geoseg"))
        self.addParameter(QgsProcessingParameterString(
            self.BANDS, "Bands in the model's order (empty: matched by the model's band names)",
            defaultValue="", optional=True))
        advanced = [
            QgsProcessingParameterNumber(self.TILE_SIZE, "Window size in pixels (not set: twice the model's chip, "
                                         "up to 512)",
                                         QgsProcessingParameterNumber.Integer, None, True, 16, 8192),
            QgsProcessingParameterNumber(self.OVERLAP, "Overlap in pixels (not set: the model's)",
                                         QgsProcessingParameterNumber.Integer, None, True, 0, 4096),
            QgsProcessingParameterNumber(self.BATCH_SIZE, "Windows per batch (not set: automatic)",
                                         QgsProcessingParameterNumber.Integer, None, True, 1, 4096),
            QgsProcessingParameterEnum(self.BLEND, "Blending of overlapping windows", list(BLENDS),
                                       defaultValue=0),
            QgsProcessingParameterEnum(self.TTA, "Test-time augmentation", list(TTA), defaultValue=0),
            QgsProcessingParameterEnum(self.RUNTIME, "Model runtime (auto: OpenVINO where installed)",
                                       list(RUNTIMES), defaultValue=0),
            QgsProcessingParameterEnum(self.PRECISION, "Precision (auto: bfloat16 where the CPU has it)",
                                       list(PRECISIONS), defaultValue=0),
        ]
        for p in advanced:
            p.setFlags(p.flags() | QgsProcessingParameterDefinition.FlagAdvanced)
            self.addParameter(p)
        self.addParameter(QgsProcessingParameterRasterDestination(self.OUTPUT, "Classes"))
        self.addParameter(QgsProcessingParameterRasterDestination(
            self.CONFIDENCE, "Confidence (winning probability, %)", optional=True, createByDefault=False))
        self.addParameter(QgsProcessingParameterFileDestination(
            self.AREAS, "Class areas", "CSV files (*.csv)", optional=True, createByDefault=False))

    def processAlgorithm(self, parameters, context, feedback):  # noqa: N802
        layer = self.parameterAsRasterLayer(parameters, self.INPUT, context)
        src = raster_path(layer)
        model = self.parameterAsFile(parameters, self.MODEL, context)
        if not model:
            raise QgsProcessingException("choose a model (.geoseg bundle)")
        tif = (".tif", ".tiff")
        out = with_extension(context, self.parameterAsOutputLayer(parameters, self.OUTPUT, context), ".tif", tif)
        conf = with_extension(context, self.parameterAsOutputLayer(parameters, self.CONFIDENCE, context), ".tif",
                              tif) if parameters.get(self.CONFIDENCE) else ""
        areas = self.parameterAsFileOutput(parameters, self.AREAS, context) if parameters.get(self.AREAS) else ""
        args = ["predict", model, src, out, "--overwrite",
                "--blend", BLENDS[self.parameterAsEnum(parameters, self.BLEND, context)],
                "--tta", TTA[self.parameterAsEnum(parameters, self.TTA, context)],
                "--runtime", RUNTIMES[self.parameterAsEnum(parameters, self.RUNTIME, context)],
                "--precision", PRECISIONS[self.parameterAsEnum(parameters, self.PRECISION, context)]]
        bands = (self.parameterAsString(parameters, self.BANDS, context) or "").strip()
        if bands:
            args += ["--bands", bands]
        for name, flag in ((self.TILE_SIZE, "--tile-size"), (self.OVERLAP, "--overlap"),
                           (self.BATCH_SIZE, "--batch-size")):
            if parameters.get(name) not in (None, ""):  # not set: geoseg's default
                args += [flag, str(self.parameterAsInt(parameters, name, context))]
        if conf:
            args += ["--confidence-tif", conf]
        if areas:
            args += ["--areas-csv", areas]
        result = run_geoseg(args, feedback)
        r = result["results"][0]
        for line in _areas_lines(r.get("areas", [])):
            feedback.pushInfo(line)
        _post_process(context, out, r["outputs"].get("qml"), f"{layer.name()} classes")
        if areas:
            _load_table(context, areas, "Class areas", self.AREAS)
        return {self.OUTPUT: out, self.CONFIDENCE: conf or None, self.AREAS: areas or None}


class ClassAreas(_Base):
    INPUT, AOI, ZONE_FIELD, OUTPUT = "INPUT", "AOI", "ZONE_FIELD", "OUTPUT"

    def name(self):
        return "classareas"

    def displayName(self):  # noqa: N802
        return "Class areas"

    def shortHelpString(self):  # noqa: N802
        return (
            "Counts the pixels of each class in a class raster and measures their area: m², ha, km² and % of "
            "the valid area. Projected CRSs use the pixel size; geographic CRSs the geodesic area of each "
            "pixel row on the ellipsoid. Nodata pixels are not counted.<br><br>"
            "<b>Area of interest</b> (optional): only pixels whose centre lies inside these polygons count; "
            "with a <b>zone field</b>, one set of rows per value of that field (e.g. per district). The "
            "polygons are reprojected to the raster's CRS.<br>"
            "The table is written as CSV and loaded into the project. Class names come from the raster's "
            "metadata (as geoseg writes it).")

    def initAlgorithm(self, config=None):  # noqa: N802
        self.addParameter(QgsProcessingParameterRasterLayer(self.INPUT, "Class raster"))
        self.addParameter(QgsProcessingParameterFeatureSource(
            self.AOI, "Area of interest (polygons)", [QgsProcessing.TypeVectorPolygon], optional=True))
        self.addParameter(QgsProcessingParameterField(
            self.ZONE_FIELD, "Zone field (one set of rows per value)", parentLayerParameterName=self.AOI,
            optional=True))
        self.addParameter(QgsProcessingParameterFileDestination(self.OUTPUT, "Class areas", "CSV files (*.csv)"))

    def processAlgorithm(self, parameters, context, feedback):  # noqa: N802
        src = raster_path(self.parameterAsRasterLayer(parameters, self.INPUT, context))
        aoi = None
        if parameters.get(self.AOI):
            aoi = self.parameterAsCompatibleSourceLayerPath(parameters, self.AOI, context, AOI_FORMATS, "gpkg",
                                                            feedback)
        zone = (self.parameterAsString(parameters, self.ZONE_FIELD, context) or "").strip() or None
        if zone and not aoi:
            raise QgsProcessingException("a zone field needs an area of interest layer")
        out = self.parameterAsFileOutput(parameters, self.OUTPUT, context)
        if core_importable():
            from geoseg.areas import class_areas, write_areas_csv
            from geoseg.errors import GeosegError
            from geoseg.output import check_output_path
            try:  # never an input as the output (the child process checks this itself)
                check_output_path(out, [src] + ([aoi] if aoi else []), overwrite=True, what="areas CSV")
            except GeosegError as e:
                raise QgsProcessingException(str(e)) from None
            table = self._in_process(feedback, class_areas, src, aoi=aoi, zone_field=zone)
            write_areas_csv(table, out)
            from geoseg.areas import format_table
            for line in format_table(table).splitlines():
                feedback.pushInfo(line)
        else:
            args = ["areas", src, "-o", out, "--overwrite"]
            if aoi:
                args += ["--aoi", aoi]
            if zone:
                args += ["--zone-field", zone]
            result = run_geoseg(args, feedback)
            for line in _areas_lines(result.get("areas", [])):
                feedback.pushInfo(line)
        _load_table(context, out, "Class areas", self.OUTPUT)
        return {self.OUTPUT: out}


class VectorizeClasses(_Base):
    INPUT, CLASSES, MIN_AREA, SIMPLIFY, OUTPUT = "INPUT", "CLASSES", "MIN_AREA", "SIMPLIFY", "OUTPUT"

    def name(self):
        return "vectorize"

    def displayName(self):  # noqa: N802
        return "Vectorize classes"

    def shortHelpString(self):  # noqa: N802
        return (
            "Turns a class raster into polygons (GeoPackage) with the class id, class name and area (m²; "
            "geodesic for geographic CRSs) of each polygon. Neighbouring pixels of one class (sharing an edge) "
            "form one polygon; nodata is left out.<br><br>"
            "<b>Classes to keep</b>: class ids separated by commas (empty: all).<br>"
            "<b>Minimum area</b>: drop smaller polygons (m²).<br>"
            "<b>Simplification tolerance</b>: in the raster's CRS units (0: exact pixel outlines; topology of "
            "each polygon is kept).")

    def initAlgorithm(self, config=None):  # noqa: N802
        self.addParameter(QgsProcessingParameterRasterLayer(self.INPUT, "Class raster"))
        self.addParameter(QgsProcessingParameterString(self.CLASSES, "Classes to keep (ids, e.g. 1,2; empty: all)",
                                                       defaultValue="", optional=True))
        self.addParameter(QgsProcessingParameterNumber(self.MIN_AREA, "Minimum polygon area (m²)",
                                                       QgsProcessingParameterNumber.Double, 0.0, False, 0.0))
        self.addParameter(QgsProcessingParameterNumber(self.SIMPLIFY, "Simplification tolerance (CRS units)",
                                                       QgsProcessingParameterNumber.Double, 0.0, False, 0.0))
        self.addParameter(QgsProcessingParameterVectorDestination(self.OUTPUT, "Class polygons",
                                                                  QgsProcessing.TypeVectorPolygon))

    def processAlgorithm(self, parameters, context, feedback):  # noqa: N802
        src = raster_path(self.parameterAsRasterLayer(parameters, self.INPUT, context))
        classes_text = (self.parameterAsString(parameters, self.CLASSES, context) or "").strip()
        classes = _numbers(classes_text, "classes to keep") or None
        min_area = self.parameterAsDouble(parameters, self.MIN_AREA, context)
        simplify = self.parameterAsDouble(parameters, self.SIMPLIFY, context)
        dest = self.parameterAsOutputLayer(parameters, self.OUTPUT, context)
        path, layer = gpkg_destination(dest)
        if not Path(path).suffix:
            path += ".gpkg"
        if not path.lower().endswith(".gpkg"):
            raise QgsProcessingException(f"geoseg writes polygons to a GeoPackage: choose a .gpkg file, not {path}")
        name = layer or Path(path).stem
        out = path if layer is None else f"{path}|layername={layer}"
        _rename_output(context, dest, out)
        if layer is not None and Path(path).exists():
            if _same_file(src, path):
                raise QgsProcessingException(f"the output {path} is the same file as the input: choose another "
                                             "GeoPackage")
            # a layer in an existing GeoPackage (its other layers kept): written apart, then put in
            with tempfile.TemporaryDirectory() as d:
                part = str(Path(d) / "part.gpkg")
                self._vectorize(feedback, src, part, name, classes, min_area, simplify)
                _insert_layer(part, path, name)
        else:
            self._vectorize(feedback, src, path, name, classes, min_area, simplify)
        feedback.pushInfo(f"{self._features} polygons written to {out}")
        _post_process(context, out)
        return {self.OUTPUT: out}

    def _vectorize(self, feedback, src, path, layer, classes, min_area, simplify) -> None:
        """Polygons of ``src`` into the GeoPackage ``path`` as layer ``layer`` (replaced)."""
        if core_importable():
            from geoseg.vectorize import vectorize_classes
            res = self._in_process(feedback, vectorize_classes, src, path, classes=classes, min_area=min_area,
                                   simplify=simplify, layer=layer, overwrite=True)
            self._features = getattr(res, "features", "")
            return
        if layer != Path(path).stem:   # the child names the layer after the file: a file of that name
            with tempfile.TemporaryDirectory() as d:
                part = Path(d) / "part"
                part.mkdir()
                named = part / f"{layer}.gpkg"
                if named.parent != part:
                    raise QgsProcessingException(f"layer name {layer!r} cannot be written by geoseg's own "
                                                 "environment: choose a name without path separators")
                self._vectorize(feedback, src, str(named), layer, classes, min_area, simplify)
                _place_copy(str(named), path)
            return
        args = ["vectorize", src, path, "--overwrite", "--min-area", repr(min_area), "--simplify", repr(simplify)]
        if classes:
            args += ["--classes", ",".join(map(str, classes))]
        result = run_geoseg(args, feedback)
        self._features = result.get("features", "")
