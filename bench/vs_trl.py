"""lmrl against TRL's GRPOTrainer on the same work (issue 4), and lmrl's step against this
machine's matmul ceiling. Writes results/vs_trl.json and results/vs_trl.md.

    .venv/bin/python bench/vs_trl.py            # the full comparison (make bench)
    .venv/bin/python bench/vs_trl.py --smoke    # seconds: tiny model, 2 steps, no idle wait
    .venv/bin/python bench/vs_trl.py --sizes tiny --n 5 --kl 0.04 --repeats 1

Both libraries train the same locally built Qwen2 (lmrl.modelzoo.init_model, then an untimed
lmrl SFT warm start to held-out exact match ~0.3, shared by both) on sort_text (V = 10) with
the same settings: B = 16 prompts x G = 8 samples, the task's completion budget, temperature 1,
constant lr, AdamW, grad clip 1, clipped token-level ratio (ε 0.2), group-normalised
advantages (std + 1e-4), token-mean loss over the batch, μ = 1, KL weight β (k3, to a frozen
copy of the start), fp32 on CPU, the positional reward. Every run is its own subprocess with the
same thread environment, waits for an idle machine first, and alternates with the other library
(A B A B in one block, B A B A in the next). Held-out numbers come from one evaluation for both:
each final model is saved with save_pretrained and scored by lmrl's greedy evaluate_text.

Timing: a step is the interval between the ends of consecutive optimizer steps (TRL: its
on_step_end callback; lmrl: grpo_step plus writing its metrics line), the first `warmup` steps
excluded. completions/s = B·G / median step seconds; tokens/s = median over steps of that
step's completion tokens (EOS included) / its seconds. Peak memory is the child's ru_maxrss at
the end of training (imports included). The ceiling is the best square fp32 matmul throughput
measured with the same threads; model FLOPs are counted by bench/flops.py.
"""

import argparse
import importlib.util
import json
import os
import statistics
import subprocess
import sys
import time
from importlib import metadata
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from flops import ModelShape, step_flops  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
B, G, V = 16, 8, 10
# Model sizes: shape, GRPO lr, steps, SFT warm start (steps cap, lr; 0 steps = random init).
SIZES = {
    "tiny": {"layers": 4, "hidden": 128, "heads": 4, "lr": 2e-4, "steps": 100,
             "sft_steps": 1000, "sft_lr": 1e-3},
    "20M": {"layers": 8, "hidden": 512, "heads": 8, "lr": 1e-4, "steps": 20,
            "sft_steps": 1000, "sft_lr": 3e-4},
    "smoke": {"layers": 2, "hidden": 32, "heads": 2, "lr": 2e-4, "steps": 2,
              "sft_steps": 0, "sft_lr": 1e-3},
}
# lmrl's time/<stage>_seconds metrics whose model FLOPs flops.step_flops counts ("step" is the
# total); any other timer grpo_step reports is shown too, with its FLOPs left blank.
STAGE_FLOPS = {"sample": "sample", "ref": "ref", "update": "update", "step": "total"}


# --------------------------------------------------------------------------- children

def make_task(spec: dict):
    from lmrl.tasks.sort_text import SortTextTask

    return SortTextTask(n=spec["n"], V=V, heldout_size=spec["heldout"], reward="positional")


def train_reward(spec: dict):
    """The training reward of both libraries: sort_text's positional (the default), or
    spec["reward"] = "module:function" importable from bench/ (long_rollouts.py's digit count),
    called as lmrl's and TRL's reward functions are, fn(prompts, completions, **columns)."""
    name = spec.get("reward", "positional")
    if name == "positional":
        from lmrl.tasks.sort_text import positional

        return positional
    module, function = name.split(":")
    return getattr(importlib.import_module(module), function)


def heldout_eval(spec: dict, model_dir: Path) -> dict:
    """lmrl's greedy held-out evaluation of a save_pretrained directory."""
    from lmrl.policies.hf import HFPolicy
    from lmrl.tasks.text import evaluate_text

    task = make_task(spec)
    policy = HFPolicy.from_pretrained(str(model_dir), dtype="float32", device="cpu",
                                      max_new_tokens=task.max_new_tokens)
    return evaluate_text(task, policy, num_logged=0)[0]


def peak_rss_mb() -> float:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def child_setup(spec: dict) -> dict:
    """The machine and its matmul ceiling, under the runs' thread settings."""
    import torch
    from flops import matmul_gflops

    flags = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    model = next((line.split(":", 1)[1].strip() for line in flags.splitlines()
                  if line.startswith("model name")), "unknown")
    machine = {"cpu": model, "cpus": os.cpu_count(), "torch": torch.__version__,
               "cpu_capability": torch.backends.cpu.get_cpu_capability(),
               "bf16_flags": sorted({f for f in flags.split() if f.startswith("amx")
                                     or f == "avx512_bf16"})}
    matmul = {dt: matmul_gflops(spec["matmul_sizes"], dt) for dt in ("float32", "bfloat16")}
    return {"machine": machine, "matmul": matmul}


def child_prepare(spec: dict) -> dict:
    """The shared start: init_model, then (sft_steps > 0) an lmrl SFT warm start."""
    from transformers import AutoTokenizer

    from lmrl.modelzoo import init_model, task_alphabet

    task, root = make_task(spec), Path(spec["dir"])
    params = init_model(root / "init", task_alphabet(task), hidden_size=spec["hidden"],
                        num_layers=spec["layers"], num_heads=spec["heads"], seed=0)
    start, sft = root / "init", None
    if spec["sft_steps"]:
        from lmrl.sft import run_sft

        summary = run_sft(root / "init", task, root / "sft", device="cpu", dtype="float32",
                          overwrite=True, steps=spec["sft_steps"], lr=spec["sft_lr"], stop_at=0.3,
                          eval_every=10, progress=False)
        start, sft = root / "sft", {k: summary[k] for k in ("sft/steps", "eval/exact_match")}
    prompt = AutoTokenizer.from_pretrained(start)(task.heldout[0]["prompt"])["input_ids"]
    return {"start": str(start), "params": params, "sft": sft, "prompt_len": len(prompt),
            "max_new_tokens": task.max_new_tokens,
            "config": json.loads((start / "config.json").read_text()),
            "start_eval": heldout_eval(spec, start)}


def child_lmrl(spec: dict) -> dict:
    from lmrl.config import Config
    from lmrl.state import build_policy, build_state
    from lmrl.step import grpo_step
    from lmrl.trainer import build_task

    cfg = Config().replace(
        task={"task": "sort_text", "n": spec["n"], "V": V, "heldout_size": spec["heldout"],
              "reward": "positional"},
        policy={"model": spec["start"], "dtype": spec.get("dtype", "float32"), "device": "cpu",
                "max_new_tokens": spec["max_new_tokens"], "temperature": 1.0,
                "forward": spec["forward"], "compile": lmrl_compile(spec),
                "min_new_tokens": spec.get("min_new_tokens", 0)},
        algo={"delta": "normalized", "norm_eps": 1e-4, "loss": "clipped", "clip_eps": 0.2,
              "kl_weight": spec["kl"], "mu": 1, "aggregation": "token_mean"},
        train={"B": B, "G": G, "lr": spec["lr"], "schedule": "constant", "warmup_steps": 0,
               "weight_decay": 0.0, "grad_clip": 1.0, "steps": spec["steps"],
               "seed": spec["seed"], "threads": spec["threads"],
               "grad_accum": spec.get("grad_accum", 1)})
    task = build_task(cfg)
    if spec.get("reward", "positional") != "positional":  # the sort rewards stay, logged only
        from lmrl.tasks.text import RewardFn

        fn = train_reward(spec)
        task.rewards = [RewardFn(r.name, r.fn, 0.0) for r in task.rewards] + \
            [RewardFn(fn.__name__, fn, 1.0)]
    state = build_state(cfg, build_policy(cfg, task.max_new_tokens))
    decisions: list[str] = []  # the compile decision lines `lmrl train` would print
    plan = compile_plan(state, cfg, decisions)
    run_dir = Path(spec["run_dir"])
    rows, ends = [], []
    t0 = time.perf_counter()
    with (run_dir / "metrics.jsonl").open("w") as log:
        for step in range(1, spec["steps"] + 1):
            metrics = grpo_step(state, task, cfg)
            follow_plan(plan, state, metrics["time/step_seconds"], spec["steps"] - step,
                        decisions)
            log.write(json.dumps({"step": step, **metrics}) + "\n")
            ends.append(time.perf_counter())
            rows.append(metrics)
    peak = peak_rss_mb()
    plan.finish()  # what a user's run leaves: a compiled run records the shape for auto
    if spec.get("heldout_eval", True):
        state.policy.save_pretrained(run_dir / "model")
    return {"step_seconds": intervals(t0, ends), "peak_rss_mb": peak,
            "tokens": [r["train/response_tokens"] * B * G for r in rows],
            "train_reward": [r["train/reward_mean"] for r in rows],
            "stages": {k[5:-8]: [r[k] for r in rows] for k in rows[0]
                       if k.startswith("time/") and k.endswith("_seconds")},
            "metrics": {k: [r.get(k) for r in rows] for k in spec.get("record", [])},
            "settings_seen": {"autocast": str(state.policy.autocast),
                              "compile": state.policy.compile,
                              "compile_setting": cfg.policy.compile,
                              "compile_decision": decisions[-1] if decisions else None,
                              "min_new_tokens": getattr(state.policy, "min_new_tokens", None),
                              "max_new_tokens": getattr(state.policy, "max_new_tokens", None)},
            "eval": heldout_eval(spec, run_dir / "model")
            if spec.get("heldout_eval", True) else None}


def lmrl_compile(spec: dict) -> str:
    """policy.compile for the lmrl child: on, off or auto (a bool from older specs)."""
    value = spec.get("compile", "off")
    return {True: "on", False: "off"}.get(value, value)


def compile_plan(state, cfg, decisions: list[str]):
    """policy.compile as `lmrl train` applies it (trainer.py): on, off, or auto, decided before
    step 1 from this shape's record in $LMRL_CACHE_DIR or after an eager, timed step 1."""
    from lmrl import compiling

    plan = compiling.plan(cfg.policy.compile, state.policy, cfg.train.B, cfg.train.G)
    decisions.append(plan.start(cfg.train.steps, compiling.unsupported(state.policy)))
    print(decisions[-1], flush=True)
    compiling.apply(state, bool(plan.on))
    return plan


def follow_plan(plan, state, seconds: float, remaining: int, decisions: list[str]) -> None:
    from lmrl import compiling

    decided = plan.after_step(seconds, remaining)
    if decided is not None:
        decisions.append(decided)
        print(decided, flush=True)
        compiling.apply(state, bool(plan.on))


def intervals(t0: float, ends: list[float]) -> list[float]:
    return [b - a for a, b in zip([t0] + ends[:-1], ends, strict=True)]


# TRL settings that are not TRL's defaults, and why.
TRL_FAIR = {
    "bf16": False,  # default True: fp32 in both (--trl-bf16 turns it back on)
    "gradient_checkpointing": False,  # default True: lmrl keeps activations, so does TRL here
    "use_cpu": True,
    "lr_scheduler_type": "constant",  # default linear decay; lmrl's schedule=constant
    "use_bias_correction_kl": False,  # default True multiplies the k3 term by the ratio; lmrl's
    # KL term is plain k3 (equal in value at μ = 1, but the gradient differs)
    "report_to": "none", "save_strategy": "no", "disable_tqdm": True,
}


def child_trl(spec: dict) -> dict:
    import torch
    from datasets import Dataset
    from transformers import AutoTokenizer, TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    task, run_dir = make_task(spec), Path(spec["run_dir"])
    train_fn, accum = train_reward(spec), spec.get("grad_accum", 1)
    generator = torch.Generator().manual_seed(spec["seed"])
    # One fresh training prompt per (step, prompt), as lmrl draws them (never a held-out one).
    data = Dataset.from_list([task.train_example(generator)
                              for _ in range(spec["steps"] * B)])
    # (completion tokens, mean reward, shortest, longest completion) per reward call
    seen: list[tuple[int, float, int, int]] = []

    def reward(prompts, completions, completion_ids, **columns):
        if not all(isinstance(c, str) for c in completions):
            raise TypeError(f"TRL passed {type(completions[0])}, expected plain strings")
        values = train_fn(prompts, completions, **columns)
        lengths = [len(ids) for ids in completion_ids]
        seen.append((sum(lengths), sum(values) / len(values), min(lengths), max(lengths)))
        return values
    reward.__name__ = train_fn.__name__

    class StepTimer(TrainerCallback):
        """Step ends, and each optimizer step's stages in lmrl's terms: prepare (TRL's
        _prepare_inputs: generation, rewards, advantages), logprob (compute_loss: the forward
        and the loss), backward (the rest of training_step), optimizer (clipping and the
        optimizer's step: from the last training_step's end to on_optimizer_step)."""

        def __init__(self) -> None:
            self.start: float | None = None
            self.ends: list[float] = []
            self.stages: dict[str, list[float]] = {
                k: [] for k in ("prepare", "logprob", "backward", "optimizer")}
            self.acc = dict.fromkeys(self.stages, 0.0)
            self.last_micro_end = 0.0

        def on_step_begin(self, args, state, control, **kwargs):
            self.start = self.start or time.perf_counter()

        def on_optimizer_step(self, args, state, control, **kwargs):
            self.acc["optimizer"] += time.perf_counter() - self.last_micro_end

        def on_step_end(self, args, state, control, **kwargs):
            self.ends.append(time.perf_counter())
            for k, v in self.acc.items():
                self.stages[k].append(v)
            self.acc = dict.fromkeys(self.stages, 0.0)

        def wrap(self, obj, name: str, stage: str | None) -> None:
            """Time obj.name's calls into `stage` (None: a micro-batch's whole training_step,
            whose time not in prepare or logprob is its backward)."""
            method = getattr(obj, name)

            def timed(*args, **kwargs):
                t0 = time.perf_counter()
                before = self.acc["prepare"] + self.acc["logprob"]
                try:
                    return method(*args, **kwargs)
                finally:
                    now = time.perf_counter()
                    if stage is None:
                        inner = self.acc["prepare"] + self.acc["logprob"] - before
                        self.acc["backward"] += now - t0 - inner
                        self.last_micro_end = now
                    else:
                        self.acc[stage] += now - t0
            setattr(obj, name, timed)

    args = GRPOConfig(
        output_dir=str(run_dir / "trl"), max_steps=spec["steps"], seed=spec["seed"],
        # One generation of B·G completions per optimizer step, in `accum` micro-batches.
        per_device_train_batch_size=B * G // accum, gradient_accumulation_steps=accum,
        num_generations=G,
        max_completion_length=spec["max_new_tokens"], temperature=1.0, top_p=1.0, top_k=0,
        learning_rate=spec["lr"], warmup_steps=0, weight_decay=0.0, max_grad_norm=1.0,
        beta=spec["kl"], num_iterations=1, epsilon=0.2, loss_type="dapo",
        scale_rewards="group", model_init_kwargs={"dtype": "float32"},
        torch_compile=spec.get("compile", False),
        generation_kwargs={"min_new_tokens": spec["min_new_tokens"]}
        if spec.get("min_new_tokens") else None,
        **{**TRL_FAIR, "bf16": spec.get("dtype") == "bf16"})
    timer = StepTimer()
    trainer = GRPOTrainer(model=spec["start"], reward_funcs=[reward], args=args,
                          train_dataset=data, callbacks=[timer],
                          processing_class=AutoTokenizer.from_pretrained(spec["start"]))
    generate_seconds: list[float] = []  # TRL's sampling stage, timed around model.generate
    generate = trainer.model.generate

    def timed_generate(*args, **kwargs):
        t0 = time.perf_counter()
        try:
            return generate(*args, **kwargs)
        finally:
            generate_seconds.append(time.perf_counter() - t0)
    trainer.model.generate = timed_generate
    timer.wrap(trainer, "_prepare_inputs", "prepare")
    timer.wrap(trainer, "compute_loss", "logprob")
    timer.wrap(trainer, "training_step", None)
    trainer.train()
    peak = peak_rss_mb()
    model = trainer.model  # the Trainer turns checkpointing on in train(), so look after it
    checkpointing = getattr(model, "is_activation_checkpointing", None)
    if checkpointing is None:  # transformers < 5.24
        checkpointing = model.is_gradient_checkpointing
    if spec.get("heldout_eval", True):
        trainer.model.save_pretrained(run_dir / "model")
        trainer.processing_class.save_pretrained(run_dir / "model")
    return {"step_seconds": intervals(timer.start, timer.ends), "peak_rss_mb": peak,
            "tokens": [s[0] for s in seen], "train_reward": [s[1] for s in seen],
            "length_range": [s[2:] for s in seen], "generate_seconds": generate_seconds,
            "trl_stages": timer.stages,
            "settings_seen": {"optimizer": type(trainer.optimizer.optimizer).__name__,
                              "fused": trainer.optimizer.optimizer.defaults.get("fused"),
                              "bf16": trainer.args.bf16, "dtype": str(model.dtype),
                              "activation_checkpointing": bool(checkpointing),
                              "reference_model": trainer.ref_model is not None,
                              "generation_kwargs": {k: trainer.generation_kwargs.get(k) for k in
                                                    ("max_new_tokens", "min_new_tokens")},
                              "gradient_accumulation_steps":
                              trainer.args.gradient_accumulation_steps},
            "eval": heldout_eval(spec, run_dir / "model")
            if spec.get("heldout_eval", True) else None}


CHILDREN = {"setup": child_setup, "prepare": child_prepare, "lmrl": child_lmrl,
            "trl": child_trl}


def child_main(kind: str, spec_path: str, result_path: str, children: dict | None = None
               ) -> None:
    import torch

    spec = json.loads(Path(spec_path).read_text())
    torch.set_num_threads(spec["threads"])
    result = (children or CHILDREN)[kind](spec)
    result["torch_threads"] = torch.get_num_threads()
    Path(result_path).write_text(json.dumps(result))


# --------------------------------------------------------------------------- the machine

def cpu_seconds() -> tuple[float, float]:
    """(busy, total) CPU seconds of the whole machine since boot, from /proc/stat."""
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:8]]
    tick = os.sysconf("SC_CLK_TCK")
    idle = fields[3] + fields[4]  # idle + iowait
    return (sum(fields) - idle) / tick, sum(fields) / tick


def wait_for_idle(threshold: float, window: float, timeout: float) -> dict:
    """Poll until the machine's CPU use over `window` seconds is below `threshold` (a fraction
    of all cores), or `timeout` passes; returns what was seen."""
    t0 = time.monotonic()
    while True:
        busy0, total0 = cpu_seconds()
        time.sleep(window)
        busy1, total1 = cpu_seconds()
        frac = (busy1 - busy0) / max(total1 - total0, 1e-9)
        waited = time.monotonic() - t0
        if frac < threshold or waited >= timeout:
            return {"waited_s": round(waited, 1), "busy_frac": round(frac, 3),
                    "loadavg": Path("/proc/loadavg").read_text().split()[:3],
                    "timed_out": frac >= threshold}


def child_env(threads: int, wait_policy: str | None) -> dict:
    """The same environment for every child: OpenMP and MKL read theirs at import."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("OMP_", "GOMP_", "KMP_", "MKL_"))}
    env.update(OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads),
               TOKENIZERS_PARALLELISM="false", HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1",
               HF_DATASETS_DISABLE_PROGRESS_BARS="1")
    if wait_policy:
        env["OMP_WAIT_POLICY"] = wait_policy
    return env


def run_child(kind: str, spec: dict, env: dict, workdir: Path, name: str,
              script: Path | None = None) -> tuple[dict, dict]:
    """Run one child (`script --child kind`, this file by default) to completion; returns its
    result and what the OS saw of it."""
    workdir.mkdir(parents=True, exist_ok=True)
    spec_path, result_path = workdir / f"{name}.spec.json", workdir / f"{name}.result.json"
    log_path = workdir / f"{name}.log"
    spec_path.write_text(json.dumps(spec, indent=1))
    result_path.unlink(missing_ok=True)
    busy0, _ = cpu_seconds()
    t0 = time.perf_counter()
    with log_path.open("w") as log:
        proc = subprocess.Popen([sys.executable, str(script or Path(__file__).resolve()),
                                 "--child", kind, str(spec_path), str(result_path)], env=env,
                                stdout=log,
                                stderr=subprocess.STDOUT)
        _, status, usage = os.wait4(proc.pid, 0)  # wait4: the child's own rusage
        proc.returncode = os.waitstatus_to_exitcode(status)
    wall = time.perf_counter() - t0
    busy1, _ = cpu_seconds()
    if proc.returncode != 0:
        tail = "".join(log_path.read_text().splitlines(keepends=True)[-25:])
        raise RuntimeError(f"{kind} child exited {proc.returncode}; log {log_path}:\n{tail}")
    cpu = usage.ru_utime + usage.ru_stime
    seen = {"wall_s": round(wall, 2), "cpu_s": round(cpu, 2),
            "maxrss_mb": round(usage.ru_maxrss / 1024, 1),
            # CPU that others used while the child ran, as a fraction of all cores
            "others_busy_frac": round(max(0.0, busy1 - busy0 - cpu) / (os.cpu_count() * wall), 3)}
    return json.loads(result_path.read_text()), seen


def trl_missing() -> str | None:
    """Why the TRL side cannot run, or None."""
    missing = [m for m in ("trl", "datasets", "accelerate") if importlib.util.find_spec(m) is None]
    return f"not importable: {', '.join(missing)} (pip install -e '.[bench]')" if missing else None


def versions() -> dict:
    out = {"python": sys.version.split()[0]}
    for pkg in ("torch", "transformers", "tokenizers", "trl", "accelerate", "datasets"):
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            out[pkg] = None
    return out


# --------------------------------------------------------------------------- summary

def summarize(runs: list[dict], lib: str, prep: dict, warmup: int, ceiling: float) -> dict:
    """Pool one library's repeats of one (size, n, KL) cell."""
    secs = [s for r in runs for s in r["step_seconds"][warmup:]]
    toks = [t for r in runs for t in r["tokens"][warmup:]]
    median_s = statistics.median(secs)
    mean_len = statistics.mean(toks) / (B * G)
    shape = ModelShape.from_hf_config(prep["config"])
    flops = step_flops(shape, B, G, prep["prompt_len"], [mean_len] * (B * G), runs[0]["kl"] > 0)
    out = {
        "lib": lib, "repeats": len(runs), "timed_steps": len(secs),
        "median_step_s": median_s, "completions_per_s": B * G / median_s,
        # Every step, the untimed first ones (and any compiling) included: what a run gets.
        "run_completions_per_s": sum(B * G * len(r["step_seconds"]) for r in runs)
        / sum(sum(r["step_seconds"]) for r in runs),
        "tokens_per_s": statistics.median(t / s for t, s in zip(toks, secs, strict=True)),
        "mean_completion_tokens": mean_len,
        "peak_rss_mb": max(r["peak_rss_mb"] for r in runs),
        "heldout_reward": statistics.mean(r["eval"]["eval/reward"] for r in runs),
        "heldout_exact_match": statistics.mean(r["eval"]["eval/exact_match"] for r in runs),
        "step_gflop": flops["total"] / 1e9,
        "ceiling_frac": flops["total"] / median_s / 1e9 / ceiling,
        # What lmrl's shared-prompt passes actually execute (TRL executes the standard count).
        "executed_ceiling_frac": (step_flops(shape, B, G, prep["prompt_len"],
                                             [mean_len] * (B * G), runs[0]["kl"] > 0,
                                             shared_prompt=lib == "lmrl")["total"]
                                  / median_s / 1e9 / ceiling),
        "others_busy_frac": max(r["os"]["others_busy_frac"] for r in runs),
    }
    if "stages" in runs[0]:
        out["stages"] = {}
        for stage in runs[0]["stages"]:
            seconds = statistics.median(x for r in runs for x in r["stages"][stage][warmup:])
            gflop = flops[STAGE_FLOPS[stage]] / 1e9 if stage in STAGE_FLOPS else None
            frac = gflop / seconds / ceiling if gflop is not None and seconds > 0 else None
            out["stages"][stage] = {"seconds": seconds, "gflop": gflop, "ceiling_frac": frac}
    return out


RATIO_KEYS = ["median_step_s", "completions_per_s", "tokens_per_s", "peak_rss_mb",
              "heldout_reward", "heldout_exact_match"]


def ceiling_text(report: dict) -> str:
    """Which ceiling each library's step was divided by."""
    dtypes = report["settings"]["ceiling_dtypes"]
    return ", ".join(f"{lib} {value:.0f} GFLOP/s ({dtypes[lib]})"
                     for lib, value in report["ceiling_gflops"].items())


def markdown(report: dict) -> str:
    m, s = report["machine"], report["settings"]
    lines = [
        "# lmrl vs TRL GRPOTrainer", "",
        f"Machine: {m['cpu']}, {m['cpus']} CPUs, torch {m['torch']} ({m['cpu_capability']}; "
        f"bf16 flags: {', '.join(m['bf16_flags']) or 'none'}); versions "
        + ", ".join(f"{k} {v}" for k, v in report["versions"].items()) + ".",
        f"Command: `{report['command']}`; threads {s['threads']}, OMP_WAIT_POLICY "
        f"{s['omp_wait_policy'] or 'unset'}; B={B} x G={G}; first {s['warmup']} steps of each "
        "run untimed.", ""]
    if report.get("trl_skipped"):
        lines += [f"**TRL side skipped: {report['trl_skipped']}.**", ""]
    lines += ["| model | n | KL | library | s/step | completions/s | tokens/s | peak RSS MB | "
              "held-out reward | held-out exact match | % ceiling (standard FLOPs) | "
              "% ceiling (executed FLOPs) | others' CPU |",
              "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for cell in report["cells"]:
        head = f"| {cell['size']} | {cell['n']} | {cell['kl']} "
        for r in cell["libs"].values():
            lines.append(head + f"| {r['lib']} | {r['median_step_s']:.3f} | "
                         f"{r['completions_per_s']:.0f} | {r['tokens_per_s']:.0f} | "
                         f"{r['peak_rss_mb']:.0f} | {r['heldout_reward']:.3f} | "
                         f"{r['heldout_exact_match']:.3f} | {100 * r['ceiling_frac']:.1f} | "
                         f"{100 * r.get('executed_ceiling_frac', r['ceiling_frac']):.1f} | "
                         f"{100 * r['others_busy_frac']:.0f}% |")
        if "ratio" in cell:
            q = cell["ratio"]
            lines.append(head + "| **lmrl / TRL** | " + " | ".join(
                "n/a" if q[k] is None else f"**{q[k]:.2f}x**" for k in RATIO_KEYS) + " | | | |")
    lines += ["", "Whole runs (every step, the untimed first ones and any compiling included), "
              "completions/s:", ""]
    for cell in report["cells"]:
        rates = {lib: r.get("run_completions_per_s") for lib, r in cell["libs"].items()}
        text = ", ".join(f"{lib} {v:.1f}" for lib, v in rates.items() if v)
        if all(rates.get(lib) for lib in ("lmrl", "trl")):
            text += f" (**{rates['lmrl'] / rates['trl']:.2f}x**)"
        lines.append(f"- {cell['size']} n={cell['n']} KL={cell['kl']}: {text}")
    lines += ["", "Matmul ceiling (square matmuls, best of reps, GFLOP/s):", "",
              "| n | " + " | ".join(report["matmul"]) + " |",
              "|---|" + "---|" * len(report["matmul"])]
    for n in next(iter(report["matmul"].values())):
        lines.append(f"| {n} | " + " | ".join(f"{v[n]:.0f}" for v in report["matmul"].values())
                     + " |")
    lines += ["", "Ceiling used: " + ceiling_text(report) + ".", ""]
    lines += stage_table(report["cells"])
    lines += ["", "| model | parameters | layers x hidden (heads) | prompt / completion tokens | "
              "start held-out exact match |", "|---|---|---|---|---|"]
    for key, p in report["models"].items():
        c = p["config"]
        lines.append(f"| {key} | {p['params']:,} | {c['num_hidden_layers']} x "
                     f"{c['hidden_size']} ({c['num_attention_heads']}) | {p['prompt_len']} / "
                     f"<= {p['max_new_tokens']} | {p['start_eval']['eval/exact_match']:.3f} |")
    return "\n".join(lines) + "\n"


def stage_table(cells: list[dict]) -> list[str]:
    """lmrl's step by stage: median seconds; model GFLOP and % of the ceiling where counted."""
    staged = [c for c in cells if c["libs"].get("lmrl", {}).get("stages")]
    if not staged:
        return []
    names = list(staged[0]["libs"]["lmrl"]["stages"])
    lines = ["lmrl's step by stage (median seconds; model GFLOP; % of lmrl's ceiling):", "",
             "| model | n | KL | " + " | ".join(names) + " |",
             "|---|---|---|" + "---|" * len(names)]
    for cell in staged:
        st = cell["libs"]["lmrl"]["stages"]
        parts = []
        for name in names:
            s = st.get(name)
            if s is None:
                parts.append("")
            elif s["gflop"] is None:
                parts.append(f"{s['seconds']:.4f} s")
            else:
                parts.append(f"{s['seconds']:.4f} s; {s['gflop']:.2f}; "
                             f"{100 * (s['ceiling_frac'] or 0):.0f}%")
        lines.append(f"| {cell['size']} | {cell['n']} | {cell['kl']} | " + " | ".join(parts)
                     + " |")
    return lines


# --------------------------------------------------------------------------- the comparison

def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--smoke", action="store_true",
                   help="tiny model, 2 steps, 16 held-out prompts, no idle wait, no SFT")
    p.add_argument("--sizes", nargs="+", choices=list(SIZES), default=None)
    p.add_argument("--n", nargs="+", type=int, default=None, help="sort_text n (default 4 5)")
    p.add_argument("--kl", nargs="+", type=float, default=None, help="KL weights (0 0.04)")
    p.add_argument("--libs", nargs="+", choices=["lmrl", "trl"], default=["lmrl", "trl"])
    p.add_argument("--steps", type=int, default=None, help="override each size's step count")
    p.add_argument("--sft-steps", type=int, default=None,
                   help="cap of the SFT warm start's steps (0: start from the random init)")
    p.add_argument("--repeats", type=int, default=None, help="runs per library per cell (2)")
    p.add_argument("--warmup", type=int, default=None, help="untimed steps per run (3)")
    p.add_argument("--heldout", type=int, default=None, help="held-out prompts (500)")
    p.add_argument("--threads", type=int, default=None, help="default: all CPUs (smoke: 1)")
    p.add_argument("--lmrl-forward", default="auto", choices=["auto", "lmrl", "transformers"],
                   help="lmrl's policy.forward (transformers: lmrl's step on HF modules)")
    p.add_argument("--lmrl-compile", nargs="?", const="on", default="off",
                   choices=["off", "on", "auto"],
                   help="lmrl's policy.compile: on (the flag alone; compiling takes the first "
                        "step), off, or auto, what `lmrl train` does with no flags (decided from "
                        "$LMRL_CACHE_DIR's record of the shape, else after an eager step 1)")
    p.add_argument("--trl-compile", action="store_true",
                   help="TRL's torch_compile (the Trainer compiles the model it trains)")
    p.add_argument("--lmrl-dtype", default="float32", choices=["float32", "autocast"],
                   help="lmrl's policy.dtype (autocast: bf16 matmuls on float32 weights; not "
                        "the fp32 comparison of the issue)")
    p.add_argument("--trl-bf16", action="store_true",
                   help="TRL's bf16=True (its default; bf16 autocast on float32 weights)")
    p.add_argument("--omp-wait-policy", default=None, help="OMP_WAIT_POLICY for every child")
    p.add_argument("--idle-threshold", type=float, default=0.1,
                   help="wait until others use less than this fraction of all cores")
    p.add_argument("--idle-timeout", type=float, default=900.0)
    p.add_argument("--out", default=None, help="results directory (default bench/results; "
                                               "smoke: bench/results/runs/vs_trl_smoke)")
    p.add_argument("--child", nargs=3, metavar=("KIND", "SPEC", "RESULT"), help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    defaults = ({"sizes": ["smoke"], "n": [4], "kl": [0.04], "repeats": 1, "warmup": 0,
                 "heldout": 16, "threads": 1} if a.smoke else
                {"sizes": ["tiny", "20M"], "n": [4, 5], "kl": [0.0, 0.04], "repeats": 2,
                 "warmup": 3, "heldout": 500, "threads": len(os.sched_getaffinity(0))
                 if hasattr(os, "sched_getaffinity") else os.cpu_count()})
    for key, value in defaults.items():
        if getattr(a, key) is None:
            setattr(a, key, value)
    a.out = Path(a.out or (RESULTS / "runs" / "vs_trl_smoke" if a.smoke else RESULTS))
    return a


def prepare(a, size: str, n: int, env: dict, work: Path) -> dict:
    """The shared start of one (size, n), reused while its spec is unchanged."""
    shape = SIZES[size]
    spec = {"dir": str(work / f"{size}_n{n}"), "n": n, "heldout": a.heldout,
            "threads": a.threads, **{k: shape[k] for k in ("layers", "hidden", "heads",
                                                           "sft_steps", "sft_lr")}}
    if a.sft_steps is not None:
        spec["sft_steps"] = a.sft_steps
    cached = Path(spec["dir"]) / "prepared.json"
    # The directory itself may differ (another --out with a link to this one): same model.
    same = {k: v for k, v in spec.items() if k != "dir"}
    if cached.is_file() and not a.smoke and \
            {k: v for k, v in json.loads(cached.read_text())["spec"].items() if k != "dir"} == same:
        return json.loads(cached.read_text())["prep"]
    print(f"preparing {size} n={n} (init-model" + (", SFT)" if spec["sft_steps"] else ")"),
          flush=True)
    prep, _ = run_child("prepare", spec, env, work / "logs", f"prepare_{size}_n{n}")
    cached.write_text(json.dumps({"spec": spec, "prep": prep}))
    return prep


def idle(a) -> dict:
    """Wait for an idle machine (not in smoke mode); returns what was seen."""
    if a.smoke:
        return {"skipped": True, "loadavg": Path("/proc/loadavg").read_text().split()[:3]}
    return wait_for_idle(a.idle_threshold, 2.0, a.idle_timeout)


def run_cell(a, libs: list[str], size: str, n: int, kl: float, prep: dict, env: dict,
             work: Path, ceiling: dict[str, float], flip: bool) -> tuple[dict, list[dict]]:
    """One (size, n, KL) cell: the libraries alternate (A B A B, or B A B A when flip)."""
    order = libs[::-1] if flip else libs
    runs: list[dict] = []
    for rep in range(a.repeats):
        for lib in order:
            name = f"{lib}_{size}_n{n}_kl{kl}_r{rep}"
            spec = {"n": n, "kl": kl, "seed": rep, "start": prep["start"],
                    "steps": a.steps or SIZES[size]["steps"], "lr": SIZES[size]["lr"],
                    "heldout": a.heldout, "threads": a.threads,
                    "max_new_tokens": prep["max_new_tokens"], "forward": a.lmrl_forward,
                    "compile": a.lmrl_compile if lib == "lmrl" else a.trl_compile,
                    "dtype": a.lmrl_dtype if lib == "lmrl" else
                    ("bf16" if a.trl_bf16 else "float32"),
                    "run_dir": str(work / name)}
            Path(spec["run_dir"]).mkdir(parents=True, exist_ok=True)
            before = idle(a)
            result, seen = run_child(lib, spec, env, work / "logs", name)
            runs.append({"lib": lib, "size": size, "n": n, "kl": kl, "rep": rep,
                         "idle": before, "os": seen, **result})
            print(f"{name}: median {statistics.median(result['step_seconds']):.3f} s/step, "
                  f"held-out exact match {result['eval']['eval/exact_match']:.3f}", flush=True)
    summary = {lib: summarize([r for r in runs if r["lib"] == lib], lib, prep, a.warmup,
                              ceiling[lib]) for lib in libs}
    cell = {"size": size, "n": n, "kl": kl, "libs": summary}
    if len(summary) == 2:
        cell["ratio"] = {k: summary["lmrl"][k] / summary["trl"][k] if summary["trl"][k] else None
                         for k in RATIO_KEYS}
    return cell, runs


def main(argv: list[str] | None = None) -> dict | None:
    a = parse_args(argv)
    if a.child:
        return child_main(*a.child)
    libs = list(a.libs)
    skipped = trl_missing() if "trl" in libs else None
    if skipped:
        print(f"TRL side skipped: {skipped}", flush=True)
        libs.remove("trl")
    env = child_env(a.threads, a.omp_wait_policy)
    work = a.out if a.smoke else a.out / "runs" / "vs_trl"
    idle_setup = idle(a)
    sizes = [64, 128] if a.smoke else [256, 512, 1024, 2048]
    setup, _ = run_child("setup", {"threads": a.threads, "matmul_sizes": sizes}, env,
                         work / "logs", "setup")
    setup["matmul"] = {dt: {int(k): v for k, v in g.items()} for dt, g in setup["matmul"].items()}
    # Each library's step against the ceiling of the dtype its matmuls run in.
    dtypes = {"lmrl": "bfloat16" if a.lmrl_dtype == "autocast" else "float32",
              "trl": "bfloat16" if a.trl_bf16 else "float32"}
    ceiling = {lib: max(setup["matmul"][dt].values()) for lib, dt in dtypes.items()}
    print(f"matmul ceiling {ceiling} GFLOP/s ({a.threads} threads)", flush=True)
    models, cells, runs = {}, [], []
    for size in a.sizes:
        for n in a.n:
            prep = models[f"{size} n={n}"] = prepare(a, size, n, env, work)
            for kl in a.kl:
                cell, cell_runs = run_cell(a, libs, size, n, kl, prep, env, work, ceiling,
                                           flip=len(cells) % 2 == 1)
                cells.append(cell)
                runs += cell_runs
    report = {"command": " ".join([Path(sys.executable).name, *sys.argv]) if argv is None
              else "vs_trl.py " + " ".join(argv),
              "machine": setup["machine"], "versions": versions(), "trl_skipped": skipped,
              "settings": {"threads": a.threads, "omp_wait_policy": a.omp_wait_policy,
                           "warmup": a.warmup, "repeats": a.repeats, "heldout": a.heldout,
                           "B": B, "G": G, "V": V, "sizes": {s: SIZES[s] for s in a.sizes},
                           "trl_overrides": {**TRL_FAIR, "bf16": a.trl_bf16},
                           "idle_threshold": a.idle_threshold,
                           "lmrl_forward": a.lmrl_forward, "lmrl_compile": a.lmrl_compile,
                           "trl_compile": a.trl_compile, "lmrl_dtype": a.lmrl_dtype,
                           "trl_bf16": a.trl_bf16, "ceiling_dtypes": dtypes},
              "idle_before_setup": idle_setup, "matmul": setup["matmul"],
              "ceiling_gflops": ceiling, "models": models, "cells": cells, "runs": runs}
    a.out.mkdir(parents=True, exist_ok=True)
    (a.out / "vs_trl.json").write_text(json.dumps(report, indent=1))
    table = markdown(report)
    (a.out / "vs_trl.md").write_text(table)
    print(table)
    return report


if __name__ == "__main__":
    main()
