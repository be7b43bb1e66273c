"""policy.compile=auto (compiling.py): the rule, the records that make a known shape's decision
at start, and a run that prints its decision. The compiled run itself is in the slow tier."""

import json
import os
import sys
from pathlib import Path

import pytest

from lmrl import compiling
from lmrl.compiling import CompilePlan, expected_compile_seconds, pays


def make_plan(tmp_path, setting="auto", record=None, cache_exists=True) -> CompilePlan:
    cache = tmp_path / "inductor"
    if cache_exists:
        cache.mkdir(exist_ok=True)
    return CompilePlan(setting, "k", tmp_path / "lmrl", cache, record)


def test_a_run_compiles_unless_compiling_takes_longer_than_the_whole_run():
    assert pays(remaining=100, eager_seconds=0.5, saved_fraction=0.2, compile_seconds=40)
    assert not pays(remaining=79, eager_seconds=0.5, saved_fraction=0.2, compile_seconds=40)
    # Compiled steps measured no faster: never.
    assert not pays(remaining=10**6, eager_seconds=1.0, saved_fraction=0.0, compile_seconds=1)


def test_with_graphs_on_disk_a_run_compiles_only_if_its_own_saving_repays_loading_them():
    # 100 x 0.18 s = 18 s of run > 9 s, but 20% faster steps save 3.6 s < 9 s (a tiny run)
    assert pays(remaining=100, eager_seconds=0.18, saved_fraction=0.2, compile_seconds=9)
    assert not pays(100, 0.18, 0.2, 9, warm=True)
    assert pays(300, 0.18, 0.2, 9, warm=True)  # 10.8 s saved
    assert not pays(10**6, 1.0, 0.0, 1, warm=True)


def test_on_and_off_are_obeyed_and_short_or_unsupported_runs_stay_eager(tmp_path):
    on = make_plan(tmp_path, "on")
    on.start(1, None)
    off = make_plan(tmp_path, "off")
    off.start(10**6, None)
    assert on.on is True and off.on is False
    one = make_plan(tmp_path)
    assert "cannot pay" in one.start(1, None) and one.on is False
    lora = make_plan(tmp_path)
    assert "LoRA" in lora.start(1000, compiling.unsupported(object())) and lora.on is False


def test_a_new_shape_is_decided_by_timing_its_second_eager_step(tmp_path):
    plan = make_plan(tmp_path)
    assert "after step 2" in plan.start(1000, None) and plan.on is None
    assert plan.after_step(0.9, 999) is None and plan.on is None  # step 1: not timed
    line = plan.after_step(0.5, 998)  # 998 x 0.5 s > the 120 s default: on
    assert plan.on is True and "auto -> on (998 steps x 0.5 s" in line and "new shape" in line
    assert plan.after_step(0.4, 997) is None and plan.last_compiled
    short = make_plan(tmp_path)
    short.start(300, None)
    short.after_step(30.0, 299)  # a slow first step (299 x 30 s would pay) is not the estimate
    short.after_step(0.3, 298)  # 89 s of run < 120 s of compiling
    assert short.on is False and not short.last_compiled
    tiny = make_plan(tmp_path)
    assert "cannot pay" in tiny.start(2, None) and tiny.on is False


def test_an_eager_run_records_its_steady_step_and_the_next_decides_at_start(tmp_path):
    first = make_plan(tmp_path)
    first.start(100, None)
    for seconds in (5.0, 0.2, 0.3, 0.2):
        first.after_step(seconds, 0)
    assert first.on is False
    record = first.finish()
    assert record == {"eager_step": 0.2}  # step 1 left out; no compile numbers
    assert compiling.load_records(tmp_path / "lmrl")["k"] == record
    second = make_plan(tmp_path, record=record)
    line = second.start(100, None)
    assert second.on is False and "100 steps x 0.2 s eager" in line and "new shape" in line
    assert second.start(10_000, None) and second.on is True  # 2000 s of run > 120 s
    lora = make_plan(tmp_path)
    lora.start(100, "LoRA: transformers' forward runs")
    for seconds in (5.0, 0.9, 0.9):
        lora.after_step(seconds, 0)
    assert lora.finish() is None  # another forward's steps say nothing about lmrl's


def test_a_known_shape_is_decided_at_start_from_its_record(tmp_path):
    cache = tmp_path / "inductor"
    record = {"cold_seconds": 40.0, "warm_seconds": 3.0, "eager_step": 0.5,
              "compiled_step": 0.4, "cache_dir": str(cache)}
    warm = make_plan(tmp_path, record=record)
    line = warm.start(100, None)  # 100 x 0.5 s x 20% = 10 s saved > 3 s to load
    assert warm.on is True and "to load the compiled graphs" in line and "20% faster" in line
    short = make_plan(tmp_path, record=record)
    short.start(20, None)  # 2 s saved < 3 s
    assert short.on is False
    gone = make_plan(tmp_path / "elsewhere", record=record, cache_exists=False)
    gone.start(60, None)  # the cache directory was deleted: a cold compile, 40 s > 30 s of run
    assert gone.on is False
    slower = make_plan(tmp_path, record={**record, "compiled_step": 0.6})
    slower.start(10**6, None)
    assert slower.on is False


def test_expected_compile_seconds_cold_warm_and_default(tmp_path):
    cache = tmp_path / "c"
    cache.mkdir()
    assert expected_compile_seconds(None, cache)[0] == compiling.COLD_SECONDS
    cold = {"cold_seconds": 50.0, "cache_dir": str(cache)}
    # a guess until a warm start is measured: 7% of the cold compile
    assert expected_compile_seconds(cold, cache)[0] == pytest.approx(3.5)
    assert expected_compile_seconds({**cold, "warm_seconds": 2.5}, cache)[0] == 2.5
    assert expected_compile_seconds(cold, tmp_path / "other")[0] == 50.0
    eager_only = {"eager_step": 0.2}  # an eager run's record: nothing known about compiling
    assert expected_compile_seconds(eager_only, cache)[0] == compiling.COLD_SECONDS


def test_a_compiled_run_records_cold_then_warm_compile_seconds(tmp_path):
    first = make_plan(tmp_path, "on")
    first.start(5, None)
    for seconds in (30.0, 0.4, 0.5, 0.4):
        first.after_step(seconds, 0)
    record = first.finish()
    assert record["cold_seconds"] == pytest.approx(29.6) and "warm_seconds" not in record
    assert compiling.load_records(tmp_path / "lmrl")["k"] == record
    second = make_plan(tmp_path, record=record)
    assert "after step 2" in second.start(100, None)  # no eager step time known yet
    second.after_step(0.9, 99)
    line = second.after_step(0.6, 98)  # 98 x 0.6 s x 33% = ~20 s saved > ~2 s (7% of cold)
    assert second.on is True and "to load the compiled graphs" in line
    for seconds in (3.4, 0.4, 0.4):
        second.after_step(seconds, 0)
    again = second.finish()
    assert again["warm_seconds"] == pytest.approx(3.0) and again["cold_seconds"] == 29.6
    assert again["eager_step"] == 0.6
    third = make_plan(tmp_path, record=again)
    assert "to load the compiled graphs" in third.start(100, None) and third.on is True
    assert not [p for p in (tmp_path / "lmrl").iterdir() if p.name != compiling.RECORDS]


def test_too_few_compiled_steps_record_nothing(tmp_path):
    plan = make_plan(tmp_path, "on")
    plan.start(2, None)
    plan.after_step(9.0, 1)
    plan.after_step(0.4, 0)
    assert plan.finish() is None and not (tmp_path / "lmrl").exists()


def test_an_unreadable_records_file_means_no_records(tmp_path):
    (tmp_path / compiling.RECORDS).write_text("{not json")
    assert compiling.load_records(tmp_path) == {}


def test_the_cache_directory_is_lmrls_unless_the_user_chose_one(tmp_path, monkeypatch):
    monkeypatch.delenv("TORCHINDUCTOR_CACHE_DIR", raising=False)
    monkeypatch.setenv("LMRL_CACHE_DIR", str(tmp_path))
    assert compiling.use_disk_cache() == tmp_path / "torch_compile"
    assert os.environ["TORCHINDUCTOR_CACHE_DIR"] == str(tmp_path / "torch_compile")
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "mine"))
    assert compiling.use_disk_cache() == tmp_path / "mine"
    # torch's default, which importing torch._dynamo writes there (transformers imports it
    # while loading a model), is not the user's choice.
    from torch._inductor.runtime.cache_dir_utils import default_cache_dir

    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", default_cache_dir())
    monkeypatch.setattr(compiling, "_USER_CACHE_DIR", None)
    assert compiling.use_disk_cache() == tmp_path / "torch_compile"
    monkeypatch.setattr(compiling, "_USER_CACHE_DIR", default_cache_dir())  # set before lmrl
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", default_cache_dir())
    assert compiling.use_disk_cache() == Path(default_cache_dir())
    monkeypatch.delenv("LMRL_CACHE_DIR")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert compiling.cache_root() == tmp_path / "xdg" / "lmrl"


def test_a_short_lm_run_prints_its_decision_and_logs_eager_steps(tmp_path, capsys,
                                                                  monkeypatch):
    pytest.importorskip("transformers")
    from lmrl.cli import main

    imports = []
    real = compiling.import_compiler_in_background
    monkeypatch.setattr(compiling, "import_compiler_in_background",
                        lambda probe: imports.append((probe, real(probe=probe))))
    task = ["--task", "sort_text", "--n", "3", "--V", "5", "--heldout-size", "10"]
    main(["init-model", "--out", str(tmp_path / "m"), "--hidden-size", "16", "--layers", "1",
          "--heads", "2", *task])
    train = ["train", "--model", str(tmp_path / "m"), "--steps", "3", "--B", "2", "--G", "2",
             "--eval-limit", "4", "--no-progress", "--threads", "1", *task]
    main([*train, "--run-dir", str(tmp_path / "run")])
    out = capsys.readouterr().out
    assert "compile: auto -> decided after step 2" in out and "compile: auto -> off (1 steps" in out
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").open()]
    assert [r["time/compiled"] for r in rows if "time/compiled" in r] == [0.0, 0.0, 0.0]
    # auto may compile after step 2: the compiler was imported on a second thread meanwhile.
    ((probe, thread),) = imports
    assert probe is False  # it may not compile: no probes run for it
    thread.join(timeout=60)
    assert not thread.is_alive() and "torch._inductor.compile_fx" in sys.modules
    main([*train, "--run-dir", str(tmp_path / "off"), "--no-compile"])
    assert len(imports) == 1  # off: nothing to import


@pytest.mark.parametrize("probe", [True, False])
def test_the_background_thread_probes_the_cpu_only_for_a_run_that_compiles(probe, monkeypatch):
    import torch._inductor.cpu_vec_isa as isa

    calls = []
    monkeypatch.setattr(isa, "pick_vec_isa", lambda: calls.append(1))
    compiling.import_compiler_in_background(probe=probe).join(timeout=60)
    assert calls == [1] * probe
