"""`spacetime generate PROMPT`: text-to-video (a long video when --frames exceeds the native length)."""

from __future__ import annotations

from pipelines.commands.sampling import add_sampling_arguments, run_sampling


def add_arguments(parser) -> None:
    parser.add_argument("prompt", help="what the clip shows, e.g. \"a red circle moves to the right\"")
    add_sampling_arguments(parser)


def run(args) -> int:
    return run_sampling(args, "generate")
