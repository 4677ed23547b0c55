"""Typed parameters: a `params.yaml` section becomes a (possibly nested) dataclass.

Each stage declares a dataclass whose fields carry `metadata={"help": ...}`. `load_section` reads its section of
params.yaml, applies `key=value` overrides (dotted keys for nested fields), checks every value against the field's
type and rejects unknown keys with the closest valid name. One way to configure everything.

Shared sections: a dataclass with a class attribute `SHARED_SECTION = "<name>"` (e.g. `RolloutParams`, the
`rollout:` section) is a section several stages read. A stage's params class that extends it gets those fields from
the shared section first; what the stage's own section sets for them overrides (mappings are merged key by key), so
a stage lists a shared key only where it truly differs. The whole shared section is checked (unknown keys rejected),
overrides may name it (`rollout.search_k=3`), and `--help` marks its keys with `[rollout]`.
A class attribute `RENAMED = {"old_name": "new_name"}` turns an unknown old key into an error that names the new one.
"""
from __future__ import annotations

import dataclasses
import difflib
import re
import types
import typing
from pathlib import Path
from typing import Any, Mapping

import yaml


class ParamsError(ValueError):
    """A bad key or value in params.yaml or an override; the message names the key and what to do."""


def param(default: Any = dataclasses.MISSING, help: str = "", *, factory: Any = dataclasses.MISSING):
    """A dataclass field with help text (shown by `--help` and in the README)."""
    kwargs: dict[str, Any] = {"metadata": {"help": help}}
    if factory is not dataclasses.MISSING:
        kwargs["default_factory"] = factory
    elif isinstance(default, (list, dict, set)):
        kwargs["default_factory"] = lambda d=default: type(d)(d)
    else:
        kwargs["default"] = default
    return dataclasses.field(**kwargs)


def read_params(path: str | Path = "params.yaml") -> dict:
    path = Path(path)
    if not path.exists():
        raise ParamsError(f"params file {str(path)!r} not found; pass --params PATH or run from the repository root")
    with open(path, encoding="utf-8") as f:
        data = yaml.safe_load(f) or {}
    if not isinstance(data, dict):
        raise ParamsError(f"{path}: top level must be a mapping of stage sections")
    return data


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


YAML11_FLOAT = re.compile(r"^[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+$")  # exponent floats PyYAML reads as strings


def _check(value: Any, tp: Any, key: str) -> Any:
    """Return `value` coerced to `tp` where lossless (int -> float), else raise ParamsError naming `key`."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if tp is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        errors = []
        for alt in args:
            try:
                return _check(value, alt, key)
            except ParamsError as exc:
                errors.append(str(exc))
        raise ParamsError(f"{key}: {value!r} is not a {' or '.join(_type_name(a) for a in args)}")
    if origin is typing.Literal:
        if value not in args:
            raise ParamsError(f"{key}: {value!r} is not one of {list(args)}")
        return value
    if tp is type(None):
        if value is not None:
            raise ParamsError(f"{key}: expected null")
        return None
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, Mapping):
            raise ParamsError(f"{key}: expected a mapping for {tp.__name__}, got {value!r}")
        return build(tp, value, prefix=key + ".")
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise ParamsError(f"{key}: expected a list, got {value!r}")
        inner = args[0] if args else Any
        return [_check(v, inner, f"{key}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, Mapping):
            raise ParamsError(f"{key}: expected a mapping, got {value!r}")
        vt = args[1] if len(args) == 2 else Any
        return {str(k): _check(v, vt, f"{key}.{k}") for k, v in value.items()}
    if tp is bool:
        if not isinstance(value, bool):
            raise ParamsError(f"{key}: expected true/false, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, str) and YAML11_FLOAT.match(value):  # 2e-5: YAML 1.1 (PyYAML) wants 2.0e-5 for a float
            return float(value)
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ParamsError(f"{key}: expected a number, got {value!r}")
        return float(value)
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ParamsError(f"{key}: expected an integer, got {value!r}")
        return value
    if tp is str:
        if not isinstance(value, str):
            raise ParamsError(f"{key}: expected a string, got {value!r} (quote it)")
        return value
    if isinstance(tp, type) and not isinstance(value, tp):
        raise ParamsError(f"{key}: expected {tp.__name__}, got {value!r}")
    return value


def _nested_field(cls: type, hints: Mapping[str, Any], name: str) -> list[str]:
    """['section.name'] when `name` is a field of one of `cls`'s nested dataclass sections, else []: a key given one
    level too high, such as `probe.method` for `probe.judge.method`."""
    for f in dataclasses.fields(cls):
        tp = hints.get(f.name)
        if dataclasses.is_dataclass(tp) and name in {g.name for g in dataclasses.fields(tp)}:
            return [f"{f.name}.{name}"]
    return []


def build(cls: type, values: Mapping[str, Any] | None, prefix: str = "") -> Any:
    """Instantiate dataclass `cls` from a mapping, type-checking each value and rejecting unknown keys."""
    values = dict(values or {})
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = [k for k in values if k not in fields]
    if unknown:
        k = unknown[0]
        renamed = getattr(cls, "RENAMED", {}).get(k)
        if renamed:
            raise ParamsError(f"unknown parameter {prefix + k!r}: it is called {prefix + renamed!r} here")
        close = _nested_field(cls, hints, k) or difflib.get_close_matches(k, list(fields), n=1)
        hint = f"; did you mean {prefix + close[0]!r}?" if close else f"; valid keys: {', '.join(fields)}"
        raise ParamsError(f"unknown parameter {prefix + k!r}{hint}")
    kwargs = {name: _check(v, hints[name], prefix + name) for name, v in values.items()}
    obj = cls(**kwargs)
    validate = getattr(obj, "validate", None)
    if callable(validate):
        try:
            validate()
        except ValueError as exc:
            raise ParamsError(f"{prefix.rstrip('.') or cls.__name__}: {exc}") from None
    return obj


def parse_override(text: str) -> tuple[list[str], Any]:
    """`a.b=3` -> (["a", "b"], 3); the value is parsed as YAML (so `x=true`, `y=[1,2]`, `z=null` work)."""
    if "=" not in text:
        raise ParamsError(f"override {text!r} must look like key=value (e.g. probe.samples=8 or samples=8)")
    key, raw = text.split("=", 1)
    key = key.strip()
    if not key:
        raise ParamsError(f"override {text!r} has an empty key")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    return key.split("."), value


def apply_overrides(section: dict, overrides: list[str], section_name: str = "") -> dict:
    """Return a copy of `section` with overrides applied; a leading `<section_name>.` on a key is accepted."""
    out = _deepcopy(section)
    for text in overrides:
        path, value = parse_override(text)
        if section_name and path[0] == section_name and len(path) > 1:
            path = path[1:]
        node = out
        for part in path[:-1]:
            nxt = node.get(part)
            if nxt is None:
                nxt = node[part] = {}
            if not isinstance(nxt, dict):
                raise ParamsError(f"override {text!r}: {part!r} is not a mapping")
            node = nxt
        node[path[-1]] = value
    return out


def _deepcopy(d: Any) -> Any:
    if isinstance(d, dict):
        return {k: _deepcopy(v) for k, v in d.items()}
    if isinstance(d, list):
        return [_deepcopy(v) for v in d]
    return d


def shared_sections(cls: type) -> dict[str, type]:
    """{section name: dataclass} of the shared sections `cls` extends (see the module docstring)."""
    return {vars(base)["SHARED_SECTION"]: base for base in cls.__mro__[1:]
            if dataclasses.is_dataclass(base) and "SHARED_SECTION" in vars(base)}


def _merge(base: Any, over: Any) -> Any:
    """`over` on top of `base`; mappings merge key by key (recursively), anything else is replaced."""
    if isinstance(base, Mapping) and isinstance(over, Mapping):
        out = dict(base)
        for k, v in over.items():
            out[k] = _merge(base.get(k), v) if k in base else v
        return out
    return over


def load_section(cls: type, section: str, params_path: str | Path = "params.yaml", overrides: list[str] = ()) -> Any:
    """Read `section` of params.yaml into dataclass `cls` with overrides applied and checked; the fields of a shared
    section `cls` extends come from that section, with the stage section's values on top."""
    data = read_params(params_path)
    if section not in data:
        raise ParamsError(f"{params_path}: no {section!r} section; add one (see README, 'Parameters')")
    shared = shared_sections(cls)
    mine = [o for o in overrides if o.split("=", 1)[0].split(".", 1)[0] not in shared]
    values = apply_overrides(data[section] or {}, mine, section)
    for name, base in shared.items():
        if not isinstance(data.get(name) or {}, Mapping):
            raise ParamsError(f"{params_path}: the {name!r} section must be a mapping")
        theirs = [o for o in overrides if o.split("=", 1)[0].split(".", 1)[0] == name]
        common = apply_overrides(data.get(name) or {}, theirs, name)
        build(base, common, prefix=name + ".")  # the whole shared section is checked, whoever reads it
        keys = {f.name for f in dataclasses.fields(base)}
        values = {**{k: v for k, v in common.items() if k in keys},
                  **{k: _merge(common[k], v) if k in common else v for k, v in values.items()}}
    return build(cls, values, prefix=section + ".")


def describe(cls: type, prefix: str = "", mark: str = "") -> list[tuple[str, str, str]]:
    """(key, default, help) for every field, nested fields flattened with dotted keys: the `--help` table. Keys of a
    shared section start their help with `[<section>]`."""
    rows = []
    hints = typing.get_type_hints(cls)
    shared = {f.name: name for name, base in shared_sections(cls).items() for f in dataclasses.fields(base)}
    for f in dataclasses.fields(cls):
        tp = hints[f.name]
        tag = mark or (f"[{shared[f.name]}] " if f.name in shared else "")
        if dataclasses.is_dataclass(tp):
            rows.extend(describe(tp, prefix + f.name + ".", tag))
            continue
        if f.default is not dataclasses.MISSING:
            default = f.default
        elif f.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
            default = f.default_factory()  # type: ignore[misc]
        else:
            default = "(required)"
        rows.append((prefix + f.name, repr(default), tag + f.metadata.get("help", "")))
    return rows


def to_dict(obj: Any) -> Any:
    return dataclasses.asdict(obj) if dataclasses.is_dataclass(obj) else obj
