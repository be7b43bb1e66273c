"""Characters a model cannot read, found when a task meets its policy, before the first step.

A char-level tokenizer (lmrl init-model) silently drops a character outside its alphabet
("35*57=" became "3557="), and a tokenizer without byte fallback reads it as its unknown token:
the model would be trained and scored on prompts it never sees whole. `check_coverage` collects
the distinct characters of every prompt of the task's finite row sets (conversational ones as
the chat template renders them) and, for lmrl sft, of every demonstration; the policy encodes
and decodes each new one once, and the first row with a lost character is named.
"""

from lmrl.errors import DataError

CHUNK = 1024  # rows read and rendered at a time


def check_coverage(task, policy, demonstrations: bool = False) -> None:
    """Raise a DataError naming the first prompt (or demonstration) with a character the
    policy's tokenizer loses. A policy without text (the toy model) has nothing to check."""
    if not hasattr(policy, "lost_characters"):
        return
    checked: set[str] = set()
    for kind, rows in (("training", task.train), ("held-out", task.heldout)):
        if rows is None:
            continue
        for start in range(0, len(rows), CHUNK):
            chunk = list(rows[start:start + CHUNK])
            texts, _ = policy.render([ex["prompt"] for ex in chunk])
            _check(policy, texts, checked, rows, start, f"{kind} prompt")
            if demonstrations:
                texts = [task.demonstration(ex) for ex in chunk]
                _check(policy, texts, checked, rows, start, f"{kind} demonstration")


def _check(policy, texts: list[str], checked: set[str], rows, start: int, what: str) -> None:
    """Check the characters of `texts` not `checked` yet (then add them to it)."""
    new = set().union(*texts) - checked
    lost = set(policy.lost_characters(new))
    checked.update(new)
    if not lost:
        return
    i = next(i for i, text in enumerate(texts) if not lost.isdisjoint(text))
    where = rows.where(start + i) if hasattr(rows, "where") else \
        f"{what.split()[0]} row {start + i}"
    text = texts[i]
    shown = repr(text[:120]) + ("..." if len(text) > 120 else "")
    found = "".join(sorted(lost.intersection(text)))
    raise DataError(
        f"{where}: the model's tokenizer cannot encode {found!r} in this {what} ({shown}); it "
        "would silently drop or change them, or read them as an unknown token. Use a model "
        "whose tokenizer covers these characters, or build one that does with "
        "`lmrl init-model --alphabet ascii` (or the default --alphabet task, from this data)")
