"""Move a trained model to another text encoder without starting its text path over.

    python tools/swap_text_encoder.py runs/dit_ref/pipeline --encoder mpnet \
        --captions data/toyworld/train/captions.jsonl --out runs/dit_ref/pipeline_mpnet

Fits a linear map from the new encoder's token states to the old one's, on the tokens of the
captions given (ridge regression, no bias so that the null prompt stays zero; a tenth of the
captions is held out to say how well it fits), and folds it into
every layer of the DiT that reads that encoder (its token projection and its part of the pooled
path): the new model reads the new encoder as the old one read the old, up to the map's error,
which it prints. Words the two encoders place differently (a colour word one of them confuses)
follow the new encoder. Train on from the result (model.warm_start) to close the rest.

Both tokenizers must cut each caption into the same number of tokens (the all-MiniLM and
all-mpnet WordPiece vocabularies do for plain English). The output is a complete model folder,
written under a temporary name and moved into place; an existing --out needs --overwrite.
"""

from __future__ import annotations

import argparse
import random
import shutil
import sys
import tempfile
from pathlib import Path

from pipelines.data.manifest import read_captions
from pipelines.errors import UserError
from pipelines.video_io import replace_folder


def swap(model: Path, encoder: str, captions: Path, out: Path, index: int = 0, limit: int = 4000,
         ridge: float = 1e-2, overwrite: bool = False) -> float:
    """Write the swapped model folder to `out`; returns the share of the old states' variance the map
    explains on held-out captions."""
    from pipelines.pipeline import _SETTINGS as SETTINGS
    from pipelines.pipeline import SpacetimePipeline, load_text_encoder
    from video_dit.text import TextEncoders, fit_translation, fold_translation

    if out.exists() and not overwrite:
        raise UserError(f"{out} exists; pass --overwrite to replace it")
    if limit < 2:
        raise UserError(f"--limit {limit}: expected at least 2 captions (a tenth is held out)")
    if not ridge > 0:
        raise UserError(f"--ridge {ridge}: expected a positive strength (0.01 is a good start)")
    pipe = SpacetimePipeline.from_pretrained(model)
    old = list(pipe.text_encoder.encoders) if pipe.text_encoder is not None else []
    if not 0 <= index < len(old):
        raise UserError(f"--index {index}: {model} reads {len(old)} text encoder(s)")
    new = load_text_encoder(encoder, label=f"--encoder {encoder}")
    texts = sorted({c for caps in read_captions(captions, check_exists=False).values() for c in caps})
    if not texts:
        raise UserError(f"{captions} holds no captions")
    random.Random(0).shuffle(texts)
    try:
        translation, explained = fit_translation(old[index], new, texts[:limit], ridge=ridge)
    except ValueError as err:
        raise UserError(str(err)) from None
    transformer = fold_translation(pipe.transformer, index, translation)
    encoders = TextEncoders([new if i == index else e for i, e in enumerate(old)])
    settings = {k: pipe.config[k] for k in SETTINGS if k in pipe.config}
    swapped = SpacetimePipeline(vae=pipe.vae, transformer=transformer, text_encoder=encoders, **settings)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.partial-", dir=out.parent))
    try:
        swapped.save_pretrained(tmp)
        replace_folder(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)  # left only if the save failed
    return explained


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", type=Path, help="a model folder (RUN/pipeline of a DiT run, or an exported one)")
    parser.add_argument("--encoder", required=True, help="the new encoder: 'mpnet', 'minilm' or an encoder folder")
    parser.add_argument("--captions", type=Path, required=True, help="captions to fit the map on (.csv or .jsonl)")
    parser.add_argument("--out", type=Path, required=True, help="the new model folder")
    parser.add_argument("--index", type=int, default=0, help="which of the model's encoders to replace (default 0)")
    parser.add_argument("--limit", type=int, default=4000, help="distinct captions to fit on (default 4000)")
    parser.add_argument("--ridge", type=float, default=1e-2,
                        help="ridge strength, relative to the new states' mean eigenvalue (default 0.01)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    parser.add_argument("--debug", action="store_true", help="show the traceback of an error")
    args = parser.parse_args(argv)
    try:
        explained = swap(args.model, args.encoder, args.captions, args.out, args.index, args.limit, args.ridge,
                         args.overwrite)
    except (UserError, ValueError, OSError) as err:
        if args.debug:
            raise
        print(f"error: {' '.join(str(err).split())}", file=sys.stderr)
        return 2
    print(f"wrote {args.out}: the map explains {explained:.1%} of the old encoder's token states "
          f"(on held-out captions)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
