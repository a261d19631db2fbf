"""Plant one-line faults ("mutants") in the core and check that the tests catch them.

    .venv/bin/python scripts/mutate.py                 # every mutant
    .venv/bin/python scripts/mutate.py --module unit   # one module's
    .venv/bin/python scripts/mutate.py --list

Each mutant is applied to a fresh copy of the repository (the working tree is never
touched), the tests that guard that module run there (``pytest -x``), and the mutant
is *caught* when they fail. The figure (caught / planted, per module) goes to
docs/mutation.md. This is a habit, not part of CI's time budget: a whole run takes
about as long as the test files it names, once per mutant.

A mutant whose text is not found exactly once is reported as stale (the code moved):
update it here rather than deleting it.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class Mutant:
    id: str
    module: str        # geoseg/<module>.py
    old: str
    new: str
    what: str
    tests: tuple[str, ...]


PRED = ("tests/test_predict.py", "tests/test_engine.py")
M = [
    # windows: the grid
    Mutant("W1", "windows", "n2 = _roundup(extent - s2, a)", "n2 = _roundup(extent - s2 - 1, a)",
           "far-border trimmed window 1 px short", ("tests/test_windows.py", "geoseg/windows.py")),
    Mutant("W2", "windows", "    stride = tile - overlap\n    bonus", "    stride = tile + overlap\n    bonus",
           "overlap sign in the stride", ("tests/test_windows.py", "geoseg/windows.py")),
    Mutant("W3", "windows", "start, size = _window_start(core_start, core_size, tile, extent, align), tile",
           "start, size = _window_start(core_start, core_size, tile, extent, 1), tile",
           "window origins off the pooling lattice",
           ("tests/test_windows.py", "geoseg/windows.py")),
    Mutant("W4", "windows", "    bonus = overlap - overlap // 2", "    bonus = 0", "border cores not lengthened",
           ("tests/test_windows.py", "geoseg/windows.py", *PRED)),
    # sources: reading
    Mutant("S1", "sources", "valid = np.any(self.ds.read_masks(list(bands), window=win) > 0, axis=0)",
           "valid = np.ones(data.shape[1:], bool)", "nodata masks ignored", PRED),
    Mutant("S2", "sources", "valid = np.any(self.ds.read_masks(list(bands), window=win) > 0, axis=0)",
           "valid = np.all(self.ds.read_masks(list(bands), window=win) > 0, axis=0)",
           "GDAL all-bands nodata rule inverted (any band masks the pixel)", PRED),
    Mutant("S3", "sources", "        if bad is not None:\n            valid &= ~bad\n        return data, valid\n\n    def read_decimated",
           "        return data, valid\n\n    def read_decimated", "NaN/inf pixels of a raster kept valid", PRED),
    Mutant("S4", "sources", "masked_all[:] = False  # a band without nodata",
           "pass  # a band without nodata", "array source: a band without nodata ignored in the all-bands rule",
           ("tests/test_engine.py",)),
    Mutant("S5", "sources", "    return np.pad(a, widths, mode=\"reflect\")", "    return np.pad(a, widths, mode=\"constant\")",
           "small rasters padded with zeros instead of a reflection", PRED),
    Mutant("S6", "sources", "    if not a.transform.almost_equals(b.transform):", "    if False:",
           "misaligned truth scored silently", ("tests/test_evaluate.py", "tests/test_dataset.py")),
    Mutant("S7", "sources", "        return found  # type: ignore[return-value]",
           "        return list(range(1, len(found) + 1))  # type: ignore[return-value]",
           "band names ignored (file order taken)", PRED + ("tests/test_radiometry.py",)),
    # unit: normalise, model, merge
    Mutant("U1", "unit", "acc[dst_sl] += probs[j][src_sl] * weights[src_sl]\n                wsum[dst_sl] += weights[src_sl]",
           "acc[dst_sl] += probs[j][src_sl]\n                wsum[dst_sl] += 1.0", "cosine blending with uniform weights",
           PRED),
    Mutant("U2", "unit", "conf[sl] = np.rint(100.0 * p.max(axis=-1)).astype(np.uint8)",
           "conf[sl] = np.rint(100.0 * p.mean(axis=-1)).astype(np.uint8)", "confidence = mean, not max", PRED),
    Mutant("U3", "unit", "return (sc / std).astype(np.float32), ((off * sc - mean) / std).astype(np.float32)",
           "return (sc / std).astype(np.float32), ((off - mean) / std).astype(np.float32)",
           "input offset not scaled", PRED),
    Mutant("U4", "unit", "    if plan.masked:\n        x[~valid] = 0.0\n", "", "nodata not zeroed before the model",
           PRED),
    Mutant("U5", "unit", "        classes[~uin.valid] = CLASS_NODATA\n", "", "nodata pixels get a class", PRED),
    Mutant("U6", "unit", "    if transpose:\n        y = y.transpose(0, 2, 1, 3)\n    if flip_cols:\n        y = y[:, :, ::-1]\n    if flip_rows:\n        y = y[:, ::-1]\n    return y",
           "    if flip_cols:\n        y = y[:, :, ::-1]\n    if flip_rows:\n        y = y[:, ::-1]\n    if transpose:\n        y = y.transpose(0, 2, 1, 3)\n    return y",
           "TTA inverse in the wrong order", PRED),
    Mutant("U7", "unit", "            rows.setdefault(u.region.row, []).append(u)", "            rows.setdefault(0, []).append(u)",
           "batches cross rows of output blocks (one task for the whole plan)", PRED),
    Mutant("U8", "unit", "        if region_valid[contrib.slices(unit.region)].any():",
           "        if region_valid.any():", "all-nodata windows still sent to the model", PRED),
    # output: writing
    Mutant("O1", "files", "            elif t.exists() and ext == \".aux.xml\":\n                t.unlink()",
           "            elif False:\n                pass", "stale RAT kept on overwrite", PRED + ("tests/test_cli.py",)),
    Mutant("O2", "output", "        cmap[c.id] = (*c.rgb, 255)", "        cmap[c.id] = (*c.rgb[::-1], 255)",
           "class colours in the wrong channel order", PRED + ("tests/in_qgis",)),
    Mutant("O3", "output", "        self.acc.add(res.classes, res.unit.region.row)",
           "        self.acc.add(res.classes, 0)", "areas counted at the wrong rows (geodesic)",
           PRED + ("tests/test_areas.py",)),
    Mutant("O4", "output", "        for o in self.outputs:\n            o.discard()", "        pass",
           "temporary files left behind by a failed or cancelled run", PRED),
    # areas
    Mutant("A1", "areas", "    if pc.is_geographic:", "    if False and pc.is_geographic:",
           "planar areas for a geographic CRS", ("tests/test_areas.py",)),
    Mutant("A2", "areas", "    geod = pc.get_geod()", "    geod = pyproj.Geod(ellps='WGS84')",
           "WGS 84 instead of the CRS's own ellipsoid", ("tests/test_areas.py",)),
    Mutant("A3", "areas", "    det = abs(transform.a * transform.e - transform.b * transform.d)",
           "    det = abs(transform.a * transform.e)", "rotated grids: shear ignored", ("tests/test_areas.py",)),
    Mutant("A4", "areas", "    if nodata is not None and 0 <= nodata <= 255:\n        counts[nodata] = 0\n        if areas",
           "    if False:\n        counts[nodata] = 0\n        if areas", "nodata counted as a class",
           ("tests/test_areas.py",) + PRED),
    # evaluate
    Mutant("E1", "evaluate", "    keep = [k for k, c in enumerate(class_ids) if c != background]",
           "    keep = list(range(len(class_ids)))", "means include the background", ("tests/test_evaluate.py",)),
    Mutant("E2", "evaluate", "        for v in self.ignore:\n            valid &= truth != v\n",
           "", "ignore list not applied", ("tests/test_evaluate.py",)),
    Mutant("E3", "evaluate", "    fn = conf.sum(axis=1) - tp", "    fn = conf.sum(axis=0) - tp",
           "false negatives from the wrong axis", ("tests/test_evaluate.py",)),
    # training data: chips, statistics, tiling
    Mutant("T1", "loader", "        m2b = ((xf - mb[:, None]) ** 2).sum(axis=1)", "        m2b = (xf ** 2).sum(axis=1)",
           "band std without subtracting the mean", ("tests/test_train.py",)),
    Mutant("T2", "chips", "    hit = codes[pos_c] == code", "    hit = np.ones(code.shape, bool)",
           "unmapped mask colours take a neighbouring class", ("tests/test_dataset.py",)),
    Mutant("T3", "dataset", "        if any(fnmatch.fnmatch(s, p) for p in opts.test_sources):",
           "        if False:", "forced test sources ignored", ("tests/test_dataset.py",)),
]


def run(m: Mutant) -> tuple[str, float]:
    src = ROOT / "geoseg" / f"{m.module}.py"
    text = src.read_text()
    if text.count(m.old) != 1:
        return "stale", 0.0
    with tempfile.TemporaryDirectory(prefix=f"geoseg-mut-{m.id}-") as tmp:
        work = Path(tmp) / "repo"
        shutil.copytree(ROOT, work, ignore=shutil.ignore_patterns(".venv", ".venv-jax", ".git", "bench", "examples",
                                                                   "__pycache__", "*.egg-info", "work"))
        (work / "geoseg" / f"{m.module}.py").write_text(text.replace(m.old, m.new))
        t0 = time.perf_counter()
        p = subprocess.run([sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", *m.tests],
                           cwd=work, capture_output=True, text=True,
                           env={**__import__("os").environ, "PYTHONPATH": str(work)})
        dt = time.perf_counter() - t0
    return ("caught" if p.returncode == 1 else "SURVIVED" if p.returncode == 0 else f"error rc={p.returncode}"), dt


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--module", action="append", help="only these modules (repeat)")
    ap.add_argument("--id", action="append", help="only these mutant ids (repeat)")
    ap.add_argument("--list", action="store_true")
    ap.add_argument("--report", default=str(ROOT / "docs" / "mutation.md"))
    args = ap.parse_args()
    chosen = [m for m in M if (not args.module or m.module in args.module) and (not args.id or m.id in args.id)]
    if args.list:
        for m in chosen:
            print(f"{m.id:4} {m.module:9} {m.what}")
        return 0
    rows = []
    for m in chosen:
        verdict, dt = run(m)
        rows.append((m, verdict, dt))
        print(f"{m.id:4} {m.module:9} {verdict:9} {dt:6.1f} s  {m.what}", flush=True)
    per: dict[str, list[int]] = {}
    for m, v, _ in rows:
        c = per.setdefault(m.module, [0, 0])
        c[1] += 1
        c[0] += v == "caught"
    total = [sum(c[0] for c in per.values()), sum(c[1] for c in per.values())]
    print("\nper module: " + ", ".join(f"{k} {c[0]}/{c[1]}" for k, c in per.items())
          + f"; total {total[0]}/{total[1]}")
    if not args.module and not args.id:
        lines = ["# Mutation testing", "", "Faults planted one at a time in a copy of the repository by "
                 "`scripts/mutate.py`; a fault is caught when the tests that guard its module fail.", "",
                 f"Command: `.venv/bin/python scripts/mutate.py` ({time.strftime('%Y-%m-%d')}; about "
                 f"{sum(dt for _, _, dt in rows) / 60:.0f} min on 2 cores). For comparison, the outside audit of "
                 "the suite at commit 03820b9 (`../shared/tests-audit.md`) planted 19 faults and 9 survived; "
                 "every one of those has a mutant here.", "",
                 "| module | caught / planted |", "| --- | --- |"]
        lines += [f"| {k} | {c[0]} / {c[1]} |" for k, c in per.items()]
        lines += [f"| **total** | **{total[0]} / {total[1]}** |", "", "| id | module | fault | result |",
                  "| --- | --- | --- | --- |"]
        lines += [f"| {m.id} | {m.module} | {m.what} | {v} |" for m, v, _ in rows]
        Path(args.report).parent.mkdir(parents=True, exist_ok=True)
        Path(args.report).write_text("\n".join(lines) + "\n")
        print(f"wrote {args.report}")
    return 0 if total[0] == total[1] else 1


if __name__ == "__main__":
    sys.exit(main())
