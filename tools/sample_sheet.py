"""Write one PNG of sample clips from a model: a row per prompt, evenly spaced frames left to right.

    python tools/sample_sheet.py docs/images/default_model_samples.png [--model DIR] [--overwrite]

Rows: text-to-video on held-out wordings, image-to-video of held-out photos ("the camera pans ..."),
and a window of a long video. Each row starts with its label, so the sheet reads on its own.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

TEXT_PROMPTS = (
    "a crimson circle travels to the right on a black background",
    "a blue square moves to the left on a white background",
    "a yellow triangle rises on a gray background",
    "an orange circle moves down on a striped background",
    "a green diamond grows on a black background",
)
PAN_PROMPTS = ("the camera pans left", "the camera pans up")
LONG_PROMPT = "a red circle bounces left and right on a gray background"
LONG_WINDOWS = 4  # the long row is this many native lengths


def label_strip(text: str, height: int, width: int) -> np.ndarray:
    """The row's label, wrapped onto a white strip of the row's height."""
    from PIL import Image, ImageDraw

    strip = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(strip)
    words, lines, line = text.split(), [], ""
    for word in words:
        trial = f"{line} {word}".strip()
        if draw.textlength(trial) > width - 6 and line:
            lines.append(line)
            line = word
        else:
            line = trial
    lines.append(line)
    for i, line in enumerate(lines[: height // 11]):
        draw.text((3, 2 + 11 * i), line, fill="black")
    return np.asarray(strip)


def row(label: str, frames: np.ndarray, count: int = 6, gap: int = 2, label_width: int = 150) -> np.ndarray:
    """The label, then `count` evenly spaced frames (first and last included) in one line."""
    from pipelines.video_io import contact_sheet

    h = frames.shape[1]
    strip = contact_sheet(frames, max_frames=count, columns=count, gap=gap)
    return np.concatenate([label_strip(label, h, label_width), np.full((h, gap, 3), 255, np.uint8), strip], axis=1)


def make_sheet(pipe, seed: int = 0, text_prompts=TEXT_PROMPTS, pan_prompts=PAN_PROMPTS,
               long_prompt: str | None = LONG_PROMPT) -> np.ndarray:
    """The sheet as a uint8 (H, W, 3) image: a labelled row per sample, frames left to right."""
    from pipelines.evaluation import animation_scenes
    from pipelines.toyworld.render import render_scene

    c = pipe.config

    def sample(prompt, **kwargs):
        return pipe(prompt, generator=torch.Generator().manual_seed(seed), **kwargs).frames[0]

    rows = [row(p, sample(p)) for p in text_prompts]
    scenes = {prompt: scene for scene, prompt in animation_scenes(c.native_frames, c.width / c.height)}
    for prompt in pan_prompts:
        still = render_scene(scenes[prompt], c.height, c.width, frames=1)[0]
        rows.append(row(f"{prompt} (image-to-video, held-out photo)", sample(prompt, image=still)))
    if long_prompt:
        long = sample(long_prompt, num_frames=LONG_WINDOWS * (c.native_frames - 1) + 1)
        rows.append(row(f"{long_prompt} ({len(long)} frames)", long))
    gap = np.full((4, rows[0].shape[1], 3), 255, np.uint8)
    return np.concatenate([part for r in rows for part in (r, gap)][:-1], axis=0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path, help="the PNG to write")
    parser.add_argument("--model", default=None, help="a model folder (default: the installed default model)")
    parser.add_argument("--seed", type=int, default=0, help="the seed of every sample (default 0)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing PNG")
    args = parser.parse_args()

    from pipelines.errors import UserError
    from pipelines.pipeline import SpacetimePipeline, default_model_path
    from pipelines.video_io import write_image

    try:
        if args.out.exists() and not args.overwrite:
            raise UserError(f"{args.out} exists; pass --overwrite to replace it")
        pipe = SpacetimePipeline.from_pretrained(args.model or default_model_path())
        pipe.set_progress_bar_config(disable=True)
        print(write_image(args.out, make_sheet(pipe, args.seed), overwrite=args.overwrite))
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        raise SystemExit(2) from None


if __name__ == "__main__":
    main()
