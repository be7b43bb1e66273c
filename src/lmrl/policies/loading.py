"""What a --model argument may be, checked before transformers sees it: a complete local
save_pretrained directory, or a hub name (looked up in the local cache only when the hub cannot
be reached), so that a bad one fails at once, with the missing part named, before any run
directory exists."""

import contextlib
import functools
import os
import re
import socket
from pathlib import Path
from urllib.parse import urlparse

from safetensors import SafetensorError

from lmrl.errors import ModelLoadError

WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin",
                "pytorch_model.bin.index.json")
TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "vocab.json", "vocab.txt",
                   "spiece.model")


def model_source(path_or_name: str) -> bool:
    """Check a model argument before transformers sees it; True: load from local files only.

    A path that exists must be a complete save_pretrained directory (config, weights,
    tokenizer), checked here so that a broken one fails at once with the missing part named,
    before any run directory exists. Something that looks like a path (./x, /x, ~/x, a/b/c)
    but does not exist fails at once instead of being tried as a hub name (transformers retries
    the hub for ~50 s offline). A hub name is read from the local cache only when the hub cannot
    be reached."""
    path = Path(path_or_name).expanduser()
    if path.exists():
        if not path.is_dir():
            raise ModelLoadError(f"--model {path_or_name}: is a file; give the directory "
                                 "save_pretrained wrote (config.json, weights, tokenizer)")
        missing = [what for what, names in (("config.json", ("config.json",)),
                                            ("weights (model.safetensors)", WEIGHT_FILES),
                                            ("tokenizer files (tokenizer.json)", TOKENIZER_FILES))
                   if not any((path / n).is_file() for n in names)]
        if missing:
            raise ModelLoadError(f"--model {path_or_name}: the directory has no "
                                 f"{' and no '.join(missing)}, so it is not a complete saved "
                                 "model; point --model at the directory save_pretrained or lmrl "
                                 "init-model wrote")
        return True
    if path_or_name.startswith((".", "/", "~")) or path_or_name.count("/") > 1 or \
            not HUB_NAME.fullmatch(path_or_name):
        raise ModelLoadError(f"--model {path_or_name}: no such directory; give an existing "
                             "model directory or a hub name such as Qwen/Qwen2.5-0.5B")
    return not hub_reachable()


HUB_NAME = re.compile(r"[\w.-]+(/[\w.-]+)?")


@functools.cache
def hub_reachable() -> bool:
    """Whether the HuggingFace hub answers at the TCP level (3 s), unless HF_HUB_OFFLINE."""
    if os.environ.get("HF_HUB_OFFLINE", "") not in ("", "0"):
        return False
    host = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co")).hostname
    try:
        socket.create_connection((host, 443), timeout=3).close()
    except OSError:
        return False
    return True


def check_tokenizer(tokenizer, name: str) -> None:
    """A tokenizer that encodes text to nothing would fail only at the first evaluation."""
    try:
        ids = tokenizer("0 1", add_special_tokens=False)["input_ids"]
    except Exception as err:  # noqa: BLE001 - any failure here means a broken tokenizer
        raise ModelLoadError(f"--model {name}: its tokenizer cannot encode text ({err})") from err
    if not ids:
        raise ModelLoadError(f"--model {name}: its tokenizer encodes text to no tokens; the "
                             "tokenizer files are incomplete")


@contextlib.contextmanager
def load_errors(name: str, part: str):
    """transformers' and safetensors' loading errors as one ModelLoadError naming the part of
    the model that failed (a truncated model.safetensors, a tokenizer.json that is not JSON)."""
    try:
        yield
    except (OSError, ValueError, KeyError, TypeError, RuntimeError, SafetensorError) as err:
        damaged = " (damaged or truncated?)" if isinstance(err, (SafetensorError, ValueError)) \
            else ""
        raise ModelLoadError(f"cannot load model {name!r}: {part} failed to load{damaged}: "
                             f"{type(err).__name__}: {err}. Give a directory written by "
                             "save_pretrained (lmrl init-model makes one) or a hub name; a model "
                             "with its own code needs --trust-remote-code") from err
