"""The training loop: one loop for the VAE and the DiT, for pretraining and fine-tuning.

    from pipelines.config import load_config
    from pipelines.train import train
    train(load_config("configs/train/dit_tiny.yaml", ["steps=100"]))

Read top to bottom: the given-frame tasks, the two things that can be trained (`DiTTask`,
`VAETask`: model, loss of a batch, preview samples), the learning-rate schedule, checkpoints, then
`train()` itself. Parallelism (plain PyTorch or DeepSpeed ZeRO) hides behind `distributed.Engine`.

A run folder holds `config.yaml` (the resolved config), `log.jsonl` (one line per logged step),
`tensorboard/`, `samples/`, `checkpoints/step_XXXXXXXX/` (the last `keep_last`) and `model/`, the
final weights as a `save_pretrained` folder (EMA weights when EMA is on).
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import random
import shutil
import time
import warnings
from contextlib import nullcontext
from pathlib import Path

import numpy as np
import torch
import yaml
from safetensors.torch import load_file, save_file

from pipelines import distributed
from pipelines.config import GivenFrames, TrainConfig, from_dict
from pipelines.distributed import DeepSpeedEngine, Engine, ShardedEMA, World
from pipelines.errors import UserError
from pipelines.video_io import replace_folder

# ------------------------------------------------------------------------------------------------
# Given frames: which latent frames a DiT training sample gets as conditioning
# ------------------------------------------------------------------------------------------------

GIVEN_MODES = ("none", "first", "prefix", "first_last")


def draw_given_mask(batch: int, frames: int, probs: GivenFrames, generator: torch.Generator | None = None) -> torch.Tensor:
    """A (batch, frames) bool mask of given latent frames, one pattern per sample drawn with `probs`:
    none (text-to-video), first (image-to-video), prefix of k in [1, frames-1] (extension, long
    video), first_last (interpolation). Patterns a clip this short cannot have are left out and the
    others renormalised: a one-frame clip (an image) gets none, first_last needs three frames."""
    weights = torch.tensor([probs.none, probs.first, probs.prefix, probs.first_last], dtype=torch.float64)
    if frames < 2:
        weights[1:] = 0
    if frames < 3:
        weights[3] = 0
    if weights.sum() == 0:
        weights[0] = 1
    modes = torch.multinomial(weights, batch, replacement=True, generator=generator)
    ks = torch.randint(1, max(2, frames), (batch,), generator=generator)  # prefix lengths in [1, frames-1]
    mask = torch.zeros(batch, frames, dtype=torch.bool)
    for i, (mode, k) in enumerate(zip(modes.tolist(), ks.tolist())):
        if GIVEN_MODES[mode] == "first":
            mask[i, 0] = True
        elif GIVEN_MODES[mode] == "prefix":
            mask[i, :k] = True
        elif GIVEN_MODES[mode] == "first_last":
            mask[i, 0] = mask[i, -1] = True
    return mask


# ------------------------------------------------------------------------------------------------
# What is trained: a task holds the model and knows the loss of a batch and how to preview
# ------------------------------------------------------------------------------------------------


class Task:
    """Hooks the loop calls around a task's `loss` for models trained beside the main one (a VAE's
    discriminator); a task without such models keeps these no-ops."""

    def after_backward(self) -> None:
        """Called after each micro-batch's backward pass and optimizer step of the main model."""

    def save(self, folder: Path) -> None:
        """Add the task's own state to a checkpoint folder being written."""

    def load(self, folder: Path) -> None:
        """Restore the task's own state from a checkpoint folder."""

    def start(self, dataset) -> str | None:
        """Called once before the first step of a new run (not a resumed one), with the training
        data; returns a line for the log, or None."""
        return None

    def prepare(self, dataset) -> str | None:
        """Called before every run, new or resumed, with the training data, for what the task
        derives from it the same way each time; returns a line for the log, or None."""
        return None


CHANNEL_PROBE_CLIPS = 8  # clips dit.channel_weight reads the decoder's sensitivity around


class DiTTask(Task):
    """Rectified-flow training of a VideoDiT on VAE latents (from pixels on the fly, or a latent cache)."""

    def __init__(self, cfg: TrainConfig, world: World):
        from video_dit import PRESETS, VideoDiT

        self.cfg = cfg
        self.device = world.device
        self.text = load_text_encoders(cfg.model.text_encoders, self.device)
        # Latents from a cache need no VAE, except to decode preview samples and to weigh channels.
        self.vae = None
        self.channel_weight = None  # (1, C, 1, 1, 1) with dit.channel_weight > 0, from `prepare`
        if not cfg.data.latent_cache or cfg.sample_every or cfg.dit.channel_weight > 0:
            self.vae = load_component("vae", cfg.model.vae).to(self.device).eval().requires_grad_(False)
        if cfg.model.init:
            self.model = load_component("transformer", cfg.model.init)
        else:
            if self.vae is not None:
                channels = self.vae.config.latent_channels
            else:
                from pipelines.data import read_index

                channels = read_index(cfg.data.latent_cache)["entries"][0]["latent_shape"][0]
            self.model = VideoDiT(in_channels=channels, text_dims=self.text_dims,
                                  **{**PRESETS[_preset(cfg.model.preset, PRESETS)], **cfg.model.args})
        if cfg.dit.reference_only > 0 and not self.model.config.get("given_reference"):
            raise UserError(f"dit.reference_only={cfg.dit.reference_only} needs a DiT with a given-frame reference "
                            f"path; {cfg.model.init} was built without one (set it to 0)")
        self.model.to(self.device)
        self.spatial_multiple = self.model.patch[1] * (self.vae.spatial_factor if self.vae is not None else 1)
        self.temporal_factor = self.vae.temporal_factor if self.vae is not None else 4

    def start(self, dataset) -> str | None:
        if self.cfg.model.warm_start:  # on every rank, so that all start from the same weights
            return warm_start(self.model, self.cfg.model.warm_start)
        return None

    def prepare(self, dataset) -> str | None:
        """With dit.channel_weight > 0: the VAE decoder's sensitivity to each latent channel, read
        around the latents of a few clips spread evenly over the data (the same clips each run, so
        that a resumed run weighs as the run it continues)."""
        power = self.cfg.dit.channel_weight
        if power <= 0:
            return None
        from video_dit import flow

        picks = sorted({int(i) for i in np.linspace(0, len(dataset) - 1, CHANNEL_PROBE_CLIPS)})
        generator = torch.Generator().manual_seed(0)
        readings = []
        for index in picks:
            item = dataset[index]
            if item is None:  # a clip the data set skips
                continue
            z = self.clean_latents({k: item[k][None] for k in ("latents", "video") if k in item})
            readings.append(self.vae.channel_sensitivity(z, generator=generator).cpu())
        if not readings:
            raise UserError("dit.channel_weight needs a readable clip to measure the decoder on; none of "
                            f"{len(picks)} clips spread over the data could be read")
        sensitivity = torch.stack(readings).mean(0)
        self.channel_weight = flow.channel_loss_weight(sensitivity, power).to(self.device)
        shown = ", ".join(f"{w:.2f}" for w in self.channel_weight.flatten().tolist())
        return f"latent channel weights (decoder sensitivity ^ {power:g}, {len(readings)} clips): {shown}"

    def clean_latents(self, batch: dict) -> torch.Tensor:
        """A batch's normalized latents: from the latent cache, or encoded from its pixels by the VAE."""
        if "latents" in batch:
            return batch["latents"].to(self.device)
        with torch.no_grad():
            return self.vae.encode_latents(batch["video"].to(self.device))

    @property
    def predicts_sample(self) -> bool:
        """A DiT that predicts the clean sample is trained on that sample's error (flow.training_losses)."""
        return getattr(getattr(self.model, "config", None), "prediction", "velocity") == "sample"

    @property
    def text_dims(self) -> tuple[int, ...]:
        return tuple(self.text.dims) if self.text is not None else ()

    def encode_text(self, prompts: list[str]):
        if self.text is None:
            return [], []
        with torch.no_grad():
            return self.text.encode(prompts)

    def loss(self, model, batch: dict, generator: torch.Generator) -> torch.Tensor:
        cfg = self.cfg.dit
        x0 = self.clean_latents(batch)
        if "latents" in batch:  # from the latent cache, with the prompt's embeddings
            states = [s.to(self.device) for s in batch["text_states"]]
            masks = [m.to(self.device) for m in batch["text_masks"]]
        else:
            states, masks = self.encode_text(batch["caption"])
        from video_dit import flow
        from video_dit.text import drop_encoders

        if states and cfg.text_drop > 0:
            states, masks = drop_encoders(states, masks, cfg.text_drop, generator)
        given = draw_given_mask(x0.shape[0], x0.shape[2], cfg.given, generator)
        weight = flow.motion_loss_weight(x0, cfg.motion_weight) if cfg.motion_weight > 0 else None
        if self.channel_weight is not None:
            weight = self.channel_weight if weight is None else weight * self.channel_weight

        out = flow.training_losses(model, x0, dict(text_states=states, text_masks=masks), given_mask=given,
                                   context_noise=cfg.context_noise, given_weight=cfg.given_loss_weight,
                                   timestep_sampling=cfg.timestep_sampling,
                                   shift=cfg.shift, uniform_share=cfg.uniform_share,
                                   sample_space=self.predicts_sample, loss_weight=weight,
                                   reference_only=cfg.reference_only, generator=generator)
        return out["loss"]

    @torch.no_grad()
    def sample(self, model, batch: dict, generator: torch.Generator) -> torch.Tensor:
        """Preview: one clip per prompt of `dit.sample_prompts`, the shape of the current batch."""
        from video_dit import flow

        cfg = self.cfg.dit
        shape = batch["latents"].shape[1:] if "latents" in batch else None
        if shape is None:
            shape = self.vae.encode_latents(batch["video"][:1].to(self.device)).shape[1:]
        prompts = cfg.sample_prompts
        cond = uncond = None
        if self.text is not None:
            states, masks = self.encode_text(prompts)
            cond = dict(text_states=states, text_masks=masks)
            states, masks = self.text.null(len(prompts), device=self.device)
            uncond = dict(text_states=states, text_masks=masks)
        noise = torch.randn((len(prompts), *shape), generator=generator).to(self.device)
        latents = flow.sample(model, noise, cond, uncond, guidance=cfg.sample_guidance, num_steps=cfg.sample_steps,
                              shift=cfg.shift, context_noise=cfg.context_noise)
        return self.vae.decode_latents(latents)


SHORTCUT_FIT_CLIPS = 256  # clips a new VAE's linear shortcut is fitted to


class VAETask(Task):
    """Training of a CausalVideoVAE: reconstruction + KL (+ adversarial loss after a warm-up).

    With `vae.disc_weight > 0` a 3D patch discriminator trains beside the VAE from `vae.disc_start`
    on: its own AdamW (betas 0.5, 0.9, lr `vae.disc_lr`) in a plain data-parallel engine, stepped
    after the VAE's backward pass of each micro-batch, and saved in every checkpoint
    (discriminator.safetensors and its optimizer state) so that a resumed run continues exactly.
    """

    def __init__(self, cfg: TrainConfig, world: World):
        from vae3d import PRESETS, CausalVideoVAE
        from vae3d.losses import VAELoss

        self.cfg = cfg
        self.device = world.device
        if cfg.model.init:
            self.model = load_component("vae", cfg.model.init)
        else:
            self.model = CausalVideoVAE(**{**PRESETS[_preset(cfg.model.preset, PRESETS)], **cfg.model.args})
        self.model.to(self.device)
        trained = bool(cfg.model.init and Path(cfg.model.init).exists())
        if not cfg.vae.train_encoder and not trained and self.model.shortcut is None:
            raise UserError("vae.train_encoder: false keeps an encoder as it is: name a trained VAE folder in "
                            "model.init, or use a model with a linear shortcut (its fitted code is the encoder)")
        if not cfg.vae.train_encoder:  # the latent space stays as it is: only the decoder side learns
            for part in self.model.encoding_modules():
                part.requires_grad_(False)
        self.criterion = VAELoss(reconstruction=cfg.vae.reconstruction, kl_weight=cfg.vae.kl_weight,
                                 disc_weight=cfg.vae.disc_weight, disc_start=cfg.vae.disc_start,
                                 first_frame_weight=cfg.vae.first_frame_weight).to(self.device)
        self.spatial_multiple = self.model.spatial_factor
        self.temporal_factor = self.model.temporal_factor
        self.step = 0
        self.disc: Engine | None = None
        self.disc_loss: torch.Tensor | None = None
        if self.criterion.discriminator is not None:
            disc = self.criterion.discriminator
            optimizer = torch.optim.AdamW(disc.parameters(), lr=cfg.vae.disc_lr, betas=(0.5, 0.9))
            constant = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda _: 1.0)
            self.disc = Engine(disc, optimizer, constant, world, cfg.optim.grad_clip, cfg.optim.grad_accum,
                               name="discriminator")

    def start(self, dataset) -> str | None:
        """A new VAE with a linear shortcut starts as the principal-component code of up to
        SHORTCUT_FIT_CLIPS training clips, spread evenly over the data (every rank the same ones)."""
        if self.model.shortcut is None or (self.cfg.model.init and Path(self.cfg.model.init).exists()):
            return None  # a trained VAE keeps its weights; a preset name given as init is a new VAE
        picks = np.unique(np.linspace(0, len(dataset) - 1, min(SHORTCUT_FIT_CLIPS, len(dataset))).astype(int))
        used = []
        for i in picks:
            item = dataset[int(i)]
            if item is not None:  # a skipped (unreadable) clip
                used.append(item["video"])
        if not used:
            raise UserError(f"no readable clip to fit the VAE's linear shortcut to in {self.cfg.data.root}")
        kept = self.model.fit_linear_shortcut(used)
        return (f"linear shortcut fitted to {len(used)} clips: the principal-component code keeps "
                f"{100 * float(kept):.1f}% of the pixel variance")

    def loss(self, model, batch: dict, generator: torch.Generator) -> torch.Tensor:
        video = batch["video"].to(self.device)
        reconstruction, posterior = model(video, sample_posterior=self.cfg.vae.sample_posterior, generator=generator)
        out = self.criterion(video, reconstruction, posterior, step=self.step)
        self.disc_loss = out["disc_loss"] if self.criterion.discriminator_active(self.step) else None
        return out["loss"]

    def after_backward(self) -> None:
        """Train the discriminator on this micro-batch (after the VAE's backward pass, which used
        its weights as they were)."""
        if self.disc is not None and self.disc_loss is not None:
            self.disc.backward(self.disc_loss)
            self.disc.step()
            self.disc_loss = None

    def save(self, folder: Path) -> None:
        if self.disc is not None:
            self.disc.save(folder)

    def load(self, folder: Path) -> None:
        # the latent statistics are config, not weights: a resumed run takes the checkpoint's (a
        # fitted shortcut's), so that its later checkpoints export with them too
        state = read_state(folder)
        config = state["model_config"]
        if config.get("latents_mean") is not None and config.get("latents_std") is not None:
            self.model.set_latent_stats(config["latents_mean"], config["latents_std"])
        if self.disc is None:
            return
        if self.disc.saved_in(folder):
            self.disc.load(folder)
        elif state["step"] > self.cfg.vae.disc_start:
            warnings.warn(f"{folder} has no discriminator state; the discriminator starts from random weights")

    @torch.no_grad()
    def sample(self, model, batch: dict, generator: torch.Generator) -> torch.Tensor:
        """Preview: the first clip of the batch above its reconstruction."""
        video = batch["video"][:1].to(self.device)
        reconstruction, _ = model(video, generator=generator)
        return torch.cat([video, reconstruction.clamp(-1, 1)], dim=-2)


def load_component(part: str, spec: str):
    """The "vae" or "transformer" of a model folder, a `save_pretrained` folder of that part, or a
    preset name (random weights, seeded, for tests and experiments): `pipeline.load_part`."""
    from pipelines.pipeline import load_part

    return load_part(part, spec)[0]


def warm_start(model: torch.nn.Module, spec: str) -> str:
    """Copy into `model` every tensor of the transformer `spec` names whose name and shape match; the
    rest keep their fresh initialisation. Returns a line that says what was copied."""
    from pipelines.pipeline import load_part

    try:
        source = load_part("transformer", spec, presets=False)[0].state_dict()
    except UserError as err:
        raise UserError(f"model.warm_start={spec}: {err}") from None
    own = model.state_dict()
    matched = {k: v for k, v in source.items() if k in own and own[k].shape == v.shape}
    if not matched:
        raise UserError(f"model.warm_start={spec}: none of its tensors fits this model (names and shapes differ); "
                        "give a transformer of the same width and depth")
    model.load_state_dict(matched, strict=False)
    fresh = sorted(set(own) - set(matched))
    copied = sum(v.numel() for v in matched.values())
    total = sum(v.numel() for v in own.values())
    shown = ", ".join(fresh[:4]) + (", ..." if len(fresh) > 4 else "")
    return (f"warm start from {spec}: {len(matched)} of {len(own)} tensors copied ({copied / total:.1%} of the "
            f"weights); fresh: {shown or 'none'}")


def load_text_encoders(names: list[str], device: torch.device):
    """`video_dit.text.TextEncoders` over the named encoders (folders, or installed ones:
    "minilm", "mpnet"); None for []."""
    if not names:
        return None
    from pipelines.pipeline import load_text_encoder
    from video_dit.text import TextEncoders

    return TextEncoders([load_text_encoder(n, label=f"model.text_encoders: {n}") for n in names]).to(device)


def _preset(name: str, presets: dict) -> str:
    if name not in presets:
        raise UserError(f"model.preset={name!r} is not a preset; choose one of {', '.join(presets)}")
    return name


# ------------------------------------------------------------------------------------------------
# Data, learning rate, randomness
# ------------------------------------------------------------------------------------------------


def make_data(cfg: TrainConfig, world: World, spatial_multiple: int, temporal_factor: int):
    """The data set, its bucket sampler (this rank's share) and a DataLoader over them."""
    from pipelines.data import BucketSampler, Bucket, LatentCache, VideoFolder, collate

    d = cfg.data
    if d.latent_cache:
        dataset = LatentCache(d.latent_cache, latent_frames=1 + (d.frames - 1) // temporal_factor, random_offset=d.random_offset,
                              seed=cfg.seed)
    else:
        root = Path(d.root)
        if not root.is_dir():
            raise UserError(f"data.root {root} is not a folder; point it at a folder of videos and images")
        buckets = [Bucket(*b) for b in d.buckets] or None
        dataset = VideoFolder(root, frames=d.frames, fps=d.fps, buckets=buckets, base_size=d.base_size,
                              image_frames=d.image_frames, random_offset=d.random_offset, seed=cfg.seed,
                              captions=d.captions, spatial_multiple=spatial_multiple,
                              temporal_factor=temporal_factor, crop=d.crop, colour_augment=d.colour_augment)
    if len(dataset) == 0:
        raise UserError(f"no usable clips in {d.latent_cache or d.root}; add videos or images (.mp4, .png, ...)")
    sampler = BucketSampler(dataset, d.batch_size, shuffle=True, seed=cfg.seed, drop_last=True,
                            rank=world.rank, world_size=world.world_size)
    loader = torch.utils.data.DataLoader(dataset, batch_sampler=sampler, collate_fn=collate, num_workers=d.num_workers,
                                         persistent_workers=d.num_workers > 0)
    return dataset, sampler, loader


def forever(loader, dataset=None):
    """Batches without end (the sampler moves to the next epoch by itself); empty batches skipped.
    Files that failed while a batch was read (possibly in a worker process) are recorded in
    `dataset.skipped`, for the run summary."""
    while True:
        for batch in loader:
            if dataset is not None and batch.get("skipped"):
                dataset.skipped.update(batch["skipped"])
            if batch.get("video") is not None or batch.get("latents") is not None:
                yield batch


def lr_factor(step: int, warmup: int, total: int, schedule: str, min_ratio: float) -> float:
    """Multiplier of the base LR at optimizer step `step`: linear warm-up, then constant or cosine."""
    if step < warmup:
        return (step + 1) / warmup
    if schedule == "constant":
        return 1.0
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


def precision_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """bf16 autocast where the hardware has it ("auto": a CUDA GPU with bf16), or as asked."""
    if precision == "bf16":
        return torch.bfloat16
    if precision == "auto" and device.type == "cuda" and torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return None


def rng_state(generator: torch.Generator) -> tuple[dict, dict]:
    tensors = {"torch": torch.get_rng_state(), "generator": generator.get_state()}
    if torch.cuda.is_available():
        tensors["cuda"] = torch.cuda.get_rng_state()
    np_state = np.random.get_state()
    tensors["numpy"] = torch.from_numpy(np_state[1].astype(np.int64))
    meta = {"numpy": [np_state[0], int(np_state[2]), int(np_state[3]), float(np_state[4])],
            "python": _jsonable(random.getstate())}
    return tensors, meta


def set_rng_state(generator: torch.Generator, tensors: dict, meta: dict) -> None:
    torch.set_rng_state(tensors["torch"])
    generator.set_state(tensors["generator"])
    if "cuda" in tensors and torch.cuda.is_available():
        torch.cuda.set_rng_state(tensors["cuda"])
    name, pos, has_gauss, gauss = meta["numpy"]
    np.random.set_state((name, tensors["numpy"].numpy().astype(np.uint32), pos, has_gauss, gauss))
    version, internal, gauss_next = meta["python"]
    random.setstate((version, tuple(internal), gauss_next))


def _jsonable(obj):
    return [_jsonable(o) for o in obj] if isinstance(obj, (tuple, list)) else obj


# ------------------------------------------------------------------------------------------------
# Checkpoints: checkpoints/step_XXXXXXXX, written under a temporary name and renamed when complete
# ------------------------------------------------------------------------------------------------


def save_checkpoint(out: Path, step: int, cfg: TrainConfig, engine: Engine, ema: ShardedEMA | None,
                    generator: torch.Generator, data_state: dict | None, world: World, task: Task | None = None) -> Path:
    root = out / "checkpoints"
    final, tmp = root / f"step_{step:08d}", root / f".tmp_step_{step:08d}"
    if world.is_main:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    distributed.barrier(world)
    engine.save(tmp)
    if ema is not None:
        ema.save(tmp)
    if task is not None:
        task.save(tmp)
    tensors, meta = rng_state(generator)
    save_file(tensors, tmp / f"rank{world.rank}.safetensors", metadata={"state": json.dumps({**meta, "data": data_state})})
    distributed.barrier(world)
    if world.is_main:
        module = engine.module
        base = getattr(module, "get_base_model", lambda: module)()
        state = {"step": step, "world_size": world.world_size, "model_class": type(base).__name__,
                 "model_config": _model_config(base), "config": cfg.to_dict()}
        (tmp / "state.json").write_text(json.dumps(state, indent=1))
        replace_folder(tmp, final)  # the same step saved again (a resumed run) is swapped out
        for old in list_checkpoints(out)[: -cfg.keep_last]:
            shutil.rmtree(old, ignore_errors=True)
    distributed.barrier(world)
    return final


def list_checkpoints(run: Path) -> list[Path]:
    """Complete checkpoints of a run folder, oldest first (temporary folders are not listed)."""
    root = Path(run) / "checkpoints"
    if not root.is_dir():
        return []
    return sorted(p for p in root.glob("step_*") if (p / "state.json").is_file())


RUN_CONTENTS = ("checkpoints", "model", "pipeline", "lora", "samples", "tensorboard", "log.jsonl", "config.yaml")


def check_new_run(out: str | os.PathLike) -> None:
    """A new run does not write into a folder another run left checkpoints or a model in (their
    checkpoints would be mixed and pruned together): UserError saying how to go on."""
    out = Path(out)
    held = list_checkpoints(out)[-1:] or [p for p in (out / "model", out / "pipeline") if p.exists()]
    if held:
        raise UserError(f"{out} already holds a run ({held[0]}); continue it with --resume {out}, choose "
                        f"another --out, or pass --overwrite to start over (its checkpoints and model are removed)")


def clear_run(out: str | os.PathLike) -> None:
    """Remove what a run writes into its folder (checkpoints, exported model, log, samples)."""
    for name in RUN_CONTENTS:
        path = Path(out) / name
        if path.is_dir():
            shutil.rmtree(path)
        elif path.exists():
            path.unlink()


def find_checkpoint(path: str | os.PathLike, flag: str = "--resume") -> Path:
    """A checkpoint folder, or the latest complete checkpoint of a run folder; UserError otherwise
    (naming `flag`, the option the path came from)."""
    path = Path(path)
    if (path / "state.json").is_file():
        return path
    found = list_checkpoints(path)
    if found:
        return found[-1]
    if not path.exists():
        raise UserError(f"{flag} {path}: no such folder; pass a run folder or one of its checkpoints/step_* folders")
    raise UserError(f"{flag} {path}: not a checkpoint (no state.json) and not a run folder with checkpoints/step_*")


STATE_KEYS = {"step": int, "world_size": int, "config": dict, "model_class": str, "model_config": dict}


def read_state(folder: Path) -> dict:
    """A checkpoint's state.json, checked for the entries resuming and exporting read."""
    path = folder / "state.json"
    try:
        state = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise UserError(f"{path} is not readable JSON ({err}); pass a checkpoint that spacetime train wrote") from None
    wrong = [key for key, kind in STATE_KEYS.items() if not isinstance(state, dict) or not isinstance(state.get(key), kind)]
    if wrong:
        raise UserError(f"{path} lacks or mistypes {', '.join(wrong)}; pass a checkpoint that spacetime train wrote")
    return state


def load_checkpoint(folder: Path, engine: Engine, ema: ShardedEMA | None, generator: torch.Generator,
                    world: World, task: Task | None = None) -> tuple[int, dict | None]:
    """Restore a checkpoint into the engine, the EMA and the RNGs; return (step, data position)."""
    state = read_state(folder)
    if state["world_size"] != world.world_size:
        raise UserError(f"{folder} was written by {state['world_size']} process(es); resume it with "
                        f"--nproc {state['world_size']} (this run has {world.world_size})")
    saved = state.get("config", {}).get("vae", {}).get("train_encoder", True)
    if isinstance(task, VAETask) and saved != task.cfg.vae.train_encoder:
        raise UserError(f"{folder} was trained with vae.train_encoder={str(saved).lower()}; resume it with the "
                        f"same setting (it decides which weights the optimizer holds)")
    engine.load(folder)
    if ema is not None:
        if not (folder / "ema.safetensors").is_file():
            raise UserError(f"{folder} has no EMA weights; resume with ema_decay=0 or from a run that kept EMA")
        ema.load(folder)
    if task is not None:
        task.load(folder)
    rank_file = folder / f"rank{world.rank}.safetensors"
    from safetensors import safe_open

    with safe_open(rank_file, framework="pt") as f:
        meta = json.loads(f.metadata()["state"])
    set_rng_state(generator, load_file(rank_file), meta)
    return state["step"], meta["data"]


def export_checkpoint(checkpoint: str | os.PathLike, out: str | os.PathLike, use_ema: bool = True,
                      overwrite: bool = False, adapter: str | os.PathLike | None = None) -> Path:
    """Write a checkpoint's weights (EMA when present and `use_ema`) as a `save_pretrained` folder.
    Works for plain and DeepSpeed ZeRO checkpoints (gathered with DeepSpeed's zero_to_fp32);
    LoRA adapters are merged into the base weights, and also written alone to `adapter` if given."""
    from pipelines import lora

    folder = find_checkpoint(checkpoint, "--export")
    state = read_state(folder)
    out = _new_output(out, overwrite)
    cfg = from_dict(TrainConfig, state["config"])
    module = _model_class(state["model_class"]).from_config(_model_config(state["model_config"]))
    if cfg.lora.rank:
        module = lora.add_lora(module, cfg.lora)
    if (folder / "model.safetensors").is_file():
        weights = load_file(folder / "model.safetensors")
    else:
        if not (folder / "zero").is_dir():
            raise UserError(f"{folder} holds neither model.safetensors nor a DeepSpeed zero/ folder; "
                            f"pass a checkpoint folder that spacetime train wrote")
        from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

        with distributed.tensors_only_unpickling():
            weights = get_fp32_state_dict_from_zero_checkpoint(str(folder), tag="zero")
    if use_ema and (folder / "ema.safetensors").is_file():
        weights.update(load_file(folder / "ema.safetensors"))
    module.load_state_dict(weights, strict=True)
    if cfg.lora.rank:
        if adapter is not None:
            lora.save_adapter(module, adapter)
        module = lora.merge(module)
    return save_pretrained_atomically(module, out)


def export_pipeline(checkpoint: str | os.PathLike, dit_folder: str | os.PathLike, out: str | os.PathLike,
                    overwrite: bool = False) -> Path:
    """A complete model folder (as `RUN/pipeline/` at the end of a run) from a DiT checkpoint's run
    settings and its exported weights in `dit_folder`, so that any checkpoint can be sampled."""
    state = read_state(find_checkpoint(checkpoint, "--export"))
    cfg = from_dict(TrainConfig, state["config"])
    if cfg.model.kind != "dit" or not cfg.model.vae or not Path(cfg.model.vae).exists():
        raise UserError(f"--pipeline needs a DiT checkpoint whose run names a VAE folder in model.vae; "
                        f"{checkpoint} is a {cfg.model.kind} run with model.vae={cfg.model.vae!r}")
    return write_model_folder(cfg, Path(dit_folder), _new_output(out, overwrite))


def _new_output(out: str | os.PathLike, overwrite: bool) -> Path:
    """`out` as a Path, or a UserError if it exists and may not be replaced."""
    out = Path(out)
    if out.exists() and not overwrite:
        raise UserError(f"{out} exists; pass --overwrite or choose another folder")
    return out


def measure_latent_stats(vae_folder: Path, dataset, max_clips: int = 256,
                         device: torch.device | str = "cpu") -> tuple[list[float], list[float]]:
    """Per-channel mean and std of a trained VAE's raw latents (posterior means) over up to
    `max_clips` clips spread evenly through `dataset`, written into the folder's config so that
    `encode_latents` hands the DiT latents of about unit variance. A channel whose std is below
    1/1000 of the largest (a collapsed channel) gets that floor, so noise in it is not blown up."""
    from vae3d import CausalVideoVAE

    vae = CausalVideoVAE.from_pretrained(vae_folder).to(device).eval()
    picks = np.linspace(0, len(dataset) - 1, num=min(max_clips, len(dataset))).round().astype(int)
    total = total_sq = count = 0
    with torch.no_grad():
        for index in dict.fromkeys(picks.tolist()):
            item = dataset[index]
            if item is None:
                continue
            raw = vae.encode(item["video"][None].to(device)).mode().double().cpu()  # (1, C, t, h, w)
            total = total + raw.sum(dim=(0, 2, 3, 4))
            total_sq = total_sq + raw.square().sum(dim=(0, 2, 3, 4))
            count += raw[:, 0].numel()
    if not count:
        raise UserError("no readable clips to measure the latent statistics on")
    mean = total / count
    std = (total_sq / count - mean.square()).clamp_min(0).sqrt()
    floor = 1e-3 * float(std.max())
    if float(std.min()) < floor:
        warnings.warn(f"{int((std < floor).sum())} latent channel(s) barely vary; their std is set to {floor:.2e}")
    std = std.clamp_min(max(floor, 1e-12))
    vae.to("cpu").set_latent_stats(mean.float(), std.float())
    save_pretrained_atomically(vae, Path(vae_folder))
    return mean.tolist(), std.tolist()


def save_pretrained_atomically(model, out: Path) -> Path:
    """`model.save_pretrained` into a temporary folder beside `out`, then put it in `out`'s place."""
    tmp = out.with_name(f".tmp_{out.name}")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp)
    return replace_folder(tmp, out)


def write_model_folder(cfg: TrainConfig, dit_folder: Path, out: Path) -> Path:
    """A complete model folder (VAE + trained DiT + text encoders + sampling settings) that
    `spacetime generate --model` loads, native size taken from the largest video bucket."""
    from pipelines.data import LatentCache
    from pipelines.pipeline import SpacetimePipeline

    pipe = SpacetimePipeline.from_parts(cfg.model.vae, dit_folder, cfg.model.text_encoders or (),
                                        fps=cfg.data.fps, context_noise=cfg.dit.context_noise)
    if cfg.data.latent_cache:  # the size the cached latents decode to
        _, _, h, w = LatentCache(cfg.data.latent_cache, random_offset=False)[0]["latents"].shape
        frames, height, width = cfg.data.frames, h * pipe.vae.spatial_factor, w * pipe.vae.spatial_factor
    else:
        videos = [b for b in cfg.data.buckets if b[0] > 1] or [[cfg.data.frames, cfg.data.base_size, cfg.data.base_size]]
        frames, height, width = max(videos, key=lambda b: b[0] * b[1] * b[2])
    pipe.register_to_config(native_frames=frames, height=height, width=width)
    return save_pretrained_atomically(pipe, out)


def _model_class(name: str):
    if name == "VideoDiT":
        from video_dit import VideoDiT

        return VideoDiT
    if name == "CausalVideoVAE":
        from vae3d import CausalVideoVAE

        return CausalVideoVAE
    raise UserError(f"checkpoint holds a {name}; expected a VideoDiT or a CausalVideoVAE")


def _model_config(module_or_config) -> dict:
    """A model's config as plain JSON values, without diffusers' list of the arguments that were left
    at their defaults: `from_config` would reset those, undoing what was set after construction (a
    VAE's latent statistics). Also cleans configs read from checkpoints written with that list."""
    config = getattr(module_or_config, "config", module_or_config)
    config = {k: v for k, v in dict(config).items() if k != "_use_default_values"}
    return json.loads(json.dumps(config, default=list))


# ------------------------------------------------------------------------------------------------
# Logging: progress bar, JSONL, TensorBoard
# ------------------------------------------------------------------------------------------------


class Logger:
    def __init__(self, out: Path, cfg: TrainConfig, world: World, start: int):
        self.on = world.is_main
        self.jsonl = self.tb = self.bar = None
        if not self.on:
            return
        from tqdm.auto import tqdm

        self.jsonl = open(out / "log.jsonl", "a")
        if cfg.tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self.tb = SummaryWriter(str(out / "tensorboard"), purge_step=start + 1 if start else None)
        self.bar = tqdm(total=cfg.steps, initial=start, desc="train", unit="step", dynamic_ncols=True)

    def log(self, record: dict) -> None:
        if not self.on:
            return
        self.jsonl.write(json.dumps(record) + "\n")
        self.jsonl.flush()
        if self.tb is not None:
            for key, value in record.items():
                if key != "step" and isinstance(value, (int, float)):
                    self.tb.add_scalar(f"train/{key}", value, record["step"])

    def progress(self, n: int, loss: float) -> None:
        if self.on:
            self.bar.set_postfix(loss=f"{loss:.4f}", refresh=False)
            self.bar.update(n)

    def message(self, text: str) -> None:
        if self.on:
            self.bar.write(text)

    def close(self) -> None:
        if self.on:
            self.bar.close()
            self.jsonl.close()
            if self.tb is not None:
                self.tb.close()


def write_preview(path: Path, video: torch.Tensor, fps: float) -> None:
    """Write a (B, 3, T, H, W) batch of previews side by side as one mp4 (or a PNG for one frame)."""
    from einops import rearrange

    from pipelines.video_io import tensor_to_frames, write_image, write_video

    row = rearrange(video.float().cpu(), "b c t h w -> c t h (b w)")
    frames = tensor_to_frames(row)
    if frames.shape[0] == 1:
        write_image(path.with_suffix(".png"), frames[0], overwrite=True)
    else:
        write_video(path.with_suffix(".mp4"), frames, fps, overwrite=True)


# ------------------------------------------------------------------------------------------------
# The loop
# ------------------------------------------------------------------------------------------------


def train(cfg: TrainConfig, resume: str | os.PathLike | None = None, stop_at: int | None = None,
          overwrite: bool = False) -> Path:
    """Train as `cfg` says (resuming from a checkpoint or run folder) and return the run folder.
    A new run refuses a folder that holds an earlier run, unless `overwrite` (which clears it).

    `stop_at` ends the run early at that step (the schedule still spans `cfg.steps`), as a crash
    would, after saving a checkpoint; `train(cfg, resume=out)` then continues exactly.
    """
    world = distributed.init_process()
    out = Path(cfg.out)
    checkpoint = find_checkpoint(resume) if resume else None
    if checkpoint is None and not overwrite:
        check_new_run(out)
    dtype = precision_dtype(cfg.precision, world.device)
    ds_config = None
    if cfg.deepspeed:
        ds_config = distributed.deepspeed_config(cfg.deepspeed, world, cfg.data.batch_size, cfg.optim.grad_accum,
                                                 cfg.optim.grad_clip)

    # The models start from the same seed on every rank; after that each rank draws its own
    # randomness, and the generator drives timesteps, noise and given frames.
    torch.manual_seed(cfg.seed)
    task = DiTTask(cfg, world) if cfg.model.kind == "dit" else VAETask(cfg, world)
    dataset, sampler, loader = make_data(cfg, world, task.spatial_multiple, task.temporal_factor)
    started = task.start(dataset) if checkpoint is None else None  # before the optimizer and EMA copy weights
    prepared = task.prepare(dataset)
    module = task.model
    if cfg.gradient_checkpointing:
        module.enable_gradient_checkpointing()
    if cfg.lora.rank:
        from pipelines import lora

        module = lora.add_lora(module, cfg.lora)
    torch.manual_seed(cfg.seed + world.rank)
    np.random.seed(cfg.seed + world.rank)
    random.seed(cfg.seed + world.rank)
    generator = torch.Generator().manual_seed(cfg.seed * 1000003 + world.rank)
    params = [p for p in module.parameters() if p.requires_grad]
    o = cfg.optim
    optimizer = torch.optim.AdamW(params, lr=o.lr, betas=tuple(o.betas), eps=o.eps, weight_decay=o.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: lr_factor(s, o.warmup_steps, cfg.steps, o.schedule, o.min_lr_ratio))
    if ds_config is not None:
        engine = DeepSpeedEngine(module, optimizer, scheduler, world, ds_config)
    else:
        engine = Engine(module, optimizer, scheduler, world, o.grad_clip, o.grad_accum)
    ema = ShardedEMA(engine, cfg.ema_decay) if cfg.ema_decay > 0 else None

    step, data_state, old_lr = 0, None, None
    if checkpoint is not None:
        step, data_state = load_checkpoint(checkpoint, engine, ema, generator, world, task)
        if data_state is not None:
            sampler.load_state_dict(data_state)
        old_lr = engine.set_base_lr(o.lr)  # the config's rate wins over the checkpoint's
    if world.is_main:
        if checkpoint is None and overwrite:
            clear_run(out)
        out.mkdir(parents=True, exist_ok=True)
        (out / "config.yaml").write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False))
    distributed.barrier(world)

    logger = Logger(out, cfg, world, step)
    logger.message(f"{type(module).__name__}: {sum(p.numel() for p in params) / 1e6:.2f}M trainable parameters, "
                   f"{len(dataset)} clips, {len(sampler)} batches per epoch per rank, {world.world_size} process(es), "
                   f"{'DeepSpeed ZeRO-' + str(engine.stage) if ds_config else 'plain PyTorch'}"
                   + (f", resumed at step {step}" if step else ""))
    for line in (started, prepared):
        if line:
            logger.message(line)
    if old_lr is not None:
        logger.message(f"learning rate {old_lr:g} -> {o.lr:g} (optim.lr), from step {step}")
    batches = forever(loader, dataset)
    end = min(cfg.steps, stop_at) if stop_at else cfg.steps
    clips, tic = 0, time.perf_counter()
    batch = None
    while step < end:
        losses, lr = [], engine.lr
        for _ in range(o.grad_accum):
            batch = next(batches)
            if isinstance(task, VAETask):
                task.step = step
            with distributed.autocast(world.device, dtype):
                loss = task.loss(engine.model, batch, generator)
            engine.backward(loss)
            engine.step()
            task.after_backward()
            losses.append(loss.detach().float().item())
            clips += len(batch["path"])
            data_state = batch.get("sampler_state") or data_state
        step += 1
        if ema is not None:
            ema.update()
        loss_value = distributed.all_mean(world, sum(losses) / len(losses))
        logger.progress(1, loss_value)

        if step % cfg.log_every == 0 or step == end:
            elapsed = time.perf_counter() - tic
            logger.log({"step": step, "loss": loss_value, "lr": lr, "grad_norm": engine.grad_norm,
                        "clips_per_s": clips * world.world_size / max(elapsed, 1e-9), "time": time.time()})
            clips, tic = 0, time.perf_counter()
        if step % cfg.save_every == 0 or step == end:
            save_checkpoint(out, step, cfg, engine, ema, generator, data_state, world, task)
        if cfg.sample_every and step % cfg.sample_every == 0:
            module_for_preview = engine.model
            preview_gen = torch.Generator().manual_seed(cfg.seed)
            with distributed.autocast(world.device, dtype):
                video = task.sample(module_for_preview, batch, preview_gen)
            if world.is_main:
                (out / "samples").mkdir(exist_ok=True)
                write_preview(out / "samples" / f"step_{step:08d}", video, cfg.data.fps)
                logger.log({"step": step, "sample": f"samples/step_{step:08d}"})

    logger.log({"step": step, "data": dataset.summary()})
    logger.message(f"data: {dataset.summary()}")
    logger.close()
    if step >= cfg.steps and world.is_main:
        export_checkpoint(list_checkpoints(out)[-1], out / "model", use_ema=ema is not None, overwrite=True,
                          adapter=out / "lora" if cfg.lora.rank else None)
        if cfg.model.kind == "dit" and Path(cfg.model.vae).exists():
            write_model_folder(cfg, out / "model", out / "pipeline")
        if cfg.model.kind == "vae":
            if cfg.vae.train_encoder:
                dataset.colour_augment = False  # the statistics of the clips as they are, as the DiT sees them
                measure_latent_stats(out / "model", dataset, device=world.device)
                print(f"latent statistics measured and stored in {out / 'model' / 'config.json'}", flush=True)
            else:
                print(f"the encoder was kept: {out / 'model'} has {cfg.model.init}'s latent statistics", flush=True)
    distributed.barrier(world)
    return out
