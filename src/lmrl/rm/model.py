"""A reward model: transformers' AutoModelForSequenceClassification with num_labels=1 and its
tokenizer, saved and loaded as a plain save_pretrained directory (so anything that loads HF
models, `lmrl train --reward-model` included, can read it).

The reward of a text is the head's output at its last token. Rows are right-padded with the
tokenizer's pad token and config.pad_token_id is set, so transformers reads each row at its
last non-pad token; a row's real tokens never see its padding (causal attention plus the
attention mask, with positions counted from 0 in every row), so a row scores the same alone
and in any batch, up to float rounding. A text whose own last token is the pad token would be
read one token early: no EOS is appended to the texts (TRL appends one; lmrl scores the text
a policy sampled as it is, without its end token).
"""

import contextlib

import torch
from torch import Tensor
from transformers import AutoConfig, AutoModelForSequenceClassification, AutoTokenizer
from transformers.utils import logging as hf_logging

from lmrl.errors import DataError, ModelLoadError
from lmrl.policies.loading import check_tokenizer, load_errors, model_source


@contextlib.contextmanager
def quiet_transformers():
    """transformers' load report and progress bar off: a causal LM's missing head is expected,
    and lmrl says what is new itself."""
    verbosity, bars = hf_logging.get_verbosity(), hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        hf_logging.set_verbosity(verbosity)
        if bars:
            hf_logging.enable_progress_bar()


def hub_settings(path_or_name: str, trust_remote_code: bool) -> dict:
    return {"trust_remote_code": trust_remote_code,
            "local_files_only": model_source(path_or_name)}


def load_tokenizer(path_or_name: str, trust_remote_code: bool = False):
    """The model's tokenizer; one without a pad token pads with its EOS."""
    with load_errors(path_or_name, "its tokenizer (tokenizer.json, tokenizer_config.json)"):
        tokenizer = AutoTokenizer.from_pretrained(
            path_or_name, **hub_settings(path_or_name, trust_remote_code))
    check_tokenizer(tokenizer, path_or_name)
    if tokenizer.pad_token is None:
        if tokenizer.eos_token is None:
            raise ModelLoadError(f"--model {path_or_name}: its tokenizer has neither a pad nor "
                                 "an EOS token to pad batches with")
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_backbone(path_or_name: str, tokenizer, trust_remote_code: bool = False
                  ) -> tuple[torch.nn.Module, list[str]]:
    """(model, the names of its newly initialised weights): a causal LM (or a reward model)
    with a one-output head, which is new on a causal LM. float32 weights."""
    with load_errors(path_or_name, "its config or weights (config.json, model.safetensors)"), \
            quiet_transformers():
        model, info = AutoModelForSequenceClassification.from_pretrained(
            path_or_name, num_labels=1, dtype=torch.float32, output_loading_info=True,
            **hub_settings(path_or_name, trust_remote_code))
    # Without it transformers cannot find the last real token of a padded row.
    model.config.pad_token_id = tokenizer.pad_token_id
    return model, sorted(info["missing_keys"])


def load_reward_model(path_or_name: str, tokenizer, trust_remote_code: bool = False):
    """A saved reward model: refused unless its config names a sequence-classification
    architecture with one output and every weight is in the checkpoint (a plain causal LM would
    be scored by a random head)."""
    with load_errors(path_or_name, "its config (config.json)"):
        config = AutoConfig.from_pretrained(path_or_name,
                                            **hub_settings(path_or_name, trust_remote_code))
    architectures = getattr(config, "architectures", None) or []
    if not any(a.endswith("ForSequenceClassification") for a in architectures) or \
            config.num_labels != 1:
        raise ModelLoadError(f"--model {path_or_name} is not a reward model (its config names "
                             f"{architectures or 'no architecture'} with {config.num_labels} "
                             "outputs); train one with lmrl rm train, or give the directory it "
                             "wrote")
    model, new = load_backbone(path_or_name, tokenizer, trust_remote_code)
    if new:
        raise ModelLoadError(f"--model {path_or_name}: the checkpoint lacks {', '.join(new)}; "
                             "it is incomplete")
    return model


def encode(tokenizer, text: str, max_length: int | None = None) -> tuple[list[int], bool]:
    """(token ids, whether it was truncated). The tokenizer's special tokens are added unless
    the text already starts with its BOS (a chat template's text does). Longer than
    max_length: the first tokens (the prompt's start) are cut, keeping the completion's end,
    where the reward is read."""
    bos = tokenizer.bos_token
    ids = tokenizer(text, add_special_tokens=not (bos and text.startswith(bos)))["input_ids"]
    if not ids:
        raise DataError(f"the text {text!r} encodes to no tokens, so it has no last token to "
                        "read a reward at; give every pair a non-empty prompt or completion")
    if max_length is not None and len(ids) > max_length:
        return ids[-max_length:], True
    return ids, False


def scores_of(model, rows: list[list[int]], pad_id: int) -> Tensor:
    """The reward of each row of token ids, in one right-padded forward pass. -> (N,)"""
    L = max(len(ids) for ids in rows)
    input_ids = torch.full((len(rows), L), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((len(rows), L), dtype=torch.long)
    for i, ids in enumerate(rows):
        input_ids[i, :len(ids)] = torch.tensor(ids)
        attention_mask[i, :len(ids)] = 1
    device = next(model.parameters()).device
    out = model(input_ids=input_ids.to(device), attention_mask=attention_mask.to(device))
    return out.logits[:, 0].float()


def score(model, tokenizer, prompts: list[str], completions: list[str], batch_size: int = 32,
          max_length: int | None = None) -> Tensor:
    """The reward of each prompt text + completion text, batch_size rows per forward pass,
    without gradients, on the CPU. -> (N,)

    Conversational prompts are rendered by the caller (the chat template's text with the
    assistant's turn opened, as lmrl's policies sample from it)."""
    if len(prompts) != len(completions):
        raise ValueError(f"{len(prompts)} prompts but {len(completions)} completions")
    return score_texts(model, tokenizer, [p + c for p, c in zip(prompts, completions,
                                                                strict=True)],
                       batch_size, max_length)


@torch.no_grad()
def score_texts(model, tokenizer, texts: list[str], batch_size: int = 32,
                max_length: int | None = None) -> Tensor:
    """The reward of each whole text (encode: special tokens as in training), batch_size rows
    per forward pass, without gradients; on the model's device, returned on the CPU. -> (N,)
    `lmrl train --reward-model` scores through this too, so a reward model reads its texts
    during RL exactly as it read its pairs in `lmrl rm train`."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, not {batch_size}")
    was_training = model.training
    model.eval()
    rows = [encode(tokenizer, text, max_length)[0] for text in texts]
    scores = [scores_of(model, rows[i:i + batch_size], tokenizer.pad_token_id).cpu()
              for i in range(0, len(rows), batch_size)]
    model.train(was_training)
    return torch.cat(scores) if scores else torch.zeros(0)
