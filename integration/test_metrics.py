"""The Prometheus endpoint of a real daemon reports its slots, tasks and peers."""

import urllib.request

from xchanged.localcluster import LocalCluster, free_port


def test_metrics_endpoint_reports_node_state():
    port = free_port()
    with LocalCluster([3], settings={"metrics": {"listen": f"127.0.0.1:{port}"}}) as cluster:
        with cluster.client(0) as client:
            tid = client.submit(["true"])
            assert client.wait(tid, timeout=60)["state"] == "succeeded"
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
            body = response.read().decode()
    assert "xchanged_slots 3.0" in body
    assert 'xchanged_tasks_finished_total{state="succeeded"} 1.0' in body
    assert 'xchanged_tasks{state="queued"} 0.0' in body
    assert "xchanged_attempts_completed_total 1.0" in body
