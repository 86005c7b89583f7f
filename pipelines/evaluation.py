"""The held-out evaluation: fixed prompts, scenes and photos that no training set contains, and
`evaluate`, which measures a model against the bars of the shipped default model.

A model is given to `evaluate` as four plain functions, so the evaluation does not depend on how a
pipeline is built (each may be None to skip its bars):

    generate_fn(prompt, *, frames, height, width, seed) -> uint8 (frames, height, width, 3)
    animate_fn(image, prompt, *, frames, seed)          -> uint8 (frames, H, W, 3); image is uint8 (H, W, 3)
    reconstruct_fn(clip)                                -> uint8 clip of the same shape (VAE encode + decode)
    long_fn(prompt, *, frames, height, width, seed)     -> uint8 (frames, height, width, 3), frames = 10x native

The bars:
- VAE reconstruction PSNR >= 30 dB on toy-world clips and >= 26 dB on camera clips over held-out photos;
- prompt adherence >= 80% on ADHERENCE_PROMPTS (judged by pipelines.analysis), many of them in
  wordings never used in training captions;
- image-to-video from stills of the held-out photos with "the camera pans left/right/up/down": the
  global motion goes the right way >= 80% of the time, and the first frame reproduces the still
  (mean PSNR >= 25 dB);
- a clip 10x the native length keeps every chunk's mean colour within 10% of the first chunk's.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Callable

import numpy as np

from pipelines.analysis import OBJECT_CHECKS, colour_drift, global_motion, judge_prompt_adherence, psnr
from pipelines.toyworld.captions import parse_prompt
from pipelines.toyworld.photos import HELDOUT_PHOTOS
from pipelines.toyworld.render import render_scene
from pipelines.toyworld.scenes import (
    PALETTE, PAN_CONTENT_DIRECTION, Scene, sample_camera_scene, sample_shape_scene, scene_from_spec, scene_rng,
)

HELDOUT_SEED = 7  # the held-out split's scenes are scene_rng("heldout", HELDOUT_SEED, i)
PSNR_CAP = 100.0  # an exact reconstruction counts as 100 dB in the means

# Fixed, never trained on. Wordings marked (h) are held out of every training caption.
ADHERENCE_PROMPTS: tuple[str, ...] = (
    "a crimson circle travels to the right on a black background",  # (h) crimson, travels
    "an emerald square glides to the left on a white background",  # (h)
    "an azure triangle travels upward on a gray background",  # (h)
    "a golden diamond glides down on a black background",  # (h)
    "a violet disc travels up and to the right on a black background",  # (h) violet, disc
    "a turquoise block glides towards the bottom left on a gray background",  # (h)
    "a crimson square heads to the left on a striped background",  # (h)
    "a white circle travels downward on a black backdrop",  # (h) travels, backdrop
    "a red circle moves to the left on a black background",
    "a blue square moves to the right on a white background",
    "a green triangle slides down on a gray background",
    "a yellow circle drifts up on a black background",
    "a purple diamond moves diagonally down and to the right on a white background",
    "an orange square moves to the upper left on a checkered background",
    "a pink circle moves to the right on a noisy background",
    "a cyan triangle rises on a black background",
    "a blue circle grows on a black background",
    "a red square shrinks on a white background",
    "an emerald disc swells on a gray background",  # (h)
    "a golden square dwindles on a black background",  # (h)
    "a yellow triangle moves to the right while growing on a gray background",
    "an azure diamond travels left while shrinking on a white background",  # (h)
    "a green circle bounces left and right on a black background",
    "a red square bounces up and down on a gray background",
    "an orange circle ricochets off the walls on a black background",  # (h) ricochets
    "a crimson circle moves to the right and a blue square moves to the left on a black background",  # (h)
    "a yellow circle moves up and a purple triangle moves down on a gray background",
    "an emerald square travels to the right and a white circle travels to the left on a black background",  # (h)
    "a violet circle remains motionless on a white background",  # (h)
    "a white diamond sinks on a black background",
    "a turquoise circle glides to the left on a gradient background",  # (h)
    "a pink square travels upward on a white background",  # (h)
)
PAN_PROMPTS = {"pan-left": "the camera pans left", "pan-right": "the camera pans right",
               "pan-up": "the camera pans up", "pan-down": "the camera pans down"}
LONG_PROMPTS: tuple[str, ...] = (
    "a red circle bounces left and right on a gray background",
    "a blue square bounces up and down on a white background",
    "a yellow circle bounces off the walls on a striped background",
)
RECONSTRUCTION_TOY = 24  # clips of each kind for the VAE bars
RECONSTRUCTION_CAMERA = 16


@dataclass(frozen=True)
class Bar:
    name: str
    threshold: float
    higher_is_better: bool
    unit: str  # "dB", "%" (fractions shown as percentages) or "" for plain ratios


BARS: dict[str, Bar] = {b.name: b for b in (
    Bar("VAE PSNR, toy-world clips", 30.0, True, "dB"),
    Bar("VAE PSNR, camera clips (held-out photos)", 26.0, True, "dB"),
    Bar("prompt adherence", 0.8, True, "%"),
    Bar("image-to-video pan direction", 0.8, True, "%"),
    Bar("image-to-video first-frame PSNR", 25.0, True, "dB"),
    Bar("long video colour drift", 0.1, False, "%"),
)}


@dataclass
class BarResult:
    name: str
    value: float | None  # None: not measured (its function was not given)
    threshold: float
    higher_is_better: bool
    unit: str
    count: int = 0

    @property
    def passed(self) -> bool | None:
        if self.value is None:
            return None
        return self.value >= self.threshold if self.higher_is_better else self.value <= self.threshold

    def format_value(self, value: float) -> str:
        if self.unit == "%":
            return f"{100 * value:.1f}%"
        return f"{value:.2f} {self.unit}".strip()


@dataclass
class EvalReport:
    bars: list[BarResult]
    items: dict[str, list[dict]] = field(default_factory=dict)  # per-item measurements, by bar group
    settings: dict = field(default_factory=dict)

    @property
    def passed(self) -> bool:
        """Every measured bar passed (and at least one was measured)."""
        measured = [b.passed for b in self.bars if b.passed is not None]
        return bool(measured) and all(measured)

    def table(self) -> str:
        rows = [("bar", "value", "target", "result", "n")]
        for b in self.bars:
            target = ("\u2265 " if b.higher_is_better else "\u2264 ") + b.format_value(b.threshold)
            value = "-" if b.value is None else b.format_value(b.value)
            result = "skipped" if b.passed is None else "pass" if b.passed else "FAIL"
            rows.append((b.name, value, target, result, str(b.count)))
        widths = [max(len(r[i]) for r in rows) for i in range(5)]
        lines = ["  ".join(c.ljust(w) if i in (0, 3) else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths)))
                 for r in rows]
        lines.insert(1, "  ".join("-" * w for w in widths))
        return "\n".join(line.rstrip() for line in lines)

    def adherence_checks(self) -> dict | None:
        """What the adherence judge found wrong, summed over its clips: for each check (colour,
        shape, motion, size change), how many of the prompts' objects passed it, and how many clips
        failed on that check alone (the clips one fix would turn). None when adherence was not run."""
        clips = self.items.get("adherence")
        if not clips:
            return None
        passed = dict.fromkeys(OBJECT_CHECKS, 0)
        alone = dict.fromkeys(OBJECT_CHECKS, 0)
        objects = 0
        for clip in clips:
            failed = set()
            for obj in clip.get("objects", []):
                objects += 1
                for check in OBJECT_CHECKS:
                    ok = bool(obj["checks"].get(check))
                    passed[check] += ok
                    if not ok:
                        failed.add(check)
            if len(failed) == 1:
                alone[failed.pop()] += 1
        return {"clips": len(clips), "objects": objects, "passed": passed, "failed_alone": alone}

    def adherence_line(self) -> str | None:
        """adherence_checks() as one line under the table."""
        summary = self.adherence_checks()
        if summary is None:
            return None
        n = summary["objects"]
        right = ", ".join(f"{OBJECT_CHECKS[c]} {k}/{n}" for c, k in summary["passed"].items())
        alone = ", ".join(f"{OBJECT_CHECKS[c]} {k}" for c, k in summary["failed_alone"].items() if k) or "none"
        return f"adherence checks: objects right in {right}; clips failing one check alone: {alone}"

    def to_dict(self) -> dict:
        return {"passed": self.passed, "settings": self.settings,
                "bars": [{**asdict(b), "passed": b.passed} for b in self.bars],
                "adherence_checks": self.adherence_checks(), "items": self.items}


# ---------------------------------------------------------------------------------------------
# the held-out items


def colour_scenes(frames: int = 17, aspect: float = 1.0) -> list[tuple[str, Scene]]:
    """One scene per palette colour: a circle of that colour moving right on black, for the
    reconstruction's colour check (not a bar: it says whether a VAE keeps hue)."""
    return [(name, reference_scene(f"a {name} circle moves to the right on a black background", 0, frames, aspect))
            for name in PALETTE]


def object_colour_error(clip: np.ndarray, out: np.ndarray, colour: tuple[int, int, int]) -> tuple[list[float], float]:
    """The mean reconstructed colour on the pixels the object covers (where the clip is within 40 of
    `colour`) and its mean absolute difference from `colour`, in 0-255 levels."""
    target = np.asarray(colour, dtype=np.float64)
    covered = np.abs(clip.astype(np.float64) - target).max(axis=-1) <= 40
    seen = out[covered].astype(np.float64).mean(axis=0)
    return [float(v) for v in seen], float(np.abs(seen - target).mean())


def reconstruction_scenes(frames: int = 17, aspect: float = 1.0) -> tuple[list[Scene], list[Scene]]:
    """(toy-world scenes, camera scenes over the held-out photos) for the VAE bars."""
    toy = [sample_shape_scene(scene_rng("heldout", HELDOUT_SEED, i), frames=frames, aspect=aspect)
           for i in range(RECONSTRUCTION_TOY)]
    camera = [sample_camera_scene(scene_rng("heldout", HELDOUT_SEED, 1000 + i), frames=frames, aspect=aspect,
                                  photos=HELDOUT_PHOTOS, allow_flip=False)
              for i in range(RECONSTRUCTION_CAMERA)]
    return toy, camera


def animation_scenes(frames: int = 17, aspect: float = 1.0) -> list[tuple[Scene, str]]:
    """(scene, prompt) for image-to-video: every held-out photo under every pan; the still is frame 0."""
    items = []
    for p, photo in enumerate(HELDOUT_PHOTOS):
        for m, move in enumerate(PAN_PROMPTS):
            rng = scene_rng("heldout", HELDOUT_SEED, 2000 + 10 * p + m)
            scene = sample_camera_scene(rng, frames=frames, aspect=aspect, photos=(photo,), move=move,
                                        allow_flip=False)
            items.append((scene, PAN_PROMPTS[move]))
    return items


def reference_scene(prompt: str, seed: int, frames: int = 17, aspect: float = 1.0) -> Scene:
    """A scene that shows what the prompt asks for: the ground truth a perfect model could return."""
    return scene_from_spec(parse_prompt(prompt), seed, frames=frames, aspect=aspect)


def reference_callables(frames: int = 17, height: int = 64, width: int = 64) -> dict[str, Callable]:
    """The four functions answered with ground-truth renders (the VAE as the identity). Every bar
    should pass with them: a check of the evaluation itself."""
    aspect = width / height
    stills = {render_scene(scene, height, width, frames=1)[0].tobytes(): scene
              for scene, _ in animation_scenes(frames, aspect)}

    def generate_fn(prompt, *, frames, height, width, seed):
        return render_scene(reference_scene(prompt, seed, frames, width / height), height, width)

    def animate_fn(image, prompt, *, frames, seed):
        scene = stills.get(np.ascontiguousarray(image).tobytes())
        if scene is None:
            raise ValueError("the reference animator knows only the stills of the held-out animation scenes")
        return render_scene(scene, image.shape[0], image.shape[1], frames=frames)

    def reconstruct_fn(clip):
        return np.array(clip, copy=True)

    return {"generate_fn": generate_fn, "animate_fn": animate_fn, "reconstruct_fn": reconstruct_fn,
            "long_fn": generate_fn}


# ---------------------------------------------------------------------------------------------
# evaluate


def _checked(out, shape: tuple, what: str) -> np.ndarray:
    out = np.asarray(out)
    if out.dtype != np.uint8 or out.shape != shape:
        raise ValueError(f"{what} returned {out.dtype} {tuple(out.shape)}; expected uint8 {shape}")
    return out


def _result(name: str, value: float | None, count: int) -> BarResult:
    bar = BARS[name]
    return BarResult(bar.name, value, bar.threshold, bar.higher_is_better, bar.unit, count)


def _limited(items: list, limit: int | None) -> list:
    return items if limit is None else items[:max(1, limit)]


def evaluate(generate_fn: Callable | None = None, animate_fn: Callable | None = None,
             reconstruct_fn: Callable | None = None, long_fn: Callable | None = None, *, frames: int = 17,
             height: int = 64, width: int = 64, long_factor: int = 10, limit: int | None = None,
             seeds: int = 1, progress: Callable[[str], None] | None = None) -> EvalReport:
    """Run the held-out evaluation. `limit` caps the items of every bar (a quick look, not the bar);
    `seeds` samples each adherence prompt that many times (seeds i, i + P, i + 2P, ... for prompt i of
    P; the first is the bar's own), so that two models are compared on more than one clip a prompt;
    `progress` is called with a short line before each group."""
    if frames < 2 or (frames - 1) % 4:
        raise ValueError(f"frames must be 1 + 4k (5, 9, 17, ...), got {frames}")
    if long_factor < 2:
        raise ValueError(f"long_factor must be at least 2, got {long_factor}")
    if seeds < 1:
        raise ValueError(f"seeds must be at least 1, got {seeds}")
    aspect = width / height
    say = progress or (lambda line: None)
    results: dict[str, BarResult] = {}
    items: dict[str, list[dict]] = {}

    if reconstruct_fn is not None:
        say("VAE reconstruction")
        toy, camera = reconstruction_scenes(frames, aspect)
        for name, scenes in (("VAE PSNR, toy-world clips", toy), ("VAE PSNR, camera clips (held-out photos)", camera)):
            values = []
            for scene in _limited(scenes, limit):
                clip = render_scene(scene, height, width)
                out = _checked(reconstruct_fn(clip), clip.shape, "reconstruct_fn")
                values.append(min(psnr(clip, out), PSNR_CAP))
                items.setdefault("reconstruction", []).append({"kind": scene.kind, "psnr": values[-1]})
            results[name] = _result(name, float(np.mean(values)), len(values))
        for name, scene in _limited(colour_scenes(frames, aspect), limit):
            clip = render_scene(scene, height, width)
            seen, error = object_colour_error(clip, _checked(reconstruct_fn(clip), clip.shape, "reconstruct_fn"),
                                              PALETTE[name])
            items.setdefault("reconstruction_colour", []).append(
                {"colour": name, "truth": list(PALETTE[name]), "reconstructed": seen, "error": error})

    if generate_fn is not None:
        say("prompt adherence")
        passed = []
        prompts = _limited(list(ADHERENCE_PROMPTS), limit)
        for repeat in range(seeds):
            for i, prompt in enumerate(prompts):
                seed = i + repeat * len(prompts)
                out = _checked(generate_fn(prompt, frames=frames, height=height, width=width, seed=seed),
                               (frames, height, width, 3), "generate_fn")
                judgement = judge_prompt_adherence(out, prompt)
                passed.append(judgement.passed)
                items.setdefault("adherence", []).append({"prompt": prompt, "seed": seed, "passed": judgement.passed,
                                                          **judgement.details})
        results["prompt adherence"] = _result("prompt adherence", float(np.mean(passed)), len(passed))

    if animate_fn is not None:
        say("image-to-video")
        directions, firsts = [], []
        for i, (scene, prompt) in enumerate(_limited(animation_scenes(frames, aspect), limit)):
            image = render_scene(scene, height, width, frames=1)[0]
            out = _checked(animate_fn(image, prompt, frames=frames, seed=i), (frames, height, width, 3),
                           "animate_fn")
            motion = global_motion(out)
            expected = scene.camera.move
            directions.append(motion.camera_move == expected)
            firsts.append(min(psnr(image, out[0]), PSNR_CAP))
            items.setdefault("animation", []).append({
                "photo": scene.camera.photo, "prompt": prompt, "expected": expected,
                "content_should_move": PAN_CONTENT_DIRECTION[expected], "found": motion.camera_move,
                "dx": motion.dx, "dy": motion.dy, "zoom": motion.zoom, "first_frame_psnr": firsts[-1]})
        results["image-to-video pan direction"] = _result("image-to-video pan direction",
                                                          float(np.mean(directions)), len(directions))
        results["image-to-video first-frame PSNR"] = _result("image-to-video first-frame PSNR",
                                                             float(np.mean(firsts)), len(firsts))

    if long_fn is not None:
        say("long video")
        long_frames = long_factor * (frames - 1) + 1
        worst = []
        for i, prompt in enumerate(_limited(list(LONG_PROMPTS), limit)):
            out = _checked(long_fn(prompt, frames=long_frames, height=height, width=width, seed=i),
                           (long_frames, height, width, 3), "long_fn")
            drift = colour_drift(out, frames - 1)
            worst.append(float(drift.max()))
            items.setdefault("long", []).append({"prompt": prompt, "frames": long_frames,
                                                 "drift_per_chunk": [float(d) for d in drift]})
        results["long video colour drift"] = _result("long video colour drift",
                                                           float(max(worst)), len(worst))

    bars = [results.get(name) or _result(name, None, 0) for name in BARS]
    bars[-1].name = f"long video colour drift ({long_factor}x)"
    settings = {"frames": frames, "height": height, "width": width, "long_factor": long_factor, "limit": limit,
                "seeds": seeds,
                "heldout_seed": HELDOUT_SEED}
    return EvalReport(bars, items, settings)
