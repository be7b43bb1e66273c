"""Plots read the JSONL a run wrote; nothing here touches a model."""

import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from lmrl import files  # noqa: E402
from lmrl.errors import UserError  # noqa: E402
from lmrl.logging import read_metrics  # noqa: E402


def series(rows: list[dict], key: str) -> tuple[list[int], list[float]]:
    points = [(r["step"], r[key]) for r in rows if r.get(key) is not None]
    return [s for s, _ in points], [v for _, v in points]


def run_metrics(run_dir: str | Path) -> list[dict]:
    """The rows of a run directory's metrics.jsonl; anything else is a UserError naming it."""
    path = Path(run_dir) / "metrics.jsonl"
    if not Path(run_dir).is_dir():
        raise UserError(f"{run_dir} is not a directory; give the run_dir of a training run")
    if not path.is_file():
        raise UserError(f"{run_dir} has no metrics.jsonl, so it is not a run directory (or its "
                        "run has not logged a step yet); give the run_dir of a training run")
    try:
        return read_metrics(run_dir)
    except ValueError as err:  # bad JSON or bytes, e.g. a line cut short by a killed run
        raise UserError(f"cannot read {path}: {err}; remove or repair the broken line") from err


def save(fig, out: Path) -> Path:
    """Write the figure atomically (files.atomic_file: a reader or a crash never sees half a
    PNG), marked as lmrl's in its metadata so that a later plot may replace it
    (files.png_by_lmrl) and nothing else is."""
    try:
        with files.atomic_file(out) as tmp:
            fig.savefig(tmp, dpi=100, format=out.suffix.lstrip(".") or "png",
                        metadata={"Software": files.WRITER})
    finally:
        plt.close(fig)
    return out


def plot_run(run_dir: str | Path, out: str | Path | None = None) -> Path:
    """Train reward (sampled) and held-out reward (greedy) per step, and held-out exact match."""
    run_dir = Path(run_dir)
    rows = run_metrics(run_dir)
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    left.plot(*series(rows, "train/reward_mean"), label="train reward (sampled)", alpha=0.7)
    left.plot(*series(rows, "eval/reward"), "o-", label="held-out reward (greedy)")
    left.set_xlabel("step")
    left.set_ylabel("reward")
    left.legend()
    right.plot(*series(rows, "train/exact_match"), label="train exact match (sampled)", alpha=0.7)
    right.plot(*series(rows, "eval/exact_match"), "o-", label="held-out exact match (greedy)")
    right.set_xlabel("step")
    right.set_ylim(-0.02, 1.02)
    right.legend()
    fig.suptitle(run_dir.name)
    fig.tight_layout()
    return save(fig, Path(out) if out else run_dir / "reward.png")


def plot_runs(run_dirs: list[str | Path], out: str | Path, metric: str = "eval/exact_match",
              labels: list[str] | None = None, groups: list[str] | None = None) -> Path:
    """Overlay one metric of several runs (`groups`: see runs_figure). A metric no run logged is
    a UserError listing the ones they did; runs without it are left out with a note."""
    runs = [run_metrics(run_dir) for run_dir in run_dirs]
    has = [bool(series(rows, metric)[0]) for rows in runs]
    if not any(has):
        logged = sorted({k for rows in runs for r in rows for k, v in r.items()
                         if v is not None and k != "step"})
        raise UserError(f"no run logged metric {metric!r}; pick one of theirs with --metric: "
                        f"{', '.join(logged) or '(none: the runs logged no steps)'}")
    if not all(has):
        missing = [str(d) for d, h in zip(run_dirs, has, strict=True) if not h]
        print(f"note: {', '.join(missing)} did not log {metric!r}; plotting the other runs",
              file=sys.stderr)
    labels = labels or [Path(run_dir).name for run_dir in run_dirs]
    kept = [i for i, h in enumerate(has) if h]
    return save(runs_figure([runs[i] for i in kept], metric, [labels[i] for i in kept],
                            [groups[i] for i in kept] if groups else None), Path(out))


def runs_figure(runs: list[list[dict]], metric: str, labels: list[str],
                groups: list[str] | None = None):
    """One line per run: coloured by its group (a sweep's configuration; without groups every
    run is its own), dashed and marked by its place in the group (the seed)."""
    styles = line_styles(groups or labels)
    fig, ax = plt.subplots(figsize=(7 + 2 * (len(runs) > 10), 4.5))
    evaluated = metric.startswith("eval/")
    for rows, label, style in zip(runs, labels, styles, strict=True):
        ax.plot(*series(rows, metric), label=label, markersize=3, color=style["color"],
                linestyle=style["linestyle"], marker=style["marker"] if evaluated else None)
    ax.set_xlabel("step")
    ax.set_ylabel(metric)
    if len(runs) > 10:  # beside the axes, where it hides no line
        ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1),
                  ncol=1 + len(runs) // 25)
    else:
        ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


LINESTYLES = ("-", "--", ":", "-.")
MARKERS = ("o", "s", "^", "D", "v", "P", "X")  # with LINESTYLES: 28 distinct seeds


def line_styles(groups: list[str]) -> list[dict]:
    """Per run, the colour of its group and the line style and marker of its place in it."""
    order = list(dict.fromkeys(groups))
    colors = palette(len(order))
    places: dict[str, int] = {}
    styles = []
    for group in groups:
        place = places[group] = places.get(group, -1) + 1
        styles.append({"color": colors[order.index(group)],
                       "linestyle": LINESTYLES[place % len(LINESTYLES)],
                       "marker": MARKERS[place % len(MARKERS)]})
    return styles


def palette(n: int) -> list[tuple]:
    """n distinct colours: tab10's, then tab20's (its 10 dark hues first, so that neighbours
    differ in hue, then the light ones), then evenly spaced along turbo."""
    tab20 = matplotlib.colormaps["tab20"].colors
    for colors in (matplotlib.colormaps["tab10"].colors, tab20[0::2] + tab20[1::2]):
        if n <= len(colors):
            return [tuple(c) for c in colors[:n]]
    return [tuple(matplotlib.colormaps["turbo"](i / (n - 1))) for i in range(n)]
