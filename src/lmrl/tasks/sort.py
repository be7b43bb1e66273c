"""The seed's sorting task: a prompt is n numbers from {0..V-1}; the answer is them sorted.

Shapes: prompts (B, n); responses (B, G, n) (P = n response positions); rewards (B, G).

Rewards (pure, deterministic, vectorised):
- exact_match: 1 if the response equals the sorted prompt, else 0.
- positional: number of positions equal to the sorted prompt. The seed's example "truth 0 1 2 3,
  output 1 0 2 3 -> 1" contradicts this definition (positions 2 and 3 match, so 2); we follow the
  definition (tests/test_rewards.py says so).
- inclusion_adjacency: inclusion + adjacency, where inclusion counts the prompt's tokens (each
  prompt position once) whose value appears anywhere in the response, and adjacency counts the
  adjacent response pairs in sorted (non-decreasing) order. Example: prompt 3 1 2 0, response
  0 1 2 3 -> 4 + 3 = 7 (the maximum, 2n-1); response 0 0 0 0 -> 1 + 3 = 4.
  Repeated tokens: presence is a yes/no per prompt token, so a response that gets the *set* right
  but the multiplicities wrong scores the maximum: prompt 2 0 2, response 0 0 2 -> 3 + 2 = 5,
  though it is not sorted. Extra values are never penalised either, and that is the form a trained
  policy actually finds: prompt 6 7 7 6 0 -> 0 2 5 6 7 scores the maximum 9 (the 2 and 5 are not
  in the prompt). experiments/rewards.py measures it: ~45% of held-out answers maximal but wrong.
- inclusion_adjacency_multiset: the same with inclusion = Σ_v min(#v in prompt, #v in response);
  its maximum is reached only by the sorted answer, which closes that loophole.
"""

import itertools
import math
from dataclasses import dataclass

import torch
from torch import Tensor

from lmrl.errors import ConfigError
from lmrl.tasks.registry import TaskSpec, reject_unused

# The three training prompts of the lecture's own code (n = 3, V = 5).
LECTURE_PROMPTS = [[1, 0, 2], [3, 2, 4], [1, 2, 3]]
MAX_ENUMERATED = 2_000_000


def sorted_target(prompts: Tensor) -> Tensor:
    """(B, n) -> (B, 1, n): the correct response, broadcastable against (B, G, n)."""
    return prompts.sort(dim=-1).values.unsqueeze(1)


def exact_match(prompts: Tensor, responses: Tensor) -> Tensor:
    return (responses == sorted_target(prompts)).all(dim=-1).float()


def positional(prompts: Tensor, responses: Tensor) -> Tensor:
    return (responses == sorted_target(prompts)).sum(dim=-1).float()


def adjacency(responses: Tensor) -> Tensor:
    """Adjacent pairs in non-decreasing order (ties count: sorted lists with repeats have them)."""
    return (responses[..., :-1] <= responses[..., 1:]).sum(dim=-1).float()


def inclusion(prompts: Tensor, responses: Tensor) -> Tensor:
    """Prompt positions whose token is anywhere in the response. (B, n), (B, G, n) -> (B, G)."""
    present = (prompts[:, None, :, None] == responses[:, :, None, :]).any(dim=-1)  # (B, G, n)
    return present.sum(dim=-1).float()


def inclusion_multiset(prompts: Tensor, responses: Tensor) -> Tensor:
    """Σ_v min(count of v in prompt, count of v in response)."""
    V = int(max(prompts.max(), responses.max())) + 1
    p_counts = torch.nn.functional.one_hot(prompts, V).sum(dim=-2).unsqueeze(1)  # (B, 1, V)
    r_counts = torch.nn.functional.one_hot(responses, V).sum(dim=-2)  # (B, G, V)
    return torch.minimum(p_counts, r_counts).sum(dim=-1).float()


def inclusion_adjacency(prompts: Tensor, responses: Tensor) -> Tensor:
    return inclusion(prompts, responses) + adjacency(responses)


def inclusion_adjacency_multiset(prompts: Tensor, responses: Tensor) -> Tensor:
    return inclusion_multiset(prompts, responses) + adjacency(responses)


REWARDS = {
    "exact_match": exact_match,
    "positional": positional,
    "inclusion_adjacency": inclusion_adjacency,
    "inclusion_adjacency_multiset": inclusion_adjacency_multiset,
}
PROMPT_SETS = ("random", "all", "lecture")


def encode(prompts: Tensor, V: int) -> Tensor:
    """A prompt as one integer in base V, for set membership. (B, n) -> (B,)."""
    powers = V ** torch.arange(prompts.shape[-1], dtype=torch.int64)
    return (prompts.long() * powers).sum(dim=-1)


def num_prompts(n: int, V: int, repeats: bool) -> int:
    """Size of the prompt space: V^n with repeats, V!/(V-n)! without."""
    return V**n if repeats else math.perm(V, n)


def enumerate_prompts(n: int, V: int, repeats: bool) -> Tensor:
    """Every prompt, in lexicographic order. (K, n)."""
    count = num_prompts(n, V, repeats)
    if count > MAX_ENUMERATED:
        raise ValueError(
            f"{count:,} prompts for n={n}, V={V} is too many to enumerate; use prompts='random'"
        )
    it = itertools.product(range(V), repeat=n) if repeats else itertools.permutations(range(V), n)
    return torch.tensor(list(it), dtype=torch.long).reshape(-1, n)


def random_prompts(count: int, n: int, V: int, repeats: bool, generator: torch.Generator) -> Tensor:
    if repeats:
        return torch.randint(0, V, (count, n), generator=generator)
    return torch.rand(count, V, generator=generator).argsort(dim=-1)[:, :n]


@dataclass
class SortTask:
    """Prompt source, rewards and evaluation for sorting.

    prompts="all": every prompt, split at random (seeded by split_seed) into train_frac train and
    the rest held out; constant prompts (0,0,...,0) ... are kept in train when
    constants_in_train, since their answers hold labels (e.g. 4 at position 0) no other prompt
    teaches. prompts="random": training prompts are drawn fresh each step, rejecting the
    heldout_size held-out ones. prompts="lecture": the lecture's 3 prompts are the training set,
    all other n=3, V=5 prompts are held out.
    """

    n: int
    V: int
    repeats: bool = True
    prompts: str = "random"
    train_frac: float = 0.6
    heldout_size: int = 2000
    constants_in_train: bool = True
    split_seed: int = 0
    reward: str = "positional"

    def __post_init__(self) -> None:
        g = torch.Generator().manual_seed(self.split_seed)
        self.train: Tensor | None = None  # (K_train, n) when the training set is finite
        if self.prompts == "random":
            self.heldout = self._unique_random(self.heldout_size, g)
            self._heldout_codes = encode(self.heldout, self.V)
        elif self.prompts == "lecture":
            self.train = torch.tensor(LECTURE_PROMPTS)
            every = enumerate_prompts(self.n, self.V, self.repeats)
            self.heldout = every[~torch.isin(encode(every, self.V), encode(self.train, self.V))]
        else:
            every = enumerate_prompts(self.n, self.V, self.repeats)
            self.train, self.heldout = self._split(every, g)

    def _unique_random(self, count: int, g: torch.Generator) -> Tensor:
        total = num_prompts(self.n, self.V, self.repeats)
        if count > total // 2:
            raise ValueError(f"heldout_size={count} is over half of all {total} prompts for "
                             f"n={self.n}, V={self.V}; lower heldout_size or use prompts='all' "
                             "with train_frac")
        chosen = random_prompts(2 * count + 64, self.n, self.V, self.repeats, g)
        _, first = _unique_rows(encode(chosen, self.V))
        while first.numel() < count:  # only for tiny prompt spaces
            chosen = torch.cat([chosen, random_prompts(count, self.n, self.V, self.repeats, g)])
            _, first = _unique_rows(encode(chosen, self.V))
        # The first `count` distinct prompts in draw order: a uniform random subset. (Taking the
        # smallest codes instead would skew the set towards small values in the last position.)
        return chosen[first.sort().values[:count]]

    def _split(self, every: Tensor, g: torch.Generator) -> tuple[Tensor, Tensor]:
        constant = (every == every[:, :1]).all(dim=-1) & self.constants_in_train
        candidates = torch.nonzero(~constant).squeeze(-1)
        num_heldout = round((1.0 - self.train_frac) * len(every))
        heldout_idx = candidates[torch.randperm(len(candidates), generator=g)[:num_heldout]]
        is_heldout = torch.zeros(len(every), dtype=torch.bool)
        is_heldout[heldout_idx] = True
        return every[~is_heldout], every[is_heldout]

    def sample_prompts(self, B: int, generator: torch.Generator) -> Tensor:
        """B training prompts, never a held-out one. (B, n)."""
        if self.train is not None:
            K = len(self.train)
            # Without replacement when the set is large enough (the lecture uses all 3 each step).
            idx = torch.randperm(K, generator=generator)[:B] if B <= K else \
                torch.randint(0, K, (B,), generator=generator)
            return self.train[idx]
        prompts = random_prompts(B, self.n, self.V, self.repeats, generator)
        clash = torch.isin(encode(prompts, self.V), self._heldout_codes)
        while clash.any():
            redraw = random_prompts(int(clash.sum()), self.n, self.V, self.repeats, generator)
            prompts[clash] = redraw
            clash = torch.isin(encode(prompts, self.V), self._heldout_codes)
        return prompts

    correctness = "exact_match"

    def rewards(self, prompts: Tensor, responses: Tensor, name: str | None = None) -> Tensor:
        """Reward of each response. (B, n), (B, G, n) -> (B, G)."""
        return REWARDS[name or self.reward](prompts, responses)

    def at_step(self, step: int, steps: int) -> None:
        """The Task protocol's step hook: the toy's rewards do not depend on the step."""

    def score_rollout(self, prompts: Tensor, rollout) -> tuple[Tensor, dict[str, Tensor]]:
        """Training reward (B, G) and every reward of the seed, for logging."""
        table = {name: fn(prompts, rollout.responses) for name, fn in REWARDS.items()}
        return table[self.reward], table

    def correct(self, table: dict[str, Tensor]) -> Tensor:
        return table["exact_match"]

    @property
    def response_length(self) -> int:
        return self.n

    def evaluate(self, policy, generator: torch.Generator, num_samples: int, group_size: int,
                 max_examples: int | None = None, num_logged: int = 0
                 ) -> tuple[dict[str, float], list[dict]]:
        """The Task protocol's evaluation: every held-out prompt (max_examples and num_logged
        do not apply: there is no text to log), pass@k with k = num_samples or the group size."""
        return evaluate_sort(self, policy, num_samples or group_size, generator), []


def _unique_rows(codes: Tensor) -> tuple[Tensor, Tensor]:
    """Unique codes and the index of each one's first occurrence."""
    uniq, inverse = torch.unique(codes, return_inverse=True)
    first = torch.full((len(uniq),), len(codes), dtype=torch.long)
    first.scatter_reduce_(0, inverse, torch.arange(len(codes)), reduce="amin")
    return uniq, first


@torch.no_grad()
def evaluate_sort(task: SortTask, policy, num_samples: int, generator: torch.Generator,
                  batch_size: int = 4096) -> dict[str, float]:
    """Held-out evaluation: greedy exact match, mean greedy reward per reward function, and
    pass@G (some of G sampled responses is exactly right). Also greedy exact match on the
    training prompts when the training set is finite (T1, the lecture preset)."""
    sums: dict[str, float] = {}
    for chunk in task.heldout.split(batch_size):
        greedy = policy.sample(chunk, 1, temperature=0.0).responses  # (b, 1, n)
        sampled = policy.sample(chunk, num_samples, generator=generator).responses  # (b, G, n)
        parts = {f"eval/reward_{name}": fn(chunk, greedy).sum() for name, fn in REWARDS.items()}
        parts["eval/reward"] = task.rewards(chunk, greedy).sum()
        parts[f"eval/pass_at_{num_samples}"] = exact_match(chunk, sampled).amax(dim=-1).sum()
        for key, value in parts.items():
            sums[key] = sums.get(key, 0.0) + float(value)
    metrics = {key: value / len(task.heldout) for key, value in sums.items()}
    metrics["eval/exact_match"] = metrics["eval/reward_exact_match"]
    if task.train is not None:
        greedy = policy.sample(task.train, 1, temperature=0.0).responses
        metrics["eval/train_exact_match"] = float(exact_match(task.train, greedy).mean())
    return metrics


HELDOUT_DEFAULT = 2000  # held-out prompts of prompts=random when heldout_size is not given


def check_numbers(t) -> None:
    """n and V of the sort tasks: a prompt of n numbers below V must exist, and be sortable."""
    if t.n < 2 or t.V < 2:
        raise ConfigError(f"task.n={t.n}, task.V={t.V}: sorting needs n >= 2 and V >= 2")
    if not t.repeats and t.n > t.V:
        raise ConfigError(f"task.n={t.n} > task.V={t.V} without repeats: there are not n distinct "
                          "numbers; lower n, raise V or set repeats")


def check_heldout(t, held: int) -> None:
    total = num_prompts(t.n, t.V, t.repeats)
    if not 0 < held <= total // 2:
        raise ConfigError(f"task.heldout_size={held} must be in 1..{total // 2} (half of "
                          f"the {total} prompts of n={t.n}, V={t.V}); lower it or use prompts=all")


def _check(t, default) -> None:
    _choice_of("reward", t.reward, REWARDS)
    _choice_of("prompts", t.prompts, PROMPT_SETS)
    check_numbers(t)
    if t.prompts == "random":
        check_heldout(t, t.heldout_size if t.heldout_size is not None else HELDOUT_DEFAULT)
    if t.prompts == "lecture" and (t.n, t.V) != (3, 5):
        raise ConfigError("task.prompts=lecture is the lecture's n=3, V=5 set; set n=3 and V=5")
    if not 0.0 < t.train_frac < 1.0:
        raise ConfigError(f"task.train_frac={t.train_frac} must be in (0, 1)")
    reject_unused(t, default, t.prompts != "all", ("train_frac", "constants_in_train"),
                  "only prompts=all splits a prompt set")
    reject_unused(t, default, t.prompts != "random", ("heldout_size",),
                  "only prompts=random draws a held-out set")


def _choice_of(name: str, value: str, valid) -> None:
    if value not in valid:
        raise ConfigError(f"task.{name}={value!r} is unknown; valid: {', '.join(valid)}")


def _build(t) -> SortTask:
    return SortTask(n=t.n, V=t.V, repeats=t.repeats, prompts=t.prompts, train_frac=t.train_frac,
                    heldout_size=t.heldout_size or HELDOUT_DEFAULT,
                    constants_in_train=t.constants_in_train, split_seed=t.split_seed,
                    reward=t.reward)


SPEC = TaskSpec(
    name="sort", help="the seed's toy task: n numbers below V as a tensor -> them sorted",
    build=_build, text=False, check=_check,
    fields=("n", "V", "repeats", "prompts", "train_frac", "constants_in_train", "heldout_size",
            "split_seed", "reward"),
    describe=lambda t: f"task: sort n={t.n} V={t.V} prompts={t.prompts} reward={t.reward}")
