"""The toy world: scenes, renders, captions, the caption parser and the dataset maker."""

import json
import os
import re
from collections import Counter

import numpy as np
import pytest

from pipelines.analysis import global_motion
from pipelines.errors import UserError
from pipelines.toyworld import (
    HELDOUT_PHOTOS, HELDOUT_WORDS, PHOTOS, TRAIN_PHOTOS, ObjectSpec, PromptSpec, Scene, load_photo, parse_prompt,
    render_scene, sample_camera_scene, sample_scene, scene_rng, write_caption,
)
from pipelines.toyworld.captions import _OBJECT_RE, COLOUR_WORDS
from pipelines.toyworld.scenes import _half_extents, shape_positions


def _same_content(parsed: PromptSpec, spec: PromptSpec) -> bool:
    """A caption may leave out the background or the photo; what it says must be right."""
    background_ok = parsed.background in (None, spec.background) or (parsed.background == "textured"
                                                                      and spec.background == "noise")
    return (parsed.objects == spec.objects and parsed.camera == spec.camera and background_ok
            and parsed.photo in (None, spec.photo))


def test_scenes_are_seeded_and_the_splits_never_share_photos():
    a = sample_scene("train", 3, 11)
    assert sample_scene("train", 3, 11) == a
    assert sample_scene("train", 4, 11) != a
    assert sample_scene("heldout", 3, 11) != a
    for i in range(150):
        train = sample_scene("train", 0, i, camera_fraction=1.0)
        heldout = sample_scene("heldout", 0, i, camera_fraction=1.0)
        assert train.camera.photo in TRAIN_PHOTOS
        assert heldout.camera.photo in HELDOUT_PHOTOS and not heldout.camera.flip
    assert not set(TRAIN_PHOTOS) & set(HELDOUT_PHOTOS)


def test_photos_exist_offline_with_their_recorded_sizes():
    for name, photo in PHOTOS.items():
        image = load_photo(name)
        assert image.dtype == np.uint8 and image.shape == (*photo.size, 3), name


@pytest.mark.parametrize("frames,height,width", [(17, 64, 64), (9, 48, 80), (5, 40, 24)])
def test_render_any_size_and_round_trip_through_json(frames, height, width):
    for i in range(6):
        scene = sample_scene("train", 1, i, frames=frames, aspect=width / height, camera_fraction=0.4)
        clip = render_scene(scene, height, width)
        assert clip.dtype == np.uint8 and clip.shape == (frames, height, width, 3)
        again = Scene.from_dict(json.loads(json.dumps(scene.to_dict())))
        assert again == scene
        np.testing.assert_array_equal(render_scene(again, height, width), clip)


def test_shapes_stay_inside_the_frame_and_never_overlap():
    for aspect in (1.0, 16 / 9):
        for i in range(120):
            scene = sample_scene("train", 2, i, aspect=aspect, camera_fraction=0.0)
            boxes = []
            for shape in scene.shapes:
                x, y, size = shape_positions(shape, scene.frames, aspect)
                hx, hy = _half_extents(size, aspect)
                assert np.all(x - hx >= -1e-9) and np.all(x + hx <= 1 + 1e-9), shape
                assert np.all(y - hy >= -1e-9) and np.all(y + hy <= 1 + 1e-9), shape
                boxes.append((x, y, hx, hy))
            for j, (xa, ya, wa, ha) in enumerate(boxes):
                for xb, yb, wb, hb in boxes[j + 1:]:
                    assert not np.any((np.abs(xa - xb) < wa + wb) & (np.abs(ya - yb) < ha + hb))


def test_moving_shapes_really_move_and_bounces_turn_back():
    for i in range(80):
        scene = sample_scene("heldout", 5, i, camera_fraction=0.0)
        for shape in scene.shapes:
            x, y, _ = shape_positions(shape, scene.frames, scene.aspect)
            if shape.motion.startswith("bounce"):
                path = x if shape.motion != "bounce-vertical" else y
                assert np.any(np.diff(np.sign(np.diff(path))) != 0), shape  # it turns at least once
            elif shape.motion != "still":
                assert max(abs(x[-1] - x[0]), abs(y[-1] - y[0])) >= 0.2, shape


@pytest.mark.parametrize("move,content", [("pan-left", "right"), ("pan-right", "left"), ("pan-up", "down"),
                                          ("pan-down", "up")])
def test_pan_left_moves_the_content_right(move, content):
    scene = sample_camera_scene(scene_rng("train", 0, 7), move=move, photos=("astronaut",))
    clip = render_scene(scene, 64, 64).astype(np.float64)
    # the content's shift from frame 0 to frame 8, found by brute force over whole pixels
    a, b = clip[0], clip[8]
    best = min(((dy, dx) for dy in range(-20, 21) for dx in range(-20, 21)),
               key=lambda d: np.mean((np.roll(a, d, axis=(0, 1))[20:44, 20:44] - b[20:44, 20:44]) ** 2))
    found = {(0, 1): "right", (0, -1): "left", (1, 0): "down", (-1, 0): "up"}[tuple(np.sign(best))]
    assert found == content, best


def test_zoom_in_makes_the_content_grow():
    for move, grows in (("zoom-in", True), ("zoom-out", False)):
        scene = sample_camera_scene(scene_rng("train", 0, 3), move=move, photos=("chelsea",))
        assert (global_motion(render_scene(scene, 64, 64)).zoom > 1.1) == grows


def test_training_captions_never_use_heldout_words_and_parse_back():
    for i in range(300):
        scene = sample_scene("train", 0, i, camera_fraction=0.3)
        train = write_caption(scene)
        heldout = write_caption(scene, heldout_wording=True)
        assert not set(re.findall(r"[a-z]+", train)) & HELDOUT_WORDS, train
        assert set(re.findall(r"[a-z]+", heldout)) & HELDOUT_WORDS, heldout
        assert _same_content(parse_prompt(train), scene.spec()), train
        assert _same_content(parse_prompt(heldout), scene.spec()), heldout
    assert write_caption(scene) == write_caption(scene)


def test_the_issue_examples_parse():
    assert parse_prompt("a red circle moves to the right on a black background") == PromptSpec(
        objects=(ObjectSpec("red", "circle", "right", "none"),), background="black")
    assert parse_prompt("The camera pans left across a photo of a cat.") == PromptSpec(camera="pan-left",
                                                                                        photo="a cat")
    assert parse_prompt("a crimson disc travels up and to the right while swelling").objects == (
        ObjectSpec("red", "circle", "up-right", "grow"),)
    two = parse_prompt("on a grey backdrop, a small golden box falls and an aqua diamond bounces up and down")
    assert two.background == "gray" and two.objects == (ObjectSpec("yellow", "square", "down", "none"),
                                                         ObjectSpec("cyan", "diamond", "bounce-vertical", "none"))
    with pytest.raises(ValueError, match="cannot read"):
        parse_prompt("a sunset over the sea")


def test_make_dataset_writes_clips_captions_and_scenes(tmp_path):
    from pipelines.toyworld.dataset import DatasetSpec, make_dataset
    from pipelines.video_io import read_video

    out = tmp_path / "toy"
    spec = DatasetSpec(num=6, frames=5, height=32, width=32, seed=1, camera_fraction=0.5)
    info = make_dataset(out, spec)
    assert info["num"] == 6 and json.loads((out / "dataset.json").read_text())["split"] == "train"
    rows = [json.loads(line) for line in (out / "captions.jsonl").read_text().splitlines()]
    scenes = [json.loads(line) for line in (out / "scenes.jsonl").read_text().splitlines()]
    assert len(scenes) == 6 and len(rows) == 12  # two wordings per clip
    assert {r["path"] for r in rows} == {s["path"] for s in scenes}
    for record in scenes:
        scene = Scene.from_dict(record["scene"])
        frames = read_video(out / record["path"]).frames
        assert frames.shape == (5, 32, 32, 3)
        if scene.kind == "shapes":  # GIF: lossless at a shape clip's few colours
            assert record["path"].endswith(".gif")
            np.testing.assert_array_equal(frames, render_scene(scene, 32, 32))
        else:
            assert record["path"].endswith(".mp4")
            assert np.abs(frames.astype(int) - render_scene(scene, 32, 32)).mean() < 6
    with pytest.raises(UserError, match="not empty"):
        make_dataset(out, spec)
    make_dataset(out, DatasetSpec(num=2, frames=5, height=32, width=32), overwrite=True)
    assert len((out / "scenes.jsonl").read_text().splitlines()) == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["toy"]  # no partial folders left behind


def test_make_dataset_command(tmp_path, capsys):
    from pipelines.cli import main

    out = tmp_path / "held"
    assert main(["make-dataset", str(out), "--num", "3", "--frames", "5", "--height", "24", "--width", "24",
                 "--split", "heldout", "--quiet"]) == 0
    assert json.loads(capsys.readouterr().out)["split"] == "heldout"
    captions = [json.loads(line)["caption"] for line in (out / "captions.jsonl").read_text().splitlines()]
    assert all(set(re.findall(r"[a-z]+", c)) & HELDOUT_WORDS for c in captions)
    assert (out.stat().st_mode & 0o777) == 0o777 & ~_umask()  # as a plain mkdir makes it
    assert main(["make-dataset", str(tmp_path / "bad"), "--frames", "6"]) == 2
    assert "1 + 4k" in capsys.readouterr().err
    assert main(["make-dataset", str(tmp_path / "bad"), "--seed", "-1"]) == 2
    assert "--seed must be 0 or more, got -1" in capsys.readouterr().err


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def test_training_captions_vary_the_colour_word_and_keep_the_plain_one_common():
    words = Counter()
    for i in range(400):
        scene = sample_scene("train", 0, i, camera_fraction=0.0)
        caption = write_caption(scene)
        red = [s for s in scene.shapes if s.colour == "red"]
        if len(scene.shapes) == 1 and red:
            words[_OBJECT_RE.search(caption).group(1)] += 1  # the colour word of its object
    assert words.most_common(1)[0][0] == "red"
    assert len(words) >= 4, words  # synonyms from COLOUR_WORDS appear too
    assert set(words) <= set(COLOUR_WORDS["red"][0])
