"""An in-process daemon: its input queue when it is full, its metrics read from another thread."""

from __future__ import annotations

import asyncio
import logging
import urllib.request

from tests.runtime.inprocess import running_daemon
from xchanged.client import build_spec
from xchanged.localcluster import free_port
from xchanged.protocol.events import FrameDropped
from xchanged.runtime import daemon as daemon_module


def test_a_full_input_queue_logs_one_line_not_one_per_drop(tmp_path, caplog):
    caplog.set_level(logging.ERROR, logger="xchanged")

    async def scenario():
        async with running_daemon(tmp_path) as daemon:
            for _ in range(daemon_module.MAX_INPUTS + 5_000):    # the loop cannot run meanwhile
                daemon.put(FrameDropped("flood"))
            return daemon.inputs.qsize()
    assert asyncio.run(scenario()) == daemon_module.MAX_INPUTS
    full = [r.getMessage() for r in caplog.records if "input queue full" in r.getMessage()]
    assert full == ["input queue full; dropped 1 since the last report (FrameDropped 1)",     # at once
                    "input queue full; dropped 4999 since the last report (FrameDropped 4999)"]  # at stop


def test_metrics_are_read_on_the_loop_while_it_runs(tmp_path):
    """The metrics server's thread never reads the node: it asks the loop for a snapshot."""
    port = free_port()

    async def scenario():
        async with running_daemon(tmp_path, metrics={"listen": f"127.0.0.1:{port}"}) as daemon:
            [doc] = await daemon.control.handle("submit", {"specs": [build_spec(["true"], labels={"x": "nowhere"})]})
            body = await asyncio.to_thread(scrape, f"http://127.0.0.1:{port}/metrics")
            snapshot = await asyncio.to_thread(daemon.figures)        # as the metrics thread asks
            assert snapshot.core.tasks_by_state == {"queued": 1} and snapshot.core.slots == 2
            return doc, body
    doc, body = asyncio.run(scenario())
    assert doc["state"] == "queued"
    assert "xchanged_slots 2.0" in body and 'xchanged_tasks{state="queued"} 1.0' in body


def scrape(url: str) -> str:
    with urllib.request.urlopen(url, timeout=10) as response:
        return response.read().decode()


def test_an_advertised_host_name_does_not_turn_mdns_off(tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="xchanged")

    async def scenario():
        async with running_daemon(tmp_path, network={"advertise": "localhost", "mdns": True}) as daemon:
            return daemon.address, daemon.transport.port, daemon.discovery is not None
    address, port, discovering = asyncio.run(scenario())
    assert address == f"localhost:{port}"
    lines = [r.getMessage() for r in caplog.records]
    assert not any("mDNS discovery unavailable" in line for line in lines), lines
    assert discovering and any(f"at 127.0.0.1:{port} (advertised localhost:{port})" in line for line in lines)


def test_submit_est_runtime_reaches_the_task_spec(tmp_path):
    """`xchanged submit --est-runtime SECONDS` (docs/balancing.md): the CLI, the Client, the daemon."""
    import json

    from click.testing import CliRunner

    from xchanged.cli import main
    from xchanged.client import Client

    conf = tmp_path / "cli.toml"
    conf.write_text(f'[network]\ncontrol = "{tmp_path / "control.sock"}"\n')

    def submit(*args):
        return CliRunner().invoke(main, ["submit", "-c", str(conf), *args], catch_exceptions=False)

    async def scenario():
        async with running_daemon(tmp_path):
            def calls():
                cli = submit("--json", "--est-runtime", "2.5", "--", "true")
                with Client(socket=tmp_path / "control.sock") as c:
                    api = c.status(c.submit(["true"], est_runtime=4))
                bad = [submit("--est-runtime", value, "--", "true") for value in ("0", "soon")]
                return cli, api, *bad
            return await asyncio.to_thread(calls)
    cli, api, zero, word = asyncio.run(scenario())
    assert cli.exit_code == 0 and json.loads(cli.output)["spec"]["est_runtime"] == 2.5
    assert api["spec"]["est_runtime"] == 4
    assert zero.exit_code == 2 and word.exit_code == 2
