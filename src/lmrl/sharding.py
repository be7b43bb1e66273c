"""FSDP2 (torch.distributed.fsdp.fully_shard): a causal LM's weights, gradients and optimizer
state split over the ranks (train.fsdp), for models that do not fit one device.

Each decoder layer is one FSDP unit and the rest of the model (embeddings, head) the root's: a
forward gathers one layer's weights at a time and frees them after, and backward reduce-scatters
each layer's gradients. Parameters are DTensors, each rank holding a 1/world slice.

The objective is data parallel's (distributed.py): the loss is already divided by the whole
batch's count, so the gradients are *summed* over ranks (FSDP averages by default). Every forward
and backward is a collective, so all ranks must make the same passes: sampling decodes until every
rank is done, step.update balances the log-prob passes, and every rank evaluates.

Checkpoints and the run directory's model/ hold full tensors (`full`), exactly those of an
unsharded run; loading slices full tensors back into shards (`like`, `optimizer_like`), so a run
resumes on any number of ranks, sharded or not.
"""

from typing import Any

import torch
from torch import Tensor, nn
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.fsdp import FSDPModule, fully_shard
from torch.distributed.tensor import DTensor, distribute_tensor

from lmrl import distributed


def shard(policy: nn.Module) -> None:
    """Shard an HFPolicy's model in place over all ranks (its parameters become DTensors), so
    build the optimizer after, and copy the policy (the reference) before: FSDP modules cannot
    be deep-copied. The policy then runs transformers' forward: lmrl's (policies/lean.py) reads
    whole weight matrices directly, which no rank holds."""
    model = policy.model
    mesh = init_device_mesh(distributed.device().type, (distributed.world(),))
    layers = set(getattr(model, "_no_split_modules", None) or ())  # transformers' block names
    for module in model.modules():
        if type(module).__name__ in layers:
            fully_shard(module, mesh=mesh)
    fully_shard(model, mesh=mesh)
    for module in model.modules():
        if isinstance(module, FSDPModule):
            # A plain sum (force_sum: gloo has no pre-scaled sum), divided by nothing.
            module.set_force_sum_reduction_for_comms(True)
            module.set_gradient_divide_factor(1.0)
    policy.lean = None
    policy.sharded = True


def full(tree: Any) -> Any:
    """`tree` (nested dicts, lists, tuples) with every DTensor replaced by the whole tensor.
    A collective when there are DTensors: every rank must call it, on trees of one structure."""
    if isinstance(tree, DTensor):
        return tree.full_tensor()
    if isinstance(tree, dict):
        return {k: full(v) for k, v in tree.items()}
    if isinstance(tree, (list, tuple)):
        return type(tree)(full(v) for v in tree)
    return tree


def sliced(value: Tensor, like: Tensor) -> Tensor:
    """A whole tensor as a shard placed as `like` is (each rank keeps its own slice, no
    communication); `value` itself when `like` is no DTensor."""
    if not isinstance(like, DTensor):
        return value
    return distribute_tensor(value.to(like.dtype), like.device_mesh, like.placements,
                             src_data_rank=None)


def like(template: dict[str, Tensor], whole: dict[str, Tensor]) -> dict[str, Tensor]:
    """A full module state dict, sharded as the module's own state dict `template` is."""
    return {k: sliced(v, template[k]) if k in template else v for k, v in whole.items()}


def optimizer_like(optimizer: torch.optim.Optimizer, whole: dict) -> dict:
    """A full optimizer state dict (keyed by parameter index, as torch writes it), with each
    per-parameter tensor of the parameter's shape sharded as the parameter is (AdamW's step
    count, a scalar, stays whole)."""
    params = [p for group in optimizer.param_groups for p in group["params"]]
    state = {i: {k: sliced(v, params[i]) if isinstance(v, Tensor) and v.dim() else v
                 for k, v in entry.items()} for i, entry in whole["state"].items()}
    return {**whole, "state": state}


def local(t: Tensor) -> Tensor:
    """This rank's part of a tensor: its shard of a DTensor, else the tensor."""
    return t.to_local() if isinstance(t, DTensor) else t
