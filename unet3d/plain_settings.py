"""Settings dataclasses <-> JSON-ready data: the files that record settings (model cards, data
stores, preprocess.json, run states) use these.

- `to_plain`: a settings dataclass as plain data (nested dataclasses as dicts, tuples as lists).
- `from_plain`: back, strictly: every field present, no other key, each value of its annotated
  type; anything else is an `InputError` naming the file, never a default.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from typing import Any

from unet3d.errors import InputError



def to_plain(settings) -> dict:
    """A settings dataclass as JSON-ready data: nested dataclasses as dicts, tuples as lists."""
    def plain(value):
        if dataclasses.is_dataclass(value):
            return {f.name: plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
        if isinstance(value, (tuple, list)):
            return [plain(v) for v in value]
        if isinstance(value, dict):
            return {k: plain(v) for k, v in value.items()}
        return value
    return plain(settings)


def from_plain(cls: type, data: Any, source: str):
    """The `cls` dataclass of `to_plain`'s data. Every field must be present and no other key:
    a renamed or missing setting is an `InputError` naming `source` (a file), never a default."""
    if not isinstance(data, dict):
        raise InputError(f"{source}: expected a JSON object for {cls.__name__}, got "
                         f"{type(data).__name__}")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    missing, unknown = [n for n in names if n not in data], [k for k in data if k not in names]
    if missing or unknown:
        raise InputError(f"{source}: {cls.__name__} "
                         + "; ".join(part for part in (
                             f"misses {', '.join(missing)}" if missing else "",
                             f"has unknown {', '.join(unknown)}" if unknown else "") if part)
                         + ": it was written by another version of unet3d, or edited")
    values = {name: _from_plain_value(hints[name], data[name], f"{source}: {name}")
              for name in names}
    wrong = [f"{name} = {values[name]!r}" for name in names
             if not _is_instance(hints[name], values[name])]
    if wrong:
        raise InputError(f"{source}: {cls.__name__} has values of the wrong type: "
                         f"{'; '.join(wrong)}")
    return cls(**values)


def _is_instance(hint, value) -> bool:
    """Whether `value` is of the annotated type `hint` (ints count as floats, bools as neither)."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        return any(_is_instance(option, value) for option in args)
    if hint is Any:
        return True
    if hint is type(None):
        return value is None
    if origin is tuple:
        if not isinstance(value, tuple):
            return False
        if len(args) == 2 and args[1] is Ellipsis:
            return all(_is_instance(args[0], item) for item in value)
        return len(args) == len(value) and all(map(_is_instance, args, value))
    if origin is dict:
        return isinstance(value, dict)
    if hint in (int, float):
        return isinstance(value, (int, float) if hint is float else int) \
            and not isinstance(value, bool)
    return isinstance(value, hint)


def _from_plain_value(hint, value, source: str):
    if value is None:
        return None
    options = [a for a in typing.get_args(hint) if a is not type(None)] \
        if typing.get_origin(hint) in (typing.Union, types.UnionType) else [hint]
    for option_type in options:
        if dataclasses.is_dataclass(option_type):
            return from_plain(option_type, value, source)
        if typing.get_origin(option_type) is tuple and isinstance(value, list):
            return tuple(value)
    return value
