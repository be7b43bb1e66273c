"""`--config FILE`: a YAML, TOML or JSON file with the same names as the flags.

Either flat (`kl_weight: 0.05`, `G: 8`, `kl-weight` spelt as the flag too) or nested as a run's
config.json is (`algo: {kl_weight: 0.05}`), or both. The file's values replace the defaults (a
preset's, with --preset) and flags replace the file's. Unknown keys and values of the wrong type
are errors naming the file and the key. A file never turns on what only a flag may ask for:
running a model's own code, replacing a run directory, resuming one (FLAG_ONLY).
"""

import dataclasses
import difflib
import json
import tomllib
import types
import typing
from pathlib import Path

import tyro
import yaml

from lmrl.errors import ConfigError
from lmrl.trl_names import TRL_NAMES

# Actions a file on disk must never take for the user: a run's saved config.json/config.yaml
# records them as they were, and reusing that file must not run model code, replace the run
# it came from, or resume it.
FLAG_ONLY = ("trust_remote_code", "overwrite", "resume")

Path_ = tuple[str, ...]  # a field's place in the config: ("algo", "kl_weight")


def read(path: str | Path) -> dict:
    """The file's top-level mapping (YAML by .yaml/.yml, TOML by .toml, JSON by .json)."""
    path = Path(path)
    readers = {".yaml": yaml.safe_load, ".yml": yaml.safe_load, ".json": json.loads,
               ".toml": tomllib.loads}
    if path.suffix not in readers:
        raise ConfigError(f"--config {path}: unknown file type {path.suffix or '(none)'!r}; "
                          "use .yaml, .yml, .toml or .json")
    try:
        text = path.read_text()
    except OSError as err:
        raise ConfigError(f"--config {path}: cannot read it ({err.strerror})") from err
    try:
        data = readers[path.suffix](text)
    except (yaml.YAMLError, tomllib.TOMLDecodeError, ValueError) as err:
        raise ConfigError(f"--config {path} is not valid {path.suffix[1:].upper()}: "
                          f"{_parse_error(err)}") from err
    if data is None:  # an empty YAML file
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"--config {path}: the file must be a mapping of option names to "
                          f"values, not a {type(data).__name__}")
    return data


def _parse_error(err: Exception) -> str:
    mark = getattr(err, "problem_mark", None)  # YAML's position (its message quotes the text)
    if mark is not None:
        return f"line {mark.line + 1}, column {mark.column + 1}: {err.problem}"
    return " ".join(str(err).split())


def names(cls) -> dict[str, Path_]:
    """Every name a file may use for a field of `cls` (a dataclass whose dataclass-typed fields
    are groups): field names, their dashed flag spelling and the flags' aliases."""
    found: dict[str, Path_] = {}
    for f in dataclasses.fields(cls):
        if dataclasses.is_dataclass(f.type):
            found.update({k: (f.name, *p) for k, p in names(f.type).items()})
            continue
        for name in (f.name, *_aliases(f.type)):
            found[name] = found[name.replace("_", "-")] = (f.name,)
    return found


def _aliases(tp) -> tuple[str, ...]:
    """The tyro.conf.arg(aliases=...) of an Annotated field, without their dashes."""
    aliases = []
    for meta in typing.get_args(tp)[1:] if typing.get_origin(tp) is typing.Annotated else ():
        aliases += [a.lstrip("-").replace("-", "_") for a in getattr(meta, "aliases", None) or ()]
    return tuple(aliases)


def flatten(data: dict, cls, source: str) -> dict[Path_, object]:
    """{field path: value} from a flat and/or nested mapping; unknown keys are errors (all of
    them in one message, so that a file written for TRL is translated in one pass)."""
    known = names(cls)
    groups = {f.name: f.type for f in dataclasses.fields(cls) if dataclasses.is_dataclass(f.type)}
    nested = {k for k, v in data.items() if k in groups and isinstance(v, dict)}
    unknown = [str(k) for k in data if k not in nested and str(k) not in known]
    if unknown:
        raise ConfigError("\n  ".join(f"{source}: unknown key {k!r}{suggest(k, known)}"
                                      for k in unknown))
    flat: dict[Path_, object] = {}
    for key, value in data.items():
        if key in nested:  # {"algo": {"kl_weight": ...}}
            _check_group(value, key, known, names(groups[key]), source)
            inner = flatten(value, groups[key], f"{source}: {key}")
            entries = {(key, *p): v for p, v in inner.items()}.items()
        else:
            entries = [(known[str(key)], value)]
        for path, v in entries:
            if path in flat:
                raise ConfigError(f"{source}: {'.'.join(path)} is set twice; keep one")
            flat[path] = v
    return flat


def _check_group(values: dict, group: str, known: dict[str, Path_], own: dict[str, Path_],
                 source: str) -> None:
    """A nested option under the wrong group names its own group."""
    for key in values:
        if key not in own and key in known:
            right = known[key][0]
            raise ConfigError(f"{source}: {key} is a {right} option, not one of {group}; move it "
                              f"under {right}: (or write it at the top level)")


def suggest(key: str, known: dict[str, Path_]) -> str:
    """'; did you mean X?': lmrl's name for a TRL name, else the closest known name."""
    trl = TRL_NAMES.get(key.replace("-", "_"))
    if trl and trl[0] in known:
        return f"; did you mean {trl[0]}? (TRL's name) — {trl[1]}"
    if trl:
        return f" (TRL's name; lmrl has no such option) — {trl[1]}"
    lower = {k.lower(): k for k in known}
    close = ([lower[key.lower()]] if key.lower() in lower
             else difflib.get_close_matches(key, list(known), n=1))
    return f"; did you mean {close[0]}?" if close else ""


def _field_types(cls) -> dict[Path_, object]:
    hints: dict[Path_, object] = {}
    for name, tp in typing.get_type_hints(cls).items():
        if dataclasses.is_dataclass(tp):
            hints.update({(name, *p): t for p, t in _field_types(tp).items()})
        else:
            hints[(name,)] = tp
    return hints


def check_type(value, tp, key: str, source: str):
    """The value as the field's type takes it, or a ConfigError naming the key and the file."""
    args = typing.get_args(tp)
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        tp = next(a for a in args if a is not type(None))
    if tp is float and isinstance(value, str):
        # YAML 1.1 reads `1e-3` (no dot) as a string; a number written so is still a number.
        try:
            value = float(value)
        except ValueError:
            pass
    ok = {bool: lambda v: isinstance(v, bool),
          int: lambda v: isinstance(v, int) and not isinstance(v, bool),
          float: lambda v: isinstance(v, int | float) and not isinstance(v, bool),
          str: lambda v: isinstance(v, str)}
    if tp not in ok and typing.get_origin(tp) is not tuple:
        return value  # a type this check does not know: the config's own validation judges it
    if typing.get_origin(tp) is tuple:  # tuple[str, ...]: a list of strings, or one string
        items = [value] if isinstance(value, str) else value
        if isinstance(items, list | tuple) and all(isinstance(v, str) for v in items):
            return tuple(items)
        what = "a list of strings"
    elif ok[tp](value):
        return float(value) if tp is float else value
    else:
        what = {bool: "true or false", int: "an integer", float: "a number",
                str: "a string"}[tp]
    raise ConfigError(f"{source}: {key} must be {what}, not {value!r}")


def overrides(cls, path: str | Path) -> dict[Path_, object]:
    """The file's settings for `cls`, type-checked, without the FLAG_ONLY ones (a note says so)."""
    source = str(path)
    flat = flatten(read(path), cls, source)
    types_ = _field_types(cls)
    checked = {}
    for field_path, value in flat.items():
        key = ".".join(field_path)
        if key == "policy.compile" and isinstance(value, bool):
            value = "on" if value else "off"  # compile was true/false before auto existed
        checked[field_path] = check_type(value, types_[field_path], key, source)
        if field_path[-1] in FLAG_ONLY:
            if checked[field_path]:
                print(f"note: {source} sets {key}: true; ignored: only the "
                      f"--{field_path[-1].replace('_', '-')} flag asks for that")
            del checked[field_path]
    return checked


def defaults(cls):
    """An instance of `cls` with its defaults; required fields are tyro.MISSING (tyro then asks
    for them as flags)."""
    values = {}
    for f in dataclasses.fields(cls):
        if f.default is not dataclasses.MISSING:
            values[f.name] = f.default
        elif f.default_factory is not dataclasses.MISSING:
            values[f.name] = f.default_factory()
        else:
            values[f.name] = tyro.MISSING
    return unchecked(cls, values)


def unchecked(cls, values: dict):
    """A frozen dataclass built without __post_init__: a file's settings need not be a valid
    config alone (a flag may complete them), so only the final config, built by tyro from these
    defaults and the flags, is validated."""
    obj = object.__new__(cls)
    for name, value in values.items():
        object.__setattr__(obj, name, value)
    return obj


def apply(base, changes: dict[Path_, object]):
    """`base` with the field at each path replaced (unchecked, as `unchecked`)."""
    values = {f.name: getattr(base, f.name) for f in dataclasses.fields(base)}
    for name in {p[0] for p in changes if len(p) > 1}:
        values[name] = apply(values[name], {p[1:]: v for p, v in changes.items()
                                            if len(p) > 1 and p[0] == name})
    values.update({p[0]: v for p, v in changes.items() if len(p) == 1})
    return unchecked(type(base), values)


def load(cls, path: str | Path, base=None):
    """`base` (default: cls's defaults) with the file's settings on top, unchecked: the CLI's
    flags go on top of it before the config is built and validated."""
    return apply(defaults(cls) if base is None else base, overrides(cls, path))


def to_yaml(cfg) -> str:
    """A config as YAML, nested as config.json; `lmrl train --config` reads it back."""
    plain = json.loads(json.dumps(dataclasses.asdict(cfg)))  # tuples become lists
    return ("# lmrl train --config THIS_FILE --run-dir NEW_DIR repeats this run\n"
            + yaml.safe_dump(plain, sort_keys=False, allow_unicode=True))
