"""policy.compile=auto: compile where it pays, and compiled graphs kept on disk.

torch.compile makes lmrl's forward faster (bench/README.md: a step 1.1-1.3x faster on the
tiny and ~20M models) but the first compiled step of a model shape costs seconds to minutes.
inductor keeps what it compiled in a cache directory (its FX-graph and AOTAutograd caches), so a
second process compiling the same graphs loads them instead; lmrl points that cache at
$LMRL_CACHE_DIR/torch_compile (default ~/.cache/lmrl, not /tmp, which a reboot empties) unless
TORCHINDUCTOR_CACHE_DIR is set.

The auto decision (issue 17: compile "where it pays, ... off where it does not (a run shorter
than its compile time)"):

    graphs not on disk:  compile  <=>  saved fraction > 0  and  remaining steps × eager step
                                       seconds > compile seconds
    graphs on disk:      compile  <=>  remaining steps × eager step seconds × saved fraction
                                       > seconds to load them

A cold compile is paid once per machine and shape: a run compiles unless compiling would take
longer than the whole run. A run just longer than that is slower end to end the first time (it
saves only a fraction of its steps' time), but it leaves its graphs in the disk cache for every
later run of the shape. Loading them (seconds) is paid by every run again, so a warm run
compiles only when its own saving is larger.

For a shape lmrl has run before (the records file next to the cache: per shape key, the
measured compile overhead cold and warm, and the steady eager and compiled step seconds) the
decision is made before step 1. For a new shape, steps 1 and 2 run eager and step 2 is timed:
step 1 is no steady step (first-pass allocations, and the compiler imported on a second thread
meanwhile: on the 2-core VM it took 0.23-0.31 s against 0.16-0.20 s for the steps after it,
which made auto compile a 100-step tiny run that then took 1.3x longer end to end). Compile
seconds and the saved fraction are then the defaults below. Every run that ran an eager step
after step 1, and every compiled run, updates the record with what it measured, so the next
decision is made on this machine's numbers.
"""

import json
import os
import statistics
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

# Defaults for a shape never compiled here: the first compiled step of the tiny sort5 model
# costs 120-150 s more than an eager one with a cold inductor cache and 8-9 s warm on the 2-core
# VM (bench/README.md, compile_start.py), and compiled steps were 10-30% faster.
COLD_SECONDS = 120.0
SAVED_FRACTION = 0.15
# Loading cached graphs against compiling them, until a warm start is measured: the tiny sort5
# shape's warm first step cost 5-6% of its cold one (6 of 110 s at 2 threads, 8 of 160 s at 1;
# bench/results/vs_trl_2t_on_*, compile_start_warm*.txt), rounded up.
WARM_FRACTION = 0.07
RECORDS = "compile_records.json"
EAGER_STEPS = 2  # a new shape's steps that run eager before auto decides (the last one timed)


def cache_root() -> Path:
    """$LMRL_CACHE_DIR, else $XDG_CACHE_HOME/lmrl, else ~/.cache/lmrl."""
    if os.environ.get("LMRL_CACHE_DIR"):
        return Path(os.environ["LMRL_CACHE_DIR"])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "lmrl"


# TORCHINDUCTOR_CACHE_DIR as the user's environment had it when lmrl was imported: importing
# torch._dynamo (transformers' from_pretrained does) writes torch's default /tmp directory into
# it, which must not read as the user's choice.
_USER_CACHE_DIR = os.environ.get("TORCHINDUCTOR_CACHE_DIR")


def user_chose_cache_dir() -> bool:
    """TORCHINDUCTOR_CACHE_DIR was set before lmrl was imported, or since to something other
    than the default that torch._dynamo's import writes there."""
    current = os.environ.get("TORCHINDUCTOR_CACHE_DIR")
    if _USER_CACHE_DIR or not current:
        return bool(_USER_CACHE_DIR)
    from torch._inductor.runtime.cache_dir_utils import default_cache_dir

    return os.path.abspath(current) != os.path.abspath(default_cache_dir())


def use_disk_cache() -> Path:
    """Point inductor's cache at lmrl's cache directory unless the user chose one. -> the
    directory in use."""
    if not user_chose_cache_dir():
        os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(cache_root() / "torch_compile")
    return Path(os.environ["TORCHINDUCTOR_CACHE_DIR"])


def shape_key(policy, B: int, G: int, extra: str = "") -> str:
    """What decides the compiled graphs and their speed: the model's shape, the dtype, the
    batch shape and budget, the threads, the device and torch's version."""
    c = policy.model.config
    parts = [c.model_type, c.num_hidden_layers, c.hidden_size, c.num_attention_heads,
             c.num_key_value_heads, c.intermediate_size, c.vocab_size, policy.autocast,
             B, G, policy.max_new_tokens, torch.get_num_threads(), policy.device.type,
             torch.__version__, extra]
    return "/".join(str(p) for p in parts)


def load_records(root: Path) -> dict:
    try:
        return json.loads((root / RECORDS).read_text())
    except (OSError, ValueError):
        return {}  # none yet, or unreadable: decide on the defaults


def save_record(root: Path, key: str, record: dict) -> None:
    """Merge one shape's record into the records file (written whole, then renamed: a killed
    run leaves the old file)."""
    records = load_records(root)
    records[key] = record
    root.mkdir(parents=True, exist_ok=True)
    tmp = root / f".{RECORDS}.{os.getpid()}"
    tmp.write_text(json.dumps(records, indent=1, sort_keys=True))
    os.replace(tmp, root / RECORDS)


def pays(remaining: int, eager_seconds: float, saved_fraction: float,
         compile_seconds: float, warm: bool = False) -> bool:
    """The rule in the module docstring (warm: the graphs are on disk, loading them costs
    compile_seconds)."""
    if saved_fraction <= 0:
        return False
    if warm:
        return remaining * eager_seconds * saved_fraction > compile_seconds
    return remaining * eager_seconds > compile_seconds


def is_warm(record: dict | None, cache_dir: Path) -> bool:
    """This shape was compiled into this cache directory, which still exists."""
    return bool(record) and record.get("cache_dir") == str(cache_dir) and cache_dir.is_dir()


def expected_compile_seconds(record: dict | None, cache_dir: Path) -> tuple[float, str]:
    """Seconds compiling should cost now, and why: warm (the record's cache directory still
    holds the graphs), the record's cold cost, or the default."""
    if is_warm(record, cache_dir) and "warm_seconds" in record:
        return record["warm_seconds"], "cached graphs"
    if is_warm(record, cache_dir):  # a guess until a warm start is measured
        return (max(WARM_FRACTION * record["cold_seconds"], 1.0),
                "cached graphs, no warm start measured")
    if record and "cold_seconds" in record:
        return record["cold_seconds"], "compiled before, cache not found"
    return COLD_SECONDS, "new shape, default estimate"


@dataclass
class CompilePlan:
    """Decides policy.compile for one run and measures what compiling cost (trainer.py calls
    `before_run`, then `after_step` after every step)."""

    setting: str  # auto, on, off
    key: str
    root: Path
    cache_dir: Path
    record: dict | None
    on: bool | None = None  # None: decided after EAGER_STEPS eager steps
    learns: bool = True  # whether its step times describe the shape (not a LoRA run's)
    last_compiled: bool = False  # whether the last step ran compiled
    eager_steps: list[float] = field(default_factory=list)
    compiled_steps: list[float] = field(default_factory=list)
    started: float = field(default_factory=time.perf_counter)

    def start(self, remaining: int, supported: str | None) -> str:
        """Decide now if possible; -> the line to print."""
        self.learns = supported is None
        if self.setting != "auto":
            self.on = self.setting == "on"
            return f"compile: {self.setting} (policy.compile)"
        if supported is not None:
            self.on = False
            return f"compile: auto -> off ({supported})"
        if remaining <= EAGER_STEPS:
            self.on = False
            return f"compile: auto -> off (a run of {remaining} step(s) cannot pay for compiling)"
        if self.record and "eager_step" in self.record:
            return self._decide(remaining, self.record["eager_step"])
        return (f"compile: auto -> decided after step {EAGER_STEPS}: steps 1-{EAGER_STEPS} run "
                f"eager, step {EAGER_STEPS} is timed")

    def _decide(self, remaining: int, eager_seconds: float) -> str:
        r = self.record or {}
        fraction = SAVED_FRACTION
        if "eager_step" in r and "compiled_step" in r:
            fraction = max(0.0, 1 - r["compiled_step"] / r["eager_step"])
        cost, why = expected_compile_seconds(self.record, self.cache_dir)
        warm = is_warm(self.record, self.cache_dir)
        saving = remaining * eager_seconds * fraction
        self.on = pays(remaining, eager_seconds, fraction, cost, warm)
        rule = (f"a saving of ~{saving:.0f} s ({fraction:.0%} faster steps) against ~{cost:.0f} s "
                f"to load the compiled graphs" if warm else
                f"~{remaining * eager_seconds:.0f} s of run against ~{cost:.0f} s to compile "
                f"({why}); {fraction:.0%} faster steps would save ~{saving:.0f} s")
        return (f"compile: auto -> {'on' if self.on else 'off'} ({remaining} steps x "
                f"{eager_seconds:.3g} s eager: {rule})")

    def after_step(self, seconds: float, remaining: int) -> str | None:
        """Record the step; -> the decision line when this step made it."""
        was_on = self.on
        self.last_compiled = bool(was_on)
        (self.compiled_steps if was_on else self.eager_steps).append(seconds)
        if (was_on is None and self.setting == "auto"
                and len(self.eager_steps) >= EAGER_STEPS):
            return self._decide(remaining, min(self.eager_steps[1:]))
        return None

    def finish(self) -> dict | None:
        """After the run: update this shape's record with its steady eager step (median of the
        eager steps after step 1) and, from a compiled run, its steady compiled step and the
        compile cost (the first compiled step's excess over the median compiled step).
        -> the record, or None when the run measured too little to say."""
        learned: dict = {}
        if self.learns and len(self.eager_steps) >= EAGER_STEPS:
            learned["eager_step"] = round(statistics.median(self.eager_steps[1:]), 5)
        if len(self.compiled_steps) >= 3:
            steady = statistics.median(self.compiled_steps[1:])
            warm = is_warm(self.record, self.cache_dir) and "cold_seconds" in self.record
            overhead = round(max(self.compiled_steps[0] - steady, 0.0), 2)
            learned["warm_seconds" if warm else "cold_seconds"] = overhead
            learned["cache_dir"] = str(self.cache_dir)
            learned["compiled_step"] = round(steady, 5)
        if not learned:
            return None
        record = {**(self.record or {}), **learned}
        save_record(self.root, self.key, record)
        return record


def import_compiler_in_background(probe: bool = False) -> threading.Thread:
    """Import torch.compile's machinery (dynamo, inductor) on a second thread.

    torch.compile's first call imports them, 2-3 s on the 2-core VM: a third of a warm start's
    cost (bench/README.md, compile_start.py). Started while the run sets up (its pre-flight
    batch and first evaluation, torch ops that mostly release the GIL), the import is done
    before the first compiled pass needs it; a pass that comes sooner waits on the import lock
    for the rest of it, never imports twice.

    probe (for a run that will compile): also run inductor's checks of the CPU's vector
    instruction sets there. Every process runs them before its first compiled kernel loads,
    cache or no cache: one Python subprocess per instruction set that loads a test library,
    1.2-1.4 s of a warm start on the 2-core VM (bench/README.md, "Warm start"); and the hash of
    torch's sources that keys inductor's caches (0.1-0.2 s). Both are cached in the process, so
    the compiling pass finds them done."""
    def run() -> None:
        try:
            import torch._dynamo  # noqa: F401
            import torch._inductor.compile_fx  # noqa: F401
            from torch._inductor.codecache import torch_key
            from torch._inductor.cpu_vec_isa import pick_vec_isa
        except ImportError:  # e.g. importlib's deadlock guard: the compiling pass imports it
            return
        if probe:
            try:
                pick_vec_isa()
                torch_key()
            except Exception:  # noqa: BLE001 - the compiling pass runs them again, and reports
                pass

    thread = threading.Thread(target=run, name="lmrl-import-compiler", daemon=True)
    thread.start()
    return thread


def plan(setting: str, policy, B: int, G: int, extra: str = "") -> CompilePlan:
    """The plan for a run of `policy` (an HFPolicy) at B×G."""
    root, cache_dir = cache_root(), use_disk_cache()
    key = shape_key(policy, B, G, extra)
    return CompilePlan(setting, key, root, cache_dir, load_records(root).get(key))


def unsupported(policy) -> str | None:
    """Why this policy cannot be compiled (None if it can)."""
    if getattr(policy, "lean", None) is None:
        return ("transformers' forward runs (LoRA, a GPU, forward=transformers or a model lmrl's "
                "forward does not know), and compile compiles lmrl's")
    return None


def apply(state, on: bool, *copies) -> None:
    """Switch compiling on or off for the policy, the reference copy of it and other copies
    (async rollouts' sampler): the next pass uses it (HFPolicy reads `compile` at every call)."""
    for policy in (state.policy, getattr(state.reference, "model", None), *copies):
        if getattr(policy, "lean", None) is not None:
            policy.compile = on
