"""LoRA adapters on the DiT's attention and MLP projections, through `peft`.

    model = add_lora(dit, LoRAConfig(rank=8))     # a peft.PeftModel; only the adapters train
    save_adapter(model, "out/lora")                # adapter_model.safetensors + adapter_config.json
    model = load_adapter(dit, "out/lora")          # the same adapter on a fresh base model
    dit = merge(model)                             # the adapters folded into plain weights

The default targets are the VideoDiT projections: `to_qkv` / `to_out` (self-attention),
`to_q` / `to_kv` / `to_out` (cross-attention) and `fc1` / `fc2` (MLP); `lora.targets` in the
training config picks others (module names, matched as peft's `target_modules`).
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from pipelines.config import LoRAConfig
from pipelines.errors import UserError


def add_lora(model: torch.nn.Module, cfg: LoRAConfig):
    """Wrap `model` with rank-`cfg.rank` adapters on the target projections; freeze everything else."""
    from peft import LoraConfig, get_peft_model

    names = {name.rsplit(".", 1)[-1] for name, module in model.named_modules() if isinstance(module, torch.nn.Linear)}
    targets = [t for t in cfg.targets if t in names]
    if not targets:
        raise UserError(f"lora.targets {cfg.targets} name no linear layer of {type(model).__name__}; "
                        f"its linear layers are {sorted(names)}")
    config = LoraConfig(r=cfg.rank, lora_alpha=cfg.alpha if cfg.alpha is not None else cfg.rank,
                        lora_dropout=cfg.dropout, target_modules=targets)
    return get_peft_model(model, config)


def save_adapter(model, folder: str | os.PathLike) -> Path:
    """Write the adapters alone (peft format: adapter_model.safetensors + adapter_config.json)."""
    folder = Path(folder)
    model.save_pretrained(str(folder), safe_serialization=True)
    return folder


def load_adapter(model: torch.nn.Module, folder: str | os.PathLike, trainable: bool = False):
    """Put the adapter saved in `folder` on `model` (a base model of the same architecture)."""
    from peft import PeftModel

    folder = Path(folder)
    if not (folder / "adapter_config.json").is_file():
        raise UserError(f"{folder} is not a LoRA adapter folder (no adapter_config.json)")
    return PeftModel.from_pretrained(model, str(folder), is_trainable=trainable)


def merge(model) -> torch.nn.Module:
    """Fold the adapters into the base weights and return the plain base model."""
    return model.merge_and_unload()
