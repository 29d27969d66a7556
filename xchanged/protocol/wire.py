"""Bodies on the wire: plain msgpack maps checked against dataclass annotations.

`from_body(cls, body)` builds a frozen dataclass from a peer's (or a client's) map, checking every
field's type and bound on the way; anything else raises `RemoteProtocolError("invalid_body")`, never
a crash. `to_body` is the way back. Limits are named here: strings, lists and maps are bounded, and a
field may carry a larger bound of its own (`Annotated[list[str], Limit(n)]`).
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass
from typing import Any

from .errors import RemoteProtocolError

MAX_STR = 4096                 # names, reasons, ids, argv elements
MAX_ITEMS = 1024               # list and map entries
MAX_OUTPUT_BYTES = 1 << 20     # captured output carried in one result


@dataclass(frozen=True, slots=True)
class Limit:
    """A bound of its own for one list or string field (`Annotated[list[X], Limit(n)]`)."""

    n: int


MAX_DEPTH = 32                 # nested maps (a composite's steps nest): deeper is refused, not recursed


Where = Any                    # str, or (parent, separator, key): the path is built only for an error
_ANY, _ANNOTATED, _UNION, _BOOL, _INT, _FLOAT, _STR, _BYTES, _LIST, _TUPLE, _DICT, _DATACLASS, _UNSUPPORTED = range(13)
_SHAPES: dict[Any, tuple[Any, ...]] = {}
INT_RANGE = (-(1 << 63), 1 << 63)


def _loc(where: Where) -> str:
    if isinstance(where, str):
        return where
    parent, sep, key = where
    return f"{_loc(parent)}[{key}]" if sep == "[" else f"{_loc(parent)}{sep}{key}"


def _shape(hint: Any) -> tuple[Any, ...]:
    """What an annotation asks for, worked out once per annotation (every frame is checked)."""
    try:
        return _SHAPES[hint]
    except KeyError:
        pass
    except TypeError:                            # unhashable: not cached
        return _analyse(hint)
    shape = _SHAPES[hint] = _analyse(hint)
    return shape


def _analyse(hint: Any) -> tuple[Any, ...]:
    if hint is Any:
        return (_ANY,)
    origin = typing.get_origin(hint)
    if origin is typing.Annotated:
        base, *meta = typing.get_args(hint)
        return (_ANNOTATED, base, next((m.n for m in meta if isinstance(m, Limit)), None))
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(hint)
        first = next((arg for arg in args if arg is not type(None)), None)
        if first is not None:
            return (_UNION, type(None) in args, first)
    simple = {bool: _BOOL, int: _INT, float: _FLOAT, str: _STR, bytes: _BYTES}
    if isinstance(hint, type) and hint in simple:
        return (simple[hint],)
    if origin is list or origin is tuple:
        return (_LIST if origin is list else _TUPLE, typing.get_args(hint)[0])
    if origin is dict:
        key_hint, value_hint = typing.get_args(hint)
        return (_DICT, key_hint, value_hint)
    if isinstance(hint, type) and dataclasses.is_dataclass(hint):
        return (_DATACLASS, hint)
    return (_UNSUPPORTED,)


def _check(value: Any, hint: Any, where: Where, depth: int = 0, limit: int | None = None) -> Any:
    shape = _shape(hint)
    kind = shape[0]
    if kind == _ANY:
        return value
    if kind == _ANNOTATED:
        return _check(value, shape[1], where, depth, shape[2])
    if kind == _UNION:
        if value is None and shape[1]:
            return None
        return _check(value, shape[2], where, depth, limit)
    if kind == _BOOL:
        if not isinstance(value, bool):
            raise RemoteProtocolError("invalid_body", f"{_loc(where)}: expected bool")
        return value
    if kind == _INT:
        if not isinstance(value, int) or isinstance(value, bool):
            raise RemoteProtocolError("invalid_body", f"{_loc(where)}: expected int")
        if not INT_RANGE[0] <= value < INT_RANGE[1]:
            raise RemoteProtocolError("invalid_body", f"{_loc(where)}: int out of range")
        return value
    if kind == _FLOAT:
        if not isinstance(value, (int, float)) or isinstance(value, bool):
            raise RemoteProtocolError("invalid_body", f"{_loc(where)}: expected number")
        value = float(value)
        if value != value or value in (float("inf"), float("-inf")):
            raise RemoteProtocolError("invalid_body", f"{_loc(where)}: number not finite")
        return value
    if kind == _STR:
        most = limit or MAX_STR
        if not isinstance(value, str) or len(value) > most:
            raise RemoteProtocolError("invalid_body", f"{_loc(where)}: expected string (<= {most})")
        return value
    if kind == _BYTES:
        if not isinstance(value, bytes) or len(value) > MAX_OUTPUT_BYTES:
            raise RemoteProtocolError("invalid_body", f"{_loc(where)}: expected bytes")
        return value
    if kind == _LIST or kind == _TUPLE:
        most = limit or MAX_ITEMS
        if not isinstance(value, (list, tuple)) or len(value) > most:
            raise RemoteProtocolError("invalid_body", f"{_loc(where)}: expected list (<= {most})")
        item = shape[1]
        checked = [_check(v, item, (where, "[", i), depth) for i, v in enumerate(value)]
        return tuple(checked) if kind == _TUPLE else checked
    if kind == _DICT:
        if not isinstance(value, dict) or len(value) > MAX_ITEMS:
            raise RemoteProtocolError("invalid_body", f"{_loc(where)}: expected map (<= {MAX_ITEMS})")
        key_hint, value_hint = shape[1], shape[2]
        return {_check(k, key_hint, where): _check(v, value_hint, (where, ".", k), depth) for k, v in value.items()}
    if kind == _DATACLASS:
        if not isinstance(value, dict):
            raise RemoteProtocolError("invalid_body", f"{_loc(where)}: expected map")
        if depth >= MAX_DEPTH:
            raise RemoteProtocolError("invalid_body", f"{_loc(where)}: nested more than {MAX_DEPTH} deep")
        return _build(shape[1], value, (where, ".", ""), depth + 1)
    raise TypeError(f"unsupported annotation {hint!r} at {_loc(where)}")  # our bug, not the peer's


_HINTS: dict[type, dict[str, Any]] = {}
_FIELDS: dict[type, tuple[tuple[str, Any, bool], ...]] = {}


def _hints(cls: type) -> dict[str, Any]:
    if cls not in _HINTS:
        _HINTS[cls] = typing.get_type_hints(cls, include_extras=True)
    return _HINTS[cls]


def _fields(cls: type) -> tuple[tuple[str, Any, bool], ...]:
    """(name, annotation, required) of each field of a message class, worked out once."""
    fields = _FIELDS.get(cls)
    if fields is None:
        hints = _hints(cls)
        fields = _FIELDS[cls] = tuple(
            (f.name, hints[f.name], f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING)
            for f in dataclasses.fields(cls))
    return fields


def _build(cls: type, body: dict[str, Any], where: Where = "", depth: int = 0) -> Any:
    kwargs = {}
    for name, hint, required in _fields(cls):
        if name in body:
            kwargs[name] = _check(body[name], hint, (where, "", name), depth)
        elif required:
            raise RemoteProtocolError("invalid_body", f"{_loc(where)}{name}: missing")
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as exc:
        raise RemoteProtocolError("invalid_body", f"{_loc(where)}{cls.__name__}: {exc}") from None


_PLAIN = frozenset({str, int, float, bool, bytes, type(None)})
_FIELD_NAMES: dict[type, tuple[str, ...]] = {}


def to_body(obj: Any) -> Any:
    """Dataclass tree -> plain msgpack-able values."""
    kind = type(obj)
    if kind in _PLAIN:                          # the common case first: it is on every frame's path
        return obj
    names = _FIELD_NAMES.get(kind)
    if names is None and dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        names = _FIELD_NAMES[kind] = tuple(f.name for f in dataclasses.fields(obj))
    if names is not None:
        return {name: to_body(getattr(obj, name)) for name in names}
    if isinstance(obj, (list, tuple)):
        return [v if type(v) in _PLAIN else to_body(v) for v in obj]
    if isinstance(obj, dict):
        return {k: to_body(v) for k, v in obj.items()}
    return obj


def from_body(cls: type, body: Any) -> Any:
    if not isinstance(body, dict):
        raise RemoteProtocolError("invalid_body", f"{cls.__name__}: body must be a map")
    return _build(cls, body)

