"""Cold and warm starts of a compiled run against an eager one (issue 17).

Runs `lmrl train` on one model shape in fresh processes, in the order eager, cold (empty
compile caches), warm (the caches the cold run left), eager, warm, ...: the first step's seconds
(compiling happens there), the process's wall seconds and the median later step. A warm start
loads inductor's compiled graphs from the disk cache (compiling.py) instead of compiling them;
dynamo still traces the Python code.

    .venv/bin/python bench/compile_start.py --model DIR [--steps 10] [--repeats 2] \\
        [--caches DIR] [--modes warm,warm_serial] [-- extra lmrl train flags]

lmrl imports the compiler on a second thread while a run sets up, and there runs inductor's
probes of the CPU's instruction sets (compiling.import_compiler_in_background). --modes picks
the warm starts to compare: warm (as lmrl runs), warm_serial (the import and probes left to the
first compiled pass), warm_noprobe (imported in the background, probed by the first pass).
--caches keeps the caches in DIR: a second invocation skips the cold run.
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

# `python -m lmrl` with the compiler's background import changed (the warm_* modes below).
ENTRY = ("import sys, lmrl.compiling as c, lmrl.cli; {patch}; sys.exit(lmrl.cli.main())")
PATCHES = {
    # the import left to the first compiled pass
    "warm_serial": "c.import_compiler_in_background = lambda **_: None",
    # imported in the background, the CPU's instruction sets probed by the first compiled pass
    "warm_noprobe": ("f = c.import_compiler_in_background; "
                     "c.import_compiler_in_background = lambda **_: f(probe=False)"),
}


def run(model: str, steps: int, mode: str, caches: Path, extra: list[str]) -> dict:
    env_flags = ["--no-compile"] if mode == "eager" else ["--compile"]
    entry = ["-c", ENTRY.format(patch=PATCHES[mode])] if mode in PATCHES else ["-m", "lmrl"]
    with tempfile.TemporaryDirectory() as run_dir:
        env = {"LMRL_CACHE_DIR": str(caches / "lmrl"),
               "TORCHINDUCTOR_CACHE_DIR": str(caches / "inductor")}
        start = time.perf_counter()
        subprocess.run([sys.executable, *entry, "train", "--model", model, "--run-dir",
                        run_dir, "--overwrite", "--steps", str(steps), "--eval-every",
                        str(steps), "--eval-limit", "20", "--no-progress", *env_flags, *extra],
                       check=True, stdout=subprocess.DEVNULL,
                       env={**os.environ, **env})
        wall = time.perf_counter() - start
        rows = [json.loads(line) for line in (Path(run_dir) / "metrics.jsonl").open()]
    step_times = [r["time/step_seconds"] for r in rows if "time/step_seconds" in r]
    return {"mode": mode, "wall": wall, "first_step": step_times[0],
            "later_step": statistics.median(step_times[1:])}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", required=True)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--caches", default=None, help="keep the compile caches here")
    p.add_argument("--modes", default="warm,warm_serial",
                   help="warm starts to run, comma-separated: warm, warm_serial, warm_noprobe")
    p.add_argument("extra", nargs="*", help="more lmrl train flags, after --")
    a = p.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        caches = Path(a.caches or tmp)
        # eager runs leave records too (their step seconds): warm means a compiled one did
        records = caches / "lmrl" / "compile_records.json"
        warm_already = records.is_file() and any(
            "cold_seconds" in r for r in json.loads(records.read_text()).values())
        warm = a.modes.split(",")
        if not set(warm) <= {"warm", *PATCHES}:
            p.error(f"--modes: choose from warm, {', '.join(PATCHES)}")
        order = ["eager"] + ["cold"] * (not warm_already) + warm + \
            (["eager"] + warm) * (a.repeats - 1)
        for mode in order:
            rows.append(run(a.model, a.steps, mode, caches, a.extra))
            r = rows[-1]
            print(f"{mode:11}  wall {r['wall']:6.1f} s  first step {r['first_step']:6.2f} s  "
                  f"later steps {r['later_step']:.3f} s", flush=True)
    eager = statistics.median(r["wall"] for r in rows if r["mode"] == "eager")
    for mode in ("cold", "warm", *PATCHES):
        walls = [r["wall"] for r in rows if r["mode"] == mode]
        if not walls:
            continue
        wall = statistics.median(walls)
        print(f"{mode}: wall {wall:.1f} s, {wall - eager:+.1f} s against eager's {eager:.1f} s")


if __name__ == "__main__":
    main()
