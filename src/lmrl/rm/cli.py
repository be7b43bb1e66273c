"""`lmrl rm train` and `lmrl rm eval`: the command line of rm/train.py."""

import json
import sys
from dataclasses import dataclass

from lmrl import files
from lmrl.cli import cli_parse
from lmrl.config import (
    MAX_SEED,
    ConfigError,
    check_device,
    check_optimizer_flags,
    require_at_least,
)
from lmrl.errors import UsageError

USAGE = """usage: lmrl rm {train,eval} ...

  lmrl rm train --model DIR --data PAIRS --out DIR [options]   train a Bradley-Terry reward model
  lmrl rm eval --model RM_DIR --data PAIRS [--out JSON]        its pairwise accuracy on pairs

PAIRS: rows with prompt, chosen and rejected (TRL's preference format, strings or
role/content messages), optional margin; a .jsonl/.json/.csv/.parquet file, a save_to_disk
directory or a hub dataset.
"""


@dataclass(frozen=True)
class RMTrainArgs:
    model: str
    """Backbone: a causal LM (local directory or hub name); a one-output head is added."""
    data: str
    """Preference pairs (prompt, chosen, rejected[, margin])."""
    out: str
    """Directory to write: the reward model (save_pretrained), metrics.jsonl, heldout.jsonl,
    summary.json."""
    steps: int = 200
    batch_size: int = 16
    """Pairs per step (each scored chosen and rejected)."""
    lr: float = 1e-4
    """AdamW learning rate, constant."""
    weight_decay: float = 0.0
    grad_clip: float = 1.0
    eval_every: int = 50
    heldout_size: int = 0
    """Pairs held out for evaluation (0 = a tenth, at least 1)."""
    max_length: int = 1024
    """Tokens per text (prompt + completion); a longer one loses its first tokens."""
    margin_column: str | None = None
    """Column of per-pair margins (default: "margin" when the data has one)."""
    seed: int = 0
    threads: int = 0
    """torch threads (0 = auto)."""
    device: str = "auto"
    progress: bool = True
    overwrite: bool = False
    """Replace an earlier lmrl rm output in --out (only after the new one is complete)."""
    trust_remote_code: bool = False


@dataclass(frozen=True)
class RMEvalArgs:
    model: str
    """A reward model directory (lmrl rm train's --out) or hub name."""
    data: str
    """Preference pairs (prompt, chosen, rejected[, margin])."""
    out: str | None = None
    """Write the metrics as JSON here."""
    batch_size: int = 32
    max_length: int = 1024
    margin_column: str | None = None
    threads: int = 0
    device: str = "auto"
    trust_remote_code: bool = False


def check_train_args(a: RMTrainArgs) -> None:
    """Every number in range before anything loads."""
    check_optimizer_flags(a.lr, a.weight_decay, a.grad_clip)
    require_at_least({"--steps": (a.steps, 0), "--batch-size": (a.batch_size, 1),
                      "--eval-every": (a.eval_every, 1), "--heldout-size": (a.heldout_size, 0),
                      "--max-length": (a.max_length, 1), "--weight-decay": (a.weight_decay, 0),
                      "--grad-clip": (a.grad_clip, 0), "--seed": (a.seed, 0),
                      "--threads": (a.threads, 0)})
    if a.seed > MAX_SEED:
        raise ConfigError(f"--seed={a.seed} must be in 0..{MAX_SEED}")
    check_device(a.device)


def cmd_rm_train(args: list[str]) -> None:
    from lmrl.rm.train import run_rm_train
    from lmrl.threads import configure_threads

    a = cli_parse(RMTrainArgs, args, "lmrl rm train",
                  "Train a Bradley-Terry reward model on preference pairs.")
    check_train_args(a)
    configure_threads(a.threads, "lm")
    summary = run_rm_train(a.model, a.data, a.out, overwrite=a.overwrite,
                           heldout_size=a.heldout_size, max_length=a.max_length,
                           margin_column=a.margin_column, seed=a.seed, device=a.device,
                           trust_remote_code=a.trust_remote_code, steps=a.steps,
                           batch_size=a.batch_size, lr=a.lr, weight_decay=a.weight_decay,
                           grad_clip=a.grad_clip, eval_every=a.eval_every, progress=a.progress)
    keys = [k for k in summary if k.startswith(("eval/", "rm/", "pairs/"))]
    print("\n".join(f"  {k}  {summary[k]}" for k in keys) + f"\nsaved to {a.out}")


def cmd_rm_eval(args: list[str]) -> None:
    from lmrl.rm.train import run_rm_eval
    from lmrl.threads import configure_threads

    a = cli_parse(RMEvalArgs, args, "lmrl rm eval",
                  "Pairwise accuracy and mean score gap of a reward model on preference pairs.")
    require_at_least({"--batch-size": (a.batch_size, 1), "--max-length": (a.max_length, 1),
                      "--threads": (a.threads, 0)})
    check_device(a.device)
    if a.out:
        files.check_replaceable_file(a.out, files.json_by_lmrl)
    configure_threads(a.threads, "lm")
    metrics = run_rm_eval(a.model, a.data, batch_size=a.batch_size, max_length=a.max_length,
                          margin_column=a.margin_column, device=a.device,
                          trust_remote_code=a.trust_remote_code)
    print(json.dumps(metrics, indent=2))
    if a.out:
        files.write_text(a.out, json.dumps({"written_by": files.WRITER, "model": a.model,
                                            "data": a.data, **metrics}, indent=2))


SUBCOMMANDS = {"train": cmd_rm_train, "eval": cmd_rm_eval}


def cmd_rm(args: list[str]) -> None:
    if args and args[0] in ("-h", "--help"):
        print(USAGE)
        return
    if not args or args[0] not in SUBCOMMANDS:
        print(USAGE, end="", file=sys.stderr)
        given = f"unknown subcommand {args[0]!r}" if args else "no subcommand given"
        raise UsageError(f"lmrl rm: {given}; choose one of {', '.join(SUBCOMMANDS)}")
    SUBCOMMANDS[args[0]](args[1:])
