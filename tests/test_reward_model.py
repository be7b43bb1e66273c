"""Bradley-Terry reward models (lmrl.rm): the loss against hand-computed values, margins
included; scoring that is the same in one batch and in micro-batches; preference data cleaned
and refused as documented; and `lmrl rm train` / `lmrl rm eval` end to end on a tiny model and
a separable preference set (chosen ends in "9", rejected in "1")."""

import json
import math
import random

import pytest

pytest.importorskip("transformers")
pytest.importorskip("datasets")

import torch  # noqa: E402

from lmrl.cli import main  # noqa: E402
from lmrl.errors import DataError  # noqa: E402
from lmrl.modelzoo import CHAT_TEMPLATE, init_model  # noqa: E402
from lmrl.rm.loss import bradley_terry_loss, mean_loss, pair_metrics  # noqa: E402
from lmrl.rm.model import encode, load_backbone, load_tokenizer, score  # noqa: E402
from lmrl.rm.pairs import read_pairs, split  # noqa: E402
from lmrl.rm.train import encode_pairs, pair_scores, train_step  # noqa: E402

ALPHABET = " 0123456789="

# ---------------------------------------------------------------- the loss, by hand


def test_loss_without_margin_is_minus_log_sigmoid_of_the_gap():
    # -log sigmoid(2) = log(1 + e^-2) = 0.126928; gap 0 -> log 2; gap -1 -> log(1 + e) = 1.313262
    loss = bradley_terry_loss(torch.tensor([2.0, 0.5, 0.0]), torch.tensor([0.0, 0.5, 1.0]))
    assert torch.allclose(loss, torch.tensor([0.126928, math.log(2), 1.313262]), atol=1e-6)


def test_margin_is_subtracted_from_the_gap_as_in_trl():
    # gap 2, margin 2 -> log 2; gap 0, margin -1 -> -log sigmoid(1) = 0.313262;
    # gap 3, margin 1 -> -log sigmoid(2) = 0.126928
    loss = bradley_terry_loss(torch.tensor([2.0, 0.0, 4.0]), torch.tensor([0.0, 0.0, 1.0]),
                              torch.tensor([2.0, -1.0, 1.0]))
    assert torch.allclose(loss, torch.tensor([math.log(2), 0.313262, 0.126928]), atol=1e-6)


def test_loss_is_finite_for_huge_gaps_and_its_gradient_is_minus_sigmoid_of_minus_gap():
    r_chosen = torch.tensor([-100.0, 100.0, 0.0], requires_grad=True)
    loss = bradley_terry_loss(r_chosen, torch.zeros(3))
    assert torch.allclose(loss, torch.tensor([100.0, 0.0, math.log(2)]), atol=1e-6)
    mean_loss(loss).backward()
    # d/d r_chosen of -log sigmoid(g) is -sigmoid(-g): -1, 0, -1/2; the mean divides by 3
    assert torch.allclose(r_chosen.grad, torch.tensor([-1.0, 0.0, -0.5]) / 3, atol=1e-6)


def test_pair_metrics_count_a_tie_as_a_miss():
    metrics = pair_metrics(torch.tensor([1.0, 0.0, 2.0]), torch.tensor([0.0, 0.0, 3.0]))
    assert metrics["accuracy"] == pytest.approx(1 / 3)
    assert metrics["gap_mean"] == pytest.approx(0.0)


# ---------------------------------------------------------------- tiny models and data


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("rm_models")
    init_model(root / "base", ALPHABET, hidden_size=16, num_layers=1, num_heads=2)
    init_model(root / "chat", ALPHABET, hidden_size=16, num_layers=1, num_heads=2,
               chat_template=CHAT_TEMPLATE)
    return root


def separable_rows(n: int, seed: int = 0) -> list[dict]:
    """Prompt: digits; chosen: the digits + "9", rejected: the digits + "1"."""
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        digits = "".join(rng.choice("0123456789") for _ in range(rng.randint(2, 6)))
        rows.append({"prompt": " ".join(digits) + "=", "chosen": digits + "9",
                     "rejected": digits + "1"})
    return rows


def conversational(row: dict) -> dict:
    return {"prompt": [{"role": "user", "content": row["prompt"]}],
            "chosen": [{"role": "assistant", "content": row["chosen"]}],
            "rejected": [{"role": "assistant", "content": row["rejected"]}]}


def write_jsonl(path, rows: list[dict]):
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def cli(capsys, *argv: str) -> tuple[int, str, str]:
    """(exit code, stdout, stderr) of `lmrl ARGV` run in this process."""
    try:
        main(list(argv))
        code = 0
    except SystemExit as stop:
        code = stop.code
    out, err = capsys.readouterr()
    return code, out, err


# ---------------------------------------------------------------- scoring


@pytest.mark.usefixtures("one_thread")
def test_scores_are_the_same_in_one_batch_in_micro_batches_and_alone(models):
    tokenizer = load_tokenizer(str(models / "base"))
    torch.manual_seed(0)
    model, new = load_backbone(str(models / "base"), tokenizer)
    assert new == ["score.weight"]
    torch.nn.init.normal_(model.score.weight, std=1.0)  # scores far from 0, rows far apart
    prompts = ["1 2=", "3=", "4 5 6 7 8=", "9 0="]
    completions = ["12", "3333333", "4", ""]
    whole = score(model, tokenizer, prompts, completions, batch_size=4)
    assert torch.allclose(score(model, tokenizer, prompts, completions, batch_size=3), whole,
                          atol=1e-5)
    alone = torch.cat([score(model, tokenizer, [p], [c], batch_size=1)
                       for p, c in zip(prompts, completions, strict=True)])
    assert torch.allclose(alone, whole, atol=1e-5)
    assert whole.std() > 0.1  # distinct rows score differently: the test can tell them apart


def test_a_long_text_loses_its_first_tokens(models):
    tokenizer = load_tokenizer(str(models / "base"))
    ids, truncated = encode(tokenizer, "1 2 3=321", max_length=4)
    assert tokenizer.decode(ids) == "=321" and truncated
    assert encode(tokenizer, "1=1", max_length=4) == (tokenizer("1=1")["input_ids"], False)
    with pytest.raises(DataError, match="encodes to no tokens"):
        encode(tokenizer, "")


@pytest.mark.usefixtures("one_thread")
def test_a_training_step_minimises_the_margin_loss_of_its_batch(models):
    tokenizer = load_tokenizer(str(models / "base"))
    torch.manual_seed(0)
    model, _ = load_backbone(str(models / "base"), tokenizer)
    pairs, _ = read_pairs([{**row, "margin": 3.0} for row in separable_rows(4)], tokenizer)
    batch = encode_pairs(pairs, tokenizer, max_length=None)[0]
    pad = tokenizer.pad_token_id
    with torch.no_grad():
        r_chosen, r_rejected = pair_scores(model, batch, pad)
    expected = float(bradley_terry_loss(r_chosen, r_rejected, torch.full((4,), 3.0)).mean())
    params = list(model.parameters())
    metrics = train_step(model, batch, pad, torch.optim.SGD(params, lr=0.1), params, 0.0)
    assert metrics["train/loss"] == pytest.approx(expected, rel=1e-5)
    with torch.no_grad():
        after = float(bradley_terry_loss(*pair_scores(model, batch, pad), batch.margins).mean())
    assert after < expected  # the step went down the loss it reported


# ---------------------------------------------------------------- data


def test_ties_and_duplicates_are_dropped_and_counted(models):
    tokenizer = load_tokenizer(str(models / "base"))
    rows = [{"prompt": "1=", "chosen": "19", "rejected": "11"},
            {"prompt": "2=", "chosen": "22", "rejected": "22"},
            {"prompt": "1=", "chosen": "19", "rejected": "11"},
            {"prompt": "3=", "chosen": "39", "rejected": "31"}]
    pairs, notes = read_pairs(rows, tokenizer)
    assert pairs.prompts == ["1=", "3="] and pairs.margins is None
    assert notes == ["dropped 1 of 4 rows where chosen == rejected",
                     "dropped 1 duplicate pairs (the same prompt, chosen and rejected as an "
                     "earlier row)"]


def test_margins_are_read_from_the_margin_column_or_the_named_one(models):
    tokenizer = load_tokenizer(str(models / "base"))
    rows = [{"prompt": "1=", "chosen": "19", "rejected": "11", "margin": 0.5, "m2": 2}]
    assert read_pairs(rows, tokenizer)[0].margins == [0.5]
    assert read_pairs(rows, tokenizer, margin_column="m2")[0].margins == [2.0]
    with pytest.raises(DataError, match="no margin column 'gap'"):
        read_pairs(rows, tokenizer, margin_column="gap")
    with pytest.raises(DataError, match="must be a finite number"):
        read_pairs([{**rows[0], "margin": float("nan")}], tokenizer)


@pytest.mark.parametrize("form", ["csv", "parquet", "save_to_disk", "dataset"])
def test_pairs_come_from_any_source_the_data_loader_reads(models, tmp_path, form):
    import datasets

    rows = [{"prompt": "1=", "chosen": "1 9", "rejected": "1 1", "margin": 1.5},
            {"prompt": "2=", "chosen": "2 9", "rejected": "2 1", "margin": 0.0}]
    table = datasets.Dataset.from_list(rows)
    source = {"csv": tmp_path / "pairs.csv", "parquet": tmp_path / "pairs.parquet",
              "save_to_disk": tmp_path / "pairs", "dataset": table}[form]
    if form == "csv":
        table.to_csv(source, index=False)
    elif form == "parquet":
        table.to_parquet(source)
    elif form == "save_to_disk":
        table.save_to_disk(source)
    pairs, notes = read_pairs(source, load_tokenizer(str(models / "base")))
    assert (pairs.prompts, pairs.chosen, pairs.margins) == (["1=", "2="], ["1 9", "2 9"],
                                                            [1.5, 0.0]) and notes == []


def test_the_split_is_seeded_disjoint_and_complete():
    train, heldout = split(50, 0, seed=3)
    assert len(heldout) == 5 and sorted(train + heldout) == list(range(50))
    assert split(50, 0, seed=3) == (train, heldout) and split(50, 0, seed=4) != (train, heldout)
    with pytest.raises(DataError, match="leaves no pairs to train on"):
        split(5, 5, seed=0)


@pytest.mark.parametrize("rows, message", [
    ([{"prompt": "1=", "chosen": "19"}], "no 'rejected' column"),
    ([], "has no rows"),
    ([{"prompt": "1=", "chosen": "11", "rejected": "11"}] * 2,
     "in every one of its 2 rows chosen == rejected"),
    ([{"prompt": "1=", "chosen": "19", "rejected": None}], "'rejected' must be a string"),
])
def test_bad_data_is_one_error_line_with_exit_2(models, tmp_path, capsys, rows, message):
    data = tmp_path / "pairs.jsonl"
    data.write_text("".join(json.dumps(row) + "\n" for row in rows))
    out = tmp_path / "rm"
    code, _, err = cli(capsys, "rm", "train", "--model", str(models / "base"), "--data",
                       str(data), "--out", str(out), "--steps", "1", "--no-progress")
    assert code == 2 and err.startswith("lmrl: error: ") and message in err, err
    assert len(err.strip().splitlines()) == 1 and not out.exists()


# ---------------------------------------------------------------- end to end


@pytest.mark.usefixtures("one_thread")
def test_rm_train_learns_a_separable_preference_and_rm_eval_reproduces_it(models, tmp_path,
                                                                          capsys):
    data = write_jsonl(tmp_path / "pairs.jsonl", separable_rows(120))
    out = tmp_path / "rm"
    code, stdout, err = cli(capsys, "rm", "train", "--model", str(models / "base"), "--data",
                            str(data), "--out", str(out), "--steps", "40", "--lr", "1e-2",
                            "--eval-every", "20", "--heldout-size", "20", "--no-progress")
    assert code == 0, err
    lines = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert lines[0]["eval/accuracy"] < 0.5  # the new head prefers the rejected text at first
    summary = json.loads((out / "summary.json").read_text())
    assert summary["eval/accuracy"] > 0.95 and summary["eval/gap_mean"] > 0
    assert lines[-1]["step"] == 40 and lines[-1]["eval/accuracy"] == summary["eval/accuracy"]
    assert "saved to" in stdout and "held out" in stdout
    config = json.loads((out / "config.json").read_text())
    assert config["architectures"] == ["Qwen2ForSequenceClassification"]
    assert config["pad_token_id"] == 0

    report = tmp_path / "eval.json"
    code, stdout, err = cli(capsys, "rm", "eval", "--model", str(out), "--data",
                            str(out / "heldout.jsonl"), "--out", str(report))
    assert code == 0, err
    metrics = json.loads(report.read_text())
    assert metrics["pairs"] == 20
    assert metrics["accuracy"] == summary["eval/accuracy"]
    assert metrics["gap_mean"] == pytest.approx(summary["eval/gap_mean"], rel=1e-5)

    # One pair, with and without a margin of 2: the loss is -log sigmoid(gap - 2).
    first = json.loads((out / "heldout.jsonl").read_text().splitlines()[0])
    write_jsonl(tmp_path / "one.jsonl", [first])
    write_jsonl(tmp_path / "margin.jsonl", [{**first, "m": 2.0}])
    cli(capsys, "rm", "eval", "--model", str(out), "--data", str(tmp_path / "one.jsonl"),
        "--out", str(report))
    gap = json.loads(report.read_text())["gap_mean"]
    cli(capsys, "rm", "eval", "--model", str(out), "--data", str(tmp_path / "margin.jsonl"),
        "--margin-column", "m", "--out", str(report))
    assert json.loads(report.read_text())["loss"] == pytest.approx(
        math.log1p(math.exp(-(gap - 2.0))), rel=1e-5)


@pytest.mark.usefixtures("one_thread")
def test_conversational_pairs_train_through_the_chat_template(models, tmp_path, capsys):
    data = write_jsonl(tmp_path / "conv.jsonl",
                       [conversational(row) for row in separable_rows(100, seed=1)])
    out = tmp_path / "rm"
    code, _, err = cli(capsys, "rm", "train", "--model", str(models / "chat"), "--data",
                       str(data), "--out", str(out), "--steps", "40", "--lr", "1e-2",
                       "--eval-every", "40", "--no-progress")
    assert code == 0, err
    heldout = [json.loads(line) for line in (out / "heldout.jsonl").read_text().splitlines()]
    assert heldout[0]["prompt"].startswith("<|user|>") and heldout[0]["prompt"].endswith(
        "<|assistant|>")
    assert json.loads((out / "summary.json").read_text())["eval/accuracy"] > 0.95
    code, _, err = cli(capsys, "rm", "train", "--model", str(models / "base"), "--data",
                       str(data), "--out", str(tmp_path / "rm2"), "--no-progress")
    assert code == 2 and "no chat template" in err


def test_rm_train_refuses_a_users_directory_and_rm_eval_a_plain_lm(models, tmp_path, capsys):
    data = write_jsonl(tmp_path / "pairs.jsonl", separable_rows(20))
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep me")
    code, _, err = cli(capsys, "rm", "train", "--model", str(models / "base"), "--data",
                       str(data), "--out", str(mine), "--overwrite", "--no-progress")
    assert code == 2 and "not created by lmrl" in err
    assert [p.name for p in mine.iterdir()] == ["notes.txt"]
    code, _, err = cli(capsys, "rm", "eval", "--model", str(models / "base"), "--data",
                       str(data))
    assert code == 2 and "is not a reward model" in err


@pytest.mark.usefixtures("one_thread")
def test_over_long_pairs_are_truncated_and_counted(models, tmp_path, capsys):
    data = write_jsonl(tmp_path / "pairs.jsonl", [
        {"prompt": "1 2 3 4 5=", "chosen": "19", "rejected": "11"},
        {"prompt": "1=", "chosen": "19", "rejected": "11"},
        {"prompt": "2=", "chosen": "29", "rejected": "21"}])
    code, stdout, err = cli(capsys, "rm", "train", "--model", str(models / "base"), "--data",
                            str(data), "--out", str(tmp_path / "rm"), "--steps", "1",
                            "--max-length", "4", "--heldout-size", "1", "--no-progress")
    assert code == 0, err
    assert "note: truncated 1 of 3 pairs to their last --max-length 4 tokens" in stdout
    assert json.loads((tmp_path / "rm" / "summary.json").read_text())["pairs/truncated"] == 1


def test_rm_without_a_subcommand_is_a_usage_error(capsys):
    code, _, err = cli(capsys, "rm")
    assert code == 2 and "lmrl: error: lmrl rm: no subcommand given" in err
    code, out, _ = cli(capsys, "rm", "--help")
    assert code == 0 and "lmrl rm train" in out and "lmrl rm eval" in out
