"""The user's files are sacred: lmrl writes only into directories it created, marks them as its
own, and replaces or deletes nothing else; every file that matters is written atomically.

An output directory (a training run, an SFT model, an init-model model) carries a marker file,
`.lmrl`, JSON with the kind of output and the entries lmrl wrote there. `--overwrite` replaces
only a directory whose marker has the same kind, never the working directory, its parents, the
home directory or the input model's directory, and only after the new job's model and data have
loaded (`check_output` runs first, `claim_output` after loading). Entries a user added to an
lmrl directory are kept.

Atomic writes: a file is written under a temporary name in the same directory (`.NAME.tmp-PID`),
fsynced and renamed over the target, so a kill leaves the old file or the new one, never half
of one; a directory (a checkpoint, a saved model) is written the same way and swapped in.
`remove_stale_temporaries` deletes what a killed writer left behind.
"""

import contextlib
import json
import os
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

from lmrl.errors import RunDirError

MARKER = ".lmrl"
KINDS = ("train", "sft", "init-model", "sweep", "rm")
_TMP = ".tmp-"


def read_marker(path: Path) -> dict | None:
    """The marker of an lmrl output directory, or None when there is none (or it is damaged)."""
    try:
        marker = json.loads((path / MARKER).read_text())
    except (OSError, ValueError):
        return None
    return marker if isinstance(marker, dict) and marker.get("kind") in KINDS else None


def _protected(path: Path) -> str | None:
    """Why `path` may never be replaced, or None."""
    cwd, home = Path.cwd().resolve(), Path.home().resolve()
    if path == cwd:
        return "it is the working directory"
    if path in cwd.parents:
        return "it contains the working directory"
    if path == home or path in home.parents:
        return "it is the home directory or contains it"
    return None


def check_output(path: str | Path, kind: str, overwrite: bool = False, resume: bool = False,
                 inputs: tuple[str | Path, ...] = ()) -> Path:
    """Refuse, before anything loads, an output directory lmrl may not write `kind` into.

    A missing or empty directory is fine; an existing one needs --resume (a training run) or
    --overwrite, and then lmrl's marker of the same kind. `inputs` (the model being read) may
    never be the output or inside it, since replacing the output would delete them.
    """
    path = Path(path)
    resolved = path.expanduser().resolve()
    for source in inputs:
        src = Path(source).expanduser().resolve()
        if src == resolved or resolved in src.parents:
            raise RunDirError(f"{path} is where the input model {source} is read from; write the "
                              "output to another directory")
    if path.exists() and not path.is_dir():
        raise RunDirError(f"{path} is a file, not a directory; choose another output directory")
    reason = _protected(resolved)
    if reason and (overwrite or resume or (path.exists() and any(path.iterdir()))):
        raise RunDirError(f"refusing to use {path} as an output directory: {reason}; choose a "
                          "new directory, e.g. runs/NAME")
    if not path.exists() or not any(path.iterdir()):
        if resume:
            raise RunDirError(f"--resume: {path} holds no run to resume; start the run without "
                              "--resume or point --run-dir at an earlier run")
        return path
    marker = read_marker(path)
    if not (overwrite or resume):
        hint = "--resume to continue it, " if kind == "train" and marker else ""
        raise RunDirError(f"{path} is not empty; pass {hint}--overwrite to replace an lmrl "
                          "output there, or choose another directory")
    if marker is None:
        raise RunDirError(f"{path} was not created by lmrl (no {MARKER} marker), so lmrl will not "
                          f"{'resume' if resume else 'replace'} it; choose another directory, "
                          "or move it away yourself")
    if marker["kind"] != kind:
        raise RunDirError(f"{path} holds an lmrl {marker['kind']} output, not a {kind} one; "
                          "choose another directory")
    return path


def claim_output(path: Path, kind: str, replace: bool, known: tuple[str, ...] = ()) -> None:
    """Create `path` (or, with `replace`, empty it of what lmrl wrote: the marker's recorded
    entries and `known` names) and mark it as an lmrl `kind` output."""
    path.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(path)
    if replace:
        marker = read_marker(path) or {}
        for name in set(marker.get("entries", [])) | set(known):
            remove(path / name)
    left = sorted(p.name for p in path.iterdir() if p.name != MARKER)
    if replace and left:
        print(f"note: kept {', '.join(left)} in {path}: lmrl did not write them")
    write_marker(path, kind)


def write_marker(path: Path, kind: str, entries: list[str] | None = None) -> None:
    """(Re)write the marker; `entries` records what lmrl wrote, to be replaced next time."""
    marker = {"kind": kind, "created_by": "lmrl", "time": time.strftime("%Y-%m-%dT%H:%M:%S")}
    if entries is not None:
        marker["entries"] = sorted(entries)
    write_text(path / MARKER, json.dumps(marker, indent=2) + "\n")


def remove(path: Path) -> None:
    """Delete a file or directory lmrl wrote (missing is fine)."""
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif path.exists() or path.is_symlink():
        path.unlink()


def _temporary(path: Path) -> Path:
    return path.with_name(f".{path.name}{_TMP}{os.getpid()}")


def remove_stale_temporaries(directory: Path) -> None:
    """Delete temporary files and directories a killed writer left in `directory`."""
    for entry in directory.iterdir():
        if entry.name.startswith(".") and _TMP in entry.name:
            remove(entry)


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_tree(directory: Path) -> None:
    for file in directory.rglob("*"):
        if file.is_file():
            _fsync(file)


def _fresh(directory: Path) -> None:
    """An empty directory (what a killed writer left there is removed)."""
    remove(directory)
    directory.mkdir(parents=True)


@contextlib.contextmanager
def atomic_file(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path to write; on success it is fsynced and renamed to `path`, on an
    error removed."""
    path = Path(path)
    tmp = _temporary(path)
    try:
        yield tmp
        _fsync(tmp)
        os.replace(tmp, path)
        _fsync(path.parent)
    finally:
        remove(tmp)


def write_text(path: str | Path, text: str) -> None:
    with atomic_file(path) as tmp:
        tmp.write_text(text)


@contextlib.contextmanager
def atomic_dir(path: str | Path) -> Iterator[Path]:
    """Yield a fresh temporary directory; on success its files are fsynced and it replaces
    `path` (the old directory is moved aside first, then deleted), on an error it is removed."""
    path = Path(path)
    tmp, old = _temporary(path), path.with_name(f".{path.name}.old{_TMP}{os.getpid()}")
    _fresh(tmp)
    try:
        yield tmp
        _fsync_tree(tmp)
        if path.exists():
            os.replace(path, old)
        os.replace(tmp, path)
        _fsync(path.parent)
    finally:
        remove(tmp)
        remove(old)


@contextlib.contextmanager
def output_dir(path: str | Path, kind: str, replace: bool) -> Iterator[Path]:
    """Yield a temporary directory to write a whole output (a saved model) into; on success its
    entries move into `path` (created and marked, or with `replace` emptied of the old output
    first), so an old output is replaced only by a complete new one. Call check_output first."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _temporary(path)
    _fresh(tmp)
    try:
        yield tmp
        _fsync_tree(tmp)
        claim_output(path, kind, replace=replace)
        entries = [entry.name for entry in tmp.iterdir()]
        for name in entries:
            os.replace(tmp / name, path / name)
        write_marker(path, kind, entries)
        _fsync(path)
    finally:
        remove(tmp)


WRITER = "lmrl"  # what lmrl puts in the files it writes outside its directories


def check_replaceable_file(path: str | Path, written_by_lmrl) -> None:
    """A single output file (a plot, an eval report) may replace only a file lmrl wrote:
    `written_by_lmrl(path)` says whether it did."""
    path = Path(path)
    if path.is_dir():
        raise RunDirError(f"{path} is a directory; give a file name")
    if path.exists() and not written_by_lmrl(path):
        raise RunDirError(f"{path} exists and lmrl did not write it; choose another file name")


def json_by_lmrl(path: Path) -> bool:
    try:
        return json.loads(path.read_text()).get("written_by") == WRITER
    except (OSError, ValueError, AttributeError):
        return False


def png_by_lmrl(path: Path) -> bool:
    """matplotlib stores savefig's metadata as PNG text chunks."""
    from PIL import Image

    try:
        with Image.open(path) as image:
            return image.text.get("Software") == WRITER
    except (OSError, ValueError, AttributeError):
        return False

