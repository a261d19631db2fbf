"""Options shared by several commands, defined once (rasterio's rio/options.py style).

- ``overwrite_opt``: --overwrite                   (predict, areas, demo)
- ``rgb_map_opt`` + ``parse_rgb_map``: --rgb-map  (tile, evaluate)
- ``tile_size_opt``, ``overlap_opt``, ``batch_size_opt``, ``blend_opt``, ``bands_opt``   (predict)
- ``tta_opt``: --tta                                (predict, evaluate)
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
tta_opt = click.option("--tta", type=click.Choice(["none", "flip", "d4"]), default="none", show_default=True,
                       help="Test-time augmentation: average the probabilities of each window's 4 flips "
                            "(flip, 4x the model time) or of its 8 flips and rotations (d4, 8x).")
rgb_map_opt = click.option("--rgb-map", default=None, metavar="SPEC",
                           help="Colour masks -> classes: '#3C1098=0,#8429F6=1' or a config file with "
                                "[mask] rgb_map.")


def parse_rgb_map(spec: str | None):
    """--rgb-map: '#3C1098=0,#8429F6=1' or a config file with [mask] rgb_map ->
    (colour map, the config's ignore index or None)."""
    from pathlib import Path

    from geoseg.config import _colour, load_config
    from geoseg.errors import ConfigError
    if spec is None:
        return None, None
    p = Path(spec)
    if p.suffix.lower() in (".toml", ".ini", ".config") or p.exists():
        cfg = load_config(p)
        return cfg.mask.rgb_map, cfg.mask.ignore_index
    out = {}
    for item in spec.split(","):
        k, sep, v = item.rpartition("=")
        if not sep or not v.strip().isdigit():
            raise ConfigError(f"--rgb-map: expected COLOUR=CLASS items like #3C1098=0, got {item!r}")
        rgb = _colour(k.strip(), "--rgb-map")
        if rgb in out:
            raise ConfigError(f"--rgb-map: colour {k.strip()} is given twice")
        out[rgb] = int(v)
    return out, None
