"""The ``geoseg`` command group: logging, error reporting, sub-commands."""

from __future__ import annotations

import errno
import io
import json
import logging
import os
import signal
import sys
import threading
import traceback
import warnings

import click

from geoseg import __version__
from geoseg.errors import Cancelled, GeosegError, one_line
from geoseg.progress import reset_run, signal_cancel, written

from .areas import areas
from .demo import demo
from .evaluate import evaluate
from .info import info
from .predict import predict
from .progress import (MODES, PROTOCOL, claim_stdout, emit, emit_result, finish, force_machine, machine,
                       reset)
from .tile import tile
from .train import train
from .vectorize import vectorize


#: The CLI's hint for each ``GeosegError.option`` (the Python-API parameter whose
#: setting fixes the error); ``{flag}`` becomes the running command's flag for that
#: parameter. The core's messages name no flags (rasterio's ``resolve_inout`` style).
HINTS = {
    "overwrite": "use {flag} to replace it",
    "bands": "choose them with {flag}",
    "nodata": "set {flag}?",
    "label_nodata": "set {flag}?",
    "truth_nodata": "set {flag}?",
}
DEFAULT_HINT = "see {flag}"


def option_flag(command: click.Command | None, option: str) -> str | None:
    """The flag of ``command``'s option whose Python name is ``option`` (its long
    form), or None when the command has no such option."""
    for p in getattr(command, "params", ()):
        if isinstance(p, click.Option) and p.name == option:
            return max(p.opts, key=len)
    return None


def error_message(e: GeosegError, command: click.Command | None = None) -> str:
    """A geoseg error as one line, with the hint for its ``option`` where ``command``
    has that option."""
    msg = str(e).strip().replace("\n", " ") or type(e).__name__
    flag = option_flag(command, e.option) if e.option else None
    if flag:
        msg += f" ({HINTS.get(e.option, DEFAULT_HINT).format(flag=flag)})"
    return msg


#: Where an unexpected error (a bug) is reported.
ISSUES = "https://github.com/geoseg/geoseg/issues"


class _Group(click.Group):
    """Turns geoseg errors into one line and a non-zero exit code; in ``--progress
    jsonl`` mode every run, whatever ends it, sends exactly one final event."""

    def main(self, args=None, prog_name=None, complete_var=None, standalone_mode=True, **extra):
        argv = list(sys.argv[1:] if args is None else args)
        if not standalone_mode or not jsonl_requested(argv):
            return super().main(args, prog_name, complete_var, standalone_mode, **extra)
        force_machine(True)
        reset()
        claim_stdout()
        code = 1
        try:
            with _TeeStdout() as printed:   # --help, --version: their text goes in the result
                try:
                    rv = super().main(argv, prog_name, complete_var, standalone_mode=False, **extra)
                    code = rv if isinstance(rv, int) else 0
                except click.ClickException as e:   # also those the group sent an event for
                    e.show()
                    finish("error", message=e.format_message(), exit_code=e.exit_code)
                    code = e.exit_code
                except click.Abort:   # Ctrl-C while click parsed
                    click.echo("geoseg: interrupted", err=True)
                    finish("cancelled", message="geoseg: interrupted", written=[])
                    code = 130
            if code == 0:
                finish()
                emit_result(None, {}, text=printed.getvalue())   # no result of its own: what it printed
                finish()
            else:
                finish("error", message=f"geoseg stopped with exit code {code}", exit_code=code)
        finally:
            force_machine(False)
        sys.exit(code)

    def invoke(self, ctx):
        try:
            rv = self._invoke(ctx)
        except click.ClickException as e:  # the one-line message, also as the final protocol event
            finish("error", message=e.format_message(), exit_code=e.exit_code)
            raise
        except click.exceptions.Exit as e:
            if e.exit_code == 0:
                finish()
            raise
        finish()   # the command's result, now that it has returned
        return rv

    def _invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except (Cancelled, KeyboardInterrupt) as e:
            done = written()
            # a command that keeps something (train: its resume backup) says what, and how to go on
            msg = getattr(e, "interrupt_message", None) or (
                f"geoseg: interrupted; written before it: {', '.join(map(str, done))}" if done else
                "geoseg: interrupted; no output was written")
            click.echo(msg, err=True)
            finish("cancelled", message=msg, written=[str(p) for p in done])
            ctx.exit(130)
        except GeosegError as e:
            command = self.get_command(ctx, ctx.invoked_subcommand) if ctx.invoked_subcommand else None
            raise click.ClickException(error_message(e, command)) from None
        except MemoryError:
            raise click.ClickException("out of memory; try a smaller --batch-size or --tile-size") from None
        except OSError as e:
            if e.errno == errno.ENOSPC:  # e.g. a CSV or JSON written on a full disk
                raise click.ClickException(f"no space left on device writing {e.filename or 'an output'}") from None
            _traceback(ctx)
            raise click.ClickException(one_line(e)) from None
        except (click.ClickException, click.exceptions.Exit, click.Abort):
            raise
        except Exception as e:  # noqa: BLE001  (a bug: one line, the traceback only with -v)
            _traceback(ctx)
            raise click.ClickException(f"internal error: {type(e).__name__}: {one_line(e)}; please report it at "
                                       f"{ISSUES} with the command and its output with -v") from None


def _traceback(ctx) -> None:
    """With -v, the traceback of the exception being handled (on stderr)."""
    obj = ctx.find_root().obj
    if isinstance(obj, dict) and obj.get("verbose"):
        traceback.print_exc(file=sys.stderr)


def jsonl_requested(argv) -> bool:
    """Whether the command line asks for ``--progress jsonl`` (the group's options come
    before the command name)."""
    want, i = False, 0
    while i < len(argv):
        a = argv[i]
        if a == "--progress" and i + 1 < len(argv):
            want, i = argv[i + 1] == "jsonl", i + 2
            continue
        if a.startswith("--progress="):
            want = a.split("=", 1)[1] == "jsonl"
        elif a == "--" or not a.startswith("-"):
            break
        i += 1
    return want


class _TeeStdout(io.TextIOBase):
    """``sys.stdout`` while a jsonl run is parsed and runs: what is printed goes on
    (to standard error: :func:`claim_stdout`) and the first MB is kept."""

    LIMIT = 1 << 20

    def __enter__(self):
        self._out, self._kept, self._n = sys.stdout, io.StringIO(), 0
        sys.stdout = self
        return self

    def __exit__(self, *exc):
        sys.stdout = self._out

    @property
    def encoding(self):
        return getattr(self._out, "encoding", None) or "utf-8"

    def writable(self):
        return True

    def write(self, text):
        if not isinstance(text, str):
            raise TypeError("text only")
        if self._n < self.LIMIT:
            self._kept.write(text[: self.LIMIT - self._n])
            self._n += len(text)
        return self._out.write(text)

    def flush(self):
        self._out.flush()

    def getvalue(self) -> str:
        return self._kept.getvalue()


_quiet = {"on": False}


def _show_warning(message, category, filename, lineno, file=None, line=None):
    if not _quiet["on"]:  # -q: errors only
        click.echo(f"Warning: {message}", err=True)
    emit("log", level="warning", message=str(message), category=category.__name__)


class _ProtocolHandler(logging.Handler):
    """Log records as protocol ``log`` events (``--progress jsonl``)."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            emit("log", level=record.levelname.lower(), message=record.getMessage(), logger=record.name)
        except Exception:  # noqa: BLE001  (logging must never raise)
            self.handleError(record)


@click.group(name="geoseg", cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("-v", "--verbose", count=True, help="More log output (repeat for debug).")
@click.option("-q", "--quiet", is_flag=True, help="Only errors: no progress bar, no summaries.")
@click.option("--progress", "progress", type=click.Choice(MODES), default="bar", show_default=True,
              help="How to report: a progress bar on stderr, 'jsonl' (one JSON event per line on stdout, "
                   "for programs such as the QGIS plugin) or 'none'.")
@click.version_option(__version__, prog_name="geoseg")
@click.pass_context
def cli(ctx, verbose, quiet, progress):
    """Segment satellite and aerial rasters with a UNet and measure class areas.

    \b
    Examples:
      geoseg demo                                   # bundled Sentinel-2 sample
      geoseg info model.geoseg
      geoseg predict model.geoseg scene.tif water.tif --areas --preview
      geoseg predict model.geoseg a.tif b.tif out_dir/ --areas
      geoseg areas landcover.tif -o areas.csv
      geoseg evaluate --model water.geoseg scene.tif truth.tif -o eval/water

    Also a rasterio plugin: rio geoseg predict ... (rio's -v/-q count too).
    """
    # As a `rio` plugin, ctx.obj holds rio's settings: its verbosity adds to ours.
    outer = ctx.obj if isinstance(ctx.obj, dict) else {}
    rio_verbosity = outer.get("verbosity", 0)
    verbose += max(rio_verbosity, 0)
    quiet = quiet or rio_verbosity < 0
    ctx.obj = {**outer, "verbose": verbose, "quiet": quiet, "progress": progress}
    reset_run()   # a new command: no interrupt asked for, nothing written yet
    if ctx.parent is not None:   # under rio: one command per group invocation
        reset()
    _setup(verbose, quiet, plugin=ctx.parent is not None)


def _setup(verbose: int, quiet: bool, plugin: bool) -> None:
    """Logging, warnings and TensorFlow's log level; under `rio`, also SIGTERM."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    level = logging.WARNING - 10 * verbose if not quiet else logging.ERROR
    _quiet["on"] = quiet
    logging.basicConfig(format="%(levelname)s %(name)s: %(message)s")  # a no-op under rio (it configured logging)
    logging.getLogger().setLevel(max(level, logging.DEBUG))
    logging.getLogger("rasterio").setLevel(logging.ERROR if verbose < 2 else logging.DEBUG)
    warnings.showwarning = _show_warning
    # Debian's mpl_toolkits (pulled in with QGIS) beside pip's matplotlib: harmless here
    warnings.filterwarnings("ignore", message="Unable to import Axes3D")
    if machine():
        claim_stdout()
    if machine() and not any(isinstance(h, _ProtocolHandler) for h in logging.getLogger().handlers):
        logging.getLogger().addHandler(_ProtocolHandler(level=max(level, logging.INFO)))
    if plugin and threading.current_thread() is threading.main_thread() \
            and signal.getsignal(signal.SIGTERM) is signal.SIG_DFL:
        signal.signal(signal.SIGTERM, _sigterm)  # `geoseg` itself sets it in main()


@click.command(short_help="Versions and the runner protocol, for programs (no TensorFlow loaded).")
@click.option("--json", "as_json", is_flag=True, help="One JSON object.")
def version(as_json):
    """Print geoseg's version, the --progress jsonl protocol version, this Python and
    whether a deep-learning backend is installed (found, not imported)."""
    import importlib.util  # noqa: PLC0415
    import platform  # noqa: PLC0415
    found = {m: importlib.util.find_spec(m) is not None for m in ("tensorflow", "jax", "keras", "rasterio")}
    info = {"geoseg": __version__, "protocol": PROTOCOL, "python": sys.executable,
            "python_version": platform.python_version(), "keras_backend": os.environ.get("KERAS_BACKEND"),
            "installed": found}
    if machine():
        emit_result("version", {}, **info)
    elif as_json:
        click.echo(json.dumps(info))
    else:
        have = ", ".join(m for m, ok in found.items() if ok) or "none"
        click.echo(f"geoseg {__version__} (protocol {PROTOCOL}) on Python {info['python_version']} "
                   f"[{sys.executable}]; installed: {have}")


for _command in (predict, areas, info, demo, evaluate, tile, train, version, vectorize):
    cli.add_command(_command)


def _sigterm(signum, frame):
    """SIGTERM: the run stops at its next cancel check (:func:`geoseg.progress.signal_cancel`),
    cleaning up as Ctrl-C does; where nothing checks (start-up) it is interrupted here."""
    if signal_cancel(signum):
        raise KeyboardInterrupt


def main() -> None:
    """The ``geoseg`` console script: SIGTERM cleans up as Ctrl-C does (exit code 130)."""
    signal.signal(signal.SIGTERM, _sigterm)
    try:
        sys.stderr.reconfigure(errors="backslashreplace")   # an error message always prints
    except (AttributeError, ValueError):
        pass
    try:
        cli.main(prog_name="geoseg", standalone_mode=True)
    except KeyboardInterrupt:  # outside a command (e.g. while importing)
        click.echo("geoseg: interrupted", err=True)
        if jsonl_requested(sys.argv[1:]):
            print(json.dumps({"v": PROTOCOL, "event": "cancelled", "message": "geoseg: interrupted", "written": []}),
                  flush=True)
        sys.exit(130)


if __name__ == "__main__":
    main()
