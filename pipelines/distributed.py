"""Processes, engines and sharded EMA: everything the training loop needs to know about parallelism.

The loop talks to one small interface, `Engine`, whatever runs underneath:

    engine.model(...)        forward (the module, or the DeepSpeed engine that wraps it)
    engine.backward(loss)    backward of one micro-batch (scaled by 1 / grad_accum)
    engine.step() -> bool    True when this micro-step ended an optimizer step (clip, step, LR, zero)
    engine.save(dir) / engine.load(dir)   model + optimizer + LR schedule of this rank

`Engine` is plain PyTorch: one process, or several averaging their gradients with one all-reduce
(data parallel). `DeepSpeedEngine` hands the same calls to a DeepSpeed ZeRO engine (stage 0-3).
`ShardedEMA` keeps an exponential moving average of the trainable weights in which every rank holds
only its 1/N slice of each tensor (the same slice ZeRO-3 gives it), so EMA memory shrinks with the
number of processes too.

Processes are started by `spacetime train --nproc N` (see `launch_local`), by `torchrun`, or by the
DeepSpeed launcher; all three set the standard RANK / WORLD_SIZE / LOCAL_RANK / MASTER_ADDR /
MASTER_PORT variables that `init_process` reads.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from pipelines.errors import UserError

# ------------------------------------------------------------------------------------------------
# DeepSpeed's checkpoint files are pickles: load them tensors-only
# ------------------------------------------------------------------------------------------------


@contextlib.contextmanager
def tensors_only_unpickling():
    """Within this block, every `torch.load` (DeepSpeed's checkpoint engine and zero_to_fp32 call it
    with weights_only=False) runs with weights_only=True: tensors, containers and the record types a
    ZeRO checkpoint holds (loss scalers, the ZeRO stage, fragment addresses) may be rebuilt, and a
    file that asks for anything else (code) is refused with a UserError naming it, not run."""
    import pickle
    import warnings

    from deepspeed.runtime.fp16.loss_scaler import DynamicLossScaler, LossScaler
    from deepspeed.runtime.zero.config import ZeroStageEnum
    from deepspeed.utils.tensor_fragment import fragment_address

    real_load = torch.load

    def load(f, *args, **kwargs):
        kwargs["weights_only"] = True
        try:
            with warnings.catch_warnings():  # torch warns of the pickle protocol a hostile file may use
                warnings.filterwarnings("ignore", message="Detected pickle protocol")
                return real_load(f, *args, **kwargs)
        except pickle.UnpicklingError:
            raise UserError(f"{f}: refused to load: it holds Python objects other than tensors and ZeRO "
                            f"checkpoint records; only checkpoints that spacetime train wrote load") from None

    torch.load = load
    try:
        with torch.serialization.safe_globals([LossScaler, DynamicLossScaler, ZeroStageEnum, fragment_address]):
            yield
    finally:
        torch.load = real_load


# ------------------------------------------------------------------------------------------------
# Processes
# ------------------------------------------------------------------------------------------------


@dataclass
class World:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def init_process() -> World:
    """Join the process group the launcher set up (NCCL on CUDA, gloo on CPU); one process: no group."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = torch.device("cpu")
    if torch.cuda.is_available():
        device = torch.device("cuda", local_rank % torch.cuda.device_count())
        torch.cuda.set_device(device)
    if world_size > 1 and not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        dist.init_process_group(backend=backend, rank=rank, world_size=world_size)
    return World(rank, world_size, local_rank, device)


def barrier(world: World) -> None:
    if world.distributed:
        dist.barrier()


def broadcast_object(world: World, obj):
    """Rank 0's `obj` on every rank."""
    if not world.distributed:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def all_mean(world: World, value: float) -> float:
    """The mean of a float over ranks (for logging the loss of the whole batch)."""
    if not world.distributed:
        return value
    t = torch.tensor([value], dtype=torch.float64, device=world.device if world.device.type == "cuda" else "cpu")
    dist.all_reduce(t)
    return t.item() / world.world_size


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch_local(argv: list[str], nproc: int) -> int:
    """Run `python -m pipelines.cli ARGV` in `nproc` local processes with the torch.distributed
    environment set; return the first non-zero exit status (the others are then stopped)."""
    port = free_port()
    procs = []
    for rank in range(nproc):
        env = dict(os.environ, MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank),
                   LOCAL_RANK=str(rank), WORLD_SIZE=str(nproc), LOCAL_WORLD_SIZE=str(nproc))
        if torch.cuda.device_count() == 0:
            threads = max(1, (os.cpu_count() or 1) // nproc)
            env.setdefault("OMP_NUM_THREADS", str(threads))
        procs.append(subprocess.Popen([sys.executable, "-m", "pipelines.cli", *argv], env=env))
    status = 0
    try:
        while procs:
            for p in list(procs):
                code = p.poll()
                if code is None:
                    continue
                procs.remove(p)
                if code != 0 and status == 0:
                    status = code
                    for other in procs:  # one rank failed: the others would wait on it forever
                        other.terminate()
            time.sleep(0.1)
    except KeyboardInterrupt:
        for p in procs:
            p.terminate()
        raise
    return status


# ------------------------------------------------------------------------------------------------
# Engines
# ------------------------------------------------------------------------------------------------


class Engine:
    """Plain PyTorch: AdamW + LR schedule + clipping + gradient accumulation; data parallel over
    ranks by averaging gradients with one flat all-reduce per optimizer step."""

    def __init__(self, module, optimizer, scheduler, world: World, grad_clip: float = 1.0, grad_accum: int = 1,
                 name: str = "model"):
        self.name = name  # checkpoint files: NAME.safetensors, then optimizer / engine state beside it
        self.module = module
        self.model = module
        self.optimizer = optimizer
        self.scheduler = scheduler
        self.world = world
        self.grad_clip = grad_clip
        self.grad_accum = grad_accum
        self.micro_steps = 0
        self.grad_norm: float | None = None
        self.params = [p for p in module.parameters() if p.requires_grad]

    @property
    def lr(self) -> float:
        return self.scheduler.get_last_lr()[0]

    def set_base_lr(self, lr: float) -> float | None:
        """Make `lr` the schedule's base learning rate. A checkpoint restores the one its run had, so a
        resumed run calls this with its config's: returns the old rate when it changed, else None."""
        old = float(self.scheduler.base_lrs[0])
        if math.isclose(old, lr, rel_tol=1e-9, abs_tol=0.0):
            return None
        factor = self.scheduler.lr_lambdas[0](self.scheduler.last_epoch)
        self.scheduler.base_lrs = [lr] * len(self.scheduler.base_lrs)
        for group in self.optimizer.param_groups:
            group["initial_lr"] = lr
            group["lr"] = lr * factor
        self.scheduler._last_lr = [group["lr"] for group in self.optimizer.param_groups]
        return old

    def backward(self, loss: torch.Tensor) -> None:
        (loss / self.grad_accum).backward()

    def step(self) -> bool:
        self.micro_steps += 1
        if self.micro_steps % self.grad_accum:
            return False
        if self.world.distributed:
            self._average_gradients()
        norm = torch.nn.utils.clip_grad_norm_(self.params, self.grad_clip if self.grad_clip > 0 else math.inf)
        self.grad_norm = float(norm)
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        return True

    def _average_gradients(self) -> None:
        grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in self.params]
        flat = torch.cat([g.reshape(-1) for g in grads])
        dist.all_reduce(flat)
        flat /= self.world.world_size
        offset = 0
        for p in self.params:
            n = p.numel()
            p.grad = flat[offset : offset + n].view_as(p).clone()
            offset += n

    def local_shard(self, p: torch.Tensor) -> torch.Tensor:
        """This rank's flat 1/N slice of parameter `p` (zero-padded at the end)."""
        part = math.ceil(p.numel() / self.world.world_size)
        flat = p.detach().reshape(-1)[self.world.rank * part : (self.world.rank + 1) * part]
        return torch.nn.functional.pad(flat, (0, part - flat.numel()))

    # checkpoint: model weights, optimizer state and LR schedule, as safetensors + JSON
    def _files(self, folder: Path) -> tuple[Path, Path, Path]:
        """(weights, optimizer state, engine state): model.safetensors, optimizer.safetensors and
        engine.json for the model; NAME.safetensors, NAME.optimizer.safetensors, NAME.engine.json otherwise."""
        if self.name == "model":
            return folder / "model.safetensors", folder / "optimizer.safetensors", folder / "engine.json"
        return (folder / f"{self.name}.safetensors", folder / f"{self.name}.optimizer.safetensors",
                folder / f"{self.name}.engine.json")

    def saved_in(self, folder: Path) -> bool:
        return all(f.is_file() for f in self._files(folder))

    def save(self, folder: Path) -> None:
        if not self.world.is_main:
            return
        weights, optimizer, engine = self._files(folder)
        save_file(_contiguous(self.module.state_dict()), weights)
        tensors, meta = _flatten_optimizer(self.optimizer.state_dict())
        save_file(tensors, optimizer)
        state = {"optimizer": meta, "scheduler": self.scheduler.state_dict(), "micro_steps": self.micro_steps}
        engine.write_text(json.dumps(state))

    def load(self, folder: Path) -> None:
        weights, optimizer, engine = self._files(folder)
        if not weights.is_file():
            if self.name == "model":
                raise UserError(f"{folder} was written by a DeepSpeed run; resume it with the same deepspeed config")
            raise UserError(f"{folder} has no {weights.name}; resume with the config the run was saved with")
        missing, unexpected = self.module.load_state_dict(load_file(weights), strict=False)
        if missing or unexpected:
            raise UserError(f"{folder}: the checkpoint's weights do not fit this model "
                            f"(missing {missing[:3]}, unexpected {unexpected[:3]}); resume with the config it was saved with")
        state = json.loads(engine.read_text())
        self.optimizer.load_state_dict(_unflatten_optimizer(load_file(optimizer), state["optimizer"]))
        self.scheduler.load_state_dict(state["scheduler"])
        self.micro_steps = state["micro_steps"]


class DeepSpeedEngine(Engine):
    """The same interface over `deepspeed.initialize` with a ZeRO config (stage 0, 1, 2 or 3)."""

    def __init__(self, module, optimizer, scheduler, world: World, ds_config: dict):
        import deepspeed

        _quiet_deepspeed()
        super().__init__(module, optimizer, scheduler, world, ds_config.get("gradient_clipping", 0.0),
                         ds_config["gradient_accumulation_steps"])
        self.stage = int(ds_config.get("zero_optimization", {}).get("stage", 0))
        self.model, self.optimizer, _, self.scheduler = deepspeed.initialize(
            model=module, optimizer=optimizer, lr_scheduler=scheduler, config=ds_config,
            dist_init_required=not dist.is_initialized())
        self.module = self.model.module

    def backward(self, loss: torch.Tensor) -> None:
        self.model.backward(loss)  # DeepSpeed scales by 1 / gradient_accumulation_steps

    def step(self) -> bool:
        boundary = self.model.is_gradient_accumulation_boundary()
        self.model.step()
        self.micro_steps += 1
        if boundary:
            norm = self.model.get_global_grad_norm()
            self.grad_norm = None if norm is None else float(norm)
        return boundary

    def local_shard(self, p: torch.Tensor) -> torch.Tensor:
        if self.stage == 3:
            return p.ds_tensor.detach().reshape(-1)  # ZeRO-3 already keeps exactly this slice
        return super().local_shard(p)

    def save(self, folder: Path) -> None:
        self.model.save_checkpoint(str(folder), tag="zero", client_state={"micro_steps": self.micro_steps},
                                   save_latest=False)

    def load(self, folder: Path) -> None:
        if not (folder / "zero").is_dir():
            raise UserError(f"{folder} was written without DeepSpeed; resume it without a deepspeed config")
        with tensors_only_unpickling():
            path, client = self.model.load_checkpoint(str(folder), tag="zero", load_optimizer_states=True,
                                                      load_lr_scheduler_states=True)
        if path is None:
            raise UserError(f"{folder}/zero could not be loaded as a DeepSpeed checkpoint")
        self.micro_steps = int(client.get("micro_steps", 0))


def deepspeed_config(path: str | os.PathLike, world: World, batch_size: int, grad_accum: int, grad_clip: float) -> dict:
    """Read a ZeRO JSON config and fill in the batch, accumulation and clipping from the training
    config; raise UserError if it cannot work with this number of processes."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"DeepSpeed config {path} not found; use one of configs/deepspeed/zero{{1,2,3}}.json")
    try:
        cfg = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise UserError(f"DeepSpeed config {path} is not valid JSON: {err}") from None
    n = world.world_size
    want = batch_size * grad_accum * n
    if "train_batch_size" in cfg and cfg["train_batch_size"] != want:
        raise UserError(
            f"{path}: train_batch_size={cfg['train_batch_size']} does not fit {n} process(es) x batch "
            f"{batch_size} x accumulation {grad_accum} = {want}; remove it (it is derived) or set it to {want}")
    for key, ours in (("train_micro_batch_size_per_gpu", batch_size), ("gradient_accumulation_steps", grad_accum)):
        if key in cfg and cfg[key] != ours:
            raise UserError(f"{path}: {key}={cfg[key]} disagrees with the training config ({ours}); remove it from the JSON")
    zero = cfg.get("zero_optimization", {})
    stage = zero.get("stage", 0)
    if stage not in (0, 1, 2, 3):
        raise UserError(f"{path}: zero_optimization.stage={stage!r}; expected 0, 1, 2 or 3")
    for key in ("zero_hpz_partition_size", "mics_shard_size"):
        size = zero.get(key, 1 if key == "zero_hpz_partition_size" else -1)
        if size > 1 and n % size:
            raise UserError(f"{path}: zero_optimization.{key}={size} does not divide the {n} process(es); "
                            f"use a divisor of {n} or run with a multiple of {size} processes")
    if world.device.type != "cuda":
        for key in ("fp16", "bf16"):
            if cfg.get(key, {}).get("enabled"):
                raise UserError(f"{path}: {key}.enabled needs a GPU; on CPU use precision: bf16 in the training config")
    cfg.update(train_micro_batch_size_per_gpu=batch_size, gradient_accumulation_steps=grad_accum,
               train_batch_size=want, gradient_clipping=grad_clip)
    cfg.setdefault("steps_per_print", 10**9)
    cfg.setdefault("wall_clock_breakdown", False)
    return cfg


def _quiet_deepspeed() -> None:
    """DeepSpeed logs every step at INFO; keep warnings. On CPU, skip its shared-memory all-reduce
    kernel, which is compiled on first use (minutes) and only speeds up large CPU runs: gloo is used."""
    import logging
    import warnings

    import deepspeed.comm.torch as ds_torch
    from deepspeed.utils import logger

    logger.setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", category=FutureWarning, module=r"torch\.distributed")
    if not torch.cuda.is_available():
        ds_torch.build_shm_op = lambda: None


# ------------------------------------------------------------------------------------------------
# Sharded EMA
# ------------------------------------------------------------------------------------------------


class ShardedEMA:
    """EMA of the trainable parameters; each rank averages only its flat 1/N slice of each tensor."""

    def __init__(self, engine: Engine, decay: float):
        self.engine = engine
        self.decay = decay
        self.names = [n for n, p in engine.module.named_parameters() if p.requires_grad]
        self.params = [p for p in engine.module.parameters() if p.requires_grad]
        self.shapes = [tuple(getattr(p, "ds_shape", p.shape)) for p in self.params]
        self.shards = [engine.local_shard(p).float().clone() for p in self.params]

    @torch.no_grad()
    def update(self) -> None:
        shards = [self.engine.local_shard(p).float() for p in self.params]
        torch._foreach_lerp_(self.shards, shards, 1.0 - self.decay)

    def full_state_dict(self) -> dict[str, torch.Tensor] | None:
        """Gather the whole EMA onto rank 0 (every rank must call this); None on other ranks."""
        world = self.engine.world
        out = {}
        for name, shape, shard in zip(self.names, self.shapes, self.shards):
            if world.distributed:
                parts = [torch.empty_like(shard) for _ in range(world.world_size)]
                dist.all_gather(parts, shard)
                flat = torch.cat(parts)
            else:
                flat = shard
            if world.is_main:
                out[name] = flat[: math.prod(shape)].view(shape).clone()
        return out if world.is_main else None

    def save(self, folder: Path) -> None:
        state = self.full_state_dict()
        if state is not None:
            save_file(state, folder / "ema.safetensors")

    def load(self, folder: Path) -> None:
        world = self.engine.world
        with safe_open(folder / "ema.safetensors", framework="pt") as f:
            for i, name in enumerate(self.names):
                flat = f.get_tensor(name).reshape(-1)
                part = self.shards[i].numel()
                piece = flat[world.rank * part : (world.rank + 1) * part]
                self.shards[i] = torch.nn.functional.pad(piece, (0, part - piece.numel())).float()


# ------------------------------------------------------------------------------------------------
# Optimizer state as safetensors + JSON
# ------------------------------------------------------------------------------------------------


def _contiguous(state: dict) -> dict:
    return {k: v.detach().contiguous() for k, v in state.items()}


def _flatten_optimizer(state: dict) -> tuple[dict, dict]:
    tensors, scalars = {}, {}
    for index, values in state["state"].items():
        for key, value in values.items():
            if torch.is_tensor(value):
                tensors[f"{index}.{key}"] = value.detach().contiguous()
            else:
                scalars[f"{index}.{key}"] = value
    return tensors, {"param_groups": state["param_groups"], "scalars": scalars}


def _unflatten_optimizer(tensors: dict, meta: dict) -> dict:
    state: dict = {}
    for flat, value in list(tensors.items()) + list(meta["scalars"].items()):
        index, key = flat.split(".", 1)
        state.setdefault(int(index), {})[key] = value
    return {"state": state, "param_groups": meta["param_groups"]}


@contextlib.contextmanager
def autocast(device: torch.device, dtype: torch.dtype | None):
    """bf16 autocast on `device` when dtype is set; otherwise nothing."""
    if dtype is None:
        yield
    else:
        with torch.autocast(device_type=device.type, dtype=dtype):
            yield
