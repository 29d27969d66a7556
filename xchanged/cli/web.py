"""`xchanged dashboard | history`: where this node's web dashboard is, and the load history it charts."""

from __future__ import annotations

import click

from ..config import default_config_path, load_config, parse_host_port
from .common import Exit, call_daemon, client_for, clock_time, config_option, console, json_option, print_json


@click.command()
@config_option
@json_option
def dashboard(config, as_json) -> None:
    """The URL of this node's web dashboard and JSON API ([http] listen), if it serves one."""
    http = call_daemon(lambda: load_config(config or default_config_path(), check_files=False)).http
    if not http.listen:
        raise Exit('the dashboard is off: set [http] listen = "127.0.0.1:7947" and restart the daemon', 1)
    host, port = parse_host_port(http.listen)
    shown = "127.0.0.1" if host in ("0.0.0.0", "") else "[::1]" if host == "::" else \
        f"[{host}]" if ":" in host else host
    url = f"http://{shown}:{port}/"
    doc = {"url": url, "api": url + "api/openapi.json", "token": http.token_file is not None,
           "token_reads": http.token_reads}
    if as_json:
        print_json(doc)
        return
    console.print(f"{url}  (API: {doc['api']}" + ("; writes need the token of [http] token_file)" if doc["token"]
                                                 else ")"))


@click.command()
@config_option
@json_option
def history(config, as_json) -> None:
    """Cluster utilisation and queue over the last minutes, as the daemon sampled them."""
    with client_for(config) as client:
        doc = call_daemon(client.history)
    if as_json:
        print_json(doc)
        return
    for s in doc["samples"]:
        console.print(f"{clock_time(s['t'])}  {s['utilization_percent']:5.1f}% busy  {s['running']:4} running of "
                      f"{s['slots']:<4} {s['queued']:5} queued ({s['queued_here']} here)  "
                      f"{s['alive']}/{s['nodes']} alive")


COMMANDS = [dashboard, history]
