"""geoseg info"""

import json

import click

from .progress import emit_result, machine


@click.command(short_help="Show a model bundle's metadata.")
@click.argument("model", type=click.Path(dir_okay=False))
@click.option("--json", "as_json", is_flag=True, help="Print the raw metadata JSON.")
def info(model, as_json):
    """Print what MODEL (a .geoseg bundle) expects and produces: classes and colours,
    input bands and their scaling, tile size, overlap, pixel size, provenance and
    metrics. Reads the metadata only (no TensorFlow).

    \b
    Example:
      geoseg info water.geoseg
    """
    from geoseg.bundle import format_metadata, read_metadata

    meta = read_metadata(model)
    if machine():
        emit_result("info", {}, metadata=json.loads(meta.to_json()))
    else:
        click.echo(meta.to_json() if as_json else format_metadata(meta, model))
