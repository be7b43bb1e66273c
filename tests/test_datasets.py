"""The user task's data through HuggingFace `datasets`: every source kind trains a step on a tiny
model, prompt and answer columns are chosen by name, conversational prompts go through the
model's chat template (init-model --chat-template -> sft -> train -> eval), characters a
tokenizer cannot encode stop a run at load time, and a hub name without a connection is one
clear error."""

import json
import string

import datasets
import pytest

from lmrl.cli import main
from lmrl.errors import ConfigError, DataError
from lmrl.modelzoo import CHAT_TEMPLATE, init_model
from lmrl.tasks.data import Rows, load_rows
from lmrl.tasks.user import UserTask

REWARDS = """
    def text(c):  # a completion: a string, or (conversational data) assistant messages
        return c if isinstance(c, str) else "".join(m["content"] for m in c)

    def correct(prompts, completions, answer, **columns):
        return [float(text(c).strip() == str(a)) for c, a in zip(completions, answer)]
"""
ROWS = [{"prompt": f"{a}+{b}=", "answer": str(a + b)} for a in range(4) for b in range(3)]
ASCII = string.printable.strip("\x0b\x0c\r")


@pytest.fixture(scope="module")
def ascii_model(tmp_path_factory):
    """A tiny model whose tokenizer reads all printable ASCII, with no chat template."""
    out = tmp_path_factory.mktemp("ascii_model")
    init_model(out, ASCII, hidden_size=16, num_layers=1, num_heads=2)
    return str(out)


@pytest.fixture
def rewards(reward_module):
    return reward_module("lmrl_test_dataset_rewards", REWARDS)


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def train_one_step(model, run_dir, rewards, *task):
    main(["train", "--model", model, "--run-dir", str(run_dir), "--steps", "1", "--B", "2",
          "--G", "2", "--max-new-tokens", "2", "--eval-limit", "2", "--no-progress",
          "--threads", "1", "--task", "user", "--reward-fns", f"{rewards}:correct", *task])
    return json.loads((run_dir / "summary.json").read_text())


def write_source(kind, tmp_path):
    """ROWS as a source of `kind` -> the flags that read it."""
    if kind == "jsonl":
        return ["--data", str(write_jsonl(tmp_path / "d.jsonl", ROWS)), "--heldout-size", "3"]
    if kind == "json array":
        (tmp_path / "d.json").write_text(json.dumps(ROWS, indent=1))
        return ["--data", str(tmp_path / "d.json"), "--heldout-size", "3"]
    if kind == "json lines":
        return ["--data", str(write_jsonl(tmp_path / "d.json", ROWS)), "--heldout-size", "3"]
    if kind == "csv":
        (tmp_path / "d.csv").write_text("prompt,answer\n" + "".join(
            f"{r['prompt']},{r['answer']}\n" for r in ROWS))
        return ["--data", str(tmp_path / "d.csv"), "--heldout-size", "3"]
    if kind == "parquet":
        datasets.Dataset.from_list(ROWS).to_parquet(str(tmp_path / "d.parquet"))
        return ["--data", str(tmp_path / "d.parquet"), "--heldout-size", "3"]
    if kind == "save_to_disk Dataset":
        datasets.Dataset.from_list(ROWS).save_to_disk(str(tmp_path / "ds"))
        return ["--data", str(tmp_path / "ds"), "--heldout-size", "3"]
    splits = datasets.DatasetDict({"fit": datasets.Dataset.from_list(ROWS[:9]),
                                   "check": datasets.Dataset.from_list(ROWS[9:])})
    splits.save_to_disk(str(tmp_path / "dd"))
    return ["--data", str(tmp_path / "dd"), "--data-split", "fit", "--heldout-split", "check"]


KINDS = ["jsonl", "json array", "json lines", "csv", "parquet", "save_to_disk Dataset",
         "save_to_disk DatasetDict"]


@pytest.mark.parametrize("kind", KINDS)
def test_each_source_kind_loads_memory_mapped_rows(kind, tmp_path, rewards):
    flags = dict(zip(*[iter(write_source(kind, tmp_path))] * 2, strict=True))
    split = {"data_split": flags["--data-split"], "heldout_split": flags["--heldout-split"]} \
        if "--data-split" in flags else {"heldout_size": 3}
    task = UserTask(flags["--data"], [f"{rewards}:correct"], **split)
    assert (len(task.train), len(task.heldout)) == (9, 3)
    assert {ex["prompt"] for ex in task.train} | {ex["prompt"] for ex in task.heldout} == \
        {r["prompt"] for r in ROWS}
    assert isinstance(task.train, Rows) and task.train.dataset.cache_files  # Arrow on disk
    assert str(task.demonstration(task.train[0])) == str(int(task.train[0]["prompt"][0]) +
                                                         int(task.train[0]["prompt"][2]))


@pytest.mark.parametrize("kind", KINDS)
def test_each_source_kind_trains_a_step(kind, tmp_path, ascii_model, rewards):
    summary = train_one_step(ascii_model, tmp_path / "run", rewards, *write_source(kind, tmp_path))
    assert summary["steps"] == 1 and 0.0 <= summary["eval/exact_match"] <= 1.0


def test_rows_read_like_a_list(tmp_path):
    rows = load_rows(write_jsonl(tmp_path / "d.jsonl", ROWS))
    assert len(rows) == 12 and rows[0] == ROWS[0] and rows[-1] == ROWS[-1]
    assert rows[2:5] == ROWS[2:5] and isinstance(rows[2:5], Rows) and list(rows) == ROWS
    assert rows[::-3].where(0) == f"{tmp_path / 'd.jsonl'}: row 11"
    with pytest.raises(IndexError):
        rows[12]


def test_python_callers_may_pass_a_dataset_or_a_list_of_dicts(rewards):
    for data in (ROWS, datasets.Dataset.from_list(ROWS),
                 datasets.DatasetDict({"train": datasets.Dataset.from_list(ROWS)})):
        task = UserTask(data, [f"{rewards}:correct"], heldout_size=3)
        assert sorted(list(task.train) + list(task.heldout), key=str) == sorted(ROWS, key=str)
    with pytest.raises(DataError, match="not int"):
        UserTask(3, [f"{rewards}:correct"])


# ---------------------------------------------------------------- columns


def test_prompt_and_answer_columns_are_chosen_by_name(tmp_path, rewards):
    data = write_jsonl(tmp_path / "q.jsonl", [{"question": r["prompt"], "solution": r["answer"],
                                               "answer": "unused"} for r in ROWS])
    task = UserTask(str(data), [f"{rewards}:correct"], heldout_size=2,
                    prompt_column="question", answer_column="solution")
    ex = task.train[0]
    assert set(ex) == {"prompt", "solution", "answer"}
    assert task.demonstration(ex) == ex["solution"] != "unused"


def test_a_missing_prompt_or_answer_column_names_the_columns(tmp_path, rewards):
    data = write_jsonl(tmp_path / "q.jsonl", [{"question": "1+1=", "solution": "2"}] * 3)
    with pytest.raises(DataError, match=r"q.jsonl:1: no 'prompt' column.*--prompt-column"):
        UserTask(str(data), [f"{rewards}:correct"], heldout_size=1)
    datasets.Dataset.from_list(ROWS).to_parquet(str(tmp_path / "d.parquet"))
    with pytest.raises(DataError, match=r"no 'question' column; its columns are \['prompt', "
                                        r"'answer'\]"):
        UserTask(str(tmp_path / "d.parquet"), [f"{rewards}:correct"], prompt_column="question")
    with pytest.raises(DataError, match=r"no answer column 'solution'; its columns are "
                                        r"\['answer', 'prompt'\]; name one with --answer-column"):
        UserTask(str(tmp_path / "d.parquet"), [f"{rewards}:correct"], answer_column="solution")


def test_splits_and_formats_are_checked(tmp_path, rewards):
    datasets.DatasetDict({"train": datasets.Dataset.from_list(ROWS)}).save_to_disk(
        str(tmp_path / "dd"))
    with pytest.raises(DataError, match=r"has no split 'test'; its splits are \['train'\]"):
        UserTask(str(tmp_path / "dd"), [f"{rewards}:correct"], heldout_split="test")
    data = write_jsonl(tmp_path / "d.jsonl", ROWS)
    with pytest.raises(DataError, match="data_config and data_split .* apply to hub datasets"):
        UserTask(str(data), [f"{rewards}:correct"], data_split="test")
    (tmp_path / "d.txt").write_text("1+1=\n")
    with pytest.raises(DataError, match=r"unknown format '.txt'; use .jsonl, .json, .csv"):
        UserTask(str(tmp_path / "d.txt"), [f"{rewards}:correct"])
    (tmp_path / "plain").mkdir()
    with pytest.raises(DataError, match="plain is not a file, nor a directory written by "
                                        "Dataset.save_to_disk"):
        UserTask(str(tmp_path / "plain"), [f"{rewards}:correct"])
    mixed = write_jsonl(tmp_path / "mixed.jsonl", conversation_rows()[:2] + ROWS[:1])
    with pytest.raises(DataError, match=r"mixed.jsonl:3: 'prompt' is a str, but at .*mixed.jsonl:1 "
                                        r"it is a list; a data set's prompts are all strings"):
        load_rows(mixed)
    with pytest.raises(DataError, match=r"item 1: a row must be a JSON object"):
        (tmp_path / "a.json").write_text('[{"prompt": "x"}, 3]')
        load_rows(tmp_path / "a.json")


def test_heldout_split_flags_are_checked(tmp_path, capsys):
    with pytest.raises(SystemExit):
        main(["train", "--model", "unused", "--task", "user", "--data", "d", "--reward-fns",
              "m:f", "--heldout-split", "test", "--heldout-data", "h.jsonl"])
    assert "--heldout-split and --heldout-data both choose" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["train", "--model", "unused", "--task", "addition", "--data-split", "test"])
    assert "data_split='test' has no effect" in capsys.readouterr().err


# ---------------------------------------------------------------- the hub


def test_a_hub_name_offline_is_one_clear_error(monkeypatch, rewards):
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(DataError, match="cannot reach the hub.*give a local file or directory"):
        UserTask("nobody/no-such-dataset", [f"{rewards}:correct"])


def test_a_hub_name_without_a_connection_fails_at_once(monkeypatch, rewards):
    import lmrl.tasks.data

    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(lmrl.tasks.data, "hub_reachable", lambda: False)
    monkeypatch.setattr(datasets, "load_dataset", lambda *a, **k: pytest.fail("no retries"))
    with pytest.raises(DataError, match="'nobody/x' is not a local file or directory, and lmrl "
                                        "cannot reach the hub"):
        UserTask("nobody/x", [f"{rewards}:correct"])
    with pytest.raises(DataError, match="nobody/x.jsonl does not exist"):
        UserTask("nobody/x.jsonl", [f"{rewards}:correct"])  # a missing file, not a hub name


# ---------------------------------------------------------------- characters a model cannot read


def test_a_character_outside_the_alphabet_stops_the_run_naming_the_row(tmp_path, rewards,
                                                                         capsys):
    digits = tmp_path / "digits"
    init_model(digits, "+0123456789=", hidden_size=16, num_layers=1, num_heads=2)
    data = write_jsonl(tmp_path / "d.jsonl", ROWS[:5] + [{"prompt": "35*57=", "answer": "0"}]
                       + ROWS[5:])
    with pytest.raises(SystemExit) as exit_info:
        train_one_step(str(digits), tmp_path / "run", rewards, "--data", str(data),
                       "--heldout-size", "2", "--split-seed", "3")
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and not (tmp_path / "run").exists()
    assert f"{data}: row 5: the model's tokenizer cannot encode '*'" in err
    assert "35*57=" in err and "lmrl init-model --alphabet ascii" in err


def test_an_sft_demonstration_outside_the_alphabet_is_named(tmp_path, rewards, capsys):
    digits = tmp_path / "digits"
    init_model(digits, "+0123456789=", hidden_size=16, num_layers=1, num_heads=2)
    rows = [dict(r, answer=r["answer"] + (" apples" if i == 7 else "")) for i, r in
            enumerate(ROWS)]
    data = write_jsonl(tmp_path / "d.jsonl", rows)
    with pytest.raises(SystemExit):
        main(["sft", "--model", str(digits), "--out", str(tmp_path / "out"), "--steps", "1",
              "--task", "user", "--data", str(data), "--heldout-size", "2",
              "--reward-fns", f"{rewards}:correct"])
    err = capsys.readouterr().err
    assert f"{data}: row 7: the model's tokenizer cannot encode 'aelps'" in err
    assert f"training demonstration ({rows[7]['answer']!r})" in err


# ---------------------------------------------------------------- conversational data


def conversation_rows():
    return [{"prompt": [{"role": "system", "content": "add"},
                        {"role": "user", "content": f"{a}+{b}"}], "answer": str(a + b)}
            for a in range(4) for b in range(4)]


@pytest.mark.slow
def test_conversational_data_with_a_chat_template_end_to_end(tmp_path, rewards, capsys):
    data = write_jsonl(tmp_path / "chat.jsonl", conversation_rows())
    task = ["--task", "user", "--data", str(data), "--heldout-size", "4",
            "--reward-fns", f"{rewards}:correct"]
    model = str(tmp_path / "init")
    with pytest.raises(SystemExit):
        main(["init-model", "--out", model, *task])
    assert "pass --chat-template" in capsys.readouterr().err
    main(["init-model", "--out", model, "--chat-template", "--hidden-size", "16", "--layers",
          "1", "--heads", "2", *task])
    assert "<|assistant|>" in (tmp_path / "init" / "chat_template.jinja").read_text()
    main(["sft", "--model", model, "--out", str(tmp_path / "sft"), "--steps", "2",
          "--batch-size", "4", "--eval-every", "2", "--eval-examples", "4", "--no-progress",
          *task])
    summary = train_one_step(str(tmp_path / "sft"), tmp_path / "run", rewards, *task[2:-2])
    assert summary["steps"] == 1
    capsys.readouterr()
    main(["eval", "--run", str(tmp_path / "run"), "--show", "1"])
    out = capsys.readouterr().out
    assert '"eval/exact_match"' in out and "'role': 'user'" in out


def test_the_chat_template_renders_conversational_prompts(tmp_path, rewards, ascii_model):
    from lmrl.policies.hf import HFPolicy

    chat = tmp_path / "chat"
    init_model(chat, ASCII, hidden_size=16, num_layers=1, num_heads=2,
               chat_template=CHAT_TEMPLATE)
    policy = HFPolicy.from_pretrained(str(chat), device="cpu", max_new_tokens=2)
    messages = conversation_rows()[5]["prompt"]
    batch = policy.prepare([{"prompt": messages}, "1+1="])
    assert batch.texts == ["<|system|>add\n<|user|>1+1\n<|assistant|>", "1+1="]
    assert policy.tokenizer.decode(batch.input_ids[0]) == batch.texts[0]
    assert policy.sample([messages], 2).responses.shape[:2] == (1, 2)
    plain = HFPolicy.from_pretrained(ascii_model, device="cpu", max_new_tokens=2)
    with pytest.raises(ConfigError, match="tokenizer has no chat template.*--chat-template"):
        plain.prepare([{"prompt": messages}])


def test_conversational_data_with_a_model_without_a_template_fails_at_load(
        tmp_path, rewards, ascii_model, capsys):
    data = write_jsonl(tmp_path / "chat.jsonl", conversation_rows())
    with pytest.raises(SystemExit):
        train_one_step(ascii_model, tmp_path / "run", rewards, "--data", str(data),
                       "--heldout-size", "2")
    assert "no chat template" in capsys.readouterr().err and not (tmp_path / "run").exists()
