"""geoseg areas"""

from __future__ import annotations

import json
from pathlib import Path

import click

from .options import overwrite_opt
from .progress import progress_bar


def _parse_nodata(value):
    if value is None:
        return "auto"
    if value.lower() == "none":
        return None
    try:
        return float(value) if "." in value or "e" in value.lower() or value.lower() == "nan" else int(value)
    except ValueError:
        raise click.BadParameter(f"{value!r} is not a number or 'none'", param_hint="--nodata") from None


def _parse_names(text):
    """``0=land,1=water``, a JSON object file, or a .geoseg bundle."""
    if text is None:
        return None
    p = Path(text)
    if p.suffix == ".geoseg":
        from geoseg.bundle import read_metadata
        return read_metadata(p).class_names
    if p.suffix.lower() == ".json":
        if not p.exists():
            raise click.BadParameter(f"file not found: {p}", param_hint="--class-names")
        try:
            d = json.loads(p.read_text())
            return {int(k): str(v) for k, v in d.items()}
        except (ValueError, AttributeError) as e:
            raise click.BadParameter(f"{p}: expected a JSON object of id: name ({e})",
                                     param_hint="--class-names") from None
    out = {}
    for item in text.split(","):
        k, sep, v = item.partition("=")
        if not sep or not k.strip().lstrip("-").isdigit():
            raise click.BadParameter(f"expected ID=NAME pairs like 0=land,1=water, got {item!r}",
                                     param_hint="--class-names")
        out[int(k)] = v.strip()
    return out


@click.command(short_help="Per-class area statistics of a class raster.")
@click.argument("class_raster", type=click.Path())
@click.option("-o", "--output", type=click.Path(dir_okay=False), default=None,
              help="Write the CSV here (default: CSV to standard output).")
@click.option("--nodata", default=None, metavar="VALUE|none",
              help="Override the raster's nodata value; 'none' counts every value "
                   "(e.g. truth rasters that wrongly declare nodata=0).")
@click.option("--class-names", default=None, metavar="SPEC",
              help="Class names: 0=land,1=water, a JSON file, or a .geoseg model "
                   "[default: from the raster's metadata, RAT or .qml].")
@click.option("--pixel-size", type=float, default=None,
              help="Pixel side in metres for rasters without a CRS (overrides the CRS).")
@click.option("--aoi", type=click.Path(), default=None,
              help="Only count inside these polygons (GeoPackage, GeoJSON, Shapefile, ...).")
@click.option("--zone-field", default=None, help="With --aoi: one set of rows per value of this field.")
@overwrite_opt
@click.pass_context
def areas(ctx, class_raster, output, nodata, class_names, pixel_size, aoi, zone_field, overwrite):
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
    """
    from geoseg.areas import areas_csv_text, class_areas, format_table, write_areas_csv
    from geoseg.errors import ConfigError
    from geoseg.io import check_output_path

    if zone_field and not aoi:
        raise ConfigError("--zone-field needs --aoi")
    inputs = [class_raster] + ([aoi] if aoi else [])
    if output:
        check_output_path(output, inputs, overwrite, "output")
    quiet = ctx.obj["quiet"]
    with progress_bar("counting", quiet) as cb:
        table = class_areas(class_raster, nodata=_parse_nodata(nodata), class_names=_parse_names(class_names),
                            pixel_size=pixel_size, aoi=aoi, zone_field=zone_field, progress=cb)
    if output:
        write_areas_csv(table, output)
        if not quiet:
            click.echo(format_table(table), err=True)
            click.echo(f"wrote {output}", err=True)
    else:
        click.echo(areas_csv_text(table), nl=False)
