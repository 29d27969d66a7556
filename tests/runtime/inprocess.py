"""A real daemon inside the test's own event loop: for tests of what the daemon does with a request,
without a subprocess (no peers: mDNS and metrics off, a port picked by the kernel)."""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path
from typing import AsyncIterator

from xchanged.config import config_from_dict
from xchanged.localcluster import _toml_value
from xchanged.provision import init_node
from xchanged.runtime.daemon import Daemon


def daemon_config(directory: Path, **sections: dict):
    files = init_node(directory, "solo", config_text="", force=True)
    data = {"node": {"name": "solo", "state_dir": str(directory / "state"), "slots": 2},
            "network": {"listen": "127.0.0.1:0", "control": str(directory / "control.sock"), "mdns": False},
            "metrics": {"listen": ""},
            "bidding": {"overload_cpu_percent": 100}}   # a lone node on a busy test host refused its own work
    for name, values in sections.items():
        data.setdefault(name, {}).update(values)
    return config_from_dict(data, base_dir=files.directory)


def config_file(directory: Path, **sections: dict) -> Path:
    """A config file for an in-process daemon (what `daemon_config` builds, as TOML next to its keys),
    for what needs a file: a reload re-reads it. Rewrite it with `write_config`."""
    init_node(directory, "solo", config_text="", force=True)
    path = directory / "xchanged.toml"
    write_config(path, **sections)
    return path


def write_config(path: Path, **sections: dict) -> None:
    directory = path.parent
    data = {"node": {"name": "solo", "state_dir": str(directory / "state"), "slots": 2},
            "network": {"listen": "127.0.0.1:0", "control": str(directory / "control.sock"), "mdns": False},
            "metrics": {"listen": ""},
            "bidding": {"overload_cpu_percent": 100}}   # a lone node on a busy test host refused its own work
    for name, values in sections.items():
        data.setdefault(name, {}).update(values)
    path.write_text("\n".join(f"[{name}]\n" + "".join(f"{k} = {_toml_value(v)}\n" for k, v in values.items())
                              for name, values in data.items()))


@contextlib.asynccontextmanager
async def running_daemon(directory: Path, **sections: dict) -> AsyncIterator[Daemon]:
    """A started daemon (its `ready` event set); stopped, and its run() awaited, on exit."""
    async with running(Daemon(daemon_config(directory, **sections))) as daemon:
        yield daemon


@contextlib.asynccontextmanager
async def running(daemon: Daemon) -> AsyncIterator[Daemon]:
    """Start `daemon`, wait until it is ready; stop it, and await its run(), on exit."""
    run = asyncio.create_task(daemon.run())
    ready = asyncio.create_task(daemon.ready.wait())
    await asyncio.wait({run, ready}, return_when=asyncio.FIRST_COMPLETED)
    if not ready.done():
        ready.cancel()
        await run                      # raises why it could not start
        raise RuntimeError("the daemon stopped before it was ready")
    try:
        yield daemon
    finally:
        daemon.stop()
        await run
