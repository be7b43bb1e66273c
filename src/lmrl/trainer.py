"""The outer loop: step, log, evaluate, checkpoint; and the run directory it writes.

Run directory:
    config.json       the exact Config the code read
    config.yaml       the same as YAML (lmrl train --config DIR/config.yaml repeats the run)
    metrics.jsonl     one line per step (flat slash-separated keys); step 0 is the untrained eval
    samples.jsonl     text tasks: held-out completions at each evaluation (step, prompt,
                      completion, each reward)
    summary.json      final eval/* metrics, wall_seconds, steps
    preflight.json    what step 1's batch looked like before training (preflight.py)
    warnings.jsonl    the warnings given: a run that cannot learn (step, check, message)
    reward.png        train and held-out reward and exact match per step
    model.safetensors toy policy weights (of the newest checkpoint)
    model/            causal LM and tokenizer (save_pretrained; lmrl eval / train --model);
                      with LoRA the adapters merged into the weights
    critic/           PPO runs (--critic separate): the critic's backbone (save_pretrained)
                      and value_head.safetensors; model/ stays the policy alone
    adapter/          LoRA runs: the adapters alone (peft's save_pretrained; PeftModel loads
                      them onto the base model)
    checkpoints/      step-N/: the full TrainState in safetensors + JSON (resume with --resume)
    tensorboard/, wandb/, mlruns/, logger_runs.json
                      --logger sinks' files; logger_runs.json: W&B / MLflow run ids
    .lmrl             the marker that makes it an lmrl run directory (files.py)
"""

import json
import math
import signal
import time
from pathlib import Path

import torch
from tqdm import tqdm

from lmrl import checkpoint, compiling, config_files, distributed, files
from lmrl.async_rollouts import RolloutsAhead
from lmrl.config import Config, ConfigError, describe
from lmrl.errors import NonFiniteError, RunInterrupted
from lmrl.logging import RUN_IDS, MetricsLogger, check_installed
from lmrl.plotting import plot_run
from lmrl.preflight import Watch, preflight
from lmrl.recovery import (
    Snapshot,
    StopSignals,
    check_skips,
    checkpoint_due,
    load_resume_point,
    resume,
    resume_command,
    save_after_failure,
    save_checkpoint,
)
from lmrl.sharding import local
from lmrl.state import TrainState, build_policy, build_state
from lmrl.step import grpo_step
from lmrl.tasks import build_task as build_task_from
from lmrl.tasks.coverage import check_coverage
from lmrl.tasks.registry import Task, at_step, running_stats
from lmrl.threads import configure_threads


def build_task(cfg: Config):
    """The config's task; a task that rejects its settings raises ConfigError."""
    try:
        return build_task_from(cfg.task, cfg.policy.device)
    except ValueError as err:
        raise ConfigError(f"task {cfg.task.task}: {err}") from err


def evaluate(state: TrainState, task: Task, cfg: Config) -> tuple[dict[str, float], list[dict]]:
    """Held-out metrics and (text tasks) a few sample completions."""
    state.policy.eval()
    at_step(task, state.step, cfg.train.steps)  # reward functions see the evaluated step
    # Eager: evaluation batches have their own shapes, and compiling graphs for them cost more
    # than they save (2 more decoding graphs, ~40-80 s on 2 cores, for a few rollouts).
    compiled = getattr(state.policy, "compile", None)  # an HFPolicy's flag (a bool)
    if isinstance(compiled, bool):
        state.policy.compile = False
    try:
        metrics, samples = task.evaluate(state.policy, state.eval_generator,
                                         num_samples=cfg.log.eval_samples,
                                         group_size=cfg.train.G,
                                         max_examples=cfg.log.eval_limit or None,
                                         num_logged=cfg.log.log_samples)
    finally:
        if isinstance(compiled, bool):
            state.policy.compile = compiled
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
            # A reward that returned None is nan here: null in JSON (which has no NaN).
            row = {k: None if isinstance(v, float) and math.isnan(v) else v
                   for k, v in sample.items()}
            self._file.write(json.dumps({"step": step, **row}, default=str) + "\n")
            if self.echo:
                rewards = " ".join(f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}"
                                   for k, v in sample.items() if k not in ("prompt", "completion"))
                prompt = sample["prompt"]  # a string, or chat messages
                prompt = prompt if isinstance(prompt, str) else json.dumps(prompt)
                tqdm.write(f"  [step {step}] {_clip(prompt, tail=True)!r} -> "
                           f"{_clip(sample['completion'])!r}  {rewards}")
        self._file.flush()

    def close(self) -> None:
        self._file.close()


RUN_ENTRIES = ("config.json", "metrics.jsonl", "samples.jsonl", "summary.json", "reward.png",
               "model.safetensors", "model", "checkpoints", "tensorboard", "checkpoint.pt",
               "wandb", "mlruns", RUN_IDS, "config.yaml", "preflight.json", "warnings.jsonl",
               "adapter", "critic")


def default_run_dir() -> str:
    return time.strftime("runs/%Y%m%d-%H%M%S")


def model_inputs(cfg: Config) -> tuple[str, ...]:
    """Local paths the run reads (its output may never replace them)."""
    return () if cfg.is_toy or not Path(cfg.policy.model).exists() else (cfg.policy.model,)


def train(cfg: Config, policy: torch.nn.Module | None = None, task: Task | None = None,
          verbose: bool = True) -> dict:
    """Run a whole training job; returns the summary (also written to summary.json).

    Under torchrun, every rank runs this; rank 0 alone writes the run directory (distributed.py).
    """
    started = distributed.init()
    try:
        return train_rank(cfg, policy, task, verbose)
    finally:
        if started:
            distributed.close()


def check_data_parallel(cfg: Config) -> None:
    """Several ranks need B to be a multiple of their number; sharding needs several ranks."""
    distributed.share(cfg.train.B)  # ConfigError unless B splits evenly
    if cfg.algo.critic != "none" and distributed.world() > 1:
        raise ConfigError(f"algo.critic={cfg.algo.critic} runs on one process for now (the "
                          "critic's gradients and the advantage whitening are not pooled over "
                          "ranks); drop --nproc")
    if cfg.train.async_rollouts and distributed.world() > 1:
        raise ConfigError("train.async_rollouts runs on one process for now (a sampling thread "
                          "beside the ranks' collectives); drop --nproc or --async-rollouts")
    if cfg.train.dynamic_sampling and distributed.world() > 1:
        raise ConfigError("train.dynamic_sampling runs on one process for now (ranks would keep "
                          "different numbers of groups); drop --nproc or --dynamic-sampling")
    if cfg.train.fsdp and distributed.world() == 1:
        raise ConfigError("train.fsdp shards the model over several processes, and this is one; "
                          "launch with --nproc N (N >= 2) or torchrun, or drop --fsdp")


def evaluates(cfg: Config) -> bool:
    """Whether this rank evaluates: rank 0, or every rank of a sharded model, whose forwards are
    collectives (they run the same evaluation; rank 0 logs it)."""
    return distributed.is_main() or cfg.train.fsdp


def train_rank(cfg: Config, policy: torch.nn.Module | None, task: Task | None,
               verbose: bool) -> dict:
    """One rank's (or the only process's) run.

    Order of events: the run directory is checked, the checkpoint (with --resume), the task's
    data and the model load, and only then is the run directory created or (--overwrite) the
    old run in it replaced, so a run that cannot start destroys nothing."""
    configure_threads(cfg.train.threads, "toy" if cfg.is_toy else "lm")
    check_data_parallel(cfg)
    main = distributed.is_main()  # the other ranks read the checkpoint, and write nothing
    verbose = verbose and main
    check_installed(cfg.log.logger)
    run_dir = Path(cfg.log.run_dir or default_run_dir())
    distributed.on_main(files.check_output, run_dir, "train", overwrite=cfg.log.overwrite,
                        resume=cfg.log.resume, inputs=model_inputs(cfg))
    saved, saved_path = load_resume_point(cfg, run_dir)
    task = task if task is not None else build_task(cfg)
    if cfg.log.eval_samples and getattr(task, "correctness", "") is None:
        raise ConfigError("log.eval_samples asks for pass@k, but this task has no correctness "
                          "reward (name one of your reward functions `correct`); drop it")
    if policy is None:
        policy = build_policy(cfg, getattr(task, "max_new_tokens", 64))
    check_coverage(task, policy)  # before the run directory: a character the model cannot read
    distributed.on_main(files.claim_output, run_dir, "train", replace=cfg.log.overwrite,
                        known=RUN_ENTRIES)
    distributed.broadcast_parameters(policy)
    state = build_state(cfg, policy)
    state.reward_stats = running_stats(task)  # before resuming: the checkpoint fills them
    if saved is not None and main:
        resume(state, saved, run_dir)
    elif saved is not None:
        state.load_state_dict(saved)  # the global state: generators are in step on all ranks
    if main:
        files.write_text(run_dir / "config.json", cfg.to_json())
        files.write_text(run_dir / "config.yaml", config_files.to_yaml(cfg))
    say = print if verbose else (lambda *_: None)
    resumed = f"\nresumed from {saved_path} (step {state.step})" if saved_path else ""
    say(describe(cfg) + f"\n{describe_checkpoints(cfg)}\nrun directory: {run_dir}{resumed}")
    plan = None
    if not cfg.is_toy:
        plan = compiling.plan(cfg.policy.compile, state.policy, cfg.train.B, cfg.train.G)
        line = plan.start(cfg.train.steps - state.step, compiling.unsupported(state.policy))
        # Ranks must decide at the same step (the decision is a collective): if any has no
        # record for the shape, every rank times its eager steps instead.
        if plan.setting == "auto" and distributed.world() > 1 and agreed(plan.on is None):
            plan.on = None
            line = f"compile: auto -> decided after step {compiling.EAGER_STEPS} on every rank"
        say(line)
        if plan.on is not False:  # compiling, or may after its eager steps
            compiling.import_compiler_in_background(probe=plan.on is True)
        compiling.apply(state, False)  # the pre-flight runs eager: it is one batch
    if cfg.log.preflight and saved is None:
        preflight(state, task, cfg, run_dir, say)
    if plan is not None and plan.on is not None:
        plan.on = agreed(plan.on)  # run_loop applies it, to the async sampler too
    with StopSignals() as stop:
        last_eval = run_loop(state, task, cfg, run_dir, stop, verbose, plan)
    if plan is not None and main:
        plan.finish()
    summary = finish(state, task, cfg, run_dir, last_eval)  # every rank: it saves
    if not main:
        return {"steps": state.step, "rank": distributed.rank()}
    say(format_summary(summary, run_dir))
    return summary


def describe_checkpoints(cfg: Config) -> str:
    lg = cfg.log
    every = [f"{lg.save_every} steps" if lg.save_every else "",
             f"{lg.save_minutes:g} minutes" if lg.save_minutes else ""]
    cadence = " or ".join(e for e in every if e) or "never periodically"
    return (f"checkpoints: every {cadence}, at the end, on SIGINT/SIGTERM and on an error; the "
            f"newest {lg.keep_checkpoints} kept")


def agreed(on: bool) -> bool:
    """Every rank compiles if any does (ranks must run the same passes)."""
    return bool(distributed.all_reduce([float(on)], "max")[0])


def run_loop(state: TrainState, task, cfg: Config, run_dir: Path, stop: StopSignals,
             verbose: bool, plan: "compiling.CompilePlan | None" = None) -> dict[str, float]:
    """The visible outer loop; returns the last held-out evaluation. With several ranks, every
    rank runs the steps and rank 0 alone evaluates (every rank with a sharded model), logs and
    writes checkpoints."""
    main = distributed.is_main()
    if main:
        logger = MetricsLogger(run_dir, cfg.log.logger, config=cfg.to_dict(),
                               append=cfg.log.resume)
        sample_log = SampleLog(run_dir, append=cfg.log.resume, echo=verbose)
        watch = Watch(cfg, task, run_dir)  # the pre-flight's warnings, when they persist
    else:
        logger = sample_log = watch = NoOutput()
    last_eval: dict[str, float] = {}
    ahead = RolloutsAhead(state, task, cfg) if cfg.train.async_rollouts else None
    copies = () if ahead is None else (ahead.sampler,)
    if plan is not None and plan.on:
        compiling.apply(state, True, *copies)
    good = Snapshot.of(state)  # the last state a checkpoint may be written from
    bar = tqdm(total=cfg.train.steps, initial=state.step, disable=not cfg.log.progress or not main,
               desc="train", dynamic_ncols=True, mininterval=1.0)
    t_start, base_wall = time.perf_counter(), state.wall_seconds
    last_save = t_start
    try:
        if state.step == 0 and not cfg.log.resume and evaluates(cfg):
            last_eval, samples = evaluate(state, task, cfg)
            logger.log(0, last_eval)
            sample_log.write(0, samples)
            logger.log_samples(0, samples)
        while state.step < cfg.train.steps and stop.signum is None:
            good = Snapshot.of(state)  # step, update count, RNG states: for save_after_failure
            metrics = grpo_step(state, task, cfg, ahead)
            elapsed = time.perf_counter() - t_start
            state.wall_seconds = base_wall + elapsed
            check_skips(state, cfg, metrics)
            watch.check(state.step, metrics)
            if plan is not None:
                decided = plan.after_step(metrics["time/step_seconds"],
                                          cfg.train.steps - state.step)
                if decided is not None:
                    compiling.apply(state, agreed(bool(plan.on)), *copies)
                    if verbose and main:
                        tqdm.write(decided)
                metrics["time/compiled"] = float(plan.last_compiled)
            out_of_time = 0 < cfg.train.time_limit <= elapsed
            if evaluates(cfg) and (state.step % cfg.log.eval_every == 0
                                   or state.step == cfg.train.steps or out_of_time):
                last_eval, samples = evaluate(state, task, cfg)
                metrics.update(last_eval)
                sample_log.write(state.step, samples)
                logger.log_samples(state.step, samples)
            metrics["time/elapsed_seconds"] = elapsed
            logger.log(state.step, metrics)
            bar.update(1)
            bar.set_postfix(reward=f"{metrics['train/reward_mean']:.3f}",
                            heldout=f"{headline(last_eval):.3f}",
                            refresh=False)  # redraw at tqdm's own interval, not every step
            # Every rank saves (a sharded model is gathered), when rank 0's clock says so.
            if distributed.any_rank(main and checkpoint_due(cfg, state.step,
                                                            time.perf_counter() - last_save)):
                save_checkpoint(state, cfg, run_dir)
                last_save = time.perf_counter()
            # Every rank leaves after the same step (a no-op check with one process).
            if distributed.any_rank(out_of_time or stop.signum is not None):
                break
    except BaseException:
        bar.close()  # before save_after_failure's message
        if main:
            save_after_failure(state, cfg, run_dir, good)
        raise
    finally:
        if ahead is not None:
            ahead.close()
        bar.close()
        logger.close()
        sample_log.close()
    # One rank's signal stopped every rank after this step (any_rank above): every rank saves
    # (a sharded model is gathered), rank 0 says where.
    signum = int(distributed.all_reduce([stop.signum or 0], "max")[0])
    if signum:
        path = save_checkpoint(state, cfg, run_dir)
        name = signal.Signals(signum).name
        if main:
            raise RunInterrupted(signum, f"stopped by {name} after step {state.step}; checkpoint "
                                 f"saved to {path}. Resume with: {resume_command(cfg, run_dir)}")
        raise RunInterrupted(signum, f"rank {distributed.rank()} stopped with rank 0 ({name})")
    return last_eval


class NoOutput:
    """The logger, sample log and watch of a rank other than 0: every call does nothing."""

    def __getattr__(self, name: str):
        return lambda *args, **kwargs: None


def finish(state: TrainState, task, cfg: Config, run_dir: Path,
           last_eval: dict[str, float]) -> dict:
    """The final checkpoint, evaluation, summary and plot; called on every rank (saving a
    sharded model gathers it), rank 0 writes. Non-finite weights are an error: the run must not
    look finished."""
    # Each rank checks its own part (all of it, unless sharded).
    bad = [name for name, p in state.policy.named_parameters()
           if not torch.isfinite(local(p)).all()]
    if distributed.any_rank(bool(bad)):
        raise NonFiniteError(f"the trained weights are non-finite ({len(bad)} tensors on rank "
                             f"{distributed.rank()}{', e.g. ' + bad[0] if bad else ''}); the "
                             f"newest checkpoint in {run_dir / 'checkpoints'} is the last one "
                             "written. Lower the learning rate")
    # The loop's cadence may have just saved it (rank 0 sees the run directory).
    if distributed.any_rank(distributed.is_main() and not checkpoint.exists(run_dir, state.step)):
        save_checkpoint(state, cfg, run_dir)
    if not evaluates(cfg):
        return {}
    final = last_eval or evaluate(state, task, cfg)[0]
    summary = {**final, "steps": state.step, "wall_seconds": state.wall_seconds,
               "skipped_updates": state.skipped_updates, "run_dir": str(run_dir)}
    if distributed.is_main():
        files.write_text(run_dir / "summary.json", json.dumps(summary, indent=2))
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
