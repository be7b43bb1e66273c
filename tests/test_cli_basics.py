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
