"""The errors a user can fix. The CLI prints each as one `lmrl: error: ...` block and exits 2
(cli.main); anything else escaping is lmrl's own bug and keeps its traceback."""


class UserError(Exception):
    """A bad input, config, file or reward function, with the change that fixes it."""


class ConfigError(UserError, ValueError):
    """A setting that cannot work, with the change that fixes it."""


class RewardError(UserError, RuntimeError):
    """A reward function failed, hung, or returned something that is not one finite float per
    completion; the message names the function and the sample."""


class DataError(UserError, ValueError):
    """A data file that cannot be read as rows (named with its file and line or row)."""


class RunDirError(UserError, FileExistsError):
    """A run or output directory lmrl may not write, replace or resume."""


class ModelLoadError(UserError, FileNotFoundError):
    """A model directory or hub name that cannot be loaded."""


class NonFiniteError(RuntimeError):
    """Training produced non-finite numbers too often to continue (not a user input error, but
    not an lmrl bug either: the run stops with its last good checkpoint)."""


class RunInterrupted(KeyboardInterrupt):
    """SIGINT or SIGTERM stopped a run after a checkpoint; the message says how to resume. A
    KeyboardInterrupt, so that Python callers stop as on Ctrl-C; the CLI exits 128 + signum."""

    def __init__(self, signum: int, message: str) -> None:
        super().__init__(message)
        self.signum = signum


class UsageError(UserError):
    """Command-line arguments the parser rejected (it printed the details itself)."""
