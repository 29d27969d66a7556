"""The commented default config that `xchanged init` writes (every key, with its default).

Kept apart from config.py, which validates configs; this only renders one, and must load back
cleanly through `load_config` (a test checks that round trip).
"""

from __future__ import annotations

from pathlib import Path

from .config import (DEFAULT_METRICS_LISTEN, DEFAULT_STATE_DIR, _SIZE_PREFIXES, BiddingConfig, ConfigError,
                     ExecutorConfig, GossipConfig, NetworkConfig, _check_name, _cpu_count)


def _toml_str(text: str) -> str:
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


def render_default_config(name: str, directory: Path) -> str:
    """A commented TOML config for node ``name`` with every key at its default.

    ``node.key_file`` and ``trust.authorized_keys`` point into ``directory`` (made absolute).
    The text loads back with ``load_config`` once those files exist.
    """
    if reason := _check_name(name):
        raise ConfigError(None, "node.name", reason)
    directory = Path(directory).absolute()
    net, g, b, e = NetworkConfig(), GossipConfig(), BiddingConfig(), ExecutorConfig()
    q = _toml_str
    return f"""\
# xchanged node configuration.
# Every key is shown at its default; change what you need and delete the rest if you like.
# Durations need a unit (us, ms, s, m, h). Sizes: K, M, G, T (and KiB, MiB, ...) are 1024-based,
# KB, MB, GB are 1000-based. Relative paths are relative to this file's directory.
# Check a change with: xchanged config check -c THIS_FILE

[node]
name = {q(name)}
state_dir = {q(str(DEFAULT_STATE_DIR))}   # SQLite store, audit log, task outputs
key_file = {q(str(directory / "node.key"))}   # this node's private key (mode 0600)
# slots = {_cpu_count()}   # concurrent tasks; default: the CPU count of the host
prefetch = 1             # accepted tasks that may wait here for a slot, so a freed slot restarts at
                         # once (used only for a deep, uniform backlog of short tasks; 0: never)
labels = {{}}   # capabilities tasks can require, e.g. {{ zone = "lab-2", cuda = "12" }}

[network]
listen = {q(net.listen)}   # peer socket (TCP); port 0 picks a free port
advertise = {q(net.advertise)}   # host:port peers should dial; "" = discovered
control = {q(str(net.control))}   # local CLI socket (unix)
mdns = {"true" if net.mdns else "false"}   # discover peers on the LAN
seeds = []   # static peers for other subnets, e.g. ["10.1.0.5:7946"]

[trust]
authorized_keys = {q(str(directory / "authorized_keys"))}   # public keys of trusted nodes, one a line

[gossip]
interval = "{_fmt_duration(g.interval)}"   # how often this node gossips its load
fanout = {g.fanout}   # peers per gossip round
suspect_after = "{_fmt_duration(g.suspect_after)}"   # silence before a peer is suspected (> interval)
dead_after = "{_fmt_duration(g.dead_after)}"   # silence before a peer is declared dead (> suspect_after)
probe_k = {g.probe_k}   # indirect probes through this many peers before declaring death

[bidding]
window = "{_fmt_duration(b.window)}"   # how long a manager waits for bids
max_candidates = {b.max_candidates}   # peers asked per announcement (sampled, not all)
overload_cpu_percent = {b.overload_cpu_percent:g}   # contractors refuse above this CPU use
award_timeout = "{_fmt_duration(b.award_timeout)}"   # wait for the winner's accept (> window)

[executor]
allow = [{", ".join(q(p) for p in e.allow)}]   # glob patterns of commands (argv[0]) this node will run
max_output = "{_fmt_size(e.max_output)}"   # output kept per stream
heartbeat = "{_fmt_duration(e.heartbeat)}"   # progress heartbeat of running tasks
kill_grace = "{_fmt_duration(e.kill_grace)}"   # SIGTERM to SIGKILL

[audit]
path = ""   # award log; "" = state_dir/audit.log

[metrics]
listen = {q(DEFAULT_METRICS_LISTEN)}   # Prometheus /metrics; "" disables
"""


def _fmt_size(n: int) -> str:
    """``n`` bytes as the largest exact binary unit ("1MiB"), for rendering defaults."""
    for exp in range(len(_SIZE_PREFIXES), 0, -1):
        if n and n % 1024**exp == 0:
            return f"{n // 1024**exp}{_SIZE_PREFIXES[exp - 1].upper()}iB"
    return f"{n}B"


def _fmt_duration(seconds: float) -> str:
    """``seconds`` as a duration string parse_duration reads back exactly (for rendering defaults)."""
    if seconds >= 1 and seconds == int(seconds):
        return f"{int(seconds)}s"
    return f"{round(seconds * 1000, 6):g}ms"
