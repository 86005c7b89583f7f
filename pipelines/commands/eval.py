"""`spacetime eval [--model DIR | --vae DIR] [--json]`: measure a model on the held-out toy-world split.

Runs `pipelines.evaluation.evaluate` with the model's text-to-video, image-to-video, VAE round
trip and long-video sampler, and prints the table of bars (or, with --json, everything measured).
`--vae` measures a VAE alone: its reconstruction bars and colour check.
`--reference` evaluates ground-truth renders instead of a model: a check of the evaluation itself,
which passes every bar.
"""

from __future__ import annotations

import json
import sys


def add_arguments(parser) -> None:
    from pipelines.commands.sampling import add_guidance_interval_argument

    parser.add_argument("--model", default=None, help="a model folder (default: the installed default model)")
    parser.add_argument("--vae", default=None, metavar="DIR",
                        help="evaluate only a VAE's reconstruction bars: a VAE folder, a model folder, or "
                             "'default' for the installed VAE")
    parser.add_argument("--reference", action="store_true",
                        help="evaluate ground-truth renders instead of a model (checks the evaluation)")
    parser.add_argument("--json", action="store_true", help="print everything measured as JSON")
    parser.add_argument("--limit", type=int, default=None,
                        help="at most N items per bar: a quick look, not the bar (default: all)")
    parser.add_argument("--seeds", type=int, default=1,
                        help="sample each adherence prompt with N seeds (the first is the bar's own): a steadier "
                             "comparison of two models (default 1)")
    parser.add_argument("--frames", type=int, default=None, help="native clip length (default: the model's)")
    parser.add_argument("--height", type=int, default=None, help="frame height (default: the model's)")
    parser.add_argument("--width", type=int, default=None, help="frame width (default: the model's)")
    parser.add_argument("--long-factor", type=int, default=10,
                        help="the long-video bar's clip is this many native lengths (default 10)")
    parser.add_argument("--steps", type=int, default=None, help="sampling steps (default: the model's)")
    parser.add_argument("--guidance", type=float, default=None, help="guidance scale (default: the model's)")
    parser.add_argument("--guidance-rescale", type=float, default=None,
                        help="guidance rescale strength, 0 to 1 (default: the model's)")
    add_guidance_interval_argument(parser)
    parser.add_argument("--device", default=None, help="torch device, e.g. cuda (default: cpu)")
    parser.add_argument("--check", action="store_true", help="exit with status 1 when a bar fails")


def model_callables(pipe, *, steps: int | None = None, guidance: float | None = None,
                    guidance_rescale: float | None = None, guidance_interval=None) -> dict:
    """The four functions `evaluate` takes, answered by a SpacetimePipeline."""
    import torch

    def call(prompt, seed, **kwargs):
        out = pipe(prompt, num_inference_steps=steps, guidance_scale=guidance, guidance_rescale=guidance_rescale,
                   guidance_interval=guidance_interval,
                   generator=torch.Generator().manual_seed(int(seed)), output_type="np", **kwargs)
        return out.frames[0]

    def generate_fn(prompt, *, frames, height, width, seed):
        return call(prompt, seed, num_frames=frames, height=height, width=width)

    def animate_fn(image, prompt, *, frames, seed):
        return call(prompt, seed, image=image, num_frames=frames, height=image.shape[0], width=image.shape[1])

    def reconstruct_fn(clip):
        height, width = clip.shape[1:3]
        return pipe.decode_latents(pipe.encode_frames(clip, width, height))[0]

    return {"generate_fn": generate_fn, "animate_fn": animate_fn, "reconstruct_fn": reconstruct_fn,
            "long_fn": generate_fn}


def run(args) -> int:
    from pipelines.commands.sampling import check_guidance_interval, check_guidance_rescale
    from pipelines.errors import UserError
    from pipelines.evaluation import evaluate, reference_callables

    if args.limit is not None and args.limit < 1:
        raise UserError(f"--limit must be at least 1, got {args.limit}")
    if args.seeds < 1:
        raise UserError(f"--seeds must be at least 1, got {args.seeds}")
    check_guidance_rescale(args.guidance_rescale)
    check_guidance_interval(args.guidance_interval)
    if sum(map(bool, (args.model, args.vae, args.reference))) > 1:
        raise UserError("give one of --model, --vae and --reference")
    if args.reference:
        frames, height, width = args.frames or 17, args.height or 64, args.width or 64
        callables = reference_callables(frames, height, width)
        folder = "reference renders"
    elif args.vae is not None:
        from pipelines.commands.reconstruct import load_vae, reconstruct

        vae, folder = load_vae(None if args.vae == "default" else args.vae)
        vae.to(args.device or "cpu").eval().requires_grad_(False)
        frames, height, width = args.frames or 17, args.height or 64, args.width or 64
        callables = {"reconstruct_fn": lambda clip: reconstruct(vae, clip, args.device or "cpu")[0]}
    else:
        from pipelines.pipeline import SpacetimePipeline, default_model_path

        folder = args.model if args.model is not None else default_model_path()
        pipe = SpacetimePipeline.from_pretrained(folder, device=args.device)
        pipe.set_progress_bar_config(disable=True)
        config = pipe.config
        frames = args.frames or config.native_frames
        height, width = args.height or config.height, args.width or config.width
        callables = model_callables(pipe, steps=args.steps, guidance=args.guidance,
                                    guidance_rescale=args.guidance_rescale,
                                    guidance_interval=args.guidance_interval)

    def progress(line: str) -> None:
        if not args.json:
            print(f"evaluating: {line}", file=sys.stderr, flush=True)

    if args.long_factor < 2:
        raise UserError(f"--long-factor must be at least 2, got {args.long_factor}")
    report = evaluate(**callables, frames=frames, height=height, width=width, long_factor=args.long_factor,
                      limit=args.limit, seeds=args.seeds, progress=progress)
    report.settings["model"] = str(folder)
    if args.json:
        print(json.dumps(report.to_dict(), indent=2))
    else:
        print(report.table())
        checks = report.adherence_line()
        if checks:  # which check the failing clips fail on
            print(checks)
        colours = report.items.get("reconstruction_colour")
        if colours:  # not a bar: whether the VAE keeps hue (0 is exact; a VAE that greys colours scores 60-90)
            mean = sum(c["error"] for c in colours) / len(colours)
            print(f"VAE colour error on objects: {mean:.1f} of 255 "
                  f"(mean over {len(colours)} palette colours; --json lists each)")
    return 1 if args.check and not report.passed else 0
