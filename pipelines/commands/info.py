"""`spacetime info PATH`: describe a video, an image, a folder of frames or a model folder as JSON."""

from __future__ import annotations

import json
from pathlib import Path

from pipelines.errors import UserError


def add_arguments(parser) -> None:
    parser.add_argument("path", help="a video, an image, a folder of PNG frames, or a model folder")
    parser.add_argument("--frames", type=int, default=None, help="model folders: pixel frames for the FLOPs count")
    parser.add_argument("--size", default=None, help="model folders: WxH for the FLOPs count")


def describe_model_folder(path: Path, frames: int | None, size: str | None) -> dict | None:
    """A model folder's description, or None when the folder holds no model config."""
    config = path / "config.json"
    if (path / "transformer" / "config.json").is_file():
        config = path / "transformer" / "config.json"
    if not config.is_file():
        return None
    cls = _read_json(config).get("_class_name")
    if cls == "VideoDiT":  # parameters and FLOPs per step at --frames / --size (pixels)
        from video_dit import describe

        width, height = _parse_size(size) if size else (None, None)
        index = None
        if (path / "model_index.json").is_file():
            from pipelines.pipeline import _read_index

            index = _read_index(path)
        if index is not None:  # a whole model folder: FLOPs at its native clip unless told otherwise
            frames = frames if frames is not None else index.get("native_frames")
            if size is None:
                width, height = index.get("width"), index.get("height")
        described = describe(path, frames=frames, height=height, width=width, pixels=True)
        if index is not None:  # its native size, sampling defaults, parts
            described["model_index"] = index
        return described
    return {"path": str(path), "kind": "model", "class": cls, "config": _read_json(config)}


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise UserError(f"{path} is not valid JSON ({err.msg})") from err


def _parse_size(size: str) -> tuple[int, int]:
    try:
        width, height = (int(v) for v in size.lower().split("x"))
    except ValueError:
        width = height = 0
    if width < 1 or height < 1:
        raise UserError(f"--size {size!r}: expected WIDTHxHEIGHT in positive pixels, e.g. 256x256")
    return width, height


def run(args) -> int:
    from pipelines.video_io import probe

    path = Path(args.path)
    if args.frames is not None and args.frames < 1:
        raise UserError(f"--frames {args.frames}: expected 1 or more frames")
    if path.is_dir():
        described = describe_model_folder(path, args.frames, args.size)
        if described is not None:
            print(json.dumps(described, indent=2))
            return 0
    print(json.dumps(probe(path), indent=2))
    return 0
