"""Benchmark: reading one training clip from a video file.

`VideoFolder` decodes only the frames of the clip it needs (decord's `get_batch` on those
indices). The reference decodes the whole file with PyAV and then picks the same frames, which is
what a loader without random access does. Both resize and crop to the same bucket. Printed:
milliseconds per clip (median of several runs) and ours as a fraction of the reference, for a
short and a long source file, with the clip starting at a random frame.

    python tools/bench_data.py [--repeats 5] [--threads 2]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipelines.data import Bucket, VideoFolder  # noqa: E402
from pipelines.video_io import frames_to_tensor, resize_and_crop, write_video  # noqa: E402


def make_clip(frames: int, height: int, width: int) -> np.ndarray:
    """Moving gradients with noise: something an encoder has to work for."""
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:height, 0:width]
    out = np.empty((frames, height, width, 3), dtype=np.uint8)
    for t in range(frames):
        out[t, ..., 0] = (xx + 3 * t) % 256
        out[t, ..., 1] = (yy + 2 * t) % 256
        out[t, ..., 2] = rng.integers(0, 64, size=(height, width))
    return out


def reference_item(path: Path, bucket: Bucket, stride: int, start: int) -> torch.Tensor:
    import av

    with av.open(str(path)) as container:
        frames = [f.to_ndarray(format="rgb24") for f in container.decode(container.streams.video[0])]
    clip = np.stack(frames[start : start + (bucket.frames - 1) * stride + 1 : stride])
    return frames_to_tensor(resize_and_crop(clip, bucket.width, bucket.height))[0]


def median_ms(fn, repeats: int) -> float:
    fn()  # warm up
    times = []
    for _ in range(repeats):
        tic = time.perf_counter()
        fn()
        times.append(time.perf_counter() - tic)
    return 1000 * statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    warnings.simplefilter("ignore")
    bucket = Bucket(17, 256, 256)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for seconds in (4, 40):
            folder = Path(tmp) / f"{seconds}s"
            folder.mkdir()
            path = folder / "clip.mp4"
            write_video(path, make_clip(30 * seconds, 288, 384), fps=30)
            ds = VideoFolder(folder, fps=8.0, buckets=[bucket], seed=0)
            stride, total = ds.strides[0], ds.total_frames[0]
            epoch = iter(range(10**6))

            def ours():
                ds.set_epoch(next(epoch))
                return ds[0]

            item = ours()
            ref = reference_item(path, bucket, stride, item["start"])
            assert torch.equal(item["video"], ref), "ours and the reference read different frames"
            starts = iter(np.random.default_rng(1).integers(0, total - 16 * stride, size=10**4))
            t_ours = median_ms(ours, args.repeats)
            t_ref = median_ms(lambda: reference_item(path, bucket, stride, int(next(starts))), args.repeats)
            rows.append((f"{seconds} s at 30 fps, 384x288 ({total} frames)", t_ours, t_ref))
    print(f"one clip of {bucket.frames} frames at 8 fps (stride {stride}), random start, resized to "
          f"{bucket.width}x{bucket.height}; {args.threads} threads, median of {args.repeats}")
    print()
    print("| source file | VideoFolder (ms) | decode all with PyAV (ms) | ours / reference |")
    print("| --- | ---: | ---: | ---: |")
    for name, a, b in rows:
        print(f"| {name} | {a:.1f} | {b:.1f} | {a / b:.2f} |")


if __name__ == "__main__":
    main()
