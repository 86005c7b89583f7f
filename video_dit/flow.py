"""Rectified flow (SD3): the noise process, the training loss and the samplers.

    x_t = (1 - t) * x0 + t * e,      e ~ N(0, I),      t in [0, 1] (0 clean, 1 pure noise)
    target velocity v = e - x0,      so x0 = x_t - t * v  and  dx_t / dt = v.

The model is any callable `model(x_t, timestep, **cond) -> v` taking (B, C, T, H, W) latents and
(B, T) per-frame timesteps; this module knows nothing else about it, but that a model built to
read the given frames' mask (a VideoDiT with `given_reference`) is also passed `given_mask=`.

Given frames (image-to-video, extension, the long-video sampler, interpolation) are frames whose
latents are known: they are fed at timestep `context_noise` (0 = clean), excluded from the loss
(or weighed by `given_weight`), and come out of `sample` exactly as they went in. Out of the loss,
that level becomes the model's mark of a given frame, so `sample` never shows it a frame being
sampled at that level (`clear_of_context`).
"""

from __future__ import annotations

import math
from typing import Callable

import torch
from einops import rearrange

NUM_TRAIN_TIMESTEPS = 1000  # only used to reproduce diffusers' schedule to the last bit
CONTEXT_BAND = 0.005  # how close to the context level a sampled frame's timestep may not come


# --------------------------------------------------------------------------------------------
# Timesteps
# --------------------------------------------------------------------------------------------


def sample_timesteps(
    n: int,
    *,
    mode: str = "logit_normal",
    mean: float = 0.0,
    std: float = 1.0,
    shift: float = 1.0,
    uniform_share: float = 0.0,
    generator: torch.Generator | None = None,
    device=None,
) -> torch.Tensor:
    """n training timesteps in (0, 1): "logit_normal" (sigmoid of N(mean, std), SD3) or "uniform".

    `shift` > 1 moves them towards the noise end with the same map the sampler uses. A share
    `uniform_share` of them (each with that probability) is drawn uniformly from (0, 1) instead, not
    shifted: a distribution pushed far towards noise then still covers the low noise levels at
    which sampling ends.
    """
    if mode == "logit_normal":
        t = torch.sigmoid(mean + std * torch.randn(n, generator=generator, device=device))
    elif mode == "uniform":
        t = torch.rand(n, generator=generator, device=device)
    else:
        raise ValueError(f"timestep sampling mode {mode!r}; expected 'logit_normal' or 'uniform'")
    if not 0.0 <= uniform_share <= 1.0:
        raise ValueError(f"uniform_share={uniform_share}; expected a share between 0 and 1")
    t = apply_shift(t, shift)
    if uniform_share > 0:  # no extra random numbers otherwise: runs without it draw as before
        pick = torch.rand(n, generator=generator, device=device) < uniform_share
        t = torch.where(pick, torch.rand(n, generator=generator, device=device), t)
    return t


def apply_shift(t: torch.Tensor | float, shift: float):
    """The timestep shift of SD3: t -> shift * t / (1 + (shift - 1) * t); shift 1 is the identity."""
    return shift * t / (1 + (shift - 1) * t)


def shift_for_tokens(
    num_tokens: int,
    base_shift: float = 0.5,
    max_shift: float = 1.15,
    base_tokens: int = 256,
    max_tokens: int = 4096,
) -> float:
    """Timestep shift that grows with the number of tokens (Flux's resolution-dependent shift).

    mu rises linearly from `base_shift` at `base_tokens` to `max_shift` at `max_tokens` (and
    continues on the same line beyond), and the shift is exp(mu): more tokens keep more of the
    schedule at high noise, where a large image or a long clip is still undecided.
    """
    if num_tokens <= 0:
        raise ValueError(f"num_tokens={num_tokens}; expected a positive token count")
    slope = (max_shift - base_shift) / (max_tokens - base_tokens)
    mu = base_shift + slope * (num_tokens - base_tokens)
    return math.exp(mu)


def sigmas(num_steps: int, shift: float = 1.0) -> torch.Tensor:
    """The sampling schedule: num_steps + 1 decreasing sigmas from 1 to a final 0.

    Identical to diffusers' FlowMatchEulerDiscreteScheduler(shift=shift).set_timesteps(num_steps):
    num_steps points spaced evenly from 1 down to the scheduler's smallest training sigma (itself
    shifted), each shifted, then a 0.
    """
    if num_steps < 1:
        raise ValueError(f"num_steps={num_steps}; expected at least 1")
    sigma_min = apply_shift(torch.tensor(1.0 / NUM_TRAIN_TIMESTEPS, dtype=torch.float32), shift).item()
    s = torch.linspace(1.0, sigma_min, num_steps, dtype=torch.float64)
    s = apply_shift(s, shift).to(torch.float32)
    return torch.cat([s, torch.zeros(1)])


def clear_of_context(schedule: list[float], context_noise: float, band: float = CONTEXT_BAND) -> list[float]:
    """The schedule with each sigma closer than `band` to `context_noise` moved to the band's near edge.

    A model trained with given frames at timestep `context_noise` and no loss on them learns that
    level as the mark of a given frame, and its estimate for a frame being sampled that arrives
    there is poor: on the default model the clean-latent error at t = 0.05 is ten times that at
    0.045 or 0.055, and a schedule with a step there (35 steps at its shift land on 0.0507) loses
    objects and colours. Moving that one sigma by at most `band` costs nothing measurable. With
    `context_noise <= band` (clean context) nothing moves.
    """
    out = []
    for s in schedule:
        if context_noise > band and abs(s - context_noise) < band:
            s = context_noise + band if s >= context_noise else context_noise - band
        out.append(s)
    return out


# --------------------------------------------------------------------------------------------
# Training
# --------------------------------------------------------------------------------------------


def _per_frame(t: torch.Tensor, frames: int) -> torch.Tensor:
    return t[:, None].expand(-1, frames)


def _broadcast(t: torch.Tensor) -> torch.Tensor:
    """(B, T) per-frame values -> (B, 1, T, 1, 1) to scale (B, C, T, H, W) latents."""
    return rearrange(t, "b t -> b 1 t 1 1")


def training_losses(
    model: Callable,
    x0: torch.Tensor,
    cond: dict | None = None,
    given_mask: torch.Tensor | None = None,
    context_noise: float = 0.0,
    given_weight: float = 0.0,
    timestep_sampling: str = "logit_normal",
    mean: float = 0.0,
    std: float = 1.0,
    shift: float = 1.0,
    uniform_share: float = 0.0,
    sample_space: bool = False,
    loss_weight: torch.Tensor | None = None,
    reference_only: float = 0.0,
    generator: torch.Generator | None = None,
) -> dict:
    """Rectified-flow loss on a batch of clean latents x0 (B, C, T, H, W).

    cond: keyword arguments for the model (text_states, text_masks). given_mask: (B, T) bool, True
    for frames that are given (conditioning): they are noised only to `context_noise`, and their
    error counts with weight `given_weight` (0: the loss ignores them). sample_space: the error of
    the clean sample the velocity implies, x0 - (x_t - t v) = t (v_target - v), rather than of the
    velocity itself (which weighs a frame at noise level t by 1 / t^2 against that): for models
    that predict the clean sample, so that low noise levels do not swamp the rest. loss_weight: an element weight that broadcasts to
    x0 (such as `motion_loss_weight`); the loss is then the weighted mean, so the weight moves
    emphasis between elements without changing the loss's scale. reference_only: for a model with
    a given-frame reference path (VideoDiT `given_reference`), the share of samples with given
    frames in which those frames reach the model only through that path: its main input shows
    them as fresh noise at timestep 1 (as if they were to be made) while the reference reads them
    as given. A model that already copies given frames through attention leaves a new reference
    path unused; hiding them there makes the path carry them. Returns dict(loss=scalar,
    loss_per_sample=(B,), timesteps=(B,)).
    """
    b, _, frames = x0.shape[:3]
    cond = cond or {}
    if given_weight < 0:
        raise ValueError(f"given_weight={given_weight}; expected a weight >= 0 (0 leaves given frames out)")
    if not 0 <= reference_only <= 1:
        raise ValueError(f"reference_only={reference_only}; expected a share in [0, 1]")
    if reference_only > 0 and not takes_given_mask(model):
        raise ValueError("reference_only > 0 needs a model with a given-frame reference path "
                         "(VideoDiT given_reference=True)")
    t = sample_timesteps(b, mode=timestep_sampling, mean=mean, std=std, shift=shift, uniform_share=uniform_share,
                         generator=generator)
    t = t.to(device=x0.device)
    noise = torch.randn(x0.shape, generator=generator, dtype=torch.float32).to(x0)
    t_frames = _per_frame(t, frames)  # (B, T)
    weight = torch.ones(b, frames, device=x0.device)
    if given_mask is not None:
        if tuple(given_mask.shape) != (b, frames):
            raise ValueError(f"given_mask has shape {tuple(given_mask.shape)}; expected ({b}, {frames})")
        given_mask = given_mask.to(device=x0.device, dtype=torch.bool)
        t_frames = torch.where(given_mask, torch.full_like(t_frames, context_noise), t_frames)
        weight = torch.where(given_mask, torch.full_like(weight, given_weight), weight)
    tt = _broadcast(t_frames).to(x0.dtype)
    x_t = (1 - tt) * x0 + tt * noise
    given_kwargs = _given_kwargs(model, given_mask)
    if reference_only > 0 and given_mask is not None:
        # Drawn after everything else, so a run with reference_only 0 draws exactly what it did.
        chosen = torch.rand(b, generator=generator).to(x0.device) < reference_only
        hide = given_mask & chosen[:, None]  # (B, T)
        if hide.any():
            fresh = torch.randn(x0.shape, generator=generator, dtype=torch.float32).to(x0)
            given_kwargs["reference"] = x_t
            noise = torch.where(_broadcast(hide), fresh, noise)
            x_t = torch.where(_broadcast(hide), fresh, x_t)  # timestep 1: the noise itself
            t_frames = torch.where(hide, torch.ones_like(t_frames), t_frames)
    target = noise - x0
    v = model(x_t, t_frames, **cond, **given_kwargs)
    element_weight = _broadcast(weight).expand_as(x0).float()  # (B, C, T, H, W): given_weight on given frames
    if loss_weight is not None:
        try:
            fits = loss_weight.ndim == 5 and torch.broadcast_shapes(loss_weight.shape, x0.shape) == x0.shape
        except RuntimeError:
            fits = False
        if not fits:
            raise ValueError(f"loss_weight has shape {tuple(loss_weight.shape)}; expected one that broadcasts to "
                             f"the latents {tuple(x0.shape)}, such as ({b}, 1, {frames}, H, W)")
        element_weight = element_weight * loss_weight.to(device=x0.device, dtype=torch.float32)
    err = (v.float() - target.float()) ** 2 * element_weight
    if sample_space:
        err = err * _broadcast(t_frames.float()) ** 2
    counted = element_weight.flatten(1).sum(dim=1)  # (B,): elements in the loss, or their weight
    loss_per_sample = err.flatten(1).sum(dim=1) / counted.clamp(min=1e-6)
    loss = err.sum() / counted.sum().clamp(min=1e-6)
    return dict(loss=loss, loss_per_sample=loss_per_sample, timesteps=t)


MOTION_WEIGHT_CAP = 4.0  # motion_loss_weight: an element counts at most this many clip-means of change
MOTION_FLOOR = 0.01  # ... and a clip whose mean change is below this share of its spread counts as still


def motion_loss_weight(x0: torch.Tensor, strength: float) -> torch.Tensor:
    """An element weight (B, 1, T, H, W) that puts more of the loss where the clip changes.

    Each latent element's change is its distance (mean over channels) from the clip's median over
    time at that place (the mean of the two middle values for an even number of frames); the
    weight is 1 + strength * min(change / the clip's mean change, 4), where the mean change is
    taken as at least 1% of the clip's standard deviation, so that the noise of a still clip is
    not mistaken for motion. On a still background with a moving object the object's elements
    weigh up to 1 + 4 * strength and the background 1; where everything moves (a camera pan) the
    weight spreads over the whole frame, and a single frame (T = 1) gets weight 1 everywhere.
    Small subjects then decide more of the loss than their area would give them.
    """
    if strength < 0:
        raise ValueError(f"motion weight strength={strength}; expected a number >= 0")
    x = x0.detach().float()
    frames = x.sort(dim=2).values
    median = (frames[:, :, (x.shape[2] - 1) // 2] + frames[:, :, x.shape[2] // 2])[:, :, None] / 2
    change = (x - median).abs().mean(dim=1, keepdim=True)  # (B, 1, T, H, W)
    floor = MOTION_FLOOR * x.flatten(1).std(dim=1).clamp(min=1e-6)  # (B,)
    mean_change = torch.maximum(change.mean(dim=(2, 3, 4), keepdim=True), floor[:, None, None, None, None])
    return 1.0 + strength * (change / mean_change).clamp(max=MOTION_WEIGHT_CAP)


def channel_loss_weight(sensitivity: torch.Tensor, power: float) -> torch.Tensor:
    """An element weight (1, C, 1, 1, 1) that weighs each latent channel's error by how much the
    decoder's pixels move with it (`CausalVideoVAE.channel_sensitivity`), raised to `power` and
    scaled to mean 1, so the loss keeps its scale. power 1 makes the latent loss a linearised
    pixel loss; 0 weighs every channel alike (what per-channel normalisation alone gives);
    between them, the channels that carry the picture count more without the rest being ignored.
    A channel the decoder does not read at all (sensitivity 0) gets weight 0 for any power > 0.
    """
    if power < 0:
        raise ValueError(f"channel weight power={power}; expected a number >= 0 (0 weighs channels alike)")
    sensitivity = torch.as_tensor(sensitivity, dtype=torch.float32).flatten()
    if (sensitivity.numel() == 0 or not bool(torch.isfinite(sensitivity).all()) or bool((sensitivity < 0).any())
            or not bool((sensitivity > 0).any())):
        raise ValueError(f"channel sensitivities must be finite and >= 0, and not all 0; got {sensitivity.tolist()}")
    weight = sensitivity.pow(power)
    return (weight / weight.mean()).view(1, -1, 1, 1, 1)


# --------------------------------------------------------------------------------------------
# Sampling
# --------------------------------------------------------------------------------------------


def takes_given_mask(model) -> bool:
    """Whether `model` is a VideoDiT built with `given_reference` (which reads the given frames'
    mask), looking through the wrappers that hold one (DeepSpeed, DDP, torch.compile, PEFT)."""
    for _ in range(6):
        if model is None:
            break
        config = getattr(model, "config", None)
        if isinstance(config, dict) and config.get("given_reference"):
            return True
        model = next((getattr(model, name) for name in ("module", "_orig_mod", "base_model", "model")
                      if isinstance(getattr(model, name, None), torch.nn.Module)), None)
    return False


def _given_kwargs(model, given_mask: torch.Tensor | None) -> dict:
    """given_mask=... for a model that takes it, nothing for any other callable."""
    return dict(given_mask=given_mask) if given_mask is not None and takes_given_mask(model) else {}


def _cat_text(cond: dict, uncond: dict) -> dict:
    """Stack conditional and unconditional text along the batch, padding each encoder to one length."""
    states, masks = [], []
    cm = cond.get("text_masks") or [None] * len(cond["text_states"])
    um = uncond.get("text_masks") or [None] * len(uncond["text_states"])
    for s1, m1, s2, m2 in zip(cond["text_states"], cm, uncond["text_states"], um):
        length = max(s1.shape[1], s2.shape[1])
        pad_s, pad_m = [], []
        for s, m in ((s1, m1), (s2, m2)):
            if m is None:
                m = torch.ones(s.shape[:2], dtype=torch.bool, device=s.device)
            extra = length - s.shape[1]
            pad_s.append(torch.nn.functional.pad(s, (0, 0, 0, extra)))
            pad_m.append(torch.nn.functional.pad(m.to(torch.bool), (0, extra), value=False))
        states.append(torch.cat(pad_s))
        masks.append(torch.cat(pad_m))
    return dict(text_states=states, text_masks=masks)


def rescale_guidance(
    x: torch.Tensor,
    t: torch.Tensor,
    guided: torch.Tensor,
    cond: torch.Tensor,
    strength: float,
    sampled: torch.Tensor | None = None,
) -> torch.Tensor:
    """Guidance rescale (Lin et al. 2024, "Common Diffusion Noise Schedules and Sample Steps Are
    Flawed"), applied to the clean estimates x0 = x - t v.

    A large guidance scale stretches the guided estimate away from the conditional one; on textured
    backgrounds that shows as a brighter, harsher clip. The guided estimate is scaled so its standard
    deviation over the frames being sampled matches the conditional estimate's, and `strength` mixes
    that with the unscaled one (0: unchanged, 1: fully rescaled). One factor per clip, so the
    relations between frames stay as guidance made them.

    x: (B, C, T, H, W) current latents; t: (B, T) each frame's timestep; guided, cond: velocities
    of the latents' shape; sampled: (B, T) bool, the frames the statistics are taken over (None:
    all). Returns the velocity of the rescaled estimate; frames at t = 0 keep `guided`, and a guided
    estimate without spread is left as it is.
    """
    if not 0.0 <= strength <= 1.0:
        raise ValueError(f"guidance_rescale={strength}; expected a strength between 0 and 1")
    if strength == 0.0:
        return guided
    tt = _broadcast(t.float())
    xf = x.float()
    weight = torch.ones_like(t, dtype=torch.float32) if sampled is None else sampled.float()
    weight = _broadcast(weight).expand_as(xf)
    dims = tuple(range(1, x.ndim))

    def std(v: torch.Tensor) -> torch.Tensor:  # (B, 1, 1, 1, 1) over the weighted elements
        total = weight.sum(dims, keepdim=True).clamp(min=1.0)
        mean = (v * weight).sum(dims, keepdim=True) / total
        return (((v - mean) ** 2 * weight).sum(dims, keepdim=True) / total).sqrt()

    x0_guided = xf - tt * guided.float()
    spread = std(x0_guided)
    ratio = torch.where(spread > 1e-6, std(xf - tt * cond.float()) / spread.clamp(min=1e-6), torch.ones_like(spread))
    scale = 1.0 - strength + strength * ratio
    v = (xf - scale * x0_guided) / tt.clamp(min=1e-6)
    return torch.where(tt > 0, v, guided.float()).to(guided.dtype)


def check_guidance_interval(interval) -> tuple[float, float]:
    """(low, high) noise levels, 0 <= low < high <= 1, between which guidance applies."""
    try:
        lo, hi = (float(v) for v in interval)
    except (TypeError, ValueError):
        raise ValueError(f"guidance_interval={interval!r}; expected two noise levels (low, high), e.g. (0.3, 1.0)") from None
    if not 0.0 <= lo < hi <= 1.0:
        raise ValueError(f"guidance_interval=({lo:g}, {hi:g}); expected 0 <= low < high <= 1, e.g. (0.3, 1.0)")
    return lo, hi


def sample(
    model: Callable,
    noise: torch.Tensor,
    cond: dict | None = None,
    uncond: dict | None = None,
    guidance: float = 5.0,
    num_steps: int = 30,
    shift: float = 1.0,
    guidance_rescale: float = 0.0,
    guidance_interval: tuple[float, float] = (0.0, 1.0),
    given: torch.Tensor | None = None,
    given_mask: torch.Tensor | None = None,
    context_noise: float = 0.0,
    method: str = "euler",
    callback_on_step_end: Callable | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Integrate dx/dt = v from t = 1 (noise) to t = 0 on the `sigmas(num_steps, shift)` schedule.

    cond / uncond: model keyword arguments (text_states, text_masks) for the prompt and for the
    empty prompt; with `uncond` and guidance != 1 the velocity is v_u + guidance * (v_c - v_u),
    both evaluated in one batched call, then rescaled by `guidance_rescale` (`rescale_guidance`;
    0 leaves it); only on steps that start from a noise level within `guidance_interval` (low,
    high): the other steps take the prompt's velocity alone (half the batch). given / given_mask: latents (B, C, T, H, W) and a (B, T)
    bool mask of frames to hold fixed; they are fed at timestep `context_noise` (with noise fixed
    once from `generator`) and returned exactly as given. method: "euler" or "heun" (second order,
    Euler on the last step). callback_on_step_end(step, sigma, latents) may return new latents.
    Pass the model's context_noise also when nothing is given: the schedule keeps clear of it.
    """
    if method not in ("euler", "heun"):
        raise ValueError(f"method={method!r}; expected 'euler' or 'heun'")
    if not 0.0 <= guidance_rescale <= 1.0:
        raise ValueError(f"guidance_rescale={guidance_rescale}; expected a strength between 0 and 1")
    b, _, frames = noise.shape[:3]
    cond = cond or {}
    x = noise.clone()
    if given_mask is not None:
        if given is None or given.shape != noise.shape:
            raise ValueError(
                f"given latents must have the noise's shape {tuple(noise.shape)} when given_mask is set"
            )
        if tuple(given_mask.shape) != (b, frames):
            raise ValueError(f"given_mask has shape {tuple(given_mask.shape)}; expected ({b}, {frames})")
        given_mask = given_mask.to(device=noise.device, dtype=torch.bool)
        keep = _broadcast(given_mask)  # (B, 1, T, 1, 1)
        context_noise_draw = torch.randn(noise.shape, generator=generator, dtype=torch.float32).to(noise)
        given_in = (1 - context_noise) * given + context_noise * context_noise_draw
    use_cfg = uncond is not None and guidance != 1.0
    lo, hi = check_guidance_interval(guidance_interval)
    both = _cat_text(cond, uncond) if use_cfg and "text_states" in cond else None
    single = _given_kwargs(model, given_mask)
    double = _given_kwargs(model, None if given_mask is None else torch.cat([given_mask, given_mask]))

    def velocity(x: torch.Tensor, sigma: float, guided: bool) -> torch.Tensor:
        t = torch.full((b, frames), float(sigma), device=x.device)
        if given_mask is not None:
            x = torch.where(keep, given_in, x)
            t = torch.where(given_mask, torch.full_like(t, context_noise), t)
        if not use_cfg or not guided:
            return model(x, t, **cond, **single)
        if both is not None:
            v_c, v_u = model(torch.cat([x, x]), torch.cat([t, t]), **both, **double).chunk(2)
        else:
            v_c, v_u = model(x, t, **cond, **single), model(x, t, **uncond, **single)
        guided = v_u + guidance * (v_c - v_u)
        return rescale_guidance(x, t, guided, v_c, guidance_rescale, None if given_mask is None else ~given_mask)

    schedule = clear_of_context(sigmas(num_steps, shift).tolist(), context_noise)
    for i in range(num_steps):
        s, s_next = schedule[i], schedule[i + 1]
        guided = lo <= s <= hi  # one decision per step, by the level it starts from (Heun too)
        v = velocity(x, s, guided)
        if method == "heun" and s_next > 0:
            x_euler = x + (s_next - s) * v
            v = 0.5 * (v + velocity(x_euler, s_next, guided))
        x = x + (s_next - s) * v
        if callback_on_step_end is not None:
            new = callback_on_step_end(i, s_next, x)
            if new is not None:
                x = new
    if given_mask is not None:
        x = torch.where(keep, given, x)
    return x
