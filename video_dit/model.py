"""VideoDiT: a diffusion transformer over spacetime patches.

Read top to bottom: helpers (patchify, timestep and rotary embeddings, modulation), embedders,
attention layers, the two blocks (adaLN-Zero DiT block; MMDiT joint block), the final layer, the
model, and the size presets.

The network is a plain function v = f(x_t, t, text) that returns a velocity; the noise process
lives in `video_dit.flow`. The one thing the model assumes about it is the straight path
x_t = (1 - t) x0 + t noise, used when it predicts the clean sample x0 (`prediction="sample"`)
and returns the velocity (x_t - x0) / t.

The `attention="full"`, `text_conditioning="cross"` layout follows Wan 2.1's transformer: 3D
rotary embedding split over (t, h, w), one time MLP shared by all blocks plus a learned
per-block modulation table, a self-attention / cross-attention / MLP block with QK RMSNorm over
all heads, LayerNorm(affine) before cross-attention, and a modulated final LayerNorm. Weights of
that family map onto it key by key (see docs/video_dit.md); the differences are that q/k/v are one
fused projection, the patch embedding is a Linear over einops patches, and the adaLN projection
starts at zero (adaLN-Zero) so that a fresh model's last layer outputs exactly zero.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin
from einops import rearrange, reduce, repeat

from video_dit.attention import attention, check_backend

TIMESTEP_SCALE = 1000.0  # sigma in [0, 1] is embedded as sigma * 1000, as in Wan / SD3
PREDICTIONS = ("velocity", "sample")
SAMPLE_MIN_T = 0.05  # a sample prediction's velocity divides by t; below this it divides by this


# --------------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------------


def patchify(x: torch.Tensor, patch: tuple[int, int, int]) -> torch.Tensor:
    """(B, C, T, H, W) latents -> (B, N, pt*ph*pw*C) tokens, N = (T/pt)(H/ph)(W/pw), frame-major."""
    pt, ph, pw = patch
    return rearrange(x, "b c (t pt) (h ph) (w pw) -> b (t h w) (pt ph pw c)", pt=pt, ph=ph, pw=pw)


def given_reference(x: torch.Tensor, given_mask: torch.Tensor | None) -> torch.Tensor:
    """(B, C+1, T, H, W): for each latent frame of x (B, C, T, H, W), the latest frame at or before it
    that `given_mask` (B, T) marks as given, and a last channel of 1 where there is one. Frames
    before the first given frame, and all frames when `given_mask` is None, get zeros."""
    b, c, t, h, w = x.shape
    if given_mask is None:
        return x.new_zeros(b, c + 1, t, h, w)
    if tuple(given_mask.shape) != (b, t):
        raise ValueError(f"given_mask has shape {tuple(given_mask.shape)}; expected ({b}, {t})")
    index = torch.arange(t, device=x.device).expand(b, t)
    latest = torch.where(given_mask.to(device=x.device, dtype=torch.bool), index, -1).cummax(dim=1).values
    has = (latest >= 0).to(x.dtype)[:, None, :, None, None]  # (B, 1, T, 1, 1)
    reference = torch.gather(x, 2, latest.clamp(min=0)[:, None, :, None, None].expand(b, c, t, h, w)) * has
    return torch.cat([reference, has.expand(b, 1, t, h, w)], dim=1)


def unpatchify(tokens: torch.Tensor, patch: tuple[int, int, int], grid: tuple[int, int, int]) -> torch.Tensor:
    """Inverse of `patchify`: (B, N, pt*ph*pw*C) tokens on a (T', H', W') grid -> (B, C, T, H, W)."""
    pt, ph, pw = patch
    t, h, w = grid
    return rearrange(
        tokens, "b (t h w) (pt ph pw c) -> b c (t pt) (h ph) (w pw)", t=t, h=h, w=w, pt=pt, ph=ph, pw=pw
    )


def timestep_embedding(t: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """Sinusoidal embedding [cos, sin] of (any shape) timesteps -> (*t.shape, dim), in fp32."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
    args = t.float()[..., None] * freqs
    return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)


def rope_split(head_dim: int) -> tuple[int, int, int]:
    """How many channels of a head rotate with t, h and w (Wan's split: h = w = 2*(d//6), t the rest)."""
    hw = 2 * (head_dim // 6)
    return head_dim - 2 * hw, hw, hw


def rope_frequencies(
    head_dim: int, grid: tuple[int, int, int], theta: float = 10000.0, device=None
) -> torch.Tensor:
    """3D rotary embedding for a (T', H', W') token grid: complex (N, head_dim/2), frame-major order.

    Each of t, h, w rotates its own slice of channel pairs with the usual 1D RoPE frequencies, so
    any grid size works and attention only ever sees relative positions.
    """
    parts = []
    for axis, (dim, size) in enumerate(zip(rope_split(head_dim), grid)):
        inv = 1.0 / theta ** (torch.arange(0, dim, 2, dtype=torch.float64, device=device) / dim)
        angles = torch.outer(torch.arange(size, dtype=torch.float64, device=device), inv)  # (size, dim/2)
        shape = [1, 1, 1, dim // 2]
        shape[axis] = size
        parts.append(angles.view(shape).expand(*grid, dim // 2))
    angles = rearrange(torch.cat(parts, dim=-1), "t h w d -> (t h w) d")
    return torch.polar(torch.ones_like(angles), angles).to(torch.complex64)


def apply_rope(x: torch.Tensor, freqs: torch.Tensor) -> torch.Tensor:
    """Rotate channel pairs (0,1), (2,3), ... of x (B, N, H, d) by freqs (N, d/2)."""
    pairs = torch.view_as_complex(rearrange(x.float(), "b n h (d two) -> b n h d two", two=2).contiguous())
    rotated = torch.view_as_real(pairs * freqs[:, None, :])
    return rearrange(rotated, "b n h d two -> b n h (d two)").type_as(x)


def modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """x * (1 + scale) + shift with per-frame modulation: x (B, N, D), shift/scale (B, T', D)."""
    frames = shift.shape[1]
    x = rearrange(x, "b (t s) d -> b t s d", t=frames)
    out = torch.addcmul(shift[:, :, None].to(x.dtype), x, 1 + scale[:, :, None].to(x.dtype))
    return rearrange(out, "b t s d -> b (t s) d")


def gated_residual(x: torch.Tensor, gate: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """x + gate * y with a per-frame gate: x, y (B, N, D), gate (B, T', D)."""
    frames = gate.shape[1]
    x4 = rearrange(x, "b (t s) d -> b t s d", t=frames)
    y4 = rearrange(y, "b (t s) d -> b t s d", t=frames)
    return rearrange(torch.addcmul(x4, gate[:, :, None].to(y.dtype), y4), "b t s d -> b (t s) d")


def _cpu_has_bf16_matmul() -> bool:
    """Whether this CPU multiplies bf16 matrices in hardware (AVX512-BF16 or AMX); Linux flags only."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return True  # cannot tell: leave bf16 to PyTorch
    return any(f in flags for f in ("avx512_bf16", "amx_bf16"))


# On CPUs without bf16 matrix units PyTorch multiplies bf16 matrices several times slower than
# fp32 ones, so `Linear` does the product in fp32 there and rounds the result to bf16: the same
# dtype in and out, at least the same accuracy. Set to True to always use PyTorch's bf16 GEMM.
CPU_BF16_MATMUL = _cpu_has_bf16_matmul()


def bf16_products_in_fp32(x: torch.Tensor) -> bool:
    """Whether a product with input x is a bf16 one (bf16 input or bf16 autocast) on a CPU without
    bf16 units, which should then run in fp32 and round its result to bf16. `Linear` here and
    `Conv2d` here and `vae3d`'s convolutions follow it."""
    if CPU_BF16_MATMUL or x.device.type != "cpu":
        return False
    return x.dtype == torch.bfloat16 or (
        torch.is_autocast_enabled("cpu") and torch.get_autocast_dtype("cpu") == torch.bfloat16)


class Fp32Bf16Products:
    """Mixin for a layer with a weight and a bias: bf16 (weights or autocast) products run in fp32
    on CPUs without bf16 units (`bf16_products_in_fp32`), rounded to bf16 after. `_product(x,
    weight, bias)` is the layer's own operation."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not bf16_products_in_fp32(x):
            return super().forward(x)
        with torch.autocast("cpu", enabled=False):
            bias = None if self.bias is None else self.bias.float()
            return self._product(x.float(), self.weight.float(), bias).to(torch.bfloat16)


class Linear(Fp32Bf16Products, nn.Linear):
    """nn.Linear that computes bf16 products in fp32 on CPUs without bf16 units."""

    def _product(self, x, weight, bias):
        return F.linear(x, weight, bias)


class Conv2d(Fp32Bf16Products, nn.Conv2d):
    """nn.Conv2d that computes bf16 products in fp32 on CPUs without bf16 units."""

    def _product(self, x, weight, bias):
        return self._conv_forward(x, weight, bias)


def layer_norm(x: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """LayerNorm without affine parameters (the modulation supplies scale and shift)."""
    return F.layer_norm(x, x.shape[-1:], eps=eps)


class RMSNorm(nn.RMSNorm):
    """RMSNorm computed as one fp32 norm reduction and two multiplies, in the input's dtype.

    Same result as nn.RMSNorm; on CPU it is several times faster than the composite kernel
    (which squares, sums and rescales the whole tensor in separate passes), most of all in bf16.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        norm = torch.linalg.vector_norm(x, dim=-1, keepdim=True, dtype=torch.float32)  # (..., 1)
        inv = torch.rsqrt(norm.square() / x.shape[-1] + self.eps).to(x.dtype)
        return x * inv * self.weight.to(x.dtype)


# --------------------------------------------------------------------------------------------
# Embedders
# --------------------------------------------------------------------------------------------


class TimestepEmbedder(nn.Module):
    """Timesteps -> sinusoidal features -> MLP -> (…, hidden) embedding."""

    def __init__(self, hidden_size: int, frequency_size: int = 256):
        super().__init__()
        self.frequency_size = frequency_size
        self.linear_1 = Linear(frequency_size, hidden_size)
        self.linear_2 = Linear(hidden_size, hidden_size)

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        freq = timestep_embedding(t * TIMESTEP_SCALE, self.frequency_size).to(self.linear_1.weight.dtype)
        return self.linear_2(F.silu(self.linear_1(freq)))


class TextProjection(nn.Module):
    """One text encoder's token states (B, L, D_i) -> model width (B, L, hidden)."""

    def __init__(self, in_features: int, hidden_size: int):
        super().__init__()
        self.linear_1 = Linear(in_features, hidden_size)
        self.linear_2 = Linear(hidden_size, hidden_size)

    def forward(self, states: torch.Tensor) -> torch.Tensor:
        return self.linear_2(F.gelu(self.linear_1(states), approximate="tanh"))


class PooledTextEmbedder(nn.Module):
    """Each encoder's masked mean token state, concatenated -> MLP -> (B, hidden), added to the
    timestep embedding, as SD3 adds its pooled text vectors. For a sentence encoder such as
    MiniLM the mean of its token states is its sentence vector (before normalisation). The last
    layer starts at zero, so a model that gains this path computes what it did without it until
    training moves it."""

    def __init__(self, text_dims: tuple[int, ...], hidden_size: int):
        super().__init__()
        self.linear_1 = Linear(sum(text_dims), hidden_size)
        self.linear_2 = Linear(hidden_size, hidden_size)

    def forward(self, text_states: list[torch.Tensor], text_masks: list[torch.Tensor | None]) -> torch.Tensor:
        pooled = []
        for states, mask in zip(text_states, text_masks):
            weight = (torch.ones(states.shape[:2], device=states.device) if mask is None else mask).float()[..., None]
            pooled.append((states.float() * weight).sum(dim=1) / weight.sum(dim=1).clamp(min=1.0))  # (B, D_i)
        vector = torch.cat(pooled, dim=-1).to(self.linear_1.weight.dtype)  # (B, sum D_i)
        return self.linear_2(F.silu(self.linear_1(vector)))


# --------------------------------------------------------------------------------------------
# Attention layers
# --------------------------------------------------------------------------------------------


class SelfAttention(nn.Module):
    """Self-attention with QK RMSNorm (over all heads) and 3D RoPE.

    `layout` picks which tokens attend to each other: "full" (all T'H'W' tokens), "spatial"
    (the tokens of one frame) or "temporal" (one position across frames). RoPE is applied in 3D
    in every layout; within a frame the t rotation is common to q and k and cancels, and likewise
    h, w within a temporal group, so each layout sees exactly its own relative positions.
    """

    def __init__(self, hidden_size: int, num_heads: int, qk_norm: bool = True, eps: float = 1e-6):
        super().__init__()
        self.num_heads = num_heads
        self.to_qkv = Linear(hidden_size, 3 * hidden_size)
        self.norm_q = RMSNorm(hidden_size, eps=eps) if qk_norm else nn.Identity()
        self.norm_k = RMSNorm(hidden_size, eps=eps) if qk_norm else nn.Identity()
        self.to_out = Linear(hidden_size, hidden_size)
        self.backend: str | None = None

    def qkv(self, x: torch.Tensor, rope: torch.Tensor | None):
        """(B, N, D) -> normalised, rotated q, k, v of shape (B, N, H, d)."""
        q, k, v = self.to_qkv(x).chunk(3, dim=-1)
        q, k = self.norm_q(q), self.norm_k(k)
        q, k, v = (rearrange(a, "b n (h d) -> b n h d", h=self.num_heads) for a in (q, k, v))
        if rope is not None:
            q, k = apply_rope(q, rope), apply_rope(k, rope)
        return q.to(v.dtype), k.to(v.dtype), v

    def forward(self, x: torch.Tensor, rope: torch.Tensor, frames: int, layout: str = "full") -> torch.Tensor:
        q, k, v = self.qkv(x, rope)  # (B, N, H, d) each
        if layout == "full":
            out = attention(q, k, v, backend=self.backend)
        elif layout == "spatial":
            q, k, v = (rearrange(a, "b (t s) h d -> (b t) s h d", t=frames) for a in (q, k, v))
            out = rearrange(attention(q, k, v, backend=self.backend), "(b t) s h d -> b (t s) h d", t=frames)
        elif layout == "temporal":
            q, k, v = (rearrange(a, "b (t s) h d -> (b s) t h d", t=frames) for a in (q, k, v))
            out = rearrange(attention(q, k, v, backend=self.backend), "(b s) t h d -> b (t s) h d", b=x.shape[0])
        else:
            raise ValueError(f"unknown attention layout {layout!r}")
        return self.to_out(rearrange(out, "b n h d -> b n (h d)"))


class CrossAttention(nn.Module):
    """Video tokens attend to text tokens (no RoPE); QK RMSNorm; optional (B, L) key mask."""

    def __init__(self, hidden_size: int, num_heads: int, qk_norm: bool = True, eps: float = 1e-6):
        super().__init__()
        self.num_heads = num_heads
        self.to_q = Linear(hidden_size, hidden_size)
        self.to_kv = Linear(hidden_size, 2 * hidden_size)
        self.norm_q = RMSNorm(hidden_size, eps=eps) if qk_norm else nn.Identity()
        self.norm_k = RMSNorm(hidden_size, eps=eps) if qk_norm else nn.Identity()
        self.to_out = Linear(hidden_size, hidden_size)
        self.backend: str | None = None

    def forward(self, x: torch.Tensor, context: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        k, v = self.to_kv(context).chunk(2, dim=-1)
        q, k = self.norm_q(self.to_q(x)), self.norm_k(k)
        q, k, v = (rearrange(a, "b n (h d) -> b n h d", h=self.num_heads).to(v.dtype) for a in (q, k, v))
        out = attention(q, k, v, mask=mask, backend=self.backend)  # (B, N, H, d)
        return self.to_out(rearrange(out, "b n h d -> b n (h d)"))


class MLP(nn.Module):
    def __init__(self, hidden_size: int, mlp_hidden: int, gelu_approximate: str = "none"):
        super().__init__()
        self.fc1 = Linear(hidden_size, mlp_hidden)
        self.fc2 = Linear(mlp_hidden, hidden_size)
        self.gelu_approximate = gelu_approximate

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(x), approximate=self.gelu_approximate))


# --------------------------------------------------------------------------------------------
# Blocks
# --------------------------------------------------------------------------------------------


class DiTBlock(nn.Module):
    """adaLN-Zero DiT block over video tokens.

    full:        x += g1 * SelfAttn(mod(LN(x)))             [all tokens]
    factorized:  x += g1 * SelfAttn(mod(LN(x)))             [within each frame]
                 x += gt * SelfAttn_t(mod(LN(x)))           [across frames at each position]
    then         x += CrossAttn(LN_affine(x), text)          [when the model has text]
                 x += g2 * MLP(mod(LN(x)))

    Modulation (shift, scale, gate per sub-layer) = this block's learned table + the shared time
    projection, per latent frame. Everything that produces it starts at zero, so the block starts
    as the identity (adaLN-Zero).
    """

    def __init__(
        self,
        hidden_size: int,
        num_heads: int,
        mlp_hidden: int,
        factorized: bool,
        cross_attention: bool,
        qk_norm: bool = True,
        gelu_approximate: str = "none",
        eps: float = 1e-6,
    ):
        super().__init__()
        self.factorized = factorized
        self.eps = eps
        self.num_modulations = 9 if factorized else 6
        self.attn1 = SelfAttention(hidden_size, num_heads, qk_norm, eps)
        self.attn_temporal = SelfAttention(hidden_size, num_heads, qk_norm, eps) if factorized else None
        self.norm2 = nn.LayerNorm(hidden_size, eps=eps) if cross_attention else None
        self.attn2 = CrossAttention(hidden_size, num_heads, qk_norm, eps) if cross_attention else None
        self.ffn = MLP(hidden_size, mlp_hidden, gelu_approximate)
        self.modulation = nn.Parameter(torch.zeros(1, 1, self.num_modulations, hidden_size))

    def forward(self, x, time_mod, rope, frames, context=None, context_mask=None):
        # x: (B, N, D)   time_mod: (B, T', K, D)   rope: (N, d/2) complex   context: (B, L, D)
        mod = (self.modulation + time_mod).unbind(dim=2)  # K tensors of (B, T', D)
        layout = "spatial" if self.factorized else "full"
        x = gated_residual(x, mod[2], self.attn1(modulate(layer_norm(x, self.eps), mod[0], mod[1]), rope, frames, layout))
        if self.factorized:
            h = modulate(layer_norm(x, self.eps), mod[6], mod[7])
            x = gated_residual(x, mod[8], self.attn_temporal(h, rope, frames, "temporal"))
        if self.attn2 is not None:
            x = x + self.attn2(self.norm2(x), context, context_mask)
        x = gated_residual(x, mod[5], self.ffn(modulate(layer_norm(x, self.eps), mod[3], mod[4])))
        return x  # (B, N, D)


class JointBlock(nn.Module):
    """MMDiT block (SD3): text and video streams with separate weights, one attention over both.

    Each stream has its own QKV projection, QK norm, output projection, MLP and adaLN-Zero
    modulation; the attention runs over [text; video] tokens, RoPE on the video tokens only.
    The last block is `context_pre_only`: the text stream only feeds keys and values.
    """

    def __init__(
        self,
        hidden_size: int,
        num_heads: int,
        mlp_hidden: int,
        qk_norm: bool = True,
        gelu_approximate: str = "none",
        eps: float = 1e-6,
        context_pre_only: bool = False,
    ):
        super().__init__()
        self.eps = eps
        self.num_heads = num_heads
        self.context_pre_only = context_pre_only
        self.attn1 = SelfAttention(hidden_size, num_heads, qk_norm, eps)
        self.ffn = MLP(hidden_size, mlp_hidden, gelu_approximate)
        self.modulation = nn.Parameter(torch.zeros(1, 1, 6, hidden_size))
        self.context_attn = SelfAttention(hidden_size, num_heads, qk_norm, eps)
        if context_pre_only:
            del self.context_attn.to_out
            self.context_attn.to_out = None
            self.context_ffn = None
            self.context_modulation = nn.Parameter(torch.zeros(1, 2, hidden_size))
        else:
            self.context_ffn = MLP(hidden_size, mlp_hidden, gelu_approximate)
            self.context_modulation = nn.Parameter(torch.zeros(1, 6, hidden_size))

    def forward(self, x, time_mod, rope, frames, context, context_mask, context_time_mod):
        # x: (B, N, D)   time_mod: (B, T', 6, D)   context: (B, L, D)   context_time_mod: (B, 6, D)
        mod = (self.modulation + time_mod).unbind(dim=2)
        cmod = (self.context_modulation + context_time_mod[:, : self.context_modulation.shape[1]]).unbind(dim=1)
        length = context.shape[1]
        q, k, v = self.attn1.qkv(modulate(layer_norm(x, self.eps), mod[0], mod[1]), rope)  # (B, N, H, d)
        c = layer_norm(context, self.eps) * (1 + cmod[1][:, None].to(context.dtype)) + cmod[0][:, None].to(context.dtype)
        cq, ck, cv = self.context_attn.qkv(c, None)  # (B, L, H, d)
        mask = None
        if context_mask is not None:
            mask = torch.cat([context_mask, context_mask.new_ones(x.shape[0], x.shape[1])], dim=1)  # (B, L+N)
        out = attention(
            torch.cat([cq, q], dim=1), torch.cat([ck, k], dim=1), torch.cat([cv, v], dim=1), mask, self.attn1.backend
        )
        out = rearrange(out, "b n h d -> b n (h d)")  # (B, L+N, D)
        x = gated_residual(x, mod[2], self.attn1.to_out(out[:, length:]))
        x = gated_residual(x, mod[5], self.ffn(modulate(layer_norm(x, self.eps), mod[3], mod[4])))
        if self.context_pre_only:
            return x, None
        context = context + cmod[2][:, None] * self.context_attn.to_out(out[:, :length])
        c = layer_norm(context, self.eps) * (1 + cmod[4][:, None].to(context.dtype)) + cmod[3][:, None].to(context.dtype)
        context = context + cmod[5][:, None] * self.context_ffn(c)
        return x, context


class FinalLayer(nn.Module):
    """Modulated LayerNorm, then a linear map from each token to its patch of velocities."""

    def __init__(self, hidden_size: int, patch_volume: int, out_channels: int, eps: float = 1e-6):
        super().__init__()
        self.eps = eps
        self.modulation = nn.Parameter(torch.randn(1, 1, 2, hidden_size) / hidden_size**0.5)
        self.linear = Linear(hidden_size, patch_volume * out_channels)

    def forward(self, x: torch.Tensor, temb: torch.Tensor) -> torch.Tensor:
        # x: (B, N, D)   temb: (B, T', D)
        shift, scale = (self.modulation + temb[:, :, None]).unbind(dim=2)
        return self.linear(modulate(layer_norm(x, self.eps), shift, scale))  # (B, N, pt*ph*pw*C)


REFINER_FEATURES = 16  # features per latent pixel the refiner draws from the token states


class OutputRefiner(nn.Module):
    """3x3 convolutions over each latent frame at its own resolution, after the last layer.

    Every token draws its ph x pw patch of the output from its own state alone, so an edge that
    crosses a patch falls on the token grid and outlines come out blocky. The refiner sees the
    unpatchified output, the noisy input at full resolution and a few features per latent pixel
    from the token states, conditioned on each frame's timestep, and adds a correction: it works
    across patch borders and reads detail the patch embedding averaged away. It is cheap (a few
    percent of the transformer) and starts at zero, so a model that gains it computes what it did
    without it until training moves it.
    """

    def __init__(self, channels: int, hidden_size: int, patch: tuple[int, int, int], width: int, blocks: int,
                 features: int = REFINER_FEATURES, eps: float = 1e-6):
        super().__init__()
        self.patch = patch
        self.eps = eps
        self.features = Linear(hidden_size, math.prod(patch) * features)
        self.time = Linear(hidden_size, width)
        self.conv_in = Conv2d(2 * channels + features, width, 3, padding=1)
        self.blocks = nn.ModuleList(
            nn.ModuleList([nn.GroupNorm(8, width, eps=eps), Conv2d(width, width, 3, padding=1),
                           nn.GroupNorm(8, width, eps=eps), Conv2d(width, width, 3, padding=1)])
            for _ in range(blocks)
        )
        self.norm_out = nn.GroupNorm(8, width, eps=eps)
        self.conv_out = Conv2d(width, channels, 3, padding=1)

    def forward(self, out: torch.Tensor, x: torch.Tensor, tokens: torch.Tensor, temb: torch.Tensor,
                grid: tuple[int, int, int]) -> torch.Tensor:
        # out, x: (B, C, T, H, W); tokens: (B, N, D); temb: (B, T', D)
        b, t = out.shape[0], out.shape[2]
        dtype = self.conv_in.weight.dtype
        feat = unpatchify(self.features(layer_norm(tokens, self.eps)), self.patch, grid)  # (B, F, T, H, W)
        h = torch.cat([out.to(dtype), x.to(dtype), feat.to(dtype)], dim=1)
        h = self.conv_in(rearrange(h, "b c t h w -> (b t) c h w"))
        time = repeat(self.time(F.silu(temb)), "b t c -> (b t pt) c 1 1", pt=self.patch[0])
        h = h + time.to(h.dtype)
        for norm_1, conv_1, norm_2, conv_2 in self.blocks:
            h = h + conv_2(F.silu(norm_2(conv_1(F.silu(norm_1(h))))))
        delta = self.conv_out(F.silu(self.norm_out(h)))
        return out + rearrange(delta, "(b t) c h w -> b c t h w", b=b, t=t).to(out.dtype)


# --------------------------------------------------------------------------------------------
# The model
# --------------------------------------------------------------------------------------------


class VideoDiT(ModelMixin, ConfigMixin):
    r"""A DiT over spacetime patches of a latent video; returns the rectified-flow velocity.

    Args:
        in_channels: latent channels C of the input (B, C, T, H, W).
        out_channels: channels of the output; defaults to `in_channels`.
        patch_size: (pt, ph, pw) spacetime patch; T, H, W must divide by it.
        hidden_size: model width D.
        depth: number of blocks.
        num_heads: attention heads; D / num_heads must be even (RoPE rotates channel pairs).
        mlp_ratio: MLP hidden width = int(D * mlp_ratio).
        attention: "full" (one attention over all T'H'W' tokens) or "factorized" (attention within
            each frame, then across frames at each position).
        text_conditioning: "cross" (cross-attention to the text tokens in every block) or "joint"
            (MMDiT: a text stream with its own weights, one attention over both; needs "full").
        text_dims: width of each text encoder's token states, one entry per encoder; each gets
            its own projection to D and the projected tokens are concatenated. `()` makes an
            unconditional model (no text layers).
        qk_norm: RMSNorm on queries and keys (over all heads, as in Wan).
        frequency_size: sinusoidal timestep features fed to the time MLP.
        rope_theta: RoPE base.
        gelu_approximate: "none" (exact GELU) or "tanh" (the approximation DiT and Wan use).
        eps: epsilon of the LayerNorms and RMSNorms.
        pooled_text: also add each encoder's pooled (masked mean) token state, through an MLP, to
            the timestep embedding that drives every block's modulation (SD3's pooled path): a
            global summary of the prompt reaches every token directly, next to cross-attention.
        prediction: what the last layer predicts. "velocity" (noise - x0) directly, or "sample"
            (the clean latent x0), turned into the velocity (x_t - x0) / max(t, 0.05) before it
            is returned, so training, guidance and sampling see a velocity either way. Predict
            the sample when a patch holds about as many numbers as the model is wide (here
            pt*ph*pw*C against hidden_size): clean latents lie near a low-dimensional set that
            a narrow model can draw, noise does not, and a velocity model of that shape leaves
            noise in its samples.
        given_reference: also show every latent frame the latest given frame at or before it
            (`given_reference`), through its own patch embedding (zero at the start) added to the
            tokens. Given frames otherwise reach the others only through attention, which copies
            content loosely: a continuation then blurs and shifts the colours of what it was
            given. With the reference at each token's own place, holding the background of an
            image or of the context of an extension is a local step. `forward` then takes the
            `given_mask`; without one (text-to-video) the reference is empty.
        refiner_width: channels of an `OutputRefiner` after the last layer (0: none): 3x3
            convolutions at the latent's resolution that draw edges across patch borders.
        refiner_blocks: residual blocks of the refiner (two convolutions each).
    """

    _supports_gradient_checkpointing = True
    _no_split_modules = ["DiTBlock", "JointBlock"]

    @register_to_config
    def __init__(
        self,
        in_channels: int = 16,
        out_channels: int | None = None,
        patch_size: tuple[int, int, int] = (1, 2, 2),
        hidden_size: int = 384,
        depth: int = 12,
        num_heads: int = 6,
        mlp_ratio: float = 4.0,
        attention: str = "full",
        text_conditioning: str = "cross",
        text_dims: tuple[int, ...] = (384,),
        qk_norm: bool = True,
        frequency_size: int = 256,
        rope_theta: float = 10000.0,
        gelu_approximate: str = "none",
        eps: float = 1e-6,
        prediction: str = "velocity",
        pooled_text: bool = False,
        given_reference: bool = False,
        refiner_width: int = 0,
        refiner_blocks: int = 2,
    ):
        super().__init__()
        if prediction not in PREDICTIONS:
            raise ValueError(f"prediction={prediction!r}; expected 'velocity' or 'sample'")
        if attention not in ("full", "factorized"):
            raise ValueError(f"attention={attention!r}; expected 'full' or 'factorized'")
        if text_conditioning not in ("cross", "joint"):
            raise ValueError(f"text_conditioning={text_conditioning!r}; expected 'cross' or 'joint'")
        if text_conditioning == "joint" and attention != "full" and len(text_dims) > 0:
            raise ValueError("text_conditioning='joint' needs attention='full'; use 'cross' with 'factorized'")
        if len(patch_size) != 3 or min(patch_size) < 1:
            raise ValueError(f"patch_size={patch_size!r}; expected three positive ints (pt, ph, pw)")
        if hidden_size % num_heads or (hidden_size // num_heads) % 2:
            raise ValueError(
                f"hidden_size={hidden_size} must divide into num_heads={num_heads} heads of even width"
            )
        if gelu_approximate not in ("none", "tanh"):
            raise ValueError(f"gelu_approximate={gelu_approximate!r}; expected 'none' or 'tanh'")
        self.patch = tuple(int(p) for p in patch_size)
        self.out_channels = out_channels or in_channels
        self.head_dim = hidden_size // num_heads
        self.joint = text_conditioning == "joint" and len(text_dims) > 0
        patch_volume = math.prod(self.patch)
        mlp_hidden = int(hidden_size * mlp_ratio)
        self.num_modulations = 9 if attention == "factorized" else 6

        self.patch_embedding = Linear(patch_volume * in_channels, hidden_size)
        # the reference latent and a channel that says whether a frame has one
        self.reference_embedding = Linear(patch_volume * (in_channels + 1), hidden_size) if given_reference else None
        self.time_embedder = TimestepEmbedder(hidden_size, frequency_size)
        self.time_proj = Linear(hidden_size, self.num_modulations * hidden_size)  # shared by all blocks
        self.text_embedders = nn.ModuleList([TextProjection(dim, hidden_size) for dim in text_dims])
        self.pooled_text_embedder = PooledTextEmbedder(text_dims, hidden_size) if pooled_text and text_dims else None
        if self.joint:
            self.context_time_proj = Linear(hidden_size, 6 * hidden_size)
            self.blocks = nn.ModuleList(
                [
                    JointBlock(hidden_size, num_heads, mlp_hidden, qk_norm, gelu_approximate, eps, i == depth - 1)
                    for i in range(depth)
                ]
            )
        else:
            self.blocks = nn.ModuleList(
                [
                    DiTBlock(
                        hidden_size,
                        num_heads,
                        mlp_hidden,
                        attention == "factorized",
                        len(text_dims) > 0,
                        qk_norm,
                        gelu_approximate,
                        eps,
                    )
                    for _ in range(depth)
                ]
            )
        self.final_layer = FinalLayer(hidden_size, patch_volume, self.out_channels, eps)
        if refiner_width < 0 or (refiner_width and refiner_width % 8) or refiner_blocks < 0:
            raise ValueError(f"refiner_width={refiner_width}, refiner_blocks={refiner_blocks}; "
                             "expected 0 (no refiner) or a multiple of 8, and 0 or more blocks")
        if refiner_width and self.out_channels != in_channels:
            raise ValueError("a refiner reads the input beside the output: it needs out_channels == in_channels")
        self.refiner = (OutputRefiner(self.out_channels, hidden_size, self.patch, refiner_width, refiner_blocks, eps=eps)
                        if refiner_width else None)
        self.gradient_checkpointing = False
        self.initialize_weights()

    def initialize_weights(self):
        """Xavier for linear layers, then zero everything that feeds a gate or the output."""

        def _basic_init(module):
            if isinstance(module, nn.Linear):
                nn.init.xavier_uniform_(module.weight)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)

        self.apply(_basic_init)
        w = self.patch_embedding.weight  # like a conv kernel: xavier over (fan_in, fan_out)
        nn.init.xavier_uniform_(w.view(w.shape[0], -1))
        nn.init.normal_(self.time_embedder.linear_1.weight, std=0.02)
        nn.init.normal_(self.time_embedder.linear_2.weight, std=0.02)
        # adaLN-Zero: the shared modulation projections and every block's table start at zero.
        for proj in [self.time_proj] + ([self.context_time_proj] if self.joint else []):
            nn.init.zeros_(proj.weight)
            nn.init.zeros_(proj.bias)
        for block in self.blocks:
            nn.init.zeros_(block.modulation)
            if self.joint:
                nn.init.zeros_(block.context_modulation)
        nn.init.zeros_(self.final_layer.linear.weight)
        nn.init.zeros_(self.final_layer.linear.bias)
        if self.pooled_text_embedder is not None:
            nn.init.zeros_(self.pooled_text_embedder.linear_2.weight)
            nn.init.zeros_(self.pooled_text_embedder.linear_2.bias)
        if self.reference_embedding is not None:  # a new path computes nothing until trained
            nn.init.zeros_(self.reference_embedding.weight)
            nn.init.zeros_(self.reference_embedding.bias)
        if self.refiner is not None:
            nn.init.zeros_(self.refiner.conv_out.weight)
            nn.init.zeros_(self.refiner.conv_out.bias)

    # ---- runtime switches -----------------------------------------------------------------

    def set_attention_backend(self, backend: str) -> None:
        """'sdpa' (PyTorch scaled_dot_product_attention) or 'flash' (flash-attn on CUDA)."""
        check_backend(backend)
        for module in self.modules():
            if isinstance(module, (SelfAttention, CrossAttention)):
                module.backend = backend

    # ---- shapes ---------------------------------------------------------------------------

    def grid(self, frames: int, height: int, width: int) -> tuple[int, int, int]:
        """Token grid (T', H', W') of a latent of this size; raises if it does not divide by the patch."""
        pt, ph, pw = self.patch
        if frames % pt or height % ph or width % pw:
            raise ValueError(
                f"latent size (T={frames}, H={height}, W={width}) does not divide by the patch size "
                f"{self.patch}; use T, H, W that are multiples of ({pt}, {ph}, {pw})"
            )
        return frames // pt, height // ph, width // pw

    def num_tokens(self, frames: int, height: int, width: int) -> int:
        return math.prod(self.grid(frames, height, width))

    def _check_inputs(self, x, timestep, text_states, text_masks):
        if x.ndim != 5:
            raise ValueError(f"x has shape {tuple(x.shape)}; expected (B, C, T, H, W) latents")
        b, c, t, h, w = x.shape
        if c != self.config.in_channels:
            raise ValueError(f"x has {c} channels; this model expects in_channels={self.config.in_channels}")
        grid = self.grid(t, h, w)
        timestep = torch.as_tensor(timestep, device=x.device)
        if timestep.ndim == 0:
            timestep = timestep.expand(b)
        # Every form becomes one timestep per latent frame, then the largest per temporal patch.
        if timestep.ndim == 1:
            if timestep.shape[0] != b:
                raise ValueError(f"timestep has shape {tuple(timestep.shape)}; expected ({b},) or ({b}, {t})")
            frame_timestep = timestep[:, None].expand(b, t)
        elif timestep.ndim == 2 and timestep.shape[0] == b and timestep.shape[1] in (t, grid[0]):
            frame_timestep = timestep if timestep.shape[1] == t else repeat(timestep, "b t -> b (t pt)", pt=self.patch[0])
        else:
            raise ValueError(
                f"timestep has shape {tuple(timestep.shape)}; expected ({b},) or ({b}, {t}) (one per latent frame)"
            )
        timestep = reduce(frame_timestep, "b (t pt) -> b t", "max", pt=self.patch[0])
        dims = tuple(self.config.text_dims)
        if not dims:
            return grid, timestep, frame_timestep, [], []
        if text_states is None or len(text_states) != len(dims):
            got = "none" if text_states is None else f"{len(text_states)}"
            raise ValueError(f"text_states holds {got} tensors; this model expects one per text encoder, widths {dims}")
        if text_masks is None:
            text_masks = [None] * len(dims)
        if len(text_masks) != len(dims):
            raise ValueError(f"text_masks holds {len(text_masks)} entries; expected {len(dims)} (or None)")
        for i, (s, m, d) in enumerate(zip(text_states, text_masks, dims)):
            if s.ndim != 3 or s.shape[0] != b or s.shape[2] != d:
                raise ValueError(
                    f"text_states[{i}] has shape {tuple(s.shape)}; this model expects ({b}, L, {d}) (text_dims={dims})"
                )
            if m is not None and tuple(m.shape) != tuple(s.shape[:2]):
                raise ValueError(f"text_masks[{i}] has shape {tuple(m.shape)}; expected {tuple(s.shape[:2])}")
        return grid, timestep, frame_timestep, list(text_states), list(text_masks)

    def embed_text(self, text_states, text_masks):
        """Project each encoder's states to the model width and concatenate: (B, L, D), (B, L) or None."""
        context = torch.cat([embed(s) for embed, s in zip(self.text_embedders, text_states)], dim=1)
        if all(m is None for m in text_masks):
            return context, None
        masks = [
            torch.ones(s.shape[:2], dtype=torch.bool, device=s.device) if m is None else m.to(torch.bool)
            for s, m in zip(text_states, text_masks)
        ]
        mask = torch.cat(masks, dim=1)
        # A row with no valid token would make softmax undefined: let it see its first token.
        first = torch.zeros_like(mask)
        first[:, 0] = True
        return context, mask | (first & ~mask.any(dim=1, keepdim=True))

    def forward(
        self,
        x: torch.Tensor,
        timestep: torch.Tensor,
        text_states: list[torch.Tensor] | None = None,
        text_masks: list[torch.Tensor | None] | None = None,
        given_mask: torch.Tensor | None = None,
        reference: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """The velocity (predicted directly or from a predicted clean sample, by `prediction`).

        x: (B, C, T, H, W) noisy latents; timestep: (B,) or (B, T) sigma in [0, 1] (0 clean, 1
        noise), one per latent frame when 2D; text_states: one (B, L_i, D_i) tensor per text
        encoder; text_masks: matching (B, L_i) bool masks (True = real token) or None;
        given_mask: (B, T) bool, the latent frames that are given (conditioning), for a model
        built with `given_reference` (others ignore it). reference: (B, C, T, H, W) latents the
        reference path reads its given frames from, where they differ from x (training hides the
        given frames from x to teach that path; see `flow.training_losses`); default x.
        Returns (B, C, T, H, W).
        """
        grid, timestep, frame_timestep, text_states, text_masks = self._check_inputs(x, timestep, text_states, text_masks)
        frames = grid[0]
        dtype = self.patch_embedding.weight.dtype
        tokens = self.patch_embedding(patchify(x, self.patch).to(dtype))  # (B, N, D)
        if self.reference_embedding is not None:
            if reference is not None and reference.shape != x.shape:
                raise ValueError(f"reference has shape {tuple(reference.shape)}; expected x's {tuple(x.shape)}")
            seen = x if reference is None else reference
            tokens = tokens + self.reference_embedding(patchify(given_reference(seen, given_mask), self.patch).to(dtype))
        rope = rope_frequencies(self.head_dim, grid, self.config.rope_theta, device=x.device)  # (N, d/2)
        temb = self.time_embedder(timestep)  # (B, T', D)
        if self.pooled_text_embedder is not None:
            temb = temb + self.pooled_text_embedder(text_states, text_masks)[:, None].to(temb.dtype)
        time_mod = rearrange(self.time_proj(F.silu(temb)), "b t (k d) -> b t k d", k=self.num_modulations)
        context = context_mask = None
        if text_states:
            context, context_mask = self.embed_text(text_states, text_masks)  # (B, L, D), (B, L)

        if self.joint:
            context_time_mod = rearrange(self.context_time_proj(F.silu(temb.mean(dim=1))), "b (k d) -> b k d", k=6)
            for block in self.blocks:
                args = (tokens, time_mod, rope, frames, context, context_mask, context_time_mod)
                if torch.is_grad_enabled() and self.gradient_checkpointing:
                    tokens, context = self._gradient_checkpointing_func(block, *args)
                else:
                    tokens, context = block(*args)
        else:
            for block in self.blocks:
                args = (tokens, time_mod, rope, frames, context, context_mask)
                if torch.is_grad_enabled() and self.gradient_checkpointing:
                    tokens = self._gradient_checkpointing_func(block, *args)
                else:
                    tokens = block(*args)

        out = unpatchify(self.final_layer(tokens, temb), self.patch, grid)  # (B, C, T, H, W)
        if self.refiner is not None:
            out = self.refiner(out, x, tokens, temb, grid)
        if self.config.prediction == "sample":
            t = rearrange(frame_timestep, "b t -> b 1 t 1 1").float()  # each latent frame's own t
            out = (x.float() - out.float()) / t.clamp(min=SAMPLE_MIN_T)  # fp32: a difference of near values
        return out.to(x.dtype)


# --------------------------------------------------------------------------------------------
# Size presets: DiT's widths, depths and heads (S/B/L/XL), and a tiny one for tests.
# --------------------------------------------------------------------------------------------


def VideoDiT_tiny(**kwargs):
    return dict(hidden_size=64, depth=2, num_heads=4, **kwargs)


def VideoDiT_S(**kwargs):
    return dict(hidden_size=384, depth=12, num_heads=6, **kwargs)


def VideoDiT_B(**kwargs):
    return dict(hidden_size=768, depth=12, num_heads=12, **kwargs)


def VideoDiT_L(**kwargs):
    return dict(hidden_size=1024, depth=24, num_heads=16, **kwargs)


def VideoDiT_XL(**kwargs):
    return dict(hidden_size=1152, depth=28, num_heads=16, **kwargs)


PRESETS = {
    "tiny": VideoDiT_tiny(),
    "S": VideoDiT_S(),
    "B": VideoDiT_B(),
    "L": VideoDiT_L(),
    "XL": VideoDiT_XL(),
}
