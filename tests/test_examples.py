"""The example READMEs' commands, run as written by scripts/check_examples.py.

CI runs the two workflows on the bundled scene (Sentinel-2 water with 6 bands, and the
binary sigmoid/Dice workflow: tile, train, evaluate, predict), shortened to one epoch
of two steps: about 2 minutes on 2 CPU cores. The three on ../shared/data (Dubai,
the 4-class rgb_map, North Carolina) take about 4 minutes more; run all five with

    .venv/bin/python scripts/check_examples.py
"""

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "scripts" / "check_examples.py"
CI_SUBSET = ("s2_water", "binary_water_dice")


def _load():
    spec = importlib.util.spec_from_file_location("check_examples", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    sys.modules["check_examples"] = mod
    spec.loader.exec_module(mod)
    return mod


ce = _load()


def test_commands_are_the_bash_blocks_of_a_readme():
    text = """intro `geoseg predict m.geoseg photo.jpg out.tif` (inline: not run)

```
# a comment line
.venv/bin/geoseg tile out --image "a b.tif" \\
    --label l.tif   # trailing comment

mkdir -p work
```

```toml
[train]
epochs = 3
```

```bash
args=(); for i in 1 2; do args+=(--images "Tile $i"); done
```
```python
print("no")
```
"""
    assert ce.extract_commands(text) == [
        '.venv/bin/geoseg tile out --image "a b.tif" \\\n    --label l.tif   # trailing comment',
        "mkdir -p work",
        'args=(); for i in 1 2; do args+=(--images "Tile $i"); done',
    ]


def test_training_configs_are_shortened_in_the_copy():
    toml = ('[model]\nepochs_x = 2\n\n[train]\nepochs = 40\nsteps_per_epoch = 100\nbatch_size = 8\n\n'
            '[eval]\nepochs = 9\n')
    out = ce.shorten_config(toml, {"epochs": 1, "steps_per_epoch": 2, "validation_steps": 1})
    assert out == ('[model]\nepochs_x = 2\n\n[train]\nvalidation_steps = 1\nepochs = 1\nsteps_per_epoch = 2\n'
                   'batch_size = 8\n\n[eval]\nepochs = 9\n')
    ini = "; seed INI\n[train]\nepochs         = 60\nbatch_size     = 8\n"
    assert ce.shorten_config(ini, {"epochs": 1, "validation_steps": 1}) == (
        "; seed INI\n[train]\nvalidation_steps = 1\nepochs         = 1\nbatch_size     = 8\n")
    assert ce.shorten_config("[mask]\nx = 1\n", {"epochs": 1}) == "[mask]\nx = 1\n"


def test_every_example_readme_has_commands_bash_can_parse():
    readmes = sorted((REPO / "examples").glob("*/README.md"))
    assert {p.parent.name for p in readmes} >= {"s2_water", "binary_water_dice", "dubai_landcover",
                                                 "rgb_map_4class", "nc_landcover"}
    for p in readmes:
        cmds = ce.extract_commands(p.read_text())
        assert cmds, p
        script = ce.driver(cmds, Path("/dev/null"))
        res = subprocess.run(["bash", "-n"], input=script, text=True, capture_output=True, check=False)
        assert res.returncode == 0, f"{p}: {res.stderr}"


def test_bundled_scene_workflows_run_as_written():
    """s2_water and binary_water_dice, every command as written (shortened training)."""
    if not (REPO / ".venv" / "bin" / "geoseg").exists():
        pytest.skip("no .venv/bin/geoseg (bash scripts/bootstrap.sh)")
    res = subprocess.run([sys.executable, str(SCRIPT), "--only", ",".join(CI_SUBSET)], cwd=REPO,
                         capture_output=True, text=True, timeout=1200, check=False)
    assert res.returncode == 0, res.stdout[-6000:] + res.stderr[-3000:]
    n = sum(len(ce.extract_commands((REPO / "examples" / e / "README.md").read_text())) for e in CI_SUBSET)
    assert res.stdout.count("  PASS  rc 0 ") == n
    assert f"{n} of {n} commands passed" in res.stdout


def test_a_readme_stops_at_its_first_failing_command(tmp_path):
    """Shell state carries from one command to the next; a failure's exit code is
    recorded and the commands after it do not run."""
    status = tmp_path / "status"
    cmds = ['args=(--x "a b")', 'test "${args[1]}" = "a b"', "sh -c 'exit 3'", "touch ran"]
    res = subprocess.run(["bash", "-c", ce.driver(cmds, status)], cwd=tmp_path, capture_output=True, text=True,
                         check=False)
    assert res.returncode == 3
    assert [line.split()[:2] for line in status.read_text().splitlines()] == [["0", "0"], ["1", "0"], ["2", "3"]]
    assert not (tmp_path / "ran").exists()
