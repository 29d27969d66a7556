"""Composite tasks on the command line: `xchanged resubmit`, the parts bar of `submit --wait`, and the
parts table of `status` (submit, status and logs themselves are in tasks.py)."""

from __future__ import annotations

import sys
from collections import Counter

import click

from ..client import Client
from .common import call_daemon, client_for, config_option, console, err_console, json_option, print_json


def wait_with_bar(client: Client, task_id: str, quiet: bool) -> dict:
    """Wait for a composite, drawing its parts done of total (with an ETA) on a terminal."""
    if quiet or not err_console.is_terminal:
        return call_daemon(lambda: client.wait(task_id))
    from rich import progress as rp  # not at the top: `xchanged run` never loads rich
    columns = (rp.TextColumn("{task.description}"), rp.BarColumn(), rp.MofNCompleteColumn(), rp.TextColumn("parts"),
               rp.TimeElapsedColumn(), rp.TextColumn("eta"), rp.TimeRemainingColumn())
    with rp.Progress(*columns, console=err_console, transient=False) as progress:
        bar = progress.add_task(task_id, total=None)

        def update(doc: dict) -> None:
            p = doc.get("progress") or {}
            failed = f" [red]{p['failed']} failed[/]" if p.get("failed") else ""
            progress.update(bar, completed=p.get("done", 0), total=p.get("total") or None,
                            description=f"{task_id} {doc['state']}{failed}")
        doc = call_daemon(lambda: client.wait(task_id, on_update=update))
        update(doc)
    err_console.print(f"{task_id}: {doc['state']}" + (f" ({doc['reason']})" if doc.get("reason") else ""))
    return doc


def print_parts(doc: dict, limit: int | None) -> None:
    """A composite's parts: counts per state, then the first `limit` parts that ended (None: all)."""
    progress, parts = doc.get("progress", {}), doc.get("parts", [])
    counts = Counter(p["state"] for p in parts)
    pending = progress.get("total", 0) - progress.get("done", 0)
    summary = ", ".join(f"{n} {state}" for state, n in sorted(counts.items()))
    console.print(f"parts: {progress.get('done', 0)}/{progress.get('total', 0)} ended"
                  + (f" ({summary})" if summary else "") + (f", {pending} to run or running" if pending else ""))
    shown = parts if limit is None else parts[:limit]
    if not shown:
        return
    from rich.table import Table  # not at the top: `xchanged run` never loads rich
    table = Table("part", "state", "node", "exit", "item", "reason")
    for p in shown:
        table.add_row(p["key"], p["state"], p["node"] or "-", "-" if p["exit_code"] is None else str(p["exit_code"]),
                      (p.get("item") or "").replace("\n", " ")[:30], (p["reason"] or "")[:60])
    console.print(table)
    if len(parts) > len(shown):
        console.print(f"... and {len(parts) - len(shown)} more (--all-parts, or --json)")


@click.command()
@config_option
@json_option
@click.option("--wait", is_flag=True, help="wait for the rerun; exit with its exit code")
@click.argument("task_id")
def resubmit(config, as_json, wait, task_id) -> None:
    """Rerun an ended composite: only the parts that failed or never ran run again (a new task id)."""
    with client_for(config) as client:
        doc = call_daemon(lambda: client.resubmit(task_id))
        if wait:
            doc = wait_with_bar(client, doc["id"], quiet=as_json)
    if as_json:
        print_json(doc)
    elif not wait:
        click.echo(doc["id"])
    if wait and doc["state"] != "succeeded":
        code = doc.get("exit_code")
        sys.exit(code if isinstance(code, int) and 0 < code < 256 else 1)


COMMANDS = [resubmit]
