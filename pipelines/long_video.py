"""The one sampler behind every task: windows of latent frames, some given, the rest sampled.

A clip is a line of latent frames 0 .. L-1. Some are known before sampling starts: the encoded
still of image-to-video (frame 0), the encoded tail of the input video being extended (a prefix),
the last still of an interpolation (frame L-1). The DiT denoises a window of at most its native
length at a time, with the known frames of the window given (per-frame timestep 0, or the small
context noise the model was trained with) and noise elsewhere:

    text-to-video      [n n n n n]                  nothing given
    image-to-video     [G n n n n]                  the still's latent given
    extension          ... G G][G n n n n]           the input's last latents given
    interpolation      [G n n n G]                  first and last given
    long video         [n n n n n] [G n n n n] [G n n n n] ...   each window given the last
                                                                 `context` latents of the one before

Each window's new latents go straight through the VAE's streaming decoder, whose causal caches
have seen every latent before them, so pixel frames come out chunk by chunk and nothing grows
with the length of the clip: the sampler keeps one window of latents, the decoder keeps its
caches, and the frames go to the caller (a file writer) as they are made.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterator

import torch


@dataclass(frozen=True)
class Window:
    """Latent frames [start, stop) of the clip, denoised together; the first `given` are known."""

    start: int
    stop: int
    given: int

    @property
    def length(self) -> int:
        return self.stop - self.start

    @property
    def new(self) -> int:
        return self.length - self.given


def plan_windows(total: int, native: int, known: int = 0, context: int = 1) -> list[Window]:
    """Windows that cover latent frames [known, total) given the first `known`.

    Every window is `native` frames long (shorter only when the whole clip is). A window starts
    `context` frames before the first frame still to make, so that it sees the end of what came
    before; the last window is pulled back to end exactly at `total`, and then sees more context.

    >>> plan_windows(13, 5, context=1)
    [Window(start=0, stop=5, given=0), Window(start=4, stop=9, given=1), Window(start=8, stop=13, given=1)]
    """
    if total < 1 or native < 1:
        raise ValueError(f"plan_windows(total={total}, native={native}): both must be at least 1")
    if not 0 <= known <= total:
        raise ValueError(f"plan_windows: known={known} must lie in [0, total={total}]")
    if total > native and not 1 <= context < native:
        raise ValueError(f"context={context} latent frames: a long clip needs 1 <= context < native={native}")
    windows, end = [], known
    if known == total:  # nothing to make (all given): one window that only passes through
        return windows
    while end < total:
        start = 0 if end == 0 else max(0, min(end - context, total - native))
        stop = min(start + native, total)
        windows.append(Window(start, stop, end - start))
        end = stop
    return windows


def sample_windows(
    windows: list[Window],
    sample_window: Callable[[int, Window, torch.Tensor, torch.Tensor], torch.Tensor],
    like: torch.Tensor,
    known: torch.Tensor | None = None,
    end_given: torch.Tensor | None = None,
) -> Iterator[tuple[int, Window, torch.Tensor]]:
    """Run `sample_window` on each window in turn and yield (index, window, its new latents).

    sample_window(index, window, given, given_mask) -> the window's latents (B, C, T, H, W):
    `given` holds the window's known latents (zeros elsewhere) and `given_mask` (B, T) marks them.
    like: a (B, C, 1, H, W) tensor with the latents' batch, channels, size, dtype and device.
    known: (B, C, k, H, W) latents of the clip's first k frames, or None. end_given: (B, C, 1, H, W)
    latent of the clip's last frame, held fixed in the window that reaches it (interpolation).

    Only the latest window's latents are kept between windows: memory does not grow with length.
    """
    b, c, _, h, w = like.shape
    tail, tail_start = known, 0  # the latest latents, which end where the clip so far ends
    total = windows[-1].stop if windows else 0
    for index, window in enumerate(windows):
        given = torch.zeros(b, c, window.length, h, w, dtype=like.dtype, device=like.device)
        mask = torch.zeros(b, window.length, dtype=torch.bool, device=like.device)
        if window.given:
            offset = window.start - tail_start
            given[:, :, : window.given] = tail[:, :, offset : offset + window.given]
            mask[:, : window.given] = True
        if end_given is not None and window.stop == total:
            given[:, :, -1:] = end_given
            mask[:, -1] = True
        latents = sample_window(index, window, given, mask)  # (B, C, T, H, W)
        tail, tail_start = latents, window.start
        yield index, window, latents[:, :, window.given :]
