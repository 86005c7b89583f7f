"""Benchmark SpacetimePipeline on CPU: sampler overhead, time per long-video window, peak memory.

    python tools/bench_pipeline.py                  # all three tables
    python tools/bench_pipeline.py --only sampler --repeats 7

The model: random weights (seeded) at a CPU-sized layout: the "small" VAE, the "S" DiT (full
attention, cross-attention to the installed MiniLM), native clips of 17 frames at 64x64 (5 x 8 x 8
latents, 80 tokens), guidance on (the two branches batched), 2 threads.

Tables (markdown, for docs/performance.md):
1. Sampler: one pipeline call (output_type="latent", the prompt already encoded) against the
   reference `steps` x one DiT forward on the same batch-2 inputs, runs interleaved, median of
   --repeats. The ratio is the sampler's overhead (planning, noise, given frames, guidance mix,
   Euler updates, callbacks). Bound: 1.02.
2. Long video: a 257-frame clip (21 windows, 2 latent frames of context each) made and streamed to
   a consumer that drops the frames; time of each window (its denoising steps and the decoding of
   its new latent frames), median over --window-repeats runs. Window 16 / window 1. Bound: 1.1.
3. Peak memory: 33, 65, 129 and 257 frames, each in a fresh process streaming to an mp4 writer;
   peak RSS above the process after loading the model, and the peak of live torch tensors (from
   the profiler's allocation events). 257 / 33. Bound: 1.3.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

NATIVE_FRAMES, SIZE, STEPS, CONTEXT = 17, 64, 4, 2


def build_pipeline():
    from vae3d import PRESETS as VAE_PRESETS, CausalVideoVAE
    from video_dit import PRESETS as DIT_PRESETS, VideoDiT
    from video_dit.text import TextEncoder, TextEncoders

    from pipelines.pipeline import SpacetimePipeline

    torch.manual_seed(0)
    vae = CausalVideoVAE(**VAE_PRESETS["small"]).eval()
    text = TextEncoders([TextEncoder()])
    dit = VideoDiT(in_channels=vae.config.latent_channels, text_dims=text.dims, **DIT_PRESETS["S"]).eval()
    for p in dit.parameters():  # a fresh DiT outputs exactly zero: give its zeroed layers values
        if not p.any():
            p.data.normal_(0.0, 0.02)
    pipe = SpacetimePipeline(vae=vae, transformer=dit, text_encoder=text, native_frames=NATIVE_FRAMES,
                             height=SIZE, width=SIZE, fps=8.0, num_inference_steps=STEPS, guidance_scale=4.0,
                             context_latent_frames=CONTEXT)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def run_pipe(pipe, frames: int, **kwargs):
    return pipe("a red circle moves to the right on a black background", num_frames=frames,
                generator=torch.Generator().manual_seed(0), **kwargs)


# ---- 1. sampler overhead -----------------------------------------------------------------------


def bench_sampler(pipe, repeats: int) -> None:
    run_pipe(pipe, NATIVE_FRAMES, output_type="latent")  # warm-up; the prompt encodings are kept
    cond, uncond = pipe.encode_prompt("a red circle moves to the right on a black background", None, True)
    latents = pipe.native_latent_frames
    h = w = SIZE // pipe.spatial_factor
    x = torch.randn(2, pipe.transformer.config.in_channels, latents, h, w)
    t = torch.full((2, latents), 0.5)
    from video_dit.flow import _cat_text

    both = _cat_text(cond, uncond)

    def reference():
        with torch.no_grad():
            for _ in range(STEPS):
                pipe.transformer(x, t, **both)

    def ours():
        run_pipe(pipe, NATIVE_FRAMES, output_type="latent")

    # Also the time spent inside the DiT's forward during each pipeline call (hooks): the call's
    # time over that is the overhead measured within one run, which load on the machine cannot skew.
    inside: list[float] = []
    pre = pipe.transformer.register_forward_pre_hook(lambda m, a: inside.append(-time.perf_counter()))
    post = pipe.transformer.register_forward_hook(lambda m, a, o: inside.append(time.perf_counter()))
    reference()
    times = {"ours": [], "reference": [], "inside": []}
    for _ in range(repeats):
        for name, fn in (("ours", ours), ("reference", reference)):
            inside.clear()
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
            if name == "ours":
                times["inside"].append(sum(inside))
    pre.remove()
    post.remove()
    a, b = statistics.median(times["ours"]), statistics.median(times["reference"])
    within = statistics.median(o / i for o, i in zip(times["ours"], times["inside"]))
    print(f"\n### Sampler overhead ({STEPS} steps, 17x{SIZE}x{SIZE}, guidance batched, median of {repeats})\n")
    print("| sampler, one pipeline call (ms) | steps x one DiT forward (ms) | ratio | call / its own DiT forwards |")
    print("| ---: | ---: | ---: | ---: |")
    print(f"| {a * 1e3:.1f} | {b * 1e3:.1f} | {a / b:.3f} | {within:.4f} |")


# ---- 2. time per window ------------------------------------------------------------------------


def bench_windows(pipe, frames: int = 257, repeats: int = 3) -> None:
    def one_run() -> list[float]:
        marks: list[float] = []  # time of each window's last step
        decoded: list[float] = []  # time of each decoded latent frame

        def on_step(p, step, sigma, kwargs):
            if step == STEPS - 1:
                marks.append(time.perf_counter())
            return {}

        start = time.perf_counter()
        run_pipe(pipe, frames, callback_on_step_end=on_step, on_frames=lambda f: decoded.append(time.perf_counter()))
        end = time.perf_counter()
        # A window runs from the last frame decoded from the window before it to the last frame
        # decoded from it: its denoising steps plus the decoding of its new latent frames.
        ends = []
        for i, last_step in enumerate(marks):
            next_step = marks[i + 1] if i + 1 < len(marks) else end
            ends.append(max([d for d in decoded if last_step <= d <= next_step], default=last_step))
        return [b - a for a, b in zip([start] + ends[:-1], ends)]

    run_pipe(pipe, NATIVE_FRAMES, on_frames=lambda f: None)  # warm-up
    runs = [one_run() for _ in range(repeats)]
    per_window = [statistics.median(r[i] for r in runs) for i in range(len(runs[0]))]
    print(f"\n### Long video: time per window ({frames} frames, {len(per_window)} windows of "
          f"{NATIVE_FRAMES} frames, {CONTEXT} latent frames of context, median of {repeats} runs)\n")
    print("| window | " + " | ".join(str(i + 1) for i in range(len(per_window))) + " |")
    print("| --- |" + " ---: |" * len(per_window))
    print("| ms | " + " | ".join(f"{t * 1e3:.0f}" for t in per_window) + " |")
    if len(per_window) >= 16:
        print(f"\nwindow 16 / window 1: {per_window[15] / per_window[0]:.3f}; median of windows 2..{len(per_window)} "
              f"/ window 1: {statistics.median(per_window[1:]) / per_window[0]:.3f}")


# ---- 3. peak memory ----------------------------------------------------------------------------


def rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize() / 2**20


def measure_child(frames: int) -> None:
    """In a fresh process: load, warm up on one window, then make `frames` into an mp4."""
    from pipelines.video_io import VideoWriter

    torch.set_num_threads(2)
    pipe = build_pipeline()
    run_pipe(pipe, NATIVE_FRAMES, on_frames=lambda f: None)
    before = rss_mb()
    with tempfile.TemporaryDirectory() as tmp:  # peak RSS: a plain run (the profiler keeps its own records)
        writer = VideoWriter(Path(tmp) / "clip.mp4", fps=8)
        run_pipe(pipe, frames, on_frames=writer.write)
        writer.close()
    peak_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:  # peak of live tensors
        run_pipe(pipe, frames, on_frames=lambda f: None)
    events = sorted((e.time_range.start, e.self_cpu_memory_usage) for e in prof.events() if e.self_cpu_memory_usage)
    live = peak = 0
    for _, delta in events:
        live += delta
        peak = max(peak, live)
    print(json.dumps({"frames": frames, "rss_before_mb": before, "peak_rss_mb": peak_rss,
                      "tensor_peak_mb": peak / 2**20}))


def bench_memory(sizes=(33, 65, 129, 257)) -> None:
    from pipelines.long_video import plan_windows

    rows = []
    for frames in sizes:
        out = subprocess.run([sys.executable, __file__, "--child", str(frames)], capture_output=True, text=True)
        if out.returncode:
            raise SystemExit(out.stderr)
        rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
    base = rows[0]
    print("\n### Long video: peak memory (each length in a fresh process, streamed to an mp4)\n")
    print("| frames | windows | peak RSS above loaded model (MB) | ratio to 33 | peak live tensors (MB) | ratio to 33 |")
    print("| ---: | ---: | ---: | ---: | ---: | ---: |")
    for r in rows:
        windows = len(plan_windows(1 + (r["frames"] - 1) // 4, 1 + (NATIVE_FRAMES - 1) // 4, 0, CONTEXT))
        above, base_above = r["peak_rss_mb"] - r["rss_before_mb"], base["peak_rss_mb"] - base["rss_before_mb"]
        print(f"| {r['frames']} | {windows} | {above:.1f} | {above / base_above:.2f} | {r['tensor_peak_mb']:.1f} | "
              f"{r['tensor_peak_mb'] / base['tensor_peak_mb']:.2f} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", choices=["sampler", "windows", "memory"], default=None)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--window-repeats", type=int, default=3, help="runs of the 257-frame clip")
    parser.add_argument("--child", type=int, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child is not None:
        measure_child(args.child)
        return
    torch.set_num_threads(2)
    pipe = build_pipeline() if args.only in (None, "sampler", "windows") else None
    if args.only in (None, "sampler"):
        bench_sampler(pipe, args.repeats)
    if args.only in (None, "windows"):
        bench_windows(pipe, repeats=args.window_repeats)
    if args.only in (None, "memory"):
        bench_memory()


if __name__ == "__main__":
    main()
