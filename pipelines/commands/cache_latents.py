"""`spacetime cache-latents`: encode a data folder once (VAE latents and prompt embeddings) for DiT training.

    spacetime cache-latents --data clips/ --out cache/ [--model DIR | --vae DIR] [--frames 65] [--fps 8]

Every file of the data folder (see docs/data.md) is read as the longest clip of 1 + 4k frames up
to `--frames` that it can fill at `--fps`, from its first frame, resized into a bucket of about
`--size` squared pixels, encoded with the VAE into normalized latents, and its caption encoded
with the text encoders. Clips are kept long so that training can take windows at random latent
offsets inside them (`LatentCache(dir, latent_frames=N)`). Bad files are skipped with one warning
and listed in the index. The cache appears under `--out` only when complete.
"""

from __future__ import annotations

import sys
import time
import warnings
from pathlib import Path

from pipelines.errors import UserError



def add_arguments(parser) -> None:
    parser.add_argument("--data", required=True, help="folder of videos and/or images (captions: see docs/data.md)")
    parser.add_argument("--out", required=True, help="folder to write the cache into (new or empty)")
    parser.add_argument("--model", default=None,
                        help="model folder whose VAE and text encoders to use (default: the installed model)")
    parser.add_argument("--vae", default=None, help="VAE folder, model folder, or a vae3d preset name; overrides --model")
    parser.add_argument("--text-encoder", action="append", default=None, metavar="NAME",
                        help="text encoder: 'minilm' or 'mpnet' (installed) or a folder; repeat for several; 'none' for no text. "
                             "Overrides --model")
    parser.add_argument("--captions", default=None, help="captions manifest (.csv or .jsonl); default: one in --data")
    parser.add_argument("--frames", type=int, default=65, help="longest clip to cache, 1 + 4k frames (default 65)")
    parser.add_argument("--min-frames", type=int, default=None,
                        help="shortest video clip to cache, 1 + 4k frames (default: 17, or --frames if smaller)")
    parser.add_argument("--fps", type=float, default=8.0, help="target frame rate (default 8; 0: every frame)")
    parser.add_argument("--size", type=int, default=256, help="side of the square bucket; other aspects keep its area")
    parser.add_argument("--patch", type=int, default=2,
                        help="DiT patch size: sizes are multiples of the VAE's spatial factor times this (default 2)")
    parser.add_argument("--batch-size", type=int, default=1, help="clips encoded at once (same bucket)")
    parser.add_argument("--workers", type=int, default=0, help="DataLoader worker processes for decoding")
    parser.add_argument("--every-caption", action="store_true",
                        help="one entry per caption of a clip with several (its latents stored once per "
                             "caption), so training sees every wording; default: one caption per clip")
    parser.add_argument("--shard-size", type=int, default=256, help="clips per safetensors shard")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1, ...")
    parser.add_argument("--precision", choices=["fp32", "bf16"], default="fp32",
                        help="VAE and text encoder precision (latents are stored as float32)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing latent cache in --out")


def run(args) -> int:
    import torch
    from tqdm import tqdm

    from pipelines.data import BucketSampler, SkippedFileWarning, VideoFolder, collate
    from pipelines.data.cache import LatentCacheWriter, check_cache_output

    out = Path(args.out)
    check_cache_output(out, args.overwrite)  # before any work
    if not Path(args.data).is_dir():
        raise UserError(f"{args.data}: no such data folder" if not Path(args.data).exists()
                        else f"{args.data} is not a folder; give a folder of videos and/or images")
    for name in ("batch_size", "shard_size", "frames", "min_frames", "size"):  # before the models load
        value = getattr(args, name)
        if value is not None and value < 1:
            raise UserError(f"--{name.replace('_', '-')} must be 1 or more, got {value}")
    if args.workers < 0 or args.patch < 1:
        raise UserError("--workers must be 0 or more and --patch 1 or more")
    if not args.fps >= 0:
        raise UserError(f"--fps must be 0 (every frame) or a positive rate, got {args.fps:g}")
    if args.captions is not None and not Path(args.captions).is_file():
        raise UserError(f"--captions {args.captions}: no such file; give a .csv or .jsonl manifest")
    device = _device(args.device)
    dtype = torch.bfloat16 if args.precision == "bf16" else torch.float32

    vae, vae_name = load_vae(args.vae, args.model)
    encoders, encoder_names = load_text(args.text_encoder, args.model)
    tf, sf = int(vae.temporal_factor), int(vae.spatial_factor)
    lengths = clip_lengths(args.frames, args.min_frames, tf)
    vae.to(device).eval().requires_grad_(False)
    if dtype != torch.float32:
        vae.to(dtype=dtype)
    if encoders is not None:
        encoders.to(device).eval()

    with warnings.catch_warnings():
        warnings.simplefilter("always", SkippedFileWarning)
        warnings.showwarning = _one_line_warning
        ds = VideoFolder(args.data, frames=lengths, fps=args.fps or None, base_size=args.size, image_frames=1,
                         random_offset=False, captions=args.captions, spatial_multiple=sf * args.patch,
                         temporal_factor=tf)
    sampler = BucketSampler(ds, args.batch_size, shuffle=False, drop_last=False)
    loader = torch.utils.data.DataLoader(ds, batch_sampler=sampler, collate_fn=collate, num_workers=args.workers)
    info = {
        "data": str(Path(args.data).resolve()),
        "vae": vae_name,
        "vae_config": {k: v for k, v in dict(vae.config).items() if not k.startswith("_")},
        "temporal_factor": tf,
        "spatial_factor": sf,
        "text_encoders": encoder_names,
        "text_dims": list(encoders.dims) if encoders is not None else [],
        "fps": args.fps or None,
        "frames": lengths,
        "size": args.size,
        "patch": args.patch,
        "every_caption": bool(args.every_caption),
    }
    tic = time.perf_counter()
    with LatentCacheWriter(out, info=info, shard_size=args.shard_size, overwrite=args.overwrite) as writer:
        for path, reason in ds.skipped.items():
            writer.skip(path, reason)
        if encoders is not None:  # the unconditional prompt the DiT is trained and guided with
            states, masks = encoders.null(1)
            writer.set_null_text([s[0] for s in states], [m[0] for m in masks])
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("always", SkippedFileWarning)
            warnings.showwarning = _one_line_warning
            for batch in tqdm(loader, desc="cache-latents", unit="batch", disable=not sys.stderr.isatty()):
                for path, reason in batch["skipped"].items():
                    ds.skipped[path] = reason
                    writer.skip(path, reason)
                if batch["video"] is None:
                    continue
                latents = vae.encode_latents(batch["video"].to(device=device, dtype=dtype)).float()
                pairs = [(b, caption) for b, index in enumerate(batch["index"])
                         for caption in (ds.samples[index].captions if args.every_caption else [batch["caption"][b]])]
                captions = [caption for _, caption in pairs]
                states, masks = _encode_text(encoders, captions) if encoders is not None else ([], [])
                bucket = ds.buckets[batch["bucket"]]
                for j, (b, caption) in enumerate(pairs):
                    index = batch["index"][b]
                    writer.add(latents[b], [s[j] for s in states], [m[j] for m in masks], path=batch["path"][b],
                               caption=caption, image=ds.kinds[index] == "image",
                               frames=bucket.frames, height=bucket.height, width=bucket.width,
                               fps=batch["fps"][b], stride=batch["stride"][b], start=batch["start"][b])
    seconds = time.perf_counter() - tic
    what = f"{len(writer.entries)} entries ({len({e['path'] for e in writer.entries})} clips, one entry per caption)" \
        if args.every_caption else f"{len(writer.entries)} clips"
    print(f"cached {what} into {out} in {seconds:.1f} s; {ds.summary()}")
    return 0


def clip_lengths(frames: int, min_frames: int | None, temporal_factor: int) -> list[int]:
    """Every 1 + k * temporal_factor length from `min_frames` to `frames`."""
    from pipelines.data.buckets import check_frames

    check_frames(frames, temporal_factor)
    low = min(17, frames) if min_frames is None else min_frames
    check_frames(low, temporal_factor)
    if low > frames:
        raise UserError(f"--min-frames {low} is more than --frames {frames}")
    return list(range(low, frames + 1, temporal_factor))


def _encode_text(encoders, prompts: list[str]):
    """Per encoder, each prompt's states (L_i, D) and mask (L_i,), cut after its last valid token, so
    what is stored does not depend on the other prompts of the batch."""
    import torch

    states, masks = encoders.encode(prompts)
    out_states, out_masks = [], []
    for s, m in zip(states, masks):
        s = s.float().cpu()
        m = torch.ones(s.shape[:2], dtype=torch.bool) if m is None else m.cpu().bool()
        lengths = [int(row.nonzero().max()) + 1 if row.any() else 1 for row in m]
        out_states.append([s[b, :n] for b, n in enumerate(lengths)])
        out_masks.append([m[b, :n] for b, n in enumerate(lengths)])
    return out_states, out_masks


def load_vae(spec: str | None, model: str | None):
    """The VAE of `spec` (a VAE folder, a model folder, or a vae3d preset name: random weights, for
    tests), else of `model`, else of the installed model. Returns (vae, a name for the index)."""
    from pipelines.pipeline import load_part

    if spec is None:
        return load_part("vae", model)
    return load_part("vae", spec)


def load_text(names: list[str] | None, model: str | None):
    """Text encoders by name ('minilm': the installed one, or folders), else those of `model` or of
    the installed model, else the installed MiniLM. Returns (TextEncoders or None, names)."""
    from pipelines.pipeline import load_text_encoder
    from video_dit.text import TextEncoders, is_installed_name

    root = None
    if names is None:
        try:
            root = _model_folder(model)
        except UserError:
            if model is not None:
                raise
            names = ["minilm"]  # no model folder at all: the installed encoder
        else:
            import json

            names = json.loads((root / "model_index.json").read_text()).get("text_encoders", [])
    if [n.lower() for n in names] == ["none"]:
        return None, []
    encoders = []
    for name in names:
        if is_installed_name(name):
            encoders.append(load_text_encoder(name, label=f"text encoder {name}"))
            continue
        folder = root / name if root is not None else Path(name)
        if not folder.is_dir():
            raise UserError(f"text encoder {name}: no such folder; use 'minilm' or 'mpnet' (installed) or a "
                            f"Hugging Face folder")
        encoders.append(load_text_encoder(folder, label=f"text encoder {name}"))
    if not encoders:
        return None, []
    return TextEncoders(encoders), [str(n) for n in names]


def _model_folder(model: str | None) -> Path:
    if model is None:
        from pipelines.pipeline import default_model_path

        return default_model_path()
    folder = Path(model)
    if not (folder / "model_index.json").is_file():
        raise UserError(f"--model {model} is not a model folder (no model_index.json)")
    return folder


def _device(name: str):
    import torch

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError as err:
        raise UserError(f"--device {name}: not a device (use auto, cpu, cuda or cuda:N)") from err
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"--device {name}: no CUDA GPU here; use --device cpu")
    return device


def _one_line_warning(message, category, filename, lineno, file=None, line=None) -> None:
    print(f"warning: {message}", file=sys.stderr)
