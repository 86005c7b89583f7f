"""`spacetime make-dataset OUT`: write a procedural toy-world data set (clips, captions.jsonl, scenes.jsonl)."""

from __future__ import annotations

import json


def add_arguments(parser) -> None:
    parser.add_argument("out", help="the folder to write (clips/, captions.jsonl, scenes.jsonl, dataset.json)")
    parser.add_argument("--num", type=int, default=1000, help="number of clips (default 1000)")
    parser.add_argument("--frames", type=int, default=17, help="frames per clip, 1 + 4k (default 17)")
    parser.add_argument("--height", type=int, default=64, help="frame height in pixels (default 64)")
    parser.add_argument("--width", type=int, default=64, help="frame width in pixels (default 64)")
    parser.add_argument("--seed", type=int, default=0, help="scene i depends only on (split, seed, i) (default 0)")
    parser.add_argument("--split", choices=("train", "heldout"), default="train",
                        help="train: training photos and wordings; heldout: the evaluation's own photos, "
                             "seeds and wordings, never to be trained on (default train)")
    parser.add_argument("--camera-fraction", type=float, default=0.35,
                        help="share of camera moves over photos; the rest are shapes (default 0.35)")
    parser.add_argument("--captions-per-clip", type=int, default=2,
                        help="different wordings per clip, one row each in captions.jsonl (default 2)")
    parser.add_argument("--format", dest="fmt", choices=("auto", "mp4", "gif"), default="auto",
                        help="auto: GIF for shapes (lossless at their few colours), mp4 for photos (default)")
    parser.add_argument("--fps", type=float, default=8.0, help="frame rate written into the files (default 8)")
    parser.add_argument("--quality", type=int, default=12, help="H.264 CRF of mp4 clips, lower is better (default 12)")
    parser.add_argument("--workers", type=int, default=1, help="processes that render and write clips (default 1)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing, non-empty OUT")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")


def run(args) -> int:
    from pipelines.toyworld.dataset import DatasetSpec, make_dataset

    spec = DatasetSpec(num=args.num, frames=args.frames, height=args.height, width=args.width, seed=args.seed,
                       split=args.split, camera_fraction=args.camera_fraction,
                       captions_per_clip=args.captions_per_clip, fmt=args.fmt, fps=args.fps, quality=args.quality)
    info = make_dataset(args.out, spec, workers=max(1, args.workers), overwrite=args.overwrite,
                        progress=not args.quiet)
    print(json.dumps({"out": str(args.out), **info}))
    return 0
