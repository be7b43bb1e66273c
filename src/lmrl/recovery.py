"""What keeps a run alive: checkpoints, resuming, signals and failures.

A checkpoint (checkpoint.py) is written every log.save_every steps or log.save_minutes minutes,
at the end, on SIGINT/SIGTERM (StopSignals: the current step finishes first) and on an error
(save_after_failure: the last consistent state). `--resume` restores the newest loadable one and
cuts the logs back to it, so a resumed run continues exactly where the checkpoint stood.
"""

import json
import shlex
import signal
import threading
from dataclasses import dataclass
from pathlib import Path

from tqdm import tqdm

from lmrl import checkpoint, distributed, files
from lmrl._version import __version__
from lmrl.config import Config, ConfigError
from lmrl.errors import NonFiniteError
from lmrl.state import TrainState


def save_checkpoint(state: TrainState, cfg: Config, run_dir: Path) -> Path | None:
    """checkpoints/step-N (everything, to resume; safetensors + JSON), and the policy in its
    loadable form: toy weights as model.safetensors, a causal LM as model/ (save_pretrained,
    for lmrl eval / --model). Every write is atomic.

    Called on every rank (a sharded model's weights are gathered); rank 0 writes and returns
    the checkpoint's path, the others None."""
    whole = state.state_dict()
    if not distributed.is_main():
        return None
    path = checkpoint.save(run_dir, state.step, whole,
                           {"config": cfg.to_dict(), "lmrl_version": __version__},
                           keep=cfg.log.keep_checkpoints)
    # A sharded model's own state dict holds shards: save the gathered one. Otherwise the
    # policy saves itself (with LoRA: the merged model, whose keys are not the policy's).
    state.policy.save_to(run_dir, whole["policy"] if getattr(state.policy, "sharded", False)
                         else None)
    if state.critic is not None:  # beside model/, which stays the policy alone
        state.critic.save_to(run_dir)
    return path


# What a resumed run may change: how long it runs and how it logs. Anything else would make the
# run directory a record of a run that never happened.
# Where and how it runs (device, threads, which forward code, sharded or not) may change too:
# the math is the same (up to float rounding). trust_remote_code is never read from disk, so it
# is the user's flag each time.
RESUMABLE_CHANGES = {("train", "steps"), ("train", "time_limit"), ("train", "threads"),
                     ("train", "max_skipped"), ("policy", "device"), ("policy", "forward"),
                     ("policy", "compile"), ("policy", "trust_remote_code"),
                     ("task", "reward_timeout"), ("train", "fsdp")}


def check_resumable(saved: dict, cfg: Config) -> None:
    new = json.loads(cfg.to_json())  # as saved: tuples are JSON lists
    changed = [f"{g}.{k}: {v!r} -> {new[g][k]!r}" for g, fields in saved.items() if g != "log"
               for k, v in fields.items() if new[g].get(k, v) != v
               and (g, k) not in RESUMABLE_CHANGES]
    if changed:
        raise ConfigError("--resume with a different config: " + "; ".join(changed) +
                          ". Only steps, time limit, threads, device, forward, compile, fsdp, "
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


def checkpoint_due(cfg: Config, step: int, since_save: float) -> bool:
    lg = cfg.log
    return bool(lg.save_every and step % lg.save_every == 0) or \
        bool(lg.save_minutes and since_save >= 60 * lg.save_minutes)


def check_skips(state: TrainState, cfg: Config, metrics: dict[str, float]) -> None:
    """Say so when an update was skipped; stop after train.max_skipped in a row."""
    where = " and ".join(what for key, what in (("loss", "loss"), ("grad", "gradient"))
                         if metrics.get(f"train/skipped_nonfinite_{key}"))
    if not where:
        return
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


def save_after_failure(state: TrainState, cfg: Config, run_dir: Path, good: Snapshot) -> None:
    """On an error, checkpoint the last good state: the state before the failed step when that
    step changed no weights yet (its random draws are rewound, so that a resumed run repeats
    it), or the state after the step when the step finished and what followed it failed
    (evaluation, logging). A step that failed between two of its μ updates leaves no consistent
    state: the newest checkpoint on disk then stands, as it does for a sharded model (gathering
    its weights would wait for ranks that may be stuck in the failed step)."""
    if cfg.train.fsdp:
        tqdm.write("lmrl: the model is sharded, so no checkpoint is written after an error; the "
                   "newest one in the run directory stands")
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
