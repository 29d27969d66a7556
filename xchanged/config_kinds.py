"""Kinds of config values: how a TOML value of one kind is checked and converted when a config is
loaded, and written back when the default config is generated (config.py declares which key has
which kind).

A kind raises ``Invalid(reason)``; the loader adds the file and the dotted key, so each reason here
reads after ``file: section.key: ``.
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path
from typing import Any, Callable

from .units import (
    format_duration,
    format_size_exact,
    parse_address,
    parse_duration,
    parse_host_port,
    parse_size,
)

#: Longest node name, label key and label value.
MAX_NAME_LEN = 63
MAX_LABEL_LEN = 63
#: Most labels a node may carry (they travel in every load signal).
MAX_LABELS = 64

_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,%d}" % (MAX_NAME_LEN - 1), re.ASCII)
_LABEL_RE = re.compile(r"[A-Za-z0-9_.-]{1,%d}" % MAX_LABEL_LEN, re.ASCII)


class Invalid(Exception):
    """A value is unusable; `key` (set by the loader) or `at` (a part of the value, like a label's
    '.zone') say where."""

    def __init__(self, reason: str, *, key: str = "", at: str = "") -> None:
        super().__init__(reason)
        self.reason, self.key, self.at = reason, key, at


def check_name(name: str) -> str | None:
    """Why ``name`` is not a valid node name, or None."""
    if not _NAME_RE.fullmatch(name):
        return (
            f"invalid node name {name!r}: use 1 to {MAX_NAME_LEN} characters from "
            "A-Z a-z 0-9 _ . -, starting with a letter or digit"
        )
    return None


def toml_string(text: str) -> str:
    """``text`` as a TOML basic string."""
    out = []
    for ch in text:
        if ch in '"\\':
            out.append("\\" + ch)
        elif ch < " " or ch == "\x7f":
            out.append(f"\\u{ord(ch):04x}")
        else:
            out.append(ch)
    return '"' + "".join(out) + '"'


class Kind:
    """A value's TOML type (`types`, described as `expected` in errors) and its checks."""

    #: What `load` returns for a value that means "the default" (an empty path where that is allowed).
    DEFAULT: Any = object()
    expected = "a value"
    types: tuple[type, ...] = (object,)

    def load(self, value: Any, base_dir: Path) -> Any:
        if not isinstance(value, self.types) or (isinstance(value, bool) and bool not in self.types):
            raise Invalid(f"expected {self.expected}, got {value!r}")
        return self.convert(value, base_dir)

    def convert(self, value: Any, base_dir: Path) -> Any:
        return value

    def render(self, value: Any) -> str:
        """`value` as TOML that loads back to it."""
        raise NotImplementedError


class Text(Kind):
    expected, types = "a string", (str,)

    def __init__(self, *, empty_ok: bool = False) -> None:
        self.empty_ok = empty_ok

    def convert(self, value: str, base_dir: Path) -> str:
        if not value and not self.empty_ok:
            raise Invalid("must not be empty")
        return value

    def render(self, value: str) -> str:
        return toml_string(value)


class Choice(Text):
    """One of a fixed set of words, or (with `other`) any value `other` accepts (its ValueError says
    why not)."""

    def __init__(self, *choices: str, other: Callable[[str], Any] | None = None) -> None:
        super().__init__()
        self.choices, self.other = choices, other

    def convert(self, value: str, base_dir: Path) -> str:
        if value in self.choices:
            return value
        if self.other is None:
            raise Invalid(f"expected one of {', '.join(self.choices)}, got {value!r}")
        try:
            self.other(value)
        except ValueError as e:
            raise Invalid(f"expected one of {', '.join(self.choices)} or a name: {e}") from None
        return value


class Command(Text):
    """A command line, split as a shell would split it (no shell runs it); "" means none."""

    def __init__(self) -> None:
        super().__init__(empty_ok=True)

    def convert(self, value: str, base_dir: Path) -> str:
        try:
            words = shlex.split(value)
        except ValueError as e:
            raise Invalid(f"not a command line: {e}") from None
        if value and not words:
            raise Invalid("a command line with no command")
        return value


class NodeName(Text):
    def convert(self, value: str, base_dir: Path) -> str:
        value = super().convert(value, base_dir)
        if reason := check_name(value):
            raise Invalid(reason)
        return value


class Address(Text):
    """host:port; `listening` allows port 0 (pick a free port); `port_optional` also allows a bare
    host (IPv4, name, or IPv6 with or without brackets), whose port the user of the value supplies."""

    def __init__(self, *, listening: bool, empty_ok: bool = False, port_optional: bool = False) -> None:
        super().__init__(empty_ok=empty_ok)
        self.listening = listening
        self.port_optional = port_optional

    def convert(self, value: str, base_dir: Path) -> str:
        value = super().convert(value, base_dir)
        if value:
            try:
                if self.port_optional:
                    parse_address(value)
                else:
                    parse_host_port(value, allow_port_zero=self.listening)
            except ValueError as e:
                raise Invalid(str(e)) from None
        return value


class FilePath(Text):
    """A path, relative to the config file's directory; with `empty_ok`, "" means the default."""

    def convert(self, value: str, base_dir: Path) -> Path:
        if not super().convert(value, base_dir):
            return Kind.DEFAULT
        if "\0" in value:
            raise Invalid("must not contain NUL")
        return base_dir / value          # an absolute value replaces base_dir

    def render(self, value: Path | str) -> str:
        return toml_string(str(value))


class Integer(Kind):
    expected, types = "an integer", (int,)

    def __init__(self, *, minimum: int) -> None:
        self.minimum = minimum

    def convert(self, value: int, base_dir: Path) -> int:
        if value < self.minimum:
            raise Invalid(f"must be at least {self.minimum}, got {value}")
        return value

    def render(self, value: int) -> str:
        return str(value)


class Percent(Kind):
    expected, types = "a number of percent like 90", (int, float)

    def convert(self, value: float, base_dir: Path) -> float:
        if not (0 < value <= 100):
            raise Invalid(f"must be in (0, 100], got {value!r}")
        return float(value)

    def render(self, value: float) -> str:
        return f"{value:g}"


class Boolean(Kind):
    expected, types = "true or false", (bool,)

    def render(self, value: bool) -> str:
        return "true" if value else "false"


class Duration(Kind):
    """Seconds, written with a unit ("500ms"); `positive`: zero is not allowed."""

    expected, types = "a duration string like '500ms'", (str,)

    def __init__(self, *, positive: bool = True) -> None:
        self.positive = positive

    def convert(self, value: str, base_dir: Path) -> float:
        try:
            seconds = parse_duration(value)
        except ValueError as e:
            raise Invalid(str(e)) from None
        if self.positive and seconds <= 0:
            raise Invalid(f"must be greater than zero, got {value!r}")
        return seconds

    def render(self, value: float) -> str:
        return toml_string(format_duration(value))


class Size(Kind):
    """Bytes, written with a unit ("1MiB", "4G")."""

    expected, types = "a size string like '1MiB'", (str,)

    def convert(self, value: str, base_dir: Path) -> int:
        try:
            return parse_size(value)
        except ValueError as e:
            raise Invalid(str(e)) from None

    def render(self, value: int) -> str:
        return toml_string(format_size_exact(value))


class Strings(Kind):
    """A list of non-empty strings (`item` names one in errors); `each` checks one (ValueError)."""

    types = (list,)

    def __init__(self, item: str, *, each: Callable[[str], Any] | None = None) -> None:
        self.item, self.each = item, each
        self.expected = f"a list of {item}s"

    def convert(self, value: list, base_dir: Path) -> tuple[str, ...]:
        for i, entry in enumerate(value):
            if not isinstance(entry, str) or not entry:
                raise Invalid(f"entry {i}: expected a non-empty {self.item}, got {entry!r}")
        for i, entry in enumerate(value if self.each else ()):
            try:
                self.each(entry)
            except ValueError as e:
                raise Invalid(f"entry {i}: {e}") from None
        return tuple(value)

    def render(self, value: tuple[str, ...]) -> str:
        return "[" + ", ".join(toml_string(v) for v in value) + "]"


class Paths(Strings):
    """A list of paths, each relative to the config file's directory."""

    def __init__(self, item: str = "file path") -> None:
        super().__init__(item)

    def convert(self, value: list, base_dir: Path) -> tuple[Path, ...]:
        entries = super().convert(value, base_dir)
        if any("\0" in entry for entry in entries):
            raise Invalid("a path must not contain NUL")
        return tuple(base_dir / entry for entry in entries)

    def render(self, value: tuple) -> str:
        return "[" + ", ".join(toml_string(str(v)) for v in value) + "]"


class Labels(Kind):
    """A table of short names to short values (integers and booleans become strings)."""

    expected, types = 'a table like { zone = "lab-2" }', (dict,)

    def convert(self, table: dict, base_dir: Path) -> dict[str, str]:
        if len(table) > MAX_LABELS:
            raise Invalid(f"at most {MAX_LABELS} labels, got {len(table)}")
        labels: dict[str, str] = {}
        for k, v in table.items():
            if not _LABEL_RE.fullmatch(k):
                raise Invalid(f"label names use 1 to {MAX_LABEL_LEN} of A-Z a-z 0-9 _ . -", at=f".{k}")
            if isinstance(v, bool):
                v = "true" if v else "false"
            elif isinstance(v, int):
                v = str(v)
            elif not isinstance(v, str):
                raise Invalid(f"expected a string, integer or boolean, got {v!r}", at=f".{k}")
            if not _LABEL_RE.fullmatch(v):
                raise Invalid(f"label values use 1 to {MAX_LABEL_LEN} of A-Z a-z 0-9 _ . -", at=f".{k}")
            labels[k] = v
        return labels

    def render(self, value: dict[str, str]) -> str:
        if not value:
            return "{}"
        return "{ " + ", ".join(f"{k} = {toml_string(v)}" for k, v in value.items()) + " }"
