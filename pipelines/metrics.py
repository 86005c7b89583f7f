"""Image and video quality metrics: PSNR and SSIM.

Both take uint8 frames (T, H, W, 3) or one frame (H, W, 3) (or float arrays with a `data_range`)
and compare a test clip against a reference of the same shape.

SSIM follows Wang et al. (2004) with the conventions of `skimage.metrics.structural_similarity`
at its defaults: a 7x7 uniform window, K1 = 0.01, K2 = 0.03, sample covariances, the mean over
the positions where the window fits inside the frame, per channel; a clip's SSIM is the mean over
its frames and channels.
"""

from __future__ import annotations

import math

import numpy as np


def _pair(reference, test) -> tuple[np.ndarray, np.ndarray]:
    a, b = np.asarray(reference), np.asarray(test)
    if a.shape != b.shape:
        raise ValueError(f"cannot compare frames of shape {a.shape} with {b.shape}")
    if a.ndim == 3:
        a, b = a[None], b[None]
    if a.ndim != 4:
        raise ValueError(f"expected frames (T, H, W, C) or (H, W, C), got shape {a.shape}")
    return a, b


def psnr(reference, test, data_range: float = 255.0) -> float:
    """Peak signal-to-noise ratio in dB over all frames, pixels and channels (inf when equal)."""
    a, b = _pair(reference, test)
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return math.inf if mse == 0 else 10.0 * math.log10(data_range**2 / mse)


def ssim(reference, test, data_range: float = 255.0, win_size: int = 7) -> float:
    """Mean structural similarity over frames and channels (1 when equal)."""
    import torch
    import torch.nn.functional as F

    a, b = _pair(reference, test)
    if min(a.shape[1:3]) < win_size:
        raise ValueError(f"SSIM needs frames of at least {win_size}x{win_size} pixels, got {a.shape[2]}x{a.shape[1]}")
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    n = win_size * win_size
    cov_norm = n / (n - 1)  # sample covariance
    total, count = 0.0, 0
    for start in range(0, a.shape[0], 8):  # a few frames at a time keeps memory flat for long clips
        x = torch.from_numpy(a[start:start + 8].astype(np.float64)).permute(0, 3, 1, 2)  # (t, C, H, W)
        y = torch.from_numpy(b[start:start + 8].astype(np.float64)).permute(0, 3, 1, 2)
        mean = lambda v: F.avg_pool2d(v, win_size, stride=1)  # noqa: E731 - windows inside the frame
        ux, uy = mean(x), mean(y)
        vx = cov_norm * (mean(x * x) - ux * ux)
        vy = cov_norm * (mean(y * y) - uy * uy)
        vxy = cov_norm * (mean(x * y) - ux * uy)
        s = ((2 * ux * uy + c1) * (2 * vxy + c2)) / ((ux * ux + uy * uy + c1) * (vx + vy + c2))
        total += float(s.mean(dim=(2, 3)).sum())
        count += s.shape[0] * s.shape[1]
    return total / count


__all__ = ["psnr", "ssim"]
