"""A text task's rows, read through HuggingFace `datasets` (memory-mapped Arrow, never a Python
copy of the whole data).

A source is a file (.jsonl; .json, JSON lines or one JSON array; .csv; .parquet), a directory
written by `Dataset.save_to_disk` or `DatasetDict.save_to_disk`, a hub dataset name (with a
config and a split), or, from Python, a `datasets.Dataset` / `DatasetDict` or a list of dicts.
`load_rows` returns `Rows`: a read-only sequence of example dicts that reads a row from the Arrow
table only when it is asked for, so a task's `train[i]`, `heldout[:n]` and iteration work as on a
list.

Prompts follow TRL's two formats: standard (the prompt column holds strings) and conversational
(it holds lists of {"role", "content"} messages, rendered later by the tokenizer's chat
template). The prompt column is renamed to "prompt"; every other column is passed on.

JSON files are checked row by row with lmrl's own reader before `datasets` reads them, so that a
bad row is named by file:line (a bad byte, bad JSON, a row that is not an object, a missing or
non-string prompt, a row with other columns than the first).
"""

import json
from collections.abc import Iterator, Sequence
from pathlib import Path

import torch

from lmrl.errors import DataError
from lmrl.policies.loading import HUB_NAME, hub_reachable

FILE_BUILDERS = {".jsonl": "json", ".json": "json", ".csv": "csv", ".parquet": "parquet"}
FORMATS = ".jsonl, .json, .csv or .parquet"
BATCH = 1000  # rows converted to Python at a time when iterating
MESSAGES = 'a list of {"role": ..., "content": ...} messages'


class Rows(Sequence):
    """Rows of a `datasets.Dataset` as dicts: len, int index, slice (another Rows), iteration.

    `index` (a 1-D int64 tensor) selects and orders the dataset's rows; None is all of them.
    `where(i)` names row i for an error message by its row number in the source.
    """

    def __init__(self, dataset, source: str, index: torch.Tensor | None = None) -> None:
        self.dataset, self.source, self.index = dataset, source, index

    def __len__(self) -> int:
        return len(self.dataset) if self.index is None else len(self.index)

    def positions(self) -> torch.Tensor:
        """Row numbers in the dataset. (len,)"""
        return torch.arange(len(self.dataset)) if self.index is None else self.index

    def __getitem__(self, i):
        if isinstance(i, slice):
            picked = range(len(self))[i]  # a range also takes negative steps; a tensor does not
            index = torch.arange(picked.start, picked.stop, picked.step, dtype=torch.long)
            return Rows(self.dataset, self.source, self.positions()[index])
        if not -len(self) <= i < len(self):
            raise IndexError(f"row {i} of {len(self)}")
        return self.dataset[i % len(self) if self.index is None else int(self.index[i])]

    def __iter__(self) -> Iterator[dict]:
        for columns in self.batches(self.dataset.column_names):
            yield from (dict(zip(columns, values, strict=True))
                        for values in zip(*columns.values(), strict=True))

    def batches(self, names: list[str]) -> Iterator[dict[str, list]]:
        """The columns `names` of BATCH rows at a time, as lists."""
        table = self.dataset.select_columns(names)
        positions = self.positions()
        for start in range(0, len(self), BATCH):
            yield table[positions[start:start + BATCH].tolist()]

    def column(self, name: str) -> Iterator[list]:
        """One column, BATCH values at a time."""
        return (batch[name] for batch in self.batches([name]))

    def where(self, i: int) -> str:
        return f"{self.source}: row {int(self.positions()[i])}"

    def __eq__(self, other) -> bool:
        return isinstance(other, Sequence) and len(other) == len(self) and \
            list(self) == list(other)

    __hash__ = None

    def __repr__(self) -> str:
        return f"Rows({self.source}, {len(self)} rows, columns {self.dataset.column_names})"


def is_conversation(prompt) -> bool:
    """A conversational prompt (TRL): a list of {"role", "content"} messages."""
    return isinstance(prompt, list | tuple) and all(
        isinstance(m, dict) and isinstance(m.get("role"), str) and
        isinstance(m.get("content"), str) for m in prompt)


def prompt_key(prompt) -> str:
    """A hashable stand-in for a prompt, equal for equal prompts (a conversation is a list)."""
    return prompt if isinstance(prompt, str) else json.dumps(prompt, sort_keys=True)


def load_rows(source, split: str = "train", config: str | None = None,
              prompt_column: str = "prompt") -> Rows:
    """Rows of `source` (see the module docstring), with `prompt_column` checked (strings or
    message lists, no nulls) and renamed to "prompt"."""
    dataset, name = open_dataset(source, split, config, prompt_column)
    check_prompt_column(dataset, name, prompt_column)
    if len(dataset) == 0:
        raise DataError(f"{name} has no rows; it is empty or blank")
    if prompt_column != "prompt":
        if "prompt" in dataset.column_names:
            raise DataError(f"{name} has a 'prompt' column besides --prompt-column "
                            f"{prompt_column!r}; rename one of them")
        dataset = dataset.rename_column(prompt_column, "prompt")
    return Rows(dataset, name)


def load_examples(path: str | Path) -> Rows:
    """Rows of a data file with a "prompt" column (load_rows with its defaults)."""
    return load_rows(Path(path))


def open_dataset(source, split: str, config: str | None, prompt_column: str):
    """(datasets.Dataset, its name for messages) of a file, directory, hub name or object."""
    if not isinstance(source, str | Path):
        return from_object(source, split)
    path = Path(source)
    if path.is_dir():
        return from_disk(path, split)
    if path.exists() or not looks_like_hub_name(str(source)):
        return from_file(data_file(path), split, config, prompt_column)
    return from_hub(str(source), split, config)


def looks_like_hub_name(text: str) -> bool:
    """'name' or 'owner/name' without a data file's suffix (a missing local file is not
    mistaken for a dataset to download)."""
    return (HUB_NAME.fullmatch(text) is not None and not text.startswith(".")
            and Path(text).suffix not in FILE_BUILDERS)


def data_file(path: str | Path, what: str = "data file") -> Path:
    """The path, checked to name an existing file."""
    path = Path(path)
    if not path.exists():
        raise DataError(f"{what} {path} does not exist; give the path of an existing file")
    if not path.is_file():
        raise DataError(f"{what} {path} is not a file (a directory?); give the path of a "
                        f"{FORMATS} file")
    return path


def datasets_module():
    """`datasets`, imported on first use (a second to import), without its progress bars."""
    try:
        import datasets
    except ImportError as err:
        raise ImportError("reading data needs the datasets library: pip install datasets"
                          ) from err
    datasets.disable_progress_bars()
    return datasets


def from_file(path: Path, split: str, config: str | None, prompt_column: str):
    if path.suffix not in FILE_BUILDERS:
        raise DataError(f"data file {path}: unknown format {path.suffix!r}; use {FORMATS}")
    if config is not None or split != "train":
        raise DataError(f"data file {path} is one table: data_config and data_split (here "
                        f"{config!r}, {split!r}) apply to hub datasets and save_to_disk "
                        "directories; drop them")
    builder = FILE_BUILDERS[path.suffix]
    if builder == "json":
        check_json_rows(path, prompt_column)
    datasets = datasets_module()
    try:
        return datasets.load_dataset(builder, data_files=str(path), split="train"), str(path)
    except (datasets.exceptions.DatasetGenerationError, ValueError, OSError) as err:
        cause = err.__cause__ or err
        fix = {"parquet": "check that the file is a complete parquet file (or use .jsonl)",
               "csv": "check that it is comma-separated UTF-8 text with a header row",
               "json": "every column must hold values of one type in every row"}[builder]
        raise DataError(f"{path}: cannot read it as {builder}: {cause}; {fix}") from err


def from_disk(path: Path, split: str):
    """A save_to_disk directory: a Dataset (its one table) or a DatasetDict's `split`."""
    if not ((path / "dataset_dict.json").exists() or (path / "state.json").exists()):
        raise DataError(f"data file {path} is not a file, nor a directory written by "
                        "Dataset.save_to_disk (no state.json or dataset_dict.json in it); give "
                        f"a {FORMATS} file or a save_to_disk directory")
    datasets = datasets_module()
    return pick_split(datasets.load_from_disk(str(path)), split, str(path))


def from_object(source, split: str):
    """A Dataset, a DatasetDict's `split`, or a list of dicts (Python API)."""
    datasets = datasets_module()
    if isinstance(source, list):
        if not all(isinstance(row, dict) for row in source):
            raise DataError("data given as a list must be a list of dicts (one per row)")
        return datasets.Dataset.from_list(source), "the given rows"
    if isinstance(source, datasets.Dataset | datasets.DatasetDict):
        return pick_split(source, split, f"the given {type(source).__name__}")
    raise DataError(f"data must be a path, a hub dataset name, a datasets.Dataset or a list of "
                    f"dicts, not {type(source).__name__}")


def pick_split(data, split: str, name: str):
    """(the Dataset, its name): `data` itself, or its `split` when it is a DatasetDict."""
    if not hasattr(data, "keys"):  # a Dataset: one table
        if split != "train":
            raise DataError(f"{name} is a single Dataset, not a DatasetDict with splits; drop "
                            f"data_split / heldout_split ({split!r})")
        return data, name
    if split not in data:
        raise DataError(f"{name} has no split {split!r}; its splits are {sorted(data)} "
                        "(choose with --data-split / --heldout-split)")
    return data[split], f"{name} (split {split})"


def from_hub(name: str, split: str, config: str | None):
    """A hub dataset's split. Without a connection this fails at once with one message, instead
    of `datasets`' retries; with HF_HUB_OFFLINE=1 the local datasets cache is used."""
    datasets = datasets_module()
    if not datasets.config.HF_HUB_OFFLINE:
        if not hub_reachable():
            raise DataError(cannot_reach(name, "no connection to the hub"))
        check_hub(name)
    try:
        dataset = datasets.load_dataset(name, config, split=split)
    except ConnectionError as err:
        raise DataError(cannot_reach(name, f"{type(err).__name__}: {err}")) from err
    except (ValueError, FileNotFoundError) as err:
        raise DataError(f"hub dataset {name!r} (config {config!r}, split {split!r}): {err}; "
                        "check --data-config and --data-split") from err
    return dataset, f"{name} (split {split})"


def check_hub(name: str) -> None:
    """One quick request: the dataset exists and the hub can be reached."""
    from huggingface_hub import HfApi
    from huggingface_hub.errors import RepositoryNotFoundError

    try:
        HfApi().dataset_info(name, timeout=10)
    except RepositoryNotFoundError as err:
        raise DataError(f"{name!r} is neither a local file or directory nor a dataset on the hub "
                        "(or it is private or gated); check the path or name") from err
    except Exception as err:  # noqa: BLE001 - DNS, proxy, timeout, HTTP 5xx: all "unreachable"
        raise DataError(cannot_reach(name, f"{type(err).__name__}: {err}")) from err


def cannot_reach(name: str, why: str) -> str:
    return (f"--data {name!r} is not a local file or directory, and lmrl cannot reach the hub "
            f"to load it as a dataset ({why}); give a local file or "
            "directory (a .jsonl/.json/.csv/.parquet file or a save_to_disk directory), or set "
            "HF_HUB_OFFLINE=1 to use a copy already in the datasets cache")


def check_prompt_column(dataset, name: str, column: str) -> None:
    """The prompt column exists, holds strings or message lists, and has no nulls."""
    if column not in dataset.column_names:
        raise DataError(f"{name}: no {column!r} column; its columns are "
                        f"{dataset.column_names}. Every row needs a prompt: name its column with "
                        "--prompt-column")
    feature = dataset.features[column]
    dtype = getattr(feature, "dtype", None)
    inner = getattr(feature, "feature", None)
    if dtype not in ("string", "large_string") and not (
            isinstance(inner, dict) and {"role", "content"} <= set(inner)):
        raise DataError(f"{name}: column {column!r} must hold strings or {MESSAGES}, not "
                        f"{feature}")
    values = dataset.data.column(column)
    if values.null_count:
        import pyarrow.compute as pc

        row = pc.index(values.is_null(), True).as_py()
        raise DataError(f"{name}: row {row}: {column!r} must be a string, not NoneType None")


# ---------------------------------------------------------------- JSON files, row by row


def read_lines(path: Path) -> list[tuple[int, str]]:
    """(line number, text) of each non-blank line of a UTF-8 file. Decoded line by line, so that
    a bad byte names its line."""
    try:
        data = path.read_bytes()
    except OSError as err:
        raise DataError(f"cannot read {path}: {err.strerror or err}; check that it is a file "
                        "you may read") from err
    lines = []
    # bytes.splitlines splits at \n and \r only; str.splitlines would also split inside JSON
    # strings at characters such as U+2028.
    for line_no, raw in enumerate(data.splitlines(), 1):
        try:
            line = raw.decode("utf-8-sig" if line_no == 1 else "utf-8")
        except UnicodeDecodeError as err:
            raise DataError(f"{path}:{line_no}: not valid UTF-8 (byte {raw[err.start]:#04x} at "
                            f"column {err.start + 1}); save the file as UTF-8") from err
        if line.strip():
            lines.append((line_no, line))
    return lines


def json_rows(path: Path) -> Iterator[tuple[str, object]]:
    """(where, value) of each JSON line, or of each item of a file that is one JSON array."""
    lines = read_lines(path)
    if path.suffix == ".json" and lines and lines[0][1].lstrip().startswith("["):
        try:
            items = json.loads("\n".join(line for _, line in lines))
        except json.JSONDecodeError as err:
            raise DataError(f"{path}: not valid JSON: {err}") from err
        if not isinstance(items, list):
            raise DataError(f"{path}: a .json file is one JSON array of row objects, or one "
                            "object per line")
        yield from ((f"{path}: item {i}", item) for i, item in enumerate(items))
        return
    for line_no, line in lines:
        try:
            yield f"{path}:{line_no}", json.loads(line)
        except json.JSONDecodeError as err:
            raise DataError(f"{path}:{line_no}: not valid JSON: {err}") from err


def check_json_rows(path: Path, prompt: str) -> None:
    """Every row is an object with the first row's columns and a string (or messages) prompt;
    the first bad row is named by file:line."""
    columns = None
    for i, (where, row) in enumerate(json_rows(path)):
        if not isinstance(row, dict):
            raise DataError(f"{where}: a row must be a JSON object such as "
                            f'{{"{prompt}": "..."}}, not a {type(row).__name__}')
        if prompt not in row:
            raise DataError(f"{where}: no {prompt!r} column; every row needs a string {prompt!r} "
                            "(or name the prompt's column with --prompt-column)")
        if not isinstance(row[prompt], str) and not (row[prompt] and
                                                       is_conversation(row[prompt])):
            raise DataError(f"{where}: {prompt!r} must be a string, not "
                            f"{type(row[prompt]).__name__} {row[prompt]!r} (or, for "
                            f"conversational data, {MESSAGES})")
        if columns is None:
            columns, first = set(row), (where, type(row[prompt]))
        if type(row[prompt]) is not first[1]:
            raise DataError(f"{where}: {prompt!r} is a {type(row[prompt]).__name__}, but at "
                            f"{first[0]} it is a {first[1].__name__}; a data set's prompts are "
                            f"all strings (standard) or all {MESSAGES} (conversational)")
        if set(row) != columns:
            raise DataError(f"{where}: row {i} has columns {sorted(row)}, expected "
                            f"{sorted(columns)}; every row needs the same columns, since reward "
                            "functions receive each column for the whole batch")
    if columns is None:
        raise DataError(f"{path} has no rows; it is empty or blank")
