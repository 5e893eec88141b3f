"""Typed configs: one dataclass per command, a docstring per field, YAML files and dotted overrides.

Parsing, merging and type coercion are OmegaConf's (structured configs). This module adds what it
lacks: an error that names the nearest valid key, and help text read from the field docstrings.
Validation of values lives in each dataclass's `__post_init__`, which runs once at load time.
"""

from __future__ import annotations

import ast
import dataclasses
import difflib
import inspect
import textwrap
import typing
from functools import lru_cache
from pathlib import Path
from typing import Any, Sequence, TypeVar

from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

T = TypeVar("T")


class ConfigError(ValueError):
    """A bad config key or value; the message names the key and what would be valid."""


def load_config(cls: type[T], args: Sequence[str] = ()) -> T:
    """Build `cls` from YAML files (`*.yaml`/`*.yml`) and `key=value` overrides, applied in order."""
    merged = OmegaConf.structured(cls)
    valid = sorted(field_paths(cls))
    for arg in args:
        if "=" in arg:
            key, _, value = arg.partition("=")
            _check_key(key.strip(), valid, source=arg)
            layer = OmegaConf.from_dotlist([f"{key.strip()}={value}"])
            source = arg
        elif arg.endswith((".yaml", ".yml")):
            path = Path(arg)
            if not path.is_file():
                raise ConfigError(f"config file not found: {arg}")
            layer = OmegaConf.load(path)
            for key in _leaf_paths(OmegaConf.to_container(layer)):
                _check_key(key, valid, source=arg)
            source = arg
        else:
            raise ConfigError(f"expected a .yaml file or key=value, got {arg!r}")
        try:
            merged = OmegaConf.merge(merged, layer)
        except OmegaConfBaseException as exc:
            key = getattr(exc, "full_key", None) or "?"
            raise ConfigError(f"bad value for {key!r} (from {source!r}): {_first_line(exc)}") from None
    try:
        return OmegaConf.to_object(merged)  # runs __post_init__ validation
    except OmegaConfBaseException as exc:
        raise ConfigError(_first_line(exc)) from None


def save_config(cfg: Any, path: Path) -> None:
    path.write_text(OmegaConf.to_yaml(OmegaConf.structured(cfg)))


def field_paths(cls: type) -> dict[str, dataclasses.Field]:
    """Every leaf key of a (nested) config dataclass, dotted."""
    out: dict[str, dataclasses.Field] = {}
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        tp = hints[f.name]
        if dataclasses.is_dataclass(tp):
            for sub, sf in field_paths(tp).items():
                out[f"{f.name}.{sub}"] = sf
        else:
            out[f.name] = f
    return out


def _check_key(key: str, valid: list[str], source: str) -> None:
    if key in valid or any(v.startswith(key + ".") for v in valid):
        return
    close = difflib.get_close_matches(key, valid, n=1, cutoff=0.0)
    hint = f"; did you mean {close[0]!r}?" if close else ""
    raise ConfigError(f"unknown config key {key!r} (from {source!r}){hint}")


def _leaf_paths(tree: Any, prefix: str = "") -> list[str]:
    if not isinstance(tree, dict):
        return [prefix]
    out = []
    for k, v in tree.items():
        out.extend(_leaf_paths(v, f"{prefix}{k}.") if isinstance(v, dict) else [f"{prefix}{k}"])
    return out


def _first_line(exc: Exception) -> str:
    return str(exc).strip().splitlines()[0]


@lru_cache(maxsize=None)
def field_docs(cls: type) -> dict[str, str]:
    """Attribute docstrings (a string literal right after a field) of a dataclass and its bases."""
    docs: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        if not dataclasses.is_dataclass(klass):
            continue
        try:
            tree = ast.parse(textwrap.dedent(inspect.getsource(klass)))
        except (OSError, TypeError):
            continue
        body = tree.body[0].body  # type: ignore[attr-defined]
        for node, nxt in zip(body, body[1:]):
            if (
                isinstance(node, ast.AnnAssign)
                and isinstance(node.target, ast.Name)
                and isinstance(nxt, ast.Expr)
                and isinstance(nxt.value, ast.Constant)
                and isinstance(nxt.value.value, str)
            ):
                docs[node.target.id] = " ".join(nxt.value.value.split())
    return docs


def describe(cls: type, prefix: str = "", defaults: Any = None) -> list[tuple[str, str, str, str]]:
    """(key, type, default, doc) rows for help and the generated config reference.

    `defaults`: the instance whose values are the defaults. A nested block takes its defaults from its
    parent's field (e.g. `default_factory=lambda: OptimConfig(lr=1e-4, min_lr_ratio=1.0)`), which may
    differ from the block class's own.
    """
    rows = []
    hints = typing.get_type_hints(cls)
    docs = field_docs(cls)
    for f in dataclasses.fields(cls):
        tp = hints[f.name]
        if defaults is not None:
            default = getattr(defaults, f.name)
        elif f.default is not dataclasses.MISSING:
            default = f.default
        elif f.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
            default = f.default_factory()  # type: ignore[misc]
        else:
            default = dataclasses.MISSING
        if dataclasses.is_dataclass(tp):
            nested = None if default is dataclasses.MISSING else default
            rows.extend(describe(tp, prefix=f"{prefix}{f.name}.", defaults=nested))
            continue
        shown = "(required)" if default is dataclasses.MISSING else repr(default)
        rows.append((prefix + f.name, _type_name(tp), shown, docs.get(f.name, "")))
    return rows


def _type_name(tp: Any) -> str:
    name = getattr(tp, "__name__", None)
    return name if name and not typing.get_args(tp) else str(tp).replace("typing.", "")


def render_help(cls: type) -> str:
    lines = []
    for key, tp, default, doc in describe(cls):
        lines.append(f"  {key} ({tp}, default {default})")
        if doc:
            lines.extend("      " + ln for ln in textwrap.wrap(doc, 90))
    return "\n".join(lines)


def render_markdown(cls: type) -> str:
    lines = ["| key | type | default | meaning |", "|---|---|---|---|"]
    for key, tp, default, doc in describe(cls):
        lines.append(f"| `{key}` | {tp} | `{default}` | {doc.replace('|', '/')} |")
    return "\n".join(lines)


def require(cond: bool, message: str) -> None:
    """Validation helper for `__post_init__`: raise a ConfigError with `message` unless `cond`."""
    if not cond:
        raise ConfigError(message)


def require_choice(key: str, value: str, choices: Sequence[str]) -> None:
    if value not in choices:
        close = difflib.get_close_matches(value, list(choices), n=1, cutoff=0.0)
        raise ConfigError(f"{key}={value!r} is not one of {list(choices)}; did you mean {close[0]!r}?")
