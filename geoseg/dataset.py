"""Cutting training chips: from big georeferenced image/label rasters, or from
image/mask folders whose masks are colour-coded.

Both paths write the same layout::

    OUT/train/images/<chip>.tif   OUT/train/masks/<chip>.tif
    OUT/valid/...                 OUT/test/...
    OUT/manifest.csv              one row per chip: split, source, paths, window, class pixels
    OUT/stats.json                class pixels per split, unmapped colours, skipped chips

* Reads are windowed: a label raster of any size never sits in memory whole.
* Chips are never resized; the last chip of a row/column is shifted inward, and an
  image smaller than a chip is reflect-padded (its mask padded with the ignore index).
* Masks hold class indexes (uint8); pixels that are nodata in the label, or whose
  colour is not in the colour map, get the ignore index (255 by default) and are
  counted. Chips whose mask is all ignore are skipped.
* Splits are by *source* (an image file, or a spatial region of a big raster), never
  by chip: chips of one source are all on the same side. The assignment is
  deterministic: explicit glob patterns first, then the remaining sources ordered by
  a seeded hash and cut by the requested fractions, then stratified by class
  presence (sources swapped between splits so that every class is in train, valid
  and test where enough sources hold it). A class still missing from a split is
  a :class:`~geoseg.errors.SplitWarning` and is recorded in stats.json
  (``missing_classes``, ``notes``).
* A run is written into a hidden folder beside OUT and moved into place at the
  end; with ``overwrite`` an earlier run in OUT (its split folders, manifest and
  stats) is replaced as a whole. A folder holding anything else is refused, so
  nothing of the user's is deleted.
* ``progress(done, total)`` counts sources (regions or image files); a cancel stops
  the run with :class:`~geoseg.errors.Cancelled`, and a failed or cancelled run
  removes what it wrote (an earlier run in OUT stays as it was).

Chip files (pairing, mask rules, colour maps) are in :mod:`geoseg.chips`.
"""

from __future__ import annotations

import csv
import fnmatch
import hashlib
import json
import os
import shutil
import warnings
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Collection, Mapping, Sequence

import numpy as np
import rasterio
from rasterio.windows import Window
from rasterio.windows import transform as window_transform

from .chips import colour_map_lut, list_chips, mask_to_classes, read_rgb_mask
from .errors import ConfigError, RasterError, SplitWarning, one_line
from .files import sweep_stale, temp_tag
from .output import profile
from .progress import CancelFn, ProgressFn, Reporter
from .sources import check_same_grid, label_valid, open_raster, reflect_pad, resolve_nodata
from .windows import chip_origins

__all__ = ["TileOptions", "TileReport", "tile_rasters", "tile_folders", "assign_splits", "SPLITS"]

SPLITS = ("train", "valid", "test")


@dataclass(frozen=True)
class TileOptions:
    chip: int = 256
    stride: int | None = None            # default: chip (no overlap)
    fractions: tuple[float, float, float] = (0.7, 0.15, 0.15)
    valid_sources: tuple[str, ...] = ()  # glob patterns on source names forced into valid
    test_sources: tuple[str, ...] = ()
    seed: int = 42
    ignore_index: int = 255
    min_valid: float = 0.0               # skip chips with a smaller labelled fraction (0 = any)
    regions: int = 4                     # big-raster mode: regions per axis (the split unit)

    def __post_init__(self) -> None:
        if self.chip < 8:
            raise ConfigError(f"chip size must be at least 8 px, got {self.chip}")
        if self.stride is not None and not 0 < self.stride:
            raise ConfigError(f"stride must be positive, got {self.stride}")
        if len(self.fractions) != 3 or any(f < 0 for f in self.fractions) or abs(sum(self.fractions) - 1) > 1e-6:
            raise ConfigError(f"split fractions must be three non-negative numbers summing to 1, got {self.fractions}")
        if not 0 <= self.min_valid <= 1:
            raise ConfigError("min_valid must be in [0, 1]")
        if self.regions < 1:
            raise ConfigError("regions must be at least 1")


@dataclass
class TileReport:
    out_dir: Path
    chips: dict[str, int] = field(default_factory=lambda: {s: 0 for s in SPLITS})
    sources: dict[str, list[str]] = field(default_factory=lambda: {s: [] for s in SPLITS})
    class_pixels: dict[str, dict[int, int]] = field(default_factory=lambda: {s: {} for s in SPLITS})
    ignored_pixels: int = 0
    unmapped_colours: dict[str, int] = field(default_factory=dict)
    skipped_chips: int = 0
    missing_classes: dict[str, list[int]] = field(default_factory=dict)  # split -> classes it has no pixel of
    notes: list[str] = field(default_factory=list)                       # what was warned about

    def as_dict(self) -> dict:
        return {"chips": self.chips, "sources": self.sources,
                "class_pixels": {s: {str(k): v for k, v in sorted(d.items())} for s, d in self.class_pixels.items()},
                "ignored_pixels": self.ignored_pixels, "unmapped_colours": self.unmapped_colours,
                "skipped_chips": self.skipped_chips, "missing_classes": self.missing_classes, "notes": self.notes}


def _hash_order(sources: Sequence[str], seed: int) -> list[str]:
    return sorted(sources, key=lambda s: hashlib.sha256(f"{seed}:{s}".encode()).hexdigest())


def assign_splits(sources: Sequence[str], opts: TileOptions,
                  classes: Mapping[str, Collection[int]] | None = None) -> dict[str, str]:
    """Deterministic split per source name (patterns first, then seeded-hash order).

    With ``classes`` (source -> the class indexes its chips hold), the seeded
    assignment is then stratified by class presence: sources are swapped between
    splits (the split sizes stay as requested) while a swap brings a class into a
    split that lacks it without taking one away elsewhere, so that every class is in
    every split where enough sources hold it (a class missing from train counts
    double: the model could not learn it). Explicit patterns are never moved.
    """
    out: dict[str, str] = {}
    for s in sources:
        if any(fnmatch.fnmatch(s, p) for p in opts.test_sources):
            out[s] = "test"
        elif any(fnmatch.fnmatch(s, p) for p in opts.valid_sources):
            out[s] = "valid"
    rest = [s for s in sources if s not in out]
    if opts.valid_sources or opts.test_sources:
        # explicit held-out sets: everything else trains
        out.update({s: "train" for s in rest})
        return out
    rest = _hash_order(rest, opts.seed)
    n = len(rest)
    n_train = round(n * opts.fractions[0])
    n_valid = round(n * opts.fractions[1])
    if n >= 3:  # keep every requested split non-empty when there are enough sources
        n_train = max(1, min(n_train, n - (opts.fractions[1] > 0) - (opts.fractions[2] > 0)))
        n_valid = max(int(opts.fractions[1] > 0), min(n_valid, n - n_train - (opts.fractions[2] > 0)))
    for i, s in enumerate(rest):
        out[s] = "train" if i < n_train else "valid" if i < n_train + n_valid else "test"
    if classes:
        _stratify(out, rest, {s: frozenset(classes.get(s, ())) for s in rest})
    return out


_MISSING_COST = {"train": 2, "valid": 1, "test": 1}


def _stratify(assign: dict[str, str], order: list[str], classes: dict[str, frozenset[int]]) -> None:
    """Swap sources (in seeded order, first improving swap) until no swap lowers the
    cost of the (class, split) pairs that are missing, in place."""
    used = [s for s in SPLITS if s in assign.values()]
    count: dict[str, Counter] = {s: Counter() for s in SPLITS}
    for src in order:
        count[assign[src]].update(classes[src])
    holders = Counter(c for src in order for c in classes[src])

    def delta(a: str, b: str) -> int:
        sa, sb, ca, cb = assign[a], assign[b], classes[a], classes[b]
        d = 0
        for c in ca ^ cb:  # classes both hold do not move
            gain_a, gain_b = (1, -1) if c in cb else (-1, 1)  # split a's change, split b's change
            for sp, g in ((sa, gain_a), (sb, gain_b)):
                before, after = count[sp][c] == 0, count[sp][c] + g == 0
                d += _MISSING_COST[sp] * (after - before)
        return d

    improved = True
    while improved:
        improved = False
        for c in sorted(holders, key=lambda k: (holders[k], k)):  # rarest class first
            for sp in used:
                if count[sp][c]:
                    continue
                pair = next(((a, b) for a in order if c in classes[a] and assign[a] != sp
                             for b in order if assign[b] == sp and delta(a, b) < 0), None)
                if pair is None:
                    continue
                a, b = pair
                sa = assign[a]
                count[sa].subtract(classes[a])
                count[sp].subtract(classes[b])
                count[sa].update(classes[b])
                count[sp].update(classes[a])
                assign[a], assign[b] = sp, sa
                improved = True


def _missing_classes(report: TileReport) -> dict[str, list[int]]:
    """Per non-empty split, the classes of the data set it has no pixel of."""
    present = {s: set(report.class_pixels[s]) for s in SPLITS}
    every = set().union(*present.values())
    return {s: sorted(every - present[s]) for s in SPLITS if report.chips[s] and every - present[s]}


# ------------------------------------------------------------------ writing

_TOP_FILES = ("manifest.csv", "stats.json")
_KINDS = ("images", "masks")
_STAGE = ".staged"


def _foreign_entry(out: Path) -> Path | None:
    """The first entry of ``out`` that a tiling run does not write (None: ``out``
    holds only split folders of chips, ``manifest.csv`` and ``stats.json``). GDAL's
    ``.aux.xml`` sidecars beside chips count as the run's."""
    for e in sorted(out.iterdir()):
        if e.is_symlink():
            return e
        if e.name in _TOP_FILES and e.is_file():
            continue
        if e.name not in SPLITS or not e.is_dir():
            return e
        for k in sorted(e.iterdir()):
            if k.is_symlink() or k.name not in _KINDS or not k.is_dir():
                return k
            for f in sorted(k.iterdir()):
                if f.is_symlink() or not f.is_file() or not f.name.endswith((".tif", ".tif.aux.xml")):
                    return f
    return None


def _check_out_dir(out: Path, overwrite: bool) -> None:
    if out.exists() and not out.is_dir():
        raise RasterError(f"cannot create {out}: a file is in the way")
    if not out.exists() or not any(out.iterdir()):
        return
    foreign = _foreign_entry(out)
    if foreign is not None:
        raise RasterError(f"output directory {out} is not empty and holds {foreign.relative_to(out)}, which "
                          "tiling did not write: choose a new or empty folder (nothing was deleted)")
    if not overwrite:
        raise RasterError(f"output directory {out} is not empty (chips of an earlier run)", option="overwrite")


class _Writer:
    """Writes a tiling run into a hidden folder beside ``out_dir`` and, at
    :meth:`finish`, puts it in place of ``out_dir`` (an earlier run's chips,
    manifest and stats are replaced as a whole); :meth:`abort` removes it.

    Chips are staged per source until every source is cut: the split is chosen
    then, from the classes each source's chips hold."""

    def __init__(self, out_dir: Path, opts: TileOptions, overwrite: bool):
        self.out = Path(out_dir)
        if self.out.is_symlink() or self.out.name in ("", ".", ".."):  # (the hidden folder goes beside it)
            self.out = self.out.resolve()
        _check_out_dir(self.out, overwrite)
        self.overwrite = overwrite
        missing = [q for q in reversed(self.out.absolute().parents) if not q.exists()]
        if any(q.parent.exists() and not q.parent.is_dir() for q in missing + [self.out]):
            raise RasterError(f"cannot create {self.out}: a file is in the way")
        self.made_dirs: list[Path] = []
        for q in missing:  # like mkdir -p; removed again if tiling fails
            q.mkdir()
            self.made_dirs.append(q)
        self.tmp: Path | None = None
        try:
            self.tmp = self._sibling("new")
            for kind in _KINDS:
                (self.tmp / _STAGE / kind).mkdir(parents=True)
        except BaseException:
            self.abort()
            raise
        self.opts = opts
        self.report = TileReport(self.out)
        self.rows: list[dict] = []                       # manifest rows, split and paths filled in at finish
        self.source_classes: dict[str, dict[int, int]] = {}
        self._source_ids: dict[str, int] = {}

    def _sibling(self, what: str) -> Path:
        """A new hidden folder beside ``out`` (``os.mkdir``: the umask's permissions)."""
        sweep_stale(self.out.parent)  # what a killed run left there
        while True:
            p = self.out.parent / f".{self.out.name}.tile-{what}-{temp_tag()}"
            try:
                p.mkdir()
                return p
            except FileExistsError:
                continue

    def add(self, source: str, name: str, image: np.ndarray, mask: np.ndarray, nodata,
            transform, crs, row: int, col: int) -> None:
        ign = self.opts.ignore_index
        labelled = mask != ign
        frac = float(labelled.mean())
        if not labelled.any() or frac < self.opts.min_valid:
            self.report.skipped_chips += 1
            return
        sid = self._source_ids.setdefault(source, len(self._source_ids))
        staged = f"{sid}-{name}.tif"
        common = dict(profile("chip"), width=image.shape[2], height=image.shape[1], crs=crs, transform=transform)
        with rasterio.open(self.tmp / _STAGE / "images" / staged, "w", count=image.shape[0], dtype=image.dtype,
                           nodata=nodata, **common) as d:
            d.write(image)
        with rasterio.open(self.tmp / _STAGE / "masks" / staged, "w", count=1, dtype="uint8", nodata=ign,
                           **common) as d:
            d.write(mask, 1)
        vals, counts = np.unique(mask[labelled], return_counts=True)
        sc = self.source_classes.setdefault(source, {})
        for v, c in zip(vals, counts):
            sc[int(v)] = sc.get(int(v), 0) + int(c)
        self.report.ignored_pixels += int((~labelled).sum())
        self.rows.append({"split": "", "source": source, "image": "", "mask": "", "row": row, "col": col,
                          "labelled_fraction": f"{frac:.4f}",
                          "classes": " ".join(f"{int(v)}:{int(c)}" for v, c in zip(vals, counts)),
                          "_staged": staged, "_name": name})

    def abort(self) -> None:
        """Remove what this run wrote (an error or a cancel must not leave a half data
        set, and leaves an earlier run in ``out`` as it was)."""
        if self.tmp is not None:
            shutil.rmtree(self.tmp, ignore_errors=True)
        for d in reversed(self.made_dirs):
            try:
                d.rmdir()
            except OSError:
                pass

    def finish(self, sources: Sequence[str]) -> TileReport:
        """Choose the splits, move the staged chips into them, write the manifest
        and stats, warn about classes a split lacks, and put the run in place."""
        splits = assign_splits(sources, self.opts, {s: set(self.source_classes.get(s, {})) for s in sources})
        rep = self.report
        for kind in _KINDS:
            for s in SPLITS:
                (self.tmp / s / kind).mkdir(parents=True)
        for r in self.rows:
            split, staged, name = splits[r["source"]], r.pop("_staged"), r.pop("_name")
            r["split"] = split
            for kind in _KINDS:
                dst = self.tmp / split / kind / f"{name}.tif"
                if dst.exists():
                    raise RasterError(f"two sources give a chip named {name} in {split}: give the images "
                                      "distinct file names")
                os.rename(self.tmp / _STAGE / kind / staged, dst)
                r["image" if kind == "images" else "mask"] = f"{split}/{kind}/{name}.tif"
            rep.chips[split] += 1
        for src, cp in self.source_classes.items():
            tot = rep.class_pixels[splits[src]]
            for k, v in cp.items():
                tot[k] = tot.get(k, 0) + v
        shutil.rmtree(self.tmp / _STAGE)
        for src, sp in sorted(splits.items()):
            rep.sources[sp].append(src)
        rep.missing_classes = _missing_classes(rep)
        for sp, missing in rep.missing_classes.items():
            names = ", ".join(map(str, missing))
            others = sorted({s for c in missing for s in SPLITS if c in rep.class_pixels[s]})
            holders = {c: sum(c in cp for cp in self.source_classes.values()) for c in missing}
            held = "; ".join(f"class {c}: {n} source{'s' * (n != 1)}" for c, n in holders.items())
            if sp == "train":
                rep.notes.append(f"class {names} has no pixel in the train split (only in {', '.join(others)}; "
                                 f"{held}): the model cannot learn it")
            else:
                rep.notes.append(f"class {names} has no pixel in the {sp} split although {', '.join(others)} "
                                 f"has it ({held}): its {sp} scores will be 0; more regions or sources, "
                                 "or sources chosen for valid/test, would fix it")
        with open(self.tmp / "manifest.csv", "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=["split", "source", "image", "mask", "row", "col",
                                              "labelled_fraction", "classes"], lineterminator="\n")
            w.writeheader()
            w.writerows(self.rows)
        (self.tmp / "stats.json").write_text(json.dumps(rep.as_dict(), indent=2) + "\n")
        for note in rep.notes:  # (before the run is in place: a warning turned error leaves nothing)
            warnings.warn(note, SplitWarning, stacklevel=4)
        self._put_in_place()
        return rep

    def _put_in_place(self) -> None:
        """Replace ``out`` by the new run: two renames (the earlier run is moved aside,
        then removed once the new one is in place; put back if the second rename fails)."""
        if not self.out.exists():
            os.rename(self.tmp, self.out)
            return
        _check_out_dir(self.out, self.overwrite)  # again: nothing foreign arrived meanwhile
        old = self._sibling("old")
        old.rmdir()
        os.rename(self.out, old)
        try:
            os.rename(self.tmp, self.out)
        except BaseException:
            os.rename(old, self.out)
            raise
        shutil.rmtree(old, ignore_errors=True)


def _run(writer: _Writer, sources: Sequence[str], cut) -> TileReport:
    """Run ``cut()`` then choose the splits and write the manifest; on any error or a
    cancel, remove what was written."""
    try:
        cut()
        return writer.finish(sources)
    except BaseException:
        writer.abort()
        raise


def _fit_chip(image: np.ndarray, mask: np.ndarray, chip: int, ignore: int) -> tuple[np.ndarray, np.ndarray]:
    """Pad a chip cut short by a small image to ``chip`` x ``chip``: the image mirrored,
    the mask with the ignore index."""
    pr, pc = chip - mask.shape[0], chip - mask.shape[1]
    if pr == 0 and pc == 0:
        return image, mask
    return reflect_pad(image, pr, pc), np.pad(mask, ((0, pr), (0, pc)), constant_values=ignore)


# ------------------------------------------------------------------ big rasters

def tile_rasters(pairs: Sequence[tuple[str | os.PathLike, str | os.PathLike]], out_dir: str | os.PathLike,
                 opts: TileOptions = TileOptions(), *, label_nodata: float | None | str = "auto",
                 overwrite: bool = False, progress: ProgressFn | None = None,
                 is_cancelled: CancelFn | None = None) -> TileReport:
    """Chips from georeferenced image + label rasters (label values = class indexes).

    Each raster is cut into ``opts.regions`` x ``opts.regions`` regions, the unit of
    the split (named ``IMAGE#rRcC``); chips never cross a region boundary.
    ``progress(done, total)`` counts regions; when ``is_cancelled()`` turns true the
    run stops with :class:`~geoseg.errors.Cancelled` and removes what it wrote.
    """
    reporter = Reporter(progress, is_cancelled)
    reporter.check()
    plans = []
    for img_path, lab_path in pairs:
        with open_raster(img_path) as img, open_raster(lab_path) as lab:
            try:
                check_same_grid(img, lab, ("image", "label"))
            except RasterError as e:
                raise RasterError(f"{Path(img_path).name} / {Path(lab_path).name}: {e}") from None
            h, w = img.height, img.width
        n = opts.regions
        rb = [round(i * h / n) for i in range(n + 1)]
        cb = [round(i * w / n) for i in range(n + 1)]
        for i in range(n):
            for j in range(n):
                if rb[i + 1] > rb[i] and cb[j + 1] > cb[j]:
                    plans.append((img_path, lab_path, f"{Path(img_path).name}#r{i}c{j}",
                                  (rb[i], rb[i + 1], cb[j], cb[j + 1])))
    reporter.total = len(plans)
    writer = _Writer(Path(out_dir), opts, overwrite)
    return _run(writer, [p[2] for p in plans], lambda: _cut_rasters(plans, writer, opts, label_nodata, reporter))


def _cut_rasters(plans, writer: _Writer, opts: TileOptions, label_nodata, reporter: Reporter) -> None:
    stride = opts.stride or opts.chip
    for img_path, lab_path, source, (r0, r1, c0, c1) in plans:
        with open_raster(img_path) as img, open_raster(lab_path) as lab:
            nd = resolve_nodata(lab.nodata, label_nodata)
            for rr in chip_origins(r1 - r0, opts.chip, stride):
                reporter.check()
                for cc in chip_origins(c1 - c0, opts.chip, stride):
                    row, col = r0 + rr, c0 + cc
                    win = Window(col, row, min(opts.chip, c1 - col), min(opts.chip, r1 - row))
                    image = img.read(window=win)
                    label = lab.read(1, window=win)
                    valid = label_valid(label, nd)
                    valid &= np.any(img.read_masks(window=win) > 0, axis=0)  # image nodata: no label
                    bad = valid & ((label < 0) | (label > 254))
                    if bad.any():
                        raise RasterError(f"{Path(lab_path).name}: label value {label[bad][0]} is not a class "
                                          "index 0..254 (is it the label nodata value?)", option="label_nodata")
                    mask = np.where(valid, label, opts.ignore_index).astype(np.uint8)
                    image, mask = _fit_chip(image, mask, opts.chip, opts.ignore_index)
                    name = f"{Path(img_path).stem}_r{row}_c{col}"
                    writer.add(source, name, image, mask, img.nodata,
                               window_transform(win, img.transform), img.crs, row, col)
        reporter.step()


# ------------------------------------------------------------------ folders

def _folder_sources(image_dirs: Sequence[str | os.PathLike], mask_dirs: Sequence[str | os.PathLike]
                    ) -> list[tuple[str, Path, Path]]:
    """(source name ``PARENT/FOLDER/FILE``, image file, mask file) of each folder pair."""
    image_dirs, mask_dirs = [Path(d) for d in image_dirs], [Path(d) for d in mask_dirs]
    if len(image_dirs) != len(mask_dirs):
        raise ConfigError(f"{len(image_dirs)} image folders but {len(mask_dirs)} mask folders")
    if not image_dirs:
        raise ConfigError("no image folders given")
    out = []
    for idir, mdir in zip(image_dirs, mask_dirs):
        for ip, mp in list_chips(idir, mdir):
            out.append((f"{idir.parent.name}/{idir.name}/{Path(ip).name}", Path(ip), Path(mp)))
    return out


def tile_folders(image_dirs: Sequence[str | os.PathLike], mask_dirs: Sequence[str | os.PathLike],
                 out_dir: str | os.PathLike, rgb_map: dict[tuple[int, int, int], int],
                 opts: TileOptions = TileOptions(), *, overwrite: bool = False, progress: ProgressFn | None = None,
                 is_cancelled: CancelFn | None = None) -> TileReport:
    """Chips from image/mask folders with colour-coded masks (JPEG/PNG/TIFF, palette
    PNGs included); each image file is a source for the split. ``progress(done,
    total)`` counts images; a cancel raises :class:`~geoseg.errors.Cancelled` and
    removes what was written."""
    reporter = Reporter(progress, is_cancelled)
    reporter.check()
    lut = colour_map_lut(rgb_map)
    sources = _folder_sources(image_dirs, mask_dirs)
    reporter.total = len(sources)
    writer = _Writer(Path(out_dir), opts, overwrite)
    return _run(writer, [p[0] for p in sources], lambda: _cut_folders(sources, writer, opts, lut, reporter))


def _cut_folders(sources, writer: _Writer, opts: TileOptions, lut, reporter: Reporter) -> None:
    stride = opts.stride or opts.chip
    c = opts.chip
    for source, ip, mp in sources:
        try:
            with rasterio.open(ip) as si, rasterio.open(mp) as sm:
                if (si.width, si.height) != (sm.width, sm.height):
                    raise RasterError(f"{ip.name} is {si.width} x {si.height} but its mask is "
                                      f"{sm.width} x {sm.height}")
                image = si.read()
                rgb = read_rgb_mask(sm)
                crs, transform = si.crs, si.transform
        except rasterio.errors.RasterioIOError as e:
            raise RasterError(f"cannot read {ip.name} or its mask: {one_line(e)}") from None
        mask, unmapped = mask_to_classes(rgb, lut, opts.ignore_index)
        for code, n in unmapped.items():
            key = "#%06X" % code
            writer.report.unmapped_colours[key] = writer.report.unmapped_colours.get(key, 0) + n
        h, w = mask.shape
        georef = crs is not None and not transform.is_identity  # (no dataset here to ask)
        safe = source.replace("/", "_").replace(" ", "_").rsplit(".", 1)[0]
        for row in chip_origins(h, c, stride):
            reporter.check()
            for col in chip_origins(w, c, stride):
                ci, cm = _fit_chip(image[:, row:row + c, col:col + c], mask[row:row + c, col:col + c], c,
                                   opts.ignore_index)
                t = window_transform(Window(col, row, c, c), transform) if georef else None
                writer.add(source, f"{safe}_r{row}_c{col}", ci, cm, None, t,
                           crs if georef else None, row, col)
        reporter.step()
