"""Benchmark: DiT training throughput and per-rank memory with ZeRO 0/1/2/3, two CPU processes.

For each DiT preset (tiny, S) and ZeRO stage, two processes (gloo) train the DiT through the same
engine the training loop uses (`pipelines.distributed.DeepSpeedEngine`, torch AdamW) on random
latents. Printed per configuration:

- samples/s over both ranks (median of the timed steps),
- model-state memory per rank: the bytes of every live tensor on rank 0 just after a backward pass
  (gradients present, activations freed, Adam states allocated), counted once per storage,
- the ZeRO paper's bytes-per-parameter formula for that stage (Rajbhandari et al. 2020, sec. 5),
  with fp32 parameters and gradients (4 bytes each, this is CPU fp32 training) and K = 12 bytes of
  optimizer state (fp32 master copy, Adam momentum and variance): stage 0: (4 + 4 + K) psi,
  1: 4 psi + 4 psi + K psi / N, 2: 4 psi + (4 + K) psi / N, 3: (4 + 4 + K) psi / N,
- the ratio measured / formula (<= 1.5 expected),
- the peak resident memory of rank 0 (the whole process: Python, torch, DeepSpeed, activations).

    python tools/bench_train.py [--presets tiny S] [--stages 0 1 2 3] [--steps 6] [--threads 1]
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def formula_bytes(stage: int, psi: int, n: int, k: int = 12) -> float:
    param, grad = 4 * psi, 4 * psi
    return {0: param + grad + k * psi, 1: param + grad + k * psi / n, 2: param + (4 + k) * psi / n,
            3: (param + grad + k * psi) / n}[stage]


def live_tensor_bytes() -> int:
    import torch

    seen, total = set(), 0
    for obj in gc.get_objects():
        try:
            if not isinstance(obj, torch.Tensor) or obj.device.type != "cpu":
                continue
            storage = obj.untyped_storage()
        except Exception:
            continue
        ptr = storage.data_ptr()
        if ptr and ptr not in seen:
            seen.add(ptr)
            total += storage.nbytes()
    return total


def worker(preset: str, stage: int, steps: int, batch: int, out: str) -> None:
    import torch

    from pipelines import distributed
    from video_dit import PRESETS, VideoDiT, flow

    world = distributed.init_process()
    torch.manual_seed(0)
    model = VideoDiT(in_channels=16, text_dims=(), **PRESETS[preset])
    psi = sum(p.numel() for p in model.parameters())
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 1.0)
    cfg = {"zero_optimization": {"stage": stage, "overlap_comm": False, "contiguous_gradients": True,
                                 # communication buckets of a quarter of the model: small next to the states
                                 "reduce_bucket_size": psi // 4, "allgather_bucket_size": psi // 4,
                                 "stage3_prefetch_bucket_size": psi // 4, "stage3_param_persistence_threshold": 1e4},
           "train_micro_batch_size_per_gpu": batch, "gradient_accumulation_steps": 1,
           "train_batch_size": batch * world.world_size, "gradient_clipping": 1.0, "steps_per_print": 10**9}
    engine = distributed.DeepSpeedEngine(model, optimizer, scheduler, world, cfg)
    g = torch.Generator().manual_seed(world.rank)
    x0 = torch.randn(batch, 16, 3, 8, 8, generator=g)
    times, state_bytes = [], 0
    for step in range(steps):
        tic = time.perf_counter()
        loss = flow.training_losses(engine.model, x0, {}, generator=g)["loss"]
        engine.backward(loss)
        if step == 2:
            gc.collect()
            state_bytes = live_tensor_bytes() - x0.untyped_storage().nbytes()
        engine.step()
        times.append(time.perf_counter() - tic)
    if world.is_main:
        rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        result = {"preset": preset, "stage": stage, "psi": psi, "world": world.world_size,
                  "samples_per_s": batch * world.world_size / statistics.median(times[2:]),
                  "state_bytes": state_bytes, "peak_rss": rss}
        Path(out).write_text(json.dumps(result))


def run_config(preset: str, stage: int, steps: int, batch: int, nproc: int, threads: int) -> dict:
    from pipelines.distributed import free_port

    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "result.json"
        port = free_port()
        procs = []
        for rank in range(nproc):
            env = dict(os.environ, MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), LOCAL_RANK=str(rank),
                       WORLD_SIZE=str(nproc), OMP_NUM_THREADS=str(threads))
            cmd = [sys.executable, __file__, "--worker", preset, str(stage), str(steps), str(batch), str(out)]
            procs.append(subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True))
        errors = [p.communicate()[1] for p in procs]
        if any(p.returncode for p in procs):
            raise RuntimeError(f"{preset} ZeRO-{stage} failed:\n" + "\n".join(e[-2000:] for e in errors))
        return json.loads(out.read_text())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--presets", nargs="+", default=["tiny", "S"])
    parser.add_argument("--stages", nargs="+", type=int, default=[0, 1, 2, 3])
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--nproc", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1, help="threads per process (2 processes x 1 = 2 threads)")
    parser.add_argument("--worker", nargs=5, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        preset, stage, steps, batch, out = args.worker
        worker(preset, int(stage), int(steps), int(batch), out)
        return
    print(f"DiT training, {args.nproc} CPU processes (gloo) x {args.threads} thread(s), batch {args.batch} per rank, "
          f"latents 16x3x8x8, fp32, torch AdamW; median of {args.steps - 2} steps")
    print("| preset | params | ZeRO | samples/s | model states / rank (MB) | formula (MB) | ratio | peak RSS rank 0 (MB) |")
    print("|---|---|---|---|---|---|---|---|")
    for preset in args.presets:
        for stage in args.stages:
            r = run_config(preset, stage, args.steps, args.batch, args.nproc, args.threads)
            f = formula_bytes(stage, r["psi"], r["world"])
            print(f"| {preset} | {r['psi'] / 1e6:.2f}M | {stage} | {r['samples_per_s']:.2f} | {r['state_bytes'] / 2**20:.1f} | "
                  f"{f / 2**20:.1f} | {r['state_bytes'] / f:.2f} | {r['peak_rss'] / 2**20:.0f} |", flush=True)


if __name__ == "__main__":
    main()
