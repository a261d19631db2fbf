"""geoseg train"""

import click

from .options import overwrite_opt
from .progress import emit_result


@click.command(short_help="Train a UNet from a config (TOML or the seed's INI).")
@click.argument("config", type=click.Path(dir_okay=False))
@click.option("--epochs", type=int, default=None, help="Override train.epochs.")
@overwrite_opt
@click.pass_context
def train(ctx, config, epochs, overwrite):
    """Train on the chips in [train] image_datapath/mask_datapath, validate on
    [eval], and write a .geoseg bundle (classes, scaling, tile size, validation
    metrics) plus best.keras, history.csv, training_curves.png and config.toml in
    train.model_dir. An interrupted run resumes from train.model_dir/backup when the
    same command is run again. --epochs N with more epochs than a finished run has
    extends it (from its best.keras); --overwrite starts over from epoch 1.

    \b
    Example:
      geoseg tile chips/ --image scene.tif --label truth.tif --chip 128 --label-nodata none
      geoseg train water.toml
    """
    from dataclasses import replace
    from pathlib import Path

    from geoseg.config import load_config
    from geoseg.train import train as run_train

    from geoseg.errors import Cancelled

    cfg = load_config(config)
    if epochs is not None:
        cfg = replace(cfg, train=replace(cfg.train, epochs=epochs))
    quiet = ctx.obj["quiet"]
    try:
        res = run_train(cfg, overwrite=overwrite, verbose=0 if quiet else 2)
    except (Cancelled, KeyboardInterrupt) as e:
        e.interrupt_message = _interrupt_message(cfg, config, epochs, overwrite)
        raise
    if not quiet:
        s = res.val_scores
        click.echo(f"wrote {res.bundle} after {res.seconds:.0f} s", err=True)
        from geoseg.evaluate import format_scores
        click.echo("validation:\n" + format_scores(s), err=True)
    d = Path(cfg.train.model_dir)
    emit_result("train", {"bundle": res.bundle, **{n: d / n for n in ("best.keras", "history.csv", "training_curves.png",
                                                                       "config.toml") if (d / n).exists()}},
                seconds=round(res.seconds, 3), epochs=len(res.history.get("loss", [])),
                history=res.history, validation=res.val_scores.as_dict())


def _interrupt_message(cfg, config: str, epochs, overwrite: bool) -> str | None:
    """What an interrupted run kept and the command that resumes it (None: it kept nothing)."""
    import shlex
    from pathlib import Path

    from geoseg.train import resumable_epochs

    d = Path(cfg.train.model_dir)
    done = resumable_epochs(d)
    if done is None:
        return None
    kept = [n for n in ("backup/", "best.keras", "history.csv", "training_curves.png", "config.toml")
            if (d / n).exists()]
    cmd = ["geoseg", "train", config] + (["--epochs", str(epochs)] if epochs is not None else []) + \
        (["--overwrite"] if overwrite else [])
    return (f"geoseg: interrupted after epoch {done} of {cfg.train.epochs}; no model bundle was written; kept in "
            f"{d}: {', '.join(kept)}. Resume from epoch {done + 1} with the same command: {shlex.join(cmd)}")
