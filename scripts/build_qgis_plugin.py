#!/usr/bin/env python3
"""Build the installable QGIS plugin zip: dist/geoseg_qgis-<version>.zip.

    python scripts/build_qgis_plugin.py [--out DIR]

The zip holds the folder geoseg_qgis/ with the plugin's files only (no tests,
caches or .pyc) and a LICENSE; install it in QGIS with Plugins ▸ Manage and Install
Plugins ▸ Install from ZIP. Its metadata version must equal geoseg's.
"""

from __future__ import annotations

import argparse
import re
import sys
import zipfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PLUGIN = REPO / "qgis_plugin" / "geoseg_qgis"
SUFFIXES = {".py", ".txt", ".svg", ".png", ".md"}


def geoseg_version() -> str:
    m = re.search(r'^__version__ = "([^"]+)"', (REPO / "geoseg" / "__init__.py").read_text(), re.M)
    return m.group(1)


def plugin_files() -> list[Path]:
    return sorted(p for p in PLUGIN.rglob("*")
                  if p.is_file() and p.suffix in SUFFIXES and "__pycache__" not in p.parts
                  and not p.name.startswith((".", "test_")))


def build(out_dir: Path) -> Path:
    version = geoseg_version()
    meta = (PLUGIN / "metadata.txt").read_text()
    m = re.search(r"^version=(.+)$", meta, re.M)
    if not m or m.group(1).strip() != version:
        raise SystemExit(f"build_qgis_plugin: metadata.txt version {m and m.group(1)!r} != geoseg {version}; "
                         "update qgis_plugin/geoseg_qgis/metadata.txt")
    out_dir.mkdir(parents=True, exist_ok=True)
    target = out_dir / f"geoseg_qgis-{version}.zip"
    tmp = target.with_name(f".{target.name}.tmp")
    with zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as z:
        for p in plugin_files():
            z.write(p, f"geoseg_qgis/{p.relative_to(PLUGIN).as_posix()}")
        lic = REPO / "LICENSE"
        if lic.is_file():
            z.write(lic, "geoseg_qgis/LICENSE")
    tmp.replace(target)
    return target


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=REPO / "dist", help="output folder [default: dist/]")
    args = ap.parse_args(argv)
    print(build(args.out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
