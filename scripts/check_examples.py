#!/usr/bin/env python3
"""Run the commands of every examples/*/README.md as written, shortened where they train.

    .venv/bin/python scripts/check_examples.py                      # all five examples (~7 min, 2 CPU cores)
    .venv/bin/python scripts/check_examples.py --only s2_water,binary_water_dice
    .venv/bin/python scripts/check_examples.py --list               # print the commands, run nothing

What is run (the convention the example READMEs follow):

* The fenced code blocks of ``examples/<name>/README.md`` opened by a bare fence or by
  fence info ``bash``, ``sh`` or ``shell``; other blocks (``toml``, ``python``...) and
  inline code spans are not run. Write inline what is illustrative (``photo.jpg``) or
  too long for the check (the d4 test-time augmentation run).
* In a block, each line is one command; a line ending with ``\\`` goes on on the next
  line. Blank lines and lines starting with ``#`` are skipped (a ``# comment`` after a
  command is bash's own). No here-documents, no multi-line loops: write a loop on one
  logical line.
* The commands of one README run in order, in one bash process (variables such as a
  bash array carry from one command to the next), from the root of a fresh temporary
  copy of the repository (tracked and untracked-but-not-ignored files), so their
  ``work/`` outputs do not litter the checkout, and each README starts from a clean
  copy as a new user's clone would. In the copy, ``.venv`` links to the checkout's
  virtual environment, whose ``bin`` is also first on ``PATH``; ``../shared`` links to
  the checkout's ``../shared`` (the data sets of ``../shared/data``) where that exists.
  A README stops at its first failing command; the commands after it are reported as
  not run.

Shortening: the commands are run exactly as written, but in the copy every config
file under ``examples/`` (``*.toml``, ``*.config``, ``*.ini``) gets in its ``[train]``
section ``epochs = 1``, ``steps_per_epoch = 2`` and ``validation_steps = 1``
(``--epochs``, ``--steps``, ``--validation-steps``; ``--full`` runs the configs as
they are). The checkout's files are never changed.

Each command is reported as PASS or FAIL with its exit code and time, a failure with
the end of its output; the script exits 1 when a command failed or did not run.
``--keep`` keeps the temporary copies (their path is printed) to look at the outputs.
"""

from __future__ import annotations

import argparse
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SHELL_FENCES = ("", "bash", "sh", "shell")
CONFIG_SUFFIXES = (".toml", ".config", ".ini")
MARK = "##### check_examples: command"


@dataclass
class Result:
    command: str
    rc: int | None = None          # None: not run (an earlier command failed, or the run timed out)
    seconds: float = 0.0
    output: str = ""


@dataclass
class Example:
    name: str
    readme: Path
    commands: list[str]
    results: list[Result] = field(default_factory=list)


def extract_commands(text: str) -> list[str]:
    """The shell commands of a README's fenced bash/sh/bare blocks (see the module doc)."""
    commands: list[str] = []
    in_block, run_block, pending = False, False, ""
    for line in text.splitlines():
        fence = re.match(r"^\s*```\s*([\w+-]*)", line)
        if fence:
            if in_block:
                if pending.strip():
                    commands.append(pending.rstrip())
                in_block, run_block, pending = False, False, ""
            else:
                in_block, run_block = True, fence.group(1).lower() in SHELL_FENCES
            continue
        if not (in_block and run_block):
            continue
        if not pending and (not line.strip() or line.lstrip().startswith("#")):
            continue
        pending += line + "\n"
        if not line.rstrip().endswith("\\"):
            commands.append(pending.rstrip())
            pending = ""
    if pending.strip():
        commands.append(pending.rstrip())
    return commands


def shorten_config(text: str, settings: dict[str, int]) -> str:
    """``text`` (TOML or the seed's INI) with ``settings`` set in its ``[train]``
    section: existing keys replaced, missing ones added after the section header."""
    lines = text.splitlines()
    section, header_at, seen = None, None, set()
    for i, line in enumerate(lines):
        m = re.match(r"^\s*\[([^\]]+)\]\s*$", line)
        if m:
            section = m.group(1).strip()
            if section == "train":
                header_at = i
            continue
        m = re.match(r"^(\s*)(\w+)(\s*[=:]\s*)", line)
        if section == "train" and m and m.group(2) in settings:
            lines[i] = f"{m.group(1)}{m.group(2)}{m.group(3)}{settings[m.group(2)]}"
            seen.add(m.group(2))
    if header_at is None:
        return text
    missing = [f"{k} = {v}" for k, v in settings.items() if k not in seen]
    lines[header_at + 1:header_at + 1] = missing
    return "\n".join(lines) + "\n"


def repo_files() -> list[Path]:
    """Tracked and untracked-but-not-ignored files of the checkout (what a clone plus
    the work in progress holds)."""
    try:
        out = subprocess.run(["git", "ls-files", "-z", "-co", "--exclude-standard"], cwd=REPO, check=True,
                             capture_output=True).stdout.decode()
        files = [Path(p) for p in out.split("\0") if p]
    except (OSError, subprocess.CalledProcessError):  # not a git checkout: everything but the usual outputs
        skip = {".git", ".venv", ".venv-jax", "work", "__pycache__", ".pytest_cache"}
        files = [p.relative_to(REPO) for p in REPO.rglob("*")
                 if p.is_file() and not skip & set(p.relative_to(REPO).parts)]
    return [p for p in files if (REPO / p).is_file()]


def make_copy(dest: Path, files: list[Path], settings: dict[str, int] | None) -> None:
    for rel in files:
        (dest / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(REPO / rel, dest / rel)
    (dest / ".venv").symlink_to(REPO / ".venv")
    shared = REPO.parent / "shared"
    if shared.exists() and not (dest.parent / "shared").exists():
        (dest.parent / "shared").symlink_to(shared)
    if settings:
        for cfg in (dest / "examples").rglob("*"):
            if cfg.suffix in CONFIG_SUFFIXES and cfg.is_file():
                cfg.write_text(shorten_config(cfg.read_text(), settings))


def driver(commands: list[str], status: Path) -> str:
    """A bash script running ``commands`` in order, recording each exit code and time."""
    parts = ["exec 3>" + shlex.quote(str(status))]
    for i, cmd in enumerate(commands):
        parts += [f'echo "{MARK} {i}"', "__t=$EPOCHREALTIME", cmd,
                  f'__rc=$?; echo "{i} $__rc $__t $EPOCHREALTIME" >&3; [ $__rc -eq 0 ] || exit $__rc']
    return "\n".join(parts) + "\n"


def run_example(ex: Example, root: Path, files: list[Path], settings: dict[str, int] | None,
                timeout: float) -> None:
    copy = root / ex.name / "repo"
    copy.mkdir(parents=True)
    make_copy(copy, files, settings)
    status, log = root / ex.name / "status.txt", root / ex.name / "output.log"
    script = root / ex.name / "commands.sh"
    script.write_text(driver(ex.commands, status))
    env = dict(os.environ, PATH=f"{REPO / '.venv' / 'bin'}{os.pathsep}{os.environ.get('PATH', '')}")
    env.pop("VIRTUAL_ENV", None)
    with open(log, "w") as f:
        proc = subprocess.Popen(["bash", str(script)], cwd=copy, env=env, stdout=f, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True)
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
            f.write(f"\n[check_examples: timed out after {timeout:.0f} s]\n")
    text = log.read_text(errors="replace")
    outputs = re.split(rf"^{re.escape(MARK)} \d+\n", text, flags=re.MULTILINE)[1:]
    done = {}
    for line in status.read_text().splitlines() if status.exists() else []:
        i, rc, t0, t1 = line.split()
        done[int(i)] = (int(rc), float(t1.replace(",", ".")) - float(t0.replace(",", ".")))
    ex.results = []
    for i, cmd in enumerate(ex.commands):
        r = Result(cmd, output=outputs[i] if i < len(outputs) else "")
        if i in done:
            r.rc, r.seconds = done[i]
        elif i < len(outputs):  # started, no status: killed (timeout)
            r.rc = proc.returncode if proc.returncode not in (None, 0) else -1
        ex.results.append(r)


def one_line(cmd: str, width: int = 110) -> str:
    s = " ".join(cmd.replace("\\\n", " ").split())
    return s if len(s) <= width else s[:width - 3] + "..."


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", default="", help="comma-separated example folder names (default: all)")
    ap.add_argument("--list", action="store_true", help="print the commands found, run nothing")
    ap.add_argument("--full", action="store_true", help="do not shorten the training configs")
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument("--steps", type=int, default=2, help="train.steps_per_epoch in the copy")
    ap.add_argument("--validation-steps", type=int, default=1, help="train.validation_steps in the copy")
    ap.add_argument("--timeout", type=float, default=1800, help="seconds per example README")
    ap.add_argument("--keep", action="store_true", help="keep the temporary copies")
    ap.add_argument("--tail", type=int, default=25, help="output lines shown for a failed command")
    args = ap.parse_args(argv)

    readmes = sorted((REPO / "examples").glob("*/README.md"))
    examples = [Example(p.parent.name, p, extract_commands(p.read_text())) for p in readmes]
    if args.only:
        wanted = [w.strip() for w in args.only.split(",") if w.strip()]
        unknown = sorted(set(wanted) - {e.name for e in examples})
        if unknown:
            ap.error(f"no examples/{unknown[0]}/README.md (examples: {', '.join(e.name for e in examples)})")
        examples = [e for e in examples if e.name in wanted]
    if args.list:
        for ex in examples:
            print(f"# {ex.readme.relative_to(REPO)}")
            for cmd in ex.commands:
                print(cmd)
            print()
        return 0
    settings = None if args.full else {"epochs": args.epochs, "steps_per_epoch": args.steps,
                                       "validation_steps": args.validation_steps}
    if not (REPO / ".venv" / "bin").is_dir():
        print(f"check_examples: {REPO / '.venv'} not found (run bash scripts/bootstrap.sh first)", file=sys.stderr)
        return 2
    shared = REPO.parent / "shared" / "data"
    files = repo_files()
    root = Path(tempfile.mkdtemp(prefix="geoseg-examples-"))
    print(f"check_examples: {len(examples)} example(s) in copies under {root}; "
          + ("configs as they are" if settings is None else
             "configs shortened to " + ", ".join(f"{k} = {v}" for k, v in settings.items())), flush=True)
    failed = 0
    t_all = time.monotonic()
    try:
        for ex in examples:
            print(f"\n== examples/{ex.name}/README.md ({len(ex.commands)} commands)", flush=True)
            if not ex.commands:
                print("  FAIL  no commands found in a bash/sh/bare fenced block")
                failed += 1
                continue
            if any("../shared/" in c for c in ex.commands) and not shared.is_dir():
                print(f"  FAIL  needs {shared} (the data sets beside the checkout), which is not there")
                failed += len(ex.commands)
                continue
            t0 = time.monotonic()
            run_example(ex, root, files, settings, args.timeout)
            for r in ex.results:
                if r.rc is None:
                    print(f"  ----  not run     {one_line(r.command)}", flush=True)
                    failed += 1
                elif r.rc == 0:
                    print(f"  PASS  rc 0 {r.seconds:6.1f}s {one_line(r.command)}", flush=True)
                else:
                    failed += 1
                    print(f"  FAIL  rc {r.rc} {r.seconds:5.1f}s {one_line(r.command)}")
                    for line in r.output.rstrip().splitlines()[-args.tail:]:
                        print(f"        | {line}", flush=True)
            print(f"  ({time.monotonic() - t0:.0f} s)", flush=True)
    finally:
        if args.keep:
            print(f"\ncheck_examples: outputs kept in {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)
    n = sum(len(e.commands) for e in examples)
    print(f"\ncheck_examples: {n - failed} of {n} commands passed in {time.monotonic() - t_all:.0f} s"
          + ("" if not failed else f"; {failed} failed or not run"))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
