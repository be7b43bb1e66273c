"""A reward model as a reward source (--reward-model DIR[=weight]): its scores are the model's
own logits, micro-batching changes nothing, it weighs in and combines with a task's verifiable
rewards, its normalisations on hand-made numbers, training end to end, and the usage errors."""

import json
import math

import pytest
import torch

from lmrl.cli import main
from lmrl.config import Config, LogConfig, PolicyConfig, TaskConfig, TrainConfig
from lmrl.errors import ConfigError
from lmrl.tasks import build_task
from lmrl.tasks.reward_model import (
    RunningStats,
    group_norm,
    load_reward_model,
    parse_spec,
    reward_model_names,
    running_norm,
)
from lmrl.tasks.text import RewardContext

pytestmark = pytest.mark.usefixtures("one_thread")

SORT = ["--task", "sort_text", "--n", "3", "--V", "5", "--heldout-size", "10"]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A tiny sort_text policy and a reward model made from the same kind of checkpoint: a
    sequence-classification head (randomly initialised: any fixed function will do) with one
    label and a pad token id."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    root = tmp_path_factory.mktemp("rm_source")
    main(["init-model", "--out", str(root / "policy"), "--hidden-size", "16", "--layers", "1",
          "--heads", "2", *SORT])
    torch.manual_seed(0)
    rm = AutoModelForSequenceClassification.from_pretrained(root / "policy", num_labels=1)
    tokenizer = AutoTokenizer.from_pretrained(root / "policy")
    rm.config.pad_token_id = tokenizer.pad_token_id
    rm.save_pretrained(root / "rm")
    tokenizer.save_pretrained(root / "rm")
    return root


PROMPTS = ["3 1 2=", "0 4 4=", "2 2 1=", "1 0 3="]
COMPLETIONS = ["1 2 3", "0 4", "1 2 2 2", ""]


def test_scores_are_the_models_own_logits_on_prompt_plus_completion(tiny):
    source = load_reward_model(str(tiny / "rm"))
    scores = source.score(PROMPTS, COMPLETIONS, {})
    for prompt, completion, score in zip(PROMPTS, COMPLETIONS, scores, strict=True):
        ids = source.tokenizer(prompt + completion, return_tensors="pt")
        with torch.no_grad():
            direct = source.model(**ids).logits[0, 0].item()
        assert score == pytest.approx(direct, abs=1e-5)
    assert len(set(scores)) > 1  # the texts differ, and so do their scores


def test_micro_batches_score_as_one_batch(tiny):
    whole = load_reward_model(str(tiny / "rm"), batch_size=64).score(PROMPTS, COMPLETIONS, {})
    small = load_reward_model(str(tiny / "rm"), batch_size=1).score(PROMPTS, COMPLETIONS, {})
    assert small == pytest.approx(whole, abs=1e-5)


def test_the_weight_and_a_verifiable_reward_give_their_weighted_sum(tiny):
    task = build_task(TaskConfig(task="sort_text", n=3, V=5, heldout_size=10,
                                 reward_model=(f"{tiny / 'rm'}=0.5",)))
    rm = task.rewards[-1]
    assert (rm.name, rm.weight) == ("rm", 0.5)
    examples = [{"prompt": p, "numbers": [int(x) for x in p[:-1].split()]} for p in PROMPTS[:2]]
    completions = [COMPLETIONS[:2], COMPLETIONS[2:]]
    total, table = task.score(examples, completions)
    assert table["rm"].flatten().tolist() == pytest.approx(
        rm.score([PROMPTS[0]] * 2 + [PROMPTS[1]] * 2, COMPLETIONS, {}))
    expected = table["positional"] + 0.5 * table["rm"]  # sort_text's other rewards weigh 0
    assert torch.allclose(total, expected)
    assert table["positional"].sum() > 0  # "1 2 3" for "3 1 2=" earns positional credit


def test_task_reward_weight_0_trains_on_the_reward_model_alone_and_still_scores_the_task(tiny):
    task = build_task(TaskConfig(task="sort_text", n=3, V=5, heldout_size=10,
                                 reward_model=(f"{tiny / 'rm'}=2",), task_reward_weight=0.0))
    assert {r.name: r.weight for r in task.rewards} == {
        "exact_match": 0, "positional": 0, "inclusion_adjacency": 0,
        "inclusion_adjacency_multiset": 0, "rm": 2}
    examples = [{"prompt": p, "numbers": [int(x) for x in p[:-1].split()]} for p in PROMPTS[:2]]
    total, table = task.score(examples, [COMPLETIONS[:2], COMPLETIONS[2:]])
    assert torch.allclose(total, 2 * table["rm"])
    assert table["positional"].sum() > 0  # still computed (and logged), not trained on
    assert task.correct(table).tolist() == [[1.0, 0.0], [0.0, 0.0]]  # eval/exact_match's input


def test_task_reward_weight_scales_only_the_tasks_own_rewards(tiny):
    task = build_task(TaskConfig(task="sort_text", n=3, V=5, heldout_size=10, reward="exact_match",
                                 reward_model=(str(tiny / "rm"),), task_reward_weight=0.25))
    assert [(r.name, r.weight) for r in task.rewards if r.weight] == [
        ("exact_match", 0.25), ("rm", 1.0)]


def test_every_weight_zero_is_refused_with_the_fix(tiny, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["train", "--model", str(tiny / "policy"), "--run-dir", str(tmp_path / "run"),
              "--steps", "1", "--no-progress", *SORT, "--task-reward-weight", "0"])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert err.count("lmrl: error:") == 1 and "every reward has weight 0" in err
    assert "--task-reward-weight" in err and not (tmp_path / "run").exists()


def test_task_reward_weight_is_refused_where_it_cannot_apply(tmp_path):
    data = tmp_path / "rows.jsonl"
    data.write_text(json.dumps({"prompt": "1 2="}) + "\n")
    with pytest.raises(ConfigError, match="task_reward_weight"):  # the user task has no own
        Config(task=TaskConfig(task="user", data=str(data), reward_fns=("m:f",),
                               task_reward_weight=0.5), policy=_lm())
    with pytest.raises(ConfigError, match="not a finite number"):
        Config(task=TaskConfig(task="sort_text", task_reward_weight=math.inf), policy=_lm())
    with pytest.raises(ConfigError, match="task_reward_weight"):  # the toy sort task
        Config(task=TaskConfig(task_reward_weight=0.5))


def test_group_norm_standardises_each_group():
    scores = torch.tensor([1.0, 3.0, 10.0, 10.0], dtype=torch.float64)
    out = group_norm(scores, 2, RunningStats())
    assert out.tolist() == pytest.approx([-1.0, 1.0, 0.0, 0.0], abs=1e-5)


def test_running_stats_equal_the_whole_history_and_normalise_by_it():
    stats = RunningStats()
    history = [2.0, 4.0, 4.0, 4.0, 5.0, 5.0, 7.0, 9.0]  # mean 5, population std 2
    for batch in (history[:3], history[3:4], history[4:]):
        x = torch.tensor(batch, dtype=torch.float64)
        stats.add(len(batch), float(x.sum()), float((x * x).sum()))
    assert (stats.count, stats.mean, stats.std) == (8, pytest.approx(5.0), pytest.approx(2.0))
    out = running_norm(torch.tensor([9.0, 5.0], dtype=torch.float64), 2, stats)
    assert out.tolist() == pytest.approx([2.0, 0.0], abs=1e-5)


def test_running_stats_move_on_training_batches_only(tiny):
    source = load_reward_model(str(tiny / "rm"), norm="running")
    source.score(PROMPTS, COMPLETIONS, {}, RewardContext())  # evaluation, pre-flight: read only
    assert source.stats.count == 0
    raw = load_reward_model(str(tiny / "rm")).score(PROMPTS, COMPLETIONS, {})
    out = source.score(PROMPTS, COMPLETIONS, {}, RewardContext(training=True))
    assert source.stats.count == 4
    mean, std = sum(raw) / 4, math.sqrt(sum((r - sum(raw) / 4) ** 2 for r in raw) / 4)
    assert out == pytest.approx([(r - mean) / (std + 1e-6) for r in raw], abs=1e-4)


def test_specs_names_and_weights():
    assert parse_spec("runs/rm=0.5") == ("runs/rm", 0.5)
    assert parse_spec("runs/a=b") == ("runs/a=b", 1.0)  # '=b' is no weight: part of the path
    assert reward_model_names(("x/rm",)) == ["rm"]
    assert reward_model_names(("x/helpful=2", "y/harm-less")) == ["rm_helpful", "rm_harm_less"]
    with pytest.raises(ConfigError, match="not finite"):
        parse_spec("runs/rm=nan")


def test_a_causal_lm_or_a_two_label_classifier_is_refused_not_given_a_random_head(tiny,
                                                                                 tmp_path):
    from transformers import AutoModelForSequenceClassification

    with pytest.raises(ConfigError, match="Qwen2ForCausalLM, not a reward model"):
        load_reward_model(str(tiny / "policy"))
    AutoModelForSequenceClassification.from_pretrained(tiny / "policy", num_labels=2) \
        .save_pretrained(tmp_path / "two")
    with pytest.raises(ConfigError, match="2 labels"):
        load_reward_model(str(tmp_path / "two"))


def test_trains_end_to_end_with_the_reward_model_logged(tiny, tmp_path):
    main(["train", "--model", str(tiny / "policy"), "--run-dir", str(tmp_path / "run"),
          "--steps", "2", "--B", "2", "--G", "2", "--max-new-tokens", "6", "--no-progress",
          "--threads", "1", "--eval-every", "2", *SORT,
          "--reward-model", f"{tiny / 'rm'}=0.5", "--reward-model-norm", "group",
          "--reward-model-batch-size", "3"])
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").open()]
    step = next(r for r in rows if "train/reward_rm" in r)
    assert math.isfinite(step["train/reward_rm"]) and step["train/reward_rm_std"] >= 0
    assert "eval/exact_match" in rows[-1]
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    assert config["task"]["reward_model"] == [f"{tiny / 'rm'}=0.5"]


@pytest.mark.parametrize("which", ["missing", "causal_lm"])
def test_a_bad_directory_is_one_usage_error_before_the_run_directory(tiny, tmp_path, capsys,
                                                                      which):
    rm = tmp_path / "nowhere" if which == "missing" else tiny / "policy"
    with pytest.raises(SystemExit) as exit_:
        main(["train", "--model", str(tiny / "policy"), "--run-dir", str(tmp_path / "run"),
              "--steps", "1", "--no-progress", *SORT, "--reward-model", str(rm)])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert err.count("lmrl: error:") == 1 and "--reward-model" in err and "Traceback" not in err
    assert not (tmp_path / "run").exists()


def test_reward_model_settings_without_a_model_are_refused():
    with pytest.raises(ConfigError, match="reward_model_norm"):
        Config(task=TaskConfig(reward_model_norm="group"))
    with pytest.raises(ConfigError, match="reward_model_batch_size"):
        Config(task=TaskConfig(task="sort_text", reward_model=("x",),
                               reward_model_batch_size=0), policy=_lm())
    with pytest.raises(ConfigError, match="unknown"):
        Config(task=TaskConfig(task="sort_text", reward_model=("x",),
                               reward_model_norm="batch"), policy=_lm())


def _lm(model: str = "some/lm", **settings):
    return PolicyConfig(model=model, **settings)


def test_help_lists_the_reward_model_options(capsys):
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    out = capsys.readouterr().out
    for flag in ("--reward-model", "--reward-model-device", "--reward-model-batch-size",
                 "--reward-model-norm"):
        assert flag in out
    assert "running" in out and "group" in out


def test_a_user_task_may_have_a_reward_model_and_no_reward_function(tiny, tmp_path):
    data = tmp_path / "rows.jsonl"
    data.write_text("".join(json.dumps({"prompt": f"{a} {b}="}) + "\n" for a in range(4)
                            for b in range(4)))
    Config(task=TaskConfig(task="user", data=str(data), reward_model=(str(tiny / "rm"),)),
           policy=_lm())  # valid without --reward-fns
    task = build_task(TaskConfig(task="user", data=str(data), heldout_size=2,
                                 reward_model=(str(tiny / "rm"),)))
    assert [r.name for r in task.rewards] == ["rm"] and task.correctness is None
    total, table = task.score(task.heldout, [["1", "2"], ["3", "0"]])
    assert torch.equal(total, table["rm"]) and total.shape == (2, 2)


def test_group_norm_sees_the_tasks_groups(tiny):
    task = build_task(TaskConfig(task="sort_text", n=3, V=5, heldout_size=10,
                                 reward_model=(str(tiny / "rm"),), reward_model_norm="group"))
    examples = [{"prompt": p, "numbers": [int(x) for x in p[:-1].split()]} for p in PROMPTS[:2]]
    _, table = task.score(examples, [COMPLETIONS[:2], COMPLETIONS[2:]])  # B=2 groups of G=2
    assert table["rm"].abs().flatten().tolist() == pytest.approx([1.0] * 4, abs=1e-4)
    assert table["rm"].sum(dim=-1).tolist() == pytest.approx([0.0, 0.0], abs=1e-6)


def test_running_stats_pool_the_ranks_moments(tiny, monkeypatch):
    """Under torchrun each rank adds every rank's batch: here a second rank that scored the
    same batch doubles the count and keeps the mean."""
    from lmrl import distributed

    monkeypatch.setattr(distributed, "world", lambda: 2)
    monkeypatch.setattr(distributed, "all_reduce", lambda values, op="sum": [2 * v for v in values])
    source = load_reward_model(str(tiny / "rm"), norm="running")
    source.score(PROMPTS, COMPLETIONS, {}, RewardContext(training=True))
    raw = load_reward_model(str(tiny / "rm")).score(PROMPTS, COMPLETIONS, {})
    assert source.stats.count == 8 and source.stats.mean == pytest.approx(sum(raw) / 4)


def _running_cfg(tiny, run_dir, steps: int, resume: bool = False) -> Config:
    return Config(task=TaskConfig(task="sort_text", n=3, V=5, heldout_size=10,
                                  reward_model=(str(tiny / "rm"),), reward_model_norm="running"),
                  policy=_lm(str(tiny / "policy"), max_new_tokens=6),
                  train=TrainConfig(B=2, G=2, steps=steps, threads=1),
                  log=LogConfig(run_dir=str(run_dir), progress=False, eval_every=1,
                                resume=resume))


def test_only_training_steps_move_the_running_statistics_and_a_resume_keeps_them(tiny,
                                                                                  tmp_path):
    """The pre-flight check scores step 1's batch and evaluation the held-out set; neither may
    count: after 2 steps of B*G = 4 samples the statistics hold 8 scores, and a resumed run
    starts from those 8."""
    from lmrl.trainer import train

    task = build_task(_running_cfg(tiny, tmp_path / "run", 2).task)
    train(_running_cfg(tiny, tmp_path / "run", 2), task=task, verbose=False)
    stats = task.rewards[-1].stats
    assert stats.count == 8
    resumed = build_task(_running_cfg(tiny, tmp_path / "run", 3).task)
    train(_running_cfg(tiny, tmp_path / "run", 3, resume=True), task=resumed, verbose=False)
    after = resumed.rewards[-1].stats
    assert after.count == 12 and after.mean != stats.mean


def test_chat_prompts_are_rendered_by_the_reward_models_own_template(tiny):
    from lmrl.errors import RewardError

    source = load_reward_model(str(tiny / "rm"))
    chat = [[{"role": "user", "content": "3 1 2="}]]
    with pytest.raises(RewardError, match="no chat template"):
        source.texts(chat, ["1 2 3"])
    source.tokenizer.chat_template = \
        "{% for m in messages %}{{ m['role'][0] }}:{{ m['content'] }} {% endfor %}"
    assert source.texts(chat, ["1 2 3"]) == ["u:3 1 2= a:1 2 3 "]
    assert source.texts(["3 1 2="], ["1 2 3"]) == ["3 1 2=1 2 3"]  # a string prompt: + completion
