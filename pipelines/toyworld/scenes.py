"""Scene descriptions for the toy world, and how to draw them from a seeded generator.

A scene is either coloured shapes moving over a plain or textured background, or a camera moving
over a real photograph. It is resolution-free: positions are fractions of the frame's width and
height, sizes are fractions of its shorter side, velocities are per frame. `render_scene` turns it
into pixels at any size; `write_caption` turns it into words; `Scene.spec()` is what a caption
says, the thing the analyser checks a generated clip against.

Conventions (image coordinates, y down):
- "right" is +x, "down" is +y; "up-right" means up and to the right.
- "the camera pans left" moves the camera's window left over the photo, so the content moves
  RIGHT in the frame; "zoom in" shrinks the window, so the content grows.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

import numpy as np

from pipelines.toyworld.photos import PHOTOS, photos_for_split

# name -> RGB. Hues are spread apart so a colour can be told from its neighbours after compression.
PALETTE: dict[str, tuple[int, int, int]] = {
    "red": (230, 30, 30),
    "orange": (250, 130, 20),
    "yellow": (245, 230, 30),
    "green": (40, 190, 60),
    "cyan": (20, 200, 220),
    "blue": (40, 80, 230),
    "purple": (150, 40, 210),
    "pink": (245, 110, 190),
    "white": (245, 245, 245),
}
SHAPE_KINDS = ("circle", "square", "triangle", "diamond")
# direction -> unit step (x, y) in image coordinates
DIRECTIONS: dict[str, tuple[int, int]] = {
    "right": (1, 0), "left": (-1, 0), "up": (0, -1), "down": (0, 1),
    "up-right": (1, -1), "up-left": (-1, -1), "down-right": (1, 1), "down-left": (-1, 1),
}
# bouncing motions -> the axes that move (x, y)
BOUNCES: dict[str, tuple[int, int]] = {
    "bounce-horizontal": (1, 0), "bounce-vertical": (0, 1), "bounce-diagonal": (1, 1),
}
MOTIONS = ("still", *DIRECTIONS, *BOUNCES)
CHANGES = ("none", "grow", "shrink")
PLAIN_BACKGROUNDS: dict[str, tuple[int, int, int]] = {"black": (0, 0, 0), "white": (255, 255, 255),
                                                      "gray": (128, 128, 128)}
TEXTURES = ("noise", "stripes", "checker", "gradient")
CAMERA_MOVES = ("pan-left", "pan-right", "pan-up", "pan-down", "zoom-in", "zoom-out")
# the content's direction of motion in the frame for each pan: pan left -> content moves right
PAN_CONTENT_DIRECTION = {"pan-left": "right", "pan-right": "left", "pan-up": "down", "pan-down": "up"}
SPLITS = ("train", "heldout")
_SPLIT_KEY = {"train": 0, "heldout": 1}
REFERENCE_FRAMES = 17  # the native clip length that speeds are chosen for
_MARGIN = 0.02  # gap kept between a shape and the frame's edge


@dataclass(frozen=True)
class Shape:
    kind: str  # one of SHAPE_KINDS
    colour: str  # a name in PALETTE
    size: float  # half-extent at frame 0, as a fraction of the frame's shorter side
    x: float  # centre at frame 0, fraction of the width
    y: float  # centre at frame 0, fraction of the height
    vx: float = 0.0  # per frame, fraction of the width
    vy: float = 0.0  # per frame, fraction of the height
    growth: float = 0.0  # size is multiplied by exp(growth) every frame
    motion: str = "still"  # one of MOTIONS: what a caption says about where it goes
    change: str = "none"  # one of CHANGES: what a caption says about its size


@dataclass(frozen=True)
class Background:
    name: str  # a plain colour ("black", "white", "gray") or a texture ("noise", "stripes", ...)
    tone_a: tuple[int, int, int] = (0, 0, 0)
    tone_b: tuple[int, int, int] = (0, 0, 0)  # textures blend tone_a and tone_b
    period: float = 0.25  # texture scale, fraction of the shorter side
    angle: float = 0.0  # stripe / gradient direction, radians
    seed: int = 0  # the noise texture's pattern


@dataclass(frozen=True)
class Camera:
    photo: str  # a name in PHOTOS
    move: str  # one of CAMERA_MOVES
    x: float  # window centre at frame 0, fraction of the photo's width
    y: float  # window centre at frame 0, fraction of the photo's height
    size: float  # window height at frame 0, fraction of the photo's height
    vx: float = 0.0  # window centre velocity per frame, fraction of the photo's width
    vy: float = 0.0  # ... fraction of the photo's height
    zoom: float = 0.0  # window size is multiplied by exp(zoom) every frame (< 0: zooming in)
    flip: bool = False  # mirror the photo left-right first


@dataclass(frozen=True)
class ObjectSpec:
    """What a caption says about one object."""

    colour: str
    kind: str
    motion: str = "still"
    change: str = "none"


@dataclass(frozen=True)
class PromptSpec:
    """What a caption says about a clip: the analyser judges a clip against this."""

    objects: tuple[ObjectSpec, ...] = ()
    background: str | None = None
    camera: str | None = None  # one of CAMERA_MOVES
    photo: str | None = None  # the subject phrase of the photo, when a caption names it


@dataclass(frozen=True)
class Scene:
    frames: int  # the clip length it was drawn for (speeds keep everything in frame for this long)
    aspect: float  # width / height it was drawn for
    background: Background = field(default_factory=lambda: Background("black"))
    shapes: tuple[Shape, ...] = ()
    camera: Camera | None = None
    seed: int = 0  # picks the caption's wording

    @property
    def kind(self) -> str:
        return "camera" if self.camera is not None else "shapes"

    def spec(self) -> PromptSpec:
        if self.camera is not None:
            return PromptSpec(camera=self.camera.move, photo=PHOTOS[self.camera.photo].subject)
        return PromptSpec(objects=tuple(ObjectSpec(s.colour, s.kind, s.motion, s.change) for s in self.shapes),
                          background=self.background.name)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "Scene":
        bg = dict(data["background"])
        bg["tone_a"], bg["tone_b"] = tuple(bg["tone_a"]), tuple(bg["tone_b"])
        camera = data.get("camera")
        return cls(frames=int(data["frames"]), aspect=float(data["aspect"]), background=Background(**bg),
                   shapes=tuple(Shape(**s) for s in data.get("shapes", ())),
                   camera=Camera(**camera) if camera else None, seed=int(data.get("seed", 0)))


def scene_rng(split: str, seed: int, index: int) -> np.random.Generator:
    """The generator for scene `index` of a split: train and held-out streams never coincide."""
    if split not in _SPLIT_KEY:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    return np.random.default_rng([_SPLIT_KEY[split], int(seed), int(index)])


def _half_extents(size: float, aspect: float) -> tuple[float, float]:
    """A shape's half width and half height in fractions of the frame's width and height."""
    return size * min(1.0, 1.0 / aspect), size * min(1.0, aspect)


def _fold(p: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    """Reflect unbounded positions into [lo, hi]: a ball bouncing between two walls."""
    span = np.maximum(hi - lo, 1e-9)
    q = np.mod(p - lo, 2 * span)
    return lo + np.where(q <= span, q, 2 * span - q)


def shape_positions(shape: Shape, frames: int, aspect: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Centre (x, y) in frame fractions and size (fraction of the shorter side) for every frame."""
    t = np.arange(frames, dtype=np.float64)
    size = shape.size * np.exp(shape.growth * t)
    x = shape.x + shape.vx * t
    y = shape.y + shape.vy * t
    if shape.motion.startswith("bounce"):
        hx, hy = _half_extents(size, aspect)
        x = _fold(x, hx, 1 - hx)
        y = _fold(y, hy, 1 - hy)
    return x, y, size


def camera_windows(camera: Camera, frames: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Window centre (x, y) in photo fractions and window height (fraction of the photo's height)."""
    t = np.arange(frames, dtype=np.float64)
    return camera.x + camera.vx * t, camera.y + camera.vy * t, camera.size * np.exp(camera.zoom * t)


# ---------------------------------------------------------------------------------------------
# drawing scenes from a generator


def _pick(rng: np.random.Generator, options, weights=None):
    options = list(options)
    if weights is not None:
        weights = np.asarray(weights, dtype=np.float64)
        weights = weights / weights.sum()
    return options[int(rng.choice(len(options), p=weights))]


def sample_background(rng: np.random.Generator, name: str | None = None) -> Background:
    """A plain background (60%) or a dim, low-saturation texture that no palette colour is confused with."""
    if name is None:
        name = _pick(rng, [*PLAIN_BACKGROUNDS, *TEXTURES], [0.25, 0.15, 0.2, 0.1, 0.1, 0.1, 0.1])
    if name in PLAIN_BACKGROUNDS:
        return Background(name, PLAIN_BACKGROUNDS[name], PLAIN_BACKGROUNDS[name])
    if name not in TEXTURES:
        raise ValueError(f"unknown background {name!r}; use one of {[*PLAIN_BACKGROUNDS, *TEXTURES]}")
    hue = rng.uniform(0, 1)
    low = rng.uniform(0.1, 0.35)
    high = min(0.6, low + rng.uniform(0.15, 0.3))

    def tone(value: float) -> tuple[int, int, int]:
        saturation = rng.uniform(0.0, 0.15)
        rgb = [value * (1 - saturation * (0.5 + 0.5 * math.cos(2 * math.pi * (hue - k / 3)))) for k in range(3)]
        return tuple(int(round(255 * c)) for c in rgb)

    tones = (tone(low), tone(high)) if rng.uniform() < 0.5 else (tone(high), tone(low))
    return Background(name, tones[0], tones[1], period=float(rng.uniform(0.12, 0.4)),
                      angle=float(rng.uniform(0, math.pi)), seed=int(rng.integers(0, 2**31 - 1)))


def sample_shape(rng: np.random.Generator, *, colour: str, frames: int = REFERENCE_FRAMES, aspect: float = 1.0,
                 kind: str | None = None, motion: str | None = None, change: str | None = None,
                 size_range: tuple[float, float] = (0.1, 0.2)) -> Shape:
    """One shape; anything not given is drawn. Its whole path stays inside the frame for `frames`."""
    if frames < 2:
        raise ValueError(f"a clip needs at least 2 frames, got {frames}")
    kind = kind or _pick(rng, SHAPE_KINDS)
    if motion is None:
        motion = _pick(rng, MOTIONS, [0.12] + [0.12] * 4 + [0.06] * 4 + [0.06, 0.06, 0.08])
    if change is None:
        if motion.startswith("bounce"):
            change = "none"
        elif motion == "still":
            change = _pick(rng, CHANGES, [0.2, 0.4, 0.4])
        else:
            change = _pick(rng, CHANGES, [0.6, 0.2, 0.2])
    if kind not in SHAPE_KINDS or motion not in MOTIONS or change not in CHANGES or colour not in PALETTE:
        raise ValueError(f"unknown shape {kind!r} / motion {motion!r} / change {change!r} / colour {colour!r}")

    small = rng.uniform(0.07, 0.1)
    ratio = rng.uniform(1.6, 2.2)
    start, end = {"none": (rng.uniform(*size_range),) * 2, "grow": (small, small * ratio),
                  "shrink": (small * ratio, small)}[change]
    growth = math.log(end / start) / (frames - 1)
    hx, hy = _half_extents(max(start, end), aspect)
    lo = np.array([hx + _MARGIN, hy + _MARGIN])
    hi = 1.0 - lo
    room = np.maximum(hi - lo, 0.0)
    pos = rng.uniform(lo, np.maximum(lo, hi))
    vel = np.zeros(2)

    if motion in DIRECTIONS:
        step = np.array(DIRECTIONS[motion], dtype=np.float64)
        moving = step != 0
        distance = min(rng.uniform(0.3, 0.6), float(room[moving].min()))  # equal on both axes for diagonals
        for axis in np.flatnonzero(moving):
            first = lo[axis] if step[axis] > 0 else lo[axis] + distance
            last = hi[axis] - distance if step[axis] > 0 else hi[axis]
            pos[axis] = rng.uniform(first, max(first, last))
        vel = step * distance / (frames - 1)
    elif motion in BOUNCES:
        # travel 1.1-1.6 times the room per native clip, starting 30-60% of that path away from the
        # wall it heads for: at least one clear bounce in every clip.
        for axis in np.flatnonzero(BOUNCES[motion]):
            path = rng.uniform(1.1, 1.6) * room[axis]
            sign = 1.0 if rng.uniform() < 0.5 else -1.0
            to_wall = min(rng.uniform(0.3, 0.6) * path, room[axis])
            pos[axis] = hi[axis] - to_wall if sign > 0 else lo[axis] + to_wall
            vel[axis] = sign * path / min(frames - 1, REFERENCE_FRAMES - 1)
    return Shape(kind, colour, float(start), float(pos[0]), float(pos[1]), float(vel[0]), float(vel[1]),
                 float(growth), motion, change)


def _overlap(a: Shape, b: Shape, frames: int, aspect: float) -> bool:
    ax, ay, asz = shape_positions(a, frames, aspect)
    bx, by, bsz = shape_positions(b, frames, aspect)
    ahx, ahy = _half_extents(asz, aspect)
    bhx, bhy = _half_extents(bsz, aspect)
    return bool(np.any((np.abs(ax - bx) < ahx + bhx + _MARGIN) & (np.abs(ay - by) < ahy + bhy + _MARGIN)))


def shape_colours(background: str) -> tuple[str, ...]:
    """The palette colours that stand out on a background: white never goes on white."""
    return tuple(c for c in PALETTE if not (c == "white" and background == "white"))


def sample_shape_scene(rng: np.random.Generator, *, frames: int = REFERENCE_FRAMES, aspect: float = 1.0,
                       objects: tuple[ObjectSpec, ...] | None = None, background: str | None = None,
                       count: int | None = None) -> Scene:
    """Shapes on a background. `objects` fixes what each one is and does (a caption's content), and
    the generator fills in where it starts, how big it is and how fast it goes. Objects have
    different colours and never overlap."""
    bg = sample_background(rng, background)
    if objects is None:
        count = count or _pick(rng, (1, 2, 3), (0.6, 0.3, 0.1))
        colours = list(shape_colours(bg.name))
        wanted = [(colours[i], None, None, None) for i in rng.choice(len(colours), size=count, replace=False)]
    else:
        wanted = [(o.colour, o.kind, o.motion, o.change) for o in objects]
    size_range = (0.1, 0.2) if len(wanted) == 1 else (0.08, 0.14)
    shapes: list[Shape] = []
    for colour, kind, motion, change in wanted:
        for _ in range(200):
            shape = sample_shape(rng, colour=colour, frames=frames, aspect=aspect, kind=kind,
                                 motion=motion, change=change, size_range=size_range)
            if not any(_overlap(shape, other, frames, aspect) for other in shapes):
                shapes.append(shape)
                break
        else:  # no room: a drawn object is left out; an asked-for one goes in, overlapping
            if objects is not None:
                shapes.append(shape)
    return Scene(frames, float(aspect), bg, tuple(shapes), None, seed=int(rng.integers(0, 2**31 - 1)))


def sample_camera_scene(rng: np.random.Generator, *, frames: int = REFERENCE_FRAMES, aspect: float = 1.0,
                        photos: tuple[str, ...], move: str | None = None, allow_flip: bool = True) -> Scene:
    """A camera move over one of `photos`: a pan across 25-50% of the window, or a 1.35-1.9x zoom."""
    name = _pick(rng, photos)
    photo = PHOTOS[name]
    move = move or _pick(rng, CAMERA_MOVES)
    if move not in CAMERA_MOVES:
        raise ValueError(f"unknown camera move {move!r}; use one of {CAMERA_MOVES}")
    ph, pw = photo.size
    flip = bool(allow_flip and photo.flippable and rng.uniform() < 0.5)
    # window height in photo pixels, with its width (height * aspect) inside the photo
    largest = 0.96 * min(ph, pw / aspect)
    steps = frames - 1
    x = y = 0.5
    vx = vy = zoom = 0.0
    if move.startswith("pan"):
        horizontal = move in ("pan-left", "pan-right")
        for _ in range(20):
            height = rng.uniform(0.4, 0.8) * largest
            extent = height * aspect if horizontal else height
            room = (pw if horizontal else ph) - extent
            distance = rng.uniform(0.25, 0.5) * extent
            if room >= distance:
                break
        distance = min(distance, 0.98 * room)
        sign = -1.0 if move in ("pan-left", "pan-up") else 1.0
        start = rng.uniform(extent / 2, extent / 2 + room - distance)
        if sign < 0:
            start += distance
        across_extent = height if horizontal else height * aspect  # the window along the other axis
        across_length = ph if horizontal else pw
        across = rng.uniform(across_extent / 2, across_length - across_extent / 2)
        if horizontal:
            x, y, vx = start / pw, across / ph, sign * distance / steps / pw
        else:
            x, y, vy = across / pw, start / ph, sign * distance / steps / ph
        size = height / ph
    else:
        factor = rng.uniform(1.35, 1.9)
        big = rng.uniform(0.6, 1.0) * largest
        small = big / factor
        height = small if move == "zoom-out" else big
        zoom = math.log(factor) / steps * (1 if move == "zoom-out" else -1)
        x = rng.uniform(big * aspect / 2, pw - big * aspect / 2) / pw
        y = rng.uniform(big / 2, ph - big / 2) / ph
        size = height / ph
    camera = Camera(name, move, float(x), float(y), float(size), float(vx), float(vy), float(zoom), flip)
    return Scene(frames, float(aspect), Background("photo"), (), camera, seed=int(rng.integers(0, 2**31 - 1)))


def sample_scene(split: str = "train", seed: int = 0, index: int = 0, *, frames: int = REFERENCE_FRAMES,
                 aspect: float = 1.0, camera_fraction: float = 0.35) -> Scene:
    """Scene `index` of a split. Training scenes use only the training photos; held-out scenes only
    the held-out photos, from their own random stream."""
    rng = scene_rng(split, seed, index)
    if rng.uniform() < camera_fraction:
        return sample_camera_scene(rng, frames=frames, aspect=aspect, photos=photos_for_split(split),
                                   allow_flip=split == "train")
    return sample_shape_scene(rng, frames=frames, aspect=aspect)


def scene_from_spec(spec: PromptSpec, seed: int = 0, *, frames: int = REFERENCE_FRAMES, aspect: float = 1.0,
                    split: str = "heldout") -> Scene:
    """A scene that a caption with this content describes (a parsed prompt -> a ground-truth clip)."""
    rng = scene_rng(split, seed, 10**9)
    if spec.camera is not None:
        names = photos_for_split(split)
        if spec.photo is not None:
            names = tuple(n for n in PHOTOS if PHOTOS[n].subject == spec.photo) or names
        return sample_camera_scene(rng, frames=frames, aspect=aspect, photos=names, move=spec.camera,
                                   allow_flip=False)
    if not spec.objects:
        raise ValueError("a scene needs shapes or a camera move; the prompt names neither")
    background = spec.background if spec.background in (*PLAIN_BACKGROUNDS, *TEXTURES) else None
    if spec.background == "textured":
        background = _pick(rng, TEXTURES)
    return sample_shape_scene(rng, frames=frames, aspect=aspect, objects=spec.objects, background=background)
