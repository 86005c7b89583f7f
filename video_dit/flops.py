"""Count the arithmetic of one VideoDiT forward pass, and describe a model folder.

    count_flops(model_or_config, frames, height, width, text_tokens=0) -> dict

Sizes are latent sizes (after the VAE). The count is exact for every matrix product of the
network (linear layers, the two products inside attention, the output refiner's convolutions) at
batch size 1; elementwise work
(norms, RoPE, GELU, softmax) is left out, as is usual.

Units: `macs` are multiply-accumulates, `flops` = 2 * macs. The DiT paper's "Gflops" (118.6 for
DiT-XL/2 at 256x256) are multiply-adds, i.e. `gmacs` here; throughput in GFLOP/s is reported from
`flops`.
"""

from __future__ import annotations

import json
import math
from pathlib import Path


def _config_dict(model_or_config) -> dict:
    if isinstance(model_or_config, dict):
        config = dict(model_or_config)
    else:
        config = dict(model_or_config.config)
    from video_dit.model import VideoDiT

    defaults = {k: v.default for k, v in _signature(VideoDiT.__init__).items() if v.default is not v.empty}
    return {**defaults, **{k: v for k, v in config.items() if not k.startswith("_")}}


def _check_config(config: dict, path) -> None:
    """ValueError unless the config builds a VideoDiT (built on the meta device: no memory used)."""
    import torch

    from video_dit.model import VideoDiT

    try:
        with torch.device("meta"):
            VideoDiT.from_config(config)
    except Exception as err:
        message = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ValueError(f"{path} does not describe a VideoDiT that can be built ({message})") from None


def _signature(fn):
    import inspect

    params = dict(inspect.signature(fn).parameters)
    params.pop("self", None)
    return params


def count_flops(model_or_config, frames: int, height: int, width: int, text_tokens: int = 0) -> dict:
    """Multiply-accumulates of one forward pass for a (1, C, frames, height, width) latent.

    text_tokens: total text tokens over all encoders (split evenly across them for the
    projections). Returns dict(macs, flops, gmacs, gflops, tokens, text_tokens, parts) where
    `parts` breaks macs down by where they are spent.
    """
    c = _config_dict(model_or_config)
    pt, ph, pw = c["patch_size"]
    if frames % pt or height % ph or width % pw:
        raise ValueError(
            f"latent size (T={frames}, H={height}, W={width}) does not divide by the patch size {tuple(c['patch_size'])}"
        )
    t, s = frames // pt, (height // ph) * (width // pw)
    n = t * s
    d, depth = c["hidden_size"], c["depth"]
    m = int(d * c["mlp_ratio"])
    cin = c["in_channels"]
    cout = c["out_channels"] or cin
    pv = pt * ph * pw
    text_dims = tuple(c["text_dims"])
    has_text = len(text_dims) > 0
    lt = text_tokens if has_text else 0
    factorized = c["attention"] == "factorized"
    joint = c["text_conditioning"] == "joint" and has_text
    k = 9 if factorized else 6

    parts = dict.fromkeys(
        ["embed", "time", "text", "attention_projections", "cross_attention", "attention_scores", "mlp", "final",
         "refiner"], 0
    )
    parts["embed"] = n * pv * cin * d
    if c.get("given_reference"):  # the reference latent and its flag through their own embedding
        parts["embed"] += n * pv * (cin + 1) * d
    parts["time"] = t * (c["frequency_size"] * d + d * d + d * k * d) + (d * 6 * d if joint else 0)
    if has_text and c["pooled_text"]:  # one pooled vector per sample through a two-layer MLP
        parts["time"] += sum(text_dims) * d + d * d
    if has_text and lt:
        per = [lt // len(text_dims) + (i < lt % len(text_dims)) for i in range(len(text_dims))]
        parts["text"] = sum(li * (di * d + d * d) for li, di in zip(per, text_dims))
    for i in range(depth):
        if joint:
            last = i == depth - 1
            parts["attention_projections"] += n * 4 * d * d + lt * (3 if last else 4) * d * d
            parts["attention_scores"] += 2 * (n + lt) ** 2 * d
            parts["mlp"] += (n + (0 if last else lt)) * 2 * d * m
            continue
        parts["attention_projections"] += n * 4 * d * d
        if factorized:  # spatial attention in each frame, then temporal attention at each position
            parts["attention_projections"] += n * 4 * d * d
            parts["attention_scores"] += 2 * n * s * d + 2 * n * t * d
        else:
            parts["attention_scores"] += 2 * n * n * d
        if has_text:
            parts["cross_attention"] += n * 2 * d * d + lt * 2 * d * d
            parts["attention_scores"] += 2 * n * lt * d
        parts["mlp"] += n * 2 * d * m
    parts["final"] = n * d * pv * cout
    r = c.get("refiner_width", 0)
    if r:  # OutputRefiner: token features, the time projection, then 3x3 convolutions at every latent pixel
        from video_dit.model import REFINER_FEATURES

        pixels = frames * height * width
        parts["refiner"] = (n * d * pv * REFINER_FEATURES + t * d * r
                            + pixels * 9 * r * (2 * cout + REFINER_FEATURES + 2 * r * c["refiner_blocks"] + cout))
    macs = sum(parts.values())
    return dict(
        macs=macs, flops=2 * macs, gmacs=macs / 1e9, gflops=2 * macs / 1e9, tokens=n, text_tokens=lt, parts=parts
    )


def _vae_factors(root: Path) -> tuple[int, int]:
    """(temporal, spatial) factors from a model folder's vae/config.json, else the defaults (4, 8)."""
    config = root / "vae" / "config.json"
    if not config.is_file():
        return 4, 8
    data = json.loads(config.read_text())
    temporal = 2 ** sum(bool(f) for f in data.get("temporal_downsample", [True, True]))
    spatial = 2 ** sum(bool(f) for f in data.get("spatial_downsample", [True, True, True]))
    return temporal, spatial


def describe(
    folder,
    frames: int | None = None,
    height: int | None = None,
    width: int | None = None,
    text_tokens: int | None = None,
    pixels: bool = False,
) -> dict:
    """Parameters, FLOPs per sampling step and config of the VideoDiT in `folder`.

    `folder` is a VideoDiT folder (config.json) or a model folder with a transformer/ subfolder.
    Sizes are latent sizes, or pixel sizes with `pixels=True` (converted with the folder's VAE
    factors, default 4 in time and 8 in space). Defaults: 5 latent frames of 32x32 (a 17-frame
    256x256 clip). text_tokens defaults to 64 per text encoder. One step is one forward pass at
    batch 1 (classifier-free guidance doubles it on the steps it applies to).
    """
    root = Path(folder)
    config_path = root / "config.json"
    if (root / "transformer" / "config.json").is_file():
        config_path = root / "transformer" / "config.json"
    if not config_path.is_file():
        raise ValueError(f"{root} holds no VideoDiT config.json (nor transformer/config.json)")
    config = json.loads(config_path.read_text())
    if config.get("_class_name") != "VideoDiT":
        raise ValueError(f"{config_path} describes a {config.get('_class_name')!r}, not a VideoDiT")
    _check_config(config, config_path)
    full = _config_dict(config)
    if pixels:
        tf, sf = _vae_factors(root)
        frames = None if frames is None else 1 + (frames - 1) // tf
        height = None if height is None else height // sf
        width = None if width is None else width // sf
    frames, height, width = frames or 5, height or 32, width or 32
    pt, ph, pw = full["patch_size"]
    # round the latent size up to the patch, as the pipelines do
    frames, height, width = (math.ceil(v / p) * p for v, p in ((frames, pt), (height, ph), (width, pw)))
    if text_tokens is None:
        text_tokens = 64 * len(full["text_dims"])
    flops = count_flops(full, frames, height, width, text_tokens)
    return dict(
        path=str(root),
        kind="VideoDiT",
        parameters=_count_parameters(full),
        latent_size=dict(frames=frames, height=height, width=width),
        flops_per_step=dict(
            gmacs=round(flops["gmacs"], 3),
            gflops=round(flops["gflops"], 3),
            tokens=flops["tokens"],
            text_tokens=flops["text_tokens"],
        ),
        config={k: v for k, v in config.items() if not k.startswith("_")},
    )


def _count_parameters(config: dict) -> int:
    """Parameters of a model built from this config, without allocating its weights."""
    import torch

    from video_dit.model import VideoDiT

    with torch.device("meta"):
        model = VideoDiT(**{k: v for k, v in config.items() if k in _signature(VideoDiT.__init__)})
    return sum(p.numel() for p in model.parameters())
