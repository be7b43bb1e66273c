"""Do TRL's own reward functions run unchanged through lmrl? Each `trl.rewards` function (and
factory) is loaded as `--reward-fns trl.rewards:...` would load it and scored by lmrl's text task
on conversational rows with a `solution` column and sampled token ids; its values are compared
with calling it the way TRL's GRPOTrainer does. Prints a markdown table.

    .venv/bin/python bench/trl_compat.py [--out FILE.md]

Runs against whichever lmrl is importable (PYTHONPATH=<a checkout>/src for an older one).
"""

import argparse
import math
from types import SimpleNamespace

import torch
from trl import rewards as trl_rewards

from lmrl.tasks.text import TextTask, load_reward_fn

SPECS = {
    "think_format_reward": ("trl.rewards:think_format_reward", lambda: trl_rewards
                            .think_format_reward),
    "accuracy_reward": ("trl.rewards:accuracy_reward", lambda: trl_rewards.accuracy_reward),
    "reasoning_accuracy_reward": ("trl.rewards:reasoning_accuracy_reward",
                                  lambda: trl_rewards.reasoning_accuracy_reward),
    "get_soft_overlong_punishment": (
        "trl.rewards:get_soft_overlong_punishment(max_completion_len=6, soft_punish_cache=2)",
        lambda: trl_rewards.get_soft_overlong_punishment(6, 2)),
    "get_repetition_penalty_reward": (
        "trl.rewards:get_repetition_penalty_reward(ngram_size=2, max_penalty=-1.0)",
        lambda: trl_rewards.get_repetition_penalty_reward(2, -1.0)),
    "get_cosine_scaled_reward": (
        "trl.rewards:get_cosine_scaled_reward(max_len=8)",
        lambda: trl_rewards.get_cosine_scaled_reward(8)),
}

PROMPT = [{"role": "user", "content": "What is 1/3 + 1/3?"}]
TEXTS = ["<think>\nadd them\n</think>\n$\\boxed{\\frac{2}{3}}$", "$\\boxed{1}$ $\\boxed{1}$",
         "<think>\nhm</think> the answer is $\\frac{2}{3}$"]
IDS = [[3, 4, 5, 3, 4, 5, 3, 4], [7, 7], [1, 2, 3, 4, 5]]
SOLUTION = "\\frac{2}{3}"


class Rows(TextTask):
    def __init__(self, rewards):
        self.rewards, self.correctness, self.heldout = rewards, None, []


def rollout() -> SimpleNamespace:
    """One prompt's three sampled completions: texts and right-padded token ids."""
    T = max(map(len, IDS))
    responses = torch.zeros(1, len(IDS), T, dtype=torch.long)
    mask = torch.zeros(1, len(IDS), T, dtype=torch.bool)
    for g, ids in enumerate(IDS):
        responses[0, g, :len(ids)] = torch.tensor(ids)
        mask[0, g, :len(ids)] = True
    return SimpleNamespace(texts=[TEXTS], responses=responses, response_mask=mask)


def as_trl_calls(fn) -> list:
    """The function called as GRPOTrainer calls it (None kept as nan)."""
    out = fn(prompts=[PROMPT] * 3, completions=[[{"role": "assistant", "content": t}]
                                                 for t in TEXTS],
             completion_ids=IDS, solution=[SOLUTION] * 3, trainer_state=None,
             log_extra=lambda *a: None, log_metric=lambda *a: None)
    return [math.nan if v is None else float(v) for v in out]


def check(name: str) -> str:
    spec, direct = SPECS[name]
    want = as_trl_calls(direct())
    try:
        reward = load_reward_fn(spec)
        _, table = Rows([reward]).score_rollout([{"prompt": PROMPT, "solution": SOLUTION}],
                                                rollout())
        got = table[reward.name][0].tolist()
    except Exception as err:  # noqa: BLE001 - the table reports any failure
        return f"fails: {type(err).__name__}: {str(err).splitlines()[0][:90]}"
    same = all((math.isnan(a) and math.isnan(b)) or a == b for a, b in zip(got, want,
                                                                             strict=True))
    shown = ", ".join("None" if math.isnan(v) else f"{v:g}" for v in got)
    return f"runs, {'equal to TRL' if same else 'DIFFERS from TRL'} ({shown})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out")
    args = parser.parse_args()
    lines = ["| trl.rewards | through lmrl |", "|---|---|"]
    lines += [f"| `{name}` | {check(name)} |" for name in SPECS]
    table = "\n".join(lines)
    print(table)
    if args.out:
        with open(args.out, "w") as f:
            f.write(table + "\n")


if __name__ == "__main__":
    main()
