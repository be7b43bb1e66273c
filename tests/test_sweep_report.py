"""lmrl sweep's report: the table gives the spread over seeds, not only the mean, and the plot
tells every run apart however many there are (colour = configuration, style = seed)."""

import json
from pathlib import Path

import matplotlib.colors
import matplotlib.pyplot as plt
import pytest

from lmrl.config import Config
from lmrl.plotting import line_styles, palette, plot_runs, runs_figure
from lmrl.sweep import markdown_table, run_sweep, spread


def result(label: str, seed: int, exact: float, reward: float, wall: float = 1.0) -> dict:
    return {"label": label, "seed": seed, "delta": label, "eval/exact_match": exact,
            "eval/reward": reward, "wall_seconds": wall}


def test_table_cells_are_mean_std_min_max_over_seeds():
    results = [result("raw", 0, 0.5, 1.0), result("raw", 1, 0.7, 2.0), result("raw", 2, 0.9, 3.0),
               result("centered", 0, 0.25, 4.0, wall=2.5)]
    lines = markdown_table(results, ["delta"]).splitlines()
    assert lines[0] == "| delta | seeds | eval/exact_match | eval/reward | wall_seconds |"
    # sample std of 0.5, 0.7, 0.9 is 0.2; of 1, 2, 3 it is 1
    assert lines[2] == ("| raw | 3 | 0.700 ± 0.200 [0.500, 0.900] | 2.000 ± 1.000 [1.000, 3.000] "
                        "| 1.000 ± 0.000 [1.000, 1.000] |")
    assert lines[3] == "| centered | 1 | 0.250 | 4.000 | 2.500 |"  # one seed: no spread to give
    assert "mean ± sample standard deviation [min, max] over the seeds" in lines[-1]
    assert spread([1.0, 3.0]) == "2.000 ± 1.414 [1.000, 3.000]"


def test_twelve_configurations_times_three_seeds_never_share_a_style():
    groups = [f"lr={i}" for i in range(12) for _ in range(3)]
    styles = line_styles(groups)
    by_group = {}
    for group, style in zip(groups, styles, strict=True):
        by_group.setdefault(group, set()).add(style["color"])
    assert all(len(colors) == 1 for colors in by_group.values())  # one colour per configuration
    assert len({c for colors in by_group.values() for c in colors}) == 12
    assert len({(s["color"], s["linestyle"], s["marker"]) for s in styles}) == 36
    assert [s["linestyle"] for s in styles[:3]] == ["-", "--", ":"]  # seed by seed


@pytest.mark.parametrize("n", [1, 10, 11, 20, 21, 60])
def test_palette_colours_are_distinct(n):
    colors = palette(n)
    assert len(colors) == n
    assert len({matplotlib.colors.to_hex(c) for c in colors}) == n


def write_run(path: Path, values: list[float]) -> Path:
    path.mkdir(parents=True)
    (path / "metrics.jsonl").write_text("".join(
        json.dumps({"step": step, "eval/exact_match": v}) + "\n" for step, v in enumerate(values)))
    return path


def test_the_figure_of_eleven_runs_has_eleven_colours(tmp_path):
    """`lmrl plot` with many runs and no groups: each run its own colour (tab10 has only 10)."""
    runs = [[{"step": 0, "eval/exact_match": i / 11}] for i in range(11)]
    fig = runs_figure(runs, "eval/exact_match", [f"r{i}" for i in range(11)])
    lines = fig.axes[0].get_lines()
    assert len({matplotlib.colors.to_hex(line.get_color()) for line in lines}) == 11
    plt.close(fig)
    dirs = [write_run(tmp_path / f"r{i}", [0.1, i / 11]) for i in range(11)]
    assert plot_runs(dirs, tmp_path / "all.png").stat().st_size > 1000


def test_sweep_writes_the_spread_and_groups_the_plot_by_configuration(tmp_path, monkeypatch):
    """run_sweep end to end with a stand-in for training (each run writes its metrics.jsonl)."""
    grouped = {}

    def fake_train(cfg: Config, verbose: bool) -> dict:
        exact = cfg.train.seed / 10 + (cfg.algo.delta == "raw") * 0.5
        write_run(Path(cfg.log.run_dir), [0.0, exact])
        return {"eval/exact_match": exact, "eval/reward": 2 * exact, "wall_seconds": 1.0,
                "run_dir": cfg.log.run_dir}

    def spy(run_dirs, out, metric="eval/exact_match", labels=None, groups=None):
        grouped["groups"] = groups
        return plot_runs(run_dirs, out, metric, labels, groups)

    monkeypatch.setattr("lmrl.sweep.plot_runs", spy)
    run_sweep(Config(), {"delta": ["raw", "centered"]}, [0, 1, 2], tmp_path / "sweep",
              train_fn=fake_train)
    table = (tmp_path / "sweep" / "table.md").read_text()
    assert "| raw | 3 | 0.600 ± 0.100 [0.500, 0.700] |" in table
    assert "| centered | 3 | 0.100 ± 0.100 [0.000, 0.200] |" in table
    assert grouped["groups"] == ["delta=raw"] * 3 + ["delta=centered"] * 3
    assert (tmp_path / "sweep" / "comparison.png").stat().st_size > 1000
