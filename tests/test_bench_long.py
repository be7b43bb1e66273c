"""bench/long_rollouts.py (issue 17): the byte count of sampling against a hand count, the
bounds' arithmetic, and the harness in its seconds-long smoke mode (TRL skipped in the fast
tier, both libraries in the slow one). No timing assertions."""

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "bench"
sys.path.insert(0, str(BENCH))

import long_rollouts  # noqa: E402
import vs_trl  # noqa: E402
from flops import ModelShape, decode_flops, forward_flops, sampling_bytes, step_flops  # noqa: E402

# 2 layers, hidden 8, 2 heads of 4, one KV head (grouped-query attention), MLP 16, vocab 12.
SMALL = ModelShape(layers=2, hidden=8, heads=2, kv_heads=1, head_dim=4, intermediate=16, vocab=12)


def test_sampling_bytes_by_hand():
    # Weights: 2 layers x (8*4*(2*2 + 2*1) + 3*8*16) = 2 * (192 + 384) = 1152, LM head 96:
    # 1248 fp32 values, read by the prefill and by each of the 2 fed-back tokens of a 3-token
    # completion. Keys and values: 2 layers x 2 x 1 head x 4 = 16 values per position. B=1
    # prompt of 5 tokens, G=2: the fed-back tokens see the prompt (once per group when shared,
    # once per completion when not) and j = 1, 2 positions of their own completion.
    weights = 4 * 1248
    kv = 4 * 16
    shared = 3 * weights + kv * (1 * 5 * 2 + 2 * (1 + 2))
    assert sampling_bytes(SMALL, 1, 2, 5, 3) == shared
    assert sampling_bytes(SMALL, 1, 2, 5, 3, shared_prompt=False) == shared + kv * 5 * 2


def test_bounds_and_stage_flops():
    b = long_rollouts.sampling_bounds(SMALL, prompt_len=5, length=3.0, ceiling_gflops=1.0,
                                      read_gbps=1.0, shared_prompt=True)
    rows = long_rollouts.B * long_rollouts.G
    flops = long_rollouts.B * forward_flops(SMALL, 5, 0, 1) + rows * decode_flops(SMALL, 5, 3)
    assert b["gflop"] == pytest.approx(flops / 1e9)
    assert b["matmul_tokens_per_s"] == pytest.approx(rows * 3 / (flops / 1e9))
    assert b["bound_tokens_per_s"] == min(b["matmul_tokens_per_s"], b["bandwidth_tokens_per_s"])
    # The roofline takes the slower of the two per forward: never above either bound.
    assert b["roofline_tokens_per_s"] <= b["bound_tokens_per_s"] * (1 + 1e-12)
    st = long_rollouts.stage_flops(SMALL, 5, 3.0, kl=False)
    full = step_flops(SMALL, long_rollouts.B, long_rollouts.G, 5, [3.0] * rows, kl=False,
                      shared_prompt=True)
    assert st["logprob"] + st["backward"] == pytest.approx(st["update"]) == full["update"]
    assert st["step"] == full["total"] and st["ref"] == 0


def test_digits_reward():
    assert long_rollouts.digits(["p", "p"], ["3 1x", "<pad>a"]) == [2.0, 0.0]


def test_headroom_by_hand():
    # lmrl: a 10 s step, 4 s of it sampling; 128 completions x 8 tokens = 1024 tokens whose
    # bound is 512 tokens/s (2 s); the step's FLOPs at the ceiling take 10 s x 0.5 = 5 s, the
    # sampling's 100 GFLOP at 100 GFLOP/s 1 s of them. TRL: a 12 s step.
    assert long_rollouts.B * long_rollouts.G == 128
    lmrl = {"median_step_s": 10.0, "sample_s": 4.0, "mean_completion_tokens": 8.0,
            "sampling_bound": {"bound_tokens_per_s": 512.0}, "executed_ceiling_frac": 0.5,
            "stages": {"sample": {"gflop": 100.0}}}
    h = long_rollouts.headroom(lmrl, {"median_step_s": 12.0}, ceiling_gflops=100.0)
    assert h["sampling_at_bound"] == pytest.approx(12 / (6 + 2))
    assert h["all_at_ceiling"] == pytest.approx(12 / (5 - 1 + 2))


def check_report(out: Path, libs: set[str]) -> dict:
    report = json.loads((out / "long_rollouts.json").read_text())
    assert report["measured"]["ceiling_gflops"] > 0
    assert report["measured"]["bandwidth"]["read"] > 0
    assert report["models"]["smoke"]["prompt_len"] == 8
    (cell,) = report["cells"]
    assert set(cell["libs"]) == libs
    for summary in cell["libs"].values():
        assert summary["timed_steps"] == 2 and summary["completions_per_s"] > 0
        assert summary["mean_completion_tokens"] == 16  # the budget, in every completion
        assert summary["sampling_bound"]["applies"] in ("matmul", "bandwidth")
    lmrl = cell["libs"]["lmrl"]
    assert lmrl["truncated_frac"] == [[1.0, 1.0]]
    assert {"sample", "logprob", "backward", "optimizer", "step"} <= set(lmrl["stages"])
    assert lmrl["stages"]["sample"]["ceiling_frac"] > 0
    run = next(r for r in report["runs"] if r["lib"] == "lmrl")
    assert run["settings_seen"]["min_new_tokens"] == run["settings_seen"]["max_new_tokens"] == 16
    assert "| smoke | lmrl |" in (out / "long_rollouts.md").read_text()
    return report


def test_smoke_without_trl_skips_it_and_says_so(tmp_path, monkeypatch, capsys):
    """The whole harness, ~10 s: a setup child (ceiling, bandwidth, model) and one lmrl run."""
    monkeypatch.setattr(vs_trl, "trl_missing", lambda: "not importable: trl")
    report = long_rollouts.main(["--smoke", "--out", str(tmp_path)])
    assert "TRL side skipped: not importable: trl" in capsys.readouterr().out
    assert report["trl_skipped"] == "not importable: trl"
    check_report(tmp_path, {"lmrl"})
    assert "TRL side skipped" in (tmp_path / "long_rollouts.md").read_text()


@pytest.mark.slow  # both libraries: ~30 s
@pytest.mark.skipif(importlib.util.find_spec("trl") is None, reason="TRL not installed (.[bench])")
def test_smoke_runs_both_libraries(tmp_path):
    subprocess.run([sys.executable, str(BENCH / "long_rollouts.py"), "--smoke", "--out",
                    str(tmp_path)], check=True, capture_output=True, text=True)
    report = check_report(tmp_path, {"lmrl", "trl"})
    (cell,) = report["cells"]
    assert set(cell["ratio"]) == set(long_rollouts.RATIO_KEYS)
    assert cell["headroom"]["all_at_ceiling"] > cell["headroom"]["sampling_at_bound"] > 0
    trl = cell["libs"]["trl"]
    assert trl["length_range"] == [[[16, 16], [16, 16]]]  # every completion at the budget
    run = next(r for r in report["runs"] if r["lib"] == "trl")
    assert run["settings_seen"]["generation_kwargs"] == {"max_new_tokens": 16,
                                                         "min_new_tokens": 16}
    assert len(run["generate_seconds"]) == 2 and run["torch_threads"] == 1
    # TRL's stages, timed inside its trainer, add up to its step (the rest: callbacks, data).
    stages = trl["stages"]
    assert {"sample", "prepare", "logprob", "backward", "optimizer", "step"} <= set(stages)
    for i, step in enumerate(run["step_seconds"]):
        parts = sum(run["trl_stages"][k][i] for k in ("prepare", "logprob", "backward",
                                                       "optimizer"))
        assert 0.5 * step < parts <= step


@pytest.mark.slow  # lmrl's sampling stage alone: ~8 s
def test_sample_only(tmp_path):
    report = long_rollouts.main(["--smoke", "--sample-only", "--out", str(tmp_path)])
    (cell,) = report["cells"]
    r = cell["libs"]["lmrl"]
    assert r["sample_only"] and r["mean_completion_tokens"] == 16 and r["timed_steps"] == 2
    assert (tmp_path / "long_rollouts_sample.md").is_file()


def test_sampling_bench_smoke_with_a_profile(capsys):
    pytest.importorskip("transformers")
    import sampling

    sampling.main(["--size", "smoke", "--B", "2", "--G", "2", "--prompt", "4", "--new", "4",
                   "--threads", "1", "--repeats", "1", "--variants", "eager", "--profile", "5"])
    out = capsys.readouterr().out
    assert "Self CPU time total" in out and "aten::" in out  # the profile's table
    assert "| eager |" in out and "share of the bound" in out
