"""The latent cache: VAE latents and prompt embeddings computed once, read by training many times.

On disk a cache is a folder:

    index.json                 what the cache holds: format, settings, one entry per clip
    shard-00000.safetensors    tensors "<key>.latents" (C, T', H', W'), "<key>.text_states.<j>" (L, D)
    shard-00001.safetensors    and "<key>.text_masks.<j>" (L,) for encoder j; "null.*" holds the
    ...                        embedding of the empty prompt (for classifier-free guidance)

Clips are stored as long as the writer was asked for (not just one training window), so training
can take windows of latent frames at random offsets inside them: a window that starts at a later
latent frame is what the long-video sampler feeds the DiT at every chunk boundary.

`LatentCacheWriter` writes a cache (into a temporary folder renamed into place when complete);
`LatentCache` reads one as a data set usable with `BucketSampler` and `collate`.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import warnings
from collections import defaultdict
from pathlib import Path

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from pipelines.data.folder import SkippedFileWarning, _report_skip, skip_summary
from pipelines.errors import UserError
from pipelines.video_io import replace_folder

FORMAT = "spacetime-latent-cache"
VERSION = 1
INDEX = "index.json"


class LatentCacheWriter:
    """Write a latent cache folder, shard by shard; it appears under `out` only when `close()`d.

    >>> with LatentCacheWriter("cache/", info={"vae": "..."}) as w:
    ...     w.add(latents, text_states, text_masks, path="a.mp4", caption="...")

    `out` may be missing, an empty folder, or (with `overwrite`) an existing latent cache; any
    other existing folder is refused so nothing else is ever deleted. Leaving the `with` block by
    an exception removes the partial cache.
    """

    def __init__(self, out: str | os.PathLike, *, info: dict | None = None, shard_size: int = 256,
                 overwrite: bool = False):
        self.out = Path(out)
        check_cache_output(self.out, overwrite)
        if shard_size < 1:
            raise UserError(f"shard size must be 1 or more, got {shard_size}")
        self.shard_size = shard_size
        self.info = dict(info or {})
        self.entries: list[dict] = []
        self.skipped: dict[str, str] = {}
        self.null_text: dict | None = None
        self._tensors: dict[str, torch.Tensor] = {}
        self._shard = 0
        self._in_shard = 0
        self.out.parent.mkdir(parents=True, exist_ok=True)
        self._tmp = Path(tempfile.mkdtemp(prefix=f".{self.out.name}.partial-", dir=self.out.parent))

    def _shard_name(self) -> str:
        return f"shard-{self._shard:05d}.safetensors"

    def add(self, latents: torch.Tensor, text_states: list[torch.Tensor], text_masks: list[torch.Tensor], *,
            path: str, caption: str, image: bool = False, **extra) -> None:
        """Add one clip: latents (C, T', H', W'), and per text encoder states (L, D) and mask (L,)."""
        if latents.ndim != 4:
            raise ValueError(f"latents of one clip must be (C, T, H, W), got {tuple(latents.shape)}")
        if len(text_states) != len(text_masks):
            raise ValueError(f"{len(text_states)} text states but {len(text_masks)} masks")
        key = f"{len(self.entries):08d}"
        self._put(key, latents, text_states, text_masks)
        self.entries.append({"key": key, "shard": self._shard_name(), "path": str(path), "caption": caption,
                             "image": bool(image), "latent_shape": list(latents.shape),
                             "text_lengths": [int(s.shape[0]) for s in text_states], **extra})
        self._in_shard += 1
        if self._in_shard >= self.shard_size:
            self._flush()

    def set_null_text(self, text_states: list[torch.Tensor], text_masks: list[torch.Tensor]) -> None:
        """Store the embedding of the empty prompt (the unconditional branch)."""
        self._put("null", None, text_states, text_masks)
        self.null_text = {"shard": self._shard_name(), "key": "null", "text_lengths": [int(s.shape[0]) for s in text_states]}

    def skip(self, path: str, reason: str) -> None:
        self.skipped[str(path)] = reason

    def _put(self, key, latents, text_states, text_masks) -> None:
        if latents is not None:
            self._tensors[f"{key}.latents"] = latents.detach().to("cpu").contiguous().clone()
        for j, (s, m) in enumerate(zip(text_states, text_masks)):
            self._tensors[f"{key}.text_states.{j}"] = s.detach().to("cpu").contiguous().clone()
            self._tensors[f"{key}.text_masks.{j}"] = m.detach().to("cpu").to(torch.bool).contiguous().clone()

    def _flush(self) -> None:
        if not self._tensors:
            return
        target = self._tmp / self._shard_name()
        save_file(self._tensors, str(target) + ".tmp", metadata={"format": "pt"})
        os.replace(str(target) + ".tmp", target)
        self._tensors = {}
        self._shard += 1
        self._in_shard = 0

    def close(self) -> Path:
        """Write the last shard and the index, and move the cache into place. Returns its folder."""
        if not self.entries:
            self.abort()
            raise UserError(f"{self.out}: nothing to cache ({skip_summary(self.skipped, 0)})")
        self._flush()
        index = {"format": FORMAT, "version": VERSION, **self.info, "null_text": self.null_text,
                 "entries": self.entries, "skipped": self.skipped}
        with open(self._tmp / INDEX, "w") as f:
            json.dump(index, f, indent=1)
            f.write("\n")
        _share_like_new_files(self._tmp)
        return replace_folder(self._tmp, self.out)

    def abort(self) -> None:
        shutil.rmtree(self._tmp, ignore_errors=True)

    def __enter__(self) -> "LatentCacheWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()


def _share_like_new_files(folder: Path) -> None:
    """Give the folder and its files the permissions a plain mkdir / open would (temporary names are
    created private)."""
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(folder, 0o777 & ~umask)
    for file in folder.iterdir():
        os.chmod(file, 0o666 & ~umask)


def check_cache_output(out: Path, overwrite: bool) -> None:
    """Refuse an output folder that holds anything but (with `overwrite`) an earlier latent cache."""
    if out.exists() and not out.is_dir():
        raise UserError(f"{out} exists and is not a folder; give a folder for the latent cache")
    if out.is_dir() and any(out.iterdir()):
        if not (out / INDEX).is_file():
            raise UserError(f"{out} is not empty and holds no latent cache; give a new or empty folder")
        if not overwrite:
            raise UserError(f"{out} already holds a latent cache; pass --overwrite to replace it")


def read_index(root: str | os.PathLike) -> dict:
    folder = Path(root)
    path = folder / INDEX
    if not folder.is_dir():
        raise UserError(f"{folder}: no such latent cache folder")
    if not path.is_file():
        raise UserError(f"{folder} holds no {INDEX}; make a latent cache with `spacetime cache-latents`")
    try:
        index = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise UserError(f"{path} is not valid JSON ({err.msg}); make the cache again") from err
    if index.get("format") != FORMAT or index.get("version") != VERSION:
        raise UserError(f"{path} is not a version-{VERSION} {FORMAT} index; make the cache again")
    return index


class LatentCache(torch.utils.data.Dataset):
    """A latent cache as a data set.

    Args:
        root: the cache folder written by `spacetime cache-latents`.
        latent_frames: latent frames per training window; a longer clip gives a window at a random
            offset (fixed by seed, epoch and index) when `random_offset`, else its first frames; a
            shorter clip is skipped (counted in `skipped`). None: whole clips. Images stay one frame.
        random_offset: choose the window's first latent frame at random.
        seed: seeds the offsets.

    Item: dict(latents=(C, T', H', W') normalized, text_states=[(L, D) per encoder],
    text_masks=[(L,) bool per encoder], caption, path, bucket, index, offset, epoch, position).
    Batches of one bucket (`bucket_ids`, for `BucketSampler`) share the latent shape.
    """

    def __init__(self, root: str | os.PathLike, latent_frames: int | None = None, random_offset: bool = True,
                 seed: int = 0):
        if latent_frames is not None and latent_frames < 1:
            raise UserError(f"latent frames must be 1 or more, got {latent_frames}")
        if seed < 0:
            raise UserError(f"seed must be 0 or more, got {seed}")
        self.root = Path(root)
        self.index = read_index(self.root)
        self.latent_frames = latent_frames
        self.random_offset = random_offset
        self.seed = seed
        self.epoch = 0
        self.skipped: dict[str, str] = dict(self.index.get("skipped", {}))
        self.entries: list[dict] = []
        self.windows: list[int] = []
        shapes: dict[tuple, int] = {}
        self.bucket_ids: list[int] = []
        short = []
        for entry in self.index["entries"]:
            c, t, h, w = entry["latent_shape"]
            if entry.get("image") or t == 1:
                window = 1
            elif latent_frames is None:
                window = t
            elif t >= latent_frames:
                window = latent_frames
            else:
                self.skipped[entry["path"]] = f"too short: {t} latent frames, the window is {latent_frames}"
                short.append(entry["path"])
                continue
            shape = (c, window, h, w)
            self.bucket_ids.append(shapes.setdefault(shape, len(shapes)))
            self.entries.append(entry)
            self.windows.append(window)
        self.buckets = list(shapes)  # (C, T', H', W') of each bucket
        if short:
            warnings.warn(f"{self.root}: skipping {len(short)} clip(s) shorter than {latent_frames} latent frames",
                          SkippedFileWarning, stacklevel=2)
        if not self.entries:
            raise UserError(f"{self.root}: no usable clips, {skip_summary(self.skipped, 0, 'clips')}")

    def __len__(self) -> int:
        return len(self.entries)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __getitem__(self, key) -> dict | None:
        index = int(key)
        if not 0 <= index < len(self.entries):
            raise IndexError(f"index {index} is outside a cache of {len(self.entries)} clips")
        epoch = int(getattr(key, "epoch", self.epoch))
        position = getattr(key, "position", None)
        entry = self.entries[index]
        window = self.windows[index]
        total = entry["latent_shape"][1]
        offset = 0
        if self.random_offset and total > window:
            offset = int(np.random.default_rng([self.seed, epoch, index]).integers(0, total - window + 1))
        shard = self.root / entry["shard"]
        try:
            with safe_open(str(shard), framework="pt") as f:
                latents = f.get_slice(f"{entry['key']}.latents")[:, offset : offset + window]
                states, masks = _read_text(f, entry["key"], len(entry["text_lengths"]))
        except Exception as err:  # a damaged shard: lose this clip, not the run
            reason = f"unreadable: {shard.name}: {' '.join(str(err).split())[:200]}"
            if entry["path"] not in self.skipped:
                self.skipped[entry["path"]] = reason
                warnings.warn(f"skipping {entry['path']}: {reason}", SkippedFileWarning, stacklevel=2)
            _report_skip(entry["path"], reason, epoch, position)
            return None
        return {"latents": latents.float(), "text_states": states, "text_masks": masks, "caption": entry["caption"],
                "path": entry["path"], "bucket": self.bucket_ids[index], "index": index, "offset": offset,
                "epoch": epoch, "position": position}

    def null_text(self) -> tuple[list[torch.Tensor], list[torch.Tensor]] | None:
        """The empty prompt's states and masks (per encoder), when the cache stored them."""
        null = self.index.get("null_text")
        if not null:
            return None
        with safe_open(str(self.root / null["shard"]), framework="pt") as f:
            return _read_text(f, "null", len(null["text_lengths"]))

    def summary(self) -> str:
        used = len(self.entries) - sum(e["path"] in self.skipped for e in self.entries)
        return skip_summary(self.skipped, used, "clips")

    def __repr__(self) -> str:
        return f"LatentCache({str(self.root)!r}: {len(self)} clips in {len(self.buckets)} buckets)"


def _read_text(f, key: str, count: int) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    states = [f.get_tensor(f"{key}.text_states.{j}").float() for j in range(count)]
    masks = [f.get_tensor(f"{key}.text_masks.{j}").to(torch.bool) for j in range(count)]
    return states, masks


def cache_shapes(root: str | os.PathLike) -> dict[tuple, int]:
    """How many clips of each latent shape a cache holds."""
    counts: dict[tuple, int] = defaultdict(int)
    for entry in read_index(root)["entries"]:
        counts[tuple(entry["latent_shape"])] += 1
    return dict(counts)
