"""Tier 5: a run survives kills, signals and errors with a checkpoint to resume from, and the
resumed run equals an uninterrupted one metric by metric; non-finite numbers are skipped and
counted; nothing lmrl loads can run code.

The killed runs are subprocesses (a real SIGKILL / SIGTERM / SIGINT at a random step, its seed
printed in the test id; LMRL_TEST_SEED=<seed> repeats it); the uninterrupted and the resumed
runs run in this process, with the same single thread, so the metrics must be equal exactly.
"""

import copy
import json
import os
import pickle
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from lmrl import checkpoint, files
from lmrl.cli import main
from lmrl.config import Config
from lmrl.errors import NonFiniteError, RewardError
from lmrl.logging import read_metrics
from lmrl.trainer import build_task, train

TOY = ["--n", "4", "--V", "6", "--heldout-size", "50", "--dim", "16", "--hidden", "32",
       "--B", "8", "--G", "4", "--threads", "1", "--no-progress"]
LM_TASK = ["--task", "sort_text", "--n", "3", "--V", "5", "--heldout-size", "8"]
LM = [*LM_TASK, "--B", "4", "--G", "4", "--max-new-tokens", "8", "--threads", "1",
      "--no-progress", "--kl-weight", "0.05", "--lr", "1e-3"]


def parse(args: list[str]) -> Config:
    from lmrl.cli import parse_config

    return parse_config(args)


def comparable(run_dir: Path) -> list[dict]:
    """Every metric but wall-clock times."""
    return [{k: v for k, v in row.items() if not k.startswith("time/")}
            for row in read_metrics(run_dir)]


def start(args: list[str], cwd: Path) -> subprocess.Popen:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen([sys.executable, "-m", "lmrl", "train", *args], cwd=cwd, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def wait_for_step(proc: subprocess.Popen, run_dir: Path, step: int, timeout: float = 120) -> None:
    """Until metrics.jsonl has logged `step` (the run is then inside step + 1 or later)."""
    deadline = time.monotonic() + timeout
    metrics = run_dir / "metrics.jsonl"
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"the run ended early: {proc.communicate()}")
        if metrics.is_file() and metrics.read_text().count("\n") > step:
            return
        time.sleep(0.01)
    proc.kill()
    raise AssertionError(f"no step {step} within {timeout} s")


@pytest.fixture(scope="module")
def tiny_lm(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("lm") / "init"
    main(["init-model", "--out", str(out), "--hidden-size", "16", "--layers", "1", "--heads",
          "2", *LM_TASK])
    return out


def kill_and_resume(tmp_path: Path, args: list[str], sig: int, kill_step: int) -> None:
    """Run `args` uninterrupted in-process, and in a subprocess that gets `sig` after
    `kill_step`; resume that one in-process and compare every metric."""
    straight = tmp_path / "straight"
    train(parse([*args, "--run-dir", str(straight)]), verbose=False)
    killed = tmp_path / "killed"
    proc = start([*args, "--run-dir", str(killed)], cwd=tmp_path)
    wait_for_step(proc, killed, kill_step)
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=120)
    expected = {signal.SIGKILL: -9, signal.SIGTERM: 143, signal.SIGINT: 130}[sig]
    assert proc.returncode == expected, err
    if sig != signal.SIGKILL:
        assert f"Resume with: lmrl train --run-dir {killed} --resume" in err
        assert "Traceback" not in err
    assert checkpoint.checkpoints(killed), "no checkpoint after the kill"
    assert not list(killed.rglob(".*.tmp-*")) or sig == signal.SIGKILL
    summary = train(parse(["--run-dir", str(killed), "--resume"]), verbose=False)
    assert summary["steps"] == parse(args).train.steps
    assert comparable(killed) == comparable(straight)
    for name in ("model.safetensors", "model/model.safetensors"):
        if (straight / name).is_file():
            assert (killed / name).read_bytes() == (straight / name).read_bytes()


def draw_seed() -> int:
    """A fresh seed per test session, shown in the test ids. The same in every pytest-xdist
    worker of one session (they must collect the same ids); LMRL_TEST_SEED repeats one."""
    if "LMRL_TEST_SEED" in os.environ:
        return int(os.environ["LMRL_TEST_SEED"])
    run_id = os.environ.get("PYTEST_XDIST_TESTRUNUID")
    return int(run_id, 16) % 10**6 if run_id else random.randrange(10**6)


SEED = draw_seed()


# One kill of each kind runs in `make test` (toy SIGTERM, LM SIGINT); the rest in the slow tier.
SLOW = pytest.mark.slow


@pytest.mark.parametrize("sig", [pytest.param(signal.SIGKILL, marks=SLOW), signal.SIGTERM,
                                 pytest.param(signal.SIGINT, marks=SLOW)],
                         ids=lambda s: f"{signal.Signals(s).name}-seed{SEED}")
def test_toy_killed_at_a_random_step_resumes_to_the_same_run(tmp_path, sig):
    rng = random.Random(SEED + sig)
    # SIGKILL relies on the default cadence: no --save-every given, 500 steps.
    steps, kill_step = (900, rng.randrange(520, 800)) if sig == signal.SIGKILL else \
        (200, rng.randrange(5, 150))
    kill_and_resume(tmp_path, [*TOY, "--steps", str(steps), "--eval-every", "25"], sig,
                    kill_step)


@pytest.mark.parametrize("sig", [pytest.param(signal.SIGKILL, marks=SLOW),
                                 pytest.param(signal.SIGTERM, marks=SLOW), signal.SIGINT],
                         ids=lambda s: f"{signal.Signals(s).name}-seed{SEED}")
def test_causal_lm_killed_at_a_random_step_resumes_to_the_same_run(tmp_path, tiny_lm, sig):
    kill_step = random.Random(SEED + sig).randrange(3, 9)
    args = [*LM, "--model", str(tiny_lm), "--steps", "12", "--eval-every", "4",
            "--save-every", "2"]
    kill_and_resume(tmp_path, args, sig, kill_step)


def failing(task, fail_at: set[int], mode: str):
    """The real task (same class), whose scoring raises or overflows at the chosen calls."""
    base = type(task)

    class Failing(base):
        calls = 0

        def score_rollout(self, prompts, rollout):
            self.calls += 1
            rewards, table = base.score_rollout(self, prompts, rollout)
            if self.calls in fail_at:
                if mode == "raise":
                    raise RewardError(f"injected failure at call {self.calls}")
                rewards = rewards.double() * 1e39  # finite in float64, overflows the float32 loss
            return rewards, table

    task = copy.copy(task)
    task.__class__ = Failing
    return task


def toy_cfg(tmp_path: Path, name: str, **train_fields) -> Config:
    """failing() counts the task's scoring calls as steps: no pre-flight batch before step 1."""
    return parse([*TOY, "--steps", "12", "--eval-every", "4", "--run-dir", str(tmp_path / name),
                  "--no-preflight",
                  *[f"--{k.replace('_', '-')}={v}" for k, v in train_fields.items()]])


def test_an_error_mid_run_leaves_the_last_good_state_and_resuming_repeats_the_step(tmp_path):
    straight = toy_cfg(tmp_path, "straight")
    train(straight, verbose=False)
    broken = toy_cfg(tmp_path, "broken")
    with pytest.raises(RewardError, match="injected"):
        train(broken, task=failing(build_task(broken), {7}, "raise"), verbose=False)
    saved = checkpoint.checkpoints(tmp_path / "broken")
    assert [p.name for p in saved] == ["step-00000006"]  # the last good state, steps 1-6 done
    first_session = checkpoint.load(saved[0])[0]["wall_seconds"]
    summary = train(parse(["--run-dir", str(tmp_path / "broken"), "--resume"]), verbose=False)
    assert comparable(tmp_path / "broken") == comparable(tmp_path / "straight")
    assert summary["wall_seconds"] > first_session > 0  # counted across both sessions


def test_overflowing_rewards_skip_the_update_and_are_counted(tmp_path):
    cfg = toy_cfg(tmp_path, "spikes")
    summary = train(cfg, task=failing(build_task(cfg), {3, 4, 9}, "overflow"),
                    verbose=False)
    rows = {r["step"]: r for r in read_metrics(tmp_path / "spikes")}
    skipped = [s for s in range(1, 13) if rows[s]["train/skipped_nonfinite_loss"]]
    assert skipped == [3, 4, 9]
    assert rows[12]["train/skipped_updates"] == 3 == summary["skipped_updates"]
    state, _ = checkpoint.load(checkpoint.checkpoints(tmp_path / "spikes")[-1])
    assert all(torch.isfinite(v).all() for v in state["policy"].values())
    assert state["optimizer_steps"] == 9


def test_non_finite_updates_in_a_row_stop_the_run_with_the_last_good_weights(tmp_path):
    cfg = toy_cfg(tmp_path, "nan", max_skipped=3)
    with pytest.raises(NonFiniteError, match="3 updates in a row"):
        train(cfg, task=failing(build_task(cfg), set(range(5, 100)), "overflow"),
              verbose=False)
    state, _ = checkpoint.load(checkpoint.checkpoints(tmp_path / "nan")[-1])
    assert state["step"] == 7 and state["optimizer_steps"] == 4
    assert all(torch.isfinite(v).all() for v in state["policy"].values())


class Exploit:
    """Unpickling this runs a command: what a crafted checkpoint.pt could do."""

    def __init__(self, sentinel: Path) -> None:
        self.sentinel = sentinel

    def __reduce__(self):
        return (os.system, (f"touch {self.sentinel}",))


def test_a_crafted_pickle_checkpoint_executes_nothing(tmp_path, capsys):
    run = tmp_path / "run"
    main(["train", *TOY, "--steps", "2", "--run-dir", str(run)])
    sentinel = tmp_path / "pwned"
    for ckpt in checkpoint.checkpoints(run):
        files.remove(ckpt)
    (run / "checkpoint.pt").write_bytes(pickle.dumps({"state": Exploit(sentinel)}))
    (run / "checkpoints" / "step-00000002").mkdir(parents=True)
    (run / "checkpoints" / "step-00000002" / "state.json").write_bytes(
        pickle.dumps(Exploit(sentinel)))  # a pickle under the JSON name: not JSON, damaged
    with pytest.raises(SystemExit) as exit_info:
        main(["train", "--run-dir", str(run), "--resume"])
    assert exit_info.value.code == 2
    assert "can be loaded" in capsys.readouterr().err
    assert not sentinel.exists()
    files.remove(run / "checkpoints")
    with pytest.raises(SystemExit):
        main(["train", "--run-dir", str(run), "--resume"])
    assert "old-format checkpoint" in capsys.readouterr().err and not sentinel.exists()


def test_a_crafted_trust_remote_code_config_executes_nothing(tmp_path, tiny_lm, capsys):
    """A model directory with its own code and a run config that asks to trust it: lmrl eval
    --run and --resume read the config but never its trust_remote_code."""
    model = tmp_path / "model"
    model.mkdir()
    for f in tiny_lm.iterdir():
        (model / f.name).write_bytes(f.read_bytes())
    sentinel = tmp_path / "pwned"
    # Subclasses: transformers registers remote classes for auto-saving, which on the real
    # Qwen2 classes would leak into every later test in this process.
    (model / "evil.py").write_text(f"import pathlib\npathlib.Path({str(sentinel)!r}).touch()\n"
                                   "from transformers import Qwen2Config, Qwen2ForCausalLM\n"
                                   "class EvilConfig(Qwen2Config):\n    pass\n"
                                   "class EvilModel(Qwen2ForCausalLM):\n"
                                   "    config_class = EvilConfig\n")
    config = json.loads((model / "config.json").read_text())
    config["auto_map"] = {"AutoConfig": "evil.EvilConfig",
                          "AutoModelForCausalLM": "evil.EvilModel"}
    (model / "config.json").write_text(json.dumps(config))
    run = tmp_path / "run"
    run.mkdir()
    cfg = Config().replace(task={"task": "sort_text", "n": 3, "V": 5, "heldout_size": 8},
                           policy={"model": str(model), "trust_remote_code": True})
    (run / "config.json").write_text(cfg.to_json())
    (run / ".lmrl").write_text('{"kind": "train"}')
    for argv in (["eval", "--run", str(run), "--model", str(model), "--limit", "2"],
                 ["train", "--run-dir", str(run), "--resume"]):
        try:
            main(argv)
        except SystemExit:
            pass
        assert not sentinel.exists(), argv
    # The same model with the user's own flag does run its code: the check above can fail.
    main(["eval", "--model", str(model), "--trust-remote-code", "--limit", "2", *LM_TASK])
    assert sentinel.exists()
