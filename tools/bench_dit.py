"""Benchmark VideoDiT on CPU: against diffusers' WanTransformer3DModel, against the machine's
matmul speed, and factorized against full attention.

    python tools/bench_dit.py                       # all three tables
    python tools/bench_dit.py --only wan --repeats 5

Tables (markdown, for docs/performance.md):
1. VideoDiT (full attention, cross-attention text) vs WanTransformer3DModel at the same width,
   depth, heads, MLP width, video tokens and text tokens: forward and forward+backward time,
   fp32 and bf16 (weights cast with .to), runs interleaved in one process, median of --repeats.
2. Achieved GFLOP/s of the B preset (forward, >= 1k tokens; FLOPs = 2 x multiply-adds from
   video_dit.flops) divided by this machine's matmul GFLOP/s measured in the same run.
3. Factorized vs full attention over 5, 9, 17, 33 latent frames: forward time, forward+backward
   time, and peak memory (each size in a fresh process, peak RSS above the idle process).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from video_dit import PRESETS, VideoDiT  # noqa: E402
from video_dit.flops import count_flops  # noqa: E402

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def forward_fn(model_call):
    def run():
        with torch.no_grad():
            model_call()

    return run


def train_fn(model, model_call):
    def run():
        model.zero_grad(set_to_none=True)
        model_call().float().square().mean().backward()

    return run


def matmul_gflops(dtype: torch.dtype, m: int = 1280, k: int = 768, n: int = 3072) -> float:
    """GFLOP/s of one (m, k) @ (k, n) product, the shape of a DiT MLP layer at ~1k tokens (median of 5:
    on a shared machine the best of a few short runs would catch quiet moments a long forward does not)."""
    a, b = torch.randn(m, k, dtype=dtype), torch.randn(k, n, dtype=dtype)
    torch.mm(a, b)
    typical = statistics.median(timed(lambda: torch.mm(a, b)) for _ in range(5))
    return 2 * m * k * n / typical / 1e9


def randomize(model):
    """Non-zero weights everywhere, so no path is skipped or trivially cheap."""
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0.0, 0.02)
    return model


# --------------------------------------------------------------------------------------------
# 1. VideoDiT vs Wan
# --------------------------------------------------------------------------------------------


def bench_wan(args) -> str:
    from diffusers import WanTransformer3DModel

    d, heads, depth = args.width, args.heads, args.depth
    frames, size, text_tokens, text_dim = 5, 32, 64, 384
    rows = []
    for dname, dtype in DTYPES.items():
        ours = randomize(
            VideoDiT(in_channels=16, hidden_size=d, depth=depth, num_heads=heads, mlp_ratio=4.0, text_dims=(text_dim,))
        ).to(dtype)
        wan = randomize(
            WanTransformer3DModel(
                patch_size=(1, 2, 2), num_attention_heads=heads, attention_head_dim=d // heads, in_channels=16,
                out_channels=16, text_dim=text_dim, ffn_dim=4 * d, num_layers=depth, cross_attn_norm=True,
                qk_norm="rms_norm_across_heads",
            )
        ).to(dtype)
        x = torch.randn(1, 16, frames, size, size, dtype=dtype)
        text = torch.randn(1, text_tokens, text_dim, dtype=dtype)
        t = torch.rand(1)
        calls = {
            "ours": (ours, lambda: ours(x, t, [text])),
            "wan": (wan, lambda: wan(x, t * 1000, text, return_dict=False)[0]),
        }
        if dname == "fp32":  # Wan's MLP uses the tanh GELU: time that variant of ours too
            ours_tanh = randomize(
                VideoDiT(in_channels=16, hidden_size=d, depth=depth, num_heads=heads, mlp_ratio=4.0,
                         text_dims=(text_dim,), gelu_approximate="tanh")
            )
            calls["ours_tanh"] = (ours_tanh, lambda: ours_tanh(x, t, [text]))
        for mode in ("forward", "forward+backward"):
            fns = {
                k: forward_fn(c) if mode == "forward" else train_fn(m, c) for k, (m, c) in calls.items()
            }
            for fn in fns.values():  # warm-up
                fn()
            times = {k: [] for k in fns}
            for _ in range(args.repeats):  # interleaved: ours, wan, (ours tanh), ours, wan, ...
                for k, fn in fns.items():
                    times[k].append(timed(fn))
            med = {k: statistics.median(v) for k, v in times.items()}
            # the speed-up is the median of the back-to-back ratios: robust to load that drifts
            paired = {k: statistics.median(w / o for w, o in zip(times["wan"], times[k])) for k in times}
            tanh = (f"{med['ours_tanh'] * 1e3:.0f} | {paired['ours_tanh']:.2f}x"
                    if "ours_tanh" in med else "- | -")
            rows.append(
                f"| {dname} | {mode} | {med['ours'] * 1e3:.0f} | {med['wan'] * 1e3:.0f} "
                f"| **{paired['ours']:.2f}x** | {tanh} |"
            )
            print(rows[-1], flush=True)
        del calls
    tokens = frames * (size // 2) ** 2
    head = (
        f"Width {d}, {heads} heads, depth {depth}, MLP {4 * d}, {tokens} video tokens (16x{frames}x{size}x{size} latent, "
        f"patch 1x2x2), {text_tokens} text tokens of width {text_dim}; batch 1; {torch.get_num_threads()} threads; "
        f"median of {args.repeats} interleaved runs; speed = median over rounds of Wan's time / ours in that round.\n\n"
        "| dtype | pass | VideoDiT ms | Wan ms | speed vs Wan | VideoDiT with tanh GELU ms | its speed vs Wan |\n"
        "|---|---|---|---|---|---|---|\n"
    )
    return head + "\n".join(rows)


# --------------------------------------------------------------------------------------------
# 2. Achieved GFLOP/s vs matmul GFLOP/s
# --------------------------------------------------------------------------------------------


def bench_efficiency(args) -> str:
    frames, size, text_tokens = 5, 32, 64
    rows = []
    for dname in args.efficiency_dtypes.split(","):
        dtype = DTYPES[dname]
        model = randomize(VideoDiT(in_channels=16, text_dims=(384,), **PRESETS["B"])).to(dtype)
        x = torch.randn(1, 16, frames, size, size, dtype=dtype)
        text = [torch.randn(1, text_tokens, 384, dtype=dtype)]
        t = torch.rand(1)
        flops = count_flops(model, frames, size, size, text_tokens)["flops"]
        fwd = forward_fn(lambda: model(x, t, [*text]))
        fwd()
        model_times, mm = [], []
        for _ in range(args.repeats):  # interleave the matmul probe with the model runs
            mm.append(matmul_gflops(dtype))
            model_times.append(timed(fwd))
        achieved = flops / statistics.median(model_times) / 1e9
        peak = statistics.median(mm)
        rows.append(
            f"| {dname} | {flops / 1e9:.1f} | {statistics.median(model_times) * 1e3:.0f} | {achieved:.1f} | {peak:.1f} "
            f"| {achieved / peak:.2f} |"
        )
        print(rows[-1], flush=True)
        del model
    head = (
        f"B preset (width 768, depth 12, 12 heads), full attention, {frames * (size // 2) ** 2} video tokens + "
        f"{text_tokens} text tokens, forward, batch 1, {torch.get_num_threads()} threads. Matmul probe: "
        f"(1280x768)@(768x3072), median of 5 per round, median over the rounds.\n\n"
        "| dtype | GFLOP per forward | forward ms | achieved GFLOP/s | matmul GFLOP/s | ratio |\n"
        "|---|---|---|---|---|---|\n"
    )
    return head + "\n".join(rows)


# --------------------------------------------------------------------------------------------
# 3. Factorized vs full attention
# --------------------------------------------------------------------------------------------


def _rss_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def peak_mib(fn) -> float:
    """Peak resident memory added while fn runs (Linux: the high-water mark is reset first)."""
    base = _rss_kib("VmRSS")
    Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM to the current RSS
    fn()
    return (_rss_kib("VmHWM") - base) / 1024


def _factorized_worker(spec: dict) -> dict:
    """Runs in a fresh process: time and peak memory of one (attention, frames) point."""
    torch.set_num_threads(spec["threads"])
    model = randomize(
        VideoDiT(in_channels=16, attention=spec["attention"], text_dims=(384,), hidden_size=spec["width"],
                 depth=spec["depth"], num_heads=spec["heads"])
    )
    x = torch.randn(1, 16, spec["frames"], spec["size"], spec["size"])
    text = torch.randn(1, 64, 384)
    t = torch.rand(1)
    fwd = forward_fn(lambda: model(x, t, [text]))
    mem_fwd = peak_mib(fwd)
    forward = statistics.median(timed(fwd) for _ in range(spec["repeats"]))
    train = train_fn(model, lambda: model(x, t, [text]))
    mem_train = peak_mib(train)
    backward = statistics.median(timed(train) for _ in range(max(1, spec["repeats"] - 1)))
    return dict(forward=forward, train=backward, mem_fwd=mem_fwd, mem_train=mem_train)


def bench_factorized(args) -> str:
    size = 32  # 16x16 = 256 tokens per latent frame
    rows = []
    for frames in (5, 9, 17, 33):
        result = {}
        for attention in ("full", "factorized"):
            spec = dict(attention=attention, frames=frames, size=size, width=args.width, depth=args.depth,
                        heads=args.heads, threads=torch.get_num_threads(), repeats=args.repeats)
            # a fixed mmap threshold makes glibc hand large blocks back on free, so RSS follows live tensors
            env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536"}
            out = subprocess.run(
                [sys.executable, __file__, "--worker", json.dumps(spec)], capture_output=True, text=True, check=True,
                env=env,
            )
            result[attention] = json.loads(out.stdout.strip().splitlines()[-1])
        f, g = result["full"], result["factorized"]
        rows.append(
            f"| {frames} | {frames * 256} | {f['forward'] * 1e3:.0f} | {g['forward'] * 1e3:.0f} "
            f"| {f['forward'] / g['forward']:.2f}x | {f['train'] * 1e3:.0f} | {g['train'] * 1e3:.0f} "
            f"| {f['train'] / g['train']:.2f}x | {f['mem_fwd']:.0f} / {g['mem_fwd']:.0f} "
            f"| {f['mem_train']:.0f} / {g['mem_train']:.0f} |"
        )
        print(rows[-1], flush=True)
    head = (
        f"Width {args.width}, {args.heads} heads, depth {args.depth}, 16x16 tokens per latent frame, 64 text tokens, "
        f"fp32, batch 1, {torch.get_num_threads()} threads; each point in a fresh process; memory = peak RSS added "
        f"during the first pass (Linux VmHWM reset before it, glibc mmap threshold fixed). Speed-up > 1 means factorized is faster.\n\n"
        "| latent frames | tokens | full fwd ms | factorized fwd ms | speed-up | full fwd+bwd ms "
        "| factorized fwd+bwd ms | speed-up | fwd peak MiB full / fact. | fwd+bwd peak MiB full / fact. |\n"
        "|---|---|---|---|---|---|---|---|---|---|\n"
    )
    return head + "\n".join(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--width", type=int, default=384)
    parser.add_argument("--heads", type=int, default=6)
    parser.add_argument("--efficiency-dtypes", default="fp32", help="comma list of fp32,bf16 for table 2")
    parser.add_argument("--depth", type=int, default=2)
    parser.add_argument("--only", choices=["wan", "efficiency", "factorized"], default=None)
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(_factorized_worker(json.loads(args.worker))))
        return
    torch.set_num_threads(args.threads)
    os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))
    sections = [("VideoDiT vs WanTransformer3DModel", bench_wan), ("Achieved vs matmul GFLOP/s", bench_efficiency),
                ("Factorized vs full attention", bench_factorized)]
    for title, fn in sections:
        if args.only and fn.__name__ != f"bench_{args.only}":
            continue
        print(f"\n### {title}\n", flush=True)
        print(fn(args), flush=True)


if __name__ == "__main__":
    main()
