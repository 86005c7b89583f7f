"""Turning a scene into pixels: uint8 (T, H, W, 3) clips at any size, in numpy.

Shapes are drawn from signed distance functions with a one-pixel soft edge (anti-aliased), only
inside their bounding box. Camera clips sample the photo bilinearly through a window that moves or
scales, from a copy of the photo already shrunk to about the output's resolution (no aliasing).
"""

from __future__ import annotations

import math

import numpy as np

from pipelines.toyworld.photos import PHOTOS, prefiltered_photo
from pipelines.toyworld.scenes import PALETTE, Background, Camera, Scene, camera_windows, shape_positions

_SQRT2 = math.sqrt(2.0)
_SQRT5 = math.sqrt(5.0)


def shape_sdf(kind: str, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Signed distance to a shape of half-extent 1 centred at 0 (negative inside), y pointing down.

    Every shape fills the box [-1, 1] x [-1, 1]: a circle, a square, an upright triangle (apex at
    the top, base along the bottom), a diamond (corners at the middles of the box's sides)."""
    if kind == "circle":
        return np.sqrt(u * u + v * v) - 1.0
    if kind == "square":
        return np.maximum(np.abs(u), np.abs(v)) - 1.0
    if kind == "diamond":
        return (np.abs(u) + np.abs(v) - 1.0) / _SQRT2
    if kind == "triangle":
        return np.maximum(v - 1.0, np.maximum(2 * u - v - 1.0, -2 * u - v - 1.0) / _SQRT5)
    raise ValueError(f"unknown shape {kind!r}")


def render_background(background: Background, height: int, width: int) -> np.ndarray:
    """float32 (H, W, 3) in [0, 255]. Textures are laid out in units of the shorter side, so a scene
    looks the same at any resolution."""
    a = np.asarray(background.tone_a, dtype=np.float32)
    if background.name in ("black", "white", "gray", "photo"):
        return np.broadcast_to(a, (height, width, 3)).astype(np.float32)
    b = np.asarray(background.tone_b, dtype=np.float32)
    side = min(height, width)
    yy = ((np.arange(height) + 0.5) / side)[:, None]
    xx = ((np.arange(width) + 0.5) / side)[None, :]
    c, s = math.cos(background.angle), math.sin(background.angle)
    along = xx * c + yy * s
    across = -xx * s + yy * c
    p = background.period
    if background.name == "gradient":
        t = along - along.min()
        t = t / max(float(t.max()), 1e-6)
    elif background.name == "stripes":
        t = 0.5 + 0.5 * np.tanh(2.0 * np.sin(2 * math.pi * along / p)) / math.tanh(2.0)
    elif background.name == "checker":
        t = 0.5 + 0.5 * np.tanh(3.0 * np.sin(math.pi * along / p) * np.sin(math.pi * across / p)) / math.tanh(3.0)
    elif background.name == "noise":
        rng = np.random.default_rng(background.seed)
        gy, gx = yy[:, 0] / p, xx[0] / p
        grid = rng.uniform(0, 1, size=(int(gy.max()) + 2, int(gx.max()) + 2))
        iy, ix = np.floor(gy).astype(int), np.floor(gx).astype(int)
        fy, fx = gy - iy, gx - ix
        fy, fx = (fy * fy * (3 - 2 * fy))[:, None], (fx * fx * (3 - 2 * fx))[None, :]  # smoothstep
        top = grid[iy][:, ix] * (1 - fx) + grid[iy][:, ix + 1] * fx
        bottom = grid[iy + 1][:, ix] * (1 - fx) + grid[iy + 1][:, ix + 1] * fx
        t = top * (1 - fy) + bottom * fy
    else:
        raise ValueError(f"unknown background {background.name!r}")
    t = np.broadcast_to(t, (height, width)).astype(np.float32)[..., None]
    return a * (1 - t) + b * t


def _draw_shapes(clip: np.ndarray, scene: Scene) -> None:
    frames, height, width, _ = clip.shape
    side = min(height, width)
    for shape in scene.shapes:
        colour = np.asarray(PALETTE[shape.colour], dtype=np.float32)
        xs, ys, sizes = shape_positions(shape, frames, width / height)
        for t in range(frames):
            cx, cy, r = xs[t] * width, ys[t] * height, max(sizes[t] * side, 0.5)
            y0, y1 = max(0, int(cy - r - 1)), min(height, int(math.ceil(cy + r + 1)))
            x0, x1 = max(0, int(cx - r - 1)), min(width, int(math.ceil(cx + r + 1)))
            if y0 >= y1 or x0 >= x1:
                continue
            v = ((np.arange(y0, y1) + 0.5 - cy) / r)[:, None]
            u = ((np.arange(x0, x1) + 0.5 - cx) / r)[None, :]
            cover = np.clip(0.5 - r * shape_sdf(shape.kind, u, v), 0.0, 1.0)[..., None]
            patch = clip[t, y0:y1, x0:x1]
            patch += (colour - patch) * cover


def render_camera(camera: Camera, height: int, width: int, frames: int) -> np.ndarray:
    """float32 (T, H, W, 3): the photo seen through the camera's window at every frame."""
    ph, pw = PHOTOS[camera.photo].size
    xs, ys, hs = camera_windows(camera, frames)
    scale = hs * ph / height  # photo pixels per output pixel, per frame
    level = max(0, int(math.floor(4 * math.log2(max(float(scale.min()), 1.0)))))
    image = prefiltered_photo(camera.photo, camera.flip, level)
    ih, iw = image.shape[:2]
    # output pixel centres -> photo coordinates -> coordinates in the shrunk copy (pixel k spans [k, k+1])
    qy = (ys[:, None] * ph + (np.arange(height)[None, :] + 0.5 - height / 2) * scale[:, None]) * (ih / ph) - 0.5
    qx = (xs[:, None] * pw + (np.arange(width)[None, :] + 0.5 - width / 2) * scale[:, None]) * (iw / pw) - 0.5
    y0 = np.floor(qy).astype(np.int64)
    x0 = np.floor(qx).astype(np.int64)
    wy = (qy - y0).astype(np.float32)[:, :, None, None]
    wx = (qx - x0).astype(np.float32)[:, None, :, None]
    # flat indices into the (ih * iw, 3) pixel list: one take per corner is much faster than 2-D indexing
    ya, yb = (np.clip(y0, 0, ih - 1) * iw)[:, :, None], (np.clip(y0 + 1, 0, ih - 1) * iw)[:, :, None]
    xa, xb = np.clip(x0, 0, iw - 1)[:, None, :], np.clip(x0 + 1, 0, iw - 1)[:, None, :]
    pixels = image.reshape(ih * iw, 3)
    top = pixels.take(ya + xa, axis=0) * (1 - wx) + pixels.take(ya + xb, axis=0) * wx
    bottom = pixels.take(yb + xa, axis=0) * (1 - wx) + pixels.take(yb + xb, axis=0) * wx
    return top * (1 - wy) + bottom * wy


def render_scene(scene: Scene, height: int = 64, width: int = 64, frames: int | None = None) -> np.ndarray:
    """The clip as uint8 (T, H, W, 3); `frames` defaults to the length the scene was drawn for."""
    frames = scene.frames if frames is None else int(frames)
    if frames < 1 or height < 1 or width < 1:
        raise ValueError(f"cannot render {frames} frames of {height}x{width}")
    if scene.camera is not None:
        clip = render_camera(scene.camera, height, width, frames)
    else:
        clip = np.repeat(render_background(scene.background, height, width)[None], frames, axis=0)
        _draw_shapes(clip, scene)
    return np.clip(np.rint(clip), 0, 255).astype(np.uint8)
