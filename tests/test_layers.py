"""Layers that only look down: the math loads no trainer, plotting or transformers; no cycles
among module-level imports; leaf modules never reach config, the trainer or the CLI. The graph is
read from the source by bench/import_graph.py, checked here on a hand-made tree first."""

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "bench"
sys.path.insert(0, str(BENCH))

from import_graph import cycles, loads, read_graph, report  # noqa: E402

SRC = Path(__file__).resolve().parents[1] / "src"
PURE = ["lmrl.deltas", "lmrl.advantages", "lmrl.losses", "lmrl.optim", "lmrl.config",
        "lmrl.rm.loss"]
HEAVY = ["lmrl.trainer", "matplotlib", "transformers"]
LEAVES = ["lmrl.deltas", "lmrl.advantages", "lmrl.losses", "lmrl.optim", "lmrl.errors",
          "lmrl.files", "lmrl.checkpoint", "lmrl.rm.loss", "lmrl.rm.model", "lmrl.rm.pairs",
          "lmrl.rm.train"] + sorted(
    "lmrl.policies." + p.stem for p in (SRC / "lmrl" / "policies").glob("*.py")
    if p.stem != "__init__")
UPPER = {"lmrl.config", "lmrl.trainer", "lmrl.cli"}


@pytest.fixture(scope="module")
def graph():
    return read_graph(SRC)


def write_tree(root: Path, files: dict[str, str]) -> Path:
    for name, source in files.items():
        path = root / "lmrl" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(source))
    return root


def test_graph_reader_on_a_hand_made_tree(tmp_path):
    src = write_tree(tmp_path, {
        "__init__.py": "from lmrl.a import X\n",
        # a -> pkg.b runs pkg/__init__.py first, which imports a back: a cycle.
        "a.py": "import torch\nfrom lmrl.pkg.b import Y\nX = 1\n",
        "pkg/__init__.py": "from lmrl.a import X\n",
        "pkg/b.py": "from . import c\ndef f():\n    from lmrl import d\nY = 2\n",
        "pkg/c.py": "from ..d import Z\n",
        "d.py": """\
            from typing import TYPE_CHECKING
            if TYPE_CHECKING:
                from lmrl.a import X
            Z = 3
            """,
    })
    g = read_graph(src)
    assert g["lmrl.a"].eager == {"lmrl.pkg", "lmrl.pkg.b"}
    assert g["lmrl.a"].external == {"torch"}
    assert g["lmrl.pkg.b"].eager == {"lmrl.pkg.c"}  # its own package is not an edge
    assert g["lmrl.pkg.b"].lazy == {"lmrl.d"}
    assert g["lmrl.pkg.c"].eager == {"lmrl.d"}
    assert g["lmrl.d"].eager == set() and g["lmrl.d"].lazy == {"lmrl.a"}
    assert cycles(g) == [["lmrl.a", "lmrl.pkg", "lmrl.a"]]
    assert loads(g, "lmrl.pkg.c", parents=False)[0] == {"lmrl.pkg.c", "lmrl.d"}
    assert loads(g, "lmrl.d")[0] == {"lmrl.d", "lmrl", "lmrl.a", "lmrl.pkg", "lmrl.pkg.b",
                                     "lmrl.pkg.c"}
    assert "lmrl.pkg.b -> lmrl.d*, lmrl.pkg.c" in report(g)


def test_importing_the_math_loads_no_trainer_plotting_or_transformers():
    # A fresh interpreter: this one has long imported all of them.
    code = (f"import sys\nimport {', '.join(PURE)}\n"
            f"print(__import__('json').dumps([m for m in {HEAVY!r} if m in sys.modules]))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert json.loads(out.stdout) == []


def test_train_is_still_importable_from_the_package():
    import lmrl
    from lmrl import Config, train
    from lmrl.api import train as api_train

    assert train is api_train and lmrl.train is api_train and Config is lmrl.Config
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        lmrl.nope  # noqa: B018


def test_no_cycles_among_module_level_imports(graph):
    assert cycles(graph) == []


@pytest.mark.parametrize("leaf", LEAVES)
def test_leaves_never_reach_config_trainer_or_cli(graph, leaf):
    # Transitively, at module level; lmrl/__init__.py (which loads config) is left out, since it
    # runs before any lmrl.X whoever imports what.
    reached, _ = loads(graph, leaf, parents=False)
    assert reached & UPPER == set()
