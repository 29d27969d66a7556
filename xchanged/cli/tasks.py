"""`xchanged submit | status | tasks | logs | cancel`: a task's life, from any node of the cluster (the
local daemon asks the task's manager); `tasks --cluster` and `logs -f`: cluster_view.py."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from .. import specfile
from ..client import Client, ManagerUnreachable, build_spec
from . import composite
from .cluster_view import follow_logs, id_column, show_cluster_tasks, unreachable
from .common import (
    Exit,
    call_daemon,
    client_for,
    clock_time,
    config_option,
    console,
    err_console,
    json_option,
    key_values,
    print_json,
)


@click.command(context_settings={"ignore_unknown_options": False})
@config_option
@click.option("-f", "--file", "spec_file", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="task spec TOML: [task] or [[task]] tables, an array, or a DAG of [tasks.NAME] (README)")
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
@click.option("--est-runtime", type=click.FloatRange(min=0, min_open=True), default=None, metavar="SECONDS",
              help="your estimate of the run time: contractors bid with it, and the measured run time is "
                   "checked against their bids (bid accuracy)")
@click.option("--env", multiple=True, help="K=V environment variable (repeatable)")
@click.option("--cwd", default=None, help="working directory of the command")
@click.option("--name", default="", help="a name to show in listings")
@click.option("--wait", is_flag=True, help="wait for the task; exit with its exit code")
@json_option
@click.argument("command", nargs=-1, type=click.UNPROCESSED)
def submit(config, spec_file, cpus, mem, gpus, gpu_mem, label, prefer, priority, timeout, retries, deadline,
           est_runtime, env, cwd, name, wait, as_json, command) -> None:
    """Submit a task: xchanged submit [options] -- CMD ARG..."""
    try:
        if spec_file is not None:
            specs = specfile.load(spec_file)
        elif command:
            specs = [build_spec(list(command), cpus=cpus, mem=mem, gpus=gpus, gpu_mem=gpu_mem,
                                labels=key_values(label, "--label"), prefer=key_values(prefer, "--prefer"),
                                priority=priority, timeout=timeout, retries=retries, deadline=deadline,
                                env=key_values(env, "--env"), cwd=cwd, name=name, est_runtime=est_runtime)]
        else:
            raise click.UsageError("give a command after --, or a spec file with -f")
    except specfile.SpecFileError as exc:
        raise Exit(str(exc), 2) from None
    except ValueError as exc:
        raise click.UsageError(str(exc)) from None
    with client_for(config) as client:
        docs = call_daemon(lambda: client.submit_specs(specs))
        if not wait:
            if as_json:
                print_json(docs[0] if len(docs) == 1 else docs)
            else:
                for doc in docs:
                    click.echo(doc["id"])
            return
        finals = [composite.wait_with_bar(client, doc["id"], quiet=as_json) if doc.get("composite")
                  else _wait_with_progress(client, doc["id"], quiet=as_json) for doc in docs]
    if as_json:
        print_json(finals[0] if len(finals) == 1 else finals)
    failed = [d for d in finals if d["state"] != "succeeded"]
    if failed:
        code = failed[0].get("exit_code")
        sys.exit(code if isinstance(code, int) and 0 < code < 256 else 1)


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


@click.command()
@config_option
@json_option
@click.option("--all-parts", is_flag=True, help="a composite: list every part (default: the first 20)")
@click.argument("task_id")
def status(config, as_json, all_parts, task_id) -> None:
    """One task: state, node, attempts, exit code, times (a composite: its parts too)."""
    def fetch() -> dict:
        try:
            return client.status(task_id)
        except ManagerUnreachable as exc:          # said with what was last known (--json: as a document)
            unreachable(exc, as_json)
    with client_for(config) as client:
        doc = call_daemon(fetch)
    if as_json:
        print_json(doc)
        return
    exit_code = doc.get("exit_code")
    console.print(f"[bold]{doc['id']}[/]  {doc['state']}  priority {doc['priority']}  "
                  f"node {doc.get('node') or '-'}  exit {exit_code if exit_code is not None else '-'}")
    if doc.get("composite"):
        console.print(f"composite {doc.get('name') or ''} (the node above coordinates its parts)".replace("  ", " "))
    else:
        console.print(f"command: {' '.join(doc.get('command', []))}")
    if doc.get("reason"):
        console.print(f"reason: {doc['reason']}" + (f" ({doc['reason_code']})" if doc.get("reason_code") else ""))
    submitter = (doc.get("spec") or {}).get("user")
    if submitter:
        console.print(f"submitted by: {submitter}")
    from rich.table import Table  # not at the top: `xchanged run` never loads rich
    table = Table("attempt", "node", "state", "exit", "started", "ended", "peak mem", "cpu s", "reason")
    for a in doc["attempts"]:
        peak, cpu = a.get("peak_mem"), a.get("cpu_s")
        reason = a["reason"] or ""
        if a.get("reason_code") and a["reason_code"] not in reason:
            reason = f"{a['reason_code']}: {reason}" if reason else a["reason_code"]
        table.add_row(str(a["attempt"]), a["node"] or "-", a["state"],
                      "-" if a["exit_code"] is None else str(a["exit_code"]), clock_time(a["started"]),
                      clock_time(a["ended"]), "-" if peak is None else f"{peak / (1 << 20):.1f}M",
                      "-" if cpu is None else f"{cpu:.2f}", reason)
    if doc["attempts"]:
        console.print(table)
    if doc.get("composite"):
        composite.print_parts(doc, None if all_parts else 20)


@click.command()
@config_option
@json_option
@click.option("--state", default=None, help="only tasks in this state")
@click.option("--cluster", is_flag=True, help="the tasks of every manager in the cluster")
@click.option("--since", default=None, help="only tasks submitted since: a duration back from now (1h, 7d) or an "
              "ISO 8601 time")
@click.option("--limit", type=click.IntRange(1, 10_000), default=None,
              help="the newest this many (default 100; with --cluster: per manager)")
def tasks(config, as_json, state, cluster, since, limit) -> None:
    """Tasks this node manages, newest last: the newest 100 unless --limit (--cluster: every node's)."""
    from ..client import since_ms
    if since is not None:
        if cluster:
            raise click.UsageError("--since lists this node's tasks; it does not go with --cluster")
        try:
            since = since_ms(since) / 1000
        except ValueError as exc:
            raise click.BadParameter(str(exc), param_hint="--since") from None
    with client_for(config) as client:
        if cluster:
            show_cluster_tasks(client, state, limit or 100, as_json)
            return
        docs = call_daemon(lambda: client.tasks(state, since=since, limit=limit))
    if as_json:
        print_json(docs)
        return
    from rich.table import Table  # not at the top: `xchanged run` never loads rich
    table = Table(id_column(), "state", "priority", "node", "attempts", "exit", "command")
    for d in docs:
        progress = d.get("progress")
        what = (f"{d.get('name') or 'composite'}: {progress['done']}/{progress['total']} parts" if progress
                else " ".join(d.get("command", []))[:60])
        table.add_row(d["id"], d["state"], d["priority"], d.get("node") or "-", str(len(d["attempts"])),
                      "-" if d.get("exit_code") is None else str(d["exit_code"]), what)
    console.print(table)


@click.command()
@config_option
@click.option("--stderr", "show_stderr", is_flag=True, help="print the captured stderr instead")
@click.option("--attempt", type=int, default=None)
@click.option("--part", default=None, help="a composite: the part's key (like 3 or build[2])")
@click.option("-f", "--follow", is_flag=True, help="print the output as it is written, until the task ends")
@json_option
@click.argument("task_id")
def logs(config, show_stderr, attempt, part, follow, as_json, task_id) -> None:
    """Captured output of the task's last attempt (running: what it wrote so far; -f: follow it), or of
    one part of a composite."""
    if follow and part is not None:
        raise click.UsageError("to follow a part, give the part's own id (status --json lists it), not --part")
    with client_for(config) as client:
        if follow:
            follow_logs(client, task_id, show_stderr, as_json)
            return
        doc = call_daemon(lambda: client.logs(task_id, attempt, part))
    if as_json:
        print_json(doc)
        return
    if doc.get("note"):
        err_console.print(f"({doc['note']})")
    click.echo(doc["stderr"] if show_stderr else doc["stdout"], nl=False)


@click.command()
@config_option
@json_option
@click.argument("task_id")
def cancel(config, as_json, task_id) -> None:
    """Cancel a task, killing its running attempt."""
    with client_for(config) as client:
        doc = call_daemon(lambda: client.cancel(task_id))
    if as_json:
        print_json(doc)
    else:
        click.echo(f"{doc['id']}: {doc['state']}")


@click.command("wait")
@config_option
@json_option
@click.option("--timeout", type=float, default=None, help="give up after this many seconds (exit 1)")
@click.argument("task_id")
def wait_for(config, as_json, timeout, task_id) -> None:
    """Wait for a task to end, whichever node manages it; exit with its exit code, as submit --wait."""
    def until_done() -> dict:
        try:
            if timeout is not None or as_json:
                return client.wait(task_id, timeout=timeout)
            return _wait_with_progress(client, task_id, quiet=False)
        except ManagerUnreachable as exc:
            unreachable(exc, as_json)
    with client_for(config) as client:
        doc = call_daemon(until_done)
    if as_json:
        print_json(doc)
    elif timeout is not None:
        click.echo(f"{doc['id']}: {doc['state']}")
    if doc["state"] != "succeeded":
        code = doc.get("exit_code")
        sys.exit(code if isinstance(code, int) and 0 < code < 256 else 1)


COMMANDS = [submit, status, tasks, logs, cancel, wait_for]
