"""Options shared by several commands, defined once (rasterio's rio/options.py style).

- ``overwrite_opt``: --overwrite                   (predict, areas, demo)
- ``tile_size_opt``, ``overlap_opt``, ``batch_size_opt``, ``blend_opt``, ``bands_opt``   (predict)
"""

import click

overwrite_opt = click.option("--overwrite", is_flag=True, default=False,
                             help="Replace existing output files (never an input).")
tile_size_opt = click.option("--tile-size", type=click.IntRange(min=1), default=None,
                             help="Window size in pixels [default: the model's].")
overlap_opt = click.option("--overlap", type=click.IntRange(min=0), default=None,
                           help="Pixels shared by neighbouring windows, < tile size / 2 [default: the model's].")
batch_size_opt = click.option("--batch-size", type=click.IntRange(min=1), default=8, show_default=True,
                              help="Windows per forward pass.")
blend_opt = click.option("--blend", type=click.Choice(["crop", "cosine"]), default="crop", show_default=True,
                         help="crop: keep each window's centre; cosine: average overlapping windows' "
                              "probabilities with smooth weights.")
bands_opt = click.option("--bands", default=None, metavar="LIST",
                         help="Raster bands feeding the model, in the model's order: 1-based indexes "
                              "or band descriptions, e.g. 2,3,4,8,11,12 [default: by name, else in order].")
