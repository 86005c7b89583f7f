"""Benchmark: CausalVideoVAE against diffusers' AutoencoderKLWan with the same layout and weights.

Both models are built in this process with the Wan 2.1 layout (96 channels, multipliers
(1, 2, 4, 4), 2 residual blocks, 16 latent channels); ours receives Wan's random weights through
the key mapping, so they compute the same function (the max difference is printed as a check).
Runs alternate (ours, Wan, ours, Wan, ...) so that load from other processes hits both alike;
each number is the median of --repeats runs at --threads threads, after one untimed warm-up round.

    python tools/bench_vae.py                         # speed at 17x128x128 and 33x256x256, memory, bf16
    python tools/bench_vae.py --cases 17x128x128 --repeats 3 --skip-memory --skip-bf16

Sections:
  speed   encode / decode frames per second, fp32, ours vs Wan, and the ratio.
  memory  peak resident memory added by decoding 17 and 129 frames (each in a fresh process),
          ours and Wan; the 129/17 ratio says whether memory grows with clip length.
  bf16    our model under CPU bf16 autocast vs fp32: time, and PSNR of the bf16 output against
          the fp32 output (the precision cost).
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

WAN_LAYOUT = dict(base_dim=96, z_dim=16, dim_mult=[1, 2, 4, 4], num_res_blocks=2)


def build(seed: int = 0):
    """(ours, wan): the same weights, ours through the key mapping."""
    from diffusers import AutoencoderKLWan

    from vae3d.wan import from_wan

    torch.manual_seed(seed)
    wan = AutoencoderKLWan(**WAN_LAYOUT).eval().requires_grad_(False)
    ours = from_wan(wan).eval().requires_grad_(False)
    return ours, wan


def clip(frames: int, size: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(1, 3, frames, size, size, generator=g) * 2 - 1


def timed(fn):
    """(wall seconds, process CPU seconds, result). CPU time counts this process's own work, so it
    moves less than wall time when other processes load the machine."""
    wall, cpu = time.perf_counter(), time.process_time()
    out = fn()
    return time.perf_counter() - wall, time.process_time() - cpu, out


def speed(ours, wan, frames: int, size: int, repeats: int) -> dict:
    x = clip(frames, size)
    names = ("ours_encode", "wan_encode", "ours_decode", "wan_decode")
    wall, cpu = {k: [] for k in names}, {k: [] for k in names}

    def record(name, fn):
        w, c, out = timed(fn)
        wall[name].append(w)
        cpu[name].append(c)
        return out

    with torch.inference_mode():
        ours.decode(wan.encode(x).latent_dist.mean)  # warm-up, not timed: oneDNN primitives, allocator
        wan.decode(ours.encode(x).mean)
        for _ in range(repeats):
            z_ours = record("ours_encode", lambda: ours.encode(x).mean)
            z_wan = record("wan_encode", lambda: wan.encode(x).latent_dist.mean)
            v_ours = record("ours_decode", lambda: ours.decode(z_wan))
            v_wan = record("wan_decode", lambda: wan.decode(z_wan).sample)
            print(f"  {frames}x{size}x{size} run (wall / cpu s): "
                  + ", ".join(f"{k} {wall[k][-1]:.1f} / {cpu[k][-1]:.1f}" for k in names), file=sys.stderr, flush=True)
    med = {k: statistics.median(v) for k, v in wall.items()}
    med_cpu = {k: statistics.median(v) for k, v in cpu.items()}
    return {
        "case": f"{frames}x{size}x{size}",
        "encode_fps_ours": frames / med["ours_encode"], "encode_fps_wan": frames / med["wan_encode"],
        "decode_fps_ours": frames / med["ours_decode"], "decode_fps_wan": frames / med["wan_decode"],
        "encode_ratio": med["wan_encode"] / med["ours_encode"], "decode_ratio": med["wan_decode"] / med["ours_decode"],
        "encode_ratio_cpu": med_cpu["wan_encode"] / med_cpu["ours_encode"],
        "decode_ratio_cpu": med_cpu["wan_decode"] / med_cpu["ours_decode"],
        "max_diff_latents": float((z_ours - z_wan).abs().max()), "max_diff_pixels": float((v_ours - v_wan).abs().max()),
        "wall_s": {k: [round(t, 3) for t in v] for k, v in wall.items()},
        "cpu_s": {k: [round(t, 3) for t in v] for k, v in cpu.items()},
    }


def _status_kb(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def memory_worker(which: str, frames: int, size: int, threads: int) -> dict:
    """In a fresh process holding only the model measured: the peak resident memory that one
    decode adds (Linux: the high-water mark is reset after the model is built)."""
    import ctypes
    import gc

    from diffusers import AutoencoderKLWan

    from vae3d import PRESETS, CausalVideoVAE

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    model = (CausalVideoVAE(**PRESETS["default"]) if which == "ours" else AutoencoderKLWan(**WAN_LAYOUT)).eval()
    z = torch.randn(1, 16, 1 + (frames - 1) // 4, size // 8, size // 8)
    gc.collect()
    ctypes.CDLL("libc.so.6").malloc_trim(0)  # give freed memory back, so the baseline is what is held
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # reset VmHWM to the current RSS
    base = _status_kb("VmRSS")
    with torch.inference_mode():
        out = model.decode(z) if which == "ours" else model.decode(z).sample
    peak = _status_kb("VmHWM")
    assert out.shape[2] == frames
    return {"which": which, "frames": frames, "size": size, "peak_added_mb": (peak - base) / 1024,
            "base_mb": base / 1024}


def memory(size: int, threads: int) -> dict:
    results = {}
    for which in ("ours", "wan"):
        for frames in (17, 129):
            cmd = [sys.executable, __file__, "--memory-worker", which, str(frames), str(size), str(threads)]
            proc = subprocess.run(cmd, capture_output=True, text=True, check=True)
            results[(which, frames)] = json.loads(proc.stdout.strip().splitlines()[-1])
    return {
        "size": size,
        **{f"{w}_{f}_mb": results[(w, f)]["peak_added_mb"] for w in ("ours", "wan") for f in (17, 129)},
        "ours_ratio_129_17": results[("ours", 129)]["peak_added_mb"] / results[("ours", 17)]["peak_added_mb"],
        "wan_ratio_129_17": results[("wan", 129)]["peak_added_mb"] / results[("wan", 17)]["peak_added_mb"],
    }


def bf16(ours, frames: int, size: int, repeats: int) -> dict:
    x = clip(frames, size)
    fp32_t, bf16_t = [], []
    with torch.inference_mode():
        ours.decode(ours.encode(x).mean)  # warm-up, not timed, in each precision
        with torch.autocast("cpu", dtype=torch.bfloat16):
            ours.decode(ours.encode(x).mean)
        for _ in range(repeats):
            t, _, ref = timed(lambda: ours.decode(ours.encode(x).mean))
            fp32_t.append(t)
            with torch.autocast("cpu", dtype=torch.bfloat16):
                t, _, low = timed(lambda: ours.decode(ours.encode(x).mean))
            bf16_t.append(t)
    mse = float((low.float() - ref).square().mean())
    return {
        "case": f"{frames}x{size}x{size}", "fp32_s": statistics.median(fp32_t), "bf16_s": statistics.median(bf16_t),
        "speedup": statistics.median(fp32_t) / statistics.median(bf16_t),
        "psnr_bf16_vs_fp32_db": math.inf if mse == 0 else 10 * math.log10(4.0 / mse),
        "cpu_bf16_kernels": bool(torch.ops.mkldnn._is_mkldnn_bf16_supported()),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cases", nargs="*", default=["17x128x128", "33x256x256"], help="FRAMESxHxW")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--memory-size", type=int, default=64, help="frame size of the memory section")
    parser.add_argument("--bf16-case", default="17x128x128")
    parser.add_argument("--skip-memory", action="store_true")
    parser.add_argument("--skip-bf16", action="store_true")
    parser.add_argument("--json", default=None, help="also write the results to this JSON file")
    parser.add_argument("--memory-worker", nargs=4, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.memory_worker:
        which, frames, size, threads = args.memory_worker
        print(json.dumps(memory_worker(which, int(frames), int(size), int(threads))))
        return

    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {args.threads} threads, {args.repeats} runs per number (median)")
    ours, wan = build()
    report = {"speed": [], "memory": None, "bf16": None}
    print("\n| clip (TxHxW) | encode frames/s ours | Wan | ratio (wall) | ratio (CPU time) | decode frames/s ours "
          "| Wan | ratio (wall) | ratio (CPU time) | max diff |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for case in args.cases:
        frames, h, w = (int(v) for v in case.split("x"))
        assert h == w, "square frames only"
        r = speed(ours, wan, frames, h, args.repeats)
        report["speed"].append(r)
        print(f"| {r['case']} | {r['encode_fps_ours']:.2f} | {r['encode_fps_wan']:.2f} | {r['encode_ratio']:.2f}x "
              f"| {r['encode_ratio_cpu']:.2f}x | {r['decode_fps_ours']:.2f} | {r['decode_fps_wan']:.2f} "
              f"| {r['decode_ratio']:.2f}x | {r['decode_ratio_cpu']:.2f}x "
              f"| {max(r['max_diff_latents'], r['max_diff_pixels']):.1e} |", flush=True)
    if not args.skip_memory:
        m = memory(args.memory_size, args.threads)
        report["memory"] = m
        print(f"\n| decode peak memory added ({m['size']}x{m['size']}) | 17 frames | 129 frames | 129/17 |")
        print("|---|---|---|---|")
        for who in ("ours", "wan"):
            print(f"| {who} | {m[f'{who}_17_mb']:.0f} MB | {m[f'{who}_129_mb']:.0f} MB | "
                  f"{m[f'{who}_ratio_129_17']:.2f}x |", flush=True)
    if not args.skip_bf16:
        frames, h, _ = (int(v) for v in args.bf16_case.split("x"))
        b = bf16(ours, frames, h, max(1, min(args.repeats, 2)))
        report["bf16"] = b
        print(f"\n| bf16 autocast, encode+decode {b['case']} | fp32 | bf16 | speed-up | PSNR bf16 vs fp32 | "
              f"oneDNN bf16 kernels on this CPU |")
        print("|---|---|---|---|---|---|")
        print(f"| ours | {b['fp32_s']:.2f} s | {b['bf16_s']:.2f} s | {b['speedup']:.2f}x | "
              f"{b['psnr_bf16_vs_fp32_db']:.1f} dB | {b['cpu_bf16_kernels']} |", flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
