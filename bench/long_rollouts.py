"""Long rollouts (issue 17): lmrl against TRL's GRPOTrainer on 64-token prompts and completions
of exactly 256 tokens, and lmrl's stages against this machine's matmul and memory-bandwidth
bounds. Writes results/long_rollouts.json and results/long_rollouts.md.

    .venv/bin/python bench/long_rollouts.py                  # ~20M and ~100M (make bench)
    .venv/bin/python bench/long_rollouts.py --smoke          # seconds: tiny model, 2 steps
    .venv/bin/python bench/long_rollouts.py --sizes 20M --repeats 2 --steps 3 --warmup 1
    .venv/bin/python bench/long_rollouts.py --sizes 100M --sample-only   # lmrl's sampling only

The harness is bench/vs_trl.py's (its children, settings and fairness rules: fp32 in both, the
same threads, every run its own subprocess after an idle check, A B A B alternation, warmup
steps untimed), on another workload: sort_text prompts of n = 32 numbers (64 characters, one
token each with the model zoo's character tokenizer), B = 16 x G = 8, and the completion budget
reached by every completion (lmrl `policy.min_new_tokens = max_new_tokens = 256`; TRL
`max_completion_length=256, generation_kwargs={"min_new_tokens": 256}`: EOS cannot be sampled
before the budget), so both libraries do the same work per step. The models are randomly
initialised (lmrl.modelzoo.init_model): a throughput benchmark needs no trained model. The
training reward of both is the number of digits in the completion (cheap, deterministic, and
different within nearly every group, so that lmrl's update skips no flat group).

Reported per model and library: median step seconds, completions/s, completion tokens/s, the
sampling stage's seconds and tokens/s (lmrl: time/sample_seconds; TRL: its model.generate
calls), the completion lengths seen per step; lmrl's stages (time/<stage>_seconds) with the
model FLOPs it executes (bench/flops.py, each prompt once per group) and their share of the
fp32 matmul ceiling; and the sampling stage against (a) the matmul bound, sampling FLOPs /
ceiling, and (b) the memory-bandwidth bound, each fed-back token's forward reading all weights
once and its rows' keys and values (flops.sampling_bytes) at the measured read bandwidth.
"""

import argparse
import json
import os
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import vs_trl  # noqa: E402
from flops import ModelShape, forward_flops, memory_gbps, sampling_bytes, step_flops  # noqa: E402

B, G = vs_trl.B, vs_trl.G
RESULTS = vs_trl.RESULTS
SCRIPT = Path(__file__).resolve()
# Shapes, micro-batches per step (the same in both libraries: lmrl train.grad_accum, TRL
# gradient_accumulation_steps with one generation of B·G per optimizer step; they bound the
# activations' memory: 128 x 320 tokens at once would not fit 23 GB at ~100M), and steps.
SIZES = {
    "20M": {**{k: vs_trl.SIZES["20M"][k] for k in ("layers", "hidden", "heads", "lr")},
            "intermediate": None, "grad_accum": 4, "steps": 3},
    "100M": {"layers": 12, "hidden": 768, "heads": 12, "intermediate": 2560, "lr": 1e-4,
             "grad_accum": 8, "steps": 2},
    "smoke": {"layers": 2, "hidden": 32, "heads": 2, "intermediate": None, "lr": 2e-4,
              "grad_accum": 1, "steps": 2},
}
RECORD = ["train/response_tokens", "train/truncated_frac", "train/flat_group_frac",
          "train/updated_group_frac", "train/reward_mean"]
ADAMW_BYTES = 28  # per parameter: read weight, grad, m, v; write weight, m, v (fp32)


def digits(prompts, completions, **columns) -> list[float]:
    """Both libraries' training reward: the ASCII digits in the completion ("3 1x" -> 2)."""
    return [float(sum(c in "0123456789" for c in text)) for text in completions]


# --------------------------------------------------------------------------- children

def child_setup(spec: dict) -> dict:
    """The machine (vs_trl's matmul ceiling, plus the memory bandwidth) and the models."""
    from transformers import AutoTokenizer

    from lmrl.modelzoo import init_model, task_alphabet

    out = vs_trl.child_setup(spec)
    out["bandwidth"] = memory_gbps(spec["bandwidth_mb"])
    task, models = vs_trl.make_task(spec), {}
    for size, shape in spec["sizes"].items():
        path = Path(spec["dir"]) / size
        params = init_model(path, task_alphabet(task), hidden_size=shape["hidden"],
                            num_layers=shape["layers"], num_heads=shape["heads"],
                            intermediate_size=shape["intermediate"],
                            max_position_embeddings=max(512, spec["prompt_tokens"]
                                                        + spec["completion_tokens"]), seed=0)
        prompt = AutoTokenizer.from_pretrained(path)(task.heldout[0]["prompt"])["input_ids"]
        models[size] = {"start": str(path), "params": params, "prompt_len": len(prompt),
                        "config": json.loads((path / "config.json").read_text())}
    out["models"] = models
    return out


def child_sample(spec: dict) -> dict:
    """lmrl's sampling stage alone (--sample-only): `steps` rollouts of B x G, timed each."""
    import time

    import torch

    from lmrl.config import Config
    from lmrl.state import build_policy
    from lmrl.trainer import build_task

    cfg = Config().replace(
        task={"task": "sort_text", "n": spec["n"], "V": vs_trl.V,
              "heldout_size": spec["heldout"]},
        policy={"model": spec["start"], "dtype": "float32", "device": "cpu",
                "max_new_tokens": spec["max_new_tokens"],
                "min_new_tokens": spec["min_new_tokens"], "temperature": 1.0,
                "forward": spec["forward"], "compile": spec.get("compile", False)},
        train={"B": B, "G": G, "seed": spec["seed"], "threads": spec["threads"]})
    task = build_task(cfg)
    policy = build_policy(cfg, task.max_new_tokens)
    generator = torch.Generator().manual_seed(spec["seed"])
    seconds, tokens = [], []
    for _ in range(spec["steps"]):
        t0 = time.perf_counter()
        inputs = policy.prepare(task.sample_prompts(B, generator))
        with torch.no_grad():
            rollout = policy.sample(inputs, G, generator=generator)
        seconds.append(time.perf_counter() - t0)
        tokens.append(int(rollout.response_mask.sum()))
    return {"sample_seconds": seconds, "tokens": tokens, "peak_rss_mb": vs_trl.peak_rss_mb()}


CHILDREN = {"setup": child_setup, "lmrl": vs_trl.child_lmrl, "trl": vs_trl.child_trl,
            "sample": child_sample}


# --------------------------------------------------------------------------- summary

def stage_flops(m: ModelShape, prompt_len: float, length: float, kl: bool,
                shared_prompt: bool = True) -> dict[str, float]:
    """Model FLOPs executed per stage (μ = 1): lmrl's with shared_prompt (each prompt once per
    group), TRL's without. The log-prob pass's forward and its backward (~2x) are the update's
    two timed parts."""
    f = step_flops(m, B, G, prompt_len, [length] * (B * G), kl, shared_prompt=shared_prompt)
    return {"sample": f["sample"], "ref": f["ref"], "logprob": f["update"] / 3,
            "backward": 2 * f["update"] / 3, "update": f["update"], "step": f["total"]}


def stage_rows(times: dict[str, list[float]], flops: dict[str, float], median_s: float,
               params: int, machine: dict) -> dict[str, dict]:
    """Median seconds per stage (times already past warmup), its share of the step, and its
    FLOPs' share of the ceiling (the optimizer: its memory traffic's share of the bandwidth)."""
    out = {}
    for stage, xs in times.items():
        seconds = statistics.median(xs)
        row = {"seconds": seconds, "step_frac": seconds / median_s,
               "gflop": flops[stage] / 1e9 if stage in flops else None}
        row["ceiling_frac"] = (flops[stage] / seconds / 1e9 / machine["ceiling_gflops"]
                               if stage in flops and seconds > 0 else None)
        if stage == "optimizer" and seconds > 0:  # no matmuls: its memory traffic instead
            row["gbytes"] = ADAMW_BYTES * params / 1e9
            row["bandwidth_frac"] = row["gbytes"] / seconds / machine["bandwidth"]["copy"]
        out[stage] = row
    return out


def sampling_bounds(m: ModelShape, prompt_len: int, length: float, ceiling_gflops: float,
                    read_gbps: float, shared_prompt: bool) -> dict:
    """Completion tokens/s that sampling B x G completions of `length` cannot exceed: (a) by
    its FLOPs at the matmul ceiling, (b) by the bytes it must read at the read bandwidth, and
    the roofline (each forward bound by the slower of the two)."""
    rows, fed = B * G, int(round(length)) - 1
    weights = 4 * (m.body_weights + m.hidden * m.vocab)
    kv = 4 * 2 * m.layers * m.kv_heads * m.head_dim
    prompt_rows = B if shared_prompt else rows
    flops = B * forward_flops(m, prompt_len, 0, 1) + sum(
        rows * forward_flops(m, 1, prompt_len + j - 1, 1) for j in range(1, fed + 1))
    nbytes = sampling_bytes(m, B, G, prompt_len, length, shared_prompt=shared_prompt)
    ceiling, bw = ceiling_gflops * 1e9, read_gbps * 1e9
    roofline = max(B * forward_flops(m, prompt_len, 0, 1) / ceiling, weights / bw) + sum(
        max(rows * forward_flops(m, 1, prompt_len + j - 1, 1) / ceiling,
            (weights + kv * (prompt_rows * prompt_len + rows * j)) / bw)
        for j in range(1, fed + 1))
    tokens = rows * length
    out = {"gflop": flops / 1e9, "gbytes": nbytes / 1e9,
           "matmul_tokens_per_s": tokens / (flops / ceiling),
           "bandwidth_tokens_per_s": tokens / (nbytes / bw),
           "roofline_tokens_per_s": tokens / roofline}
    out["applies"] = "matmul" if out["matmul_tokens_per_s"] <= out["bandwidth_tokens_per_s"] \
        else "bandwidth"
    out["bound_tokens_per_s"] = min(out["matmul_tokens_per_s"], out["bandwidth_tokens_per_s"])
    return out


def pooled(runs: list[dict], key: str, warmup: int) -> list:
    return [x for r in runs for x in r[key][warmup:]]


def summarize(runs: list[dict], lib: str, prep: dict, warmup: int, machine: dict) -> dict:
    """One library's runs of one model, the first `warmup` steps of each untimed."""
    shape = ModelShape.from_hf_config(prep["config"])
    secs, toks = pooled(runs, "step_seconds", warmup), pooled(runs, "tokens", warmup)
    median_s, mean_len = statistics.median(secs), statistics.mean(toks) / (B * G)
    sample_key = {"lmrl": None, "trl": "generate_seconds"}[lib]
    sample = ([x for r in runs for x in r["stages"]["sample"][warmup:]] if sample_key is None
              else pooled(runs, sample_key, warmup))
    ceiling, bw = machine["ceiling_gflops"], machine["bandwidth"]
    out = {"lib": lib, "runs": len(runs), "timed_steps": len(secs),
           "step_seconds": [r["step_seconds"] for r in runs],
           "median_step_s": median_s, "completions_per_s": B * G / median_s,
           "tokens_per_s": statistics.median(t / s for t, s in zip(toks, secs, strict=True)),
           "mean_completion_tokens": mean_len,
           "sample_s": statistics.median(sample),
           "sample_tokens_per_s": B * G * mean_len / statistics.median(sample),
           "peak_rss_mb": max(r["peak_rss_mb"] for r in runs),
           "others_busy_frac": max(r["os"]["others_busy_frac"] for r in runs)}
    if lib == "lmrl":  # every step's mean length and truncated share (truncated = the budget)
        m = [r["metrics"] for r in runs]
        out["lengths"] = [[round(x, 2) for x in r["train/response_tokens"]] for r in m]
        out["truncated_frac"] = [r["train/truncated_frac"] for r in m]
        out["updated_group_frac"] = [r["train/updated_group_frac"] for r in m]
        out["flat_group_frac"] = [r["train/flat_group_frac"] for r in m]
        times = {stage: [x for r in runs for x in r["stages"][stage][warmup:]]
                 for stage in runs[0]["stages"]}
    else:
        out["length_range"] = [r["length_range"] for r in runs]
        # TRL's stages as the child timed them (vs_trl.child_trl's StepTimer), its sampling
        # (model.generate, inside "prepare") and the step.
        times = {"sample": sample, **{stage: pooled([r["trl_stages"] for r in runs], stage,
                                                    warmup)
                                      for stage in runs[0]["trl_stages"]}, "step": secs}
    flops = stage_flops(shape, prep["prompt_len"], mean_len, runs[0]["kl"] > 0,
                        shared_prompt=lib == "lmrl")
    out["stages"] = stage_rows(times, flops, median_s, prep["params"], machine)
    out["sampling_bound"] = sampling_bounds(shape, prep["prompt_len"], mean_len, ceiling,
                                            bw["read"], shared_prompt=lib == "lmrl")
    out["sampling_bound_frac"] = \
        out["sample_tokens_per_s"] / out["sampling_bound"]["bound_tokens_per_s"]
    out["executed_ceiling_frac"] = step_flops(
        shape, B, G, prep["prompt_len"], [mean_len] * (B * G), runs[0]["kl"] > 0,
        shared_prompt=lib == "lmrl")["total"] / median_s / 1e9 / ceiling
    return out


def headroom(lmrl: dict, trl: dict, ceiling_gflops: float) -> dict:
    """The most lmrl / TRL completions/s could be against TRL's step as measured: (a) lmrl's
    sampling at its bound (the roofline) and the rest of its step as measured; (b) also every
    other stage's executed FLOPs at the fp32 matmul ceiling. Whether a target is in reach."""
    sample_bound_s = B * G * lmrl["mean_completion_tokens"] / \
        lmrl["sampling_bound"]["bound_tokens_per_s"]
    executed_s = lmrl["median_step_s"] * lmrl["executed_ceiling_frac"]  # all FLOPs at ceiling
    sample_flops_s = lmrl["stages"]["sample"]["gflop"] / ceiling_gflops
    rest = lmrl["median_step_s"] - lmrl["sample_s"]
    return {"sampling_at_bound": trl["median_step_s"] / (rest + sample_bound_s),
            "all_at_ceiling": trl["median_step_s"] / (executed_s - sample_flops_s
                                                      + sample_bound_s)}


def summarize_sample_only(runs: list[dict], prep: dict, warmup: int, machine: dict) -> dict:
    shape = ModelShape.from_hf_config(prep["config"])
    secs, toks = pooled(runs, "sample_seconds", warmup), pooled(runs, "tokens", warmup)
    mean_len = statistics.mean(toks) / (B * G)
    out = {"lib": "lmrl", "sample_only": True, "timed_steps": len(secs),
           "sample_seconds": [r["sample_seconds"] for r in runs],
           "sample_s": statistics.median(secs), "mean_completion_tokens": mean_len,
           "sample_tokens_per_s": B * G * mean_len / statistics.median(secs),
           "peak_rss_mb": max(r["peak_rss_mb"] for r in runs),
           "others_busy_frac": max(r["os"]["others_busy_frac"] for r in runs),
           "sampling_bound": sampling_bounds(shape, prep["prompt_len"], mean_len,
                                             machine["ceiling_gflops"],
                                             machine["bandwidth"]["read"], shared_prompt=True)}
    out["sampling_bound_frac"] = \
        out["sample_tokens_per_s"] / out["sampling_bound"]["bound_tokens_per_s"]
    return out


RATIO_KEYS = ["median_step_s", "completions_per_s", "tokens_per_s", "sample_tokens_per_s",
              "peak_rss_mb"]


# --------------------------------------------------------------------------- the report

def lengths_text(r: dict) -> str:
    if "length_range" in r:
        ranges = [tuple(x) for run in r["length_range"] for x in run]
        lo, hi = min(x[0] for x in ranges), max(x[1] for x in ranges)
        return f"{lo}-{hi} (all steps)"
    if "lengths" in r:
        means = [x for run in r["lengths"] for x in run]
        truncated = min(x for run in r["truncated_frac"] for x in run)
        return f"mean {min(means):g}-{max(means):g}, all at budget: {truncated == 1.0}"
    return f"mean {r['mean_completion_tokens']:g}"


def stage_cells(st: dict | None) -> str:
    """seconds | share of the step | GFLOP | % ceiling (or of the bandwidth)."""
    if st is None:
        return " | | | "
    share = "" if st["ceiling_frac"] is None else f"{100 * st['ceiling_frac']:.0f}%"
    if "bandwidth_frac" in st:
        share = f"{100 * st['bandwidth_frac']:.0f}% of bandwidth"
    gflop = "" if st["gflop"] is None else f"{st['gflop']:.4g}"
    return f"{st['seconds']:.3f} | {100 * st['step_frac']:.0f}% | {gflop} | {share}"


def markdown(report: dict) -> str:
    m, s, mach = report["machine"], report["settings"], report["measured"]
    lines = [
        "# Long rollouts: lmrl vs TRL GRPOTrainer (issue 17)", "",
        f"Machine: {m['cpu']}, {m['cpus']} CPUs, torch {m['torch']} ({m['cpu_capability']}); "
        "versions " + ", ".join(f"{k} {v}" for k, v in report["versions"].items()) + ".",
        f"Command: `{report['command']}`; threads {s['threads']}; B={B} x G={G}; prompts "
        f"{s['prompt_tokens']} tokens, completions {s['completion_tokens']} tokens (min = max); "
        f"KL {s['kl']}; fp32; first {s['warmup']} step(s) of each run untimed; random init.",
        f"Measured in this invocation: fp32 matmul ceiling **{mach['ceiling_gflops']:.0f} "
        f"GFLOP/s**, memory bandwidth **{mach['bandwidth']['read']:.1f} GB/s** read "
        f"({mach['bandwidth']['copy']:.1f} GB/s copy, read + written).", ""]
    if report.get("trl_skipped"):
        lines += [f"**TRL side skipped: {report['trl_skipped']}.**", ""]
    lines += ["| model | library | s/step | completions/s | completion tokens/s | sampling s | "
              "sampling tokens/s | % of sampling bound | % ceiling (executed FLOPs) | "
              "peak RSS MB | completion lengths | others' CPU |",
              "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for cell in report["cells"]:
        for r in cell["libs"].values():
            if r.get("sample_only"):
                lines.append(f"| {cell['size']} | lmrl (sampling only) | | | | "
                             f"{r['sample_s']:.2f} | {r['sample_tokens_per_s']:.0f} | "
                             f"{100 * r['sampling_bound_frac']:.0f}% | | "
                             f"{r['peak_rss_mb']:.0f} | {lengths_text(r)} | "
                             f"{100 * r['others_busy_frac']:.0f}% |")
                continue
            lines.append(f"| {cell['size']} | {r['lib']} | {r['median_step_s']:.2f} | "
                         f"{r['completions_per_s']:.2f} | {r['tokens_per_s']:.0f} | "
                         f"{r['sample_s']:.2f} | {r['sample_tokens_per_s']:.0f} | "
                         f"{100 * r['sampling_bound_frac']:.0f}% | "
                         f"{100 * r['executed_ceiling_frac']:.0f}% | {r['peak_rss_mb']:.0f} | "
                         f"{lengths_text(r)} | {100 * r['others_busy_frac']:.0f}% |")
        if "ratio" in cell:
            q = cell["ratio"]
            lines.append(f"| {cell['size']} | **lmrl / TRL** | {q['median_step_s']:.2f}x | "
                         f"**{q['completions_per_s']:.2f}x** | {q['tokens_per_s']:.2f}x | | "
                         f"{q['sample_tokens_per_s']:.2f}x | | | {q['peak_rss_mb']:.2f}x | | |")
    staged = [c for c in report["cells"] if any(r.get("stages") for r in c["libs"].values())]
    if staged:
        lines += ["", "The step by stage: median seconds, share of the step, model GFLOP "
                  "executed (lmrl: each prompt once per group), % of the fp32 matmul ceiling "
                  f"(the optimizer: % of the copy bandwidth at {ADAMW_BYTES} bytes per "
                  "parameter). lmrl's `time/*_seconds`; TRL's prepare = its _prepare_inputs "
                  "(sampling, rewards, advantages), logprob = compute_loss, backward = the rest "
                  "of training_step, optimizer = clipping + step:", "",
                  "| model | stage | lmrl s | share | GFLOP | % ceiling | TRL s | share | GFLOP "
                  "| % ceiling | lmrl / TRL time |", "|---" * 11 + "|"]
        for cell in staged:
            libs = [cell["libs"].get(lib, {}).get("stages", {}) for lib in ("lmrl", "trl")]
            names = list(libs[0]) + [n for n in libs[1] if n not in libs[0]]
            for name in names:
                parts = [stage_cells(st.get(name)) for st in libs]
                both = all(name in st for st in libs) and libs[1][name]["seconds"] > 0
                ratio = f"{libs[0][name]['seconds'] / libs[1][name]['seconds']:.2f}x" \
                    if both else ""
                lines.append(f"| {cell['size']} | {name} | {parts[0]} | {parts[1]} | {ratio} |")
    for cell in report["cells"]:
        if "headroom" in cell:
            h = cell["headroom"]
            lines += ["", f"Headroom ({cell['size']}): against TRL's step as measured, lmrl / "
                      f"TRL would be at most **{h['sampling_at_bound']:.2f}x** with lmrl's "
                      "sampling at its bound (below) and the rest of its step as measured, and "
                      f"**{h['all_at_ceiling']:.2f}x** with every other stage's FLOPs at the "
                      "fp32 matmul ceiling too."]
    lines += ["", "Sampling against its bounds (completion tokens/s that B x G completions "
              "cannot exceed: (a) sampling FLOPs at the matmul ceiling, (b) weights once per "
              "forward + keys and values at the read bandwidth (lmrl: a prompt's once per group; "
              "TRL: once per completion), roofline: per forward the slower of the two):", "",
              "| model | library | GFLOP | GB read | (a) matmul bound | (b) bandwidth bound | "
              "roofline | bound that applies | measured | share of it |",
              "|---|---|---|---|---|---|---|---|---|---|"]
    for cell in report["cells"]:
        for r in cell["libs"].values():
            b = r["sampling_bound"]
            lines.append(f"| {cell['size']} | {r['lib']} | {b['gflop']:.4g} | "
                         f"{b['gbytes']:.3g} | {b['matmul_tokens_per_s']:.0f} | "
                         f"{b['bandwidth_tokens_per_s']:.0f} | {b['roofline_tokens_per_s']:.0f}"
                         f" | {b['applies']} | {r['sample_tokens_per_s']:.0f} | "
                         f"**{100 * r['sampling_bound_frac']:.0f}%** |")
    lines += ["", "| model | parameters | layers x hidden (heads), MLP | prompt / completion "
              "tokens | micro-batches per step |", "|---|---|---|---|---|"]
    for key, p in report["models"].items():
        c = p["config"]
        lines.append(f"| {key} | {p['params']:,} | {c['num_hidden_layers']} x "
                     f"{c['hidden_size']} ({c['num_attention_heads']}), "
                     f"{c['intermediate_size']} | {p['prompt_len']} / "
                     f"{s['completion_tokens']} | {s['grad_accum'][key]} |")
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------- the comparison

def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--smoke", action="store_true",
                   help="2-layer model, 8-token prompts, 16-token completions, 2 steps, no idle "
                        "wait, 1 thread")
    p.add_argument("--sizes", nargs="+", choices=list(SIZES), default=None)
    p.add_argument("--libs", nargs="+", choices=["lmrl", "trl"], default=["lmrl", "trl"])
    p.add_argument("--sample-only", action="store_true",
                   help="lmrl's sampling stage only, no TRL: `steps` rollouts of B x G")
    p.add_argument("--prompt-tokens", type=int, default=None, help="even; default 64")
    p.add_argument("--completion-tokens", type=int, default=None, help="default 256")
    p.add_argument("--steps", type=int, default=None, help="override each size's step count")
    p.add_argument("--warmup", type=int, default=None, help="untimed steps per run (1)")
    p.add_argument("--repeats", type=int, default=None, help="runs per library per model (2)")
    p.add_argument("--grad-accum", type=int, default=None,
                   help="micro-batches per step in both libraries (default per size)")
    p.add_argument("--kl", type=float, default=0.0)
    p.add_argument("--threads", type=int, default=None, help="default: all CPUs (smoke: 1)")
    p.add_argument("--lmrl-forward", default="auto", choices=["auto", "lmrl", "transformers"])
    p.add_argument("--lmrl-compile", action="store_true", help="lmrl's policy.compile")
    p.add_argument("--bandwidth-mb", type=int, default=None,
                   help="tensor size of the bandwidth measurement (512; smoke 64)")
    p.add_argument("--idle-threshold", type=float, default=0.1)
    p.add_argument("--idle-timeout", type=float, default=900.0)
    p.add_argument("--out", default=None, help="results directory (default bench/results; "
                                               "smoke: bench/results/runs/long_rollouts_smoke)")
    p.add_argument("--child", nargs=3, metavar=("KIND", "SPEC", "RESULT"), help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    defaults = ({"sizes": ["smoke"], "prompt_tokens": 8, "completion_tokens": 16, "warmup": 0,
                 "repeats": 1, "threads": 1, "bandwidth_mb": 64} if a.smoke else
                {"sizes": ["20M", "100M"], "prompt_tokens": 64, "completion_tokens": 256,
                 "warmup": 1, "repeats": 2, "bandwidth_mb": 512,
                 "threads": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity")
                 else os.cpu_count()})
    for key, value in defaults.items():
        if getattr(a, key) is None:
            setattr(a, key, value)
    if a.prompt_tokens % 2:
        p.error("--prompt-tokens must be even (sort_text: n numbers and n separators)")
    a.out = Path(a.out or (RESULTS / "runs" / "long_rollouts_smoke" if a.smoke else RESULTS))
    return a


def run_spec(a, lib: str, size: str, prep: dict, rep: int, work: Path) -> dict:
    shape = SIZES[size]
    name = f"{lib}_{size}_r{rep}"
    return {"n": a.prompt_tokens // 2, "kl": a.kl, "seed": rep, "start": prep["start"],
            "steps": a.steps or shape["steps"], "lr": shape["lr"], "heldout": 16,
            "threads": a.threads, "max_new_tokens": a.completion_tokens,
            "min_new_tokens": a.completion_tokens, "forward": a.lmrl_forward,
            "compile": a.lmrl_compile and lib == "lmrl", "dtype": "float32",
            "grad_accum": a.grad_accum or shape["grad_accum"],
            "reward": "long_rollouts:digits", "heldout_eval": False, "record": RECORD,
            "run_dir": str(work / name), "name": name}


def main(argv: list[str] | None = None) -> dict | None:
    a = parse_args(argv)
    if a.child:
        return vs_trl.child_main(*a.child, children=CHILDREN)
    libs = ["lmrl"] if a.sample_only else list(a.libs)
    skipped = vs_trl.trl_missing() if "trl" in libs else None
    if skipped:
        print(f"TRL side skipped: {skipped}", flush=True)
        libs.remove("trl")
    env = vs_trl.child_env(a.threads, None)
    work = a.out if a.smoke else a.out / "runs" / "long_rollouts"
    idle_setup = vs_trl.idle(a)
    setup, _ = vs_trl.run_child(
        "setup", {"threads": a.threads, "matmul_sizes": [64, 128] if a.smoke else
                  [256, 512, 1024, 2048], "bandwidth_mb": a.bandwidth_mb,
                  "dir": str(work / "models"), "n": a.prompt_tokens // 2, "heldout": 16,
                  "prompt_tokens": a.prompt_tokens, "completion_tokens": a.completion_tokens,
                  "sizes": {s: SIZES[s] for s in a.sizes}},
        env, work / "logs", "setup", script=SCRIPT)
    machine = {"ceiling_gflops": max(setup["matmul"]["float32"].values()),
               "bandwidth": setup["bandwidth"]}
    print(f"fp32 matmul ceiling {machine['ceiling_gflops']:.0f} GFLOP/s, memory bandwidth "
          f"{machine['bandwidth']['read']:.1f} GB/s read ({a.threads} threads)", flush=True)
    cells, runs = [], []
    for i, size in enumerate(a.sizes):
        prep = setup["models"][size]
        print(f"{size}: {prep['params']:,} parameters, prompts of {prep['prompt_len']} tokens",
              flush=True)
        order = libs[::-1] if i % 2 else libs  # A B A B, the next model B A B A
        cell_runs = []
        for rep in range(a.repeats):
            for lib in order:
                spec = run_spec(a, lib, size, prep, rep, work)
                Path(spec["run_dir"]).mkdir(parents=True, exist_ok=True)
                before = vs_trl.idle(a)
                kind = "sample" if a.sample_only else lib
                result, seen = vs_trl.run_child(kind, spec, env, work / "logs", spec["name"],
                                                script=SCRIPT)
                cell_runs.append({"lib": lib, "size": size, "kl": a.kl, "rep": rep,
                                  "idle": before, "os": seen, **result})
                secs = result.get("step_seconds") or result["sample_seconds"]
                print(f"{spec['name']}: {' '.join(f'{x:.2f}' for x in secs)} s per "
                      f"{'rollout' if a.sample_only else 'step'}", flush=True)
        if a.sample_only:
            summary = {"lmrl": summarize_sample_only(cell_runs, prep, a.warmup, machine)}
        else:
            summary = {lib: summarize([r for r in cell_runs if r["lib"] == lib], lib, prep,
                                      a.warmup, machine) for lib in libs}
        cell = {"size": size, "libs": summary}
        if len(summary) == 2:
            cell["ratio"] = {k: summary["lmrl"][k] / summary["trl"][k] for k in RATIO_KEYS}
            cell["headroom"] = headroom(summary["lmrl"], summary["trl"],
                                        machine["ceiling_gflops"])
        cells.append(cell)
        runs += cell_runs
    report = {"command": " ".join([Path(sys.executable).name, *sys.argv]) if argv is None
              else "long_rollouts.py " + " ".join(argv),
              "machine": setup["machine"], "versions": vs_trl.versions(), "trl_skipped": skipped,
              "settings": {"threads": a.threads, "warmup": a.warmup, "repeats": a.repeats,
                           "B": B, "G": G, "kl": a.kl, "prompt_tokens": a.prompt_tokens,
                           "completion_tokens": a.completion_tokens,
                           "sizes": {s: SIZES[s] for s in a.sizes},
                           "grad_accum": {s: a.grad_accum or SIZES[s]["grad_accum"]
                                          for s in a.sizes},
                           "trl_overrides": vs_trl.TRL_FAIR, "lmrl_forward": a.lmrl_forward,
                           "lmrl_compile": a.lmrl_compile, "sample_only": a.sample_only,
                           "idle_threshold": a.idle_threshold, "reward": "digits"},
              "idle_before_setup": idle_setup, "matmul": setup["matmul"], "measured": machine,
              "models": {s: setup["models"][s] for s in a.sizes}, "cells": cells, "runs": runs}
    a.out.mkdir(parents=True, exist_ok=True)
    stem = "long_rollouts_sample" if a.sample_only else "long_rollouts"
    (a.out / f"{stem}.json").write_text(json.dumps(report, indent=1))
    table = markdown(report)
    (a.out / f"{stem}.md").write_text(table)
    print(table)
    return report


if __name__ == "__main__":
    main()
