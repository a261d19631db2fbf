"""geoseg predict"""

from __future__ import annotations

from pathlib import Path

import click

from .options import (CREATION_OPTION, bands_opt, batch_size_opt, blend_opt, input_offset_opt, input_scale_opt,
                      overlap_opt, overwrite_opt,
                      mask_scl_opt, resample_opt, src_nodata_opt, tile_size_opt, tta_opt, runtime_opt, precision_opt)
from .progress import emit_result, progress_bar, table_records


@click.command(short_help="Segment rasters with a model bundle.")
@click.argument("model", type=click.Path(dir_okay=False))
@click.argument("inputs", nargs=-1, required=True, type=click.Path())
@click.option("-o", "--output", type=click.Path(), default=None,
              help="The output (.tif file, or a directory for several inputs); then every argument after "
                   "MODEL is an input.")
@tile_size_opt
@overlap_opt
@batch_size_opt
@blend_opt
@tta_opt
@runtime_opt
@precision_opt
@bands_opt
@input_scale_opt
@input_offset_opt
@src_nodata_opt
@resample_opt
@mask_scl_opt
@click.option("--areas", is_flag=True, help="Also write OUTPUT_areas.csv: pixels, m², ha, km² and % per class.")
@click.option("--confidence", is_flag=True, help="Also write OUTPUT_confidence.tif: winning probability in %.")
@click.option("--areas-csv", type=click.Path(dir_okay=False), default=None,
              help="One input: write the area CSV here instead of OUTPUT_areas.csv (implies --areas).")
@click.option("--confidence-tif", type=click.Path(dir_okay=False), default=None,
              help="One input: write the confidence raster here instead of OUTPUT_confidence.tif "
                   "(implies --confidence).")
@click.option("--preview", is_flag=True, help="Also write OUTPUT_preview.png: class colours over the image.")
@click.option("--cog", is_flag=True, help="Write Cloud-Optimised GeoTIFFs.")
@click.option("--co", "creation_options", type=CREATION_OPTION, multiple=True, metavar="KEY=VALUE",
              help="GDAL creation option for the output GeoTIFF (COG with --cog), repeatable, e.g. "
                   "--co COMPRESS=ZSTD --co BIGTIFF=YES.")
@click.option("--overviews", is_flag=True, help="Build internal overviews (nearest) in the output GeoTIFF "
                                                "(a COG always has them).")
@click.option("--stack", is_flag=True,
              help="The INPUTs are the band files of one Sentinel-2 scene (e.g. T51RUQ_..._B02_10m.jp2 ...; "
                   "bands found by name, 20 m bands on the 10 m grid, an SCL file masks).")
@click.option("--workers", type=click.IntRange(min=1), default=None, metavar="N",
              help="Run on N local worker processes (a Dask LocalCluster on loopback; needs geoseg[xarray]). "
                   "The output is the same bytes as without.")
@click.option("--scheduler", default=None, metavar="ADDRESS",
              help="Run on an existing Dask cluster (tcp://host:8786, or a scheduler JSON file); the inputs "
                   "must be on storage its workers see.")
@click.option("--dashboard", is_flag=True, help="With --workers: serve Dask's dashboard on port 8787.")
@overwrite_opt
@click.pass_context
def predict(ctx, model, inputs, output, tile_size, overlap, batch_size, blend, tta, runtime, precision, bands, input_scale, input_offset, src_nodata,
            resample, mask_scl,
            areas, confidence, areas_csv, confidence_tif, preview,
            cog, creation_options, overviews, stack, workers, scheduler, dashboard, overwrite):
    """Segment INPUT rasters with MODEL (a .geoseg bundle) into class GeoTIFFs.

    The last argument (or -o) is the OUTPUT: a .tif file for one input, or an existing
    directory (each input written as NAME_classes.tif). Outputs are uint8, tiled,
    compressed, nodata 255, with the input's CRS and transform, the model's class
    colours and names (a .qml style and a raster attribute table).

    \b
    Examples:
      geoseg predict water.geoseg S2_scene.tif water.tif --areas --preview
      geoseg predict water.geoseg S2_scene.tif water.tif --blend cosine --overlap 64
      geoseg predict dubai.geoseg photo.jpg classes.tif --tta d4
      geoseg predict water.geoseg S2_scene.tif water.tif --precision bfloat16
      geoseg predict water.geoseg stack.tif water.tif --bands 2,3,4,8,11,12
      geoseg predict water.geoseg scenes/*.tif results/ --areas --cog
      geoseg predict water.geoseg S2_scene.tif -o water.tif --co COMPRESS=ZSTD --overviews
      geoseg predict water.geoseg scenes/*.tif results/ --workers 4
      geoseg predict water.geoseg /shared/scene.tif /shared/water.tif --scheduler tcp://10.0.0.5:8786
    """
    from geoseg.distributed import cluster_client
    from geoseg.errors import BatchError
    from geoseg.predict import PredictOptions, predict_many, predict_raster, sidecar_paths

    if output is not None:
        srcs, out = list(inputs), output
    elif len(inputs) < 2:
        raise click.UsageError("give MODEL, at least one INPUT and an OUTPUT")
    else:
        *srcs, out = inputs
    co = dict(creation_options)
    quiet = ctx.obj["quiet"]
    areas = areas or areas_csv is not None
    confidence = confidence or confidence_tif is not None
    opts = PredictOptions(tile_size=tile_size, overlap=overlap, batch_size=batch_size, blend=blend,
                          bands=bands, confidence=confidence, tta=tta, input_scale=input_scale,
                          input_offset=input_offset, src_nodata=src_nodata, resample=resample,
                          mask_scl=mask_scl, runtime=runtime, precision=precision)
    out_p = Path(out)
    if stack:
        if out_p.is_dir():
            raise click.UsageError("with --stack the output is one .tif file (the inputs are one scene)")
        srcs = [list(srcs)]
    if len(srcs) > 1 and not out_p.is_dir():
        raise click.ClickException(f"with several inputs the output must be an existing directory: {out}")
    if (areas_csv or confidence_tif) and out_p.is_dir():
        raise click.UsageError("--areas-csv and --confidence-tif name the side outputs of one output file, "
                               "not of a directory")
    if dashboard and workers is None:
        raise click.UsageError("--dashboard goes with --workers (a cluster of your own has its own dashboard)")
    failed = None
    with cluster_client(workers, scheduler, dashboard=dashboard) as client, \
            progress_bar("segmenting", quiet) as cb:
        if out_p.is_dir():
            try:
                results = predict_many(srcs, out_p, model, opts, areas=areas, confidence=confidence,
                                       preview=preview, overwrite=overwrite, cog=cog,
                                       creation_options=co, overviews=overviews,
                                       progress_for=lambda p: cb, client=client)
            except BatchError as e:  # the others were written: report them, then the failures
                results, failed = e.results, e
        else:
            sides = sidecar_paths(out_p, areas, confidence, preview)
            sides["areas_path"] = areas_csv or sides["areas_path"]
            sides["confidence_path"] = confidence_tif or sides["confidence_path"]
            results = [predict_raster(srcs[0], out_p, model, opts, overwrite=overwrite, cog=cog, progress=cb,
                                      creation_options=co, overviews=overviews, client=client, **sides)]
    _report(results, areas, quiet)
    emit_result("predict", {"output": out_p},
                results=[{"outputs": {"classes": str(r.output), "qml": str(r.output.with_suffix(".qml")),
                                      "confidence": r.confidence and str(r.confidence),
                                      "areas_csv": r.areas_csv and str(r.areas_csv),
                                      "preview": r.preview and str(r.preview)},
                          "width": r.width, "height": r.height, "seconds": round(r.seconds, 3),
                          "windows": r.n_windows, "windows_run": r.n_windows_run,
                          "areas": table_records(r.areas)} for r in results],
                failed=[{"input": str(i), "message": str(e)} for i, e in (failed.failures if failed else [])])
    if failed is not None:
        raise failed  # one line: which inputs failed and why


def _report(results, areas: bool, quiet: bool) -> None:
    from geoseg.areas import format_table
    if not quiet:
        for r in results:
            mpx = r.width * r.height / 1e6
            click.echo(f"{r.output}: {r.width} x {r.height} px, {r.n_windows_run}/{r.n_windows} windows run, "
                       f"{r.seconds:.1f} s ({mpx / max(r.seconds, 1e-9):.2f} Mpx/s)", err=True)
            for p in (r.areas_csv, r.confidence, r.preview):
                if p:
                    click.echo(f"  + {p}", err=True)
            if areas:
                click.echo(format_table(r.areas), err=True)
