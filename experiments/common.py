"""Shared plumbing for the experiment scripts: run a grid of configs over seeds (2 processes),
store one JSONL row per run, and summarise rows into tables.

Each row is self-contained: the label, the seed, the exact config changes, the final held-out
metrics and the evaluation curve, so plots and tables are made from the JSONL alone.
"""

import argparse
import json
import multiprocessing
import statistics
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"
RUNS = RESULTS / "runs"

# Every setting the training experiments depend on, so that a re-tuned library default changes
# nothing here. Each script overrides what its question varies. The linear toy model (hidden=0,
# the lecture's model) is used: in exploratory runs the hidden=256 model turned deterministic
# within a few hundred steps at lower held-out exact match, which leaves little to compare (check
# with --set policy.hidden=256; README.md has the numbers).
BASE = {
    "task": {"task": "sort", "n": 5, "V": 8, "repeats": True, "prompts": "random",
             "heldout_size": 2000, "split_seed": 0, "reward": "positional"},
    "policy": {"model": "toy", "dim": 32, "hidden": 0, "init": "scaled", "init_scale": 0.5,
               "symmetric_init": True},
    "algo": {"delta": "centered", "norm_eps": 1e-6, "loss": "clipped", "clip_eps": 0.2,
             "clip_eps_low": None, "clip_eps_high": None, "ratio_level": "token",
             "kl_weight": 0.0, "kl_estimator": None, "ref_refresh": 0, "mu": 1,
             "aggregation": "token_mean"},
    "train": {"B": 32, "G": 8, "lr": 1e-3, "schedule": "constant", "warmup_steps": 0,
              "weight_decay": 0.0, "grad_clip": 1.0, "grad_accum": 1, "steps": 1500,
              "time_limit": 0.0},
    "log": {"eval_every": 50, "eval_samples": 0, "logger": "jsonl", "save_every": 0,
            "resume": False},
}

# Per-step training metrics kept in each row's curve by default (a script may ask for fewer);
# eval/* keys are kept at every evaluation. At most MAX_POINTS steps of each are kept (evenly
# spaced) and values are rounded to 4 significant digits, to keep the JSONL small.
TRAIN_KEYS = ("train/reward_mean", "train/flat_group_frac", "policy/entropy")
MAX_POINTS = 500


def merge(*changes: dict) -> dict:
    """Merge {group: {field: value}} dicts; later ones win field by field."""
    out: dict[str, dict] = {}
    for change in changes:
        for group, fields in change.items():
            out.setdefault(group, {}).update(fields)
    return out


def unset_fields(changes: dict) -> list[str]:
    """Config fields these changes leave at the library default (a field added after this file)."""
    import dataclasses

    from lmrl.config import Config

    cfg = Config()
    skip = {"run_dir", "overwrite", "progress", "seed", "threads", "train_frac",
            "constants_in_train", "min_lr_frac"}
    return [f"{g.name}.{f.name}" for g in dataclasses.fields(cfg)
            for f in dataclasses.fields(getattr(cfg, g.name))
            if f.name not in skip and f.name not in changes.get(g.name, {})]


def run_one(job: tuple[str, str, int, dict, tuple[str, ...]]) -> dict:
    """Train one config (in a worker process) and return its JSONL row."""
    from lmrl.config import Config
    from lmrl.logging import read_metrics
    from lmrl.trainer import train

    experiment, label, seed, changes, train_keys = job
    run_dir = RUNS / experiment / f"{label}_seed{seed}"
    changes = merge(changes, {"train": {"seed": seed, "threads": 1},
                              "log": {"run_dir": str(run_dir), "overwrite": True,
                                      "progress": False}})
    summary = train(Config().replace(**changes), verbose=False)
    rows = read_metrics(run_dir)
    every = max(1, len(rows) // MAX_POINTS)
    curve: dict[str, list] = {}
    for r in rows:
        for key, value in r.items():
            keep = key.startswith("eval/") or (key in train_keys and r["step"] % every == 0)
            if keep:
                value = None if value is None else float(f"{value:.4g}")
                curve.setdefault(key, []).append([r["step"], value])
    final = {k: v for k, v in summary.items() if k.startswith("eval/")}
    return {"experiment": experiment, "label": label, "seed": seed, "config": changes,
            "final": final, "wall_seconds": summary["wall_seconds"], "run_dir": str(run_dir),
            "curve": curve}


def add_args(parser: argparse.ArgumentParser, steps: int) -> None:
    """The flags every training experiment shares."""
    parser.add_argument("--seeds", type=seeds_arg, default=seeds_arg("3"),
                        help="number of seeds (3 -> 0,1,2) or a comma list (default 3)")
    parser.add_argument("--steps", type=int, default=steps, help=f"default {steps}")
    parser.add_argument("--workers", type=int, default=2, help="parallel training processes")
    parser.add_argument("--set", action="append", default=[], metavar="GROUP.FIELD=VALUE",
                        help="override a config field in every run, e.g. policy.hidden=256 "
                             "(results then go to results/<name>_<tag>.*)")
    parser.add_argument("--tag", default=None, help="suffix of the output files (default: "
                        "'custom' when --set is given)")


def overrides(specs: list[str]) -> dict:
    """["policy.hidden=256"] -> {"policy": {"hidden": 256}}, typed like the field's default."""
    from lmrl.config import Config
    from lmrl.sweep import parse_value

    out: dict[str, dict] = {}
    for spec in specs:
        key, _, text = spec.partition("=")
        group, _, name = key.partition(".")
        if not text or not name:
            raise SystemExit(f"--set {spec!r} must look like group.field=value")
        out.setdefault(group, {})[name] = parse_value(Config(), name, text)
    return out


def output_name(name: str, args: argparse.Namespace) -> str:
    tag = args.tag if args.tag is not None else ("custom" if args.set else "")
    return f"{name}_{tag}" if tag else name


def run_grid(experiment: str, settings: dict[str, dict], args: argparse.Namespace,
             train_keys: tuple[str, ...] = TRAIN_KEYS) -> list[dict]:
    """Train every (label, changes) in settings for every seed, with the --set overrides applied
    last; rows in the order given."""
    extra = overrides(args.set)
    jobs = [(experiment, label, seed, merge(changes, extra), train_keys)
            for label, changes in settings.items() for seed in args.seeds]
    missing = sorted({f for job in jobs for f in unset_fields(job[3])})
    if missing:
        print(f"note: left at the library default: {', '.join(missing)}")
    # spawn, not fork: a forked child inherits torch's thread pool state from the parent.
    ctx = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=args.workers, mp_context=ctx) as pool:
        rows = list(pool.map(run_one, jobs))
    return rows


def describe(row: dict) -> str:
    """One line with the settings of a run (the first row's, for a table header)."""
    c = row["config"]
    t, p, a, tr = c["task"], c["policy"], c["algo"], c["train"]
    return (f"sort n={t['n']} V={t['V']} reward={t['reward']}; toy policy dim={p['dim']} "
            f"hidden={p['hidden']}; delta={a['delta']} loss={a['loss']} (ε={a['clip_eps']}, "
            f"{a['ratio_level']} ratio) μ={a['mu']} kl_weight={a['kl_weight']}; B={tr['B']} "
            f"G={tr['G']} lr={tr['lr']} ({tr['schedule']}) grad_clip={tr['grad_clip']} "
            f"steps={tr['steps']}")


def write_jsonl(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    RUNS.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def read_jsonl(path: Path) -> list[dict]:
    with path.open() as f:
        return [json.loads(line) for line in f if line.strip()]


def by_label(rows: list[dict]) -> dict[str, list[dict]]:
    out: dict[str, list[dict]] = {}
    for r in rows:
        out.setdefault(r["label"], []).append(r)
    return out


def mean_std(values: list[float]) -> str:
    """'mean ± std' over seeds; values that are nan (e.g. 'never reached') are counted apart."""
    values = [float(v) for v in values]
    finite = [v for v in values if v == v]
    if len(finite) < len(values):
        head = mean_std(finite) if finite else "-"
        return f"{head} ({len(values) - len(finite)}/{len(values)} never)"
    if len(values) == 1:
        return f"{values[0]:.3f}"
    return f"{statistics.mean(values):.3f} ± {statistics.stdev(values):.3f}"


def markdown_table(header: list[str], lines: list[list[str]]) -> str:
    out = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    out += ["| " + " | ".join(cells) + " |" for cells in lines]
    return "\n".join(out)


def summary_table(rows: list[dict], columns: dict[str, Callable[[dict], float]],
                  per_seed: str | None = None) -> str:
    """One line per label: mean ± std over seeds of each column; optionally one column listing
    the per-seed values of `per_seed` (a key of columns)."""
    header = ["setting", "seeds", *columns]
    if per_seed:
        header.append(f"{per_seed} per seed")
    lines = []
    for label, group in by_label(rows).items():
        cells = [label, str(len(group))]
        cells += [mean_std([fn(r) for r in group]) for fn in columns.values()]
        if per_seed:
            cells.append(" ".join(f"{columns[per_seed](r):.2f}" for r in group))
        lines.append(cells)
    return markdown_table(header, lines)


def curve(row: dict, key: str) -> tuple[list[int], list[float]]:
    points = [(s, v) for s, v in row["curve"].get(key, []) if v is not None]
    return [s for s, _ in points], [v for _, v in points]


def last(row: dict, key: str) -> float:
    """Last logged value of a curve key (e.g. the final step's policy/entropy)."""
    _, values = curve(row, key)
    return values[-1] if values else float("nan")


# Distinct line styles, so settings whose curves coincide (centered and rloo) stay visible.
STYLES = ("-", "--", "-.", ":", (0, (1, 3)))


def plot_mean_curves(ax, rows: list[dict], key: str, smooth: int = 1) -> None:
    """Per label: the mean over seeds as a line, each seed as a thin line."""
    for i, (label, group) in enumerate(by_label(rows).items()):
        color, style = f"C{i}", STYLES[i % len(STYLES)]
        series = [curve(r, key) for r in group]
        for steps, values in series:
            ax.plot(steps, moving_average(values, smooth), color=color, alpha=0.25, lw=0.8)
        steps = series[0][0]
        if all(s == steps for s, _ in series):
            mean = [statistics.mean(vs) for vs in zip(*(v for _, v in series), strict=True)]
            ax.plot(steps, moving_average(mean, smooth), color=color, ls=style, lw=2, label=label)
    ax.set_xlabel("step")
    ax.set_ylabel(key)


def moving_average(values: list[float], k: int) -> list[float]:
    if k <= 1:
        return list(values)
    out, acc = [], 0.0
    for i, v in enumerate(values):
        acc += v
        if i >= k:
            acc -= values[i - k]
        out.append(acc / min(i + 1, k))
    return out


def seeds_arg(text: str) -> list[int]:
    """'3' -> [0, 1, 2]; '0,4,7' -> [0, 4, 7]."""
    if "," in text:
        return [int(s) for s in text.split(",")]
    return list(range(int(text)))
