"""init-model -> sft -> train -> eval through the CLI on a tiny model, in seconds: every run
directory file a user reads is written, and each stage loads the previous stage's output."""

import json

import pytest

pytest.importorskip("transformers")

from lmrl.cli import main  # noqa: E402

TASK = ["--task", "sort_text", "--n", "3", "--V", "5", "--heldout-size", "20"]


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory):
    root = tmp_path_factory.mktemp("e2e")
    init, sft, run = root / "init", root / "sft", root / "run"
    main(["init-model", "--out", str(init), "--hidden-size", "32", "--layers", "2",
          "--heads", "2", *TASK])
    main(["sft", "--model", str(init), "--out", str(sft), "--steps", "30", "--batch-size", "16",
          "--eval-every", "10", "--eval-examples", "20", "--no-progress", "--threads", "1",
          *TASK])
    main(["train", "--model", str(sft), "--run-dir", str(run), "--steps", "4", "--B", "4",
          "--G", "4", "--eval-every", "2", "--grad-accum", "2", "--log-samples", "2",
          "--no-progress", "--threads", "1", *TASK])
    return root


def test_each_stage_writes_what_the_next_one_loads(pipeline):
    assert (pipeline / "init" / "model.safetensors").is_file()
    assert (pipeline / "init" / "tokenizer.json").is_file()
    summary = json.loads((pipeline / "sft" / "summary.json").read_text())
    assert summary["sft/steps"] == 30 and "eval/exact_match" in summary
    run = pipeline / "run"
    for name in ("config.json", "metrics.jsonl", "samples.jsonl", "summary.json", "reward.png",
                 "checkpoints/step-00000004/state.json", "model/model.safetensors",
                 "model/tokenizer.json", ".lmrl"):
        assert (run / name).is_file(), name


def test_run_logs_rewards_samples_and_evaluations(pipeline):
    run = pipeline / "run"
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if "eval/exact_match" in r] == [0, 2, 4]
    step = rows[1]
    for key in ("train/reward_mean", "train/exact_match", "train/reward_positional",
                "train/truncated_frac", "loss/pg", "loss/kl_ref", "policy/entropy",
                "time/sample_seconds"):
        assert key in step, key
    samples = [json.loads(line) for line in (run / "samples.jsonl").read_text().splitlines()]
    assert [s["step"] for s in samples] == [0, 0, 2, 2, 4, 4]
    assert {"prompt", "completion", "exact_match", "positional"} <= set(samples[0])
    config = json.loads((run / "config.json").read_text())
    assert config["policy"]["model"] == str(pipeline / "sft")


def test_eval_of_the_saved_model_matches_the_runs_final_evaluation(pipeline, capsys, tmp_path):
    out = tmp_path / "eval.json"
    main(["eval", "--model", str(pipeline / "run" / "model"), "--out", str(out),
          "--threads", "1", *TASK])
    evaluated = json.loads(out.read_text())
    final = json.loads((pipeline / "run" / "summary.json").read_text())
    assert evaluated["eval/exact_match"] == pytest.approx(final["eval/exact_match"])
    assert evaluated["eval/reward"] == pytest.approx(final["eval/reward"])
    assert "->" in capsys.readouterr().out  # sample completions are shown


def test_resume_continues_an_lm_run_exactly(pipeline, tmp_path):
    """4 steps + resume to 6 == 6 steps straight: weights, optimizer, reference, RNGs restored.
    (A constant schedule, so that the learning rate does not depend on the run's length.)"""
    common = ["--model", str(pipeline / "sft"), "--B", "4", "--G", "4", "--eval-every", "2",
              "--schedule", "constant",
              "--grad-accum", "2", "--log-samples", "2", "--no-progress", "--threads", "1",
              *TASK]
    split, straight = tmp_path / "split", tmp_path / "straight"
    main(["train", "--run-dir", str(split), "--steps", "4", *common])
    main(["train", "--run-dir", str(split), "--steps", "6", "--resume", *common])
    main(["train", "--run-dir", str(straight), "--steps", "6", *common])

    def rows(run, name):
        return [json.loads(line) for line in (run / name).read_text().splitlines()]

    resumed, reference = rows(split, "metrics.jsonl"), rows(straight, "metrics.jsonl")
    assert [r["step"] for r in resumed] == list(range(7))
    drop = ("time/",)  # wall times differ
    for a, b in zip(resumed[5:], reference[5:], strict=True):
        for key in a:
            if not key.startswith(drop):
                assert a[key] == pytest.approx(b[key], abs=1e-5), key
    assert [s["step"] for s in rows(split, "samples.jsonl")] == [0, 0, 2, 2, 4, 4, 6, 6]


def test_eval_with_run_uses_the_runs_task_and_settings(pipeline, tmp_path):
    out = tmp_path / "eval.json"
    main(["eval", "--run", str(pipeline / "run"), "--out", str(out), "--threads", "1"])
    final = json.loads((pipeline / "run" / "summary.json").read_text())
    assert json.loads(out.read_text())["eval/exact_match"] == pytest.approx(
        final["eval/exact_match"])


def test_a_missing_model_directory_is_a_clear_error(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["eval", "--model", str(tmp_path / "nope"), *TASK])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("lmrl: error: --model") and "no such directory" in err


def test_user_data_with_a_module_function_reward_trains_end_to_end(tmp_path, monkeypatch):
    rows = [{"prompt": f"{a}{b}=", "answer": str((a + b) % 10)} for a in range(6) for b in range(6)]
    data = tmp_path / "rows.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    (tmp_path / "my_rewards.py").write_text(
        "def correct(prompts, completions, answer, **columns):\n"
        "    return [float(c.strip() == a) for c, a in zip(completions, answer)]\n"
        "def short(prompts, completions, **columns):\n"
        "    return [-len(c) / 10 for c in completions]\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    task = ["--task", "user", "--data", str(data), "--heldout-size", "6",
            "--reward-fns", "my_rewards:correct", "my_rewards:short=0.5"]
    main(["init-model", "--out", str(tmp_path / "init"), "--hidden-size", "32", "--layers", "1",
          "--heads", "2", *task])
    main(["train", "--model", str(tmp_path / "init"), "--run-dir", str(tmp_path / "run"),
          "--steps", "2", "--B", "4", "--G", "2", "--max-new-tokens", "3", "--no-progress",
          "--threads", "1", *task])
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text()
            .splitlines()]
    step = rows[1]
    # The training reward is the weighted sum of the two functions, each logged on its own.
    assert step["train/reward_mean"] == pytest.approx(
        step["train/reward_correct"] + 0.5 * step["train/reward_short"], abs=1e-5)
    assert "eval/exact_match" in rows[0]  # a reward named `correct` is the correctness


def test_pass_at_k_without_a_correctness_reward_is_refused(tmp_path, monkeypatch):
    data = tmp_path / "rows.jsonl"
    data.write_text("".join(json.dumps({"prompt": f"{i}="}) + "\n" for i in range(10)))
    (tmp_path / "len_reward.py").write_text(
        "def short(prompts, completions, **columns):\n"
        "    return [-len(c) for c in completions]\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(SystemExit) as exit_info:
        main(["train", "--model", "unused", "--task", "user", "--data", str(data),
              "--heldout-size", "2", "--reward-fns", "len_reward:short", "--eval-samples", "4",
              "--run-dir", str(tmp_path / "run")])
    assert exit_info.value.code == 2 and not (tmp_path / "run").exists()


def gsm8k_rows(path):
    rows = [{"question": f"Tom has {a} apples and buys {b} more. How many apples now?",
             "answer": f"He has {a} + {b} = <<{a}+{b}={a + b}>>{a + b} apples.\n#### {a + b}"}
            for a in range(1, 7) for b in range(1, 4)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.mark.parametrize("task", [
    ["--task", "addition", "--digits", "2"],
    ["--task", "multiplication", "--digits", "1", "--heldout-size", "10"],
    ["--task", "countdown", "--n", "3", "--heldout-size", "20"],
    ["--task", "gsm8k", "--heldout-size", "4"],
])
def test_every_text_task_runs_init_model_and_a_training_step(task, tmp_path):
    if "gsm8k" in task:
        task = task + ["--data", str(gsm8k_rows(tmp_path / "gsm8k.jsonl"))]
    main(["init-model", "--out", str(tmp_path / "init"), "--hidden-size", "16", "--layers", "1",
          "--heads", "2", *task])
    main(["train", "--model", str(tmp_path / "init"), "--run-dir", str(tmp_path / "run"),
          "--steps", "1", "--B", "2", "--G", "2", "--max-new-tokens", "4", "--eval-limit", "4",
          "--no-progress", "--threads", "1", *task])
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["steps"] == 1 and 0.0 <= summary["eval/exact_match"] <= 1.0
