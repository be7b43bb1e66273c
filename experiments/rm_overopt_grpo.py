"""Reward-model over-optimisation, stage 2: GRPO against a learned reward model (RM) versus
against the true reward it was trained to imitate, with and without the KL term, a best-of-n
baseline, and how raw / centered / normalized deltas behave with the smooth RM score versus the
0/1 reward.

Task: sort_text n=5, V=10, as stage 1 (rm_overopt.py) and bench/lm_targets.py's sort5. Set-up,
all through the CLI, as a user runs it:

1. preference pairs from the true reward (stage 1's constructed pairs, `positional` reward,
   labels flipped with probability --noise), and one RM per backbone size (`lmrl init-model`,
   `lmrl rm train`, `lmrl rm eval` on the clean held-out pairs);
2. a policy: `lmrl init-model` (default size) and `lmrl sft` until greedy held-out exact match
   reaches 0.3 (sort5's SFT stage), the starting point of every GRPO run;
3. best-of-n from that policy (no training): N samples per held-out prompt, the one the RM
   scores highest kept, for n = 1, 2, 4, ..., N (the unbiased estimator over the N samples);
   its KL to the policy is at most log n - (n-1)/n nats;
4. GRPO runs (`lmrl train`, lmrl's default RL settings, --steps and --eval-every set here):
   the true reward; each RM as the *only* training reward (`--task-reward-weight 0`: the task's
   rewards are still computed and logged, never trained on); each with the default KL term
   (λ = 0.1 to the SFT policy) and without it (`--kl-weight 0`); then deltas raw / centered /
   normalized for the larger RM and for the 0/1 reward (`--reward exact_match`). Every run also
   scores with every RM at weight 0, so the RM score of a run trained on the true reward (and
   of one trained on the other RM) is logged too.

The true reward is the held-out greedy `eval/reward_positional` (how many of the first 5
positions hold the sorted prompt's number, 0 to 5; `eval/exact_match` is the fraction fully
sorted); the proxy is the trained-on RM's held-out score `eval/reward_rm_<size>`.
Over-optimisation "begins" at the evaluation where the true reward peaks if, by the end of the
run (mean of the last 3 evaluations), the true reward has fallen at least --drop below that peak
while the proxy has not fallen below its value at the peak; otherwise "none" within the run. The
same rule on the training samples' per-step mean rewards (`train/reward_positional` and
`train/reward_rm_<size>`, sampled at temperature 1, smoothed over 5 steps, the end = the last
10 steps) dates it to the step rather than to the evaluation.

    .venv/bin/python experiments/rm_overopt_grpo.py     # --steps 150 --sizes 32x2,64x4 --noise 0.1
"""

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import RESULTS, RUNS, markdown_table, read_jsonl, write_jsonl  # noqa: E402
from rm_overopt import KINDS, MADE_UP, TASK, build_data, lmrl_cmd  # noqa: E402

NAME = "rm_overopt_grpo"
HELDOUT = ["--heldout-size", "500"]  # sort5's held-out set (the RM pairs come from it too)


def run(cmd: list[str], log: Path | None = None) -> float:
    """One CLI command; its wall seconds. Output goes to `log` (a failure shows its tail)."""
    start = time.perf_counter()
    with open(log or os.devnull, "w") as sink:
        done = subprocess.run(cmd, stdout=sink, stderr=subprocess.STDOUT)
    if done.returncode:
        tail = log.read_text()[-3000:] if log else ""
        raise SystemExit(f"failed ({done.returncode}): {' '.join(cmd)}\n{tail}")
    return time.perf_counter() - start


def train_reward_model(out: Path, data: Path, size: str, noise: float, args) -> dict:
    hidden, layers = size.split("x")
    init, rm = out / f"rm_init_{size}", out / size
    run([*lmrl_cmd(), "init-model", "--out", str(init), "--overwrite", *TASK, "--hidden-size",
         hidden, "--layers", layers, "--heads", "2", "--seed", str(args.seed)])
    seconds = run([*lmrl_cmd(), "rm", "train", "--model", str(init), "--data",
                   str(data / f"train_p{noise}.jsonl"), "--out", str(rm), "--overwrite",
                   "--steps", str(args.rm_steps), "--batch-size", "32", "--lr", "1e-3",
                   "--heldout-size", "1", "--eval-every", str(args.rm_steps), "--seed",
                   str(args.seed), "--threads", "1", "--device", "cpu", "--no-progress"])
    target = out / f"rm_eval_{size}.json"
    run([*lmrl_cmd(), "rm", "eval", "--model", str(rm), "--data",
         str(data / "heldout_clean.jsonl"), "--out", str(target), "--threads", "1", "--device",
         "cpu"])
    evaluation = json.loads(target.read_text())
    return {"size": size, "dir": str(rm), "acc_clean": evaluation["accuracy"],
            "gap_clean": evaluation["gap_mean"], "train_seconds": round(seconds, 1)}


def sft_policy(out: Path, args) -> Path:
    init, sft = out / "policy_init", out / "policy_sft"
    run([*lmrl_cmd(), "init-model", "--out", str(init), "--overwrite", *TASK, *HELDOUT,
         "--seed", str(args.seed)])
    run([*lmrl_cmd(), "sft", "--model", str(init), "--out", str(sft), "--overwrite", *TASK,
         *HELDOUT, "--steps", str(args.sft_steps), "--eval-every", "2", "--stop-at", "0.3",
         "--seed", str(args.seed), "--threads", "1"], out / "sft.log")
    return sft


def rm_flags(rms: dict, trained_on: str | None) -> list[str]:
    """--reward-model DIR=w for every RM: weight 1 for the one trained on, 0 (logged) else."""
    flags = []
    for size, rm in rms.items():
        flags += ["--reward-model", f"{rm['dir']}={1 if size == trained_on else 0}"]
    return flags


def rm_name(rms: dict, size: str) -> str:
    """The reward name lmrl train logs the RM of this size under (rm_<directory>; rm if alone)."""
    from lmrl.tasks.reward_model import reward_model_names

    return dict(zip(rms, reward_model_names(tuple(rm["dir"] for rm in rms.values())),
                    strict=True))[size]


def grpo_runs(rms: dict) -> list[dict]:
    """(label, group, the RM trained on or None, lmrl train flags) of every GRPO run."""
    largest = list(rms)[-1]
    runs = [{"label": "true reward", "group": "overopt", "rm": None, "flags": []},
            {"label": "true reward, no KL", "group": "overopt", "rm": None,
             "flags": ["--kl-weight", "0"]}]
    for size in rms:
        runs += [{"label": f"RM {size}", "group": "overopt", "rm": size,
                  "flags": ["--task-reward-weight", "0"]},
                 {"label": f"RM {size}, no KL", "group": "overopt", "rm": size,
                  "flags": ["--task-reward-weight", "0", "--kl-weight", "0"]}]
    for delta in ("raw", "centered"):  # normalized is the default: the "RM <largest>" run
        runs.append({"label": f"RM {largest}, {delta}", "group": "deltas", "rm": largest,
                     "flags": ["--task-reward-weight", "0", "--delta", delta]})
    for delta in ("raw", "centered", "normalized"):
        runs.append({"label": f"0/1 reward, {delta}", "group": "deltas", "rm": None,
                     "flags": ["--reward", "exact_match", "--delta", delta]})
    return runs


def one_grpo(job: dict) -> dict:
    run_dir = Path(job["out"]) / job["label"].replace(" ", "_").replace(",", "").replace("/", "")
    seconds = run([*lmrl_cmd(), "train", "--model", job["sft"], "--run-dir", str(run_dir),
                   "--overwrite", *TASK, *HELDOUT, "--steps", str(job["steps"]), "--eval-every",
                   str(job["eval_every"]), "--eval-limit", str(job["eval_limit"]), "--seed",
                   str(job["seed"]), "--threads", "1", "--no-progress",
                   *rm_flags(job["rms"], job["rm"]), *job["flags"]], run_dir.parent /
                  f"{run_dir.name}.log")
    rows = read_jsonl(run_dir / "metrics.jsonl")
    return {**{k: job[k] for k in ("label", "group", "rm", "flags", "steps", "seed")},
            "run_dir": str(run_dir), "seconds": round(seconds, 1), "metrics": rows}


def curve(rows: list[dict], key: str) -> tuple[list[int], list[float]]:
    points = [(r["step"], r[key]) for r in rows if key in r]
    return [s for s, _ in points], [v for _, v in points]


def onset(steps: list[int], true: list[float], proxy: list[float], drop: float,
          tail: int = 3) -> int | None:
    """The step where over-optimisation begins (module docstring), or None; the end of the run
    is the mean of the last `tail` points."""
    peak = max(range(len(true)), key=true.__getitem__)
    if true[peak] - statistics.mean(true[-tail:]) < drop:
        return None
    if statistics.mean(proxy[-tail:]) < proxy[peak]:
        return None
    return steps[peak]


def smooth(values: list[float], window: int = 5) -> list[float]:
    """Trailing mean over `window` points (fewer at the start): per-step training rewards are
    noisy."""
    return [statistics.mean(values[max(0, i - window + 1):i + 1]) for i in range(len(values))]


def summarise(result: dict, rms: dict, drop: float) -> dict:
    rows = result["metrics"]
    steps, true = curve(rows, "eval/reward_positional")
    _, exact = curve(rows, "eval/exact_match")
    proxies = {size: curve(rows, f"eval/reward_{rm_name(rms, size)}")[1] for size in rms}
    train = [r for r in rows if "train/reward_mean" in r]
    last = train[-20:]
    mean = lambda key: statistics.mean(r[key] for r in last)  # noqa: E731
    step_share = statistics.mean(r["time/reward_seconds"] / r["time/step_seconds"] for r in train)
    peak = max(range(len(true)), key=true.__getitem__)
    return {
        "label": result["label"], "group": result["group"], "rm": result["rm"],
        "seconds": result["seconds"], "true_first": true[0], "true_peak": true[peak],
        "true_peak_step": steps[peak], "true_last3": statistics.mean(true[-3:]),
        "exact_last3": statistics.mean(exact[-3:]),
        **{f"proxy_{size}_first": v[0] for size, v in proxies.items()},
        **{f"proxy_{size}_last3": statistics.mean(v[-3:]) for size, v in proxies.items()},
        "onset_step": onset(steps, true, proxies[result["rm"]], drop) if result["rm"] else None,
        "onset_step_train": train_onset(train, rm_name(rms, result["rm"]), drop)
        if result["rm"] else None,
        "flat_group_frac_last20": mean("train/flat_group_frac"),
        "delta_abs_mean_last20": mean("train/delta_abs_mean"),
        "kl_ref_last20": mean("loss/kl_ref") if "loss/kl_ref" in last[0] else 0.0,
        "reward_share_of_step": step_share,
    }


def train_onset(train: list[dict], rm: str, drop: float) -> int | None:
    """onset() on the training samples' mean rewards, every step, smoothed over 5 steps; the
    end of the run is its last 10 steps."""
    steps = [r["step"] for r in train]
    true = smooth([r["train/reward_positional"] for r in train])
    proxy = smooth([r[f"train/reward_{rm}"] for r in train])
    return onset(steps, true, proxy, drop, tail=10)


def best_of_n(sft: Path, rms: dict, n_max: int, prompts: int, seed: int) -> list[dict]:
    """True reward and RM scores of best-of-n by each RM and by the true reward (an oracle)."""
    import torch

    from lmrl.config import TaskConfig
    from lmrl.policies.hf import HFPolicy
    from lmrl.tasks import build_task

    task = build_task(TaskConfig(task="sort_text", n=5, V=10, heldout_size=500,
                                 reward_model=tuple(f"{rm['dir']}=0" for rm in rms.values())))
    policy = HFPolicy.from_pretrained(str(sft), max_new_tokens=task.max_new_tokens, seed=seed)
    examples = task.heldout[:prompts]
    generator = torch.Generator().manual_seed(seed)
    tables = []
    with torch.no_grad():
        for start in range(0, len(examples), 50):
            chunk = examples[start:start + 50]
            rollout = policy.sample([e["prompt"] for e in chunk], n_max, generator=generator)
            tables.append(task.score(chunk, rollout.texts)[1])
    table = {k: torch.cat([t[k] for t in tables]) for k in tables[0]}
    names = {"true reward (oracle)": "positional",
             **{f"RM {size}": rm_name(rms, size) for size in rms}}
    rows = []
    n = 1
    while n <= n_max:
        row = {"n": n, "kl_bound": math.log(n) - (n - 1) / n}
        for label, key in names.items():
            weights = selection_weights(table[key], n)
            row[f"{label}: true"] = float((weights * table["positional"]).sum(-1).mean())
            row[f"{label}: exact"] = float((weights * table["exact_match"]).sum(-1).mean())
            for size in rms:
                row[f"{label}: rm_{size}"] = float(
                    (weights * table[rm_name(rms, size)]).sum(-1).mean())
        rows.append(row)
        n *= 2
    return rows


def selection_weights(scores, n: int):
    """(B, N) scores -> (B, N) probability that each sample is the highest-scoring of a uniformly
    random n-subset of the N: C(rank, n-1) / C(N, n) with rank = how many score below it (ties
    broken by position; a tie picks samples alike under a true-reward selector)."""
    import torch

    B, N = scores.shape
    order = scores.argsort(dim=-1, stable=True)
    rank_weights = torch.tensor([math.comb(r, n - 1) / math.comb(N, n) for r in range(N)],
                                dtype=torch.float64)
    weights = torch.zeros(B, N, dtype=torch.float64)
    weights.scatter_(1, order, rank_weights.expand(B, N))
    return weights


def onset_text(s: dict) -> str:
    if not s["rm"]:
        return "—"
    return " / ".join("none" if v is None else str(v)
                      for v in (s["onset_step"], s["onset_step_train"]))


def overopt_table(summaries: list[dict], rms: dict) -> str:
    lines = []
    for s in summaries:
        if s["group"] != "overopt":
            continue
        shown = [s["rm"]] if s["rm"] else list(rms)
        proxy = " / ".join(f"{s['proxy_' + z + '_first']:.2f} → {s['proxy_' + z + '_last3']:.2f}"
                           for z in shown)
        lines.append([s["label"], f"{s['true_first']:.3f}", f"{s['true_peak']:.3f} "
                      f"(step {s['true_peak_step']})", f"{s['true_last3']:.3f}",
                      f"{s['exact_last3']:.3f}", proxy,
                      onset_text(s),
                      f"{s['kl_ref_last20']:.4f}", f"{s['reward_share_of_step']:.1%}",
                      f"{s['seconds']:.0f}"])
    return markdown_table(["run", "true reward at step 0", "true peak", "true last 3",
                           "exact match last 3", "RM score first → last 3 (trained-on RM; "
                           f"true-reward runs: {' / '.join(rms)})",
                           "over-optimisation onset step (held-out evals / training samples)",
                           "KL to ref (per token, last 20 steps)", "reward share of step",
                           "wall s"], lines)


def deltas_table(summaries: list[dict], largest: str) -> str:
    """The delta runs, with the RM run on normalized deltas (the default) among them."""
    lines = [[s["label"] if s["group"] == "deltas" else f"{s['label']}, normalized",
              f"{s['true_first']:.3f}", f"{s['true_last3']:.3f}", f"{s['exact_last3']:.3f}",
              f"{s['flat_group_frac_last20']:.2f}", f"{s['delta_abs_mean_last20']:.3f}",
              f"{s['kl_ref_last20']:.4f}"]
             for s in summaries if s["group"] == "deltas" or s["label"] == f"RM {largest}"]
    return markdown_table(["run", "true reward at step 0", "true last 3", "exact match last 3",
                           "flat groups (last 20 steps)", "mean |Δ| (last 20 steps)",
                           "KL to ref (last 20 steps)"], lines)


def bon_table(rows: list[dict], rms: dict) -> str:
    labels = ["true reward (oracle)", *(f"RM {size}" for size in rms)]
    lines = [[str(r["n"]), f"{r['kl_bound']:.2f}",
              *(f"{r[f'{label}: true']:.3f} / {r[f'{label}: exact']:.3f}" for label in labels)]
             for r in rows]
    return markdown_table(["n", "KL bound (nats)",
                           *(f"best of n by {label}: true / exact match" for label in labels)],
                          lines)


def plot(results: list[dict], bon: list[dict], rms: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 2, figsize=(12, 8.5))
    colours = {"true reward": "k", **{f"RM {size}": f"C{i}" for i, size in enumerate(rms)}}
    over = [r for r in results if r["group"] == "overopt"]
    for r in over:
        base = r["label"].removesuffix(", no KL")
        style = "--" if r["label"].endswith("no KL") else "-"
        axes[0, 0].plot(*curve(r["metrics"], "eval/reward_positional"), style,
                        color=colours[base], label=r["label"])
        if r["rm"]:
            axes[0, 1].plot(*curve(r["metrics"], f"eval/reward_{rm_name(rms, r['rm'])}"), style,
                            color=colours[base], label=f"{r['label']}: its RM's score")
    largest = list(rms)[-1]
    for r in over:  # the larger RM's view of the runs that never trained on it
        if r["rm"] is None:
            axes[0, 1].plot(*curve(r["metrics"], f"eval/reward_{rm_name(rms, largest)}"),
                            "--" if r["label"].endswith("no KL") else "-", color="gray",
                            label=f"{r['label']}: RM {largest}'s score")
    axes[0, 0].set_title("held-out true reward (positional, greedy)")
    axes[0, 1].set_title("held-out RM score (greedy): the proxy")
    for ax in axes[0]:
        ax.set_xlabel("GRPO step")
        ax.legend(fontsize=7)
    labels = ["true reward (oracle)", *(f"RM {size}" for size in rms)]
    ns = [r["n"] for r in bon]
    for i, label in enumerate(labels):
        colour = "k" if i == 0 else f"C{i - 1}"
        axes[1, 0].plot(ns, [r[f"{label}: true"] for r in bon], "o-", color=colour,
                        label=f"best of n by {label}")
    axes[1, 0].set_xscale("log", base=2)
    axes[1, 0].set_xlabel("n (samples from the SFT policy; KL ≤ log n − (n−1)/n)")
    axes[1, 0].set_title("best-of-n: true reward of the one kept")
    axes[1, 0].legend(fontsize=7)
    for r in results:
        if r["group"] == "deltas" or r["label"] == f"RM {largest}":
            label = r["label"] if r["group"] == "deltas" else f"RM {largest}, normalized"
            style = "-" if label.startswith("RM") else "--"
            delta = label.rsplit(", ", 1)[1]
            colour = {"raw": "C3", "centered": "C4", "normalized": "C2"}[delta]
            axes[1, 1].plot(*curve(r["metrics"], "eval/exact_match"), style, color=colour,
                            label=label)
    axes[1, 1].set_xlabel("GRPO step")
    axes[1, 1].set_title("deltas: held-out exact match (RM: solid, 0/1 reward: dashed)")
    axes[1, 1].legend(fontsize=7)
    fig.suptitle("sort_text n=5: GRPO on a learned reward model vs the true reward")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=150, help="GRPO steps per run")
    parser.add_argument("--eval-every", type=int, default=10)
    parser.add_argument("--eval-limit", type=int, default=200, help="held-out prompts per eval")
    parser.add_argument("--sizes", default="32x2,64x4", help="RM backbones HIDDENxLAYERS")
    parser.add_argument("--noise", type=float, default=0.1, help="RM label flip probability")
    parser.add_argument("--pairs", type=int, default=2000)
    parser.add_argument("--rm-steps", type=int, default=300)
    parser.add_argument("--broad", action="store_true",
                        help="the RMs' pairs also hold made-up ascending answers (not the "
                             "prompt's numbers): a broader preference set")
    parser.add_argument("--sft-steps", type=int, default=1000,
                        help="at most this many SFT steps (it stops at exact match 0.3)")
    parser.add_argument("--best-of", type=int, default=32, help="N of best-of-n (a power of 2)")
    parser.add_argument("--drop", type=float, default=0.25,
                        help="true-reward fall below its peak that counts as over-optimisation")
    parser.add_argument("--only", default=None, help="run labels to run, separated by ';'")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--tag", default=None, help="suffix of the output files")
    parser.add_argument("--report", action="store_true",
                        help="only re-read a finished run's curves: tables, JSONL and plot")
    args = parser.parse_args()
    name = f"{NAME}_{args.tag}" if args.tag else NAME
    if args.report:
        return report(name, args)
    out = RUNS / name
    out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()

    data = out / "data"
    data.mkdir(exist_ok=True)
    kinds = (*KINDS, MADE_UP) if args.broad else KINDS
    print("pairs:", json.dumps(build_data(data, args.pairs, 500, [args.noise], args.seed,
                                          kinds)))
    sizes = args.sizes.split(",")
    with ThreadPoolExecutor(max_workers=args.workers + 1) as pool:
        sft_future = pool.submit(sft_policy, out, args)
        rms = {r["size"]: r for r in pool.map(
            lambda size: train_reward_model(out, data, size, args.noise, args), sizes)}
        sft = sft_future.result()
    for rm in rms.values():
        print(f"RM {rm['size']}: clean held-out accuracy {rm['acc_clean']:.3f}, mean gap "
              f"{rm['gap_clean']:.2f}, trained in {rm['train_seconds']} s")
    bon = best_of_n(sft, rms, args.best_of, args.eval_limit, args.seed)
    print(bon_table(bon, rms))

    jobs = [{**r, "out": str(out), "sft": str(sft), "rms": rms, "steps": args.steps,
             "eval_every": args.eval_every, "eval_limit": args.eval_limit, "seed": args.seed}
            for r in grpo_runs(rms)
            if args.only is None or r["label"] in args.only.split(";")]
    with ThreadPoolExecutor(max_workers=args.workers) as pool:
        results = list(pool.map(one_grpo, jobs))
    write_jsonl(out / "setup.jsonl", [{"kind": "rm", **rm} for rm in rms.values()]
                + [{"kind": "best_of_n", **row} for row in bon])
    write_jsonl(out / "curves.jsonl", results)
    report(name, args)
    print(f"total wall {time.perf_counter() - start:.0f} s")


def report(name: str, args) -> None:
    """Summaries, results/<name>.{jsonl,png} and the tables, from the run's saved curves (so
    that --report re-reads a finished run, e.g. with another --drop)."""
    out = RUNS / name
    setup = read_jsonl(out / "setup.jsonl")
    rms = {r["size"]: r for r in setup if r["kind"] == "rm"}
    bon = [r for r in setup if r["kind"] == "best_of_n"]
    results = read_jsonl(out / "curves.jsonl")
    summaries = [summarise(r, rms, args.drop) for r in results]
    write_jsonl(RESULTS / f"{name}.jsonl",
                [{"experiment": NAME, **r} for r in setup]
                + [{"experiment": NAME, "kind": "grpo", "drop": args.drop, **s}
                   for s in summaries])
    plot(results, bon, rms, RESULTS / f"{name}.png")
    first = results[0]
    print(f"sort_text n=5 V=10; RMs at label noise {args.noise}, "
          + ", ".join(f"{z}: clean held-out acc {r['acc_clean']:.3f}" for z, r in rms.items())
          + f"; GRPO {first['steps']} steps, held-out eval every {args.eval_every} on "
          f"{args.eval_limit} prompts; seed {first['seed']}; onset drop {args.drop}")
    print(bon_table(bon, rms))
    print(overopt_table(summaries, rms))
    print(deltas_table(summaries, list(rms)[-1]))


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    main()
