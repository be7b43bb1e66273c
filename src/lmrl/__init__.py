"""lmrl: reinforcement learning on language models, from a toy sorting task up."""

from lmrl._version import __version__
from lmrl.config import (
    AlgoConfig,
    Config,
    ConfigError,
    LogConfig,
    PolicyConfig,
    TaskConfig,
    TrainConfig,
)
from lmrl.errors import DataError, RewardError, RunDirError, UserError

__all__ = ["__version__", "AlgoConfig", "Config", "ConfigError", "DataError", "LogConfig",
           "PolicyConfig", "RewardError", "RunDirError", "RunResult", "TaskConfig",
           "TrainConfig", "UserError", "train"]


def __getattr__(name: str):
    # `train` is imported on first use: Python runs this file before any lmrl.X, and the trainer
    # brings plotting (matplotlib) and every stage with it, which `import lmrl.losses` must not.
    if name in ("train", "RunResult"):
        from lmrl import api

        return getattr(api, name)
    raise AttributeError(f"module 'lmrl' has no attribute {name!r}")
