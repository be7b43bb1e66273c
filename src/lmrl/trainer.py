"""The outer loop: step, log, evaluate, checkpoint; and the run directory it writes.

Run directory:
    config.json       the exact Config the code read
    metrics.jsonl     one line per step (flat slash-separated keys); step 0 is the untrained eval
    samples.jsonl     text tasks: held-out completions at each evaluation (step, prompt,
                      completion, each reward)
    summary.json      final eval/* metrics, wall_seconds, steps
    reward.png        train and held-out reward and exact match per step
    model.safetensors toy policy weights (of the newest checkpoint)
    model/            causal LM and tokenizer (save_pretrained; lmrl eval / train --model)
    checkpoints/      step-N/: the full TrainState in safetensors + JSON (resume with --resume)
    .lmrl             the marker that makes it an lmrl run directory (files.py)
"""

import json
import shlex
import signal
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import save_file
from tqdm import tqdm

from lmrl import checkpoint, files
from lmrl._version import __version__
from lmrl.config import Config, ConfigError, describe
from lmrl.errors import NonFiniteError, RunInterrupted
from lmrl.logging import MetricsLogger
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


RUN_ENTRIES = ("config.json", "metrics.jsonl", "samples.jsonl", "summary.json", "reward.png",
               "model.safetensors", "model", "checkpoints", "tensorboard", "checkpoint.pt")


def default_run_dir() -> str:
    return time.strftime("runs/%Y%m%d-%H%M%S")


def model_inputs(cfg: Config) -> tuple[str, ...]:
    """Local paths the run reads (its output may never replace them)."""
    return () if cfg.is_toy or not Path(cfg.policy.model).exists() else (cfg.policy.model,)


def save_checkpoint(state: TrainState, cfg: Config, run_dir: Path) -> Path:
    """checkpoints/step-N (everything, to resume; safetensors + JSON), and the policy in its
    loadable form: toy weights as model.safetensors, a causal LM as model/ (save_pretrained,
    for lmrl eval / --model). Every write is atomic."""
    path = checkpoint.save(run_dir, state.step, state.state_dict(),
                           {"config": cfg.to_dict(), "lmrl_version": __version__},
                           keep=cfg.log.keep_checkpoints)
    if cfg.is_toy:
        with files.atomic_file(run_dir / "model.safetensors") as tmp:
            save_file({k: v.contiguous() for k, v in state.policy.state_dict().items()}, tmp)
    else:
        with files.atomic_dir(run_dir / "model") as tmp:
            state.policy.save_pretrained(tmp)
    return path


# What a resumed run may change: how long it runs and how it logs. Anything else would make the
# run directory a record of a run that never happened.
# Where and how it runs (device, threads, which forward code) may change too: the math is the
# same (up to float rounding). trust_remote_code is never read from disk, so it is the user's
# flag each time.
RESUMABLE_CHANGES = {("train", "steps"), ("train", "time_limit"), ("train", "threads"),
                     ("train", "max_skipped"), ("policy", "device"), ("policy", "forward"),
                     ("policy", "compile"), ("policy", "trust_remote_code"),
                     ("task", "reward_timeout")}


def check_resumable(saved: dict, cfg: Config) -> None:
    new = json.loads(cfg.to_json())  # as saved: tuples are JSON lists
    changed = [f"{g}.{k}: {v!r} -> {new[g][k]!r}" for g, fields in saved.items() if g != "log"
               for k, v in fields.items() if new[g].get(k, v) != v
               and (g, k) not in RESUMABLE_CHANGES]
    if changed:
        raise ConfigError("--resume with a different config: " + "; ".join(changed) +
                          ". Only steps, time limit, threads, device, forward, compile, "
                          "max_skipped, reward_timeout and log settings may change on resume "
                          "(lmrl train --run-dir DIR --resume reads the rest from the run)")
    if new["train"]["steps"] != saved["train"]["steps"]:
        print(f"note: steps {saved['train']['steps']} -> {new['train']['steps']}: the learning-"
              "rate schedule is recomputed for the new length from the current step on")


def _jsonl_rows(path: Path, up_to_step: int) -> list[str]:
    """The lines of a JSONL log with step <= up_to_step; a line a kill cut short is dropped."""
    if not path.is_file():
        return []
    kept, dropped = [], 0
    for line in path.read_text(errors="replace").splitlines():
        try:
            step = json.loads(line)["step"]
        except (json.JSONDecodeError, KeyError, TypeError):
            dropped += int(bool(line.strip()))
            continue
        if step <= up_to_step:
            kept.append(line)
    if dropped:
        print(f"note: dropped {dropped} damaged line(s) of {path} (a run killed mid-write)")
    return kept


def resume(state: TrainState, saved: dict, run_dir: Path) -> None:
    """Restore the state and drop log lines written after the checkpoint."""
    state.load_state_dict(saved)
    for name in ("metrics.jsonl", "samples.jsonl"):
        path = run_dir / name
        if path.is_file():
            files.write_text(path, "".join(line + "\n"
                                           for line in _jsonl_rows(path, state.step)))


def load_resume_point(cfg: Config, run_dir: Path) -> tuple[dict | None, Path | None]:
    """With --resume: the newest loadable checkpoint's state, checked against the config."""
    if not cfg.log.resume:
        return None, None
    saved, meta, path = checkpoint.load_newest(run_dir)
    check_resumable(meta["config"], cfg)
    return saved, path


def resume_command(cfg: Config, run_dir: Path) -> str:
    flag = " --trust-remote-code" if cfg.policy.trust_remote_code else ""
    return f"lmrl train --run-dir {shlex.quote(str(run_dir))} --resume{flag}"


class StopSignals:
    """SIGINT and SIGTERM ask the loop to stop after the current step (it then checkpoints and
    raises RunInterrupted); a second signal abandons the step at once (KeyboardInterrupt)."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self) -> None:
        self.signum: int | None = None
        self._previous: dict = {}

    def _handle(self, signum, frame) -> None:
        if self.signum is not None:
            raise KeyboardInterrupt
        self.signum = signum
        tqdm.write(f"lmrl: {signal.Signals(signum).name}: stopping after this step and saving a "
                   "checkpoint (send it again to stop at once)")

    def __enter__(self) -> "StopSignals":
        if threading.current_thread() is threading.main_thread():  # signal() works only there
            self._previous = {s: signal.signal(s, self._handle) for s in self.SIGNALS}
        return self

    def __exit__(self, *exc) -> None:
        for s, handler in self._previous.items():
            signal.signal(s, handler)


def train(cfg: Config, policy: torch.nn.Module | None = None, task=None,
          verbose: bool = True) -> dict:
    """Run a whole training job; returns the summary (also written to summary.json).

    Order of events: the run directory is checked, the checkpoint (with --resume), the task's
    data and the model load, and only then is the run directory created or (--overwrite) the
    old run in it replaced, so a run that cannot start destroys nothing."""
    configure_threads(cfg.train.threads, "toy" if cfg.is_toy else "lm")
    run_dir = Path(cfg.log.run_dir or default_run_dir())
    files.check_output(run_dir, "train", overwrite=cfg.log.overwrite, resume=cfg.log.resume,
                       inputs=model_inputs(cfg))
    saved, saved_path = load_resume_point(cfg, run_dir)
    task = task if task is not None else build_task(cfg)
    if cfg.log.eval_samples and getattr(task, "correctness", "") is None:
        raise ConfigError("log.eval_samples asks for pass@k, but this task has no correctness "
                          "reward (name one of your reward functions `correct`); drop it")
    if policy is None:
        policy = build_policy(cfg, getattr(task, "max_new_tokens", 64))
    files.claim_output(run_dir, "train", replace=cfg.log.overwrite, known=RUN_ENTRIES)
    state = build_state(cfg, policy)
    if saved is not None:
        resume(state, saved, run_dir)
    files.write_text(run_dir / "config.json", cfg.to_json())
    say = print if verbose else (lambda *_: None)
    resumed = f"\nresumed from {saved_path} (step {state.step})" if saved_path else ""
    say(describe(cfg) + f"\n{describe_checkpoints(cfg)}\nrun directory: {run_dir}{resumed}")
    with StopSignals() as stop:
        last_eval = run_loop(state, task, cfg, run_dir, stop, verbose)
    summary = finish(state, task, cfg, run_dir, last_eval)
    say(format_summary(summary, run_dir))
    return summary


def describe_checkpoints(cfg: Config) -> str:
    lg = cfg.log
    every = [f"{lg.save_every} steps" if lg.save_every else "",
             f"{lg.save_minutes:g} minutes" if lg.save_minutes else ""]
    cadence = " or ".join(e for e in every if e) or "never periodically"
    return (f"checkpoints: every {cadence}, at the end, on SIGINT/SIGTERM and on an error; the "
            f"newest {lg.keep_checkpoints} kept")


def run_loop(state: TrainState, task, cfg: Config, run_dir: Path, stop: StopSignals,
             verbose: bool) -> dict[str, float]:
    """The visible outer loop; returns the last held-out evaluation."""
    logger = MetricsLogger(run_dir, tensorboard=cfg.log.logger == "tensorboard",
                           append=cfg.log.resume)
    sample_log = SampleLog(run_dir, append=cfg.log.resume, echo=verbose)
    last_eval: dict[str, float] = {}
    good = Snapshot.of(state)  # the last state a checkpoint may be written from
    bar = tqdm(total=cfg.train.steps, initial=state.step, disable=not cfg.log.progress,
               desc="train", dynamic_ncols=True, mininterval=1.0)
    t_start, base_wall = time.perf_counter(), state.wall_seconds
    last_save = t_start
    try:
        if state.step == 0 and not cfg.log.resume:
            last_eval, samples = evaluate(state, task, cfg)
            logger.log(0, last_eval)
            sample_log.write(0, samples)
        while state.step < cfg.train.steps and stop.signum is None:
            good = Snapshot.of(state)  # ~45 µs, for save_after_failure
            metrics = grpo_step(state, task, cfg)
            elapsed = time.perf_counter() - t_start
            state.wall_seconds = base_wall + elapsed
            check_skips(state, cfg, metrics)
            out_of_time = 0 < cfg.train.time_limit <= elapsed
            if state.step % cfg.log.eval_every == 0 or state.step == cfg.train.steps or \
                    out_of_time:
                last_eval, samples = evaluate(state, task, cfg)
                metrics.update(last_eval)
                sample_log.write(state.step, samples)
            metrics["time/elapsed_seconds"] = elapsed
            logger.log(state.step, metrics)
            bar.update(1)
            bar.set_postfix(reward=f"{metrics['train/reward_mean']:.3f}",
                            heldout=f"{headline(last_eval):.3f}",
                            refresh=False)  # redraw at tqdm's own interval, not every step
            if checkpoint_due(cfg, state.step, time.perf_counter() - last_save):
                save_checkpoint(state, cfg, run_dir)
                last_save = time.perf_counter()
            if out_of_time:
                break
    except BaseException as err:
        bar.close()
        save_after_failure(state, cfg, run_dir, good, err)
        raise
    finally:
        bar.close()
        logger.close()
        sample_log.close()
    if stop.signum is not None:
        path = save_checkpoint(state, cfg, run_dir)
        raise RunInterrupted(stop.signum, f"stopped by {signal.Signals(stop.signum).name} after "
                             f"step {state.step}; checkpoint saved to {path}. Resume with: "
                             f"{resume_command(cfg, run_dir)}")
    return last_eval


def checkpoint_due(cfg: Config, step: int, since_save: float) -> bool:
    lg = cfg.log
    return bool(lg.save_every and step % lg.save_every == 0) or \
        bool(lg.save_minutes and since_save >= 60 * lg.save_minutes)


def check_skips(state: TrainState, cfg: Config, metrics: dict[str, float]) -> None:
    """Say so when an update was skipped; stop after train.max_skipped in a row."""
    stages = [s for s in ("loss", "grad") if metrics.get(f"train/skipped_nonfinite_{s}")]
    if not stages:
        return
    where = " and ".join("loss" if s == "loss" else "gradient" for s in stages)
    tqdm.write(f"lmrl: warning: step {state.step}: non-finite {where}; update skipped "
               f"({state.skipped_in_a_row} in a row, the run stops at {cfg.train.max_skipped}; "
               f"train reward mean {metrics.get('train/reward_mean')}, lr {metrics['train/lr']:g})")
    if state.skipped_in_a_row >= cfg.train.max_skipped:
        raise NonFiniteError(
            f"{state.skipped_in_a_row} updates in a row had a non-finite {where} and were "
            f"skipped (train/skipped_updates = {state.skipped_updates}); the weights are the last "
            "good ones. Lower the learning rate, check the rewards' scale (a reward that "
            "overflows float32 gives an infinite loss), or raise --max-skipped")


@dataclass
class Snapshot:
    """Where the state was consistent: its step, update count and random generators."""

    step: int
    optimizer_steps: int
    rng: dict

    @classmethod
    def of(cls, state: TrainState) -> "Snapshot":
        return cls(state.step, state.optimizer_steps, state.rng_state())


def save_after_failure(state: TrainState, cfg: Config, run_dir: Path, good: Snapshot,
                       err: BaseException) -> None:
    """On an error, checkpoint the last good state: the state before the failed step when that
    step changed no weights yet (its random draws are rewound, so that a resumed run repeats
    it), or the state after the step when the step finished and what followed it failed
    (evaluation, logging). A step that failed between two of its μ updates leaves no consistent
    state: the newest checkpoint on disk then stands."""
    if isinstance(err, RunInterrupted):
        return
    if state.step == good.step and state.optimizer_steps == good.optimizer_steps:
        state.set_rng_state(good.rng)
    elif state.step != good.step + 1:
        newest = checkpoint.checkpoints(run_dir)
        tqdm.write(f"lmrl: the error came between two updates of step {state.step + 1}; the "
                   f"newest checkpoint is {newest[-1] if newest else 'none'}")
        return
    try:
        path = save_checkpoint(state, cfg, run_dir)
    except Exception as save_err:  # noqa: BLE001 - the original error is the one to show
        tqdm.write(f"lmrl: could not save a checkpoint after the error: {save_err}")
        return
    tqdm.write(f"lmrl: saved the last good state (step {state.step}) to {path}; after fixing "
               f"the cause, resume with: {resume_command(cfg, run_dir)}")


def finish(state: TrainState, task, cfg: Config, run_dir: Path,
           last_eval: dict[str, float]) -> dict:
    """The final checkpoint, evaluation, summary and plot. Non-finite weights are an error: the
    run must not look finished."""
    bad = [name for name, p in state.policy.named_parameters() if not torch.isfinite(p).all()]
    if bad:
        raise NonFiniteError(f"the trained weights are non-finite ({len(bad)} tensors, e.g. "
                             f"{bad[0]}); the newest checkpoint in {run_dir / 'checkpoints'} is "
                             "the last one written. Lower the learning rate")
    save_checkpoint(state, cfg, run_dir)
    final = last_eval or evaluate(state, task, cfg)[0]
    summary = {**final, "steps": state.step, "wall_seconds": state.wall_seconds,
               "skipped_updates": state.skipped_updates, "run_dir": str(run_dir)}
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
