"""The toy world: procedural clips with captions written from their parameters.

Coloured shapes moving, bouncing, growing or shrinking over plain or textured backgrounds, and
camera pans and zooms over real photographs; a caption writer with training and held-out wordings;
a parser that reads captions back; a dataset maker that writes folders of clips with
`captions.jsonl` and `scenes.jsonl`. See docs/toyworld.md.
"""

from pipelines.toyworld.captions import HELDOUT_WORDS, TRAIN_WORDS, parse_prompt, write_caption
from pipelines.toyworld.photos import HELDOUT_PHOTOS, PHOTOS, TRAIN_PHOTOS, load_photo
from pipelines.toyworld.render import render_background, render_scene, shape_sdf
from pipelines.toyworld.scenes import (
    CAMERA_MOVES, CHANGES, DIRECTIONS, MOTIONS, PALETTE, PAN_CONTENT_DIRECTION, SHAPE_KINDS, Background,
    Camera, ObjectSpec, PromptSpec, Scene, Shape, sample_camera_scene, sample_scene, sample_shape,
    sample_shape_scene, scene_from_spec, scene_rng,
)

__all__ = [
    "CAMERA_MOVES", "CHANGES", "DIRECTIONS", "HELDOUT_PHOTOS", "HELDOUT_WORDS", "MOTIONS", "PALETTE",
    "PAN_CONTENT_DIRECTION", "PHOTOS", "SHAPE_KINDS", "TRAIN_PHOTOS", "TRAIN_WORDS", "Background", "Camera",
    "ObjectSpec", "PromptSpec", "Scene", "Shape", "load_photo", "parse_prompt", "render_background",
    "render_scene", "sample_camera_scene", "sample_scene", "sample_shape", "sample_shape_scene",
    "scene_from_spec", "scene_rng", "shape_sdf", "write_caption",
]
