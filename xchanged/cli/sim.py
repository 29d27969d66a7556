"""`xchanged sim`: run a whole cluster of the real protocol core in this process, on a virtual clock
and network, under a drawn workload, and report how it scales (sim/run.py says what is measured).

No daemon is involved: this is the simulator (sim/cluster.py), with a cheap stand-in for signatures.
"""

from __future__ import annotations

import sys

import click

from ..protocol.membership import GossipSettings
from .common import console, json_option, print_json

KEYS = ("messages_per_task", "gossip_bytes_per_node_s", "spread_99_s", "detection_s", "false_positives",
        "response_vs_omniscient", "tasks_lost")
EXPLAINED = {
    "messages_per_task": "negotiation frames per task (cfp, bid, award, accept, progress, result...)",
    "gossip_bytes_per_node_s": "membership bytes sent per node per second (loads, gossip, probes, verdicts)",
    "spread_99_s": "a node's announced load change until 99% of nodes have it",
    "detection_s": "a crash until every node that held the node sees it dead (worst crash)",
    "false_positives": "live nodes declared dead",
    "response_vs_omniscient": "mean response time / the omniscient scheduler's on the same workload",
    "tasks_lost": "tasks submitted but not succeeded at the end",
}


def _partition(value: str | None) -> tuple[float, float, float] | None:
    if not value:
        return None
    try:
        at, seconds, fraction = (float(x) for x in value.split(":"))
    except ValueError:
        raise click.BadParameter("expected AT:SECONDS:FRACTION, e.g. 5:10:0.3", param_hint="--partition") from None
    if at < 0 or seconds <= 0 or not 0 < fraction < 1:
        raise click.BadParameter("need AT >= 0, SECONDS > 0 and 0 < FRACTION < 1", param_hint="--partition")
    return at, seconds, fraction


@click.command()
@click.option("--nodes", type=click.IntRange(min=2), required=True, help="nodes at the start")
@click.option("--tasks", type=click.IntRange(min=1), required=True, help="tasks in the workload")
@click.option("--load", type=click.FloatRange(0, 1, min_open=True), default=0.8, show_default=True,
              help="target utilisation of all slots (sets the Poisson arrival rate)")
@click.option("--seed", type=int, default=1, show_default=True, help="same seed, same run")
@click.option("--crash-rate", type=click.FloatRange(min=0), default=0.0, show_default=True,
              help="node crashes a second, cluster-wide, while tasks arrive (each node restarts after --downtime)")
@click.option("--downtime", type=click.FloatRange(min=0), default=5.0, show_default=True,
              help="seconds a crashed node stays down")
@click.option("--join-rate", type=click.FloatRange(min=0), default=0.0, show_default=True,
              help="fresh nodes joining a second while tasks arrive")
@click.option("--latency", type=click.FloatRange(min=0), default=0.001, show_default=True, help="seconds per frame")
@click.option("--jitter", type=click.FloatRange(min=0), default=0.0005, show_default=True,
              help="extra random delay per frame, up to this")
@click.option("--loss", type=click.FloatRange(0, 1, max_open=True), default=0.0, show_default=True,
              help="probability that a frame is lost (during the workload)")
@click.option("--partition", "partition", default=None, metavar="AT:SECONDS:FRACTION",
              help="cut FRACTION of the nodes off the rest for SECONDS, AT seconds into the workload")
@click.option("--warmup", type=click.FloatRange(min=0), default=8.0, show_default=True,
              help="seconds the cluster gossips before anything is measured")
@click.option("--view-size", type=click.IntRange(min=1), default=GossipSettings().view_size, show_default=True,
              help="gossip.view_size of every node")
@click.option("--sample-size", type=click.IntRange(min=1), default=GossipSettings().sample_size, show_default=True,
              help="gossip.sample_size of every node")
@json_option
@click.option("-v", "--verbose", is_flag=True, help="progress on stderr")
def sim(nodes, tasks, load, seed, crash_rate, downtime, join_rate, latency, jitter, loss, partition, warmup,
        view_size, sample_size, as_json, verbose) -> None:
    """Simulate a cluster of NODES real protocol cores (no daemons) running TASKS tasks, and report
    messages per task, gossip bandwidth, spread, failure detection, false positives, response time
    against an omniscient scheduler, and tasks lost."""
    # imported here, not at the top: `xchanged run` (the daemon) imports this module and never needs them
    from rich.table import Table

    from ..sim.run import SimOptions, simulate

    opts = SimOptions(nodes=nodes, tasks=tasks, load=load, seed=seed, crash_rate=crash_rate, downtime=downtime,
                      join_rate=join_rate, latency=latency, jitter=jitter, loss=loss, partition=_partition(partition),
                      warmup=warmup, gossip=GossipSettings(view_size=view_size, sample_size=sample_size))
    result = simulate(opts, progress=(lambda text: print(text, file=sys.stderr, flush=True)) if verbose else None)
    if as_json:
        print_json(result)
        return
    table = Table("measure", "value", "what")
    for key in KEYS:
        table.add_row(key, str(result[key]), EXPLAINED[key])
    console.print(table)
    console.print(", ".join(f"{k}={v}" for k, v in result.items() if k not in KEYS))


COMMANDS = [sim]
