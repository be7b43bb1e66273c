"""User reward functions run under a time limit: a hung call stops the run with an error naming
the function and the batch, and leaves no thread keeping the process alive."""

import subprocess
import sys
import textwrap
import threading
import time

import pytest

from lmrl.config import TaskConfig
from lmrl.errors import RewardError
from lmrl.tasks import build_task
from lmrl.tasks.text import RewardFn, call_reward, load_reward_fn

MODULE = "lmrl_test_timeout_rewards"
SOURCE = """
    import threading
    import time

    CALLED_ON = []

    def sleepy(prompts, completions, **columns):
        time.sleep(30)
        return [0.0] * len(completions)

    def length(prompts, completions, **columns):
        return [float(len(c)) for c in completions]

    def where(prompts, completions, **columns):
        CALLED_ON.append(threading.current_thread())
        return [1.0] * len(completions)

    def boom(prompts, completions, **columns):
        if "bad" in completions:
            raise ValueError("cannot score")
        return [0.0] * len(completions)

    def batch_only(prompts, completions, **columns):
        # Raises on the batch but hangs on a single row: the sample search must stop too.
        if len(completions) > 1:
            raise ValueError("batch failure")
        time.sleep(30)
        return [0.0]

    def lazy(prompts, completions, **columns):
        for c in completions:
            time.sleep(30)
            yield 0.0
"""


@pytest.fixture
def mod(reward_module):
    return reward_module(MODULE, SOURCE)


PROMPTS, COMPLETIONS = ["p0", "p1", "p2"], ["ok", "bad", "fine"]


def test_a_hung_reward_stops_within_its_timeout_naming_it(mod):
    reward = load_reward_fn(f"{mod}:sleepy", timeout=0.5)
    start = time.monotonic()
    with pytest.raises(RewardError) as info:
        call_reward(reward, PROMPTS, COMPLETIONS, {})
    assert time.monotonic() - start < 5
    message = str(info.value)
    assert "'sleepy'" in message and "0.5s" in message and "3 completions" in message
    assert "'p0'" in message and "'ok'" in message and "--reward-timeout" in message


def test_a_lazy_result_is_timed_too(mod):
    start = time.monotonic()
    with pytest.raises(RewardError, match="'lazy' did not return within"):
        call_reward(load_reward_fn(f"{mod}:lazy", timeout=0.3), PROMPTS, COMPLETIONS, {})
    assert time.monotonic() - start < 5


def test_the_message_truncates_long_texts(mod):
    long = "x" * 5000
    with pytest.raises(RewardError) as info:
        call_reward(load_reward_fn(f"{mod}:sleepy", timeout=0.2), [long], [long], {})
    assert "(5000 characters)" in str(info.value) and len(str(info.value)) < 1000


def test_a_fast_reward_with_a_timeout_returns_the_same_values(mod):
    timed = call_reward(load_reward_fn(f"{mod}:length", timeout=5), PROMPTS, COMPLETIONS, {})
    untimed = call_reward(load_reward_fn(f"{mod}:length"), PROMPTS, COMPLETIONS, {})
    assert timed == untimed == [2.0, 3.0, 4.0]


def test_a_raise_inside_a_timed_reward_still_names_the_sample(mod):
    with pytest.raises(RewardError) as info:
        call_reward(load_reward_fn(f"{mod}:boom", timeout=5), PROMPTS, COMPLETIONS, {})
    message = str(info.value)
    assert "cannot score" in message and "sample 1" in message and "'p1'" in message


def test_the_sample_search_respects_the_timeout(mod):
    start = time.monotonic()
    with pytest.raises(RewardError, match="batch failure on the whole batch"):
        call_reward(load_reward_fn(f"{mod}:batch_only", timeout=0.5), PROMPTS, COMPLETIONS, {})
    assert time.monotonic() - start < 5


@pytest.mark.parametrize("timeout", [None, 0, 0.0])
def test_no_timeout_runs_on_the_calling_thread(mod, timeout):
    reward = load_reward_fn(f"{mod}:where", timeout=timeout)
    assert reward.timeout is None
    call_reward(reward, PROMPTS, COMPLETIONS, {})
    # A RewardFn built by hand with timeout=0 means no limit too.
    call_reward(RewardFn("where", reward.fn, timeout=0), PROMPTS, COMPLETIONS, {})
    called_on = sys.modules[mod].CALLED_ON
    assert called_on == [threading.current_thread()] * 2


def test_a_timed_reward_runs_on_another_thread(mod):
    call_reward(load_reward_fn(f"{mod}:where", timeout=5), PROMPTS, COMPLETIONS, {})
    assert sys.modules[mod].CALLED_ON[-1] is not threading.current_thread()


def test_build_task_times_only_the_users_functions(mod, tmp_path):
    data = tmp_path / "d.jsonl"
    data.write_text("".join(f'{{"prompt": "q{i}"}}\n' for i in range(4)))
    user = build_task(TaskConfig(task="user", data=str(data), reward_fns=(f"{mod}:length",),
                                 reward_timeout=7.0, heldout_size=1))
    assert [r.timeout for r in user.rewards] == [7.0]
    unlimited = build_task(TaskConfig(task="user", data=str(data), heldout_size=1,
                                      reward_fns=(f"{mod}:length",), reward_timeout=0))
    assert [r.timeout for r in unlimited.rewards] == [None]
    sort_text = build_task(TaskConfig(task="sort_text", reward_fns=(f"{mod}:length=0.5",),
                                      reward_timeout=3.0))
    *built_in, extra = sort_text.rewards
    assert extra.name == "length" and extra.timeout == 3.0
    assert built_in and all(r.timeout is None for r in built_in)


def test_a_hung_reward_does_not_keep_the_process_alive(mod, tmp_path):
    script = textwrap.dedent(f"""
        import sys
        sys.path.insert(0, {str(tmp_path)!r})
        from lmrl.errors import RewardError
        from lmrl.tasks.text import call_reward, load_reward_fn
        try:
            call_reward(load_reward_fn("{mod}:sleepy", timeout=0.2), ["p"], ["c"], {{}})
        except RewardError as err:
            print("stopped:", err)
    """)
    start = time.monotonic()
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=25)
    assert done.returncode == 0, done.stderr
    assert "stopped:" in done.stdout and time.monotonic() - start < 20  # not the 30 s sleep
