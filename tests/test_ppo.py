"""PPO with a learned critic on a causal LM (--critic separate / head): V(s_t) lines up with the
policy's log-probs, collect's Δ is GAE on the stored values, the critic's warm-up freezes the
policy, the head trains with the policy, a short run trains the critic, resume is exact, and bad
settings are one error each."""

import json

import pytest

pytest.importorskip("transformers")

import torch  # noqa: E402

from lmrl import distributed  # noqa: E402
from lmrl.advantages import gae, outcome_token_rewards, whiten  # noqa: E402
from lmrl.cli import main  # noqa: E402
from lmrl.config import Config, ConfigError  # noqa: E402
from lmrl.critic import fill_advantages  # noqa: E402
from lmrl.losses import masked_mean  # noqa: E402
from lmrl.preflight import flat_groups  # noqa: E402
from lmrl.state import build_policy, build_state  # noqa: E402
from lmrl.step import collect, grpo_step, update  # noqa: E402
from lmrl.trainer import build_task, check_data_parallel  # noqa: E402

TASK = ["--task", "sort_text", "--n", "3", "--V", "5", "--heldout-size", "20"]

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """A tiny untrained model and the same after a short SFT (so that rewards vary)."""
    root = tmp_path_factory.mktemp("ppo")
    main(["init-model", "--out", str(root / "init"), "--hidden-size", "32", "--layers", "2",
          "--heads", "2", *TASK])
    main(["sft", "--model", str(root / "init"), "--out", str(root / "sft"), "--steps", "30",
          "--batch-size", "16", "--eval-every", "30", "--eval-examples", "20", "--no-progress",
          "--threads", "1", *TASK])
    return root


def ppo_cfg(model, **algo) -> Config:
    return Config().replace(
        task={"task": "sort_text", "n": 3, "V": 5, "heldout_size": 20},
        policy={"model": str(model), "device": "cpu"},
        algo={"critic": "separate", "kl_weight": 0.0, **algo},
        train={"B": 4, "G": 4, "lr": 1e-3, "grad_accum": 2, "steps": 10})


def ppo_state(cfg: Config):
    task = build_task(cfg)
    return build_state(cfg, build_policy(cfg, task.max_new_tokens)), task


@pytest.mark.parametrize("kind", ["separate", "head"])
def test_values_line_up_with_the_state_before_each_response_token(models, kind):
    """V(s_t) is the head on the hidden state at the column that predicts token t: checked row by
    row on unpadded prompt + response, and 0 on padding."""
    cfg = ppo_cfg(models / "sft", critic=kind)
    state, task = ppo_state(cfg)
    batch = collect(state, task, cfg)
    critic, prompts = state.critic, batch.prompts
    # head: the policy's own backbone; separate: a copy of its own
    assert (critic.backbone is state.policy.model.base_model) == (kind == "head")
    with torch.no_grad():
        values = critic.values(prompts, batch.responses, batch.response_mask)  # (B, G, T)
        B, G, T = batch.responses.shape
        mask = batch.response_mask
        assert not bool(mask.all()), "some response is padded (the test needs one)"
        for b in range(B):
            prompt = prompts.input_ids[b][prompts.attention_mask[b].bool()]  # real tokens only
            for g in range(G):
                n = int(mask[b, g].sum())
                ids = torch.cat([prompt, batch.responses[b, g, :n]])[None]
                hidden = critic.backbone(input_ids=ids).last_hidden_state[0]
                # s_t = prompt + t tokens: its last column is len(prompt) - 1 + t.
                expected = critic.head(hidden[len(prompt) - 1:len(prompt) - 1 + n]).squeeze(-1)
                torch.testing.assert_close(values[b, g, :n], expected, atol=1e-5, rtol=1e-5)
                assert bool((values[b, g, n:] == 0).all())


@pytest.mark.parametrize("kind", ["separate", "head"])
def test_collect_sets_delta_to_gae_on_the_stored_values(models, kind):
    cfg = ppo_cfg(models / "sft", critic=kind, whiten_advantages=False, lam=0.0)
    state, task = ppo_state(cfg)
    batch = collect(state, task, cfg)
    mask, v = batch.response_mask, batch.values_old
    assert batch.delta.shape == batch.responses.shape == v.shape  # (B, G, T)
    with torch.no_grad():
        again = state.critic.values(batch.prompts, batch.responses, mask)
    torch.testing.assert_close(v, again)
    advantages, returns = gae(outcome_token_rewards(batch.rewards, mask), v, mask, 1.0, 0.0)
    torch.testing.assert_close(batch.delta, advantages)
    torch.testing.assert_close(batch.returns, returns)
    # By hand, λ = 0, γ = 1: δ_t = V(s_{t+1}) - V(s_t), and R - V(s_t) on the last token.
    b, g = 0, 0
    n = int(mask[b, g].sum())
    by_hand = torch.cat([v[b, g, 1:n] - v[b, g, :n - 1],
                         batch.rewards[b, g, None] - v[b, g, n - 1:n]])
    torch.testing.assert_close(batch.delta[b, g, :n], by_hand)
    assert bool((batch.delta[b, g, n:] == 0).all())


def test_whitened_delta_is_the_whitened_gae(models):
    cfg = ppo_cfg(models / "sft")
    state, task = ppo_state(cfg)
    batch = collect(state, task, cfg)
    mask = batch.response_mask
    advantages, _ = gae(outcome_token_rewards(batch.rewards, mask), batch.values_old, mask,
                        cfg.algo.gamma, cfg.algo.lam)
    torch.testing.assert_close(batch.delta, whiten(advantages, mask))
    assert batch.groups_with_gradient() is batch  # the critic learns from every group


def test_an_unscored_sample_gets_no_delta_and_keeps_its_value(models):
    cfg = ppo_cfg(models / "sft")
    state, task = ppo_state(cfg)
    batch = collect(state, task, cfg)
    batch.rewards[0, 1] = float("nan")  # no reward function scored it (TRL's None)
    fill_advantages(state.critic, cfg, batch, 1, None)
    assert bool((batch.delta[0, 1] == 0).all()) and bool(batch.delta.isfinite().all())
    torch.testing.assert_close(batch.returns[0, 1], batch.values_old[0, 1])
    scored = batch.response_mask.clone()
    scored[0, 1] = 0
    assert abs(masked_mean(batch.delta, scored).item()) < 1e-5  # whitened over the scored


def test_kl_in_reward_charges_every_token(models):
    """γ = λ = 1 and log π - log π_ref = 1 on every token: A_t = R - β·(tokens from t on) - V_t."""
    cfg = ppo_cfg(models / "sft", kl_in_reward=0.1, whiten_advantages=False, lam=1.0)
    state, task = ppo_state(cfg)
    batch = collect(state, task, cfg)
    mask = batch.response_mask
    batch.logp_ref = torch.zeros_like(mask)
    fill_advantages(state.critic, cfg, batch, 1, mask.clone())  # log π = 1 on real tokens
    n = mask.sum(-1, keepdim=True)  # (B, G, 1)
    to_go = n - torch.arange(mask.shape[-1])  # tokens from t to the end
    expected = (batch.rewards.unsqueeze(-1) - 0.1 * to_go - batch.values_old) * mask
    torch.testing.assert_close(batch.delta, expected)


def test_critic_warmup_freezes_the_policy_and_trains_the_critic(models):
    cfg = ppo_cfg(models / "sft", critic_warmup=1)
    state, task = ppo_state(cfg)
    policy0 = {k: v.clone() for k, v in state.policy.state_dict().items()}
    critic0 = {k: v.clone() for k, v in state.critic.state_dict().items()}
    metrics = grpo_step(state, task, cfg)
    assert metrics["critic/policy_frozen"] == 1.0
    assert all(torch.equal(v, policy0[k]) for k, v in state.policy.state_dict().items())
    assert not all(torch.equal(v, critic0[k]) for k, v in state.critic.state_dict().items())
    metrics = grpo_step(state, task, cfg)  # the warm-up is over: the policy moves
    assert metrics["critic/policy_frozen"] == 0.0
    assert not all(torch.equal(v, policy0[k]) for k, v in state.policy.state_dict().items())


def test_the_head_trains_with_the_policy_in_one_loss(models):
    """critic=head: the head is in the policy's optimizer (no optimizer of its own), one step
    moves it and the policy, and its checkpoint holds the head alone."""
    cfg = ppo_cfg(models / "sft", critic="head")
    state, task = ppo_state(cfg)
    assert state.critic_optimizer is None
    assert state.optimizer.param_groups[1]["params"] == list(state.critic.head.parameters())
    head0 = {k: v.clone() for k, v in state.critic.head.state_dict().items()}
    policy0 = {k: v.clone() for k, v in state.policy.state_dict().items()}
    metrics = grpo_step(state, task, cfg)
    assert metrics["critic/value_loss"] > 0 and "critic/values_mean" in metrics
    assert not any(torch.equal(v, head0[k]) for k, v in state.critic.head.state_dict().items())
    assert not all(torch.equal(v, policy0[k]) for k, v in state.policy.state_dict().items())
    assert set(state.state_dict()["critic"]) == {"weight", "bias"}


def test_the_critics_value_loss_falls_on_a_fixed_batch(models):
    """μ critic passes on one batch fit its returns: the value loss falls pass by pass."""
    cfg = ppo_cfg(models / "sft", critic_lr=1e-2, critic_warmup=100, cliprange_value=None)
    state, task = ppo_state(cfg)
    batch = collect(state, task, cfg)
    losses = [update(state, cfg, batch)["critic/value_loss"] for _ in range(8)]
    assert losses[-1] < 0.5 * losses[0], losses


def test_a_short_ppo_run_trains_the_critic_and_saves_it_beside_the_policy(models, tmp_path):
    run = tmp_path / "run"
    main(["train", "--model", str(models / "sft"), "--run-dir", str(run), "--steps", "12",
          "--B", "4", "--G", "4", "--critic", "separate", "--critic-lr", "3e-3",
          "--kl-in-reward", "0.05", "--eval-every", "12", "--no-progress", "--threads", "1",
          "--log-samples", "0", *TASK])
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()][1:]
    for key in ("critic/value_loss", "critic/values_mean", "critic/returns_mean",
                "critic/clip_frac", "critic/explained_variance", "train/advantage_mean",
                "train/advantage_std", "loss/kl_ref"):
        assert key in rows[-1], key
    loss = [r["critic/value_loss"] for r in rows]
    assert sum(loss[-3:]) < sum(loss[:3]), loss
    assert json.loads((run / "model" / "config.json").read_text())["architectures"][0] \
        .endswith("ForCausalLM")  # model/ is the policy alone
    assert (run / "critic" / "value_head.safetensors").is_file()
    assert not json.loads((run / "critic" / "config.json").read_text())["architectures"][0] \
        .endswith("ForCausalLM")


@pytest.mark.parametrize("kind", ["separate", "head"])
def test_resume_continues_a_ppo_run_exactly(models, tmp_path, kind):
    """3 steps + resume to 5 == 5 straight: the critic and its optimizer are restored."""
    warmup = ["--critic-warmup", "1"] if kind == "separate" else []
    common = ["--model", str(models / "sft"), "--B", "4", "--G", "4", "--eval-every", "5",
              "--schedule", "constant", "--critic", kind, *warmup,
              "--grad-accum", "2", "--log-samples", "0", "--no-progress", "--threads", "1",
              "--mu", "2", *TASK]
    split, straight = tmp_path / "split", tmp_path / "straight"
    main(["train", "--run-dir", str(split), "--steps", "3", *common])
    main(["train", "--run-dir", str(split), "--steps", "5", "--resume", *common])
    main(["train", "--run-dir", str(straight), "--steps", "5", *common])

    def rows(run):
        return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]

    for a, b in zip(rows(split)[4:], rows(straight)[4:], strict=True):
        for key in a:
            if not key.startswith("time/"):
                assert a[key] == pytest.approx(b[key], abs=1e-6, nan_ok=True), key
    from safetensors.torch import load_file

    saved = ["critic/model.safetensors"] if kind == "separate" else []
    assert (split / "critic" / "model.safetensors").is_file() == (kind == "separate")
    for name in (*saved, "critic/value_head.safetensors", "model/model.safetensors"):
        a, b = load_file(split / name), load_file(straight / name)
        assert all(torch.equal(a[k], b[k]) for k in a), name


def test_the_preflight_flat_check_looks_at_the_whole_batch_with_a_critic(models):
    """With G = 1 every group is "flat"; with a critic only a batch that scores alike is."""
    cfg = ppo_cfg(models / "init").replace(train={"G": 1})
    metrics = {"train/flat_group_frac": 1.0, "train/delta_abs_mean": 0.0,
               "train/reward_mean": 0.5, "train/reward_std": 0.4}
    assert flat_groups(metrics, cfg) is None
    assert "critic's advantages" in flat_groups({**metrics, "train/reward_std": 0.0}, cfg).message


def test_multiple_processes_are_refused_with_a_critic(models, monkeypatch):
    monkeypatch.setattr(distributed, "world", lambda: 2)
    with pytest.raises(ConfigError, match="runs on one process"):
        check_data_parallel(ppo_cfg(models / "init"))


def test_g1_is_accepted_with_a_critic_and_refused_with_a_group_delta(models):
    assert ppo_cfg(models / "init").replace(train={"G": 1}).train.G == 1
    with pytest.raises(ConfigError, match="group baseline needs G >= 2"):
        ppo_cfg(models / "init").replace(algo={"critic": "none"}, train={"G": 1})


@pytest.mark.parametrize("flags, message", [
    (["--critic", "separate"], "toy model"),
    (["--critic", "head", "--model", "M", "--task", "sort_text", "--critic-warmup", "2"],
     "use --critic separate for a warm-up"),
    (["--critic", "head", "--model", "M", "--task", "sort_text", "--critic-lr", "1e-3"],
     "trained by its optimizer"),
    (["--critic", "separate", "--model", "M", "--task", "sort_text", "--vf-coef", "0.5"],
     "has its own optimizer"),
    (["--critic", "separate", "--model", "M", "--task", "sort_text", "--delta", "raw"],
     "Δ are the critic's GAE advantages"),
    (["--model", "M", "--task", "sort_text", "--gamma", "0.9"], "critic=none"),
    (["--model", "M", "--task", "sort_text", "--kl-in-reward", "0.1"], "critic=none"),
    (["--critic", "separate", "--model", "M", "--task", "sort_text", "--lam", "1.5"],
     "must be in [0, 1]"),
    (["--critic", "separate", "--model", "M", "--task", "sort_text", "--lora-r", "4"],
     "LoRA or --fsdp"),
])
def test_bad_critic_settings_are_one_error_each(flags, message, capsys, tmp_path):
    with pytest.raises(SystemExit) as exit_:
        main(["train", "--run-dir", str(tmp_path / "r"), *flags])
    err = capsys.readouterr().err
    flat = " ".join(err.split())  # the message is wrapped to the terminal's width
    assert exit_.value.code == 2 and err.startswith("lmrl: error: ") and message in flat, err
    assert "Traceback" not in err and not (tmp_path / "r").exists()
