"""Checkpoints that load without running code: tensors in safetensors, everything else in JSON.

A checkpoint is a directory `checkpoints/step-00000123/` holding `tensors.safetensors` and
`state.json`, written under a temporary name and renamed when complete (files.atomic_dir), so
a kill leaves whole checkpoints only. The newest `keep` are kept. `load_newest` reads the newest
one that loads and says which damaged ones it passed over.

Nested state (a TrainState's state_dict: module and optimizer state dicts, RNG states, the
schedule) is split into tensors and a JSON tree: a tensor becomes {"__tensor__": key} (its key
in the safetensors file), a tuple {"__tuple__": [...]}, a dict with non-string keys (optimizer
state is keyed by parameter index) {"__dict__": [[key, value], ...]}, a numpy array (numpy's RNG
state) {"__ndarray__": [...], "dtype": ...}. Decoding rebuilds the same types, so the state
round-trips bit for bit (tests/test_checkpoint.py).

Never `pickle`: `torch.load` of an old `checkpoint.pt` could run any code its author chose.
"""

import json
from pathlib import Path

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from lmrl.errors import RunDirError
from lmrl.files import atomic_dir, remove, remove_stale_temporaries

DIR = "checkpoints"
TENSORS, STATE = "tensors.safetensors", "state.json"


def encode(obj, tensors: dict[str, torch.Tensor], path: str = "s"):
    """A JSON-able tree of `obj`, its tensors moved into `tensors` under path-like keys."""
    if isinstance(obj, torch.Tensor):
        tensors[path] = obj.detach().to("cpu").contiguous()
        return {"__tensor__": path}
    if isinstance(obj, np.ndarray):
        return {"__ndarray__": obj.tolist(), "dtype": str(obj.dtype)}
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, tuple):
        return {"__tuple__": [encode(v, tensors, f"{path}.{i}") for i, v in enumerate(obj)]}
    if isinstance(obj, list):
        return [encode(v, tensors, f"{path}.{i}") for i, v in enumerate(obj)]
    if isinstance(obj, dict):
        if all(isinstance(k, str) and not k.startswith("__") for k in obj):
            return {k: encode(v, tensors, f"{path}.{k}") for k, v in obj.items()}
        return {"__dict__": [[encode(k, tensors, f"{path}.k{i}"), encode(v, tensors, f"{path}.{i}")]
                             for i, (k, v) in enumerate(obj.items())]}
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    raise TypeError(f"cannot store {type(obj).__name__} at {path} in a checkpoint")


def decode(tree, tensors: dict[str, torch.Tensor]):
    """The inverse of `encode`."""
    if isinstance(tree, list):
        return [decode(v, tensors) for v in tree]
    if not isinstance(tree, dict):
        return tree
    if "__tensor__" in tree:
        return tensors[tree["__tensor__"]]
    if "__tuple__" in tree:
        return tuple(decode(v, tensors) for v in tree["__tuple__"])
    if "__dict__" in tree:
        return {decode(k, tensors): decode(v, tensors) for k, v in tree["__dict__"]}
    if "__ndarray__" in tree:
        return np.array(tree["__ndarray__"], dtype=tree["dtype"])
    return {k: decode(v, tensors) for k, v in tree.items()}


def _unshared(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """safetensors refuses tensors that share memory (tied embeddings): copy all but the first."""
    seen, out = set(), {}
    for key, t in tensors.items():
        ptr = t.untyped_storage().data_ptr() if t.numel() else None
        out[key] = t.clone() if ptr in seen else t
        if ptr is not None:
            seen.add(ptr)
    return out


def save(run_dir: Path, step: int, state: dict, meta: dict, keep: int) -> Path:
    """Write checkpoints/step-N (state: any nested dict of tensors and plain values; meta: a
    JSON dict stored beside it) and drop all but the newest `keep`."""
    tensors: dict[str, torch.Tensor] = {}
    tree = encode(state, tensors)
    final = step_dir(run_dir, step)
    final.parent.mkdir(exist_ok=True)
    remove_stale_temporaries(final.parent)  # what a kill during an earlier save left
    with atomic_dir(final) as tmp:
        save_file(_unshared(tensors), tmp / TENSORS)
        # Written last: a checkpoint directory with a state.json is complete.
        (tmp / STATE).write_text(json.dumps({"meta": meta, "state": tree}))
    for old in checkpoints(run_dir)[:-keep]:
        remove(old)
    return final


def step_dir(run_dir: Path, step: int) -> Path:
    return Path(run_dir) / DIR / f"step-{step:08d}"


def exists(run_dir: Path, step: int) -> bool:
    """Whether a complete checkpoint of `step` is on disk (state.json is written last)."""
    return (step_dir(run_dir, step) / STATE).is_file()


def checkpoints(run_dir: Path) -> list[Path]:
    """Checkpoint directories, oldest first."""
    root = Path(run_dir) / DIR
    if not root.is_dir():
        return []
    return sorted(p for p in root.iterdir() if p.is_dir() and p.name.startswith("step-"))


def load(path: Path) -> tuple[dict, dict]:
    """(state, meta) of one checkpoint directory; ValueError if it is damaged."""
    try:
        record = json.loads((path / STATE).read_text())
        tensors = load_file(path / TENSORS)
        return decode(record["state"], tensors), record["meta"]
    except (OSError, ValueError, KeyError, TypeError, SafetensorError) as err:
        raise ValueError(f"{path} is damaged ({type(err).__name__}: {err})") from err


def load_newest(run_dir: Path) -> tuple[dict, dict, Path]:
    """The newest checkpoint that loads; damaged newer ones are reported and skipped."""
    if (run_dir / "checkpoint.pt").is_file() and not checkpoints(run_dir):
        raise RunDirError(f"{run_dir}/checkpoint.pt is an old-format checkpoint (a pickle, which "
                          "could run code when loaded); lmrl no longer loads it. Start a new run")
    damaged = []
    for path in reversed(checkpoints(run_dir)):
        try:
            state, meta = load(path)
        except ValueError as err:
            damaged.append(str(err))
            continue
        for message in damaged:
            print(f"warning: skipped {message}; resuming from {path.name}")
        return state, meta, path
    found = "; ".join(damaged) if damaged else f"there is no {DIR}/ directory in {run_dir}"
    raise RunDirError(f"--resume: no checkpoint of {run_dir} can be loaded ({found}); start the "
                      "run again without --resume")
