"""The README's "Python API" examples, run exactly as written (in a temporary folder)."""

import re
from pathlib import Path

import numpy as np
import rasterio

README = Path(__file__).resolve().parents[1] / "README.md"


def _api_blocks() -> list[str]:
    text = README.read_text()
    section = text.split("## Python API", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```python\n(.*?)```", section, re.S)


def test_readme_python_api_examples_run(tmp_path, monkeypatch, capsys):
    blocks = _api_blocks()
    assert len(blocks) == 4
    monkeypatch.chdir(tmp_path)
    spaces = []
    for code in blocks:  # each example on its own, as a reader would paste it
        spaces.append({})
        exec(compile(code, str(README), "exec"), spaces[-1])  # noqa: S102 - the README's own examples
    ns = {k: v for space in spaces for k, v in space.items()}
    out = capsys.readouterr().out
    assert "water:" in out and "ha" in out and "(545, 625) uint8" in out
    with rasterio.open(tmp_path / "water.tif") as a, rasterio.open(tmp_path / "water_from_array.tif") as b:
        crop = a.read(1)
        assert b.crs == a.crs and b.transform == a.transform
        cos = ns["classes"]
        # predict_array ran with crop blending: equal to the array-source file, pixel for pixel
        assert np.array_equal(b.read(1), cos)
    assert (tmp_path / "water_areas.csv").exists()
    # the scene has no nodata: every pixel is counted, and the table equals predict's own counts
    assert sum(r.pixels for r in ns["table"].rows) == crop.size
    assert {r.class_id: r.pixels for r in ns["table"].rows} == ns["res"].counts
