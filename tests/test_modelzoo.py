"""lmrl.modelzoo: the char tokenizer round-trips text, survives the reload path lmrl uses
(AutoTokenizer, which in transformers 5 picks Qwen2Tokenizer for a qwen2 config), and
init_model writes a directory HFPolicy.from_pretrained loads and samples from."""

import json

import pytest

pytest.importorskip("transformers")

import torch  # noqa: E402
from transformers import AutoModelForCausalLM, AutoTokenizer  # noqa: E402

from lmrl.modelzoo import char_tokenizer, init_model, task_alphabet  # noqa: E402
from lmrl.policies.hf import HFPolicy  # noqa: E402
from lmrl.tasks.text import TextTask  # noqa: E402

ALPHABET = "\n +0123456789=é"
TEXT = "12 + 30 =\n42 é  7"  # spaces (doubled too), newline, digits, "=", a 2-byte character
TINY = {"hidden_size": 32, "num_layers": 1, "num_heads": 2}


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module", params=["qwen2", "llama"])
def model_dir(request, tmp_path_factory):
    path = tmp_path_factory.mktemp(request.param)
    init_model(path, ALPHABET, arch=request.param, **TINY)
    return path


def test_char_tokenizer_round_trips_text_one_token_per_ascii_character():
    tok = char_tokenizer(ALPHABET)
    assert len(tok) == 3 + len(ALPHABET) + 1  # <pad> <eos> <unk>, and "é" is two bytes
    assert (tok.pad_token_id, tok.eos_token_id, tok.unk_token_id) == (0, 1, 2)
    assert tok.bos_token_id is None
    ids = tok(TEXT)["input_ids"]  # add_special_tokens=True, as HFPolicy.encode calls it
    assert len(ids) == len(TEXT) + 1
    assert tok.decode(ids) == TEXT
    assert tok("1 1")["input_ids"][1] == tok(" ")["input_ids"][0]
    assert tok("x1")["input_ids"] == [tok.unk_token_id, tok("1")["input_ids"][0]]


def test_saved_tokenizer_reloads_with_the_same_ids(model_dir):
    """Qwen2 comes back as Qwen2Tokenizer, which rebuilds its own byte-level pipeline from the
    vocabulary; Llama as PreTrainedTokenizerFast (TokenizersBackend). Either way: same ids."""
    original = char_tokenizer(ALPHABET)
    loaded = AutoTokenizer.from_pretrained(model_dir)
    arch = json.loads((model_dir / "config.json").read_text())["model_type"]
    print(f"{arch}: AutoTokenizer gave {type(loaded).__name__}")
    assert loaded.get_vocab() == original.get_vocab()
    for text in [TEXT, " ", "\n\n", "9=9", "  1  "]:
        ids = loaded(text)["input_ids"]
        assert ids == original(text)["input_ids"]
        assert loaded.decode(ids) == text
    assert (loaded.pad_token_id, loaded.eos_token_id, loaded.bos_token_id) == (0, 1, None)


def test_init_model_writes_a_complete_directory(model_dir):
    names = {p.name for p in model_dir.iterdir()}
    assert {"config.json", "generation_config.json", "model.safetensors", "tokenizer.json",
            "tokenizer_config.json", "lmrl_init.json"} <= names
    record = json.loads((model_dir / "lmrl_init.json").read_text())
    assert record["alphabet"] == ALPHABET and record["vocab_size"] == 19
    assert record["intermediate_size"] == 2 * TINY["hidden_size"]
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    assert sum(p.numel() for p in model.parameters()) == record["num_parameters"]
    cfg = model.config
    assert cfg.tie_word_embeddings and cfg.attention_dropout == 0.0
    assert (cfg.pad_token_id, cfg.eos_token_id, cfg.bos_token_id) == (0, 1, None)
    assert model.generation_config.eos_token_id == 1
    assert model.get_output_embeddings().weight is model.get_input_embeddings().weight


def test_hf_policy_loads_the_directory_and_samples(model_dir):
    policy = HFPolicy.from_pretrained(str(model_dir), max_new_tokens=6, device="cpu")
    assert policy.pad_id == 0 and policy.eos_ids.tolist() == [1]
    batch = policy.encode(["1 + 2 =", "3="])
    assert batch.attention_mask.sum(-1).tolist() == [7, 2]  # no BOS, no lost space
    rollout = policy.sample(["1 + 2 =", "3="], 3, generator=torch.Generator().manual_seed(0))
    assert rollout.responses.shape[:2] == (2, 3)
    greedy = [policy.sample(["1 + 2 ="], 2, temperature=0.0).texts for _ in range(2)]
    assert greedy[0] == greedy[1] and greedy[0][0][0] == greedy[0][0][1]


def test_init_model_is_seeded_and_leaves_the_global_rng_alone(tmp_path):
    state = torch.get_rng_state()
    init_model(tmp_path / "a", ALPHABET, **TINY, seed=1)
    assert torch.equal(torch.get_rng_state(), state)
    init_model(tmp_path / "b", ALPHABET, **TINY, seed=1)
    init_model(tmp_path / "c", ALPHABET, **TINY, seed=2)
    a, b, c = (AutoModelForCausalLM.from_pretrained(tmp_path / n).state_dict() for n in "abc")
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not all(torch.equal(a[k], c[k]) for k in a)


def test_default_model_has_about_0_66M_parameters(tmp_path):
    """hidden 128, 4 layers, MLP 256: 4 x ~164k per layer, plus V x 128 tied embeddings."""
    n = init_model(tmp_path, "\n +0123456789=,")
    assert 650_000 < n < 670_000


def test_init_model_rejects_an_unknown_arch(tmp_path):
    with pytest.raises(ValueError, match="llama"):
        init_model(tmp_path, ALPHABET, arch="gpt2")


class PairTask(TextTask):
    """Prompts "ab:" with two letters; the demonstration is "b a"."""

    name = "pairs"
    rewards, correctness = [], None

    def __init__(self) -> None:
        self.heldout = [{"prompt": "zz:"}]

    def train_example(self, generator: torch.Generator) -> dict:
        a, b = torch.randint(0, 3, (2,), generator=generator).tolist()
        return {"prompt": f"{'abc'[a]}{'abc'[b]}:"}

    def demonstration(self, example: dict) -> str:
        return f"{example['prompt'][1]} {example['prompt'][0]}"


def test_task_alphabet_covers_prompts_demonstrations_and_extra():
    assert task_alphabet(PairTask(), num_examples=200) == " :abcz"
    assert task_alphabet(PairTask(), num_examples=200, extra="\n") == "\n :abcz"
