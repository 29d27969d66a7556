"""Real daemons that advertise their address as users write it: a bare IP or a host name, the port
being the listen port (`[network] advertise`)."""

from __future__ import annotations

import pytest

from xchanged.localcluster import LocalCluster


@pytest.mark.parametrize("advertise", ["127.0.0.1", "localhost"])
def test_a_bare_advertised_host_gets_the_listen_port_and_works(advertise):
    with LocalCluster([1, 1], labels=[{}, {"role": "worker"}],
                      settings={"network": {"advertise": advertise}}) as cluster:
        manager, worker = cluster.nodes
        with cluster.client(manager) as c:
            peers = {p["name"]: p for p in c.peers()}
            assert peers["node1"]["address"] == f"{advertise}:{manager.port}"
            assert peers["node2"]["address"] == f"{advertise}:{worker.port}" and peers["node2"]["health"] == "alive"
            # an award and its result travel both ways over the advertised addresses
            docs = [c.wait(t, timeout=60) for t in c.submit_many([["true"]] * 4, labels={"role": "worker"})]
        assert [(d["state"], d["node"]) for d in docs] == [("succeeded", "node2")] * 4
