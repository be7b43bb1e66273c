"""Tier 1 tests of the sorting task's rewards (hand examples, seed and lecture) and SortTask."""

import pytest
import torch

from lmrl.tasks.sort import (
    LECTURE_PROMPTS,
    REWARDS,
    SortTask,
    adjacency,
    encode,
    exact_match,
    inclusion,
    inclusion_adjacency,
    inclusion_adjacency_multiset,
    inclusion_multiset,
    positional,
)


def score(fn, prompt, *responses):
    """One prompt, a group of responses -> list of floats."""
    out = fn(torch.tensor([prompt]), torch.tensor([list(responses)]))
    assert out.shape == (1, len(responses))
    assert out.dtype == torch.float32
    return out[0].tolist()


# ---------------------------------------------------------------- the seed's worked examples

TRUTH = [0, 1, 2, 3]  # the prompt is any permutation; use one that is not sorted
SEED_PROMPT = [3, 0, 2, 1]


def test_seed_positional_examples():
    # truth 0 1 2 3: output 0 1 2 3 -> 4; output 2 1 3 0 -> 1 (only position 1 matches)
    assert score(positional, SEED_PROMPT, [0, 1, 2, 3], [2, 1, 3, 0]) == [4.0, 1.0]


def test_seed_example_1_0_2_3_follows_definition_not_text():
    """The seed says 'truth 0 1 2 3, output 1 0 2 3 -> 1', but its own definition ('number of
    positions matching the correct sorted sequence') gives 2: positions 2 and 3 match (2 == 2,
    3 == 3). The code follows the definition."""
    assert score(positional, SEED_PROMPT, [1, 0, 2, 3]) == [2.0]


def test_exact_match_hand_values():
    assert score(exact_match, SEED_PROMPT, [0, 1, 2, 3], [1, 0, 2, 3], [0, 1, 2, 2]) == \
        [1.0, 0.0, 0.0]
    # with repeats, the sorted multiset is the only right answer
    assert score(exact_match, [2, 0, 2], [0, 2, 2], [0, 0, 2], [2, 2, 0]) == [1.0, 0.0, 0.0]


# ---------------------------------------------------------------- the lecture's examples

LECTURE_PROMPT = [3, 1, 0, 2]
LECTURE_RESPONSES = ([0, 1, 2, 3], [7, 2, 2, 5], [0, 3, 1, 2])


def test_lecture_examples_positional():
    # sorted 0 1 2 3. [0,1,2,3] -> 4; [7,2,2,5] -> only position 2 (2 == 2) -> 1;
    # [0,3,1,2] -> only position 0 -> 1
    assert score(positional, LECTURE_PROMPT, *LECTURE_RESPONSES) == [4.0, 1.0, 1.0]


def test_lecture_examples_inclusion_adjacency():
    # [0,1,2,3]: inclusion 4 (all of 3,1,0,2 present), adjacency 3 -> 7
    # [7,2,2,5]: inclusion 1 (only 2 present), adjacency 7>2 no, 2<=2, 2<=5 -> 2 -> 3
    # [0,3,1,2]: inclusion 4, adjacency 0<=3, 3>1 no, 1<=2 -> 2 -> 6
    assert score(inclusion, LECTURE_PROMPT, *LECTURE_RESPONSES) == [4.0, 1.0, 4.0]
    assert score(lambda p, r: adjacency(r), LECTURE_PROMPT, *LECTURE_RESPONSES) == [3.0, 2.0, 2.0]
    assert score(inclusion_adjacency, LECTURE_PROMPT, *LECTURE_RESPONSES) == [7.0, 3.0, 6.0]


def test_module_docstring_examples():
    # prompt 3 1 2 0: response 0 1 2 3 -> 4 + 3 = 7 (the max, 2n - 1); 0 0 0 0 -> 1 + 3 = 4
    assert score(inclusion_adjacency, [3, 1, 2, 0], [0, 1, 2, 3], [0, 0, 0, 0]) == [7.0, 4.0]


def test_multiset_on_lecture_examples():
    # no repeats in the prompt: multiset inclusion equals inclusion here, except [7,2,2,5]
    # where 2 appears twice in the response but once in the prompt: min(1, 2) = 1 -> same
    assert score(inclusion_adjacency_multiset, LECTURE_PROMPT, *LECTURE_RESPONSES) == \
        [7.0, 3.0, 6.0]


# ---------------------------------------------------------------- the repeated-token loophole


def test_repeated_token_loophole():
    # prompt 2 0 2. Response 0 0 2 is not sorted-correct (the answer is 0 2 2).
    # inclusion: prompt tokens 2, 0, 2 each appear in {0, 2} -> 3; adjacency 0<=0, 0<=2 -> 2
    #   -> 5, the maximum 2n - 1, the seed's loophole
    # multiset: min(#0: 1 vs 2) + min(#2: 2 vs 1) = 1 + 1 = 2; + adjacency 2 -> 4
    prompt = [2, 0, 2]
    assert score(inclusion_adjacency, prompt, [0, 0, 2], [0, 2, 2]) == [5.0, 5.0]
    assert score(inclusion_adjacency_multiset, prompt, [0, 0, 2], [0, 2, 2]) == [4.0, 5.0]
    assert score(inclusion_multiset, prompt, [0, 0, 2], [0, 2, 2], [2, 2, 2]) == [2.0, 3.0, 2.0]


def test_multiset_maximum_only_for_sorted_answer():
    # exhaustively over all 3^3 responses to prompt 2 0 2 (V = 3)
    prompt = torch.tensor([[2, 0, 2]])
    every = torch.cartesian_prod(*[torch.arange(3)] * 3).unsqueeze(0)  # (1, 27, 3)
    ms = inclusion_adjacency_multiset(prompt, every)[0]
    best = every[0, ms == ms.max()]
    assert ms.max().item() == 5.0
    assert best.tolist() == [[0, 2, 2]]
    plain = inclusion_adjacency(prompt, every)[0]
    assert (plain == 5.0).sum().item() > 1  # the loophole: more than one maximiser


# ---------------------------------------------------------------- shapes, determinism, range


@pytest.mark.parametrize("name", list(REWARDS))
def test_batched_shapes_and_per_prompt_targets(name):
    fn = REWARDS[name]
    prompts = torch.tensor([[2, 0, 1], [1, 1, 0]])  # sorted: 0 1 2 and 0 1 1
    responses = torch.tensor([
        [[0, 1, 2], [2, 1, 0]],
        [[0, 1, 1], [1, 0, 1]],
    ])  # (B=2, G=2, n=3)
    out = fn(prompts, responses)
    assert out.shape == (2, 2)
    # each prompt's sorted answer gets the maximum, computed against its own prompt
    max_score = {"exact_match": 1.0, "positional": 3.0}.get(name, 5.0)
    assert out[0, 0].item() == max_score
    assert out[1, 0].item() == max_score
    assert out[0, 1].item() < max_score
    assert out[1, 1].item() < max_score


def test_batched_hand_values():
    prompts = torch.tensor([[2, 0, 1], [1, 1, 0]])
    responses = torch.tensor([[[0, 1, 2], [2, 1, 0]], [[0, 1, 1], [0, 1, 2]]])
    assert positional(prompts, responses).tolist() == [[3.0, 1.0], [3.0, 2.0]]
    assert exact_match(prompts, responses).tolist() == [[1.0, 0.0], [1.0, 0.0]]
    # [2,1,0]: inclusion 3, adjacency 0 -> 3; [0,1,2] vs prompt 1 1 0: inclusion 3, adj 2 -> 5
    assert inclusion_adjacency(prompts, responses).tolist() == [[5.0, 3.0], [5.0, 5.0]]
    # multiset [0,1,2] vs prompt {0:1, 1:2}: min(1,1) + min(2,1) = 2, adjacency 2 -> 4
    assert inclusion_adjacency_multiset(prompts, responses).tolist() == [[5.0, 3.0], [5.0, 4.0]]


@pytest.mark.parametrize("name", list(REWARDS))
def test_deterministic_and_out_of_range_ints(name):
    fn = REWARDS[name]
    prompts = torch.tensor([[4, 0, 3, 3]])  # V = 5
    responses = torch.tensor([[[9, 100, 0, 3], [0, 3, 3, 4], [7, 7, 7, 7]]])  # 9, 100, 7 >= V
    first = fn(prompts, responses)
    second = fn(prompts, responses)
    assert torch.equal(first, second)
    assert first.shape == (1, 3)
    assert torch.isfinite(first).all()


def test_out_of_range_hand_values():
    prompts = torch.tensor([[4, 0, 3, 3]])  # sorted 0 3 3 4
    responses = torch.tensor([[[9, 100, 0, 3], [7, 7, 7, 7]]])
    assert positional(prompts, responses).tolist() == [[0.0, 0.0]]
    # [9,100,0,3]: inclusion 0,3,3 present -> 3; adjacency 9<=100, 100>0 no, 0<=3 -> 2 -> 5
    # [7,7,7,7]: inclusion 0; adjacency 3 -> 3
    assert inclusion_adjacency(prompts, responses).tolist() == [[5.0, 3.0]]
    # multiset: min(#0: 1, 1) + min(#3: 2, 1) = 2; + 2 -> 4
    assert inclusion_adjacency_multiset(prompts, responses).tolist() == [[4.0, 3.0]]
    assert exact_match(prompts, responses).tolist() == [[0.0, 0.0]]


# ---------------------------------------------------------------- SortTask


def _codes(x, V):
    return set(encode(x, V).tolist())


def test_all_prompts_split_sizes_n3_v5():
    task = SortTask(n=3, V=5, prompts="all", train_frac=0.6)
    assert len(task.train) + len(task.heldout) == 125
    assert len(task.heldout) == 50
    assert len(task.train) == 75
    assert _codes(task.train, 5) | _codes(task.heldout, 5) == set(range(125))
    assert not _codes(task.train, 5) & _codes(task.heldout, 5)


def test_all_prompts_constants_in_train():
    task = SortTask(n=3, V=5, prompts="all", constants_in_train=True)
    constants = torch.arange(5).unsqueeze(-1).expand(5, 3)
    assert _codes(constants, 5) <= _codes(task.train, 5)
    assert not _codes(constants, 5) & _codes(task.heldout, 5)


@pytest.mark.parametrize("split_seed", [0, 1, 2])
def test_all_prompts_sampling_never_returns_heldout(split_seed):
    task = SortTask(n=3, V=5, prompts="all", split_seed=split_seed)
    g = torch.Generator().manual_seed(0)
    sampled = torch.cat([task.sample_prompts(64, g) for _ in range(20)])
    assert sampled.shape == (1280, 3)
    assert not _codes(sampled, 5) & _codes(task.heldout, 5)


def test_split_is_seeded():
    a = SortTask(n=3, V=5, prompts="all", split_seed=0)
    b = SortTask(n=3, V=5, prompts="all", split_seed=0)
    c = SortTask(n=3, V=5, prompts="all", split_seed=1)
    assert torch.equal(a.heldout, b.heldout)
    assert not torch.equal(a.heldout, c.heldout)


def test_random_prompts_never_sample_heldout():
    task = SortTask(n=4, V=5, prompts="random", heldout_size=200)  # 200 of 625 prompts held out
    assert task.heldout.shape == (200, 4)
    assert len(_codes(task.heldout, 5)) == 200  # unique
    g = torch.Generator().manual_seed(0)
    sampled = torch.cat([task.sample_prompts(512, g) for _ in range(10)])
    assert sampled.shape == (5120, 4)
    assert not _codes(sampled, 5) & _codes(task.heldout, 5)
    # and with 425 training prompts and 5120 draws, most of them are seen
    assert len(_codes(sampled, 5)) > 400


def test_random_heldout_too_large_raises():
    with pytest.raises(ValueError, match="heldout_size"):
        SortTask(n=3, V=5, prompts="random", heldout_size=100)  # over half of 125


def test_no_repeat_prompts_have_distinct_values():
    task = SortTask(n=4, V=6, repeats=False, prompts="random", heldout_size=50)
    sampled = task.sample_prompts(1000, torch.Generator().manual_seed(0))
    for x in (task.heldout, sampled):
        assert (x.sort(dim=-1).values.diff(dim=-1) != 0).all()
        assert x.min() >= 0 and x.max() < 6
    everything = SortTask(n=3, V=5, repeats=False, prompts="all")
    both = torch.cat([everything.train, everything.heldout])
    assert len(both) == 60  # 5 * 4 * 3
    assert (both.sort(dim=-1).values.diff(dim=-1) != 0).all()


def test_lecture_prompt_set():
    task = SortTask(n=3, V=5, prompts="lecture")
    assert task.train.tolist() == [[1, 0, 2], [3, 2, 4], [1, 2, 3]] == LECTURE_PROMPTS
    assert len(task.heldout) == 125 - 3
    assert not _codes(task.train, 5) & _codes(task.heldout, 5)
    sampled = task.sample_prompts(3, torch.Generator().manual_seed(0))
    assert sorted(sampled.tolist()) == sorted(LECTURE_PROMPTS)  # all 3, without replacement


def test_task_rewards_dispatch():
    task = SortTask(n=4, V=5, prompts="random", heldout_size=10, reward="inclusion_adjacency")
    prompts = torch.tensor([LECTURE_PROMPT])
    responses = torch.tensor([list(LECTURE_RESPONSES)])
    assert task.rewards(prompts, responses).tolist() == [[7.0, 3.0, 6.0]]
    assert task.rewards(prompts, responses, name="positional").tolist() == [[4.0, 1.0, 1.0]]
    assert task.response_length == 4
