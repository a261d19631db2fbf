"""geoseg demo"""

import click

from .options import overwrite_opt
from .progress import emit_result, progress_bar, table_records


@click.command(short_help="Segment the bundled Sentinel-2 sample.")
@click.argument("out_dir", type=click.Path(file_okay=False), default="geoseg-demo")
@overwrite_opt
@click.pass_context
def demo(ctx, out_dir, overwrite):
    """Segment the bundled Sentinel-2 L2A scene (Shanghai, 625 x 545 px, 6 bands)
    with the bundled water model into OUT_DIR [default: geoseg-demo]:

    \b
      s2_water_classes.tif          class GeoTIFF (+ .qml style, .aux.xml RAT)
      s2_water_classes_areas.csv    area per class
      s2_water_classes_preview.png  quick look
    """
    from geoseg.areas import format_table
    from geoseg.demo import MODEL, SCENE, run_demo

    quiet = ctx.obj["quiet"]
    with progress_bar("segmenting", quiet) as cb:
        r = run_demo(out_dir, overwrite=overwrite, progress=cb)
    if not quiet:
        click.echo(f"model: {MODEL.name}   scene: {SCENE.name}", err=True)
        for p in (r.output, r.areas_csv, r.preview):
            click.echo(f"wrote {p}", err=True)
        click.echo(format_table(r.areas), err=True)
    emit_result("demo", {"classes": r.output, "qml": r.output.with_suffix(".qml"), "areas_csv": r.areas_csv,
                         "preview": r.preview}, model=str(MODEL), scene=str(SCENE), areas=table_records(r.areas))
