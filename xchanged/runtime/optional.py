"""The daemon's optional servers, whose libraries are imported only when the config turns them on.

Rule: the daemon reaches `metrics` (prometheus_client) and `http_api` (aiohttp) only through here, and
`discovery` imports zeroconf only when mDNS starts, so a node with `[metrics] listen = ""`, no
`[http] listen` and `[network] mdns = false` never loads those libraries: each costs resident memory
for the daemon's whole life whether it serves anything or not (figures in docs/operations.md; a test
starts a real daemon and checks what it imported). A reload that turns one on imports it then.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Callable

if TYPE_CHECKING:
    from ..config import HttpConfig
    from ..protocol.readout import Counters
    from .daemon import Daemon
    from .http_api import HttpServer
    from .metrics import MetricsServer
    from .views import Figures

MIN_TOKEN_CHARS = 16


class TokenError(ValueError):
    """The token file cannot be used (the daemon refuses to start: it would serve writes unguarded)."""


def read_token(config: HttpConfig) -> str | None:
    """The bearer token from `[http] token_file` (None when none is set); TokenError if unusable."""
    if not config.listen or config.token_file is None:
        return None
    try:
        token = config.token_file.read_text().strip()
    except (OSError, UnicodeDecodeError) as exc:
        raise TokenError(f"cannot read http.token_file {config.token_file}: {exc}") from None
    if len(token) < MIN_TOKEN_CHARS or any(c.isspace() for c in token):
        raise TokenError(f"http.token_file {config.token_file}: the token must be one word of at least "
                         f"{MIN_TOKEN_CHARS} characters (e.g. `openssl rand -hex 32`)")
    return token


def serve_metrics(listen: str, get_counters: Callable[[], Figures | Counters | None]) -> MetricsServer | None:
    """metrics.serve_metrics when `[metrics] listen` is set; None (and no prometheus_client) when not."""
    if not listen:
        return None
    from .metrics import serve_metrics as serve
    return serve(listen, get_counters)


async def start_http(daemon: Daemon) -> HttpServer | None:
    """http_api.start_http when `[http] listen` is set; None (and no aiohttp) when not."""
    if not daemon.config.http.listen:
        return None
    from .http_api import start_http as start
    return await start(daemon)
