"""lmrl.sft on a tiny model and a trivial task: the loss is the completion-only cross-entropy of
a manual unpadded forward pass, training raises held-out exact match from 0 to high, stop_at
stops early, and run_sft writes a directory that reloads to the same greedy outputs."""

import json

import pytest

pytest.importorskip("transformers")

import torch  # noqa: E402

from lmrl.modelzoo import init_model  # noqa: E402
from lmrl.policies.hf import HFPolicy  # noqa: E402
from lmrl.sft import demonstration_batch, lr_at, run_sft, sft, sft_loss  # noqa: E402
from lmrl.tasks.text import RewardFn, TextTask, evaluate_text  # noqa: E402


def exact_match(prompts: list[str], completions: list[str], answer: list[str], **_) -> list[float]:
    """1.0 when the completion is the answer: exact_match(["3 7="], ["7 3"], ["7 3"]) == [1.0]."""
    return [float(c == a) for c, a in zip(completions, answer, strict=True)]


class ReverseTask(TextTask):
    """Reverse two digits: "3 7=" -> "7 3". 100 distinct prompts; 32 of them held out."""

    name = "reverse2"
    max_new_tokens = 5

    def __init__(self) -> None:
        self.rewards = [RewardFn("exact_match", exact_match)]
        self.correctness = "exact_match"
        g = torch.Generator().manual_seed(123)
        self.heldout = [self.train_example(g) for _ in range(32)]

    def train_example(self, generator: torch.Generator) -> dict:
        a, b = torch.randint(0, 10, (2,), generator=generator).tolist()
        return {"prompt": f"{a} {b}=", "answer": f"{b} {a}"}

    def demonstration(self, example: dict) -> str:
        return example["answer"]


class NoCorrectness(ReverseTask):
    def __init__(self) -> None:
        super().__init__()
        self.correctness = None


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module", params=["qwen2", "llama"])
def model_dir(request, tmp_path_factory):
    path = tmp_path_factory.mktemp(request.param)
    init_model(path, "0123456789 =", arch=request.param, hidden_size=32, num_layers=2,
               num_heads=2, seed=0)
    return path


CPU = {"device": "cpu", "dtype": "float32"}  # the manual forward passes below run in fp32


def load(model_dir, **kwargs) -> HFPolicy:
    return HFPolicy.from_pretrained(str(model_dir), max_new_tokens=ReverseTask.max_new_tokens,
                                    **CPU, **kwargs)


def fit(policy: HFPolicy, **kwargs) -> tuple[dict, list[tuple[int, dict]]]:
    records: list[tuple[int, dict]] = []
    settings = {"steps": 100, "batch_size": 64, "lr": 1e-2, "warmup_steps": 5,
                "eval_every": 20, "progress": False, **kwargs}
    final = sft(policy, ReverseTask(), log=lambda step, m: records.append((step, m)), **settings)
    return final, records


def test_demonstration_batch_is_the_completion_then_eos_right_padded(model_dir):
    policy = load(model_dir)
    examples = [{"prompt": "1 2=", "answer": "2 1"}, {"prompt": "3=", "answer": "3"}]
    prompts, responses, mask = demonstration_batch(policy, ReverseTask(), examples)
    tok = policy.tokenizer
    assert prompts == ["1 2=", "3="]
    assert responses[:, 0].tolist() == [tok("2 1")["input_ids"] + [1],
                                        tok("3")["input_ids"] + [1, 0, 0]]
    assert mask[:, 0].tolist() == [[1, 1, 1, 1], [1, 1, 0, 0]]


def test_loss_is_the_completion_cross_entropy_of_unpadded_sequences(model_dir):
    """Prompts of different lengths (so left padding) and completions of different lengths (so
    right padding): the loss equals a manual forward pass on each sequence alone, averaged over
    completion tokens, with prompt positions taking no part."""
    policy = load(model_dir)
    examples = [{"prompt": "1 2 3 4 5=", "answer": "5"}, {"prompt": "3=", "answer": "3 3 3"}]
    loss = sft_loss(policy, *demonstration_batch(policy, ReverseTask(), examples))
    nll, count = 0.0, 0
    for ex in examples:
        prompt = policy.tokenizer(ex["prompt"])["input_ids"]
        completion = policy.tokenizer(ex["answer"])["input_ids"] + [1]
        with torch.no_grad():
            logits = policy.model(torch.tensor([prompt + completion])).logits[0]
        logp = torch.log_softmax(logits[len(prompt) - 1:-1], dim=-1)
        nll -= float(logp.gather(-1, torch.tensor(completion)[:, None]).sum())
        count += len(completion)
    assert float(loss.detach()) == pytest.approx(nll / count, abs=1e-5)


def test_sft_takes_exact_match_from_zero_to_high(model_dir):
    final, records = fit(load(model_dir))
    losses = [m["train/sft_loss"] for step, m in records if step > 0]
    assert records[0][1]["eval/exact_match"] < 0.1
    assert final["eval/exact_match"] >= 0.9
    assert sum(losses[-5:]) < 0.2 * sum(losses[:5])
    assert final["sft/steps"] == 100 and not final["sft/stopped_early"]
    assert [step for step, m in records if "eval/exact_match" in m] == [0, 20, 40, 60, 80, 100]


def test_stop_at_stops_at_the_first_evaluation_that_reaches_it(model_dir):
    final, records = fit(load(model_dir), steps=200, eval_every=2, stop_at=0.3)
    evals = [(step, m["eval/exact_match"]) for step, m in records if "eval/exact_match" in m]
    assert final["sft/stopped_early"] and final["sft/steps"] == records[-1][0] < 200
    assert evals[-1] == (final["sft/steps"], final["eval/exact_match"])
    assert evals[-1][1] >= 0.3 and all(em < 0.3 for _, em in evals[:-1])


def test_stop_at_already_reached_trains_nothing(model_dir):
    policy = load(model_dir)
    before = {k: v.clone() for k, v in policy.state_dict().items()}
    final, records = fit(policy, stop_at=0.0)
    assert final["sft/steps"] == 0 and [step for step, _ in records] == [0]
    assert all(torch.equal(v, policy.state_dict()[k]) for k, v in before.items())


def test_stop_at_needs_a_correctness_reward(model_dir):
    with pytest.raises(ValueError, match="correctness"):
        sft(load(model_dir), NoCorrectness(), steps=1, stop_at=0.5, progress=False)


def test_sft_refuses_a_tempered_policy(model_dir):
    with pytest.raises(ValueError, match="temperature"):
        sft(load(model_dir, temperature=0.7), ReverseTask(), steps=1, progress=False)


def test_learning_rate_warms_up_linearly_then_decays_by_cosine():
    assert lr_at(0, 100, 1e-3, 10) == pytest.approx(1e-4)
    assert lr_at(9, 100, 1e-3, 10) == pytest.approx(1e-3)
    assert lr_at(10, 100, 1e-3, 10) == pytest.approx(1e-3)
    assert lr_at(55, 100, 1e-3, 10) == pytest.approx(5e-4)
    assert lr_at(99, 100, 1e-3, 10) < 1e-6
    assert lr_at(0, 100, 1e-3, 0) == pytest.approx(1e-3)


def test_run_sft_writes_a_directory_that_reloads_to_the_same_outputs(model_dir, tmp_path):
    task = ReverseTask()
    settings = {"steps": 40, "batch_size": 64, "lr": 1e-2, "warmup_steps": 5, "eval_every": 10,
                "progress": False}
    summary = run_sft(model_dir, task, tmp_path, **CPU, **settings)
    assert {"config.json", "model.safetensors", "tokenizer.json", "metrics.jsonl",
            "summary.json"} <= {p.name for p in tmp_path.iterdir()}
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == list(range(41))
    assert "train/sft_loss" in rows[1] and "eval/exact_match" in rows[40]
    assert json.loads((tmp_path / "summary.json").read_text()) == summary
    assert summary["sft/steps"] == 40 and summary["settings"]["lr"] == 1e-2

    reloaded = load(tmp_path)
    assert reloaded.tokenizer.decode(reloaded.tokenizer(" 1 2= ")["input_ids"]) == " 1 2= "
    metrics, _ = evaluate_text(task, reloaded)
    assert metrics["eval/exact_match"] == summary["eval/exact_match"] > 0.2
    in_memory = load(model_dir)  # the same seeded run, never saved
    sft(in_memory, task, **settings)
    prompts = [f"{a} {b}=" for a in range(10) for b in range(10)]
    assert (reloaded.sample(prompts, 1, temperature=0.0).texts
            == in_memory.sample(prompts, 1, temperature=0.0).texts)
