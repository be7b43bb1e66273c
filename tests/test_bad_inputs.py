"""Bad configs, data files, model directories, run directories and reward functions: each is one
`lmrl: error: ` block on stderr naming the problem, exit code 2, no traceback, and nothing in
the case's fresh directory changes (no run directory created, no file written or deleted).

The table of cases is bench/faults.py's (which also runs it against any source tree as
subprocesses, for before/after reports). Here each case runs in-process, `lmrl.cli.main(argv)`
in its own temporary directory, and one test runs three cases as real processes.
"""

import importlib
import os
import signal
import sys
import time
import traceback
from pathlib import Path

import pytest

pytest.importorskip("transformers")

import torch  # noqa: E402

import lmrl  # noqa: E402
from lmrl.cli import main  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))

import faults  # noqa: E402
from faults import CASES, RECOVERS, Case  # noqa: E402

CASE_LIMIT_S = 120  # a case that hangs (waiting on the hub, a reward) fails instead of hanging


@pytest.fixture(scope="module")
def resources(tmp_path_factory):
    """A tiny init-model output and a finished 2-step toy run, built once and copied per case."""
    dest = tmp_path_factory.mktemp("fault-resources")
    cwd = os.getcwd()
    threads = torch.get_num_threads()

    def cli(argv, where):
        os.chdir(where)
        try:
            main(argv)
        finally:
            os.chdir(cwd)

    try:
        faults.build_resources(dest, cli)
    finally:
        torch.set_num_threads(threads)
    return dest


class Outcome:
    def __init__(self, code, stderr, changed, seconds, work):
        self.code, self.stderr, self.changed, self.seconds, self.work = \
            code, stderr, changed, seconds, work


def _timeout(signum, frame):
    raise TimeoutError(f"case still running after {CASE_LIMIT_S} s")


def run_in_process(case: Case, root: Path, resources: Path, monkeypatch, capsys) -> Outcome:
    """lmrl.cli.main(argv) in the case's directory; an exception escaping main is what the real
    CLI would print as a traceback (exit 1)."""
    if case.skip_if_cuda and torch.cuda.is_available():
        pytest.skip("CUDA is available here")
    cwd, argv, env = faults.prepare(case, root, resources)
    before = faults.snapshot(root)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    monkeypatch.chdir(cwd)
    monkeypatch.setattr(sys, "path", [str(cwd), *sys.path])  # as `python -c` has the cwd first
    monkeypatch.setattr(sys, "dont_write_bytecode", True)  # a reward module's __pycache__
    importlib.invalidate_caches()
    threads = torch.get_num_threads()
    capsys.readouterr()
    previous = signal.signal(signal.SIGALRM, _timeout)
    signal.alarm(CASE_LIMIT_S)
    t0 = time.perf_counter()
    crash = ""
    try:
        main(argv)
        code = 0
    except SystemExit as exit_:
        code = exit_.code if isinstance(exit_.code, int) else (0 if exit_.code is None else 1)
    except BaseException:  # noqa: BLE001 - the real CLI would print this and exit 1
        code, crash = 1, traceback.format_exc()
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)
        seconds = time.perf_counter() - t0
        torch.set_num_threads(threads)
        for mod_name, module in list(sys.modules.items()):  # reward modules of this case
            if str(getattr(module, "__file__", None) or "").startswith(str(root)):
                del sys.modules[mod_name]
    stderr = capsys.readouterr().err + crash
    changed = faults.changes(before, faults.snapshot(root)) if root.is_dir() else ["-(root)"]
    return Outcome(code, stderr, changed, seconds, root / "work")


def report(case: Case, outcome: Outcome, found: list[str]) -> str:
    tail = outcome.stderr[-1500:]
    return (f"{case.id}: lmrl {' '.join(case.argv)}\n  " + "\n  ".join(found) +
            f"\n  stderr (end):\n{tail}")


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input_is_one_clear_error_and_changes_nothing(case, resources, tmp_path, monkeypatch,
                                                         capsys):
    outcome = run_in_process(case, tmp_path / "case", resources, monkeypatch, capsys)
    found = faults.problems(case, outcome.code, outcome.stderr, outcome.changed, outcome.seconds,
                            outcome.work)
    assert not found, report(case, outcome, found)


def test_the_table_covers_every_kind_of_bad_input():
    groups = {c.group for c in CASES}
    assert len(CASES) >= 60
    assert {"run dir", "resume", "outputs", "ranges", "flags", "model", "data", "reward fns",
            "reward fns (in training)", "plot", "sweep", "eval"} <= groups


@pytest.mark.parametrize("case", RECOVERS, ids=[c.id for c in RECOVERS])
def test_resume_recovers_from_a_half_written_metrics_line(case, resources, tmp_path, monkeypatch,
                                                          capsys):
    outcome = run_in_process(case, tmp_path / "case", resources, monkeypatch, capsys)
    found = faults.problems(case, outcome.code, outcome.stderr, [], outcome.seconds, outcome.work)
    assert not found, report(case, outcome, found)
    import json

    lines = (outcome.work / "r" / "metrics.jsonl").read_text().splitlines()
    steps = [json.loads(line)["step"] for line in lines]  # every line parses
    assert steps == sorted(steps) and steps[-1] == 3 and steps.count(2) == 1


SUBPROCESS_CASES = ["lr_nan", "data_invalid_utf8_line3", "reward_spec_no_module"]


@pytest.mark.slow  # three subprocesses; test_config's subprocess case stays fast
def test_real_process_exits_2_without_traceback(resources):
    """The exit code and stderr a shell sees (main's SystemExit, no traceback), three cases."""
    src_dir = Path(lmrl.__file__).resolve().parents[1]
    module = (src_dir / "lmrl" / "__main__.py").is_file()
    by_id = {c.id: c for c in CASES}
    for case_id in SUBPROCESS_CASES:
        result = faults.run_subprocess(by_id[case_id], src_dir, resources, timeout=120,
                                       module=module)
        assert not result.problems, (f"{case_id}: " + "; ".join(result.problems) +
                                     f"\n{result.stderr[-1500:]}")
        assert result.stderr.lstrip().startswith("lmrl: error: "), result.stderr[-1500:]
