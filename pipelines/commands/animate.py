"""`spacetime animate IMAGE PROMPT`: image-to-video; the clip starts from the still."""

from __future__ import annotations

from pipelines.commands.sampling import add_sampling_arguments, run_sampling


def add_arguments(parser) -> None:
    parser.add_argument("image", help="the still the clip starts from (PNG, JPEG, WebP, ...; resized and centre-cropped)")
    parser.add_argument("prompt", help="what happens next (may be empty: \"\")")
    add_sampling_arguments(parser)


def run(args) -> int:
    return run_sampling(args, "animate")
