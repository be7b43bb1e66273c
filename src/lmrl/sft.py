"""Supervised fine-tuning on a task's demonstrations (lmrl sft): a warm start for RL.

Each step draws B training examples, appends the task's correct completion and EOS to each
prompt, and minimises the cross-entropy of the completion tokens only. The log-probs come from
`HFPolicy.logprobs`, the same left-padded layout and position ids that sampling uses, so SFT
trains exactly the distribution that RL will later sample from. The loss is the mean over all
completion tokens of the batch (EOS included).

`stop_at` ends training as soon as greedy held-out exact match reaches it: a model that solves,
say, 30% of the held-out prompts is a warm start whose groups still disagree, so GRPO has
something to learn from.
"""

import json
import math
from collections.abc import Callable
from pathlib import Path

import torch
from torch import Tensor
from tqdm import tqdm

from lmrl import files
from lmrl.errors import NonFiniteError
from lmrl.logging import MetricsLogger
from lmrl.losses import masked_mean
from lmrl.optim import adamw, schedule_factor
from lmrl.policies.hf import HFPolicy
from lmrl.tasks.coverage import check_coverage
from lmrl.tasks.text import Example, TextTask, evaluate_text


def demonstration_batch(policy: HFPolicy, task: TextTask, examples: list[Example]
                        ) -> tuple[list[str], Tensor, Tensor]:
    """Prompts, and each one's demonstration + EOS as a response. -> B prompts, (B, 1, T) x 2.

    The demonstration is tokenized on its own, as the tokens a policy would sample after the
    prompt; responses are right-padded with the pad id and response_mask is 0 there.
    """
    eos = policy.tokenizer.eos_token_id
    eos = int(policy.eos_ids[0]) if eos is None else eos
    completions = [policy.tokenizer(task.demonstration(ex), add_special_tokens=False)["input_ids"]
                   + [eos] for ex in examples]
    T = max(len(c) for c in completions)
    responses = torch.full((len(examples), 1, T), policy.pad_id, dtype=torch.long)
    response_mask = torch.zeros((len(examples), 1, T))
    for i, ids in enumerate(completions):
        responses[i, 0, :len(ids)] = torch.tensor(ids)
        response_mask[i, 0, :len(ids)] = 1.0
    return [ex["prompt"] for ex in examples], responses, response_mask


def sft_loss(policy: HFPolicy, prompts: list[str], responses: Tensor, response_mask: Tensor
             ) -> Tensor:
    """Mean negative log-likelihood over the response tokens of the batch. (B, G, T) -> ()."""
    logp, _ = policy.logprobs(prompts, responses, response_mask)
    return -masked_mean(logp, response_mask.to(logp.device))


MAX_SKIPPED = 5  # non-finite updates in a row before SFT stops


def lr_at(step: int, steps: int, lr: float, warmup_steps: int) -> float:
    """Linear warm-up over `warmup_steps`, then cosine decay to 0 at `steps`; step counts from 0.

    Example: steps=100, warmup_steps=10, lr=1e-3: step 0 -> 1e-4, step 9 -> 1e-3,
    step 55 -> 5e-4.
    """
    return lr * schedule_factor(step, steps, warmup_steps, "cosine", 0.0)


def sft(policy: HFPolicy, task: TextTask, steps: int, batch_size: int = 64, lr: float = 1e-3,
        warmup_steps: int = 20, weight_decay: float = 0.0, grad_clip: float = 1.0,
        eval_every: int = 50, eval_examples: int | None = 256, stop_at: float | None = None,
        seed: int = 0, log: Callable[[int, dict[str, float]], None] | None = None,
        progress: bool = True) -> dict:
    """Train `policy` in place on demonstrations; returns the last step's metrics with the last
    evaluation's (eval/*), plus sft/steps and sft/stopped_early.

    Held-out greedy evaluation (`evaluate_text` on the first `eval_examples`) runs before the
    first step, every `eval_every` steps and after the last; `stop_at` stops after the first
    evaluation whose eval/exact_match >= stop_at (possibly step 0). `log(step, metrics)` gets
    every step's metrics. grad_clip 0 turns clipping off. Every prompt and demonstration is
    first checked to survive the tokenizer (tasks/coverage.py).
    """
    if policy.temperature != 1.0:
        raise ValueError(f"SFT fits the model's own distribution, but the policy scales its "
                         f"logits by temperature {policy.temperature}; load it with "
                         "temperature=1.0")
    if stop_at is not None and task.correctness is None:
        raise ValueError(f"stop_at needs eval/exact_match, but task {task.name!r} has no "
                         "correctness reward")
    if steps < 0 or batch_size < 1 or eval_every < 1:
        raise ValueError(f"need steps >= 0, batch_size >= 1 and eval_every >= 1; got {steps}, "
                         f"{batch_size}, {eval_every}")
    check_coverage(task, policy, demonstrations=True)
    log = log or (lambda step, metrics: None)
    generator = torch.Generator().manual_seed(seed)
    params = [p for p in policy.model.parameters() if p.requires_grad]
    optimizer = adamw(params, lr, weight_decay)

    def evaluate() -> dict[str, float]:
        return evaluate_text(task, policy, max_examples=eval_examples)[0]

    def reached(metrics: dict[str, float]) -> bool:
        return stop_at is not None and metrics["eval/exact_match"] >= stop_at

    last_eval = evaluate()
    log(0, last_eval)
    metrics: dict[str, float] = {}
    step = in_a_row = 0
    bar = tqdm(total=steps, disable=not progress, desc="sft", dynamic_ncols=True, mininterval=1.0)
    while step < steps and not reached(last_eval):
        metrics = sft_step(policy, task, optimizer, params, batch_size,
                           lr_at(step, steps, lr, warmup_steps), grad_clip, generator)
        step += 1
        in_a_row = in_a_row + 1 if metrics["train/skipped_update"] else 0
        if in_a_row >= MAX_SKIPPED:
            raise NonFiniteError(f"{in_a_row} SFT updates in a row had a non-finite loss or "
                                 "gradient and were skipped; lower --lr")
        if step % eval_every == 0 or step == steps:
            last_eval = evaluate()
            metrics.update(last_eval)
        log(step, metrics)
        bar.update(1)
        bar.set_postfix(loss=f"{metrics['train/sft_loss']:.3f}",
                        heldout_em=f"{last_eval.get('eval/exact_match', float('nan')):.3f}",
                        refresh=False)  # redraw at tqdm's own interval, not every step
    bar.close()
    return {**metrics, **last_eval, "sft/steps": step, "sft/stopped_early": step < steps}


def sft_step(policy: HFPolicy, task: TextTask, optimizer: torch.optim.Optimizer,
             params: list[Tensor], batch_size: int, lr: float, grad_clip: float,
             generator: torch.Generator) -> dict[str, float]:
    """One update on `batch_size` fresh demonstrations at learning rate `lr`."""
    policy.train()
    prompts, responses, response_mask = demonstration_batch(
        policy, task, task.sample_prompts(batch_size, generator))
    loss = sft_loss(policy, prompts, responses, response_mask)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    grad_norm = torch.nn.utils.clip_grad_norm_(params, grad_clip if grad_clip > 0 else math.inf)
    for group in optimizer.param_groups:
        group["lr"] = lr
    # A non-finite loss or gradient would make every weight NaN: skip the update.
    skipped = not (math.isfinite(float(loss.detach())) and math.isfinite(float(grad_norm)))
    if not skipped:
        optimizer.step()
    return {"train/sft_loss": float(loss.detach()), "train/grad_norm": float(grad_norm),
            "train/lr": lr, "train/response_tokens": float(response_mask.sum()),
            "train/skipped_update": float(skipped)}


def run_sft(model_path: str | Path, task: TextTask, out_dir: str | Path,
            device: str = "auto", dtype: str = "auto", overwrite: bool = False,
            **sft_kwargs) -> dict:
    """Load `model_path`, fine-tune it on `task` (sft's keyword arguments), save the model to
    out_dir with metrics.jsonl (one line per step) and summary.json; returns the summary.
    device and dtype are HFPolicy.from_pretrained's.

    out_dir must be new or empty, or (overwrite) an earlier lmrl sft output, and never the
    model's own directory; the whole output is written aside and moved in when complete
    (files.output_dir), so a failed run leaves any earlier output as it was."""
    out_dir = Path(out_dir)
    inputs = (model_path,) if Path(model_path).exists() else ()
    files.check_output(out_dir, "sft", overwrite=overwrite, inputs=inputs)
    policy = HFPolicy.from_pretrained(str(model_path), dtype=dtype, device=device,
                                      max_new_tokens=task.max_new_tokens)
    with files.output_dir(out_dir, "sft", replace=overwrite) as tmp:
        logger = MetricsLogger(tmp)
        try:
            final = sft(policy, task, log=logger.log, **sft_kwargs)
        finally:
            logger.close()
        if not all(bool(torch.isfinite(p).all()) for p in policy.model.parameters()):
            raise NonFiniteError("the fine-tuned weights are non-finite; nothing was saved. "
                                 "Lower --lr")
        policy.save_pretrained(tmp)
        summary = {**final, "model_path": str(model_path), "task": task.name,
                   "out_dir": str(out_dir),
                   "settings": {k: v for k, v in sft_kwargs.items() if k != "progress"}}
        (tmp / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary
