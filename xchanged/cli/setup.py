"""`xchanged init | run | config check | demo`: setting a node up, running it, trying a cluster."""

from __future__ import annotations

import logging
import socket
import sys
from pathlib import Path

import click

from ..config import ConfigError, default_config_path, load_config
from .common import Exit, config_option, console


@click.command()
@click.option("--dir", "directory", type=click.Path(file_okay=False, path_type=Path), default=Path("/etc/xchanged"),
              show_default=True, help="where to write the key, authorized_keys and config")
@click.option("--name", default=None, help="node name (default: hostname)")
@click.option("--force", is_flag=True, help="replace an existing node key")
def init(directory: Path, name: str | None, force: bool) -> None:
    """Create a node key (0600), node.pub, authorized_keys and a commented xchanged.toml."""
    from ..provision import init_node

    try:
        files = init_node(directory, name or socket.gethostname().split(".")[0], force=force)
    except (FileExistsError, ConfigError, OSError) as exc:
        raise Exit(str(exc), 2) from None
    click.echo(f"node {files.name} ({files.node_id}) initialised in {files.directory}")
    click.echo(f"public key (add this line to every other node's authorized_keys):\n{files.public_line}")


@click.command()
@config_option
@click.option("-v", "--verbose", is_flag=True, help="debug logging")
def run(config: str | None, verbose: bool) -> None:
    """Run the daemon in the foreground (systemd Type=notify)."""
    from ..runtime.daemon import DaemonError, run_daemon

    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        cfg = load_config(config or default_config_path())
    except ConfigError as exc:
        raise Exit(str(exc), 2) from None
    try:
        run_daemon(cfg, "debug" if verbose else None)
    except KeyboardInterrupt:
        pass
    except DaemonError as exc:
        raise Exit(str(exc), 1) from None


@click.group("config")
def config_group() -> None:
    """Inspect configuration."""


@config_group.command("check")
@config_option
def config_check(config: str | None) -> None:
    """Validate a config file; errors name the file, key and reason."""
    from ..config_check import ConfigRejected, check_config

    path = config or default_config_path()
    try:
        cfg = check_config(path)
    except ConfigRejected as exc:
        raise Exit(str(exc), 2) from None
    notes = []
    if cfg.network.insecure:
        notes.append("INSECURE: plaintext peer traffic")
    if cfg.trust.ca:
        has_cert = "with a certificate" if cfg.trust.certificate else "no certificate"
        notes.append(f"{len(cfg.trust.ca)} CA(s), {has_cert}")
    extra = f"; {'; '.join(notes)}" if notes else ""
    click.echo(f"{path}: ok (node {cfg.node.name}, {cfg.node.slots} slots, listen {cfg.network.listen}{extra})")


@click.command()
@click.option("--nodes", type=int, default=3, show_default=True, help="daemons to start")
@click.option("--tasks", "n_tasks", type=int, default=30, show_default=True, help="tasks to run")
def demo(nodes: int, n_tasks: int) -> None:
    """Start a local cluster of real daemons, run a real workload on it, show where it ran, clean up."""
    from ..demo import run_demo

    sys.exit(run_demo(nodes, n_tasks, console))


COMMANDS = [init, run, config_group, demo]
