"""geoseg areas"""

from __future__ import annotations

import json

import click

from .options import CLASS_NAMES, NODATA, overwrite_opt
from .progress import emit_result, machine, progress_bar, table_records


@click.command(short_help="Per-class area statistics of a class raster.")
@click.argument("class_raster", type=click.Path())
@click.option("-o", "--output", type=click.Path(dir_okay=False), default=None,
              help="Write the CSV here (default: CSV to standard output).")
@click.option("--nodata", type=NODATA, default="auto", metavar="VALUE|none",
              help="Override the raster's nodata value; 'none' counts every value "
                   "(e.g. truth rasters that wrongly declare nodata=0).")
@click.option("--class-names", type=CLASS_NAMES, default=None, metavar="SPEC",
              help="Class names: 0=land,1=water, a JSON file, or a .geoseg model "
                   "[default: from the raster's metadata, RAT or .qml].")
@click.option("--pixel-size", type=float, default=None,
              help="Pixel side in metres for rasters without a CRS (overrides the CRS).")
@click.option("--aoi", type=click.Path(), default=None,
              help="Only count inside these polygons (GeoPackage, GeoJSON, Shapefile, ...).")
@click.option("--zone-field", default=None, help="With --aoi: one set of rows per value of this field.")
@click.option("--format", "fmt", type=click.Choice(["csv", "json"]), default="csv", show_default=True,
              help="csv: the table; json: {kind, zone_field, notes, rows} with the CSV's columns as keys "
                   "(for scripts).")
@overwrite_opt
@click.pass_context
def areas(ctx, class_raster, output, nodata, class_names, pixel_size, aoi, zone_field, fmt, overwrite):
    """Count pixels and measure the area of each class in CLASS_RASTER.

    Projected CRS: pixel area from the transform, in m² through the CRS's unit.
    Geographic CRS: geodesic area of each pixel row on the ellipsoid. No CRS:
    pixel counts (with a warning) unless --pixel-size is given.

    \b
    CSV columns: [zone,] class_id, class_name, pixels, area_m2, area_ha,
    area_km2, percent (of the valid area).

    \b
    Examples:
      geoseg areas water.tif
      geoseg areas truth.tif --nodata none --class-names 0=land,1=water -o areas.csv
      geoseg areas landcover.tif --aoi districts.gpkg --zone-field name -o by_district.csv
      geoseg areas water.tif --format json
    """
    from geoseg.areas import areas_csv_text, class_areas, format_table
    from geoseg.files import write_atomic
    from geoseg.output import check_output_path

    if zone_field and not aoi:
        raise click.UsageError("--zone-field needs --aoi")
    inputs = [class_raster] + ([aoi] if aoi else [])
    if output:
        check_output_path(output, inputs, overwrite, "output")
    quiet = ctx.obj["quiet"]
    with progress_bar("counting", quiet) as cb:
        table = class_areas(class_raster, nodata=nodata, class_names=class_names,
                            pixel_size=pixel_size, aoi=aoi, zone_field=zone_field, progress=cb)
    if fmt == "json":
        text = json.dumps({"kind": table.kind, "zone_field": table.zone_field, "notes": list(table.notes),
                           "rows": table_records(table)}, indent=2) + "\n"
    else:
        text = areas_csv_text(table)
    if output:
        write_atomic(output, text, overwrite=overwrite)
        if not quiet:
            click.echo(format_table(table), err=True)
            click.echo(f"wrote {output}", err=True)
    elif not machine():  # in --progress jsonl mode the table travels in the result event
        click.echo(text, nl=False)
    emit_result("areas", {"areas_csv": output}, kind=table.kind, zone_field=table.zone_field,
                areas=table_records(table))
