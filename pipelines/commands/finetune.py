"""`spacetime finetune --data DIR --out DIR`: adapt a model to a folder of your own footage.

    spacetime finetune --data my_clips/ --out my_model/                 # LoRA rank 8, 200 steps
    spacetime finetune --data my_clips/ --out my_model/ --lora-rank 0   # full fine-tuning
    spacetime generate "..." --model my_model/

The base model's DiT trains on the clips (captions from a manifest or sidecar .txt files, see
docs/data.md) at the base model's native clip size; its VAE and text encoders stay frozen. The
result is a whole model folder (the base with the fine-tuned DiT, LoRA merged in) plus the adapter
alone in OUT/lora/, and the run (config, log, last checkpoint) in OUT/training/.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from pipelines.errors import UserError


def add_arguments(parser) -> None:
    parser.add_argument("--data", required=True, help="folder of videos and images to learn from")
    parser.add_argument("--out", required=True, help="the model folder to write")
    parser.add_argument("--base", help="model folder to start from (default: the installed model)")
    parser.add_argument("--steps", type=int, default=200, help="optimizer steps (default 200)")
    parser.add_argument("--lora-rank", type=int, default=8, help="LoRA rank; 0 trains every DiT weight (default 8)")
    parser.add_argument("--lr", type=float, default=None, help="learning rate (default 1e-3 for LoRA, 1e-4 full)")
    parser.add_argument("--batch-size", type=int, default=1, help="clips per process per step (default 1)")
    parser.add_argument("--nproc", type=int, default=1, help="local processes (default 1)")
    parser.add_argument("--deepspeed", help="a ZeRO config for several processes, e.g. configs/deepspeed/zero2.json")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="any other training config value, e.g. --set optim.warmup_steps=0")
    parser.add_argument("--resume", action="store_true", help="continue the run in OUT/training")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing model folder at --out")


def finetune_overrides(args, base: Path, index: dict) -> list[str]:
    """The training config of a fine-tune, as overrides of the TrainConfig defaults (from the flags and the
    base model's model_index.json; written to OUT/training/finetune.yaml)."""
    from pipelines.config import override
    from video_dit.text import is_installed_name

    frames, height, width = index.get("native_frames", 17), index.get("height", 64), index.get("width", 64)
    encoders = [n if is_installed_name(n) else str(base / n) for n in index.get("text_encoders", [])]
    lr = args.lr if args.lr is not None else (1e-3 if args.lora_rank else 1e-4)
    items = {
        "model.kind": "dit", "model.init": str(base), "model.vae": str(base), "model.text_encoders": encoders,
        "data.root": str(args.data), "data.frames": frames, "data.fps": index.get("fps", 8.0),
        "data.buckets": [[frames, height, width], [1, height, width]], "data.batch_size": args.batch_size,
        "optim.lr": lr, "optim.warmup_steps": min(10, args.steps // 10), "optim.schedule": "constant",
        "lora.rank": args.lora_rank, "steps": args.steps, "ema_decay": 0.0, "log_every": 10,
        "save_every": max(1, args.steps // 2), "keep_last": 1, "sample_every": 0, "tensorboard": False,
        "out": str(Path(args.out) / "training"), "dit.context_noise": index.get("context_noise", 0.05),
    }
    if args.deepspeed:
        items["deepspeed"] = args.deepspeed
    return [override(k, v) for k, v in items.items()] + list(args.overrides)


def run(args) -> int:
    from pipelines.commands.train import train_main
    from pipelines.config import load_config
    from pipelines.pipeline import SpacetimePipeline, default_model_path

    base = Path(args.base) if args.base else default_model_path()
    index_path = base / "model_index.json"
    if not index_path.is_file():
        raise UserError(f"--base {base} is not a model folder (no model_index.json); pass a folder written by "
                        "spacetime train / finetune or SpacetimePipeline.save_pretrained")
    out = Path(args.out)
    if (out / "model_index.json").exists() and not (args.overwrite or args.resume):
        raise UserError(f"{out} already holds a model; pass --overwrite to replace it or choose another --out")
    if args.steps < 1 or args.lora_rank < 0:
        raise UserError("--steps must be 1 or more and --lora-rank 0 or more")
    index = json.loads(index_path.read_text())
    overrides = finetune_overrides(args, base, index)
    cfg = load_config(None, overrides)
    run_dir = Path(cfg.out)
    from pipelines.train import list_checkpoints

    if list_checkpoints(run_dir) and not (args.resume or args.overwrite):
        raise UserError(f"{run_dir} holds an unfinished fine-tune ({list_checkpoints(run_dir)[-1].name}); "
                        f"continue it with --resume, or pass --overwrite to start over")
    print_plan(cfg, base, args.nproc)

    run_dir.mkdir(parents=True, exist_ok=True)
    config_path = run_dir / "finetune.yaml"
    import yaml

    config_path.write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False))
    status = train_main(str(config_path), [], str(run_dir) if args.resume else None, args.nproc, args.overwrite)
    if status != 0:
        return status
    # the model folder: the base with the fine-tuned (merged) DiT
    from video_dit import VideoDiT

    pipe = SpacetimePipeline.from_pretrained(base)
    pipe.register_modules(transformer=VideoDiT.from_pretrained(run_dir / "model"))
    pipe.save_pretrained(out)
    if (run_dir / "lora").is_dir():
        import shutil

        shutil.rmtree(out / "lora", ignore_errors=True)
        shutil.copytree(run_dir / "lora", out / "lora")
    print(f"fine-tuned model: {out}  (try: spacetime generate \"...\" --model {out})")
    return 0


def print_plan(cfg, base: Path, nproc: int) -> None:
    """Clips found, buckets, steps, and a time estimate from one timed training step of the base DiT."""
    import torch

    from pipelines import distributed, train

    world = distributed.World()
    torch.manual_seed(cfg.seed)
    task = train.DiTTask(cfg, world)
    dataset, sampler, loader = train.make_data(cfg, world, task.spatial_multiple, task.temporal_factor)
    counts = dataset.bucket_counts()
    module = task.model
    if cfg.lora.rank:
        from pipelines import lora

        module = lora.add_lora(module, cfg.lora)
    trainable = sum(p.numel() for p in module.parameters() if p.requires_grad)
    batch = next(train.forever(loader))
    generator = torch.Generator().manual_seed(0)
    seconds = []
    for _ in range(2):  # the first pass warms up; time the second
        tic = time.perf_counter()
        task.loss(module, batch, generator).backward()
        seconds.append(time.perf_counter() - tic)
    module.zero_grad(set_to_none=True)
    per_step = seconds[-1] * cfg.optim.grad_accum
    buckets = ", ".join(f"{b.frames}x{b.height}x{b.width}: {n}" for b, n in sorted(counts.items()) if n)
    mode = f"LoRA rank {cfg.lora.rank}" if cfg.lora.rank else "full fine-tuning"
    print(f"fine-tuning {base} ({mode}, {trainable / 1e6:.2f}M trainable parameters)")
    print(f"  clips: {len(dataset)} in {cfg.data.root}" + (f" ({len(dataset.skipped)} skipped)" if dataset.skipped else ""))
    print(f"  buckets (frames x height x width: clips): {buckets}")
    print(f"  steps: {cfg.steps} x batch {cfg.data.batch_size} x {nproc} process(es)")
    print(f"  estimated time: {_duration(per_step * cfg.steps)} ({per_step:.2f} s per step here)")


def _duration(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"
