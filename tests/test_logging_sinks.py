"""--logger wandb / mlflow: a tiny run's config, metrics and held-out completions, read back from
what each library itself wrote (W&B in offline mode: no account, no network; MLflow's file
store through its client API)."""

import json
import struct
import time
from pathlib import Path

import pytest

from lmrl.cli import main
from lmrl.config import Config, ConfigError
from lmrl.logging import RUN_IDS, MetricsLogger, check_installed, read_metrics
from lmrl.trainer import train

TASK = {"task": "sort_text", "n": 3, "V": 5, "heldout_size": 4}


@pytest.fixture(scope="module")
def tiny_lm(tmp_path_factory, one_thread) -> Path:
    out = tmp_path_factory.mktemp("lm") / "init"
    main(["init-model", "--out", str(out), "--hidden-size", "16", "--layers", "1", "--heads",
          "2", "--task", "sort_text", "--n", "3", "--V", "5", "--heldout-size", "4"])
    return out


def run(run_dir: Path, model: Path, logger: str, steps: int, resume: bool = False) -> None:
    """A text run (so that evaluations have completions) evaluating every step."""
    cfg = Config().replace(
        task=TASK, policy={"model": str(model), "max_new_tokens": 6},
        train={"steps": steps, "B": 2, "G": 2, "threads": 1},
        log={"run_dir": str(run_dir), "logger": logger, "eval_every": 1, "log_samples": 2,
             "progress": False, "resume": resume})
    train(cfg, verbose=False)


def samples_by_step(run_dir: Path) -> dict[int, list[dict]]:
    by_step: dict[int, list[dict]] = {}
    for line in (run_dir / "samples.jsonl").read_text().splitlines():
        row = json.loads(line)
        by_step.setdefault(row.pop("step"), []).append(row)
    return by_step


# --- Weights & Biases -------------------------------------------------------------------------

@pytest.fixture
def wandb_offline(monkeypatch, tmp_path):
    """Offline, quiet, and nothing written outside tmp_path (W&B's config, cache and data)."""
    wandb = pytest.importorskip("wandb")
    for name, value in {"WANDB_MODE": "offline", "WANDB_SILENT": "true", "WANDB_CONSOLE": "off",
                        "WANDB_DISABLE_GIT": "true", "WANDB_DISABLE_CODE": "true",
                        "WANDB_X_DISABLE_STATS": "true", "WANDB_X_DISABLE_MACHINE_INFO": "true",
                        "WANDB_PROJECT": "lmrl-test"}.items():
        monkeypatch.setenv(name, value)
    for name in ("WANDB_CONFIG_DIR", "WANDB_CACHE_DIR", "WANDB_DATA_DIR"):
        monkeypatch.setenv(name, str(tmp_path / "wandb-home" / name.lower()))
    monkeypatch.delenv("WANDB_NAME", raising=False)
    return wandb


def wandb_records(path: Path):
    """The protobuf records of an offline run's .wandb file: LevelDB's log format (32 KiB
    blocks of chunks with a 7-byte header: crc, length, type) after W&B's own 7-byte header."""
    from wandb.proto import wandb_internal_pb2

    data, block = path.read_bytes(), 32 * 1024
    assert data[:4] == b":W&B"
    pos, record = 7, b""
    while pos + 7 <= len(data):
        if block - pos % block < 7:  # a block's tail too short for a header is padding
            pos += block - pos % block
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        record += data[pos + 7:pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):  # FULL or LAST: a whole record
            parsed = wandb_internal_pb2.Record()
            parsed.ParseFromString(record)
            record = b""
            yield parsed


def wandb_run(run_dir: Path, run_id: str) -> tuple[dict, dict[int, dict], list[Path]]:
    """(config, history rows by step, the run's folders) of the offline runs with this id."""
    folders = sorted((run_dir / "wandb").glob(f"offline-run-*-{run_id}"))
    config, history = {}, {}
    for folder in folders:
        for record in wandb_records(folder / f"run-{run_id}.wandb"):
            kind = record.WhichOneof("record_type")
            if kind == "run":
                config.update({i.key: json.loads(i.value_json) for i in record.run.config.update})
            elif kind == "history":
                row = {i.key or "/".join(i.nested_key): json.loads(i.value_json)
                       for i in record.history.item}
                history.setdefault(row["_step"], {}).update(row)
    return config, history, folders


@pytest.mark.slow  # importing wandb and starting its service: ~3 s
def test_wandb_offline_run_has_the_config_metrics_and_completions(tmp_path, tiny_lm,
                                                                  wandb_offline):
    run_dir = tmp_path / "run"
    run(run_dir, tiny_lm, "wandb", steps=2)
    run_id = json.loads((run_dir / RUN_IDS).read_text())["wandb"]
    config, history, folders = wandb_run(run_dir, run_id)
    assert len(folders) == 1
    assert config["train"]["B"] == 2 and config["log"]["logger"] == "wandb"
    assert config["policy"]["model"] == str(tiny_lm)
    logged = read_metrics(run_dir)
    assert [r["step"] for r in logged] == [0, 1, 2] == sorted(history)
    for row in logged:  # every metrics.jsonl value, the same in W&B's history
        assert {k: history[row["step"]][k] for k in row if k != "step"} == \
            pytest.approx({k: v for k, v in row.items() if k != "step"})
    for step, samples in samples_by_step(run_dir).items():  # a completions table per evaluation
        table = json.loads((folders[0] / "files" / history[step]["eval/samples/path"])
                           .read_text())
        assert table["columns"][:3] == ["step", "prompt", "completion"]
        rows = [dict(zip(table["columns"], row, strict=True)) for row in table["data"]]
        assert rows == [{"step": step, **sample} for sample in samples]


@pytest.mark.slow
def test_wandb_resume_continues_the_same_run(tmp_path, tiny_lm, wandb_offline):
    run_dir = tmp_path / "run"
    run(run_dir, tiny_lm, "wandb", steps=1)
    run_id = json.loads((run_dir / RUN_IDS).read_text())["wandb"]
    # W&B names an offline session's folder by its start second and the run id: a session that
    # starts within the same second as the last one writes into that folder and loses the
    # earlier history. Real sessions last longer; these take under a second.
    time.sleep(1.1)
    run(run_dir, tiny_lm, "wandb", steps=3, resume=True)
    assert json.loads((run_dir / RUN_IDS).read_text())["wandb"] == run_id
    _, history, folders = wandb_run(run_dir, run_id)
    assert len(folders) == 2  # offline: one folder per session, both with the run's id
    assert sorted(history) == [0, 1, 2, 3]
    assert history[3]["train/reward_mean"] == read_metrics(run_dir)[-1]["train/reward_mean"]


# --- MLflow -----------------------------------------------------------------------------------

@pytest.fixture
def mlflow_client(monkeypatch):
    """MlflowClient for a run directory's own file store."""
    pytest.importorskip("mlflow")
    from mlflow.tracking import MlflowClient

    for name in ("MLFLOW_TRACKING_URI", "MLFLOW_EXPERIMENT_NAME"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")  # what the sink sets; undone after
    return lambda run_dir: MlflowClient(tracking_uri=(run_dir / "mlruns").resolve().as_uri())


@pytest.mark.slow  # importing mlflow: ~2 s
def test_mlflow_file_store_has_the_params_metrics_and_completions(tmp_path, tiny_lm,
                                                                  mlflow_client):
    run_dir = tmp_path / "run"
    run(run_dir, tiny_lm, "mlflow", steps=2)
    client = mlflow_client(run_dir)
    run_id = json.loads((run_dir / RUN_IDS).read_text())["mlflow"]
    found = client.get_run(run_id)
    assert found.info.status == "FINISHED" and found.info.run_name == "run"
    assert client.get_experiment(found.info.experiment_id).name == "lmrl"
    assert found.data.params["train.B"] == "2" and found.data.params["log.logger"] == "mlflow"
    logged = read_metrics(run_dir)
    for key in ("eval/exact_match", "train/reward_mean", "loss/total"):
        expected = {r["step"]: r[key] for r in logged if key in r}
        history = {m.step: m.value for m in client.get_metric_history(run_id, key)}
        assert history == pytest.approx(expected) and expected
    table = json.loads(Path(client.download_artifacts(run_id, "eval/samples.json",
                                                      str(tmp_path))).read_text())
    rows = [dict(zip(table["columns"], row, strict=True)) for row in table["data"]]
    assert rows == [{"step": step, **sample}
                    for step, samples in samples_by_step(run_dir).items() for sample in samples]


@pytest.mark.slow
def test_mlflow_resume_continues_the_same_run(tmp_path, tiny_lm, mlflow_client):
    run_dir = tmp_path / "run"
    run(run_dir, tiny_lm, "mlflow", steps=1)
    run(run_dir, tiny_lm, "mlflow", steps=3, resume=True)
    client = mlflow_client(run_dir)
    (experiment,) = [e for e in client.search_experiments() if e.name == "lmrl"]
    (found,) = client.search_runs([experiment.experiment_id])  # one run, continued
    assert found.info.status == "FINISHED"
    steps = [m.step for m in client.get_metric_history(found.info.run_id, "train/reward_mean")]
    assert sorted(steps) == [1, 2, 3]


# --- choosing sinks ---------------------------------------------------------------------------

def test_several_sinks_at_once_and_unknown_ones_rejected(tmp_path):
    assert Config().replace(log={"logger": "tensorboard, jsonl"}).log.logger
    with pytest.raises(ConfigError, match=r"log.logger='wanb' is unknown; valid: jsonl, "
                                          "tensorboard, wandb, mlflow"):
        Config().replace(log={"logger": "tensorboard,wanb"})
    logger = MetricsLogger(tmp_path, "jsonl,jsonl")  # each sink once
    logger.log(3, {"a": 1.0, "b": float("nan")})
    logger.log_samples(3, [{"prompt": "p", "completion": "c", "r": 1.0}])
    logger.close()
    assert read_metrics(tmp_path) == [{"step": 3, "a": 1.0, "b": None}]


@pytest.mark.parametrize("sink", ["wandb", "mlflow", "tensorboard"])
def test_a_missing_package_is_one_error_naming_the_extra(sink, tmp_path, monkeypatch, capsys):
    """Checked before the run directory is touched, with the pip command that fixes it."""
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name in ("wandb", "mlflow", "tensorboard")
                        else real(name, *a))
    with pytest.raises(ConfigError, match=rf"pip install 'lmrl\[{sink}\]'"):
        check_installed(f"jsonl,{sink}")
    with pytest.raises(SystemExit) as exit_info:
        main(["train", "--logger", sink, "--run-dir", str(tmp_path / "run"), "--steps", "1",
              "--no-progress"])
    assert exit_info.value.code == 2
    assert capsys.readouterr().err.startswith(f"lmrl: error: --logger {sink} needs ")
    assert not (tmp_path / "run").exists()


@pytest.mark.slow
def test_mlflow_tracking_uri_and_experiment_come_from_the_environment(tmp_path, mlflow_client,
                                                                      monkeypatch):
    from mlflow.tracking import MlflowClient

    store = tmp_path / "elsewhere"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", store.as_uri())
    monkeypatch.setenv("MLFLOW_EXPERIMENT_NAME", "mine")
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    logger = MetricsLogger(run_dir, "mlflow", config={"train": {"lr": 0.1}})
    logger.log(1, {"train/reward_mean": 0.25})
    logger.close()
    assert not (run_dir / "mlruns").exists()
    client = MlflowClient(tracking_uri=store.as_uri())
    found = client.get_run(json.loads((run_dir / RUN_IDS).read_text())["mlflow"])
    assert client.get_experiment(found.info.experiment_id).name == "mine"
    assert found.data.params == {"train.lr": "0.1"}
    assert found.data.metrics == {"train/reward_mean": 0.25}
