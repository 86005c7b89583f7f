"""Reading and writing video and still images.

Frames on disk are uint8 RGB; in memory a clip is a numpy array (T, H, W, 3) of uint8, and a model
sees a float tensor (B, 3, T, H, W) in [-1, 1] (`frames_to_tensor` / `tensor_to_frames`).

Reading: decord first (fast random access), PyAV when decord is missing or fails; animated GIF and
WebP through imageio; a folder of PNG frames in name order. Frames are chosen by count, stride or
target fps (`select_indices`).

Writing: mp4 (H.264 through PyAV), GIF and WebP (imageio), or a folder of PNG frames (lossless),
picked from the output path. Every write goes to a temporary name beside the target and is renamed
into place when complete, so a crash never leaves a half-written file under the final name; an
existing output is refused unless `overwrite=True`. `VideoWriter` takes frames as they are made
(the long-video sampler writes chunk after chunk); `write_video` is the one-call form.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
import tempfile
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Iterable

import numpy as np

from pipelines.errors import UserError

VIDEO_EXTENSIONS = (".mp4", ".mov", ".mkv", ".webm", ".avi", ".m4v")
ANIMATED_EXTENSIONS = (".gif", ".webp")
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")
WRITE_EXTENSIONS = (".mp4", ".gif", ".webp")


@dataclass
class Video:
    """Decoded frames (T, H, W, 3) uint8 and the frame rate they play at."""

    frames: np.ndarray
    fps: float

    @property
    def num_frames(self) -> int:
        return int(self.frames.shape[0])


# ----------------------------------------------------------------------------------------------
# Probing
# ----------------------------------------------------------------------------------------------


def _require_file(path: str | os.PathLike) -> Path:
    p = Path(path)
    if not p.exists():
        raise UserError(f"{p}: no such file")
    if p.is_dir() and not _png_frames(p):
        raise UserError(f"{p} is a folder with no PNG frames; give a video file, an image, or a folder of PNG frames")
    return p


def is_video_path(path: str | os.PathLike) -> bool:
    p = Path(path)
    return p.suffix.lower() in VIDEO_EXTENSIONS + (".gif",) or (p.is_dir() and bool(_png_frames(p)))


def probe(path: str | os.PathLike) -> dict:
    """Describe a video or an image as a JSON-ready dict, decoding only what is needed to be sure."""
    p = _require_file(path)
    if p.is_dir():
        frames = _png_frames(p)
        h, w = read_image(frames[0]).shape[:2]
        return {"path": str(p), "kind": "frames", "frames": len(frames), "width": w, "height": h, "codec": "png"}
    suffix = p.suffix.lower()
    if suffix in ANIMATED_EXTENSIONS:
        video = _read_animated(p)
        info = {"path": str(p), "kind": "video", "frames": video.num_frames, "fps": round(video.fps, 3),
                "width": int(video.frames.shape[2]), "height": int(video.frames.shape[1]), "codec": suffix[1:],
                "duration_s": round(video.num_frames / video.fps, 3)}
        if suffix == ".webp" and video.num_frames == 1:
            info = _probe_image(p)
        return info
    if suffix in IMAGE_EXTENSIONS:
        return _probe_image(p)
    return _probe_av(p)


def _probe_image(p: Path) -> dict:
    from PIL import Image

    try:
        with Image.open(p) as img:
            img.verify()
        with Image.open(p) as img:
            img.load()
            return {"path": str(p), "kind": "image", "width": img.width, "height": img.height,
                    "mode": img.mode, "format": img.format}
    except Exception as err:  # PIL raises many types for broken files
        raise UserError(f"{p} is not a readable image ({_reason(err)})") from err


def _probe_av(p: Path) -> dict:
    import av

    try:
        with _quiet_stderr(), av.open(str(p)) as container:
            if not container.streams.video:
                raise UserError(f"{p} has no video stream")
            stream = container.streams.video[0]
            fps = float(stream.average_rate or stream.guessed_rate or 0) or None
            frames = int(stream.frames or 0)
            duration = None
            if stream.duration is not None and stream.time_base is not None:
                duration = float(stream.duration * stream.time_base)
            elif container.duration is not None:
                duration = container.duration / 1_000_000
            if frames == 0:  # container does not say: count by decoding
                frames = sum(1 for _ in container.decode(stream))
            else:  # make sure the stream really decodes
                next(iter(container.decode(stream)), None)
            width, height = stream.codec_context.width, stream.codec_context.height
            codec = stream.codec_context.name
            pix_fmt = stream.codec_context.format.name if stream.codec_context.format else None
    except UserError:
        raise
    except Exception as err:
        raise UserError(f"{p} is not a readable video ({_reason(err)})") from err
    if frames == 0:
        raise UserError(f"{p} has no video frames")
    if duration is None and fps:
        duration = frames / fps
    return {"path": str(p), "kind": "video", "frames": frames, "fps": round(fps, 3) if fps else None,
            "width": width, "height": height, "codec": codec, "pix_fmt": pix_fmt,
            "duration_s": round(duration, 3) if duration is not None else None}


def _reason(err: BaseException) -> str:
    text = getattr(err, "strerror", None) or " ".join(str(err).split())
    return text[:200] if text else type(err).__name__


# ----------------------------------------------------------------------------------------------
# Reading
# ----------------------------------------------------------------------------------------------


def select_indices(total: int, src_fps: float, *, num_frames: int | None = None, stride: int | None = None,
                   fps: float | None = None, start: int = 0, name: str = "video") -> tuple[list[int], float]:
    """Indices of the frames to read and the fps they play at.

    `fps` resamples to a target rate (step = src_fps / fps, nearest frame); `stride` takes every
    stride-th frame; with neither, every frame. `num_frames` limits the count (and must fit).
    """
    if stride is not None and fps is not None:
        raise UserError("give a frame stride or a target fps, not both")
    if stride is not None and stride < 1:
        raise UserError(f"stride must be 1 or more, got {stride}")
    if fps is not None and fps <= 0:
        raise UserError(f"fps must be positive, got {fps}")
    if num_frames is not None and num_frames < 1:
        raise UserError(f"frame count must be 1 or more, got {num_frames}")
    if not 0 <= start < max(total, 1):
        raise UserError(f"{name}: start frame {start} is outside its {total} frames")
    step = float(stride) if stride is not None else (src_fps / fps if fps else 1.0)
    available = int(math.floor((total - 1 - start) / step + 1e-9)) + 1
    count = available if num_frames is None else num_frames
    if count > available:
        need = start + int(math.ceil((count - 1) * step)) + 1
        raise UserError(f"{name} has {total} frames; {count} frames at step {step:g} from frame {start} need {need}")
    indices = [min(total - 1, start + int(round(i * step))) for i in range(count)]
    return indices, src_fps / step


def read_video(path: str | os.PathLike, num_frames: int | None = None, stride: int | None = None,
               fps: float | None = None, start: int = 0) -> Video:
    """Decode a video (mp4, mov, mkv, webm, avi, GIF, animated WebP, or a folder of PNG frames)."""
    p = _require_file(path)
    suffix = p.suffix.lower()
    if p.is_dir():
        files = _png_frames(p)
        indices, out_fps = select_indices(len(files), 24.0, num_frames=num_frames, stride=stride, fps=fps,
                                          start=start, name=str(p))
        frames = [read_image(files[i]) for i in indices]
        for i, frame in zip(indices, frames):
            if frame.shape != frames[0].shape:
                (h, w), (h0, w0) = frame.shape[:2], frames[0].shape[:2]
                raise UserError(f"{files[i]} is {w}x{h} but {files[indices[0]].name} is {w0}x{h0}; "
                                f"the frames of a folder must all have one size")
        return Video(np.stack(frames), out_fps)
    if suffix in ANIMATED_EXTENSIONS:
        video = _read_animated(p)
        indices, out_fps = select_indices(video.num_frames, video.fps, num_frames=num_frames, stride=stride,
                                          fps=fps, start=start, name=str(p))
        return Video(video.frames[indices], out_fps)
    if suffix in IMAGE_EXTENSIONS:
        raise UserError(f"{p} is a still image; use an image command (animate) or give a video")
    _open_av(p)  # a quiet header check first: decord prints FFmpeg's complaints about broken files
    try:
        return _read_decord(p, num_frames, stride, fps, start)
    except UserError:
        raise
    except Exception:  # decord missing, or it failed on this file: PyAV decides
        return _read_av(p, num_frames, stride, fps, start)


def _open_av(p: Path) -> None:
    import av

    try:
        with av.open(str(p)) as container:
            if not container.streams.video:
                raise UserError(f"{p} has no video stream")
    except UserError:
        raise
    except Exception as err:
        raise UserError(f"{p} is not a readable video ({_reason(err)})") from err


@contextlib.contextmanager
def _quiet_stderr():
    """Silence FFmpeg's own messages (written by C code to file descriptor 2) while decoding: a
    broken file becomes one UserError line, not a screen of decoder complaints."""
    try:
        saved = os.dup(2)
    except OSError:  # no real stderr (e.g. some embedded interpreters)
        yield
        return
    try:
        with open(os.devnull, "w") as null:
            os.dup2(null.fileno(), 2)
            yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def _read_decord(p: Path, num_frames, stride, fps, start) -> Video:
    with _quiet_stderr():
        return _read_decord_loud(p, num_frames, stride, fps, start)


def _read_decord_loud(p: Path, num_frames, stride, fps, start) -> Video:
    import decord

    reader = decord.VideoReader(str(p), ctx=decord.cpu(0), num_threads=1)
    total = len(reader)
    if total == 0:
        raise UserError(f"{p} has no video frames")
    src_fps = float(reader.get_avg_fps()) or 24.0
    indices, out_fps = select_indices(total, src_fps, num_frames=num_frames, stride=stride, fps=fps,
                                      start=start, name=str(p))
    frames = reader.get_batch(indices).asnumpy()
    if frames.ndim != 4 or frames.shape[0] != len(indices):
        raise RuntimeError("decord returned an unexpected batch")
    return Video(np.ascontiguousarray(frames), out_fps)


def _read_av(p: Path, num_frames, stride, fps, start) -> Video:
    import av

    try:
        with _quiet_stderr(), av.open(str(p)) as container:
            if not container.streams.video:
                raise UserError(f"{p} has no video stream")
            stream = container.streams.video[0]
            src_fps = float(stream.average_rate or stream.guessed_rate or 24)
            frames = [f.to_ndarray(format="rgb24") for f in container.decode(stream)]
    except UserError:
        raise
    except Exception as err:
        raise UserError(f"{p} is not a readable video ({_reason(err)})") from err
    if not frames:
        raise UserError(f"{p} has no video frames")
    indices, out_fps = select_indices(len(frames), src_fps, num_frames=num_frames, stride=stride, fps=fps,
                                      start=start, name=str(p))
    return Video(np.stack([frames[i] for i in indices]), out_fps)


def _read_animated(p: Path) -> Video:
    """GIF / animated WebP. Their encoders fold a run of identical frames into one longer frame,
    so frames are expanded back by duration: against the frame count and fps our writer records in
    the file (see `_ANIMATION_TAG`), else against the shortest frame duration."""
    from PIL import Image, ImageSequence

    try:
        with Image.open(p) as img:
            tag = img.info.get("comment") or img.info.get("xmp") or b""
            frames, durations = [], []
            for frame in ImageSequence.Iterator(img):
                frames.append(_to_rgb_uint8(frame.copy()))
                durations.append(float(frame.info.get("duration") or 100))
    except Exception as err:
        raise UserError(f"{p} is not a readable animation ({_reason(err)})") from err
    if not frames:
        raise UserError(f"{p} has no frames")
    recorded = _parse_animation_tag(tag)
    if recorded is not None:
        count, fps = recorded
        base = sum(durations) / count
    else:
        base = min(durations)
        fps = 1000.0 / base
    repeats = [max(1, int(round(d / base))) for d in durations]
    if recorded is not None and sum(repeats) != count:  # rounding: trust the recorded count
        repeats[-1] = max(1, repeats[-1] + count - sum(repeats))
    return Video(np.repeat(np.stack(frames), repeats, axis=0), fps)


_ANIMATION_TAG = "spacetime-video frames={frames} fps={fps}"


def _parse_animation_tag(tag) -> tuple[int, float] | None:
    text = tag.decode("utf-8", "replace") if isinstance(tag, bytes) else str(tag)
    if not text.startswith("spacetime-video "):
        return None
    try:
        fields = dict(item.split("=", 1) for item in text.split()[1:])
        return int(fields["frames"]), float(fields["fps"])
    except (KeyError, ValueError):
        return None


def _png_frames(folder: Path) -> list[Path]:
    return sorted(f for f in folder.iterdir() if f.suffix.lower() == ".png" and not f.name.startswith("."))


def read_image(path: str | os.PathLike) -> np.ndarray:
    """A still as uint8 RGB (H, W, 3): grayscale is repeated, alpha is composited over white,
    16-bit and float images are scaled to 8 bits, and EXIF rotation is applied."""
    from PIL import Image, ImageOps

    p = Path(path)
    if not p.is_file():
        raise UserError(f"{p}: no such file" if not p.exists() else f"{p} is not a file")
    try:
        with Image.open(p) as img:
            img.load()
            img = ImageOps.exif_transpose(img) or img
            return _to_rgb_uint8(img)
    except UserError:
        raise
    except Exception as err:
        raise UserError(f"{p} is not a readable image ({_reason(err)})") from err


def _to_rgb_uint8(img) -> np.ndarray:
    if img.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        arr = np.asarray(img).astype(np.float64)
        top = 65535.0 if img.mode.startswith("I;16") or arr.max() > 255 else 255.0
        if img.mode == "F":
            top = 1.0 if arr.max() <= 1.0 else 255.0
        gray = np.clip(np.round(arr / top * 255.0), 0, 255).astype(np.uint8)
        return np.repeat(gray[..., None], 3, axis=-1)
    if img.mode == "P":
        img = img.convert("RGBA")
    if img.mode in ("RGBA", "LA", "PA"):
        rgba = np.asarray(img.convert("RGBA")).astype(np.float32)
        alpha = rgba[..., 3:4] / 255.0
        rgb = rgba[..., :3] * alpha + 255.0 * (1.0 - alpha)
        return np.clip(np.round(rgb), 0, 255).astype(np.uint8)
    return np.asarray(img.convert("RGB"), dtype=np.uint8).copy()


# ----------------------------------------------------------------------------------------------
# Tensors and resizing
# ----------------------------------------------------------------------------------------------


def frames_to_tensor(frames: np.ndarray):
    """uint8 (T, H, W, 3) or (H, W, 3) -> float tensor (1, 3, T, H, W) in [-1, 1]."""
    import torch

    if frames.ndim == 3:
        frames = frames[None]
    if frames.ndim != 4 or frames.shape[-1] != 3:
        raise UserError(f"expected frames of shape (T, H, W, 3), got {tuple(frames.shape)}")
    t = torch.from_numpy(np.ascontiguousarray(frames)).float()
    return (t.permute(3, 0, 1, 2).unsqueeze(0) / 127.5) - 1.0


def tensor_to_frames(video) -> np.ndarray:
    """float tensor (1, 3, T, H, W) or (3, T, H, W) in [-1, 1] -> uint8 (T, H, W, 3)."""
    if video.ndim == 5:
        if video.shape[0] != 1:
            raise ValueError(f"tensor_to_frames takes one video, got a batch of {video.shape[0]}")
        video = video[0]
    x = ((video.detach().float().clamp(-1, 1) + 1.0) * 127.5).round().to("cpu").byte()
    return x.permute(1, 2, 3, 0).contiguous().numpy()


def resize_and_crop(frames: np.ndarray, width: int, height: int) -> np.ndarray:
    """Scale (T, H, W, 3) uint8 frames to cover width x height, keeping the aspect, then centre-crop."""
    import torch
    import torch.nn.functional as F

    single = frames.ndim == 3
    if single:
        frames = frames[None]
    t, h, w, _ = frames.shape
    if (h, w) == (height, width):
        return frames[0] if single else frames
    scale = max(width / w, height / h)
    new_w, new_h = max(width, int(round(w * scale))), max(height, int(round(h * scale)))
    out = np.empty((t, height, width, 3), dtype=np.uint8)
    top, left = (new_h - height) // 2, (new_w - width) // 2
    for i in range(0, t, 16):  # a few frames at a time keeps memory small for long clips
        x = torch.from_numpy(np.ascontiguousarray(frames[i : i + 16])).permute(0, 3, 1, 2).float()
        x = F.interpolate(x, size=(new_h, new_w), mode="bicubic", antialias=True, align_corners=False)
        x = x[:, :, top : top + height, left : left + width]
        out[i : i + 16] = x.round().clamp(0, 255).byte().permute(0, 2, 3, 1).numpy()
    return out[0] if single else out


# ----------------------------------------------------------------------------------------------
# Writing
# ----------------------------------------------------------------------------------------------


def output_kind(path: str | os.PathLike) -> str:
    """'frames' (a folder of PNGs: the path ends with '/' or is an existing folder), or the file type."""
    text = str(path)
    if text.endswith(("/", os.sep)) or Path(text).is_dir():
        return "frames"
    suffix = Path(text).suffix.lower()
    if suffix not in WRITE_EXTENSIONS:
        raise UserError(f"{text}: cannot write '{suffix or 'no extension'}' video; use .mp4, .gif, .webp, "
                        "or a folder path ending in '/' for PNG frames")
    return suffix[1:]


def sidecar_path(path: str | os.PathLike) -> Path:
    """Where the JSON description of an output goes: beside it, the output's name plus '.json'."""
    return Path(str(path).rstrip("/" + os.sep) + ".json")


def check_writable(path: str | os.PathLike, overwrite: bool = False, sidecar: bool = False) -> str:
    """Validate an output path (and with `sidecar`, its JSON description's) before any work is done;
    returns its kind."""
    kind = output_kind(path)
    if sidecar and sidecar_path(path).exists() and not overwrite:
        raise UserError(f"{sidecar_path(path)} already exists; pass --overwrite to replace it")
    p = Path(str(path).rstrip("/" + os.sep))
    if kind == "frames":
        if p.exists() and not p.is_dir():
            raise UserError(f"{p} exists and is not a folder")
        if p.is_dir() and _png_frames(p) and not overwrite:
            raise UserError(f"{p} already holds PNG frames; pass --overwrite to replace them")
    elif p.exists() and not overwrite:
        raise UserError(f"{p} already exists; pass --overwrite to replace it")
    parent = p.parent
    if parent.exists() and not parent.is_dir():
        raise UserError(f"{parent} is not a folder")
    if parent.is_dir():  # try it: permission bits do not tell (root, read-only file systems)
        try:
            fd, probe_file = tempfile.mkstemp(prefix=f".{p.name}.probe-", dir=parent)
        except OSError as err:
            raise UserError(f"cannot write {p}: the folder {parent} refuses new files ({err.strerror}); "
                            f"choose another output path") from None
        os.close(fd)
        os.unlink(probe_file)
    return kind


class VideoWriter:
    """Write frames as they come; the output appears under its final name only on `close()`.

    >>> with VideoWriter("clip.mp4", fps=16) as w:
    ...     w.write(frames_chunk_1); w.write(frames_chunk_2)

    Leaving the `with` block through an exception removes the partial file.
    """

    def __init__(self, path: str | os.PathLike, fps: float, *, overwrite: bool = False, quality: int = 17):
        self.kind = check_writable(path, overwrite)
        self.path = Path(str(path).rstrip("/" + os.sep))
        self.fps = float(fps)
        if not self.fps > 0:
            raise UserError(f"fps must be positive, got {fps}")
        self.overwrite = overwrite
        self.quality = quality
        self.num_frames = 0
        self._shape: tuple[int, int] | None = None
        self._buffer: list[np.ndarray] = []
        self._av = None
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if self.kind == "frames":
            self._tmp = Path(tempfile.mkdtemp(prefix=f".{self.path.name}.partial-", dir=self.path.parent))
        else:
            fd, tmp = tempfile.mkstemp(prefix=f".{self.path.stem}.partial-", suffix=self.path.suffix,
                                       dir=self.path.parent)
            os.close(fd)
            self._tmp = Path(tmp)

    def write(self, frames: np.ndarray) -> None:
        """Append uint8 frames (T, H, W, 3) or one frame (H, W, 3)."""
        frames = np.asarray(frames)
        if frames.ndim == 3:
            frames = frames[None]
        if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
            raise ValueError(f"expected uint8 frames (T, H, W, 3), got {frames.dtype} {tuple(frames.shape)}")
        if self._shape is None:
            self._shape = (int(frames.shape[1]), int(frames.shape[2]))
        elif frames.shape[1:3] != self._shape:
            raise ValueError(f"frame size changed from {self._shape} to {tuple(frames.shape[1:3])}")
        if self.kind == "mp4":
            self._write_mp4(frames)
        elif self.kind == "frames":
            from PIL import Image

            for frame in frames:
                Image.fromarray(frame).save(self._tmp / f"frame_{self.num_frames:05d}.png", compress_level=4)
                self.num_frames += 1
            return
        else:
            self._buffer.extend(frames)
        self.num_frames += len(frames)

    def _write_mp4(self, frames: np.ndarray) -> None:
        import av

        if self._av is None:
            h, w = self._shape
            container = av.open(str(self._tmp), mode="w", format="mp4")
            stream = container.add_stream("libx264", rate=Fraction(self.fps).limit_denominator(1001))
            stream.width, stream.height = w, h
            # yuv420p plays everywhere but needs even sizes; odd sizes keep every pixel with 4:4:4.
            stream.pix_fmt = "yuv420p" if (w % 2 == 0 and h % 2 == 0) else "yuv444p"
            stream.options = {"crf": str(self.quality), "preset": "medium"}
            self._av = (container, stream)
        container, stream = self._av
        import av as _av

        for frame in frames:
            for packet in stream.encode(_av.VideoFrame.from_ndarray(frame, format="rgb24")):
                container.mux(packet)

    def close(self) -> Path:
        """Finish the file and move it under its final name. Returns that name."""
        if self.num_frames == 0:
            self.abort()
            raise UserError(f"{self.path}: no frames to write")
        if self.kind == "mp4":
            container, stream = self._av
            for packet in stream.encode():
                container.mux(packet)
            container.close()
            self._av = None
        elif self.kind in ("gif", "webp"):
            import imageio.v3 as iio

            duration_ms = 1000.0 / self.fps
            kwargs = {"duration": duration_ms, "loop": 0}
            tag = _ANIMATION_TAG.format(frames=self.num_frames, fps=f"{self.fps:g}")
            if self.kind == "webp":
                kwargs.update(lossless=False, quality=90, xmp=tag.encode())
            else:
                kwargs.update(comment=tag)
            iio.imwrite(self._tmp, np.stack(self._buffer), extension=f".{self.kind}", plugin="pillow", **kwargs)
        self._commit()
        return self.path

    def _commit(self) -> None:
        if self.kind != "frames":
            publish(self._tmp, self.path, self.overwrite)
            return
        for frame in self._tmp.iterdir():
            _default_mode(frame)
        if not self.path.exists():
            publish(self._tmp, self.path)
            return
        if not self.overwrite and _png_frames(self.path):  # frames that appeared while these were made
            self.abort()
            raise UserError(f"{self.path} received PNG frames while this clip was being written; they were "
                            f"kept: pass --overwrite to replace them or choose another folder")
        # An existing folder (checked for --overwrite up front): drop its old frames, move ours in.
        for old in _png_frames(self.path):
            if old.name.startswith("frame_"):
                old.unlink()
        for new in sorted(self._tmp.iterdir()):
            os.replace(new, self.path / new.name)
        self._tmp.rmdir()

    def abort(self) -> None:
        """Drop everything written so far; the final name is left untouched."""
        if self._av is not None:
            try:
                self._av[0].close()
            except Exception:
                pass
            self._av = None
        if self._tmp.is_dir():
            shutil.rmtree(self._tmp, ignore_errors=True)
        elif self._tmp.exists():
            self._tmp.unlink()

    def __enter__(self) -> "VideoWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()


def _default_mode(path: str | os.PathLike) -> None:
    """Give a file made by `tempfile` (private, 0600/0700) the mode a plain open() would have."""
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(path, (0o777 if os.path.isdir(path) else 0o666) & ~umask)


def publish(tmp: str | os.PathLike, final: str | os.PathLike, overwrite: bool = True) -> None:
    """Move a finished temporary file or folder under its final name (atomic on one file system).
    Without `overwrite`, a file that appeared under that name meanwhile is kept and UserError raised
    (the temporary is removed): a hard link claims the name only if it is still free."""
    _default_mode(tmp)
    if overwrite or os.path.isdir(tmp):
        os.replace(tmp, final)
        return
    try:
        os.link(tmp, final)  # fails if the name is taken
        claimed = True
    except FileExistsError:
        claimed = False
    except OSError:  # a file system without hard links: check, then move
        claimed = not os.path.exists(final)
        if claimed:
            os.replace(tmp, final)
            return
    os.unlink(tmp)
    if not claimed:
        raise UserError(f"{final} appeared while it was being written; it was kept: pass --overwrite "
                        f"to replace it or choose another name")


def replace_folder(tmp: str | os.PathLike, out: str | os.PathLike) -> Path:
    """Put the complete folder `tmp` in `out`'s place, with the mode a plain mkdir would give it. An
    existing `out` is renamed aside first and removed after, so `out` holds either the old folder or
    the new one at every moment."""
    tmp, out = Path(tmp), Path(out)
    _default_mode(tmp)
    if out.exists():
        old = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-", dir=out.parent))
        os.replace(out, old / out.name)
        os.replace(tmp, out)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, out)
    return out


def write_video(path: str | os.PathLike, frames: np.ndarray | Iterable[np.ndarray], fps: float, *,
                overwrite: bool = False, sidecar: dict | None = None, quality: int = 17) -> Path:
    """Write frames (T, H, W, 3) uint8 (or an iterable of chunks) to mp4 / gif / webp / PNG folder.

    With `sidecar`, a JSON description is written beside the output (see `sidecar_path`)."""
    chunks = [frames] if isinstance(frames, np.ndarray) else frames
    check_writable(path, overwrite, sidecar=sidecar is not None)
    with VideoWriter(path, fps, overwrite=overwrite, quality=quality) as writer:
        for chunk in chunks:
            writer.write(chunk)
    if sidecar is not None:
        write_json(sidecar_path(writer.path), sidecar, overwrite=overwrite)
    return writer.path


@contextlib.contextmanager
def atomic_file(path: str | os.PathLike, *, overwrite: bool = False):
    """Yield a temporary path beside `path`; on success it is published under `path`, on an
    exception it is removed. An existing `path` is refused unless `overwrite`."""
    p = Path(path)
    if p.exists() and not overwrite:
        raise UserError(f"{p} already exists; pass --overwrite to replace it")
    p.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{p.stem}.partial-", suffix=p.suffix, dir=p.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        publish(tmp, p, overwrite)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def write_json(path: str | os.PathLike, data: dict, *, overwrite: bool = False) -> Path:
    """Atomically write a JSON file."""
    with atomic_file(path, overwrite=overwrite) as tmp:
        tmp.write_text(json.dumps(data, indent=2, default=str) + "\n")
    return Path(path)


def write_image(path: str | os.PathLike, image: np.ndarray, *, overwrite: bool = False) -> Path:
    """Atomically write one uint8 RGB image (PNG, or JPEG/WebP by extension)."""
    from PIL import Image

    with atomic_file(path, overwrite=overwrite) as tmp:
        Image.fromarray(np.asarray(image, dtype=np.uint8)).save(tmp)
    return Path(path)


def contact_sheet(frames: np.ndarray, *, max_frames: int = 8, columns: int = 4, gap: int = 2) -> np.ndarray:
    """A grid of evenly spaced frames (first and last included) as one uint8 image."""
    frames = np.asarray(frames)
    t, h, w, _ = frames.shape
    n = min(t, max_frames)
    picks = np.unique(np.round(np.linspace(0, t - 1, n)).astype(int))
    columns = min(columns, len(picks))
    rows = int(math.ceil(len(picks) / columns))
    sheet = np.full((rows * h + (rows - 1) * gap, columns * w + (columns - 1) * gap, 3), 255, dtype=np.uint8)
    for k, i in enumerate(picks):
        r, c = divmod(k, columns)
        sheet[r * (h + gap) : r * (h + gap) + h, c * (w + gap) : c * (w + gap) + w] = frames[i]
    return sheet


def write_contact_sheet(path: str | os.PathLike, frames: np.ndarray, *, overwrite: bool = False,
                        max_frames: int = 8, columns: int = 4) -> Path:
    """Write a PNG preview of a clip (see `contact_sheet`)."""
    return write_image(path, contact_sheet(frames, max_frames=max_frames, columns=columns), overwrite=overwrite)

