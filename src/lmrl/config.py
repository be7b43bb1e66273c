"""One typed, frozen config, grouped by concern. Field docstrings are the CLI's --help text.

Contradictory or invalid settings fail when the config is built (`Config.__post_init__`), with a
message that names the field and the fix.
"""

import dataclasses
import json
import math
from dataclasses import dataclass, field
from typing import Annotated

import torch
import tyro

from lmrl.baselines import BASELINES
from lmrl.critic import CRITICS
from lmrl.deltas import DELTAS, GROUP_BASELINE
from lmrl.errors import ConfigError  # noqa: F401  (re-exported)
from lmrl.logging import LOGGERS, sink_names
from lmrl.losses import AGGREGATIONS, KL_ESTIMATORS, LOSSES, RATIO_LEVELS
from lmrl.optim import SCHEDULES
from lmrl.policies.lean import FORWARDS  # policy.forward's choices
from lmrl.policies.toy import INITS
from lmrl.tasks import TASKS as TASK_SPECS
from lmrl.tasks.reward_model import NORMS as RM_NORMS
from lmrl.tasks.sort import REWARDS as SORT_REWARDS

TASKS = tuple(TASK_SPECS)  # the task registry (lmrl/tasks/__init__.py) names them
TEXT_TASKS = tuple(name for name, spec in TASK_SPECS.items() if spec.text)
DTYPES = ("auto", "float32", "autocast", "bfloat16")
COMPILES = ("auto", "on", "off")
# Default peak learning rates. A causal LM warm-started by SFT collapses within ~20 GRPO steps
# at 1e-3 (and at 3e-4 with an exact-match-only reward); 2e-4 is robust (README, targets).
TOY_LR, LM_LR = 3e-3, 2e-4


def valid(text: str, registry) -> tyro.conf.arg:
    """--help text (`text`) ending in "Valid:" and the registry's own names, each with its help
    line where the entry has one: the list cannot drift from the code."""
    entries = registry.items() if isinstance(registry, dict) else ((n, None) for n in registry)
    names = [f"{n} ({e.help})" if getattr(e, "help", None) else n for n, e in entries]
    return tyro.conf.arg(help=f"{text} Valid: {', '.join(names)}.")


def _choice(group: str, name: str, value: str, valid) -> None:
    if value not in valid:
        raise ConfigError(f"{group}.{name}={value!r} is unknown; valid: {', '.join(valid)}")


@dataclass(frozen=True)
class TaskConfig:
    task: Annotated[str, valid("Task to train on (the registry: lmrl/tasks/__init__.py); all but "
                               "sort train a causal LM.", TASK_SPECS)] = "sort"
    n: int = 6
    """Numbers per prompt (sort, sort_text, reverse); numbers given (countdown)."""
    V: int = 10
    """sort, sort_text, reverse: numbers are 0..V-1. countdown: numbers are 1..V."""
    digits: int = 3
    """Digits per operand (addition, multiplication)."""
    data: str | None = None
    """Data (gsm8k: a GSM8K-format JSONL file; user: a .jsonl, .json, .csv or .parquet file, a
    datasets save_to_disk directory, or a hub dataset name)."""
    heldout_data: str | None = None
    """Held-out data file (gsm8k, user); default: heldout_size rows split off data."""
    data_config: str | None = None
    """Config (subset) of a hub dataset given as data (user)."""
    data_split: str = "train"
    """Split of data to train on: a save_to_disk DatasetDict's or a hub dataset's (user)."""
    heldout_split: str | None = None
    """A split of the same dataset to evaluate on (user), instead of heldout_data or
    heldout_size rows split off data."""
    prompt_column: str = "prompt"
    """Column holding the prompts (user): strings, or lists of {"role", "content"} messages
    (conversational data, rendered with the model's chat template)."""
    answer_column: str | None = None
    """Column holding the demonstrations for lmrl sft (user; default: completion, else
    answer)."""
    reward_fns: tuple[str, ...] = ()
    """Extra reward functions 'module:function[=weight]' with TRL's signature
    f(prompts, completions, **columns) -> list[float]; added to a text task's own rewards (the
    user task has only these)."""
    repeats: bool = True
    """Allow repeated numbers in a prompt (without repeats n <= V is required)."""
    prompts: str = "random"
    """Prompt set. random: fresh prompts each step, a fixed held-out set excluded; all: every
    prompt, split train/held-out; lecture: the lecture's 3 prompts (n=3, V=5)."""
    train_frac: float = 0.6
    """Fraction of prompts used for training when prompts=all."""
    heldout_size: int | None = None
    """Held-out prompts (sort with prompts=random: default 2000; text tasks: held-out examples,
    default the task's own: 500, gsm8k and user 200)."""
    constants_in_train: bool = True
    """Keep the constant prompts (0,0,..), (1,1,..) in the training split (prompts=all)."""
    split_seed: int = 0
    """Seed of the train/held-out split (independent of the training seed)."""
    reward: Annotated[str, valid("Training reward of sort / sort_text.", SORT_REWARDS)] = \
        "positional"
    reward_timeout: float = 60.0
    """Seconds one call of a user reward function (--reward-fns) may take before the run stops
    with an error naming the function and the batch (0 = no limit)."""
    reward_model: tuple[str, ...] = ()
    """Reward models 'DIR[=weight]' (a one-label AutoModelForSequenceClassification directory,
    e.g. from lmrl rm train) scoring prompt + completion; added to a text task's rewards and
    logged as train/reward_rm (several: rm_<directory name>). Held-out eval/exact_match stays
    the task's own check; eval/reward_rm is the model's held-out score."""
    reward_model_device: str = "auto"
    """Where the reward models run: cpu, cuda, cuda:N (auto: the policy's device)."""
    reward_model_batch_size: int = 64
    """Texts per reward-model forward pass (lower it to bound memory)."""
    reward_model_norm: Annotated[str, valid(
        "How a reward model's score is normalised.", RM_NORMS)] = "none"
    task_reward_weight: float = 1.0
    """Multiplies the weights of a built-in task's own rewards (not --reward-fns or
    --reward-model). 0 trains on the other rewards alone while the task's are still logged
    (train/reward_<name>, eval/exact_match): a reward model as the sole signal, judged by the
    true reward it never sees."""


@dataclass(frozen=True)
class PolicyConfig:
    model: str = "toy"
    """toy (the seed's non-autoregressive sorting model, task=sort) or a causal LM: a local
    directory (lmrl init-model / lmrl sft / save_pretrained output) or a hub name."""
    max_new_tokens: int = 0
    """Completion budget in tokens (0 = the task's own budget). Causal LMs only."""
    min_new_tokens: int = 0
    """EOS cannot be sampled before this many tokens (transformers' min_new_tokens, vLLM's
    min_tokens): fixed-length rollouts for benchmarks. Log-probs stay the policy's own, so
    with it the sampler is not exactly π (the importance ratio does not correct that)."""
    temperature: float = 1.0
    """Sampling temperature of training rollouts; log-probs use the same temperature, so the
    policy being optimised is the one that samples. Causal LMs only."""
    top_k: int = 0
    """Sample from the k most likely tokens only (0 = all). Causal LMs only."""
    top_p: float = 1.0
    """Nucleus sampling mass (1 = off). Causal LMs only."""
    stop: tuple[str, ...] = ()
    """Stop strings: a completion ends at the token that completes one (kept in the text)."""
    dtype: str = "auto"
    """auto: float32 weights, plus bfloat16 autocast on GPU; autocast: bfloat16 autocast on any
    device (fast on CPUs with AVX512-BF16/AMX); float32; bfloat16 (bfloat16 weights)."""
    device: str = "auto"
    """cpu, cuda, cuda:1, ... (auto: cuda if available). Causal LMs only."""
    trust_remote_code: bool = False
    """Pass trust_remote_code to from_pretrained (models with their own code)."""
    attn_implementation: str = "auto"
    """Attention kernel passed to transformers (sdpa, eager, ...; auto: the model's default).
    Try eager for tiny models on a CPU, sdpa to save memory on long sequences (measured in
    bench/README.md). Only used by forward=transformers."""
    forward: Annotated[str, valid(
        "Which code runs the model. lmrl: lmrl's own pass over the model's parameters, with fused "
        "q/k/v and gate/up matmuls (llama, qwen2, qwen3, mistral without sliding window); "
        "transformers: the model's own forward; auto: lmrl's on a CPU when supported.",
        FORWARDS)] = "auto"
    compile: Annotated[str, valid(
        "torch.compile lmrl's forward: one graph for a rollout's decoding steps and one per "
        "log-prob pass (forward and backward), with fused elementwise ops. Compiling costs "
        "seconds to a minute once per model shape (graphs are cached on disk, "
        "$LMRL_CACHE_DIR or ~/.cache/lmrl, so a second run of the shape starts in seconds). "
        "auto: on when lmrl's forward runs and the run is long enough to pay for it "
        "(compiling.py: shapes run before are decided at start, new ones after two eager "
        "steps); the decision is printed. --compile is on, --no-compile off.",
        COMPILES)] = "auto"
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
    lora_r: int = 0
    """LoRA rank (0 = off): train low-rank adapters through peft (pip install 'lmrl[lora]')
    instead of every weight; the reference policy is then the base model with the adapters
    off, not a copy. Causal LMs only; runs transformers' forward."""
    lora_alpha: float = 16.0
    """LoRA scaling α (the adapters' update is scaled by α/r)."""
    lora_dropout: float = 0.0
    """Dropout on the adapters' input in the update's log-prob passes (sampling, π_old's and
    the reference's log-probs stay deterministic)."""
    lora_target_modules: tuple[str, ...] = ()
    """Layers that get adapters, by name (q_proj v_proj ...); all-linear: every linear layer
    but the output head; empty: peft's default for the architecture."""

    def __post_init__(self) -> None:
        # compile was a bool before auto existed: True/False (Python, config files) mean on/off.
        if isinstance(self.compile, bool):
            object.__setattr__(self, "compile", "on" if self.compile else "off")


@dataclass(frozen=True)
class AlgoConfig:
    delta: Annotated[str, valid("How rewards become Δ (mean, std: over the prompt's group unless "
                                "the formula says batch; V(S) and the running mean are learned "
                                "baselines; the registry: lmrl/deltas.py).", DELTAS)] = \
        "normalized"
    norm_eps: float = 1e-6
    """eps in (R - mean) / (std + eps): delta normalized (group) and reinforce_pp (batch)."""
    value_lr: float = 1e-2
    """Learning rate of delta=value's value network V(S) (its own AdamW, one step on the MSE to
    the rewards per training step)."""
    baseline_decay: float = 0.0
    """delta=running_mean: 0 keeps the exact mean of every reward seen for a prompt; d in
    (0, 1) a moving average, mean <- d·mean + (1-d)·(the step's mean for the prompt)."""
    loss: Annotated[str, valid("Policy loss (the registry: lmrl/losses.py).", LOSSES)] = "clipped"
    clip_eps: float = 0.2
    """Clip range ε: r is clipped to [1-ε, 1+ε]."""
    clip_eps_low: float | None = None
    """Separate lower ε (defaults to clip_eps)."""
    clip_eps_high: float | None = None
    """Separate upper ε (defaults to clip_eps)."""
    ratio_level: Annotated[str, valid("Importance ratio per token (GRPO), per response (the "
                                      "seed's π(A|S)/π_old(A|S)), or per response as the "
                                      "geometric mean of its token ratios (GSPO).",
                                      RATIO_LEVELS)] = "token"
    kl_weight: float = 0.1
    """λ in L = L_pg + λ·KL(π || π_ref); 0 disables the reference policy entirely."""
    kl_estimator: Annotated[str | None, valid("Per-token KL estimator (default k3 when "
                                              "kl_weight > 0).", KL_ESTIMATORS)] = None
    ref_refresh: int = 0
    """Copy the policy into the reference every M steps; 0 = never (KL to the initial policy)."""
    mu: int = 1
    """Gradient steps on each sampled batch (μ); logp_old is stored once per batch."""
    aggregation: Annotated[str, valid("Loss reduction.", AGGREGATIONS)] = "token_mean"
    critic: Annotated[str, valid("PPO's learned value model (critic.py): none (Δ from --delta), "
                                 "or separate (a transformers backbone plus a linear value head, "
                                 "its own AdamW): Δ is then per-token GAE advantages. Causal LMs "
                                 "only. head: a linear value head on the policy's own backbone, "
                                 "trained with the policy by L + vf_coef·L_V.", CRITICS)] = "none"
    critic_model: str | None = None
    """The critic's backbone (AutoModel.from_pretrained): a directory or hub name sharing the
    policy's tokenizer (default: the policy's model)."""
    gamma: float = 1.0
    """Discount γ of the per-token rewards in GAE (TRL's PPOConfig.gamma)."""
    lam: float = 0.95
    """GAE's λ: 0 = one-step TD error, 1 = return minus V (TRL's PPOConfig.lam)."""
    cliprange_value: float | None = 0.2
    """PPO2's value clipping: V may move at most this far from V_old per batch (0 or None: no
    clipping; TRL's PPOConfig.cliprange_value)."""
    vf_coef: float = 0.1
    """Weight of the value loss added to the policy's with critic=head (TRL's
    PPOConfig.vf_coef)."""
    critic_lr: float | None = None
    """The separate critic's AdamW learning rate, constant (default: the policy's peak lr)."""
    critic_warmup: int = 0
    """Steps at the start during which only the separate critic trains and the policy stays
    frozen."""
    whiten_advantages: bool = True
    """Whiten the GAE advantages over the batch's response tokens (mean 0, std 1) before they
    become Δ."""
    kl_in_reward: float = 0.0
    """β of classic RLHF PPO's per-token reward -β·(log π - log π_ref) (TRL's PPOConfig.kl_coef);
    0 = off. Builds a reference policy even with kl_weight=0."""

    @property
    def eps_low(self) -> float:
        return self.clip_eps if self.clip_eps_low is None else self.clip_eps_low

    @property
    def eps_high(self) -> float:
        return self.clip_eps if self.clip_eps_high is None else self.clip_eps_high

    @property
    def estimator(self) -> str:
        return self.kl_estimator or "k3"

    @property
    def uses_reference(self) -> bool:
        """Whether a KL term (in the loss, or in PPO's reward) needs π_ref."""
        return self.kl_weight > 0 or self.kl_in_reward > 0


@dataclass(frozen=True)
class TrainConfig:
    B: int = 32
    """Prompts per step."""
    G: int = 16
    """Samples per prompt (the group)."""
    lr: float | None = None
    """Peak learning rate (AdamW); default 3e-3 for the toy model, 2e-4 for causal LMs."""
    schedule: Annotated[str, valid("Learning-rate schedule after warm-up.", SCHEDULES)] = "cosine"
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
    dynamic_sampling: bool = False
    """DAPO's dynamic sampling: drop the groups whose rewards are all equal (no gradient under a
    group baseline) and sample B more prompts until B groups are kept or max_sample_rounds
    batches were sampled; the step then trains on the kept groups (all B, or fewer)."""
    async_rollouts: bool = False
    """Sample the next step's rollouts while this step updates (a background thread and a copy
    of the policy one update behind); the ratio to the sampler's stored log-probs corrects the
    lag (train/rollout_lag). Pays when the two overlap on idle cores: async_rollouts.py."""
    max_sample_rounds: int = 3
    """With dynamic_sampling: at most this many batches of B prompts are sampled per step
    (verl's max_num_gen_batches)."""
    fsdp: bool = False
    """Shard a causal LM's weights, gradients and optimizer state over the processes (FSDP2,
    with --nproc N >= 2), and the reference policy's weights too: for models that do not fit
    one device. Runs transformers' forward (lmrl's reads whole weights); the same run as
    without it, up to float rounding."""
    steps: int = 3000
    """Training steps (one step = sample, score, μ updates)."""
    time_limit: float = 0.0
    """Stop after this many seconds of training (0 = no limit); the final evaluation still runs."""
    seed: int = 0
    """Seed of initialisation, prompt sampling and response sampling."""
    threads: int = 0
    """torch intra-op threads; 0 = auto (1 for the toy model, whose ops are too small to split)."""
    max_skipped: int = 5
    """Stop the run with an error after this many updates in a row were skipped for a
    non-finite loss or gradient (each skip is counted in train/skipped_updates)."""


@dataclass(frozen=True)
class LogConfig:
    run_dir: str | None = None
    """Run directory (default runs/<timestamp>)."""
    overwrite: bool = False
    """Allow writing into an existing run directory."""
    eval_every: int = 250
    """Evaluate on held-out prompts every k steps (and at the end)."""
    eval_samples: int = 0
    """Samples per held-out prompt for pass@k (sort: 0 = G; text tasks: 0 = no pass@k)."""
    eval_limit: int = 0
    """Evaluate on at most this many held-out examples (0 = all). Text tasks only."""
    log_samples: int = 4
    """Held-out completions written to samples.jsonl and printed at each evaluation."""
    logger: Annotated[str, valid("Metrics sinks, several joined by commas (tensorboard,wandb); "
                                 "metrics.jsonl is always written.", LOGGERS)] = "jsonl"
    progress: bool = True
    """Show a progress bar."""
    save_every: int = 500
    """Write a resumable checkpoint every k steps (0 = not by step count)."""
    save_minutes: float = 5.0
    """Also write one when this many minutes of training passed since the last (0 = not by
    time). A checkpoint is also written at the end, on SIGTERM/SIGINT and on an error."""
    keep_checkpoints: int = 2
    """Keep this many of the newest checkpoints (checkpoints/step-N/); older ones are removed."""
    resume: bool = False
    """Resume from the newest checkpoint in run_dir/checkpoints/ (the run's config.json is the
    default config; flags given change it where resuming allows)."""
    preflight: bool = True
    """Before training, sample one batch (step 1's) and report truncation, flat groups, each
    reward function's mean and spread and completion length, warning when the run cannot learn
    (every group flat, most completions truncated, a reward function constant). --no-preflight
    skips it; it never changes the run."""
    warn_after: int = 20
    """Give the pre-flight's warnings during training when a condition holds for this many steps
    in a row (0 = never)."""


@dataclass(frozen=True)
class Config:
    task: TaskConfig = field(default_factory=TaskConfig)
    policy: PolicyConfig = field(default_factory=PolicyConfig)
    algo: AlgoConfig = field(default_factory=AlgoConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    log: LogConfig = field(default_factory=LogConfig)

    def __post_init__(self) -> None:
        validate(self)

    @property
    def is_toy(self) -> bool:
        return self.policy.model == "toy"

    @property
    def lr(self) -> float:
        """The peak learning rate in force (train.lr, or the model kind's default)."""
        if self.train.lr is not None:
            return self.train.lr
        return TOY_LR if self.is_toy else LM_LR

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
            # JSON has no tuples: stop strings and reward_fns come back as lists.
            values = {k: tuple(v) if isinstance(v, list) else v for k, v in values.items()}
            built[group] = _GROUPS[group](**values)
        return cls(**built)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    @classmethod
    def from_file(cls, path, base: "Config | None" = None) -> "Config":
        """A YAML/TOML/JSON file by the flags' names (lmrl train --config) on top of `base`
        (default: the defaults); see config_files.py."""
        from lmrl.config_files import load

        loaded = load(cls, path, base)  # unchecked: built and validated here, as a whole
        return cls(**{group: getattr(loaded, group) for group in _GROUPS})

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
    spec = TASK_SPECS[t.task]
    loss_spec, delta_spec = LOSSES[a.loss], DELTAS[a.delta]
    clipping = "/".join(name for name, s in LOSSES.items() if s.clips)
    reading_eps = "/".join(name for name, s in DELTAS.items() if s.reads_eps)
    rules = [
        (not loss_spec.clips, "algo", ("clip_eps", "clip_eps_low", "clip_eps_high"),
         f"only loss={clipping} clips"),
        (not loss_spec.uses_ratio, "algo", ("ratio_level",),
         f"loss={a.loss} has no importance ratio"),
        (not delta_spec.reads_eps or a.critic != "none", "algo", ("norm_eps",),
         f"only delta={reading_eps} divides by std, and with a critic Δ are GAE advantages"),
        (a.critic == "none", "algo", CRITIC_FIELDS, "critic=none: there is no value model"),
        (a.critic == "separate", "algo", ("vf_coef",),
         "the separate critic has its own optimizer (critic_lr); vf_coef weighs critic=head's "
         "value loss"),
        (a.critic == "head", "algo", ("critic_model", "critic_lr"),
         "critic=head is a value head on the policy's own backbone, trained by its optimizer"),
        (a.critic != "none", "algo", ("delta",),
         f"with critic={a.critic} Δ are the critic's GAE advantages, not a function of rewards"),
        *[(a.delta != name, "algo", baseline.reads, f"only delta={name} reads it")
          for name, baseline in BASELINES.items()],
        (p.init != "scaled", "policy", ("init_scale",), "only init=scaled scales the weights"),
        (tr.schedule == "constant", "train", ("min_lr_frac",), "a constant schedule never decays"),
        (not tr.dynamic_sampling, "train", ("max_sample_rounds",),
         "only dynamic_sampling samples more than one batch per step"),
        (not cfg.is_toy, "policy", ("dim", "hidden", "init", "init_scale", "symmetric_init"),
         "they shape the toy model, and model is a causal LM"),
        (cfg.is_toy, "policy", ("max_new_tokens", "min_new_tokens", "temperature", "top_k",
                                "top_p", "stop", "dtype", "device", "trust_remote_code",
                                "attn_implementation", "forward", "compile", "lora_r"),
         "they configure a causal LM, and model=toy"),
        (p.lora_r == 0, "policy", ("lora_alpha", "lora_dropout", "lora_target_modules"),
         "LoRA is off: lora_r=0"),
        (not t.reward_fns, "task", ("reward_timeout",),
         "only user reward functions (reward_fns) run under a timeout"),
        (not t.reward_model, "task", ("reward_model_device", "reward_model_batch_size",
                                       "reward_model_norm"),
         "no reward model is given (--reward-model DIR)"),
        (not spec.text, "log", ("eval_limit", "log_samples"),
         "the toy task evaluates every held-out prompt and has no text to log"),
        # A field the task does not read (each task's TaskSpec.fields lists what it reads).
        (True, "task", tuple(name for name in _TASK_FIELDS if name not in spec.fields),
         f"task={t.task} does not read it; it reads {', '.join(spec.fields)}"),
    ]
    defaults = {"task": TaskConfig(), "policy": PolicyConfig(), "algo": AlgoConfig(),
                "train": TrainConfig(), "log": LogConfig()}
    for applies, group, names, why in rules:
        for name in names if applies else ():
            value, default = getattr(getattr(cfg, group), name), getattr(defaults[group], name)
            if value != default:
                raise ConfigError(f"{group}.{name}={value!r} has no effect here ({why}); "
                                  f"drop it or change the setting that disables it")


CRITIC_FIELDS = ("critic_model", "gamma", "lam", "cliprange_value", "vf_coef", "critic_lr",
                 "critic_warmup", "whiten_advantages", "kl_in_reward")
_TASK_FIELDS = tuple(f.name for f in dataclasses.fields(TaskConfig) if f.name != "task")


def _check_model_task(cfg: Config) -> None:
    t = cfg.task
    spec = TASK_SPECS[t.task]
    if cfg.is_toy and spec.text:
        raise ConfigError(f"task={t.task!r} is a text task and needs a causal LM: pass --model DIR "
                          "(lmrl init-model builds a tiny one) or a hub name")
    if not cfg.is_toy and not spec.text:
        raise ConfigError(f"task={t.task} is the toy model's tensor task; with --model "
                          f"{cfg.policy.model} use --task sort_text (or another text task: "
                          f"{', '.join(TEXT_TASKS)})")
    for spec in t.reward_fns:
        if ":" not in spec:
            raise ConfigError(f"task.reward_fns entry {spec!r} must look like module:function")
    _check_reward_model(t)
    if any(not stop for stop in cfg.policy.stop):
        raise ConfigError("policy.stop has an empty string, which would end every completion "
                          "after one token; drop it")


def _check_reward_model(t: TaskConfig) -> None:
    """Settings only; the directories are read when the task is built (before the run
    directory)."""
    _choice("task", "reward_model_norm", t.reward_model_norm, tuple(RM_NORMS))
    if t.reward_model_batch_size < 1:
        raise ConfigError(f"task.reward_model_batch_size={t.reward_model_batch_size} must be >= 1")
    check_device(t.reward_model_device, "task.reward_model_device")
    if not math.isfinite(t.task_reward_weight):
        raise ConfigError(f"task.task_reward_weight={t.task_reward_weight} is not a finite number")


def validate(cfg: Config) -> None:
    t, p, a, tr, lg = cfg.task, cfg.policy, cfg.algo, cfg.train, cfg.log
    _choice("task", "task", t.task, TASKS)
    _choice("policy", "init", p.init, INITS)
    _choice("policy", "dtype", p.dtype, DTYPES)
    _choice("policy", "forward", p.forward, FORWARDS)
    _choice("policy", "compile", p.compile, COMPILES)
    if p.compile == "on" and p.forward == "transformers":
        raise ConfigError("policy.compile compiles lmrl's forward; it needs policy.forward "
                          "lmrl or auto, not transformers")
    _check_model_task(cfg)
    _choice("algo", "delta", a.delta, DELTAS)
    _choice("algo", "loss", a.loss, LOSSES)
    _choice("algo", "ratio_level", a.ratio_level, RATIO_LEVELS)
    _choice("algo", "aggregation", a.aggregation, AGGREGATIONS)
    if a.kl_estimator is not None:
        _choice("algo", "kl_estimator", a.kl_estimator, KL_ESTIMATORS)
    _choice("train", "schedule", tr.schedule, SCHEDULES)
    for name in sink_names(lg.logger):
        _choice("log", "logger", name, LOGGERS)
    TASK_SPECS[t.task].check(t, TaskConfig())  # the task's own rules on its fields
    _check_critic(cfg)
    _check_dynamic_sampling(cfg)
    _check_async_rollouts(cfg)
    learned = "/".join(BASELINES)
    if tr.G < 2 and DELTAS[a.delta].needs_group and a.critic == "none":
        raise ConfigError(f"train.G={tr.G} with delta={a.delta!r}: a group baseline needs G >= 2 "
                          f"samples per prompt; raise G or use delta=raw, or a learned baseline "
                          f"that needs no group (delta={learned}, or --critic with a causal LM)")
    if DELTAS[a.delta].learned_baseline and not cfg.is_toy:
        raise ConfigError(f"delta={a.delta} learns B(S) from the toy sort task's prompts; with a "
                          "causal LM use a group baseline (centered, normalized, rloo) or PPO's "
                          "critic (--critic separate or head)")
    if LOSSES[a.loss].clips and min(a.eps_low, a.eps_high) <= 0:
        raise ConfigError(f"clip ε must be > 0 (got low={a.eps_low}, high={a.eps_high}); "
                          "to remove clipping use loss=unclipped")
    if a.kl_weight < 0:
        raise ConfigError(f"algo.kl_weight={a.kl_weight} must be >= 0")
    if a.kl_estimator is not None and a.kl_weight == 0:
        raise ConfigError(f"algo.kl_estimator={a.kl_estimator!r} has no effect with kl_weight=0; "
                          "set kl_weight > 0 or drop kl_estimator")
    if a.ref_refresh < 0 or (a.ref_refresh > 0 and not a.uses_reference):
        raise ConfigError(f"algo.ref_refresh={a.ref_refresh} needs kl_weight > 0 or "
                          "kl_in_reward > 0 (the reference policy exists only for a KL term) "
                          "and must be >= 0")
    if a.mu < 1:
        raise ConfigError(f"algo.mu={a.mu} must be >= 1")
    if a.norm_eps < 0:
        raise ConfigError(f"algo.norm_eps={a.norm_eps} must be >= 0")
    positive = {"train.B": tr.B, "train.G": tr.G, "train.steps": tr.steps,
                "train.grad_accum": tr.grad_accum, "log.eval_every": lg.eval_every}
    for name, value in positive.items():
        if value < 1:
            raise ConfigError(f"{name}={value} must be >= 1")
    if tr.lr is not None and tr.lr <= 0:
        raise ConfigError(f"train.lr={tr.lr} must be > 0")
    if p.temperature <= 0 or not 0 < p.top_p <= 1 or p.top_k < 0 or p.max_new_tokens < 0:
        raise ConfigError(f"policy: temperature={p.temperature} must be > 0, top_p={p.top_p} in "
                          f"(0, 1], top_k={p.top_k} and max_new_tokens={p.max_new_tokens} >= 0")
    if lg.eval_limit < 0 or lg.log_samples < 0 or (t.heldout_size or 1) < 1:
        raise ConfigError("log.eval_limit and log.log_samples must be >= 0, task.heldout_size >= 1")
    if p.min_new_tokens < 0 or (p.max_new_tokens and p.min_new_tokens > p.max_new_tokens):
        raise ConfigError(f"policy.min_new_tokens={p.min_new_tokens} must be between 0 and "
                          f"max_new_tokens={p.max_new_tokens}")
    if lg.resume and lg.overwrite:
        raise ConfigError("log.resume and log.overwrite contradict each other; pass one of them")
    _check_ranges(cfg)
    _reject_ignored(cfg)
    _check_lora(cfg)
    _check_fsdp(cfg)
    if tr.B % tr.grad_accum:
        raise ConfigError(f"train.B={tr.B} is not divisible by train.grad_accum={tr.grad_accum}")


def _check_dynamic_sampling(cfg: Config) -> None:
    """Dropping flat groups is right only where a flat group carries no signal: under a group
    baseline, without a critic (whose advantages of a flat group are not 0)."""
    a, tr = cfg.algo, cfg.train
    if not tr.dynamic_sampling:
        return
    if tr.max_sample_rounds < 1:
        raise ConfigError(f"train.max_sample_rounds={tr.max_sample_rounds} must be >= 1")
    if a.critic != "none":
        raise ConfigError(f"train.dynamic_sampling with algo.critic={a.critic}: the critic's "
                          "advantages of a flat group are not 0, so dropping it loses signal; "
                          "drop --dynamic-sampling or --critic")
    if not DELTAS[a.delta].needs_group:
        grouped = "/".join(sorted(GROUP_BASELINE))
        raise ConfigError(f"train.dynamic_sampling with delta={a.delta}: it has no group baseline, "
                          "so a group whose rewards are all equal still has Δ != 0; use a group "
                          f"baseline ({grouped}) or drop --dynamic-sampling")


def _check_async_rollouts(cfg: Config) -> None:
    """What the sampling thread would race with: state updated by the step it overlaps."""
    a, tr = cfg.algo, cfg.train
    if not tr.async_rollouts:
        return
    clash = ("algo.critic (its advantages need the critic the step is training)"
             if a.critic != "none" else
             f"delta={a.delta} (its learned baseline is fitted by the step it would overlap)"
             if DELTAS[a.delta].learned_baseline else
             "train.dynamic_sampling (its resampling rounds are not overlapped)"
             if tr.dynamic_sampling else
             "train.fsdp (every forward is a collective of all ranks)" if tr.fsdp else None)
    if clash is not None:
        raise ConfigError(f"train.async_rollouts does not combine with {clash}; drop one")


def _check_critic(cfg: Config) -> None:
    """PPO with a learned critic: its ranges, and what it does not combine with (yet). The
    number of processes is checked at launch (trainer.check_data_parallel)."""
    a = cfg.algo
    _choice("algo", "critic", a.critic, CRITICS)
    if a.critic == "none":
        return
    if cfg.is_toy:
        raise ConfigError(f"algo.critic={a.critic} trains a causal-LM value model; the toy model "
                          "has no hidden states to read (for the toy task use --delta value, a "
                          "learned V(S) baseline; or --model DIR)")
    if cfg.policy.lora_r or cfg.train.fsdp:
        raise ConfigError(f"algo.critic={a.critic} with LoRA or --fsdp is not supported yet; "
                          "drop --lora-r / --fsdp or --critic")
    if not (0 <= a.gamma <= 1 and 0 <= a.lam <= 1):
        raise ConfigError(f"algo.gamma={a.gamma} and algo.lam={a.lam} must be in [0, 1]")
    if (a.cliprange_value or 0) < 0 or a.critic_warmup < 0 or a.kl_in_reward < 0:
        raise ConfigError("algo.cliprange_value, algo.critic_warmup and algo.kl_in_reward must "
                          "be >= 0")
    if a.critic_lr is not None and not 0 < a.critic_lr <= 1:
        raise ConfigError(f"algo.critic_lr={a.critic_lr} must be in (0, 1]")
    if a.vf_coef <= 0:
        raise ConfigError(f"algo.vf_coef={a.vf_coef} must be > 0 (the head learns only from it)")
    if a.critic == "head" and a.critic_warmup:
        raise ConfigError("algo.critic_warmup freezes the policy while the critic trains, but "
                          "critic=head's value loss trains the policy's own backbone; use "
                          "--critic separate for a warm-up, or drop --critic-warmup")


def _check_lora(cfg: Config) -> None:
    """LoRA's ranges and what it cannot combine with (lora_r=0 checks nothing)."""
    p, a = cfg.policy, cfg.algo
    if p.lora_r < 0:
        raise ConfigError(f"policy.lora_r={p.lora_r} must be >= 0 (0 turns LoRA off)")
    if p.lora_r == 0:
        return
    if p.lora_alpha <= 0 or not 0 <= p.lora_dropout < 1:
        raise ConfigError(f"policy.lora_alpha={p.lora_alpha} must be > 0 and "
                          f"policy.lora_dropout={p.lora_dropout} in [0, 1)")
    if "all-linear" in p.lora_target_modules and len(p.lora_target_modules) > 1:
        raise ConfigError("policy.lora_target_modules: all-linear already names every linear "
                          "layer; give it alone or list the layers instead")
    if p.forward == "lmrl" or p.compile == "on":
        raise ConfigError("LoRA (policy.lora_r > 0) runs transformers' forward: lmrl's own "
                          "forward (and compile, which compiles it) reads the base weights "
                          "without the adapters; use --forward auto or transformers and drop "
                          "--compile")
    if a.ref_refresh > 0:
        raise ConfigError(f"algo.ref_refresh={a.ref_refresh} with LoRA: the reference is the base "
                          "model with the adapters off, which stays the initial policy; moving "
                          "it would mean merging the adapters into the frozen weights. Use "
                          "ref_refresh=0, or full fine-tuning (lora_r=0) for a refreshed "
                          "reference")
    from lmrl.policies.lora import check_installed

    check_installed()


def _check_finite(cfg: Config) -> None:
    """NaN passes every `x <= 0` check and inf is never meant: no float setting may be either."""
    for group in _GROUPS:
        for f in dataclasses.fields(_GROUPS[group]):
            value = getattr(getattr(cfg, group), f.name)
            if isinstance(value, float) and not math.isfinite(value):
                raise ConfigError(f"{group}.{f.name}={value} must be a finite number")


MAX_SEED = 2**63 - 1  # torch.Generator.manual_seed's range


def _check_ranges(cfg: Config) -> None:
    """Every numeric setting in its meaningful range, before anything starts."""
    t, p, tr, lg = cfg.task, cfg.policy, cfg.train, cfg.log
    _check_finite(cfg)
    at_least = {
        "train.weight_decay": (tr.weight_decay, 0), "train.grad_clip": (tr.grad_clip, 0),
        "train.time_limit": (tr.time_limit, 0), "train.warmup_steps": (tr.warmup_steps, 0),
        "train.threads": (tr.threads, 0), "train.max_skipped": (tr.max_skipped, 1),
        "log.save_every": (lg.save_every, 0), "log.save_minutes": (lg.save_minutes, 0),
        "log.keep_checkpoints": (lg.keep_checkpoints, 1), "log.eval_samples": (lg.eval_samples, 0),
        "log.warn_after": (lg.warn_after, 0),
        "task.reward_timeout": (t.reward_timeout, 0), "task.split_seed": (t.split_seed, 0),
        "task.digits": (t.digits, 1), "train.seed": (tr.seed, 0),
        "policy.dim": (p.dim, 1), "policy.hidden": (p.hidden, 0),  # 0: the linear model
    }
    require_at_least(at_least)
    if tr.seed > MAX_SEED or t.split_seed > MAX_SEED:
        raise ConfigError(f"train.seed and task.split_seed must be <= {MAX_SEED}")
    if not 0.0 <= tr.min_lr_frac <= 1.0:
        raise ConfigError(f"train.min_lr_frac={tr.min_lr_frac} must be in [0, 1] (a fraction of "
                          "the peak lr; a negative one would ascend the loss)")
    if not 0.0 < cfg.algo.value_lr <= 1.0 or not 0.0 <= cfg.algo.baseline_decay < 1.0:
        raise ConfigError(f"algo.value_lr={cfg.algo.value_lr} must be in (0, 1] and "
                          f"algo.baseline_decay={cfg.algo.baseline_decay} in [0, 1)")
    if tr.lr is not None and tr.lr > 1.0:
        raise ConfigError(f"train.lr={tr.lr} is above 1: AdamW moves every weight by about lr "
                          "per update, so the model would diverge; use e.g. 1e-4 to 1e-2")
    check_device(p.device)


def require_at_least(limits: dict[str, tuple[float, float]]) -> None:
    """{name: (value, lowest allowed)}: the first value below its limit is a ConfigError."""
    for name, (value, low) in limits.items():
        if value < low:
            raise ConfigError(f"{name}={value} must be >= {low}")


def check_optimizer_flags(lr: float, weight_decay: float, grad_clip: float) -> None:
    """A command's own --lr / --weight-decay / --grad-clip (lmrl sft, lmrl rm train): finite,
    and the rate in (0, 1]."""
    for flag, value in {"--lr": lr, "--weight-decay": weight_decay,
                        "--grad-clip": grad_clip}.items():
        if not math.isfinite(value):
            raise ConfigError(f"{flag}={value} must be a finite number")
    if not 0 < lr <= 1:
        raise ConfigError(f"--lr={lr} must be in (0, 1]")


def check_device(device: str, name: str = "policy.device") -> None:
    """The device must parse and exist here (auto always does)."""
    if device == "auto":
        return
    try:
        dev = torch.device(device)
    except RuntimeError as err:
        raise ConfigError(f"{name}={device!r} is not a device ({err}); use auto, cpu, "
                          "cuda or cuda:N") from err
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"{name}={device!r} but this machine has no CUDA device (or "
                          "this torch build has no CUDA); use cpu or auto")
    if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
        raise ConfigError(f"{name}={device!r} but there are only "
                          f"{torch.cuda.device_count()} CUDA devices")
    if dev.type == "mps" and not torch.backends.mps.is_available():
        raise ConfigError(f"{name}={device!r} but MPS is not available here; use cpu")
    if dev.type not in ("cpu", "cuda", "mps"):
        raise ConfigError(f"{name}={device!r}: lmrl runs on cpu, cuda or mps")


def _check_fsdp(cfg: Config) -> None:
    """What sharding cannot combine with (the number of processes is checked at launch:
    trainer.check_data_parallel)."""
    p = cfg.policy
    if not cfg.train.fsdp:
        return
    if cfg.is_toy:
        raise ConfigError("train.fsdp shards a causal LM's decoder layers; the toy model has none "
                          "(drop --fsdp)")
    if p.lora_r:
        raise ConfigError("train.fsdp with LoRA (policy.lora_r > 0) is not supported: LoRA "
                          "already keeps one trainable copy of little memory; drop one of them")
    if p.forward == "lmrl" or p.compile == "on":
        raise ConfigError("train.fsdp runs transformers' forward: lmrl's own forward (and "
                          "compile, which compiles it) reads whole weights, which FSDP holds in "
                          "shards; use --forward auto or transformers, without --compile")


def describe(cfg: Config) -> str:
    """Derived behaviour, printed once at start."""
    a = cfg.algo
    if a.uses_reference:
        refresh = f"refreshed every {a.ref_refresh} steps" if a.ref_refresh else "never refreshed"
        base = ", the base model with the adapters off (no copy)" if cfg.policy.lora_r else ""
        loss_term = f"λ={a.kl_weight}, {a.estimator}" if a.kl_weight else "no KL loss term"
        ref = f"on ({loss_term}){base}, {refresh}"
        if a.kl_in_reward:
            ref += f"; -β·k1 per token in PPO's reward, β={a.kl_in_reward}"
    else:
        ref = "off (kl_weight=0: no reference model is built)"
    if a.mu > 1 and not LOSSES[a.loss].uses_ratio:
        old_note = (f"; note: loss={a.loss} with μ={a.mu} reuses stale samples with no ratio "
                    "correction")
    else:
        old_note = ""
    old = ("logp_old = detached current log-probs (μ=1: ratio is 1, no extra pass)" if a.mu == 1
           else f"logp_old stored from the first of μ={a.mu} passes (no model copy)")
    return "\n".join([
        TASK_SPECS[cfg.task.task].describe(cfg.task),
        _describe_policy(cfg),
        _describe_objective(a),
        *([_describe_critic(cfg)] if a.critic != "none" else []),
        f"reference policy: {ref}",
        f"old policy: {old}{old_note}",
        f"batch: B={cfg.train.B} prompts × G={cfg.train.G} samples, {cfg.train.steps} steps, "
        f"lr={cfg.lr} ({cfg.train.schedule}, {cfg.train.warmup_steps} warm-up steps), "
        f"grad clip {cfg.train.grad_clip or 'off'}, {cfg.train.grad_accum} micro-batch(es)",
        *([f"dynamic sampling: groups whose rewards are all equal are dropped and refilled from "
           f"up to {cfg.train.max_sample_rounds} batches of B prompts per step"]
          if cfg.train.dynamic_sampling else []),
        *(["sharding: FSDP2, the policy's and the reference's weights, gradients and optimizer "
           "state split over the processes; transformers' forward"] if cfg.train.fsdp else []),
    ])


def _describe_objective(a: AlgoConfig) -> str:
    """The delta and loss as formulas (from their registries), with the settings each reads."""
    delta_spec, loss_spec = DELTAS[a.delta], LOSSES[a.loss]
    delta = [delta_spec.help] + ([f"eps={a.norm_eps}"] if delta_spec.reads_eps else [])
    delta += [f"{name}={getattr(a, name)}" for name in
              (BASELINES[a.delta].reads if a.delta in BASELINES else ())]
    loss = ([loss_spec.help] + ([f"ε={a.eps_low}/{a.eps_high}"] if loss_spec.clips else [])
            + ([f"ratio per {a.ratio_level}"] if loss_spec.uses_ratio else []))
    where = f"{a.delta} ({', '.join(delta)})" if a.critic == "none" else "the critic's (below)"
    return (f"delta: {where}; loss: {a.loss} ({', '.join(loss)}); "
            f"aggregation: {a.aggregation}")


def _describe_critic(cfg: Config) -> str:
    a = cfg.algo
    clip = f"value clip {a.cliprange_value}" if a.cliprange_value else "no value clipping"
    warm = f", policy frozen for the first {a.critic_warmup} steps" if a.critic_warmup else ""
    model = (f"{a.critic_model or cfg.policy.model} + linear value head, AdamW "
             f"lr={a.critic_lr or cfg.lr} constant" if a.critic == "separate" else
             f"linear value head on the policy's backbone, loss L + {a.vf_coef}·L_V")
    return (f"critic: {a.critic} ({model}); Δ = GAE advantages (γ={a.gamma}, "
            f"λ={a.lam}{', whitened' if a.whiten_advantages else ''}), {clip}{warm}")


def _describe_policy(cfg: Config) -> str:
    p = cfg.policy
    if cfg.is_toy:
        return f"policy: toy dim={p.dim} hidden={p.hidden} init={p.init}"
    budget = p.max_new_tokens or "task default"
    lora = ""
    if p.lora_r:
        targets = " ".join(p.lora_target_modules) or "peft's default layers"
        lora = (f"\nLoRA: r={p.lora_r} α={p.lora_alpha} dropout={p.lora_dropout} on {targets}; "
                "only the adapters train; forward: transformers' (lmrl's forward does not "
                "apply adapters)")
    return (f"policy: {p.model} (causal LM, dtype {p.dtype}, device {p.device}); sampling "
            f"temperature={p.temperature} top_k={p.top_k} top_p={p.top_p} "
            f"max_new_tokens={budget}"
            f"{f' min_new_tokens={p.min_new_tokens}' if p.min_new_tokens else ''} "
            f"stop={list(p.stop)}{lora}")
