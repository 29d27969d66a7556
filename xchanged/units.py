"""Values with units, as configs and the CLI write them: durations ("500ms"), sizes ("4G", "1MiB") and
host:port addresses (and a seed's KEY@host:port); parsed strictly (bare numbers are not guessed at,
hostile input is bounded) and formatted back, so a rendered default reads back to exactly the same
value.
"""

from __future__ import annotations

import ipaddress
import math
import re
from fractions import Fraction

#: Largest size accepted (what SQLite can store as an integer).
MAX_SIZE = 2**63 - 1
_HOST_LABEL_RE = re.compile(r"[A-Za-z0-9_]([A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?", re.ASCII)

#: Longest duration or size string parsed (keeps int conversion cheap on hostile input).
MAX_VALUE_TEXT = 64
_NUMBER_UNIT_RE = re.compile(r"\s*(-?)([0-9]+(?:\.[0-9]+)?|\.[0-9]+)\s*([A-Za-z]*)\s*", re.ASCII)
_DURATION_UNITS = {
    "us": Fraction(1, 10**6),
    "ms": Fraction(1, 1000),
    "s": Fraction(1),
    "m": Fraction(60),
    "h": Fraction(3600),
    "d": Fraction(86400),
}

_SIZE_PREFIXES = "kmgtp"
_SIZE_UNITS: dict[str, int] = {"": 1, "b": 1}
for _i, _p in enumerate(_SIZE_PREFIXES, start=1):
    _SIZE_UNITS[_p] = _SIZE_UNITS[_p + "ib"] = 1024**_i
    _SIZE_UNITS[_p + "b"] = 1000**_i
del _i, _p
_FORMAT_UNITS = "BKMGTP"


def parse_duration(text: str) -> float:
    """Seconds in ``text``: a non-negative number and a unit (us, ms, s, m, h, d), like "500ms"."""
    if not isinstance(text, str):
        raise TypeError(f"duration must be a string like '500ms', not {type(text).__name__}")
    if len(text) > MAX_VALUE_TEXT:
        raise ValueError(f"invalid duration {text[:20]!r}...: too long")
    m = _NUMBER_UNIT_RE.fullmatch(text.replace("µ", "u"))
    if m is None:
        raise ValueError(
            f"invalid duration {text!r}: expected a number and a unit (us, ms, s, m, h, d), like '500ms'"
        )
    sign, number, unit = m.groups()
    if sign:
        raise ValueError(f"invalid duration {text!r}: must not be negative")
    if not unit:
        raise ValueError(
            f"invalid duration {text!r}: a unit is required (us, ms, s, m, h, d), like '{number}s'"
        )
    if unit not in _DURATION_UNITS:
        raise ValueError(f"invalid duration {text!r}: unknown unit {unit!r} (use us, ms, s, m, h or d)")
    return float(Fraction(number) * _DURATION_UNITS[unit])


def parse_size(text: str) -> int:
    """Bytes in ``text``: "512", "512B", "4G"/"4GiB" (1024-based), "10KB" (1000-based), "1.5G"."""
    if not isinstance(text, str):
        raise TypeError(f"size must be a string like '512M', not {type(text).__name__}")
    if len(text) > MAX_VALUE_TEXT:
        raise ValueError(f"invalid size {text[:20]!r}...: too long")
    m = _NUMBER_UNIT_RE.fullmatch(text)
    if m is None:
        raise ValueError(f"invalid size {text!r}: expected a number and a unit, like '512M' or '4GiB'")
    sign, number, unit = m.groups()
    if sign:
        raise ValueError(f"invalid size {text!r}: must not be negative")
    multiplier = _SIZE_UNITS.get(unit.lower())
    if multiplier is None:
        raise ValueError(
            f"invalid size {text!r}: unknown unit {unit!r} "
            "(use B, K, M, G, T, P; KiB, MiB, ... are the same; KB, MB, ... are 1000-based)"
        )
    exact = Fraction(number) * multiplier
    if multiplier == 1 and exact.denominator != 1:
        raise ValueError(f"invalid size {text!r}: a byte count must be a whole number")
    size = math.floor(exact + Fraction(1, 2))
    if size > MAX_SIZE:
        raise ValueError(f"invalid size {text!r}: too large (at most {MAX_SIZE} bytes)")
    return size


def format_size(n: int) -> str:
    """Human form of ``n`` bytes, 1024-based with one decimal ("512B", "1.5K", "4.0G")."""
    if isinstance(n, bool) or not isinstance(n, int):
        raise TypeError(f"size must be an int, not {type(n).__name__}")
    if n < 0:
        raise ValueError(f"size must not be negative, got {n}")
    if n < 1024:
        return f"{n}B"
    exp = min(len(_FORMAT_UNITS) - 1, (n.bit_length() - 1) // 10)
    text = f"{n / 1024**exp:.1f}"
    if float(text) >= 1024 and exp < len(_FORMAT_UNITS) - 1:
        exp += 1
        text = f"{n / 1024**exp:.1f}"
    return text + _FORMAT_UNITS[exp]


def parse_host_port(text: str, *, allow_port_zero: bool = True) -> tuple[str, int]:
    """Split "host:port" (IPv6 in brackets, "[::1]:7946") into a checked host and port."""
    example = "like '0.0.0.0:7946' or '[::1]:7946'"
    if not isinstance(text, str):
        raise TypeError(f"address must be a string {example}, not {type(text).__name__}")
    if text.startswith("["):
        close = text.find("]")
        if close < 0 or text[close + 1 : close + 2] != ":":
            raise ValueError(f"invalid address {text!r}: expected host:port {example}")
        host, port_text = text[1:close], text[close + 2 :]
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise ValueError(f"invalid address {text!r}: {host!r} is not an IPv6 address") from None
    else:
        host, sep, port_text = text.rpartition(":")
        if not sep or not host:
            raise ValueError(f"invalid address {text!r}: expected host:port {example}")
        if ":" in host:
            raise ValueError(f"invalid address {text!r}: put an IPv6 address in brackets, like '[::1]:7946'")
        if problem := _host_problem(host):
            raise ValueError(f"invalid address {text!r}: {problem}")
    if not re.fullmatch(r"[0-9]{1,5}", port_text, re.ASCII) or int(port_text) > 65535:
        raise ValueError(f"invalid address {text!r}: port must be a number from 0 to 65535")
    port = int(port_text)
    if port == 0 and not allow_port_zero:
        raise ValueError(f"invalid address {text!r}: port 0 is only allowed for listening sockets")
    return host, port


def parse_address(text: str, default_port: int | None = None) -> tuple[str, int | None]:
    """An address to dial as users write it: "host:port", "[v6]:port", or a bare host (an IPv4
    address, a host name, or an IPv6 address with or without brackets: "::1", "[::1]"), whose port
    is then `default_port`. Returns (host without brackets, port)."""
    if not isinstance(text, str):
        raise TypeError(f"address must be a string, not {type(text).__name__}")
    if text.startswith("[") and not text.endswith("]"):
        return parse_host_port(text, allow_port_zero=False)        # [v6]:port
    bare = text[1:-1] if text.startswith("[") else text
    if bare.count(":") >= 2 or text.startswith("["):              # an IPv6 address without a port
        try:
            return str(ipaddress.IPv6Address(bare)), default_port
        except ValueError:
            raise ValueError(f"invalid address {text!r}: {bare!r} is not an IPv6 address") from None
    if ":" in text:
        return parse_host_port(text, allow_port_zero=False)
    problem = _host_problem(text) if text else "empty"
    if problem:
        raise ValueError(f"invalid address {text!r}: {problem}")
    return text, default_port


def _dialable(address: str) -> None:
    parse_host_port(address, allow_port_zero=False)


def parse_seed(seed: str) -> tuple[str, str]:
    """(key, address) of a seed written `host:port` or `KEY@host:port`, where KEY names the seed's node
    key (base64, as in its node.pub, or its name in authorized_keys): with CurveZMQ a node must know a
    peer's key before it can connect to it. ValueError if malformed."""
    key, at, address = seed.rpartition("@")
    if at and not key:
        raise ValueError(f"expected KEY@host:port, got {seed!r}")
    _dialable(address)
    return key, address


def is_loopback(host: str) -> bool:
    """True for a host only this machine can reach: "localhost", 127.0.0.0/8 or ::1 (not the wildcard)."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def _host_problem(host: str) -> str | None:
    """Why `host` is neither an IPv4 address nor a host name, or None."""
    if re.fullmatch(r"[0-9.]+", host):
        try:
            ipaddress.IPv4Address(host)
        except ValueError:
            return f"{host!r} is not an IPv4 address"
    elif len(host) > 253 or not all(map(_HOST_LABEL_RE.fullmatch, host.removesuffix(".").split("."))):
        return f"{host!r} is not a valid host name"
    return None


def format_address(host: str, port: int) -> str:
    """host:port, an IPv6 host in brackets ("[fd00::5]:7946")."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def format_size_exact(n: int) -> str:
    """``n`` bytes in the largest binary unit that divides it ("1MiB", "1536B"): parse_size reads it
    back exactly (for rendering defaults)."""
    for exp in range(len(_SIZE_PREFIXES), 0, -1):
        if n and n % 1024**exp == 0:
            return f"{n // 1024**exp}{_SIZE_PREFIXES[exp - 1].upper()}iB"
    return f"{n}B"


def format_duration(seconds: float) -> str:
    """``seconds`` as a duration string parse_duration reads back exactly ("2s", "1500ms", "7d")."""
    if seconds >= 1 and seconds == int(seconds):
        for unit, size in (("d", 86400), ("h", 3600)):
            if seconds % size == 0:
                return f"{int(seconds) // size}{unit}"
        return f"{int(seconds)}s"
    return f"{round(seconds * 1000, 6):g}ms"
