"""The README's Python API examples run as written (the TRL one on a tiny local model instead of
a hub checkpoint, for 2 steps)."""

import re
from pathlib import Path

import pytest

from lmrl.cli import main

README = Path(__file__).resolve().parents[1] / "README.md"


def api_examples() -> list[str]:
    text = README.read_text()
    section = text[text.index("## The Python API"):text.index("The pieces are importable")]
    return re.findall(r"```python\n(.*?)```", section, re.DOTALL)


def test_the_readme_has_the_two_api_examples():
    examples = api_examples()
    assert len(examples) == 2 and "lmrl.train(" in examples[0] and "reward_len" in examples[1]


@pytest.mark.usefixtures("one_thread")
def test_the_toy_example_runs(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code = api_examples()[0].replace("steps=200", "steps=20")
    exec(compile(code, "README.md", "exec"), {})
    assert (tmp_path / "runs" / "api" / "summary.json").is_file()


@pytest.mark.usefixtures("one_thread")
def test_the_trl_migration_example_runs(tmp_path, monkeypatch):
    pytest.importorskip("datasets")
    tiny = tmp_path / "tiny"
    main(["init-model", "--out", str(tiny), "--alphabet", "ascii", "--hidden-size", "16",
          "--layers", "1", "--heads", "2"])
    monkeypatch.chdir(tmp_path)
    code = api_examples()[1].replace('model="Qwen/Qwen2.5-0.5B-Instruct"', f'model="{tiny}"')
    code = code.replace("steps=100", "steps=2").replace("max_new_tokens=32", "max_new_tokens=4")
    scope: dict = {}
    exec(compile(code, "README.md", "exec"), scope)
    assert scope["result"]["steps"] == 2
    assert (tmp_path / "my-model" / "model.safetensors").is_file()
    assert "eval/reward_reward_len" in scope["result"].metrics
