"""lmrl: reinforcement learning on language models, from a toy sorting task up."""

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

__all__ = ["AlgoConfig", "Config", "ConfigError", "LogConfig", "PolicyConfig", "TaskConfig",
           "TrainConfig", "train"]
__version__ = "0.1.0"
