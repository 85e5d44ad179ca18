"""Typed configuration: dataclasses in, YAML out, ``key=value`` overrides from the command line.

Only factories, the train/eval entry points and the CLI read a whole config; constructors take
explicit arguments. Helpers here are generic over any (nested) dataclass:

- ``from_dict(cls, data)`` builds a dataclass from plain data, checking every key and type and
  naming the dotted key that is wrong;
- ``apply_overrides(cfg, ["optim.lr=0.05", ...])`` returns a new config with values parsed as YAML
  scalars and converted to the field's type;
- ``to_dict`` / ``load_config`` / ``save_config`` move configs to and from YAML files.
"""

from __future__ import annotations

import copy
import dataclasses
import logging
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

import yaml

from cpd.errors import CPDError

T = TypeVar("T")
_log = logging.getLogger(__name__)


class ConfigError(CPDError):
    """A configuration key is unknown or its value has the wrong type; names the dotted key."""


def to_dict(cfg: Any) -> dict[str, Any]:
    """Plain nested dict of a dataclass config (tuples become lists, paths become strings)."""

    def plain(value: Any) -> Any:
        if dataclasses.is_dataclass(value):
            return {f.name: plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
        if isinstance(value, (list, tuple)):
            return [plain(v) for v in value]
        if isinstance(value, dict):
            return {str(k): plain(v) for k, v in value.items()}
        if isinstance(value, Path):
            return str(value)
        return value

    return plain(cfg)


def _convert(value: Any, hint: Any, key: str) -> Any:
    """Convert ``value`` to the annotated type ``hint``; raise ConfigError naming ``key``."""
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if hint is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        for arg in (a for a in args if a is not type(None)):
            try:
                return _convert(value, arg, key)
            except ConfigError:
                continue
        raise ConfigError(f"{key}: {value!r} matches none of {hint}")
    if origin is typing.Literal:
        if value not in args:
            raise ConfigError(f"{key}: {value!r} is not one of {list(args)}")
        return value
    if dataclasses.is_dataclass(hint):
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping, got {value!r}")
        return from_dict(hint, value, prefix=f"{key}.")
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key}: expected a list, got {value!r}")
        if origin is tuple and args and args[-1] is not Ellipsis:
            if len(args) != len(value):
                raise ConfigError(f"{key}: expected {len(args)} values, got {len(value)}")
            return tuple(
                _convert(v, a, f"{key}[{i}]")
                for i, (v, a) in enumerate(zip(value, args, strict=True))
            )
        item = args[0] if args else Any
        out = [_convert(v, item, f"{key}[{i}]") for i, v in enumerate(value)]
        return tuple(out) if origin is tuple else out
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping, got {value!r}")
        return dict(value)
    if hint is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{key}: expected true/false, got {value!r}")
    if hint is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        raise ConfigError(f"{key}: expected an integer, got {value!r}")
    if hint is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):  # YAML 1.1 reads "1e-3" (no dot) as a string
            try:
                return float(value)
            except ValueError:
                pass
        raise ConfigError(f"{key}: expected a number, got {value!r}")
    if hint is str:
        if isinstance(value, (str, Path)):
            return str(value)
        raise ConfigError(f"{key}: expected a string, got {value!r}")
    return value


def from_dict(cls: type[T], data: dict[str, Any], prefix: str = "") -> T:
    """Build dataclass ``cls`` from ``data``; unknown keys and wrong types raise ConfigError."""
    if not isinstance(data, dict):
        raise ConfigError(f"{prefix.rstrip('.') or 'config'}: expected a mapping, got {data!r}")
    if not prefix and renamed_keys(cls):  # configs saved by older releases (checkpoints)
        data = _rename_in(copy.deepcopy(data), renamed_keys(cls), "config", warn=False)
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise ConfigError(
            f"unknown key(s) {', '.join(prefix + k for k in unknown)}; "
            f"valid keys: {', '.join(prefix + n for n in sorted(names))}"
        )
    kwargs = {k: _convert(v, hints[k], prefix + k) for k, v in data.items()}
    return cls(**kwargs)


def apply_overrides(cfg: T, overrides: list[str]) -> T:
    """Return a copy of ``cfg`` with ``key.sub=value`` overrides applied (values parsed as YAML)."""
    data = to_dict(cfg)
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r} is not of the form key=value")
        key, _, raw = item.partition("=")
        parts = key.strip().split(".")
        node = data
        for i, part in enumerate(parts):
            if not isinstance(node, dict) or part not in node:
                where = ".".join(parts[: i + 1])
                raise ConfigError(f"override {item!r}: unknown key {where}")
            if i == len(parts) - 1:
                node[part] = yaml.safe_load(raw) if raw.strip() else ""
            else:
                node = node[part]
    return from_dict(type(cfg), data)


def renamed_keys(cls: type) -> dict[str, str]:
    """``cls.RENAMED``: old dotted key -> new dotted key, for keys renamed in this release."""
    return dict(getattr(cls, "RENAMED", {}))


def _rename_in(
    data: dict[str, Any], renamed: dict[str, str], where: str, warn: bool = True
) -> dict[str, Any]:
    """``data`` (nested, from YAML) with renamed keys moved to their new names (in place),
    saying so when ``warn``."""
    for old, new in renamed.items():
        *parents, leaf = old.split(".")
        node = data
        for part in parents:
            node = node.get(part) if isinstance(node, dict) else None
        if not isinstance(node, dict) or leaf not in node:
            continue
        new_leaf = new.split(".")[-1]
        if new_leaf in node:
            raise ConfigError(f"{where}: {old} and {new} are the same setting; keep {new}")
        if warn:
            _log.warning("%s: %s is deprecated and goes in the next release; use %s",
                         where, old, new)  # fmt: skip
        node[new_leaf] = node.pop(leaf)
    return data


def _rename_override(item: str, renamed: dict[str, str]) -> str:
    key, sep, raw = item.partition("=")
    new = renamed.get(key.strip())
    if new is None or not sep:
        return item
    _log.warning("%s is deprecated and goes in the next release; use %s", key.strip(), new)
    return f"{new}={raw}"


def load_config(cls: type[T], path: str | Path | None, overrides: list[str] | None = None) -> T:
    """Defaults of ``cls``, updated by the YAML file at ``path`` (if any), then by ``overrides``.

    Keys that ``cls.RENAMED`` lists under their old names are read as the new ones, with a
    deprecation warning."""
    cfg = cls()
    renamed = renamed_keys(cls)
    overrides = [_rename_override(o, renamed) for o in overrides or []]
    if path is not None:
        path = Path(path)
        try:
            data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        except (OSError, yaml.YAMLError) as exc:
            raise ConfigError(f"{path}: cannot read config: {exc}") from exc
        if isinstance(data, dict):
            data = _rename_in(data, renamed, str(path))
        merged = _merge(to_dict(cfg), data, str(path))
        try:
            cfg = from_dict(cls, merged)
        except ConfigError as exc:
            raise ConfigError(f"{path}: {exc}") from exc
    return apply_overrides(cfg, overrides or [])


def _merge(base: dict[str, Any], update: Any, where: str) -> dict[str, Any]:
    if not isinstance(update, dict):
        raise ConfigError(f"{where}: expected a mapping at the top level")
    out = dict(base)
    for k, v in update.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = _merge(out[k], v, where)
        else:
            out[k] = v
    return out


def save_config(cfg: Any, path: str | Path) -> None:
    """Write the resolved config as YAML (keys in field order)."""
    Path(path).write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False), encoding="utf-8")
