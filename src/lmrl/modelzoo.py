"""Small causal LMs from scratch with a char-level tokenizer fitted to a task (lmrl init-model).

A task's text uses a few dozen characters, so one token per character keeps the vocabulary
tiny (V ≈ 15 for digit tasks) and the model's whole budget goes to the transformer. The model is
a standard Qwen2 or Llama architecture saved with `save_pretrained`, so every tool that loads a
HF directory (HFPolicy.from_pretrained, lmrl sft, lmrl train) loads it unchanged.

The tokenizer is a byte-level BPE with no merges: one token per UTF-8 byte, i.e. one per
character for ASCII text. That format, rather than a WordLevel vocabulary, is deliberate:
transformers 5 loads the tokenizer of a `qwen2` model as `Qwen2Tokenizer` whatever class
tokenizer_config.json names, and Qwen2Tokenizer rebuilds a byte-level BPE pipeline from the
saved vocabulary and merges. A WordLevel tokenizer reloaded that way loses every space and
newline ("12 + 3" -> "12+3"); a byte-level vocabulary reloads to the same ids. For a `llama`
model AutoTokenizer keeps the saved tokenizer.json (class PreTrainedTokenizerFast, also named
TokenizersBackend). tests/test_modelzoo.py checks both paths.
"""

import itertools
import json
from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers
from transformers import (
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedTokenizerFast,
    Qwen2Config,
    Qwen2ForCausalLM,
)

from lmrl.errors import ConfigError

PAD, EOS, UNK = "<pad>", "<eos>", "<unk>"  # ids 0, 1, 2
# A small chat template (init-model --chat-template): each message as <|role|>content and a
# newline, then the assistant's turn opened. Its literal characters join the alphabet through
# the rendered prompts (task_alphabet).
CHAT_TEMPLATE = ("{% for m in messages %}<|{{ m.role }}|>{{ m.content }}\n{% endfor %}"
                 "{% if add_generation_prompt %}<|assistant|>{% endif %}")
ARCHS = {"qwen2": (Qwen2Config, Qwen2ForCausalLM), "llama": (LlamaConfig, LlamaForCausalLM)}


def char_tokenizer(alphabet: str, chat_template: str | None = None) -> PreTrainedTokenizerFast:
    """One token per byte of `alphabet`'s characters (per character for ASCII), after <pad>,
    <eos> and <unk>; decode(encode(s)) == s for any text written in the alphabet.

    Example: char_tokenizer("\\n +0123456789=") has V = 18 tokens; "1 + 2" -> 5 ids.
    Normalizer and pre-tokenizer are the ones Qwen2Tokenizer rebuilds (NFC, byte level), so the
    ids do not depend on which class transformers reloads it as. A character outside the
    alphabet becomes <unk> here and is dropped by Qwen2Tokenizer: fit the alphabet to the task
    (task_alphabet) rather than rely on either. `chat_template` (a Jinja template, e.g.
    CHAT_TEMPLATE) renders conversational prompts.
    """
    byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    # Each byte's printable stand-in (GPT-2's map: " " is "Ġ", "\n" is "Ċ") is one token.
    symbols = sorted(set("".join(piece for piece, _ in byte_level.pre_tokenize_str(alphabet))))
    vocab = {tok: i for i, tok in enumerate([PAD, EOS, UNK] + symbols)}
    tok = Tokenizer(models.BPE(vocab, [], unk_token=UNK, fuse_unk=False, byte_fallback=False))
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = byte_level
    tok.decoder = decoders.ByteLevel()
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token=PAD, eos_token=EOS,
                                   unk_token=UNK, chat_template=chat_template)


def task_alphabet(task, num_examples: int = 2000, seed: int = 0, extra: str = "",
                  chat_template: str | None = None) -> str:
    """Sorted characters of the held-out examples, of the training examples (all of a finite
    training set, else `num_examples` sampled ones), of their demonstrations, and of `extra`.
    Conversational prompts count as rendered by `chat_template`, the template's own text
    included.

    A task without demonstrations (user data with no completion column) contributes its prompts
    only; its completions may then need `--alphabet ascii`.
    """
    train = task.train if task.train is not None else \
        task.sample_prompts(num_examples, torch.Generator().manual_seed(seed))
    demonstrations = getattr(task, "has_demonstrations", lambda: True)()
    render = _renderer(chat_template)
    chars = set(extra)
    for ex in itertools.chain(task.heldout, train):
        chars.update(ex["prompt"] if isinstance(ex["prompt"], str) else render(ex["prompt"]))
        try:
            chars.update(task.demonstration(ex) if demonstrations else "")
        except NotImplementedError:
            pass  # no demonstrations: the prompts' characters are all there is to go on
    return "".join(sorted(chars))


def _renderer(chat_template: str | None):
    """messages -> the prompt text the chat template makes of them (the assistant's turn
    opened); without a template, a ConfigError."""
    def missing(messages) -> str:
        raise ConfigError("the data's prompts are conversational (lists of role/content "
                          "messages), which a chat template renders; pass --chat-template")
    if chat_template is None:
        return missing
    tokenizer = char_tokenizer("", chat_template)  # rendering needs no vocabulary
    return lambda messages: tokenizer.apply_chat_template(
        messages, add_generation_prompt=True, tokenize=False)


def init_model(out_dir: str | Path, alphabet: str, arch: str = "qwen2", hidden_size: int = 128,
               num_layers: int = 4, num_heads: int = 4, num_kv_heads: int | None = None,
               intermediate_size: int | None = None, max_position_embeddings: int = 512,
               seed: int = 0, chat_template: str | None = None) -> int:
    """Build a randomly initialised `arch` model and its char tokenizer, save both to out_dir
    (config.json, generation_config.json, model.safetensors, tokenizer files, lmrl_init.json),
    and return the parameter count.

    num_kv_heads None is num_heads (no grouped-query attention); intermediate_size None is
    2 * hidden_size (Llama uses ~2.7x; 2x keeps the default model at ~0.66M parameters).
    Embeddings are tied to the output layer, dropout is 0 (RL ratios need a deterministic
    forward pass) and there is no BOS token: a prompt is its characters, nothing else.
    chat_template (e.g. CHAT_TEMPLATE) is saved with the tokenizer.
    """
    if arch not in ARCHS:
        raise ValueError(f"unknown arch {arch!r}; choose one of {sorted(ARCHS)}")
    if hidden_size % num_heads:
        raise ValueError(f"hidden_size {hidden_size} is not a multiple of num_heads {num_heads}")
    tokenizer = char_tokenizer(alphabet, chat_template)
    config_cls, model_cls = ARCHS[arch]
    config = config_cls(
        vocab_size=len(tokenizer), hidden_size=hidden_size, num_hidden_layers=num_layers,
        num_attention_heads=num_heads, num_key_value_heads=num_kv_heads or num_heads,
        intermediate_size=intermediate_size or 2 * hidden_size,
        max_position_embeddings=max_position_embeddings, tie_word_embeddings=True,
        attention_dropout=0.0, pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id, bos_token_id=None)
    with torch.random.fork_rng(devices=[]):  # seed the init without moving the caller's RNG
        torch.manual_seed(seed)
        model = model_cls(config)
    gen = model.generation_config
    gen.eos_token_id, gen.pad_token_id = tokenizer.eos_token_id, tokenizer.pad_token_id
    gen.bos_token_id = None
    num_params = sum(p.numel() for p in model.parameters())  # tied weights counted once

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    record = {"arch": arch, "alphabet": alphabet, "vocab_size": len(tokenizer),
              "hidden_size": hidden_size, "num_layers": num_layers, "num_heads": num_heads,
              "num_kv_heads": config.num_key_value_heads,
              "intermediate_size": config.intermediate_size,
              "max_position_embeddings": max_position_embeddings, "seed": seed,
              "num_parameters": num_params,
              "chat_template": chat_template}
    (out_dir / "lmrl_init.json").write_text(json.dumps(record, indent=2) + "\n")
    return num_params
