"""All training state in one object: policy, optimizer, schedule, reference snapshot, learned
baseline, RNGs, step.

`state_dict()` / `load_state_dict()` round-trip everything needed to resume a run bit-for-bit
(tests/test_trainer.py checks that a resumed run matches an uninterrupted one).
"""

import random
from dataclasses import asdict, dataclass, field

import numpy as np
import torch
from torch import nn

from lmrl.baselines import BASELINES, Baseline
from lmrl.config import Config
from lmrl.optim import adamw, lr_lambda
from lmrl.policies.toy import ToySortPolicy
from lmrl.sharding import full, like, optimizer_like, shard
from lmrl.snapshots import AdapterOffReference, ReferencePolicy


@dataclass
class TrainState:
    policy: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LambdaLR
    reference: ReferencePolicy | AdapterOffReference | None
    generator: torch.Generator  # prompt and response sampling
    eval_generator: torch.Generator  # held-out sampling, so evaluation never shifts training
    step: int = 0
    # Counters that continue across resumes.
    wall_seconds: float = 0.0  # training time of all sessions of the run
    optimizer_steps: int = 0  # updates applied (skipped ones are not)
    skipped_updates: int = 0  # updates skipped for a non-finite loss or gradient
    skipped_in_a_row: int = 0
    # The rewards' running statistics by reward name (a reward model's, --reward-model-norm
    # running): the reward sources' own objects, so saving reads and resuming fills them.
    reward_stats: dict = field(default_factory=dict)
    # PPO's learned value model (critic.py) and its own AdamW; None without a critic.
    critic: nn.Module | None = None
    critic_optimizer: torch.optim.Optimizer | None = None
    # B(S) of delta=value / running_mean (baselines.py), learned across steps; None otherwise.
    baseline: Baseline | None = None
    # async_rollouts.py: the sampling generator before the batch being collected ahead drew
    # from it; what a checkpoint saves, so that a resumed run draws that batch again.
    generator_resume_state: torch.Tensor | None = None

    COUNTERS = ("step", "wall_seconds", "optimizer_steps", "skipped_updates", "skipped_in_a_row")

    def state_dict(self) -> dict:
        """Whole tensors, sharded model or not (so a call on every rank under FSDP: gathering
        the shards is a collective)."""
        return {
            "policy": full(self.policy.state_dict()),
            "optimizer": full(self.optimizer.state_dict()),
            "scheduler": self.scheduler.state_dict(),
            "reference": full(self.reference.state_dict()) if self.reference else None,
            **self.rng_state(),
            **{name: getattr(self, name) for name in self.COUNTERS},
            "reward_stats": {name: asdict(stats) for name, stats in self.reward_stats.items()},
            **({"critic": self.critic.owned().state_dict()} if self.critic else {}),
            **({"critic_optimizer": self.critic_optimizer.state_dict()}
               if self.critic_optimizer else {}),
            "baseline": self.baseline.state_dict() if self.baseline else None,
        }

    def load_state_dict(self, state: dict) -> None:
        """From whole tensors (state_dict's), sliced into shards where the model is sharded."""
        self.policy.load_state_dict(like(self.policy.state_dict(), state["policy"]))
        self.optimizer.load_state_dict(optimizer_like(self.optimizer, state["optimizer"]))
        self.scheduler.load_state_dict(state["scheduler"])
        if self.reference is not None:
            self.reference.load_state_dict(state["reference"])
        self.set_rng_state(state)
        for name in self.COUNTERS:
            setattr(self, name, state.get(name, getattr(self, name)))
        if self.critic is not None:
            self.critic.owned().load_state_dict(state["critic"])
        if self.critic_optimizer is not None:
            self.critic_optimizer.load_state_dict(state["critic_optimizer"])
        if self.baseline is not None:
            self.baseline.load_state_dict(state["baseline"])
        for name, saved in state.get("reward_stats", {}).items():  # absent: an older checkpoint
            if name in self.reward_stats:
                vars(self.reward_stats[name]).update(saved)

    def rng_state(self) -> dict:
        """Every random number generator the run draws from."""
        generator = self.generator_resume_state
        return {"generator": self.generator.get_state() if generator is None else generator,
                "eval_generator": self.eval_generator.get_state(),
                "torch_rng": torch.get_rng_state(), "python_rng": random.getstate(),
                "numpy_rng": np.random.get_state()}

    def set_rng_state(self, state: dict) -> None:
        self.generator.set_state(state["generator"])
        self.generator_resume_state = None
        self.eval_generator.set_state(state["eval_generator"])
        torch.set_rng_state(state["torch_rng"])
        random.setstate(state["python_rng"])
        np.random.set_state(state["numpy_rng"])


def build_policy(cfg: Config, max_new_tokens: int = 64) -> nn.Module:
    """The toy model, or a causal LM loaded with from_pretrained (max_new_tokens is the task's
    budget, used unless policy.max_new_tokens overrides it)."""
    p, t = cfg.policy, cfg.task
    if cfg.is_toy:
        # Its initialisation draws from torch's global RNG: seeded by the run's seed here, so
        # that the seed fixes it whoever builds it and whatever ran before (the trainer builds
        # the policy before build_state seeds), and restored after.
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(cfg.train.seed)
            return ToySortPolicy(V=t.V, n=t.n, dim=p.dim, hidden=p.hidden, init=p.init,
                                 init_scale=p.init_scale, symmetric_init=p.symmetric_init)
    from lmrl.policies.hf import HFPolicy
    from lmrl.policies.lora import LoraSpec

    lora = LoraSpec(p.lora_r, p.lora_alpha, p.lora_dropout, p.lora_target_modules) \
        if p.lora_r else None
    return HFPolicy.from_pretrained(
        p.model, dtype=p.dtype, device=p.device, trust_remote_code=p.trust_remote_code,
        attn_implementation=p.attn_implementation, forward=p.forward, compile=p.compile == "on",
        max_new_tokens=p.max_new_tokens or max_new_tokens, min_new_tokens=p.min_new_tokens,
        temperature=p.temperature,
        top_k=p.top_k, top_p=p.top_p, stop=p.stop, lora=lora, seed=cfg.train.seed)


def build_state(cfg: Config, policy: nn.Module | None = None) -> TrainState:
    """Seed everything and build a fresh state (policy is built from the config if not given)."""
    seed = cfg.train.seed
    torch.manual_seed(seed)
    random.seed(seed)
    np.random.seed(seed)
    policy = policy if policy is not None else build_policy(cfg)
    reference = build_reference(cfg, policy)  # a copy of the whole model, made before sharding
    if cfg.train.fsdp:  # before the optimizer, which must hold the sharded parameters
        shard(policy)
        if reference is not None:
            shard(reference.model)
    # The toy model keeps the foreach AdamW its documented results (bench/results/targets.md)
    # were measured with; with 5 tensors, fusing them has little to save.
    # Only the trainable parameters (with LoRA: the adapters; otherwise all of them), so that
    # the optimizer keeps no state for frozen weights.
    trainable = [p for p in policy.parameters() if p.requires_grad]
    optimizer = adamw(trainable, cfg.lr, cfg.train.weight_decay, fused=not cfg.is_toy)
    # Before the schedule, which must see every parameter group (a critic head joins this one).
    critic, critic_optimizer = build_critic_and_optimizer(cfg, policy, optimizer)
    tr = cfg.train
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lr_lambda(tr.steps, tr.warmup_steps, tr.schedule, tr.min_lr_frac))
    return TrainState(
        policy=policy, optimizer=optimizer, scheduler=scheduler, reference=reference,
        generator=torch.Generator().manual_seed(seed),
        eval_generator=torch.Generator().manual_seed(seed + 1),
        critic=critic, critic_optimizer=critic_optimizer,
        baseline=BASELINES[cfg.algo.delta].build(cfg) if cfg.algo.delta in BASELINES else None,
    )


def build_critic_and_optimizer(cfg: Config, policy: nn.Module, optimizer: torch.optim.Optimizer
                               ) -> tuple[nn.Module | None, torch.optim.Optimizer | None]:
    """PPO's critic (critic.py) and its AdamW at a constant critic_lr (default: the policy's
    peak lr); (None, None) with critic=none. critic=head: the head joins the policy's optimizer
    (and schedule) and has none of its own."""
    if cfg.algo.critic == "none":
        return None, None
    from lmrl.critic import build_critic

    critic = build_critic(cfg, policy)
    if critic.shared:
        optimizer.add_param_group({"params": list(critic.head.parameters())})
        return critic, None
    lr = cfg.algo.critic_lr or cfg.lr
    return critic, adamw(critic.parameters(), lr, cfg.train.weight_decay)


def build_reference(cfg: Config, policy: nn.Module) -> ReferencePolicy | AdapterOffReference | None:
    """π_ref for the KL term (None without one): the base model of a LoRA policy, else a copy."""
    if not cfg.algo.uses_reference:
        return None
    if getattr(policy, "lora", False):
        return AdapterOffReference(policy)
    return ReferencePolicy(policy, cfg.algo.ref_refresh)
