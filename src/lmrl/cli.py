"""Command line: `lmrl train`, `lmrl sweep`, `lmrl plot`, and for causal LMs `lmrl init-model`,
`lmrl sft`, `lmrl eval`.

`lmrl train [--preset NAME] [--FIELD VALUE ...]`: every Config field is a flat flag (`--delta`,
`--kl-weight`, `--G`); flags given with a preset override it. The other commands take the same
task flags (`--task sort_text --n 5`).
"""

import argparse
import dataclasses
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path

import tyro

from lmrl.config import Config, ConfigError, PolicyConfig, TaskConfig
from lmrl.presets import PRESETS

USAGE = """usage: lmrl {{train,sweep,plot,init-model,sft,eval}} ...

  lmrl train [--preset {presets}] [options]   train one run (lmrl train --help)
  lmrl sweep --grid delta=raw,centered [--grid ...] [--seeds 0 1] [--out DIR] [-- train options]
  lmrl plot RUN_DIR [RUN_DIR ...] [--metric eval/exact_match] [--out FILE]
  lmrl init-model --out DIR --task sort_text [task options]   a tiny causal LM + tokenizer
  lmrl sft --model DIR --out DIR --task sort_text [options]   supervised warm start
  lmrl eval --model DIR --task sort_text [options]            held-out evaluation
"""


def split_preset(args: list[str]) -> tuple[str, list[str]]:
    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument("--preset", default="default")
    known, rest = parser.parse_known_args(args)
    if known.preset not in PRESETS:
        raise ConfigError(f"unknown preset {known.preset!r}; valid: {', '.join(PRESETS)}")
    return known.preset, rest


def parse_config(args: list[str], prog: str = "lmrl train") -> Config:
    """Preset, then flags on top; the config is validated when tyro builds it."""
    preset, rest = split_preset(args)
    return tyro.cli(Config, args=rest, default=PRESETS[preset](), prog=prog,
                    description=f"Train with GRPO. Preset: {preset} (choices: "
                                f"{', '.join(PRESETS)}). Flags override the preset.",
                    config=(tyro.conf.OmitArgPrefixes,))


def cmd_train(args: list[str]) -> None:
    from lmrl.trainer import train

    train(parse_config(args))


def cmd_sweep(args: list[str]) -> None:
    from lmrl.sweep import parse_grid, run_sweep

    parser = argparse.ArgumentParser(prog="lmrl sweep", description="Train a grid of runs.")
    parser.add_argument("--grid", action="append", default=[],
                        help="field=v1,v2 (repeatable), e.g. --grid delta=raw,centered")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--out", default="runs/sweep")
    own, _, train_args = _split_double_dash(args)
    ns = parser.parse_args(own)
    base = parse_config(train_args, prog="lmrl sweep ... --")
    run_sweep(base, parse_grid(base, ns.grid), ns.seeds, ns.out)
    print(open(f"{ns.out}/table.md").read())
    print(f"plot: {ns.out}/comparison.png")


def cmd_plot(args: list[str]) -> None:
    from lmrl.plotting import plot_runs

    parser = argparse.ArgumentParser(prog="lmrl plot", description="Overlay runs.")
    parser.add_argument("run_dirs", nargs="+")
    parser.add_argument("--metric", default="eval/exact_match")
    parser.add_argument("--out", default="comparison.png")
    ns = parser.parse_args(args)
    print(plot_runs(ns.run_dirs, ns.out, ns.metric))


def text_task(task: TaskConfig, model: str):
    """Validate task flags as train would (with a causal LM) and build the task."""
    from lmrl.trainer import build_task

    return build_task(Config(task=task, policy=PolicyConfig(model=model)))


@dataclass(frozen=True)
class InitModelArgs:
    out: str
    """Directory to write the model and tokenizer to."""
    task: TaskConfig = field(default_factory=lambda: TaskConfig(task="sort_text"))
    arch: str = "qwen2"
    """qwen2 or llama."""
    hidden_size: int = 128
    layers: int = 4
    heads: int = 4
    intermediate_size: int | None = None
    """MLP width (default 2 × hidden_size)."""
    alphabet: str = "task"
    """task: the characters of the task's prompts and answers; ascii: all printable ASCII."""
    seed: int = 0


def cmd_init_model(args: list[str]) -> None:
    import string

    from lmrl.modelzoo import init_model, task_alphabet

    a = tyro.cli(InitModelArgs, args=args, prog="lmrl init-model",
                 description="Build a small Llama/Qwen2-style causal LM with a character "
                             "tokenizer for a task (no download).",
                 config=(tyro.conf.OmitArgPrefixes,))
    if a.alphabet not in ("task", "ascii"):
        raise ConfigError(f"--alphabet {a.alphabet!r}: valid: task, ascii")
    task = text_task(a.task, model=a.out)
    alphabet = task_alphabet(task) if a.alphabet == "task" else string.printable.strip("\x0b\x0c\r")
    try:
        count = init_model(a.out, alphabet, arch=a.arch, hidden_size=a.hidden_size,
                           num_layers=a.layers, num_heads=a.heads,
                           intermediate_size=a.intermediate_size, seed=a.seed)
    except ValueError as err:
        raise ConfigError(str(err)) from err
    print(f"wrote {a.out}: {a.arch}, {count:,} parameters, alphabet {alphabet!r}")


@dataclass(frozen=True)
class SFTArgs:
    model: str
    """Model to fine-tune (local directory or hub name)."""
    out: str
    """Directory to save the fine-tuned model to (save_pretrained)."""
    task: TaskConfig = field(default_factory=lambda: TaskConfig(task="sort_text"))
    steps: int = 1000
    batch_size: int = 64
    lr: float = 1e-3
    """Peak learning rate (AdamW, linear warm-up then cosine to 0)."""
    warmup_steps: int = 20
    weight_decay: float = 0.0
    grad_clip: float = 1.0
    eval_every: int = 50
    eval_examples: int = 256
    """Held-out examples per evaluation."""
    stop_at: float | None = None
    """Stop once held-out exact match reaches this (e.g. 0.3: a warm start that sometimes
    succeeds, as a pretrained model would)."""
    seed: int = 0
    threads: int = 0
    """torch threads (0 = auto)."""
    device: str = "auto"
    progress: bool = True


def cmd_sft(args: list[str]) -> None:
    from lmrl.sft import run_sft
    from lmrl.threads import configure_threads

    a = tyro.cli(SFTArgs, args=args, prog="lmrl sft",
                 description="Supervised fine-tuning on the task's demonstrations.",
                 config=(tyro.conf.OmitArgPrefixes,))
    configure_threads(a.threads, "lm")
    task = text_task(a.task, model=a.model)
    if a.stop_at is not None and task.correctness is None:
        raise ConfigError(f"--stop-at needs a right answer, and task {a.task.task} has no "
                          "correctness reward; drop --stop-at")
    if a.steps < 0 or a.batch_size < 1 or a.eval_every < 1:
        raise ConfigError("--steps must be >= 0, --batch-size and --eval-every >= 1")
    summary = run_sft(a.model, task, a.out, device=a.device, steps=a.steps,
                      batch_size=a.batch_size, lr=a.lr, warmup_steps=a.warmup_steps,
                      weight_decay=a.weight_decay, grad_clip=a.grad_clip,
                      eval_every=a.eval_every, eval_examples=a.eval_examples or None,
                      stop_at=a.stop_at, seed=a.seed, progress=a.progress)
    keys = [k for k in summary if k.startswith(("eval/", "sft/"))]
    print("\n".join(f"  {k}  {summary[k]}" for k in keys) + f"\nsaved to {a.out}")


@dataclass(frozen=True)
class EvalArgs:
    model: str | None = None
    """Checkpoint to evaluate: a save_pretrained directory or a hub name (default with --run:
    the run's model/)."""
    run: str | None = None
    """A run directory: evaluate with its task, held-out set and sampling settings
    (config.json), so the score is the run's own evaluation."""
    task: TaskConfig = field(default_factory=lambda: TaskConfig(task="sort_text"))
    limit: int = 0
    """Evaluate at most this many held-out examples (0 = all)."""
    samples: int = 0
    """Also sample this many completions per prompt for pass@k (0 = greedy only)."""
    show: int = 4
    """Print this many held-out completions."""
    max_new_tokens: int = 0
    """Completion budget (0 = the run's, else the task's)."""
    stop: tuple[str, ...] = ()
    """Stop strings (default with --run: the run's)."""
    device: str = "auto"
    out: str | None = None
    """Write the metrics as JSON here."""
    seed: int = 0
    threads: int = 0


def eval_settings(a: EvalArgs) -> tuple[str, TaskConfig, PolicyConfig]:
    """Model, task and sampling settings: the run's config.json with --run, else the flags."""
    if a.run is None:
        if a.model is None:
            raise ConfigError("lmrl eval needs --model DIR or --run RUN_DIR")
        return a.model, a.task, PolicyConfig(model=a.model, max_new_tokens=a.max_new_tokens,
                                             stop=a.stop)
    if a.task != EvalArgs.__dataclass_fields__["task"].default_factory():
        raise ConfigError("--run takes the task from the run's config.json; drop the task flags")
    config_path = Path(a.run) / "config.json"
    if not config_path.is_file():
        raise FileNotFoundError(f"--run: {config_path} does not exist")
    saved = Config.from_dict(json.loads(config_path.read_text()))
    policy = saved.policy
    if a.max_new_tokens or a.stop:
        policy = dataclasses.replace(policy, max_new_tokens=a.max_new_tokens or
                                     policy.max_new_tokens, stop=a.stop or policy.stop)
    return a.model or str(Path(a.run) / "model"), saved.task, policy


def cmd_eval(args: list[str]) -> None:
    import torch

    from lmrl.state import build_policy
    from lmrl.tasks.text import evaluate_text
    from lmrl.threads import configure_threads
    from lmrl.trainer import build_task

    a = tyro.cli(EvalArgs, args=args, prog="lmrl eval",
                 description="Greedy held-out evaluation of a causal-LM checkpoint.",
                 config=(tyro.conf.OmitArgPrefixes,))
    configure_threads(a.threads, "lm")
    model, task_cfg, p = eval_settings(a)
    cfg = Config(task=task_cfg, policy=dataclasses.replace(p, model=model, device=a.device))
    task = build_task(cfg)
    policy = build_policy(cfg, task.max_new_tokens)  # as training loads it
    metrics, shown = evaluate_text(task, policy, torch.Generator().manual_seed(a.seed),
                                   num_samples=a.samples, max_examples=a.limit or None,
                                   num_logged=a.show)
    for sample in shown:
        print(f"{sample['prompt']!r} -> {sample['completion']!r}")
    print(json.dumps(metrics, indent=2))
    if a.out:
        Path(a.out).write_text(json.dumps({"model": model, **metrics}, indent=2))


def _split_double_dash(args: list[str]) -> tuple[list[str], str, list[str]]:
    if "--" in args:
        i = args.index("--")
        return args[:i], "--", args[i + 1:]
    return args, "", []


COMMANDS = {"train": cmd_train, "sweep": cmd_sweep, "plot": cmd_plot,
            "init-model": cmd_init_model, "sft": cmd_sft, "eval": cmd_eval}


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] not in COMMANDS:
        print(USAGE.format(presets="|".join(PRESETS)), file=sys.stderr)
        sys.exit(0 if argv and argv[0] in ("-h", "--help") else 2)
    try:
        COMMANDS[argv[0]](argv[1:])
    except (ConfigError, FileExistsError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
