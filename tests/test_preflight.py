"""Warnings before a wasted run: the pre-flight batch and report, the same checks during
training, and that neither changes the run (preflight.py)."""

import json

import pytest

from lmrl.config import Config, ConfigError
from lmrl.logging import read_metrics
from lmrl.preflight import Watch, findings
from lmrl.trainer import build_task, train

# The README's example with a sparse reward, on a task where an untrained toy model never sorts
# all 8 numbers right: every group is flat from the first step.
ALL_FLAT = {"task": {"n": 8, "V": 20, "heldout_size": 200, "reward": "exact_match"},
            "policy": {"dim": 16, "hidden": 64}}


def toy(tmp_path, name: str, base: dict | None = None, **groups) -> Config:
    merged = {k: dict(v) for k, v in (base or {}).items()}
    for k, v in groups.items():
        merged.setdefault(k, {}).update(v)
    merged.setdefault("log", {}).update({"run_dir": str(tmp_path / name), "progress": False})
    return Config().replace(**merged)


def warnings_given(run_dir) -> list[dict]:
    path = run_dir / "warnings.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def without_time(run_dir) -> list[dict]:
    return [{k: v for k, v in row.items() if not k.startswith("time/")}
            for row in read_metrics(run_dir)]


def test_preflight_sees_step_ones_batch_and_leaves_the_run_bit_identical(tmp_path, capsys):
    runs = {}
    for name, on in (("with", True), ("without", False)):
        cfg = toy(tmp_path, name, train={"steps": 6, "seed": 2},
                  log={"eval_every": 3, "preflight": on})
        train(cfg, verbose=True)
        runs[name] = without_time(tmp_path / name)
    out = capsys.readouterr().out
    assert out.count("pre-flight (step 1's batch, 32×16 samples)") == 1  # the run with it
    assert runs["with"] == runs["without"]
    assert not (tmp_path / "without" / "preflight.json").exists()
    pre = json.loads((tmp_path / "with" / "preflight.json").read_text())
    step1 = runs["with"][1]
    assert step1["step"] == 1
    measured = {k: v for k, v in pre.items() if k.startswith("train/")}
    assert len(measured) >= 10 and measured == {k: step1[k] for k in measured}
    assert pre["samples"] == 32 * 16 and pre["warnings"] == []


def test_a_group_of_one_reports_no_flat_groups(tmp_path, capsys):
    """With G = 1 (a learned baseline) every "group" is flat by definition: not worth a line."""
    for name, G, delta in (("one", 1, "value"), ("many", 4, "normalized")):
        train(toy(tmp_path, name, train={"steps": 1, "G": G}, algo={"delta": delta},
                  log={"eval_every": 1}), verbose=True)
        line = next(x for x in capsys.readouterr().out.splitlines() if "pre-flight" in x)
        assert ("flat groups" in line) == (G > 1)


def test_default_demo_is_silent(tmp_path, capsys):
    """`lmrl train`'s defaults, fewer steps, and the in-training checks at their most eager."""
    cfg = toy(tmp_path, "demo", train={"steps": 25}, log={"eval_every": 25, "warn_after": 1})
    train(cfg, verbose=False)
    assert "warning" not in capsys.readouterr().err
    assert warnings_given(tmp_path / "demo") == []
    assert json.loads((tmp_path / "demo" / "preflight.json").read_text())["warnings"] == []


def test_all_flat_run_warns_before_training_and_after_k_steps_once(tmp_path, capsys):
    cfg = toy(tmp_path, "flat", ALL_FLAT, train={"steps": 6}, log={"eval_every": 6,
                                                                   "warn_after": 3})
    train(cfg, verbose=False)
    err = capsys.readouterr().err
    assert "lmrl: warning: pre-flight: every group is flat (every sample scores 0" in err
    assert "--reward positional" in err and "--G, now 16" in err
    assert "lmrl: warning: steps 1-3: every group is flat" in err
    # Once before training, once when 3 flat steps in a row are reached; not again at 4, 5, 6.
    assert [(w["step"], w["check"]) for w in warnings_given(tmp_path / "flat")] == \
        [(0, "flat"), (3, "flat")]
    rows = [r for r in read_metrics(tmp_path / "flat") if "train/flat_group_frac" in r]
    assert all(r["train/flat_group_frac"] == 1.0 for r in rows)


def test_no_preflight_and_no_in_training_warning_before_k_steps(tmp_path, capsys):
    cfg = toy(tmp_path, "short", ALL_FLAT, train={"steps": 2},
              log={"eval_every": 2, "warn_after": 3, "preflight": False})
    train(cfg, verbose=False)
    assert "warning" not in capsys.readouterr().err
    assert warnings_given(tmp_path / "short") == []
    assert not (tmp_path / "short" / "preflight.json").exists()


def metrics(flat: float = 0.0, delta: float = 0.5, **extra) -> dict[str, float]:
    """A step's train/* metrics as reward_metrics writes them (the checks' inputs)."""
    return {"train/flat_group_frac": flat, "train/delta_abs_mean": delta,
            "train/reward_mean": 0.25, "train/reward_std": 0.4, **extra}


def test_watch_warns_again_only_after_the_condition_clears_and_recurs(tmp_path, capsys):
    cfg = toy(tmp_path, "unused", ALL_FLAT, log={"warn_after": 2})
    watch = Watch(cfg, build_task(cfg), tmp_path)
    pattern = [True, True, True, False, True, False, True, True, True]
    for step, flat in enumerate(pattern, start=1):
        watch.check(step, metrics(flat=1.0, delta=0.0) if flat else metrics())
    assert [w["step"] for w in warnings_given(tmp_path)] == [2, 8]
    assert capsys.readouterr().err.count("lmrl: warning: steps ") == 2


def test_warn_after_zero_disables_the_in_training_checks(tmp_path):
    cfg = toy(tmp_path, "unused", ALL_FLAT, log={"warn_after": 0})
    watch = Watch(cfg, build_task(cfg), tmp_path)
    for step in range(1, 30):
        watch.check(step, metrics(flat=1.0, delta=0.0))
    assert warnings_given(tmp_path) == []


@pytest.mark.parametrize("case, expected", [
    (metrics(flat=1.0, delta=0.0), ["flat"]),
    # Every sample right: nothing left to learn from this batch, which is no failure.
    (metrics(flat=1.0, delta=0.0, **{"train/exact_match": 1.0}), []),
    # delta=raw (no baseline) learns from flat groups of a nonzero reward.
    (metrics(flat=1.0, delta=1.0), []),
    (metrics(flat=0.9, delta=0.0), []),
    (metrics(**{"train/truncated_frac": 0.75}), ["truncated"]),
    (metrics(**{"train/truncated_frac": 0.5}), []),
])
def test_checks_read_the_steps_metrics(tmp_path, case, expected):
    cfg = toy(tmp_path, "unused")
    assert [f.check for f in findings(case, cfg, ["positional"])] == expected


def test_flat_groups_of_a_varied_reward_blame_the_policy_not_the_reward(tmp_path):
    cfg = toy(tmp_path, "unused")
    found, = findings(metrics(flat=1.0, delta=0.0), cfg, ["positional"])
    assert "each prompt's samples all score alike" in found.message


def test_a_constant_function_among_several_trained_ones_is_named(tmp_path):
    cfg = Config().replace(task={"task": "sort_text", "n": 3, "V": 5, "heldout_size": 20},
                           policy={"model": "unused-model-dir"})
    step = metrics(**{"train/reward_positional": 1.5, "train/reward_positional_std": 0.7,
                      "train/reward_fmt": 0.5, "train/reward_fmt_std": 0.0})
    found, = findings(step, cfg, ["positional", "fmt"])
    assert found.check == "constant:fmt"
    assert "'fmt' gave every sample 0.5" in found.message and "--reward-fns" in found.message
    # Alone in the training reward, a constant function is the flat check's to report.
    assert findings(step, cfg, ["fmt"]) == []


def test_warn_after_must_not_be_negative():
    with pytest.raises(ConfigError, match="log.warn_after=-1 must be >= 0"):
        Config().replace(log={"warn_after": -1})


LM_TASK = {"task": "sort_text", "n": 3, "V": 5, "heldout_size": 20}


@pytest.fixture(scope="module")
def untrained_lm(tmp_path_factory):
    """A random-initialised tiny causal LM for sort_text: it rarely emits EOS, so with a budget
    of 2 tokens most completions are cut off."""
    pytest.importorskip("transformers")
    from lmrl.modelzoo import init_model, task_alphabet
    from lmrl.tasks.sort_text import SortTextTask

    path = tmp_path_factory.mktemp("lm") / "init"
    alphabet = task_alphabet(SortTextTask(n=3, V=5, heldout_size=20))
    init_model(path, alphabet, hidden_size=16, num_layers=1, num_heads=2)
    return path


def lm_run(tmp_path, model, name: str, preflight: bool, reward_fns: tuple[str, ...]) -> Config:
    return Config().replace(
        task={**LM_TASK, "reward_fns": reward_fns},
        policy={"model": str(model), "max_new_tokens": 2},
        train={"B": 4, "G": 4, "steps": 3, "threads": 1},
        log={"run_dir": str(tmp_path / name), "progress": False, "eval_every": 3,
             "eval_limit": 4, "preflight": preflight, "warn_after": 2})


@pytest.mark.usefixtures("one_thread")
def test_untrained_lm_warns_of_truncation_and_a_constant_function(tmp_path, untrained_lm,
                                                                 reward_module, capsys):
    name = reward_module("pf_rewards", """
        def fixed(prompts, completions, **columns):
            return [0.5] * len(completions)
        """)
    runs = {}
    for run, on in (("with", True), ("without", False)):
        train(lm_run(tmp_path, untrained_lm, run, on, (f"{name}:fixed",)), verbose=False)
        runs[run] = without_time(tmp_path / run)
    assert runs["with"] == runs["without"]  # the causal LM's sampling is left untouched too
    err = capsys.readouterr().err
    assert "lmrl: warning: pre-flight: " in err and "of completions hit the token budget" in err
    assert "--max-new-tokens" in err and "lmrl sft" in err
    assert "reward function 'fixed' gave every sample 0.5" in err
    given = {(w["step"], w["check"]) for w in warnings_given(tmp_path / "with")}
    assert {(0, "truncated"), (0, "constant:fixed"), (2, "truncated"),
            (2, "constant:fixed")} <= given
    pre = json.loads((tmp_path / "with" / "preflight.json").read_text())
    assert pre["train/truncated_frac"] > 0.5 and pre["train/reward_fixed_std"] == 0.0
    assert pre["train/truncated_frac"] == runs["with"][1]["train/truncated_frac"]


@pytest.mark.usefixtures("one_thread")
def test_a_function_that_always_returns_none_is_named(tmp_path, untrained_lm, reward_module,
                                                       capsys):
    name = reward_module("pf_none", """
        def never(completions, **kwargs):
            return [None] * len(completions)
        """)
    train(lm_run(tmp_path, untrained_lm, "none", True, (f"{name}:never",)), verbose=False)
    err = capsys.readouterr().err
    assert "reward function 'never' returned None (does not apply) for every sample" in err
    given = {(w["step"], w["check"]) for w in warnings_given(tmp_path / "none")}
    assert {(0, "none:never"), (2, "none:never")} <= given
    assert not any(check == "constant:never" for _, check in given)
    rows = without_time(tmp_path / "none")
    assert rows[1]["train/reward_never_none_frac"] == 1.0
