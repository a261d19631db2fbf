"""Options and parameter types shared by the geoseg commands, each defined once
(rasterio's ``rio/options.py`` and rio-cogeo's ``BdxParamType`` style).

Shared options and the commands that use them:

- ``overwrite_opt``   ``--overwrite``    predict, areas, demo, evaluate, tile, train, vectorize
- ``tile_size_opt``   ``--tile-size``    predict
- ``overlap_opt``     ``--overlap``      predict
- ``batch_size_opt``  ``--batch-size``   predict
- ``blend_opt``       ``--blend``        predict            (choices: ``geoseg.unit.BLENDS``)
- ``tta_opt``         ``--tta``          predict, evaluate  (choices: ``geoseg.unit.TTA_VIEWS``)
- ``runtime_opt``, ``precision_opt``  ``--runtime``, ``--precision``   predict, evaluate
  (choices: ``geoseg.unit.RUNTIMES``, ``geoseg.unit.PRECISIONS``)
- ``bands_opt``       ``--bands``        predict, evaluate  (type ``BANDS``)
- ``rgb_map_opt``     ``--rgb-map``      evaluate, tile     (type ``RGB_MAP``)
- ``resample_opt``, ``mask_scl_opt``  ``--resample``, ``--mask-scl``   predict, evaluate
- ``input_scale_opt``, ``input_offset_opt``, ``src_nodata_opt``   ``--input-scale``,
  ``--input-offset``, ``--src-nodata``   predict, evaluate   (type ``NUMBERS``)

Parameter types (a bad value is click's one-line "Invalid value for '--x': ...",
exit code 2):

- ``BANDS``        ``2,3,4,8`` or band names -> ``tuple[int | str, ...]``      --bands
- ``NODATA``       ``VALUE|none|auto`` -> number, ``None`` or ``"auto"``      areas/vectorize --nodata,
  evaluate --truth-nodata, tile --label-nodata
- ``RGB_MAP``      ``'#3C1098=0,#8429F6=1'`` or a config file -> ``ColourMap``   --rgb-map
- ``CLASS_NAMES``  ``0=land,1=water``, a JSON file or a .geoseg bundle -> ``dict[int, str]``
  areas/vectorize --class-names
- ``INT_LIST``     ``5`` or ``0,9`` -> ``tuple[int, ...]``                      evaluate --ignore,
  vectorize --classes
- ``FRACTIONS``    three fractions summing to 1 -> ``tuple[float, float, float]``  tile --split
- ``NUMBERS``      ``-1000`` or ``1e-4,1e-4,...`` -> a float or a tuple            --input-scale,
  --input-offset, --src-nodata
- ``SCL_CLASSES``  ``3,8,9,10`` or ``none`` -> ``tuple[int, ...]``               --mask-scl
- ``CREATION_OPTION``  ``KEY=VALUE`` -> ``(KEY, VALUE)``                          predict --co

Each type's ``convert`` also accepts an already converted value, as click requires.
"""

from __future__ import annotations

import json
import math
import re
from collections import Counter
from pathlib import Path
from typing import Any, NamedTuple

import click

from geoseg.unit import BLENDS, PRECISIONS, RUNTIMES, TTA_VIEWS

RGB = tuple[int, int, int]
CONFIG_SUFFIXES = (".toml", ".ini", ".config")
_INT = re.compile(r"[+-]?\d+")


def _items(ptype: click.ParamType, text: str, param, ctx, example: str) -> list[str]:
    """Comma-separated items, stripped; an empty item is refused."""
    items = [t.strip() for t in str(text).split(",")]
    if any(not t for t in items):
        ptype.fail(f"empty item in {text!r} (expected e.g. {example})", param, ctx)
    return items


class BandsParamType(click.ParamType):
    """``2,3,4,8`` (1-based indexes) or band descriptions (``B2,B3,B4``), in the
    model's order -> ``tuple[int | str, ...]``; a band given twice is refused."""

    name = "bands"

    def convert(self, value: Any, param, ctx) -> tuple[int | str, ...]:
        if isinstance(value, tuple):
            return value
        out: list[int | str] = []
        for t in _items(self, value, param, ctx, "2,3,4,8 or B2,B3,B4,B8"):
            if _INT.fullmatch(t):
                if int(t) < 1:
                    self.fail(f"band {t}: band indexes start at 1", param, ctx)
                out.append(int(t))
            else:
                out.append(t)
        twice = [b for b, n in Counter(out).items() if n > 1]
        if twice:
            self.fail(f"band {twice[0]} is given twice in {value!r}", param, ctx)
        return tuple(out)


class NodataParamType(click.ParamType):
    """``VALUE`` (a number, ``nan`` too), ``none`` (count every value) or ``auto``
    (the raster's own nodata, the default) -> ``int | float | None | "auto"``."""

    name = "nodata"

    def convert(self, value: Any, param, ctx) -> int | float | str | None:
        if value is None or isinstance(value, (int, float)):
            return value
        s = str(value).strip().lower()
        if s in ("auto", "none"):
            return "auto" if s == "auto" else None
        try:
            return int(s)
        except ValueError:
            pass
        try:
            return float(s)
        except ValueError:
            self.fail(f"{value!r} is not a number, 'none' or 'auto'", param, ctx)


class ColourMap(NamedTuple):
    """A parsed ``--rgb-map``: mask colour -> class index, and the ignore index of
    the config file it came from (``None`` for an inline map)."""

    rgb_map: dict[RGB, int]
    ignore_index: int | None = None


class RgbMapParamType(click.ParamType):
    """``'#3C1098=0,#8429F6=1'`` (colour ``#RRGGBB`` = class index 0..254), or a
    config file (``.toml``/``.ini``/``.config``) with ``[mask] rgb_map`` -> ``ColourMap``."""

    name = "rgb_map"

    def convert(self, value: Any, param, ctx) -> ColourMap:
        if isinstance(value, ColourMap):
            return value
        p = Path(value)
        if p.suffix.lower() in CONFIG_SUFFIXES or p.is_file():
            from geoseg.config import load_config  # noqa: PLC0415
            from geoseg.errors import ConfigError  # noqa: PLC0415
            try:
                mask = load_config(p).mask
            except ConfigError as e:
                self.fail(str(e), param, ctx)
            return ColourMap(dict(mask.rgb_map), mask.ignore_index)
        out: dict[RGB, int] = {}
        for item in _items(self, value, param, ctx, "#3C1098=0,#8429F6=1"):
            from geoseg.config import parse_colour  # noqa: PLC0415
            from geoseg.errors import ConfigError  # noqa: PLC0415
            colour, sep, cls = (t.strip() for t in item.rpartition("="))
            if not sep or not cls.isdigit():
                self.fail(f"expected COLOUR=CLASS items like #3C1098=0, got {item!r}", param, ctx)
            try:
                rgb = parse_colour(colour, "colour")
            except ConfigError as e:
                self.fail(str(e), param, ctx)
            if rgb in out:
                self.fail(f"colour {colour} is given twice", param, ctx)
            if not 0 <= int(cls) <= 254:
                self.fail(f"class index of {colour} must be 0..254, got {cls}", param, ctx)
            out[rgb] = int(cls)  # type: ignore[index]
        return ColourMap(out)


class ClassNamesParamType(click.ParamType):
    """``0=land,1=water``, a JSON file ``{"0": "land", ...}`` or a ``.geoseg`` model
    bundle (its classes) -> ``dict[int, str]``."""

    name = "class_names"

    def convert(self, value: Any, param, ctx) -> dict[int, str]:
        if isinstance(value, dict):
            return value
        p = Path(value)
        if p.suffix.lower() == ".geoseg":
            from geoseg.bundle import read_metadata  # noqa: PLC0415
            from geoseg.errors import GeosegError, one_line  # noqa: PLC0415
            try:
                return read_metadata(p).class_names
            except GeosegError as e:
                self.fail(one_line(e), param, ctx)
        if p.suffix.lower() == ".json":
            if not p.is_file():
                self.fail(f"file not found: {p}", param, ctx)
            try:
                d = json.loads(p.read_text())
                return {int(k): str(v) for k, v in d.items()}
            except (ValueError, AttributeError, OSError) as e:
                self.fail(f"{p}: expected a JSON object of id: name ({e})", param, ctx)
        out: dict[int, str] = {}
        for item in _items(self, value, param, ctx, "0=land,1=water"):
            k, sep, v = (t.strip() for t in item.partition("="))
            if not sep or not _INT.fullmatch(k) or not v:
                self.fail(f"expected ID=NAME pairs like 0=land,1=water, got {item!r}", param, ctx)
            if int(k) in out:
                self.fail(f"class {k} is named twice", param, ctx)
            out[int(k)] = v
        return out


class IntListParamType(click.ParamType):
    """``5`` or ``0,9`` -> ``tuple[int, ...]``."""

    name = "int_list"

    def convert(self, value: Any, param, ctx) -> tuple[int, ...]:
        if isinstance(value, tuple):
            return value
        items = _items(self, value, param, ctx, "5 or 0,9")
        if not all(_INT.fullmatch(t) for t in items):
            self.fail(f"expected integers like 5 or 0,9, got {value!r}", param, ctx)
        return tuple(int(t) for t in items)


class FractionsParamType(click.ParamType):
    """``TRAIN,VALID,TEST``: three fractions in 0..1 summing to 1 -> ``tuple[float, float, float]``."""

    name = "fractions"

    def convert(self, value: Any, param, ctx) -> tuple[float, float, float]:
        if isinstance(value, tuple):
            return value
        try:
            vals = tuple(float(t) for t in str(value).split(","))
        except ValueError:
            vals = ()
        if len(vals) != 3 or not all(math.isfinite(v) for v in vals):
            self.fail(f"expected TRAIN,VALID,TEST fractions like 0.7,0.15,0.15, got {value!r}", param, ctx)
        if any(not 0 <= v <= 1 for v in vals):
            self.fail(f"fractions must be between 0 and 1, got {value!r}", param, ctx)
        if not math.isclose(sum(vals), 1.0, abs_tol=1e-6):
            self.fail(f"fractions must sum to 1, got {value!r} (sum {sum(vals):g})", param, ctx)
        return vals  # type: ignore[return-value]


class NumbersParamType(click.ParamType):
    """``-1000`` or ``0.0001,0.0001,...`` (one finite number, or one per model band) ->
    a ``float`` or ``tuple[float, ...]``."""

    name = "numbers"

    def convert(self, value: Any, param, ctx) -> float | tuple[float, ...]:
        if isinstance(value, (float, tuple)):
            return value
        try:
            vals = tuple(float(t) for t in str(value).split(","))
        except ValueError:
            self.fail(f"expected a number or comma-separated numbers, got {value!r}", param, ctx)
        if not all(math.isfinite(v) for v in vals):
            self.fail(f"numbers must be finite, got {value!r}", param, ctx)
        return vals[0] if len(vals) == 1 else vals


class SclClassesParamType(click.ParamType):
    """``3,8,9,10`` (scene classification classes 0-11) or ``none`` -> ``tuple[int, ...]``."""

    name = "scl_classes"

    def convert(self, value: Any, param, ctx) -> tuple[int, ...]:
        if isinstance(value, tuple):
            return value
        if str(value).strip().lower() == "none":
            return ()
        items = _items(self, value, param, ctx, "3,8,9,10 or none")
        if not all(_INT.fullmatch(t) and 0 <= int(t) <= 11 for t in items):
            self.fail(f"expected scene classification classes 0-11 like 3,8,9,10, or none; got {value!r}", param, ctx)
        return tuple(int(t) for t in items)


class CreationOptionParamType(click.ParamType):
    """``KEY=VALUE`` (a GDAL creation option, as ``gdal_translate -co``) -> ``(KEY, VALUE)``."""

    name = "creation_option"

    def convert(self, value: Any, param, ctx) -> tuple[str, str]:
        if isinstance(value, tuple):
            return value
        key, sep, val = str(value).partition("=")
        if not sep or not key.strip() or not val.strip():
            self.fail(f"expected KEY=VALUE, e.g. COMPRESS=ZSTD; got {value!r}", param, ctx)
        return key.strip().upper(), val.strip()


BANDS = BandsParamType()
CREATION_OPTION = CreationOptionParamType()
NUMBERS = NumbersParamType()
SCL_CLASSES = SclClassesParamType()
NODATA = NodataParamType()
RGB_MAP = RgbMapParamType()
CLASS_NAMES = ClassNamesParamType()
INT_LIST = IntListParamType()
FRACTIONS = FractionsParamType()


overwrite_opt = click.option("--overwrite", is_flag=True, default=False,
                             help="Replace existing output files (never an input).")
tile_size_opt = click.option("--tile-size", type=click.IntRange(min=1), default=None,
                             help="Window size in pixels [default: twice the model's training chip, up to 512].")
overlap_opt = click.option("--overlap", type=click.IntRange(min=0), default=None,
                           help="Pixels shared by neighbouring windows, < tile size / 2 [default: the model's].")
batch_size_opt = click.option("--batch-size", type=click.IntRange(min=1), default=None,
                              help="Windows per forward pass [default: about the pixels of 8 training chips: "
                                   "2 windows at twice the chip].")
blend_opt = click.option("--blend", type=click.Choice(BLENDS), default="crop", show_default=True,
                         help="How overlapping windows combine. crop: keep each window's centre; cosine: "
                              "average overlapping windows' probabilities with smooth weights.")
bands_opt = click.option("--bands", type=BANDS, default=None, metavar="LIST",
                         help="Raster bands feeding the model, in the model's order: 1-based indexes "
                              "or band descriptions, e.g. 2,3,4,8,11,12 [default: by name, else in order].")
tta_opt = click.option("--tta", type=click.Choice(list(TTA_VIEWS)), default="none", show_default=True,
                       help="Test-time augmentation: average the probabilities of flipped and rotated views of "
                            "each window (model passes per window: "
                            + ", ".join(f"{k} {len(v)}" for k, v in TTA_VIEWS.items()) + ").")
runtime_opt = click.option("--runtime", type=click.Choice(RUNTIMES), default="auto", show_default=True,
                           help="How the model runs: openvino (compiled for this CPU, the faster) or keras "
                                "(TensorFlow/JAX); auto: openvino where installed.")
precision_opt = click.option("--precision", type=click.Choice(PRECISIONS), default="auto", show_default=True,
                             help="bfloat16: OpenVINO on a CPU with native bfloat16, faster than float32, "
                                  "classes as float32's on >= 99.9 % of pixels; float32: Keras's own classes on "
                                  "every machine; auto: bfloat16 where the CPU has it.")
input_scale_opt = click.option("--input-scale", type=NUMBERS, default=None, metavar="S|S1,S2,..",
                                help="The input's DN -> physical units: (DN + input offset) x S, one value or one per "
                                     "model band [default: what the input states (product metadata, GDAL "
                                     "scale/offset), else the model's convention].")
input_offset_opt = click.option("--input-offset", type=NUMBERS, default=None, metavar="O|O1,O2,..",
                                 help="Added to the DN before the scale, e.g. -1000 for a Sentinel-2 product of "
                                      "processing baseline >= 04.00 that lost its metadata.")
src_nodata_opt = click.option("--src-nodata", type=NUMBERS, default=None, metavar="V|V1,V2,..",
                               help="Input nodata value(s), one or one per model band (a pixel is nodata where all "
                                    "its bands hold it); overrides the input's own.")
resample_opt = click.option("--resample", type=click.Choice(["nearest", "bilinear"]), default="nearest",
                             show_default=True,
                             help="Sentinel-2 products: how the 20 m bands reach the 10 m grid (nearest: each "
                                  "20 m pixel 2 x 2, exact).")
mask_scl_opt = click.option("--mask-scl", type=SCL_CLASSES, default=None, metavar="CLASSES|none",
                             help="L2A products: scene classification classes made nodata [default: 0,1,3,8,9,10 = "
                                  "no data, saturated, cloud shadow, cloud medium/high, cirrus; water and snow "
                                  "never]; none keeps every pixel.")
rgb_map_opt = click.option("--rgb-map", type=RGB_MAP, default=None, metavar="SPEC",
                           help="Colour masks -> classes: '#3C1098=0,#8429F6=1' or a config file with "
                                "[mask] rgb_map (and its ignore_index).")
