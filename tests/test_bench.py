"""bench/: FLOP counting against a hand count and against torch's own counter, the summary
arithmetic, and the lmrl-vs-TRL harness in its seconds-long smoke mode. No timing assertions."""

import importlib.util
import inspect
import json
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "bench"
sys.path.insert(0, str(BENCH))

import vs_trl  # noqa: E402
from flops import ModelShape, decode_flops, forward_flops, step_flops  # noqa: E402

# 2 layers, hidden 8, 2 heads of 4 (no GQA), MLP 16, vocab 12.
SMALL = ModelShape(layers=2, hidden=8, heads=2, kv_heads=2, head_dim=4, intermediate=16, vocab=12)
SMALL_HF = {"num_hidden_layers": 2, "hidden_size": 8, "num_attention_heads": 2,
            "num_key_value_heads": 2, "intermediate_size": 16, "vocab_size": 12}


def test_small_config_by_hand():
    # Per layer: q, k, v, o are 8x8 each (4 * 64 = 256), gate, up, down 8x16 (3 * 128 = 384).
    assert SMALL.body_weights == 2 * (256 + 384) == 1280
    assert ModelShape.from_hf_config(SMALL_HF) == SMALL
    # 5 tokens, logits at 3 of them: 2 FLOPs per weight per token, 2*8*12 = 192 per logit row,
    # and 4 * layers * heads * head_dim = 64 per causal (query, key) pair: 1+2+3+4+5 = 15 pairs.
    assert forward_flops(SMALL, 5, 0, 3) == 2 * 5 * 1280 + 3 * 192 + 64 * 15 == 14336
    # One token after 3 cached ones sees 4 keys.
    assert forward_flops(SMALL, 1, 3, 1) == 2 * 1280 + 192 + 64 * 4 == 3008


def test_step_by_hand():
    # B=1 prompt of 3 tokens, G=2 completions of 2 and 3 tokens, KL on, μ = 1.
    prefill = 2 * 3 * 1280 + 192 + 64 * (1 + 2 + 3)  # logits at the last prompt token only
    decode = 3008 + (3008 + 3072)  # token 1 of each sees 4 keys; token 2 of the second sees 5
    logprob = (2 * 4 * 1280 + 2 * 192 + 64 * 10) + 14336  # 4 tokens, 2 logits; 5 tokens, 3
    got = step_flops(SMALL, B=1, G=2, prompt_len=3, lengths=[2, 3], kl=True)
    assert got == {"sample": prefill + decode, "ref": logprob, "update": 3 * logprob,
                   "total": prefill + decode + 4 * logprob}
    assert got["total"] == 119744
    assert step_flops(SMALL, 1, 2, 3, [2, 3], kl=False)["ref"] == 0
    assert step_flops(SMALL, 1, 2, 3, [2, 3], kl=False, mu=2)["update"] == 6 * logprob
    with pytest.raises(ValueError, match="B\\*G"):
        step_flops(SMALL, 1, 2, 3, [2], kl=False)


@pytest.mark.parametrize("prompt_len, length", [(3, 1), (3, 2), (6, 7)])
def test_decode_closed_form_is_the_token_by_token_sum(prompt_len, length):
    by_token = sum(forward_flops(SMALL, 1, prompt_len + j - 1, 1) for j in range(1, length))
    assert decode_flops(SMALL, prompt_len, length) == by_token


def tiny_qwen2(**overrides):
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    config = transformers.Qwen2Config(**{**SMALL_HF, "max_position_embeddings": 64,
                                         "tie_word_embeddings": True, **overrides})
    config._attn_implementation = "eager"  # attention as plain matmuls, which the counter sees
    torch.manual_seed(0)
    return transformers.Qwen2ForCausalLM(config).eval()


def test_body_weights_are_the_2d_weights_of_a_real_model():
    model = tiny_qwen2(num_key_value_heads=1)  # with grouped-query attention
    weights = sum(p.numel() for name, p in model.model.layers.named_parameters() if p.dim() == 2)
    assert weights == ModelShape.from_hf_config(model.config.to_dict()).body_weights


def test_decode_step_matches_torch_flop_counter():
    torch = pytest.importorskip("torch")
    from torch.utils.flop_counter import FlopCounterMode
    from transformers import DynamicCache

    model = tiny_qwen2()
    # transformers 5 renamed past_key_values to cache
    name = "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"
    cache = {name: DynamicCache(config=model.config)}
    with torch.no_grad():
        model(input_ids=torch.tensor([[3, 4, 5, 6]]), use_cache=True, **cache)
        counter = FlopCounterMode(display=False)
        with counter:
            model(input_ids=torch.tensor([[7]]), use_cache=True, logits_to_keep=1, **cache)
    # Rotary embeddings add a tiny matmul of their own (head_dim/2 x positions).
    assert counter.get_total_flops() == pytest.approx(forward_flops(SMALL, 1, 4, 1), rel=0.01)


def test_summary_pools_repeats_after_warmup():
    def run(secs, tokens, reward):
        return {"kl": 0.0, "step_seconds": secs, "tokens": tokens, "peak_rss_mb": 100.0,
                "eval": {"eval/reward": reward, "eval/exact_match": reward / 4},
                "os": {"others_busy_frac": 0.0}}
    prep = {"config": SMALL_HF, "prompt_len": 8}
    runs = [run([9.0, 1.0, 2.0], [640, 640, 640], 2.0), run([9.0, 4.0, 3.0], [640] * 3, 3.0)]
    for r in runs:
        r["stages"] = {"sample": [5.0, 0.5, 0.5], "reward": [1.0, 0.1, 0.3],
                       "step": r["step_seconds"]}
    out = vs_trl.summarize(runs, "lmrl", prep, warmup=1, ceiling=100.0)
    assert out["timed_steps"] == 4
    assert out["median_step_s"] == 2.5  # of 1, 2, 4, 3
    assert out["completions_per_s"] == 128 / 2.5
    assert out["run_completions_per_s"] == 6 * 128 / (12.0 + 16.0)  # every step, warm-up too
    assert out["mean_completion_tokens"] == 5.0
    assert out["heldout_reward"] == 2.5
    expected = step_flops(SMALL, 16, 8, 8, [5.0] * 128, kl=False)
    assert out["ceiling_frac"] == pytest.approx(expected["total"] / 2.5 / 1e9 / 100.0)
    assert out["stages"]["sample"] == {"seconds": 0.5, "gflop": expected["sample"] / 1e9,
                                       "ceiling_frac": expected["sample"] / 0.5 / 1e11}
    assert out["stages"]["reward"] == {"seconds": 0.2, "gflop": None, "ceiling_frac": None}
    assert out["stages"]["step"]["seconds"] == out["median_step_s"]
    assert "| x | 4 | 0.0 | 0.5000 s; " in "\n".join(
        vs_trl.stage_table([{"size": "x", "n": 4, "kl": 0.0, "libs": {"lmrl": out}}]))


def test_wait_for_idle_reports_what_it_saw():
    seen = vs_trl.wait_for_idle(threshold=1.01, window=0.05, timeout=5.0)
    assert not seen["timed_out"] and 0.0 <= seen["busy_frac"] <= 1.0
    assert vs_trl.wait_for_idle(threshold=0.0, window=0.05, timeout=0.0)["timed_out"]


def check_smoke_report(out: Path, libs: set[str]) -> dict:
    report = json.loads((out / "vs_trl.json").read_text())
    assert set(report["ceiling_gflops"]) == {"lmrl", "trl"}
    assert all(v > 0 for v in report["ceiling_gflops"].values())
    (cell,) = report["cells"]
    assert set(cell["libs"]) == libs
    for summary in cell["libs"].values():
        assert summary["timed_steps"] == 2 and summary["completions_per_s"] > 0
        assert 0.0 <= summary["heldout_exact_match"] <= 1.0
    assert set(vs_trl.STAGE_FLOPS) <= set(cell["libs"]["lmrl"]["stages"])
    assert "| smoke | 4 | 0.04 | lmrl |" in (out / "vs_trl.md").read_text()
    return report


@pytest.mark.slow  # a whole bench run, ~12 s
def test_smoke_without_trl_skips_it_and_says_so(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(vs_trl, "trl_missing", lambda: "not importable: trl")
    report = vs_trl.main(["--smoke", "--out", str(tmp_path), "--lmrl-compile", "auto"])
    assert "TRL side skipped: not importable: trl" in capsys.readouterr().out
    # What `lmrl train` does with no flags: a 2-step run on a new shape stays eager.
    (seen,) = [r["settings_seen"] for r in report["runs"]]
    assert seen["compile_setting"] == "auto" and seen["compile"] is False
    assert seen["compile_decision"].startswith("compile: auto -> off")
    assert report["trl_skipped"] == "not importable: trl"
    check_smoke_report(tmp_path, {"lmrl"})
    assert "TRL side skipped" in (tmp_path / "vs_trl.md").read_text()


@pytest.mark.slow  # a bench run of both libraries: ~20 s each
@pytest.mark.skipif(importlib.util.find_spec("trl") is None, reason="TRL not installed (.[bench])")
@pytest.mark.parametrize("bf16", [False, True], ids=["fp32", "bf16"])
def test_smoke_runs_both_libraries(tmp_path, bf16):
    flags = ["--lmrl-dtype", "autocast", "--trl-bf16"] if bf16 else []
    subprocess.run([sys.executable, str(BENCH / "vs_trl.py"), "--smoke", "--out", str(tmp_path),
                    *flags], check=True, capture_output=True, text=True)
    report = check_smoke_report(tmp_path, {"lmrl", "trl"})
    (cell,) = report["cells"]
    assert set(cell["ratio"]) == set(vs_trl.RATIO_KEYS)
    trl_run = next(r for r in report["runs"] if r["lib"] == "trl")
    assert trl_run["torch_threads"] == 1 and len(trl_run["tokens"]) == 2
    assert trl_run["settings_seen"]["bf16"] is bf16
    lmrl_run = next(r for r in report["runs"] if r["lib"] == "lmrl")
    assert lmrl_run["settings_seen"]["autocast"] == ("torch.bfloat16" if bf16 else "None")
    dtype = "bfloat16" if bf16 else "float32"
    assert report["settings"]["ceiling_dtypes"] == {"lmrl": dtype, "trl": dtype}
    assert report["ceiling_gflops"]["lmrl"] == max(report["matmul"][dtype].values())


def test_shared_prompt_flops_equal_the_standard_pass_for_one_sample_per_prompt():
    """G = 1: running the prompt once per group is running it once per completion."""
    from flops import ModelShape, logprob_flops, shared_logprob_flops, step_flops

    m = ModelShape(layers=2, hidden=8, heads=2, kv_heads=2, head_dim=4, intermediate=16,
                   vocab=12)
    lengths = [3.0, 5.0, 1.0]
    standard = sum(logprob_flops(m, 7, t) for t in lengths)
    assert shared_logprob_flops(m, 3, 7, lengths) == pytest.approx(standard)
    # G = 4: the prompt's 7 tokens run for 2 prompts instead of 8 completions.
    shared = step_flops(m, 2, 4, 7, [4.0] * 8, kl=True, shared_prompt=True)
    full = step_flops(m, 2, 4, 7, [4.0] * 8, kl=True)
    assert shared["sample"] == full["sample"] and shared["ref"] < full["ref"]


@pytest.mark.slow  # two variants' steps, ~5 s
def test_ab_step_runs_two_variants_interleaved(tmp_path):
    """bench/ab_step.py end to end on a 2-layer model, eager, one timed step per variant."""
    from lmrl.modelzoo import init_model, task_alphabet

    task = vs_trl.make_task({"n": 5, "heldout": 10})
    init_model(tmp_path / "m", task_alphabet(task), hidden_size=8, num_layers=2, num_heads=2)
    out = subprocess.run(
        [sys.executable, str(BENCH / "ab_step.py"), "--model", str(tmp_path / "m"), "--eager",
         "--steps", "2", "--warmup", "1", "--threads", "1", "--kl", "0",
         "step.Batch.groups_with_gradient = lambda self: self",
         "step.Batch.groups_with_gradient = groups_with_gradient"],
        capture_output=True, text=True, check=True).stdout
    lines = out.strip().splitlines()
    assert len(lines) == 3 and all("step " in line and "updated groups" in line
                                   for line in lines[1:])


def test_lm_deltas_table_reads_each_runs_evaluations(tmp_path):
    import lm_deltas

    rows = [{"label": "GRPO (32x16)", "evals": [[0, 0.34], [50, 0.86], [100, 0.975]],
             "last3": 0.9, "first_step_095": 100, "first_seconds_095": 120.4,
             "wall_seconds": 130.0},
            {"label": "naive R (512x1)", "evals": [[0, 0.34], [10, 0.3]], "last3": 0.32,
             "first_step_095": None, "first_seconds_095": None, "wall_seconds": 20.0}]
    path = tmp_path / "lm_deltas.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    table = lm_deltas.report(path).splitlines()
    assert table[2] == "| GRPO (32x16) | 0.340 / 0.860 / 0.975 | 0.900 | 100 (120 s) | 130 |"
    assert table[3] == "| naive R (512x1) | 0.340 / nan / 0.300 | 0.320 | never | 20 |"
    assert (tmp_path / "lm_deltas.md").read_text().splitlines() == table
    assert set(lm_deltas.METHODS) >= {"GRPO (normalized, 32x16)", "PPO, separate critic (512x1)"}
