"""Tier 3: lmrl replaces only its own outputs, writes atomically, and checkpoints round-trip
without pickle."""

import random
from pathlib import Path

import numpy as np
import pytest
import torch

from lmrl import checkpoint, files
from lmrl.config import Config
from lmrl.errors import RunDirError
from lmrl.trainer import train

QUICK = {"task": {"n": 4, "V": 6, "heldout_size": 20}, "policy": {"dim": 8, "hidden": 16},
         "train": {"steps": 2, "B": 4, "G": 4}}


def quick(run_dir, **log) -> Config:
    return Config().replace(**QUICK, log={"run_dir": str(run_dir), "progress": False, **log})


def tree(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in root.rglob("*") if p.is_file()}


@pytest.fixture
def workdir(tmp_path, monkeypatch):
    """A working directory holding a user's files, and a home directory."""
    work = tmp_path / "work"
    (work / "precious").mkdir(parents=True)
    (work / "notes.txt").write_text("mine")
    (work / "precious" / "data.csv").write_text("1,2")
    monkeypatch.chdir(work)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    (tmp_path / "home").mkdir()
    return work


@pytest.mark.parametrize("run_dir", [".", "..", "precious", "notes.txt", "~"])
def test_overwrite_refuses_what_lmrl_did_not_make_and_deletes_nothing(workdir, run_dir):
    before = tree(workdir.parent)
    with pytest.raises(RunDirError):
        train(quick(run_dir, overwrite=True), verbose=False)
    assert tree(workdir.parent) == before


def test_overwrite_replaces_an_lmrl_run_and_keeps_the_users_files(workdir):
    train(quick("runs/a"), verbose=False)
    (workdir / "runs/a/my_notes.md").write_text("observations")
    stale = workdir / "runs/a/.metrics.jsonl.tmp-999"
    stale.write_text("half")
    train(quick("runs/a", overwrite=True), verbose=False)
    assert (workdir / "runs/a/my_notes.md").read_text() == "observations"
    assert not stale.exists()
    assert files.read_marker(workdir / "runs/a")["kind"] == "train"


def test_a_run_that_cannot_start_leaves_the_old_one(workdir):
    train(quick("runs/a"), verbose=False)
    before = tree(workdir / "runs/a")
    bad = Config().replace(task={"task": "sort_text", "n": 4, "V": 6},
                           policy={"model": "./missing_model"},
                           log={"run_dir": "runs/a", "overwrite": True, "progress": False})
    with pytest.raises(Exception, match="no such directory"):
        train(bad, verbose=False)
    assert tree(workdir / "runs/a") == before


def test_outputs_of_another_kind_and_input_directories_are_refused(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    files.write_marker(run, "train")
    (run / "x").write_text("1")
    with pytest.raises(RunDirError, match="holds an lmrl train output"):
        files.check_output(run, "sft", overwrite=True)
    with pytest.raises(RunDirError, match="is where the input model"):
        files.check_output(tmp_path / "model", "sft", inputs=(tmp_path / "model",))
    with pytest.raises(RunDirError, match="is where the input model"):
        files.check_output(tmp_path, "sft", overwrite=True, inputs=(tmp_path / "model",))
    with pytest.raises(RunDirError, match="is not empty"):
        files.check_output(run, "train")


def test_atomic_writes_leave_the_old_file_on_an_error(tmp_path):
    target = tmp_path / "summary.json"
    files.write_text(target, "old")
    with pytest.raises(RuntimeError), files.atomic_file(target) as tmp:
        tmp.write_text("half")
        raise RuntimeError("killed mid-write")
    assert target.read_text() == "old" and sorted(tmp_path.iterdir()) == [target]
    with files.atomic_dir(tmp_path / "model") as tmp:
        (tmp / "w").write_text("1")
    with pytest.raises(RuntimeError), files.atomic_dir(tmp_path / "model") as tmp:
        (tmp / "w").write_text("2")
        raise RuntimeError
    assert (tmp_path / "model" / "w").read_text() == "1"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model", "summary.json"]


def test_checkpoint_state_round_trips_every_type_bit_for_bit(tmp_path):
    shared = torch.randn(3, 4)
    rng = np.random.RandomState(0)
    state = {"tied_a": shared, "tied_b": shared, "tuple": (1, 2.5, None, "s"),
             "int_keys": {0: {"step": torch.tensor(3.0)}, 7: [True, False]},
             "python_rng": random.Random(1).getstate(), "numpy_rng": rng.get_state(),
             "bytes": torch.ByteTensor([1, 2, 255]), "nested": [[torch.arange(3)]],
             "float": 0.1 + 0.2, "__weird": 1}
    path = checkpoint.save(tmp_path, 5, state, {"note": "x"}, keep=2)
    loaded, meta = checkpoint.load(path)
    assert meta == {"note": "x"}
    assert torch.equal(loaded["tied_a"], shared) and torch.equal(loaded["tied_b"], shared)
    assert loaded["tuple"] == (1, 2.5, None, "s") and loaded["float"] == 0.1 + 0.2
    assert torch.equal(loaded["int_keys"][0]["step"], torch.tensor(3.0))
    assert loaded["int_keys"][7] == [True, False] and loaded["__weird"] == 1
    assert loaded["python_rng"] == random.Random(1).getstate()
    restored = np.random.RandomState()
    restored.set_state(loaded["numpy_rng"])
    assert restored.rand() == rng.rand()
    assert loaded["bytes"].dtype == torch.uint8


def test_checkpoints_keep_the_newest_and_skip_a_damaged_one(tmp_path, capsys):
    for step in (1, 2, 3):
        checkpoint.save(tmp_path, step, {"w": torch.full((2,), float(step))}, {}, keep=2)
    assert [p.name for p in checkpoint.checkpoints(tmp_path)] == ["step-00000002",
                                                                   "step-00000003"]
    newest = checkpoint.checkpoints(tmp_path)[-1] / checkpoint.TENSORS
    newest.write_bytes(newest.read_bytes()[:20])  # truncated
    state, _, path = checkpoint.load_newest(tmp_path)
    assert path.name == "step-00000002" and torch.equal(state["w"], torch.full((2,), 2.0))
    assert "skipped" in capsys.readouterr().out
    older = checkpoint.checkpoints(tmp_path)[0] / checkpoint.STATE
    older.write_text("{not json")
    with pytest.raises(RunDirError, match="no checkpoint"):
        checkpoint.load_newest(tmp_path)
