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


def _check(value: Any, hint: Any, where: str, depth: int = 0, limit: int | None = None) -> Any:
    origin = typing.get_origin(hint)
    if hint is Any:
        return value
    if origin is typing.Annotated:
        base, *meta = typing.get_args(hint)
        bound = next((m.n for m in meta if isinstance(m, Limit)), None)
        return _check(value, base, where, depth, bound)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(hint)
        if value is None and type(None) in args:
            return None
        for arg in args:
            if arg is type(None):
                continue
            return _check(value, arg, where, depth, limit)
    if hint is bool:
        if not isinstance(value, bool):
            raise RemoteProtocolError("invalid_body", f"{where}: expected bool")
        return value
    if hint is int:
        if not isinstance(value, int) or isinstance(value, bool):
            raise RemoteProtocolError("invalid_body", f"{where}: expected int")
        if not -(1 << 63) <= value < (1 << 63):
            raise RemoteProtocolError("invalid_body", f"{where}: int out of range")
        return value
    if hint is float:
        if not isinstance(value, (int, float)) or isinstance(value, bool):
            raise RemoteProtocolError("invalid_body", f"{where}: expected number")
        value = float(value)
        if value != value or value in (float("inf"), float("-inf")):
            raise RemoteProtocolError("invalid_body", f"{where}: number not finite")
        return value
    if hint is str:
        most = limit or MAX_STR
        if not isinstance(value, str) or len(value) > most:
            raise RemoteProtocolError("invalid_body", f"{where}: expected string (<= {most})")
        return value
    if hint is bytes:
        if not isinstance(value, bytes) or len(value) > MAX_OUTPUT_BYTES:
            raise RemoteProtocolError("invalid_body", f"{where}: expected bytes")
        return value
    if origin is list or origin is tuple:
        most = limit or MAX_ITEMS
        if not isinstance(value, (list, tuple)) or len(value) > most:
            raise RemoteProtocolError("invalid_body", f"{where}: expected list (<= {most})")
        (item,) = typing.get_args(hint)[:1]
        checked = [_check(v, item, f"{where}[{i}]", depth) for i, v in enumerate(value)]
        return tuple(checked) if origin is tuple else checked
    if origin is dict:
        if not isinstance(value, dict) or len(value) > MAX_ITEMS:
            raise RemoteProtocolError("invalid_body", f"{where}: expected map (<= {MAX_ITEMS})")
        key_hint, value_hint = typing.get_args(hint)
        return {_check(k, key_hint, where): _check(v, value_hint, f"{where}.{k}", depth) for k, v in value.items()}
    if isinstance(hint, type) and dataclasses.is_dataclass(hint):
        if not isinstance(value, dict):
            raise RemoteProtocolError("invalid_body", f"{where}: expected map")
        if depth >= MAX_DEPTH:
            raise RemoteProtocolError("invalid_body", f"{where}: nested more than {MAX_DEPTH} deep")
        return _build(hint, value, f"{where}.", depth + 1)
    raise TypeError(f"unsupported annotation {hint!r} at {where}")  # our bug, not the peer's


_HINTS: dict[type, dict[str, Any]] = {}


def _hints(cls: type) -> dict[str, Any]:
    if cls not in _HINTS:
        _HINTS[cls] = typing.get_type_hints(cls, include_extras=True)
    return _HINTS[cls]


def _build(cls: type, body: dict[str, Any], where: str = "", depth: int = 0) -> Any:
    hints = _hints(cls)
    kwargs = {}
    for f in dataclasses.fields(cls):
        if f.name in body:
            kwargs[f.name] = _check(body[f.name], hints[f.name], f"{where}{f.name}", depth)
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise RemoteProtocolError("invalid_body", f"{where}{f.name}: missing")
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as exc:
        raise RemoteProtocolError("invalid_body", f"{where}{cls.__name__}: {exc}") from None


def to_body(obj: Any) -> Any:
    """Dataclass tree -> plain msgpack-able values."""
    if dataclasses.is_dataclass(obj):
        return {f.name: to_body(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, (list, tuple)):
        return [to_body(v) for v in obj]
    if isinstance(obj, dict):
        return {k: to_body(v) for k, v in obj.items()}
    return obj


def from_body(cls: type, body: Any) -> Any:
    if not isinstance(body, dict):
        raise RemoteProtocolError("invalid_body", f"{cls.__name__}: body must be a map")
    return _build(cls, body)

