"""Reward-model over-optimisation, stage 1: how accurate is a Bradley-Terry reward model trained on
synthetic preferences from a verifiable reward, as label noise grows and the model gets bigger?

Task: sort_text n=5, V=10 (bench/lm_targets.py's sort5). Pairs are *constructed*, not sampled
from a policy (fast, and no SFT run needed): for a random training prompt, each of the two
candidates is, with equal probability, the sorted answer, the sorted answer with one or with two
random position swaps, or a random permutation of the prompt. Both are scored by sort_text's own
`positional` reward (lmrl.tasks.sort_text.REWARDS); ties (equal reward, including identical
candidates) are dropped; chosen = the higher reward. Then each training label is flipped with
probability p. Held-out pairs are built the same way from the task's own held-out prompts
(never a training prompt) and kept twice: with clean labels, and with labels flipped at the same
p (a different random draw).

For every p and every backbone size: `lmrl init-model` (once per size), `lmrl rm train` on the
noisy training pairs, `lmrl rm eval` on the clean and on the noisy held-out pairs, all through
the CLI. "train s" is the wall time of the `lmrl rm train` process (start-up included).

    .venv/bin/python experiments/rm_overopt.py        # --pairs 2000 --steps 300 --seeds 1

Stage 2 (GRPO against the RM vs the true reward) is not implemented yet.
"""

import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import RESULTS, RUNS, markdown_table, read_jsonl, write_jsonl  # noqa: E402

NAME = "rm_overopt"
TASK = ["--task", "sort_text", "--n", "5", "--V", "10"]
KINDS = ("sorted", "one_swap", "two_swaps", "shuffled")
# Not in stage 1's pairs: an ascending list of random numbers, mostly not the prompt's (stage 2's
# "broad" reward model sees these, so it must compare the answer with the prompt).
MADE_UP = "made_up"
V = 10


def lmrl_cmd() -> list[str]:
    return [sys.executable, "-m", "lmrl"]


def candidate(numbers: list[int], kind: str, rng: random.Random) -> str:
    """One completion of a kind in KINDS (or MADE_UP) for the prompt `numbers`."""
    if kind == MADE_UP:
        return " ".join(map(str, sorted(rng.randrange(V) for _ in numbers)))
    values = sorted(numbers)
    if kind == "shuffled":
        rng.shuffle(values)
    else:
        for _ in range(KINDS.index(kind)):  # 0, 1 or 2 swaps of two random positions
            i, j = rng.sample(range(len(values)), 2)
            values[i], values[j] = values[j], values[i]
    return " ".join(map(str, values))


def make_pairs(examples: list[dict], noise: float, rng: random.Random,
               noise_rng: random.Random, kinds: tuple[str, ...] = KINDS
               ) -> tuple[list[dict], list[dict], dict]:
    """(clean rows, rows with labels flipped at probability noise, counts) for one pair per
    example; ties under the true reward are dropped."""
    from lmrl.tasks.sort_text import REWARDS

    a = [candidate(e["numbers"], rng.choice(kinds), rng) for e in examples]
    b = [candidate(e["numbers"], rng.choice(kinds), rng) for e in examples]
    prompts = [e["prompt"] for e in examples]
    numbers = [e["numbers"] for e in examples]
    ra = REWARDS["positional"](prompts, a, numbers)
    rb = REWARDS["positional"](prompts, b, numbers)
    clean = []
    for p, x, y, rx, ry in zip(prompts, a, b, ra, rb, strict=True):
        if rx == ry:
            continue
        chosen, rejected = (x, y) if rx > ry else (y, x)
        clean.append({"prompt": p, "chosen": chosen, "rejected": rejected})
    noisy, flipped = flip_labels(clean, noise, noise_rng)
    return clean, noisy, {"pairs": len(clean), "ties_dropped": len(examples) - len(clean),
                          "flipped": flipped}


def flip_labels(rows: list[dict], p: float, rng: random.Random) -> tuple[list[dict], int]:
    """(the rows with chosen and rejected swapped, each with probability p; how many were)."""
    out = [dict(r, chosen=r["rejected"], rejected=r["chosen"]) if rng.random() < p else r
           for r in rows]
    return out, sum(o is not r for o, r in zip(out, rows, strict=True))


def write_rows(path: Path, rows: list[dict]) -> None:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def build_data(out: Path, n_pairs: int, heldout: int, noises: list[float], seed: int,
               kinds: tuple[str, ...] = KINDS) -> dict:
    """Write train_p<p>.jsonl, heldout_clean.jsonl, heldout_p<p>.jsonl under out; return counts."""
    import torch

    from lmrl.tasks.sort_text import SortTextTask

    task = SortTextTask(n=5, V=10, heldout_size=500)
    gen = torch.Generator().manual_seed(seed)
    # Enough prompts that about n_pairs survive the tie drop (about 30% are ties).
    train_examples = [task.train_example(gen) for _ in range(int(n_pairs * 1.6))]
    rng = random.Random(seed)
    clean_train, _, _ = make_pairs(train_examples, 0.0, rng, random.Random(0), kinds)
    clean_train = clean_train[:n_pairs]
    clean_held, _, held_counts = make_pairs(task.heldout[:heldout], 0.0, rng, random.Random(0),
                                            kinds)
    write_rows(out / "heldout_clean.jsonl", clean_held)
    counts = {"train_pairs": len(clean_train), "heldout_pairs": len(clean_held)}
    for p in noises:
        train, counts[f"train_flipped_p{p}"] = flip_labels(
            clean_train, p, random.Random(f"{seed}-train-{p}"))
        held, counts[f"heldout_flipped_p{p}"] = flip_labels(
            clean_held, p, random.Random(f"{seed}-heldout-{p}"))
        write_rows(out / f"train_p{p}.jsonl", train)
        write_rows(out / f"heldout_p{p}.jsonl", held)
    return counts


def run(cmd: list[str]) -> float:
    start = time.perf_counter()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - start


def one_job(job: dict) -> dict:
    out, data = Path(job["out"]), Path(job["data"])
    p, size = job["noise"], job["size"]
    rm_dir = out / f"rm_{size}_p{p}_seed{job['seed']}"
    seconds = run([*lmrl_cmd(), "rm", "train", "--model", job["init"], "--data",
                   str(data / f"train_p{p}.jsonl"), "--out", str(rm_dir), "--overwrite",
                   "--steps", str(job["steps"]), "--batch-size", str(job["batch_size"]),
                   "--lr", str(job["lr"]), "--heldout-size", "1", "--eval-every",
                   str(job["steps"] or 1), "--seed", str(job["seed"]), "--threads", "1",
                   "--device", "cpu", "--no-progress"])
    evals = {}
    for labels, file in (("clean", "heldout_clean.jsonl"), ("noisy", f"heldout_p{p}.jsonl")):
        target = rm_dir / f"eval_{labels}.json"
        run([*lmrl_cmd(), "rm", "eval", "--model", str(rm_dir), "--data", str(data / file),
             "--out", str(target), "--threads", "1", "--device", "cpu"])
        evals[labels] = json.loads(target.read_text())
    return {"experiment": NAME, "label": f"{size} p={p}", "size": size, "noise": p,
            "seed": job["seed"], "steps": job["steps"], "batch_size": job["batch_size"],
            "lr": job["lr"], "train_seconds": round(seconds, 2),
            "acc_clean": evals["clean"]["accuracy"], "acc_noisy": evals["noisy"]["accuracy"],
            "gap_clean": evals["clean"]["gap_mean"], "gap_noisy": evals["noisy"]["gap_mean"],
            "heldout_pairs": evals["clean"]["pairs"], "rm_dir": str(rm_dir)}


def expected_noisy(acc_clean: float, p: float) -> float:
    """The accuracy on labels flipped at probability p of a model with acc_clean on the clean
    labels (flips independent of the model's errors)."""
    return (1 - p) * acc_clean + p * (1 - acc_clean)


def table(rows: list[dict]) -> str:
    lines = [[r["size"], f"{r['noise']:g}", str(r["seed"]), f"{r['acc_clean']:.3f}",
              f"{r['acc_noisy']:.3f}", f"{expected_noisy(r['acc_clean'], r['noise']):.3f}",
              f"{r['gap_clean']:.3f}", f"{r['train_seconds']:.1f}"] for r in rows]
    return markdown_table(["RM backbone", "label noise p", "seed", "held-out acc (clean labels)",
                           "held-out acc (noisy labels)", "expected noisy acc",
                           "mean gap (clean)", "train s"], lines)


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for i, size in enumerate(dict.fromkeys(r["size"] for r in rows)):
        xs = sorted({r["noise"] for r in rows if r["size"] == size})
        mean = lambda key, p, size=size: statistics.mean(  # noqa: E731  (over seeds)
            r[key] for r in rows if r["size"] == size and r["noise"] == p)
        ax.plot(xs, [mean("acc_clean", p) for p in xs], "o-", color=f"C{i}",
                label=f"{size}: clean labels")
        ax.plot(xs, [mean("acc_noisy", p) for p in xs], "s--", color=f"C{i}", alpha=0.6,
                label=f"{size}: noisy labels")
    xs = sorted({r["noise"] for r in rows})
    ax.plot(xs, [1 - p for p in xs], ":", color="gray", label="perfect RM on noisy labels")
    ax.set_xlabel("label flip probability p (training and noisy held-out)")
    ax.set_ylabel("held-out pairwise accuracy (mean over seeds)")
    ax.set_title("sort_text n=5: RM accuracy vs label noise")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--pairs", type=int, default=2000, help="training pairs (default 2000)")
    parser.add_argument("--heldout", type=int, default=500,
                        help="held-out prompts to build pairs from (default 500, ties dropped)")
    parser.add_argument("--steps", type=int, default=300, help="lmrl rm train --steps")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--noise", default="0,0.1,0.25", help="comma list of flip probabilities")
    parser.add_argument("--sizes", default="32x2,64x4",
                        help="comma list of HIDDENxLAYERS backbones (default 32x2,64x4)")
    parser.add_argument("--seeds", default="1", help="number of seeds or a comma list")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--tag", default=None, help="suffix of the output files")
    args = parser.parse_args()
    noises = [float(x) for x in args.noise.split(",")]
    sizes = args.sizes.split(",")
    seeds = ([int(s) for s in args.seeds.split(",")] if "," in args.seeds
             else list(range(int(args.seeds))))
    name = f"{NAME}_{args.tag}" if args.tag else NAME
    out = RUNS / name
    out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()

    jobs = []
    for seed in seeds:
        data = out / f"data_seed{seed}"
        data.mkdir(exist_ok=True)
        counts = build_data(data, args.pairs, args.heldout, noises, seed)
        print(f"seed {seed}: {json.dumps(counts)}")
        for size in sizes:
            hidden, layers = size.split("x")
            init = out / f"init_{size}_seed{seed}"
            run([*lmrl_cmd(), "init-model", "--out", str(init), "--overwrite", *TASK,
                 "--hidden-size", hidden, "--layers", layers, "--heads", "2", "--seed",
                 str(seed)])
            jobs += [{"out": str(out), "data": str(data), "init": str(init), "noise": p,
                      "size": size, "seed": seed, "steps": args.steps, "lr": args.lr,
                      "batch_size": args.batch_size} for p in noises]
    with ThreadPoolExecutor(max_workers=args.workers) as pool:
        rows = list(pool.map(one_job, jobs))
    path = RESULTS / f"{name}.jsonl"
    write_jsonl(path, rows)
    rows = read_jsonl(path)
    plot(rows, RESULTS / f"{name}.png")
    first = rows[0]
    print(f"sort_text n=5 V=10; {first['heldout_pairs']} held-out pairs; lmrl rm train "
          f"--steps {first['steps']} --batch-size {first['batch_size']} --lr {first['lr']}")
    print(table(rows))
    print(f"total wall {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    main()
