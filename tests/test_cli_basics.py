"""The installed command's basics, as a user's shell sees them: `lmrl --help` is a request, not
an error (usage on stdout, exit 0), and `lmrl --version` answers (exit 0). The in-process checks
are in test_config.py; these run the real process to see its streams and exit code."""

import subprocess
import sys

import pytest

from lmrl._version import __version__


def lmrl(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "lmrl", *args], capture_output=True, text=True,
                          timeout=120)


@pytest.mark.slow  # each process imports torch: seconds
def test_help_is_on_stdout_with_exit_0():
    done = lmrl("--help")
    assert (done.returncode, done.stderr) == (0, "")
    assert done.stdout.startswith("usage: lmrl {train,")


@pytest.mark.slow
def test_version_exits_0():
    done = lmrl("--version")
    assert (done.returncode, done.stdout, done.stderr) == (0, f"lmrl {__version__}\n", "")


@pytest.mark.slow
def test_help_into_a_closed_pipe_is_no_traceback():
    """`lmrl train --help | head -1`: the reader has left (here: before the first write, so
    the pipe is surely closed); exit 141 (128 + SIGPIPE), no traceback."""
    import os

    read_end, write_end = os.pipe()
    os.close(read_end)
    proc = subprocess.Popen([sys.executable, "-m", "lmrl", "train", "--help"], stdout=write_end,
                            stderr=subprocess.PIPE, text=True)
    os.close(write_end)
    err = proc.stderr.read()
    assert proc.wait(timeout=120) == 141 and "Traceback" not in err, err


@pytest.mark.slow
def test_rm_help_lists_its_subcommands_and_bad_pairs_exit_2(tmp_path):
    done = lmrl("rm", "--help")
    assert done.returncode == 0 and "lmrl rm train" in done.stdout and "lmrl rm eval" in \
        done.stdout
    pairs = tmp_path / "ties.jsonl"
    pairs.write_text('{"prompt": "1=", "chosen": "2", "rejected": "2"}\n')
    model = tmp_path / "tiny"
    assert lmrl("init-model", "--out", str(model), "--hidden-size", "16", "--layers", "1",
                "--heads", "2").returncode == 0
    done = lmrl("rm", "train", "--model", str(model), "--data", str(pairs), "--out",
                str(tmp_path / "rm"))
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert done.stderr.startswith("lmrl: error: ") and "chosen == rejected" in done.stderr


def test_a_list_flag_given_twice_adds_to_its_list_not_replaces_it():
    from lmrl.cli import parse_config

    cfg = parse_config(["--task", "sort_text", "--model", "some/lm", "--reward-model", "a=0.5",
                        "--stop", "x", "--reward-model", "b", "c", "--G", "4",
                        "--reward-model=d", "--stop=y"])
    assert cfg.task.reward_model == ("a=0.5", "b", "c", "d")
    assert cfg.policy.stop == ("x", "y") and cfg.train.G == 4
    once = parse_config(["--task", "sort_text", "--model", "some/lm", "--reward-fns", "m:f",
                         "m:g"])
    assert once.task.reward_fns == ("m:f", "m:g")


@pytest.mark.parametrize("flags, expected", [
    ([], "auto"), (["--compile"], "on"), (["--no-compile"], "off"),
    (["--compile", "--G", "4"], "on"), (["--compile", "off"], "off"),
    (["--compile", "auto"], "auto")])
def test_compile_is_auto_by_default_and_the_old_switch_still_reads(flags, expected):
    from lmrl.cli import parse_config

    cfg = parse_config(["--task", "sort_text", "--model", "some/lm", *flags])
    assert cfg.policy.compile == expected


@pytest.mark.parametrize("value, expected", [("true", "on"), ("false", "off"), ("auto", "auto")])
def test_a_config_file_may_still_say_compile_true_or_false(tmp_path, value, expected):
    from lmrl.cli import parse_config

    path = tmp_path / "c.yaml"
    path.write_text(f"policy:\n  model: some/lm\n  compile: {value}\ntask:\n  task: sort_text\n")
    assert parse_config(["--config", str(path)]).policy.compile == expected
