"""Reward functions written for TRL run unchanged: called as GRPOTrainer calls them (keywords,
every column, completion_ids, trainer_state, log_extra / log_metric, conversational completions,
None = does not apply, async functions), TRL's own included (skipped without TRL), through the
CLI and the Python API."""

import asyncio
import json
import math

import pytest
import torch

import lmrl
from lmrl.cli import main
from lmrl.deltas import compute_deltas
from lmrl.errors import ConfigError, RewardError
from lmrl.tasks.text import (
    RewardContext,
    RewardFn,
    TextTask,
    TrainerProgress,
    load_reward_fn,
    reward_from_callable,
    weighted_sum,
)

pytestmark = pytest.mark.usefixtures("one_thread")


class Rows(TextTask):
    """A text task over given rows, scored by the given rewards (no policy needed)."""

    def __init__(self, rewards, heldout=()):
        self.rewards, self.correctness, self.heldout = rewards, None, list(heldout)


def test_a_user_function_is_called_by_keyword_with_everything_trl_passes():
    seen = {}

    def spy(**kwargs):
        seen.update(kwargs)
        kwargs["log_metric"]("spy_metric", 0.5)
        kwargs["log_extra"]("note", ["x"] * len(kwargs["completions"]))
        return [1.0] * len(kwargs["completions"])

    task = Rows([reward_from_callable(spy)])
    task.at_step(7, 100)
    examples = [{"prompt": "1 2=", "answer": "3", "completion": "3"}]
    context = RewardContext(completion_ids=[[5, 6], [7]], trainer_state=task.progress)
    task.score(examples, [["3", "4"]], context)
    assert seen["prompts"] == ["1 2=", "1 2="] and seen["completions"] == ["3", "4"]
    assert seen["answer"] == ["3", "3"]  # every column, repeated per completion
    assert "completion" not in seen and "prompt" not in seen  # TRL leaves these out
    assert seen["completion_ids"] == [[5, 6], [7]]
    assert seen["trainer_state"] == TrainerProgress(global_step=7, max_steps=100)
    assert context.metrics == {"spy_metric": [0.5]} and context.extra == {"note": ["x", "x"]}


def test_lmrls_own_rewards_keep_their_positional_call():
    own = RewardFn("own", lambda prompts, completions, **cols: [len(c) for c in completions])
    assert Rows([own]).score([{"prompt": "p"}], [["ab", "c"]])[0].tolist() == [[2.0, 1.0]]


def test_conversational_prompts_give_message_completions():
    got = {}

    def spy(prompts, completions, **kwargs):
        got["prompts"], got["completions"] = prompts, completions
        return [0.0] * len(completions)

    messages = [{"role": "user", "content": "hi"}]
    Rows([reward_from_callable(spy)]).score([{"prompt": messages}], [["yo"]])
    assert got["prompts"] == [messages]
    assert got["completions"] == [[{"role": "assistant", "content": "yo"}]]


def test_none_means_does_not_apply_with_trls_weighting():
    """Hand-computed: f = [1, None, None, 4] weight 1, g = [None, 2, None, 0] weight 0.5.
    Total = nansum(w·v): [1, 1, nan (nobody scored), 4]."""
    f = reward_from_callable(lambda completions, **_: [1, None, None, 4], name="f")
    g = reward_from_callable(lambda completions, **_: [None, 2, None, 0], weight=0.5, name="g")
    total, table = Rows([f, g]).score([{"prompt": "p"}], [["a", "b", "c", "d"]])
    assert math.isnan(table["f"][0, 1]) and table["g"][0, 1] == 2.0
    assert total[0, :2].tolist() == [1.0, 1.0] and total[0, 3] == 4.0
    assert math.isnan(total[0, 2])
    _, unscorable = weighted_sum([f, g], table)
    assert unscorable.tolist() == [[False, False, True, False]]
    # The unscored sample is out of the group's statistics and gets Δ = 0:
    # centered over [1, 1, 4]: mean 2 -> [-1, -1, 0, 2].
    assert compute_deltas("centered", total.float()).tolist() == [[-1.0, -1.0, 0.0, 2.0]]


def test_deltas_with_unscored_samples_by_hand():
    nan = math.nan
    r = torch.tensor([[1.0, nan, 0.0, 0.0], [nan, nan, nan, nan], [2.0, nan, nan, nan]])
    # Scored [1, 0, 0]: mean 1/3, unbiased std sqrt(1/3); a lone scored sample has no baseline.
    assert torch.allclose(compute_deltas("centered", r),
                          torch.tensor([[2 / 3, 0, -1 / 3, -1 / 3], [0.0] * 4, [0.0] * 4]))
    assert torch.allclose(compute_deltas("normalized", r, eps=0.0)[0],
                          torch.tensor([2 / 3, 0, -1 / 3, -1 / 3]) / math.sqrt(1 / 3))
    assert torch.allclose(compute_deltas("rloo", r)[0], torch.tensor([1.0, 0, -0.5, -0.5]))
    assert compute_deltas("raw", r).tolist() == [[1, 0, 0, 0], [0] * 4, [2, 0, 0, 0]]
    assert compute_deltas("max_only", r).tolist() == [[1, 0, 0, 0], [0] * 4, [2, 0, 0, 0]]


def test_nan_from_a_function_is_still_an_error_and_none_from_lmrls_own_too():
    bad = reward_from_callable(lambda completions, **_: [math.nan], name="bad")
    with pytest.raises(RewardError, match="finite numbers or None"):
        Rows([bad]).score([{"prompt": "p"}], [["a"]])
    own = RewardFn("own", lambda prompts, completions, **_: [None])
    with pytest.raises(RewardError, match="must be finite numbers"):
        Rows([own]).score([{"prompt": "p"}], [["a"]])


def test_async_functions_are_awaited_also_inside_a_running_event_loop():
    async def slow_len(completions, **_):
        await asyncio.sleep(0)
        return [float(len(c)) for c in completions]

    task = Rows([reward_from_callable(slow_len)])
    assert task.score([{"prompt": "p"}], [["abc"]])[0].tolist() == [[3.0]]

    async def notebook():  # a notebook's main thread runs an event loop
        return task.score([{"prompt": "p"}], [["ab"]])[0].tolist()

    assert asyncio.run(notebook()) == [[2.0]]


def test_factory_specs_call_the_factory_with_literal_keywords(reward_module):
    reward_module("factories", """
        def make(scale=1.0, name="scaled"):
            def reward(completions, **kwargs):
                return [scale * len(c) for c in completions]
            reward.__name__ = name
            return reward
        """)
    fn = load_reward_fn("factories:make(scale=2.0, name='twice')=0.5")
    assert (fn.name, fn.weight, fn.trl) == ("twice", 0.5, True)
    assert fn.score(["p"], ["abc"], {}) == [6.0]
    with pytest.raises(ConfigError, match="literal keyword arguments"):
        load_reward_fn("factories:make(scale=open('x'))")
    with pytest.raises(ConfigError, match="calling it raised TypeError"):
        load_reward_fn("factories:make(nope=1)")


# TRL's own reward functions, called here as lmrl calls them and compared with calling them
# directly the way GRPOTrainer does.

def test_trl_think_format_and_accuracy_rewards_score_conversational_rows():
    rewards = pytest.importorskip("trl.rewards")
    messages = [{"role": "user", "content": "What is 1/3 + 1/3?"}]
    examples = [{"prompt": messages, "solution": r"\frac{2}{3}"}]
    texts = [["<think>\nadd\n</think>\n$\\boxed{\\frac{2}{3}}$", "no think $\\boxed{1}$"]]
    task = Rows([load_reward_fn("trl.rewards:think_format_reward"),
                 load_reward_fn("trl.rewards:accuracy_reward=2")])
    total, table = task.score(examples, texts)
    direct = [[{"role": "assistant", "content": t}] for t in texts[0]]
    assert table["think_format_reward"][0].tolist() == rewards.think_format_reward(direct)
    assert table["accuracy_reward"][0].tolist() == rewards.accuracy_reward(
        direct, solution=[r"\frac{2}{3}"] * 2)
    assert total.tolist() == [[3.0, 0.0]]


def test_trl_soft_overlong_punishment_reads_completion_ids():
    rewards = pytest.importorskip("trl.rewards")
    fn = load_reward_fn("trl.rewards:get_soft_overlong_punishment(max_completion_len=10, "
                        "soft_punish_cache=4)")
    assert fn.name == "soft_overlong_punishment_reward"
    ids = [[1] * 5, [1] * 8, [1] * 12]
    context = RewardContext(completion_ids=ids)
    got = fn.score(["p"] * 3, ["a", "b", "c"], {}, context)
    want = rewards.get_soft_overlong_punishment(10, 4)(completion_ids=ids)
    assert got == want == [0.0, -0.5, -1.0]


@pytest.fixture(scope="module")
def tiny_user_data(tmp_path_factory):
    """A tiny causal LM and a standard-format data file with an `answer` column."""
    root = tmp_path_factory.mktemp("trl_user")
    rows = [{"prompt": f"{a}{b}=", "answer": str((a + b) % 10)} for a in range(6) for b in range(6)]
    data = root / "rows.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    main(["init-model", "--out", str(root / "init"), "--hidden-size", "16", "--layers", "1",
          "--heads", "2", "--task", "user", "--data", str(data), "--heldout-size", "6",
          "--reward-fns", "json:dumps"])
    return root, data


HAND_WRITTEN = """
def completions_only(completions, **kwargs):
    return [float(len(c) < 3) for c in completions]

def keyword_columns(completions, answer, **kwargs):
    return [float(c.strip() == a) for c, a in zip(completions, answer)]

def sometimes_none(completions, answer, trainer_state, **kwargs):
    assert trainer_state.max_steps == 2
    return [None if a == "0" else 0.5 for a in answer]
"""


def test_hand_written_trl_functions_train_through_the_cli(tiny_user_data, reward_module,
                                                           tmp_path):
    root, data = tiny_user_data
    reward_module("trl_style", HAND_WRITTEN)
    main(["train", "--model", str(root / "init"), "--run-dir", str(tmp_path / "run"),
          "--task", "user", "--data", str(data), "--heldout-size", "6", "--steps", "2",
          "--B", "4", "--G", "2", "--max-new-tokens", "3", "--no-progress", "--threads", "1",
          "--reward-fns", "trl_style:completions_only", "trl_style:keyword_columns=2",
          "trl_style:sometimes_none=0.5"])
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").open()]
    assert {"train/reward_completions_only", "train/reward_keyword_columns",
            "train/reward_sometimes_none"} <= set(rows[1])
    assert rows[0]["eval/reward_sometimes_none"] == 0.5  # the mean over the rows it scored


def test_the_python_api_takes_callables_with_weights(tiny_user_data, tmp_path):
    root, data = tiny_user_data
    calls = []

    def length_penalty(completions, **kwargs):
        calls.append(len(completions))
        return [-len(c) / 10 for c in completions]

    result = lmrl.train(model=str(root / "init"), data=str(data), heldout_size=6,
                        reward_fns=[(length_penalty, 0.5)],
                        steps=2, B=4, G=2, max_new_tokens=3, progress=False, threads=1,
                        run_dir=str(tmp_path / "api"), verbose=False)
    # the pre-flight batch (B*G = 8), held-out eval (6 rows), 2 steps of 8, final eval
    assert calls == [8, 6, 8, 8, 6]
    assert result.run_dir == tmp_path / "api" and result["steps"] == 2
    assert result.metrics["eval/reward_length_penalty"] <= 0
    assert result.tokenizer is not None and hasattr(result.model, "generate")
    saved = json.loads((tmp_path / "api" / "config.json").read_text())
    assert saved["task"]["reward_fns"] == ["<callable>:length_penalty=0.5"]


def test_the_api_takes_a_model_object_and_rows_in_memory(tiny_user_data, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    root, _ = tiny_user_data
    model = AutoModelForCausalLM.from_pretrained(root / "init")
    tokenizer = AutoTokenizer.from_pretrained(root / "init")
    rows = [{"prompt": f"{a}{b}=", "answer": str((a + b) % 10)} for a in range(4) for b in range(4)]

    def correct(completions, answer, **kwargs):
        return [float(c.strip() == a) for c, a in zip(completions, answer, strict=True)]

    result = lmrl.train(model=model, tokenizer=tokenizer, data=rows, reward_fns=[correct],
                        heldout_size=4, steps=1, B=2, G=2, max_new_tokens=2, progress=False,
                        threads=1, run_dir=str(tmp_path / "obj"), verbose=False)
    assert result.model is model  # trained in place, the caller's object
    assert "eval/exact_match" in result.metrics  # a reward named `correct` is the correctness
    saved = json.loads((tmp_path / "obj" / "config.json").read_text())["task"]
    assert saved["data"] == "<python list, 16 rows>" and saved["task"] == "user"


def test_the_api_takes_a_datasets_dataset(tiny_user_data, tmp_path):
    datasets = pytest.importorskip("datasets")
    root, data = tiny_user_data
    dataset = datasets.load_dataset("json", data_files=str(data), split="train")
    result = lmrl.train(model=str(root / "init"), data=dataset, heldout_size=6,
                        reward_fns=[lambda completions, **kw: [0.0] * len(completions)],
                        steps=1, B=2, G=2, max_new_tokens=2, progress=False, threads=1,
                        run_dir=str(tmp_path / "ds"), verbose=False)
    assert result["steps"] == 1


def test_api_errors_are_the_clis_in_python_spelling(tmp_path):
    with pytest.raises(ConfigError, match="did you mean kl_weight"):
        lmrl.train(kl_wieght=0.1)
    with pytest.raises(ConfigError, match="a model object needs its tokenizer"):
        from transformers import GPT2Config, GPT2LMHeadModel

        lmrl.train(model=GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=8, n_head=2)))
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "mine.txt").write_text("a user's file")
    with pytest.raises(lmrl.RunDirError, match="overwrite=True") as err:
        lmrl.train(steps=1, run_dir=str(tmp_path / "run"), verbose=False)
    assert "--overwrite" not in str(err.value)
    assert (tmp_path / "run" / "mine.txt").read_text() == "a user's file"


def test_trls_own_rewards_train_unchanged_on_conversational_data(tmp_path):
    """`--reward-fns trl.rewards:NAME` through the CLI: conversational rows rendered by the
    model's chat template, message completions, a `solution` column, completion_ids."""
    pytest.importorskip("trl.rewards")
    rows = [{"prompt": [{"role": "user", "content": f"{a}+{b}?"}], "solution": str(a + b)}
            for a in range(5) for b in range(5)]
    data = tmp_path / "chat.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    fns = ["trl.rewards:think_format_reward", "trl.rewards:accuracy_reward=2",
           "trl.rewards:get_soft_overlong_punishment(max_completion_len=4, soft_punish_cache=2)",
           "trl.rewards:get_repetition_penalty_reward(ngram_size=2, max_penalty=-0.5)"]
    task = ["--task", "user", "--data", str(data), "--heldout-size", "5", "--reward-fns", *fns]
    main(["init-model", "--out", str(tmp_path / "init"), "--chat-template", "--alphabet",
          "ascii", "--hidden-size", "16", "--layers", "1", "--heads", "2", *task])
    main(["train", "--model", str(tmp_path / "init"), "--run-dir", str(tmp_path / "run"),
          "--steps", "2", "--B", "2", "--G", "2", "--max-new-tokens", "4", "--no-progress",
          "--threads", "1", *task])
    step = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").open()][1]
    for name in ("think_format_reward", "accuracy_reward", "soft_overlong_punishment_reward",
                 "repetition_penalty_reward"):
        assert f"train/reward_{name}" in step


def test_every_trl_reward_runs_equal_to_trl_in_the_compat_table():
    """bench/trl_compat.py's table: each trl.rewards function through lmrl, against TRL's call."""
    pytest.importorskip("trl.rewards")
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
    import trl_compat

    assert {name: trl_compat.check(name).split(" (")[0] for name in trl_compat.SPECS} == \
        dict.fromkeys(trl_compat.SPECS, "runs, equal to TRL")


def test_hand_written_trl_functions_train_through_the_api(tiny_user_data, tmp_path):
    root, data = tiny_user_data
    scope: dict = {}
    exec(HAND_WRITTEN, scope)
    result = lmrl.train(model=str(root / "init"), data=str(data), heldout_size=6,
                        reward_fns=[scope["completions_only"], (scope["keyword_columns"], 2),
                                    (scope["sometimes_none"], 0.5)],
                        steps=2, B=4, G=2, max_new_tokens=3, progress=False, threads=1,
                        run_dir=str(tmp_path / "api3"), verbose=False)
    assert result.metrics["eval/reward_sometimes_none"] == 0.5
    assert {"eval/reward_completions_only", "eval/reward_keyword_columns"} <= set(result.metrics)


def test_api_reward_names_survive_a_redefinition_and_weights_keep_factory_arguments():
    from lmrl.api import reward_spec

    def correct(completions, **kwargs):
        return [1.0] * len(completions)

    first = reward_spec(correct, set())

    def correct(completions, **kwargs):  # noqa: F811 - a notebook cell run again
        return [0.0] * len(completions)

    assert reward_spec(correct, set()) == first == "<callable>:correct"
    assert load_reward_fn(first).fn is correct  # the newer one
    assert [reward_spec(f, taken) for taken in [set()] for f in (correct, correct.__call__)] \
        == ["<callable>:correct", "<callable>:__call__"]
    spec = "trl.rewards:get_soft_overlong_punishment(max_completion_len=64, soft_punish_cache=16)"
    assert reward_spec((spec, 0.5), set()) == spec + "=0.5"
    assert reward_spec((spec + "=2", 0.5), set()) == spec + "=0.5"


def test_a_nan_reward_from_a_task_that_never_leaves_samples_unscored_stops_the_step(tmp_path):
    from lmrl.config import Config
    from lmrl.state import build_state
    from lmrl.step import collect
    from lmrl.tasks.sort import SortTask

    cfg = Config().replace(task={"n": 3, "V": 4, "heldout_size": 4}, train={"B": 2, "G": 2})

    class NanSort(SortTask):
        def score_rollout(self, prompts, rollout):
            rewards, table = super().score_rollout(prompts, rollout)
            return rewards * float("nan"), table

    task = NanSort(n=3, V=4, heldout_size=4)
    with pytest.raises(RewardError, match="non-finite rewards"):
        collect(build_state(cfg), task, cfg)
