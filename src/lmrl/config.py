"""One typed, frozen config, grouped by concern. Field docstrings are the CLI's --help text.

Contradictory or invalid settings fail when the config is built (`Config.__post_init__`), with a
message that names the field and the fix.
"""

import dataclasses
import json
from dataclasses import dataclass, field

from lmrl.deltas import DELTAS, GROUP_BASELINE
from lmrl.losses import AGGREGATIONS, KL_ESTIMATORS, LOSSES
from lmrl.policies.toy import INITS
from lmrl.tasks.sort import PROMPT_SETS, REWARDS, num_prompts

TASKS = ("sort",)
MODELS = ("toy",)
SCHEDULES = ("constant", "cosine", "linear")
LOGGERS = ("jsonl", "tensorboard")


class ConfigError(ValueError):
    """A setting that cannot work, with the change that fixes it."""


def _choice(group: str, name: str, value: str, valid) -> None:
    if value not in valid:
        raise ConfigError(f"{group}.{name}={value!r} is unknown; valid: {', '.join(valid)}")


@dataclass(frozen=True)
class TaskConfig:
    task: str = "sort"
    """Task to train on. Valid: sort."""
    n: int = 6
    """Numbers per prompt (also the response length P)."""
    V: int = 10
    """Vocabulary size: numbers are 0..V-1."""
    repeats: bool = True
    """Allow repeated numbers in a prompt (without repeats n <= V is required)."""
    prompts: str = "random"
    """Prompt set. random: fresh prompts each step, a fixed held-out set excluded; all: every
    prompt, split train/held-out; lecture: the lecture's 3 prompts (n=3, V=5)."""
    train_frac: float = 0.6
    """Fraction of prompts used for training when prompts=all."""
    heldout_size: int = 2000
    """Number of held-out prompts when prompts=random."""
    constants_in_train: bool = True
    """Keep the constant prompts (0,0,..), (1,1,..) in the training split (prompts=all)."""
    split_seed: int = 0
    """Seed of the train/held-out split (independent of the training seed)."""
    reward: str = "positional"
    """Training reward. Valid: exact_match, positional, inclusion_adjacency,
    inclusion_adjacency_multiset."""


@dataclass(frozen=True)
class PolicyConfig:
    model: str = "toy"
    """Policy model. Valid: toy (the seed's non-autoregressive sorting model)."""
    dim: int = 32
    """Embedding dimension d."""
    hidden: int = 256
    """Width of the hidden ReLU layer between encode and decode; 0 = the lecture's linear model."""
    init: str = "scaled"
    """Initialisation. lecture: E ~ N(0,1), W ~ N(0,1)/sqrt(d); scaled: those times init_scale."""
    init_scale: float = 0.5
    """Multiplier of every weight when init=scaled (logits shrink by its 4th/5th power)."""
    symmetric_init: bool = True
    """Start all prompt positions' encode matrices equal (the policy starts order-invariant)."""


@dataclass(frozen=True)
class AlgoConfig:
    delta: str = "normalized"
    """How rewards become Δ. Valid: raw, centered, normalized, max_only, rloo."""
    norm_eps: float = 1e-6
    """eps in normalized deltas (R - mean) / (std + eps)."""
    loss: str = "clipped"
    """Policy loss. Valid: naive (-Δ log π), unclipped (-rΔ), clipped (-min(rΔ, clip(r)Δ))."""
    clip_eps: float = 0.2
    """Clip range ε: r is clipped to [1-ε, 1+ε]."""
    clip_eps_low: float | None = None
    """Separate lower ε (defaults to clip_eps)."""
    clip_eps_high: float | None = None
    """Separate upper ε (defaults to clip_eps)."""
    ratio_level: str = "token"
    """Importance ratio per token (GRPO) or per response (the seed's π(A|S)/π_old(A|S)).
    Valid: token, sequence."""
    kl_weight: float = 0.1
    """λ in L = L_pg + λ·KL(π || π_ref); 0 disables the reference policy entirely."""
    kl_estimator: str | None = None
    """Per-token KL estimator (default k3 when kl_weight > 0). Valid: k1, k2, k3."""
    ref_refresh: int = 0
    """Copy the policy into the reference every M steps; 0 = never (KL to the initial policy)."""
    mu: int = 1
    """Gradient steps on each sampled batch (μ); logp_old is stored once per batch."""
    aggregation: str = "token_mean"
    """Loss reduction. Valid: token_mean, sequence_mean, constant."""

    @property
    def eps_low(self) -> float:
        return self.clip_eps if self.clip_eps_low is None else self.clip_eps_low

    @property
    def eps_high(self) -> float:
        return self.clip_eps if self.clip_eps_high is None else self.clip_eps_high

    @property
    def estimator(self) -> str:
        return self.kl_estimator or "k3"


@dataclass(frozen=True)
class TrainConfig:
    B: int = 32
    """Prompts per step."""
    G: int = 16
    """Samples per prompt (the group)."""
    lr: float = 3e-3
    """Peak learning rate (Adam)."""
    schedule: str = "cosine"
    """Learning-rate schedule after warm-up. Valid: constant, cosine, linear."""
    min_lr_frac: float = 0.05
    """Final learning rate as a fraction of lr (cosine, linear)."""
    warmup_steps: int = 0
    """Linear warm-up steps."""
    weight_decay: float = 0.0
    """AdamW weight decay."""
    grad_clip: float = 1.0
    """Clip the gradient norm to this value; 0 disables."""
    grad_accum: int = 1
    """Split each step's prompts into this many micro-batches (same objective, less memory)."""
    steps: int = 3000
    """Training steps (one step = sample, score, μ updates)."""
    time_limit: float = 0.0
    """Stop after this many seconds of training (0 = no limit); the final evaluation still runs."""
    seed: int = 0
    """Seed of initialisation, prompt sampling and response sampling."""
    threads: int = 0
    """torch intra-op threads; 0 = auto (1 for the toy model, whose ops are too small to split)."""


@dataclass(frozen=True)
class LogConfig:
    run_dir: str | None = None
    """Run directory (default runs/<timestamp>)."""
    overwrite: bool = False
    """Allow writing into an existing run directory."""
    eval_every: int = 250
    """Evaluate on held-out prompts every k steps (and at the end)."""
    eval_samples: int = 0
    """Samples per held-out prompt for pass@G (0 = G)."""
    logger: str = "jsonl"
    """jsonl (always written) or tensorboard (also writes TensorBoard events)."""
    progress: bool = True
    """Show a progress bar."""
    save_every: int = 0
    """Write a resumable checkpoint every k steps (0 = only at the end)."""
    resume: bool = False
    """Resume from run_dir/checkpoint.pt."""


@dataclass(frozen=True)
class Config:
    task: TaskConfig = field(default_factory=TaskConfig)
    policy: PolicyConfig = field(default_factory=PolicyConfig)
    algo: AlgoConfig = field(default_factory=AlgoConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    log: LogConfig = field(default_factory=LogConfig)

    def __post_init__(self) -> None:
        validate(self)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "Config":
        unknown = set(d) - set(_GROUPS)
        if unknown:
            raise ConfigError(f"unknown config groups {sorted(unknown)}; "
                              f"valid: {', '.join(_GROUPS)}")
        built = {}
        for group, values in d.items():
            names = {f.name for f in dataclasses.fields(_GROUPS[group])}
            if set(values) - names:
                raise ConfigError(f"unknown {group} fields {sorted(set(values) - names)}")
            built[group] = _GROUPS[group](**values)
        return cls(**built)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    def replace(self, **groups: dict) -> "Config":
        """Copy with some fields changed: cfg.replace(algo={"delta": "raw"})."""
        return dataclasses.replace(self, **{
            g: dataclasses.replace(getattr(self, g), **changes) for g, changes in groups.items()
        })


_GROUPS = {"task": TaskConfig, "policy": PolicyConfig, "algo": AlgoConfig,
           "train": TrainConfig, "log": LogConfig}


def _reject_ignored(cfg: Config) -> None:
    """A setting that the rest of the config makes irrelevant must stay at its default, so that no
    flag is silently ignored (one setting decides one thing)."""
    t, p, a, tr = cfg.task, cfg.policy, cfg.algo, cfg.train
    rules = [
        (a.loss != "clipped", "algo", ("clip_eps", "clip_eps_low", "clip_eps_high"),
         "only loss=clipped clips"),
        (a.loss == "naive", "algo", ("ratio_level",), "loss=naive has no importance ratio"),
        (a.delta != "normalized", "algo", ("norm_eps",), "only delta=normalized divides by std"),
        (p.init != "scaled", "policy", ("init_scale",), "only init=scaled scales the weights"),
        (t.prompts != "all", "task", ("train_frac", "constants_in_train"),
         "only prompts=all splits a prompt set"),
        (t.prompts != "random", "task", ("heldout_size",),
         "only prompts=random draws a held-out set"),
        (tr.schedule == "constant", "train", ("min_lr_frac",), "a constant schedule never decays"),
    ]
    defaults = {"task": TaskConfig(), "policy": PolicyConfig(), "algo": AlgoConfig(),
                "train": TrainConfig()}
    for applies, group, names, why in rules:
        for name in names if applies else ():
            value, default = getattr(getattr(cfg, group), name), getattr(defaults[group], name)
            if value != default:
                raise ConfigError(f"{group}.{name}={value!r} has no effect here ({why}); "
                                  f"drop it or change the setting that disables it")


def validate(cfg: Config) -> None:
    t, p, a, tr, lg = cfg.task, cfg.policy, cfg.algo, cfg.train, cfg.log
    _choice("task", "task", t.task, TASKS)
    _choice("task", "reward", t.reward, REWARDS)
    _choice("task", "prompts", t.prompts, PROMPT_SETS)
    _choice("policy", "model", p.model, MODELS)
    _choice("policy", "init", p.init, INITS)
    _choice("algo", "delta", a.delta, DELTAS)
    _choice("algo", "loss", a.loss, LOSSES)
    _choice("algo", "ratio_level", a.ratio_level, ("token", "sequence"))
    _choice("algo", "aggregation", a.aggregation, AGGREGATIONS)
    if a.kl_estimator is not None:
        _choice("algo", "kl_estimator", a.kl_estimator, KL_ESTIMATORS)
    _choice("train", "schedule", tr.schedule, SCHEDULES)
    _choice("log", "logger", lg.logger, LOGGERS)
    if t.n < 2 or t.V < 2:
        raise ConfigError(f"task.n={t.n}, task.V={t.V}: sorting needs n >= 2 and V >= 2")
    if not t.repeats and t.n > t.V:
        raise ConfigError(f"task.n={t.n} > task.V={t.V} without repeats: there are not n distinct "
                          "numbers; lower n, raise V or set repeats")
    total = num_prompts(t.n, t.V, t.repeats)
    if t.prompts == "random" and not 0 < t.heldout_size <= total // 2:
        raise ConfigError(f"task.heldout_size={t.heldout_size} must be in 1..{total // 2} (half of "
                          f"the {total} prompts of n={t.n}, V={t.V}); lower it or use prompts=all")
    if t.prompts == "lecture" and (t.n, t.V) != (3, 5):
        raise ConfigError("task.prompts=lecture is the lecture's n=3, V=5 set; set n=3 and V=5")
    if not 0.0 < t.train_frac < 1.0:
        raise ConfigError(f"task.train_frac={t.train_frac} must be in (0, 1)")
    if tr.G < 2 and a.delta in GROUP_BASELINE:
        raise ConfigError(f"train.G={tr.G} with delta={a.delta!r}: a group baseline needs G >= 2 "
                          "samples per prompt; raise G or use delta=raw")
    if a.loss == "clipped" and min(a.eps_low, a.eps_high) <= 0:
        raise ConfigError(f"clip ε must be > 0 (got low={a.eps_low}, high={a.eps_high}); "
                          "to remove clipping use loss=unclipped")
    if a.kl_weight < 0:
        raise ConfigError(f"algo.kl_weight={a.kl_weight} must be >= 0")
    if a.kl_estimator is not None and a.kl_weight == 0:
        raise ConfigError(f"algo.kl_estimator={a.kl_estimator!r} has no effect with kl_weight=0; "
                          "set kl_weight > 0 or drop kl_estimator")
    if a.ref_refresh < 0 or (a.ref_refresh > 0 and a.kl_weight == 0):
        raise ConfigError(f"algo.ref_refresh={a.ref_refresh} needs kl_weight > 0 (the reference "
                          "policy exists only for the KL term) and must be >= 0")
    if a.mu < 1:
        raise ConfigError(f"algo.mu={a.mu} must be >= 1")
    if a.norm_eps < 0:
        raise ConfigError(f"algo.norm_eps={a.norm_eps} must be >= 0")
    positive = {"train.B": tr.B, "train.G": tr.G, "train.steps": tr.steps,
                "train.grad_accum": tr.grad_accum, "log.eval_every": lg.eval_every}
    for name, value in positive.items():
        if value < 1:
            raise ConfigError(f"{name}={value} must be >= 1")
    if tr.lr <= 0:
        raise ConfigError(f"train.lr={tr.lr} must be > 0")
    if lg.resume and lg.overwrite:
        raise ConfigError("log.resume and log.overwrite contradict each other; pass one of them")
    _reject_ignored(cfg)
    if tr.B % tr.grad_accum:
        raise ConfigError(f"train.B={tr.B} is not divisible by train.grad_accum={tr.grad_accum}")


def describe(cfg: Config) -> str:
    """Derived behaviour, printed once at start."""
    a = cfg.algo
    if a.kl_weight > 0:
        refresh = f"refreshed every {a.ref_refresh} steps" if a.ref_refresh else "never refreshed"
        ref = f"on (λ={a.kl_weight}, {a.estimator}), {refresh}"
    else:
        ref = "off (kl_weight=0: no reference model is built)"
    if a.mu > 1 and a.loss == "naive":
        old_note = f"; note: loss=naive with μ={a.mu} reuses stale samples with no ratio correction"
    else:
        old_note = ""
    old = ("logp_old = detached current log-probs (μ=1: ratio is 1, no extra pass)" if a.mu == 1
           else f"logp_old stored from the first of μ={a.mu} passes (no model copy)")
    return "\n".join([
        f"task: sort n={cfg.task.n} V={cfg.task.V} prompts={cfg.task.prompts} "
        f"reward={cfg.task.reward}",
        f"policy: {cfg.policy.model} dim={cfg.policy.dim} hidden={cfg.policy.hidden} "
        f"init={cfg.policy.init}",
        f"delta: {a.delta}; loss: {a.loss} (ε={a.eps_low}/{a.eps_high}, ratio per {a.ratio_level}"
        f"); aggregation: {a.aggregation}",
        f"reference policy: {ref}",
        f"old policy: {old}{old_note}",
        f"batch: B={cfg.train.B} prompts × G={cfg.train.G} samples, {cfg.train.steps} steps, "
        f"lr={cfg.train.lr} ({cfg.train.schedule})",
    ])
