"""Shared plumbing for the experiment scripts: run a grid of configs over seeds (2 processes),
store one JSONL row per run, and summarise rows into tables.

Each row is self-contained: the label, the seed, the exact config changes, the final held-out
metrics and the evaluation curve, so plots and tables are made from the JSONL alone.
"""

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
# the lecture's model) is used because the default hidden-layer model collapses to a deterministic
# policy within ~200 steps at these sizes, which leaves too little to compare.
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

# Per-step training metrics kept in each row's curve (eval/* keys are kept at every evaluation).
TRAIN_KEYS = ("train/reward_mean", "train/exact_match", "train/flat_group_frac",
              "policy/entropy", "policy/grad_norm", "loss/clip_frac_high", "loss/clip_frac_low",
              "loss/ratio_max", "loss/approx_kl_old", "loss/kl_ref")


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


def run_one(job: tuple[str, str, int, dict]) -> dict:
    """Train one config (in a worker process) and return its JSONL row."""
    from lmrl.config import Config
    from lmrl.logging import read_metrics
    from lmrl.trainer import train

    experiment, label, seed, changes = job
    run_dir = RUNS / experiment / f"{label}_seed{seed}"
    changes = merge(changes, {"train": {"seed": seed, "threads": 1},
                              "log": {"run_dir": str(run_dir), "overwrite": True,
                                      "progress": False}})
    summary = train(Config().replace(**changes), verbose=False)
    rows = read_metrics(run_dir)
    curve: dict[str, list] = {}
    for r in rows:
        for key, value in r.items():
            if key.startswith("eval/") or key in TRAIN_KEYS:
                curve.setdefault(key, []).append([r["step"], value])
    final = {k: v for k, v in summary.items() if k.startswith("eval/")}
    return {"experiment": experiment, "label": label, "seed": seed, "config": changes,
            "final": final, "wall_seconds": summary["wall_seconds"], "run_dir": str(run_dir),
            "curve": curve}


def run_grid(experiment: str, settings: dict[str, dict], seeds: list[int],
             workers: int = 2) -> list[dict]:
    """Train every (label, changes) in settings for every seed; rows in the order given."""
    jobs = [(experiment, label, seed, changes) for label, changes in settings.items()
            for seed in seeds]
    missing = sorted({f for _, _, _, c in jobs for f in unset_fields(c)})
    if missing:
        print(f"note: left at the library default: {', '.join(missing)}")
    # spawn, not fork: a forked child inherits torch's thread pool state from the parent.
    ctx = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=workers, mp_context=ctx) as pool:
        rows = list(pool.map(run_one, jobs))
    return rows


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


def plot_mean_curves(ax, rows: list[dict], key: str, smooth: int = 1) -> None:
    """Per label: the mean over seeds as a line, each seed as a thin line."""
    for i, (label, group) in enumerate(by_label(rows).items()):
        color = f"C{i}"
        series = [curve(r, key) for r in group]
        for steps, values in series:
            ax.plot(steps, moving_average(values, smooth), color=color, alpha=0.25, lw=0.8)
        steps = series[0][0]
        if all(s == steps for s, _ in series):
            mean = [statistics.mean(vs) for vs in zip(*(v for _, v in series), strict=True)]
            ax.plot(steps, moving_average(mean, smooth), color=color, lw=2, label=label)
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
