"""YAML -> the schema's dataclasses: type coercion with clear errors (file, line, closest valid key), dotted
overrides for existing keys only, and the field reference behind ``harness config --explain``."""

from __future__ import annotations

import ast
import copy
import dataclasses
import inspect
import types
import typing
from pathlib import Path
from typing import Any, Union

import yaml

from harness.config.schema import RENAMED, ExperimentConfig, to_dict
from harness.errors import ConfigError, did_you_mean
from harness.fsio import atomic_write_text


def field_docs(cls: type) -> dict[str, str]:
    """Attribute docstrings of a dataclass (the string literal right after each field)."""
    try:
        tree = ast.parse(inspect.getsource(cls))
    except (OSError, TypeError):
        return {}
    body = tree.body[0].body
    docs = {}
    for a, b in zip(body, body[1:]):
        if isinstance(a, ast.AnnAssign) and isinstance(a.target, ast.Name) and isinstance(b, ast.Expr) \
                and isinstance(b.value, ast.Constant) and isinstance(b.value.value, str):
            docs[a.target.id] = inspect.cleandoc(b.value.value)
    return docs


def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _type_name(tp: Any) -> str:
    if typing.get_origin(tp) is not None:
        return str(tp).replace("typing.", "").replace("NoneType", "None")
    return getattr(tp, "__name__", None) or str(tp)


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Check `value` against the annotation `tp` (YAML gives '1e-5' as a string: accept it for floats)."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if tp is Any:
        return value
    if origin in (Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for a in args:
            if a is type(None):
                continue
            try:
                return _coerce(value, a, key)
            except ConfigError as exc:
                errors.append(exc)
        raise errors[0]
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"expected a mapping for section '{key}', got {type(value).__name__}", where=key,
                              fix=f"write {key}: as a mapping of its fields")
        return build(tp, value, key)
    if origin in (tuple, list):
        if not isinstance(value, (list, tuple)):
            if value is None:
                return ()
            raise ConfigError(f"expected a list, got {type(value).__name__} {value!r}", where=key,
                              fix=f"write {key}: [..]")
        if origin is tuple and len(args) == 2 and args[1] is Ellipsis:
            return tuple(_coerce(v, args[0], f"{key}[{i}]") for i, v in enumerate(value))
        if origin is tuple and args:
            if len(value) != len(args):
                raise ConfigError(f"expected {len(args)} values, got {len(value)}", where=key,
                                  fix=f"write {key}: [{', '.join(_type_name(a) for a in args)}]")
            return tuple(_coerce(v, a, f"{key}[{i}]") for i, (v, a) in enumerate(zip(value, args)))
        return [_coerce(v, args[0], f"{key}[{i}]") for i, v in enumerate(value)] if args else list(value)
    if tp is bool:
        if isinstance(value, bool):
            return value
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
    elif tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                pass
    elif tp is str:
        if isinstance(value, str):
            return value
    elif isinstance(value, tp):
        return value
    raise ConfigError(f"expected {_type_name(tp)}, got {type(value).__name__} {value!r}", where=key,
                      fix=f"give {key} a value of type {_type_name(tp)}")


def build(cls: type, data: dict, prefix: str = "") -> Any:
    """Construct dataclass `cls` from a dict, rejecting unknown keys (with a suggestion) and wrong types."""
    names = [f.name for f in dataclasses.fields(cls)]
    hints = _hints(cls)
    kwargs = {}
    for key, value in data.items():
        dotted = f"{prefix}.{key}" if prefix else str(key)
        if key not in names and dotted in RENAMED:
            raise ConfigError(f"'{dotted}' was replaced", where=dotted, fix=f"write {RENAMED[dotted]}")
        if key not in names:
            raise ConfigError(f"unknown key '{dotted}'" + did_you_mean(str(key), names), where=dotted,
                              fix=f"valid keys here: {', '.join(names)}")
        kwargs[key] = _coerce(value, hints[key], dotted)
    try:
        return cls(**kwargs)
    except ConfigError as exc:
        # __post_init__ names its own field; re-root it at where this section sits in the file
        last = (exc.where or "").split(".")[-1]
        if prefix and last in names:
            exc.where = f"{prefix}.{last}"
        raise


def _section_type(tp: Any) -> type | None:
    """The dataclass behind a field that is a (possibly Optional) section; None for leaves and lists."""
    if dataclasses.is_dataclass(tp):
        return tp
    if typing.get_origin(tp) in (Union, types.UnionType):
        inner = [a for a in typing.get_args(tp) if dataclasses.is_dataclass(a)]
        return inner[0] if inner else None
    return None


def _all_keys(cls: type, prefix: str = "") -> list[str]:
    keys = []
    hints = _hints(cls)
    for f in dataclasses.fields(cls):
        dotted = f"{prefix}.{f.name}" if prefix else f.name
        sub = _section_type(hints[f.name])
        if sub is not None:
            keys += _all_keys(sub, dotted)
        else:
            keys.append(dotted)
    return keys


LEAF_KEYS = [k for k in _all_keys(ExperimentConfig) if k not in ("grid", "stages", "claims")]


def _set_dotted(d: dict, key: str, value: Any) -> None:
    parts = key.split(".")
    cur = d
    for p in parts[:-1]:
        nxt = cur.get(p)
        if not isinstance(nxt, dict):
            nxt = {} if nxt is None else nxt
            cur[p] = nxt
        cur = nxt
    cur[parts[-1]] = value


def _get_dotted(d: dict, key: str) -> Any:
    cur: Any = d
    for p in key.split("."):
        if not isinstance(cur, dict) or p not in cur:
            return None
        cur = cur[p]
    return cur


def _check_leaf(key: str, where: str) -> None:
    if key in RENAMED:
        raise ConfigError(f"'{key}' was replaced", where=where, fix=f"write {RENAMED[key]}")
    if key not in LEAF_KEYS:
        raise ConfigError(f"'{key}' is not a config key" + did_you_mean(key, LEAF_KEYS), where=where,
                          fix="grid axes and overrides must name an existing dotted key (harness config --explain)")


# ------------------------------------------------------------------------------------------ YAML with lines


class LineMap:
    """dotted key -> line number of an experiment file, and duplicate-key detection (yaml.safe_load keeps
    the last of two equal keys silently)."""

    def __init__(self, text: str, path: str):
        self.path = path
        self.lines: dict[str, int] = {}
        try:
            node = yaml.compose(text, Loader=yaml.SafeLoader)
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            where = f"{path}:{mark.line + 1}" if mark else path
            raise ConfigError(f"invalid YAML: {getattr(exc, 'problem', exc)}", where=where,
                              fix="fix the YAML syntax (indentation, colons, quotes)") from None
        if node is not None:
            self._walk(node, "")

    def _walk(self, node: Any, prefix: str) -> None:
        if isinstance(node, yaml.MappingNode):
            seen: set[str] = set()
            for k, v in node.value:
                key = str(k.value)
                dotted = f"{prefix}.{key}" if prefix else key
                if key in seen:
                    raise ConfigError(f"duplicate key '{dotted}'", where=f"{self.path}:{k.start_mark.line + 1}",
                                      fix="remove one of the two entries (YAML would silently keep the last)")
                seen.add(key)
                self.lines[dotted] = k.start_mark.line + 1
                self._walk(v, dotted)
        elif isinstance(node, yaml.SequenceNode):
            for i, v in enumerate(node.value):
                self.lines.setdefault(f"{prefix}[{i}]", v.start_mark.line + 1)  # a list item's own line
                self._walk(v, f"{prefix}[{i}]")

    def where(self, key: str | None) -> str:
        if not key:
            return self.path
        k = key
        while k:
            if k in self.lines:
                return f"{self.path}:{self.lines[k]} ({key})"
            k = k.rsplit(".", 1)[0] if "." in k else ""
        return f"{self.path} ({key})"


def parse_override(text: str) -> tuple[str, Any]:
    """'train.lr=1e-5' -> ('train.lr', 1e-5). Values are parsed as YAML (lists, numbers, null)."""
    if "=" not in text:
        raise ConfigError(f"override {text!r} has no '='", where="-o", fix="write -o section.key=value")
    key, raw = text.split("=", 1)
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    return key.strip(), value


def apply_overrides(raw: dict, overrides: list[str] | None) -> dict:
    raw = copy.deepcopy(raw)
    for text in overrides or []:
        key, value = parse_override(text)
        if key.startswith("grid."):
            axis = key[len("grid."):]
            _check_leaf(axis, f"-o {text}")
            grid = raw.get("grid") or {}
            if not isinstance(grid, dict):
                raise ConfigError("cannot override an axis of a list-of-grids", where=f"-o {text}",
                                  fix="edit the experiment file")
            grid[axis] = value if isinstance(value, list) else [value]
            raw["grid"] = grid
            continue
        _check_leaf(key, f"-o {text}")
        _set_dotted(raw, key, value)
    return raw



def explain(cls: type = ExperimentConfig, prefix: str = "") -> list[tuple[str, str, str, str]]:
    """(dotted key, type, default, doc) for every field: the reference behind `harness config --explain`."""
    rows = []
    docs = field_docs(cls)
    hints = _hints(cls)
    for f in dataclasses.fields(cls):
        dotted = f"{prefix}.{f.name}" if prefix else f.name
        tp = hints[f.name]
        sub = _section_type(tp)
        default = f.default if f.default is not dataclasses.MISSING else (
            f.default_factory() if f.default_factory is not dataclasses.MISSING else None)
        rows.append((dotted, _type_name(tp), "" if sub else repr(to_dict(default)), docs.get(f.name, "")))
        if sub is not None:
            rows += explain(sub, dotted)
    return rows


def save_yaml(cfg: ExperimentConfig, path: Path) -> None:
    """The resolved config, written atomically (a run's config.yaml is what every reader of the run trusts)."""
    atomic_write_text(path, yaml.safe_dump(to_dict(cfg), sort_keys=False))


def _build_checked(raw: dict, lines: LineMap | None, context: str = "") -> ExperimentConfig:
    try:
        return build(ExperimentConfig, raw)
    except ConfigError as exc:
        if lines is not None:
            exc.where = lines.where(exc.where)
        if context:
            exc.message = f"{exc.message} [{context}]"
        raise ConfigError(exc.message, where=exc.where, fix=exc.fix) from None
