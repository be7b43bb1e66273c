"""Command line: `lmrl train`, `lmrl sweep`, `lmrl plot`, and for causal LMs `lmrl init-model`,
`lmrl sft`, `lmrl eval`, and `lmrl rm train` / `lmrl rm eval` for reward models (rm/cli.py).

`lmrl train [--preset NAME] [--config FILE] [--FIELD VALUE ...]`: every Config field is a flat
flag (`--delta`, `--kl-weight`, `--G`); a config file (config_files.py) overrides the preset and
flags override both. The other commands take the same task flags (`--task sort_text --n 5`), the
same names for the same settings (`--B`, `--lr`, `--run-dir`, `--eval-limit`) and `--config`.
"""

import argparse
import contextlib
import dataclasses
import io
import json
import os
import sys
import traceback
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated

import tyro

from lmrl import config_files, files
from lmrl._version import __version__
from lmrl.config import (
    MAX_SEED,
    Config,
    ConfigError,
    PolicyConfig,
    TaskConfig,
    check_device,
    check_optimizer_flags,
    require_at_least,
)
from lmrl.errors import NonFiniteError, RunInterrupted, UsageError, UserError
from lmrl.presets import PRESETS
from lmrl.trl_names import hint as trl_hint

USAGE = """usage: lmrl {{train,sweep,plot,init-model,sft,eval,rm}} ...

  lmrl train [--preset {presets}] [--config FILE] [options]   train one run (lmrl train --help)
  lmrl train --nproc N [options]     the same run on N processes (torchrun; the toy task)
  lmrl sweep --grid delta=raw,centered [--grid ...] [--seeds 0 1] [--out DIR] [-- train options]
  lmrl plot RUN_DIR [RUN_DIR ...] [--metric eval/exact_match] [--out FILE]
  lmrl init-model --out DIR --task sort_text [task options]   a tiny causal LM + tokenizer
  lmrl sft --model DIR --run-dir DIR --task sort_text [options]   supervised warm start
  lmrl eval --model DIR --task sort_text [options]            held-out evaluation
  lmrl rm {{train,eval}} --model DIR --data PAIRS [options]     a Bradley-Terry reward model
"""


class Parser(argparse.ArgumentParser):
    """argparse, with its usage errors raised as one `lmrl: error:` block."""

    def error(self, message: str):
        raise UsageError(f"{self.prog}: {message} (see {self.prog} --help)")


def split_preset(args: list[str]) -> tuple[str, list[str]]:
    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument("--preset", default="default")
    known, rest = parser.parse_known_args(args)
    if known.preset not in PRESETS:
        raise ConfigError(f"unknown preset {known.preset!r}; valid: {', '.join(PRESETS)}")
    return known.preset, rest


def parse_config(args: list[str], prog: str = "lmrl train") -> Config:
    """Preset, then --config FILE, then flags on top; the config is validated when tyro builds
    it. With --resume the run's own config.json is the default instead of the preset (so `lmrl
    train --run-dir DIR --resume` needs no other flag), except trust_remote_code, which only a
    flag can turn on."""
    preset, rest = split_preset(args)
    default, name = resume_default(rest), f"preset {preset}"
    if default is None:
        default = PRESETS[preset]()
    else:
        name = "the run's config.json (--resume)"
    return cli_parse(Config, rest, prog, default=default,
                     description=f"Train with GRPO. Defaults: {name}; presets: "
                                 f"{', '.join(PRESETS)}.")


def resume_default(args: list[str]) -> Config | None:
    """The saved config of the run named by --run-dir when --resume is given."""
    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument("--run-dir")
    parser.add_argument("--resume", action="store_true")
    known, _ = parser.parse_known_args(args)
    path = Path(known.run_dir or "") / "config.json"
    if not (known.resume and known.run_dir and path.is_file()):
        return None
    return read_run_config(path, "--resume")


def read_run_config(path: Path, flag: str) -> Config:
    """A run's config.json, except trust_remote_code: whether to run a model's own code comes
    only from the user's flag, never from a file on disk."""
    try:
        saved = json.loads(path.read_text())
        saved.get("policy", {})["trust_remote_code"] = False
        return Config.from_dict(saved)
    except (ValueError, TypeError, AttributeError) as err:
        raise ConfigError(f"{flag}: {path} is not a config lmrl can read ({err}); give a run "
                          "directory that lmrl train wrote") from err


def cli_parse(cls, args: list[str], prog: str, description: str, default=None):
    """tyro, on top of `default` (else cls's defaults) with --config FILE's settings applied,
    with its usage errors turned into one `lmrl: error:` block (tyro prints its own formatted
    message and exits 2; its help exits 0) that names lmrl's flag for a TRL one."""
    config_file, args = split_config_file(args, prog)
    if config_file is not None:
        default = config_files.load(cls, config_file, default)
    description += (" --config FILE (.yaml, .toml, .json; a run's config.yaml) overrides the "
                    "defaults by these names; flags override both.")
    args = merge_repeated(compile_switch(args), list_flags(cls))
    captured = io.StringIO()
    try:
        with contextlib.redirect_stderr(captured):
            return tyro.cli(cls, args=args, prog=prog, description=description,
                            config=(tyro.conf.OmitArgPrefixes,), default=default)
    except SystemExit as exit_:
        if exit_.code in (0, None):
            sys.stderr.write(captured.getvalue())
            raise
        lines = (_unboxed(captured.getvalue()) or f"bad arguments; see {prog} --help").split("\n  ")
        end = next((i for i, line in enumerate(lines) if line.startswith("For full")), len(lines))
        lines[end:end] = trl_hints(args, cls)  # before tyro's "For full helptext" line
        raise UsageError("\n  ".join(lines)) from None


def compile_switch(args: list[str]) -> list[str]:
    """policy.compile is auto, on or off, and was a switch before auto: a bare `--compile`
    means `--compile on` and `--no-compile` means `--compile off`."""
    out: list[str] = []
    for i, arg in enumerate(args):
        if arg == "--no-compile":
            out += ["--compile", "off"]
        elif arg == "--compile" and (i + 1 == len(args) or args[i + 1].startswith("--")):
            out += ["--compile", "on"]
        else:
            out.append(arg)
    return out


def list_flags(cls) -> set[str]:
    """The flags of cls's (and its groups') tuple-valued fields: --reward-model, --stop, ..."""
    flags = set()
    for f in dataclasses.fields(cls):
        tp = f.type
        if typing.get_origin(tp) is Annotated:
            tp = typing.get_args(tp)[0]
        if dataclasses.is_dataclass(tp):
            flags |= list_flags(tp)
        elif typing.get_origin(tp) is tuple:
            flags.add("--" + f.name.replace("_", "-"))
    return flags


def merge_repeated(args: list[str], flags: set[str]) -> list[str]:
    """`--reward-model A --reward-model B` -> `--reward-model A B`: a list flag given twice adds
    to its list, where tyro alone would keep the last occurrence and drop the others without a
    word. Values are the tokens up to the next one that starts with "--"."""
    out: list[str] = []
    where: dict[str, int] = {}  # flag -> index in out just past its values so far
    i = 0
    while i < len(args):
        flag, eq, value = args[i].partition("=")
        if flag not in flags:
            out.append(args[i])
            i += 1
            continue
        j = i + 1
        while j < len(args) and not args[j].startswith("--"):
            j += 1
        values = ([value] if eq else []) + args[i + 1:j]
        if flag in where:
            at = where[flag]
            out[at:at] = values
            where = {k: v + len(values) if v >= at and k != flag else v
                     for k, v in where.items()}
            where[flag] = at + len(values)
        else:
            out += [flag, *values]
            where[flag] = len(out)
        i = j
    return out


def split_config_file(args: list[str], prog: str) -> tuple[str | None, list[str]]:
    """--config FILE out of the arguments (tyro parses the rest)."""
    parser = Parser(prog=prog, add_help=False, allow_abbrev=False)
    parser.add_argument("--config")
    known, rest = parser.parse_known_args(args)
    return known.config, rest


def trl_hints(args: list[str], cls) -> list[str]:
    """"did you mean" lines for the TRL option names among rejected flags."""
    known = config_files.names(cls)
    rejected = [a[2:].split("=")[0].replace("-", "_") for a in args if a.startswith("--")]
    hints = [trl_hint(name, set(known)) for name in rejected if name not in known]
    return [h for h in hints if h]


def _unboxed(text: str) -> str:
    """tyro's framed error box as plain lines, its title ("Value error") dropped and a config
    error shown as the config's own message."""
    lines = [line.strip().strip("╭╮╰╯│─ ") for line in text.splitlines()]
    lines = [line.split("Error parsing Config: ", 1)[-1] for line in lines
             if line and set(line) != {"─"}]
    if len(lines) > 1 and ":" not in lines[0]:
        lines = lines[1:]
    return "\n  ".join(lines)


def cmd_train(args: list[str]) -> None:
    nproc, args = split_nproc(args)
    if nproc > 1:
        relaunch(nproc, args)
    from lmrl.trainer import train

    train(parse_config(args))


def split_nproc(args: list[str]) -> tuple[int, list[str]]:
    """`--nproc N` (a launcher flag, not part of the run's config) and the other arguments."""
    for i, arg in enumerate(args):
        if arg == "--nproc" or arg.startswith("--nproc="):
            value = arg.partition("=")[2] if "=" in arg else \
                (args[i + 1] if i + 1 < len(args) else "")
            rest = args[:i] + args[i + (1 if "=" in arg else 2):]
            if not value.isdigit() or int(value) < 1:
                raise UsageError(f"--nproc takes a number of processes (1 or more), not "
                                 f"{value!r}")
            return int(value), rest
    return 1, args


def relaunch(nproc: int, args: list[str]) -> None:
    """Become `torchrun --standalone --nproc_per_node N -m lmrl -- train ARGS` (the `--` keeps
    torchrun from reading lmrl's flags, such as --n, as abbreviations of its own)."""
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone",
               "--nproc_per_node", str(nproc), "-m", "lmrl", "--", "train", *args]
    sys.stdout.flush()
    os.execv(sys.executable, command)


def cmd_sweep(args: list[str]) -> None:
    from lmrl.sweep import parse_grid, run_sweep

    parser = Parser(prog="lmrl sweep", description="Train a grid of runs.")
    parser.add_argument("--grid", action="append", default=[],
                        help="field=v1,v2 (repeatable), e.g. --grid delta=raw,centered")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--out", default="runs/sweep")
    own, _, train_args = _split_double_dash(args)
    if any(arg.split("=")[0] == "--config" for arg in own):
        raise UsageError("lmrl sweep: --config FILE sets train options: put it after --")
    ns = parser.parse_args(own)
    base = parse_config(train_args, prog="lmrl sweep ... --")
    run_sweep(base, parse_grid(base, ns.grid), ns.seeds, ns.out)
    print(open(f"{ns.out}/table.md").read())
    print(f"plot: {ns.out}/comparison.png")


def cmd_plot(args: list[str]) -> None:
    from lmrl.plotting import plot_runs

    parser = Parser(prog="lmrl plot", description="Overlay runs.")
    parser.add_argument("run_dirs", nargs="+")
    parser.add_argument("--metric", default="eval/exact_match")
    parser.add_argument("--out", default="comparison.png")
    ns = parser.parse_args(args)
    files.check_replaceable_file(ns.out, files.png_by_lmrl)
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
    chat_template: bool = False
    """Give the tokenizer a small chat template (<|role|>content per message, then
    <|assistant|>), for conversational data (prompts as lists of role/content messages)."""
    seed: int = 0
    overwrite: bool = False
    """Replace an earlier lmrl init-model output in --out."""


def cmd_init_model(args: list[str]) -> None:
    import string

    from lmrl.modelzoo import CHAT_TEMPLATE, init_model, task_alphabet

    a = cli_parse(InitModelArgs, args, "lmrl init-model",
                  "Build a small Llama/Qwen2-style causal LM with a character tokenizer for a "
                  "task (no download).")
    if a.alphabet not in ("task", "ascii"):
        raise ConfigError(f"--alphabet {a.alphabet!r}: valid: task, ascii")
    require_at_least({"--hidden-size": (a.hidden_size, 1), "--layers": (a.layers, 1),
                      "--heads": (a.heads, 1),
                      "--intermediate-size": (a.intermediate_size or 1, 1)})
    if not 0 <= a.seed <= MAX_SEED:
        raise ConfigError(f"--seed={a.seed} must be in 0..{MAX_SEED}")
    files.check_output(a.out, "init-model", overwrite=a.overwrite)
    task = text_task(a.task, model=a.out)
    template = CHAT_TEMPLATE if a.chat_template else None
    alphabet = task_alphabet(task, chat_template=template) if a.alphabet == "task" else \
        string.printable.strip("\x0b\x0c\r")
    try:
        with files.output_dir(a.out, "init-model", replace=a.overwrite) as tmp:
            count = init_model(tmp, alphabet, arch=a.arch, hidden_size=a.hidden_size,
                               num_layers=a.layers, num_heads=a.heads,
                               intermediate_size=a.intermediate_size, seed=a.seed,
                               chat_template=template)
    except ValueError as err:
        raise ConfigError(str(err)) from err
    print(f"wrote {a.out}: {a.arch}, {count:,} parameters, alphabet {alphabet!r}")


@dataclass(frozen=True)
class SFTArgs:
    model: str
    """Model to fine-tune (local directory or hub name)."""
    run_dir: Annotated[str, tyro.conf.arg(aliases=("--out",))]
    """Directory to write: the fine-tuned model (save_pretrained: lmrl train --model takes it)
    and summary.json."""
    task: TaskConfig = field(default_factory=lambda: TaskConfig(task="sort_text"))
    steps: int = 1000
    B: Annotated[int, tyro.conf.arg(aliases=("--batch-size",))] = 64
    """Examples (prompt and answer) per step; train's B is prompts per step."""
    lr: float = 1e-3
    """Peak learning rate (AdamW, linear warm-up then cosine to 0). Higher than train's 2e-4
    on purpose: SFT starts lmrl's tiny models from random weights; GRPO fine-tunes a
    warm-started model, which collapses at 1e-3."""
    warmup_steps: int = 20
    weight_decay: float = 0.0
    grad_clip: float = 1.0
    eval_every: int = 50
    eval_limit: Annotated[int, tyro.conf.arg(aliases=("--eval-examples",))] = 256
    """Held-out examples per evaluation (0 = all)."""
    stop_at: float | None = None
    """Stop once held-out exact match reaches this (e.g. 0.3: a warm start that sometimes
    succeeds, as a pretrained model would)."""
    seed: int = 0
    threads: int = 0
    """torch threads (0 = auto)."""
    device: str = "auto"
    progress: bool = True
    overwrite: bool = False
    """Replace an earlier lmrl sft output in --run-dir (only after the new one is complete)."""


def check_sft_args(a: SFTArgs) -> None:
    """Every number in range before anything loads (the training config does the same)."""
    check_optimizer_flags(a.lr, a.weight_decay, a.grad_clip)
    require_at_least({"--steps": (a.steps, 0), "--B": (a.B, 1),
                      "--eval-every": (a.eval_every, 1), "--warmup-steps": (a.warmup_steps, 0),
                      "--weight-decay": (a.weight_decay, 0), "--grad-clip": (a.grad_clip, 0),
                      "--eval-limit": (a.eval_limit, 0), "--seed": (a.seed, 0),
                      "--threads": (a.threads, 0)})
    if a.stop_at is not None and not 0 <= a.stop_at <= 1:
        raise ConfigError(f"--stop-at={a.stop_at} must be in [0, 1] (a held-out exact match)")
    check_device(a.device)


def cmd_sft(args: list[str]) -> None:
    from lmrl.sft import run_sft
    from lmrl.threads import configure_threads

    a = cli_parse(SFTArgs, args, "lmrl sft",
                  "Supervised fine-tuning on the task's demonstrations.")
    check_sft_args(a)
    configure_threads(a.threads, "lm")
    task = text_task(a.task, model=a.model)
    if a.stop_at is not None and task.correctness is None:
        raise ConfigError(f"--stop-at needs a right answer, and task {a.task.task} has no "
                          "correctness reward; drop --stop-at")
    summary = run_sft(a.model, task, a.run_dir, device=a.device, overwrite=a.overwrite,
                      steps=a.steps, batch_size=a.B, lr=a.lr, warmup_steps=a.warmup_steps,
                      weight_decay=a.weight_decay, grad_clip=a.grad_clip,
                      eval_every=a.eval_every, eval_examples=a.eval_limit or None,
                      stop_at=a.stop_at, seed=a.seed, progress=a.progress)
    keys = [k for k in summary if k.startswith(("eval/", "sft/"))]
    print("\n".join(f"  {k}  {summary[k]}" for k in keys) + f"\nsaved to {a.run_dir}")


@dataclass(frozen=True)
class EvalArgs:
    model: str | None = None
    """Checkpoint to evaluate: a save_pretrained directory or a hub name (default with --run-dir:
    the run's model/)."""
    run_dir: Annotated[str | None, tyro.conf.arg(aliases=("--run",))] = None
    """A run directory: evaluate with its task, held-out set and sampling settings
    (config.json), so the score is the run's own evaluation."""
    task: TaskConfig = field(default_factory=lambda: TaskConfig(task="sort_text"))
    eval_limit: Annotated[int, tyro.conf.arg(aliases=("--limit",))] = 0
    """Evaluate at most this many held-out examples (0 = all)."""
    eval_samples: Annotated[int, tyro.conf.arg(aliases=("--samples",))] = 0
    """Also sample this many completions per prompt for pass@k (0 = greedy only)."""
    log_samples: Annotated[int, tyro.conf.arg(aliases=("--show",))] = 4
    """Print this many held-out completions."""
    max_new_tokens: int = 0
    """Completion budget (0 = the run's, else the task's)."""
    stop: tuple[str, ...] = ()
    """Stop strings (default with --run-dir: the run's)."""
    device: str = "auto"
    out: str | None = None
    """Write the metrics as JSON here."""
    seed: int = 0
    threads: int = 0
    trust_remote_code: bool = False
    """Run the model's own code (only ever from this flag, never from a run's config.json)."""


NO_LORA = {name: getattr(PolicyConfig(), name) for name in
           ("lora_r", "lora_alpha", "lora_dropout", "lora_target_modules")}


def eval_settings(a: EvalArgs) -> tuple[str, TaskConfig, PolicyConfig]:
    """Model, task and sampling settings: the run's config.json with --run-dir, else the
    flags."""
    if a.run_dir is None:
        if a.model is None:
            raise ConfigError("lmrl eval needs --model DIR or --run-dir RUN_DIR")
        return a.model, a.task, PolicyConfig(model=a.model, max_new_tokens=a.max_new_tokens,
                                             stop=a.stop, trust_remote_code=a.trust_remote_code)
    if a.task != EvalArgs.__dataclass_fields__["task"].default_factory():
        raise ConfigError("--run-dir takes the task from the run's config.json; drop the task "
                          "flags")
    config_path = Path(a.run_dir) / "config.json"
    if not config_path.is_file():
        raise ConfigError(f"--run-dir: {config_path} does not exist; give a run directory that "
                          "lmrl train wrote")
    saved = read_run_config(config_path, "--run-dir")
    # The run's file says how it sampled; the user's flag says whether to run the model's code.
    # A LoRA run's model/ has the adapters merged in: it loads as a plain model.
    policy = dataclasses.replace(saved.policy, trust_remote_code=a.trust_remote_code,
                                 **NO_LORA)
    if a.max_new_tokens or a.stop:
        policy = dataclasses.replace(policy, max_new_tokens=a.max_new_tokens or
                                     policy.max_new_tokens, stop=a.stop or policy.stop)
    return a.model or str(Path(a.run_dir) / "model"), saved.task, policy


def cmd_eval(args: list[str]) -> None:
    import torch

    from lmrl.state import build_policy
    from lmrl.tasks.coverage import check_coverage
    from lmrl.tasks.text import evaluate_text
    from lmrl.threads import configure_threads
    from lmrl.trainer import build_task

    a = cli_parse(EvalArgs, args, "lmrl eval",
                  "Greedy held-out evaluation of a causal-LM checkpoint.")
    if a.out:
        files.check_replaceable_file(a.out, files.json_by_lmrl)
    configure_threads(a.threads, "lm")
    model, task_cfg, p = eval_settings(a)
    cfg = Config(task=task_cfg, policy=dataclasses.replace(p, model=model, device=a.device))
    task = build_task(cfg)
    policy = build_policy(cfg, task.max_new_tokens)  # as training loads it
    check_coverage(task, policy)
    metrics, shown = evaluate_text(task, policy, torch.Generator().manual_seed(a.seed),
                                   num_samples=a.eval_samples, max_examples=a.eval_limit or None,
                                   num_logged=a.log_samples)
    for sample in shown:
        print(f"{sample['prompt']!r} -> {sample['completion']!r}")
    print(json.dumps(metrics, indent=2))
    if a.out:
        files.write_text(a.out, json.dumps({"written_by": files.WRITER, "model": model,
                                            **metrics}, indent=2))


def _split_double_dash(args: list[str]) -> tuple[list[str], str, list[str]]:
    if "--" in args:
        i = args.index("--")
        return args[:i], "--", args[i + 1:]
    return args, "", []


def cmd_rm(args: list[str]) -> None:
    from lmrl.rm.cli import cmd_rm as rm

    rm(args)


COMMANDS = {"train": cmd_train, "sweep": cmd_sweep, "plot": cmd_plot,
            "init-model": cmd_init_model, "sft": cmd_sft, "eval": cmd_eval, "rm": cmd_rm}


def fail(message: str, code: int) -> None:
    print(f"lmrl: error: {message}", file=sys.stderr)
    sys.exit(code)


def main(argv: list[str] | None = None) -> None:
    """Run one command. A user error is one `lmrl: error:` block and exit code 2; a run stopped
    by SIGINT/SIGTERM exits 128 + the signal's number; a run stopped for non-finite numbers
    exits 1. `--debug` (anywhere) or LMRL_DEBUG=1 shows the traceback instead.

    A rank that torchrun started (WORLD_SIZE > 1) ends through distributed.leave, with the
    same exit code."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        run(argv)
        return
    from lmrl import distributed

    try:
        run(argv)
        code = 0
    except SystemExit as stop:
        code = stop.code
        if not isinstance(code, int):  # sys.exit("message") or sys.exit(): as Python shows them
            if code is not None:
                print(code, file=sys.stderr)
            code = int(code is not None)
    except BaseException:  # noqa: BLE001 - shown here, since leave() skips Python's own report
        traceback.print_exc()
        code = 1
    distributed.leave(code)


def run(argv: list[str] | None) -> None:
    """main's work: the command, with errors turned into messages and exit codes."""
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv or os.environ.get("LMRL_DEBUG", "") not in ("", "0")
    argv = [a for a in argv if a != "--debug"]
    if argv and argv[0] in ("--version", "-V"):
        print(f"lmrl {__version__}")
        return
    if not argv or argv[0] not in COMMANDS:
        helped = bool(argv) and argv[0] in ("-h", "--help")
        print(USAGE.format(presets="|".join(PRESETS)), file=sys.stdout if helped else sys.stderr)
        if not helped:
            fail(f"unknown command {argv[0]!r}; choose one of {', '.join(COMMANDS)}" if argv
                 else "no command given; choose one of " + ", ".join(COMMANDS), 2)
        return
    try:
        COMMANDS[argv[0]](argv[1:])
    except RunInterrupted as stop:
        if debug:
            raise
        print(f"lmrl: {stop}", file=sys.stderr)
        sys.exit(128 + stop.signum)
    except KeyboardInterrupt:  # outside a training loop, or a second Ctrl-C inside one
        if debug:
            raise
        print("lmrl: interrupted", file=sys.stderr)
        sys.exit(130)
    except (UserError, NonFiniteError) as err:
        if debug:
            raise
        fail(str(err), 2 if isinstance(err, UserError) else 1)
    except BrokenPipeError:  # `lmrl train --help | head`: the reader left; no traceback
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # nor one at exit
        sys.exit(141)  # 128 + SIGPIPE, as a shell reports it


if __name__ == "__main__":
    main()
