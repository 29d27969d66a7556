"""What a real daemon imports (issue 13, idle memory; docs/operations.md): with mDNS, /metrics and the
HTTP API off it loads none of zeroconf, prometheus_client, aiohttp, rich (nor hypothesis, a test-only
library); with them on it loads the first three. The daemon runs as `python -m xchanged run` with
PYTHONPROFILEIMPORTTIME=1, which makes Python itself write every import, whenever it happens, to the
daemon's stderr (its log here), so lazy imports made after start are seen too."""

from __future__ import annotations

import re

from xchanged.localcluster import LocalCluster
from xchanged.runtime.resources import nvml_library_present

OPTIONAL = {"zeroconf", "prometheus_client", "aiohttp"}
NEVER = {"rich", "hypothesis"}
IMPORT_LINE = re.compile(r"^import time:\s+\d+ \|\s+\d+ \|\s*([\w.]+)\s*$", re.M)


def imported_packages(settings: dict | None) -> set[str]:
    """Top-level packages a 1-node daemon imported by the time it answers and reads its resources."""
    cluster = LocalCluster([1], settings=settings)
    try:
        cluster.launch_prefix = ["env", "PYTHONPROFILEIMPORTTIME=1"]
        cluster.start()
        with cluster.client(0) as client:
            assert client.wait(client.submit(["true"]), timeout=60)["state"] == "succeeded"
        log = cluster.nodes[0].log_path.read_text(errors="replace")
    finally:
        cluster.cleanup()
    return {m.split(".")[0] for m in IMPORT_LINE.findall(log)}


def test_a_daemon_with_the_optional_servers_off_loads_none_of_their_libraries():
    got = imported_packages(None)
    assert {"xchanged", "zmq", "cryptography"} <= got          # the log is read right
    assert not got & (OPTIONAL | NEVER), sorted(got & (OPTIONAL | NEVER))
    if not nvml_library_present():
        assert "pynvml" not in got


def test_turning_them_on_loads_them():
    got = imported_packages({"network": {"mdns": True}, "metrics": {"listen": "127.0.0.1:0"},
                             "http": {"listen": "127.0.0.1:0"}})
    assert OPTIONAL <= got, sorted(OPTIONAL - got)
    assert not got & NEVER
