"""Training and evaluating a Bradley-Terry reward model (lmrl rm train / lmrl rm eval).

Each step draws `batch_size` training pairs at random (with replacement, from a seeded
generator), scores every chosen and rejected text in one forward pass, and takes an AdamW step
on the mean Bradley-Terry loss (loss.py) at a constant learning rate. Held-out pairwise accuracy
and mean score gap are measured before the first step, every `eval_every` steps and after the
last; they are the signal (the loss of a separable set goes to 0 however the scores spread).
"""

import json
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor
from tqdm import tqdm

from lmrl import files
from lmrl.errors import NonFiniteError
from lmrl.logging import MetricsLogger
from lmrl.optim import adamw
from lmrl.rm.loss import bradley_terry_loss, mean_loss, pair_metrics
from lmrl.rm.model import (
    encode,
    load_backbone,
    load_reward_model,
    load_tokenizer,
    quiet_transformers,
    scores_of,
)
from lmrl.rm.pairs import Pairs, read_pairs, split

MAX_SKIPPED = 5  # non-finite updates in a row before training stops


@dataclass(frozen=True)
class Encoded:
    """Pairs as token ids: P chosen rows, P rejected rows, margins (P,)."""

    chosen: list[list[int]]
    rejected: list[list[int]]
    margins: Tensor

    def __len__(self) -> int:
        return len(self.chosen)

    def subset(self, index: list[int]) -> "Encoded":
        return Encoded([self.chosen[i] for i in index], [self.rejected[i] for i in index],
                       self.margins[index])


def encode_pairs(pairs: Pairs, tokenizer, max_length: int | None) -> tuple[Encoded, int]:
    """(token ids of prompt + chosen and prompt + rejected, how many pairs were truncated):
    a text over max_length tokens loses its first tokens (model.encode)."""
    chosen = [encode(tokenizer, p + c, max_length)
              for p, c in zip(pairs.prompts, pairs.chosen, strict=True)]
    rejected = [encode(tokenizer, p + r, max_length)
                for p, r in zip(pairs.prompts, pairs.rejected, strict=True)]
    truncated = sum(c[1] or r[1] for c, r in zip(chosen, rejected, strict=True))
    margins = torch.tensor(pairs.margins or [0.0] * len(pairs), dtype=torch.float32)
    return Encoded([c[0] for c in chosen], [r[0] for r in rejected], margins), truncated


def pair_scores(model, batch: Encoded, pad_id: int) -> tuple[Tensor, Tensor]:
    """(r_chosen, r_rejected) from one forward pass over both. -> (P,) x 2"""
    scores = scores_of(model, batch.chosen + batch.rejected, pad_id)
    return scores[:len(batch)], scores[len(batch):]


@torch.no_grad()
def evaluate_pairs(model, pairs: Encoded, pad_id: int, batch_size: int = 32,
                   prefix: str = "eval/") -> dict[str, float]:
    """accuracy, gap_mean and loss (with margins) over all the pairs, batch_size at a time."""
    model.eval()
    parts = [pair_scores(model, pairs.subset(list(range(i, min(i + batch_size, len(pairs))))),
                         pad_id) for i in range(0, len(pairs), batch_size)]
    r_chosen, r_rejected = (torch.cat(p).cpu() for p in zip(*parts, strict=True))
    loss = mean_loss(bradley_terry_loss(r_chosen, r_rejected, pairs.margins))
    metrics = {**pair_metrics(r_chosen, r_rejected), "loss": float(loss)}
    return {prefix + k: v for k, v in metrics.items()}


def train_step(model, batch: Encoded, pad_id: int, optimizer: torch.optim.Optimizer,
               params: list[Tensor], grad_clip: float) -> dict[str, float]:
    """One AdamW update on a batch of pairs; a non-finite loss or gradient skips it."""
    model.train()
    r_chosen, r_rejected = pair_scores(model, batch, pad_id)
    margins = batch.margins.to(r_chosen.device)
    loss = mean_loss(bradley_terry_loss(r_chosen, r_rejected, margins))
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    grad_norm = torch.nn.utils.clip_grad_norm_(params, grad_clip if grad_clip > 0 else math.inf)
    skipped = not (math.isfinite(float(loss.detach())) and math.isfinite(float(grad_norm)))
    if not skipped:
        optimizer.step()
    train = pair_metrics(r_chosen.detach(), r_rejected.detach())
    return {"train/loss": float(loss.detach()), "train/accuracy": train["accuracy"],
            "train/gap_mean": train["gap_mean"], "train/grad_norm": float(grad_norm),
            "train/skipped_update": float(skipped)}


def train_rm(model, pad_id: int, train: Encoded, heldout: Encoded, steps: int,
             batch_size: int = 16, lr: float = 1e-4, weight_decay: float = 0.0,
             grad_clip: float = 1.0, eval_every: int = 50, seed: int = 0,
             log: Callable[[int, dict[str, float]], None] | None = None,
             progress: bool = True) -> dict[str, float]:
    """Train `model` in place; returns the last step's metrics with the last evaluation's."""
    log = log or (lambda step, metrics: None)
    generator = torch.Generator().manual_seed(seed)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = adamw(params, lr, weight_decay)
    last_eval = evaluate_pairs(model, heldout, pad_id, batch_size)
    log(0, last_eval)
    metrics: dict[str, float] = {}
    in_a_row = 0
    bar = tqdm(total=steps, disable=not progress, desc="rm", dynamic_ncols=True, mininterval=1.0)
    for step in range(1, steps + 1):
        batch = train.subset(torch.randint(len(train), (batch_size,), generator=generator)
                             .tolist())
        metrics = train_step(model, batch, pad_id, optimizer, params, grad_clip)
        in_a_row = in_a_row + 1 if metrics["train/skipped_update"] else 0
        if in_a_row >= MAX_SKIPPED:
            raise NonFiniteError(f"{in_a_row} reward-model updates in a row had a non-finite "
                                 "loss or gradient and were skipped; lower --lr")
        if step % eval_every == 0 or step == steps:
            last_eval = evaluate_pairs(model, heldout, pad_id, batch_size)
            metrics.update(last_eval)
        log(step, metrics)
        bar.update(1)
        bar.set_postfix(loss=f"{metrics['train/loss']:.3f}",
                        heldout_acc=f"{last_eval['eval/accuracy']:.3f}", refresh=False)
    bar.close()
    model.eval()
    return {**metrics, **last_eval, "rm/steps": steps}


def resolve(device: str) -> str:
    return ("cuda" if torch.cuda.is_available() else "cpu") if device == "auto" else device


def read_encoded(data, tokenizer, margin_column: str | None, max_length: int | None,
                 say: Callable[[str], None]) -> tuple[Pairs, Encoded, int]:
    """The cleaned pairs of `data`, as texts and as token ids, and how many were truncated
    (what was dropped or truncated is said with `say`)."""
    pairs, notes = read_pairs(data, tokenizer, margin_column)
    for note in notes:
        say(f"note: {note}")
    encoded, truncated = encode_pairs(pairs, tokenizer, max_length)
    if truncated:
        say(f"note: truncated {truncated} of {len(pairs)} pairs to their last --max-length "
            f"{max_length} tokens (the prompt's start is cut first)")
    return pairs, encoded, truncated


def write_pairs(path: Path, pairs: Pairs) -> None:
    """Rendered pairs as standard-format JSONL (rm eval scores them exactly as trained)."""
    rows = [{"prompt": p, "chosen": c, "rejected": r,
             **({} if pairs.margins is None else {"margin": pairs.margins[i]})}
            for i, (p, c, r) in enumerate(zip(pairs.prompts, pairs.chosen, pairs.rejected,
                                              strict=True))]
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))


def run_rm_train(model_path: str, data, out_dir: str | Path, overwrite: bool = False,
                 heldout_size: int = 0, max_length: int | None = 1024,
                 margin_column: str | None = None, seed: int = 0, device: str = "auto",
                 trust_remote_code: bool = False, say: Callable[[str], None] = print,
                 **train_kwargs) -> dict:
    """Load `model_path` with a new one-output head, train it on the pairs of `data`
    (train_rm's keyword arguments), and save to out_dir: the model and tokenizer
    (save_pretrained), metrics.jsonl, heldout.jsonl (the held-out pairs, rendered) and
    summary.json; returns the summary. out_dir is written as `lmrl sft` writes its output
    (files.output_dir: new or empty, or with overwrite an earlier lmrl rm output)."""
    out_dir = Path(out_dir)
    inputs = (model_path,) if Path(model_path).exists() else ()
    files.check_output(out_dir, "rm", overwrite=overwrite, inputs=inputs)
    tokenizer = load_tokenizer(model_path, trust_remote_code)
    pairs, encoded, truncated = read_encoded(data, tokenizer, margin_column, max_length, say)
    torch.manual_seed(seed)  # the new head's initial weights
    model, new = load_backbone(model_path, tokenizer, trust_remote_code)
    if new:
        say(f"new weights (randomly initialised): {', '.join(new)}")
    model.to(resolve(device))
    train_index, heldout_index = split(len(pairs), heldout_size, seed)
    train, heldout = encoded.subset(train_index), encoded.subset(heldout_index)
    say(f"{len(train)} training pairs, {len(heldout)} held out")
    with files.output_dir(out_dir, "rm", replace=overwrite) as tmp:
        logger = MetricsLogger(tmp)
        try:
            final = train_rm(model, tokenizer.pad_token_id, train, heldout, seed=seed,
                             log=logger.log, **train_kwargs)
        finally:
            logger.close()
        if not all(bool(torch.isfinite(p).all()) for p in model.parameters()):
            raise NonFiniteError("the reward model's weights are non-finite; nothing was saved. "
                                 "Lower --lr")
        with quiet_transformers():
            model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        write_pairs(tmp / "heldout.jsonl", pairs.subset(heldout_index))
        summary = {**final, "model_path": str(model_path), "data": str(data),
                   "out_dir": str(out_dir), "pairs/train": len(train),
                   "pairs/heldout": len(heldout), "pairs/truncated": truncated,
                   "settings": {"heldout_size": heldout_size, "max_length": max_length,
                                "margin_column": margin_column, "seed": seed,
                                **{k: v for k, v in train_kwargs.items() if k != "progress"}}}
        (tmp / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary


def run_rm_eval(model_path: str, data, batch_size: int = 32, max_length: int | None = 1024,
                margin_column: str | None = None, device: str = "auto",
                trust_remote_code: bool = False, say: Callable[[str], None] = print
                ) -> dict[str, float]:
    """Pairwise accuracy, mean gap and loss of a saved reward model on the pairs of `data`."""
    tokenizer = load_tokenizer(model_path, trust_remote_code)
    pairs, encoded, _ = read_encoded(data, tokenizer, margin_column, max_length, say)
    model = load_reward_model(model_path, tokenizer, trust_remote_code).to(resolve(device))
    metrics = evaluate_pairs(model, encoded, tokenizer.pad_token_id, batch_size, prefix="")
    return {**metrics, "pairs": len(pairs)}
