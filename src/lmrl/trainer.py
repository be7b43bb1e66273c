"""The outer loop: step, log, evaluate, checkpoint; and the run directory it writes.

Run directory:
    config.json       the exact Config the code read
    metrics.jsonl     one line per step (flat slash-separated keys); step 0 is the untrained eval
    samples.jsonl     text tasks: held-out completions at each evaluation (step, prompt,
                      completion, each reward)
    summary.json      final eval/* metrics, wall_seconds, steps
    reward.png        train and held-out reward and exact match per step
    model.safetensors final toy policy weights
    model/            final causal LM and tokenizer (save_pretrained; lmrl eval / train --model)
    checkpoint.pt     full TrainState (resume with --resume)
"""

import json
import shutil
import time
from pathlib import Path

import torch
from safetensors.torch import save_file
from tqdm import tqdm

from lmrl.config import Config, ConfigError, describe
from lmrl.logging import MetricsLogger, read_metrics
from lmrl.plotting import plot_run
from lmrl.state import TrainState, build_policy, build_state
from lmrl.step import grpo_step
from lmrl.tasks import build_task as build_task_from
from lmrl.tasks.sort import SortTask, evaluate_sort
from lmrl.threads import configure_threads


def build_task(cfg: Config):
    """The config's task; a task that rejects its settings raises ConfigError."""
    try:
        return build_task_from(cfg.task)
    except ValueError as err:
        raise ConfigError(f"task {cfg.task.task}: {err}") from err


def evaluate(state: TrainState, task, cfg: Config) -> tuple[dict[str, float], list[dict]]:
    """Held-out metrics and (text tasks) a few sample completions."""
    state.policy.eval()
    if isinstance(task, SortTask):
        metrics, samples = evaluate_sort(task, state.policy, cfg.log.eval_samples or cfg.train.G,
                                         state.eval_generator), []
    else:
        from lmrl.tasks.text import evaluate_text

        metrics, samples = evaluate_text(task, state.policy, state.eval_generator,
                                         num_samples=cfg.log.eval_samples,
                                         max_examples=cfg.log.eval_limit or None,
                                         num_logged=cfg.log.log_samples)
    state.policy.train()
    return metrics, samples


def _clip(text: str, width: int = 100, tail: bool = False) -> str:
    """Long prompts show their end (where the question is), long completions their start."""
    if len(text) <= width:
        return text
    return "…" + text[-width:] if tail else text[:width] + "…"


class SampleLog:
    """samples.jsonl, plus the same completions on the console (above the progress bar)."""

    def __init__(self, run_dir: Path, append: bool, echo: bool) -> None:
        self._file = (run_dir / "samples.jsonl").open("a" if append else "w")
        self.echo = echo

    def write(self, step: int, samples: list[dict]) -> None:
        for sample in samples:
            self._file.write(json.dumps({"step": step, **sample}) + "\n")
            if self.echo:
                rewards = " ".join(f"{k}={v:g}" for k, v in sample.items()
                                   if k not in ("prompt", "completion"))
                tqdm.write(f"  [step {step}] {_clip(sample['prompt'], tail=True)!r} -> "
                           f"{_clip(sample['completion'])!r}  {rewards}")
        self._file.flush()

    def close(self) -> None:
        self._file.close()


def prepare_run_dir(cfg: Config) -> Path:
    run_dir = Path(cfg.log.run_dir or time.strftime("runs/%Y%m%d-%H%M%S"))
    if run_dir.exists() and any(run_dir.iterdir()) and not (cfg.log.overwrite or cfg.log.resume):
        raise FileExistsError(f"run directory {run_dir} is not empty; pass --overwrite to replace "
                              "it, --resume to continue it, or choose another --run-dir")
    if cfg.log.resume and not (run_dir / "checkpoint.pt").is_file():
        raise FileNotFoundError(f"--resume: {run_dir / 'checkpoint.pt'} does not exist; start the "
                                "run without --resume or point --run-dir at an earlier run")
    if run_dir.exists() and cfg.log.overwrite:
        shutil.rmtree(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    return run_dir


def save_checkpoint(state: TrainState, cfg: Config, run_dir: Path) -> None:
    """checkpoint.pt (everything, to resume), and the policy in its loadable form: toy weights
    as model.safetensors, a causal LM as model/ (save_pretrained, for lmrl eval / --model)."""
    tmp = run_dir / "checkpoint.pt.tmp"
    torch.save({"state": state.state_dict(), "config": cfg.to_dict()}, tmp)
    tmp.replace(run_dir / "checkpoint.pt")  # atomic: a crash never leaves half a checkpoint
    if cfg.is_toy:
        save_file({k: v.contiguous() for k, v in state.policy.state_dict().items()},
                  run_dir / "model.safetensors")
    else:
        state.policy.save_pretrained(run_dir / "model")


# What a resumed run may change: how long it runs and how it logs. Anything else would make the
# run directory a record of a run that never happened.
# Where and how it runs (device, threads, which forward code) may change too: the math is the
# same (up to float rounding).
RESUMABLE_CHANGES = {("train", "steps"), ("train", "time_limit"), ("train", "threads"),
                     ("policy", "device"), ("policy", "forward"),
                     ("policy", "compile")}


def check_resumable(saved: dict, cfg: Config) -> None:
    new = cfg.to_dict()
    changed = [f"{g}.{k}: {v!r} -> {new[g][k]!r}" for g, fields in saved.items() if g != "log"
               for k, v in fields.items() if new[g][k] != v and (g, k) not in RESUMABLE_CHANGES]
    if changed:
        raise ConfigError("--resume with a different config: " + "; ".join(changed) +
                          ". Only train.steps, train.time_limit, train.threads, policy.device "
                          "and log.* may change on resume.")
    if new["train"]["steps"] != saved["train"]["steps"]:
        print(f"note: steps {saved['train']['steps']} -> {new['train']['steps']}: the learning-"
              "rate schedule is recomputed for the new length from the current step on")


def _sample_step(line: str) -> float:
    """The step of a samples.jsonl line; a crash can leave half a line, which is dropped."""
    try:
        return json.loads(line)["step"]
    except json.JSONDecodeError:
        return float("inf")


def resume(state: TrainState, cfg: Config, run_dir: Path) -> None:
    """Restore the state and drop metric rows logged after the checkpoint."""
    # On the CPU first: load_state_dict moves each tensor to where the live one is, so a GPU
    # run resumes on a CPU-only machine and no second copy lands on the GPU.
    ckpt = torch.load(run_dir / "checkpoint.pt", weights_only=False, map_location="cpu")
    check_resumable(ckpt["config"], cfg)
    state.load_state_dict(ckpt["state"])
    rows = [r for r in read_metrics(run_dir) if r["step"] <= state.step]
    (run_dir / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    samples_path = run_dir / "samples.jsonl"
    if samples_path.is_file():
        kept = [line for line in samples_path.read_text().splitlines()
                if _sample_step(line) <= state.step]
        samples_path.write_text("".join(line + "\n" for line in kept))


def train(cfg: Config, policy: torch.nn.Module | None = None, task=None,
          verbose: bool = True) -> dict:
    """Run a whole training job; returns the summary (also written to summary.json)."""
    configure_threads(cfg.train.threads, "toy" if cfg.is_toy else "lm")
    task = task if task is not None else build_task(cfg)
    if cfg.log.eval_samples and getattr(task, "correctness", "") is None:
        raise ConfigError("log.eval_samples asks for pass@k, but this task has no correctness "
                          "reward (name one of your reward functions `correct`); drop it")
    run_dir = prepare_run_dir(cfg)
    if policy is None:
        policy = build_policy(cfg, getattr(task, "max_new_tokens", 64))
    state = build_state(cfg, policy)
    if cfg.log.resume:
        resume(state, cfg, run_dir)
    (run_dir / "config.json").write_text(cfg.to_json())
    say = print if verbose else (lambda *_: None)
    say(describe(cfg) + f"\nrun directory: {run_dir}")

    logger = MetricsLogger(run_dir, tensorboard=cfg.log.logger == "tensorboard",
                           append=cfg.log.resume)
    sample_log = SampleLog(run_dir, append=cfg.log.resume, echo=verbose)
    last_eval: dict[str, float] = {}
    if state.step == 0:
        last_eval, samples = evaluate(state, task, cfg)
        logger.log(0, last_eval)
        sample_log.write(0, samples)
    t_start = time.perf_counter()
    bar = tqdm(total=cfg.train.steps, initial=state.step, disable=not cfg.log.progress,
               desc="train", dynamic_ncols=True, mininterval=1.0)
    while state.step < cfg.train.steps:
        metrics = grpo_step(state, task, cfg)
        elapsed = time.perf_counter() - t_start
        out_of_time = 0 < cfg.train.time_limit <= elapsed
        if state.step % cfg.log.eval_every == 0 or state.step == cfg.train.steps or out_of_time:
            last_eval, samples = evaluate(state, task, cfg)
            metrics.update(last_eval)
            sample_log.write(state.step, samples)
        metrics["time/elapsed_seconds"] = elapsed
        logger.log(state.step, metrics)
        bar.update(1)
        bar.set_postfix(reward=f"{metrics['train/reward_mean']:.3f}",
                        heldout=f"{headline(last_eval):.3f}",
                        refresh=False)  # redraw at tqdm's own interval, not every step
        if cfg.log.save_every and state.step % cfg.log.save_every == 0:
            save_checkpoint(state, cfg, run_dir)
        if out_of_time:
            break
    bar.close()
    logger.close()
    sample_log.close()

    wall = time.perf_counter() - t_start
    summary = finish(state, task, cfg, run_dir, wall, last_eval)
    say(format_summary(summary, run_dir))
    return summary


def finish(state: TrainState, task, cfg: Config, run_dir: Path, wall: float,
           last_eval: dict[str, float]) -> dict:
    save_checkpoint(state, cfg, run_dir)
    final = last_eval or evaluate(state, task, cfg)[0]
    summary = {**final, "steps": state.step, "wall_seconds": wall,
               "run_dir": str(run_dir)}
    (run_dir / "summary.json").write_text(json.dumps(summary, indent=2))
    plot_run(run_dir)
    return summary


def headline(metrics: dict[str, float]) -> float:
    """The number a run is judged by: held-out exact match, or held-out reward if the task has
    no notion of a right answer."""
    return metrics.get("eval/exact_match", metrics.get("eval/reward", float("nan")))


def format_summary(summary: dict, run_dir: Path) -> str:
    first = [k for k in ("eval/exact_match",) if k in summary]
    keys = first + sorted(k for k in summary if k.startswith("eval/") and k not in first) + \
        ["steps", "wall_seconds"]
    width = max(len(k) for k in keys)
    lines = ["", "summary"] + [
        f"  {k:<{width}}  {summary[k]:.4f}" if isinstance(summary[k], float)
        else f"  {k:<{width}}  {summary[k]}" for k in keys
    ]
    lines.append(f"  plot: {run_dir / 'reward.png'}")
    return "\n".join(lines)
