"""Named starting configs for `--preset`. Flags given after a preset override it."""

from lmrl.config import AlgoConfig, Config, LogConfig, PolicyConfig, TaskConfig, TrainConfig


def lecture() -> Config:
    """The lecture's own set-up (CS336 lecture 17 code): its 3 prompts, n=3, V=5, the linear model
    with d=10 and its initialisation, inclusion+adjacency reward, centered deltas, naive loss,
    10 samples, 100 batches × 10 gradient steps each, Adam at lr 1e-3, no clipping."""
    return Config(
        task=TaskConfig(n=3, V=5, prompts="lecture", reward="inclusion_adjacency"),
        policy=PolicyConfig(dim=10, hidden=0, init="lecture", symmetric_init=False),
        algo=AlgoConfig(delta="centered", loss="naive", mu=10, kl_weight=0.0),
        train=TrainConfig(B=3, G=10, lr=1e-3, schedule="constant", grad_clip=0.0, steps=100,
                          seed=5),
        log=LogConfig(eval_every=10),
    )


def t1() -> Config:
    """Target T1: all 125 prompts of n=3, V=5, 60% train / 40% held out."""
    return Config(task=TaskConfig(n=3, V=5, prompts="all", train_frac=0.6))


def t3() -> Config:
    """Target T3: n=8, V=20, random prompts."""
    return Config(task=TaskConfig(n=8, V=20), train=TrainConfig(steps=6000))


def linear() -> Config:
    """Target T4: the lecture-faithful linear model (no hidden layer) on the default task.

    What it needs (experiments by a helper session, see bench/README.md): a near-uniform start
    (init_scale 0.3) that the KL term holds on to, the k2 estimator (its gradient through the
    sampled log-probs is that of KL(π‖π_ref), an entropy-like pull; k3's is that of KL(π_ref‖π),
    which fights the wide logit range the linear solution needs), centered deltas (normalized
    ones inflate late updates as group std shrinks), larger groups (G=32 finds the rare values a
    position must output) and a long cosine schedule."""
    return Config(
        policy=PolicyConfig(hidden=0, dim=64, init_scale=0.3),
        algo=AlgoConfig(delta="centered", kl_weight=0.3, kl_estimator="k2"),
        train=TrainConfig(B=16, G=32, lr=5e-3, steps=30000),
        log=LogConfig(eval_every=2000),
    )


PRESETS = {"default": Config, "lecture": lecture, "t1": t1, "t3": t3, "linear": linear}
