"""Load and validate a node's TOML configuration.

Why this module exists: every other part of xchanged takes its timings, limits and paths from one
validated, immutable ``Config`` instead of reading TOML or environment variables itself.  That keeps
the protocol core free of I/O and lets tests build configs in memory with ``config_from_dict``.

Rules (the config contract of docs/design section 3):

* Every key has a default, so ``[node] name = "x"`` alone is a complete config.
* Unknown sections and keys, wrong types and bad values are errors.  Loading stops at the first
  one and raises ``ConfigError``, whose one-line message names the file, the dotted key and why.
* Durations and sizes are strings with units ("500ms", "1MiB"); bare numbers are not guessed at.
* Relative paths are relative to the config file's directory, so every ``Path`` in a ``Config``
  is absolute.
* Nothing here keeps global state; defaults that depend on the host (name, CPU count) are read
  when a config is built.
"""

from __future__ import annotations

import dataclasses
import difflib
import ipaddress
import math
import os
import re
import socket
import tomllib
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Any

__all__ = [
    "ConfigError",
    "NodeConfig",
    "NetworkConfig",
    "TrustConfig",
    "GossipConfig",
    "BiddingConfig",
    "ExecutorConfig",
    "AuditConfig",
    "MetricsConfig",
    "Config",
    "parse_duration",
    "parse_size",
    "format_size",
    "parse_host_port",
    "load_config",
    "config_from_dict",
    "default_config_path",
]

#: Where ``default_config_path`` looks when ``$XCHANGED_CONFIG`` is not set.
DEFAULT_CONFIG_DIR = Path("/etc/xchanged")
#: Environment variable naming the config file.
CONFIG_ENV = "XCHANGED_CONFIG"

#: Defaults that other defaults are derived from.
DEFAULT_STATE_DIR = Path("/var/lib/xchanged")
DEFAULT_CONTROL = Path("/run/xchanged/control.sock")
DEFAULT_METRICS_LISTEN = "127.0.0.1:9464"

#: Largest size accepted (what SQLite can store as an integer).
MAX_SIZE = 2**63 - 1
#: Longest node name, label key and label value.
MAX_NAME_LEN = 63
MAX_LABEL_LEN = 63
#: Most labels a node may carry (they travel in every load signal).
MAX_LABELS = 64

_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,%d}" % (MAX_NAME_LEN - 1), re.ASCII)
_LABEL_RE = re.compile(r"[A-Za-z0-9_.-]{1,%d}" % MAX_LABEL_LEN, re.ASCII)
_HOST_LABEL_RE = re.compile(r"[A-Za-z0-9_]([A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?", re.ASCII)


class ConfigError(Exception):
    """A config is unusable: which file, which key (dotted, like ``gossip.interval``) and why."""

    def __init__(self, file: str | None, key: str, reason: str) -> None:
        super().__init__(file, key, reason)
        self.file = file
        self.key = key
        self.reason = reason

    def __str__(self) -> str:
        return f"{self.file if self.file is not None else '<config>'}: {self.key}: {self.reason}"


# ---------------------------------------------------------------------------------------------
# Value parsers (also used by the CLI for --mem, --timeout and the like)

#: Longest duration or size string parsed (keeps int conversion cheap on hostile input).
MAX_VALUE_TEXT = 64
_NUMBER_UNIT_RE = re.compile(r"\s*(-?)([0-9]+(?:\.[0-9]+)?|\.[0-9]+)\s*([A-Za-z]*)\s*", re.ASCII)
_DURATION_UNITS = {
    "us": Fraction(1, 10**6),
    "ms": Fraction(1, 1000),
    "s": Fraction(1),
    "m": Fraction(60),
    "h": Fraction(3600),
}

_SIZE_PREFIXES = "kmgtp"
_SIZE_UNITS: dict[str, int] = {"": 1, "b": 1}
for _i, _p in enumerate(_SIZE_PREFIXES, start=1):
    _SIZE_UNITS[_p] = _SIZE_UNITS[_p + "ib"] = 1024**_i
    _SIZE_UNITS[_p + "b"] = 1000**_i
del _i, _p
_FORMAT_UNITS = "BKMGTP"


def parse_duration(text: str) -> float:
    """Seconds in ``text``: a non-negative number and a unit (us, ms, s, m, h), like "500ms"."""
    if not isinstance(text, str):
        raise TypeError(f"duration must be a string like '500ms', not {type(text).__name__}")
    if len(text) > MAX_VALUE_TEXT:
        raise ValueError(f"invalid duration {text[:20]!r}...: too long")
    m = _NUMBER_UNIT_RE.fullmatch(text.replace("µ", "u"))
    if m is None:
        raise ValueError(
            f"invalid duration {text!r}: expected a number and a unit (us, ms, s, m, h), like '500ms'"
        )
    sign, number, unit = m.groups()
    if sign:
        raise ValueError(f"invalid duration {text!r}: must not be negative")
    if not unit:
        raise ValueError(
            f"invalid duration {text!r}: a unit is required (us, ms, s, m, h), like '{number}s'"
        )
    if unit not in _DURATION_UNITS:
        raise ValueError(f"invalid duration {text!r}: unknown unit {unit!r} (use us, ms, s, m or h)")
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
        if re.fullmatch(r"[0-9.]+", host):
            try:
                ipaddress.IPv4Address(host)
            except ValueError:
                raise ValueError(f"invalid address {text!r}: {host!r} is not an IPv4 address") from None
        elif len(host) > 253 or not all(map(_HOST_LABEL_RE.fullmatch, host.removesuffix(".").split("."))):
            raise ValueError(f"invalid address {text!r}: {host!r} is not a valid host name")
    if not re.fullmatch(r"[0-9]{1,5}", port_text, re.ASCII) or int(port_text) > 65535:
        raise ValueError(f"invalid address {text!r}: port must be a number from 0 to 65535")
    port = int(port_text)
    if port == 0 and not allow_port_zero:
        raise ValueError(f"invalid address {text!r}: port 0 is only allowed for listening sockets")
    return host, port


# ---------------------------------------------------------------------------------------------
# The config, section by section.  Defaults here are what a missing key means.


def _cpu_count() -> int:
    return os.cpu_count() or 1


@dataclass(frozen=True, slots=True)
class NodeConfig:
    """Who this node is and what it offers."""

    name: str = field(default_factory=socket.gethostname)  #: node name shown to peers and in task status
    state_dir: Path = DEFAULT_STATE_DIR  #: SQLite store, audit log and task outputs live here
    key_file: Path = DEFAULT_CONFIG_DIR / "node.key"  #: this node's Ed25519 private key
    slots: int = field(default_factory=_cpu_count)  #: how many tasks may run here at once
    prefetch: int = 1  #: accepted tasks that may wait here for a slot, so a freed slot restarts at once
    labels: dict[str, str] = field(default_factory=dict)  #: capabilities tasks can require (--label K=V)


@dataclass(frozen=True, slots=True)
class NetworkConfig:
    """Where this node listens and how it finds peers."""

    listen: str = "0.0.0.0:7946"  #: host:port of the peer socket (port 0: pick a free one)
    advertise: str = ""  #: host:port peers should dial; "" means discovered
    control: Path = DEFAULT_CONTROL  #: unix socket the local CLI talks to
    mdns: bool = True  #: announce and discover peers on the LAN with mDNS
    seeds: tuple[str, ...] = ()  #: host:port of static peers, for peers mDNS cannot reach


@dataclass(frozen=True, slots=True)
class TrustConfig:
    """Which peers' keys this node believes."""

    #: public keys of trusted nodes, one a line
    authorized_keys: Path = DEFAULT_CONFIG_DIR / "authorized_keys"


@dataclass(frozen=True, slots=True)
class GossipConfig:
    """Timings of membership gossip and failure detection (seconds)."""

    interval: float = 0.5  #: how often this node gossips its load signal
    fanout: int = 3  #: peers each gossip round is sent to
    suspect_after: float = 1.5  #: silence after which a peer is suspected
    dead_after: float = 4.0  #: silence after which a peer is declared dead and its tasks reassigned
    probe_k: int = 3  #: peers asked to probe a suspect indirectly before declaring it dead


@dataclass(frozen=True, slots=True)
class BiddingConfig:
    """How managers announce tasks and contractors answer (seconds, percent)."""

    window: float = 0.05  #: how long a manager collects bids for an announcement
    max_candidates: int = 16  #: peers sampled per announcement (not all peers)
    overload_cpu_percent: float = 90.0  #: contractors refuse new work above this CPU use
    award_timeout: float = 2.0  #: how long a winner's accept/reject may take before re-announcing


@dataclass(frozen=True, slots=True)
class ExecutorConfig:
    """What this node will run and how it runs it."""

    allow: tuple[str, ...] = ("*",)  #: glob patterns a command's argv[0] must match to run here
    max_output: int = 1024 * 1024  #: bytes of stdout and of stderr kept per attempt
    heartbeat: float = 1.0  #: seconds between progress heartbeats of a running attempt
    kill_grace: float = 2.0  #: seconds from SIGTERM to SIGKILL when stopping an attempt


@dataclass(frozen=True, slots=True)
class AuditConfig:
    """The append-only award log."""

    path: Path = DEFAULT_STATE_DIR / "audit.log"  #: log file; default state_dir/audit.log


@dataclass(frozen=True, slots=True)
class MetricsConfig:
    """The Prometheus endpoint."""

    listen: str = DEFAULT_METRICS_LISTEN  #: host:port serving /metrics; "" disables it


@dataclass(frozen=True, slots=True)
class Config:
    """A node's whole, validated configuration."""

    node: NodeConfig = field(default_factory=NodeConfig)  #: identity, state and capacity
    network: NetworkConfig = field(default_factory=NetworkConfig)  #: sockets and discovery
    trust: TrustConfig = field(default_factory=TrustConfig)  #: trusted peer keys
    gossip: GossipConfig = field(default_factory=GossipConfig)  #: membership timings
    bidding: BiddingConfig = field(default_factory=BiddingConfig)  #: contract-net timings and limits
    executor: ExecutorConfig = field(default_factory=ExecutorConfig)  #: command policy and limits
    audit: AuditConfig = field(default_factory=AuditConfig)  #: award log location
    metrics: MetricsConfig = field(default_factory=MetricsConfig)  #: metrics endpoint
    source: Path | None = None  #: the file this was loaded from, if any


# ---------------------------------------------------------------------------------------------
# Validation.  _KEYS is the schema: sections and their keys, in the order they are checked.

_KEYS: dict[str, tuple[str, ...]] = {
    "node": ("name", "state_dir", "key_file", "slots", "prefetch", "labels"),
    "network": ("listen", "advertise", "control", "mdns", "seeds"),
    "trust": ("authorized_keys",),
    "gossip": ("interval", "fanout", "suspect_after", "dead_after", "probe_k"),
    "bidding": ("window", "max_candidates", "overload_cpu_percent", "award_timeout"),
    "executor": ("allow", "max_output", "heartbeat", "kill_grace"),
    "audit": ("path",),
    "metrics": ("listen",),
}

_MISSING: Any = object()


def _unknown(name: str, known: Any, what: str) -> str:
    close = difflib.get_close_matches(name, list(known), n=1)
    return f"unknown {what} (did you mean {close[0]!r}?)" if close else f"unknown {what}"


class _Section:
    """Typed reads of one TOML table; every error names ``section.key``."""

    def __init__(self, file: str | None, name: str, table: dict[str, Any], base_dir: Path) -> None:
        self.file, self.name, self.table, self.base_dir = file, name, table, base_dir
        for key in table:
            if key not in _KEYS[name]:
                raise self.error(key, _unknown(key, _KEYS[name], "key"))

    def error(self, key: str, reason: str) -> ConfigError:
        return ConfigError(self.file, f"{self.name}.{key}", reason)

    def raw(self, key: str, expected: str, types: tuple[type, ...]) -> Any:
        value = self.table.get(key, _MISSING)
        if value is _MISSING:
            return value
        if not isinstance(value, types) or (isinstance(value, bool) and bool not in types):
            raise self.error(key, f"expected {expected}, got {value!r}")
        return value

    def string(self, key: str, default: str, *, empty_ok: bool = False) -> str:
        value = self.raw(key, "a string", (str,))
        if value is _MISSING:
            return default
        if not value and not empty_ok:
            raise self.error(key, "must not be empty")
        return value

    def integer(self, key: str, default: int, *, minimum: int) -> int:
        value = self.raw(key, "an integer", (int,))
        if value is _MISSING:
            return default
        if value < minimum:
            raise self.error(key, f"must be at least {minimum}, got {value}")
        return value

    def boolean(self, key: str, default: bool) -> bool:
        value = self.raw(key, "true or false", (bool,))
        return default if value is _MISSING else value

    def duration(self, key: str, default: float, *, positive: bool = True) -> float:
        value = self.raw(key, "a duration string like '500ms'", (str,))
        if value is _MISSING:
            return default
        try:
            seconds = parse_duration(value)
        except ValueError as e:
            raise self.error(key, str(e)) from None
        if positive and seconds <= 0:
            raise self.error(key, f"must be greater than zero, got {value!r}")
        return seconds

    def size(self, key: str, default: int) -> int:
        value = self.raw(key, "a size string like '1MiB'", (str,))
        if value is _MISSING:
            return default
        try:
            return parse_size(value)
        except ValueError as e:
            raise self.error(key, str(e)) from None

    def path(self, key: str, default: Path, *, empty_ok: bool = False) -> Path:
        value = self.string(key, "", empty_ok=empty_ok)
        if not value:
            return default
        if "\0" in value:
            raise self.error(key, "must not contain NUL")
        return self.base_dir / value  # an absolute value replaces base_dir

    def address(self, key: str, default: str, *, empty_ok: bool, listening: bool) -> str:
        value = self.string(key, default, empty_ok=empty_ok)
        if value:
            try:
                parse_host_port(value, allow_port_zero=listening)
            except ValueError as e:
                raise self.error(key, str(e)) from None
        return value

    def strings(self, key: str, default: tuple[str, ...], expected: str) -> tuple[str, ...]:
        value = self.raw(key, f"a list of {expected}s", (list,))
        if value is _MISSING:
            return default
        for i, item in enumerate(value):
            if not isinstance(item, str) or not item:
                raise self.error(key, f"entry {i}: expected a non-empty {expected}, got {item!r}")
        return tuple(value)


def _check_name(name: str) -> str | None:
    """Why ``name`` is not a valid node name, or None."""
    if not _NAME_RE.fullmatch(name):
        return (
            f"invalid node name {name!r}: use 1 to {MAX_NAME_LEN} characters from "
            "A-Z a-z 0-9 _ . -, starting with a letter or digit"
        )
    return None


def _node(s: _Section, default_key_file: Path) -> NodeConfig:
    name = s.string("name", "")
    if not name:
        name = socket.gethostname()
        if _check_name(name):
            raise s.error("name", f"host name {name!r} is not a valid node name; set node.name")
    elif reason := _check_name(name):
        raise s.error("name", reason)
    state_dir = s.path("state_dir", DEFAULT_STATE_DIR)
    key_file = s.path("key_file", default_key_file)
    slots = s.integer("slots", _cpu_count(), minimum=1)
    prefetch = s.integer("prefetch", 1, minimum=0)
    table = s.raw("labels", "a table like { zone = \"lab-2\" }", (dict,))
    labels: dict[str, str] = {}
    if table is not _MISSING:
        if len(table) > MAX_LABELS:
            raise s.error("labels", f"at most {MAX_LABELS} labels, got {len(table)}")
        for k, v in table.items():
            where = f"labels.{k}"
            if not _LABEL_RE.fullmatch(k):
                raise s.error(where, f"label names use 1 to {MAX_LABEL_LEN} of A-Z a-z 0-9 _ . -")
            if isinstance(v, bool):
                v = "true" if v else "false"
            elif isinstance(v, int):
                v = str(v)
            elif not isinstance(v, str):
                raise s.error(where, f"expected a string, integer or boolean, got {v!r}")
            if not _LABEL_RE.fullmatch(v):
                raise s.error(where, f"label values use 1 to {MAX_LABEL_LEN} of A-Z a-z 0-9 _ . -")
            labels[k] = v
    return NodeConfig(name=name, state_dir=state_dir, key_file=key_file, slots=slots, prefetch=prefetch,
                      labels=labels)


def _network(s: _Section) -> NetworkConfig:
    d = NetworkConfig()
    listen = s.address("listen", d.listen, empty_ok=False, listening=True)
    advertise = s.address("advertise", d.advertise, empty_ok=True, listening=False)
    control = s.path("control", d.control)
    mdns = s.boolean("mdns", d.mdns)
    seeds = s.strings("seeds", d.seeds, "host:port string")
    for i, seed in enumerate(seeds):
        try:
            parse_host_port(seed, allow_port_zero=False)
        except ValueError as e:
            raise s.error("seeds", f"entry {i}: {e}") from None
    return NetworkConfig(listen=listen, advertise=advertise, control=control, mdns=mdns, seeds=seeds)


def _gossip(s: _Section) -> GossipConfig:
    d = GossipConfig()
    interval = s.duration("interval", d.interval)
    fanout = s.integer("fanout", d.fanout, minimum=1)
    suspect_after = s.duration("suspect_after", d.suspect_after)
    dead_after = s.duration("dead_after", d.dead_after)
    probe_k = s.integer("probe_k", d.probe_k, minimum=0)
    if suspect_after <= interval:
        raise s.error(
            "suspect_after", f"must be longer than gossip.interval ({suspect_after:g}s <= {interval:g}s)"
        )
    if dead_after <= suspect_after:
        raise s.error(
            "dead_after", f"must be longer than gossip.suspect_after ({dead_after:g}s <= {suspect_after:g}s)"
        )
    return GossipConfig(
        interval=interval, fanout=fanout, suspect_after=suspect_after, dead_after=dead_after, probe_k=probe_k
    )


def _bidding(s: _Section) -> BiddingConfig:
    d = BiddingConfig()
    window = s.duration("window", d.window)
    max_candidates = s.integer("max_candidates", d.max_candidates, minimum=1)
    cpu = s.raw("overload_cpu_percent", "a number of percent like 90", (int, float))
    if cpu is _MISSING:
        cpu = d.overload_cpu_percent
    elif not (0 < cpu <= 100):
        raise s.error("overload_cpu_percent", f"must be in (0, 100], got {cpu!r}")
    award_timeout = s.duration("award_timeout", d.award_timeout)
    if award_timeout <= window:
        raise s.error(
            "award_timeout", f"must be longer than bidding.window ({award_timeout:g}s <= {window:g}s)"
        )
    return BiddingConfig(
        window=window,
        max_candidates=max_candidates,
        overload_cpu_percent=float(cpu),
        award_timeout=award_timeout,
    )


def _executor(s: _Section) -> ExecutorConfig:
    d = ExecutorConfig()
    allow = s.strings("allow", d.allow, "glob pattern")
    max_output = s.size("max_output", d.max_output)
    heartbeat = s.duration("heartbeat", d.heartbeat)
    kill_grace = s.duration("kill_grace", d.kill_grace, positive=False)
    return ExecutorConfig(allow=allow, max_output=max_output, heartbeat=heartbeat, kill_grace=kill_grace)


def _check_file(file: str | None, key: str, path: Path) -> None:
    if not path.exists():
        raise ConfigError(file, key, f"file not found: {path}")
    if not path.is_file():
        raise ConfigError(file, key, f"not a regular file: {path}")


def config_from_dict(
    data: dict[str, Any],
    *,
    source: str | None = None,
    base_dir: Path | None = None,
    check_files: bool = True,
) -> Config:
    """Validate ``data`` (parsed TOML) into a Config.

    ``source`` names the config in errors; relative paths resolve against ``base_dir`` (default:
    the current directory), and ``node.key_file``/``trust.authorized_keys`` default to files in
    ``base_dir`` when it is given, else in /etc/xchanged.  ``check_files`` requires those two
    files to exist.
    """
    if not isinstance(data, dict):
        raise ConfigError(source, "<config>", f"expected a table, got {type(data).__name__}")
    base = Path(base_dir).absolute() if base_dir is not None else Path.cwd()
    key_dir = base if base_dir is not None else DEFAULT_CONFIG_DIR
    for name, table in data.items():
        if name not in _KEYS:
            if not isinstance(table, dict):
                owners = [f"[{sec}]" for sec, keys in _KEYS.items() if name in keys]
                hint = f"it belongs in {' or '.join(owners)}" if owners else "settings belong in a [section]"
                raise ConfigError(source, name, f"unknown top-level key ({hint})")
            raise ConfigError(source, name, _unknown(name, _KEYS, "section"))
        if not isinstance(table, dict):
            raise ConfigError(source, name, f"expected a [{name}] table, got {table!r}")

    def section(name: str) -> _Section:
        return _Section(source, name, data.get(name, {}), base)

    node = _node(section("node"), key_dir / "node.key")
    network = _network(section("network"))
    trust_s = section("trust")
    trust = TrustConfig(authorized_keys=trust_s.path("authorized_keys", key_dir / "authorized_keys"))
    gossip = _gossip(section("gossip"))
    bidding = _bidding(section("bidding"))
    executor = _executor(section("executor"))
    audit_s = section("audit")
    audit = AuditConfig(path=audit_s.path("path", node.state_dir / "audit.log", empty_ok=True))
    metrics_s = section("metrics")
    metrics = MetricsConfig(
        listen=metrics_s.address("listen", DEFAULT_METRICS_LISTEN, empty_ok=True, listening=True)
    )
    if check_files:
        _check_file(source, "node.key_file", node.key_file)
        _check_file(source, "trust.authorized_keys", trust.authorized_keys)
    return Config(
        node=node,
        network=network,
        trust=trust,
        gossip=gossip,
        bidding=bidding,
        executor=executor,
        audit=audit,
        metrics=metrics,
        source=Path(source) if source is not None else None,
    )


def load_config(path: str | os.PathLike[str], *, check_files: bool = True) -> Config:
    """Read, parse and validate the TOML config at ``path``; raise ConfigError on any problem."""
    file = os.fspath(path)
    try:
        with open(file, "rb") as f:
            data = tomllib.load(f)
    except FileNotFoundError:
        raise ConfigError(file, "<file>", "not found") from None
    except IsADirectoryError:
        raise ConfigError(file, "<file>", "is a directory, not a config file") from None
    except PermissionError:
        raise ConfigError(file, "<file>", "permission denied") from None
    except OSError as e:
        raise ConfigError(file, "<file>", f"cannot read: {e.strerror or e}") from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(file, "<syntax>", str(e)) from None
    except UnicodeDecodeError as e:
        raise ConfigError(file, "<syntax>", f"not valid UTF-8 ({e.reason} at byte {e.start})") from None
    base_dir = Path(file).absolute().parent
    config = config_from_dict(data, source=file, base_dir=base_dir, check_files=check_files)
    return dataclasses.replace(config, source=Path(file).absolute())


def default_config_path() -> Path:
    """The config file to use when none is named: $XCHANGED_CONFIG, else /etc/xchanged/xchanged.toml."""
    env = os.environ.get(CONFIG_ENV)
    return Path(env) if env else DEFAULT_CONFIG_DIR / "xchanged.toml"
