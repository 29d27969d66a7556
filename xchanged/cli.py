"""The `xchanged` command line: click commands that call the Client and format what it returns.

Exit codes: 0 success; 1 the task failed (with --wait: the task's own exit code when it has one);
2 usage or config error; 3 daemon not reachable (the message names the socket tried).
"""

from __future__ import annotations

import json
import logging
import socket
import sys
import time
from datetime import datetime
from pathlib import Path

import click
from rich.console import Console
from rich.table import Table

from . import __version__
from .cli_common import Exit, call_daemon, client_for, config_option, json_option
from .client import Client, build_spec
from .config import ConfigError, format_size, load_config

console = Console()
err_console = Console(stderr=True)


def _print_json(doc) -> None:
    click.echo(json.dumps(doc, indent=2, sort_keys=True))


def _time(ms: int | None) -> str:
    return datetime.fromtimestamp(ms / 1000).strftime("%H:%M:%S") if ms else "-"


def _kv(pairs: tuple[str, ...], option: str) -> dict[str, str]:
    out = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise click.BadParameter(f"expected K=V, got {pair!r}", param_hint=option)
        out[key] = value
    return out


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="xchanged")
def main() -> None:
    """xchanged: share work across a fleet of hosts by signed Contract Net bidding."""


# -- setup -------------------------------------------------------------------------------------


@main.command()
@click.option("--dir", "directory", type=click.Path(file_okay=False, path_type=Path), default=Path("/etc/xchanged"),
              show_default=True, help="where to write the key, authorized_keys and config")
@click.option("--name", default=None, help="node name (default: hostname)")
@click.option("--force", is_flag=True, help="replace an existing node key")
def init(directory: Path, name: str | None, force: bool) -> None:
    """Create a node key (0600), node.pub, authorized_keys and a commented xchanged.toml."""
    from .provision import init_node

    try:
        files = init_node(directory, name or socket.gethostname().split(".")[0], force=force)
    except (FileExistsError, ConfigError, OSError) as exc:
        raise Exit(str(exc), 2) from None
    click.echo(f"node {files.name} ({files.node_id}) initialised in {files.directory}")
    click.echo(f"public key (add this line to every other node's authorized_keys):\n{files.public_line}")


@main.command()
@config_option
@click.option("-v", "--verbose", is_flag=True, help="debug logging")
def run(config: str | None, verbose: bool) -> None:
    """Run the daemon in the foreground (systemd Type=notify)."""
    from .config import default_config_path
    from .runtime.daemon import DaemonError, run_daemon

    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        cfg = load_config(config or default_config_path())
    except ConfigError as exc:
        raise Exit(str(exc), 2) from None
    try:
        run_daemon(cfg)
    except KeyboardInterrupt:
        pass
    except DaemonError as exc:
        raise Exit(str(exc), 1) from None


@main.group("config")
def config_group() -> None:
    """Inspect configuration."""


@config_group.command("check")
@config_option
def config_check(config: str | None) -> None:
    """Validate a config file; errors name the file, key and reason."""
    from .config import default_config_path
    from .protocol.signing import TrustError, TrustStore, load_private_key

    path = config or default_config_path()
    try:
        cfg = load_config(path)
        load_private_key(cfg.node.key_file.read_bytes())
        TrustStore.parse(cfg.trust.authorized_keys.read_text(), str(cfg.trust.authorized_keys))
    except ConfigError as exc:
        raise Exit(str(exc), 2) from None
    except TrustError as exc:
        raise Exit(f"{path}: {exc}", 2) from None
    except OSError as exc:
        raise Exit(f"{path}: {exc}", 2) from None
    click.echo(f"{path}: ok (node {cfg.node.name}, {cfg.node.slots} slots, listen {cfg.network.listen})")


# -- tasks -------------------------------------------------------------------------------------


@main.command(context_settings={"ignore_unknown_options": False})
@config_option
@click.option("-f", "--file", "spec_file", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="task spec TOML ([task] or [[task]] tables)")
@click.option("--cpus", type=float, default=1.0, show_default=True)
@click.option("--mem", default="0", help="memory, e.g. 512M, 4G")
@click.option("--gpus", type=int, default=0)
@click.option("--gpu-mem", default="0", help="free memory per GPU, e.g. 20G")
@click.option("--label", multiple=True, help="K=V the node must carry (repeatable)")
@click.option("--prefer", multiple=True, help="K=V the node should carry (repeatable)")
@click.option("--priority", type=click.Choice(["low", "normal", "high", "urgent"]), default="normal")
@click.option("--timeout", type=float, default=None, help="run-time limit in seconds")
@click.option("--retries", type=int, default=3, show_default=True, help="attempts after the first")
@click.option("--deadline", default=None, help="ISO 8601 time, for earliest-deadline-first ordering")
@click.option("--env", multiple=True, help="K=V environment variable (repeatable)")
@click.option("--cwd", default=None, help="working directory of the command")
@click.option("--name", default="", help="a name to show in listings")
@click.option("--wait", is_flag=True, help="wait for the task; exit with its exit code")
@json_option
@click.argument("command", nargs=-1, type=click.UNPROCESSED)
def submit(config, spec_file, cpus, mem, gpus, gpu_mem, label, prefer, priority, timeout, retries, deadline,
           env, cwd, name, wait, as_json, command) -> None:
    """Submit a task: xchanged submit [options] -- CMD ARG..."""
    try:
        if spec_file is not None:
            specs = _specs_from_file(spec_file)
        elif command:
            specs = [build_spec(list(command), cpus=cpus, mem=mem, gpus=gpus, gpu_mem=gpu_mem,
                                labels=_kv(label, "--label"), prefer=_kv(prefer, "--prefer"), priority=priority,
                                timeout=timeout, retries=retries, deadline=deadline, env=_kv(env, "--env"),
                                cwd=cwd, name=name)]
        else:
            raise click.UsageError("give a command after --, or a spec file with -f")
    except ValueError as exc:
        raise click.UsageError(str(exc)) from None
    with client_for(config) as client:
        docs = call_daemon(lambda: client.submit_specs(specs))
        if not wait:
            if as_json:
                _print_json(docs[0] if len(docs) == 1 else docs)
            else:
                for doc in docs:
                    click.echo(doc["id"])
            return
        finals = [_wait_with_progress(client, doc["id"], quiet=as_json) for doc in docs]
    if as_json:
        _print_json(finals[0] if len(finals) == 1 else finals)
    failed = [d for d in finals if d["state"] != "succeeded"]
    if failed:
        code = failed[0].get("exit_code")
        sys.exit(code if isinstance(code, int) and 0 < code < 256 else 1)


def _specs_from_file(path: Path) -> list[dict]:
    import tomllib

    try:
        data = tomllib.loads(path.read_text())
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ValueError(f"{path}: {exc}") from None
    tables = data.get("task")
    if isinstance(tables, dict):
        tables = [tables]
    if not isinstance(tables, list) or not tables:
        raise ValueError(f"{path}: expected a [task] table or [[task]] tables")
    specs = []
    for i, table in enumerate(tables):
        table = dict(table)
        command = table.pop("command", None)
        if isinstance(command, str):
            command = ["sh", "-c", command]
        if not isinstance(command, list):
            raise ValueError(f"{path}: task {i}: 'command' must be a list of strings or a shell string")
        try:
            specs.append(build_spec(command, **table))
        except TypeError as exc:
            raise ValueError(f"{path}: task {i}: {exc}") from None
    return specs


def _wait_with_progress(client: Client, task_id: str, quiet: bool) -> dict:
    if quiet or not err_console.is_terminal:
        return call_daemon(lambda: client.wait(task_id))
    with err_console.status(f"{task_id}: submitted") as status:
        def update(doc: dict) -> None:
            status.update(f"{task_id}: {doc['state']}" + (f" on {doc['node']}" if doc.get("node") else "")
                          + (f" ({doc['reason']})" if doc.get("reason") else ""))
        doc = call_daemon(lambda: client.wait(task_id, on_update=update))
    err_console.print(f"{task_id}: {doc['state']}" + (f" on {doc['node']}" if doc.get("node") else ""))
    return doc


@main.command()
@config_option
@json_option
@click.argument("task_id")
def status(config, as_json, task_id) -> None:
    """One task: state, node, attempts, exit code, times."""
    with client_for(config) as client:
        doc = call_daemon(lambda: client.status(task_id))
    if as_json:
        _print_json(doc)
        return
    console.print(f"[bold]{doc['id']}[/]  {doc['state']}  priority {doc['priority']}  "
                  f"node {doc.get('node') or '-'}  exit {doc.get('exit_code') if doc.get('exit_code') is not None else '-'}")
    console.print(f"command: {' '.join(doc.get('command', []))}")
    if doc.get("reason"):
        console.print(f"reason: {doc['reason']}")
    table = Table("attempt", "node", "state", "exit", "started", "ended", "reason")
    for a in doc["attempts"]:
        table.add_row(str(a["attempt"]), a["node"] or "-", a["state"],
                      "-" if a["exit_code"] is None else str(a["exit_code"]), _time(a["started"]),
                      _time(a["ended"]), a["reason"] or "")
    if doc["attempts"]:
        console.print(table)


@main.command()
@config_option
@json_option
@click.option("--state", default=None, help="only tasks in this state")
def tasks(config, as_json, state) -> None:
    """Tasks this node manages."""
    with client_for(config) as client:
        docs = call_daemon(lambda: client.tasks(state))
    if as_json:
        _print_json(docs)
        return
    table = Table("id", "state", "priority", "node", "attempts", "exit", "command")
    for d in docs:
        table.add_row(d["id"], d["state"], d["priority"], d.get("node") or "-", str(len(d["attempts"])),
                      "-" if d.get("exit_code") is None else str(d["exit_code"]), " ".join(d.get("command", []))[:60])
    console.print(table)


@main.command()
@config_option
@click.option("--stderr", "show_stderr", is_flag=True, help="print the captured stderr instead")
@click.option("--attempt", type=int, default=None)
@json_option
@click.argument("task_id")
def logs(config, show_stderr, attempt, as_json, task_id) -> None:
    """Captured output of the task's last attempt."""
    with client_for(config) as client:
        doc = call_daemon(lambda: client.logs(task_id, attempt))
    if as_json:
        _print_json(doc)
        return
    click.echo(doc["stderr"] if show_stderr else doc["stdout"], nl=False)


@main.command()
@config_option
@json_option
@click.argument("task_id")
def cancel(config, as_json, task_id) -> None:
    """Cancel a task, killing its running attempt."""
    with client_for(config) as client:
        doc = call_daemon(lambda: client.cancel(task_id))
    if as_json:
        _print_json(doc)
    else:
        click.echo(f"{doc['id']}: {doc['state']}")


@main.command()
@config_option
@json_option
@click.option("--all", "show_all", is_flag=True,
              help="also list mDNS services whose keys are not trusted (health 'untrusted'; never used)")
def peers(config, as_json, show_all) -> None:
    """Peers: health, age of the last signal, free slots, CPU, memory, GPUs, labels."""
    with client_for(config) as client:
        docs = call_daemon(lambda: client.peers(all=show_all))
    if as_json:
        _print_json(docs)
        return
    table = Table("name", "id", "address", "health", "seen", "slots", "free", "cpu %", "mem avail", "gpus", "labels")
    for p in docs:
        table.add_row(p["name"] + (" (self)" if p.get("self") else ""), p["id"], p["address"], p["health"],
                      f"{p['last_seen_s']:.1f}s" if p["last_seen_s"] is not None else "-", str(p["slots"]),
                      str(p["slots_free"]), f"{p['cpu_percent']:.0f}", format_size(p["mem_available"]),
                      str(len(p["gpus"])), ",".join(f"{k}={v}" for k, v in p["labels"].items()))
    console.print(table)


@main.command()
@config_option
@json_option
def stats(config, as_json) -> None:
    """Cluster totals and utilisation."""
    with client_for(config) as client:
        doc = call_daemon(client.stats)
    if as_json:
        _print_json(doc)
        return
    for key in ("total_agents", "healthy_agents", "total_capacity", "current_load", "utilization_percent",
                "free_slots", "queued_total", "queued_jobs", "running_jobs", "submitted", "succeeded", "failed",
                "retries", "success_rate"):
        console.print(f"{key:22} {doc.get(key)}")
    table = Table("agent", "health", "slots", "free", "running", "util %", "queued", "cpu %", "success rate", "score")
    for a in doc["agents"]:
        table.add_row(a["name"], a["health"], str(a["slots"]), str(a["slots_free"]), str(a["running"]),
                      f"{a.get('load_percent', 0):.0f}", str(a["queued"]), f"{a['cpu_percent']:.0f}",
                      "-" if a.get("success_rate") is None else f"{a['success_rate']:.2f}",
                      "-" if a.get("score") is None else f"{a['score']:.2f}")
    console.print(table)


@main.command()
@config_option
@click.option("--interval", type=float, default=1.0, show_default=True, help="seconds between refreshes")
@click.option("--once", is_flag=True, help="draw one frame and exit")
def top(config, interval, once) -> None:
    """Live view of peers and tasks (Ctrl-C to quit)."""
    from rich.console import Group
    from rich.live import Live

    def frame(client: Client):
        doc = client.stats()
        peers_table = Table("agent", "health", "slots", "free", "running", "queued", "cpu %", "success rate",
                            title=f"{doc['node']}: {doc['healthy_agents']}/{doc['total_agents']} agents healthy, "
                                  f"utilisation {doc['utilization_percent']}%")
        for a in doc["agents"]:
            peers_table.add_row(a["name"], a["health"], str(a["slots"]), str(a["slots_free"]), str(a["running"]),
                                str(a["queued"]), f"{a['cpu_percent']:.0f}",
                                "-" if a.get("success_rate") is None else f"{a['success_rate']:.2f}")
        active = [t for t in client.tasks() if t["state"] in ("queued", "assigned", "running")][:20]
        tasks_table = Table("task", "state", "priority", "node", "attempts", "reason",
                            title=f"queued {doc['queued_jobs']}, running {doc['running_jobs']}, "
                                  f"succeeded {doc['succeeded']}, failed {doc['failed']}, retries {doc['retries']}")
        for t in active:
            tasks_table.add_row(t["id"], t["state"], t["priority"], t.get("node") or "-", str(len(t["attempts"])),
                                (t.get("reason") or "")[:60])
        return Group(peers_table, tasks_table)

    with client_for(config) as client:
        if once:
            console.print(call_daemon(lambda: frame(client)))
            return
        try:
            with Live(call_daemon(lambda: frame(client)), console=console, refresh_per_second=4) as live:
                while True:
                    time.sleep(interval)
                    live.update(call_daemon(lambda: frame(client)))
        except KeyboardInterrupt:
            pass


@main.command()
@click.option("--nodes", type=int, default=3, show_default=True, help="daemons to start")
@click.option("--tasks", "n_tasks", type=int, default=30, show_default=True, help="tasks to run")
def demo(nodes: int, n_tasks: int) -> None:
    """Start a local cluster of real daemons, run a real workload on it, show where it ran, clean up."""
    from .demo import run_demo

    sys.exit(run_demo(nodes, n_tasks, console))


from .cli_audit import audit as _audit_group  # noqa: E402  (the `xchanged audit ...` commands)

main.add_command(_audit_group)


if __name__ == "__main__":
    main()
