"""CausalVideoVAE: a causal 3D convolutional video VAE.

Read top to bottom: the diagonal Gaussian posterior, the layers (causal 3D convolution, per-frame
RMS norm, residual block, per-frame attention, down- and up-sampling), the encoder and decoder,
the model with its encode / decode API, then the size presets.

Time is causal everywhere: every 3D convolution pads time on the past side only, and every
normalisation works within one frame and one pixel (an RMS norm over channels), so an output frame
depends on its own input frame and the frames before it, never on later ones. That is what makes
chunk-by-chunk processing exact: a convolution that keeps its last `k - 1` input frames (its
"cache") between chunks sees exactly what it would see in one pass over the whole clip.

The first frame is encoded on its own: each temporal down-sampling passes frame 0 through and
merges the frames after it in pairs, so 1 + 4k frames become 1 + k latent frames (temporal factor
4), and a still image is a one-frame video. The decoder mirrors it: latent frame 0 becomes one
frame, every later latent frame four.

The default layout follows Wan 2.1's VAE (base 96 channels, multipliers (1, 2, 4, 4), 2 residual
blocks per level, temporal down-sampling at the last two levels, 16 latent channels, channel RMS
norm, a per-frame attention block in the middle) with the same tensor shapes, so its public
weights load through a key mapping (`vae3d.wan.load_wan_state_dict`).

Chunking, tiling and the streaming encoder / decoder live in `vae3d.streaming`; this file is the
network and its validated entry points.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin
from einops import rearrange

from video_dit.model import bf16_products_in_fp32  # the DiT's rule for bf16 on CPUs without bf16 units

# A streaming cache: module -> what that module keeps between chunks (its last input frames, or
# for an up-sampler the fact that it has seen the clip's first frame). One dict per clip (and per
# spatial tile); `None` means "one pass over a whole clip that starts at frame 0".
Cache = dict


# ------------------------------------------------------------------------------------------------
# The posterior
# ------------------------------------------------------------------------------------------------


class DiagonalGaussian:
    """A diagonal Gaussian over raw (un-normalised) latents, from the encoder's 2C moment channels."""

    def __init__(self, moments: torch.Tensor):
        # moments: (B, 2C, T, H, W): means, then log-variances
        self.mean, logvar = moments.chunk(2, dim=1)
        self.logvar = logvar.clamp(-30.0, 20.0)
        self.std = torch.exp(0.5 * self.logvar)
        self.var = torch.exp(self.logvar)

    def sample(self, generator: torch.Generator | None = None) -> torch.Tensor:
        device = self.mean.device if generator is None else generator.device
        noise = torch.randn(self.mean.shape, generator=generator, dtype=self.mean.dtype, device=device)
        return self.mean + self.std * noise.to(self.mean.device)

    def mode(self) -> torch.Tensor:
        return self.mean

    def kl(self) -> torch.Tensor:
        """KL divergence to N(0, I), summed over every latent element of a sample: shape (B,)."""
        return 0.5 * (self.mean.square() + self.var - 1.0 - self.logvar).flatten(1).sum(1)


# ------------------------------------------------------------------------------------------------
# Layers
# ------------------------------------------------------------------------------------------------


def _fast_path(x: torch.Tensor, weight: torch.Tensor) -> bool:
    """Inference without autograd or autocast: the layers may write into preallocated buffers."""
    return not (torch.is_grad_enabled() and (x.requires_grad or weight.requires_grad)) and not (
        torch.is_autocast_enabled(x.device.type))


def channels_last(x: torch.Tensor) -> torch.Tensor:
    return x.contiguous(memory_format=torch.channels_last_3d if x.dim() == 5 else torch.channels_last)


def conv(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, stride, padding) -> torch.Tensor:
    """A 2D/3D convolution. On a CPU in fp32 it calls oneDNN directly (PyTorch's own dispatch sends
    batch-1 inputs with N*C*T*H <= 20480 to an im2col kernel several times slower, forward and
    backward), with the weight stored channels-last once so oneDNN does not re-lay it out each call.
    In bf16 (weights or autocast) on a CPU without bf16 units (`video_dit.model.bf16_products_in_fp32`)
    the products run in fp32 and the result is rounded to bf16, as the DiT's `Linear` does:
    PyTorch's bf16 convolutions are an order of magnitude slower than fp32 ones on such CPUs."""
    if bf16_products_in_fp32(x):
        with torch.autocast("cpu", enabled=False):
            y = conv(x.float(), weight.float(), None if bias is None else bias.float(), stride, padding)
        return y.to(torch.bfloat16)
    if (x.device.type == "cpu" and x.dtype == torch.float32 and torch.backends.mkldnn.is_available()
            and torch.backends.mkldnn.enabled and not torch.is_autocast_enabled("cpu")):
        if not weight.is_contiguous(memory_format=torch.channels_last_3d if x.dim() == 5 else torch.channels_last):
            weight.data = channels_last(weight.data)  # same values, stored channels-last from now on
        ones = [1] * (x.dim() - 2)
        return torch.ops.aten.mkldnn_convolution(x, weight, bias, list(padding), list(stride), ones, 1)
    return (F.conv3d if x.dim() == 5 else F.conv2d)(x, weight, bias, stride, padding)


def keep(cache: Cache, key: nn.Module, frames: torch.Tensor) -> None:
    """cache[key] = a copy of frames, reusing the tensor kept there before when it fits."""
    old = cache.get(key)
    if isinstance(old, torch.Tensor) and old.shape == frames.shape and old.dtype == frames.dtype and (
            old.stride() == frames.stride()):
        old.copy_(frames)
    else:
        cache[key] = frames.clone()


class RMSNorm(nn.Module):
    """RMS norm over channels at each pixel of each frame (never mixes frames or pixels)."""

    def __init__(self, channels: int, eps: float = 1e-6):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # x: (B, C, *frame_dims), normalised over C; the channels-last view makes C the last axis
        pattern = "b c t h w -> b t h w c" if x.dim() == 5 else "b c h w -> b h w c"
        y = F.rms_norm(rearrange(x, pattern), (x.shape[1],), self.weight.to(x.dtype), self.eps)
        return rearrange(y, pattern.split(" -> ")[1] + " -> " + pattern.split(" -> ")[0])

    def silu_into(self, x: torch.Tensor, out: torch.Tensor) -> None:
        """out[...] = silu(norm(x)) without autograd, in three passes over memory and no new
        full-size tensor (out is usually a slice of a conv's time-padded input buffer)."""
        xc, oc = rearrange(x, "b c t h w -> b t h w c"), rearrange(out, "b c t h w -> b t h w c")
        scale = torch.linalg.vector_norm(xc, dim=-1, keepdim=True, dtype=torch.float32)  # (B, T, H, W, 1)
        scale = scale.square_().div_(x.shape[1]).add_(self.eps).rsqrt_().to(x.dtype)
        torch.mul(xc, scale, out=oc)
        oc.mul_(self.weight.to(x.dtype))
        F.silu(oc, inplace=True)


class CausalConv3d(nn.Conv3d):
    """A 3D convolution that pads time on the past side only (zeros before the clip's first frame).

    Space is padded symmetrically as usual. With a cache dict, the layer keeps its last
    `kernel_t - 1` input frames there and puts them in front of the next chunk instead of zeros.
    Given `norm`, it computes conv(silu(norm(x))): at inference it writes that activation
    straight into its time-padded input buffer, saving a full-size copy.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int | tuple[int, int, int] = 3):
        kernel = (kernel_size,) * 3 if isinstance(kernel_size, int) else tuple(kernel_size)
        super().__init__(in_channels, out_channels, kernel, padding=(0, kernel[1] // 2, kernel[2] // 2))
        self.time_pad = kernel[0] - 1

    def forward(self, x: torch.Tensor, cache: Cache | None = None, norm: RMSNorm | None = None) -> torch.Tensor:
        # x: (B, C_in, T, H, W) -> (B, C_out, T, H, W)
        p = self.time_pad
        past = None if cache is None or p == 0 else cache.get(self)
        if not _fast_path(x, self.weight):  # differentiable path
            if norm is not None:
                x = F.silu(norm(x))
            if p > 0:
                past = torch.zeros_like(x[:, :, :1]).expand(-1, -1, p, -1, -1) if past is None else past
                x = torch.cat([past.to(x.dtype), x], dim=2)  # (B, C_in, p + T, H, W)
        elif p > 0 or norm is not None:
            b, c, t, h, w = x.shape
            buf = torch.empty((b, c, p + t, h, w), dtype=x.dtype, device=x.device,
                              memory_format=torch.channels_last_3d)  # (B, C_in, p + T, H, W)
            if p > 0:
                buf[:, :, :p] = 0 if past is None else past
            if norm is not None:
                norm.silu_into(x, buf[:, :, p:])
            else:
                buf[:, :, p:] = x
            x = buf
        if cache is not None and p > 0:
            keep(cache, self, x[:, :, -p:])
        if p > 0 and past is None and _fast_path(x, self.weight):
            return self._clip_start(x)
        return conv(x, self.weight, self.bias, self.stride, self.padding)

    def _clip_start(self, padded: torch.Tensor) -> torch.Tensor:
        """The convolution of a clip's first chunk without multiplying its zero padding: output
        frame j < p uses only the last j + 1 temporal taps. Same result, a frame's worth of
        products fewer per layer (what makes short, deep levels cheaper)."""
        p = self.time_pad
        frames = padded[:, :, p:]  # (B, C_in, T, H, W): the real frames
        b, _, t, h, w = frames.shape
        out = torch.empty((b, self.out_channels, t, h, w), dtype=frames.dtype, device=frames.device,
                          memory_format=torch.channels_last_3d)  # (B, C_out, T, H, W)
        for j in range(min(p, t)):
            out[:, :, j : j + 1] = conv(frames[:, :, : j + 1], self._last_taps(j + 1), self.bias, self.stride,
                                        self.padding)
        if t > p:
            out[:, :, p:] = conv(frames, self.weight, self.bias, self.stride, self.padding)
        return out

    def _last_taps(self, n: int) -> torch.Tensor:
        """The weight's last n temporal taps (C_out, C_in, n, kh, kw), channels-last, kept until
        the weight changes."""
        key = (self.weight.data_ptr(), self.weight._version, self.weight.dtype, self.weight.device)
        if getattr(self, "_taps_key", None) != key:
            self._taps_key, self._taps = key, {}
        if n not in self._taps:
            self._taps[n] = channels_last(self.weight.detach()[:, :, -n:].clone())
        return self._taps[n]


class ResBlock(nn.Module):
    """norm -> SiLU -> causal conv -> norm -> SiLU -> causal conv, plus a (1x1x1 if needed) shortcut."""

    def __init__(self, in_channels: int, out_channels: int, eps: float = 1e-6):
        super().__init__()
        self.norm1 = RMSNorm(in_channels, eps)
        self.conv1 = CausalConv3d(in_channels, out_channels, 3)
        self.norm2 = RMSNorm(out_channels, eps)
        self.conv2 = CausalConv3d(out_channels, out_channels, 3)
        self.shortcut = CausalConv3d(in_channels, out_channels, 1) if in_channels != out_channels else None

    def forward(self, x: torch.Tensor, cache: Cache | None = None) -> torch.Tensor:
        # x: (B, C_in, T, H, W) -> (B, C_out, T, H, W)
        h = self.conv1(x, cache, norm=self.norm1)  # conv(silu(norm(x)))
        h = self.conv2(h, cache, norm=self.norm2)
        return h.add_(x if self.shortcut is None else self.shortcut(x))


class FrameAttention(nn.Module):
    """Single-head self-attention among the pixels of each frame (frames never attend to each other)."""

    def __init__(self, channels: int, eps: float = 1e-6):
        super().__init__()
        self.norm = RMSNorm(channels, eps)
        self.to_qkv = nn.Linear(channels, 3 * channels)
        self.proj = nn.Linear(channels, channels)

    def forward(self, x: torch.Tensor, cache: Cache | None = None) -> torch.Tensor:
        # x: (B, C, T, H, W) -> (B, C, T, H, W)
        b, c, t, h, w = x.shape
        tokens = rearrange(self.norm(x), "b c t h w -> (b t) (h w) c")
        q, k, v = rearrange(self.to_qkv(tokens), "n l (three c) -> three n 1 l c", three=3)
        y = F.scaled_dot_product_attention(q, k, v)  # (B*T, 1, H*W, C)
        y = self.proj(rearrange(y, "n 1 l c -> n l c"))
        return x + rearrange(y, "(b t) (h w) c -> b c t h w", b=b, h=h)


class Downsample(nn.Module):
    """Halve H and W (a stride-2 3x3 conv on each frame), and optionally T.

    Temporal halving keeps frame 0 as it is and merges each later pair (2j-1, 2j) with a stride-2
    temporal conv that also sees frame 2j-2, so 1 + 2m frames become 1 + m. Streaming keeps the
    last frame of each chunk; chunks after the first must bring whole pairs.
    """

    def __init__(self, channels: int, spatial: bool = True, temporal: bool = False):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, stride=2) if spatial else None
        self.time_conv = nn.Conv3d(channels, channels, (3, 1, 1), stride=(2, 1, 1)) if temporal else None

    def forward(self, x: torch.Tensor, cache: Cache | None = None) -> torch.Tensor:
        # x: (B, C, T, H, W) -> (B, C, T', H/2, W/2); T' = T (spatial only), (T + 1) / 2 at the
        # clip's start, T / 2 after it
        if self.conv is not None:
            b = x.shape[0]
            frames = channels_last(F.pad(rearrange(x, "b c t h w -> (b t) c h w"), (0, 1, 0, 1)))
            frames = conv(frames, self.conv.weight, self.conv.bias, (2, 2), (0, 0))  # pixel i sees 2i..2i+2
            x = rearrange(frames, "(b t) c h w -> b c t h w", b=b)
        if self.time_conv is None:
            return x
        past = None if cache is None else cache.get(self)
        if past is None:  # the clip starts here: frame 0 passes, then pairs (1, 2), (3, 4), ...
            if x.shape[2] % 2 != 1:
                raise ValueError(f"a clip's first chunk needs an odd number of frames here, got {x.shape[2]}")
            merged = self._merge_pairs(x) if x.shape[2] >= 3 else x[:, :, :0]
            out = torch.cat([x[:, :, :1], merged], dim=2)
        else:
            if x.shape[2] % 2 != 0:
                raise ValueError(f"a chunk after the first needs an even number of frames here, got {x.shape[2]}")
            out = self._merge_pairs(torch.cat([past.to(x.dtype), x], dim=2))
        if cache is not None:
            keep(cache, self, x[:, :, -1:])
        return out

    def _merge_pairs(self, x: torch.Tensor) -> torch.Tensor:
        return conv(x, self.time_conv.weight, self.time_conv.bias, (2, 1, 1), (0, 0, 0))


class Upsample(nn.Module):
    """Optionally double T, then double H and W (nearest) and convolve each frame (3x3).

    Temporal doubling keeps frame 0 as it is; every later frame becomes two, made by a causal
    temporal conv with 2C outputs that sees the two frames before it (frame 0 counted as zeros).
    """

    def __init__(self, channels: int, out_channels: int, spatial: bool = True, temporal: bool = False):
        super().__init__()
        self.spatial = spatial
        self.time_conv = CausalConv3d(channels, 2 * channels, (3, 1, 1)) if temporal else None
        self.conv = nn.Conv2d(channels, out_channels, 3, padding=1)

    def forward(self, x: torch.Tensor, cache: Cache | None = None) -> torch.Tensor:
        # x: (B, C, T, H, W) -> (B, C_out, T', 2H, 2W); T' = T, or 2T - 1 at the clip's start, 2T after
        if self.time_conv is not None:
            starts_clip = cache is None or self not in cache
            if cache is not None:
                cache[self] = True
            later = x[:, :, 1:] if starts_clip else x
            if later.shape[2] > 0:
                pairs = self.time_conv(later, cache)  # (B, 2C, T_later, H, W): both new frames of each
                pairs = rearrange(pairs, "b (two c) t h w -> b c t two h w", two=2)
                b, c, t, _, h, w = pairs.shape
                head = 1 if starts_clip else 0
                doubled = torch.empty((b, c, head + 2 * t, h, w), dtype=x.dtype, device=x.device,
                                      memory_format=torch.channels_last_3d)  # (B, C, T', H, W)
                if head:
                    doubled[:, :, :1] = x[:, :, :1]  # frame 0 passes through once
                rearrange(doubled[:, :, head:], "b c (t two) h w -> b c t two h w", two=2).copy_(pairs)
                x = doubled
        b = x.shape[0]
        frames = rearrange(x, "b c t h w -> (b t) c h w")
        if self.spatial:
            frames = F.interpolate(channels_last(frames), scale_factor=2.0, mode="nearest")
        frames = conv(frames, self.conv.weight, self.conv.bias, (1, 1), (1, 1))
        return rearrange(frames, "(b t) c h w -> b c t h w", b=b)


class LinearShortcut(nn.Module):
    """A linear code beside the convolutional network: each latent cell's block of pixels
    (`temporal` frames x `spatial` x `spatial` pixels x C) maps to its latent channels through one
    matrix, and back through another; both results are added to the network's (the encoder's
    latent means, the decoder's pixels).

    Frame 0 has a latent frame of its own: it enters as a block of `temporal` copies of itself,
    and comes back as the mean of its block's frames. Each block is one latent cell, so the
    shortcut is causal and exact under chunking and tiling. `CausalVideoVAE.fit_linear_shortcut`
    sets both matrices to the principal components of training clips, so that a new VAE starts as
    the best linear code of its size and the convolutions learn what that code misses.
    """

    def __init__(self, channels: int, latent_channels: int, spatial: int, temporal: int):
        super().__init__()
        self.spatial, self.temporal = spatial, temporal
        block = channels * temporal * spatial * spatial
        self.encode_map = nn.Linear(block, latent_channels)
        self.decode_map = nn.Linear(latent_channels, block)

    def _starts_clip(self, cache: Cache | None, key: nn.Module) -> bool:
        starts = cache is None or key not in cache
        if cache is not None:
            cache[key] = True
        return starts

    def blocks(self, x: torch.Tensor, starts_clip: bool = True) -> torch.Tensor:
        """(B, C, T, H, W) -> (B, T', H/s, W/s, C * t * s * s), frame 0 repeated into a block of
        its own when the clip starts here."""
        if starts_clip:
            x = torch.cat([x[:, :, :1].expand(-1, -1, self.temporal, -1, -1), x[:, :, 1:]], dim=2)
        return rearrange(x, "b c (t a) (h p) (w q) -> b t h w (c a p q)", a=self.temporal, p=self.spatial,
                         q=self.spatial)

    def encode(self, x: torch.Tensor, cache: Cache | None = None) -> torch.Tensor:
        # x: (B, C, T, H, W) -> (B, z, T', H/s, W/s)
        code = self.encode_map(self.blocks(x, self._starts_clip(cache, self.encode_map)))
        return rearrange(code, "b t h w z -> b z t h w")

    def decode(self, z: torch.Tensor, cache: Cache | None = None) -> torch.Tensor:
        # z: (B, z, T', h, w) -> (B, C, T, h * s, w * s); T = 1 + t * (T' - 1) at the clip's start
        pixels = self.decode_map(rearrange(z, "b z t h w -> b t h w z"))
        pixels = rearrange(pixels, "b t h w (c a p q) -> b c (t a) (h p) (w q)", a=self.temporal, p=self.spatial,
                           q=self.spatial)
        if self._starts_clip(cache, self.decode_map):
            pixels = torch.cat([pixels[:, :, :self.temporal].mean(dim=2, keepdim=True), pixels[:, :, self.temporal:]],
                               dim=2)
        return pixels


# ------------------------------------------------------------------------------------------------
# Encoder and decoder
# ------------------------------------------------------------------------------------------------


class Encoder(nn.Module):
    """(B, 3, 1 + 4k, H, W) pixels -> (B, 2 * latent_channels, 1 + k, H/8, W/8) moments."""

    def __init__(self, in_channels, channels, num_res_blocks, spatial_down, temporal_down, out_channels,
                 mid_attention, eps):
        super().__init__()
        self.conv_in = CausalConv3d(in_channels, channels[0], 3)
        blocks: list[nn.Module] = []
        widths = [channels[0]] + list(channels)
        for level, (c_in, c_out) in enumerate(zip(widths[:-1], widths[1:])):
            for i in range(num_res_blocks):
                blocks.append(ResBlock(c_in if i == 0 else c_out, c_out, eps))
            if level < len(channels) - 1 and (spatial_down[level] or temporal_down[level]):
                blocks.append(Downsample(c_out, spatial_down[level], temporal_down[level]))
        c = channels[-1]
        blocks += [ResBlock(c, c, eps)] + ([FrameAttention(c, eps)] if mid_attention else []) + [ResBlock(c, c, eps)]
        self.blocks = nn.ModuleList(blocks)
        self.norm_out = RMSNorm(c, eps)
        self.conv_out = CausalConv3d(c, out_channels, 3)

    def forward(self, x: torch.Tensor, cache: Cache | None = None) -> torch.Tensor:
        x = self.conv_in(x, cache)  # (B, C0, T, H, W)
        for block in self.blocks:
            x = block(x, cache)  # down to (B, C_last, T', H', W')
        return self.conv_out(x, cache, norm=self.norm_out)  # (B, 2z, T', H', W')


class Decoder(nn.Module):
    """(B, latent_channels, 1 + k, h, w) latents -> (B, 3, 1 + 4k, 8h, 8w) pixels."""

    def __init__(self, in_channels, channels, num_res_blocks, spatial_up, temporal_up, out_channels,
                 mid_attention, eps):
        super().__init__()
        c = channels[-1]
        self.conv_in = CausalConv3d(in_channels, c, 3)
        blocks: list[nn.Module] = [ResBlock(c, c, eps)] + ([FrameAttention(c, eps)] if mid_attention else [])
        blocks.append(ResBlock(c, c, eps))
        widths = list(reversed(channels))  # level widths, deepest first
        for level, c_out in enumerate(widths):
            for i in range(num_res_blocks + 1):
                blocks.append(ResBlock(c if i == 0 else c_out, c_out, eps))
            c = c_out
            if level < len(widths) - 1 and (spatial_up[level] or temporal_up[level]):
                blocks.append(Upsample(c_out, c_out // 2, spatial_up[level], temporal_up[level]))
                c = c_out // 2
        self.blocks = nn.ModuleList(blocks)
        self.norm_out = RMSNorm(c, eps)
        self.conv_out = CausalConv3d(c, out_channels, 3)

    def forward(self, z: torch.Tensor, cache: Cache | None = None) -> torch.Tensor:
        x = self.conv_in(z, cache)  # (B, C_last, t, h, w)
        for block in self.blocks:
            x = block(x, cache)  # up to (B, C0 / 2 or C0, T, H, W)
        return self.conv_out(x, cache, norm=self.norm_out)  # (B, 3, T, H, W)


# ------------------------------------------------------------------------------------------------
# The model
# ------------------------------------------------------------------------------------------------


class CausalVideoVAE(ModelMixin, ConfigMixin):
    """A causal 3D convolutional VAE for video (B, 3, T, H, W) in [-1, 1].

    Args:
        in_channels: pixel channels (3 for RGB).
        base_channels: width of the first level.
        channel_multipliers: width of each level as a multiple of `base_channels`.
        num_res_blocks: residual blocks per encoder level (the decoder has one more per level).
        spatial_downsample: for each level but the last, whether H and W are halved after it.
        temporal_downsample: for each level but the last, whether T is halved after it (first
            frame kept). The decoder mirrors both lists.
        latent_channels: channels of the latent video.
        mid_attention: a per-frame self-attention block in the middle of encoder and decoder.
        norm_eps: epsilon of the RMS norms.
        latents_mean, latents_std: per-channel statistics of raw latents, so that
            `(raw - mean) / std` is about unit variance for the DiT; None means 0 and 1.
        linear_shortcut: a linear code of each latent cell's pixels added to both ends of the
            network (`LinearShortcut`); start it with `fit_linear_shortcut`.
    """

    _supports_gradient_checkpointing = False

    @register_to_config
    def __init__(
        self,
        in_channels: int = 3,
        base_channels: int = 96,
        channel_multipliers: tuple[int, ...] = (1, 2, 4, 4),
        num_res_blocks: int = 2,
        spatial_downsample: tuple[bool, ...] = (True, True, True),
        temporal_downsample: tuple[bool, ...] = (False, True, True),
        latent_channels: int = 16,
        mid_attention: bool = True,
        norm_eps: float = 1e-6,
        latents_mean: list[float] | None = None,
        latents_std: list[float] | None = None,
        linear_shortcut: bool = False,
    ):
        super().__init__()
        levels = len(channel_multipliers)
        for name, flags in (("spatial_downsample", spatial_downsample), ("temporal_downsample", temporal_downsample)):
            if len(flags) != levels - 1:
                raise ValueError(f"{name} needs one flag per level transition ({levels - 1}), got {list(flags)}")
        for name, stats in (("latents_mean", latents_mean), ("latents_std", latents_std)):
            if stats is not None and len(stats) != latent_channels:
                raise ValueError(f"{name} needs {latent_channels} values (one per latent channel), got {len(stats)}")
        if latents_std is not None and min(latents_std) <= 0:
            raise ValueError(f"latents_std must be positive, got {latents_std}")
        channels = [base_channels * m for m in channel_multipliers]
        self.encoder = Encoder(in_channels, channels, num_res_blocks, spatial_downsample, temporal_downsample,
                               2 * latent_channels, mid_attention, norm_eps)
        self.quant_conv = CausalConv3d(2 * latent_channels, 2 * latent_channels, 1)
        self.post_quant_conv = CausalConv3d(latent_channels, latent_channels, 1)
        self.decoder = Decoder(latent_channels, channels, num_res_blocks, spatial_downsample[::-1],
                               temporal_downsample[::-1], in_channels, mid_attention, norm_eps)
        self.spatial_factor = 2 ** sum(bool(f) for f in spatial_downsample)
        self.temporal_factor = 2 ** sum(bool(f) for f in temporal_downsample)
        self.shortcut = LinearShortcut(in_channels, latent_channels, self.spatial_factor,
                                       self.temporal_factor) if linear_shortcut else None
        for module in self.modules():  # the layout oneDNN computes in; see conv()
            if isinstance(module, (nn.Conv2d, nn.Conv3d)):
                module.weight.data = channels_last(module.weight.data)
        # runtime settings (not config): see set_chunk_sizes / enable_tiling
        self.encode_chunk_frames = 4 * self.temporal_factor
        self.decode_chunk_latents = 2
        self.use_tiling = False
        self.tile_size = 256
        self.tile_overlap = 64

    # ---- sizes -----------------------------------------------------------------------------

    def valid_num_frames(self, n: int, mode: str = "nearest") -> int:
        """The accepted frame count (1 + temporal_factor * k) nearest to n ("nearest"), or the
        smallest one >= n ("up"), or the largest one <= n ("down"; at least 1)."""
        tf = self.temporal_factor
        k = max(0, (int(n) - 1)) / tf
        k = {"nearest": math.ceil(k - 0.5), "up": math.ceil(k), "down": math.floor(k)}[mode]  # ties go down
        return 1 + tf * int(k)

    def valid_size(self, height: int, width: int, mode: str = "up") -> tuple[int, int]:
        """(height, width) rounded to multiples of spatial_factor ("up", "down" or "nearest")."""
        sf = self.spatial_factor
        rnd = {"up": math.ceil, "down": math.floor, "nearest": lambda v: math.floor(v + 0.5)}[mode]
        return max(sf, sf * int(rnd(height / sf))), max(sf, sf * int(rnd(width / sf)))

    def latent_num_frames(self, num_frames: int) -> int:
        return 1 + (num_frames - 1) // self.temporal_factor

    def num_frames_for_latents(self, latent_frames: int) -> int:
        return 1 + self.temporal_factor * (latent_frames - 1)

    def check_video(self, video: torch.Tensor, check_values: bool = True) -> None:
        """ValueError naming what would work, for a video this model cannot encode as given."""
        if video.dim() != 5:
            raise ValueError(f"video must be (B, C, T, H, W), got shape {tuple(video.shape)}")
        b, c, t, h, w = video.shape
        if c != self.config.in_channels:
            raise ValueError(f"video has {c} channels; this VAE takes {self.config.in_channels} (RGB in [-1, 1])")
        if t < 1 or (t - 1) % self.temporal_factor != 0:
            lo, hi = self.valid_num_frames(t, "down"), self.valid_num_frames(t, "up")
            raise ValueError(f"a video of {t} frames can't be encoded: frame counts must be 1 + "
                             f"{self.temporal_factor}k (e.g. {lo} or {hi}); pad or trim the clip")
        if h % self.spatial_factor or w % self.spatial_factor or h == 0 or w == 0:
            vh, vw = self.valid_size(h, w, "down")
            uh, uw = self.valid_size(h, w, "up")
            raise ValueError(f"a {w}x{h} (WxH) video can't be encoded: sizes must be multiples of "
                             f"{self.spatial_factor} (e.g. {vw}x{vh} or {uw}x{uh})")
        if not video.is_floating_point():
            raise ValueError(f"video must be a float tensor in [-1, 1], got {video.dtype}")
        if check_values and not bool(torch.isfinite(video).all()):
            raise ValueError("video contains NaN or Inf values")

    def check_latents(self, z: torch.Tensor) -> None:
        if z.dim() != 5:
            raise ValueError(f"latents must be (B, C, T, H, W), got shape {tuple(z.shape)}")
        if z.shape[1] != self.config.latent_channels:
            raise ValueError(f"latents have {z.shape[1]} channels; this VAE's latents have "
                             f"{self.config.latent_channels}")
        if 0 in z.shape[2:]:
            raise ValueError(f"latents have an empty time or space axis: shape {tuple(z.shape)}")
        if not bool(torch.isfinite(z).all()):
            raise ValueError("latents contain NaN or Inf values")

    def pad_video(self, video: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int, int]]:
        """Pad a video to an accepted size and frame count (repeating its last frame and edge
        pixels); returns the padded video and the original (T, H, W) to crop back to."""
        b, c, t, h, w = video.shape
        tt = self.valid_num_frames(t, "up")
        hh, ww = self.valid_size(h, w, "up")
        if (tt, hh, ww) != (t, h, w):
            video = F.pad(video, (0, ww - w, 0, hh - h, 0, tt - t), mode="replicate")
        return video, (t, h, w)

    # ---- latent scaling ----------------------------------------------------------------------

    def _latent_stats(self, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        c = self.config.latent_channels
        mean = self.config.latents_mean if self.config.latents_mean is not None else [0.0] * c
        std = self.config.latents_std if self.config.latents_std is not None else [1.0] * c
        as_5d = lambda v: rearrange(torch.tensor(v, dtype=like.dtype, device=like.device), "c -> 1 c 1 1 1")
        return as_5d(mean), as_5d(std)

    def normalize_latents(self, raw: torch.Tensor) -> torch.Tensor:
        """Raw latents -> about unit variance, with the per-channel mean/std of the config."""
        mean, std = self._latent_stats(raw)
        return (raw - mean) / std

    def denormalize_latents(self, z: torch.Tensor) -> torch.Tensor:
        """Normalized latents -> raw latents (the inverse of normalize_latents)."""
        mean, std = self._latent_stats(z)
        return z * std + mean

    def set_latent_stats(self, mean, std) -> None:
        """Store per-channel latent statistics (e.g. measured over a data set) in the config."""
        mean = [float(v) for v in torch.as_tensor(mean).flatten()]
        std = [float(v) for v in torch.as_tensor(std).flatten()]
        c = self.config.latent_channels
        if len(mean) != c or len(std) != c or min(std) <= 0:
            raise ValueError(f"latent statistics need {c} means and {c} positive stds, got {len(mean)} and {len(std)}")
        self.register_to_config(latents_mean=mean, latents_std=std)

    # ---- the network on one chunk ------------------------------------------------------------

    ENCODING_PARTS = ("encoder", "quant_conv", "shortcut.encode_map")  # what makes the latents

    def encoding_modules(self) -> list[nn.Module]:
        """The modules that make the latents (`ENCODING_PARTS` that this model has): a decoder-only
        run freezes them, and two VAEs with equal weights in them share a latent space."""
        return [self.get_submodule(name) for name in self.ENCODING_PARTS
                if name.split(".")[0] != "shortcut" or self.shortcut is not None]

    def encoder_is_linear(self) -> bool:
        """True when the encoder is its linear shortcut alone: the convolutional path's last layer
        is zero (as `fit_linear_shortcut` leaves it, and as a decoder-only run keeps it) and is not
        being trained, so the path adds nothing and encoding can skip it with the same result."""
        out = self.encoder.conv_out
        if self.shortcut is None or (torch.is_grad_enabled() and out.weight.requires_grad):
            return False
        return not (out.weight.any() or (out.bias is not None and out.bias.any()))

    def _encode_chunk(self, x: torch.Tensor, cache: Cache | None = None) -> torch.Tensor:
        """Moments (B, 2z, t, h, w) for pixel frames x, continuing the clip held in `cache`."""
        x = x.contiguous(memory_format=torch.channels_last_3d)
        if self.shortcut is None:
            return self.quant_conv(self.encoder(x, cache))
        code = self.shortcut.encode(x, cache)
        if self.encoder_is_linear():  # the path's output is zero, so quant_conv gives its bias
            bias = self.quant_conv.bias.to(code.dtype).view(1, -1, 1, 1, 1)
            mean, logvar = bias.chunk(2, dim=1)
            return torch.cat([mean + code, logvar.expand_as(code)], dim=1)
        mean, logvar = self.quant_conv(self.encoder(x, cache)).chunk(2, dim=1)
        return torch.cat([mean + code, logvar], dim=1)

    def _decode_chunk(self, raw: torch.Tensor, cache: Cache | None = None) -> torch.Tensor:
        """Pixels (B, 3, T, H, W), unclamped, for raw latent frames, continuing the clip in `cache`."""
        raw = raw.contiguous(memory_format=torch.channels_last_3d)
        pixels = self.decoder(self.post_quant_conv(raw), cache)
        return pixels if self.shortcut is None else pixels + self.shortcut.decode(raw, cache)

    @torch.no_grad()
    def fit_linear_shortcut(self, videos, noise: float = 0.01) -> torch.Tensor:
        """Start a new VAE as the principal-component code of `videos` (an iterable of clips
        (3, T, H, W) or batches (B, 3, T, H, W) in [-1, 1], 1 + 4k frames, sizes that are
        multiples of spatial_factor): the shortcut's matrices become the top `latent_channels`
        components of the clips' pixel blocks, the convolutional paths' last layers start at zero
        (so the model's output is exactly the linear code's), the posterior's noise starts at
        `noise` times each component's spread, and the latent statistics are the components'.
        Returns the share of the blocks' variance the code keeps."""
        if self.shortcut is None:
            raise ValueError("this VAE has no linear shortcut; build it with linear_shortcut=True")
        if not (math.isfinite(noise) and noise > 0):
            raise ValueError(f"noise={noise}: the posterior's starting noise must be a positive fraction, e.g. 0.01")
        total, count, moment = None, 0, None
        for video in videos:
            video = torch.as_tensor(video, dtype=torch.float32)
            video = video[None] if video.dim() == 4 else video
            self.check_video(video)
            blocks = self.shortcut.blocks(video.cpu()).flatten(0, 3).double()  # (N, D)
            total = blocks.sum(0) if total is None else total + blocks.sum(0)
            moment = blocks.T @ blocks if moment is None else moment + blocks.T @ blocks
            count += blocks.shape[0]
        z = self.config.latent_channels
        if count <= z:
            raise ValueError(f"fitting {z} components needs more than {z} pixel blocks, got {count}; pass more clips")
        mean = total / count
        variance, vectors = torch.linalg.eigh(moment / count - torch.outer(mean, mean))  # ascending
        variance, vectors = variance.flip(0).clamp_min(1e-12), vectors.flip(1)
        top, spread = vectors[:, :z], variance[:z].sqrt()
        spread = spread.clamp_min(1e-3 * float(spread[0]))  # a component the clips do not use is not blown up
        s = self.shortcut
        device = s.encode_map.weight.device
        s.encode_map.weight.copy_(top.T.float())
        s.encode_map.bias.copy_((-top.T @ mean).float())
        s.decode_map.weight.copy_(top.float())
        s.decode_map.bias.copy_(mean.float())
        for layer in (self.encoder.conv_out, self.decoder.conv_out):
            layer.weight.zero_()
            layer.bias.zero_()
        self.quant_conv.bias[:z] = 0.0
        self.quant_conv.bias[z:] = (2.0 * torch.log(noise * spread)).float().to(device)
        self.set_latent_stats([0.0] * z, spread.float())
        return (variance[:z].sum() / variance.sum()).float()

    # ---- public API ----------------------------------------------------------------------------

    def forward(self, video: torch.Tensor, sample_posterior: bool = True, generator: torch.Generator | None = None):
        """Training pass (one pass, differentiable): returns (reconstruction, posterior);
        the reconstruction is not clamped."""
        self.check_video(video, check_values=False)
        posterior = DiagonalGaussian(self._encode_chunk(video).contiguous())
        z = posterior.sample(generator) if sample_posterior else posterior.mode()
        return self._decode_chunk(z).contiguous(), posterior

    def encode(self, video: torch.Tensor) -> DiagonalGaussian:
        """video (B, 3, 1 + 4k, H, W) in [-1, 1] -> posterior over raw latents (B, C, 1 + k, H/8, W/8).

        Runs chunk by chunk in time (and tile by tile in space when tiling is on)."""
        from vae3d.streaming import StreamingEncoder

        self.check_video(video)
        return StreamingEncoder(self).encode_clip(video)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """raw latents (B, C, T', h, w) -> video (B, 3, 1 + 4(T' - 1), 8h, 8w), clamped to [-1, 1]."""
        from vae3d.streaming import StreamingDecoder

        self.check_latents(z)
        return StreamingDecoder(self).decode_clip(z)

    def encode_latents(self, video: torch.Tensor, sample: bool = False,
                       generator: torch.Generator | None = None) -> torch.Tensor:
        """Normalized latents for the DiT: the posterior's mean (or a sample), scaled to unit variance."""
        posterior = self.encode(video)
        return self.normalize_latents(posterior.sample(generator) if sample else posterior.mode())

    def decode_latents(self, z: torch.Tensor) -> torch.Tensor:
        """Video in [-1, 1] from normalized latents."""
        self.check_latents(z)
        return self.decode(self.denormalize_latents(z))

    @torch.no_grad()
    def channel_sensitivity(self, z: torch.Tensor, scale: float = 0.1,
                            generator: torch.Generator | None = None) -> torch.Tensor:
        """How much the decoded video moves per unit of error in each normalized latent channel.

        z: normalized latents (B, C, T', h, w). For each channel c, Gaussian noise of std `scale` is
        added to that channel alone; the mean square change of the decoded pixels, divided by
        scale^2, is the channel's entry of the returned (C,) tensor (a finite-difference reading of
        the decoder's Jacobian, per channel, around these latents). Per-channel normalization
        gives every channel unit variance, but a decoder rarely uses them alike: the default
        model's VAE moves its pixels about 300 times more per unit of its first channel than of
        its last ones.
        """
        if scale <= 0:
            raise ValueError(f"scale={scale}; expected a noise std > 0")
        reference = self.decode_latents(z).float()
        sensitivity = []
        for c in range(z.shape[1]):
            noise = torch.zeros_like(z)
            noise[:, c] = torch.randn(z[:, c].shape, generator=generator, dtype=torch.float32).to(z)
            moved = self.decode_latents(z + scale * noise).float()
            sensitivity.append((moved - reference).square().mean() / scale**2)
        return torch.stack(sensitivity)

    def streaming_encoder(self):
        """A `StreamingEncoder`: feed frames chunk after chunk, get latent frames as they complete."""
        from vae3d.streaming import StreamingEncoder

        return StreamingEncoder(self)

    def streaming_decoder(self):
        """A `StreamingDecoder`: `decode(z_chunk)` gives the pixel frames of exactly those
        (normalized) latent frames, carrying the causal caches from the chunks before."""
        from vae3d.streaming import StreamingDecoder

        return StreamingDecoder(self)

    # ---- runtime settings ----------------------------------------------------------------------

    def set_chunk_sizes(self, encode_frames: int | None = None, decode_latents: int | None = None) -> None:
        """Frames per encoder chunk (a multiple of temporal_factor; the first chunk has one more)
        and latent frames per decoder chunk. Smaller chunks use less memory; results are identical."""
        if encode_frames is not None:
            if encode_frames < self.temporal_factor or encode_frames % self.temporal_factor:
                raise ValueError(f"encode chunk of {encode_frames} frames: use a positive multiple of "
                                 f"{self.temporal_factor}")
            self.encode_chunk_frames = int(encode_frames)
        if decode_latents is not None:
            if decode_latents < 1:
                raise ValueError(f"decode chunk of {decode_latents} latent frames: use 1 or more")
            self.decode_chunk_latents = int(decode_latents)

    def enable_tiling(self, tile_size: int = 256, overlap: int = 64) -> None:
        """Encode and decode frames larger than `tile_size` pixels in overlapping square tiles,
        blended linearly across `overlap` pixels. Both must be multiples of spatial_factor."""
        sf = self.spatial_factor
        if tile_size % sf or overlap % sf or tile_size <= 0 or overlap < 0 or overlap >= tile_size:
            raise ValueError(f"tile_size={tile_size}, overlap={overlap}: both must be multiples of {sf} "
                             f"with 0 <= overlap < tile_size (e.g. 256 and 64)")
        self.use_tiling, self.tile_size, self.tile_overlap = True, int(tile_size), int(overlap)

    def disable_tiling(self) -> None:
        self.use_tiling = False

    # ---- loading ---------------------------------------------------------------------------------

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, **kwargs):
        """Load a folder written by `save_pretrained` (config.json + safetensors weights), with
        one-line errors for a missing folder, a missing file or weights that do not match."""
        folder = Path(pretrained_model_name_or_path)
        if kwargs.get("subfolder"):
            folder = folder / kwargs["subfolder"]
        if not folder.is_dir():
            raise FileNotFoundError(f"VAE folder {folder} does not exist; pass a folder written by "
                                    f"CausalVideoVAE.save_pretrained (config.json + weights)")
        if not (folder / "config.json").is_file():
            raise FileNotFoundError(f"{folder} has no config.json; it is not a saved CausalVideoVAE folder")
        weights = sorted(p.name for p in folder.glob("*.safetensors"))
        if not weights:
            raise FileNotFoundError(f"{folder} has no .safetensors weights; save the VAE with save_pretrained")
        config, _ = cls.load_config(folder, return_unused_kwargs=True)
        if config.get("_class_name", cls.__name__) != cls.__name__:
            raise ValueError(f"{folder} holds a {config['_class_name']}, not a {cls.__name__}")
        kwargs.setdefault("use_safetensors", True)
        kwargs.setdefault("low_cpu_mem_usage", False)
        kwargs.pop("subfolder", None)
        try:
            return super().from_pretrained(str(folder), **kwargs)
        except (RuntimeError, ValueError, KeyError, OSError) as err:
            first = next((line.strip() for line in str(err).splitlines() if line.strip()), type(err).__name__)
            raise ValueError(f"weights in {folder} do not match its config.json ({first[:300]})") from err


# ------------------------------------------------------------------------------------------------
# Presets
# ------------------------------------------------------------------------------------------------


def vae_tiny():
    """For tests: 8x8 spatial, 4x temporal, 16 latent channels, a few thousand parameters per level."""
    return dict(base_channels=8, channel_multipliers=(1, 2, 2, 2), num_res_blocks=1)


def vae_small():
    """A CPU-trainable size: the default layout at a third of the width."""
    return dict(base_channels=32, channel_multipliers=(1, 2, 4, 4), num_res_blocks=1)


def vae_compact():
    """The shipped default model's VAE: 4x space, 4x time, 16 latent channels, 4.1M parameters.

    Three levels (24, 48, 96 channels), each transition halving H, W and T, and no attention, so it
    is purely convolutional and trains on small crops. Compressing space only 4x (not 8x) keeps
    detail in small frames (64x64 clips have 16x16 latents), which the default DiT cuts into 4x4 patches.
    It has a linear shortcut: a new one starts as the principal-component code of its training
    clips (about 30 dB on toy-world clips before any training) and the convolutions learn the rest.
    """
    return dict(base_channels=24, channel_multipliers=(1, 2, 4), num_res_blocks=1, spatial_downsample=(True, True),
                temporal_downsample=(True, True), mid_attention=False, linear_shortcut=True)


def vae_default():
    """Wan 2.1's layout: 96 channels, multipliers (1, 2, 4, 4), 2 residual blocks, z = 16."""
    return dict(base_channels=96, channel_multipliers=(1, 2, 4, 4), num_res_blocks=2)


PRESETS: dict[str, dict] = {"tiny": vae_tiny(), "compact": vae_compact(), "small": vae_small(), "default": vae_default()}
