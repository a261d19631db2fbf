"""geoseg tile"""

from __future__ import annotations

import click

from .options import FRACTIONS, NODATA, overwrite_opt, rgb_map_opt
from .progress import emit_result, progress_bar


@click.command(short_help="Cut training chips from rasters or image/mask folders.")
@click.argument("out_dir", type=click.Path(file_okay=False))
@click.option("--image", "images", multiple=True, type=click.Path(), help="Image raster (repeat with --label).")
@click.option("--label", "labels", multiple=True, type=click.Path(), help="Label raster of class indexes, same grid.")
@click.option("--images", "image_dirs", multiple=True, type=click.Path(),
              help="Folder of images (JPEG/PNG/TIFF); repeat, paired with --masks.")
@click.option("--masks", "mask_dirs", multiple=True, type=click.Path(), help="Folder of colour masks (same names).")
@rgb_map_opt
@click.option("--chip", type=int, default=256, show_default=True, help="Chip size (px).")
@click.option("--stride", type=int, default=None, help="Step between chips (px) [default: the chip size].")
@click.option("--split", "fractions", type=FRACTIONS, default="0.7,0.15,0.15", show_default=True,
              metavar="TRAIN,VALID,TEST",
              help="Train,valid,test fractions of the sources.")
@click.option("--valid", "valid_sources", multiple=True, metavar="GLOB",
              help="Sources forced into valid (e.g. 'Tile 7/*'); then all others train.")
@click.option("--test", "test_sources", multiple=True, metavar="GLOB", help="Sources forced into test.")
@click.option("--regions", type=int, default=4, show_default=True,
              help="Raster mode: regions per axis, the unit of the split.")
@click.option("--label-nodata", type=NODATA, default="auto", metavar="VALUE|none",
              help="Override the label raster's nodata; 'none' counts every value.")
@click.option("--ignore-index", type=int, default=None, help="Mask value for unlabelled pixels [default: the --rgb-map config file's, else 255].")
@click.option("--min-valid", type=float, default=0.0, show_default=True,
              help="Skip chips with a smaller labelled fraction.")
@click.option("--seed", type=int, default=42, show_default=True, help="Seed of the split order.")
@overwrite_opt
@click.pass_context
def tile(ctx, out_dir, images, labels, image_dirs, mask_dirs, rgb_map, chip, stride, fractions, valid_sources,
         test_sources, regions, label_nodata, ignore_index, min_valid, seed, overwrite):
    """Cut image/mask chips into OUT_DIR/{train,valid,test}/{images,masks}, with
    manifest.csv and stats.json. Splits are by source image (or raster region),
    never by chip, and stratified so that every class is in train, valid and test
    where enough sources hold it; a class a split still lacks is warned about and
    noted in stats.json. --overwrite replaces an earlier run in OUT_DIR as a whole
    (a folder holding other files is refused); a failed run leaves it as it was.

    \b
    Examples:
      geoseg tile chips/ --image landsat.tif --label landcover.tif --chip 128 --label-nodata -99999
      geoseg tile chips/ --images "Tile 1/images" --masks "Tile 1/masks" ... \\
          --rgb-map dubai.toml --valid "Tile 7/*"
    """
    from geoseg.dataset import TileOptions, tile_folders, tile_rasters

    if bool(images or labels) == bool(image_dirs or mask_dirs):
        raise click.UsageError("give either --image/--label rasters or --images/--masks folders")
    if len(images) != len(labels):
        raise click.UsageError(f"{len(images)} --image but {len(labels)} --label: give them in pairs")
    colours, cfg_ignore = rgb_map or (None, None)
    if image_dirs and not colours:
        raise click.UsageError("colour masks need --rgb-map")
    if ignore_index is None:
        ignore_index = 255 if cfg_ignore is None else cfg_ignore
    opts = TileOptions(chip=chip, stride=stride, fractions=fractions, valid_sources=valid_sources,
                       test_sources=test_sources, seed=seed, ignore_index=ignore_index, min_valid=min_valid,
                       regions=regions)
    quiet = ctx.obj["quiet"]
    with progress_bar("tiling", quiet) as cb:
        if images:
            rep = tile_rasters(list(zip(images, labels)), out_dir, opts, label_nodata=label_nodata,
                               overwrite=overwrite, progress=cb)
        else:
            rep = tile_folders(image_dirs, mask_dirs, out_dir, colours, opts, overwrite=overwrite, progress=cb)
    if not quiet:
        for s in ("train", "valid", "test"):
            px = rep.class_pixels[s]
            click.echo(f"{s:5s}: {rep.chips[s]:5d} chips from {len(rep.sources[s])} sources; class pixels "
                       + ", ".join(f"{k}:{v:,}" for k, v in sorted(px.items())), err=True)
        if rep.unmapped_colours:
            top = sorted(rep.unmapped_colours.items(), key=lambda kv: -kv[1])[:5]
            click.echo("unmapped colours (-> ignore): " + ", ".join(f"{k} {v:,} px" for k, v in top), err=True)
        click.echo(f"skipped {rep.skipped_chips} chips without labels; wrote {out_dir}/manifest.csv, stats.json",
                   err=True)
    emit_result("tile", {"out_dir": out_dir, "manifest": f"{out_dir}/manifest.csv", "stats": f"{out_dir}/stats.json"},
                **rep.as_dict())
