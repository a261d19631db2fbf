"""geoseg train"""

import click

from .options import overwrite_opt


@click.command(short_help="Train a UNet from a config (TOML or the seed's INI).")
@click.argument("config", type=click.Path(dir_okay=False))
@click.option("--epochs", type=int, default=None, help="Override train.epochs.")
@overwrite_opt
@click.pass_context
def train(ctx, config, epochs, overwrite):
    """Train on the chips in [train] image_datapath/mask_datapath, validate on
    [eval], and write a .geoseg bundle (classes, scaling, tile size, validation
    metrics) plus best.keras, history.csv, training_curves.png and config.toml in
    train.model_dir. An interrupted run resumes from train.model_dir/backup.

    \b
    Example:
      geoseg tile chips/ --image scene.tif --label truth.tif --chip 128 --label-nodata none
      geoseg train water.toml
    """
    from dataclasses import replace

    from geoseg.config import load_config
    from geoseg.train import train as run_train

    cfg = load_config(config)
    if epochs is not None:
        cfg = replace(cfg, train=replace(cfg.train, epochs=epochs))
    quiet = ctx.obj["quiet"]
    res = run_train(cfg, overwrite=overwrite, verbose=0 if quiet else 2)
    if not quiet:
        s = res.val_scores
        click.echo(f"wrote {res.bundle} after {res.seconds:.0f} s", err=True)
        from geoseg.evaluate import format_scores
        click.echo("validation:\n" + format_scores(s), err=True)
