"""Writing a toy-world data set: a folder of clips with `captions.jsonl`, `scenes.jsonl` and `dataset.json`.

    out/
      clips/000000.gif        shapes clips: GIF (lossless at these few colours)
      clips/000001.mp4        camera clips: H.264
      captions.jsonl          {"path": "clips/000000.gif", "caption": "..."}, one row per caption
      scenes.jsonl            {"path": ..., "index": ..., "captions": [...], "scene": {...}}
      dataset.json            how it was made (split, seed, size, frames, fps, format, count)

The folder is written under a temporary name beside `out` and renamed into place when complete;
an existing `out` is replaced only with `overwrite=True`. Scene `i` of a split depends only on
(split, seed, i), so a data set can be made in pieces or in parallel and comes out the same.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pipelines.errors import UserError
from pipelines.toyworld.captions import write_caption
from pipelines.toyworld.render import render_scene
from pipelines.toyworld.scenes import SPLITS, sample_scene
from pipelines.video_io import replace_folder

FORMATS = ("auto", "mp4", "gif")


@dataclass(frozen=True)
class DatasetSpec:
    num: int
    frames: int = 17
    height: int = 64
    width: int = 64
    seed: int = 0
    split: str = "train"
    camera_fraction: float = 0.35
    captions_per_clip: int = 2
    fmt: str = "auto"  # "auto": GIF for shapes (no 4:2:0 colour loss on small shapes), mp4 for photos
    fps: float = 8.0
    quality: int = 12  # H.264 CRF for mp4 clips

    def check(self) -> None:
        if self.num < 1:
            raise UserError(f"--num must be at least 1, got {self.num}")
        if self.frames < 2 or (self.frames - 1) % 4:
            raise UserError(f"--frames must be 1 + 4k and at least 5 (5, 9, 17, 33, ...), got {self.frames}")
        if self.height < 8 or self.width < 8:
            raise UserError(f"--height and --width must be at least 8, got {self.height}x{self.width}")
        if self.seed < 0:
            raise UserError(f"--seed must be 0 or more, got {self.seed}")
        if self.split not in SPLITS:
            raise UserError(f"--split must be one of {', '.join(SPLITS)}, got {self.split!r}")
        if not 0.0 <= self.camera_fraction <= 1.0:
            raise UserError(f"--camera-fraction must be between 0 and 1, got {self.camera_fraction}")
        if self.captions_per_clip < 1:
            raise UserError(f"--captions-per-clip must be at least 1, got {self.captions_per_clip}")
        if self.fmt not in FORMATS:
            raise UserError(f"--format must be one of {', '.join(FORMATS)}, got {self.fmt!r}")
        if not self.fps > 0:
            raise UserError(f"--fps must be positive, got {self.fps}")


def make_item(spec: DatasetSpec, index: int) -> tuple:
    """Scene `index`: its clip (uint8 (T, H, W, 3)), its captions and the scene itself."""
    scene = sample_scene(spec.split, spec.seed, index, frames=spec.frames, aspect=spec.width / spec.height,
                         camera_fraction=spec.camera_fraction)
    clip = render_scene(scene, spec.height, spec.width)
    heldout = spec.split == "heldout"
    captions: list[str] = []
    for k in range(spec.captions_per_clip * 4):  # different wordings; a few tries in case two coincide
        caption = write_caption(scene, np.random.default_rng([scene.seed, int(heldout), k]), heldout_wording=heldout)
        if caption not in captions:
            captions.append(caption)
        if len(captions) == spec.captions_per_clip:
            break
    return clip, captions, scene


def _extension(spec: DatasetSpec, kind: str) -> str:
    if spec.fmt == "auto":
        return "gif" if kind == "shapes" else "mp4"
    return spec.fmt


def _write_item(job: tuple) -> dict:
    spec, index, root = job
    from pipelines.video_io import write_video

    clip, captions, scene = make_item(spec, index)
    rel = f"clips/{index:06d}.{_extension(spec, scene.kind)}"
    write_video(Path(root) / rel, clip, spec.fps, quality=spec.quality)
    return {"path": rel, "index": index, "captions": captions, "scene": scene.to_dict()}


def _check_target(out: Path, overwrite: bool) -> None:
    if out.exists() and not out.is_dir():
        raise UserError(f"{out} exists and is not a folder")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise UserError(f"{out} is not empty; pass --overwrite to replace it")


def make_dataset(out: str | os.PathLike, spec: DatasetSpec, *, workers: int = 1, overwrite: bool = False,
                 progress: bool = False) -> dict:
    """Write `spec.num` clips to the folder `out`; returns the contents of its dataset.json."""
    spec.check()
    out = Path(out)
    _check_target(out, overwrite)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.partial-", dir=out.parent))
    try:
        (tmp / "clips").mkdir()
        jobs = [(spec, i, str(tmp)) for i in range(spec.num)]
        bar = None
        if progress:
            from tqdm import tqdm

            bar = tqdm(total=spec.num, unit="clip", desc=f"toy world ({spec.split})")
        records = []
        if workers > 1:
            import multiprocessing

            with multiprocessing.get_context("fork").Pool(workers) as pool:
                for record in pool.imap(_write_item, jobs, chunksize=8):
                    records.append(record)
                    if bar is not None:
                        bar.update()
        else:
            for job in jobs:
                records.append(_write_item(job))
                if bar is not None:
                    bar.update()
        if bar is not None:
            bar.close()
        with open(tmp / "captions.jsonl", "w") as f:
            for r in records:
                for caption in r["captions"]:
                    f.write(json.dumps({"path": r["path"], "caption": caption}) + "\n")
        with open(tmp / "scenes.jsonl", "w") as f:
            for r in records:
                f.write(json.dumps(r) + "\n")
        info = {"kind": "toyworld", "split": spec.split, "seed": spec.seed, "num": spec.num,
                "frames": spec.frames, "height": spec.height, "width": spec.width, "fps": spec.fps,
                "format": spec.fmt, "camera_fraction": spec.camera_fraction,
                "captions_per_clip": spec.captions_per_clip,
                "camera_clips": sum(r["scene"]["camera"] is not None for r in records)}
        (tmp / "dataset.json").write_text(json.dumps(info, indent=2) + "\n")
        replace_folder(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return info
