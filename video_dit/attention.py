"""The one attention function of video_dit.

    attention(q, k, v, mask=None) -> out

q: (B, Lq, H, d), k and v: (B, Lk, H, d), mask: (B, Lk) bool, True where a key may be attended
(a key-padding mask: text prompts of different lengths). Returns (B, Lq, H, d).

The (batch, length, heads, head_dim) layout is the one the projections produce, the one
flash-attn takes, and the one PyTorch's CPU flash kernel writes its output in, so no copies are
made around the call.

Backends:
- "sdpa": torch.nn.functional.scaled_dot_product_attention (every device, every dtype);
- "flash": flash-attn 2 on CUDA in fp16/bf16; with a mask it runs the varlen kernel on the
  unpadded keys. Used automatically (backend=None) when flash-attn is installed and the inputs
  qualify; otherwise SDPA.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from einops import rearrange

try:  # optional: pip install flash-attn (CUDA only)
    from flash_attn import flash_attn_func, flash_attn_varlen_func
except ImportError:  # pragma: no cover - depends on the installation
    flash_attn_func = flash_attn_varlen_func = None

BACKENDS = ("sdpa", "flash")


def flash_available() -> bool:
    """True when flash-attn is installed and a CUDA device is present."""
    return flash_attn_func is not None and torch.cuda.is_available()


def check_backend(backend: str | None) -> str | None:
    """Validate a backend name; 'flash' is refused with a clear message when it cannot run."""
    if backend is None or backend == "sdpa":
        return backend
    if backend == "flash":
        if not flash_available():
            raise ValueError(
                "attention backend 'flash' needs the flash-attn package and a CUDA GPU; "
                "install flash-attn on a CUDA machine or use 'sdpa'"
            )
        return backend
    raise ValueError(f"unknown attention backend {backend!r}; expected one of {BACKENDS}")


def _flash_ok(q: torch.Tensor) -> bool:
    return flash_attn_func is not None and q.is_cuda and q.dtype in (torch.float16, torch.bfloat16)


def attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    mask: torch.Tensor | None = None,
    backend: str | None = None,
) -> torch.Tensor:
    """Multi-head attention over (B, L, H, d) tensors with an optional (B, Lk) key mask."""
    if backend == "flash" or (backend is None and _flash_ok(q)):
        if not _flash_ok(q):
            raise ValueError(
                f"flash attention needs CUDA fp16/bf16 tensors and flash-attn installed; got {q.dtype} on "
                f"{q.device}. Use backend 'sdpa'."
            )
        if mask is None:
            return flash_attn_func(q, k, v)
        return _flash_varlen(q, k, v, mask)
    if mask is not None:
        mask = rearrange(mask, "b l -> b 1 1 l")
    out = F.scaled_dot_product_attention(
        q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), attn_mask=mask
    )  # (B, H, Lq, d)
    return out.transpose(1, 2)


def _flash_varlen(q, k, v, mask):
    """Key-padding attention with flash-attn's varlen kernel: drop padded keys, keep every query."""
    b, lq, h, d = q.shape
    lk = k.shape[1]
    lengths_k = mask.sum(dim=1, dtype=torch.int32)
    cu_k = F.pad(lengths_k.cumsum(0, dtype=torch.int32), (1, 0))
    cu_q = torch.arange(0, (b + 1) * lq, lq, dtype=torch.int32, device=q.device)
    keep = rearrange(mask, "b l -> (b l)")
    k_packed = rearrange(k, "b l h d -> (b l) h d")[keep]
    v_packed = rearrange(v, "b l h d -> (b l) h d")[keep]
    out = flash_attn_varlen_func(
        rearrange(q, "b l h d -> (b l) h d"),
        k_packed,
        v_packed,
        cu_seqlens_q=cu_q,
        cu_seqlens_k=cu_k,
        max_seqlen_q=lq,
        max_seqlen_k=lk,
    )
    return rearrange(out, "(b l) h d -> b l h d", b=b)
