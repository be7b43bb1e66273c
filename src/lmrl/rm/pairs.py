"""Preference pairs: rows with `prompt`, `chosen` and `rejected` (TRL's preference format), from
any source lmrl's data loader reads (tasks/data.py: .jsonl/.json/.csv/.parquet files,
save_to_disk directories, hub datasets, lists of dicts), with an optional margin column.

Standard rows hold strings: the texts scored are prompt + chosen and prompt + rejected.
Conversational rows hold lists of {"role", "content"} messages: the prompt is rendered by the
tokenizer's chat template with the assistant's turn opened (as lmrl's policies sample), and a
completion is the content of its messages, joined (normally one assistant message), so a reward
model is trained on the texts it will later score.

Cleaning, each counted in the notes that `lmrl rm train` prints:
- a tie (chosen == rejected, after rendering) is dropped: it has no preference to learn, and
  the loss would push nothing; if every row is a tie, nothing is left to train on: an error;
- a duplicate (the same prompt, chosen and rejected as an earlier row) is dropped, keeping the
  first: copies would weigh a pair twice and could land on both sides of the held-out split.
"""

import math
from dataclasses import dataclass

import torch

from lmrl.errors import DataError
from lmrl.tasks.data import MESSAGES, is_conversation, load_rows


@dataclass(frozen=True)
class Pairs:
    """Rendered pairs: prompt texts, chosen and rejected completion texts, and margins."""

    prompts: list[str]
    chosen: list[str]
    rejected: list[str]
    margins: list[float] | None = None

    def __len__(self) -> int:
        return len(self.prompts)

    def subset(self, index: list[int]) -> "Pairs":
        pick = lambda values: [values[i] for i in index]  # noqa: E731
        return Pairs(pick(self.prompts), pick(self.chosen), pick(self.rejected),
                     None if self.margins is None else pick(self.margins))


def read_pairs(source, tokenizer, margin_column: str | None = None) -> tuple[Pairs, list[str]]:
    """(the cleaned pairs of `source`, notes on what was dropped). margin_column None: TRL's
    "margin" column when there is one; a name: that column, which must exist."""
    rows = load_rows(source)
    columns = rows.dataset.column_names
    missing = [c for c in ("chosen", "rejected") if c not in columns]
    if missing:
        raise DataError(f"{rows.source}: no {' or '.join(map(repr, missing))} column; its "
                        f"columns are {columns}. Preference pairs need 'prompt', 'chosen' and "
                        "'rejected' (TRL's format)")
    if margin_column is not None and margin_column not in columns:
        raise DataError(f"{rows.source}: no margin column {margin_column!r}; its columns are "
                        f"{columns}")
    margin_column = margin_column or ("margin" if "margin" in columns else None)
    texts = [render_row(row, i, rows, tokenizer, margin_column) for i, row in enumerate(rows)]
    return clean(texts, rows.source, margin_column is not None)


def render_row(row: dict, i: int, rows, tokenizer, margin_column: str | None
               ) -> tuple[str, str, str, float]:
    """(prompt text, chosen text, rejected text, margin) of one row, its types checked."""
    prompt = row["prompt"]
    if isinstance(prompt, str):
        for name in ("chosen", "rejected"):
            if not isinstance(row[name], str):
                hint = " (a .csv column of numbers is read as numbers: use .jsonl)" \
                    if isinstance(row[name], int | float) else ""
                raise DataError(f"{rows.where(i)}: {name!r} must be a string like its prompt, "
                                f"not {type(row[name]).__name__} {row[name]!r}{hint}")
        texts = prompt, row["chosen"], row["rejected"]
    else:
        texts = render_conversation(row, i, rows, tokenizer)
    margin = 0.0
    if margin_column is not None:
        margin = row[margin_column]
        if isinstance(margin, bool) or not isinstance(margin, int | float) or \
                not math.isfinite(margin):
            raise DataError(f"{rows.where(i)}: margin {margin_column!r} must be a finite "
                            f"number, not {margin!r}")
    return (*texts, float(margin))


def render_conversation(row: dict, i: int, rows, tokenizer) -> tuple[str, str, str]:
    if not getattr(tokenizer, "chat_template", None):
        raise DataError(f"{rows.source}: the pairs are conversational (lists of role/content "
                        "messages), but the model's tokenizer has no chat template to render "
                        "them; use a chat model, build one with `lmrl init-model "
                        "--chat-template`, or give the pairs as strings")
    for name in ("chosen", "rejected"):
        if not (row[name] and is_conversation(row[name])):
            raise DataError(f"{rows.where(i)}: {name!r} must be {MESSAGES} like its prompt, "
                            f"not {row[name]!r}")
    prompt = tokenizer.apply_chat_template(list(row["prompt"]), add_generation_prompt=True,
                                           tokenize=False)
    return (prompt, "".join(m["content"] for m in row["chosen"]),
            "".join(m["content"] for m in row["rejected"]))


def clean(texts: list[tuple[str, str, str, float]], source: str, has_margins: bool
          ) -> tuple[Pairs, list[str]]:
    """Ties and duplicates dropped (module docstring), with a note for each kind."""
    ties = [t for t in texts if t[1] == t[2]]
    if len(ties) == len(texts):
        raise DataError(f"{source}: in every one of its {len(texts)} rows chosen == rejected, so "
                        "there is no preference to learn; check the chosen and rejected columns")
    seen, kept = set(), []
    for t in texts:
        if t[1] != t[2] and t[:3] not in seen:
            seen.add(t[:3])
            kept.append(t)
    notes = []
    if ties:
        notes.append(f"dropped {len(ties)} of {len(texts)} rows where chosen == rejected")
    duplicates = len(texts) - len(ties) - len(kept)
    if duplicates:
        notes.append(f"dropped {duplicates} duplicate pairs (the same prompt, chosen and "
                     "rejected as an earlier row)")
    prompts, chosen, rejected, margins = (list(column) for column in zip(*kept, strict=True))
    return Pairs(prompts, chosen, rejected, margins if has_margins else None), notes


def split(n: int, heldout_size: int, seed: int) -> tuple[list[int], list[int]]:
    """(training indices, held-out indices) of n pairs: a seeded shuffle, its first
    heldout_size held out; 0 means a tenth of the pairs, at least 1."""
    heldout_size = heldout_size or max(1, n // 10)
    if heldout_size >= n:
        raise DataError(f"--heldout-size {heldout_size} leaves no pairs to train on "
                        f"({n} pairs after cleaning); lower it or give more pairs")
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed)).tolist()
    return order[heldout_size:], order[:heldout_size]
