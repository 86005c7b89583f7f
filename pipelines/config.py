"""Training configuration: dataclasses read from YAML, strictly.

A training config is one YAML file (see `configs/train/`) whose sections mirror the dataclasses
below: `model`, `data`, `optim`, `dit`, `vae`, `lora`, and the run settings at the top level.
Loading is strict: a key that is not a field is an error naming the key and the nearest valid one,
and a value of the wrong type is an error naming the key and the type it needs. Command-line
overrides (`--set optim.lr=3e-4`) go through the same checks, then `validate()` checks the values
together. The resolved config (`to_dict`) is saved in the run folder and in every checkpoint.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import math
import os
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from pipelines.errors import UserError


@dataclass
class ModelConfig:
    """What is trained, and what it starts from."""

    kind: str = "dit"  # "dit" (the denoiser) or "vae" (the video compressor)
    preset: str = "tiny"  # a size in video_dit.PRESETS / vae3d.PRESETS
    args: dict[str, Any] = field(default_factory=dict)  # more constructor arguments (e.g. attention: factorized)
    init: str | None = None  # start from this save_pretrained folder (or model folder) instead of random weights
    warm_start: str | None = None  # dit: build the model from preset/args, then copy in this folder's weights
    #                                wherever name and shape match (e.g. to a new patch size); the rest start fresh
    vae: str = "tiny"  # dit: a VAE folder, a model folder, or a vae3d preset name (random weights)
    text_encoders: list[str] = field(default_factory=lambda: ["minilm"])  # dit: encoder folders or installed names
    #                                                                       ("minilm", "mpnet"); [] = none


@dataclass
class DataConfig:
    """Where the clips come from and how they are batched."""

    root: str | None = None  # a folder of videos and images (captions: manifest or sidecar .txt)
    captions: str | None = None  # an explicit captions manifest (.csv / .jsonl)
    latent_cache: str | None = None  # dit: a folder written by `spacetime cache-latents` (used instead of root)
    frames: int = 17  # pixel frames per video clip (1 + 4k)
    fps: float = 8.0  # clips are read at this frame rate
    buckets: list[list[int]] = field(default_factory=list)  # [frames, height, width] each; [] = derived
    base_size: int = 256  # side of the largest square frame for derived buckets
    image_frames: int = 1  # images train as clips of this many frames (1: one-frame clips)
    random_offset: bool = True  # start clips at random frames inside longer videos
    crop: str = "center"  # "center": scale to cover the bucket, crop the middle; "random": a random
    #                       bucket-sized window at the file's own scale (VAEs train on crops)
    colour_augment: bool = False  # vae: each clip with its RGB channels in a random order (so every hue is
    #                               seen, not only the data's own palette); captions would no longer match
    batch_size: int = 1  # clips per process per micro-step
    num_workers: int = 0  # DataLoader worker processes


@dataclass
class OptimConfig:
    """AdamW, warm-up then cosine or constant learning rate, clipping, accumulation."""

    lr: float = 1e-4
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    eps: float = 1e-8
    weight_decay: float = 0.0
    schedule: str = "cosine"  # "cosine" (to min_lr_ratio * lr at the last step) or "constant"
    warmup_steps: int = 0  # linear warm-up from 0
    min_lr_ratio: float = 0.1
    grad_clip: float = 1.0  # max global gradient norm; 0 disables
    grad_accum: int = 1  # micro-batches per optimizer step


@dataclass
class GivenFrames:
    """Probabilities of each given-frame pattern a DiT training sample draws (normalised to sum 1)."""

    none: float = 0.4  # text-to-video: no frame given
    first: float = 0.3  # image-to-video: the first latent frame given
    prefix: float = 0.2  # extension / long video: the first k latent frames given, k uniform in [1, T-1]
    first_last: float = 0.1  # interpolation: the first and the last latent frames given


@dataclass
class DiTConfig:
    """DiT training: the given-frame tasks, context noise, text dropout, timestep distribution."""

    given: GivenFrames = field(default_factory=GivenFrames)
    context_noise: float = 0.05  # given frames are noised to this level (long videos don't drift)
    text_drop: float = 0.1  # probability of dropping each text encoder (classifier-free guidance)
    timestep_sampling: str = "logit_normal"  # "logit_normal" or "uniform"
    shift: float = 1.0  # timestep shift applied to the training distribution
    uniform_share: float = 0.0  # share of timesteps drawn uniformly from (0, 1) instead (not shifted)
    motion_weight: float = 0.0  # > 0: more loss where the clip changes (video_dit.flow.motion_loss_weight)
    channel_weight: float = 0.0  # > 0: weigh each latent channel by the VAE decoder's sensitivity to it, to
    #                              this power (video_dit.flow.channel_loss_weight; 1: a linearised pixel loss)
    given_loss_weight: float = 0.0  # weight of the given frames' error (0: they are not in the loss)
    reference_only: float = 0.0  # share of samples whose given frames reach a given_reference model only
    #                              through its reference path (video_dit.flow.training_losses)
    sample_prompts: list[str] = field(default_factory=lambda: ["a red square moves to the right"])
    sample_steps: int = 20  # Euler steps of the preview samples
    sample_guidance: float = 4.0


@dataclass
class VAEConfig:
    """VAE training: loss weights and the discriminator warm-up."""

    reconstruction: str = "l1"  # "l1" or "l2"
    kl_weight: float = 1e-6
    disc_weight: float = 0.0  # 0: no adversarial loss
    disc_start: int = 1000  # the discriminator joins after this many steps
    disc_lr: float = 1e-4
    sample_posterior: bool = True  # decode a posterior sample (a VAE); false: its mean (an autoencoder with a KL penalty)
    first_frame_weight: float = 1.0  # weight of frame 0's reconstruction error against 1 for every other frame
    #                                  (frame 0 is encoded on its own: it is the still of image-to-video)
    train_encoder: bool = True  # false: only the decoder trains (needs model.init, or a new VAE with a linear
    #                             shortcut, whose fitted code is then the encoder); the latent space and its
    #                             statistics stay as they are, so latents cached for a DiT remain valid


@dataclass
class LoRAConfig:
    """LoRA adapters through peft; rank 0 trains all weights (full fine-tuning)."""

    rank: int = 0
    alpha: float | None = None  # scale numerator; None: equal to rank
    dropout: float = 0.0
    targets: list[str] = field(default_factory=lambda: ["to_qkv", "to_q", "to_kv", "to_out", "fc1", "fc2"])


@dataclass
class TrainConfig:
    """A whole training run."""

    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    dit: DiTConfig = field(default_factory=DiTConfig)
    vae: VAEConfig = field(default_factory=VAEConfig)
    lora: LoRAConfig = field(default_factory=LoRAConfig)
    out: str = "runs/train"  # run folder: config, logs, checkpoints, samples, final model
    steps: int = 1000  # optimizer steps
    seed: int = 0
    precision: str = "auto"  # "auto" (bf16 autocast where the hardware has it), "bf16" or "fp32"
    ema_decay: float = 0.999  # 0 disables EMA
    gradient_checkpointing: bool = False
    deepspeed: str | None = None  # a ZeRO JSON config (configs/deepspeed/zero{1,2,3}.json); None: plain PyTorch
    log_every: int = 10
    save_every: int = 500
    keep_last: int = 3  # checkpoints kept (older ones are deleted)
    sample_every: int = 0  # write preview samples every N steps; 0 disables
    tensorboard: bool = True

    def validate(self) -> "TrainConfig":
        """Check values that only make sense together; raise UserError naming the key."""
        checks = [
            (self.model.kind in ("dit", "vae"), "model.kind", "'dit' or 'vae'"),
            (self.steps >= 1, "steps", "1 or more"),
            (self.optim.lr > 0, "optim.lr", "a positive number"),
            (len(self.optim.betas) == 2 and all(0 <= b < 1 for b in self.optim.betas), "optim.betas", "two numbers in [0, 1)"),
            (self.optim.schedule in ("cosine", "constant"), "optim.schedule", "'cosine' or 'constant'"),
            (self.optim.warmup_steps >= 0, "optim.warmup_steps", "0 or more"),
            (0 <= self.optim.min_lr_ratio <= 1, "optim.min_lr_ratio", "a number in [0, 1]"),
            (self.optim.grad_clip >= 0, "optim.grad_clip", "0 (off) or a positive norm"),
            (self.optim.grad_accum >= 1, "optim.grad_accum", "1 or more"),
            (self.data.batch_size >= 1, "data.batch_size", "1 or more"),
            (self.data.num_workers >= 0, "data.num_workers", "0 or more"),
            (all(len(b) == 3 for b in self.data.buckets), "data.buckets", "a list of [frames, height, width]"),
            (self.precision in ("auto", "bf16", "fp32"), "precision", "'auto', 'bf16' or 'fp32'"),
            (0 <= self.ema_decay < 1, "ema_decay", "a number in [0, 1); 0 disables EMA"),
            (self.log_every >= 1, "log_every", "1 or more"),
            (self.save_every >= 1, "save_every", "1 or more"),
            (self.keep_last >= 1, "keep_last", "1 or more"),
            (self.sample_every >= 0, "sample_every", "0 (off) or more"),
            (0 <= self.dit.context_noise <= 1, "dit.context_noise", "a number in [0, 1]"),
            (0 <= self.dit.text_drop <= 1, "dit.text_drop", "a probability in [0, 1]"),
            (self.dit.timestep_sampling in ("logit_normal", "uniform"), "dit.timestep_sampling", "'logit_normal' or 'uniform'"),
            (0.0 <= self.dit.uniform_share <= 1.0, "dit.uniform_share", "a share between 0 and 1"),
            (self.dit.motion_weight >= 0, "dit.motion_weight", "a number >= 0 (0 turns it off)"),
            (self.dit.channel_weight >= 0, "dit.channel_weight", "a power >= 0 (0 weighs channels alike)"),
            (self.dit.given_loss_weight >= 0, "dit.given_loss_weight", "a weight >= 0 (0 leaves given frames out)"),
            (0 <= self.dit.reference_only <= 1, "dit.reference_only", "a share in [0, 1]"),
            (self.dit.reference_only == 0 or self.model.kind != "dit" or self.model.init
             or self.model.args.get("given_reference"),
             "dit.reference_only", "0 unless the DiT is built with model.args.given_reference: true"),
            (all(p >= 0 for p in dataclasses.astuple(self.dit.given)) and sum(dataclasses.astuple(self.dit.given)) > 0,
             "dit.given", "non-negative probabilities that do not all vanish"),
            (self.data.crop in ("center", "random"), "data.crop", "'center' or 'random'"),
            (self.vae.reconstruction in ("l1", "l2"), "vae.reconstruction", "'l1' or 'l2'"),
            (math.isfinite(self.vae.first_frame_weight) and self.vae.first_frame_weight > 0, "vae.first_frame_weight",
             "a positive finite weight (1: like any other frame)"),
            (self.vae.train_encoder or not self.deepspeed, "vae.train_encoder",
             "true under DeepSpeed (its checkpoints do not keep frozen weights exactly); train the decoder alone "
             "without --deepspeed"),
            (self.lora.rank >= 0, "lora.rank", "0 (full fine-tuning) or a positive rank"),
            (not self.data.colour_augment or self.model.kind == "vae", "data.colour_augment",
             "false for a DiT (permuted colours would contradict the captions)"),
            (self.lora.rank == 0 or self.model.kind == "dit", "lora.rank", "0 for a VAE (LoRA is for the DiT)"),
            (not (self.model.warm_start and self.model.init), "model.warm_start",
             "unset when model.init is set (init loads a whole model; warm_start copies what fits into a new one)"),
            (not self.model.warm_start or self.model.kind == "dit", "model.warm_start", "unset for a VAE"),
        ]
        for ok, key, expected in checks:
            if not ok:
                raise UserError(f"config key {key}={_get(self, key)!r} is invalid; expected {expected}")
        if self.data.root is None and self.data.latent_cache is None:
            raise UserError("config has no data: set data.root (a folder of clips) or data.latent_cache")
        if self.data.latent_cache is not None and self.model.kind == "vae":
            raise UserError("data.latent_cache is for DiT training; a VAE trains on pixels: set data.root instead")
        return self

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


# ------------------------------------------------------------------------------------------------
# Strict loading
# ------------------------------------------------------------------------------------------------


def load_config(path: str | os.PathLike | None = None, overrides: list[str] | tuple[str, ...] = ()) -> TrainConfig:
    """Read a YAML config (or the defaults), apply `key=value` overrides, and validate."""
    data: dict = {}
    source = "defaults"
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise UserError(f"config file {path} not found; pass a YAML file such as configs/train/dit_tiny.yaml")
        try:
            data = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as err:
            raise UserError(f"config file {path} is not valid YAML: {' '.join(str(err).split())}") from None
        if not isinstance(data, dict):
            raise UserError(f"config file {path} must hold a mapping of keys, not {type(data).__name__}")
        source = str(path)
    cfg = from_dict(TrainConfig, data, source=source)
    for item in overrides:
        cfg = apply_override(cfg, item)
    return cfg.validate()


def from_dict(cls, data: dict, source: str = "config", prefix: str = ""):
    """Build dataclass `cls` from a mapping; unknown keys and mistyped values raise UserError."""
    if not isinstance(data, dict):
        where = f"key '{prefix.rstrip('.')}'" if prefix else "the top level"
        raise UserError(f"{source}: {where} must be a mapping, got {data!r}")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    values = {}
    for key, value in data.items():
        if key not in names:
            raise UserError(f"{source}: unknown key '{prefix}{key}'{_did_you_mean(str(key), names, prefix)}")
        values[key] = _coerce(value, hints[key], f"{prefix}{key}", source)
    return cls(**values)


def override(key: str, value) -> str:
    """The `key=value` override that parses back to exactly `value`: JSON is YAML, so a string from a
    flag stays a string ("2024", "yes", "runs/exp #2") where bare YAML would make it a number, a bool
    or cut it at the '#'."""
    return f"{key}={json.dumps(value, ensure_ascii=False)}"


def apply_override(cfg: TrainConfig, item: str) -> TrainConfig:
    """Apply one `dotted.key=value` override (the value is parsed as YAML) and return the new config."""
    if "=" not in item:
        raise UserError(f"override {item!r} needs the form key=value, e.g. optim.lr=3e-4")
    key, raw = item.split("=", 1)
    key = key.strip()
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError:
        value = raw
    data = cfg.to_dict()
    node, parts = data, key.split(".")
    for depth, part in enumerate(parts):
        prefix = ".".join(parts[:depth])
        prefix = prefix + "." if prefix else ""
        if not isinstance(node, dict) or part not in node:
            options = list(node) if isinstance(node, dict) else []
            raise UserError(f"override: unknown key '{key}'{_did_you_mean(part, options, prefix)}")
        if depth == len(parts) - 1:
            node[part] = value
        else:
            node = node[part]
    return from_dict(TrainConfig, data, source=f"override {item!r}")


def _did_you_mean(key: str, options: list[str], prefix: str) -> str:
    close = difflib.get_close_matches(key, options, n=1, cutoff=0.5)
    if close:
        return f"; did you mean '{prefix}{close[0]}'?"
    return f"; valid keys here: {', '.join(prefix + o for o in options)}"


def _coerce(value, tp, key: str, source: str):
    """Check `value` against type hint `tp` (converting int -> float and '1e-4' -> float)."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return _coerce(value, inner[0], key, source)
    if dataclasses.is_dataclass(tp):
        return from_dict(tp, value, source, prefix=key + ".")
    if tp is Any:
        return value
    if tp is bool:
        if isinstance(value, bool):
            return value
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                pass
    elif tp is str:
        if isinstance(value, str):
            return value
    elif origin is list:
        if isinstance(value, (list, tuple)):
            return [_coerce(v, args[0], f"{key}[{i}]", source) for i, v in enumerate(value)]
    elif origin is dict:
        if isinstance(value, dict):
            return {str(k): _coerce(v, args[1], f"{key}.{k}", source) for k, v in value.items()}
    else:  # pragma: no cover - a field type this loader does not know
        raise TypeError(f"config field {key} has unsupported type {tp}")
    raise UserError(f"{source}: key '{key}' must be {_type_name(tp)}, got {value!r}")


def _type_name(tp) -> str:
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin is list:
        return f"a list of {_type_name(args[0])}"
    if origin is dict:
        return "a mapping"
    return {bool: "true or false", int: "an integer", float: "a number", str: "a string"}.get(tp, str(tp))


def _get(cfg, dotted: str):
    node = cfg
    for part in dotted.split("."):
        node = getattr(node, part)
    return node
