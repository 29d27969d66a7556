"""`xchanged peers | stats | top`: what this node knows of the cluster."""

from __future__ import annotations

import time

import click

from ..client import Client
from ..config import format_size
from .common import call_daemon, client_for, config_option, console, json_option, print_json


@click.command()
@config_option
@json_option
@click.option("--all", "show_all", is_flag=True,
              help="also list mDNS services whose keys are not trusted (health 'untrusted'; never used)")
def peers(config, as_json, show_all) -> None:
    """Peers: health, age of the last signal, free slots, CPU, memory, GPUs (free memory, utilisation), labels."""
    with client_for(config) as client:
        docs = call_daemon(lambda: client.peers(all=show_all))
    if as_json:
        print_json(docs)
        return
    from rich.table import Table  # not at the top: `xchanged run` never loads rich
    table = Table("name", "id", "address", "health", "seen", "slots", "free", "cpu %", "mem avail", "gpus", "labels")
    for p in docs:
        health = p["health"] + (", draining" if p.get("draining") else "")
        table.add_row(p["name"] + (" (self)" if p.get("self") else ""), p["id"], p["address"], health,
                      f"{p['last_seen_s']:.1f}s" if p["last_seen_s"] is not None else "-", str(p["slots"]),
                      str(p["slots_free"]), f"{p['cpu_percent']:.0f}", format_size(p["mem_available"]),
                      gpu_lines(p["gpus"]), ",".join(f"{k}={v}" for k, v in p["labels"].items()))
    console.print(table)


def gpu_lines(gpus: list[dict]) -> str:
    """One line per GPU: its (NVML) index, free of total memory, utilisation; "-" for none."""
    return "\n".join(f"{g['index']}: {format_size(g['mem_free'])}/{format_size(g['mem_total'])} free, "
                     f"{g['util_percent']:.0f}%" for g in gpus) or "-"


@click.command()
@config_option
@json_option
def stats(config, as_json) -> None:
    """Cluster totals and utilisation."""
    with client_for(config) as client:
        doc = call_daemon(client.stats)
    if as_json:
        print_json(doc)
        return
    for key in ("total_agents", "healthy_agents", "total_capacity", "current_load", "utilization",
                "free_slots", "queued_total", "queued_jobs", "assigned_jobs", "running_jobs", "total_jobs_queued",
                "total_jobs_assigned", "total_jobs_failed", "total_jobs_retried", "success_rate", "load_variance",
                "fairness_index", "work_fairness_index", "draining"):
        console.print(f"{key:22} {doc.get(key)}")
    latency = doc.get("queue_latency") or {}
    console.print(f"{'queue_latency':22} p50 {latency.get('p50')}s  p90 {latency.get('p90')}s  "
                  f"p99 {latency.get('p99')}s  ({latency.get('count')} tasks)")
    drops = doc.get("frames_dropped") or {}
    if drops:
        console.print(f"{'frames_dropped':22} " + ", ".join(f"{k} {v}" for k, v in sorted(drops.items())))
    sec = doc.get("security")
    if sec:
        denied = ", ".join(f"{k} {v}" for k, v in sorted(sec["zap_denied"].items())) or "none"
        console.print(f"{'transport':22} {sec['transport']}; connections refused: {denied}; trusted: "
                      f"{sec['trust']['authorized_keys']} keys, {sec['trust']['certified']} by certificate")
    from rich.table import Table  # not at the top: `xchanged run` never loads rich
    table = Table("agent", "health", "slots", "free", "running", "util %", "queued", "cpu %", "gpus", "success rate",
                  "score")
    for a in doc["agents"]:
        table.add_row(a["name"], a["health"], str(a["slots"]), str(a["slots_free"]), str(a["running"]),
                      f"{a.get('load_percent', 0):.0f}", str(a["queued"]), f"{a['cpu_percent']:.0f}",
                      gpu_lines(a.get("gpus") or []),
                      "-" if a.get("success_rate") is None else f"{a['success_rate']:.2f}",
                      "-" if a.get("score") is None else f"{a['score']:.2f}")
    console.print(table)


@click.command()
@config_option
@click.option("--interval", type=float, default=1.0, show_default=True, help="seconds between refreshes")
@click.option("--once", is_flag=True, help="draw one frame and exit")
def top(config, interval, once) -> None:
    """Live view of peers and tasks (Ctrl-C to quit)."""
    from rich.console import Group
    from rich.live import Live
    from rich.table import Table
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


COMMANDS = [peers, stats, top]
