"""`xchanged drain | undrain | reload`: operating a node in a fleet (docs/operations.md).

Upgrading a host: `xchanged drain --wait`, restart the daemon, `xchanged undrain`. A drain holds
across restarts until `undrain`.
"""

from __future__ import annotations

import click

from .common import call_daemon, client_for, config_option, err_console, json_option, print_json


def _say(doc: dict) -> str:
    if not doc["draining"]:
        return "taking work"
    if doc["idle"]:
        return "drained: nothing runs or waits here"
    return f"draining: {doc['running']} attempts still running here"


@click.command()
@config_option
@json_option
@click.option("--wait", is_flag=True, help="wait until nothing runs here any more")
@click.option("--timeout", type=float, default=None, help="with --wait: give up after this many seconds (exit 1)")
def drain(config, as_json, wait, timeout) -> None:
    """Stop taking work: queued attempts go back to their managers, running ones finish."""
    with client_for(config) as client:
        if wait and not as_json and err_console.is_terminal:
            with err_console.status("draining") as status:
                doc = call_daemon(lambda: client.drain(wait=True, timeout=timeout,
                                                       on_update=lambda d: status.update(_say(d))))
        else:
            doc = call_daemon(lambda: client.drain(wait=wait, timeout=timeout))
    if as_json:
        print_json(doc)
    else:
        click.echo(_say(doc))
    if wait and not doc["idle"]:
        raise SystemExit(1)


@click.command()
@config_option
@json_option
def undrain(config, as_json) -> None:
    """Take work again after a drain."""
    with client_for(config) as client:
        doc = call_daemon(client.undrain)
    if as_json:
        print_json(doc)
    else:
        click.echo(_say(doc))


@click.command()
@config_option
@json_option
def reload(config, as_json) -> None:
    """Make the daemon re-read its config (as SIGHUP and systemctl reload do); a config that fails
    `config check` is refused and the daemon keeps its own."""
    with client_for(config) as client:
        doc = call_daemon(client.reload)
    if as_json:
        print_json(doc)
        return
    click.echo("reloaded: " + (", ".join(doc["changed"]) + " applied" if doc["changed"] else "nothing changed"))
    if doc["restart_needed"]:
        click.echo("needs a restart to take effect: " + ", ".join(doc["restart_needed"]))
    for note in doc.get("notes", []):
        click.echo(note)


COMMANDS = [drain, undrain, reload]
