"""The deterministic analyser: right on the toy world's own clips, and it rejects wrong ones."""

import math

import numpy as np
import pytest

from pipelines.analysis import (
    classify_shape, colour_drift, colour_mask, global_motion, judge_prompt_adherence, largest_components,
    phase_correlation, psnr, turning_point,
)
from pipelines.toyworld import (
    SHAPE_KINDS, Background, ObjectSpec, PromptSpec, Scene, Shape, render_scene, sample_camera_scene,
    sample_scene, scene_rng,
)
from pipelines.toyworld.scenes import CAMERA_MOVES, PALETTE


def _smooth_image(seed: int, size: int = 64) -> np.ndarray:
    rng = np.random.default_rng(seed)
    spectrum = np.fft.fft2(rng.normal(size=(size, size)))
    f = np.hypot(*np.meshgrid(np.fft.fftfreq(size), np.fft.fftfreq(size)))
    return np.fft.ifft2(spectrum * np.exp(-(f / 0.08) ** 2)).real


@pytest.mark.parametrize("shift", [(3, -5), (-7, 2), (0, 9)])
def test_phase_correlation_finds_the_content_shift(shift):
    a = _smooth_image(0)
    b = np.roll(a, shift, axis=(0, 1))  # content moved down by shift[0], right by shift[1]
    dy, dx = phase_correlation(a, b)
    assert abs(dy - shift[0]) < 0.3 and abs(dx - shift[1]) < 0.3


def test_phase_correlation_is_subpixel():
    a = _smooth_image(1, 128)
    x = np.arange(128)
    b = np.stack([np.interp(x - 2.5, x, row, period=128) for row in a])  # right by 2.5 pixels
    dy, dx = phase_correlation(a, b)
    assert abs(dx - 2.5) < 0.25 and abs(dy) < 0.25


def test_judge_passes_clean_renders_of_heldout_scenes():
    for i in range(40):
        scene = sample_scene("heldout", 11, i, camera_fraction=0.3)
        judgement = judge_prompt_adherence(render_scene(scene, 64, 64), scene)
        assert judgement.passed, (scene, judgement.details)


@pytest.mark.parametrize("kind", SHAPE_KINDS)
def test_shapes_are_named_at_every_size(kind):
    for size in (0.08, 0.12, 0.2):
        for colour in ("red", "blue", "white"):
            scene = Scene(1, 1.0, Background("gray", (128,) * 3, (128,) * 3),
                          (Shape(kind, colour, size, 0.45, 0.55),))
            frame = render_scene(scene, 64, 64)
            blob = largest_components(colour_mask(frame, colour))[0]
            assert classify_shape(blob)[0] == kind, (kind, size, colour)


def test_colour_masks_tell_the_palette_apart():
    for colour, rgb in PALETTE.items():
        frame = np.zeros((1, 8, 8, 3), np.uint8)
        frame[0, 2:6, 2:6] = rgb
        for other in PALETTE:
            assert colour_mask(frame, other).sum() == (16 if other == colour else 0), (colour, other)


def test_largest_component_keeps_the_biggest_blob():
    mask = np.zeros((20, 20), bool)
    mask[1:4, 1:4] = True  # 9 pixels
    mask[10:15, 10:16] = True  # 30 pixels
    mask[10:12, 2:3] = True
    kept = largest_components(mask)
    assert kept.sum() == 30 and kept[12, 12] and not kept[2, 2]


def test_judge_rejects_the_wrong_direction_colour_shape_and_size_change():
    bg = Background("black")
    right = Scene(17, 1.0, bg, (Shape("circle", "red", 0.12, 0.2, 0.5, vx=0.6 / 16, motion="right"),))
    clip = render_scene(right, 64, 64)
    assert judge_prompt_adherence(clip, "a red circle moves to the right on a black background")
    assert not judge_prompt_adherence(clip[:, :, ::-1], "a red circle moves to the right")  # moves left
    assert not judge_prompt_adherence(clip, "a blue circle moves to the right")
    assert not judge_prompt_adherence(clip, "a red square moves to the right")
    assert not judge_prompt_adherence(clip, "a red circle moves up and to the right")
    assert not judge_prompt_adherence(clip, "a red circle moves to the right while growing")
    assert not judge_prompt_adherence(clip, "a red circle bounces left and right")
    grow = Scene(17, 1.0, bg, (Shape("square", "green", 0.08, 0.5, 0.5, growth=math.log(2.2) / 16,
                                     change="grow"),))
    clip = render_scene(grow, 64, 64)
    assert judge_prompt_adherence(clip, "a green box grows")
    assert not judge_prompt_adherence(clip[::-1], "a green box grows")
    assert judge_prompt_adherence(clip[::-1], "a green box shrinks")
    # a clip with two objects must show both
    two = PromptSpec(objects=(ObjectSpec("red", "circle", "right"), ObjectSpec("blue", "square", "left")))
    assert not judge_prompt_adherence(render_scene(right, 64, 64), two)


def test_mirrored_and_reversed_heldout_clips_fail():
    flips = reversals = 0
    for i in range(30):
        scene = sample_scene("heldout", 12, i, camera_fraction=0.3)
        clip = render_scene(scene, 64, 64)
        if scene.camera is not None:
            assert not judge_prompt_adherence(clip[::-1], scene)
            reversals += 1
            continue
        if all(s.motion in ("left", "right", "up-left", "up-right", "down-left", "down-right") for s in scene.shapes):
            assert not judge_prompt_adherence(clip[:, :, ::-1], scene)
            flips += 1
    assert flips >= 3 and reversals >= 3


@pytest.mark.parametrize("move", CAMERA_MOVES)
def test_global_motion_names_camera_moves(move):
    for i, photo in enumerate(("coffee", "rocket")):
        scene = sample_camera_scene(scene_rng("heldout", 0, i), move=move, photos=(photo,), allow_flip=False)
        assert global_motion(render_scene(scene, 64, 64)).camera_move == move, photo
    still = np.repeat(render_scene(scene, 64, 64, frames=1), 9, axis=0)
    assert global_motion(still).camera_move == "still"


def test_turning_point_measures_a_bounce():
    assert turning_point(np.linspace(0, 1, 17)) == 0.0
    assert turning_point(np.array([0.2, 0.5, 0.8, 0.6, 0.4])) == pytest.approx(0.4)
    assert turning_point(np.array([0.3, 0.9, 0.3, 0.9])) == pytest.approx(0.6)


def test_psnr_and_colour_drift():
    a = np.full((3, 8, 8, 3), 100, np.uint8)
    assert psnr(a, a) == math.inf
    assert psnr(a, a + 1) == pytest.approx(10 * math.log10(255 ** 2), abs=1e-9)
    with pytest.raises(ValueError):
        psnr(a, a[:2])
    steady = np.full((41, 4, 4, 3), 128, np.uint8)
    drift = colour_drift(steady, 8)
    assert drift.shape == (5,) and np.all(drift == 0)  # 1 + 5 * 8 frames: five chunks
    fading = (np.linspace(1.0, 0.5, 41)[:, None, None, None] * steady).astype(np.uint8)
    drift = colour_drift(fading, 8)
    assert np.all(np.diff(drift) > 0) and drift[-1] > 0.3
