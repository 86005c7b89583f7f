"""Training losses for CausalVideoVAE: reconstruction, KL, and a 3D patch discriminator.

    loss_fn = VAELoss(reconstruction="l1", kl_weight=1e-6, disc_weight=0.1, disc_start=2000)
    reconstruction, posterior = vae(video, generator=g)          # the differentiable pass
    out = loss_fn(video, reconstruction, posterior, step=step)
    out["loss"].backward()            # VAE side: rec + kl_weight * KL (+ disc_weight * adversarial)
    out["disc_loss"].backward()       # discriminator side (0 before disc_start); or both at once

The two losses touch disjoint parameters: the adversarial term of "loss" reaches the VAE only
(the discriminator is applied with its weights detached), and "disc_loss" sees the
reconstruction detached, so it reaches the discriminator only. They can be summed and stepped
with one optimizer over both parameter sets, or stepped by two optimizers (`loss_fn.discriminator`
holds the discriminator's parameters).

Images and videos mix in one batch by passing lists: `video`, `reconstruction` and `posterior`
may each be a list of groups (e.g. a (B1, 3, 1, H, W) group of stills and a (B2, 3, 17, H, W)
group of clips); each term is then the element-weighted mean over all groups.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.func import functional_call

from vae3d.model import DiagonalGaussian


class PatchDiscriminator3D(nn.Module):
    """A PatchGAN over space-time: (B, 3, T, H, W) -> logits (B, 1, T, H / 2^n, W / 2^n) - ish.

    Each layer is a (3, 4, 4) convolution, stride 2 in space and 1 in time (padding 1 in time,
    so a one-frame image works), GroupNorm and LeakyReLU; the last conv gives one logit per patch.
    Frames need at least 2^(num_layers + 1) pixels on each side.
    """

    def __init__(self, in_channels: int = 3, channels: int = 64, num_layers: int = 3):
        super().__init__()
        layers: list[nn.Module] = [nn.Conv3d(in_channels, channels, (3, 4, 4), (1, 2, 2), (1, 1, 1)),
                                   nn.LeakyReLU(0.2)]
        c = channels
        for i in range(1, num_layers):
            c_out = channels * min(2 ** i, 8)
            layers += [nn.Conv3d(c, c_out, (3, 4, 4), (1, 2, 2), (1, 1, 1), bias=False),
                       nn.GroupNorm(min(32, c_out // 4) or 1, c_out), nn.LeakyReLU(0.2)]
            c = c_out
        layers += [nn.Conv3d(c, 1, (3, 3, 3), 1, 1)]
        self.net = nn.Sequential(*layers)
        self.min_size = 2 ** num_layers

    def forward(self, video: torch.Tensor) -> torch.Tensor:
        if min(video.shape[-2:]) < self.min_size:
            raise ValueError(f"the discriminator needs frames of at least {self.min_size}x{self.min_size} pixels, "
                             f"got {video.shape[-1]}x{video.shape[-2]}")
        return self.net(video)  # (B, 1, T, h, w)


def _as_list(x):
    return list(x) if isinstance(x, (list, tuple)) else [x]


class VAELoss(nn.Module):
    """Reconstruction (L1 or L2) + kl_weight * KL + disc_weight * adversarial (after disc_start).

    `first_frame_weight` weighs the first frame's mean error against 1 for each other frame (the
    first frame is encoded on its own, and is what image-to-video starts from; in a 17-frame clip
    it is otherwise 1/17 of the loss). A clip's reconstruction term is then the weighted mean of
    its per-frame errors; 1 gives the plain mean over all pixels.

    The KL term is the KL divergence to N(0, I) summed over a sample's latent elements and divided
    by the sample's pixel elements, so that kl_weight means what it means in latent-diffusion VAE
    recipes (where the reconstruction is summed over pixels): 1e-6 is a usual value.
    """

    def __init__(self, reconstruction: str = "l1", kl_weight: float = 1e-6, disc_weight: float = 0.0,
                 disc_start: int = 1000, disc_channels: int = 64, disc_layers: int = 3,
                 first_frame_weight: float = 1.0):
        super().__init__()
        if reconstruction not in ("l1", "l2"):
            raise ValueError(f"reconstruction={reconstruction!r}: use 'l1' or 'l2'")
        if kl_weight < 0 or disc_weight < 0 or disc_start < 0:
            raise ValueError("kl_weight, disc_weight and disc_start must be >= 0")
        if first_frame_weight <= 0:
            raise ValueError(f"first_frame_weight={first_frame_weight}: use a positive weight (1: like any other frame)")
        self.reconstruction = reconstruction
        self.first_frame_weight = float(first_frame_weight)
        self.kl_weight = float(kl_weight)
        self.disc_weight = float(disc_weight)
        self.disc_start = int(disc_start)
        self.discriminator = PatchDiscriminator3D(3, disc_channels, disc_layers) if disc_weight > 0 else None

    def discriminator_active(self, step: int) -> bool:
        return self.discriminator is not None and step >= self.disc_start

    def _reconstruction(self, video: torch.Tensor, reconstruction: torch.Tensor) -> torch.Tensor:
        diff = reconstruction.float() - video.float()
        error = diff.abs() if self.reconstruction == "l1" else diff.square()
        if self.first_frame_weight == 1.0:
            return error.mean()
        per_frame = error.mean(dim=(0, 1, 3, 4))  # (T,)
        weights = torch.ones_like(per_frame)
        weights[0] = self.first_frame_weight
        return (weights * per_frame).sum() / weights.sum()

    def forward(self, video, reconstruction, posterior, step: int = 0) -> dict[str, torch.Tensor]:
        """Returns a dict of scalar tensors: "loss" (the VAE's objective), "rec", "kl", "gan",
        "disc_loss" (the discriminator's hinge loss; 0 while it is off)."""
        videos, recons, posts = _as_list(video), _as_list(reconstruction), _as_list(posterior)
        if not len(videos) == len(recons) == len(posts):
            raise ValueError(f"got {len(videos)} video groups, {len(recons)} reconstructions and {len(posts)} posteriors")
        for v, r in zip(videos, recons):
            if v.shape != r.shape:
                raise ValueError(f"reconstruction shape {tuple(r.shape)} differs from the video's {tuple(v.shape)}")
        weights = [v.numel() for v in videos]
        total = float(sum(weights))
        rec = sum(w / total * self._reconstruction(v, r) for w, v, r in zip(weights, videos, recons))
        kl = sum(w / total * (p.kl().float() / v[0].numel()).mean() for w, v, p in zip(weights, videos, posts))
        loss = rec + self.kl_weight * kl
        zero = rec.new_zeros(())
        gan, disc_loss = zero, zero
        if self.discriminator_active(step):
            frozen = {k: p.detach() for k, p in self.discriminator.named_parameters()}
            gan = sum(w / total * -functional_call(self.discriminator, frozen, (r,)).float().mean()
                      for w, r in zip(weights, recons))
            loss = loss + self.disc_weight * gan
            disc_loss = self.discriminator_loss(videos, recons)
        return {"loss": loss, "rec": rec.detach(), "kl": kl.detach(), "gan": gan.detach(), "disc_loss": disc_loss}

    def discriminator_loss(self, video, reconstruction) -> torch.Tensor:
        """Hinge loss of the discriminator: real clips above +1, reconstructions (detached) below -1."""
        if self.discriminator is None:
            raise ValueError("this VAELoss has no discriminator (disc_weight=0)")
        videos, recons = _as_list(video), _as_list(reconstruction)
        weights = [v.numel() for v in videos]
        total = float(sum(weights))
        loss = 0.0
        for w, v, r in zip(weights, videos, recons):
            real = self.discriminator(v).float()
            fake = self.discriminator(r.detach()).float()
            loss = loss + w / total * 0.5 * (F.relu(1.0 - real).mean() + F.relu(1.0 + fake).mean())
        return loss


__all__ = ["DiagonalGaussian", "PatchDiscriminator3D", "VAELoss"]
