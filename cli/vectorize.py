"""geoseg vectorize"""

from __future__ import annotations

import click

from .options import CLASS_NAMES, INT_LIST, NODATA, overwrite_opt
from .progress import emit_result, progress_bar


@click.command(short_help="Class raster -> polygons (GeoPackage) with class id, name and area.")
@click.argument("class_raster", type=click.Path())
@click.argument("output", type=click.Path(dir_okay=False))
@click.option("--classes", type=INT_LIST, default=None, metavar="IDS",
              help="Only these class ids, e.g. 1 or 1,2 [default: every class].")
@click.option("--min-area", type=click.FloatRange(min=0), default=0.0, show_default=True, metavar="M2",
              help="Drop polygons smaller than this many m² (measured before simplifying).")
@click.option("--simplify", type=click.FloatRange(min=0), default=0.0, show_default=True, metavar="TOL",
              help="Simplification tolerance in CRS units (Douglas-Peucker, each polygon's topology kept); "
                   "0 keeps the exact pixel outlines.")
@click.option("--connectivity", type=click.Choice(["4", "8"]), default="4", show_default=True,
              help="4: pixels of a class sharing an edge form one polygon; 8: corners too.")
@click.option("--nodata", type=NODATA, default="auto", metavar="VALUE|none",
              help="Override the raster's nodata value (never vectorized); 'none' vectorizes every value.")
@click.option("--class-names", type=CLASS_NAMES, default=None, metavar="SPEC",
              help="Class names: 0=land,1=water, a JSON file, or a .geoseg model "
                   "[default: from the raster's metadata, RAT or .qml].")
@click.option("--pixel-size", type=float, default=None,
              help="Pixel side in metres for rasters without a CRS (overrides the CRS).")
@overwrite_opt
@click.pass_context
def vectorize(ctx, class_raster, output, classes, min_area, simplify, connectivity, nodata, class_names,
              pixel_size, overwrite):
    """Turn CLASS_RASTER into polygons in OUTPUT (a GeoPackage): one polygon per
    connected region of a class, with fields class_id, class_name and area_m2.

    \b
    Areas: planar m² in a projected CRS, geodesic on the ellipsoid in a
    geographic one (as `geoseg areas`). The raster is read in strips and
    polygons cut by strip edges are joined, so the result equals polygonizing
    the whole raster at once. QGIS opens the layer with the class colours.

    \b
    Examples:
      geoseg vectorize water.tif water.gpkg --classes 1
      geoseg vectorize landcover.tif lc.gpkg --min-area 500 --simplify 5
    """
    from geoseg.vectorize import vectorize_classes

    quiet = ctx.obj["quiet"]
    with progress_bar("vectorizing", quiet) as cb:
        res = vectorize_classes(class_raster, output, classes=classes, min_area=min_area, simplify=simplify,
                                nodata=nodata, class_names=class_names, pixel_size=pixel_size,
                                connectivity=int(connectivity), overwrite=overwrite, progress=cb)
    if not quiet:
        for c in res.classes:
            click.echo(f"  {c.class_id:>3}  {c.class_name[:20]:<20} {c.features:>10,} polygons "
                       f"{c.area_m2 / 1e4:>14,.2f} ha", err=True)
        extra = f"; {res.dropped:,} smaller than {min_area:g} m² dropped" if res.dropped else ""
        click.echo(f"wrote {res.features:,} polygons ({res.area_kind} areas{extra}) to {res.output}", err=True)
    emit_result("vectorize", {"output": res.output}, layer=res.layer, features=res.features,
                area_kind=res.area_kind, dropped=res.dropped,
                classes=[{"class_id": c.class_id, "class_name": c.class_name, "features": c.features,
                          "area_m2": c.area_m2} for c in res.classes])
