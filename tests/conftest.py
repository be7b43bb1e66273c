"""Shared fixtures."""

import os
import sys
import textwrap

import pytest
import torch


@pytest.fixture(scope="session", autouse=True)
def datasets_cache(tmp_path_factory):
    """`datasets` caches the tables it reads; tests keep them out of ~/.cache. Both the
    variable (read when datasets is imported, and by subprocesses) and, if it is already
    imported, its config."""
    cache = tmp_path_factory.mktemp("hf_datasets_cache")
    before = os.environ.get("HF_DATASETS_CACHE")
    os.environ["HF_DATASETS_CACHE"] = str(cache)
    config = sys.modules.get("datasets.config")
    old_config = config.HF_DATASETS_CACHE if config is not None else None
    if config is not None:
        config.HF_DATASETS_CACHE = cache
    yield cache
    if config is not None:
        config.HF_DATASETS_CACHE = old_config
    if before is None:
        os.environ.pop("HF_DATASETS_CACHE")
    else:
        os.environ["HF_DATASETS_CACHE"] = before


@pytest.fixture(scope="session", autouse=True)
def lmrl_cache(tmp_path_factory):
    """compile=auto decides from the records in lmrl's cache (compiling.py): tests keep theirs
    out of ~/.cache/lmrl, so no earlier run changes a decision. inductor's compiled graphs go to
    a directory under torch's default one, shared by test sessions (it only makes compiling
    faster)."""
    cache = tmp_path_factory.mktemp("lmrl_cache")
    saved = {k: os.environ.get(k) for k in ("LMRL_CACHE_DIR", "TORCHINDUCTOR_CACHE_DIR")}
    os.environ["LMRL_CACHE_DIR"] = str(cache)
    if saved["TORCHINDUCTOR_CACHE_DIR"] is None:
        from torch._inductor.runtime.cache_dir_utils import default_cache_dir

        # Not the default itself: compiling.py would take that for torch's, not a choice.
        os.environ["TORCHINDUCTOR_CACHE_DIR"] = os.path.join(default_cache_dir(), "lmrl_tests")
    yield cache
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


@pytest.fixture(autouse=True)
def lmrl_records(lmrl_cache, tmp_path_factory, monkeypatch):
    """Every LM run updates the records that compile=auto decides from: each test starts with
    none (module fixtures' runs share the session's directory above)."""
    monkeypatch.setenv("LMRL_CACHE_DIR", str(tmp_path_factory.mktemp("lmrl_records")))


@pytest.fixture(scope="module")
def one_thread():
    """Tiny models' ops take microseconds: a second OpenMP thread only contends for the core
    (src/lmrl/threads.py), so the language-model tests run on one."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def reward_module(tmp_path, monkeypatch):
    """write(name, source) -> name: a module of reward functions importable by name for this
    test (on sys.path, forgotten afterwards so the next test's source is read afresh)."""
    written = []

    def write(name: str, source: str) -> str:
        (tmp_path / f"{name}.py").write_text(textwrap.dedent(source))
        monkeypatch.syspath_prepend(str(tmp_path))
        written.append(name)
        return name

    yield write
    for name in written:
        sys.modules.pop(name, None)
