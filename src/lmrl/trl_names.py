"""TRL's option names and lmrl's, in one table: the CLI's "did you mean" hint for a TRL flag
(cli.cli_parse), a config file's unknown-key hint (config_files.py) and README's "TRL → lmrl"
table (tests/test_config_files.py keeps README equal to `readme_table()`) all read it.

Names are Python field names (`num_generations`); flags are the same with dashes. The lmrl side
is a Config field, or None where lmrl has no such setting (the note says what it does instead).
"""

TRL_NAMES: dict[str, tuple[str | None, str]] = {
    # trl name: (lmrl name, what differs)
    "model_name_or_path": ("model", "a hub name or a local directory"),
    "dataset_name": ("data", "a hub dataset, a data file or a save_to_disk directory (the "
                     "`user` task; gsm8k: a file)"),
    "dataset_config": ("data_config", "the hub dataset's configuration"),
    "dataset_train_split": ("data_split", "same"),
    "dataset_test_split": ("heldout_split", "the split evaluated on (held out)"),
    "output_dir": ("run_dir", "the run directory"),
    "num_generations": ("G", "samples per prompt (the group)"),
    "per_device_train_batch_size": (
        "B", "lmrl's B counts prompts per step, TRL's batch counts completions: TRL's 64 with "
        "num_generations 8 is --B 8 --G 8"),
    "gradient_accumulation_steps": (
        "grad_accum", "lmrl splits each step's B prompts into k micro-batches (same objective, "
        "less memory); TRL's accumulates k batches into a larger step"),
    "learning_rate": ("lr", "peak learning rate (AdamW)"),
    "lr_scheduler_type": ("schedule", "the schedule after warm-up"),
    "warmup_steps": ("warmup_steps", "same"),
    "weight_decay": ("weight_decay", "same"),
    "max_grad_norm": ("grad_clip", "gradient-norm clip (0 disables)"),
    "max_steps": ("steps", "training steps"),
    "num_train_epochs": ("steps", "lmrl counts steps: epochs × rows / B"),
    "seed": ("seed", "same"),
    "beta": ("kl_weight", "λ of the KL term (0: no reference model)"),
    "ref_model_sync_steps": ("ref_refresh", "copy the policy into the reference every M steps "
                             "(TRL also needs sync_ref_model=True)"),
    "num_iterations": ("mu", "gradient steps per sampled batch (μ)"),
    "epsilon": ("clip_eps", "clip range ε"),
    "epsilon_high": ("clip_eps_high", "upper ε (lmrl also has --clip-eps-low)"),
    "importance_sampling_level": (
        "ratio_level", "token is the same; TRL's sequence (GSPO: the log-ratio averaged over "
        "tokens) is lmrl's geometric; lmrl's sequence sums it (the whole response's ratio, the "
        "seed's)"),
    "loss_type": (
        "aggregation", "TRL's loss_type picks the normaliser: grpo = sequence_mean, "
        "dapo (TRL's default) and bnpo = token_mean, dr_grpo = constant; the policy loss itself "
        "is --loss (TRL's cispo, sapo, ... have no lmrl equivalent)"),
    "scale_rewards": (
        "delta", "group (TRL's default) = normalized, none = centered; TRL's batch has no "
        "lmrl equivalent"),
    "delta": (None, "TRL's two-sided clipping bound has no lmrl equivalent; lmrl's --delta is "
              "how rewards become advantages (scale_rewards above)"),
    "max_completion_length": ("max_new_tokens", "completion budget in tokens"),
    "temperature": ("temperature", "same"),
    "top_p": ("top_p", "same"),
    "top_k": ("top_k", "same"),
    "bf16": ("dtype", "--dtype bfloat16 (bfloat16 weights) or --dtype autocast"),
    "attn_implementation": ("attn_implementation", "same"),
    "trust_remote_code": ("trust_remote_code", "same; only ever from the flag, never a file"),
    "logging_steps": (None, "lmrl logs every step to metrics.jsonl; --eval-every sets the "
                      "held-out evaluation cadence"),
    "eval_steps": ("eval_every", "held-out evaluation every k steps"),
    "save_steps": ("save_every", "checkpoint every k steps (also --save-minutes)"),
    "save_total_limit": ("keep_checkpoints", "checkpoints kept"),
    "report_to": ("logger", "where metrics go besides metrics.jsonl (always written)"),
    "reward_weights": (None, "each reward's weight is written after it: --reward-fns "
                       "mod:f=0.5 for GRPOTrainer's reward_funcs functions, --reward-model "
                       "DIR=0.5 for its reward-model paths (their tokenizer, TRL's "
                       "reward_processing_classes, is the one saved in DIR)"),
}


def flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def hint(trl_name: str, known: set[str]) -> str | None:
    """"did you mean" for a TRL name a command rejected; None if the table has nothing to say
    (not a TRL name, or lmrl's name is not one of this command's `known` names)."""
    if trl_name not in TRL_NAMES:
        return None
    lmrl, note = TRL_NAMES[trl_name]
    if lmrl is None:
        return f"{flag(trl_name)} is TRL's name; lmrl has no such option: {note}"
    if lmrl not in known or lmrl == trl_name:
        return None
    return f"{flag(trl_name)} is TRL's name: did you mean {flag(lmrl)}? — {note}"


def readme_table() -> str:
    """The "TRL → lmrl" table as README.md shows it."""
    rows = ["| TRL (`GRPOConfig`, `ScriptArguments`, `ModelConfig`) | lmrl | note |",
            "|---|---|---|"]
    for trl, (lmrl, note) in TRL_NAMES.items():
        rows.append(f"| `{flag(trl)}` | {f'`{flag(lmrl)}`' if lmrl else '—'} | {note} |")
    return "\n".join(rows) + "\n"
