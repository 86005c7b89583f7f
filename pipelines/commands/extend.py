"""`spacetime extend VIDEO PROMPT --frames N`: the input's frames, unchanged, then N new ones."""

from __future__ import annotations

from pipelines.commands.sampling import add_sampling_arguments, run_sampling


def add_arguments(parser) -> None:
    parser.add_argument("video", help="the clip to continue (mp4, mov, webm, GIF, a folder of PNG frames, ...)")
    parser.add_argument("prompt", help="what happens next (may be empty: \"\")")
    add_sampling_arguments(parser, frames_required=True)


def run(args) -> int:
    return run_sampling(args, "extend")
