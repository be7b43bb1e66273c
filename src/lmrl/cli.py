"""Command line: `lmrl train`, `lmrl sweep`, `lmrl plot`.

`lmrl train [--preset NAME] [--FIELD VALUE ...]`: every Config field is a flat flag (`--delta`,
`--kl-weight`, `--G`); flags given with a preset override it.
"""

import argparse
import sys

import tyro

from lmrl.config import Config, ConfigError
from lmrl.presets import PRESETS

USAGE = """usage: lmrl {{train,sweep,plot}} ...

  lmrl train [--preset {presets}] [options]   train one run (lmrl train --help)
  lmrl sweep --grid delta=raw,centered [--grid ...] [--seeds 0 1] [--out DIR] [-- train options]
  lmrl plot RUN_DIR [RUN_DIR ...] [--metric eval/exact_match] [--out FILE]
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


def _split_double_dash(args: list[str]) -> tuple[list[str], str, list[str]]:
    if "--" in args:
        i = args.index("--")
        return args[:i], "--", args[i + 1:]
    return args, "", []


COMMANDS = {"train": cmd_train, "sweep": cmd_sweep, "plot": cmd_plot}


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
