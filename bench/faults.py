"""Bad inputs, one table: bad configs, data files, model directories, run directories and reward
functions, each run through the CLI as a user would, against a given source tree.

    python bench/faults.py --src /tmp/lmrl-before > before.md   # lmrl as of some commit
    python bench/faults.py --src .              > after.md       # this checkout
    python bench/faults.py --src . --only lr_nan model_missing   # a few cases
    python bench/faults.py --list                                 # the case ids

Each case runs as `PYTHONPATH=SRC/src python -c 'from lmrl.cli import main; main()' ARGS` in a
fresh temporary directory holding whatever the case needs (a tiny model, a finished quick run, a
data file, a reward module), and the table says what it did: exit code, its error line, whether
a traceback was printed, and which files in the temporary directory changed.

The contract the cases check (tests/test_bad_inputs.py runs the same table in-process): a user
error is one block on stderr starting with `lmrl: error: ` that names what is wrong (the case's
regular expression is searched in that block), exit code 2, no traceback, and nothing in the
working directory changes (no run directory created, no file written or deleted): the error is
found before anything is written. Cases marked in_training fail while training runs (a reward
function that raises or returns garbage): only the exit code and message are checked there, and,
where the failure comes after step 1, that a checkpoint was written.

This module imports nothing from lmrl: it is the shared table, and runs against any tree.
"""

import argparse
import hashlib
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

# --------------------------------------------------------------------------------------------
# Shared arguments and files

# The quick toy run every toy case adds to (fails fast on a bad flag, finishes in ~0.1 s of
# training if a bad flag is wrongly accepted).
TOY = ["--steps", "2", "--n", "4", "--V", "6", "--heldout-size", "20", "--B", "4", "--G", "4",
       "--no-progress"]
# A finished quick run's own settings (the run resource below): resuming needs the same config.
RESUME = ["--n", "4", "--V", "6", "--heldout-size", "20", "--no-progress"]
# A causal-LM run on the tiny model (copied to m/ in the case's directory).
LM_RUN = ["--steps", "2", "--B", "2", "--G", "2", "--max-new-tokens", "4", "--eval-every", "100",
          "--no-progress", "--threads", "1"]
LM = ["--model", "m", "--task", "sort_text", "--n", "3", "--heldout-size", "4", *LM_RUN]
USER = ["--model", "m", "--task", "user", "--heldout-size", "2", *LM_RUN]
SFT = ["--task", "sort_text", "--n", "3", "--steps", "1", "--batch-size", "2", "--eval-every", "1",
       "--eval-examples", "2", "--no-progress", "--threads", "1"]
INIT = ["--task", "sort_text", "--n", "3", "--hidden-size", "16", "--layers", "1", "--heads", "2"]
EVAL = ["--task", "sort_text", "--n", "3", "--heldout-size", "4", "--limit", "2", "--show", "0",
        "--threads", "1"]

ROWS = "".join(f'{{"prompt": "{i} {i + 1}=", "answer": "{i}"}}\n' for i in range(8))
RW_OK = ("def f(prompts, completions, **columns):\n"
         "    return [0.0] * len(completions)\n\n"
         "notcallable = 3\n")


def reward_module(body: str) -> str:
    return "def f(prompts, completions, **columns):\n" + "".join(
        f"    {line}\n" for line in body.splitlines())


# The pre-flight batch is call 1, step 0's evaluation call 2, step 1 call 3: fails in step 2
# (in step 3 on a tree without the pre-flight: also past step 1).
RW_LATE = ("CALLS = [0]\n\n\n"
           "def f(prompts, completions, **columns):\n"
           "    CALLS[0] += 1\n"
           "    if CALLS[0] >= 4:\n"
           "        raise ValueError('cannot score ' + repr(completions[0]))\n"
           "    return [0.0] * len(completions)\n")


# --------------------------------------------------------------------------------------------
# Setups: each gets the case's working directory (work/, where the CLI runs)

def truncate(path: Path) -> None:
    """Keep the first half of a file's bytes, as a crash or a full disk leaves it."""
    data = path.read_bytes()
    path.write_bytes(data[:len(data) // 2])


def corrupt_checkpoints(work: Path) -> None:
    """Truncate every checkpoint file of the run r/ (checkpoints/step-N/* and, older format,
    checkpoint.pt), so that no checkpoint there can be resumed from."""
    run = work / "r"
    targets = [p for p in (run / "checkpoints").rglob("*") if p.is_file()] + \
        [p for p in run.glob("checkpoint*") if p.is_file()]
    assert targets, f"no checkpoint files in {run}: {sorted(os.listdir(run))}"
    for path in targets:
        truncate(path)


def delete_checkpoints(work: Path) -> None:
    """The run r/ as if it had stopped before its first checkpoint."""
    run = work / "r"
    shutil.rmtree(run / "checkpoints", ignore_errors=True)
    for path in run.glob("checkpoint*"):
        path.unlink()


def delete_weights(work: Path) -> None:
    for path in list((work / "m").glob("*.safetensors")) + list((work / "m").glob("*.bin")):
        path.unlink()


def delete_tokenizer(work: Path) -> None:
    m = work / "m"
    for pattern in ("tokenizer*.json", "vocab*", "merges*", "special_tokens_map.json"):
        for path in m.glob(pattern):
            path.unlink()


def truncate_weights(work: Path) -> None:
    for path in (work / "m").glob("*.safetensors"):
        truncate(path)


def truncate_metrics_line(work: Path) -> None:
    """A crash while a metrics line was written: the run's last line is half a line."""
    path = work / "r" / "metrics.jsonl"
    text = path.read_text()
    path.write_text(text + text.splitlines()[-1][:25])


# --------------------------------------------------------------------------------------------
# The table

@dataclass(frozen=True)
class Case:
    id: str
    group: str
    argv: tuple[str, ...]
    expect: str
    """Regular expression searched (case-insensitive) in the `lmrl: error: ` block."""
    needs: tuple[str, ...] = ()
    """Resources copied into work/: "model" (a tiny init-model output) as m/, "run" (a finished
    2-step toy run) as r/."""
    files: dict = field(default_factory=dict)
    """Files to write, relative to the case root: str (text), bytes, or None (a directory)."""
    setup: Callable[[Path], None] | None = None
    """Called with work/ after needs and files are in place."""
    cwd: str = "work"
    """Where the CLI runs, relative to the case root."""
    env: dict = field(default_factory=dict)
    """Environment variables; "{root}" is replaced by the case root."""
    in_training: bool = False
    """Fails while training runs: the unchanged-files check is skipped."""
    expect_checkpoint: str | None = None
    """A run directory (relative to work/) that must hold a checkpoint after the failure."""
    max_seconds: float | None = None
    """The case must finish within this (a missing model must not wait on the hub)."""
    skip_if_cuda: bool = False
    exit_code: int = 2


def C(id, group, argv, expect, **kw) -> Case:  # noqa: N802 - a table row
    return Case(id, group, tuple(argv), expect, **kw)


def name(field_name: str) -> str:
    """A field's name as a regular expression: weight_decay or --weight-decay."""
    return field_name.replace("_", "[_-]")


def without(args: list[str], *flags: str) -> list[str]:
    """args less each `--flag value` pair named (so that the case's own value is the one read)."""
    out, skip = [], False
    for a in args:
        if skip:
            skip = False
        elif a in flags:
            skip = True
        else:
            out.append(a)
    return out


def bad_value(group, field_name, value, base=TOY, **kw) -> Case:
    flag = "--" + field_name.replace("_", "-")
    case_id = f"{field_name}_{value}".replace("-", "neg").replace(".", "p")
    return C(case_id, group, ["train", flag, value, *without(base, flag)], name(field_name), **kw)


NOTES = {"work/notes.txt": "my notes\n"}
RUN_R = r"\br\b.*(run|train)|(run|train).*\br\b"  # names r/ and says it is a training run
# HOME moved into the case; the caches that torch, transformers and matplotlib keep under it stay
# where they are, so that only lmrl's own writes show.
_HOME = os.path.expanduser("~")
FAKE_HOME = {"HOME": "{root}/home",
             "XDG_CACHE_HOME": os.environ.get("XDG_CACHE_HOME", f"{_HOME}/.cache"),
             "XDG_CONFIG_HOME": os.environ.get("XDG_CONFIG_HOME", f"{_HOME}/.config"),
             "HF_HOME": os.environ.get("HF_HOME", f"{_HOME}/.cache/huggingface"),
             "MPLCONFIGDIR": os.environ.get("MPLCONFIGDIR", f"{_HOME}/.config/matplotlib")}
PRECIOUS = {"work/precious/notes.txt": "not made by lmrl\n"}

CASES: list[Case] = [
    # -- run directories: never delete or write into what is not an lmrl run -------------------
    C("rundir_cwd_overwrite", "run dir", ["train", "--run-dir", ".", "--overwrite", *TOY],
      r"(working|current) directory|directory you are in|\bcwd\b", files=NOTES),
    C("rundir_user_folder_overwrite", "run dir",
      ["train", "--run-dir", "precious", "--overwrite", *TOY], r"precious", files=PRECIOUS),
    C("rundir_is_file", "run dir", ["train", "--run-dir", "notes.txt", *TOY], r"notes\.txt",
      files=NOTES),
    C("rundir_is_file_overwrite", "run dir",
      ["train", "--run-dir", "notes.txt", "--overwrite", *TOY], r"notes\.txt", files=NOTES),
    C("rundir_home_overwrite", "run dir", ["train", "--run-dir", "{root}/home", "--overwrite",
                                           *TOY], r"home",
      files={"home/.profile": "export X=1\n", "work/notes.txt": "x\n"}, env=FAKE_HOME),
    C("rundir_parent_overwrite", "run dir", ["train", "--run-dir", "..", "--overwrite", *TOY],
      r"\.\.|parent|contains|working directory", cwd="work/proj",
      files={"work/proj/notes.txt": "x\n", "work/other.txt": "y\n"}),
    C("rundir_nonempty_no_flag", "run dir", ["train", "--run-dir", "r", *TOY],
      r"--overwrite|--resume", needs=("run",)),
    # -- resume --------------------------------------------------------------------------------
    C("resume_user_folder", "resume", ["train", "--run-dir", "precious", "--resume", *TOY],
      r"precious", files=PRECIOUS),
    C("resume_run_without_checkpoint", "resume",
      ["train", "--run-dir", "r", "--resume", "--steps", "3", *RESUME], r"checkpoint",
      needs=("run",), setup=delete_checkpoints),
    C("resume_missing_dir", "resume", ["train", "--run-dir", "nothere", "--resume", *TOY],
      r"nothere|checkpoint"),
    C("resume_truncated_checkpoint", "resume",
      ["train", "--run-dir", "r", "--resume", "--steps", "3", *RESUME],
      r"checkpoint", needs=("run",), setup=corrupt_checkpoints),
    C("resume_changed_config", "resume",
      ["train", "--run-dir", "r", "--resume", "--steps", "3", "--delta", "raw", *RESUME],
      r"delta", needs=("run",)),
    C("resume_and_overwrite", "resume",
      ["train", "--run-dir", "r", "--resume", "--overwrite", "--steps", "3", *RESUME],
      r"resume.*overwrite|overwrite.*resume", needs=("run",)),
    # -- output directories of sft and init-model ------------------------------------------------
    C("init_model_out_user_folder", "outputs", ["init-model", "--out", "precious", *INIT],
      r"precious", files=PRECIOUS),
    C("sft_out_is_its_model", "outputs", ["sft", "--model", "m", "--out", "m", *SFT], r"\bm\b",
      needs=("model",)),
    C("sft_out_onto_run_dir", "outputs", ["sft", "--model", "m", "--out", "r", *SFT], r"\br\b",
      needs=("model", "run")),
    C("init_model_out_onto_run_dir", "outputs", ["init-model", "--out", "r", *INIT], r"\br\b",
      needs=("run",)),
    # --overwrite is consent to replace an lmrl output of the same kind, never a training run.
    C("sft_overwrite_onto_run_dir", "outputs",
      ["sft", "--model", "m", "--out", "r", "--overwrite", *SFT], RUN_R, needs=("model", "run")),
    C("init_model_overwrite_onto_run_dir", "outputs",
      ["init-model", "--out", "r", "--overwrite", *INIT], RUN_R, needs=("run",)),
    C("init_model_out_is_file", "outputs", ["init-model", "--out", "notes.txt", *INIT],
      r"notes\.txt", files=NOTES),
    C("sft_out_is_file", "outputs", ["sft", "--model", "m", "--out", "notes.txt", *SFT],
      r"notes\.txt", needs=("model",), files=NOTES),
    # -- numbers out of range --------------------------------------------------------------------
    bad_value("ranges", "weight_decay", "-1"),
    bad_value("ranges", "weight_decay", "nan"),
    bad_value("ranges", "seed", "-1"),
    bad_value("ranges", "min_lr_frac", "-1", base=["--schedule", "cosine", *TOY]),
    bad_value("ranges", "min_lr_frac", "2", base=["--schedule", "cosine", *TOY]),
    bad_value("ranges", "lr", "nan"),
    bad_value("ranges", "lr", "inf"),
    bad_value("ranges", "lr", "-1"),
    bad_value("ranges", "lr", "1e38"),  # lr > 1 with AdamW only diverges: refused
    bad_value("ranges", "grad_clip", "-1"),
    bad_value("ranges", "grad_clip", "nan"),
    bad_value("ranges", "time_limit", "-5"),
    bad_value("ranges", "time_limit", "nan"),
    bad_value("ranges", "save_every", "-1"),
    bad_value("ranges", "warmup_steps", "-3"),
    bad_value("ranges", "threads", "-2"),
    bad_value("ranges", "eval_every", "0"),
    bad_value("ranges", "steps", "-1"),
    bad_value("ranges", "kl_weight", "nan"),
    bad_value("ranges", "kl_weight", "inf"),
    bad_value("ranges", "clip_eps", "nan"),
    bad_value("ranges", "norm_eps", "nan"),
    bad_value("ranges", "init_scale", "nan"),
    bad_value("ranges", "dim", "0"),
    bad_value("ranges", "hidden", "-1"),
    bad_value("ranges", "keep_checkpoints", "0"),
    bad_value("ranges", "save_minutes", "-1"),
    bad_value("ranges", "max_skipped", "0"),
    bad_value("ranges", "temperature", "nan", base=LM, needs=("model",)),
    bad_value("ranges", "temperature", "inf", base=LM, needs=("model",)),
    bad_value("ranges", "top_k", "-1", base=LM, needs=("model",)),
    bad_value("ranges", "max_new_tokens", "-1", base=LM, needs=("model",)),
    bad_value("ranges", "eval_limit", "-1", base=LM, needs=("model",)),
    C("digits_0", "ranges", ["train", "--digits", "0", "--model", "m", "--task", "addition",
                             *LM_RUN], r"digits", needs=("model",)),
    C("reward_timeout_neg1", "ranges",
      ["train", "--reward-timeout", "-1", "--data", "rows.jsonl", "--reward-fns", "rw_ok:f",
       *USER], name("reward_timeout"), needs=("model",),
      files={"work/rows.jsonl": ROWS, "work/rw_ok.py": RW_OK}),
    # -- unknown flags, commands and choices -----------------------------------------------------
    C("unknown_flag", "flags", ["train", "--bogus-flag", "1", *TOY], r"bogus-flag"),
    C("trl_num_generations", "flags", ["train", "--num-generations", "4", *TOY],
      r"num-generations.*did you mean --G\b"),
    C("trl_learning_rate", "flags", ["train", "--learning-rate", "1e-5", *TOY],
      r"learning-rate.*did you mean --lr\b"),
    C("trl_per_device_batch", "flags", ["train", "--per-device-train-batch-size", "8", *TOY],
      r"per-device-train-batch-size.*did you mean --B\b.*prompts"),
    C("positional_junk", "flags", ["train", "extra", *TOY], r"extra"),
    C("G_not_an_int", "flags", ["train", "--G", "abc", *without(TOY, "--G")], r"abc|\bG\b"),
    C("delta_unknown", "flags", ["train", "--delta", "nope", *TOY], r"delta.*nope|nope.*delta"),
    C("loss_unknown", "flags", ["train", "--loss", "nope", *TOY], r"loss.*nope|nope.*loss"),
    C("task_unknown", "flags", ["train", "--task", "nope", *TOY], r"task.*nope|nope.*task"),
    C("preset_unknown", "flags", ["train", "--preset", "nope", *TOY], r"preset.*nope|nope.*preset"),
    C("device_nonsense", "flags", ["train", "--device", "nonsense", *LM], r"nonsense",
      needs=("model",)),
    C("device_cuda_without_cuda", "flags", ["train", "--device", "cuda", *LM], r"cuda",
      needs=("model",), skip_if_cuda=True),
    C("dtype_unknown", "flags", ["train", "--dtype", "float64", *LM], r"float64",
      needs=("model",)),
    C("unknown_command", "flags", ["trian", *TOY], r"trian"),
    C("sft_unknown_flag", "flags", ["sft", "--model", "m", "--out", "s", "--bogus", "1", *SFT],
      r"bogus", needs=("model",)),
    C("toy_task_with_model", "flags", ["train", "--task", "sort", "--model", "m", *LM_RUN],
      r"sort_text", needs=("model",)),
    # -- config files ----------------------------------------------------------------------------
    C("config_missing", "config file", ["train", "--config", "nope.yaml", *TOY], r"nope\.yaml"),
    C("config_unknown_key", "config file", ["train", "--config", "c.yaml", *TOY],
      r"c\.yaml.*kl-wieght.*did you mean kl-weight", files={"work/c.yaml": "kl-wieght: 0.1\n"}),
    C("config_trl_key", "config file", ["train", "--config", "c.yaml", *TOY],
      r"num_generations.*did you mean G\b", files={"work/c.yaml": "num_generations: 4\n"}),
    C("config_bad_type", "config file", ["train", "--config", "c.toml", *TOY],
      r"c\.toml.*train\.G must be an integer", files={"work/c.toml": "G = \"four\"\n"}),
    C("config_not_yaml", "config file", ["train", "--config", "c.yaml", *TOY],
      r"c\.yaml is not valid YAML", files={"work/c.yaml": "G: [4\n"}),
    C("config_wrong_group", "config file", ["train", "--config", "c.yaml", *TOY],
      r"G is a train option", files={"work/c.yaml": "algo:\n  G: 4\n"}),
    C("config_bad_value", "config file", ["train", "--config", "c.yaml", *TOY],
      r"kl_weight", files={"work/c.yaml": "kl_weight: -1\n"}),
    C("config_unknown_type", "config file", ["train", "--config", "c.ini", *TOY], r"\.ini",
      files={"work/c.ini": "G=4\n"}),
    # -- model directories -----------------------------------------------------------------------
    C("model_missing", "model", ["train", *LM[:1], "./nope", *LM[2:]], r"nope", max_seconds=10),
    C("model_empty_dir", "model", ["train", *LM], r"empty|config\.json|\bm\b",
      files={"work/m": None}),
    C("model_config_but_no_weights", "model", ["train", *LM], r"weights|safetensors",
      needs=("model",), setup=delete_weights),
    C("model_without_tokenizer", "model", ["train", *LM], r"tokenizer", needs=("model",),
      setup=delete_tokenizer),
    C("model_config_invalid_json", "model", ["train", *LM], r"config\.json", needs=("model",),
      files={"work/m/config.json": "{not json"}),
    C("model_tokenizer_invalid_json", "model", ["train", *LM], r"tokenizer", needs=("model",),
      files={"work/m/tokenizer.json": "{not json"}),
    C("model_truncated_weights", "model", ["train", *LM], r"safetensors|weights|corrupt|truncat",
      needs=("model",), setup=truncate_weights),
    C("model_is_a_file", "model", ["train", *LM[:1], "notes.txt", *LM[2:]], r"notes\.txt",
      files=NOTES),
    C("sft_model_missing", "model", ["sft", "--model", "./nope", "--out", "s", *SFT], r"nope",
      max_seconds=10),
    C("eval_model_missing", "model", ["eval", "--model", "./nope", *EVAL], r"nope",
      max_seconds=10),
    # -- data files ------------------------------------------------------------------------------
    C("data_invalid_utf8_line3", "data", ["train", "--data", "rows.jsonl", "--reward-fns",
                                          "rw_ok:f", *USER],
      r"rows\.jsonl\W{0,3}(line\s*)?3\b", needs=("model",),
      files={"work/rows.jsonl": b'{"prompt": "1 2=", "answer": "1"}\n'
             b'{"prompt": "2 3=", "answer": "2"}\n'
             b'{"prompt": "caf\xe9 \xff=", "answer": "0"}\n' + ROWS.encode(),
             "work/rw_ok.py": RW_OK}),
    C("data_invalid_json_line2", "data", ["train", "--data", "rows.jsonl", "--reward-fns",
                                          "rw_ok:f", *USER],
      r"rows\.jsonl\W{0,3}(line\s*)?2\b", needs=("model",),
      files={"work/rows.jsonl": ROWS.splitlines()[0] + "\n{\"prompt\": \n" + ROWS,
             "work/rw_ok.py": RW_OK}),
    C("data_missing_file", "data", ["train", "--data", "missing.jsonl", "--reward-fns", "rw_ok:f",
                                    *USER], r"missing\.jsonl", needs=("model",),
      files={"work/rw_ok.py": RW_OK}),
    C("data_empty_file", "data", ["train", "--data", "empty.jsonl", "--reward-fns", "rw_ok:f",
                                  *USER], r"empty\.jsonl", needs=("model",),
      files={"work/empty.jsonl": "", "work/rw_ok.py": RW_OK}),
    C("data_non_object_line", "data", ["train", "--data", "rows.jsonl", "--reward-fns",
                                       "rw_ok:f", *USER], r"rows\.jsonl", needs=("model",),
      files={"work/rows.jsonl": ROWS.splitlines()[0] + "\n[1, 2]\n" + ROWS,
             "work/rw_ok.py": RW_OK}),
    C("data_csv", "data", ["train", "--data", "rows.csv", "--reward-fns", "rw_ok:f", *USER],
      r"\.csv", needs=("model",),
      files={"work/rows.csv": "prompt,answer\n1 2=,1\n", "work/rw_ok.py": RW_OK}),
    C("data_row_without_prompt", "data", ["train", "--data", "rows.jsonl", "--reward-fns",
                                          "rw_ok:f", *USER], r"prompt", needs=("model",),
      files={"work/rows.jsonl": ROWS + '{"question": "1 2=", "answer": "1"}\n',
             "work/rw_ok.py": RW_OK}),
    C("data_prompt_not_a_string", "data", ["train", "--data", "rows.jsonl", "--reward-fns",
                                           "rw_ok:f", *USER], r"prompt", needs=("model",),
      files={"work/rows.jsonl": ROWS + '{"prompt": 12, "answer": "1"}\n', "work/rw_ok.py": RW_OK}),
    C("data_is_a_directory", "data", ["train", "--data", "datadir", "--reward-fns", "rw_ok:f",
                                      *USER], r"datadir", needs=("model",),
      files={"work/datadir": None, "work/rw_ok.py": RW_OK}),
    C("data_corrupt_parquet", "data", ["train", "--data", "rows.parquet", "--reward-fns",
                                       "rw_ok:f", *USER], r"rows\.parquet|pyarrow",
      needs=("model",), files={"work/rows.parquet": b"PAR1 not really", "work/rw_ok.py": RW_OK}),
    C("heldout_data_missing", "data", ["train", "--data", "rows.jsonl", "--heldout-data",
                                       "nothere.jsonl", "--reward-fns", "rw_ok:f",
                                       *USER[:4], *USER[6:]], r"nothere\.jsonl", needs=("model",),
      files={"work/rows.jsonl": ROWS, "work/rw_ok.py": RW_OK}),
    C("heldout_size_over_rows", "data", ["train", "--data", "rows.jsonl", "--reward-fns",
                                         "rw_ok:f", *without(USER, "--heldout-size"),
                                         "--heldout-size", "50"],
      name("heldout_size"), needs=("model",),
      files={"work/rows.jsonl": ROWS, "work/rw_ok.py": RW_OK}),
    C("gsm8k_without_data", "data", ["train", "--model", "m", "--task", "gsm8k", *LM_RUN],
      r"--data|data", needs=("model",)),
    C("user_without_reward_fns", "data", ["train", "--data", "rows.jsonl", *USER],
      r"reward", needs=("model",), files={"work/rows.jsonl": ROWS}),
    # -- reward functions: loading ---------------------------------------------------------------
    *[C(f"reward_spec_{cid}", "reward fns", ["train", "--data", "rows.jsonl", "--reward-fns", spec,
                                             *USER], expect, needs=("model",),
        files={"work/rows.jsonl": ROWS, "work/rw_ok.py": RW_OK,
               "work/rw_syntax.py": "def f(prompts, completions, **kw)\n    return []\n",
               "work/rw_importerr.py": "import no_such_dependency_xyz\n"})
      for cid, spec, expect in [
          ("no_module", "nomodule:f", r"nomodule"),
          ("missing_function", "rw_ok:missing", r"missing"),
          ("not_callable", "rw_ok:notcallable", r"notcallable"),
          ("weight_nan", "rw_ok:f=nan", r"nan"),
          ("weight_inf", "rw_ok:f=inf", r"inf"),
          ("weight_abc", "rw_ok:f=abc", r"abc"),
          ("no_colon", "m", r"module:function"),
          ("syntax_error", "rw_syntax:f", r"rw_syntax"),
          ("import_fails", "rw_importerr:f", r"rw_importerr|no_such_dependency_xyz"),
      ]],
    C("reward_duplicate_names", "reward fns", ["train", "--data", "rows.jsonl", "--reward-fns",
                                               "rw_ok:f", "rw_ok:f", *USER], r"name",
      needs=("model",), files={"work/rows.jsonl": ROWS, "work/rw_ok.py": RW_OK}),
    # -- reward functions: failing while training runs -------------------------------------------
    *[C(f"reward_{cid}", "reward fns (in training)",
        ["train", "--data", "rows.jsonl", "--reward-fns", f"rw_{cid}:f", "--run-dir", "r2", *USER],
        expect, needs=("model",), in_training=True,
        files={"work/rows.jsonl": ROWS, f"work/rw_{cid}.py": reward_module(body)})
      for cid, body, expect in [
          ("raises", "raise ValueError('cannot score ' + repr(completions[0]))",
           r"sample|prompt"),
          ("returns_nan", "return [float('nan')] * len(completions)", r"nan"),
          ("wrong_count", "return [0.0]", r"\b1\b.*values|count|returned"),
          ("returns_strings", "return ['1.0'] * len(completions)", r"returned|str"),
          ("returns_none", "return None", r"none|returned"),
      ]],
    C("reward_hangs", "reward fns (in training)",
      ["train", "--data", "rows.jsonl", "--reward-fns", "rw_hangs:f", "--reward-timeout", "1",
       "--run-dir", "r2", *USER], r"did not return within 1s.*--reward-timeout",
      needs=("model",), in_training=True, max_seconds=60,
      files={"work/rows.jsonl": ROWS,
             "work/rw_hangs.py": reward_module("import time; time.sleep(3600)")}),
    C("reward_raises_after_step_1", "reward fns (in training)",
      ["train", "--data", "rows.jsonl", "--reward-fns", "rw_late:f", "--run-dir", "r2", *USER],
      r"sample|prompt", needs=("model",), in_training=True, expect_checkpoint="r2",
      files={"work/rows.jsonl": ROWS, "work/rw_late.py": RW_LATE}),
    # -- plot ------------------------------------------------------------------------------------
    C("plot_unknown_metric", "plot", ["plot", "r", "--metric", "nonexistent/key"],
      r"nonexistent/key.*eval/exact_match", needs=("run",)),
    C("plot_not_a_run_dir", "plot", ["plot", "precious"], r"precious", files=PRECIOUS),
    C("plot_missing_dir", "plot", ["plot", "nothere"], r"nothere"),
    # -- sweep -----------------------------------------------------------------------------------
    *[C(f"sweep_{cid}", "sweep", ["sweep", *own, "--out", "sw", "--", *TOY], expect)
      for cid, own, expect in [
          ("grid_nonsense", ["--grid", "nonsense"], r"nonsense"),
          ("grid_not_a_number", ["--grid", "G=abc"], r"abc"),
          ("grid_unknown_field", ["--grid", "unknownfield=1,2"], r"unknownfield"),
          ("grid_no_values", ["--grid", "delta="], r"delta"),
          ("grid_unknown_choice", ["--grid", "delta=raw,bogus"], r"bogus"),
          ("grid_invalid_combination", ["--grid", "G=1,2"], r"\bG\b"),
          ("seeds_not_ints", ["--grid", "delta=raw", "--seeds", "abc"], r"abc|seeds"),
      ]],
    C("sweep_bad_train_flag", "sweep", ["sweep", "--grid", "delta=raw", "--out", "sw", "--",
                                        "--bogus", *TOY], r"bogus"),
    C("sweep_out_is_file", "sweep", ["sweep", "--grid", "delta=raw", "--out", "notes.txt", "--",
                                     *TOY], r"notes\.txt", files=NOTES),
    # -- eval ------------------------------------------------------------------------------------
    C("eval_without_model_or_run", "eval", ["eval", *EVAL], r"--model|--run"),
    C("eval_run_without_config", "eval", ["eval", "--run", "precious"], r"config\.json",
      files=PRECIOUS),
    C("eval_run_missing", "eval", ["eval", "--run", "nothere"], r"nothere"),
    C("eval_run_of_toy_run", "eval", ["eval", "--run", "r"], r"toy|causal|text", needs=("run",)),
    C("eval_out_is_a_directory", "eval", ["eval", "--model", "m", *EVAL, "--out", "precious"],
      r"precious", needs=("model",), files=PRECIOUS),
]

# Not clearly user errors: reported, and run as non-strict xfails by the test.
# Damage lmrl must recover from (exit 0).
RECOVERS: list[Case] = [
    C("resume_metrics_truncated_last_line", "recovers",
      ["train", "--run-dir", "r", "--resume", "--steps", "3", *RESUME], r"", needs=("run",),
      setup=truncate_metrics_line, exit_code=0),
]

ALL = CASES + RECOVERS
assert len({c.id for c in ALL}) == len(ALL), "case ids must be unique"


# --------------------------------------------------------------------------------------------
# Running a case

def build_resources(dest: Path, cli: Callable[[list[str], Path], None]) -> Path:
    """dest/model: a tiny init-model output; dest/run: a finished 2-step toy run.
    `cli(argv, cwd)` runs lmrl (in-process or as a subprocess) and raises if it fails."""
    dest.mkdir(parents=True, exist_ok=True)
    cli(["init-model", "--out", str(dest / "model"), *INIT, "--alphabet", "ascii"], dest)
    cli(["train", "--run-dir", str(dest / "run"), "--steps", "2", "--n", "4", "--V", "6",
         "--heldout-size", "20", "--no-progress"], dest)
    return dest


def prepare(case: Case, root: Path, resources: Path) -> tuple[Path, list[str], dict]:
    """Lay out the case under root; returns (cwd, argv, extra environment)."""
    work = root / "work"
    work.mkdir(parents=True, exist_ok=True)
    for need, target in (("model", "m"), ("run", "r")):
        if need in case.needs:
            shutil.copytree(resources / {"model": "model", "run": "run"}[need], work / target)
    for rel, content in case.files.items():
        path = root / rel
        if content is None:
            path.mkdir(parents=True, exist_ok=True)
            continue
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, bytes):
            path.write_bytes(content)
        else:
            path.write_text(content)
    if case.setup is not None:
        case.setup(work)
    sub = {"{root}": str(root)}

    def fill(text: str) -> str:
        for key, value in sub.items():
            text = text.replace(key, value)
        return text

    cwd = root / case.cwd
    cwd.mkdir(parents=True, exist_ok=True)
    return cwd, [fill(a) for a in case.argv], {k: fill(v) for k, v in case.env.items()}


def snapshot(root: Path) -> dict[str, tuple]:
    """Relative path -> (size, sha1) of every file, ("dir",) of every directory, under root."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for d in dirnames:
            out[os.path.relpath(os.path.join(dirpath, d), root)] = ("dir",)
        for f in filenames:
            path = os.path.join(dirpath, f)
            try:
                data = Path(path).read_bytes()
            except OSError:
                out[os.path.relpath(path, root)] = ("unreadable",)
                continue
            out[os.path.relpath(path, root)] = (len(data), hashlib.sha1(data).hexdigest())
    return out


def changes(before: dict, after: dict) -> list[str]:
    added = [f"+{p}" for p in sorted(set(after) - set(before))]
    removed = [f"-{p}" for p in sorted(set(before) - set(after))]
    modified = [f"~{p}" for p in sorted(set(before) & set(after)) if before[p] != after[p]]
    return removed + modified + added


def error_block(stderr: str) -> str | None:
    i = stderr.find("lmrl: error: ")
    return None if i < 0 else stderr[i:]


def has_checkpoint(run_dir: Path) -> bool:
    return (run_dir / "checkpoint.pt").is_file() or any(
        p.is_file() for p in (run_dir / "checkpoints").rglob("*"))


def problems(case: Case, code, stderr: str, changed: list[str], seconds: float,
             work: Path) -> list[str]:
    """What the run did against the contract; [] when it met it."""
    found = []
    if code != case.exit_code:
        found.append(f"exit code {code}, want {case.exit_code}")
    if "Traceback" in stderr:
        found.append("printed a traceback")
    if case.exit_code == 2:
        block = error_block(stderr)
        if block is None:
            found.append("no 'lmrl: error: ' block on stderr")
        else:
            if stderr.count("lmrl: error: ") > 1:
                found.append(f"{stderr.count('lmrl: error: ')} error blocks, want one")
            if not re.search(case.expect, block, re.I | re.S):
                found.append(f"error block does not match /{case.expect}/")
    if case.exit_code != 0 and not case.in_training and changed:
        found.append(f"changed files: {' '.join(changed[:6])}" +
                     (f" (+{len(changed) - 6} more)" if len(changed) > 6 else ""))
    if case.expect_checkpoint and not has_checkpoint(work / case.expect_checkpoint):
        found.append(f"no checkpoint in {case.expect_checkpoint}/ after a failure past step 1")
    if case.max_seconds is not None and seconds > case.max_seconds:
        found.append(f"took {seconds:.1f} s, want < {case.max_seconds:g} s")
    return found


@dataclass
class Result:
    case: Case
    code: object
    stdout: str
    stderr: str
    changed: list[str]
    seconds: float
    problems: list[str]


def cli_command(module: bool = False) -> list[str]:
    """How to start lmrl's CLI as a process: `python -m lmrl` or `python -c ... main()`."""
    if module:
        return [sys.executable, "-m", "lmrl"]
    return [sys.executable, "-c", "from lmrl.cli import main; main()"]


def subprocess_env(src_dir: Path, extra: dict | None = None) -> dict:
    env = dict(os.environ)
    env.update({"PYTHONPATH": str(src_dir), "PYTHONDONTWRITEBYTECODE": "1"})
    env.update(extra or {})
    return env


def run_subprocess(case: Case, src_dir: Path, resources: Path, timeout: float = 180,
                   module: bool = False) -> Result:
    """Run one case as a user would; src_dir is the directory that holds the lmrl package."""
    with tempfile.TemporaryDirectory(prefix=f"fault-{case.id}-") as tmp:
        root = Path(tmp)
        cwd, argv, env = prepare(case, root, resources)
        before = snapshot(root)
        t0 = time.perf_counter()
        proc = subprocess.Popen(cli_command(module) + argv, cwd=cwd,
                                env=subprocess_env(src_dir, env), stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True, errors="replace",
                                start_new_session=True)
        try:
            stdout, stderr = proc.communicate(timeout=timeout)
            code = proc.returncode
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, 9)
            stdout, stderr = proc.communicate()
            code = f"timeout ({timeout:g} s)"
        seconds = time.perf_counter() - t0
        changed = changes(before, snapshot(root)) if root.is_dir() else ["-(the whole root)"]
        found = problems(case, code, stderr, changed, seconds, root / "work")
        return Result(case, code, stdout, stderr, changed, seconds, found)


# --------------------------------------------------------------------------------------------
# The report

def headline(stderr: str) -> str:
    """The line that says what happened: the `lmrl: error: ` line, else a traceback's last line,
    else the first non-empty line."""
    lines = [ln.strip() for ln in stderr.splitlines() if ln.strip()]
    for ln in lines:
        if ln.startswith("lmrl: error: "):
            return ln
    if "Traceback" in stderr and lines:
        return lines[-1]
    return lines[0] if lines else ""


def cell(text: str, width: int = 100) -> str:
    text = text if len(text) <= width else text[:width - 1] + "…"
    return text.replace("|", "\\|").replace("`", "'")


def markdown(results: list[Result], src: str) -> str:
    ok = sum(not r.problems for r in results)
    errors = [r for r in results if r.case.exit_code == 2]
    lines = [f"# Bad inputs against `{src}`", "",
             f"{ok} of {len(results)} cases meet the contract (exit 2, one `lmrl: error: ` block "
             "naming the problem, no traceback, no file changed; recovers: exit 0). Of the "
             f"{len(errors)} bad inputs: {sum(r.code != 2 for r in errors)} did not exit 2 "
             f"({sum(r.code == 0 for r in errors)} exited 0), "
             f"{sum('Traceback' in r.stderr for r in errors)} printed a traceback, "
             f"{sum(bool(r.changed) and not r.case.in_training for r in errors)} changed files "
             f"in their directory, {sum(error_block(r.stderr) is None for r in errors)} had no "
             "`lmrl: error: ` block.", "",
             "| case | group | exit code | stderr (error line, else traceback's last, else first;"
             " 100 chars) | traceback? | files changed outside? | s | meets contract |",
             "|---|---|---|---|---|---|---|---|"]
    for r in results:
        changed = "n/a (in training)" if r.case.in_training else (
            cell(" ".join(r.changed), 60) if r.changed else "no")
        verdict = "yes" if not r.problems else cell("no: " + "; ".join(r.problems), 160)
        lines.append(f"| {r.case.id} | {r.case.group} | {r.code} | {cell(headline(r.stderr))} | "
                     f"{'yes' if 'Traceback' in r.stderr else 'no'} | {changed} | "
                     f"{r.seconds:.1f} | {verdict} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--src", default=str(Path(__file__).resolve().parents[1]),
                        help="a checkout of lmrl (its src/ is put on PYTHONPATH)")
    parser.add_argument("--only", nargs="+", help="case ids")
    parser.add_argument("--timeout", type=float, default=180, help="seconds per case")
    parser.add_argument("--list", action="store_true", help="print the case ids and exit")
    ns = parser.parse_args()
    cases = [c for c in ALL if not ns.only or c.id in ns.only]
    if ns.list:
        print("\n".join(f"{c.group}: {c.id}" for c in cases))
        return
    src_dir = Path(ns.src).resolve() / "src"
    where = subprocess.run([sys.executable, "-c", "import lmrl; print(lmrl.__file__)"],
                           env=subprocess_env(src_dir), capture_output=True, text=True)
    if not where.stdout.startswith(str(src_dir)):
        sys.exit(f"lmrl does not import from {src_dir}: {where.stdout}{where.stderr}")

    def cli(argv: list[str], cwd: Path) -> None:
        subprocess.run(cli_command() + argv, cwd=cwd, env=subprocess_env(src_dir), check=True,
                       capture_output=True)

    with tempfile.TemporaryDirectory(prefix="fault-resources-") as tmp:
        resources = build_resources(Path(tmp), cli)
        results = []
        for case in cases:
            result = run_subprocess(case, src_dir, resources, ns.timeout)
            print(f"{case.id}: exit {result.code}, {result.seconds:.1f} s, "
                  f"{'ok' if not result.problems else '; '.join(result.problems)}",
                  file=sys.stderr, flush=True)
            results.append(result)
    print(markdown(results, ns.src))


if __name__ == "__main__":
    main()
