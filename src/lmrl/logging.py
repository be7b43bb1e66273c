"""One metrics logger, several sinks: a JSONL line per step always (metrics.jsonl), and, when
asked for (`--logger tensorboard,wandb,mlflow`), TensorBoard events, a Weights & Biases run and
an MLflow run. Every sink gets the same flat metrics per step; W&B and MLflow also get the config
and, at each evaluation, the held-out completions as a table.

W&B and MLflow are configured by their own environment variables (WANDB_PROJECT, WANDB_ENTITY,
WANDB_MODE=offline, MLFLOW_TRACKING_URI, MLFLOW_EXPERIMENT_NAME); lmrl defaults the project /
experiment to "lmrl", the run name to the run directory's name, W&B's files to run_dir/wandb/ and
MLflow's store to run_dir/mlruns/. Their run ids are kept in run_dir/logger_runs.json so that
--resume continues the same runs.
"""

import importlib.util
import json
import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from lmrl import files
from lmrl.errors import ConfigError

RUN_IDS = "logger_runs.json"  # {"wandb": id, "mlflow": id} of this run directory


class JsonlSink:
    def __init__(self, run_dir: Path, config: dict, append: bool) -> None:
        self._file = (run_dir / "metrics.jsonl").open("a" if append else "w")

    def log(self, step: int, metrics: dict[str, float]) -> None:
        row = {"step": step, **{k: _clean(v) for k, v in metrics.items()}}
        self._file.write(json.dumps(row) + "\n")
        self._file.flush()

    def log_samples(self, step: int, samples: list[dict]) -> None:
        """Nothing: the trainer writes samples.jsonl itself (SampleLog)."""

    def close(self) -> None:
        self._file.close()


class TensorBoardSink:
    def __init__(self, run_dir: Path, config: dict, append: bool) -> None:
        from torch.utils.tensorboard import SummaryWriter

        self._writer = SummaryWriter(str(run_dir / "tensorboard"))

    def log(self, step: int, metrics: dict[str, float]) -> None:
        for key, value in metrics.items():
            self._writer.add_scalar(key, value, step)

    def log_samples(self, step: int, samples: list[dict]) -> None:
        """Nothing: TensorBoard has no table; the completions are in samples.jsonl."""

    def close(self) -> None:
        self._writer.close()


class WandbSink:
    def __init__(self, run_dir: Path, config: dict, append: bool) -> None:
        import wandb

        known = read_run_ids(run_dir).get("wandb") if append else None
        try:
            self._run = wandb.init(
                dir=str(run_dir), config=config, id=known, resume="allow" if known else None,
                project=os.environ.get("WANDB_PROJECT") or "lmrl",
                name=os.environ.get("WANDB_NAME") or run_dir.name)
        except wandb.errors.Error as err:  # not logged in, no network, a bad entity...
            again = "resume again" if append else "run again with --overwrite (no step ran)"
            raise ConfigError(f"wandb could not start a run ({str(err).rstrip('.')}); set "
                              "WANDB_MODE=offline to log without an account, or log in with "
                              f"`wandb login`; then {again}") from err
        self._table = wandb.Table
        write_run_id(run_dir, "wandb", self._run.id)

    def log(self, step: int, metrics: dict[str, float]) -> None:
        self._run.log(metrics, step=step)

    def log_samples(self, step: int, samples: list[dict]) -> None:
        if samples:
            columns, rows = sample_table(step, samples)
            self._run.log({"eval/samples": self._table(columns=columns, data=rows)}, step=step)

    def close(self) -> None:
        self._run.finish()


class MlflowSink:
    def __init__(self, run_dir: Path, config: dict, append: bool) -> None:
        from mlflow.tracking import MlflowClient

        uri = os.environ.get("MLFLOW_TRACKING_URI")
        if not uri:
            uri = (run_dir / "mlruns").resolve().as_uri()
            # MLflow 3 refuses a file store unless asked: this one is the run's own record.
            os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
        self._client = MlflowClient(tracking_uri=uri)
        self.run_id = read_run_ids(run_dir).get("mlflow") if append else None
        if self.run_id:
            self._client.update_run(self.run_id, status="RUNNING")
        else:
            self.run_id = self._start(run_dir.name, config)
            write_run_id(run_dir, "mlflow", self.run_id)

    def _start(self, name: str, config: dict) -> str:
        """A new run with the config as params (`train.lr`, ...); MLflow's params cannot change
        later, so a resumed run keeps the ones it started with."""
        from mlflow.entities import Param

        experiment = os.environ.get("MLFLOW_EXPERIMENT_NAME") or "lmrl"
        found = self._client.get_experiment_by_name(experiment)
        experiment_id = found.experiment_id if found else \
            self._client.create_experiment(experiment)
        run_id = self._client.create_run(experiment_id, run_name=name).info.run_id
        params = [Param(k, str(v)) for k, v in flatten(config).items()]
        for i in range(0, len(params), 100):  # MLflow's limit per batch
            self._client.log_batch(run_id, params=params[i:i + 100])
        return run_id

    def log(self, step: int, metrics: dict[str, float]) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        self._client.log_batch(self.run_id, metrics=[Metric(k, float(v), now, step)
                                                     for k, v in metrics.items()])

    def log_samples(self, step: int, samples: list[dict]) -> None:
        """One table, eval/samples.json, grown by each evaluation (MLflow appends)."""
        if samples:
            columns, rows = sample_table(step, samples)
            data = {c: [row[i] for row in rows] for i, c in enumerate(columns)}
            self._client.log_table(self.run_id, data=data, artifact_file="eval/samples.json")

    def close(self) -> None:
        self._client.set_terminated(self.run_id)


@dataclass(frozen=True)
class Sink:
    help: str
    open: Callable[[Path, dict, bool], object]
    packages: tuple[str, ...] = ()  # what must be importable
    extra: str = ""  # lmrl's pip extra that installs them


LOGGERS = {
    "jsonl": Sink("metrics.jsonl only; always written", JsonlSink),
    "tensorboard": Sink("also TensorBoard events in run_dir/tensorboard/", TensorBoardSink,
                        ("tensorboard",), "tensorboard"),
    "wandb": Sink("also a Weights & Biases run; WANDB_MODE=offline needs no account", WandbSink,
                  ("wandb",), "wandb"),
    "mlflow": Sink("also an MLflow run, stored in run_dir/mlruns/ unless MLFLOW_TRACKING_URI is "
                   "set", MlflowSink, ("mlflow", "pandas"), "mlflow"),
}


def sink_names(logger: str) -> tuple[str, ...]:
    """"tensorboard,wandb" -> ("jsonl", "tensorboard", "wandb"): jsonl always, each once."""
    names = [name.strip() for name in logger.split(",")]
    return tuple(dict.fromkeys(["jsonl", *names]))


def check_installed(logger: str) -> None:
    """Fail before a run starts, not after its first steps, when a sink's package is missing."""
    for name in sink_names(logger):
        sink = LOGGERS[name]
        missing = [p for p in sink.packages if importlib.util.find_spec(p) is None]
        if missing:
            raise ConfigError(f"--logger {name} needs {', '.join(missing)}, which is not "
                              f"installed: pip install 'lmrl[{sink.extra}]'")


class MetricsLogger:
    """Fans each step's metrics (and each evaluation's samples) out to the chosen sinks."""

    def __init__(self, run_dir: Path, logger: str = "jsonl", config: dict | None = None,
                 append: bool = False) -> None:
        self.path = run_dir / "metrics.jsonl"
        self._sinks = []
        try:
            for name in sink_names(logger):
                self._sinks.append(LOGGERS[name].open(run_dir, config or {}, append))
        except BaseException:
            self.close()
            raise

    def log(self, step: int, metrics: dict[str, float]) -> None:
        for sink in self._sinks:
            sink.log(step, metrics)

    def log_samples(self, step: int, samples: list[dict]) -> None:
        for sink in self._sinks:
            sink.log_samples(step, samples)

    def close(self) -> None:
        for sink in self._sinks:
            sink.close()


def sample_table(step: int, samples: list[dict]) -> tuple[list[str], list[list]]:
    """Columns step, prompt, completion and each reward, one row per sample."""
    rewards = list(dict.fromkeys(k for s in samples for k in s if k not in ("prompt",
                                                                            "completion")))
    columns = ["step", "prompt", "completion", *rewards]
    rows = [[step, cell(s["prompt"]), s["completion"], *(cell(s.get(k)) for k in rewards)]
            for s in samples]
    return columns, rows


def cell(value):
    """A table cell: numbers and strings as they are, chat messages and other objects as JSON
    text (a table column holds one type), nan (a reward's None) as None."""
    if isinstance(value, float) and math.isnan(value):
        return None
    if value is None or isinstance(value, int | float | str):
        return value
    return json.dumps(value, default=str)


def flatten(config: dict, prefix: str = "") -> dict:
    """{"train": {"lr": 1e-3}} -> {"train.lr": 1e-3}."""
    flat = {}
    for key, value in config.items():
        if isinstance(value, dict):
            flat.update(flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def read_run_ids(run_dir: Path) -> dict:
    try:
        return json.loads((run_dir / RUN_IDS).read_text())
    except (OSError, ValueError):
        return {}


def write_run_id(run_dir: Path, sink: str, run_id: str) -> None:
    files.write_text(run_dir / RUN_IDS, json.dumps({**read_run_ids(run_dir), sink: run_id}))


def _clean(value: float) -> float | None:
    """JSON has no NaN/inf; write null so that a bad value is visible, not a parse error."""
    value = float(value)
    return value if math.isfinite(value) else None


def read_metrics(run_dir: str | Path) -> list[dict]:
    with (Path(run_dir) / "metrics.jsonl").open() as f:
        return [json.loads(line) for line in f if line.strip()]
