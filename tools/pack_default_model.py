"""Pack a trained model folder as the default model shipped inside the package.

    python tools/pack_default_model.py runs/dit_default/pipeline [--out pipelines/default_model] [--card CARD.md]
    python tools/pack_default_model.py runs/vae_compact/model --out pipelines/default_model/vae
    python tools/pack_default_model.py runs/dit_default/pipeline --vae runs/vae_compact/model
    python tools/pack_default_model.py runs/dit_default/pipeline --setting given_guidance_scale=2


Copies the folder (model_index.json, the vae/ and transformer/ parts, their configs; any other
part as it is) and stores the vae and transformer weights as float16, which halves what the package
carries; the pipeline's loader casts them to the model's own dtype (float32), so nothing else
changes. A single component's folder (config.json and its weights, such as a trained VAE) is packed
the same way. It refuses weights that are not finite or do not fit float16, and prints the largest
rounding error. An existing --out is replaced only if it is a model folder (or holds a part of one, such as
the default VAE installed before the rest of the default model). The card, if given, is copied in as README.md.
--vae ships another VAE in place of the pipeline's own: one with the same latent space (the same
config and the same encoder weights), such as a decoder trained on after the DiT's latents were cached
with vae.train_encoder: false. Any other VAE is refused, since the DiT would not understand its latents.
--setting KEY=VALUE (repeatable) sets a sampling default of the pipeline's model_index.json (the value
is read as JSON: 2, 0.7, null), checked as the pipeline checks a folder it loads.
The result is written beside --out under a temporary name and moved into place when complete.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from pipelines.pipeline import WEIGHTS_NAME as WEIGHTS
from pipelines.train import replace_folder
from vae3d import CausalVideoVAE

FP16_MAX = torch.finfo(torch.float16).max


PARTS = ("vae", "transformer")  # loaded by the pipeline's own loader, which casts to float32


def _model_folder(folder: Path) -> bool:
    return (folder / "model_index.json").is_file() or (folder / "config.json").is_file()


ENCODING = tuple(f"{name}." for name in CausalVideoVAE.ENCODING_PARTS)  # the weights that make the latents


def _same_latent_space(ours: Path, theirs: Path) -> None:
    """SystemExit unless VAE folder `theirs` encodes exactly as `ours` does."""
    if not (theirs / "config.json").is_file():
        raise SystemExit(f"--vae {theirs}: not a VAE folder (no config.json)")
    configs = [{k: v for k, v in json.loads((d / "config.json").read_text()).items() if not k.startswith("_")}
               for d in (ours, theirs)]
    if configs[0] != configs[1]:
        keys = sorted(k for k in configs[0].keys() | configs[1].keys() if configs[0].get(k) != configs[1].get(k))
        raise SystemExit(f"--vae {theirs}: its config differs from the model's VAE ({', '.join(keys)}); "
                         "ship a VAE with the DiT's latent space")
    tensors = []
    for folder in (ours, theirs):
        if not (folder / WEIGHTS).is_file():
            raise SystemExit(f"{folder}: no {WEIGHTS} in this VAE folder")
        with safe_open(str(folder / WEIGHTS), framework="pt") as f:
            tensors.append({k: f.get_tensor(k).float() for k in f.keys() if k.startswith(ENCODING)})
    for key in sorted(tensors[0].keys() | tensors[1].keys()):
        a, b = tensors[0].get(key), tensors[1].get(key)
        if a is None or b is None or a.shape != b.shape or not torch.equal(a, b):
            raise SystemExit(f"--vae {theirs}: its encoder differs from the one the DiT's latents were made with "
                             f"({key}); ship a VAE trained from it with vae.train_encoder: false")


def _check_settings(settings: dict) -> None:
    """SystemExit for an unknown sampling setting or a value a loading pipeline would refuse."""
    from pipelines.pipeline import setting_problem

    for key, value in settings.items():
        problem = setting_problem(key, value)
        if problem:
            raise SystemExit(f"--setting {key}={json.dumps(value)}: {problem}")


def parse_setting(text: str) -> tuple[str, object]:
    """'key=value' with the value read as JSON (a bare word is taken as a string)."""
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"{text!r}: expected KEY=VALUE, e.g. given_guidance_scale=2")
    try:
        return key, json.loads(value)
    except json.JSONDecodeError:
        return key, value


def pack(src: Path, out: Path, card: Path | None = None, vae: Path | None = None,
         settings: dict | None = None) -> dict:
    if not _model_folder(src):
        raise SystemExit(f"{src} is not a model folder (no model_index.json or config.json); pass RUN/pipeline of a "
                         "DiT run or a VAE's model folder")
    if out.exists() and not (_model_folder(out) or any((out / p / "config.json").is_file() for p in PARTS)):
        raise SystemExit(f"{out} exists and is not a model folder; refusing to replace it")
    parts = PARTS if (src / "model_index.json").is_file() else (".",)  # a pipeline, or one component
    if settings and "vae" not in parts:
        raise SystemExit(f"--setting sets a pipeline's sampling defaults; {src} is a single component")
    _check_settings(settings or {})
    sources = {part: src / part for part in parts}
    if vae is not None:
        if "vae" not in parts:
            raise SystemExit(f"--vae replaces a pipeline's VAE; {src} is a single component")
        _same_latent_space(src / "vae", vae)
        sources["vae"] = vae
    tmp = out.with_name(f".tmp_{out.name}")
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(src, tmp, ignore=shutil.ignore_patterns("*.safetensors"))
    report = {"tensors": 0, "bytes_before": 0, "bytes_after": 0, "max_rounding_error": 0.0,
              "max_relative_error": 0.0}
    shutil.copytree(src, tmp, dirs_exist_ok=True,  # other parts (a text encoder folder) as they are
                    ignore=lambda d, names: [n for n in names if Path(d) == src and n in parts])
    if vae is not None:
        shutil.copyfile(vae / "config.json", tmp / "vae" / "config.json")
    for part, weights in sorted((part, w) for part in parts for w in sources[part].glob("*.safetensors")):
        tensors = {}
        with safe_open(str(weights), framework="pt") as f:
            metadata = f.metadata()
            for key in f.keys():
                t = f.get_tensor(key)
                report["bytes_before"] += t.numel() * t.element_size()
                if t.is_floating_point() and t.numel():
                    if not bool(torch.isfinite(t).all()) or float(t.abs().max()) > FP16_MAX:
                        raise SystemExit(f"{weights}: tensor {key} is not finite or exceeds the float16 range")
                    half = t.to(torch.float16)
                    error = (half.float() - t.float()).abs()
                    report["max_rounding_error"] = max(report["max_rounding_error"], float(error.max()))
                    relative = float((error / t.float().abs().clamp_min(1e-4)).max())
                    report["max_relative_error"] = max(report["max_relative_error"], relative)
                    t = half
                elif t.is_floating_point():
                    t = t.to(torch.float16)
                tensors[key] = t.contiguous()
                report["bytes_after"] += t.numel() * t.element_size()
                report["tensors"] += 1
        target = tmp / part / weights.name
        save_file(tensors, str(target), metadata=metadata)
    if card is not None:
        shutil.copyfile(card, tmp / "README.md")
    if settings:
        index = json.loads((tmp / "model_index.json").read_text())
        (tmp / "model_index.json").write_text(json.dumps({**index, **settings}, indent=2) + "\n")
    replace_folder(tmp, out)  # a model folder is in place at every moment
    return report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", type=Path, help="a model folder (RUN/pipeline of a DiT run, or one component such as a VAE)")
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parents[1] / "pipelines" / "default_model")
    parser.add_argument("--card", type=Path, default=None, help="a model card (Markdown) to ship as README.md")
    parser.add_argument("--vae", type=Path, default=None,
                        help="a VAE folder to ship in place of the pipeline's (same config and encoder weights)")
    parser.add_argument("--setting", type=parse_setting, action="append", default=[], metavar="KEY=VALUE",
                        help="a sampling default for model_index.json, e.g. given_guidance_scale=2 (repeatable)")
    args = parser.parse_args()
    r = pack(args.model, args.out, args.card, args.vae, dict(args.setting))
    print(f"packed {r['tensors']} tensors into {args.out}: {r['bytes_before'] / 1e6:.1f} MB -> "
          f"{r['bytes_after'] / 1e6:.1f} MB, largest float16 rounding error {r['max_rounding_error']:.2e} "
          f"(relative, for weights above 1e-4: {r['max_relative_error']:.2e})",
          file=sys.stderr)


if __name__ == "__main__":
    main()
