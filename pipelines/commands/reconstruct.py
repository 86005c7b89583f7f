"""`spacetime reconstruct VIDEO --out PATH`: encode and decode a clip with the VAE, write the result,
and print PSNR and SSIM against the (resized) input.

    spacetime reconstruct clip.mp4 --out recon.mp4 --vae models/vae [--frames 17] [--size 256x256] [--json]

Without --frames / --size the clip keeps its own frame count and size: it is padded to what the VAE
accepts (1 + 4k frames, multiples of 8 pixels; the last frame and the edge pixels repeated) and the
reconstruction is cropped back, so the output has exactly the input's frames and size. The metrics
compare the frames in memory, before the output file's own compression.
"""

from __future__ import annotations

import json
import math
import sys
import time
from pathlib import Path

from pipelines.errors import UserError

NO_DEFAULT_VAE = ("no default VAE is installed in this version; pass --vae DIR (a folder written by "
                  "CausalVideoVAE.save_pretrained, or a model folder with a vae/ inside)")


def add_arguments(parser) -> None:
    parser.add_argument("video", help="input video (mp4, mov, webm, gif, ... or a folder of PNG frames)")
    parser.add_argument("--out", required=True, metavar="PATH", help="output .mp4, .gif, .webp or folder/ of PNGs")
    parser.add_argument("--vae", default=None, metavar="DIR",
                        help="VAE folder, model folder, or a vae3d preset name (random weights, for tests); "
                             "default: the installed model's VAE")
    parser.add_argument("--frames", type=int, default=None, metavar="N",
                        help="use the first N frames (default: all)")
    parser.add_argument("--size", default=None, metavar="WxH", help="resize and centre-crop to WxH first (default: as is)")
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu", help="where to run (default: cpu)")
    parser.add_argument("--bf16", action="store_true", help="run the VAE under bf16 autocast")
    parser.add_argument("--tile", type=int, default=None, metavar="PX",
                        help="encode/decode frames larger than PX pixels in overlapping tiles (a multiple of 8)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing output")


def parse_size(text: str) -> tuple[int, int]:
    import re

    match = re.fullmatch(r"\s*(\d+)\s*[xX]\s*(\d+)\s*", text)
    if not match or min(int(match[1]), int(match[2])) < 1:
        raise UserError(f"--size {text!r} is not WxH with positive numbers; write it like 256x256")
    return int(match[1]), int(match[2])


def load_vae(spec: str | None):
    """The CausalVideoVAE of a VAE folder, a model folder, a preset name, or the installed model."""
    from pipelines.pipeline import load_part

    if spec is None:
        try:
            return load_part("vae", None)
        except UserError:
            raise UserError(NO_DEFAULT_VAE) from None
    return load_part("vae", spec)


def reconstruct(vae, frames, device: str = "cpu", bf16: bool = False):
    """uint8 frames (T, H, W, 3) -> reconstructed uint8 frames of the same shape, through the VAE
    (padded to an accepted size and frame count, then cropped back). Returns (frames, timings)."""
    import contextlib

    import torch

    from pipelines.video_io import frames_to_tensor, tensor_to_frames

    x = frames_to_tensor(frames).to(device)
    padded, (t, h, w) = vae.pad_video(x)
    autocast = torch.autocast(device, dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()
    with torch.inference_mode(), autocast:
        start = time.perf_counter()
        posterior = vae.encode(padded)
        encoded = time.perf_counter()
        video = vae.decode(posterior.mode())
        decoded = time.perf_counter()
    out = tensor_to_frames(video[:, :, :t, :h, :w].float())
    return out, {"encode_s": round(encoded - start, 3), "decode_s": round(decoded - encoded, 3)}


def run(args) -> int:
    import torch

    from pipelines.metrics import psnr, ssim
    from pipelines.video_io import check_writable, read_video, resize_and_crop, write_video

    if args.frames is not None and args.frames < 1:
        raise UserError(f"--frames {args.frames}: give 1 or more")
    size = parse_size(args.size) if args.size else None
    if args.tile is not None and (args.tile < 8 or args.tile % 8):
        raise UserError(f"--tile {args.tile}: use a multiple of 8 such as 256")
    if args.device == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda: no CUDA GPU here; use --device cpu")
    check_writable(args.out, overwrite=args.overwrite, sidecar=True)
    vae, vae_name = load_vae(args.vae)
    vae.to(args.device).eval().requires_grad_(False)
    if args.tile is not None:
        vae.enable_tiling(tile_size=args.tile, overlap=max(vae.spatial_factor, args.tile // 4 // 8 * 8))

    clip = read_video(args.video, num_frames=args.frames)
    frames = clip.frames
    if size is not None:
        frames = resize_and_crop(frames, *size)
    if min(frames.shape[1:3]) < 7:
        raise UserError(f"{args.video}: frames of {frames.shape[2]}x{frames.shape[1]} are too small to compare; "
                        f"use at least 8x8 (--size)")
    out, timings = reconstruct(vae, frames, args.device, args.bf16)
    result = {
        "input": str(args.video),
        "output": str(args.out),
        "vae": vae_name,
        "frames": int(frames.shape[0]),
        "width": int(frames.shape[2]),
        "height": int(frames.shape[1]),
        "fps": float(clip.fps),
        "psnr": None if math.isinf(quality := psnr(frames, out)) else round(quality, 3),  # None: identical
        "ssim": round(ssim(frames, out), 4),
        **timings,
    }
    from pipelines import __version__

    write_video(args.out, out, fps=clip.fps, overwrite=args.overwrite,
                sidecar={"task": "reconstruct", **result, "spacetime_version": __version__})
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        shown = "inf" if result["psnr"] is None else f"{result['psnr']:.2f}"
        print(f"PSNR {shown} dB  SSIM {result['ssim']:.4f}  ({result['frames']} frames, "
              f"{result['width']}x{result['height']}; encode {timings['encode_s']:.2f} s, "
              f"decode {timings['decode_s']:.2f} s) -> {args.out}", file=sys.stdout)
    return 0
