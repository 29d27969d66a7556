"""The `xchanged` command line: click commands that call the Client and format what it returns.

One module per group of commands, each listing what it adds in `COMMANDS`:

    setup    init, run, config check, demo       tasks      submit, status, tasks, logs, cancel, wait
    cluster  peers, stats, top                   composite  resubmit (and the parts views of tasks)
    audit    audit show/verify/export/prove/evidence/head
    web      dashboard, history (the web dashboard's URL; the load history it charts)
    ops      drain, undrain, reload
    ca       ca init/sign/revoke/show (a cluster certificate authority)
    sim      sim (a whole cluster of protocol cores in this process; no daemon)

To add a command, write it in one of these modules (or in a new one, imported and listed below) and
put it in that module's COMMANDS; shared options, output helpers and exit codes are in `common`.

Exit codes: 0 success; 1 the task failed (with --wait: the task's own exit code when it has one);
2 usage or config error; 3 daemon not reachable (the message names the socket tried).
"""

from __future__ import annotations

import click

from .. import __version__
from . import audit, ca, cluster, composite, ops, setup, sim, tasks, web


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="xchanged")
def main() -> None:
    """xchanged: share work across a fleet of hosts by signed Contract Net bidding."""


for _module in (setup, tasks, composite, cluster, audit, web, ops, ca, sim):
    for _command in _module.COMMANDS:
        main.add_command(_command)
del _module, _command

__all__ = ["main"]
