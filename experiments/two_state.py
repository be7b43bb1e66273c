"""Does a state-dependent baseline keep the policy gradient unbiased while cutting its variance?

The seed's two-state example: states S1, S2 (uniform), actions A1, A2, rewards
    S1,A1 -> 11   S1,A2 -> 9   S2,A1 -> 0   S2,A2 -> 2
and a softmax policy π(a|s) = softmax(θ[s])_a with a 2x2 logit table θ. For many single-sample
estimates g = Δ · ∇θ log π(A|S) we compare Δ = R (naive) with Δ = R - B(S) for the seed's
B(S1)=10, B(S2)=1, the value baseline B(S) = V_π(S) = E[R|S], the variance-minimising state
baseline b*(S), and a deliberately bad (swapped) B(S1)=1, B(S2)=10. The exact gradient ∇J and
the exact variances come from enumerating the four (S, A) pairs; the Monte-Carlo means must match
∇J within their standard errors.

    .venv/bin/python experiments/two_state.py [--samples 100000] [--seed 0]
"""

import argparse
import json
import time
from pathlib import Path

import torch

from lmrl.losses import naive_loss

RESULTS = Path(__file__).resolve().parent / "results"
REWARD = torch.tensor([[11.0, 9.0], [0.0, 2.0]], dtype=torch.float64)  # (S, A)
STATE_PROBS = torch.tensor([0.5, 0.5], dtype=torch.float64)
POLICIES = {
    "uniform": [[0.0, 0.0], [0.0, 0.0]],
    # Leans toward the worse action in both states: π(A2|S1) = π(A1|S2) = 0.82.
    "skewed": [[0.0, 1.5], [1.5, 0.0]],
}


def exact_gradient(theta: torch.Tensor) -> torch.Tensor:
    """∇θ J with J = Σ_s ρ(s) Σ_a π(a|s) R(s,a), by autograd on the exact objective. (2, 2)."""
    theta = theta.clone().requires_grad_(True)
    J = (STATE_PROBS[:, None] * torch.softmax(theta, -1) * REWARD).sum()
    (grad,) = torch.autograd.grad(J, theta)
    return grad


def baselines(theta: torch.Tensor) -> dict[str, torch.Tensor]:
    probs = torch.softmax(theta, -1)
    value = (probs * REWARD).sum(-1)  # V_π(s)
    # The variance-minimising state baseline weights each action by |∇ log π(a|s)|², which for two
    # actions is 2(1 - π(a|s))²: b*(s) = E[R |∇log π|² | s] / E[|∇log π|² | s].
    sq_norm = 2 * (1 - probs) ** 2
    optimal = (probs * sq_norm * REWARD).sum(-1) / (probs * sq_norm).sum(-1)
    return {
        "R (no baseline)": torch.zeros(2, dtype=torch.float64),
        "R - B(S), B=(10,1) [seed]": torch.tensor([10.0, 1.0], dtype=torch.float64),
        "R - V_pi(S)": value,
        "R - b*(S) [min-variance]": optimal,
        "R - B(S), B=(1,10) [swapped]": torch.tensor([1.0, 10.0], dtype=torch.float64),
    }


def score(theta: torch.Tensor, s: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
    """∇θ log π(a|s) = onehot(a) - π(·|s) in row s, zero in the other row. (N,) -> (N, 2, 2)."""
    probs = torch.softmax(theta, -1)  # (S, A)
    g = torch.zeros(len(s), 2, 2, dtype=torch.float64)
    rows = torch.nn.functional.one_hot(a, 2).double() - probs[s]  # (N, A)
    g[torch.arange(len(s)), s] = rows
    return g


def check_against_library(theta: torch.Tensor, s: int, a: int, delta: float) -> torch.Tensor:
    """The same single-sample gradient through lmrl's naive loss, -∇(-Δ log π(A|S))."""
    theta = theta.clone().requires_grad_(True)
    logp = torch.log_softmax(theta, -1)[s, a].reshape(1, 1, 1)  # (B=1, G=1, T=1)
    mask = torch.ones_like(logp)
    loss = naive_loss(logp, logp.detach(), torch.tensor([[delta]], dtype=torch.float64),
                      mask).sum()
    (grad,) = torch.autograd.grad(-loss, theta)
    return grad


def exact_moments(theta: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, float]:
    """E[g] and the total variance Σ_components Var(g), by enumerating the four (S, A) pairs."""
    probs = torch.softmax(theta, -1)
    s = torch.tensor([0, 0, 1, 1])
    a = torch.tensor([0, 1, 0, 1])
    weight = STATE_PROBS[s] * probs[s, a]  # (4,)
    g = (REWARD[s, a] - b[s])[:, None, None] * score(theta, s, a)  # (4, 2, 2)
    mean = (weight[:, None, None] * g).sum(0)
    second = (weight[:, None, None] * g**2).sum(0)
    return mean, float((second - mean**2).sum())


def estimate(theta: torch.Tensor, b: torch.Tensor, num: int, gen: torch.Generator) -> dict:
    s = torch.multinomial(STATE_PROBS, num, replacement=True, generator=gen)
    a = torch.multinomial(torch.softmax(theta, -1)[s], 1, generator=gen).squeeze(-1)
    delta = REWARD[s, a] - b[s]
    g = delta[:, None, None] * score(theta, s, a)  # (N, 2, 2) single-sample estimates
    true = exact_gradient(theta)
    mean, sd = g.mean(0), g.std(0)
    se = sd / num**0.5
    z = ((mean - true) / se.clamp(min=1e-12)).abs()
    lib = check_against_library(theta, int(s[0]), int(a[0]), float(delta[0]))
    assert torch.allclose(lib, g[0]), "analytic score function disagrees with lmrl.losses"
    exact_mean, exact_var = exact_moments(theta, b)
    assert torch.allclose(exact_mean, true), "a state baseline changed the expected gradient"
    return {
        "mc_mean": mean.flatten().tolist(), "mc_se": se.flatten().tolist(),
        "max_abs_z": float(z.max()), "max_abs_bias": float((mean - true).abs().max()),
        "var_total_mc": float((sd**2).sum()), "var_total_exact": exact_var,
        # A single update that points away from the true gradient (the seed's "(S1,A2) with
        # reward 9 pushes toward A2" noise).
        "wrong_direction_frac": float(((g * true).sum((1, 2)) < 0).double().mean()),
    }


def run(num: int, seed: int) -> list[dict]:
    rows = []
    for policy, logits in POLICIES.items():
        theta = torch.tensor(logits, dtype=torch.float64)
        gen = torch.Generator().manual_seed(seed)
        base_var = None
        for name, b in baselines(theta).items():
            out = estimate(theta, b, num, gen)
            base_var = base_var or out["var_total_exact"]
            rows.append({
                "policy": policy, "logits": logits,
                "pi_A1": torch.softmax(theta, -1)[:, 0].tolist(),
                "estimator": name, "baseline": b.tolist(), "samples": num, "seed": seed,
                "exact_grad": exact_gradient(theta).flatten().tolist(), **out,
                "variance_reduction": base_var / out["var_total_exact"],
            })
    return rows


def plot(rows: list[dict], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    policies = list(dict.fromkeys(r["policy"] for r in rows))
    fig, axes = plt.subplots(len(policies), 2, figsize=(12, 4.2 * len(policies)))
    comps = ["θ[S1,A1]", "θ[S1,A2]", "θ[S2,A1]", "θ[S2,A2]"]
    for ax_mean, ax_var, policy in zip(axes[:, 0], axes[:, 1], policies, strict=True):
        group = [r for r in rows if r["policy"] == policy]
        width = 0.8 / len(group)
        for i, r in enumerate(group):
            xs = [c + (i - (len(group) - 1) / 2) * width for c in range(4)]
            ax_mean.bar(xs, r["mc_mean"], width, yerr=[3 * e for e in r["mc_se"]],
                        label=r["estimator"], color=f"C{i}", capsize=2)
        ax_mean.scatter(range(4), group[0]["exact_grad"], marker="_", s=900, color="k", zorder=5,
                        label="exact ∇J")
        ax_mean.set_xticks(range(4), comps)
        ax_mean.axhline(0, color="grey", lw=0.5)
        ax_mean.set_title(f"{policy} policy: mean of single-sample estimates (±3 SE)")
        ax_mean.legend(fontsize=7)
        names = [r["estimator"] for r in group]
        ax_var.barh(range(len(group)), [r["var_total_mc"] for r in group],
                    color=[f"C{i}" for i in range(len(group))])
        ax_var.scatter([r["var_total_exact"] for r in group], range(len(group)), marker="|",
                       s=300, color="k", zorder=5, label="exact")
        ax_var.set_yticks(range(len(group)), names, fontsize=8)
        ax_var.set_xscale("log")
        ax_var.set_xlabel("total variance of one estimate (sum over the 4 components)")
        ax_var.set_title(f"{policy} policy: variance (Monte-Carlo bars, exact ticks)")
        ax_var.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--samples", type=int, default=100_000)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    t0 = time.perf_counter()
    rows = run(args.samples, args.seed)
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / "two_state.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    plot(rows, RESULTS / "two_state.png")

    print(f"{args.samples} single-sample estimates per row; exact ∇J by enumeration\n")
    print("| policy | estimator | B(S1), B(S2) | exact ∇J | MC mean | max abs z | total var (MC) | "
          "total var (exact) | variance reduction | wrong-direction frac |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        fmt = lambda v: "(" + ", ".join(f"{x:+.3f}" for x in v) + ")"  # noqa: E731
        b1, b2 = r["baseline"]
        print(f"| {r['policy']} | {r['estimator']} | {b1:.2f}, {b2:.2f} | {fmt(r['exact_grad'])} | "
              f"{fmt(r['mc_mean'])} | {r['max_abs_z']:.2f} | {r['var_total_mc']:.3f} | "
              f"{r['var_total_exact']:.3f} | {r['variance_reduction']:.1f}x | "
              f"{r['wrong_direction_frac']:.3f} |")
    print(f"\nwrote {path} and {path.with_suffix('.png')} in {time.perf_counter() - t0:.1f}s")


if __name__ == "__main__":
    main()
