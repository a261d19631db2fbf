"""Chip files: the image/mask pairs that training and chip evaluation read.

* :func:`list_chips` pairs the files of an image folder with those of a mask folder
  by file stem (the one pairing rule; ``geoseg tile`` folders use it too).
* :class:`MaskRule` says how a mask file becomes class indexes: class-index masks
  as they are (what ``geoseg tile`` writes), colour masks through a colour map (RGB
  or palette files), or grey masks cut at a threshold.
* :func:`read_chip` reads one pair: the image ``(bands, rows, cols)`` and its class mask.
* :func:`colour_map_lut`, :func:`mask_to_classes`, :func:`read_rgb_mask`,
  :func:`has_palette`: the colour-mask pieces, also used when tiling folders.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import rasterio

from . import sources  # noqa: F401  (its import installs the rasterio NotGeoreferencedWarning filter)
from .errors import ConfigError, RasterError, one_line

__all__ = ["IMAGE_EXT", "list_chips", "list_images", "MaskRule", "read_chip", "colour_map_lut", "mask_to_classes",
           "read_rgb_mask", "has_palette"]

#: File name endings of images and masks in chip folders.
IMAGE_EXT = (".tif", ".tiff", ".png", ".jpg", ".jpeg")


def list_chips(image_dir: str | os.PathLike, mask_dir: str | os.PathLike) -> list[tuple[str, str]]:
    """(image, mask) file pairs of two folders matched by file stem, sorted by image
    name. Every image needs a mask; masks without an image are left out."""
    idir, mdir = Path(image_dir), Path(mask_dir)
    for d, what in ((idir, "image"), (mdir, "mask")):
        if not d.is_dir():
            raise ConfigError(f"{what} folder not found: {d}")
    masks = {p.stem: p for p in mdir.iterdir() if p.suffix.lower() in IMAGE_EXT}
    pairs = []
    for p in sorted(idir.iterdir()):
        if p.suffix.lower() not in IMAGE_EXT:
            continue
        if p.stem not in masks:
            raise ConfigError(f"no mask for {p.name} in {mdir}")
        pairs.append((str(p), str(masks[p.stem])))
    if not pairs:
        raise ConfigError(f"no images (.tif .png .jpg) in {idir}")
    return pairs


def list_images(folder: str | os.PathLike, what: str = "image folder") -> list[str]:
    """The image files (:data:`IMAGE_EXT`) of a folder, sorted by name."""
    d = Path(folder)
    if not d.is_dir():
        raise ConfigError(f"{what} not found: {d}")
    return sorted(str(p) for p in d.iterdir() if p.suffix.lower() in IMAGE_EXT)


# ------------------------------------------------------------------ colour masks

def colour_map_lut(rgb_map: dict[tuple[int, int, int], int]) -> tuple[np.ndarray, np.ndarray]:
    """Sorted 24-bit colour codes and their classes (for :func:`mask_to_classes`)."""
    if not rgb_map:
        raise ConfigError("the colour map (mask.rgb_map) is empty")
    codes = np.array([(r << 16) | (g << 8) | b for r, g, b in rgb_map], np.int64)
    classes = np.array(list(rgb_map.values()), np.uint8)
    order = np.argsort(codes)
    return codes[order], classes[order]


def mask_to_classes(rgb: np.ndarray, lut: tuple[np.ndarray, np.ndarray], ignore_index: int = 255
                    ) -> tuple[np.ndarray, dict[int, int]]:
    """(3, h, w) uint8 colours -> (h, w) class indexes; unmapped colours -> ignore.

    Returns the class array and {24-bit colour: pixels} of the unmapped colours.
    """
    codes, classes = lut
    code = (rgb[0].astype(np.int64) << 16) | (rgb[1].astype(np.int64) << 8) | rgb[2].astype(np.int64)
    pos = np.searchsorted(codes, code)
    pos_c = np.minimum(pos, len(codes) - 1)
    hit = codes[pos_c] == code
    out = np.where(hit, classes[pos_c], np.uint8(ignore_index)).astype(np.uint8)
    unmapped: dict[int, int] = {}
    if not hit.all():
        u, n = np.unique(code[~hit], return_counts=True)
        unmapped = {int(a): int(b) for a, b in zip(u, n)}
    return out, unmapped


def _palette(src) -> dict | None:
    """The colour table of band 1, or None (the one palette check)."""
    try:
        return src.colormap(1) or None
    except ValueError:
        return None


def has_palette(src) -> bool:
    """True when the dataset's first band has a colour table (a palette PNG/TIFF)."""
    return _palette(src) is not None


def read_rgb_mask(src) -> np.ndarray:
    """A mask file as (3, h, w) uint8 colours: RGB(A) as is, palette through its colour table."""
    if src.count >= 3:
        return src.read([1, 2, 3])
    band = src.read(1)
    cmap = _palette(src)
    if cmap:
        lut = np.zeros((256, 3), np.uint8)
        for k, v in cmap.items():
            if 0 <= k < 256:
                lut[k] = v[:3]
        return np.moveaxis(lut[band], -1, 0)
    return np.stack([band] * 3)  # grey mask: the grey level is the colour


# ------------------------------------------------------------------ mask rules

@dataclass(frozen=True)
class MaskRule:
    """How a mask file becomes class indexes. Build one with :meth:`indexes`,
    :meth:`colours` or :meth:`binarize`.

    * ``"indexes"``: band 1 holds class indexes (what ``geoseg tile`` writes).
    * ``"colours"``: RGB or palette masks through ``rgb_map``; unmapped colours get
      the ignore index. A one-band mask without a palette is read as class indexes.
    * ``"binarize"``: grey masks, class 1 where the grey level is ``>= threshold``;
      with ``grayscaling`` an RGB mask is turned grey first (0.299 R + 0.587 G + 0.114 B),
      else its first band is the grey level.
    """

    kind: str = "indexes"
    rgb_map: tuple[tuple[tuple[int, int, int], int], ...] = ()
    threshold: float = 128.0
    grayscaling: bool = False
    lut: Any = field(default=None, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.kind not in ("indexes", "colours", "binarize"):
            raise ConfigError(f"mask rule must be indexes, colours or binarize, got {self.kind!r}")
        if self.kind == "colours":
            object.__setattr__(self, "lut", colour_map_lut(dict(self.rgb_map)))

    @classmethod
    def indexes(cls) -> "MaskRule":
        return cls("indexes")

    @classmethod
    def colours(cls, rgb_map: dict[tuple[int, int, int], int]) -> "MaskRule":
        return cls("colours", tuple((tuple(int(v) for v in k), int(c)) for k, c in rgb_map.items()))

    @classmethod
    def binarize(cls, threshold: float = 128.0, grayscaling: bool = False) -> "MaskRule":
        return cls("binarize", threshold=float(threshold), grayscaling=bool(grayscaling))

    def read(self, src, ignore: int = 255) -> np.ndarray:
        """The (h, w) class mask of an open mask dataset."""
        if self.kind == "binarize":
            if src.count >= 3 and self.grayscaling:
                r, g, b = src.read([1, 2, 3]).astype(np.float32)
                grey = 0.299 * r + 0.587 * g + 0.114 * b
            else:
                grey = src.read(1)
            return (grey >= self.threshold).astype(np.uint8)
        if self.kind == "colours" and (src.count >= 3 or has_palette(src)):
            return mask_to_classes(read_rgb_mask(src), self.lut, ignore)[0]
        return src.read(1)


def _chip_env() -> rasterio.Env:
    """No GDAL directory listing at every open: chips sit thousands to a folder (2x
    slower). rasterio's Env is per thread: entered at each read (25 µs), it holds in
    any reader thread."""
    return rasterio.Env(GDAL_DISABLE_READDIR_ON_OPEN="EMPTY_DIR")


def read_chip(image_path: str | os.PathLike, mask_path: str | os.PathLike, rule: MaskRule = MaskRule(),
              ignore: int = 255) -> tuple[np.ndarray, np.ndarray]:
    """An image chip ``(bands, rows, cols)`` as stored and its ``(rows, cols)`` class
    mask read through ``rule``; unreadable files are a one-line :class:`RasterError`."""
    try:
        with _chip_env():
            with rasterio.open(image_path) as s:
                x = s.read()
            with rasterio.open(mask_path) as m:
                y = rule.read(m, ignore)
    except rasterio.errors.RasterioError as e:
        raise RasterError(f"cannot read chip: {one_line(e)}") from None
    return x, y
