"""Key mapping from diffusers' `AutoencoderKLWan` (Wan 2.1 layout) to `CausalVideoVAE`.

The two networks compute the same function with tensors of the same shapes; only the names differ
(and norm scales / attention projections are stored flat here). So Wan 2.1 weights, once in a
local folder, load with:

    from diffusers import AutoencoderKLWan
    from vae3d.wan import from_wan
    vae = from_wan(AutoencoderKLWan.from_pretrained("path/to/wan/vae"))

Only the Wan 2.1 layout maps (no residual down/up blocks, no patchify, attention only in the
middle); anything else is refused with a message.
"""

from __future__ import annotations

import re

import torch


from vae3d.model import CausalVideoVAE


def config_from_wan(wan_config) -> dict:
    """CausalVideoVAE arguments for an AutoencoderKLWan config (a dict or a FrozenDict)."""
    c = dict(wan_config)
    unsupported = []
    if c.get("is_residual"):
        unsupported.append("is_residual=True (Wan 2.2 residual blocks)")
    if c.get("patch_size"):
        unsupported.append(f"patch_size={c['patch_size']}")
    if c.get("attn_scales"):
        unsupported.append(f"attn_scales={c['attn_scales']}")
    if c.get("decoder_base_dim") not in (None, c.get("base_dim", 96)):
        unsupported.append(f"decoder_base_dim={c['decoder_base_dim']}")
    if c.get("in_channels", 3) != c.get("out_channels", 3):
        unsupported.append("in_channels != out_channels")
    if unsupported:
        raise ValueError(f"this Wan VAE can't be mapped to CausalVideoVAE: {', '.join(unsupported)}; "
                         f"only the Wan 2.1 layout is supported")
    levels = len(c.get("dim_mult", [1, 2, 4, 4]))
    return dict(
        in_channels=c.get("in_channels", 3),
        base_channels=c.get("base_dim", 96),
        channel_multipliers=tuple(c.get("dim_mult", [1, 2, 4, 4])),
        num_res_blocks=c.get("num_res_blocks", 2),
        spatial_downsample=(True,) * (levels - 1),
        temporal_downsample=tuple(bool(v) for v in c.get("temperal_downsample", [False, True, True])),
        latent_channels=c.get("z_dim", 16),
        mid_attention=True,
        norm_eps=1e-12,  # Wan divides by max(L2 norm, 1e-12): the same up to rounding
        latents_mean=[float(v) for v in c["latents_mean"]] if c.get("latents_mean") else None,
        latents_std=[float(v) for v in c["latents_std"]] if c.get("latents_std") else None,
    )


def _leaf(name: str) -> str:
    name = name.replace("conv_shortcut.", "shortcut.").replace("resample.1.", "conv.")
    return re.sub(r"gamma$", "weight", name)


def convert_wan_state_dict(state_dict: dict, config: dict) -> dict:
    """Rename (and flatten where stored differently) an AutoencoderKLWan state dict for a
    CausalVideoVAE built with `config` (from `config_from_wan`)."""
    nrb = config["num_res_blocks"]
    levels = len(config["channel_multipliers"])
    # encoder: down blocks keep their flat index; the middle follows them
    down = sum(nrb + (1 if i < levels - 1 else 0) for i in range(levels))
    # decoder: the middle (3 blocks) first, then per level nrb + 1 resnets and an upsampler
    up_offsets, at = [], 3
    for j in range(levels):
        up_offsets.append(at)
        at += nrb + 1 + (1 if j < levels - 1 else 0)
    out = {}
    for key, value in state_dict.items():
        new = key
        if m := re.match(r"encoder\.down_blocks\.(\d+)\.(.*)", key):
            new = f"encoder.blocks.{m[1]}.{m[2]}"
        elif m := re.match(r"(encoder|decoder)\.mid_block\.(resnets|attentions)\.(\d+)\.(.*)", key):
            base = down if m[1] == "encoder" else 0
            index = base + (1 if m[2] == "attentions" else 2 * int(m[3]))
            new = f"{m[1]}.blocks.{index}.{m[4]}"
        elif m := re.match(r"decoder\.up_blocks\.(\d+)\.resnets\.(\d+)\.(.*)", key):
            new = f"decoder.blocks.{up_offsets[int(m[1])] + int(m[2])}.{m[3]}"
        elif m := re.match(r"decoder\.up_blocks\.(\d+)\.upsamplers\.0\.(.*)", key):
            new = f"decoder.blocks.{up_offsets[int(m[1])] + nrb + 1}.{m[2]}"
        new = _leaf(new)
        if new.endswith("norm.weight") or re.search(r"norm\w*\.weight$", new):
            value = value.flatten()
        if re.search(r"\.(to_qkv|proj)\.weight$", new):
            value = value.flatten(1)
        out[new] = value
    return out


def from_wan(wan_model) -> CausalVideoVAE:
    """A CausalVideoVAE computing the same function as an AutoencoderKLWan (Wan 2.1 layout)."""
    config = config_from_wan(wan_model.config)
    vae = CausalVideoVAE(**config)
    state = convert_wan_state_dict({k: v.detach() for k, v in wan_model.state_dict().items()}, config)
    missing, unexpected = vae.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise ValueError(f"Wan weights did not map: missing {missing[:4]}, unexpected {unexpected[:4]}")
    dtype = next(wan_model.parameters()).dtype
    return vae if dtype == torch.float32 else vae.to(dtype)


__all__ = ["config_from_wan", "convert_wan_state_dict", "from_wan"]
