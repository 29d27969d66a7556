"""What `tasks --cluster`, `logs -f` and an unreachable manager look like on the command line (the
commands themselves are in tasks.py; the daemon does the asking, cluster_ops.py)."""

from __future__ import annotations

import json
import sys
from typing import TYPE_CHECKING, NoReturn

import click

from ..client import Client, ManagerUnreachable
from .common import Exit, call_daemon, console, err_console, print_json

if TYPE_CHECKING:
    from rich.table import Column


def id_column() -> Column:
    """Task ids are never cut short in a table (they are what the user copies)."""
    from rich.table import Column  # not at the top: `xchanged run` never loads rich
    return Column("id", no_wrap=True, min_width=26)


def show_cluster_tasks(client: Client, state: str | None, limit: int, as_json: bool) -> None:
    """Every manager's tasks in one table with a manager column; then each manager that could not be
    asked, or listed only its newest tasks, said so."""
    doc = call_daemon(lambda: client.tasks(state, cluster=True, limit=limit))
    if as_json:
        print_json(doc)
        return
    from rich.table import Column, Table
    table = Table(Column("manager", min_width=7), id_column(), Column("state", min_width=9), "node", "exit",
                  "command")           # 80 columns when piped: priority and attempts are in --json
    for d in doc["tasks"]:
        table.add_row(d.get("manager") or "-", d["id"], d["state"], d.get("node") or "-",
                      "-" if d.get("exit_code") is None else str(d["exit_code"]), " ".join(d.get("command", []))[:60])
    console.print(table)
    for m in doc["managers"]:
        name = m.get("name") or m["id"]
        if m["status"] != "ok":
            console.print(f"[bold red]{name}[/] ({m['id']}): {m['status']}: {m.get('error') or ''}")
        elif m.get("truncated"):
            console.print(f"{name}: the newest {m.get('listed')} of {m.get('total')} tasks (--limit)")


def follow_logs(client: Client, task_id: str, show_stderr: bool, as_json: bool) -> None:
    """Print the chosen stream as the task writes it, until it ends (notes go to stderr)."""
    wanted = "stderr" if show_stderr else "stdout"

    def follow() -> None:
        for chunk in client.logs(task_id, follow=True):
            if as_json:
                click.echo(json.dumps(chunk))
            elif chunk["stream"] == "note":
                err_console.print(f"[dim]xchanged: {chunk['data']}[/]")
            elif chunk["stream"] == wanted:
                sys.stdout.write(chunk["data"])
                sys.stdout.flush()
    try:
        call_daemon(follow)
    except KeyboardInterrupt:
        raise SystemExit(130) from None


def unreachable(exc: ManagerUnreachable, as_json: bool) -> NoReturn:
    """The manager did not answer: the reason and what was last known (exit 1)."""
    if as_json:
        print_json({"error": str(exc), **(exc.details or {})})
        raise SystemExit(1)
    raise Exit(str(exc), 1)
