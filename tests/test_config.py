"""Config validation, round-trips, presets and the CLI's error path."""

import json
import os
import subprocess
import sys

import pytest

from lmrl.cli import main
from lmrl.config import (
    AlgoConfig,
    Config,
    ConfigError,
    TaskConfig,
    TrainConfig,
    describe,
    validate,
)
from lmrl.presets import PRESETS

VALID = {
    "delta": ("raw", "centered", "normalized", "max_only", "rloo", "dr_grpo", "reinforce_pp",
              "value", "running_mean"),
    "loss": ("naive", "unclipped", "clipped"),
    "aggregation": ("token_mean", "sequence_mean", "constant"),
    "reward": ("exact_match", "positional", "inclusion_adjacency",
               "inclusion_adjacency_multiset"),
    "kl_estimator": ("k1", "k2", "k3"),
}


def build(**groups):
    return Config().replace(**groups)


def raises(match, **groups):
    with pytest.raises(ConfigError, match=match) as err:
        build(**groups)
    return str(err.value)


# ---------------------------------------------------------------- unknown names


@pytest.mark.parametrize("group, field", [
    ("algo", "delta"), ("algo", "loss"), ("algo", "aggregation"), ("task", "reward"),
    ("algo", "kl_estimator"),
])
def test_unknown_name_lists_valid_ones(group, field):
    extra = {"kl_weight": 0.1} if field == "kl_estimator" else {}
    groups = {group: {field: "nope"}}
    if extra:
        groups["algo"] = {**groups["algo"], **extra}
    msg = raises("nope", **groups)
    assert f"{group}.{field}" in msg
    assert "valid" in msg
    for name in VALID[field]:
        assert name in msg


def test_valid_names_in_config_match_the_registries():
    from lmrl.deltas import DELTAS
    from lmrl.losses import AGGREGATIONS, KL_ESTIMATORS, LOSSES
    from lmrl.tasks.sort import REWARDS
    assert tuple(DELTAS) == VALID["delta"]
    assert tuple(LOSSES) == VALID["loss"]
    assert tuple(AGGREGATIONS) == VALID["aggregation"]
    assert tuple(REWARDS) == VALID["reward"]
    assert tuple(KL_ESTIMATORS) == VALID["kl_estimator"]


# ---------------------------------------------------------------- contradictory settings


@pytest.mark.parametrize("delta", ["centered", "normalized", "rloo"])
def test_g1_with_group_baseline_raises(delta):
    msg = raises("G=1", algo={"delta": delta}, train={"G": 1})
    assert "raise G or use delta=raw" in msg


@pytest.mark.parametrize("delta", ["raw", "max_only"])
def test_g1_without_group_baseline_is_fine(delta):
    cfg = build(algo={"delta": delta}, train={"G": 1})
    assert cfg.train.G == 1 and cfg.algo.delta == delta


def test_g2_with_group_baseline_is_fine():
    assert build(algo={"delta": "rloo"}, train={"G": 2}).train.G == 2


def test_n_greater_than_v_without_repeats():
    msg = raises("without repeats", task={"n": 6, "V": 5, "repeats": False})
    assert "lower n, raise V or set repeats" in msg
    assert build(task={"n": 6, "V": 5, "repeats": True}).task.n == 6
    assert build(task={"n": 5, "V": 5, "repeats": False, "heldout_size": 50}).task.n == 5


@pytest.mark.parametrize("algo", [
    {"clip_eps": 0.0}, {"clip_eps": -0.1}, {"clip_eps_low": 0.0}, {"clip_eps_high": -1.0},
])
def test_clip_eps_must_be_positive(algo):
    msg = raises("clip ε must be > 0", algo=algo)
    assert "loss=unclipped" in msg


def test_separate_clip_eps_default_to_clip_eps():
    a = build(algo={"clip_eps": 0.3, "clip_eps_high": 0.28}).algo
    assert (a.eps_low, a.eps_high) == (0.3, 0.28)


def test_kl_estimator_without_kl_weight():
    msg = raises("kl_estimator", algo={"kl_estimator": "k3", "kl_weight": 0.0})
    assert "set kl_weight > 0 or drop kl_estimator" in msg
    a = build(algo={"kl_estimator": "k2", "kl_weight": 0.1}).algo
    assert a.estimator == "k2"
    assert build(algo={"kl_weight": 0.1}).algo.estimator == "k3"


def test_ref_refresh_without_kl_weight():
    msg = raises("ref_refresh", algo={"ref_refresh": 10, "kl_weight": 0.0})
    assert "kl_weight > 0" in msg
    assert build(algo={"ref_refresh": 10, "kl_weight": 0.1}).algo.ref_refresh == 10
    raises("ref_refresh", algo={"ref_refresh": -1, "kl_weight": 0.1})


def test_negative_kl_weight():
    raises("kl_weight", algo={"kl_weight": -0.1})


@pytest.mark.parametrize("mu", [0, -1])
def test_mu_below_one(mu):
    raises(f"algo.mu={mu} must be >= 1", algo={"mu": mu})


def test_b_not_divisible_by_grad_accum():
    msg = raises("not divisible", train={"B": 10, "grad_accum": 3})
    assert "train.B=10" in msg and "grad_accum=3" in msg
    assert build(train={"B": 12, "grad_accum": 3}).train.grad_accum == 3


@pytest.mark.parametrize("groups, match", [
    ({"task": {"n": 1}}, "n >= 2"),
    ({"task": {"prompts": "lecture"}}, "n=3 and V=5"),
    ({"task": {"train_frac": 1.0}}, "train_frac"),
    ({"train": {"lr": 0.0}}, "train.lr"),
    ({"train": {"B": 0}}, "train.B=0"),
])
def test_other_invalid_settings(groups, match):
    raises(match, **groups)


def test_config_error_is_a_value_error():
    assert issubclass(ConfigError, ValueError)


def test_direct_construction_is_validated():
    with pytest.raises(ConfigError):
        Config(algo=AlgoConfig(delta="nope"))
    with pytest.raises(ConfigError):
        Config(task=TaskConfig(n=6, V=5, repeats=False))
    with pytest.raises(ConfigError):
        Config(train=TrainConfig(B=10, grad_accum=4))


# ---------------------------------------------------------------- round-trips and presets


def _non_default():
    return build(task={"n": 3, "V": 5, "prompts": "all", "reward": "exact_match"},
                 algo={"delta": "rloo", "kl_weight": 0.05, "kl_estimator": "k1",
                       "clip_eps_low": 0.1, "aggregation": "constant"},
                 train={"B": 8, "G": 4, "grad_accum": 2})


@pytest.mark.parametrize("make", [Config, _non_default, *PRESETS.values()])
def test_to_dict_from_dict_round_trip(make):
    cfg = make()
    assert Config.from_dict(cfg.to_dict()) == cfg
    assert Config.from_dict(json.loads(cfg.to_json())) == cfg


def test_round_trip_keeps_non_defaults():
    d = _non_default().to_dict()
    assert d["algo"]["delta"] == "rloo"
    assert d["algo"]["clip_eps_low"] == 0.1
    assert d["train"]["grad_accum"] == 2
    assert Config.from_dict(d) != Config()


def test_config_is_frozen():
    cfg = Config()
    with pytest.raises(AttributeError):
        cfg.algo.delta = "raw"


@pytest.mark.parametrize("name", list(PRESETS))
def test_every_preset_builds_a_valid_config(name):
    cfg = PRESETS[name]()
    assert isinstance(cfg, Config)
    validate(cfg)


def test_preset_contents():
    assert set(PRESETS) >= {"default", "lecture", "t1", "t3"}
    lec = PRESETS["lecture"]()
    assert (lec.task.n, lec.task.V, lec.task.prompts) == (3, 5, "lecture")
    assert (lec.algo.delta, lec.algo.loss, lec.train.G) == ("centered", "naive", 10)
    t1 = PRESETS["t1"]()
    assert (t1.task.n, t1.task.V, t1.task.prompts, t1.task.train_frac) == (3, 5, "all", 0.6)
    t3 = PRESETS["t3"]()
    assert (t3.task.n, t3.task.V) == (8, 20)


# ---------------------------------------------------------------- CLI


def test_cli_bad_delta_subprocess_exits_2_without_traceback():
    env = {**os.environ, "COLUMNS": "200"}
    proc = subprocess.run([sys.executable, "-m", "lmrl.cli", "train", "--delta", "nope",
                           "--steps", "1"], capture_output=True, text=True, timeout=120, env=env)
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    assert "nope" in proc.stderr
    for name in VALID["delta"]:
        assert name in proc.stderr


def test_cli_help_mentions_kl_weight(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["train", "--help"])
    assert exit_info.value.code == 0
    assert "--kl-weight" in capsys.readouterr().out


def test_cli_unknown_preset_exits_2(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["train", "--preset", "nope"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "unknown preset" in err
    for name in PRESETS:
        assert name in err


def test_cli_contradictory_flags_exit_2(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["train", "--G", "1", "--delta", "rloo"])
    assert exit_info.value.code == 2
    assert "G" in capsys.readouterr().err


def test_cli_no_command_exits_2(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main([])
    assert exit_info.value.code == 2
    assert "lmrl train" in capsys.readouterr().err


def test_cli_top_level_help_exits_0(capsys):
    main(["--help"])  # returns: exit code 0, and the usage on stdout
    out = capsys.readouterr().out
    assert "lmrl {train,sweep,plot,init-model,sft,eval,rm}" in out
    assert "default|lecture|t1|t3" in out


def test_cli_version_and_unknown_command(capsys):
    main(["--version"])
    assert capsys.readouterr().out.startswith("lmrl 0.")
    with pytest.raises(SystemExit) as exit_info:
        main(["trian"])
    assert exit_info.value.code == 2
    assert "lmrl: error: unknown command 'trian'" in capsys.readouterr().err


def test_heldout_size_too_large_for_the_prompt_space():
    from lmrl.config import Config, ConfigError

    with pytest.raises(ConfigError, match="heldout_size=2000 must be in 1..648"):
        Config().replace(task={"n": 4, "V": 6})
    Config().replace(task={"n": 4, "V": 6, "heldout_size": 600})


@pytest.mark.parametrize("groups, name", [
    ({"algo": {"loss": "naive", "clip_eps": 0.3}}, "algo.clip_eps"),
    ({"algo": {"loss": "naive", "ratio_level": "sequence"}}, "algo.ratio_level"),
    ({"algo": {"delta": "centered", "norm_eps": 1e-3}}, "algo.norm_eps"),
    ({"policy": {"init": "lecture", "init_scale": 0.3}}, "policy.init_scale"),
    ({"task": {"prompts": "random", "train_frac": 0.8}}, "task.train_frac"),
    ({"task": {"n": 3, "V": 5, "prompts": "all", "heldout_size": 10}}, "task.heldout_size"),
    ({"train": {"schedule": "constant", "min_lr_frac": 0.5}}, "train.min_lr_frac"),
])
def test_settings_that_would_be_silently_ignored_are_rejected(groups, name):
    from lmrl.config import Config, ConfigError

    with pytest.raises(ConfigError, match=f"{name}=.* has no effect here"):
        Config().replace(**groups)


def test_resume_with_overwrite_is_contradictory():
    from lmrl.config import Config, ConfigError

    with pytest.raises(ConfigError, match="resume and log.overwrite"):
        Config().replace(log={"resume": True, "overwrite": True})


# --- causal LMs and text tasks ---------------------------------------------------------------

LM = {"policy": {"model": "some/model"}, "task": {"task": "sort_text"}}


def lm_cfg(**groups) -> Config:
    merged = {g: dict(v) for g, v in LM.items()}
    for g, v in groups.items():
        merged.setdefault(g, {}).update(v)
    return Config.from_dict(merged)


@pytest.mark.parametrize("groups, fragment", [
    ({"task": {"task": "addition"}}, "needs a causal LM"),
    ({"policy": {"model": "m"}}, "use --task sort_text"),
    ({"policy": {"model": "m"}, "task": {"task": "gsm8k"}}, "needs --data"),
    ({"policy": {"model": "m"}, "task": {"task": "user", "data": "x.jsonl"}}, "--reward-fns"),
    ({"policy": {"model": "m", "hidden": 64}, "task": {"task": "sort_text"}}, "policy.hidden"),
    ({"policy": {"top_p": 0.9}}, "policy.top_p"),
    ({"policy": {"model": "m", "temperature": 0.0}, "task": {"task": "sort_text"}},
     "temperature"),
    ({"policy": {"model": "m"}, "task": {"task": "addition", "n": 4}}, "task.n"),
    ({"policy": {"model": "m"}, "task": {"task": "sort_text", "digits": 2}}, "task.digits"),
    ({"policy": {"model": "m"}, "task": {"task": "sort_text", "reward_fns": ["nocolon"]}},
     "module:function"),
    ({"log": {"log_samples": 2}}, "log.log_samples"),
    ({"policy": {"model": "m", "stop": [""]}, "task": {"task": "sort_text"}}, "empty string"),
    ({"policy": {"model": "m", "min_new_tokens": 9, "max_new_tokens": 8},
      "task": {"task": "sort_text"}}, "min_new_tokens=9"),
    ({"policy": {"min_new_tokens": 2}}, "policy.min_new_tokens"),
    ({"policy": {"model": "m"}, "task": {"task": "user", "data": "d.jsonl", "reward_fns": ["m:f"],
                                         "heldout_data": "h.jsonl", "heldout_size": 5}},
     "task.heldout_size"),
])
def test_lm_settings_that_cannot_work_fail_at_startup(groups, fragment):
    with pytest.raises(ConfigError, match=fragment.replace(".", r"\.")):
        Config.from_dict(groups)


def test_lr_default_depends_on_the_model_kind_and_an_explicit_lr_wins():
    assert Config().lr == 3e-3
    assert lm_cfg().lr == 2e-4
    assert lm_cfg(train={"lr": 1e-5}).lr == 1e-5


def test_lm_config_round_trips_through_json_with_tuples():
    cfg = lm_cfg(policy={"stop": ["</answer>"]}, task={"reward_fns": ["m:f=0.5"]})
    again = Config.from_dict(json.loads(cfg.to_json()))
    assert again == cfg and again.policy.stop == ("</answer>",)


def test_describe_names_the_causal_lm_and_its_sampling():
    text = describe(lm_cfg(policy={"top_k": 5}))
    assert "causal LM" in text and "top_k=5" in text and "sort_text" in text
    assert "lr=0.0002" in text


def test_reward_names_must_not_shadow_the_steps_reward_statistics(tmp_path, monkeypatch):
    from lmrl.trainer import build_task

    (tmp_path / "clash_rewards.py").write_text(
        "def mean(prompts, completions, **kw):\n    return [0.0] * len(completions)\n"
        "def positional(prompts, completions, **kw):\n    return [0.0] * len(completions)\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    for spec in ("clash_rewards:mean", "clash_rewards:positional"):
        cfg = lm_cfg(task={"reward_fns": [spec], "n": 3, "V": 5, "heldout_size": 10})
        with pytest.raises(ConfigError, match="unique and not one of"):
            build_task(cfg)


def test_text_tasks_use_their_own_heldout_size_unless_given():
    from lmrl.trainer import build_task

    assert len(build_task(lm_cfg(task={"task": "addition"})).heldout) == 500
    assert len(build_task(lm_cfg(task={"task": "addition", "heldout_size": 7})).heldout) == 7
    assert len(build_task(Config()).heldout) == 2000  # the toy's default


# ---------------------------------------------------------------- rules from registry metadata


def test_clip_rules_follow_the_loss_metadata_not_its_name(monkeypatch):
    from lmrl.losses import LOSSES, LossSpec, clipped_loss, unclipped_loss
    monkeypatch.setitem(LOSSES, "ppo", LossSpec(clipped_loss, "test", uses_ratio=True, clips=True))
    a = build(algo={"loss": "ppo", "clip_eps": 0.1, "ratio_level": "sequence"}).algo
    assert (a.eps_low, a.eps_high, a.ratio_level) == (0.1, 0.1, "sequence")
    raises("clip ε must be > 0", algo={"loss": "ppo", "clip_eps": 0.0})
    monkeypatch.setitem(LOSSES, "is", LossSpec(unclipped_loss, "test", uses_ratio=True))
    msg = raises("algo.clip_eps=0.1 has no effect", algo={"loss": "is", "clip_eps": 0.1})
    assert "only loss=clipped/ppo clips" in msg  # the clipping losses, named from the registry
    assert "ε=" not in describe(build(algo={"loss": "is"}))


def test_ratio_rule_follows_the_loss_metadata(monkeypatch):
    from lmrl.losses import LOSSES, LossSpec, naive_loss
    monkeypatch.setitem(LOSSES, "reinforce", LossSpec(naive_loss, "test"))
    msg = raises("algo.ratio_level=.* has no effect", algo={"loss": "reinforce",
                                                             "ratio_level": "sequence"})
    assert "loss=reinforce has no importance ratio" in msg
    text = describe(build(algo={"loss": "reinforce", "mu": 2}))
    assert "loss=reinforce with μ=2 reuses stale samples" in text and "ratio per" not in text


def test_group_and_eps_rules_follow_the_delta_metadata(monkeypatch):
    from lmrl.deltas import DELTAS, DeltaSpec, centered, normalized
    monkeypatch.setitem(DELTAS, "baseline", DeltaSpec(centered, "test", needs_group=True))
    raises("a group baseline needs G >= 2", algo={"delta": "baseline"}, train={"G": 1})
    monkeypatch.setitem(DELTAS, "zscore", DeltaSpec(normalized, "test", reads_eps=True))
    assert build(algo={"delta": "zscore", "norm_eps": 0.5}, train={"G": 1}).algo.norm_eps == 0.5
    msg = raises("algo.norm_eps=0.5 has no effect", algo={"delta": "baseline", "norm_eps": 0.5})
    assert "only delta=normalized/reinforce_pp/zscore divides by std" in msg


def test_describe_shows_only_the_settings_the_loss_and_delta_read():
    text = describe(build(algo={"loss": "naive", "delta": "raw"}))
    assert "delta: raw (R); loss: naive (-Δ log π); aggregation" in text
    text = describe(Config())
    assert "loss: clipped (-min(rΔ, clip(r)Δ), ε=0.2/0.2, ratio per token)" in text
    assert "delta: normalized ((R - mean) / (std + eps), eps=1e-06)" in text


def test_help_lists_every_registry_entry_in_order(monkeypatch, capsys):
    """--help's "Valid:" lists are built from the registries (config.valid): the rendered help
    shows every name, with its formula where the registry has one, in registry order."""
    from lmrl.deltas import DELTAS
    from lmrl.losses import AGGREGATIONS, KL_ESTIMATORS, LOSSES, RATIO_LEVELS
    from lmrl.optim import SCHEDULES
    from lmrl.policies.lean import FORWARDS
    from lmrl.tasks import TASKS
    from lmrl.tasks.sort import REWARDS
    monkeypatch.setenv("COLUMNS", "80")  # one column of options, so wrapped lines join up
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    text = " ".join(capsys.readouterr().out.replace("│", " ").split())
    for registry in (TASKS, REWARDS, FORWARDS, DELTAS, LOSSES, RATIO_LEVELS, KL_ESTIMATORS,
                     AGGREGATIONS, SCHEDULES):
        entries = registry.items() if isinstance(registry, dict) else ((n, 0) for n in registry)
        names = [f"{n} ({e.help})" if hasattr(e, "help") else n for n, e in entries]
        assert f"Valid: {', '.join(names)}. (default: " in text, names
    assert "Valid: raw (R), centered (R - mean), normalized ((R - mean) / (std + eps))" in text
