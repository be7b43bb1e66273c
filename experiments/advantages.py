"""Which Δ of the policy-gradient family learns the toy sort task fastest per sampled token, and
how noisy is each one's gradient?

The seed's general form ∇J ≈ E[Δ ∇log π]: naive Δ = R, baseline Δ = R − B(S) (a learned V(S) or
a running mean, so G = 1 works), group baselines (RLOO, GRPO, Dr. GRPO) and the batch-normalised
REINFORCE++. Every setting samples the same 256 completions per step (B·G), with the same lr,
steps and clipped loss at μ = 1 (ratio 1: the naive gradient), so steps, sampled completions and
tokens (completions × 5 positions) are the same axis. Part 1 trains each setting and times held-out
greedy exact match. Part 2 fixes a policy (the initial one and one trained for a few hundred
steps), draws K independent batches of 256 completions, and measures each Δ's gradient estimate:
its total variance across batches, and its direction against a reference gradient.

    .venv/bin/python experiments/advantages.py [--seeds 3] [--steps 1500] [--K 200]
"""

import argparse
import time

import torch
from common import (
    BASE,
    RESULTS,
    add_args,
    by_label,
    curve,
    describe,
    markdown_table,
    merge,
    output_name,
    plot_mean_curves,
    read_jsonl,
    run_grid,
    summary_table,
    write_jsonl,
)
from deltas import first_step

NAME = "advantages"
COMPLETIONS = 256  # B·G of every setting
POSITIONS = BASE["task"]["n"]  # tokens per completion

# label -> (delta, B, G, extra algo fields). value_lr and baseline_decay are the library's
# defaults, written out so that a re-tuned default changes nothing here.
METHODS = {
    "naive R (32x8)": ("raw", 32, 8, {}),
    "naive R (256x1)": ("raw", 256, 1, {}),
    "V(S) (256x1)": ("value", 256, 1, {"value_lr": 1e-2}),
    "V(S) (32x8)": ("value", 32, 8, {"value_lr": 1e-2}),
    "running mean (256x1)": ("running_mean", 256, 1, {"baseline_decay": 0.0}),
    "RLOO (32x8)": ("rloo", 32, 8, {}),
    "GRPO (32x8)": ("normalized", 32, 8, {}),
    "Dr. GRPO (32x8)": ("dr_grpo", 32, 8, {"aggregation": "constant"}),
    "REINFORCE++ (256x1)": ("reinforce_pp", 256, 1, {}),
    "REINFORCE++ (32x8)": ("reinforce_pp", 32, 8, {}),
}


def settings(steps: int) -> dict[str, dict]:
    out = {}
    for label, (delta, B, G, algo) in METHODS.items():
        assert B * G == COMPLETIONS, label
        out[label] = merge(BASE, {"algo": {"delta": delta, **algo},
                                  "train": {"steps": steps, "B": B, "G": G}})
    return out


# ---- part 1: training curves ------------------------------------------------------------------

def attach_elapsed(row: dict) -> None:
    """Add the run's elapsed seconds at each evaluation step to the row's curve (the shared
    curve keeps per-step keys only at evenly spaced steps, which can miss the evaluations)."""
    from lmrl.logging import read_metrics

    evals = {s for s, _ in row["curve"]["eval/exact_match"]}
    row["curve"]["time/elapsed_seconds"] = [
        [r["step"], round(r["time/elapsed_seconds"], 3)]
        for r in read_metrics(row["run_dir"]) if r["step"] in evals and "time/elapsed_seconds" in r]


def at_step(row: dict, key: str, step: float) -> float:
    """key's value at step (nan when step is nan or not logged)."""
    return dict(zip(*curve(row, key), strict=True)).get(step, float("nan"))


def training_table(rows: list[dict], thresholds: tuple[float, ...]) -> str:
    columns = {"final EM": lambda r: r["final"]["eval/exact_match"]}
    for th in thresholds:
        columns[f"step EM ≥ {th}"] = lambda r, th=th: first_step(r, "eval/exact_match", th)
        columns[f"wall s to EM ≥ {th}"] = lambda r, th=th: at_step(
            r, "time/elapsed_seconds", first_step(r, "eval/exact_match", th))
        columns[f"k tokens to EM ≥ {th}"] = lambda r, th=th: (
            first_step(r, "eval/exact_match", th) * COMPLETIONS * POSITIONS / 1000)
    columns["wall s (run)"] = lambda r: r["wall_seconds"]
    return summary_table(rows, columns)


# ---- part 2: gradient variance at a fixed policy -----------------------------------------------

def gradient_stats(grads: torch.Tensor, reference: torch.Tensor) -> dict[str, float]:
    """Moments of K gradient estimates (K, D) of one Δ, against a reference gradient (D,).

    total_var: trace of the covariance, Σ_d Var(g_d) (unbiased, K-1); scale: |mean g| / |ref|;
    cos_mean: cosine of the mean estimate with ref; cos_batch: mean over batches of cos(g_k, ref);
    noise_to_signal: total_var / |E g|², which a rescaling of Δ leaves unchanged; |E g|² is
    estimated without bias as |mean g|² − total_var / K."""
    mean = grads.mean(0)
    total_var = float(grads.var(0, unbiased=True).sum())
    signal = float(mean.pow(2).sum()) - total_var / len(grads)
    cos = torch.nn.functional.cosine_similarity
    return {"total_var": total_var,
            "scale": float(mean.norm() / reference.norm()),
            "cos_mean": float(cos(mean, reference, dim=0)),
            "cos_batch": float(cos(grads, reference[None], dim=1).mean()),
            "noise_to_signal": total_var / signal}


def policy_gradient(policy, prompts, responses, delta, aggregation: str) -> torch.Tensor:
    """-∇ of the training loss at ratio 1 (the naive loss): the step's gradient estimate, flat."""
    from lmrl.losses import aggregate, naive_loss

    mask = torch.ones(responses.shape)
    logp, _ = policy.logprobs(prompts, responses, mask)  # (B, G, P)
    loss = aggregate(naive_loss(logp, logp.detach(), delta, mask), mask, aggregation)
    grads = torch.autograd.grad(-loss, list(policy.parameters()))
    return torch.cat([g.flatten() for g in grads])


def draw(policy, task, B: int, G: int, gen: torch.Generator):
    """B prompts with G completions each from the fixed policy, and their rewards (B, G)."""
    from lmrl.tasks.registry import score_training

    prompts = task.sample_prompts(B, gen)
    with torch.no_grad():
        rollout = policy.sample(prompts, G, generator=gen)
    return prompts, rollout.responses, score_training(task, prompts, rollout)[0]


def fit_baselines(policy, task, cfg, fit_steps: int, gen: torch.Generator) -> tuple[dict, dict]:
    """V(S) and the running mean, each learned from fit_steps batches of 256x1 samples of the
    fixed policy (as in training, one update per batch), then frozen."""
    from lmrl.baselines import fit_metrics, running_mean_from, value_from

    learned = {"value": value_from(cfg), "running_mean": running_mean_from(cfg)}
    for _ in range(fit_steps):
        prompts, _, rewards = draw(policy, task, COMPLETIONS, 1, gen)
        for b in learned.values():
            b.update(prompts, rewards)
    prompts, _, rewards = draw(policy, task, 4096, 1, gen)
    fit = {name: fit_metrics(b.values(prompts), rewards) for name, b in learned.items()}
    return learned, fit


def deltas_for(label: str, rewards, prompts, learned, eps: float):
    from lmrl.deltas import compute_deltas

    delta_name = METHODS[label][0]
    baseline = learned[delta_name].values(prompts)[:, None] if delta_name in learned else None
    return compute_deltas(delta_name, rewards, eps=eps, baseline=baseline)


def reference_gradient(policy, task, learned, completions: int, gen) -> torch.Tensor:
    """An unbiased low-noise ∇J: Δ = R − V(S) (V frozen) over `completions` fresh samples."""
    total, chunk = 0, 8192
    acc = None
    while total < completions:
        prompts, responses, rewards = draw(policy, task, chunk, 1, gen)
        delta = rewards - learned["value"].values(prompts)[:, None]
        g = policy_gradient(policy, prompts, responses, delta, "token_mean") * chunk
        acc = g if acc is None else acc + g
        total += chunk
    return acc / total


def measure(name: str, policy, task, cfg, K: int, fit_steps: int, seed: int) -> list[dict]:
    """Part 2 at one fixed policy: one row per method."""
    gen = torch.Generator().manual_seed(seed)
    learned, fit = fit_baselines(policy, task, cfg, fit_steps, gen)
    reference = reference_gradient(policy, task, learned, 800 * COMPLETIONS, gen)
    grads: dict[str, list[torch.Tensor]] = {label: [] for label in METHODS}
    for _ in range(K):
        for B, G in {(m[1], m[2]) for m in METHODS.values()}:  # one batch per shape, shared
            prompts, responses, rewards = draw(policy, task, B, G, gen)
            for label, (_, b, g, algo) in METHODS.items():
                if (b, g) == (B, G):
                    delta = deltas_for(label, rewards, prompts, learned, cfg.algo.norm_eps)
                    grads[label].append(policy_gradient(
                        policy, prompts, responses, delta, algo.get("aggregation", "token_mean")))
    rows = []
    for label, gs in grads.items():
        stats = gradient_stats(torch.stack(gs), reference)
        rows.append({"experiment": NAME + "_variance", "policy": name, "label": label, "K": K,
                     "completions": COMPLETIONS, "seed": seed, "ref_norm": float(reference.norm()),
                     "fit": fit, **stats})
    return rows


def fixed_policies(trained_steps: int, seed: int):
    """(name, policy) pairs: BASE's initial policy and the same after trained_steps of BASE."""
    from lmrl.config import Config
    from lmrl.state import build_state
    from lmrl.step import grpo_step
    from lmrl.trainer import build_task

    cfg = Config().replace(**merge(BASE, {"train": {"seed": seed, "steps": trained_steps}}))
    task = build_task(cfg)
    state = build_state(cfg)
    yield "initial", state.policy, task, cfg
    for _ in range(trained_steps):
        grpo_step(state, task, cfg)
    yield f"after {trained_steps} steps", state.policy, task, cfg


def variance_table(rows: list[dict]) -> str:
    naive = {r["policy"]: r["total_var"] for r in rows if r["label"] == "naive R (32x8)"}
    # An unbiased estimator's K-batch mean has cos ≈ (1 + noise/signal / K)^-1/2 with the true
    # gradient from its noise alone; a cos(mean, ref) well below that would be a bias.
    header = ["policy", "Δ (BxG)", "total var", "var / naive 32x8", "noise/signal", "scale",
              "cos(mean, ref)", "cos from noise alone", "mean cos(batch, ref)"]
    lines = [[r["policy"], r["label"], f"{r['total_var']:.3g}",
              f"{r['total_var'] / naive[r['policy']]:.3f}", f"{r['noise_to_signal']:.3g}",
              f"{r['scale']:.3f}", f"{r['cos_mean']:.3f}",
              f"{(1 + r['noise_to_signal'] / r['K']) ** -0.5:.3f}", f"{r['cos_batch']:.3f}"]
             for r in rows]
    return markdown_table(header, lines)


# ---- output -------------------------------------------------------------------------------------

def plot(rows: list[dict], var_rows: list[dict], out) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 2, figsize=(14, 9))
    plot_mean_curves(axes[0, 0], rows, "eval/exact_match")
    ax = axes[0, 0]
    ax.set_xlabel(f"step (= {COMPLETIONS} sampled completions = {COMPLETIONS * POSITIONS} tokens)")
    ax.set_title("held-out greedy exact match vs step / completions / tokens")
    ax.legend(fontsize=7)
    ax = axes[0, 1]
    for i, (label, group) in enumerate(by_label(rows).items()):
        for j, r in enumerate(group):
            elapsed = dict(zip(*curve(r, "time/elapsed_seconds"), strict=True))
            points = [(elapsed[s], v) for s, v in zip(*curve(r, "eval/exact_match"), strict=True)
                      if s in elapsed]
            ax.plot(*zip(*points, strict=True), color=f"C{i}", lw=1,
                    label=label if j == 0 else None)
    ax.set_xlabel("wall-clock seconds (training + evaluation)")
    ax.set_title("held-out exact match vs wall-clock (each seed)")
    ax.legend(fontsize=7)
    for ax, key, title in ((axes[1, 0], "noise_to_signal", "noise/signal = tr Cov / |E g|²"),
                           (axes[1, 1], "cos_batch", "mean cos(one batch's g, reference ∇J)")):
        policies = list(dict.fromkeys(r["policy"] for r in var_rows))
        labels = list(METHODS)
        width = 0.8 / len(policies)
        for i, p in enumerate(policies):
            vals = {r["label"]: r[key] for r in var_rows if r["policy"] == p}
            ax.barh([k + (i - (len(policies) - 1) / 2) * width for k in range(len(labels))],
                    [vals[lb] for lb in labels], width, label=p)
        ax.set_yticks(range(len(labels)), labels, fontsize=8)
        ax.set_title(f"gradient at a fixed policy: {title}")
        ax.legend(fontsize=7)
    axes[1, 0].set_xscale("log")
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_args(parser, steps=1500)
    parser.add_argument("--K", type=int, default=200, help="batches per Δ in part 2")
    parser.add_argument("--fit-steps", type=int, default=500,
                        help="batches that V(S) and the running mean learn from in part 2")
    parser.add_argument("--trained-steps", type=int, default=300,
                        help="steps of BASE training for part 2's second policy")
    parser.add_argument("--threshold", type=float, default=0.5, help="EM threshold to time")
    parser.add_argument("--report", action="store_true", help="tables and plot from the JSONL")
    args = parser.parse_args()
    t0 = time.perf_counter()
    name = output_name(NAME, args)
    path, var_path = RESULTS / f"{name}.jsonl", RESULTS / f"{name}_variance.jsonl"
    if args.report:
        rows, var_rows = read_jsonl(path), read_jsonl(var_path)
    else:
        rows = run_grid(name, settings(args.steps), args)
        for row in rows:
            attach_elapsed(row)
        write_jsonl(path, rows)
        var_rows = [r for p in fixed_policies(args.trained_steps, 0)
                    for r in measure(*p, K=args.K, fit_steps=args.fit_steps, seed=0)]
        write_jsonl(var_path, var_rows)
    plot(rows, var_rows, path.with_suffix(".png"))

    print(f"first run: {describe(rows[0])}\nvaried: algo.delta, B x G (always {COMPLETIONS} "
          f"completions per step); seeds {sorted({r['seed'] for r in rows})}\n")
    print(training_table(rows, (args.threshold, 0.95)))
    per_seed = {lb: " ".join(f"{r['final']['eval/exact_match']:.3f}" for r in g)
                for lb, g in by_label(rows).items()}
    print("\nheld-out EM per seed: " + "; ".join(f"{lb} {v}" for lb, v in per_seed.items()))
    v = var_rows[0]
    print(f"\ngradient at a fixed policy: K={v['K']} batches of {v['completions']} completions "
          f"per Δ; reference = R − V(S) over {800 * COMPLETIONS} fresh completions")
    for p in dict.fromkeys(r["policy"] for r in var_rows):
        fit = next(r["fit"] for r in var_rows if r["policy"] == p)
        ref = next(r["ref_norm"] for r in var_rows if r["policy"] == p)
        print(f"  {p}: |ref| = {ref:.4g}; explained variance of R: V(S) "
              f"{fit['value'].get('baseline/explained_variance', float('nan')):.3f}, running mean "
              f"{fit['running_mean'].get('baseline/explained_variance', float('nan')):.3f}")
    print()
    print(variance_table(var_rows))
    print(f"\nwrote {path}, {var_path} and {path.with_suffix('.png')} in "
          f"{time.perf_counter() - t0:.1f}s")


if __name__ == "__main__":
    main()
