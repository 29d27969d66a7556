"""The HTTP API of real daemons ([http] on): the same documents as the CLI, the token on writes, the
guards of a loopback server, and the whole API checked against its own OpenAPI document with
schemathesis (a few hundred generated requests).

The daemons run only `true` ([executor] allow), so the tasks schemathesis submits never run anything.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from dataclasses import dataclass

import pytest
import requests

from xchanged.localcluster import LocalCluster, free_port
from xchanged.runtime.openapi import document

schemathesis = pytest.importorskip("schemathesis", reason="schemathesis is in the test extra: pip install -e '.[test]'")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from schemathesis.checks import (  # noqa: E402
    content_type_conformance,
    not_a_server_error,
    response_schema_conformance,
    status_code_conformance,
)

TOKEN = "s3cret-token-for-the-http-api-test"


@dataclass
class Api:
    cluster: LocalCluster
    base: str                     # node1's API (with a token)
    open_base: str                # node2's API (loopback, no token)
    session: requests.Session     # this test's (kept-alive connections are closed after each test)

    @property
    def auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {TOKEN}"}

    def cli(self, node: int, *args: str) -> subprocess.CompletedProcess:
        config = str(self.cluster.nodes[node].files.config)
        return subprocess.run([sys.executable, "-m", "xchanged", *args, "-c", config], capture_output=True, text=True,
                              timeout=60)


@pytest.fixture(scope="module")
def api(tmp_path_factory):
    base_dir = tmp_path_factory.mktemp("http-api")
    token_file = base_dir / "http.token"
    token_file.write_text(TOKEN + "\n")
    ports = [free_port(), free_port()]
    settings_by_node = {0: {"http": {"listen": f"127.0.0.1:{ports[0]}", "token_file": str(token_file)}},
                        1: {"http": {"listen": f"127.0.0.1:{ports[1]}"}}}
    cluster = LocalCluster(2, base_dir=base_dir / "cluster", settings={"executor": {"allow": ["true"]}},
                           node_settings=settings_by_node)
    with cluster, requests.Session() as session:
        yield Api(cluster, f"http://127.0.0.1:{ports[0]}", f"http://127.0.0.1:{ports[1]}", session)


@pytest.fixture(autouse=True)
def fresh_connections(api):
    """Each test's HTTP connections are its own: closed when it ends (the leak check looks)."""
    yield
    api.session.close()


@pytest.fixture(scope="module")
def finished(api):
    """A plain task and a composite, submitted over HTTP to node1 and run to their end."""
    plain = api.session.post(api.base + "/api/tasks", json={"command": ["true"], "name": "plain"}, headers=api.auth)
    assert plain.status_code == 201, plain.text
    composite = api.session.post(api.base + "/api/tasks", headers=api.auth,
                                 json={"name": "trio", "command": ["true", "{item}"], "items": ["a", "b", "c"]})
    assert composite.status_code == 201, composite.text
    ids = [plain.json()[0]["id"], composite.json()[0]["id"]]
    with api.cluster.client(0) as client:
        docs = client.wait_all(ids, timeout=90)
    assert [d["state"] for d in docs] == ["succeeded", "succeeded"], docs
    return ids


def test_documents_are_the_cli_documents(api, finished):
    plain, composite = finished
    for task_id in (plain, composite):
        page = api.session.get(f"{api.base}/api/tasks/{task_id}").json()
        cli = api.cli(0, "status", task_id, "--json")
        assert cli.returncode == 0, cli.stderr
        assert page == json.loads(cli.stdout)
    doc = api.session.get(f"{api.base}/api/tasks/{composite}").json()
    assert doc["progress"] == {"done": 3, "total": 3, "failed": 0}
    assert sorted(p["item"] for p in doc["parts"]) == ["a", "b", "c"]
    # from the other node: the same document, asked of its manager
    assert api.session.get(f"{api.open_base}/api/tasks/{plain}").json() == \
        api.session.get(f"{api.base}/api/tasks/{plain}").json()
    listed = api.session.get(f"{api.base}/api/tasks", params={"state": "succeeded", "limit": 2}).json()
    cli = json.loads(api.cli(0, "tasks", "--state", "succeeded", "--json").stdout)
    assert listed == cli[-2:]
    everyone = api.session.get(f"{api.open_base}/api/tasks", params={"cluster": "1"}).json()
    assert {m["name"]: m["status"] for m in everyone["managers"]} == {"node1": "ok", "node2": "ok"}
    assert {plain, composite} <= {t["id"] for t in everyone["tasks"]}
    logs = api.session.get(f"{api.base}/api/logs/{plain}").json()
    assert logs == json.loads(api.cli(0, "logs", plain, "--json").stdout)
    head = api.session.get(f"{api.base}/api/audit/head").json()
    assert head["node"] == "node1" and head["records"] >= head["head"]["size"] > 0
    assert set(head) == set(json.loads(api.cli(0, "audit", "head", "--json").stdout))
    stats = api.session.get(f"{api.base}/api/stats").json()
    assert set(stats) == set(json.loads(api.cli(0, "stats", "--json").stdout))
    assert stats["succeeded"] >= 2 and stats["total_agents"] == 2
    peers = api.session.get(f"{api.base}/api/peers").json()
    assert [p["name"] for p in peers] == [p["name"] for p in json.loads(api.cli(0, "peers", "--json").stdout)]
    history = api.session.get(f"{api.base}/api/history").json()
    assert history["samples"] and history["samples"][-1]["slots"] == 4
    assert set(json.loads(api.cli(0, "history", "--json").stdout)) == set(history)
    where = json.loads(api.cli(0, "dashboard", "--json").stdout)
    assert where["url"] == api.base + "/" and where["token"] is True
    assert json.loads(api.cli(1, "dashboard", "--json").stdout)["token"] is False


def test_writes_need_the_token_reads_do_not(api, finished):
    url = api.base + "/api/tasks"
    spec = {"command": ["true"]}
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": TOKEN}):
        refused = api.session.post(url, json=spec, headers=headers)
        assert refused.status_code == 401 and refused.json()["code"] == "unauthorized"
        assert refused.headers["WWW-Authenticate"].startswith("Bearer")
        gone = api.session.delete(f"{url}/{finished[0]}", headers=headers)
        assert gone.status_code == 401 and gone.json()["code"] == "unauthorized"
    assert api.session.get(url).status_code == 200
    ok = api.session.post(url, json={"specs": [{"argv": ["true"]}]}, headers=api.auth)
    assert ok.status_code == 201 and ok.json()[0]["command"] == ["true"]
    with api.cluster.client(0) as client:
        assert client.wait(ok.json()[0]["id"], timeout=60)["state"] == "succeeded"


def test_cancel_over_http_is_audited_with_who_asked(api):
    with api.cluster.client(0) as client:
        task_id = client.submit(["sleep", "60"])         # never runs: only `true` is allowed
    gone = api.session.delete(f"{api.base}/api/tasks/{task_id}", headers=api.auth)
    assert gone.status_code == 200 and gone.json()["state"] == "cancelled"
    with api.cluster.client(0) as client:
        records = client.audit_task(task_id)["records"]
    assert any("http@127.0.0.1" in json.dumps(r) for r in records), records


def test_guards_of_a_loopback_server(api):
    url = api.open_base + "/api/tasks"
    assert api.session.get(url, headers={"Host": "attacker.example:80"}).json()["code"] == "misdirected"
    cross = api.session.post(url, json={"command": ["true"]}, headers={"Origin": "http://attacker.example"})
    assert cross.status_code == 403 and cross.json()["code"] == "forbidden"
    form = api.session.post(url, data="command=true", headers={"Content-Type": "application/x-www-form-urlencoded"})
    assert form.status_code == 415
    big = api.session.post(url, data=b"[" + b"1," * (3 << 20) + b"1]", headers={"Content-Type": "application/json"})
    assert big.status_code == 413 and big.json()["code"] == "too_large"
    files = api.session.post(url, json={"command": ["true", "{item}"], "items_from": "/etc/passwd"})
    assert files.status_code == 400 and "items_from" in files.json()["error"]
    bad = api.session.post(url, json={"specs": [{"argv": []}]})
    assert bad.status_code == 400 and bad.json()["code"] == "bad_request"
    assert api.session.get(api.open_base + "/api/nowhere").json() == {"error": "Not Found", "code": "not_found"}
    assert api.session.put(url).status_code == 405
    page = api.session.get(api.open_base + "/")
    assert page.status_code == 200 and "script-src 'self'" in page.headers["Content-Security-Policy"]
    links = re.findall(r'(?:src|href)="([^"]*)"', page.text)       # nothing from another host (no CDN)
    assert links and all(link.startswith(("/", "data:")) and not link.startswith("//") for link in links), links


def test_the_openapi_document_is_served(api):
    served = api.session.get(api.base + "/api/openapi.json").json()
    assert served == document()
    assert {"/api/stats", "/api/peers", "/api/tasks", "/api/tasks/{id}", "/api/audit/head"} <= set(served["paths"])


def test_api_conforms_to_its_openapi_document(api, finished):
    """Every generated request gets an answer its document allows: no 5xx, a declared status, JSON
    of the declared schema. (Driven with hypothesis directly, operation by operation, rather than
    through schemathesis' pytest plugin, which follows pytest's internals from release to release.)"""
    schema = schemathesis.openapi.from_url(api.base + "/api/openapi.json")
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 7
    for operation in operations:
        @given(case=operation.as_strategy())
        @settings(max_examples=40, deadline=None, derandomize=True, database=None,
                  suppress_health_check=list(HealthCheck))
        def conforms(case):
            response = case.call(base_url=api.base, session=api.session, headers=api.auth, timeout=30)
            case.validate_response(response, checks=[not_a_server_error, status_code_conformance,
                                                     content_type_conformance, response_schema_conformance])
        conforms()
