"""LoRA through peft: low-rank adapters on a causal LM's linear layers, the only weights trained.

Why: the base weights stay frozen, so the optimizer keeps state for the adapters only, and the
reference policy is the same model with its adapters switched off (snapshots.AdapterOffReference)
instead of a second copy of every weight (memory measured in bench/lora_memory.py).

peft is an optional extra (`pip install 'lmrl[lora]'`): imported only when LoRA is on.
"""

import copy
import importlib.util
from dataclasses import dataclass

import torch
from torch import nn

from lmrl.errors import ConfigError

INSTALL = "pip install 'lmrl[lora]'"


@dataclass(frozen=True)
class LoraSpec:
    r: int
    alpha: float
    dropout: float = 0.0
    # (): peft's default modules for the architecture; ("all-linear",): every linear layer but
    # the output head.
    target_modules: tuple[str, ...] = ()


def check_installed() -> None:
    if importlib.util.find_spec("peft") is None:
        raise ConfigError(f"policy.lora_r > 0 needs peft, which is not installed: {INSTALL}")


def is_lora(model: nn.Module) -> bool:
    """Whether `model` is a peft model (duck-typed, so that peft is imported only when used)."""
    return hasattr(model, "peft_config") and hasattr(model, "disable_adapter")


def wrap(model: nn.Module, spec: LoraSpec, seed: int) -> nn.Module:
    """The model with LoRA adapters on `spec.target_modules`, only the adapters trainable.
    Their initialisation (A random, B zero: the wrapped model starts as the base model) draws
    from torch's global RNG, seeded here by `seed` and restored after."""
    check_installed()
    from peft import LoraConfig, get_peft_model

    targets = spec.target_modules
    if targets == ("all-linear",):
        targets = "all-linear"  # peft's keyword is a string, not a list
    config = LoraConfig(r=spec.r, lora_alpha=spec.alpha, lora_dropout=spec.dropout,
                        target_modules=list(targets) if isinstance(targets, tuple) and targets
                        else (targets or None), task_type="CAUSAL_LM")
    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return get_peft_model(model, config)
    except ValueError as err:  # unknown architecture, or target modules not in the model
        raise ConfigError(f"LoRA cannot wrap this model: {err}. Name the layers with "
                          "--lora-target-modules (e.g. q_proj v_proj, or all-linear)") from err


def merged_copy(model: nn.Module) -> nn.Module:
    """A plain transformers model with the adapters merged into its weights, made from a copy:
    merging in place and unmerging later would not give the base weights back bit for bit."""
    return copy.deepcopy(model).merge_and_unload()


def set_dropout(model: nn.Module, on: bool) -> None:
    """Switch the adapters' dropout modules (only) to training (on) or evaluation mode."""
    for name, module in model.named_modules():
        if name.split(".")[-2:-1] == ["lora_dropout"]:
            module.train(on)
