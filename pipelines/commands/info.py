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
    if not config.is_file():
        return None
    try:
        cls = json.loads(config.read_text()).get("_class_name")
    except json.JSONDecodeError as err:
        raise UserError(f"{config} is not valid JSON ({err.msg})") from err
    return {"path": str(path), "kind": "model", "class": cls, "config": json.loads(config.read_text())}


def run(args) -> int:
    from pipelines.video_io import probe

    path = Path(args.path)
    if path.is_dir():
        described = describe_model_folder(path, args.frames, args.size)
        if described is not None:
            print(json.dumps(described, indent=2))
            return 0
    print(json.dumps(probe(path), indent=2))
    return 0
