"""What every `xchanged` command shares: the -c/--json options and how errors become exit codes.

Exit codes: 0 success; 1 the task failed (or the daemon refused the request); 2 usage or config
error; 3 daemon not reachable (the message names the socket tried).
"""

from __future__ import annotations

from typing import Callable, TypeVar

import click

from .client import Client, DaemonUnreachable, RequestFailed
from .config import ConfigError

T = TypeVar("T")

config_option = click.option("-c", "--config", "config", type=click.Path(dir_okay=False),
                             envvar="XCHANGED_CONFIG", help="config file (default: $XCHANGED_CONFIG, "
                             "then /etc/xchanged/xchanged.toml)")
json_option = click.option("--json", "as_json", is_flag=True, help="print one JSON document")


class Exit(click.ClickException):
    """A clean exit with a message on stderr and a given code."""

    def __init__(self, message: str, code: int):
        super().__init__(message)
        self.exit_code = code


def call_daemon(fn: Callable[[], T]) -> T:
    """Run a client call, turning its failures into the CLI's exit codes."""
    try:
        return fn()
    except DaemonUnreachable as exc:
        raise Exit(str(exc), 3) from None
    except RequestFailed as exc:
        raise Exit(str(exc), 1) from None
    except ConfigError as exc:
        raise Exit(str(exc), 2) from None


def client_for(config: str | None) -> Client:
    return call_daemon(lambda: Client(config=config))
