"""The `spacetime` command line.

Each subcommand lives in its own module under `pipelines.commands` with two functions,
`add_arguments(parser)` and `run(args) -> int`. The table below names them. Every module is
imported to build the parser, but imports torch and the models only inside `run`, so
`spacetime --help` starts quickly.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from pipelines import __version__
from pipelines.errors import EXIT_USER_ERROR, UserError

# name -> (one-line help, module in pipelines.commands)
COMMANDS: dict[str, tuple[str, str]] = {
    "generate": ("text-to-video: make a clip from a prompt", "pipelines.commands.generate"),
    "animate": ("image-to-video: bring a still to life from a prompt", "pipelines.commands.animate"),
    "extend": ("continue a video for N more frames", "pipelines.commands.extend"),
    "reconstruct": ("encode and decode a video with the VAE; print PSNR and SSIM", "pipelines.commands.reconstruct"),
    "train": ("train a VAE or DiT from a YAML config", "pipelines.commands.train"),
    "finetune": ("fine-tune a model (LoRA or full) on a folder of footage", "pipelines.commands.finetune"),
    "cache-latents": ("pre-compute VAE latents and prompt embeddings for training", "pipelines.commands.cache_latents"),
    "eval": ("evaluate a model on the held-out toy-world split", "pipelines.commands.eval"),
    "make-dataset": ("write a procedural toy-world data set (clips, captions.jsonl, scenes.jsonl)",
                     "pipelines.commands.make_dataset"),
    "bench": ("run the benchmarks and print their tables", "pipelines.commands.bench"),
    "info": ("describe a video, an image or a model folder as JSON", "pipelines.commands.info"),
}


class _Parser(argparse.ArgumentParser):
    """Usage mistakes end like every other bad input: one line naming the value, exit code 2."""

    def error(self, message: str):
        self.exit(EXIT_USER_ERROR, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="spacetime",
        description="spacetime-video: generate video with diffusion transformers over spacetime patches.",
    )
    parser.add_argument("--version", action="version", version=f"spacetime-video {__version__}")
    parser.add_argument("--debug", action="store_true", help="show full tracebacks on errors")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (help_text, module_name) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        p.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help=argparse.SUPPRESS)
        _load(module_name).add_arguments(p)
    return parser


def _load(module_name: str):
    return importlib.import_module(module_name)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 0
    _, module_name = COMMANDS[args.command]
    try:
        return int(_load(module_name).run(args) or 0)
    except KeyboardInterrupt:
        print("spacetime: interrupted", file=sys.stderr)
        return 130
    except (UserError, ValueError, OSError) as err:  # OSError: a path the system refuses (missing, too long, read-only)
        if args.debug:
            raise
        message = " ".join(str(err).split()) or type(err).__name__
        print(f"spacetime {args.command}: error: {message}", file=sys.stderr)
        return EXIT_USER_ERROR


if __name__ == "__main__":
    sys.exit(main())
