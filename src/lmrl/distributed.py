"""Data parallel on torch.distributed, launched by torchrun (`torchrun --nproc_per_node N -m lmrl
train ...`, or `lmrl train --nproc N`, which runs that command).

Every rank draws the same B prompts (the same generator, in the same state on every rank) and
keeps its B/world share, so every group lives on one rank and Δ needs no communication. The
sampling noise is the noise one process would draw for those prompts (the policies' `rows`;
a causal LM's ranks also agree on the longest response, to leave their generators in step), so
the number of ranks changes no sample. After backward the gradients are summed over ranks, and
the loss was divided by the count of the whole batch on all ranks (step.update): the objective,
and so the parameters, are those of one process with B prompts, up to float rounding
(tests/test_distributed.py checks). Rank 0 alone evaluates and writes the run directory.

One process (no WORLD_SIZE, or WORLD_SIZE=1) creates no process group and every helper here is
the identity: exactly the single-process code path.

A collective waits at most TIMEOUT for the other ranks, so a rank that hangs ends the job with an
error instead of a hang; torchrun stops the other ranks at once when one exits with an error.
"""

import datetime
import os
import sys
from typing import NoReturn

import torch
import torch.distributed as dist
from torch import Tensor

from lmrl.errors import ConfigError, UserError

# Long enough for rank 0's held-out evaluation, which the other ranks wait for in the next
# step's first collective; a rank that *died* ends the job sooner (torchrun stops the others).
TIMEOUT = datetime.timedelta(seconds=float(os.environ.get("LMRL_DIST_TIMEOUT", "1800")))


def launched() -> bool:
    """Whether torchrun (or another launcher setting its variables) started several ranks."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def init() -> bool:
    """Join the process group that torchrun's environment describes (RANK, WORLD_SIZE,
    MASTER_ADDR, MASTER_PORT): gloo on CPU, nccl when CUDA is there (LMRL_DIST_BACKEND
    overrides: gloo runs on CUDA tensors too). Nothing for one process,
    nor when the caller made the group. Returns whether this call made it."""
    if not launched() or dist.is_initialized():
        return False
    backend = os.environ.get("LMRL_DIST_BACKEND") or ("nccl" if torch.cuda.is_available()
                                                      else "gloo")
    if backend not in ("nccl", "gloo"):
        raise ConfigError(f"LMRL_DIST_BACKEND={backend!r}: use nccl or gloo")
    if torch.cuda.is_available():
        # One GPU per rank; with fewer GPUs than ranks (a test on one GPU, under gloo: nccl
        # refuses two ranks on one device) the ranks share them.
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")) % torch.cuda.device_count())
    dist.init_process_group(backend, timeout=TIMEOUT)
    return True


def close() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def leave(code: int = 0) -> NoReturn:
    """End a rank's process: leave the process group, flush the output, and exit at once,
    without Python's interpreter finalization.

    Why: a rank that finished cleanly was seen to abort at exit ("terminate called without an
    active exception", SIGABRT) about once in ten 2-rank jobs on a loaded 2-core machine; torchrun
    then reports the job failed and stops the rank still writing the run directory. The likely
    cause (not proven: no core dump was caught): a C++ thread that still releases a Python
    object when finalization begins cannot take the GIL any more, CPython ends it with
    pthread_exit, and that unwinding through C++ code terminates the process. Skipping
    finalization leaves no such window. Everything lmrl writes is closed before this (files
    are written atomically, loggers closed by the training loop)."""
    close()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # a closed pipe or stream: nothing left to say there
            pass
    os._exit(code)


def world() -> int:
    return dist.get_world_size() if dist.is_initialized() else 1


def rank() -> int:
    return dist.get_rank() if dist.is_initialized() else 0


def is_main() -> bool:
    return rank() == 0


def share(B: int) -> slice:
    """This rank's prompts among the B that every rank draws: a contiguous B/world block."""
    n = world()
    if B % n:
        raise ConfigError(f"train.B={B} prompts cannot be split evenly over {n} processes; "
                          f"choose a multiple of {n}")
    size = B // n
    return slice(rank() * size, (rank() + 1) * size)


def device() -> torch.device:
    """Where the collectives' tensors live: CUDA with nccl (it moves CUDA tensors only), else
    the CPU (gloo moves either)."""
    return torch.device("cuda") if dist.get_backend() == "nccl" else torch.device("cpu")


def all_reduce(values: list[float], op: str = "sum") -> list[float]:
    """Elementwise sum / min / max of plain numbers over ranks (float64, so counts stay exact)."""
    if world() == 1 or not values:
        return list(values)
    t = torch.tensor(values, dtype=torch.float64, device=device())
    dist.all_reduce(t, op={"sum": dist.ReduceOp.SUM, "min": dist.ReduceOp.MIN,
                           "max": dist.ReduceOp.MAX}[op])
    return t.tolist()


def any_rank(flag: bool) -> bool:
    """True on every rank when it is True on one (a stop signal, the time limit), so all ranks
    leave the loop after the same step and no collective waits for a rank that left."""
    return bool(all_reduce([float(flag)], "max")[0]) if world() > 1 else flag


def sum_gradients(params: list[Tensor]) -> None:
    """Sum every trained parameter's gradient over ranks, in one flat buffer (one collective per
    optimizer step). A trained parameter without a gradient on this rank adds zeros (its .grad
    is set). Frozen parameters (LoRA's base weights) are left alone: no gradient buffer of the
    whole model, and only the adapters travel."""
    if world() == 1:
        return
    params = [p for p in params if p.requires_grad]
    for p in params:
        if p.grad is None:
            p.grad = torch.zeros_like(p)
    flat = torch.cat([p.grad.reshape(-1) for p in params])
    dist.all_reduce(flat)
    offset = 0
    for p in params:
        p.grad.copy_(flat[offset:offset + p.numel()].view_as(p.grad))
        offset += p.numel()


def broadcast_parameters(module: torch.nn.Module) -> None:
    """Rank 0's parameters and buffers on every rank: the ranks start from one model even if
    building it drew different random numbers."""
    if world() == 1:
        return
    with torch.no_grad():
        for t in [*module.parameters(), *module.buffers()]:
            dist.broadcast(t.data, src=0)


def gather(t: Tensor, pad_last: bool = False) -> Tensor:
    """Every rank's tensor, concatenated along dim 0 in rank order. All of one shape, or with
    pad_last all but the last dimension, which is padded with zeros to the longest."""
    if world() == 1:
        return t
    if pad_last:
        longest = int(all_reduce([t.shape[-1]], "max")[0])
        t = torch.nn.functional.pad(t, (0, longest - t.shape[-1]))
    parts = [torch.empty_like(t) for _ in range(world())]
    dist.all_gather(parts, t.contiguous())
    return torch.cat(parts)


def pooled_means(values: dict[str, list[float]]) -> dict[str, float]:
    """Each name's mean over the values every rank holds under it (reward functions'
    log_metric: a rank may log a name the others did not). One object gather: names and counts
    differ between ranks, so a fixed-shape all_reduce would not do."""
    if world() == 1:
        return {name: sum(v) / len(v) for name, v in values.items() if v}
    parts = [None] * world()
    dist.all_gather_object(parts, {name: (sum(v), len(v)) for name, v in values.items() if v})
    pooled: dict[str, list[float]] = {}
    for part in parts:
        for name, (total, count) in part.items():
            pooled.setdefault(name, [0.0, 0])
            pooled[name][0] += total
            pooled[name][1] += count
    return {name: total / count for name, (total, count) in pooled.items()}


def on_main(action, *args, **kwargs) -> None:
    """action(*args, **kwargs) on rank 0 alone (checking and claiming the run directory), then
    every rank learns whether it failed: rank 0 raises its error and the others a short one
    pointing to it, instead of a collective's connection error when rank 0 leaves."""
    if world() == 1:
        action(*args, **kwargs)
        return
    error = None
    if is_main():
        try:
            action(*args, **kwargs)
        except Exception as err:  # noqa: BLE001 - raised again below, after telling the others
            error = err
    if any_rank(error is not None):
        if error is not None:
            raise error
        raise UserError("rank 0 stopped with the error above")


def barrier() -> None:
    if world() > 1:
        dist.barrier()
