"""Load and validate a node's TOML configuration.

Why this module exists: every other part of xchanged takes its timings, limits and paths from one
validated, immutable ``Config`` instead of reading TOML or environment variables itself.  That keeps
the protocol core free of I/O and lets tests build configs in memory with ``config_from_dict``.

One schema, here: each section is a frozen dataclass whose fields are declared with ``setting(kind,
doc, default)`` (config_keys.py); the kind (``Duration()``, ``Integer(minimum=1)``, ``FilePath()``,
...; config_kinds.py) says how a TOML value is checked, converted and written back.  Loading
(config_keys.py), the error messages, the defaults and the commented config that ``xchanged init``
writes (config_template.py) all follow from those declarations; checks that involve several keys
are a section's ``cross_check``.  Adding a key is one ``setting(...)`` line; adding a section is one
dataclass and one field of ``Config``.  Defaults the protocol core also has (``NodeSettings``,
``GossipSettings``) are taken from the core.

Rules (the config contract of docs/design section 3; config_keys.py states those of loading:
unknown keys and bad values are errors naming the file and the dotted key, relative paths are
relative to the config file):

* Every key has a default, so ``[node] name = "x"`` alone is a complete config.
* Durations and sizes are strings with units ("500ms", "1MiB"); bare numbers are not guessed at.
* Nothing here keeps global state; defaults that depend on the host (name, CPU count) are read
  when a config is built.
"""

from __future__ import annotations

import dataclasses
import os
import re
import socket
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .config_keys import (
    DEFAULT_CONFIG_DIR,
    ConfigError,
    Loading,
    Shown,
    field_default,
    load_sections,
    longer_than,
    read_toml,
    setting,
    settings_of,
)
from .config_kinds import (
    MAX_LABEL_LEN,
    MAX_LABELS,
    MAX_NAME_LEN,
    Address,
    Boolean,
    Choice,
    Command,
    Duration,
    FilePath,
    Integer,
    Invalid,
    Labels,
    NodeName,
    Paths,
    Percent,
    Size,
    Strings,
    check_name,
)
from .protocol.membership import GossipSettings
from .protocol.node import NodeSettings
from .units import (
    MAX_SIZE,
    format_address,
    format_size,
    is_loopback,
    parse_address,
    parse_duration,
    parse_host_port,
    parse_seed,
    parse_size,
)

__all__ = [
    "ConfigError",
    "NodeConfig",
    "NetworkConfig",
    "TrustConfig",
    "GossipConfig",
    "BiddingConfig",
    "ExecutorConfig",
    "ControlConfig",
    "AuditConfig",
    "MetricsConfig",
    "HttpConfig",
    "AutoscaleConfig",
    "Config",
    "SECTIONS",
    "setting",
    "settings_of",
    "field_default",
    "parse_duration",
    "parse_size",
    "format_size",
    "parse_host_port",
    "parse_address",
    "format_address",
    "parse_seed",
    "is_loopback",
    "load_config",
    "config_from_dict",
    "default_config_path",
    "MAX_SIZE",
    "MAX_NAME_LEN",
    "MAX_LABEL_LEN",
    "MAX_LABELS",
]

#: Environment variable naming the config file.
CONFIG_ENV = "XCHANGED_CONFIG"

#: Defaults that other defaults are derived from.
DEFAULT_STATE_DIR = Path("/var/lib/xchanged")
DEFAULT_CONTROL = Path("/run/xchanged/control.sock")
DEFAULT_METRICS_LISTEN = "127.0.0.1:9464"


# ---------------------------------------------------------------------------------------------
# Host defaults and checks of values some keys need


def _host_name(ctx: Loading) -> str:
    name = socket.gethostname()
    if check_name(name):
        raise Invalid(f"host name {name!r} is not a valid node name; set node.name")
    return name


def _cpu_count() -> int:
    return os.cpu_count() or 1


def _user_name(name: str) -> None:
    if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_.-]{0,31}\$?", name):
        raise ValueError(f"{name!r} is not a user name")


# ---------------------------------------------------------------------------------------------
# The config, section by section.  A section's docstring heads it in the generated config.


@dataclass(frozen=True, slots=True)
class NodeConfig:
    """Who this node is and what it offers."""

    name: str = setting(NodeName(), "node name shown to peers and in task status (default: the host name)",
                        factory=socket.gethostname, derive=_host_name)
    state_dir: Path = setting(FilePath(), "SQLite store, audit log and task outputs live here", DEFAULT_STATE_DIR)
    key_file: Path = setting(FilePath(), "this node's Ed25519 private key (mode 0600)", DEFAULT_CONFIG_DIR / "node.key",
                             derive=lambda ctx: ctx.key_dir / "node.key", must_exist=True)
    slots: int = setting(Integer(minimum=1), "how many tasks may run here at once (default: the host's CPU count)",
                         factory=_cpu_count, derive=lambda ctx: _cpu_count(), shown=Shown(4, commented=True))
    prefetch: int = setting(Integer(minimum=0), "accepted tasks that may wait here for a slot, so a freed slot "
                            "restarts at once (only for a deep backlog of short tasks; 0: never)",
                            field_default(NodeSettings, "prefetch"))
    labels: dict[str, str] = setting(Labels(), 'capabilities tasks can require (--label K=V), like '
                                     '{ zone = "lab-2", cuda = "12" }', factory=dict)
    coordinations: int = setting(Integer(minimum=0), "composite tasks this node coordinates at once (a "
                                 "coordination holds no slot; 0: never coordinate)",
                                 field_default(NodeSettings, "max_coordinations"))
    log_level: str = setting(Choice("debug", "info", "warning", "error"), "daemon log level (`xchanged run -v`: "
                             "debug)", "info")
    stop_grace: float = setting(Duration(positive=False), "on SIGTERM (systemctl stop) the node drains: running "
                                "attempts get this long to finish, then they are killed and handed back to their "
                                "managers for re-award (keep systemd's TimeoutStopSec longer)", 10.0)
    history: float = setting(Duration(positive=False), "finished tasks, with their attempts and outputs, are pruned "
                             'from the store this long after they finished; "0s" keeps them for good', 7 * 86400.0)
    history_tasks: int = setting(Integer(minimum=0), "at most this many finished tasks are kept in the store (the "
                                 "oldest pruned first); 0: no limit but `history`", 0)


@dataclass(frozen=True, slots=True)
class NetworkConfig:
    """Where this node listens and how it finds peers."""

    listen: str = setting(Address(listening=True), "host:port of the peer socket (TCP; port 0: pick a free one)",
                          "0.0.0.0:7946")
    advertise: str = setting(Address(listening=False, empty_ok=True, port_optional=True),
                             "address peers should dial: host:port, or a bare IP or host name (the port is "
                             'then the listen port), IPv6 in brackets like "[fd00::5]:7946"; "" means discovered '
                             "(the first non-loopback IPv4 address)", "")
    control: Path = setting(FilePath(), "unix socket the local CLI talks to", DEFAULT_CONTROL)
    mdns: bool = setting(Boolean(), "announce and discover peers on the LAN with mDNS", True)
    seeds: tuple[str, ...] = setting(Strings("host:port string", each=parse_seed),
                                     'static peers, for peers mDNS cannot reach: "KEY@host:port", KEY being the '
                                     "peer's key (base64, from its node.pub) or its name in authorized_keys, like "
                                     '["gpu-01@10.1.0.5:7946"]; a bare "host:port" works only with insecure = true '
                                     "or once the peer's key is learnt from others", ())
    insecure: bool = setting(Boolean(), "plaintext peer traffic: no CurveZMQ encryption or ZAP check of who "
                             "connects (frames stay signed). Only for a closed test network; every node of a "
                             "cluster must agree", False)
    peer_rate: int = setting(Integer(minimum=1), "frames per second one peer may send us (a token bucket); the "
                             "excess is dropped and counted (rate_limited)", 5000)
    peer_burst: int = setting(Integer(minimum=1), "frames one peer may send at once above peer_rate", 10000)
    peer_queue: int = setting(Integer(minimum=1), "frames of one peer waiting for the daemon; beyond it they are "
                              "dropped and counted (peer_queue_full), so one peer cannot crowd out the others", 1000)
    stranger_rate: int = setting(Integer(minimum=1), "frames per second all unknown clients together may send (with "
                                 "a trusted CA they may connect, to present a certificate)", 20)
    query_timeout: float = setting(Duration(), "how long a question to another node (status, logs, tasks "
                                   "--cluster of its tasks) waits for its answer before calling it unreachable",
                                   field_default(NodeSettings, "query_timeout"))


@dataclass(frozen=True, slots=True)
class TrustConfig:
    """Which peers' keys this node believes."""

    authorized_keys: Path = setting(FilePath(), "public keys of trusted nodes, one a line",
                                    DEFAULT_CONFIG_DIR / "authorized_keys",
                                    derive=lambda ctx: ctx.key_dir / "authorized_keys", must_exist=True)
    ca: tuple[Path, ...] = setting(Paths(), "files of cluster CA public keys (the ca.pub of `xchanged ca init`): "
                                   "peers presenting a valid certificate from one of them are trusted too",
                                   (), must_exist=True)
    certificate: Path | None = setting(FilePath(empty_ok=True), "this node's certificate from a cluster CA (`xchanged "
                                       'ca sign`), presented to peers; "" for none', None, shown=Shown(""),
                                       must_exist=True)
    revoked: Path | None = setting(FilePath(empty_ok=True), "revocation list: 'serial N' and 'ed25519 <key>' lines, "
                                   're-read when it changes (and on SIGHUP); "" for none', None, shown=Shown(""),
                                   must_exist=True)


@dataclass(frozen=True, slots=True)
class GossipConfig:
    """Membership: probing, failure detection and gossip (docs/membership.md)."""

    interval: float = setting(Duration(), "one protocol period: a peer of the view is probed and a gossip round sent",
                              field_default(GossipSettings, "interval"))
    fanout: int = setting(Integer(minimum=1), "peers each gossip batch (and each of our loads) is sent to",
                          field_default(GossipSettings, "fanout"))
    suspect_after: float = setting(Duration(), "a peer that stops answering is declared dead this long after the "
                                   "probe that found it silent, when other nodes confirm the suspicion "
                                   "(longer than interval)", field_default(GossipSettings, "suspect_after"))
    dead_after: float = setting(Duration(), "... or this long when no other node confirms it; its tasks are then "
                                "reassigned (longer than suspect_after)", field_default(GossipSettings, "dead_after"))
    probe_k: int = setting(Integer(minimum=0), "peers asked to probe a silent peer for us before we suspect it",
                           field_default(GossipSettings, "probe_k"))
    view_size: int = setting(Integer(minimum=1), "peers probed and gossiped with (all of them in a smaller cluster)",
                             field_default(GossipSettings, "view_size"))
    sample_size: int = setting(Integer(minimum=1), "peers with the freshest loads, offered work (all of them in a "
                               "smaller cluster)", field_default(GossipSettings, "sample_size"))

    @staticmethod
    def cross_check(values: dict[str, Any]) -> None:
        longer_than(values, "suspect_after", "interval", "gossip.interval")
        longer_than(values, "dead_after", "suspect_after", "gossip.suspect_after")


@dataclass(frozen=True, slots=True)
class BiddingConfig:
    """How managers announce tasks and contractors answer."""

    window: float = setting(Duration(), "how long a manager collects bids for an announcement",
                            field_default(NodeSettings, "bid_window"))
    max_candidates: int = setting(Integer(minimum=1), "peers sampled per announcement (not all peers)",
                                  field_default(NodeSettings, "max_candidates"))
    overload_cpu_percent: float = setting(Percent(), "contractors refuse new work above this CPU use",
                                          field_default(NodeSettings, "overload_cpu_percent"))
    award_timeout: float = setting(Duration(), "how long a winner's accept/reject may take before the task is "
                                   "announced again (longer than window)", field_default(NodeSettings, "award_timeout"))

    @staticmethod
    def cross_check(values: dict[str, Any]) -> None:
        longer_than(values, "award_timeout", "window", "bidding.window")


@dataclass(frozen=True, slots=True)
class ExecutorConfig:
    """What this node will run and how it runs it."""

    allow: tuple[str, ...] = setting(Strings("glob pattern"), "glob patterns a command's argv[0] must match to run "
                                     "here", ("*",))
    max_output: int = setting(Size(), "bytes of stdout and of stderr kept per attempt (the end of the output)",
                              1024 * 1024)
    heartbeat: float = setting(Duration(), "time between progress heartbeats of a running attempt",
                               field_default(NodeSettings, "heartbeat"))
    kill_grace: float = setting(Duration(positive=False), "time from SIGTERM to SIGKILL when stopping an attempt", 2.0)
    stream_interval: float = setting(Duration(positive=False), "how often a running attempt's new output is sent "
                                     "to its manager, for `logs -f` (0: only with the result)", 0.25)
    run_as: str = setting(Choice("daemon", "submitter", other=_user_name), 'whose account tasks run under: "daemon" '
                          '(the daemon\'s own), "submitter" (the account of the submitting user\'s name, which must '
                          "exist here; others are refused with code policy) or a user name", "daemon")
    run_as_allow: tuple[str, ...] = setting(Strings("user name pattern"), 'with run_as = "submitter": user names '
                                            "(globs) tasks may run as; root never", ("*",))
    env_allow: tuple[str, ...] = setting(Strings("variable name pattern"), "variables of the daemon's environment a "
                                         "task inherits (globs); all others are dropped, the task's own --env "
                                         "variables are added", ("PATH", "LANG", "LANGUAGE", "LC_*", "TZ"))
    allow_cwd: tuple[str, ...] = setting(Strings("directory pattern"), "directories (globs) a task may name with "
                                         "--cwd; a task that names none runs in a directory of its own under "
                                         "state_dir, removed when it ends", ())
    max_mem: int = setting(Size(), "memory limit of every task (its --mem when lower; 0: only --mem). Enforced "
                           "by the task's cgroup where there is one, else by a data-size rlimit and watching its "
                           "RSS", 0)
    max_cpu_time: float = setting(Duration(positive=False), "CPU time limit of every task (RLIMIT_CPU; 0: its "
                                  "timeout times its --cpus, or none without a timeout)", 0.0)
    max_open_files: int = setting(Integer(minimum=16), "open files per task process (RLIMIT_NOFILE)", 4096)
    cgroup: str = setting(Choice("auto", "off"), 'a cgroup v2 per task (memory.max, cpu.max) where the daemon\'s '
                          'cgroup is delegated to it (systemd Delegate=yes): "auto" uses it when there, "off" never',
                          "auto")


@dataclass(frozen=True, slots=True)
class ControlConfig:
    """Who may use the local control socket for what (besides its file mode)."""

    allow_users: tuple[str, ...] = setting(Strings("user name"), 'local users who may submit and cancel tasks '
                                           '("*": anyone who can open the socket)', ("*",))
    allow_groups: tuple[str, ...] = setting(Strings("group name"), "groups whose members may submit and cancel "
                                            "tasks", ())
    admin_users: tuple[str, ...] = setting(Strings("user name"), "users who may cancel anyone's tasks and read "
                                           "anyone's logs (root and the daemon's own user always may)", ())
    admin_groups: tuple[str, ...] = setting(Strings("group name"), "groups whose members are admins", ())


@dataclass(frozen=True, slots=True)
class AuditConfig:
    """The append-only, tamper-evident award log."""

    path: Path = setting(FilePath(empty_ok=True), 'log file; "" means audit.log in node.state_dir',
                         DEFAULT_STATE_DIR / "audit.log", derive=lambda ctx: ctx.done["node"].state_dir / "audit.log",
                         shown=Shown(""))


@dataclass(frozen=True, slots=True)
class MetricsConfig:
    """The Prometheus endpoint."""

    listen: str = setting(Address(listening=True, empty_ok=True), 'host:port serving /metrics; "" disables it',
                          DEFAULT_METRICS_LISTEN)


@dataclass(frozen=True, slots=True)
class HttpConfig:
    """The web dashboard and JSON API (docs/web.md); off unless listen is set."""

    listen: str = setting(Address(listening=True, empty_ok=True), 'host:port serving the dashboard at / and the '
                          'API at /api, like "127.0.0.1:7947"; "" disables it. An address other than loopback '
                          "needs token_file", "")
    token_file: Path | None = setting(FilePath(empty_ok=True), "file holding the bearer token that POST and DELETE "
                                      "requests must carry (Authorization: Bearer ...); required when listen is not "
                                      'a loopback address; "" means none', None, shown=Shown(""), must_exist=True)
    token_reads: bool = setting(Boolean(), "require the token for reading too (the page then asks for it once)",
                                False)

    @staticmethod
    def cross_check(values: dict[str, Any]) -> None:
        if not values["listen"]:
            return
        host, _ = parse_host_port(values["listen"])
        if values["token_file"] is None and not is_loopback(host):
            raise Invalid(f"required when listen is not a loopback address ({values['listen']!r}): anyone who can "
                          "reach it could submit and cancel tasks", key="token_file")
        if values["token_reads"] and values["token_file"] is None:
            raise Invalid("token_reads needs token_file", key="token_reads")


@dataclass(frozen=True, slots=True)
class AutoscaleConfig:
    """Hooks that ask for more nodes or fewer, run by one node for the cluster (docs/operations.md)."""

    scale_up: str = setting(Command(), 'command run when the cluster needs more nodes (split like a shell would, '
                            'run without one; its environment says why); "" disables', "")
    scale_down: str = setting(Command(), "command run when the cluster has a node to spare; XCHANGED_REMOVE_NODE "
                              'names an idle node to drain and remove; "" disables', "")
    backlog_up: int = setting(Integer(minimum=1), "scale up when at least this many tasks wait cluster-wide ...",
                              10)
    utilization_up: float = setting(Percent(), "... and at least this share of the cluster's slots is busy", 80.0)
    utilization_down: float = setting(Percent(), "scale down when no task waits and at most this share of the "
                                      "slots is busy (less than utilization_up)", 20.0)
    hold: float = setting(Duration(), "how long a condition must hold before its hook runs", 60.0)
    cooldown: float = setting(Duration(positive=False), "after a hook ran, the same direction waits this long", 600.0)
    min_nodes: int = setting(Integer(minimum=1), "never scale down below this many healthy nodes", 1)
    timeout: float = setting(Duration(), "a hook still running after this long is killed", 300.0)

    @staticmethod
    def cross_check(values: dict[str, Any]) -> None:
        if values["utilization_down"] >= values["utilization_up"]:
            raise Invalid(f"must be less than autoscale.utilization_up ({values['utilization_down']:g} >= "
                          f"{values['utilization_up']:g})", key="utilization_down")


@dataclass(frozen=True, slots=True)
class Config:
    """A node's whole, validated configuration: one field per [section], in the order they are checked."""

    node: NodeConfig = field(default_factory=NodeConfig)
    network: NetworkConfig = field(default_factory=NetworkConfig)
    trust: TrustConfig = field(default_factory=TrustConfig)
    gossip: GossipConfig = field(default_factory=GossipConfig)
    bidding: BiddingConfig = field(default_factory=BiddingConfig)
    executor: ExecutorConfig = field(default_factory=ExecutorConfig)
    control: ControlConfig = field(default_factory=ControlConfig)
    audit: AuditConfig = field(default_factory=AuditConfig)
    metrics: MetricsConfig = field(default_factory=MetricsConfig)
    http: HttpConfig = field(default_factory=HttpConfig)
    autoscale: AutoscaleConfig = field(default_factory=AutoscaleConfig)
    source: Path | None = None  #: the file this was loaded from, if any


#: Section name -> its dataclass, in the order sections are checked and written.
SECTIONS: dict[str, type] = {f.name: f.default_factory for f in dataclasses.fields(Config) if f.name != "source"}


# ---------------------------------------------------------------------------------------------
# Loading


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
    sections = load_sections(data, SECTIONS, source=source, base_dir=base_dir, check_files=check_files)
    return Config(**sections, source=Path(source) if source is not None else None)


def load_config(path: str | os.PathLike[str], *, check_files: bool = True) -> Config:
    """Read, parse and validate the TOML config at ``path``; raise ConfigError on any problem."""
    file = os.fspath(path)
    data = read_toml(file)
    base_dir = Path(file).absolute().parent
    config = config_from_dict(data, source=file, base_dir=base_dir, check_files=check_files)
    return dataclasses.replace(config, source=Path(file).absolute())


def default_config_path() -> Path:
    """The config file to use when none is named: $XCHANGED_CONFIG, else /etc/xchanged/xchanged.toml."""
    env = os.environ.get(CONFIG_ENV)
    return Path(env) if env else DEFAULT_CONFIG_DIR / "xchanged.toml"
