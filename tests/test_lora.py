"""LoRA (policy.lora_r > 0): only the adapters train, the reference is the base model with the
adapters off (no copy), checkpoints resume exactly, the saved model reloads to the trained
policy's function, and bad settings are one clear error."""

import copy
import json

import pytest

pytest.importorskip("peft")

import torch  # noqa: E402
from test_hf_policy import tiny_model, tiny_tokenizer  # noqa: E402
from test_hf_step import PROMPTS, fixed_batch  # noqa: E402

from lmrl.cli import main  # noqa: E402
from lmrl.config import Config, ConfigError, describe  # noqa: E402
from lmrl.policies.hf import HFPolicy  # noqa: E402
from lmrl.policies.lora import LoraSpec, wrap  # noqa: E402
from lmrl.snapshots import AdapterOffReference  # noqa: E402
from lmrl.state import build_state  # noqa: E402
from lmrl.step import update  # noqa: E402

# peft 0.21 reads a transformers attribute that transformers 5 deprecates: not lmrl's to fix.
pytestmark = [pytest.mark.usefixtures("one_thread"),
              pytest.mark.filterwarnings("ignore:.*is_gradient_checkpointing:FutureWarning")]

SPEC = LoraSpec(r=4, alpha=8.0, target_modules=("all-linear",))


def lora_policy() -> tuple[HFPolicy, HFPolicy]:
    """(a LoRA policy on the tiny Llama, a plain policy on an untouched copy of its base)."""
    model = tiny_model("llama")
    # The same code as the LoRA policy runs (transformers' forward), so that outputs compare
    # to float rounding.
    base = HFPolicy(copy.deepcopy(model), tiny_tokenizer(), max_new_tokens=6,
                    forward="transformers")
    return HFPolicy(wrap(model, SPEC, seed=0), tiny_tokenizer(), max_new_tokens=6), base


def cfg_with_kl() -> Config:
    # The toy config's groups only set the step's numbers; the policy is passed in.
    return Config().replace(train={"B": 4, "G": 4, "grad_clip": 0.0, "lr": 1e-2},
                            algo={"kl_weight": 0.1})


def trained_state():
    """A LoRA policy's state after one update whose Δ vary, and the untouched base policy."""
    policy, base = lora_policy()
    cfg = cfg_with_kl()
    state = build_state(cfg, policy)
    update(state, cfg, fixed_batch(policy, state))
    return state, base


def base_weights(policy: HFPolicy) -> dict[str, torch.Tensor]:
    return {n: p for n, p in policy.model.named_parameters() if "lora_" not in n}


def test_only_the_adapters_train_and_the_base_weights_stay_bit_identical():
    policy, _ = lora_policy()
    before = {n: p.detach().clone() for n, p in policy.model.named_parameters()}
    cfg = cfg_with_kl()
    state = build_state(cfg, policy)
    trainable = [p for p in policy.parameters() if p.requires_grad]
    optimized = [p for g in state.optimizer.param_groups for p in g["params"]]
    assert len(optimized) == len(trainable) > 0
    assert all("lora_" in n for n, p in policy.model.named_parameters() if p.requires_grad)
    update(state, cfg, fixed_batch(policy, state))
    for name, p in policy.model.named_parameters():
        if "lora_" in name:
            continue
        assert torch.equal(p, before[name]), name
    lora_b = [n for n in before if "lora_B" in n]
    assert lora_b and all(not torch.equal(dict(policy.model.named_parameters())[n], before[n])
                          for n in lora_b)


def test_reference_is_the_base_model_with_adapters_off_and_no_copy():
    state, base = trained_state()
    policy = state.policy
    assert isinstance(state.reference, AdapterOffReference) and state.reference.policy is policy
    assert policy.lean is None  # lmrl's forward would read the base weights only
    inputs = policy.encode(PROMPTS)
    rollout = base.sample(inputs, 4, generator=torch.Generator().manual_seed(1))
    args = (inputs, rollout.responses, rollout.response_mask)
    ref = state.reference.logprobs(*args)
    torch.testing.assert_close(ref, base.logprobs(*args)[0], rtol=0, atol=1e-6)
    # The adapters moved the policy away from the reference, and they are on again.
    assert (policy.logprobs(*args)[0] - ref).abs().max() > 1e-4
    # One set of base weights in the whole state: the policy's own, nothing in the reference.
    tensors = {id(p) for p in policy.parameters()}
    assert len(tensors) == len(list(policy.parameters()))
    assert not any(isinstance(v, torch.nn.Module) and v is not policy
                   for v in vars(state.reference).values())
    base_count = sum(p.numel() for p in base.parameters())
    assert sum(p.numel() for n, p in base_weights(policy).items()) == base_count


def test_saved_model_and_adapter_reload_to_the_trained_policy(tmp_path):
    from peft import PeftModel

    state, base = trained_state()
    policy = state.policy
    policy.save_to(tmp_path)
    merged = HFPolicy.from_pretrained(str(tmp_path / "model"), forward="transformers",
                                      max_new_tokens=6)
    assert not merged.lora
    adapted = HFPolicy(PeftModel.from_pretrained(copy.deepcopy(base.model), tmp_path / "adapter"),
                       tiny_tokenizer(), max_new_tokens=6)
    inputs = policy.encode(PROMPTS)
    rollout = policy.sample(inputs, 4, generator=torch.Generator().manual_seed(2))
    args = (inputs, rollout.responses, rollout.response_mask)
    expected = policy.logprobs(*args)[0]
    torch.testing.assert_close(merged.logprobs(*args)[0], expected, rtol=0, atol=1e-5)
    torch.testing.assert_close(adapted.logprobs(*args)[0], expected, rtol=0, atol=1e-6)
    # Saving merged a copy: the policy still has its adapters and its base weights.
    assert policy.lora and all(torch.equal(p, q) for p, q in
                               zip(base_weights(policy).values(), base.parameters(),
                                   strict=True))


TASK = ["--task", "sort_text", "--n", "3", "--V", "5", "--heldout-size", "10"]
LORA = ["--lora-r", "4", "--lora-target-modules", "all-linear"]


def run_train(run, model, *extra):
    main(["train", "--model", str(model), "--run-dir", str(run), "--B", "4", "--G", "4",
          "--eval-every", "2", "--no-progress", "--threads", "1", "--no-preflight",
          "--lr", "1e-2", "--schedule", "constant", "--reward-fns", "lora_len:length", *TASK,
          *LORA, *extra])


def metrics(run) -> list[dict]:
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in r.items() if not k.startswith("time/")} for r in rows]


@pytest.mark.slow
def test_lora_run_resumes_exactly_and_its_model_evaluates(tmp_path, reward_module):
    """A LoRA run stopped at step 2 and resumed logs the same metrics as one that ran through
    (a constant schedule: the first part is a 2-step run);
    lmrl eval --run and lmrl train --model load its model/."""
    reward_module("lora_len", "def length(prompts, completions, **kw):\n"
                              "    return [float(len(c)) for c in completions]\n")
    init = tmp_path / "init"
    main(["init-model", "--out", str(init), "--hidden-size", "32", "--layers", "2",
          "--heads", "2", *TASK])
    whole, split = tmp_path / "whole", tmp_path / "split"
    run_train(whole, init, "--steps", "4")
    run_train(split, init, "--steps", "2")
    run_train(split, init, "--steps", "4", "--resume")
    assert metrics(split) == metrics(whole)
    assert metrics(whole)[-1]["loss/kl_ref"] > 0  # the adapters moved the policy
    assert (whole / "adapter" / "adapter_model.safetensors").is_file()
    out = tmp_path / "eval.json"
    main(["eval", "--run", str(whole), "--threads", "1", "--out", str(out)])
    evaluated = json.loads(out.read_text())
    final = json.loads((whole / "summary.json").read_text())
    assert evaluated["eval/reward"] == pytest.approx(final["eval/reward"])
    run_train(tmp_path / "again", whole / "model", "--steps", "1")


@pytest.mark.parametrize("policy, algo, match", [
    ({"lora_r": -1}, {}, "lora_r=-1 must be >= 0"),
    ({"lora_r": 4, "lora_alpha": 0.0}, {}, "lora_alpha=0.0 must be > 0"),
    ({"lora_r": 4, "lora_dropout": 1.0}, {}, r"lora_dropout=1.0 in \[0, 1\)"),
    ({"lora_alpha": 32.0}, {}, "lora_alpha=32.0 has no effect here .LoRA is off"),
    ({"lora_r": 4, "forward": "lmrl"}, {}, "runs transformers' forward"),
    ({"lora_r": 4, "compile": True}, {}, "runs transformers' forward"),
    ({"lora_r": 4}, {"ref_refresh": 5}, "ref_refresh=5 with LoRA"),
    ({"lora_r": 4, "lora_target_modules": ("all-linear", "q_proj")}, {}, "give it alone"),
])
def test_bad_lora_settings_are_one_clear_error(policy, algo, match):
    with pytest.raises(ConfigError, match=match):
        Config().replace(task={"task": "sort_text"}, policy={"model": "m", **policy}, algo=algo)


def test_lora_on_the_toy_model_or_without_peft_is_refused(monkeypatch):
    with pytest.raises(ConfigError, match="lora_r=4 has no effect here .they configure a causal"):
        Config().replace(policy={"lora_r": 4})
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "peft" else real(name, *a))
    with pytest.raises(ConfigError, match=r"needs peft.*pip install 'lmrl\[lora\]'"):
        Config().replace(task={"task": "sort_text"}, policy={"model": "m", "lora_r": 4})


def test_unknown_target_module_is_a_config_error_and_describe_says_lora():
    with pytest.raises(ConfigError, match="--lora-target-modules"):
        wrap(tiny_model("llama"), LoraSpec(r=2, alpha=4.0, target_modules=("nope",)), seed=0)
    cfg = Config().replace(task={"task": "sort_text"}, policy={"model": "m", "lora_r": 4})
    text = describe(cfg)
    assert "LoRA: r=4" in text and "base model with the adapters off (no copy)" in text
