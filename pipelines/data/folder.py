"""`VideoFolder`: a training data set over a folder of videos and images, and `collate`.

Building the data set finds the files and their captions (`scan_folder`), reads each file's shape
(from the manifest when it says, else by opening the file), and places every file in a bucket
(`choose_bucket`). A file that cannot be opened, or is too short for every video bucket, is left
out there and then, with one warning, and recorded in `skipped`.

Reading an item decodes just the frames of one clip: a window of `bucket.frames` frames taken every
`stride` source frames (stride = round(file fps / target fps)), starting at a random frame when
`random_offset` (so the DiT also sees clips that do not begin at a file's first frame), resized to
cover the bucket and centre-cropped. Images are clips of `image_frames` frames. A file that fails
to decode gives `None` (one warning, recorded in `skipped`); `collate` drops it, so a long run never
dies on one bad file. With `colour_augment` (for VAE training) each item's RGB channels come in
a random order, so a data set whose saturated colours are rare still shows every hue. The
randomness of an item depends only on (seed, epoch, index): the same
batch comes out the same whichever worker reads it, and a resumed run sees the same clips.
"""

from __future__ import annotations

import os
import warnings
from collections import Counter
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from pipelines.data.buckets import DEFAULT_ASPECTS, Bucket, check_buckets, check_frames, choose_bucket, make_buckets
from pipelines.data.manifest import Sample, scan_folder
from pipelines.errors import UserError
from pipelines.video_io import IMAGE_EXTENSIONS, frames_to_tensor, probe, read_image, read_video, resize_and_crop


class SkippedFileWarning(UserWarning):
    """A data file was left out of training (unreadable, corrupt, too short): its path and why."""


# Files skipped while reading items, waiting for the next `collate` in this process to report them.
# `collate` runs in the same process as the reads of its batch (a DataLoader worker, or the main
# process), so each batch carries the skips met while building it back to the training loop.
_pending_skips: list[dict] = []


def _report_skip(path: str, reason: str, epoch: int, position: int | None) -> None:
    _pending_skips.append({"path": path, "reason": reason, "epoch": epoch, "position": position, "pid": os.getpid()})


def _take_skips() -> list[dict]:
    """The skips this process met since the last call (a forked worker inherits its parent's list:
    those are the parent's to report)."""
    events = [e for e in _pending_skips if e["pid"] == os.getpid()]
    _pending_skips.clear()
    return events


def warn_skip(path: str, reason: str) -> None:
    """The one warning a skipped file gets."""
    warnings.warn(f"skipping {path}: {reason}", SkippedFileWarning, stacklevel=3)


def skip_summary(skipped: dict[str, str], used: int, noun: str = "files") -> str:
    """'10 files used, 2 skipped (1 unreadable, 1 too short)'"""
    if not skipped:
        return f"{used} {noun} used, none skipped"
    kinds = Counter(reason.split(":", 1)[0] for reason in skipped.values())
    detail = ", ".join(f"{n} {kind}" for kind, n in sorted(kinds.items(), key=lambda kv: (-kv[1], kv[0])))
    return f"{used} {noun} used, {len(skipped)} skipped ({detail})"


class VideoFolder(torch.utils.data.Dataset):
    """Clips from a folder of videos and/or images, each in a bucket of one shape.

    Args:
        root: the data folder (see `pipelines.data.manifest` for captions).
        frames: pixel frames per video clip (1 + 4k), or several lengths to bucket by; used to
            derive buckets when `buckets` is not given.
        fps: target frame rate; each file is read every round(file fps / fps) frames. None: every frame.
        buckets: explicit clip shapes; when None they are derived from `max_tokens` and `base_size`
            (see `make_buckets`) for the lengths in `frames` and `image_frames`.
        max_tokens: token budget per clip for derived buckets (None: only `base_size` limits).
        base_size: side of the largest square frame for derived buckets; other aspect ratios keep
            about the same area.
        aspects: aspect ratios (width / height) of derived buckets.
        image_frames: images become clips of this many identical frames (1: a one-frame clip).
        random_offset: start each video clip at a random frame (fixed by seed, epoch and index)
            instead of the first.
        seed: seeds the offsets and the choice among several captions.
        captions: an explicit captions manifest (.csv or .jsonl); default: one found in `root`.
        spatial_multiple, temporal_factor: the VAE's spatial factor times the DiT patch, and the
            VAE's temporal factor; bucket sizes and lengths must be multiples of these.

    Item: dict(video=(3, T, H, W) float32 in [-1, 1], caption, path, bucket, index, start, stride,
    fps, epoch, position) or None for a file that failed to decode (then recorded in `skipped`).
    """

    def __init__(self, root: str | os.PathLike, frames: int | Sequence[int] = 17, fps: float | None = 8.0,
                 buckets: Sequence[Bucket] | None = None, *, max_tokens: int | None = None, base_size: int = 256,
                 aspects: Sequence[float] = DEFAULT_ASPECTS, image_frames: int = 1, random_offset: bool = True,
                 seed: int = 0, captions: str | os.PathLike | None = None, spatial_multiple: int = 16,
                 temporal_factor: int = 4, crop: str = "center", colour_augment: bool = False):
        if fps is not None and not fps > 0:
            raise UserError(f"fps must be positive (or None for every frame), got {fps}")
        if seed < 0:
            raise UserError(f"seed must be 0 or more, got {seed}")
        if crop not in ("center", "random"):
            raise UserError(f"crop={crop!r}: use 'center' (scale to cover the bucket, crop the middle) or "
                            f"'random' (a random bucket-sized window at the file's own scale)")
        check_frames(image_frames, temporal_factor)
        self.root = Path(root)
        self.crop = crop
        self.colour_augment = colour_augment
        self.fps = fps
        self.image_frames = image_frames
        self.random_offset = random_offset
        self.seed = seed
        self.epoch = 0
        if buckets is not None:
            self.buckets = check_buckets(buckets, spatial_multiple, temporal_factor)
        else:
            lengths = [frames] if isinstance(frames, int) else list(frames)
            self.buckets = make_buckets(max_tokens, lengths + [image_frames], base_size=base_size, aspects=aspects,
                                        spatial_multiple=spatial_multiple, temporal_factor=temporal_factor)
        self.skipped: dict[str, str] = {}
        self.samples: list[Sample] = []
        self.kinds: list[str] = []  # "video" or "image"
        self.total_frames: list[int] = []
        self.strides: list[int] = []
        self.source_fps: list[float | None] = []
        self.bucket_ids: list[int] = []
        self._index(scan_folder(self.root, captions))

    # -- building --------------------------------------------------------------------------------

    def _index(self, found: list[Sample]) -> None:
        no_bucket_for_images = []
        for sample in found:
            path = str(sample.path)
            try:
                info = sample.meta or probe(sample.path)
            except Exception as err:  # UserError for broken files; anything else is as bad for training
                self._skip(path, f"unreadable: {_reason(err, path)}")
                continue
            if sample.meta is not None:  # the manifest's shape: a one-frame still-image file is an image
                image = info["frames"] == 1 and sample.path.suffix.lower() in IMAGE_EXTENSIONS
            else:
                image = info.get("kind") == "image"
            total = 1 if image else int(info.get("frames") or 0)
            src_fps = info.get("fps")
            stride = 1 if image or not self.fps or not src_fps else max(1, round(float(src_fps) / self.fps))
            available = 0 if total < 1 else (total - 1) // stride + 1
            width, height = int(info["width"]), int(info["height"])
            bucket = choose_bucket(self.buckets, height, width, available, image=image, image_frames=self.image_frames)
            if bucket is None:
                if image:
                    no_bucket_for_images.append(path)
                    continue
                shortest = min((b.frames for b in self.buckets if b.frames != self.image_frames),
                               default=min(b.frames for b in self.buckets))
                self._skip(path, f"too short: {total} frames give {available} at stride {stride}, "
                                 f"the shortest clip is {shortest} frames")
                continue
            self.samples.append(sample)
            self.kinds.append("image" if image else "video")
            self.total_frames.append(total)
            self.strides.append(stride)
            self.source_fps.append(float(src_fps) if src_fps else None)
            self.bucket_ids.append(bucket)
        if no_bucket_for_images:
            reason = f"no bucket: images need a bucket of {self.image_frames} frame(s)"
            for path in no_bucket_for_images:
                self.skipped[path] = reason
            warnings.warn(f"skipping {len(no_bucket_for_images)} image(s) in {self.root}: no bucket has "
                          f"{self.image_frames} frame(s); add one to train on them", SkippedFileWarning, stacklevel=3)
        if not self.samples:
            raise UserError(f"{self.root}: no usable files, {skip_summary(self.skipped, 0)}; "
                            "see the warnings above for each file")

    def _skip(self, path: str, reason: str) -> None:
        if path not in self.skipped:
            self.skipped[path] = reason
            warn_skip(path, reason)

    # -- reading ---------------------------------------------------------------------------------

    def __len__(self) -> int:
        return len(self.samples)

    def set_epoch(self, epoch: int) -> None:
        """The epoch used for items read by plain integer index (sampler keys carry their own)."""
        self.epoch = int(epoch)

    def __getitem__(self, key) -> dict | None:
        index = int(key)
        if not 0 <= index < len(self.samples):
            raise IndexError(f"index {index} is outside a data set of {len(self.samples)} items")
        epoch = int(getattr(key, "epoch", self.epoch))
        position = getattr(key, "position", None)
        sample = self.samples[index]
        path = str(sample.path)
        if path in self.skipped:
            _report_skip(path, self.skipped[path], epoch, position)
            return None
        rng = np.random.default_rng([self.seed, epoch, index])
        caption = sample.captions[int(rng.integers(len(sample.captions)))] if len(sample.captions) > 1 else sample.captions[0]
        bucket = self.buckets[self.bucket_ids[index]]
        stride = self.strides[index]
        start = 0
        try:
            if self.kinds[index] == "image":
                frames = self._fit(read_image(sample.path)[None], bucket, rng)
                frames = np.repeat(frames, bucket.frames, axis=0)
            else:
                span = (bucket.frames - 1) * stride + 1
                latest = self.total_frames[index] - span
                if self.random_offset and latest > 0:
                    start = int(rng.integers(0, latest + 1))
                frames = self._read_clip(sample.path, bucket.frames, stride, start)
                frames = self._fit(frames, bucket, rng)
        except Exception as err:  # a corrupt or truncated file: leave it out, keep training
            reason = f"unreadable: {_reason(err, path)}"
            self.skipped[path] = reason
            warn_skip(path, reason)
            _report_skip(path, reason, epoch, position)
            return None
        if self.colour_augment:  # drawn last, so the crop and the start do not depend on it
            frames = np.ascontiguousarray(frames[..., rng.permutation(3)])
        fps = self.source_fps[index]
        return {
            "video": frames_to_tensor(frames)[0],  # (3, T, H, W)
            "caption": caption,
            "path": path,
            "bucket": self.bucket_ids[index],
            "index": index,
            "start": start,
            "stride": stride,
            "fps": fps / stride if fps else float(self.fps or 0.0),
            "epoch": epoch,
            "position": position,
        }

    def _fit(self, frames: np.ndarray, bucket: Bucket, rng: np.random.Generator) -> np.ndarray:
        """(T, H, W, 3) frames -> the bucket's height and width: scaled to cover and centre-cropped,
        or with crop="random" a random window at the file's own scale (scaled only when smaller)."""
        h, w = frames.shape[1:3]
        if self.crop == "random" and h >= bucket.height and w >= bucket.width:
            top = int(rng.integers(0, h - bucket.height + 1))
            left = int(rng.integers(0, w - bucket.width + 1))
            return np.ascontiguousarray(frames[:, top : top + bucket.height, left : left + bucket.width])
        return resize_and_crop(frames, bucket.width, bucket.height)

    @staticmethod
    def _read_clip(path: Path, frames: int, stride: int, start: int) -> np.ndarray:
        try:
            video = read_video(path, num_frames=frames, stride=stride, start=start)
        except UserError:
            if start == 0:
                raise
            # the header over-counted the frames: the window that fits is the one from the start
            video = read_video(path, num_frames=frames, stride=stride, start=0)
        if video.frames.shape[0] != frames:
            raise UserError(f"{path}: decoded {video.frames.shape[0]} of {frames} frames")
        return video.frames

    def summary(self) -> str:
        """One line for a run summary: files used and skipped, by reason."""
        return skip_summary(self.skipped, len(self.samples) - sum(str(s.path) in self.skipped for s in self.samples))

    def bucket_counts(self) -> dict[Bucket, int]:
        counts = Counter(self.bucket_ids)
        return {self.buckets[i]: counts[i] for i in sorted(counts)}

    def __repr__(self) -> str:
        return (f"VideoFolder({str(self.root)!r}: {len(self)} files in {len(set(self.bucket_ids))} of "
                f"{len(self.buckets)} buckets, {len(self.skipped)} skipped)")


def _reason(err: BaseException, path: str) -> str:
    text = " ".join(str(err).split())
    if text.startswith(path):  # the warning names the file already: "<path> is not ..." -> "not ..."
        text = text[len(path):].lstrip(": ")
        text = text[3:] if text.startswith("is ") else text
    return text[:300] if text else type(err).__name__


def collate(items: Sequence[dict | None]) -> dict:
    """Stack the items of one batch, dropping `None` (files that failed to decode).

    Video items give dict(video=(B, 3, T, H, W), caption, path, index, fps, start: lists, bucket);
    latent-cache items give dict(latents=(B, C, T, H, W), text_states=[(B, L, D) per encoder],
    text_masks=[(B, L) bool per encoder], caption, path, index, offset, bucket), text padded to the
    longest in the batch. Both carry `skipped` ({path: reason} for files that failed while this
    batch was read; merge them into the data set's `skipped` for the run summary) and
    `sampler_state` (the `BucketSampler` state just after this batch, or None for plain indices).
    A batch whose every file failed has `video` (or `latents`) None and batch size 0: skip it.
    """
    events = _take_skips()
    good = [item for item in items if item is not None]
    positions = [(item["epoch"], item["position"]) for item in good if item.get("position") is not None]
    positions += [(e["epoch"], e["position"]) for e in events if e["position"] is not None]
    state = None
    if positions:
        epoch, position = max(positions)
        state = {"epoch": int(epoch), "position": int(position) + 1}
    batch = {"skipped": {e["path"]: e["reason"] for e in events}, "sampler_state": state}
    batch["caption"] = [item["caption"] for item in good]
    batch["path"] = [item["path"] for item in good]
    batch["index"] = [item["index"] for item in good]
    batch["bucket"] = good[0]["bucket"] if good else None
    if good and "latents" in good[0]:
        batch["latents"] = _stack([item["latents"] for item in good], "latents", batch["path"])
        batch["offset"] = [item["offset"] for item in good]
        states, masks = _pad_text([item["text_states"] for item in good], [item["text_masks"] for item in good])
        batch["text_states"], batch["text_masks"] = states, masks
    elif good:
        batch["video"] = _stack([item["video"] for item in good], "video", batch["path"])
        for key in ("fps", "start", "stride"):
            batch[key] = [item[key] for item in good]
    else:
        batch["video"] = None
    return batch


def _stack(tensors: list[torch.Tensor], name: str, paths: list[str]) -> torch.Tensor:
    shapes = {tuple(t.shape) for t in tensors}
    if len(shapes) > 1:
        raise ValueError(f"one batch mixes {name} shapes {sorted(shapes)} (from {paths[0]} ...); "
                         "draw batches with BucketSampler so each batch comes from one bucket")
    return torch.stack(tensors)


def _pad_text(states: list[list[torch.Tensor]], masks: list[list[torch.Tensor]]):
    """Per encoder: pad (L, D) states and (L,) masks to the longest L of the batch."""
    out_states, out_masks = [], []
    for j in range(len(states[0])):
        length = max(s[j].shape[0] for s in states)
        dim = states[0][j].shape[-1]
        s_out = states[0][j].new_zeros((len(states), length, dim))
        m_out = torch.zeros((len(states), length), dtype=torch.bool)
        for b, (s, m) in enumerate(zip(states, masks)):
            s_out[b, : s[j].shape[0]] = s[j]
            m_out[b, : m[j].shape[0]] = m[j].bool()
        out_states.append(s_out)
        out_masks.append(m_out)
    return out_states, out_masks
