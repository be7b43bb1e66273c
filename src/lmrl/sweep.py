"""Grids of runs: every combination of some config fields × seeds, a markdown table and a plot."""

import dataclasses
import difflib
import itertools
import json
import statistics
import typing
from pathlib import Path

from lmrl import files
from lmrl.config import Config
from lmrl.errors import ConfigError
from lmrl.plotting import plot_runs


def field_names(cfg: Config) -> list[str]:
    """Every flat field name a grid may sweep."""
    return sorted(f.name for group in dataclasses.fields(cfg)
                  for f in dataclasses.fields(getattr(cfg, group.name)))


def field_group(cfg: Config, name: str) -> str:
    """Which config group owns a flat field name (e.g. 'delta' -> 'algo')."""
    for group in dataclasses.fields(cfg):
        if name in {f.name for f in dataclasses.fields(getattr(cfg, group.name))}:
            return group.name
    names = field_names(cfg)
    close = difflib.get_close_matches(name, names, n=3)
    hint = f" (did you mean {', '.join(close)}?)" if close else ""
    raise ConfigError(f"unknown config field {name!r} in the sweep grid{hint}; valid fields: "
                      f"{', '.join(names)}")


TRUE, FALSE = ("1", "true", "yes"), ("0", "false", "no")


def parse_value(cfg: Config, name: str, text: str):
    """Convert a grid value to the field's declared type (`float | None` -> float or None)."""
    group = getattr(cfg, field_group(cfg, name))
    declared = typing.get_type_hints(type(group))[name]  # Annotated[...] help text stripped
    kinds = str(declared)
    expected = getattr(declared, "__name__", kinds)  # "int", "float | None"
    if text.lower() == "none" and "None" in kinds:
        return None
    if "tuple" in kinds:
        raise ConfigError(f"a sweep grid cannot vary {name} (a list of values); give it after "
                          "'--' to set it for every run")
    if "bool" in kinds:
        if text.lower() in TRUE + FALSE:
            return text.lower() in TRUE
        raise ConfigError(f"sweep grid value {name}={text!r} is not a bool; use true or false")
    for kind in (int, float):
        if kind.__name__ in kinds:
            try:
                return kind(text)
            except ValueError as err:
                example = f"{kind(1)},{kind(2)}"
                raise ConfigError(f"sweep grid value {name}={text!r} does not parse as "
                                  f"{expected}; write e.g. --grid {name}={example}") from err
    return text


def parse_grid(cfg: Config, specs: list[str]) -> dict[str, list]:
    """["delta=raw,centered", "lr=1e-3,3e-3"] -> {"delta": ["raw", "centered"], "lr": [...]}."""
    grid = {}
    for spec in specs:
        name, eq, values = spec.partition("=")
        name = name.strip().replace("-", "_")  # the flag spelling (--kl-weight) works too
        items = [v.strip() for v in values.split(",")]
        if not eq or not name or not all(items):
            raise ConfigError(f"grid entry {spec!r} must look like name=v1,v2 with no empty "
                              "value, e.g. --grid delta=raw,centered")
        if name in grid:
            raise ConfigError(f"grid field {name!r} is given twice; list all its values in one "
                              f"--grid {name}=v1,v2")
        if name == "seed":
            raise ConfigError("sweep seeds with --seeds 0 1 2, not --grid seed=...")
        grid[name] = [parse_value(cfg, name, v) for v in items]
    return grid


def run_sweep(base: Config, grid: dict[str, list], seeds: list[int], out_dir: str | Path,
              train_fn=None) -> list[dict]:
    """Train every combination; write out_dir/table.md, results.jsonl and comparison.png."""
    from lmrl.trainer import train

    train_fn = train_fn or train
    out_dir = Path(out_dir)
    results = []
    names = list(grid)
    runs = []
    for combo in itertools.product(*(grid[n] for n in names)):
        for seed in seeds:
            setting = dict(zip(names, combo, strict=True))
            label = "_".join(f"{n}={v}" for n, v in setting.items()) or "base"
            changes: dict[str, dict] = {}
            for n, v in setting.items():
                changes.setdefault(field_group(base, n), {})[n] = v
            changes.setdefault("train", {})["seed"] = seed
            changes.setdefault("log", {}).update(
                {"run_dir": str(out_dir / f"{label}_seed={seed}"), "overwrite": True,
                 "progress": False})
            # Built (and so validated) up front: a bad combination fails before any training.
            runs.append((label, seed, setting, base.replace(**changes)))
    # A sweep directory is lmrl's ("sweep" marker); a rerun replaces its runs one by one.
    files.check_output(out_dir, "sweep", overwrite=files.read_marker(out_dir) is not None)
    files.claim_output(out_dir, "sweep", replace=False)
    for label, seed, setting, cfg in runs:
        summary = train_fn(cfg, verbose=False)
        results.append({"label": label, "seed": seed, **setting, **summary})
        print(f"{label} seed={seed}: held-out exact match "
              f"{summary['eval/exact_match']:.3f}, {summary['wall_seconds']:.1f}s")
    files.write_text(out_dir / "results.jsonl", "".join(json.dumps(r) + "\n" for r in results))
    files.write_text(out_dir / "table.md", markdown_table(results, names))
    plot_runs([r["run_dir"] for r in results], out_dir / "comparison.png",
              labels=[f"{r['label']} s{r['seed']}" for r in results],
              groups=[r["label"] for r in results])
    return results


def markdown_table(results: list[dict], names: list[str]) -> str:
    """One row per setting: the final held-out metrics over its seeds, as mean ± sample std
    [min, max] (one seed: its value), so that a difference can be told from seed noise."""
    rows: dict[str, list[dict]] = {}
    for r in results:
        rows.setdefault(r["label"], []).append(r)
    cols = ["eval/exact_match", "eval/reward", "wall_seconds"]
    head = "| " + " | ".join(names + ["seeds"] + cols) + " |"
    lines = [head, "|" + "---|" * (len(names) + 1 + len(cols))]
    for group in rows.values():
        cells = [str(group[0][n]) for n in names] + [str(len(group))]
        cells += [spread([r[c] for r in group]) for c in cols]
        lines.append("| " + " | ".join(cells) + " |")
    note = "\nEach cell: mean ± sample standard deviation [min, max] over the seeds.\n"
    return "\n".join(lines) + "\n" + note


def spread(values: list[float]) -> str:
    """[0.5, 0.7, 0.9] -> "0.700 ± 0.200 [0.500, 0.900]"; one value -> "0.500"."""
    if len(values) == 1:
        return f"{values[0]:.3f}"
    return (f"{statistics.mean(values):.3f} ± {statistics.stdev(values):.3f} "
            f"[{min(values):.3f}, {max(values):.3f}]")
