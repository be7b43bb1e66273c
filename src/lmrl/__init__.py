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
from lmrl.trainer import train

__all__ = ["__version__", "AlgoConfig", "Config", "ConfigError", "LogConfig", "PolicyConfig",
           "TaskConfig", "TrainConfig", "train"]
