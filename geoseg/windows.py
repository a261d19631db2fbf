"""The window grid: pure functions over (width, height, tile, overlap, block).

::

    image  +--------------------------------------------+
           | unit 0 (= output block) | unit 1           |    output blocks are the
           |  +-----+-----+          |                  |    GeoTIFF's internal tiles;
           |  |core |core |          |                  |    each is made by exactly
           |  +-----+-----+          |                  |    one unit of work
           |  |core |core |          |                  |
           |  +-----+-----+          |                  |
           +--------------------------------------------+

    read window (tile x tile)   +-----------------+
                                |  halo           |
                                |   +---------+   |
                                |   |  core   |   |   only the core is kept
                                |   +---------+   |   (centre crop), or all of it
                                |                 |   is blended with smooth weights
                                +-----------------+

* A unit of work is one output block. Its region is split into cores of at most
  ``stride = tile - overlap`` pixels per axis (as equal as possible); a core on the
  image border may be ``ceil(overlap / 2)`` longer, as it needs no context beyond it.
* Each core sits in the middle of a ``tile x tile`` read window, which is shifted
  inward at the image edges. A core on the far (right/bottom) image border needs
  context on its inner side only: its window is trimmed to ``core + overlap / 2`` (an image shorter than
  a tile gets one window of its own length), so edge strips cost what they hold.
  Windows are cropped to the data, never rescaled.
* With ``align`` (the network's downsampling factor, e.g. 8 for three poolings)
  window origins stay on multiples of it: a strided network is not shift-invariant,
  and windows off the common lattice would disagree along their seams. The last
  window may then overhang the far image edge by less than ``align`` px (reflect).
* The cores of all units partition the image: every output pixel comes from exactly
  one window of exactly one unit.

``overlap`` is the number of pixels adjacent windows share (at least ``overlap / 2``
pixels of context on each side of every core, where the image allows).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterator

from .errors import ConfigError

__all__ = ["Rect", "TileWindow", "Unit", "Grid", "make_grid", "choose_block_size", "split_axis", "chip_origins"]


@dataclass(frozen=True)
class Rect:
    """A pixel rectangle: columns ``col .. col+width``, rows ``row .. row+height``."""

    col: int
    row: int
    width: int
    height: int

    @property
    def col_stop(self) -> int:
        return self.col + self.width

    @property
    def row_stop(self) -> int:
        return self.row + self.height

    def slices(self, origin: "Rect | None" = None) -> tuple[slice, slice]:
        """(row slice, column slice), relative to ``origin``'s corner if given."""
        c0 = self.col - (origin.col if origin else 0)
        r0 = self.row - (origin.row if origin else 0)
        return slice(r0, r0 + self.height), slice(c0, c0 + self.width)

    def union(self, other: "Rect") -> "Rect":
        c0, r0 = min(self.col, other.col), min(self.row, other.row)
        c1, r1 = max(self.col_stop, other.col_stop), max(self.row_stop, other.row_stop)
        return Rect(c0, r0, c1 - c0, r1 - r0)

    def intersection(self, other: "Rect") -> "Rect | None":
        c0, r0 = max(self.col, other.col), max(self.row, other.row)
        c1, r1 = min(self.col_stop, other.col_stop), min(self.row_stop, other.row_stop)
        if c1 <= c0 or r1 <= r0:
            return None
        return Rect(c0, r0, c1 - c0, r1 - r0)


@dataclass(frozen=True)
class TileWindow:
    """One model input: ``read`` (at most tile x tile; trimmed at image borders; may
    overhang the far image edge by less than the alignment) and ``core``."""

    read: Rect
    core: Rect


@dataclass(frozen=True)
class Unit:
    """One unit of work: an output block and the windows that produce it."""

    index: int
    region: Rect
    windows: tuple[TileWindow, ...]

    @property
    def read_rect(self) -> Rect:
        """Union of the read windows (what the reader fetches in one go)."""
        out = self.windows[0].read
        for w in self.windows[1:]:
            out = out.union(w.read)
        return out


@dataclass(frozen=True)
class Grid:
    width: int
    height: int
    tile: int
    overlap: int
    block: int
    units: tuple[Unit, ...]

    @property
    def n_windows(self) -> int:
        return sum(len(u.windows) for u in self.units)

    def __iter__(self) -> Iterator[Unit]:
        return iter(self.units)

    def __len__(self) -> int:
        return len(self.units)


def validate_tiling(tile: int, overlap: int, multiple: int = 1) -> None:
    """Raise :class:`ConfigError` unless ``tile``/``overlap`` make a usable grid."""
    if not isinstance(tile, int) or tile < 16:
        raise ConfigError(f"tile size must be an integer >= 16 pixels, got {tile!r}")
    if multiple > 1 and tile % multiple:
        raise ConfigError(f"tile size must be a multiple of {multiple} for this model, got {tile}")
    if not isinstance(overlap, int) or overlap < 0:
        raise ConfigError(f"overlap must be a non-negative integer of pixels, got {overlap!r}")
    if 2 * overlap >= tile:
        raise ConfigError(f"overlap must be less than half the tile size ({tile} px), got {overlap}")


def choose_block_size(tile: int, overlap: int, target: int = 512) -> int:
    """Output block (internal tile) size: a multiple of 16 near ``target``.

    When the stride is a multiple of 16 the block is a whole number of strides, so
    blocks split into full cores and no window is wasted at block boundaries.
    """
    stride = tile - overlap
    if stride % 16 == 0:
        k = max(1, round(target / stride))
        return stride * k
    return max(16, (target // 16) * 16)


def split_axis(start: int, length: int, max_size: int) -> list[tuple[int, int]]:
    """Split ``[start, start+length)`` into ``ceil(length/max_size)`` near-equal parts."""
    n = max(1, math.ceil(length / max_size))
    base, extra = divmod(length, n)
    parts, pos = [], start
    for i in range(n):
        size = base + (1 if i < extra else 0)
        parts.append((pos, size))
        pos += size
    return parts


def chip_origins(length: int, chip: int, stride: int) -> list[int]:
    """Chip starts along one axis (``geoseg tile``): every ``stride`` px, the last one
    shifted inward so the chips cover the axis; one chip at 0 if the axis is no longer
    than a chip (the chip is then padded).

    >>> chip_origins(100, 32, 32)
    [0, 32, 64, 68]
    >>> chip_origins(100, 32, 20)
    [0, 20, 40, 60, 68]
    >>> chip_origins(10, 32, 32)
    [0]
    """
    if length <= chip:
        return [0]
    starts = list(range(0, length - chip + 1, stride))
    if starts[-1] + chip < length:
        starts.append(length - chip)
    return starts


def split_cores(start: int, length: int, stride: int, extent: int, edge_bonus: int,
                tile: int) -> list[tuple[int, int]]:
    """Cores of one axis of a unit region. A core touching the image border needs no
    context beyond it, so it may be ``edge_bonus`` px longer than the stride there
    (never longer than the tile)."""
    b0 = edge_bonus if start == 0 else 0
    b1 = edge_bonus if start + length == extent else 0
    inner = length - b0 - b1
    n = max(1, math.ceil(inner / stride)) if inner > 0 else 1
    if n == 1 and length > tile:
        # one core spanning both borders would not fit in a window: two border cores
        return split_axis(start, length, stride + edge_bonus)
    if n == 1:
        return [(start, length)]
    if b0 and b1:  # a region spanning the image: near-equal cores
        parts = split_axis(start + b0, inner, stride)
        parts[0] = (start, parts[0][1] + b0)
        parts[-1] = (parts[-1][0], parts[-1][1] + b1)
        return parts
    # A region on one border: full-stride cores inside, the remainder at the border,
    # where its window is trimmed to what it holds.
    sizes = [stride] * (n - 1)
    rest = length - stride * (n - 1)
    sizes = sizes + [rest] if b1 else [rest] + sizes
    parts, pos = [], start
    for size in sizes:
        parts.append((pos, size))
        pos += size
    return parts


def _window_start(core_start: int, core_size: int, tile: int, extent: int, align: int = 1) -> int:
    """Start of the window around a core: centred on it, on the ``align`` lattice,
    shifted inward at the image start; at the far edge it may overhang the image by
    less than ``align`` px (reflect-padded) so that it stays on the lattice."""
    if extent <= tile:
        return 0
    start = core_start - (tile - core_size) // 2
    if align <= 1:
        return min(max(start, 0), extent - tile)
    lo = max(core_start + core_size - tile, 0)      # the window must hold the core
    hi = min(core_start, -(-(extent - tile) // align) * align)
    start = min(max(int(round(start / align)) * align, lo), hi)
    if start % align:                                # clamped off the lattice
        up = -(-start // align) * align
        down = (start // align) * align
        if up <= hi:
            start = up
        elif down >= lo:
            start = down
        else:                                        # no lattice point fits: stay inside the image
            return min(max(core_start - (tile - core_size) // 2, lo), min(core_start, extent - tile))
    return start


def _roundup(n: int, a: int) -> int:
    return -(-n // a) * a


def _window_span(core_start: int, core_size: int, tile: int, extent: int, align: int,
                 context: int) -> tuple[int, int]:
    """(start, size) of the window around a core along one axis.

    Inside the image a window is ``tile`` long. A core on the far image border needs
    context on its inner side only, so its window is trimmed to ``core + context``
    (rounded up to ``align``); an image shorter than a tile gets one window of its
    own length (rounded up to ``align``). Trimming crops the window to the data, it
    never rescales it.
    """
    a = max(align, 1)
    if extent <= tile:
        return 0, _roundup(extent, a)
    start, size = _window_start(core_start, core_size, tile, extent, align), tile
    if core_start + core_size == extent:  # (the near border saves too little to be worth a shape)
        s2 = max(0, ((core_start - context) // a) * a)
        n2 = _roundup(extent - s2, a)
        if n2 < size:
            start, size = s2, n2
    return start, size


def make_grid(width: int, height: int, tile: int, overlap: int, block: int | None = None,
              align: int = 1) -> Grid:
    """Build the window grid for a ``width x height`` image.

    ``align``: window origins are kept on multiples of it (the network's total
    downsampling factor), so every window sees the same pooling lattice as one big
    window would; the far-edge window may then overhang the image by < ``align`` px.

    >>> g = make_grid(1000, 700, tile=256, overlap=32)
    >>> g.block, len(g), sorted({w.read.width for u in g for w in u.windows})
    (448, 6, [120, 256])
    """
    if width < 1 or height < 1:
        raise ConfigError(f"raster has no pixels ({width} x {height})")
    validate_tiling(tile, overlap, align)
    block = block or choose_block_size(tile, overlap)
    if block % 16:
        raise ConfigError(f"output block size must be a multiple of 16, got {block}")
    stride = tile - overlap
    bonus = overlap - overlap // 2   # a border core keeps >= overlap // 2 px of inner context
    context = overlap // 2
    units = []
    for brow in range(0, height, block):
        bh = min(block, height - brow)
        rows = split_cores(brow, bh, stride, height, bonus, tile)
        for bcol in range(0, width, block):
            bw = min(block, width - bcol)
            cols = split_cores(bcol, bw, stride, width, bonus, tile)
            wins = []
            for r0, rh in rows:
                wr, wh = _window_span(r0, rh, tile, height, align, context)
                for c0, cw in cols:
                    wc, ww = _window_span(c0, cw, tile, width, align, context)
                    wins.append(TileWindow(Rect(wc, wr, ww, wh), Rect(c0, r0, cw, rh)))
            units.append(Unit(len(units), Rect(bcol, brow, bw, bh), tuple(wins)))
    return Grid(width, height, tile, overlap, block, tuple(units))
