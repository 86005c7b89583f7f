"""A deterministic analyser for clips: what is in them and how it moves. numpy only.

- Colour segmentation: every pixel is matched to the toy world's named palette by hue (saturated
  pixels) or as white (bright, unsaturated pixels); the backgrounds never match.
- Shapes: the largest connected blob of a colour is compared with a circle, a square, a triangle
  and a diamond fitted to its bounding box; the best overlap names it.
- Tracking: the blob's centroid and area in every frame give the direction it moves (eight
  directions, or still), whether it bounces (a turning point in its path) and whether it grows.
- Global motion: phase correlation between frames gives the content's shift (a pan); shifts of
  blocks around the frame's centre give its scale (a zoom). "The camera pans left" means the
  content moves right.
- Measures: PSNR, and the drift of the mean colour from chunk to chunk of a long clip.

`judge_prompt_adherence(frames, spec)` puts it together: does a clip show what a prompt asked for?
Clips are uint8 (T, H, W, 3); positions are fractions of the width and height, y pointing down.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, field

import numpy as np

from pipelines.toyworld.captions import parse_prompt
from pipelines.toyworld.scenes import (
    BOUNCES, DIRECTIONS, PALETTE, PAN_CONTENT_DIRECTION, ObjectSpec, PromptSpec, Scene,
)

MIN_SATURATION = 0.35  # a pixel this saturated (and this bright) has a hue worth naming
MIN_VALUE = 0.35
WHITE_MAX_SATURATION = 0.2
WHITE_MIN_VALUE = 0.8
MIN_AREA = 0.002  # a blob smaller than this fraction of the frame is not an object
MIN_PRESENCE = 0.75  # an object must be found in this fraction of frames
STILL_DISTANCE = 0.08  # moving less than this (fraction of the frame) is standing still
BOUNCE_TURN = 0.06  # a bounce is a turning point at least this far from both ends of the path
GROW_RATIO = 1.4  # area ratio last/first for growing (and 1/GROW_RATIO for shrinking)
ZOOM_RATIO = 1.15  # content scale over the clip for a zoom
PAN_DISTANCE = 0.03  # content shift (fraction of the frame) for a pan
LOWPASS = 0.15  # phase correlation weighs frequencies by a Gaussian of this width (cycles per pixel)

_HUES = {}  # palette name -> hue in degrees, for the saturated colours


def rgb_to_hsv(frames: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Hue in degrees [0, 360), saturation and value in [0, 1], for uint8 (..., 3) pixels."""
    rgb = np.asarray(frames, dtype=np.float32) * np.float32(1 / 255)
    r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]
    high = np.maximum(np.maximum(r, g), b)
    span = high - np.minimum(np.minimum(r, g), b)
    safe = np.where(span > 0, span, np.float32(1))
    hue = np.where(high == b, 4 + (r - g) / safe, 0).astype(np.float32)
    hue = np.where(high == g, 2 + (b - r) / safe, hue)
    hue = np.where(high == r, (g - b) / safe, hue)
    hue = np.mod(hue * 60, 360).astype(np.float32)
    saturation = span / np.where(high > 0, high, np.float32(1))
    return hue, saturation, high


for _name, _rgb in PALETTE.items():
    if _name != "white":
        _HUES[_name] = float(rgb_to_hsv(np.array(_rgb, dtype=np.uint8))[0])
COLOUR_NAMES = tuple(PALETTE)  # colour_labels() numbers colours in this order; -1 is no colour
# nearest palette hue for every tenth of a degree
_HUE_STEPS = np.arange(3600) / 10.0
_HUE_DISTANCE = np.abs(_HUE_STEPS[:, None] - np.array([_HUES[n] for n in _HUES]))
_HUE_TABLE = np.array([COLOUR_NAMES.index(n) for n in _HUES], dtype=np.int8)[
    np.minimum(_HUE_DISTANCE, 360.0 - _HUE_DISTANCE).argmin(axis=1)]


def colour_labels(frames: np.ndarray) -> np.ndarray:
    """int8 (..., H, W): the index in COLOUR_NAMES of the palette colour each pixel looks like, or -1."""
    hue, saturation, value = rgb_to_hsv(frames)
    labels = _HUE_TABLE[np.minimum((hue * 10).astype(np.int32), 3599)]
    chromatic = (saturation >= MIN_SATURATION) & (value >= MIN_VALUE)
    white = (saturation <= WHITE_MAX_SATURATION) & (value >= WHITE_MIN_VALUE)
    return np.where(chromatic, labels, np.where(white, np.int8(COLOUR_NAMES.index("white")), np.int8(-1)))


def colour_mask(frames: np.ndarray, colour: str, labels: np.ndarray | None = None) -> np.ndarray:
    """Boolean (..., H, W): the pixels that look like the named palette colour (pass `labels` from
    colour_labels to reuse them across colours)."""
    if colour not in COLOUR_NAMES:
        raise ValueError(f"unknown colour {colour!r}; use one of {list(COLOUR_NAMES)}")
    labels = colour_labels(frames) if labels is None else labels
    return labels == COLOUR_NAMES.index(colour)


def largest_components(masks: np.ndarray) -> np.ndarray:
    """For boolean (T, H, W) masks, keep only each frame's largest 4-connected blob.

    Labels spread as the minimum pixel index over neighbours, with pointer jumping (a pixel takes
    the label of the pixel its label names), which converges in a few dozen numpy steps."""
    masks = np.asarray(masks, dtype=bool)
    if masks.ndim == 2:
        return largest_components(masks[None])[0]
    t, h, w = masks.shape
    if not masks.any():
        return masks.copy()
    none = t * h * w
    labels = np.where(masks, np.arange(none).reshape(t, h, w), none)
    while True:
        spread = labels.copy()
        np.minimum(spread[:, 1:], labels[:, :-1], out=spread[:, 1:])
        np.minimum(spread[:, :-1], labels[:, 1:], out=spread[:, :-1])
        np.minimum(spread[:, :, 1:], labels[:, :, :-1], out=spread[:, :, 1:])
        np.minimum(spread[:, :, :-1], labels[:, :, 1:], out=spread[:, :, :-1])
        spread = np.where(masks, spread, none)
        flat = np.append(spread.ravel(), none)
        spread = flat[spread]  # pointer jumping
        if np.array_equal(spread, labels):
            break
        labels = spread
    keep = np.zeros_like(masks)
    for i in range(t):
        frame_labels = labels[i][masks[i]]
        if frame_labels.size:
            values, counts = np.unique(frame_labels, return_counts=True)
            keep[i] = labels[i] == values[counts.argmax()]
    return keep


SQUARE_C4 = -0.17  # the four-fold harmonic of a shape: about -0.43 for a square, 0 for a circle,
DIAMOND_C4 = 0.1  # +0.42 for a diamond; blur and small sizes pull all of them towards 0
TRIANGLE_SKEW = -0.22  # vertical skewness: -0.56 for an upright triangle (its mass sits low), 0 otherwise


def shape_features(mask: np.ndarray) -> dict[str, float]:
    """Moments of a blob that tell the shapes apart and survive blur better than outlines do:
    `c4`, the cos(4 theta) harmonic of r^4 about the centroid (negative when the mass reaches into
    the corners of an upright box, positive when it lies along the axes), and `skew`, the
    vertical skewness (an upright triangle's mass lies low: negative)."""
    ys, xs = np.nonzero(mask)
    x = xs - xs.mean()
    y = ys - ys.mean()
    m40, m04, m22 = (x ** 4).mean(), (y ** 4).mean(), (x * x * y * y).mean()
    m02 = (y * y).mean()
    return {"c4": float((m40 + m04 - 6 * m22) / max(m40 + m04 + 2 * m22, 1e-9)),
            "skew": float((y ** 3).mean() / max(m02 ** 1.5, 1e-9))}


def classify_shape(mask: np.ndarray) -> tuple[str | None, dict[str, float]]:
    """Name the shape of a one-blob boolean (H, W) mask from its moments (see shape_features):
    a triangle if it is bottom-heavy, else a square, a diamond or a circle by its four-fold
    harmonic. None for blobs under 4 pixels across."""
    ys, xs = np.nonzero(mask)
    if ys.size == 0 or min(np.ptp(ys), np.ptp(xs)) + 1 < 4:
        return None, {}
    features = shape_features(mask)
    if features["skew"] <= TRIANGLE_SKEW:
        return "triangle", features
    if features["c4"] <= SQUARE_C4:
        return "square", features
    if features["c4"] >= DIAMOND_C4:
        return "diamond", features
    return "circle", features


def _dilate(mask: np.ndarray, steps: int = 1) -> np.ndarray:
    """Grow a boolean (H, W) mask by `steps` pixels (8-neighbourhood)."""
    out = mask.copy()
    for _ in range(steps):
        grown = out.copy()
        grown[1:] |= out[:-1]
        grown[:-1] |= out[1:]
        grown[:, 1:] |= grown[:, :-1].copy()
        grown[:, :-1] |= grown[:, 1:].copy()
        out = grown
    return out


def refine_blob(frame: np.ndarray, blob: np.ndarray, margin: int = 3) -> np.ndarray:
    """Re-cut a blob against its own background: the object's colour (median inside) and the
    background's (median of a ring around it) give every nearby pixel a coverage; coverage >= 0.5 is
    the object. Compression and blur spread colour past an edge; this puts the edge back."""
    ys, xs = np.nonzero(blob)
    if ys.size == 0:
        return blob
    h, w = blob.shape
    y0, y1 = max(0, ys.min() - margin), min(h, ys.max() + margin + 1)
    x0, x1 = max(0, xs.min() - margin), min(w, xs.max() + margin + 1)
    region = frame[y0:y1, x0:x1].astype(np.float32)
    inside = blob[y0:y1, x0:x1]
    near = _dilate(inside, 1)
    ring = ~_dilate(inside, 2)
    core = inside & ~_dilate(~inside, 1)
    if ring.sum() < 8:
        return blob
    colour = np.median(region[core if core.any() else inside], axis=0)
    background = np.median(region[ring], axis=0)
    d = colour - background
    if float(d @ d) < 30.0 ** 2:
        return blob
    coverage = (region - background) @ d / float(d @ d)
    out = np.zeros_like(blob)
    out[y0:y1, x0:x1] = (coverage >= 0.5) & _dilate(near, 1)
    return out


@dataclass
class Track:
    """One colour followed through a clip."""

    colour: str
    present: np.ndarray  # (T,) bool: found in this frame
    x: np.ndarray  # (T,) centroid, fraction of the width (nan where absent)
    y: np.ndarray  # (T,) fraction of the height
    area: np.ndarray  # (T,) fraction of the frame
    kinds: list  # (T,) shape name or None

    @property
    def presence(self) -> float:
        return float(self.present.mean()) if self.present.size else 0.0


def track_colour(frames: np.ndarray, colour: str, min_area: float = MIN_AREA,
                 labels: np.ndarray | None = None) -> Track:
    """Segment `colour` in every frame and follow its largest blob."""
    frames = _check_clip(frames)
    t, h, w, _ = frames.shape
    blobs = largest_components(colour_mask(frames, colour, labels))
    area = blobs.sum(axis=(1, 2)) / float(h * w)
    present = area >= min_area
    yy = (np.arange(h) + 0.5) / h
    xx = (np.arange(w) + 0.5) / w
    counts = np.maximum(blobs.sum(axis=(1, 2)), 1)
    x = np.where(present, (blobs.sum(axis=1) * xx).sum(axis=1) / counts, np.nan)
    y = np.where(present, (blobs.sum(axis=2) * yy).sum(axis=1) / counts, np.nan)
    kinds = [classify_shape(largest_components(refine_blob(frames[i], blobs[i])))[0] if present[i] else None
             for i in range(t)]
    return Track(colour, present, x, y, area, kinds)


def _smooth(values: np.ndarray) -> np.ndarray:
    if values.size < 3:
        return values
    padded = np.concatenate([values[:1], values, values[-1:]])
    return (padded[:-2] + padded[1:-1] + padded[2:]) / 3.0


def turning_point(path: np.ndarray) -> float:
    """The prominence of the path's largest turning point: how far it went one way and then came back
    (a peak that rose A before it and fell B after it counts min(A, B)). 0 for a monotone path."""
    path = np.asarray(path, dtype=np.float64)
    if path.size < 3:
        return 0.0
    min_before = np.minimum.accumulate(path)
    min_after = np.minimum.accumulate(path[::-1])[::-1]
    max_before = np.maximum.accumulate(path)
    max_after = np.maximum.accumulate(path[::-1])[::-1]
    peak = np.minimum(path - min_before, path - min_after).max()
    valley = np.minimum(max_before - path, max_after - path).max()
    return float(max(peak, valley))


def direction_of(dx: float, dy: float, still: float = STILL_DISTANCE) -> str:
    """'still' for a short displacement, else the nearest of the eight DIRECTIONS."""
    if math.hypot(dx, dy) < still:
        return "still"
    angle = math.atan2(dy, dx)
    return min(DIRECTIONS, key=lambda d: abs(math.remainder(angle - math.atan2(DIRECTIONS[d][1], DIRECTIONS[d][0]),
                                                            2 * math.pi)))


def motion_of(track: Track) -> dict:
    """Direction, displacement, turning points, travel per axis and area change of a track."""
    idx = np.flatnonzero(track.present)
    if idx.size < 2:
        return {"direction": None, "change": None}
    x, y, area = _smooth(track.x[idx]), _smooth(track.y[idx]), track.area[idx]
    k = max(1, min(3, idx.size // 4))
    dx, dy = float(x[-k:].mean() - x[:k].mean()), float(y[-k:].mean() - y[:k].mean())
    ratio = float(area[-k:].mean() / max(area[:k].mean(), 1e-9))
    change = "grow" if ratio >= GROW_RATIO else "shrink" if ratio <= 1 / GROW_RATIO else "none"
    return {"direction": direction_of(dx, dy), "dx": dx, "dy": dy,
            "turn_x": turning_point(x), "turn_y": turning_point(y),
            "travel_x": float(np.abs(np.diff(x)).sum()), "travel_y": float(np.abs(np.diff(y)).sum()),
            "area_ratio": ratio, "change": change}


def _motion_matches(expected: str, motion: dict) -> bool:
    if motion.get("direction") is None:
        return False
    if expected not in BOUNCES:
        return motion["direction"] == expected
    turn_x, turn_y = motion["turn_x"] >= BOUNCE_TURN, motion["turn_y"] >= BOUNCE_TURN
    if expected == "bounce-horizontal":
        return turn_x and motion["travel_x"] > motion["travel_y"]
    if expected == "bounce-vertical":
        return turn_y and motion["travel_y"] > motion["travel_x"]
    return (turn_x or turn_y) and min(motion["travel_x"], motion["travel_y"]) >= 0.1


# ---------------------------------------------------------------------------------------------
# global motion


def _grey(frames: np.ndarray) -> np.ndarray:
    f = np.asarray(frames, dtype=np.float32)
    return f[..., 0] * 0.299 + f[..., 1] * 0.587 + f[..., 2] * 0.114


def phase_correlation(a: np.ndarray, b: np.ndarray) -> tuple[float, float]:
    """The shift (dy, dx) in pixels that carries image `a` onto image `b` (b(p) ~ a(p - shift)),
    sub-pixel, from two grey (H, W) images. Content moving right gives dx > 0.

    The window that hides the images' edges pulls a peak towards zero shift, so the whole-pixel
    part is found first, `b` is rolled back by it, and the remaining fraction is measured again."""
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    dy, dx = _phase_peak(a, b)
    iy, ix = int(round(dy)), int(round(dx))
    if iy == 0 and ix == 0:
        return dy, dx
    ry, rx = _phase_peak(a, np.roll(b, (-iy, -ix), axis=(0, 1)))
    return iy + ry, ix + rx


def _phase_peak(a: np.ndarray, b: np.ndarray) -> tuple[float, float]:
    h, w = a.shape
    window = np.outer(np.hanning(h), np.hanning(w))
    fa = np.fft.fft2((a - a.mean()) * window)
    fb = np.fft.fft2((b - b.mean()) * window)
    cross = fb * np.conj(fa)
    # whitened cross-power, weighted towards low frequencies where noise and blur leave the phase intact
    fy, fx = np.fft.fftfreq(h)[:, None], np.fft.fftfreq(w)[None, :]
    weight = np.exp(-(fy * fy + fx * fx) / (2 * LOWPASS ** 2))
    surface = np.fft.ifft2(cross / (np.abs(cross) + 1e-9) * weight).real
    py, px = np.unravel_index(int(surface.argmax()), surface.shape)

    def refine(c_minus: float, c0: float, c_plus: float) -> float:
        denom = c_minus - 2 * c0 + c_plus
        return 0.0 if abs(denom) < 1e-12 else float(np.clip(0.5 * (c_minus - c_plus) / denom, -0.5, 0.5))

    sy = refine(surface[(py - 1) % h, px], surface[py, px], surface[(py + 1) % h, px])
    sx = refine(surface[py, (px - 1) % w], surface[py, px], surface[py, (px + 1) % w])
    dy = (py + h // 2) % h - h // 2 + sy
    dx = (px + w // 2) % w - w // 2 + sx
    return float(dy), float(dx)


@dataclass
class GlobalMotion:
    dx: float  # the content's total shift, fraction of the width (> 0: content moves right)
    dy: float  # fraction of the height (> 0: content moves down)
    zoom: float  # the content's total scale (> 1: content grows, the camera zooms in)

    @property
    def camera_move(self) -> str:
        """The camera move this is: 'pan-left' (content moves right), ..., 'zoom-in', 'zoom-out', 'still'."""
        shift = max(abs(self.dx), abs(self.dy))
        # a zoom moves points a quarter of the frame from the centre by about |log zoom| / 4: it
        # has to outweigh the shift (fast pans fake a little zoom as content leaves the frame)
        if abs(math.log(self.zoom)) >= math.log(ZOOM_RATIO) and abs(math.log(self.zoom)) / 4 > shift:
            return "zoom-in" if self.zoom > 1 else "zoom-out"
        if shift < PAN_DISTANCE:
            return "still"
        if abs(self.dx) >= abs(self.dy):
            return "pan-left" if self.dx > 0 else "pan-right"
        return "pan-up" if self.dy > 0 else "pan-down"


def _pairs(frames: int, step: int) -> list[tuple[int, int]]:
    starts = list(range(0, frames - 1, step))
    return [(s, min(s + step, frames - 1)) for s in starts]


def global_motion(frames: np.ndarray, step: int = 4) -> GlobalMotion:
    """The content's shift and scale over a clip, summed over frames `step` apart."""
    frames = _check_clip(frames)
    grey = _grey(frames)
    t, h, w = grey.shape
    bh, bw = h // 2, w // 2
    offsets = [(oy, ox) for oy in (0, h // 4, h - bh) for ox in (0, w // 4, w - bw)]
    centres = np.array([(oy + bh / 2 - h / 2, ox + bw / 2 - w / 2) for oy, ox in offsets])
    total_dy = total_dx = 0.0
    log_zoom = 0.0
    for a, b in _pairs(t, step):
        shifts = np.array([phase_correlation(grey[a, oy:oy + bh, ox:ox + bw], grey[b, oy:oy + bh, ox:ox + bw])
                           for oy, ox in offsets])
        # the median block shift is the translation: a zoom moves opposite blocks opposite ways
        dy, dx = np.median(shifts, axis=0)
        total_dy += float(dy)
        total_dx += float(dx)
        # shifts ~ mean + s * (block centre - frame centre): s is the relative scale change
        s = float(((shifts - shifts.mean(axis=0)) * centres).sum() / (centres * centres).sum())
        log_zoom += math.log(max(1.0 + s, 1e-3))
    return GlobalMotion(total_dx / w, total_dy / h, math.exp(log_zoom))


# ---------------------------------------------------------------------------------------------
# measures


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    """Peak signal-to-noise ratio in dB between two uint8 arrays of one shape (inf when equal)."""
    a = np.asarray(a)
    b = np.asarray(b)
    if a.shape != b.shape:
        raise ValueError(f"cannot compare arrays of shapes {a.shape} and {b.shape}")
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return math.inf if mse == 0 else 10.0 * math.log10(255.0 ** 2 / mse)


DRIFT_FLOOR = 0.25 * 255.0 * math.sqrt(3.0)  # the smallest mean-colour norm drift is measured against


def colour_drift(frames: np.ndarray, chunk: int) -> np.ndarray:
    """Per chunk, how far its mean colour is from the first chunk's: |m_i - m_0| / max(|m_0|, DRIFT_FLOOR)
    with m the mean RGB (0-255). Chunks follow the causal VAE: the first is 1 + `chunk` frames, the
    others `chunk` (a clip of 1 + 10 * 16 frames has ten chunks). The floor (a quarter of full scale)
    keeps a dark first chunk from turning small changes into large ratios."""
    frames = _check_clip(frames)
    if chunk < 1:
        raise ValueError(f"chunk must be at least 1 frame, got {chunk}")
    starts = [0, *range(1 + chunk, len(frames), chunk)]
    ends = [*starts[1:], len(frames)]
    means = np.array([frames[a:b].reshape(-1, 3).mean(axis=0) for a, b in zip(starts, ends)])
    reference = means[0]
    return np.linalg.norm(means - reference, axis=1) / max(float(np.linalg.norm(reference)), DRIFT_FLOOR)


# ---------------------------------------------------------------------------------------------
# judging a clip against a prompt


@dataclass
class Judgement:
    passed: bool
    details: dict = field(default_factory=dict)

    def __bool__(self) -> bool:
        return self.passed


def _as_spec(spec: PromptSpec | Scene | str) -> PromptSpec:
    if isinstance(spec, Scene):
        return spec.spec()
    if isinstance(spec, str):
        return parse_prompt(spec)
    if isinstance(spec, PromptSpec):
        return spec
    raise TypeError(f"expected a PromptSpec, a Scene or a prompt string, got {type(spec).__name__}")


OBJECT_CHECKS = {"colour": "colour", "shape": "shape", "motion": "motion", "change": "size change"}
"""judge_object's checks, in its order, with the names reports give them."""


def judge_object(frames: np.ndarray, obj: ObjectSpec, labels: np.ndarray | None = None) -> Judgement:
    """Is there an object of this colour, of this shape, moving and changing size as asked?"""
    track = track_colour(frames, obj.colour, labels=labels)
    kinds = Counter(k for k in track.kinds if k is not None)
    votes = Counter()  # larger views of a shape are surer: votes weigh by area
    for k, area in zip(track.kinds, track.area):
        if k is not None:
            votes[k] += float(area)
    kind = votes.most_common(1)[0][0] if votes else None
    motion = motion_of(track)
    checks = {
        "colour": track.presence >= MIN_PRESENCE,
        "shape": kind == obj.kind,
        "motion": _motion_matches(obj.motion, motion),
        "change": motion.get("change") == obj.change,
    }
    details = {"expected": {"colour": obj.colour, "kind": obj.kind, "motion": obj.motion, "change": obj.change},
               "found": {"presence": track.presence, "kind": kind, "kinds": dict(kinds), **motion},
               "checks": checks}
    return Judgement(all(checks.values()), details)


def judge_camera(frames: np.ndarray, move: str) -> Judgement:
    """Does the global motion show this camera move ('pan-left': content moves right, ...)?"""
    motion = global_motion(frames)
    details = {"expected": move, "found": motion.camera_move, "dx": motion.dx, "dy": motion.dy, "zoom": motion.zoom}
    if move in PAN_CONTENT_DIRECTION:
        details["content_moves"] = PAN_CONTENT_DIRECTION[move]
    return Judgement(motion.camera_move == move, details)


def judge_prompt_adherence(frames: np.ndarray, spec: PromptSpec | Scene | str) -> Judgement:
    """Judge a generated clip (uint8 (T, H, W, 3)) against what a prompt asked for: every named object
    in the right colour and shape, moving the right way and changing size as asked; or the camera
    moving as asked. `spec` is a PromptSpec, a Scene (its caption's content) or a prompt string."""
    spec = _as_spec(spec)
    frames = _check_clip(frames)
    if spec.camera is not None:
        camera = judge_camera(frames, spec.camera)
        return Judgement(camera.passed, {"camera": camera.details})
    if not spec.objects:
        raise ValueError("the prompt names no object and no camera move; there is nothing to judge")
    labels = colour_labels(frames)
    objects = [judge_object(frames, obj, labels) for obj in spec.objects]
    return Judgement(all(j.passed for j in objects), {"objects": [j.details for j in objects]})


def _check_clip(frames: np.ndarray) -> np.ndarray:
    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
        raise ValueError(f"expected a uint8 clip (T, H, W, 3), got {frames.dtype} {tuple(frames.shape)}")
    return frames
