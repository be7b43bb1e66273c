"""`--config FILE` (YAML, TOML, a run's config.json/config.yaml), TRL's flag names, and one
naming scheme for train, sft and eval."""

import dataclasses
import json
import re
from pathlib import Path

import pytest

from lmrl import config_files
from lmrl.cli import EvalArgs, SFTArgs, cli_parse, cmd_sweep, main, parse_config
from lmrl.config import Config, ConfigError
from lmrl.errors import UsageError
from lmrl.logging import read_metrics
from lmrl.presets import lecture
from lmrl.trainer import train
from lmrl.trl_names import TRL_NAMES, readme_table

README = Path(__file__).resolve().parents[1] / "README.md"
TOY = ["--n", "4", "--V", "6", "--heldout-size", "50", "--dim", "16", "--hidden", "32",
       "--B", "8", "--G", "4", "--steps", "4", "--eval-every", "2", "--threads", "1",
       "--no-progress"]
# The settings each file below spells.
FLAGS = ["--kl-weight", "0.05", "--G", "8", "--delta", "centered", "--task", "sort", "--n", "5",
         "--lr", "0.001"]


def write(tmp_path: Path, name: str, text: str) -> str:
    (tmp_path / name).write_text(text)
    return str(tmp_path / name)


@pytest.mark.parametrize("name, text", [
    ("flat.yaml", "kl_weight: 0.05\nG: 8\ndelta: centered\ntask: sort\nn: 5\nlr: 1.0e-3\n"),
    ("dashed.yml", "kl-weight: 0.05\nG: 8\ndelta: centered\ntask: sort\nn: 5\nlr: 0.001\n"),
    # YAML 1.1 reads 1e-3 (no dot) as a string; it is still taken as the number.
    ("nested.yaml", "task: {task: sort, n: 5}\nalgo: {kl_weight: 0.05, delta: centered}\n"
                    "train: {G: 8, lr: 1e-3}\n"),
    ("mixed.toml", "G = 8\nlr = 0.001\ntask = \"sort\"\nn = 5\n[algo]\nkl_weight = 0.05\n"
                   "delta = \"centered\"\n"),
    ("flat.json", json.dumps({"kl_weight": 0.05, "G": 8, "delta": "centered", "task": "sort",
                              "n": 5, "lr": 0.001})),
])
def test_a_file_sets_what_the_flags_set(tmp_path, name, text):
    assert parse_config(["--config", write(tmp_path, name, text)]) == parse_config(FLAGS)


def test_config_from_file_for_python_callers(tmp_path):
    path = write(tmp_path, "c.yaml", "G: 6\nalgo: {delta: centered}\n")
    assert Config.from_file(path) == Config().replace(train={"G": 6}, algo={"delta": "centered"})
    assert Config.from_file(path, base=lecture()).train.B == lecture().train.B
    with pytest.raises(ConfigError, match="needs a causal LM"):  # validated as a whole
        Config.from_file(write(tmp_path, "text.yaml", "task: sort_text\n"))


def test_every_unknown_key_is_named_at_once(tmp_path):
    """A file written for TRL is translated in one pass."""
    path = write(tmp_path, "trl.yaml", "num_generations: 8\nbeta: 0.04\nlearning_rate: 1.0e-3\n"
                                       "G: 8\n")
    with pytest.raises(ConfigError) as error:
        parse_config(["--config", path])
    assert [line.split(";")[1].split("?")[0] for line in str(error.value).splitlines()] == \
        [" did you mean G", " did you mean kl_weight", " did you mean lr"]


def test_preset_then_file_then_flags(tmp_path):
    path = write(tmp_path, "c.yaml", "G: 6\nsteps: 50\n")
    cfg = parse_config(["--preset", "lecture", "--config", path, "--steps", "70"])
    assert cfg.train.G == 6  # the file over the preset's 10
    assert cfg.train.steps == 70  # the flag over the file
    assert cfg.train.B == lecture().train.B and cfg.algo.loss == "naive"  # the preset's own
    assert parse_config(["--steps", "70", "--config", path]).train.steps == 70  # any order


def test_a_file_need_not_be_valid_alone(tmp_path):
    """A text task in the file, its model from a flag: only the final config is validated."""
    path = write(tmp_path, "c.yaml", "task: sort_text\n")
    assert parse_config(["--config", path, "--model", "m"]).task.task == "sort_text"
    with pytest.raises(UsageError, match="needs a causal LM"):
        parse_config(["--config", path])


@pytest.mark.parametrize("text, message", [
    ("kl-wieght: 1\n", r"c\.yaml: unknown key 'kl-wieght'; did you mean kl-weight\?"),
    ("g: 4\n", r"unknown key 'g'; did you mean G\?"),
    ("num_generations: 4\n",
     r"unknown key 'num_generations'; did you mean G\? \(TRL's name\) — samples"),
    ("beta: 0.1\n", r"did you mean kl_weight\?"),
    ("logging_steps: 5\n",
     r"unknown key 'logging_steps' \(TRL's name; lmrl has no such option\) — lmrl logs"),
    ("algo: {G: 4}\n", r"G is a train option, not one of algo; move it under train"),
    ("algo: {bogus: 4}\n", r"c\.yaml: algo: unknown key 'bogus'"),
    ("G: four\n", r"c\.yaml: train\.G must be an integer, not 'four'"),
    ("G: 4.0\n", r"train\.G must be an integer"),
    ("progress: 1\n", r"log\.progress must be true or false, not 1"),
    ("lr: fast\n", r"train\.lr must be a number, not 'fast'"),
    ("stop: [1, 2]\n", r"policy\.stop must be a list of strings"),
    ("model: 3\n", r"policy\.model must be a string, not 3"),
    ("G: 4\ntrain: {G: 5}\n", r"train\.G is set twice"),
    ("G: [4\n", r"not valid YAML: line 2"),
    ("- G\n", r"must be a mapping of option names to values, not a list"),
])
def test_bad_files_are_one_clear_error(tmp_path, capsys, text, message):
    path = write(tmp_path, "c.yaml", text)
    with pytest.raises(SystemExit) as exit_:
        main(["train", "--config", path, *TOY])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("lmrl: error: ") and "Traceback" not in err
    assert re.search(message, err), err


@pytest.mark.parametrize("name, text, message", [
    ("c.ini", "G=4", r"unknown file type '\.ini'; use \.yaml, \.yml, \.toml or \.json"),
    ("c.toml", "G = \n", r"not valid TOML"),
    ("c.json", "{G: 4}", r"not valid JSON"),
])
def test_file_types(tmp_path, name, text, message):
    with pytest.raises(ConfigError, match=message):
        parse_config(["--config", write(tmp_path, name, text)])


def test_missing_and_empty_files(tmp_path):
    with pytest.raises(ConfigError, match="nope.yaml: cannot read it"):
        parse_config(["--config", str(tmp_path / "nope.yaml")])
    assert parse_config(["--config", write(tmp_path, "empty.yaml", "")]) == Config()
    with pytest.raises(UsageError, match="--config: expected one argument"):
        parse_config(["--config"])


@pytest.mark.parametrize("key", ["trust_remote_code", "overwrite", "resume"])
def test_a_file_never_asks_for_what_only_a_flag_may(tmp_path, capsys, key):
    """Running a model's own code, replacing a run, resuming it: a run's saved config records
    them, and reusing the file must not do them."""
    path = write(tmp_path, "c.yaml", f"{key}: true\nmodel: m\ntask: sort_text\n")
    cfg = parse_config(["--config", path])
    assert not (cfg.policy.trust_remote_code or cfg.log.overwrite or cfg.log.resume)
    assert f"sets {'policy' if key == 'trust_remote_code' else 'log'}.{key}: true; ignored: " \
           f"only the --{key.replace('_', '-')} flag" in capsys.readouterr().out
    assert parse_config(["--config", path, f"--{key.replace('_', '-')}"]) is not None


def comparable(run_dir: Path) -> list[dict]:
    return [{k: v for k, v in row.items() if not k.startswith("time/")}
            for row in read_metrics(run_dir)]


@pytest.mark.parametrize("saved", ["config.yaml", "config.json"])
def test_a_runs_saved_config_reproduces_it_bit_for_bit(tmp_path, capsys, saved):
    first = tmp_path / "first"
    main(["train", *TOY, "--seed", "3", "--delta", "rloo", "--kl-weight", "0.05",
          "--run-dir", str(first)])
    again = parse_config(["--config", str(first / saved), "--run-dir", str(tmp_path / "again")])
    original = Config.from_dict(json.loads((first / "config.json").read_text()))
    assert again == original.replace(log={"run_dir": str(tmp_path / "again")})
    train(again, verbose=False)
    assert comparable(tmp_path / "again") == comparable(first)
    assert (tmp_path / "again" / "config.yaml").read_text().replace("again", "first") == \
        (first / "config.yaml").read_text()


def test_overwrite_replaces_the_saved_config_yaml(tmp_path, capsys):
    run = str(tmp_path / "r")
    main(["train", *TOY, "--steps", "1", "--run-dir", run])
    main(["train", *TOY, "--steps", "1", "--run-dir", run, "--overwrite", "--seed", "1"])
    assert "note: kept" not in capsys.readouterr().out  # config.yaml is lmrl's: replaced
    assert "seed: 1" in (tmp_path / "r" / "config.yaml").read_text()


def test_sweep_takes_a_config_file_after_the_double_dash(tmp_path, capsys):
    path = write(tmp_path, "c.yaml", "steps: 2\nB: 4\n")
    main(["sweep", "--grid", "delta=raw,centered", "--out", str(tmp_path / "sw"), "--",
          "--config", path, *TOY[:10], "--no-progress", "--threads", "1"])
    rows = [json.loads(line) for line in (tmp_path / "sw" / "results.jsonl").open()]
    saved = [json.loads((Path(r["run_dir"]) / "config.json").read_text())["train"] for r in rows]
    assert [(t["steps"], t["B"]) for t in saved] == [(2, 4), (2, 4)]
    with pytest.raises(UsageError, match="put it after --"):
        cmd_sweep(["--config", path, "--grid", "delta=raw", "--", *TOY])


# ------------------------------------------------------------------- TRL's names

@pytest.mark.parametrize("trl_name", [n for n in TRL_NAMES if n not in config_files.names(Config)])
def test_a_trl_flag_names_lmrls(capsys, trl_name):
    flag = "--" + trl_name.replace("_", "-")
    with pytest.raises(SystemExit) as exit_:
        main(["train", flag, "1", *TOY])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    lmrl = TRL_NAMES[trl_name][0]
    if lmrl is None:
        assert f"{flag} is TRL's name; lmrl has no such option" in err, err
    else:
        assert f"{flag} is TRL's name: did you mean --{lmrl.replace('_', '-')}?" in err, err


def test_trl_hints_in_the_issue(capsys):
    with pytest.raises(SystemExit):
        main(["train", "--num-generations", "4", "--beta", "0.1", "--num-iterations", "2",
              "--epsilon", "0.1", "--per-device-train-batch-size", "8", *TOY])
    err = capsys.readouterr().err
    for hint in ("did you mean --G?", "did you mean --kl-weight?", "did you mean --mu?",
                 "did you mean --clip-eps?", "did you mean --B? — lmrl's B counts prompts"):
        assert hint in err
    assert err.index("did you mean") < err.index("For full helptext")


def test_sft_hints_only_its_own_flags():
    with pytest.raises(UsageError) as error:
        cli_parse(SFTArgs, ["--model", "m", "--out", "o", "--learning-rate", "1", "--beta", "1"],
                  "lmrl sft", "")
    assert "did you mean --lr?" in str(error.value)
    assert "--kl-weight" not in str(error.value)  # sft has no KL term


def test_the_trl_table_names_real_options():
    trl = pytest.importorskip("trl")
    theirs = {f.name for cls in (trl.GRPOConfig, trl.ScriptArguments, trl.ModelConfig)
              for f in dataclasses.fields(cls)}
    ours = set(config_files.names(Config))
    assert set(TRL_NAMES) <= theirs
    assert {lmrl for lmrl, _ in TRL_NAMES.values() if lmrl} <= ours
    for name in ("num_generations", "beta", "num_iterations", "epsilon", "epsilon_high",
                 "learning_rate", "max_completion_length", "per_device_train_batch_size",
                 "max_steps", "output_dir", "loss_type", "scale_rewards", "save_steps",
                 "lr_scheduler_type", "max_grad_norm", "gradient_accumulation_steps",
                 "model_name_or_path", "dataset_name", "logging_steps", "num_train_epochs"):
        assert name in TRL_NAMES


def test_readme_has_the_trl_table():
    assert readme_table() in README.read_text()


# ------------------------------------------------------------------- one naming scheme

def test_sft_takes_trains_names_and_its_old_ones():
    new = cli_parse(SFTArgs, ["--model", "m", "--run-dir", "o", "--B", "8", "--eval-limit", "5"],
                    "lmrl sft", "")
    old = cli_parse(SFTArgs, ["--model", "m", "--out", "o", "--batch-size", "8",
                              "--eval-examples", "5"], "lmrl sft", "")
    assert new == old and (new.run_dir, new.B, new.eval_limit) == ("o", 8, 5)


def test_eval_takes_trains_names_and_its_old_ones():
    new = cli_parse(EvalArgs, ["--run-dir", "r", "--eval-limit", "2", "--eval-samples", "3",
                               "--log-samples", "0"], "lmrl eval", "")
    old = cli_parse(EvalArgs, ["--run", "r", "--limit", "2", "--samples", "3", "--show", "0"],
                    "lmrl eval", "")
    assert new == old and (new.run_dir, new.eval_limit, new.eval_samples) == ("r", 2, 3)


def test_sft_and_eval_read_config_files(tmp_path, capsys):
    path = write(tmp_path, "sft.yaml", "model: m\nout: o\nbatch-size: 8\nlr: 3e-4\nn: 4\n")
    a = cli_parse(SFTArgs, ["--config", path, "--steps", "7"], "lmrl sft", "")
    assert (a.model, a.run_dir, a.B, a.lr, a.task.n, a.steps) == ("m", "o", 8, 3e-4, 4, 7)
    bad = write(tmp_path, "bad.yaml", "kl_weight: 0.1\n")  # a train option sft does not have
    with pytest.raises(ConfigError, match="bad.yaml: unknown key 'kl_weight'"):
        cli_parse(SFTArgs, ["--config", bad], "lmrl sft", "")
    path = write(tmp_path, "eval.toml", "run = \"r\"\ntrust_remote_code = true\n")
    a = cli_parse(EvalArgs, ["--config", path], "lmrl eval", "")
    assert a.run_dir == "r" and a.trust_remote_code is False
    with pytest.raises(UsageError, match="--model"):  # a required flag the file left out
        cli_parse(SFTArgs, ["--config", write(tmp_path, "part.yaml", "out: o\n")],
                  "lmrl sft", "")
