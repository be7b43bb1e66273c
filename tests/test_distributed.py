"""Data parallel (distributed.py): the number of ranks changes nothing.

The 2-rank tests launch torchrun (gloo, CPU, one thread per rank) and are slow-tier; the unit
tests at the top run in one process.
"""

import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM

from lmrl import distributed
from lmrl.cli import main, parse_config
from lmrl.errors import ConfigError, UserError
from lmrl.policies.toy import ToySortPolicy
from lmrl.trainer import check_data_parallel

TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node"]
TOY = ["--n", "4", "--V", "6", "--heldout-size", "20", "--B", "8", "--G", "4", "--no-progress",
       "--eval-every", "100"]


def env(*paths: Path) -> dict:
    """The ranks' environment; paths go on PYTHONPATH after lmrl's source (a reward module)."""
    src = os.pathsep.join([str(Path(__file__).resolve().parents[1] / "src"), *map(str, paths)])
    # PYTHONFAULTHANDLER: a rank that aborts prints every thread's Python stack.
    return {**os.environ, "PYTHONPATH": src, "OMP_NUM_THREADS": "1", "LMRL_DIST_TIMEOUT": "60",
            "PYTHONFAULTHANDLER": "1"}


def test_toy_samples_a_share_with_the_whole_batch_draws():
    torch.manual_seed(0)
    policy = ToySortPolicy(V=6, n=4, init="scaled", init_scale=0.5)
    prompts = torch.randint(0, 6, (8, 4))
    whole = policy.sample(prompts, 5, torch.Generator().manual_seed(3)).responses
    for rows in (slice(0, 4), slice(4, 8), slice(2, 6)):
        part = policy.sample(prompts, 5, torch.Generator().manual_seed(3), rows=rows).responses
        assert torch.equal(part, whole[rows])


def test_one_process_is_the_identity():
    assert (distributed.world(), distributed.rank(), distributed.is_main()) == (1, 0, True)
    assert distributed.share(7) == slice(0, 7)
    assert distributed.all_reduce([1.5, 2.0]) == [1.5, 2.0]
    assert distributed.any_rank(True) and not distributed.any_rank(False)
    assert distributed.pooled_means({"a": [1.0, 2.0], "b": [], "c": [4.0]}) == {"a": 1.5, "c": 4.0}


def test_prompts_must_split_evenly(monkeypatch):
    monkeypatch.setattr(distributed, "world", lambda: 3)
    monkeypatch.setattr(distributed, "rank", lambda: 1)
    assert distributed.share(6) == slice(2, 4)
    with pytest.raises(ConfigError, match="B=8 .* 3 processes"):
        distributed.share(8)


def test_several_ranks_check_the_batch_before_anything_loads(monkeypatch):
    monkeypatch.setattr(distributed, "world", lambda: 2)
    check_data_parallel(parse_config(TOY))
    with pytest.raises(ConfigError, match="B=7"):
        check_data_parallel(parse_config([*TOY, "--B", "7"]))


def test_an_unknown_backend_is_refused_before_joining(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("LMRL_DIST_BACKEND", "mpi")
    with pytest.raises(ConfigError, match="LMRL_DIST_BACKEND='mpi': use nccl or gloo"):
        distributed.init()


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU-only refusal")
def test_the_gpu_check_says_it_needs_a_gpu():
    root = Path(__file__).resolve().parents[1]
    done = subprocess.run(["bash", "bench/gpu_check.sh"], cwd=root, capture_output=True, text=True,
                          env={**os.environ, "PY": sys.executable}, timeout=60)
    assert done.returncode == 2
    assert "no CUDA device here" in done.stderr


def test_leave_flushes_and_exits_with_the_code():
    done = subprocess.run([sys.executable, "-c", "from lmrl import distributed; "
                           "print('written', end=''); distributed.leave(3)"],
                          env=env(), capture_output=True, text=True, timeout=60)
    assert (done.returncode, done.stdout) == (3, "written")


@pytest.mark.parametrize("args, code, out", [(["--version"], 0, "lmrl "),
                                             (["train", "--steps", "x"], 2, "lmrl: error")])
def test_a_torchrun_rank_ends_with_the_commands_exit_code(args, code, out):
    done = subprocess.run([sys.executable, "-m", "lmrl", *args], env={**env(), "WORLD_SIZE": "2"},
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == code
    assert out in done.stdout + done.stderr


@pytest.mark.parametrize("value", ["0", "two"])
def test_nproc_takes_a_positive_number(value, capsys):
    with pytest.raises(SystemExit) as stop:
        main(["train", "--nproc", value])
    assert stop.value.code == 2
    assert "--nproc takes a number" in capsys.readouterr().err


# Runs grpo_step directly for each case, checks after every step that all ranks hold the same
# parameters, and writes rank 0's final parameters and every step's metrics. AdamW's update
# hardly depends on the gradient's scale, so the parameters alone would not see a wrong loss
# normaliser; loss/total and policy/grad_norm do.
STEPS_SCRIPT = textwrap.dedent("""
    import json
    import sys
    from pathlib import Path
    import torch
    from safetensors.torch import save_file
    from lmrl import distributed
    from lmrl.cli import parse_config
    from lmrl.sharding import full
    from lmrl.state import build_state
    from lmrl.step import grpo_step
    from lmrl.trainer import build_task

    distributed.init()
    torch.set_num_threads(1)
    out, base = Path(sys.argv[1]), sys.argv[2].split()
    cases = {"token_mean": ["--aggregation", "token_mean"],
             "sequence_mean_kl": ["--aggregation", "sequence_mean", "--kl-weight", "0.1",
                                  "--grad-accum", "2"],
             "constant_mu2": ["--aggregation", "constant", "--mu", "2"]}
    if "--model" not in base:  # a learned baseline: every rank fits it on the whole batch
        cases["value"] = ["--aggregation", "token_mean", "--delta", "value"]
        # Batch statistics over every rank's samples, as one process takes them over B prompts.
        cases["reinforce_pp"] = ["--aggregation", "token_mean", "--delta", "reinforce_pp"]
    if "--model" in base and "--fsdp" not in base:  # LoRA, with a KL term to the base model
        cases["lora_kl"] = ["--lora-r", "4", "--lora-target-modules", "all-linear",
                            "--kl-weight", "0.1", "--aggregation", "token_mean"]
    for name, flags in cases.items():
        cfg = parse_config(base + flags)
        state, task, metrics = build_state(cfg), build_task(cfg), []
        for step in range(3):
            metrics.append(grpo_step(state, task, cfg))
            # Whole parameters (gathered when sharded), as every rank holds them.
            params = full(state.policy.state_dict())
            flat = torch.cat([p.detach().reshape(-1) for p in params.values()])
            everyone = distributed.gather(flat[None])
            assert bool((everyone == everyone[0]).all()), f"{name}: ranks differ, step {step}"
        if distributed.is_main():
            save_file({k: v.detach().cpu().clone() for k, v in params.items()},
                      out / f"{name}-{distributed.world()}.safetensors")
            (out / f"{name}-{distributed.world()}.json").write_text(json.dumps(metrics))
    distributed.leave()  # flushes and exits without finalization (see its docstring)
""")


def assert_same_parameters(a: Path, b: Path) -> None:
    one, two = load_file(a), load_file(b)
    assert one.keys() == two.keys()
    for key in one:
        torch.testing.assert_close(one[key], two[key], rtol=1e-5, atol=1e-5, msg=key)


# A TRL-style reward function that logs a mean with log_metric: each rank logs its share's,
# and rank 0's train/completion_chars must pool them into the whole batch's.
LOGGING_REWARD = textwrap.dedent("""
    def chars(completions, log_metric, **kwargs):
        log_metric("completion_chars", sum(map(len, completions)) / len(completions))
        return [0.0] * len(completions)
""")


def tiny_lm_flags(tmp_path: Path) -> list[str]:
    """sort_text on a 3k-parameter causal LM, with a reward that varies within groups and one
    that logs a metric (importable by the scripts, which run from tmp_path)."""
    main(["init-model", "--out", str(tmp_path / "tiny"), "--task", "sort_text",
          "--hidden-size", "16", "--layers", "1", "--heads", "2"])
    (tmp_path / "logging_reward.py").write_text(LOGGING_REWARD)
    return ["--task", "sort_text", "--n", "3", "--model", str(tmp_path / "tiny"), "--B", "8",
            "--G", "8", "--no-progress", "--eval-limit", "4", "--heldout-size", "8", "--lr",
            "1e-2", "--reward", "inclusion_adjacency", "--reward-fns", "logging_reward:chars"]


@pytest.mark.slow
@pytest.mark.parametrize("model", ["toy", "causal_lm", "causal_lm_fsdp"])
def test_two_ranks_end_with_the_parameters_of_one_process(tmp_path, model):
    script = tmp_path / "steps.py"
    script.write_text(STEPS_SCRIPT)
    base = " ".join(TOY if model == "toy" else tiny_lm_flags(tmp_path))
    one = subprocess.run([sys.executable, str(script), str(tmp_path), base], env=env(),
                         capture_output=True, text=True, timeout=180)
    assert one.returncode == 0, one.stderr
    sharded = " --fsdp" if model == "causal_lm_fsdp" else ""  # one process is never sharded
    two = subprocess.run(TORCHRUN + ["2", str(script), str(tmp_path), base + sharded], env=env(),
                         capture_output=True, text=True, timeout=240)
    assert two.returncode == 0, two.stderr
    cases = ["token_mean", "sequence_mean_kl", "constant_mu2"]
    cases += {"toy": ["value", "reinforce_pp"], "causal_lm": ["lora_kl"]}.get(model, [])
    for name in cases:
        assert_same_parameters(tmp_path / f"{name}-1.safetensors",
                               tmp_path / f"{name}-2.safetensors")
        keys = assert_same_metrics(json.loads((tmp_path / f"{name}-1.json").read_text()),
                                   json.loads((tmp_path / f"{name}-2.json").read_text()))
        assert (model != "toy") == ("train/completion_chars" in keys)


def assert_same_metrics(one: list[dict], two: list[dict]) -> set[str]:
    """Every step's metrics but the timings (two ranks add time/all_reduce)."""
    for a, b in zip(one, two, strict=True):
        keys = {k for k in a if not k.startswith("time/")}
        assert keys == {k for k in b if not k.startswith("time/")}
        for key in keys:
            assert a[key] == pytest.approx(b[key], rel=1e-5, abs=1e-6), key
    return keys


def lmrl_train(args: list[str], cwd: Path, nproc: int = 1) -> subprocess.CompletedProcess:
    launch = TORCHRUN + [str(nproc), "-m", "lmrl", "--"] if nproc > 1 else \
        [sys.executable, "-m", "lmrl"]
    return subprocess.run(launch + ["train", *TOY, *args], cwd=cwd, env=env(),
                          capture_output=True, text=True, timeout=120)


@pytest.mark.slow
def test_torchrun_writes_one_run_directory_that_resumes_on_one_process(tmp_path):
    (tmp_path / "two").mkdir()
    done = lmrl_train(["--steps", "2", "--run-dir", "r", "--save-every", "1"],
                      tmp_path / "two", nproc=2)
    assert done.returncode == 0, done.stderr
    assert os.listdir(tmp_path / "two") == ["r"]
    steps = [json.loads(line)["step"] for line in (tmp_path / "two/r/metrics.jsonl").open()]
    assert steps == [0, 1, 2]  # logged once
    assert done.stdout.count("summary") == 1
    resumed = lmrl_train(["--steps", "4", "--run-dir", "r", "--resume"], tmp_path / "two")
    assert resumed.returncode == 0, resumed.stderr
    # One process, the same two sessions (the schedule is recomputed for 4 steps on resume).
    for more in ([], ["--resume", "--steps", "4"]):
        alone = lmrl_train(["--steps", "2", "--run-dir", "r", *more], tmp_path)
        assert alone.returncode == 0, alone.stderr
    assert_same_parameters(tmp_path / "r/model.safetensors", tmp_path / "two/r/model.safetensors")
    # Rank 0 logged, and pre-flighted, the whole batch: the one-process run's numbers.
    logged = [[json.loads(line) for line in (d / "r/metrics.jsonl").open()]
              for d in (tmp_path, tmp_path / "two")]
    assert_same_metrics(*logged)
    assert json.loads((tmp_path / "r/preflight.json").read_text()) == \
        json.loads((tmp_path / "two/r/preflight.json").read_text())


@pytest.mark.slow
def test_fsdp_writes_a_run_directory_of_whole_weights_that_resumes_on_one_process(tmp_path):
    """A sharded run (with a sharded reference) writes the checkpoints and model/ of an unsharded
    run: the same weights as one process's, and both resume on one process alike."""
    flags = [*tiny_lm_flags(tmp_path), "--kl-weight", "0.1", "--eval-every", "1", "--run-dir", "r"]

    def train(cwd: Path, more: list[str], nproc: int = 1) -> None:
        launch = TORCHRUN + [str(nproc), "-m", "lmrl", "--"] if nproc > 1 else \
            [sys.executable, "-m", "lmrl"]
        done = subprocess.run(launch + ["train", *flags, *more], cwd=cwd, env=env(tmp_path),
                              capture_output=True, text=True, timeout=240)
        assert done.returncode == 0, done.stderr

    (tmp_path / "two").mkdir()
    (tmp_path / "one").mkdir()
    train(tmp_path / "two", ["--steps", "2", "--fsdp"], nproc=2)
    train(tmp_path / "one", ["--steps", "2"])
    assert os.listdir(tmp_path / "two") == ["r"]
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "two/r/model")
    unsharded = load_file(tmp_path / "one/r/model/model.safetensors")
    for key, value in model.state_dict().items():
        if key in unsharded:  # a tied head is saved once
            torch.testing.assert_close(value, unsharded[key], rtol=1e-5, atol=1e-5, msg=key)
    train(tmp_path / "one", ["--steps", "4", "--resume"])
    train(tmp_path / "two", ["--steps", "4", "--resume", "--no-fsdp"])  # on one process
    assert_same_parameters(tmp_path / "one/r/model/model.safetensors",
                           tmp_path / "two/r/model/model.safetensors")
    logged = [[json.loads(line) for line in (tmp_path / run / "r/metrics.jsonl").open()]
              for run in ("one", "two")]
    assert [m["step"] for m in logged[1]] == [0, 1, 2, 3, 4]  # rank 0 logged, once
    assert_same_metrics(*logged)


def fsdp_lm_flags(*more: str) -> list[str]:
    return ["--task", "sort_text", "--model", "some/model", "--fsdp", *more]


@pytest.mark.parametrize("flags, message", [
    ([*TOY, "--fsdp"], "toy"),
    (fsdp_lm_flags("--lora-r", "4"), "LoRA"),
    (fsdp_lm_flags("--forward", "lmrl"), "transformers'"),
    (fsdp_lm_flags("--compile"), "transformers'"),
])
def test_fsdp_refuses_what_it_cannot_shard(flags, message):
    with pytest.raises(UserError, match=f"(?s)train.fsdp .*{message}"):  # the usage error
        parse_config(flags)


def test_fsdp_needs_several_processes(monkeypatch):
    cfg = parse_config(fsdp_lm_flags())
    with pytest.raises(ConfigError, match="--nproc N"):
        check_data_parallel(cfg)
    monkeypatch.setattr(distributed, "world", lambda: 2)
    check_data_parallel(cfg)


FAILING_SCRIPT = textwrap.dedent("""
    import sys
    from lmrl import distributed
    from lmrl.cli import parse_config
    from lmrl.trainer import build_task, train

    cfg = parse_config(sys.argv[1].split() + ["--steps", "50", "--run-dir", "r"])
    task = build_task(cfg)
    score = task.score_rollout

    def failing(prompts, rollout):
        if distributed.rank() == 1:
            raise RuntimeError("rank 1 fails on purpose")
        return score(prompts, rollout)

    task.score_rollout = failing
    train(cfg, task=task)
""")


@pytest.mark.slow
def test_a_rank_that_raises_ends_the_job_with_its_message(tmp_path):
    script = tmp_path / "fail.py"
    script.write_text(FAILING_SCRIPT)
    start = time.perf_counter()
    done = subprocess.run(TORCHRUN + ["2", str(script), " ".join(TOY)], cwd=tmp_path, env=env(),
                          capture_output=True, text=True, timeout=120)
    assert done.returncode != 0
    assert "rank 1 fails on purpose" in done.stdout + done.stderr
    assert time.perf_counter() - start < 60  # not the collective timeout's wait


@pytest.mark.slow
def test_nproc_relaunches_through_torchrun(tmp_path):
    done = subprocess.run([sys.executable, "-m", "lmrl", "train", "--nproc", "2", *TOY,
                           "--steps", "1", "--run-dir", "r"], cwd=tmp_path, env=env(),
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert os.listdir(tmp_path) == ["r"]
    assert json.loads((tmp_path / "r/summary.json").read_text())["steps"] == 1
    again = subprocess.run([sys.executable, "-m", "lmrl", "train", "--nproc", "2", *TOY,
                            "--steps", "1", "--run-dir", "r"], cwd=tmp_path, env=env(),
                           capture_output=True, text=True, timeout=120)
    assert again.returncode != 0  # rank 0 refuses the run directory; rank 1 says so, briefly
    assert "lmrl: error: r is not empty" in again.stderr
    assert "lmrl: error: rank 0 stopped with the error above" in again.stderr
    assert "[rank" not in again.stderr  # no rank's traceback (torchrun adds its own report)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_two_nodes_on_localhost(tmp_path):
    port = str(free_port())
    nodes = [subprocess.Popen(
        [sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--node-rank", str(i),
         "--nproc_per_node", "1", "--master-addr", "127.0.0.1", "--master-port", port, "-m",
         "lmrl", "--", "train", *TOY, "--steps", "2", "--run-dir", "r"],
        cwd=tmp_path, env=env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for i in (0, 1)]
    outputs = [node.communicate(timeout=120) for node in nodes]
    assert [node.returncode for node in nodes] == [0, 0], outputs
    assert "summary" in outputs[0][0] and "summary" not in outputs[1][0]  # rank 0 reports
    assert json.loads((tmp_path / "r/summary.json").read_text())["steps"] == 2


@pytest.mark.slow
def test_ctrl_c_stops_every_rank_after_one_step_and_rank_0_saves(tmp_path):
    job = subprocess.Popen([sys.executable, "-m", "lmrl", "train", "--nproc", "2", *TOY,
                            "--steps", "100000", "--run-dir", "r"], cwd=tmp_path, env=env(),
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                           start_new_session=True)  # its own group, as a terminal's job is
    metrics = tmp_path / "r/metrics.jsonl"
    deadline = time.monotonic() + 60
    while not (metrics.is_file() and len(metrics.read_text().splitlines()) > 3):
        assert time.monotonic() < deadline and job.poll() is None
        time.sleep(0.2)
    os.killpg(job.pid, signal.SIGINT)  # what Ctrl-C sends: every process of the group
    _, err = job.communicate(timeout=60)
    assert job.returncode != 0
    assert err.count("stopped by SIGINT after step") == 1  # rank 0 alone saves and says so
    step = int(err.split("stopped by SIGINT after step ")[1].split(";")[0])
    assert [p.name for p in (tmp_path / "r/checkpoints").iterdir()] == [f"step-{step:08d}"]
