"""The model bundle: one file holding a Keras 3 model and its JSON metadata.

A bundle (``*.geoseg``) is a ZIP archive with two members:

``geoseg.json``
    Metadata (see :class:`ModelMeta`): classes (id, name, colour), input bands and
    their scaling, tile size, recommended overlap, pixel size, provenance, metrics.
``model.keras``
    The Keras 3 native model file, loaded in safe mode (no Python lambdas).

This module reads and validates metadata without TensorFlow, so ``geoseg info`` and
the QGIS plugin's dialogs stay fast. Loading the network itself is in
:mod:`geoseg.model`. Nothing is ever ``eval``-ed.
"""

from __future__ import annotations

import io
import json
import math
import os
import re
import zipfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

from .bands import is_sentinel2_band
from .errors import ModelError
from .files import write_atomic

__all__ = ["ClassInfo", "InputSpec", "ModelMeta", "read_metadata", "write_bundle", "read_bundle_member",
           "FORMAT", "FORMAT_VERSION", "META_NAME", "MODEL_NAME"]

FORMAT = "geoseg-model"
FORMAT_VERSION = 1
META_NAME = "geoseg.json"
MODEL_NAME = "model.keras"
_HEX = re.compile(r"^#[0-9a-fA-F]{6}$")
#: The largest window a bundle may recommend (a 8192² window of 4 bytes x 64 channels
#: is already 16 GB of activations: no machine geoseg runs on could use more).
MAX_TILE = 8192


@dataclass(frozen=True)
class ClassInfo:
    id: int
    name: str
    color: str  # "#RRGGBB"

    @property
    def rgb(self) -> tuple[int, int, int]:
        return tuple(int(self.color[i:i + 2], 16) for i in (1, 3, 5))  # type: ignore[return-value]


@dataclass(frozen=True)
class InputSpec:
    """What the network expects: ``x = ((DN + offset) * scale - mean) / std`` per band.

    ``offset``/``scale`` are the convention of the training data (its DN to the
    physical quantity); ``units`` names that quantity (``"reflectance"``: surface or
    top-of-atmosphere reflectance 0-1) and ``level`` the product level (``"L2A"``,
    ``"L1C"``). When the physical units are known, an input that states its own
    conversion (Sentinel-2 product metadata, STAC, GDAL scale/offset, options) is
    converted with it instead: radiometry belongs to the input.
    """

    bands: tuple[str, ...]
    offset: tuple[float, ...]
    scale: tuple[float, ...]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    pixel_size: float | None = None
    rgb: tuple[str, ...] | None = None  # band names for quick-look previews
    description: str = ""
    units: str = ""                     # physical quantity of (DN + offset) * scale; "" = not stated
    level: str = ""                     # product level of the training data (L2A, L1C), "" = not stated

    @property
    def physical_units(self) -> str:
        """``units``, or for a bundle that does not state them: ``"reflectance"`` when
        its bands are all Sentinel-2 bands scaled by 1e-4 (the L2A/L1C convention)."""
        if self.units:
            return self.units
        if all(is_sentinel2_band(b) for b in self.bands) and all(abs(v - 1e-4) < 1e-12 for v in self.scale):
            return "reflectance"
        return ""

    @property
    def n_bands(self) -> int:
        return len(self.bands)


@dataclass(frozen=True)
class ModelMeta:
    name: str
    classes: tuple[ClassInfo, ...]
    input: InputSpec
    tile_size: int
    overlap: int
    tile_multiple: int = 1
    head: Literal["softmax", "sigmoid"] = "softmax"
    background: int | None = None
    description: str = ""
    architecture: dict[str, Any] = field(default_factory=dict)
    provenance: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)

    @property
    def n_classes(self) -> int:
        return len(self.classes)

    @property
    def input_level(self) -> str:
        """The product level of the training data: stated, or named in the description."""
        if self.input.level:
            return self.input.level
        found = [lv for lv in ("L2A", "L1C") if lv in self.description]
        return found[0] if len(found) == 1 else ""

    @property
    def class_names(self) -> dict[int, str]:
        return {c.id: c.name for c in self.classes}

    def to_json(self) -> str:
        d = {"format": FORMAT, "format_version": FORMAT_VERSION}
        d.update(asdict(self))
        return json.dumps(d, indent=2, sort_keys=False)

    @classmethod
    def from_dict(cls, d: Any, source: str = "metadata") -> "ModelMeta":
        return _parse_meta(d, source)


def _req(d: dict, key: str, typ, where: str):
    if key not in d:
        raise ModelError(f"{where}: missing '{key}'")
    val = d[key]
    if typ is float and isinstance(val, int) and not isinstance(val, bool):
        val = float(val)
    if not isinstance(val, typ) or isinstance(val, bool) and typ is not bool:
        raise ModelError(f"{where}: '{key}' must be {getattr(typ, '__name__', typ)}, got {type(val).__name__}")
    return val


def _floats(d: dict, key: str, n: int, default: float | None, where: str) -> tuple[float, ...]:
    if key not in d:
        if default is None:
            raise ModelError(f"{where}: missing 'input.{key}'")
        return (default,) * n
    val = d[key]
    if not isinstance(val, list) or len(val) != n or not all(
            isinstance(v, (int, float)) and not isinstance(v, bool) for v in val):
        raise ModelError(f"{where}: 'input.{key}' must be a list of {n} numbers (one per band)")
    out = tuple(float(v) for v in val)
    if not all(math.isfinite(v) for v in out):
        raise ModelError(f"{where}: 'input.{key}' holds a value that is not a finite number: {list(val)}")
    return out


def _parse_meta(d: Any, where: str) -> ModelMeta:
    if not isinstance(d, dict):
        raise ModelError(f"{where}: metadata is not a JSON object")
    if d.get("format") != FORMAT:
        raise ModelError(f"{where}: not a geoseg model (format is {d.get('format')!r})")
    if d.get("format_version") != FORMAT_VERSION:
        raise ModelError(f"{where}: unsupported bundle format version {d.get('format_version')!r}")
    classes_raw = _req(d, "classes", list, where)
    if not classes_raw:
        raise ModelError(f"{where}: 'classes' is empty")
    classes = []
    for i, c in enumerate(classes_raw):
        cw = f"{where}: classes[{i}]"
        if not isinstance(c, dict):
            raise ModelError(f"{cw} is not an object")
        cid = _req(c, "id", int, cw)
        if not 0 <= cid <= 254:
            raise ModelError(f"{cw}: id must be 0..254 (255 is nodata), got {cid}")
        name = _req(c, "name", str, cw)
        color = _req(c, "color", str, cw)
        if not _HEX.match(color):
            raise ModelError(f"{cw}: color must look like #RRGGBB, got {color!r}")
        classes.append(ClassInfo(cid, name, color.upper()))
    if len({c.id for c in classes}) != len(classes):
        raise ModelError(f"{where}: class ids are not unique")
    inp = _req(d, "input", dict, where)
    bands = _req(inp, "bands", list, where + ": input")
    if not bands or not all(isinstance(b, str) and b for b in bands):
        raise ModelError(f"{where}: 'input.bands' must be a non-empty list of band names")
    if len(set(bands)) != len(bands):
        raise ModelError(f"{where}: 'input.bands' has duplicate names")
    n = len(bands)
    std = _floats(inp, "std", n, 1.0, where)
    if any(s <= 0 for s in std):
        raise ModelError(f"{where}: 'input.std' must be positive")
    if any(v == 0 for v in _floats(inp, "scale", n, 1.0, where)):
        raise ModelError(f"{where}: 'input.scale' must not be 0 (every input would look the same)")
    rgb = inp.get("rgb")
    if rgb is not None and (not isinstance(rgb, list) or len(rgb) != 3 or any(b not in bands for b in rgb)):
        raise ModelError(f"{where}: 'input.rgb' must name 3 of the input bands")
    px = inp.get("pixel_size")
    if px is not None and (not isinstance(px, (int, float)) or isinstance(px, bool) or not 0 < px < math.inf):
        raise ModelError(f"{where}: 'input.pixel_size' must be a positive number")
    units, level = inp.get("units", ""), inp.get("level", "")
    if not isinstance(units, str) or units not in ("", "reflectance", "radiance", "dn"):
        raise ModelError(f"{where}: 'input.units' must be reflectance, radiance or dn, got {units!r}")
    if not isinstance(level, str) or level not in ("", "L1C", "L2A"):
        raise ModelError(f"{where}: 'input.level' must be L1C or L2A, got {level!r}")
    spec = InputSpec(tuple(bands), _floats(inp, "offset", n, 0.0, where), _floats(inp, "scale", n, 1.0, where),
                     _floats(inp, "mean", n, 0.0, where), std, float(px) if px is not None else None,
                     tuple(rgb) if rgb else None, str(inp.get("description", "")), units, level)
    tile = _req(d, "tile_size", int, where)
    overlap = _req(d, "overlap", int, where)
    multiple = d.get("tile_multiple", 1)
    if not isinstance(multiple, int) or multiple < 1:
        raise ModelError(f"{where}: 'tile_multiple' must be a positive integer")
    if not 16 <= tile <= MAX_TILE or tile % multiple or not 0 <= 2 * overlap < tile:
        raise ModelError(f"{where}: invalid 'tile_size'/'overlap' ({tile}/{overlap}): the tile must be 16..{MAX_TILE} "
                         f"px and a multiple of {multiple}, the overlap under half of it")
    head = d.get("head", "softmax")
    if head not in ("softmax", "sigmoid"):
        raise ModelError(f"{where}: 'head' must be 'softmax' or 'sigmoid'")
    if head == "sigmoid" and len(classes) != 2:
        raise ModelError(f"{where}: a sigmoid head needs exactly 2 classes")
    bg = d.get("background")
    if bg is not None and bg not in {c.id for c in classes}:
        raise ModelError(f"{where}: 'background' {bg!r} is not a class id")
    for key in ("architecture", "provenance", "metrics"):
        if not isinstance(d.get(key, {}), dict):
            raise ModelError(f"{where}: '{key}' must be an object")
    return ModelMeta(str(d.get("name", "")), tuple(classes), spec, tile, overlap, multiple, head, bg,
                     str(d.get("description", "")), dict(d.get("architecture", {})),
                     dict(d.get("provenance", {})), dict(d.get("metrics", {})))


#: The most a bundle member may inflate to: far above any real metadata or UNet (the
#: bundled model's weights are 0.4 MB, a 64-filter 5-level UNet ~120 MB), far below a
#: zip bomb. Checked on the declared size before inflating and while inflating.
MAX_MEMBER_BYTES = {META_NAME: 4 << 20, MODEL_NAME: 2 << 30}


def _open_zip(path: str | os.PathLike) -> zipfile.ZipFile:
    p = Path(path)
    if not p.exists():
        raise ModelError(f"model file not found: {p}")
    if p.is_dir():
        raise ModelError(f"model path is a directory, not a .geoseg file: {p}")
    if not p.is_file():
        raise ModelError(f"model path is not a regular file (a pipe or device?): {p}")
    try:
        return zipfile.ZipFile(p)
    except (zipfile.BadZipFile, OSError) as e:
        raise ModelError(f"{p}: not a geoseg model bundle (corrupt or wrong file type: {e})") from None


def read_bundle_member(path: str | os.PathLike, member: str) -> bytes:
    """One member of a bundle, refused when it would inflate past :data:`MAX_MEMBER_BYTES`."""
    limit = MAX_MEMBER_BYTES.get(member, 4 << 20)
    with _open_zip(path) as zf:
        try:
            info = zf.getinfo(member)
            if info.file_size > limit:
                raise ModelError(f"{path}: bundle member '{member}' would inflate to {info.file_size / 2**20:,.0f} MB, "
                                 f"more than any real model ({limit / 2**20:,.0f} MB); refused")
            chunks, total = [], 0
            with zf.open(info) as f:
                while chunk := f.read(1 << 20):
                    total += len(chunk)
                    if total > limit:  # a declared size that lies
                        raise ModelError(f"{path}: bundle member '{member}' inflates past {limit / 2**20:,.0f} MB; "
                                         "refused")
                    chunks.append(chunk)
            return b"".join(chunks)
        except ModelError:
            raise
        except KeyError:
            raise ModelError(f"{path}: bundle has no '{member}'"
                             + (" (a plain Keras file? geoseg needs a .geoseg bundle with metadata)"
                                if member == META_NAME else "")) from None
        except (zipfile.BadZipFile, OSError, EOFError, ValueError) as e:
            raise ModelError(f"{path}: corrupt bundle member '{member}': {e}") from None


def read_metadata(path: str | os.PathLike) -> ModelMeta:
    """Read and validate a bundle's metadata (no TensorFlow needed)."""
    raw = read_bundle_member(path, META_NAME)
    try:
        d = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ModelError(f"{path}: metadata is not valid JSON: {e}") from None
    meta = _parse_meta(d, str(path))
    with _open_zip(path) as zf:
        if MODEL_NAME not in zf.namelist():
            raise ModelError(f"{path}: bundle has no '{MODEL_NAME}'")
    return meta


def write_bundle(path: str | os.PathLike, meta: ModelMeta, keras_bytes: bytes, *, overwrite: bool = True) -> None:
    """Write a bundle atomically (temporary file beside the target, then rename).
    Without ``overwrite`` an existing file at ``path`` is never replaced: the bundle is
    created exclusively (:func:`geoseg.files.write_atomic`)."""
    _parse_meta(json.loads(meta.to_json()), "metadata to write")  # never write what we cannot read
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        info = zipfile.ZipInfo(META_NAME, date_time=(1980, 1, 1, 0, 0, 0))
        info.compress_type = zipfile.ZIP_DEFLATED
        zf.writestr(info, meta.to_json())
        info = zipfile.ZipInfo(MODEL_NAME, date_time=(1980, 1, 1, 0, 0, 0))
        info.compress_type = zipfile.ZIP_STORED
        zf.writestr(info, keras_bytes)
    write_atomic(path, buf.getvalue(), overwrite=overwrite)


def format_metadata(meta: ModelMeta, path: str = "") -> str:
    """Human-readable summary for ``geoseg info``."""
    inp = meta.input
    lines = [f"model:        {meta.name or '(unnamed)'}" + (f"  [{path}]" if path else "")]
    if meta.description:
        lines.append(f"description:  {meta.description}")
    lines.append(f"head:         {meta.head}, {meta.n_classes} classes"
                 + (f" (background: {meta.background})" if meta.background is not None else ""))
    lines.append("classes:")
    for c in meta.classes:
        lines.append(f"  {c.id:>3}  {c.color}  {c.name}")
    lines.append(f"input bands:  {len(inp.bands)}  ({', '.join(inp.bands)})")
    lines.append("scaling:      x = ((DN + offset) * scale - mean) / std")
    w = max(len(b) for b in inp.bands)
    for i, b in enumerate(inp.bands):
        lines.append(f"  {b:<{w}}  offset {inp.offset[i]:g}  scale {inp.scale[i]:g}  "
                     f"mean {inp.mean[i]:.4g}  std {inp.std[i]:.4g}")
    if inp.description:
        lines.append(f"  note: {inp.description}")
    if inp.physical_units:
        lines.append(f"input:        {inp.physical_units}" + (" (inferred: Sentinel-2 bands, DN x 1e-4)"
                                                            if not inp.units else "")
                     + (f", product level {inp.level}" if inp.level else "")
                     + "; an input that states its own conversion (product metadata, GDAL scale/offset) "
                       "is converted with it")
    lines.append(f"pixel size:   {inp.pixel_size:g} (CRS units)" if inp.pixel_size else "pixel size:   not recorded")
    lines.append(f"tile size:    {meta.tile_size} px training chip (windows: multiples of {meta.tile_multiple}; "
                 f"predict's default window is twice the chip, up to 512 px), recommended overlap {meta.overlap} px")
    if meta.architecture:
        lines.append("architecture: " + ", ".join(f"{k}={v}" for k, v in meta.architecture.items()))
    for title, d in (("metrics", meta.metrics), ("provenance", meta.provenance)):
        if d:
            lines.append(f"{title}:")
            for k, v in d.items():
                lines.append(f"  {k}: {json.dumps(v) if isinstance(v, (dict, list)) else v}")
    return "\n".join(lines)
