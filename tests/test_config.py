"""Tests of xchanged.config: the TOML config contract (design section 3)."""

from __future__ import annotations

import pickle
import socket
import textwrap
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from xchanged.config import (
    MAX_SIZE,
    AuditConfig,
    BiddingConfig,
    Config,
    ConfigError,
    ExecutorConfig,
    GossipConfig,
    MetricsConfig,
    NetworkConfig,
    NodeConfig,
    config_from_dict,
    default_config_path,
    format_size,
    load_config,
    parse_duration,
    parse_host_port,
    parse_size,
)
from xchanged.config_template import render_default_config


def write(tmp_path: Path, text: str, *, keys: bool = True, name: str = "xchanged.toml") -> Path:
    """Write a config (dedented) and, unless told not to, the key files it defaults to."""
    if keys:
        (tmp_path / "node.key").write_text("")
        (tmp_path / "authorized_keys").write_text("")
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return path


def error_of(tmp_path: Path, text: str, **kw) -> ConfigError:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_config(path, **kw)
    assert info.value.file == str(path)
    assert str(info.value) == f"{path}: {info.value.key}: {info.value.reason}"
    return info.value


# --- loading -------------------------------------------------------------------------------------


def test_minimal_config_gets_every_default(tmp_path: Path) -> None:
    path = write(tmp_path, '[node]\nname = "x"\n')
    c = load_config(path)
    assert c.source == path.absolute()
    assert c.node.name == "x"
    assert c.node.state_dir == Path("/var/lib/xchanged")
    assert c.node.key_file == tmp_path / "node.key"
    assert c.node.slots >= 1
    assert c.node.prefetch == NodeConfig().prefetch == 1
    assert c.node.labels == {}
    assert c.network == NetworkConfig()
    assert c.network.listen == "0.0.0.0:7946" and c.network.mdns and c.network.seeds == ()
    assert c.trust.authorized_keys == tmp_path / "authorized_keys"
    assert c.gossip == GossipConfig(interval=0.5, fanout=3, suspect_after=1.5, dead_after=4.0, probe_k=3)
    assert c.bidding == BiddingConfig(
        window=0.05, max_candidates=16, overload_cpu_percent=90.0, award_timeout=2.0
    )
    assert c.executor == ExecutorConfig(allow=("*",), max_output=1 << 20, heartbeat=1.0, kill_grace=2.0)
    assert c.audit == AuditConfig(path=Path("/var/lib/xchanged/audit.log"))
    assert c.metrics == MetricsConfig(listen="127.0.0.1:9464")


def test_empty_config_defaults_name_to_hostname(tmp_path: Path) -> None:
    c = load_config(write(tmp_path, ""))
    assert c.node.name == socket.gethostname()


def test_every_section_parsed(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """
        [node]
        name = "gpu-07"
        state_dir = "/srv/xc"
        key_file = "keys/node.key"
        slots = 4
        labels = { zone = "lab-2", cuda = 12, fast = true }

        [network]
        listen = "[::1]:0"
        advertise = "gpu-07.lab:7946"
        control = "run/control.sock"
        mdns = false
        seeds = ["10.1.0.5:7946", "seed.example.org:7000"]

        [trust]
        authorized_keys = "keys/authorized_keys"

        [gossip]
        interval = "1s"
        fanout = 5
        suspect_after = "3s"
        dead_after = "8s"
        probe_k = 0

        [bidding]
        window = "100ms"
        max_candidates = 8
        overload_cpu_percent = 75.5
        award_timeout = "1.5s"

        [executor]
        allow = ["python*", "/usr/bin/*"]
        max_output = "4MiB"
        heartbeat = "250ms"
        kill_grace = "0s"

        [audit]
        path = "audit/awards.log"

        [metrics]
        listen = ""
        """,
        keys=False,
    )
    (tmp_path / "keys").mkdir()
    (tmp_path / "keys" / "node.key").write_text("")
    (tmp_path / "keys" / "authorized_keys").write_text("")
    c = load_config(path)
    assert c.node.name == "gpu-07"
    assert c.node.state_dir == Path("/srv/xc")
    assert c.node.key_file == tmp_path / "keys" / "node.key"
    assert c.node.slots == 4
    assert c.node.labels == {"zone": "lab-2", "cuda": "12", "fast": "true"}
    assert c.network == NetworkConfig(
        listen="[::1]:0",
        advertise="gpu-07.lab:7946",
        control=tmp_path / "run" / "control.sock",
        mdns=False,
        seeds=("10.1.0.5:7946", "seed.example.org:7000"),
    )
    assert c.trust.authorized_keys == tmp_path / "keys" / "authorized_keys"
    assert c.gossip == GossipConfig(interval=1.0, fanout=5, suspect_after=3.0, dead_after=8.0, probe_k=0)
    assert c.bidding == BiddingConfig(
        window=0.1, max_candidates=8, overload_cpu_percent=75.5, award_timeout=1.5
    )
    assert c.executor == ExecutorConfig(
        allow=("python*", "/usr/bin/*"), max_output=4 << 20, heartbeat=0.25, kill_grace=0.0
    )
    assert c.audit.path == tmp_path / "audit" / "awards.log"
    assert c.metrics.listen == ""


def test_audit_path_defaults_into_state_dir(tmp_path: Path) -> None:
    c = load_config(write(tmp_path, '[node]\nstate_dir = "state"\n[audit]\npath = ""\n'))
    assert c.node.state_dir == tmp_path / "state"
    assert c.audit.path == tmp_path / "state" / "audit.log"


def test_relative_paths_resolve_against_config_dir_not_cwd(tmp_path: Path, monkeypatch) -> None:
    conf_dir = tmp_path / "etc"
    conf_dir.mkdir()
    path = write(conf_dir, '[node]\nstate_dir = "../var"\n')
    monkeypatch.chdir(tmp_path)
    c = load_config(Path("etc") / "xchanged.toml")
    assert c.node.state_dir == conf_dir / ".." / "var"
    assert c.node.key_file == conf_dir / "node.key"
    assert c.source == path
    for p in (c.node.state_dir, c.node.key_file, c.network.control, c.trust.authorized_keys, c.audit.path):
        assert p.is_absolute()


def test_config_is_frozen(tmp_path: Path) -> None:
    c = load_config(write(tmp_path, ""))
    with pytest.raises(AttributeError):
        c.gossip.interval = 1.0  # type: ignore[misc]


# --- errors --------------------------------------------------------------------------------------


def test_unknown_key_suggests_the_right_one(tmp_path: Path) -> None:
    e = error_of(tmp_path, '[gossip]\nintervall = "1s"\n')
    assert e.key == "gossip.intervall"
    assert e.reason == "unknown key (did you mean 'interval'?)"


def test_unknown_key_without_close_match(tmp_path: Path) -> None:
    e = error_of(tmp_path, "[node]\nzzz = 1\n")
    assert (e.key, e.reason) == ("node.zzz", "unknown key")


def test_unknown_section(tmp_path: Path) -> None:
    e = error_of(tmp_path, "[gosip]\nfanout = 3\n")
    assert e.key == "gosip"
    assert e.reason == "unknown section (did you mean 'gossip'?)"
    e = error_of(tmp_path, "[frobnicate]\n")
    assert (e.key, e.reason) == ("frobnicate", "unknown section")


def test_top_level_key_says_where_it_belongs(tmp_path: Path) -> None:
    e = error_of(tmp_path, 'slots = 3\n')
    assert e.key == "slots" and "[node]" in e.reason


def test_section_must_be_a_table(tmp_path: Path) -> None:
    e = error_of(tmp_path, "gossip = 3\n")
    assert e.key == "gossip" and "table" in e.reason


@pytest.mark.parametrize(
    "text, key, fragment",
    [
        ("[gossip]\ninterval = 5\n", "gossip.interval", "expected a duration string like '500ms', got 5"),
        ("[gossip]\nfanout = \"3\"\n", "gossip.fanout", "expected an integer, got '3'"),
        ("[gossip]\nfanout = 3.0\n", "gossip.fanout", "expected an integer, got 3.0"),
        ("[node]\nslots = true\n", "node.slots", "expected an integer, got True"),
        ("[node]\nname = 7\n", "node.name", "expected a string, got 7"),
        ("[network]\nmdns = \"yes\"\n", "network.mdns", "expected true or false, got 'yes'"),
        ("[network]\nseeds = \"a:1\"\n", "network.seeds", "expected a list of host:port strings"),
        ("[network]\nseeds = [1]\n", "network.seeds", "entry 0"),
        ("[executor]\nmax_output = 1048576\n", "executor.max_output", "expected a size string"),
        ("[executor]\nallow = [\"\"]\n", "executor.allow", "entry 0"),
        ("[bidding]\noverload_cpu_percent = true\n", "bidding.overload_cpu_percent", "expected a number"),
        ("[node]\nlabels = [\"a\"]\n", "node.labels", "expected a table"),
        ("[node]\nlabels = { a = 1.5 }\n", "node.labels.a", "expected a string, integer or boolean"),
        ("[node]\nkey_file = 3\n", "node.key_file", "expected a string"),
    ],
)
def test_wrong_types(tmp_path: Path, text: str, key: str, fragment: str) -> None:
    e = error_of(tmp_path, text)
    assert e.key == key
    assert fragment in e.reason


@pytest.mark.parametrize(
    "text, key, fragment",
    [
        ("[gossip]\ninterval = \"5\"\n", "gossip.interval", "a unit is required"),
        ("[gossip]\ninterval = \"-1s\"\n", "gossip.interval", "negative"),
        ("[gossip]\ninterval = \"0s\"\n", "gossip.interval", "greater than zero"),
        ("[bidding]\nwindow = \"fast\"\n", "bidding.window", "invalid duration 'fast'"),
        ("[executor]\nheartbeat = \"1w\"\n", "executor.heartbeat", "unknown unit 'w'"),
        ("[executor]\nmax_output = \"lots\"\n", "executor.max_output", "invalid size 'lots'"),
        ("[executor]\nmax_output = \"1X\"\n", "executor.max_output", "unknown unit 'X'"),
        ("[executor]\nmax_output = \"-1M\"\n", "executor.max_output", "negative"),
        ("[node]\nslots = 0\n", "node.slots", "at least 1"),
        ("[node]\nname = \"\"\n", "node.name", "must not be empty"),
        ("[node]\nname = \"bad name\"\n", "node.name", "invalid node name"),
        ("[node]\nstate_dir = \"\"\n", "node.state_dir", "must not be empty"),
        ("[node]\nlabels = { \"a b\" = \"x\" }\n", "node.labels.a b", "label names"),
        ("[node]\nlabels = { a = \"x y\" }\n", "node.labels.a", "label values"),
        ("[gossip]\nfanout = 0\n", "gossip.fanout", "at least 1"),
        ("[gossip]\nprobe_k = -1\n", "gossip.probe_k", "at least 0"),
        ("[bidding]\nmax_candidates = 0\n", "bidding.max_candidates", "at least 1"),
        ("[bidding]\noverload_cpu_percent = 0\n", "bidding.overload_cpu_percent", "(0, 100]"),
        ("[bidding]\noverload_cpu_percent = 100.5\n", "bidding.overload_cpu_percent", "(0, 100]"),
        ("[bidding]\naward_timeout = \"10ms\"\n", "bidding.award_timeout", "longer than bidding.window"),
        ("[network]\nlisten = \"7946\"\n", "network.listen", "expected host:port"),
        ("[network]\nlisten = \"0.0.0.0:70000\"\n", "network.listen", "0 to 65535"),
        ("[network]\nlisten = \"::1:7946\"\n", "network.listen", "brackets"),
        ("[network]\nlisten = \"\"\n", "network.listen", "must not be empty"),
        ("[network]\nadvertise = \"10.0.0.1:0\"\n", "network.advertise", "port 0"),
        ("[network]\nadvertise = \"10.0.0.300\"\n", "network.advertise", "not an IPv4 address"),
        ("[network]\nadvertise = \"[gpu-07]\"\n", "network.advertise", "not an IPv6 address"),
        ("[network]\nadvertise = \"bad host\"\n", "network.advertise", "not a valid host name"),
        ("[network]\nseeds = [\"10.0.0.300:7946\"]\n", "network.seeds", "entry 0"),
        ("[metrics]\nlisten = \"localhost\"\n", "metrics.listen", "expected host:port"),
    ],
)
def test_bad_values(tmp_path: Path, text: str, key: str, fragment: str) -> None:
    e = error_of(tmp_path, text)
    assert e.key == key
    assert fragment in e.reason


def test_gossip_timings_must_be_ordered(tmp_path: Path) -> None:
    e = error_of(tmp_path, '[gossip]\ninterval = "2s"\n')  # default suspect_after is 1.5s
    assert e.key == "gossip.suspect_after"
    assert "longer than gossip.interval" in e.reason
    e = error_of(tmp_path, '[gossip]\nsuspect_after = "1500ms"\ndead_after = "1.5s"\n')
    assert e.key == "gossip.dead_after"
    assert "longer than gossip.suspect_after" in e.reason
    e = error_of(tmp_path, '[gossip]\nsuspect_after = "5s"\n')  # default dead_after is 4s
    assert e.key == "gossip.dead_after"
    c = load_config(write(tmp_path, '[gossip]\ninterval = "2s"\nsuspect_after = "5s"\ndead_after = "9s"\n'))
    assert (c.gossip.interval, c.gossip.suspect_after, c.gossip.dead_after) == (2.0, 5.0, 9.0)


def test_missing_key_file_names_the_key(tmp_path: Path) -> None:
    path = write(tmp_path, '[node]\nkey_file = "nope.key"\n')
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert info.value.key == "node.key_file"
    assert info.value.reason == f"file not found: {tmp_path / 'nope.key'}"
    assert load_config(path, check_files=False).node.key_file == tmp_path / "nope.key"


def test_missing_authorized_keys_names_the_key(tmp_path: Path) -> None:
    path = write(tmp_path, "", keys=False)
    (tmp_path / "node.key").write_text("")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert info.value.key == "trust.authorized_keys"
    assert "file not found" in info.value.reason


def test_key_file_that_is_a_directory(tmp_path: Path) -> None:
    (tmp_path / "keys").mkdir()
    e = error_of(tmp_path, '[node]\nkey_file = "keys"\n')
    assert e.key == "node.key_file" and "not a regular file" in e.reason


def test_syntax_error(tmp_path: Path) -> None:
    e = error_of(tmp_path, "[node]\nname = \n")
    assert e.key == "<syntax>"
    assert "line 2" in e.reason


def test_duplicate_key_is_a_syntax_error(tmp_path: Path) -> None:
    e = error_of(tmp_path, '[node]\nname = "a"\nname = "b"\n')
    assert e.key == "<syntax>"


def test_invalid_utf8_is_a_syntax_error(tmp_path: Path) -> None:
    path = tmp_path / "x.toml"
    path.write_bytes(b'[node]\nname = "\xff"\n')
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert info.value.key == "<syntax>"


def test_missing_config_file(tmp_path: Path) -> None:
    path = tmp_path / "absent.toml"
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert (info.value.file, info.value.key, info.value.reason) == (str(path), "<file>", "not found")
    assert str(info.value) == f"{path}: <file>: not found"


def test_config_error_without_file_and_pickling() -> None:
    e = ConfigError(None, "gossip.interval", "bad")
    assert str(e) == "<config>: gossip.interval: bad"
    e2 = pickle.loads(pickle.dumps(e))
    assert (e2.file, e2.key, e2.reason) == (None, "gossip.interval", "bad")


# --- config_from_dict, render, default path ------------------------------------------------------


def test_config_from_dict(tmp_path: Path) -> None:
    c = config_from_dict(
        {"node": {"name": "n1", "state_dir": "s"}, "gossip": {"interval": "100ms"}},
        base_dir=tmp_path,
        check_files=False,
    )
    assert c.node.state_dir == tmp_path / "s"
    assert c.node.key_file == tmp_path / "node.key"
    assert c.gossip.interval == pytest.approx(0.1)
    assert c.source is None
    c = config_from_dict({}, check_files=False)
    assert c.node.key_file == Path("/etc/xchanged/node.key")
    assert c.trust.authorized_keys == Path("/etc/xchanged/authorized_keys")


def test_config_from_dict_errors_name_the_source() -> None:
    with pytest.raises(ConfigError) as info:
        config_from_dict({"node": {"slots": 0}}, source="generated", check_files=False)
    assert str(info.value) == "generated: node.slots: must be at least 1, got 0"
    with pytest.raises(ConfigError) as info:
        config_from_dict({"node": {"slots": 0}}, check_files=False)
    assert str(info.value).startswith("<config>: node.slots:")


def test_render_default_config_round_trips(tmp_path: Path) -> None:
    keys = tmp_path / "keys"
    keys.mkdir()
    (keys / "node.key").write_text("")
    (keys / "authorized_keys").write_text("")
    text = render_default_config("node-1", keys)
    for section in ("node", "network", "trust", "gossip", "bidding", "executor", "audit", "metrics"):
        assert f"[{section}]" in text
    assert "slots" in text
    path = tmp_path / "xchanged.toml"
    path.write_text(text)
    c = load_config(path)
    defaults = Config()
    assert c.node.name == "node-1"
    assert c.node.key_file == keys / "node.key"
    assert c.trust.authorized_keys == keys / "authorized_keys"
    assert c.node.state_dir == defaults.node.state_dir
    assert c.node.slots == defaults.node.slots
    assert c.node.labels == {}
    for section in ("network", "gossip", "bidding", "executor", "audit", "metrics"):
        assert getattr(c, section) == getattr(defaults, section), section


def test_render_quotes_odd_names_and_rejects_invalid(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        render_default_config('bad "name"', tmp_path)
    assert info.value.key == "node.name"
    odd_dir = tmp_path / 'we"ird\\dir'
    odd_dir.mkdir()
    (odd_dir / "node.key").write_text("")
    (odd_dir / "authorized_keys").write_text("")
    path = tmp_path / "x.toml"
    path.write_text(render_default_config("a.b-c_d", odd_dir))
    assert load_config(path).node.key_file == odd_dir / "node.key"


def test_default_config_path(monkeypatch) -> None:
    monkeypatch.delenv("XCHANGED_CONFIG", raising=False)
    assert default_config_path() == Path("/etc/xchanged/xchanged.toml")
    monkeypatch.setenv("XCHANGED_CONFIG", "/tmp/other.toml")
    assert default_config_path() == Path("/tmp/other.toml")


# --- value parsers -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text, seconds",
    [
        ("50ms", 0.05),
        ("1s", 1.0),
        ("1.5s", 1.5),
        ("2m", 120.0),
        ("1h", 3600.0),
        ("250us", 0.00025),
        ("250µs", 0.00025),
        (".5s", 0.5),
        ("0s", 0.0),
        (" 10 ms ", 0.01),
        ("1500ms", 1.5),
        ("7d", 604800.0),
    ],
)
def test_parse_duration(text: str, seconds: float) -> None:
    assert parse_duration(text) == pytest.approx(seconds, rel=1e-12)


@pytest.mark.parametrize(
    "text, fragment",
    [
        ("5", "a unit is required"),
        ("1.5", "a unit is required"),
        ("-1s", "negative"),
        ("", "invalid duration"),
        ("s", "invalid duration"),
        ("1w", "unknown unit"),
        ("1S", "unknown unit"),
        ("1 s s", "invalid duration"),
        ("1e3ms", "invalid duration"),
        ("+1s", "invalid duration"),
        ("1.s", "invalid duration"),
        ("nan s", "invalid duration"),
        ("1s2", "invalid duration"),
        ("١s", "invalid duration"),
    ],
)
def test_parse_duration_rejects(text: str, fragment: str) -> None:
    with pytest.raises(ValueError) as info:
        parse_duration(text)
    assert fragment in str(info.value)
    assert repr(text) in str(info.value)


def test_parse_duration_rejects_non_strings() -> None:
    with pytest.raises(TypeError):
        parse_duration(5)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="too long"):
        parse_duration("9" * 5000 + "h")
    with pytest.raises(ValueError, match="too long"):
        parse_size("9" * 5000)


@pytest.mark.parametrize(
    "text, size",
    [
        ("512", 512),
        ("512B", 512),
        ("0", 0),
        ("512K", 512 * 1024),
        ("512M", 512 * 1024**2),
        ("4G", 4 * 1024**3),
        ("1T", 1024**4),
        ("1MiB", 1024**2),
        ("4GiB", 4 * 1024**3),
        ("1.5G", 3 * 1024**3 // 2),
        ("10KB", 10_000),
        ("2MB", 2_000_000),
        ("1GB", 10**9),
        ("1k", 1024),
        ("1kib", 1024),
        (" 4 G ", 4 * 1024**3),
        ("0.5K", 512),
        ("1P", 1024**5),
    ],
)
def test_parse_size(text: str, size: int) -> None:
    assert parse_size(text) == size


@pytest.mark.parametrize(
    "text, fragment",
    [
        ("", "invalid size"),
        ("junk", "invalid size"),
        ("-1", "negative"),
        ("-4G", "negative"),
        ("4X", "unknown unit"),
        ("1.5", "whole number"),
        ("1.5B", "whole number"),
        ("4 G B", "invalid size"),
        ("1e6", "invalid size"),
        ("99999999T", "too large"),
        ("G", "invalid size"),
    ],
)
def test_parse_size_rejects(text: str, fragment: str) -> None:
    with pytest.raises(ValueError) as info:
        parse_size(text)
    assert fragment in str(info.value)


@pytest.mark.parametrize(
    "n, text",
    [(0, "0B"), (512, "512B"), (1023, "1023B"), (1024, "1.0K"), (1536, "1.5K"), (4 * 1024**3, "4.0G"),
     (1024**2 - 1, "1.0M"), (3 * 1024**5, "3.0P")],
)
def test_format_size(n: int, text: str) -> None:
    assert format_size(n) == text


def test_format_size_rejects() -> None:
    with pytest.raises(ValueError):
        format_size(-1)
    with pytest.raises(TypeError):
        format_size(1.5)  # type: ignore[arg-type]


@given(st.integers(min_value=0, max_value=2**60))  # rounding up near MAX_SIZE would overflow it
def test_format_size_round_trips_within_rounding(n: int) -> None:
    text = format_size(n)
    back = parse_size(text)
    if n < 1024:
        assert back == n
    else:
        # one decimal of a unit at least 1: off by at most 0.05 of the unit, i.e. 5% of n
        assert abs(back - n) <= 0.05 * n + 1
    assert format_size(back) == text  # the shown form is stable


@pytest.mark.parametrize(
    "text, expected",
    [
        ("0.0.0.0:7946", ("0.0.0.0", 7946)),
        ("[::1]:0", ("::1", 0)),
        ("host-1.example.org:65535", ("host-1.example.org", 65535)),
        ("localhost:1", ("localhost", 1)),
    ],
)
def test_parse_host_port(text: str, expected: tuple[str, int]) -> None:
    assert parse_host_port(text) == expected


@pytest.mark.parametrize(
    "text", ["", ":7946", "host", "host:", "host:x", "host:-1", "[::1]", "[nope]:1", "1.2.3.4.5:1", "a b:1",
             "host:65536"]
)
def test_parse_host_port_rejects(text: str) -> None:
    with pytest.raises(ValueError):
        parse_host_port(text)
    with pytest.raises(ValueError, match="port 0"):
        parse_host_port("10.0.0.1:0", allow_port_zero=False)


def test_parse_size_limit() -> None:
    assert parse_size(str(MAX_SIZE)) == MAX_SIZE
    with pytest.raises(ValueError, match="too large"):
        parse_size(str(MAX_SIZE + 1))


@pytest.mark.parametrize("written, listen, expected", [
    ("127.0.0.1", "0.0.0.0:7946", "127.0.0.1:7946"),              # a bare IP: the listen port
    ("localhost", "0.0.0.0:7946", "localhost:7946"),              # a bare host name
    ("gpu-07.lab:9000", "0.0.0.0:7946", "gpu-07.lab:9000"),       # host:port as before
    ("fd00::5", "[::]:7946", "[fd00::5]:7946"),                   # IPv6, with or without brackets
    ("[fd00::5]", "[::]:7946", "[fd00::5]:7946"),
    ("[fd00::5]:9000", "[::]:7946", "[fd00::5]:9000"),
    ("", "[fd00::1]:7946", "[fd00::1]:7946"),                     # a specific listen address
    ("", "10.0.0.4:7946", "10.0.0.4:7946"),
])
def test_advertise_as_users_write_it(tmp_path: Path, written: str, listen: str, expected: str) -> None:
    from xchanged.runtime.daemon import advertised_address

    config = load_config(write(tmp_path, f'[network]\nadvertise = "{written}"\nlisten = "{listen}"\n'))
    assert advertised_address(config, 7946) == expected
