"""The base of every config: a dataclass read from and written to the keys of the official colab configs,
each value checked against its field's type and numbers.

Each field carries the official key it is stored under (the field name unless stated). Reading a dict
rejects unknown keys and names missing required ones; absent optional keys take the official code's
default for that argument. Every value is checked whenever a config is made, read or built in Python
(`_read`), so before any model is built: a field declared with `bounded` takes the range it names, any
other integer a size (`SIZE`) and any other float a finite number. `to_official()` writes every key, so a
saved config is explicit.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import types
import typing
from dataclasses import field
from typing import Any, ClassVar, Literal, Mapping, NamedTuple, TypeVar

from .errors import ConfigError

T = TypeVar("T", bound="OfficialConfig")


class Range(NamedTuple):
    """The numbers a field takes: `low` to `high`, each end included where its bracket is square, or `also`."""

    low: float
    high: float
    brackets: str = "[]"
    also: int | None = None

    def __contains__(self, value) -> bool:
        above = value > self.low or (value == self.low and self.brackets[0] == "[")
        below = value < self.high or (value == self.high and self.brackets[1] == "]")
        return value == self.also or (above and below)

    def __str__(self) -> str:
        interval = f"{self.brackets[0]}{self.low}, {self.high}{self.brackets[1]}"
        return interval if self.also is None else f"{interval} or {self.also}"


MAX_SIZE = 2**24
"""The largest size a config may give (channels, index dims, heads, counts...): room for long raw inputs
(minutes of audio samples), while a slip such as 10**12 is refused before anything is allocated."""

MAX_LAYERS = 1024
"""The most self-attention layers per block, blocks, or extra position MLP layers (the releases use <= 26):
each layer is a module of its own, so a size-like count would fill the memory while the model is built."""

SIZE = Range(1, MAX_SIZE)
"""Every integer field takes a size unless its own `numbers` say otherwise."""
ANY_NUMBER = Range(-math.inf, math.inf, "()")
"""Every float field takes any finite number unless its own `numbers` say otherwise."""
LAYER_COUNT = Range(1, MAX_LAYERS)
PROBABILITY = Range(0, 1)
DROPOUT_RATE = Range(0, 1, "[)")
NON_NEGATIVE = Range(0, math.inf, "[)")
POSITIVE = Range(0, math.inf, "()")
NO_PROJECTION = Range(-1, MAX_SIZE)
"""`project_pos_dim`: officially no projection unless > 0 (-1 is the default)."""
_DEFAULT_NUMBERS = {int: SIZE, float: ANY_NUMBER}


def bounded(default: Any, within: Range, key: str | None = None) -> Any:
    """A dataclass field whose numbers (its own, or its items') lie `within` a range, not their type's
    default (`SIZE` for integers, `ANY_NUMBER` for floats); stored under the official `key` if given."""
    return field(default=default, metadata={"numbers": within, **({"key": key} if key else {})})


def _key(f: dataclasses.Field) -> str:
    return f.metadata.get("key", f.name)


@functools.cache
def _field_types(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _alternatives(hint: Any) -> tuple:
    return typing.get_args(hint) if typing.get_origin(hint) in (typing.Union, types.UnionType) else (hint,)


def _has_form(value: Any, hint: Any) -> bool:
    """Whether `value` has the outer form of type `hint` (items and ranges are `_read`'s concern)."""
    origin = typing.get_origin(hint) or hint
    if origin is Literal:
        return isinstance(value, str) and value in typing.get_args(hint)
    if origin is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if origin is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if origin is tuple:
        return isinstance(value, (list, tuple))
    if origin is dict:
        return isinstance(value, Mapping)
    if issubclass(origin, OfficialConfig):
        return isinstance(value, (Mapping, origin))
    return isinstance(value, origin)


def _describe(hint: Any, numbers: Range | None) -> str:
    """What a field of type `hint` takes, in words."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_describe(arg, numbers) for arg in args)
    if origin is Literal:
        return "one of " + ", ".join(map(repr, args))
    if origin is tuple:
        count = "one or more" if args[-1] is Ellipsis else len(args)
        return f"a list of {count} ({_describe(args[0], numbers)})"
    if origin is dict:
        return f"a mapping of names to ({_describe(args[1], numbers)})"
    if hint in (int, float):
        return f"{'an integer' if hint is int else 'a number'} in {numbers or _DEFAULT_NUMBERS[hint]}"
    if issubclass(hint, OfficialConfig):
        return "a mapping of official config keys"
    return {bool: "true or false", str: "a string", type(None): "null"}[hint]


def _read(value: Any, hint: Any, where: str, numbers: Range | None) -> Any:
    """`value` as a field of type `hint` holds it (lists as tuples, mappings as configs), its numbers in
    `numbers` (or their type's default range); otherwise a ConfigError naming `where`, what it takes and the value."""
    form = next((alternative for alternative in _alternatives(hint) if _has_form(value, alternative)), None)
    origin, args = typing.get_origin(form), typing.get_args(form)
    if origin is tuple and (len(value) == len(args) or (args[-1] is Ellipsis and len(value) > 0)):
        return tuple(_read(item, args[0], f"{where}[{i}]", numbers) for i, item in enumerate(value))
    if origin is dict:
        return {_read(k, args[0], where, None): _read(v, args[1], f"{where}.{k}", numbers) for k, v in value.items()}
    if isinstance(form, type) and issubclass(form, OfficialConfig):
        return value if isinstance(value, form) else form.from_official(value, where)
    if form is None or origin is tuple or (form in (int, float) and value not in (numbers or _DEFAULT_NUMBERS[form])):
        raise ConfigError(f"{where}: expected {_describe(hint, numbers)}, found {value!r}")
    return value


def _from_tagged(kinds: dict[str, type], values: Mapping[str, Any], where: str):
    """A config chosen by its "type" key among `kinds` (a module of the official building set)."""
    if not isinstance(values, Mapping) or values.get("type") not in kinds:
        found = values.get("type") if isinstance(values, Mapping) else type(values).__name__
        raise ConfigError(f"{where}: 'type' must be one of {sorted(kinds)}, found {found!r}")
    return kinds[values["type"]].from_official({k: v for k, v in values.items() if k != "type"}, where)


class OfficialConfig:
    """Mixin for dataclass configs stored in official keys."""

    official_name: ClassVar[str] = "config"

    def __post_init__(self) -> None:
        """Checks a config however it was made (read from official keys, or built in Python), lists
        becoming tuples and mappings configs, as `from_official` reads them."""
        hints = _field_types(type(self))
        for f in dataclasses.fields(self):
            value, where, tagged = getattr(self, f.name), f"{self.official_name}.{_key(f)}", f.metadata.get("tagged")
            if tagged is None:
                object.__setattr__(self, f.name, _read(value, hints[f.name], where, f.metadata.get("numbers")))
            elif value is not None and type(value) not in tagged.values():
                raise ConfigError(f"{where}: expected one of the configs {sorted(k.__name__ for k in tagged.values())}, "
                                  f"found {value!r}")

    @classmethod
    def from_official(cls: type[T], values: Mapping[str, Any], where: str | None = None) -> T:
        where = where or cls.official_name
        if not isinstance(values, Mapping):
            raise ConfigError(f"{where}: expected a mapping of official config keys, got {type(values).__name__}")
        fields = {_key(f): f for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - set(fields))
        if unknown:
            raise ConfigError(f"{where}: unknown keys {unknown}; known keys are {sorted(fields)}")
        missing = sorted(
            key
            for key, f in fields.items()
            if key not in values and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
        )
        if missing:
            raise ConfigError(f"{where}: missing required keys {missing}")
        kwargs = {}
        for key, value in values.items():
            f = fields[key]
            tagged = f.metadata.get("tagged")
            if tagged is not None and value is not None:
                kwargs[f.name] = _from_tagged(tagged, value, f"{where}.{key}")
            else:
                kwargs[f.name] = _read(value, _field_types(cls)[f.name], f"{where}.{key}", f.metadata.get("numbers"))
        return cls(**kwargs)

    def to_official(self) -> dict[str, Any]:
        out = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            tagged = f.metadata.get("tagged")
            if tagged is not None and value is not None:
                tag = next(tag for tag, kind in tagged.items() if type(value) is kind)
                value = {"type": tag, **value.to_official()}
            elif isinstance(value, OfficialConfig):
                value = value.to_official()
            elif isinstance(value, tuple):
                value = list(value)
            out[_key(f)] = value
        return out

    def to_json(self) -> str:
        return json.dumps(self.to_official(), sort_keys=True)
