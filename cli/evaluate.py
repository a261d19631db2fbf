"""geoseg evaluate"""

from __future__ import annotations

import json
from pathlib import Path

import click

from .options import (INT_LIST, NODATA, bands_opt, input_offset_opt, input_scale_opt, overwrite_opt, rgb_map_opt,
                      mask_scl_opt, resample_opt, src_nodata_opt, tta_opt, runtime_opt, precision_opt)
from .progress import emit_result, machine, progress_bar


@click.command(short_help="Accuracy of a class raster (or of a model) against a truth raster.")
@click.argument("prediction", type=click.Path())
@click.argument("truth", type=click.Path())
@click.option("--model", "model_path", type=click.Path(dir_okay=False), default=None,
              help="Segment PREDICTION (then an image) with this model first, through the same engine as predict.")
@click.option("-o", "--output", "prefix", type=click.Path(), default=None,
              help="Write PREFIX.csv, PREFIX.json and PREFIX_confusion.png.")
@click.option("--truth-nodata", type=NODATA, default="auto", metavar="VALUE|none",
              help="Override the truth's nodata; 'none' counts every value (S2 truths declare 0).")
@click.option("--ignore", type=INT_LIST, default=(), metavar="LIST",
              help="Truth values not to count, e.g. 255 or 5,255.")
@click.option("--background", type=int, default=None,
              help="Class left out of the means [default: the model's, else none].")
@rgb_map_opt
@bands_opt
@tta_opt
@runtime_opt
@precision_opt
@input_scale_opt
@input_offset_opt
@src_nodata_opt
@resample_opt
@mask_scl_opt
@overwrite_opt
@click.pass_context
def evaluate(ctx, prediction, truth, model_path, prefix, truth_nodata, ignore, background, rgb_map, bands,
             tta, runtime, precision, input_scale, input_offset, src_nodata, resample, mask_scl, overwrite):
    """Confusion matrix, per-class IoU, Dice/F1, precision and recall, overall
    accuracy, and mean IoU / mean Dice excluding the background class.

    PREDICTION is a class raster on the truth's grid, or with --model an image to
    segment first. Rasters are read block by block: any size works. With --model
    and two folders (images and masks: test chips from geoseg tile, or whole images
    with colour masks and --rgb-map), every pair is scored; images larger than the
    model's tile are segmented windowed, as predict does.

    \b
    Examples:
      geoseg evaluate water.tif truth.tif --truth-nodata none --background 0
      geoseg evaluate --model water.geoseg scene.tif truth.tif --truth-nodata none -o eval/water
      geoseg evaluate --model water.geoseg chips/test/images chips/test/masks -o eval/test
      geoseg evaluate --model dubai.geoseg "Tile 7/images" "Tile 7/masks" --rgb-map dubai.toml
    """
    from geoseg.evaluate import (evaluate_chips, evaluate_model_on_raster, evaluate_rasters, format_scores,
                                 plot_confusion, write_scores)
    from geoseg.output import check_output_path
    from geoseg.sources import open_raster, read_class_names
    from geoseg.unit import PredictOptions

    if tta != "none" and not model_path:
        raise click.UsageError("--tta applies to a model: give --model")
    if (runtime, precision) != ("auto", "auto") and not model_path:
        raise click.UsageError("--runtime and --precision apply to a model: give --model")
    if prefix:
        for suffix in (".csv", ".json", "_confusion.png"):
            check_output_path(str(prefix) + suffix, [prediction, truth], overwrite, "output")
    quiet = ctx.obj["quiet"]
    model_background = "model" if background is None else background   # the core's "the model's"
    opts = PredictOptions(bands=bands, tta=tta, input_scale=input_scale, input_offset=input_offset,
                          src_nodata=src_nodata, resample=resample, mask_scl=mask_scl, runtime=runtime,
                          precision=precision)
    from geoseg.sentinel2 import is_s2_product
    if model_path and Path(prediction).is_dir() and not is_s2_product(prediction):
        colours, cfg_ignore = rgb_map or (None, None)
        with progress_bar("evaluating", quiet) as cb:
            scores = evaluate_chips(model_path, prediction, truth, rgb_map=colours,
                                    ignore_index=255 if cfg_ignore is None else cfg_ignore, ignore=ignore,
                                    options=opts, background=model_background, progress=cb)
    elif model_path:
        with progress_bar("segmenting", quiet) as cb:
            scores = evaluate_model_on_raster(model_path, prediction, truth, opts, truth_nodata, ignore,
                                              background=model_background, progress=cb)
    else:
        with open_raster(prediction) as p:
            names = read_class_names(p)
        if not names:
            raise click.ClickException(f"{Path(prediction).name} does not name its classes; "
                                       "pass --model to take them from a bundle")
        ids = sorted(names)
        scores = evaluate_rasters(prediction, truth, ids, [names[i] for i in ids], background, truth_nodata,
                                  ignore)
    if not quiet:
        click.echo(format_scores(scores), err=True)
    if prefix:
        files = write_scores(scores, prefix, overwrite)
        files.append(plot_confusion(scores, str(prefix) + "_confusion.png", Path(prediction).name, overwrite))
        if not quiet:
            for f in files:
                click.echo(f"wrote {f}", err=True)
    elif not machine():
        click.echo(json.dumps(scores.as_dict(), indent=2))
    emit_result("evaluate", {Path(f).name: f for f in files} if prefix else {}, scores=scores.as_dict())
