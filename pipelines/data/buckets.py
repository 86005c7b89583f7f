"""Buckets: the clip shapes a training batch may have.

A bucket is (frames, height, width). Every batch is drawn from one bucket, so a batch stacks into
one tensor while the data set as a whole mixes lengths, sizes and aspect ratios (Sora's "any size,
length, aspect"). `make_buckets` derives a bucket list from a token budget: for each frame count
and each aspect ratio it picks the largest size whose DiT token count fits the budget (and whose
area does not exceed `base_size` squared). `choose_bucket` places a file in the bucket that keeps
the most of it: the longest clip it can fill, then the nearest aspect ratio, then the larger area.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterable, Sequence

from pipelines.errors import UserError

# width / height ratios from tall portrait to wide landscape
DEFAULT_ASPECTS: tuple[float, ...] = (9 / 16, 2 / 3, 3 / 4, 1.0, 4 / 3, 3 / 2, 16 / 9)


@dataclass(frozen=True, order=True)
class Bucket:
    """One clip shape: `frames` pixel frames (1 + 4k) of `height` x `width` pixels."""

    frames: int
    height: int
    width: int

    @property
    def aspect(self) -> float:
        """width / height"""
        return self.width / self.height

    def tokens(self, spatial_multiple: int = 16, temporal_factor: int = 4) -> int:
        """DiT tokens of a clip this shape: latent frames x (H / multiple) x (W / multiple), where
        `spatial_multiple` is the VAE's spatial factor times the patch size (8 x 2 by default)."""
        latent_frames = 1 + (self.frames - 1) // temporal_factor
        return latent_frames * (self.height // spatial_multiple) * (self.width // spatial_multiple)

    def __str__(self) -> str:
        return f"{self.frames}x{self.height}x{self.width}"


def check_frames(frames: int, temporal_factor: int = 4) -> int:
    """A frame count must be 1 + k * temporal_factor (the causal VAE's clip lengths)."""
    if not isinstance(frames, int) or frames < 1 or (frames - 1) % temporal_factor:
        examples = ", ".join(str(1 + k * temporal_factor) for k in range(5))
        raise UserError(f"a clip must have 1 + {temporal_factor}k frames ({examples}, ...), got {frames}")
    return frames


def check_buckets(buckets: Iterable[Bucket], spatial_multiple: int = 16, temporal_factor: int = 4) -> list[Bucket]:
    """Validate an explicit bucket list; returns it sorted and without duplicates."""
    out = []
    for b in buckets:
        if not isinstance(b, Bucket):
            b = Bucket(*b)
        check_frames(b.frames, temporal_factor)
        if b.height < spatial_multiple or b.width < spatial_multiple or b.height % spatial_multiple or b.width % spatial_multiple:
            raise UserError(f"bucket {b}: height and width must be positive multiples of {spatial_multiple} "
                            f"(the VAE's spatial factor times the patch size)")
        out.append(b)
    if not out:
        raise UserError("the bucket list is empty; give at least one Bucket(frames, height, width)")
    return sorted(set(out))


def make_buckets(max_tokens: int | None, frames: Sequence[int], *, base_size: int = 256,
                 aspects: Sequence[float] = DEFAULT_ASPECTS, spatial_multiple: int = 16,
                 temporal_factor: int = 4) -> list[Bucket]:
    """Buckets for every frame count in `frames` and every aspect ratio (width / height) in `aspects`.

    Each bucket has the largest size whose area is at most `base_size` squared and whose token count
    (see `Bucket.tokens`) is at most `max_tokens`; so with a fixed budget, longer clips get smaller
    frames. `max_tokens=None` means no budget beyond the base area.
    """
    if base_size < spatial_multiple:
        raise UserError(f"base size {base_size} is smaller than one patch ({spatial_multiple} pixels)")
    if not aspects or any(not a > 0 for a in aspects):
        raise UserError(f"aspect ratios must be positive numbers (width / height), got {list(aspects)}")
    area_units = (base_size // spatial_multiple) ** 2  # patches per frame at the base size
    out = set()
    for f in sorted(set(frames)):
        check_frames(f, temporal_factor)
        latent_frames = 1 + (f - 1) // temporal_factor
        per_frame = area_units if max_tokens is None else min(area_units, max_tokens // latent_frames)
        if per_frame < 1:
            raise UserError(f"a token budget of {max_tokens} cannot hold a clip of {f} frames "
                            f"({latent_frames} latent frames need at least {latent_frames} tokens); "
                            "raise --max-tokens or use fewer frames")
        for aspect in aspects:
            h, w = _largest_grid(per_frame, aspect)
            out.add(Bucket(f, h * spatial_multiple, w * spatial_multiple))
    return sorted(out)


def _largest_grid(units: int, aspect: float, tolerance: float = 0.02) -> tuple[int, int]:
    """(h, w) in patches with h * w <= units: the largest area whose ratio w / h is within
    `tolerance` (relative) of `aspect`, or the nearest ratio when the budget is too small for that."""
    best_area, nearest = None, None
    for h in range(1, units + 1):
        for w in {max(1, math.floor(h * aspect)), max(1, math.ceil(h * aspect))}:
            if h * w > units:
                continue
            error = abs(math.log((w / h) / aspect))
            if error <= tolerance and (best_area is None or (h * w, -error) > (best_area[0], -best_area[1])):
                best_area = (h * w, error, h, w)
            if nearest is None or (error, -(h * w)) < (nearest[0], -nearest[1]):
                nearest = (error, h * w, h, w)
    chosen = best_area if best_area is not None else nearest
    return chosen[2], chosen[3]


def choose_bucket(buckets: Sequence[Bucket], height: int, width: int, available_frames: int,
                  *, image: bool, image_frames: int = 1) -> int | None:
    """Index of the bucket for a file of `height` x `width` with `available_frames` frames at the
    target rate, or None when none fits (a video shorter than every video bucket). An image goes
    to buckets of `image_frames` frames; a video to the longest bucket it can fill, never to the
    image length unless that is all the list holds for videos."""
    if image:
        candidates = [i for i, b in enumerate(buckets) if b.frames == image_frames]
    else:
        video = [i for i, b in enumerate(buckets) if b.frames != image_frames] or list(range(len(buckets)))
        candidates = [i for i in video if buckets[i].frames <= available_frames]
    if not candidates:
        return None
    longest = max(buckets[i].frames for i in candidates)
    aspect = width / height

    def key(i: int):
        b = buckets[i]
        return (round(abs(math.log(b.aspect / aspect)), 6), -(b.height * b.width))

    return min((i for i in candidates if buckets[i].frames == longest), key=key)
