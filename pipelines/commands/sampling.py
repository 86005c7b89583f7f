"""What `spacetime generate`, `animate` and `extend` share: their options and the run itself.

Each command adds its own positional arguments, then `add_sampling_arguments`; its `run` calls
`run_sampling(args, task)`. Everything that can be checked (the model folder, the output path,
the input files, the sizes) is checked before the model runs, and fails as one line.
"""

from __future__ import annotations

import re
import sys
import time
import unicodedata
from datetime import datetime
from pathlib import Path

from pipelines.errors import UserError


def add_sampling_arguments(parser, *, frames_required: bool = False) -> None:
    """The options of every sampling command."""
    parser.add_argument("--negative-prompt", default=None, metavar="T",
                        help="what to steer away from (default: guidance away from the empty prompt)")
    parser.add_argument("--frames", type=int, required=frames_required, default=None, metavar="N",
                        help="new frames after the input (required)" if frames_required else
                        "pixel frames, 1 + 4k (default: the model's native length; more makes a long video)")
    parser.add_argument("--size", default=None, metavar="WxH", help="frame size (default: the model's native size)")
    parser.add_argument("--fps", type=float, default=None, metavar="F", help="frame rate of the output file")
    parser.add_argument("--steps", type=int, default=None, metavar="S", help="sampling steps (default: the model's)")
    parser.add_argument("--guidance", type=float, default=None, metavar="G",
                        help="classifier-free guidance scale; 1 turns it off (default: the model's; for "
                        "animate and extend its given_guidance_scale, which may be lower)")
    parser.add_argument("--guidance-rescale", type=float, default=None, metavar="R",
                        help="0 to 1: scale strong guidance back to the prompt's own spread, for a less "
                        "harsh look (default: the model's)")
    add_guidance_interval_argument(parser)
    parser.add_argument("--seed", type=int, default=None, metavar="N",
                        help="random seed; same seed and options give the same frames (default: drawn and printed)")
    parser.add_argument("--model", default=None, metavar="DIR", help="model folder (default: the installed model)")
    parser.add_argument("--out", default=None, metavar="PATH",
                        help="output .mp4, .gif, .webp or folder/ of PNGs (default: outputs/<time>-<prompt>.mp4)")
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu", help="where to run (default: cpu)")
    parser.add_argument("--dtype", choices=["fp32", "bf16"], default="fp32",
                        help="precision of the transformer (default: fp32)")
    parser.add_argument("--preview", action="store_true", help="also write a contact-sheet PNG beside the output")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing output")


def parse_size(text: str | None) -> tuple[int | None, int | None]:
    """'WxH' -> (width, height); None -> (None, None)."""
    if text is None:
        return None, None
    match = re.fullmatch(r"\s*(\d+)\s*[xX*]\s*(\d+)\s*", text)
    if not match:
        raise UserError(f"--size {text!r} is not WxH; write it like 64x64")
    return int(match.group(1)), int(match.group(2))


def slug(prompt: str, limit: int = 48) -> str:
    """A file-name-safe slug of a prompt: 'A red circle, moving!' -> 'a-red-circle-moving'."""
    text = unicodedata.normalize("NFKD", prompt).encode("ascii", "ignore").decode().lower()
    words = re.findall(r"[a-z0-9]+", text)
    out = ""
    for word in words:
        candidate = f"{out}-{word}" if out else word
        if len(candidate) > limit:
            break
        out = candidate
    return out or "clip"


def default_output(prompt: str, now: datetime | None = None) -> Path:
    now = now or datetime.now()
    return Path("outputs") / f"{now:%Y%m%d-%H%M%S}-{slug(prompt)}.mp4"


def preview_path(out: Path) -> Path:
    """The contact sheet of `clip.mp4` is `clip.png`; of a folder `frames/`, `frames.png`."""
    out = Path(str(out).rstrip("/\\"))
    return out.with_suffix(".png") if out.suffix else out.with_name(out.name + ".png")


def resolve_model(path: str | None) -> Path:
    from pipelines.pipeline import default_model_path

    return default_model_path() if path is None else Path(path)


def load_pipeline(model: Path, device: str, dtype: str):
    import torch

    from pipelines.pipeline import SpacetimePipeline

    if device == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda: no CUDA GPU is available here; use --device cpu")
    pipe = SpacetimePipeline.from_pretrained(model, torch_dtype=torch.bfloat16 if dtype == "bf16" else None,
                                             device=device)
    return pipe


def _quiet_loading() -> None:
    """No progress bars or advice from the libraries while the model loads: one line per problem."""
    import diffusers
    import transformers

    transformers.utils.logging.disable_progress_bar()
    transformers.utils.logging.set_verbosity_error()
    diffusers.utils.logging.set_verbosity_error()


def check_guidance_rescale(value: float | None) -> None:
    if value is not None and not 0 <= value <= 1:  # NaN fails too
        raise UserError(f"--guidance-rescale {value:g}; use a strength from 0 (off) to 1, e.g. 0.7")


def add_guidance_interval_argument(parser) -> None:
    parser.add_argument("--guidance-interval", type=float, nargs=2, default=None, metavar=("LOW", "HIGH"),
                        help="guide only the steps between these noise levels, 0 <= LOW < HIGH <= 1; the "
                        "others take the prompt's own estimate (default: the model's)")


def check_guidance_interval(value) -> tuple[float, float] | None:
    """`video_dit.flow.check_guidance_interval`'s rule, in the flag's words."""
    if value is None:
        return None
    from video_dit.flow import check_guidance_interval as check

    try:
        return check(value)
    except ValueError:
        low, high = value
        raise UserError(f"--guidance-interval {low:g} {high:g}; use two noise levels 0 <= LOW < HIGH <= 1, "
                        "e.g. 0.3 1") from None


def run_sampling(args, task: str) -> int:
    """task: 'generate' (text-to-video), 'animate' (image-to-video) or 'extend'."""
    from pipelines.video_io import VideoWriter, check_writable, read_image, read_video, sidecar_path, write_contact_sheet, write_json

    started = time.perf_counter()
    name = f"spacetime {task}"
    width, height = parse_size(args.size)
    if args.steps is not None and args.steps < 1:
        raise UserError(f"--steps {args.steps}; use 1 or more")
    check_guidance_rescale(args.guidance_rescale)
    check_guidance_interval(args.guidance_interval)
    if args.fps is not None and not args.fps > 0:
        raise UserError(f"--fps {args.fps:g}; use a positive frame rate such as 8")
    if task == "generate" and not args.prompt.strip():
        raise UserError('the prompt is empty; describe the clip, e.g. "a red circle moves to the right"')
    if args.frames is not None and args.frames < 1:
        raise UserError(f"--frames {args.frames}; ask for 1 or more frames")
    if args.seed is not None and not -(2**63) <= args.seed < 2**64:
        raise UserError(f"--seed {args.seed}; use a whole number from -2**63 to 2**64 - 1")
    model = resolve_model(args.model)

    out = Path(args.out) if args.out else default_output(args.prompt)
    out_text = args.out if args.out else str(out)
    check_writable(out_text, args.overwrite, sidecar=True)
    if args.preview and preview_path(out).exists() and not args.overwrite:
        raise UserError(f"{preview_path(out)} already exists; pass --overwrite to replace it")

    # Inputs are read before the model is loaded: a bad file fails fast.
    image = video = None
    input_fps = None
    if task == "animate":
        image = read_image(args.image)
    elif task == "extend":
        clip = read_video(args.video)
        video, input_fps = clip.frames, clip.fps

    import logging

    import torch

    logging.getLogger("pipelines.pipeline").setLevel(logging.ERROR)  # notices are printed here instead
    _quiet_loading()
    pipe = load_pipeline(model, args.device, args.dtype)
    request = pipe.check_inputs(args.prompt, args.frames, height, width, extend=task == "extend",
                                input_frames=None if video is None else len(video),
                                allow_empty_prompt=task != "generate")
    for notice in request.notices:
        print(f"{name}: notice: {notice}", file=sys.stderr)
    if not args.prompt.strip():
        print(f"{name}: notice: the prompt is empty; the clip follows the input frames only", file=sys.stderr)
    seed = args.seed
    if seed is None:
        import secrets

        seed = secrets.randbelow(2**31)
        print(f"{name}: seed {seed}", file=sys.stderr)
    fps = args.fps or input_fps or pipe.config.fps
    total = request.num_frames + (0 if video is None else len(video))
    known = 1 if image is not None else 0 if video is None else pipe.prefix_latent_frames(len(video))
    windows = len(pipe.windows(request, known))
    if windows > 1:
        print(f"{name}: {total} frames in {windows} windows of {pipe.config.native_frames}", file=sys.stderr)

    import numpy as np

    picks = set(np.unique(np.round(np.linspace(0, total - 1, min(total, 8))).astype(int)).tolist())
    preview: list = []
    count = [0]
    writer = VideoWriter(out_text, fps, overwrite=args.overwrite)

    def on_frames(frames: np.ndarray) -> None:
        writer.write(frames)
        for k in range(len(frames)):
            if count[0] + k in picks:
                preview.append(frames[k].copy())
        count[0] += len(frames)

    try:
        result = pipe(
            args.prompt, negative_prompt=args.negative_prompt, num_frames=request.num_frames,
            height=request.height, width=request.width, num_inference_steps=args.steps,
            guidance_scale=args.guidance, guidance_rescale=args.guidance_rescale,
            guidance_interval=args.guidance_interval, image=image, video=video,
            generator=torch.Generator().manual_seed(seed), on_frames=on_frames,
        )
        path = writer.close()
    except BaseException:
        writer.abort()
        raise
    elapsed = time.perf_counter() - started
    from pipelines import __version__

    record = {
        "task": task,
        "prompt": args.prompt,
        "negative_prompt": args.negative_prompt,
        "seed": seed,
        "frames": count[0],
        "width": result.width,
        "height": result.height,
        "fps": fps,
        "steps": args.steps or pipe.config.num_inference_steps,
        "guidance": result.guidance,
        "guidance_rescale": pipe.config.guidance_rescale if args.guidance_rescale is None else args.guidance_rescale,
        "guidance_interval": list(pipe.config.guidance_interval if args.guidance_interval is None
                                  else args.guidance_interval),
        "model": str(model),
        "device": args.device,
        "dtype": args.dtype,
        "input": str(args.image if task == "animate" else args.video) if task != "generate" else None,
        "notices": request.notices,
        "seconds": round(elapsed, 3),
        "spacetime_version": __version__,
    }
    write_json(sidecar_path(path), record, overwrite=True)
    if args.preview:
        write_contact_sheet(preview_path(path), np.stack(preview), overwrite=True)
    print(f"{name}: wrote {path} ({count[0]} frames, {result.width}x{result.height}, {fps:g} fps) "
          f"in {elapsed:.1f} s")
    return 0
