"""Bad inputs are user errors that name the file, line, field or function and say what to do:
data files, reward weights, overflowing rewards, plot arguments and sweep grids."""

import json
from pathlib import Path

import matplotlib.figure
import pytest
import torch

from lmrl.config import Config
from lmrl.errors import ConfigError, DataError, RewardError, UserError
from lmrl.plotting import plot_run, plot_runs
from lmrl.sweep import parse_grid, run_sweep
from lmrl.tasks.gsm8k import load_gsm8k
from lmrl.tasks.text import load_examples, load_reward_fn
from lmrl.tasks.user import UserTask

MODULE = "lmrl_test_data_errors_rewards"
SOURCE = """
    def ten(prompts, completions, **columns):
        return [10.0] * len(completions)

    def one(prompts, completions, **columns):
        return [1.0] * len(completions)
"""


@pytest.fixture
def mod(reward_module):
    return reward_module(MODULE, SOURCE)


USER_ROW = b'{"prompt": "q"}\n'
GSM8K_ROW = b'{"question": "q", "answer": "#### 1"}\n'


# ---------------------------------------------------------------- data files


@pytest.mark.parametrize(("load", "row"), [(load_examples, USER_ROW), (load_gsm8k, GSM8K_ROW)])
def test_invalid_utf8_names_the_file_and_line(tmp_path, load, row):
    path = tmp_path / "latin1.jsonl"
    path.write_bytes(row + row + b'{"prompt": "caf\xe9"}\n' + row)
    with pytest.raises(DataError, match=r"latin1\.jsonl:3: not valid UTF-8.*0xe9"):
        load(path)


@pytest.mark.parametrize("load", [load_examples, load_gsm8k])
def test_a_missing_file_or_a_directory_is_a_data_error(tmp_path, load):
    with pytest.raises(DataError, match="nope.jsonl does not exist"):
        load(tmp_path / "nope.jsonl")
    (tmp_path / "dir.jsonl").mkdir()
    with pytest.raises(DataError, match="dir.jsonl is not a file"):
        load(tmp_path / "dir.jsonl")


@pytest.mark.parametrize("load", [load_examples, load_gsm8k])
def test_an_unreadable_file_is_a_data_error(tmp_path, load, monkeypatch):
    path = tmp_path / "secret.jsonl"
    path.write_bytes(USER_ROW)

    def denied(self):  # as chmod 000 would, for a user other than root
        raise PermissionError(13, "Permission denied", str(self))

    monkeypatch.setattr(Path, "read_bytes", denied)
    with pytest.raises(DataError, match="cannot read .*secret.jsonl: Permission denied"):
        load(path)


@pytest.mark.parametrize("load", [load_examples, load_gsm8k])
@pytest.mark.parametrize("content", [b"", b"\n  \n"])
def test_an_empty_file_is_a_data_error(tmp_path, load, content):
    path = tmp_path / "empty.jsonl"
    path.write_bytes(content)
    with pytest.raises(DataError, match="empty.jsonl has no rows"):
        load(path)


@pytest.mark.parametrize(("line", "message"), [
    (b'["q"]', "must be a JSON object"),
    (b'"q"', "must be a JSON object"),
    (b'{"prompt": 3}', "'prompt' must be a string, not int 3"),
    (b'{"question": "q"}', "no 'prompt' column"),
    (b'{"prompt": "q"', "not valid JSON"),
])
def test_a_bad_jsonl_row_names_its_line(tmp_path, line, message):
    path = tmp_path / "rows.jsonl"
    path.write_bytes(USER_ROW + b"\n" + line + b"\n")
    with pytest.raises(DataError, match=message) as info:
        load_examples(path)
    assert "rows.jsonl:3" in str(info.value)


def test_a_bom_and_crlf_lines_are_read(tmp_path):
    path = tmp_path / "windows.jsonl"
    path.write_bytes(b"\xef\xbb\xbf" + USER_ROW.replace(b"\n", b"\r\n") * 2)
    assert load_examples(path) == [{"prompt": "q"}] * 2


def test_an_unreadable_parquet_file_is_a_data_error(tmp_path):
    pytest.importorskip("pyarrow")
    path = tmp_path / "broken.parquet"
    path.write_bytes(b"PAR1 this is not parquet")
    with pytest.raises(DataError, match="broken.parquet: cannot read it as parquet"):
        load_examples(path)


def test_a_parquet_row_without_a_prompt_names_the_row(tmp_path):
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    path = tmp_path / "rows.parquet"
    pq.write_table(pa.Table.from_pylist([{"prompt": "a"}, {"prompt": None}]), path)
    with pytest.raises(DataError, match=r"rows.parquet: row 1: 'prompt' must be a string"):
        load_examples(path)


# ---------------------------------------------------------------- reward weights and totals


@pytest.mark.parametrize("weight", ["nan", "inf", "-inf", "abc", ""])
def test_a_weight_must_be_a_finite_number(mod, weight):
    with pytest.raises(ConfigError, match=f"weight '{weight}' is not a finite number"):
        load_reward_fn(f"{mod}:one={weight}")


def test_weights_parse(mod):
    assert load_reward_fn(f"{mod}:one=-0.5").weight == -0.5
    assert load_reward_fn(f"{mod}:one=1e3").weight == 1000.0
    assert load_reward_fn(f"{mod}:one").weight == 1.0


def test_rewards_are_float64_and_an_overflowing_total_names_the_functions(tmp_path, mod):
    data = tmp_path / "d.jsonl"
    data.write_text("".join(f'{{"prompt": "q{i}"}}\n' for i in range(4)))
    fine = UserTask(str(data), [f"{mod}:ten=1e300", f"{mod}:one"], heldout_size=1)
    total, table = fine.score(fine.train[:1], [["a", "b"]])
    assert total.dtype == table["ten"].dtype == torch.float64
    assert total.tolist() == [[1e301 + 1, 1e301 + 1]]  # beyond float32, fine in float64
    big = UserTask(str(data), [f"{mod}:ten=1e308", f"{mod}:one"], heldout_size=1)
    with pytest.raises(RewardError) as info:
        big.score(big.train[:1], [["a", "b"]])
    message = str(info.value)
    assert "sample 0" in message and "'ten' (weight 1e+308) returned 10" in message
    assert "'one' (weight 1) returned 1" in message and "smaller weights" in message


# ---------------------------------------------------------------- lmrl plot


def write_run(path, rows):
    path.mkdir()
    (path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_plot_of_a_metric_no_run_logged_lists_the_logged_ones(tmp_path):
    run = write_run(tmp_path / "run", [{"step": 0, "train/reward_mean": 1.0,
                                        "eval/reward": None}])
    with pytest.raises(UserError, match="no run logged metric 'eval/oops'.*train/reward_mean"):
        plot_runs([run], tmp_path / "out.png", metric="eval/oops")
    assert not list(tmp_path.glob("*.png"))


def test_plot_cli_reports_an_unknown_metric_without_a_traceback(tmp_path, capsys):
    from lmrl.cli import main

    run = write_run(tmp_path / "run", [{"step": 0, "train/reward_mean": 1.0}])
    with pytest.raises(SystemExit) as exit_info:
        main(["plot", str(run), "--metric", "eval/oops", "--out", str(tmp_path / "o.png")])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "lmrl: error:" in err and "train/reward_mean" in err and "Traceback" not in err


def test_plot_of_a_path_that_is_not_a_run(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="empty has no metrics.jsonl"):
        plot_runs([tmp_path / "empty"], tmp_path / "out.png")
    with pytest.raises(UserError, match="missing is not a directory"):
        plot_runs([tmp_path / "missing"], tmp_path / "out.png")
    (tmp_path / "file").write_text("x")
    with pytest.raises(UserError, match="file is not a directory"):
        plot_run(tmp_path / "file")


def test_plot_skips_runs_without_the_metric_with_a_note(tmp_path, capsys):
    has = write_run(tmp_path / "has", [{"step": 0, "eval/exact_match": 0.5}])
    lacks = write_run(tmp_path / "lacks", [{"step": 0, "train/reward_mean": 1.0}])
    out = plot_runs([has, lacks], tmp_path / "out.png")
    assert out.stat().st_size > 1000
    assert f"note: {lacks} did not log 'eval/exact_match'" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["has", "lacks", "out.png"]  # no temp


def test_a_failed_save_leaves_neither_the_png_nor_a_temp_file(tmp_path, monkeypatch):
    run = write_run(tmp_path / "run", [{"step": 0, "eval/exact_match": 0.5}])

    def half_written(self, fname, **kwargs):
        with open(fname, "wb") as f:
            f.write(b"\x89PNG")
        raise OSError("disk full")

    monkeypatch.setattr(matplotlib.figure.Figure, "savefig", half_written)
    with pytest.raises(OSError, match="disk full"):
        plot_runs([run], tmp_path / "out.png")
    with pytest.raises(OSError, match="disk full"):
        plot_run(run)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]
    assert sorted(p.name for p in run.iterdir()) == ["metrics.jsonl"]


# ---------------------------------------------------------------- lmrl sweep --grid


@pytest.mark.parametrize(("spec", "message"), [
    ("delta", "must look like name=v1,v2"),
    ("delta=", "must look like name=v1,v2"),
    ("delta=raw,", "must look like name=v1,v2"),
    ("=raw", "must look like name=v1,v2"),
    ("detla=raw", r"unknown config field 'detla'.*did you mean delta.*valid fields: .*kl_weight"),
    ("G=abc", "'abc' does not parse as int; write e.g. --grid G=1,2"),
    ("lr=x", r"'x' does not parse as float \| None; write e.g. --grid lr=1.0,2.0"),
    ("progress=maybe", "not a bool; use true or false"),
    ("reward_fns=m:f", "cannot vary reward_fns"),
    ("seed=1,2", "--seeds"),
])
def test_a_bad_grid_is_a_config_error(spec, message):
    with pytest.raises(ConfigError, match=message):
        parse_grid(Config(), [spec])


def test_grid_values_parse():
    grid = parse_grid(Config(), ["kl-weight=0,0.1", "G=2,4", "progress=false,yes",
                                 "lr=none,1e-3"])
    assert grid == {"kl_weight": [0.0, 0.1], "G": [2, 4], "progress": [False, True],
                    "lr": [None, 1e-3]}
    with pytest.raises(ConfigError, match="given twice"):
        parse_grid(Config(), ["G=2", "G=4"])


def test_a_bad_combination_fails_before_any_run_trains(tmp_path):
    trained = []
    with pytest.raises(ConfigError):
        run_sweep(Config(), {"delta": ["raw", "bogus"]}, [0], tmp_path / "sweep",
                  train_fn=lambda cfg, verbose: trained.append(cfg))
    assert trained == [] and not (tmp_path / "sweep").exists()
