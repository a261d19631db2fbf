"""The ``geoseg`` command group: logging, error reporting, sub-commands."""

from __future__ import annotations

import logging
import os
import signal
import sys
import warnings

import click

from geoseg import __version__
from geoseg.errors import Cancelled, GeosegError

from .areas import areas
from .demo import demo
from .evaluate import evaluate
from .info import info
from .predict import predict
from .tile import tile
from .train import train


class _Group(click.Group):
    """Turns geoseg errors into one line and a non-zero exit code."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except (Cancelled, KeyboardInterrupt):
            click.echo("geoseg: interrupted; no output was written", err=True)
            ctx.exit(130)
        except GeosegError as e:
            raise click.ClickException(str(e)) from None
        except MemoryError:
            raise click.ClickException("out of memory; try a smaller --batch-size or --tile-size") from None


def _show_warning(message, category, filename, lineno, file=None, line=None):
    click.echo(f"Warning: {message}", err=True)


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("-v", "--verbose", count=True, help="More log output (repeat for debug).")
@click.option("-q", "--quiet", is_flag=True, help="Only errors: no progress bar, no summaries.")
@click.version_option(__version__, prog_name="geoseg")
@click.pass_context
def cli(ctx, verbose, quiet):
    """Segment satellite and aerial rasters with a UNet and measure class areas.

    \b
    Examples:
      geoseg demo                                   # bundled Sentinel-2 sample
      geoseg info model.geoseg
      geoseg predict model.geoseg scene.tif water.tif --areas --preview
      geoseg predict model.geoseg a.tif b.tif out_dir/ --areas
      geoseg areas landcover.tif -o areas.csv
      geoseg evaluate --model water.geoseg scene.tif truth.tif -o eval/water
    """
    level = logging.WARNING - 10 * verbose if not quiet else logging.ERROR
    logging.basicConfig(level=max(level, logging.DEBUG), format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("rasterio").setLevel(logging.ERROR if verbose < 2 else logging.DEBUG)
    warnings.showwarning = _show_warning
    # Debian's mpl_toolkits (pulled in with QGIS) beside pip's matplotlib: harmless here
    warnings.filterwarnings("ignore", message="Unable to import Axes3D")
    ctx.obj = {"verbose": verbose, "quiet": quiet}


cli.add_command(predict)
cli.add_command(areas)
cli.add_command(info)
cli.add_command(demo)
cli.add_command(evaluate)
cli.add_command(tile)
cli.add_command(train)


def _sigterm(signum, frame):
    raise KeyboardInterrupt


def main() -> None:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    signal.signal(signal.SIGTERM, _sigterm)
    try:
        cli.main(prog_name="geoseg", standalone_mode=True)
    except KeyboardInterrupt:
        click.echo("geoseg: interrupted", err=True)
        sys.exit(130)


if __name__ == "__main__":
    main()
