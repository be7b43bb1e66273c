"""Tiers 3 and 5: whole runs — learning, run directories, resume, the CLI as a subprocess."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from lmrl.config import Config
from lmrl.logging import read_metrics
from lmrl.sweep import run_sweep
from lmrl.trainer import train

QUICK = {"task": {"n": 4, "V": 6, "heldout_size": 200}, "policy": {"dim": 16, "hidden": 64}}


def quick(tmp_path: Path, name: str, **groups) -> Config:
    merged = {k: dict(v) for k, v in QUICK.items()}
    for k, v in groups.items():
        merged.setdefault(k, {}).update(v)
    merged.setdefault("log", {}).update({"run_dir": str(tmp_path / name), "progress": False})
    return Config().replace(**merged)


def test_seeded_run_learns(tmp_path):
    """Reward rises and held-out exact match leaves zero within a few seconds of training."""
    cfg = quick(tmp_path, "learn", train={"steps": 400, "seed": 0}, log={"eval_every": 100})
    summary = train(cfg, verbose=False)
    rows = [r for r in read_metrics(tmp_path / "learn") if "train/reward_mean" in r]
    first = sum(r["train/reward_mean"] for r in rows[:20]) / 20
    last = sum(r["train/reward_mean"] for r in rows[-20:]) / 20
    assert last > first + 1.0  # positional reward, max 4
    assert summary["eval/exact_match"] > 0.5


def test_same_seed_same_run_whatever_the_global_rng_held(tmp_path):
    """The seed fixes the toy model's initialisation too (it draws from torch's global RNG,
    which the trainer used to read before seeding it: every process started elsewhere)."""
    runs = []
    for name, noise in (("a", 1), ("b", 2)):
        torch.manual_seed(noise)
        cfg = quick(tmp_path, name, train={"steps": 5, "seed": 3}, log={"eval_every": 5})
        train(cfg, verbose=False)
        runs.append([{k: v for k, v in r.items() if not k.startswith("time/")}
                     for r in read_metrics(tmp_path / name)])
    assert runs[0] == runs[1]
    other = quick(tmp_path, "c", train={"steps": 5, "seed": 4}, log={"eval_every": 5})
    train(other, verbose=False)
    assert read_metrics(tmp_path / "c")[0] != runs[0][0]  # the step-0 evaluation


def test_run_directory_records_everything(tmp_path):
    cfg = quick(tmp_path, "run", train={"steps": 12}, log={"eval_every": 5})
    summary = train(cfg, verbose=False)
    run = tmp_path / "run"
    for name in ("config.json", "metrics.jsonl", "summary.json", "reward.png",
                 "model.safetensors", ".lmrl", "checkpoints/step-00000012/state.json",
                 "checkpoints/step-00000012/tensors.safetensors"):
        assert (run / name).is_file(), name
    assert Config.from_dict(json.loads((run / "config.json").read_text())) == cfg
    rows = read_metrics(run)
    assert [r["step"] for r in rows] == list(range(13))  # step 0 is the untrained evaluation
    assert all("/" in k for r in rows for k in r if k != "step")
    assert [r["step"] for r in rows if "eval/exact_match" in r] == [0, 5, 10, 12]
    saved = json.loads((run / "summary.json").read_text())
    assert saved["steps"] == 12 and saved["eval/exact_match"] == summary["eval/exact_match"]
    assert {"eval/reward", "wall_seconds", "eval/pass_at_16"} <= set(saved)


def test_existing_run_dir_is_refused_without_overwrite(tmp_path):
    cfg = quick(tmp_path, "dup", train={"steps": 2})
    train(cfg, verbose=False)
    with pytest.raises(FileExistsError, match="--overwrite"):
        train(cfg, verbose=False)


def test_resume_continues_from_the_checkpoint(tmp_path):
    cfg = quick(tmp_path, "resume", train={"steps": 6}, log={"eval_every": 3})
    train(cfg, verbose=False)
    more = cfg.replace(train={"steps": 10}, log={"resume": True})
    summary = train(more, verbose=False)
    assert summary["steps"] == 10
    assert [r["step"] for r in read_metrics(tmp_path / "resume")] == list(range(11))


def test_tensorboard_logger_writes_events(tmp_path):
    pytest.importorskip("tensorboard")
    cfg = quick(tmp_path, "tb", train={"steps": 3}, log={"logger": "tensorboard"})
    train(cfg, verbose=False)
    assert list((tmp_path / "tb" / "tensorboard").glob("events.out.tfevents.*"))


def test_sweep_writes_table_and_plot(tmp_path):
    base = quick(tmp_path, "unused", train={"steps": 5}, log={"eval_every": 5})
    results = run_sweep(base, {"delta": ["raw", "centered"]}, [0, 1], tmp_path / "sweep")
    assert len(results) == 4
    table = (tmp_path / "sweep" / "table.md").read_text()
    assert "| raw | 2 |" in table and "| centered | 2 |" in table
    assert (tmp_path / "sweep" / "comparison.png").is_file()


def run_cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "COLUMNS": "200"}
    return subprocess.run([sys.executable, "-m", "lmrl.cli", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=120)


def test_cli_train_and_plot_end_to_end(tmp_path):
    done = run_cli("train", "--n", "4", "--V", "6", "--heldout-size", "100", "--steps", "20",
                   "--eval-every", "10", "--run-dir", "cli_run", "--no-progress", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "reference policy: on" in done.stdout and "eval/exact_match" in done.stdout
    summary = json.loads((tmp_path / "cli_run" / "summary.json").read_text())
    assert summary["steps"] == 20
    plotted = run_cli("plot", "cli_run", "--out", "overlay.png", cwd=tmp_path)
    assert plotted.returncode == 0, plotted.stderr
    assert (tmp_path / "overlay.png").stat().st_size > 1000


@pytest.mark.slow  # a subprocess run; test_config checks the preset in-process
def test_cli_lecture_preset_reports_training_prompts(tmp_path):
    done = run_cli("train", "--preset", "lecture", "--steps", "5", "--run-dir", "lec",
                   "--no-progress", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    config = json.loads((tmp_path / "lec" / "config.json").read_text())
    assert config["policy"]["init"] == "lecture" and config["algo"]["mu"] == 10
    assert "eval/train_exact_match" in json.loads((tmp_path / "lec" / "summary.json").read_text())


def test_cli_resume_without_checkpoint_is_a_clear_error(tmp_path):
    done = run_cli("train", "--run-dir", "missing", "--resume", "--steps", "2", "--no-progress",
                   cwd=tmp_path)
    assert done.returncode == 2
    assert done.stderr.startswith("lmrl: error: --resume: missing holds no run to resume")
    assert "Traceback" not in done.stderr


def test_resume_refuses_a_changed_algorithm(tmp_path):
    from lmrl.config import ConfigError
    from lmrl.errors import RunDirError

    cfg = quick(tmp_path, "strict", train={"steps": 3})
    train(cfg, verbose=False)
    with pytest.raises(ConfigError, match="algo.delta: 'normalized' -> 'raw'"):
        train(cfg.replace(algo={"delta": "raw"}, log={"resume": True}), verbose=False)
    assert not (tmp_path / "never").exists()
    with pytest.raises(RunDirError, match="holds no run to resume"):
        train(quick(tmp_path, "never", log={"resume": True}), verbose=False)
    assert not (tmp_path / "never").exists()


def test_sweep_grid_keeps_registry_names_as_strings():
    """Fields whose --help is built from a registry (Annotated[str, ...]) still parse as str,
    whatever words their help text holds."""
    from lmrl.sweep import parse_grid

    grid = parse_grid(Config(), ["task=sort,reverse", "aggregation=constant",
                                 "kl_estimator=k2,none", "schedule=linear", "forward=lmrl"])
    assert grid == {"task": ["sort", "reverse"], "aggregation": ["constant"],
                    "kl_estimator": ["k2", None], "schedule": ["linear"], "forward": ["lmrl"]}


def test_sweep_grid_reaches_log_fields_and_optional_floats(tmp_path):
    from lmrl.sweep import parse_grid

    base = quick(tmp_path, "unused", train={"steps": 4})
    grid = parse_grid(base, ["eval_every=2,4", "clip_eps_low=0.1,none"])
    assert grid == {"eval_every": [2, 4], "clip_eps_low": [0.1, None]}
    results = run_sweep(base, {"eval_every": [2, 4]}, [0], tmp_path / "sw")
    evals = [[r["step"] for r in read_metrics(res["run_dir"]) if "eval/exact_match" in r]
             for res in results]
    assert evals == [[0, 2, 4], [0, 4]]
