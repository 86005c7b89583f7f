"""Streaming encode and decode: chunks in time, tiles in space.

A `StreamingEncoder` / `StreamingDecoder` holds one cache dict per spatial tile (one in all when
tiling is off); every causal layer keeps there what it needs from the frames before the current
chunk. Feeding a clip chunk by chunk therefore gives the same result as one pass over the whole
clip, while the working memory depends on the chunk size, not the clip length.

Tiles (when `vae.enable_tiling()` is on and a frame is larger than one tile) overlap by
`tile_overlap` pixels; each output pixel is the average of the tiles that cover it, weighted by
linear ramps across the overlaps, so there are no seams. Tiling is an approximation (a tile sees
less context than the whole frame); chunking in time is exact.

`CausalVideoVAE.encode` / `decode` are a streaming encoder / decoder fed one whole clip.
"""

from __future__ import annotations

import torch

from vae3d.model import CausalVideoVAE, DiagonalGaussian


def tile_starts(size: int, tile: int, stride: int) -> list[int]:
    """Start offsets of tiles of length `tile` every `stride` along `size`; the last one ends at `size`."""
    if size <= tile:
        return [0]
    starts = list(range(0, size - tile, stride))
    return starts + [size - tile]


def ramp(length: int, start: int, size: int, overlap: int, device=None) -> torch.Tensor:
    """Blending weights (length,) of a tile at `start` along an axis of `size`: linear ramps of
    `overlap` samples on each side that has a neighbour, 1 elsewhere (never 0)."""
    w = torch.ones(length, device=device)
    n = min(overlap, length)
    if n > 0:
        up = torch.arange(1, n + 1, dtype=torch.float32, device=device) / (n + 1)
        if start > 0:
            w[:n] = up
        if start + length < size:
            w[-n:] = torch.minimum(w[-n:], up.flip(0))
    return w


class _Tiler:
    """Runs a chunk function over overlapping tiles of a frame and blends the results."""

    def __init__(self, vae: CausalVideoVAE):
        self.vae = vae
        self.caches: dict[tuple[int, int], dict] = {}

    def cache(self, key: tuple[int, int]) -> dict:
        return self.caches.setdefault(key, {})

    def run(self, fn, x: torch.Tensor, in_tile: int, in_stride: int, scale_num: int, scale_den: int,
            out_overlap: int) -> torch.Tensor:
        """fn(x_tile, cache) over tiles of x's last two axes (tile `in_tile`, stride `in_stride`);
        an input offset p lands at output offset p * scale_num / scale_den."""
        h, w = x.shape[-2:]
        if not self.vae.use_tiling or (h <= in_tile and w <= in_tile):
            return fn(x, self.cache((0, 0)))
        out = weight = None
        for y0 in tile_starts(h, in_tile, in_stride):
            for x0 in tile_starts(w, in_tile, in_stride):
                tile = fn(x[..., y0:y0 + in_tile, x0:x0 + in_tile], self.cache((y0, x0)))
                if out is None:
                    oh, ow = h * scale_num // scale_den, w * scale_num // scale_den
                    out = tile.new_zeros(tile.shape[:-2] + (oh, ow), dtype=torch.float32)
                    weight = torch.zeros(oh, ow, device=tile.device)
                th, tw = tile.shape[-2:]
                oy, ox = y0 * scale_num // scale_den, x0 * scale_num // scale_den
                wy = ramp(th, oy, out.shape[-2], out_overlap, tile.device)
                wx = ramp(tw, ox, out.shape[-1], out_overlap, tile.device)
                wt = wy[:, None] * wx[None, :]  # (th, tw)
                out[..., oy:oy + th, ox:ox + tw] += tile.float() * wt
                weight[oy:oy + th, ox:ox + tw] += wt
        return (out / weight).to(tile.dtype)


class StreamingEncoder:
    """Encode a clip chunk by chunk: `encode(frames)` returns the posterior of the latent frames
    that the frames given so far complete (the first latent frame needs frame 0, every later one
    `temporal_factor` more frames); frames that do not complete one wait for the next call."""

    def __init__(self, vae: CausalVideoVAE):
        self.vae = vae
        self.tiler = _Tiler(vae)
        self.pending: torch.Tensor | None = None
        self.frames_encoded = 0

    @property
    def pending_frames(self) -> int:
        return 0 if self.pending is None else int(self.pending.shape[2])

    def _check(self, frames: torch.Tensor) -> None:
        vae = self.vae
        if frames.dim() != 5:
            raise ValueError(f"frames must be (B, C, T, H, W), got shape {tuple(frames.shape)}")
        if frames.shape[2] == 0:
            return
        probe = frames[:, :, :1]
        vae.check_video(probe)  # channels, size, dtype
        if not bool(torch.isfinite(frames).all()):
            raise ValueError("video contains NaN or Inf values")
        if self.pending is not None and self.pending.shape[-2:] != frames.shape[-2:]:
            raise ValueError(f"frame size changed mid-stream from {tuple(self.pending.shape[-2:])} to "
                             f"{tuple(frames.shape[-2:])}; start a new streaming encoder")

    def _encode_aligned(self, x: torch.Tensor, out: torch.Tensor | None = None, at: int = 0):
        """Encode frames that start at a latent-frame boundary and end at one; writes the moments
        into `out` at latent offset `at` when given, else returns them."""
        vae = self.vae
        sf = vae.spatial_factor
        step = vae.encode_chunk_frames
        pieces = []
        t = 0
        while t < x.shape[2]:
            n = step + (1 if self.frames_encoded == 0 else 0)
            chunk = x[:, :, t:t + n]
            moments = self.tiler.run(vae._encode_chunk, chunk, vae.tile_size, vae.tile_size - vae.tile_overlap,
                                     1, sf, vae.tile_overlap // sf)
            if out is not None:
                out[:, :, at:at + moments.shape[2]] = moments
                at += moments.shape[2]
            else:
                pieces.append(moments)
            self.frames_encoded += chunk.shape[2]
            t += chunk.shape[2]
        if out is None:
            return torch.cat(pieces, dim=2) if pieces else None
        return out

    @torch.no_grad()
    def encode(self, frames: torch.Tensor) -> DiagonalGaussian:
        """frames (B, 3, n, H, W) in [-1, 1], any n -> posterior over the raw latent frames completed."""
        self._check(frames)
        x = frames if self.pending is None else torch.cat([self.pending, frames], dim=2)
        tf = self.vae.temporal_factor
        n = x.shape[2]
        usable = (1 + tf * ((n - 1) // tf) if n >= 1 else 0) if self.frames_encoded == 0 else tf * (n // tf)
        self.pending = x[:, :, usable:] if usable < n else None
        moments = self._encode_aligned(x[:, :, :usable]) if usable > 0 else None
        if moments is None:
            b, _, _, h, w = x.shape
            sf = self.vae.spatial_factor
            moments = x.new_zeros(b, 2 * self.vae.config.latent_channels, 0, h // sf, w // sf)
        return DiagonalGaussian(moments.contiguous())

    def encode_latents(self, frames: torch.Tensor, sample: bool = False,
                       generator: torch.Generator | None = None) -> torch.Tensor:
        """Like `encode`, as normalized latents (the posterior mean, or a sample)."""
        posterior = self.encode(frames)
        return self.vae.normalize_latents(posterior.sample(generator) if sample else posterior.mode())

    @torch.no_grad()
    def encode_clip(self, video: torch.Tensor) -> DiagonalGaussian:
        """A whole clip of 1 + 4k frames (already checked) -> its posterior; the moments are written
        into one preallocated tensor as the chunks complete."""
        vae = self.vae
        b, _, t, h, w = video.shape
        sf = vae.spatial_factor
        first = video[:, :, :1 + vae.encode_chunk_frames]
        head = self._encode_aligned(first)
        out = head.new_empty(b, head.shape[1], vae.latent_num_frames(t), h // sf, w // sf)
        out[:, :, :head.shape[2]] = head
        del head
        if first.shape[2] < t:
            self._encode_aligned(video[:, :, first.shape[2]:], out, vae.latent_num_frames(first.shape[2]))
        return DiagonalGaussian(out)


class StreamingDecoder:
    """Decode latents chunk by chunk: `decode(z)` returns the pixel frames of exactly the given
    (normalized) latent frames, continuing the clip decoded so far. Latent frame 0 of the clip gives
    one frame, every later one `temporal_factor` frames."""

    def __init__(self, vae: CausalVideoVAE):
        self.vae = vae
        self.tiler = _Tiler(vae)
        self.latent_frames_decoded = 0

    def _decode_pieces(self, raw: torch.Tensor):
        vae = self.vae
        sf = vae.spatial_factor
        tile_l = vae.tile_size // sf
        stride_l = (vae.tile_size - vae.tile_overlap) // sf
        for t in range(0, raw.shape[2], vae.decode_chunk_latents):
            chunk = raw[:, :, t:t + vae.decode_chunk_latents]
            pixels = self.tiler.run(vae._decode_chunk, chunk, tile_l, stride_l, sf, 1, vae.tile_overlap)
            self.latent_frames_decoded += chunk.shape[2]
            yield pixels.clamp_(-1.0, 1.0)

    def _check(self, z: torch.Tensor) -> None:
        self.vae.check_latents(z)

    @torch.no_grad()
    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Normalized latents (B, C, t, h, w) -> pixels (B, 3, n, 8h, 8w) in [-1, 1]."""
        self._check(z)
        return self.decode_raw(self.vae.denormalize_latents(z))

    @torch.no_grad()
    def decode_raw(self, raw: torch.Tensor) -> torch.Tensor:
        """Raw latents (B, C, t, h, w) -> pixels (B, 3, n, 8h, 8w) in [-1, 1]."""
        self._check(raw)
        return torch.cat([p.contiguous() for p in self._decode_pieces(raw)], dim=2)

    @torch.no_grad()
    def decode_clip(self, raw: torch.Tensor) -> torch.Tensor:
        """A whole clip of raw latents (already checked) -> its pixels, written chunk by chunk into
        one preallocated tensor."""
        vae = self.vae
        b, _, t, h, w = raw.shape
        sf = vae.spatial_factor
        out, at = None, 0
        for pixels in self._decode_pieces(raw):
            if out is None:
                out = pixels.new_empty(b, pixels.shape[1], vae.num_frames_for_latents(t), h * sf, w * sf)
            out[:, :, at:at + pixels.shape[2]] = pixels
            at += pixels.shape[2]
        return out


__all__ = ["StreamingDecoder", "StreamingEncoder", "ramp", "tile_starts"]
