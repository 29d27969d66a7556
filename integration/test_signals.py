"""Signals a real daemon gets from systemd: SIGHUP (`systemctl reload`) must not stop it."""

import signal

from xchanged.localcluster import LocalCluster


def test_sighup_is_logged_and_ignored():
    with LocalCluster([1]) as cluster:
        node = cluster.nodes[0]
        node.process.send_signal(signal.SIGHUP)
        with cluster.client(node) as client:
            assert client.ping()["name"] == node.name
            tid = client.submit(["sh", "-c", "echo still here"])
            assert client.wait(tid, timeout=60)["state"] == "succeeded"
            assert client.logs(tid)["stdout"] == "still here\n"
        assert node.process.poll() is None
        assert "reload is not supported yet; ignoring SIGHUP" in cluster.tail_log(node, lines=200)
