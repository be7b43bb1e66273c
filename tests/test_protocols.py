"""Tier 3: the implementations satisfy the protocols the step, trainer and evaluation are
written against (Policy, Task, RewardSource), and the step uses only what the protocols name."""

import ast
import inspect

import pytest
import torch

from lmrl import step
from lmrl.policies.base import Policy
from lmrl.policies.toy import ToySortPolicy
from lmrl.tasks.registry import RewardSource
from lmrl.tasks.text import RewardFn, load_reward_fn


def test_the_toy_policy_is_a_policy(tmp_path):
    policy = ToySortPolicy(V=5, n=3)
    assert isinstance(policy, Policy)
    prompts = torch.tensor([[3, 1, 2]])
    assert policy.prepare(prompts) is prompts and policy.token_budget == 3
    policy.save_to(tmp_path)
    assert (tmp_path / "model.safetensors").is_file()


def test_a_causal_lm_is_a_policy(tmp_path):
    pytest.importorskip("transformers")
    from lmrl.modelzoo import init_model
    from lmrl.policies.hf import HFPolicy, PromptBatch

    init_model(tmp_path / "m", " 0123=", hidden_size=16, num_layers=1, num_heads=2)
    policy = HFPolicy.from_pretrained(str(tmp_path / "m"), max_new_tokens=7)
    assert isinstance(policy, Policy) and policy.token_budget == 7
    batch = policy.prepare([{"prompt": "1 2="}, {"prompt": "3="}])
    assert isinstance(batch, PromptBatch) and batch.input_ids.shape == (2, 4)
    policy.save_to(tmp_path / "run")
    assert (tmp_path / "run" / "model" / "model.safetensors").is_file()


def test_a_reward_function_is_a_reward_source():
    reward = load_reward_fn("json:dumps=0.5")  # any importable callable; weight parsed
    assert isinstance(reward, RewardSource) and reward.weight == 0.5
    length = RewardFn("length", lambda prompts, completions, **c: [len(x) for x in completions])
    assert length.score(["p"], ["abc"], {}) == [3.0]


def test_the_step_asks_the_policy_only_for_the_protocols_members():
    """No isinstance or getattr on the policy in step.py: everything goes through Policy."""
    tree = ast.parse(inspect.getsource(step))
    probes = [node for node in ast.walk(tree) if isinstance(node, ast.Call)
              and isinstance(node.func, ast.Name) and node.func.id in ("getattr", "isinstance")]
    assert not [node for node in probes if isinstance(node.args[0], ast.Name)
                and "policy" in node.args[0].id]
    members = {name for name, _ in inspect.getmembers(Policy) if not name.startswith("_")}
    used = {node.attr for node in ast.walk(tree) if isinstance(node, ast.Attribute)
            and isinstance(node.value, ast.Name) and node.value.id == "policy"}
    assert used <= members, used - members
