"""policy.compile: the torch.compile'd decoding step (StaticCache) and log-prob passes compute
what the eager forward computes: the same samples from the same generator, the same log-probs
and the same gradients (the last guards against an inductor bug that corrupted the first
layer's prompt-value gradient, see policies/hf.py `compiled`), and a deep copy (the reference
policy) scores with its own weights. Compiling takes ~10-30 s per graph on these machines."""

import copy
import json

import pytest

pytest.importorskip("transformers")

import torch  # noqa: E402
from test_hf_policy import tiny_tokenizer  # noqa: E402
from test_lean import model, save  # noqa: E402

from lmrl.config import Config, ConfigError  # noqa: E402
from lmrl.policies.hf import HFPolicy  # noqa: E402
from lmrl.policies.lean import BufferPool, LeanCache, StaticCache  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")

PROMPTS = ["1 2", "3 4 5 6 7 8 9", "5 5"]  # left padding in the batch


def grads(policy: HFPolicy, rollout) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    policy.model.zero_grad(set_to_none=True)
    logp, entropy = policy.logprobs(PROMPTS, rollout.responses, rollout.response_mask, True)
    # Unequal weights per token, so that a gradient summed over the wrong rows shows.
    (logp * torch.linspace(-1, 1, logp.numel()).reshape(logp.shape)).sum().backward()
    return logp.detach(), {n: p.grad.clone() for n, p in policy.model.named_parameters()}


@pytest.mark.slow  # torch.compile: ~20 s of compiling
def test_compiled_policy_samples_scores_and_differentiates_like_eager(tmp_path):
    path = save(tmp_path, model("llama"))  # grouped-query attention, rope scaling
    eager = HFPolicy.from_pretrained(path, max_new_tokens=6, forward="lmrl")
    fast = HFPolicy.from_pretrained(path, max_new_tokens=6, forward="lmrl", compile=True)
    for G in (4, 1):  # G = 1: the prompt's columns are each row's own prefix
        a = eager.sample(PROMPTS, G, torch.Generator().manual_seed(0))
        b = fast.sample(PROMPTS, G, torch.Generator().manual_seed(0))
        assert torch.equal(a.responses, b.responses) and torch.equal(a.truncated, b.truncated)
        assert torch.allclose(a.logp, b.logp, atol=1e-5)
    # The cache's buffers are reused: a rollout after one that filled them all (no EOS before
    # the budget) is the one a fresh cache gives (eager's), though it stops earlier.
    fast.min_new_tokens = 6
    assert fast.sample(PROMPTS, 4, torch.Generator().manual_seed(5)).response_mask.all()
    fast.min_new_tokens = 0
    a = eager.sample(PROMPTS[::-1], 4, torch.Generator().manual_seed(6))
    b = fast.sample(PROMPTS[::-1], 4, torch.Generator().manual_seed(6))
    assert not a.response_mask.all() and torch.equal(a.responses, b.responses)
    assert torch.allclose(a.logp, b.logp, atol=1e-5)
    rollout = eager.sample(PROMPTS, 4, torch.Generator().manual_seed(1))
    lp_eager, g_eager = grads(eager, rollout)
    lp_fast, g_fast = grads(fast, rollout)
    assert torch.allclose(lp_fast, lp_eager, atol=1e-5)
    for name, want in g_eager.items():
        assert torch.allclose(g_fast[name], want, atol=1e-4, rtol=1e-4), name

    reference = copy.deepcopy(fast)
    with torch.no_grad():
        for p in reference.model.parameters():
            p.mul_(0.5)
        ref_fast, _ = reference.logprobs(PROMPTS, rollout.responses, rollout.response_mask)
        eager.model.load_state_dict(reference.model.state_dict())
        ref_eager, _ = eager.logprobs(PROMPTS, rollout.responses, rollout.response_mask)
    assert not torch.allclose(ref_fast, lp_fast, atol=1e-3)
    assert torch.allclose(ref_fast, ref_eager, atol=1e-5)


def test_static_cache_masks_unwritten_columns_and_prompt_padding():
    cache = LeanCache()
    k = torch.randn(2, 1, 3, 4)
    cache.update(0, k, k)
    cache.weights = []
    cache.batch_repeat_interleave(2)
    mask = torch.tensor([[0, 1, 1], [1, 1, 1]]).repeat_interleave(2, dim=0)
    static = StaticCache(cache, mask, capacity=4, rope=(torch.ones(9, 4), torch.zeros(9, 4)))
    assert static.keys[0].shape == (4, 1, 5, 4)  # capacity + 1: the next column is read too
    visible = static.bias[:, 0, 0] == 0  # (N, L + C + 1)
    assert visible[:, :3].tolist() == mask.bool().tolist() and not visible[:, 3:].any()
    static.advance(0)
    static.advance(1)  # own columns 0 and 1 written: visible; 2, 3 and 4 still masked
    assert (static.bias[:, 0, 0, 3:] == 0).tolist() == [[True, True, False, False, False]] * 4
    keys, values = static.update(0, torch.ones(4, 1, 1, 4), torch.ones(4, 1, 1, 4))
    assert torch.equal(static.keys[0][:, :, 1], torch.ones(4, 1, 4))
    # Attention reads the written columns and the next (masked), never a size-1 slice.
    assert keys.shape == values.shape == (4, 1, 3, 4)
    assert keys.data_ptr() == static.keys[0].data_ptr()  # a view of the buffer, not a copy
    assert static.visible_bias().shape == (4, 1, 1, 6)
    assert (static.visible_bias()[..., -1] == float("-inf")).all()
    assert torch.isfinite(static.keys[0]).all()  # zeroed at allocation: masked columns are finite


def test_a_buffer_pool_reuses_buffers_of_the_same_shape_and_copies_start_empty():
    pool = BufferPool()
    first = pool.take((2, 1, 8, 4), torch.float32, torch.device("cpu"), 4)
    again = pool.take((2, 1, 8, 4), torch.float32, torch.device("cpu"), 4)
    assert [b.data_ptr() for b in first] == [b.data_ptr() for b in again]
    other = pool.take((3, 1, 8, 4), torch.float32, torch.device("cpu"), 4)
    assert other[0].shape == (3, 1, 8, 4)
    assert copy.deepcopy(pool).key is None


def test_compile_needs_lmrls_forward(tmp_path):
    with pytest.raises(ValueError, match="compile"):
        HFPolicy.from_pretrained(save(tmp_path, model("qwen2")), forward="transformers",
                                 compile=True)
    with pytest.raises(ConfigError, match="compile"):
        Config().replace(policy={"model": "some/model", "forward": "transformers",
                                 "compile": True})
    with pytest.raises(ConfigError, match="compile"):
        Config().replace(policy={"compile": True})  # the toy model has no such choice


def test_rope_table_is_the_models_rotary_embedding_at_each_position():
    lean = HFPolicy(model("llama"), tiny_tokenizer(), forward="lmrl").lean  # rope scaling 2
    positions = torch.tensor([[0, 0, 1, 2], [3, 4, 5, 6]])
    want_cos, want_sin = lean.model.model.rotary_emb(torch.zeros(1), positions)
    cos, sin = lean.rope_table(7)
    assert cos.shape == (7, lean.d)
    assert torch.allclose(cos[positions], want_cos) and torch.allclose(sin[positions], want_sin)


@pytest.mark.slow  # torch.compile: ~6 s of compiling
def test_compiled_bf16_autocast_is_as_close_to_float32_as_eager_autocast(tmp_path):
    """dtype autocast compiled: bf16 matmuls, so compare errors against the float32 pass; a
    wrong gradient (relative error ~1, as the inplace_buffers bug gave) cannot hide in that."""
    path = save(tmp_path, model("llama"))
    exact = HFPolicy.from_pretrained(path, max_new_tokens=6, forward="lmrl")
    eager = HFPolicy.from_pretrained(path, max_new_tokens=6, forward="lmrl", dtype="autocast")
    fast = HFPolicy.from_pretrained(path, max_new_tokens=6, forward="lmrl", dtype="autocast",
                                    compile=True)
    # Sampling: each rollout's own log-probs against the float32 pass over its tokens.
    sample_err = {}
    for name, policy in (("eager", eager), ("fast", fast)):
        r = policy.sample(PROMPTS, 4, torch.Generator().manual_seed(1))
        with torch.no_grad():
            want, _ = exact.logprobs(PROMPTS, r.responses, r.response_mask)
        sample_err[name] = (r.logp - want).abs().max()
    assert sample_err["fast"] <= 2 * sample_err["eager"] + 1e-3
    rollout = exact.sample(PROMPTS, 4, torch.Generator().manual_seed(1))
    (lp, g), (lp_eager, g_eager), (lp_fast, g_fast) = (grads(p, rollout)
                                                       for p in (exact, eager, fast))
    err_eager, err_fast = (lp_eager - lp).abs().max(), (lp_fast - lp).abs().max()
    assert 0 < err_fast <= 2 * err_eager + 1e-3  # bf16 in both, and no worse
    for name, want in g.items():
        scale = want.norm() + 1e-6
        rel_eager = (g_eager[name] - want).norm() / scale
        rel_fast = (g_fast[name] - want).norm() / scale
        assert rel_fast <= 2 * rel_eager + 0.05, (name, float(rel_fast), float(rel_eager))


@pytest.mark.slow  # torch.compile: ~20-40 s of compiling
def test_a_compiled_run_logs_compiled_steps_and_records_its_compile_cost(tmp_path, capsys):
    from lmrl import compiling
    from lmrl.cli import main

    task = ["--task", "sort_text", "--n", "3", "--V", "5", "--heldout-size", "10"]
    main(["init-model", "--out", str(tmp_path / "m"), "--hidden-size", "16", "--layers", "1",
          "--heads", "2", *task])
    main(["train", "--model", str(tmp_path / "m"), "--run-dir", str(tmp_path / "run"),
          "--steps", "4", "--B", "2", "--G", "2", "--eval-limit", "4", "--no-progress",
          "--threads", "1", "--compile", *task])
    assert "compile: on (policy.compile)" in capsys.readouterr().out
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").open()]
    assert [r["time/compiled"] for r in rows if "time/compiled" in r] == [1.0] * 4
    (record,) = compiling.load_records(compiling.cache_root()).values()
    assert record["cold_seconds"] > 0 and record["compiled_step"] > 0
