"""Signals a real daemon gets from systemd: SIGHUP (`systemctl reload`) re-reads the config and
never stops the daemon, even when the new config is bad; SIGTERM stops it gracefully."""

import signal

from xchanged.localcluster import LocalCluster


def test_sighup_reloads_and_a_bad_config_is_logged_and_ignored():
    with LocalCluster([1]) as cluster:
        node = cluster.nodes[0]
        good = node.files.config.read_text()
        node.files.config.write_text(good.replace("slots = 1", "slots = 3"))
        node.process.send_signal(signal.SIGHUP)
        with cluster.client(node) as client:
            cluster.wait_for(lambda: client.peers()[0]["slots"] == 3, 30, "the reload")
            node.files.config.write_text(good.replace("slots = 1", "slots = 0"))
            node.process.send_signal(signal.SIGHUP)
            cluster.wait_for(lambda: "reload rejected" in cluster.tail_log(node, lines=200), 30, "the rejection")
            assert client.ping()["name"] == node.name
            tid = client.submit(["sh", "-c", "echo still here"])
            assert client.wait(tid, timeout=60)["state"] == "succeeded"
            assert client.logs(tid)["stdout"] == "still here\n"
            assert client.peers()[0]["slots"] == 3
        assert node.process.poll() is None
        log = cluster.tail_log(node, lines=200)
        assert "reload rejected, the daemon keeps its config: " in log and "node.slots: must be at least 1" in log
        node.process.send_signal(signal.SIGTERM)
        assert node.process.wait(30) == 0
