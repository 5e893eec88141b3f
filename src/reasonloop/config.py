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
import math
import textwrap
import types as pytypes
import typing
from functools import lru_cache
from pathlib import Path
from typing import Any, Sequence, TypeVar

import yaml
from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from reasonloop.errors import UserError, first_line

T = TypeVar("T")


class ConfigError(UserError):
    """A bad config key or value; the message names the key and what would be valid."""


def load_config(cls: type[T], args: Sequence[str] = ()) -> T:
    """Build `cls` from YAML files (`*.yaml`/`*.yml`) and `key=value` overrides, applied in order.

    String-typed keys take the text as written (`output_dir=0042` stays "0042", `off` stays "off":
    YAML 1.1 would read them as 34 and False); every float must be finite; broken YAML (syntax, tabs,
    duplicate keys, a binary or non-UTF-8 file) is a ConfigError naming the file and line. A class may name
    files read before all of `args` from what they set (`cls.files_under(merged)`: rl.Config's `setting`).
    """
    merged = _merge(cls, args)
    under = getattr(cls, "files_under", None)
    files = under(merged) if under else []
    if files:
        merged = _merge(cls, [*map(str, files), *args])
    _check_finite(OmegaConf.to_container(merged))
    try:
        cfg = OmegaConf.to_object(merged)  # runs __post_init__ validation
    except OmegaConfBaseException as exc:
        raise ConfigError(first_line(exc)) from None
    return cfg


def _merge(cls: type, args: Sequence[str]) -> Any:
    """`args` merged over `cls`'s defaults, unvalidated (an OmegaConf DictConfig)."""
    merged = OmegaConf.structured(cls)
    types = field_types(cls)
    valid = sorted(types)
    for arg in args:
        if "=" in arg:
            key, _, value = arg.partition("=")
            key = key.strip()
            _check_key(key, valid, source=arg)
            if key not in types and any(v.startswith(key + ".") for v in valid):
                raise ConfigError(f"{key!r} is a block of settings, not a value (from {arg!r}); set its keys, "
                                  f"e.g. {next(v for v in valid if v.startswith(key + '.'))}=...")
            if _is_str(types.get(key)):
                layer = OmegaConf.create(_nest(key, value))  # the raw text: never YAML-coerced
            else:
                try:
                    layer = OmegaConf.from_dotlist([f"{key}={value}"])
                except (OmegaConfBaseException, yaml.YAMLError) as exc:
                    raise ConfigError(f"bad value for {key!r} (from {arg!r}): {first_line(exc)}") from None
            source = arg
        elif arg.endswith((".yaml", ".yml")):
            layer = OmegaConf.create(read_yaml(Path(arg), types))
            for key in flatten(OmegaConf.to_container(layer)):
                _check_key(key, valid, source=arg)
            source = arg
        else:
            raise ConfigError(f"expected a .yaml file or key=value, got {arg!r}")
        try:
            merged = OmegaConf.merge(merged, layer)
        except OmegaConfBaseException as exc:
            key = getattr(exc, "full_key", None) or "?"
            raise ConfigError(f"bad value for {key!r} (from {source!r}): {first_line(exc)}") from None
    return merged


def read_yaml(path: Path, types: dict[str, Any] | None = None) -> dict:
    """A config file as a dict; string-typed keys (per `types`, dotted key -> type) keep their raw text.

    Raises ConfigError naming the file (and line) for a missing, unreadable, binary or non-UTF-8 file,
    YAML syntax errors (tabs included), duplicate keys and a top level that is not a mapping.
    """
    if not path.is_file():
        what = "is a directory, not a file" if path.is_dir() else "not found"
        raise ConfigError(f"config file {what}: {path}")
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror or exc}") from None
    if b"\0" in raw:
        raise ConfigError(f"{path}: not a YAML text file (it holds binary data)")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise ConfigError(f"{path}:{line}: not valid UTF-8 (byte {raw[exc.start]:#04x}); save the file as UTF-8") from None
    loader = yaml.SafeLoader(text)
    try:
        node = loader.get_single_node()
        if node is None or node.tag == "tag:yaml.org,2002:null":  # an empty file, or only '---'
            return {}
        if not isinstance(node, yaml.MappingNode):
            raise ConfigError(f"{path}:{node.start_mark.line + 1}: the top level must be a mapping of keys "
                              f"(key: value lines), not a {node.tag.rsplit(':', 1)[-1]}")
        _check_duplicates(node, path)
        data = loader.construct_document(node)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark is not None else str(path)
        problem = " ".join(filter(None, [exc.context, exc.problem]))
        hint = "; indent with spaces, YAML does not allow tabs there" if "\\t" in problem or "\t" in problem else ""
        raise ConfigError(f"{where}: YAML syntax error: {problem}{hint}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: YAML error: {first_line(exc)}") from None
    finally:
        loader.dispose()
    if types:
        _keep_raw_strings(node, data, types)
    return data


def _check_duplicates(node: Any, path: Path) -> None:
    if isinstance(node, yaml.MappingNode):
        seen: dict[Any, int] = {}
        for key, value in node.value:
            if isinstance(key, yaml.ScalarNode):
                if key.value in seen:
                    raise ConfigError(f"{path}:{key.start_mark.line + 1}: duplicate key {key.value!r} "
                                      f"(first set on line {seen[key.value]}); keep one")
                seen[key.value] = key.start_mark.line + 1
            _check_duplicates(value, path)
    elif isinstance(node, yaml.SequenceNode):
        for item in node.value:
            _check_duplicates(item, path)


def _keep_raw_strings(node: Any, data: Any, types: dict[str, Any], prefix: str = "") -> None:
    """Replace YAML-coerced values of string-typed keys with the text written in the file."""
    if not isinstance(node, yaml.MappingNode) or not isinstance(data, dict):
        return
    for key_node, value_node in node.value:
        if not isinstance(key_node, yaml.ScalarNode):
            continue
        key = key_node.value
        dotted = prefix + key
        if isinstance(value_node, yaml.MappingNode):
            _keep_raw_strings(value_node, data.get(key), types, dotted + ".")
        elif (isinstance(value_node, yaml.ScalarNode) and value_node.style is None and _is_str(types.get(dotted))
              and key in data):
            data[key] = value_node.value


def _nest(key: str, value: Any) -> dict:
    out: Any = value
    for part in reversed(key.split(".")):
        out = {part: out}
    return out


def _is_str(tp: Any) -> bool:
    return tp is str or (typing.get_origin(tp) in (typing.Union, pytypes.UnionType) and str in typing.get_args(tp))


def _check_finite(tree: Any, prefix: str = "") -> None:
    """NaN and infinity are never meaningful config values (lr=inf trains every weight to NaN)."""
    if isinstance(tree, dict):
        for k, v in tree.items():
            _check_finite(v, f"{prefix}{k}.")
    elif isinstance(tree, list):
        for i, v in enumerate(tree):
            _check_finite(v, f"{prefix[:-1]}[{i}].")
    elif isinstance(tree, float) and not math.isfinite(tree):
        raise ConfigError(f"{prefix[:-1]}={tree} is not a finite number; give a finite value")


def field_types(cls: type) -> dict[str, Any]:
    """Every leaf key of a (nested) config dataclass, dotted, with its declared type."""
    out: dict[str, Any] = {}
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        tp = hints[f.name]
        if dataclasses.is_dataclass(tp):
            out.update({f"{f.name}.{sub}": st for sub, st in field_types(tp).items()})
        else:
            out[f.name] = tp
    return out


def save_config(cfg: Any, path: Path) -> None:
    path.write_text(OmegaConf.to_yaml(OmegaConf.structured(cfg)))


def _check_key(key: str, valid: list[str], source: str) -> None:
    if key in valid or any(v.startswith(key + ".") for v in valid):
        return
    close = difflib.get_close_matches(key, valid, n=1, cutoff=0.0)
    hint = f"; did you mean {close[0]!r}?" if close else ""
    raise ConfigError(f"unknown config key {key!r} (from {source!r}){hint}")


def flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
    """A nested mapping as dotted leaf keys -> values (`{"a": {"b": 1}}` -> `{"a.b": 1}`)."""
    out: dict[str, Any] = {}
    for k, v in tree.items():
        if isinstance(v, dict):
            out.update(flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


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
