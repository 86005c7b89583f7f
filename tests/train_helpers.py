"""Tiny training set-ups shared by the training tests: a latent cache and a config around it."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import torch
import yaml

from pipelines.data import LatentCacheWriter

REPO = Path(__file__).resolve().parents[1]


def load_tool(name: str):
    """A script of tools/ (not a package) imported as a module, e.g. load_tool("sample_sheet")."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(name, REPO / "tools" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def write_latent_cache(folder: Path, clips: int = 8, channels: int = 4, frames: int = 3, size: int = 4,
                       text_dim: int | None = None) -> Path:
    """Clips of latents that share a pattern (so a model can learn them) plus a little noise."""
    g = torch.Generator().manual_seed(0)
    pattern = torch.randn(channels, 1, size, size, generator=g)
    with LatentCacheWriter(folder) as writer:
        for i in range(clips):
            latents = pattern.expand(channels, frames, size, size) + 0.1 * torch.randn(
                channels, frames, size, size, generator=g)
            states = [torch.randn(5, text_dim, generator=g)] if text_dim else []
            masks = [torch.ones(5, dtype=torch.bool)] if text_dim else []
            writer.add(latents, states, masks, path=f"clip{i}.mp4", caption=f"clip {i}")
    return folder


def tiny_config(tmp_path: Path, cache: Path, out: str = "run", **top) -> Path:
    """A YAML config for the tiny unconditional DiT on `cache`; `top` overrides top-level keys."""
    sections = {
        "model": {"kind": "dit", "preset": "tiny", "text_encoders": []},
        "data": {"latent_cache": str(cache), "frames": 9, "batch_size": 2},
        "optim": {"lr": 3e-3, "warmup_steps": 2},
    }
    return write_config(tmp_path, sections, out, **{"steps": 6, "save_every": 3, **top})


def write_config(tmp_path: Path, sections: dict, out: str = "run", **top) -> Path:
    """TMP/OUT.yaml: `sections` over quick-run defaults (log every step, EMA 0.9, no TensorBoard,
    output in TMP/OUT); `top` overrides keys, and a dict value updates that section."""
    cfg = {"log_every": 1, "ema_decay": 0.9, "tensorboard": False, "out": str(tmp_path / out),
           **{k: dict(v) for k, v in sections.items()}}
    for key, value in top.items():
        if isinstance(value, dict):
            cfg.setdefault(key, {}).update(value)
        else:
            cfg[key] = value
    path = tmp_path / f"{out}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def losses(run: Path) -> dict[int, float]:
    """step -> loss from a run's log.jsonl (the last record of a step wins)."""
    out = {}
    for line in (Path(run) / "log.jsonl").read_text().splitlines():
        record = json.loads(line)
        if "loss" in record:
            out[record["step"]] = record["loss"]
    return out


def spacetime(*args, timeout: int = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pipelines.cli", *map(str, args)], capture_output=True, text=True,
                          cwd=REPO, timeout=timeout)


def cli(*args) -> tuple[int, str]:
    """Run `spacetime ARGS` in this process; return (exit status, what it wrote to stderr)."""
    import contextlib
    import io

    from pipelines import cli as spacetime_cli

    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        code = spacetime_cli.main([str(a) for a in args])
    return code, err.getvalue()
