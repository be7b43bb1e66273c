"""GSM8K math word problems with the R1-Zero prompt and rewards.

Data: JSONL rows {"question": ..., "answer": ...} as GSM8K ships them; the answer is a worked
solution with "<<48/2=24>>" calculator annotations, ending in a line "#### N". Other columns
are ignored; rows without "question", "answer" or a numeric "#### N" are a data error.

Prompt: R1_ZERO_PROMPT with the question filled in; it ends in "Assistant: <think>", so the
completion continues the reasoning, e.g. " 48/2 = 24 ... </think> <answer> 72 </answer>".

Format, precisely: a completion is well formed when it contains "</think> <answer>" (one space,
as the prompt spells it) and, after that, "</answer>". Its answer is the text between the first
such "</think> <answer>" and the "</answer>" after it, stripped. Text after "</answer>" is
ignored (sampling stops at EOS or the token budget, whichever is first).

Rewards (pure, deterministic, never raise on a completion; a bad "ground_truth" column raises):
- answer: 1 if the completion is well formed and its answer is mathematically equal to the
  ground truth under math-verify: "72", "72.0", "$72", "\\boxed{72}", "72 clips", "144/2" all
  count, and so do "**72**" and "\\$72" (markdown bold and an escaped dollar are removed
  first, see normalize_answer). The task's correctness. An answer with a "^", "!" or "_", a
  LaTeX command not in ALLOWED_COMMANDS, or more than MAX_ANSWER_CHARS characters is 0 without
  calling math-verify: sympy can spend minutes on "9^9^9^9" or "\\Gamma(1000000)", and
  math-verify's own timeout (SIGALRM) works only in the main thread, where it is used as a
  second guard.
  math-verify's own leniencies remain: "1800%" also equals 18 (a percentage may be read as
  either), and the last number in a sentence is the one graded ("72 or 70" -> 70).
- format: 1 if the completion is well formed. Weight 0.1 by default: a base model rarely
  answers right at first, and a group whose answers are all wrong has zero centered deltas, so
  it teaches nothing; the small format term still separates well-formed samples in such groups.
  It stays small so that a right answer (1.1) always beats a well-formed wrong one (0.1), and
  once every sample is well formed it is a constant that centering removes.
"""

import functools
import json
import re
import threading
from dataclasses import dataclass
from pathlib import Path

import torch

from lmrl.errors import ConfigError, DataError
from lmrl.tasks.registry import TEXT_FIELDS, TaskSpec, describe_data, split_args
from lmrl.tasks.text import Example, RewardFn, TextTask, data_file, read_lines

R1_ZERO_PROMPT = (
    "A conversation between User and Assistant. The User asks a question, and the Assistant "
    "solves it. The Assistant first thinks about the reasoning process in the mind and then "
    "provides the User with the answer. The reasoning process is enclosed within <think> "
    "</think> and answer is enclosed within <answer> </answer> tags, respectively, i.e., "
    "<think> reasoning process here </think> <answer> answer here </answer>.\n"
    "User: {question}\n"
    "Assistant: <think>")
MAX_ANSWER_CHARS = 100
ALLOWED_COMMANDS = frozenset({"boxed", "frac", "dfrac", "tfrac", "text", "textbf", "mathrm",
                              "mbox", "cdot", "times", "div", "sqrt", "left", "right"})
TIMEOUT_S = 1  # math-verify's SIGALRM timeout per parse/verify call, main thread only

_OPEN_TAG = "</think> <answer>"
_CLOSE_TAG = "</answer>"
_CALCULATOR = re.compile(r"<<[^<>]*>>")
_NUMBER = re.compile(r"-?[0-9]+(\.[0-9]+)?")
_COMMAND = re.compile(r"\\([A-Za-z]+)")


def ground_truth(solution: str) -> str:
    """The number after the last "####", commas removed: "...\\n#### 1,234" -> "1234".
    Raises ValueError when there is none."""
    head, sep, tail = solution.rpartition("####")
    truth = tail.strip().replace(",", "")
    if not sep or not _NUMBER.fullmatch(truth):
        raise ValueError(f"GSM8K answer does not end in '#### <number>': ...{solution[-60:]!r}")
    return truth


def demonstration_text(solution: str) -> str:
    """The worked solution, calculator annotations and "####" line removed, closed by the answer:
    "48/2 = <<48/2=24>>24 clips.\\n#### 24" -> " 48/2 = 24 clips. </think> <answer> 24 </answer>"
    (the completion continues "... Assistant: <think>")."""
    reasoning = _CALCULATOR.sub("", solution.rpartition("####")[0]).strip()
    return f" {reasoning} </think> <answer> {ground_truth(solution)} </answer>"


def extract_answer(completion: str) -> str | None:
    """The stripped answer of a well-formed completion, else None.

    " 2+2 is 4 </think> <answer> 4 </answer>" -> "4"; "... </think><answer>4</answer>" -> None
    (no space); "<answer> 4 </answer>" -> None (no "</think>"); "</think> <answer> 4" -> None.
    """
    # Two str.find scans, linear in the completion. (A lazy regex "</think> <answer>(.*?)
    # </answer>" re-scans to the end from every unclosed opener: quadratic, minutes on 1 MB.)
    # The leftmost opener with a closer after it is simply the first opener: any closer after
    # a later opener is after the first one too.
    start = completion.find(_OPEN_TAG)
    if start < 0:
        return None
    start += len(_OPEN_TAG)
    end = completion.find(_CLOSE_TAG, start)
    return completion[start:end].strip() if end >= 0 else None


def format_reward(prompts: list[str], completions: list[str], **columns) -> list[float]:
    """1 if the completion is well formed (see extract_answer), else 0.

    " 3*6 = 18 </think> <answer> 18 </answer>" -> 1, "</think> <answer></answer>" -> 1 (an
    empty answer is well formed, and wrong), " 18 </answer>" -> 0, "" -> 0.
    """
    return [float(extract_answer(c) is not None) for c in completions]


def answer_reward(prompts: list[str], completions: list[str], ground_truth: list[str],
                  **columns) -> list[float]:
    """1 if the completion is well formed and its answer equals the ground truth, else 0.

    ground truth "18": "... </think> <answer> 18 </answer>" -> 1, "<answer> $18.00 </answer>"
    after "</think> " -> 1, "... </think> <answer> 17 </answer>" -> 0, "18" -> 0 (no tags).
    """
    return [float(_answer_correct(c, t)) for c, t in zip(completions, ground_truth, strict=True)]


def _answer_correct(completion: str, truth: str) -> bool:
    answer = extract_answer(completion)
    return answer is not None and grade(answer, truth)


def normalize_answer(answer: str) -> str:
    """Remove markdown bold and escaped dollars, which math-verify does not read: "**\\$18**" ->
    "$18". (So "2**3" reads as 23, never as Python's power: no GSM8K answer is a power.)"""
    return answer.replace("**", "").replace("\\$", "$")


def gradable(answer: str) -> bool:
    """Whether math-verify may see this (normalized) answer: short, and free of the constructs
    on which sympy can run for minutes. "18" -> True, "\\boxed{\\frac{36}{2}}" -> True,
    "9^9^9^9" -> False, "100000!" -> False, "\\binom{100000}{50000}" -> False,
    "1" * 101 -> False."""
    return (len(answer) <= MAX_ANSWER_CHARS and not any(s in answer for s in "^!_")
            and all(c in ALLOWED_COMMANDS for c in _COMMAND.findall(answer)))


def grade(answer: str, truth: str) -> bool:
    """math-verify's verdict on the answer text against the ground-truth number.

    truth "18": "18", "18.0", "$18", "\\$18", "**18**", "\\boxed{18}", "18 eggs", "36/2" -> True;
    "17", "", "x", "1,8", "9^9^9^9" -> False.
    """
    gold = _gold(truth)  # first, so that a bad ground truth raises whatever the answer
    answer = normalize_answer(answer)
    if not gradable(answer):
        return False
    from math_verify import parse, verify

    timeout = _timeout()
    # Both functions catch their own errors and timeouts and return [] / False
    # (raise_on_error=False); the only documented raise is SIGALRM use off the main thread,
    # which _timeout() avoids.
    target = parse(answer, parsing_timeout=timeout, raise_on_error=False)
    return bool(target) and verify(gold, target, timeout_seconds=timeout, raise_on_error=False)


def _timeout() -> int | None:
    """math-verify times out with signal.alarm, which only the main thread may call."""
    return TIMEOUT_S if threading.current_thread() is threading.main_thread() else None


@functools.cache
def _gold(truth: str) -> list:
    """The parsed ground truth ("18" -> [18, "18"]), once per distinct value."""
    try:
        from math_verify import ExprExtractionConfig, parse
    except ImportError as err:
        raise ImportError("GSM8K grading needs math-verify: pip install math-verify") from err
    if not _NUMBER.fullmatch(truth):
        raise ValueError(f"ground truth {truth!r} is not a number")
    return parse(truth, extraction_config=[ExprExtractionConfig()], parsing_timeout=_timeout())


def load_gsm8k(path: str | Path) -> list[Example]:
    """GSM8K JSONL rows -> examples {"prompt", "question", "solution", "ground_truth"}."""
    path = data_file(path, "GSM8K data file")
    examples = []
    for line_no, line in read_lines(path):  # a bad byte is a DataError naming its line
        try:
            row = json.loads(line)
            examples.append(gsm8k_example(row["question"], row["answer"]))
        except (json.JSONDecodeError, KeyError, TypeError, AttributeError, ValueError) as err:
            raise DataError(f"{path}:{line_no}: not a GSM8K row "
                            f"{{'question': str, 'answer': '... #### N'}}: {err!r}") from err
    if not examples:
        raise DataError(f"{path} has no rows; it is empty or blank")
    return examples


def gsm8k_example(question: str, solution: str) -> Example:
    """One GSM8K row as an example; ground_truth is the reward column."""
    return {"prompt": R1_ZERO_PROMPT.format(question=question.strip()), "question": question,
            "solution": solution, "ground_truth": ground_truth(solution)}


@dataclass
class GSM8KTask(TextTask):
    """GSM8K from a JSONL file. Held out: heldout_size rows of heldout_data (all of them when it
    has fewer), or, without heldout_data, heldout_size rows split off data; both are seeded by
    split_seed. Training rows are the rest of data, minus any whose question is held out."""

    data: str | Path
    heldout_data: str | Path | None = None
    heldout_size: int = 200
    split_seed: int = 0
    max_new_tokens: int = 512
    format_weight: float = 0.1

    name = "gsm8k"

    def __post_init__(self) -> None:
        if self.heldout_size < 1:
            raise ValueError(f"heldout_size={self.heldout_size} must be >= 1")
        rows = load_gsm8k(self.data)
        pool = load_gsm8k(self.heldout_data) if self.heldout_data is not None else rows
        if self.heldout_data is None and self.heldout_size >= len(rows):
            raise ValueError(f"heldout_size={self.heldout_size} leaves no training rows of the "
                             f"{len(rows)} in {self.data}; lower it or give heldout_data")
        order = torch.randperm(len(pool), generator=torch.Generator().manual_seed(self.split_seed))
        self.heldout = [pool[i] for i in order[:self.heldout_size].tolist()]
        held = {ex["question"] for ex in self.heldout}
        self.train = [ex for ex in rows if ex["question"] not in held]
        if not self.train:
            raise ValueError(f"every question in {self.data} is held out")
        self.rewards = [RewardFn("answer", answer_reward),
                        RewardFn("format", format_reward, weight=self.format_weight)]
        self.correctness = "answer"

    def demonstration(self, example: Example) -> str:
        """The GSM8K solution without calculator annotations, then the answer in tags (see
        demonstration_text)."""
        return demonstration_text(example["solution"])


def _check(t, default) -> None:
    if t.data is None:
        raise ConfigError("task=gsm8k needs --data FILE")


def _build(t) -> GSM8KTask:
    return GSM8KTask(data=t.data, heldout_data=t.heldout_data, **split_args(t))


SPEC = TaskSpec(
    name="gsm8k", help="GSM8K word problems (--data) in the r1-zero template -> "
                       "'... </think> <answer> 18 </answer>'",
    build=_build, check=_check, fields=("data", "heldout_data", *TEXT_FIELDS),
    describe=describe_data)
