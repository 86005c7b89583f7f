"""`spacetime train CONFIG`: train a VAE or a DiT from a YAML config (see docs/training.md).

    spacetime train configs/train/dit_tiny.yaml --steps 200 --out runs/dit
    spacetime train configs/train/dit_tiny.yaml --set optim.lr=3e-4 --set data.batch_size=4
    spacetime train configs/train/dit_tiny.yaml --deepspeed configs/deepspeed/zero2.json --nproc 2
    spacetime train configs/train/dit_tiny.yaml --resume runs/dit          # continue exactly
    spacetime train --export runs/dit/checkpoints/step_00000200 --out exported/   # save_pretrained folder
    spacetime train --export runs/dit/checkpoints/step_00000200 --out dit/ --pipeline model/   # and a model folder
"""

from __future__ import annotations

import argparse
import os

from pipelines.errors import UserError

# flag -> config key: the common overrides have their own flags, everything else is --set key=value
FLAGS = {
    "steps": "steps",
    "out": "out",
    "lr": "optim.lr",
    "batch_size": "data.batch_size",
    "data": "data.root",
    "deepspeed": "deepspeed",
    "precision": "precision",
    "seed": "seed",
}


def add_arguments(parser) -> None:
    parser.add_argument("config", nargs="?", help="a training config, e.g. configs/train/dit_tiny.yaml")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config value (repeatable), e.g. --set optim.warmup_steps=100")
    parser.add_argument("--steps", type=int, help="optimizer steps (config: steps)")
    parser.add_argument("--out", help="run folder (config: out); with --export, the model folder to write")
    parser.add_argument("--lr", type=float, help="learning rate (config: optim.lr)")
    parser.add_argument("--batch-size", type=int, help="clips per process per micro-step (config: data.batch_size)")
    parser.add_argument("--data", help="folder of videos and images (config: data.root)")
    parser.add_argument("--deepspeed", help="a ZeRO config, e.g. configs/deepspeed/zero2.json (config: deepspeed)")
    parser.add_argument("--precision", choices=["auto", "bf16", "fp32"], help="(config: precision)")
    parser.add_argument("--seed", type=int, help="(config: seed)")
    parser.add_argument("--nproc", type=int, default=1, help="local processes to train with (default 1)")
    parser.add_argument("--resume", metavar="PATH", help="a checkpoint folder, or a run folder (its latest checkpoint)")
    parser.add_argument("--export", metavar="CHECKPOINT",
                        help="write this checkpoint's weights (EMA if kept) to --out as a save_pretrained folder")
    parser.add_argument("--no-ema", action="store_true", help="with --export: the raw weights, not the EMA")
    parser.add_argument("--pipeline", metavar="DIR",
                        help="with --export of a DiT checkpoint: also write a complete model folder (its run's "
                             "VAE and text encoders) that spacetime generate --model and spacetime eval --model take")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace an existing --out folder: with --export, the model folder; in training, "
                             "start a new run over the checkpoints and model an earlier run left there")
    parser.add_argument("--local_rank", "--local-rank", type=int, help=argparse.SUPPRESS)  # set by the DeepSpeed launcher


def overrides_from_args(args) -> list[str]:
    """The config overrides the command line asks for: explicit flags first, then --set in order."""
    from pipelines.config import override

    items = []
    for flag, key in FLAGS.items():
        value = getattr(args, flag, None)
        if value is not None:
            items.append(override(key, value))
    return items + list(args.overrides)


def run(args) -> int:
    from pipelines import train

    if args.export:
        if not args.out:
            raise UserError("--export needs --out DIR, the model folder to write")
        path = train.export_checkpoint(args.export, args.out, use_ema=not args.no_ema, overwrite=args.overwrite)
        print(f"wrote {path}")
        if args.pipeline:
            print(f"wrote {train.export_pipeline(args.export, path, args.pipeline, overwrite=args.overwrite)}")
        return 0
    if args.pipeline:
        raise UserError("--pipeline goes with --export CHECKPOINT")
    if not args.config:
        raise UserError("spacetime train needs a CONFIG file, e.g. configs/train/dit_tiny.yaml (or --export CHECKPOINT)")
    return train_main(args.config, overrides_from_args(args), args.resume, args.nproc, args.overwrite)


def train_main(config: str, overrides: list[str], resume: str | None, nproc: int, overwrite: bool = False) -> int:
    """Check everything that can be checked, then train here or in `nproc` local processes.
    `overwrite` clears an earlier run's checkpoints and model from the run folder of a new run."""
    from pipelines import distributed, train
    from pipelines.config import load_config

    cfg = load_config(config, overrides)
    if resume:
        train.find_checkpoint(resume)
    elif not overwrite:
        train.check_new_run(cfg.out)
    if nproc < 1:
        raise UserError(f"--nproc {nproc}: expected 1 or more processes")
    launched = "WORLD_SIZE" in os.environ
    world_size = int(os.environ.get("WORLD_SIZE", nproc))
    if cfg.deepspeed:
        distributed.deepspeed_config(cfg.deepspeed, distributed.World(world_size=world_size), cfg.data.batch_size,
                                     cfg.optim.grad_accum, cfg.optim.grad_clip)
    if nproc > 1 and not launched:
        argv = ["train", config, *[a for o in overrides for a in ("--set", o)]]
        if resume:
            argv += ["--resume", resume]
        if overwrite:
            argv += ["--overwrite"]
        return distributed.launch_local(argv, nproc)
    out = train.train(cfg, resume=resume, overwrite=overwrite)
    if int(os.environ.get("RANK", "0")) == 0:
        print(f"trained {cfg.steps} steps; model: {out / 'model'}")
    return 0
