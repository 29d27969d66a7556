"""What every `xchanged` command shares: the -c/--json options, output helpers, and how errors become
exit codes.

Exit codes: 0 success; 1 the task failed (or the daemon refused the request); 2 usage or config
error; 3 daemon not reachable (the message names the socket tried).
"""

from __future__ import annotations

import json
from datetime import datetime
from typing import TYPE_CHECKING, Any, Callable, TypeVar

import click

from ..client import Client, DaemonUnreachable, RequestFailed
from ..config import ConfigError

if TYPE_CHECKING:
    from rich.console import Console

T = TypeVar("T")


class LazyConsole:
    """A rich Console made on first use. `xchanged run` (the daemon) goes through this package but prints
    nothing with rich, so it never imports rich: about 1.5 MiB of resident memory saved for its whole
    life (docs/operations.md). The rest of the CLI uses it as the Console it stands for."""

    def __init__(self, **options: Any) -> None:
        object.__setattr__(self, "_options", options)
        object.__setattr__(self, "_console", None)

    @property
    def real(self) -> Console:
        if self._console is None:
            from rich.console import Console
            object.__setattr__(self, "_console", Console(**self._options))
        return self._console

    def __getattr__(self, name: str) -> Any:
        return getattr(self.real, name)

    def __setattr__(self, name: str, value: Any) -> None:
        setattr(self.real, name, value)

    def __enter__(self) -> Console:            # rich's Live does `with console:`
        return self.real.__enter__()

    def __exit__(self, *exc: Any) -> None:
        self.real.__exit__(*exc)


console: Console = LazyConsole()                    # type: ignore[assignment]  (stands for one)
err_console: Console = LazyConsole(stderr=True)     # type: ignore[assignment]

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


def print_json(doc) -> None:
    click.echo(json.dumps(doc, indent=2, sort_keys=True))


def clock_time(ms: int | None) -> str:
    """An epoch-ms time as HH:MM:SS local time, "-" when unset."""
    return datetime.fromtimestamp(ms / 1000).strftime("%H:%M:%S") if ms else "-"


def key_values(pairs: tuple[str, ...], option: str) -> dict[str, str]:
    """Repeated K=V options as a dict; a usage error (exit 2) names the option otherwise."""
    out = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise click.BadParameter(f"expected K=V, got {pair!r}", param_hint=option)
        out[key] = value
    return out
