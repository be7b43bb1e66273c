"""A learned reward model as one of a text task's rewards (--reward-model DIR[=weight]).

The model is a transformers AutoModelForSequenceClassification with one label (`lmrl rm train`
writes one; so does TRL's RewardTrainer). It scores the text a reward function would see, as
TRL's GRPOTrainer does: a string prompt + its completion, or, for conversational data, the
prompt's messages plus the completion as the assistant's, rendered by the reward model's own
chat template. Scoring runs without gradients, in micro-batches of `batch_size` texts (the
memory bound), on its own device; the score is logits[:, 0].

Normalisation (NORMS) puts the score on a scale that combines with other rewards: `running`
standardises by the mean and std of every training score seen so far (kept in checkpoints: the
training state holds the same RunningStats, state.py), `group` within each prompt's G samples. Only
training batches move the running statistics (RewardContext.training): evaluation and the
pre-flight check read them. Each torchrun rank scores its own samples; under `running` the
ranks pool their batch's moments, so every rank normalises alike.
"""

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor

from lmrl.errors import ConfigError, RewardError


def no_norm(scores: Tensor, G: int, stats: "RunningStats") -> Tensor:
    return scores


def group_norm(scores: Tensor, G: int, stats: "RunningStats") -> Tensor:
    """(score - its group's mean) / (the group's std + 1e-6), groups of G consecutive rows; a
    group of one (greedy evaluation) is 0. Shapes: (N,) -> (N,), N = B*G."""
    groups = scores.reshape(-1, G)
    std = groups.std(dim=-1, keepdim=True, unbiased=False)
    return ((groups - groups.mean(dim=-1, keepdim=True)) / (std + 1e-6)).reshape(-1)


def running_norm(scores: Tensor, G: int, stats: "RunningStats") -> Tensor:
    """(score - running mean) / (running std + 1e-6), the statistics as they stand (the caller
    adds a training batch to them first); the raw score while there are none (an evaluation
    or the pre-flight check before the first step)."""
    if stats.count == 0:
        return scores
    return (scores - stats.mean) / (stats.std + 1e-6)


@dataclass(frozen=True)
class Norm:
    fn: Callable[[Tensor, int, "RunningStats"], Tensor]  # scores (N,), G, stats -> (N,)
    help: str


NORMS = {
    "none": Norm(no_norm, "the raw score"),
    "running": Norm(running_norm, "standardised by the mean and std of all training scores so "
                    "far, kept in checkpoints"),
    "group": Norm(group_norm, "standardised within each prompt's G samples"),
}


@dataclass
class RunningStats:
    """Mean and variance of every score added (Chan et al.'s parallel update: exact, however
    the scores arrive in batches)."""

    count: float = 0.0
    mean: float = 0.0
    m2: float = 0.0  # sum of squared deviations from the mean

    @property
    def std(self) -> float:
        return math.sqrt(self.m2 / self.count) if self.count else 0.0

    def add(self, count: float, total: float, squares: float) -> None:
        """Add a batch given by its moments: count, Σx, Σx² (what ranks can all-reduce)."""
        if count == 0:
            return
        mean = total / count
        m2 = max(squares - count * mean * mean, 0.0)
        delta, n = mean - self.mean, self.count + count
        self.m2 += m2 + delta * delta * self.count * count / n
        self.mean += delta * count / n
        self.count = n


@dataclass
class RewardModel:
    """The RewardSource protocol (tasks/registry.py) around a sequence-classification model."""

    name: str
    model: object  # a transformers PreTrainedModel, num_labels == 1, in eval mode
    tokenizer: object
    weight: float = 1.0
    batch_size: int = 64
    norm: str = "none"
    stats: RunningStats = field(default_factory=RunningStats)
    trl = False  # it never returns None: every sample is scored

    def texts(self, prompts: list, completions: list[str]) -> list[str]:
        """What the model reads: prompt + completion, or a conversation rendered by its chat
        template."""
        if not prompts or not isinstance(prompts[0], list):
            return [str(p) + c for p, c in zip(prompts, completions, strict=True)]
        if not getattr(self.tokenizer, "chat_template", None):
            raise RewardError(f"reward model {self.name!r}: the prompts are chat messages, but "
                              "its tokenizer has no chat template to render them")
        return [self.tokenizer.apply_chat_template(p + [{"role": "assistant", "content": c}],
                                                   tokenize=False)
                for p, c in zip(prompts, completions, strict=True)]

    def raw_scores(self, texts: list[str]) -> Tensor:
        """logits[:, 0] per text, batch_size texts per forward pass, tokenized as `lmrl rm
        train` tokenized its pairs (rm.model.score_texts). (N,) float64 on the CPU."""
        from lmrl.rm.model import score_texts

        return score_texts(self.model, self.tokenizer, texts, self.batch_size).double()

    def score(self, prompts: list, completions: list[str], columns: dict[str, list],
              context=None) -> list[float]:
        scores = self.raw_scores(self.texts(prompts, completions))
        bad = (~torch.isfinite(scores)).nonzero()
        if len(bad):
            i = int(bad[0])
            raise RewardError(f"reward model {self.name!r} scored sample {i} "
                              f"{scores[i].item()} (prompt={str(prompts[i])[:200]!r}); check "
                              "its weights and --reward-model-device")
        if self.norm == "running" and getattr(context, "training", False):
            self.stats.add(*pooled_moments(scores))
        G = getattr(context, "group_size", 1) or 1
        return NORMS[self.norm].fn(scores, G, self.stats).tolist()


def pooled_moments(scores: Tensor) -> list[float]:
    """count, Σx, Σx² of this batch, summed over torchrun's ranks (each scored its share)."""
    from lmrl import distributed

    moments = [float(len(scores)), float(scores.sum()), float((scores * scores).sum())]
    return distributed.all_reduce(moments) if distributed.world() > 1 else moments


def parse_spec(spec: str) -> tuple[str, float]:
    """'DIR[=weight]' -> (DIR, weight); a directory name may itself hold '=', so only a
    finite number after the last one is a weight."""
    path, _, text = spec.rpartition("=")
    if path:
        try:
            weight = float(text)
        except ValueError:
            return spec, 1.0
        if not math.isfinite(weight):
            raise ConfigError(f"reward model {spec!r}: weight {text!r} is not finite")
        return path, weight
    return spec, 1.0


def resolve_device(device: str, policy_device: str = "auto") -> str:
    """auto: the policy's device (its own auto: cuda when available, else the CPU)."""
    if device != "auto":
        return device
    if policy_device != "auto":
        return policy_device
    return "cuda" if torch.cuda.is_available() else "cpu"


def load_reward_model(spec: str, device: str = "cpu", batch_size: int = 64,
                      norm: str = "none", name: str = "rm") -> RewardModel:
    """'DIR[=weight]' -> RewardModel; a directory that is not a one-label sequence
    classifier is a ConfigError with the fix (never a random head on a causal LM)."""
    path, weight = parse_spec(spec)
    if not (Path(path) / "config.json").is_file():
        raise ConfigError(f"--reward-model {path}: no such model directory (config.json "
                          "missing); give a directory written by `lmrl rm train` or "
                          "save_pretrained of an AutoModelForSequenceClassification")
    from transformers import AutoConfig

    from lmrl.policies.loading import load_errors
    from lmrl.rm.model import load_backbone, load_tokenizer

    with load_errors(path, "its config (config.json)"):
        config = AutoConfig.from_pretrained(path, local_files_only=True)
    check_reward_head(path, config)
    # lmrl rm train's loaders: the same tokenizer set-up (EOS pads) and float32 weights, with
    # config.pad_token_id set so the head reads each row's last real token.
    tokenizer = load_tokenizer(path)
    model, new = load_backbone(path, tokenizer)
    if new:
        raise ConfigError(f"--reward-model {path}: the checkpoint lacks {', '.join(new)}, so "
                          "those weights would be random; give a complete reward model")
    return RewardModel(name, model.to(device).eval(), tokenizer, weight, batch_size, norm)


def check_reward_head(path: str, config) -> None:
    """A one-label sequence classifier; anything else would get a random head from
    AutoModelForSequenceClassification and score noise without a word."""
    kinds = config.architectures or []
    if not any(k.endswith("ForSequenceClassification") for k in kinds):
        what = " / ".join(kinds) or "a model of unknown architecture"
        raise ConfigError(f"--reward-model {path} is {what}, not a reward model: it needs a "
                          "sequence-"
                          "classification head with num_labels=1 (`lmrl rm train` writes one, as "
                          "does TRL's RewardTrainer)")
    if config.num_labels != 1:
        raise ConfigError(f"--reward-model {path} is a classifier with {config.num_labels} "
                          "labels; a reward model has one (num_labels=1), its score")


def reward_model_names(specs: tuple[str, ...]) -> list[str]:
    """rm for one model; rm_<directory name> for each of several (numbered if those clash)."""
    if len(specs) == 1:
        return ["rm"]
    names = []
    for spec in specs:
        base = "rm_" + "".join(ch if ch.isalnum() else "_"
                               for ch in Path(parse_spec(spec)[0]).resolve().name)
        name, k = base, 1
        while name in names:
            k += 1
            name = f"{base}_{k}"
        names.append(name)
    return names


def load_reward_models(t, policy_device: str = "auto") -> list[RewardModel]:
    """The task config's --reward-model entries, loaded."""
    device = resolve_device(t.reward_model_device, policy_device)
    return [load_reward_model(spec, device, t.reward_model_batch_size, t.reward_model_norm, name)
            for spec, name in zip(t.reward_model, reward_model_names(t.reward_model),
                                  strict=True)]
