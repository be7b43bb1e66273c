"""Tier 1 tests of the text tasks: sort as text (against the toy's tensor rewards), arithmetic,
and a user task built from data files and reward functions in a module of the user's own."""

import json
import re
import sys
import textwrap
from types import SimpleNamespace

import pytest
import torch

from lmrl.config import TaskConfig
from lmrl.errors import DataError
from lmrl.tasks import build_task, sort
from lmrl.tasks.arithmetic import ArithmeticTask, correct, digit_accuracy
from lmrl.tasks.sort_text import REWARDS, SortTextTask, parse_int
from lmrl.tasks.text import RewardError, evaluate_text
from lmrl.tasks.user import UserTask


def text_scores(numbers, *completions):
    """Every sort text reward of each completion to one prompt -> {name: [floats]}."""
    rows = [numbers] * len(completions)
    prompts = [" ".join(map(str, numbers)) + "="] * len(completions)
    return {name: fn(prompts, list(completions), numbers=rows) for name, fn in REWARDS.items()}


def scores_of(numbers, completion):
    """{name: float} for one completion."""
    return {name: values[0] for name, values in text_scores(numbers, completion).items()}


# ---------------------------------------------------------------- sort as text vs the toy


@pytest.mark.parametrize(("n", "V"), [(4, 3), (5, 10), (3, 12)])  # many repeats; default; 2 digits
def test_well_formed_text_matches_toy_rewards(n, V):
    g = torch.Generator().manual_seed(n * 100 + V)
    B, G = 32, 8
    prompts = torch.randint(0, V, (B, n), generator=g)
    responses = torch.randint(0, V, (B, G, n), generator=g)
    responses[:, 0] = prompts.sort(dim=-1).values  # some exact matches
    completions = [" ".join(map(str, r)) for r in responses.reshape(B * G, n).tolist()]
    numbers = [p for p in prompts.tolist() for _ in range(G)]
    for name, fn in REWARDS.items():
        text = fn([""] * (B * G), completions, numbers=numbers)
        toy = sort.REWARDS[name](prompts, responses).reshape(-1).tolist()
        assert text == toy, name


def test_seed_example_inclusion_adjacency_7():
    # prompt 3 1 2 0 -> 0 1 2 3: inclusion 4 + adjacency 3 = 7; 0 0 0 0 -> 1 + 3 = 4
    assert text_scores([3, 1, 2, 0], "0 1 2 3", "0 0 0 0")["inclusion_adjacency"] == [7.0, 4.0]


def test_repeated_numbers_loophole_and_multiset():
    # prompt 2 0 2, answer 0 2 2: "0 0 2" gets the plain maximum 5 but multiset 2 + 2 = 4
    s = text_scores([2, 0, 2], "0 0 2", "0 2 2")
    assert s["inclusion_adjacency"] == [5.0, 5.0]
    assert s["inclusion_adjacency_multiset"] == [4.0, 5.0]
    assert s["exact_match"] == [0.0, 1.0]


def _row(em, pos, ia, ms):
    return {"exact_match": em, "positional": pos, "inclusion_adjacency": ia,
            "inclusion_adjacency_multiset": ms}


# prompt 3 1 2 0, sorted 0 1 2 3; values: exact, positional, incl+adj, multiset incl+adj
MALFORMED = [
    ("", _row(0, 0, 0, 0)),
    ("garbage", _row(0, 0, 0, 0)),
    ("0,1,2,3", _row(0, 0, 0, 0)),  # one unparseable token
    ("1 2 x", _row(0, 0, 2 + 1, 2 + 1)),  # 1 2 present; pair (1, 2); x matches nothing
    ("0 1 x 3", _row(0, 3, 3 + 1, 3 + 1)),  # (1, x) and (x, 3) are not pairs of numbers
    ("0 1", _row(0, 2, 2 + 1, 2 + 1)),  # too short: fewer matches
    ("9" * 400, _row(0, 0, 0, 0)),  # parses, matches nothing
    ("0 1 2 " + "9" * 400, _row(0, 3, 3 + 3, 3 + 3)),  # huge number still ordered after 2
    ("9" * 5000, _row(0, 0, 0, 0)),  # over int()'s digit limit: unparseable
    ("-1 0 1 2 3", _row(0, 0, 3 + 3, 3 + 3)),  # graded on -1 0 1 2
    ("0 1 2 3 3", _row(0, 4, 7, 7)),  # extra token: graded rewards ignore it, exact does not
    ("0 1 2 3 4 5 6 7 8 9", _row(0, 4, 7, 7)),
    ("+0 1 2 3", _row(0, 3, 3 + 2, 3 + 2)),
    ("  0\n1\t2   3 ", _row(1, 4, 7, 7)),  # whitespace of any kind separates
    ("00 1 2 3", _row(1, 4, 7, 7)),  # "00" reads as 0 (documented)
]


@pytest.mark.parametrize(("completion", "expected"), MALFORMED)
def test_malformed_completions(completion, expected):
    assert scores_of([3, 1, 2, 0], completion) == expected


def test_longer_output_never_beats_the_answer():
    g = torch.Generator().manual_seed(0)
    numbers = [3, 1, 2, 0, 3]
    best = scores_of(numbers, "0 1 2 3 3")
    for _ in range(200):
        k = int(torch.randint(6, 12, (1,), generator=g))
        tokens = torch.randint(-2, 12, (k,), generator=g).tolist()
        got = scores_of(numbers, " ".join(map(str, tokens)))
        assert all(got[name] <= best[name] for name in REWARDS)
        assert got["exact_match"] == 0.0


def test_parse_int():
    assert [parse_int(t) for t in ["12", "-3", "007", "x", "3,", "1.0", "+1", "", "1_0", "١"]] \
        == [12, -3, 7, None, None, None, None, None, None, None]
    assert parse_int("9" * 5000) is None


# ---------------------------------------------------------------- SortTextTask


def test_sort_prompt_format_and_budget():
    task = SortTextTask(n=5, V=10)
    ex = task.heldout[0]
    assert re.fullmatch(r"(\d )*\d=", ex["prompt"])
    assert [int(t) for t in ex["prompt"][:-1].split(" ")] == ex["numbers"]
    assert task.demonstration({"prompt": "3 1 2 0=", "numbers": [3, 1, 2, 0]}) == "0 1 2 3"
    assert task.max_new_tokens == 10  # 2n: 2n - 1 characters and EOS
    assert SortTextTask(n=3, V=12, heldout_size=10).max_new_tokens == 9  # "10 11 11" + EOS


def test_sort_reward_choice_weights():
    task = SortTextTask(n=3, V=5, heldout_size=10, reward="inclusion_adjacency")
    assert {r.name: r.weight for r in task.rewards} == _row(0.0, 0.0, 1.0, 0.0)
    assert task.correctness == "exact_match"
    total, table = task.score(task.heldout[:2], [["0 1", "x"], ["4 4 4", ""]])
    assert torch.equal(total, table["inclusion_adjacency"])
    with pytest.raises(ValueError, match="inclusion_adjacency_multiset"):
        SortTextTask(reward="nope")


def test_sort_heldout_validation():
    with pytest.raises(ValueError, match="half"):
        SortTextTask(n=2, V=3, heldout_size=5)  # 9 prompts, at most 4 held out
    with pytest.raises(ValueError, match="V >= n"):
        SortTextTask(n=4, V=3, repeats=False, heldout_size=1)
    SortTextTask(n=2, V=3, heldout_size=4)


@pytest.mark.parametrize("repeats", [True, False])
def test_sort_heldout_disjoint_distinct_and_seeded(repeats):
    task = SortTextTask(n=3, V=5, repeats=repeats, heldout_size=25)
    held = [ex["prompt"] for ex in task.heldout]
    assert len(set(held)) == 25
    g = torch.Generator().manual_seed(0)
    train = {ex["prompt"] for ex in task.sample_prompts(2000, g)}
    assert not train & set(held)
    assert len(train) > 20  # the training side is genuinely drawn from the rest
    assert held == [ex["prompt"] for ex in SortTextTask(n=3, V=5, repeats=repeats,
                                                        heldout_size=25).heldout]
    other = SortTextTask(n=3, V=5, repeats=repeats, heldout_size=25, split_seed=1)
    assert held != [ex["prompt"] for ex in other.heldout]


def test_train_examples_deterministic_in_generator():
    task = SortTextTask()
    a = task.sample_prompts(8, torch.Generator().manual_seed(3))
    b = task.sample_prompts(8, torch.Generator().manual_seed(3))
    assert a == b


# ---------------------------------------------------------------- demonstrations and evaluation


class PerfectPolicy:
    """Answers each prompt with a fixed text (the task's demonstration unless told otherwise)."""

    training = False

    def __init__(self, answers):
        self.answers = answers

    def eval(self):
        return self

    def train(self, mode=True):
        return self

    def sample(self, prompts, G, temperature=1.0, generator=None):
        texts = [[self.answers[p]] * G for p in prompts]
        truncated = torch.zeros(len(prompts), G, dtype=torch.bool)
        return SimpleNamespace(texts=texts, truncated=truncated)


@pytest.mark.parametrize("task", [SortTextTask(), SortTextTask(n=3, V=12, heldout_size=40),
                                  ArithmeticTask(), ArithmeticTask(op="*", digits=2)],
                         ids=["sort", "sort2digit", "add", "mul"])
def test_demonstrations_are_correct(task):
    examples = task.heldout[:64] + task.sample_prompts(64, torch.Generator().manual_seed(0))
    _, table = task.score(examples, [[task.demonstration(ex)] for ex in examples])
    assert task.correct(table).eq(1.0).all()
    answers = {ex["prompt"]: task.demonstration(ex) for ex in task.heldout}
    metrics, samples = evaluate_text(task, PerfectPolicy(answers), num_samples=2)
    assert metrics["eval/exact_match"] == 1.0
    assert metrics["eval/pass_at_2"] == 1.0
    assert len(samples) == 4


def test_sort_demonstration_scores_every_maximum():
    task = SortTextTask(n=4, V=10, heldout_size=50)
    _, table = task.score(task.heldout, [[task.demonstration(ex)] for ex in task.heldout])
    assert table["positional"].eq(4).all()
    assert table["inclusion_adjacency"].eq(7).all()
    assert table["inclusion_adjacency_multiset"].eq(7).all()


# ---------------------------------------------------------------- arithmetic


def test_arithmetic_correct_hand_values():
    completions = ["579", " 579\n", "0579", "578", "", "579abc", "5 79", "+579", "-579",
                   "9" * 400, "9" * 5000, "57.9"]
    assert correct([""] * 12, completions, answer=[579] * 12) == \
        [1.0, 1.0, 1.0] + [0.0] * 9
    assert correct(["a"], ["42"], answer=["42"]) == [1.0]  # a string answer column also works


def test_arithmetic_digit_accuracy_hand_values():
    completions = ["579", "578", "79", "1579", "x", "", "9" * 400]
    got = digit_accuracy([""] * 7, completions, answer=[579] * 7)
    assert got == pytest.approx([1.0, 2 / 3, 2 / 3, 3 / 4, 0.0, 0.0, 1 / 400])


def test_arithmetic_format_heldout_and_weights():
    task = ArithmeticTask(op="+", digits=3, heldout_size=100)
    for ex in task.heldout:
        a, b = map(int, re.fullmatch(r"([1-9]\d\d)\+([1-9]\d\d)=", ex["prompt"]).groups())
        assert ex["answer"] == a + b
    assert ArithmeticTask(op="*", digits=2).example(12, 34) == {"prompt": "12*34=", "answer": 408}
    assert task.max_new_tokens == 5  # up to 4 digits + EOS
    assert ArithmeticTask(op="*", digits=3).max_new_tokens == 7
    assert {r.name: r.weight for r in task.rewards} == {"correct": 1.0, "digit_accuracy": 0.0}
    assert task.correctness == "correct"


def test_arithmetic_heldout_disjoint_and_seeded():
    task = ArithmeticTask(digits=1, heldout_size=50)  # 100 prompts 0..9 + 0..9
    held = {ex["prompt"] for ex in task.heldout}
    assert len(held) == 50
    train = {ex["prompt"] for ex in task.sample_prompts(2000, torch.Generator().manual_seed(0))}
    assert train == {f"{a}+{b}=" for a in range(10) for b in range(10)} - held
    assert held == {ex["prompt"] for ex in ArithmeticTask(digits=1, heldout_size=50).heldout}
    assert held != {ex["prompt"] for ex in ArithmeticTask(digits=1, heldout_size=50,
                                                          split_seed=1).heldout}
    with pytest.raises(ValueError, match="half"):
        ArithmeticTask(digits=1, heldout_size=51)
    with pytest.raises(ValueError, match="op"):
        ArithmeticTask(op="/")


# ---------------------------------------------------------------- user task

REWARD_MODULE = """
    def correct(prompts, completions, answer, **columns):
        return [float(c.strip() == str(a)) for c, a in zip(completions, answer)]

    def uses_extra(prompts, completions, extra, **columns):
        return [float(e) + len(c) for c, e in zip(completions, extra)]

    def boom(prompts, completions, **columns):
        if "bad" in completions:
            raise ValueError("cannot score")
        return [0.0] * len(completions)

    def short(prompts, completions, **columns):
        return [0.0]

    def half(prompts, completions, **columns):
        return [0.5] * len(completions)
"""


@pytest.fixture
def mod(tmp_path, monkeypatch):
    """A reward module importable as 'user_rewards_mod'."""
    (tmp_path / "user_rewards_mod.py").write_text(textwrap.dedent(REWARD_MODULE))
    monkeypatch.syspath_prepend(str(tmp_path))
    yield "user_rewards_mod"
    sys.modules.pop("user_rewards_mod", None)


def rows(k):
    return [{"prompt": f"q{i}?", "answer": i, "extra": 10 * i} for i in range(k)]


def write_jsonl(path, data):
    path.write_text("".join(json.dumps(r) + "\n" for r in data))
    return str(path)


def test_user_task_jsonl_split(tmp_path, mod):
    data = write_jsonl(tmp_path / "d.jsonl", rows(10))
    task = UserTask(data, [f"{mod}:correct"], heldout_size=3)
    held = [ex["prompt"] for ex in task.heldout]
    assert len(held) == 3 and len(task.train) == 7
    assert not {ex["prompt"] for ex in task.train} & set(held)
    again = UserTask(data, [f"{mod}:correct"], heldout_size=3)
    other = UserTask(data, [f"{mod}:correct"], heldout_size=3, split_seed=1)
    assert held == [ex["prompt"] for ex in again.heldout]
    assert held != [ex["prompt"] for ex in other.heldout]
    assert task.correctness == "correct"
    assert task.demonstration(task.heldout[0]) == str(task.heldout[0]["answer"])
    for bad in (0, 10):
        with pytest.raises(ValueError, match="heldout_size"):
            UserTask(data, [f"{mod}:correct"], heldout_size=bad)


def test_user_task_parquet(tmp_path, mod):
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    path = tmp_path / "d.parquet"
    pq.write_table(pa.Table.from_pylist(rows(6)), path)
    task = UserTask(str(path), [f"{mod}:uses_extra"], heldout_size=2)
    assert len(task.train) == 4
    assert task.correctness is None
    _, table = task.score(task.train[:2], [["ab"], ["c"]])
    assert table["uses_extra"].tolist() == [[task.train[0]["extra"] + 2.0],
                                            [task.train[1]["extra"] + 1.0]]


def test_user_task_heldout_file_drops_overlap(tmp_path, mod):
    data = write_jsonl(tmp_path / "d.jsonl", rows(5))
    held = write_jsonl(tmp_path / "h.jsonl", rows(8)[3:])  # q3, q4 overlap; q5..q7 new
    task = UserTask(data, [f"{mod}:correct"], heldout_data=held)
    assert [ex["prompt"] for ex in task.train] == ["q0?", "q1?", "q2?"]
    assert len(task.heldout) == 5 and task.num_overlap_dropped == 2


def test_user_task_weights_combine(tmp_path, mod):
    data = write_jsonl(tmp_path / "d.jsonl", rows(4))
    task = UserTask(data, [f"{mod}:correct", f"{mod}:uses_extra=0.5", f"{mod}:half=-2"],
                    heldout_size=1)
    examples = task.train[:2]
    completions = [[str(examples[0]["answer"]), "no"], ["x", str(examples[1]["answer"])]]
    total, table = task.score(examples, completions)
    assert total.shape == (2, 2)
    expected = table["correct"] + 0.5 * table["uses_extra"] - 2 * table["half"]
    assert torch.equal(total, expected)
    assert table["correct"].tolist() == [[1.0, 0.0], [0.0, 1.0]]
    # hand value: row 0, completion "no" (2 characters): 0 + 0.5 * (extra + 2) - 2 * 0.5
    assert total[0, 1].item() == 0.5 * (examples[0]["extra"] + 2) - 1.0


def test_user_task_raising_reward_names_the_sample(tmp_path, mod):
    data = write_jsonl(tmp_path / "d.jsonl", rows(4))
    task = UserTask(data, [f"{mod}:boom"], heldout_size=1)
    ex = task.train[1]
    with pytest.raises(RewardError) as info:
        task.score(task.train[:2], [["ok", "fine"], ["fine", "bad"]])
    message = str(info.value)
    assert "cannot score" in message and repr(ex["prompt"]) in message and "'bad'" in message


def test_user_task_wrong_length_raises(tmp_path, mod):
    data = write_jsonl(tmp_path / "d.jsonl", rows(4))
    task = UserTask(data, [f"{mod}:short"], heldout_size=1)
    with pytest.raises(RewardError, match="returned 1 values for 4 completions"):
        task.score(task.train[:2], [["a", "b"], ["c", "d"]])


def test_user_task_no_correctness_no_exact_match(tmp_path, mod):
    data = write_jsonl(tmp_path / "d.jsonl", rows(4))
    task = UserTask(data, [f"{mod}:half"], heldout_size=2)
    assert task.correctness is None
    metrics, _ = evaluate_text(task, PerfectPolicy({ex["prompt"]: "z" for ex in task.heldout}),
                               num_samples=2)
    assert "eval/exact_match" not in metrics and not any("pass_at" in k for k in metrics)
    assert metrics["eval/reward_half"] == 0.5


def test_user_task_correctness_must_be_0_or_1(tmp_path, mod):
    data = write_jsonl(tmp_path / "d.jsonl", rows(4))
    task = UserTask(data, [f"{mod}:correct"], heldout_size=1)
    assert task.correct({"correct": torch.tensor([[0.0, 1.0]])}).tolist() == [[0.0, 1.0]]
    with pytest.raises(RewardError, match="0 or 1"):
        task.correct({"correct": torch.tensor([[0.0, 0.5]])})


def test_user_task_validation(tmp_path, mod):
    data = write_jsonl(tmp_path / "d.jsonl", rows(4))
    assert UserTask(data, [], heldout_size=1).rewards == []  # reward models may follow
    with pytest.raises(ValueError, match="has no reward"):
        build_task(TaskConfig(task="user", data=str(data), heldout_size=1))
    with pytest.raises(ValueError, match="share a name"):
        UserTask(data, [f"{mod}:half", f"{mod}:half=2"], heldout_size=1)
    with pytest.raises(ValueError, match="module:function"):
        UserTask(data, ["no_colon"], heldout_size=1)
    ragged = write_jsonl(tmp_path / "r.jsonl", rows(3) + [{"prompt": "q9?", "answer": 9}])
    with pytest.raises(ValueError, match="row 3 has columns"):
        UserTask(ragged, [f"{mod}:half"], heldout_size=1)
    reserved = write_jsonl(tmp_path / "c.jsonl", [{"prompt": "a", "completions": 1}] * 3)
    with pytest.raises(ValueError, match="clash"):
        UserTask(reserved, [f"{mod}:half"], heldout_size=1)
    no_demo = UserTask(write_jsonl(tmp_path / "n.jsonl", [{"prompt": f"p{i}"} for i in range(3)]),
                       [f"{mod}:half"], heldout_size=1)
    with pytest.raises(DataError, match=r"demonstration column.*\['completion', 'answer'\]"):
        no_demo.demonstration(no_demo.train[0])
