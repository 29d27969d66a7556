"""The HTTP API and dashboard of one daemon, in the test's own event loop (runtime/http_api.py): served
on the daemon's loop and closed with it, the token, errors as JSON, request bodies as specs, the
config rules of [http], and the OpenAPI document naming every route."""

from __future__ import annotations

import asyncio
import io
import json
import socket
from types import SimpleNamespace

import aiohttp
import pytest

from xchanged.config import ConfigError, config_from_dict, is_loopback
from xchanged.runtime import http_api, openapi
from xchanged.runtime.http_api import ApiError, HttpServer, TokenError, file_keys, read_token, specs_of
from xchanged.runtime.transport import ControlError

from .inprocess import running_daemon

TOKEN = "0123456789abcdef0123456789abcdef"


def http_config(**values):
    return config_from_dict({"node": {"name": "n"}, "http": values}, check_files=False).http


# -- config ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("listen", ["0.0.0.0:7947", "10.0.0.5:7947", "[::]:7947", "gpu-07.lab:7947"])
def test_a_non_loopback_address_needs_a_token_file(listen):
    with pytest.raises(ConfigError) as err:
        http_config(listen=listen)
    assert err.value.key == "http.token_file" and "loopback" in err.value.reason
    assert http_config(listen=listen, token_file="/etc/xchanged/http.token").token_file is not None


@pytest.mark.parametrize("listen", ["127.0.0.1:7947", "127.3.2.1:0", "[::1]:7947", "localhost:7947", ""])
def test_loopback_needs_no_token_and_http_is_off_by_default(listen):
    assert http_config(listen=listen).token_file is None
    assert config_from_dict({"node": {"name": "n"}}, check_files=False).http.listen == ""


def test_token_reads_needs_a_token_file_and_the_file_must_exist(tmp_path):
    with pytest.raises(ConfigError) as err:
        http_config(listen="127.0.0.1:7947", token_reads=True)
    assert err.value.key == "http.token_reads"
    (tmp_path / "node.key").write_text("")
    (tmp_path / "authorized_keys").write_text("")
    with pytest.raises(ConfigError) as err:
        config_from_dict({"node": {"name": "n"}, "http": {"listen": "127.0.0.1:1", "token_file": "nope"}},
                         base_dir=tmp_path)
    assert err.value.key == "http.token_file" and "not found" in err.value.reason


def test_is_loopback():
    assert all(map(is_loopback, ["127.0.0.1", "127.9.9.9", "::1", "[::1]", "localhost", "LOCALHOST"]))
    assert not any(map(is_loopback, ["0.0.0.0", "::", "", "10.1.2.3", "example.org", "localhost.evil.org"]))


def test_the_token_file_is_read_once_and_must_hold_a_long_word(tmp_path):
    path = tmp_path / "token"
    assert read_token(http_config(listen="127.0.0.1:1")) is None
    with pytest.raises(TokenError, match="cannot read"):
        read_token(http_config(listen="127.0.0.1:1", token_file=str(path)))
    for bad in ("short", "two words that are long enough", ""):
        path.write_text(bad)
        with pytest.raises(TokenError, match="one word of at least"):
            read_token(http_config(listen="127.0.0.1:1", token_file=str(path)))
    path.write_text(TOKEN + "\n")
    assert read_token(http_config(listen="127.0.0.1:1", token_file=str(path))) == TOKEN


# -- request bodies ---------------------------------------------------------------------------------


def test_a_body_is_the_control_shape_one_spec_or_a_spec_file_shape():
    assert specs_of({"specs": [{"argv": ["true"]}]}) == [{"argv": ["true"]}]
    assert specs_of({"argv": ["true"]}) == [{"argv": ["true"]}]
    [single] = specs_of({"command": "echo hi", "cpus": 2})
    assert single["argv"] == ["sh", "-c", "echo hi"] and single["requirements"]["cpus"] == 2.0
    [array] = specs_of({"command": ["echo", "{item}"], "items": ["a", "b"], "name": "two"})
    assert array["name"] == "two" and array["composite"]["steps"][0]["items"] == ["a", "b"]
    assert len(specs_of({"task": [{"command": ["a"]}, {"command": ["b"]}]})) == 2


@pytest.mark.parametrize("body, says", [
    ([1, 2], "must be a JSON object"),
    ({"specs": [], "command": "x"}, "no other keys"),
    ({"command": ["cat", "{item}"], "items_from": "/etc/passwd"}, "items_from"),
    ({"tasks": {"a": {"spec": "/etc/other.toml"}}}, "tasks.a.spec"),
    ({"tasks": {"a": {"command": "x", "items_from": "list.txt"}}}, "tasks.a.items_from"),
    ({"commnd": "x"}, "expected a command"),
    ({"command": []}, "command"),
])
def test_bodies_that_are_no_spec_or_would_read_files_are_refused(body, says):
    with pytest.raises(ApiError) as err:
        specs_of(body)
    assert says in str(err.value) and err.value.code == "bad_request"


def test_file_keys_are_looked_for_only_where_the_reader_takes_them():
    assert file_keys({"command": "x", "env": {"spec": "1", "items_from": "2"}}) == []
    assert file_keys({"tasks": {"a": {"command": "x", "env": {"spec": "y"}}}}) == []


# -- the OpenAPI document -----------------------------------------------------------------------------


def test_the_openapi_document_names_every_api_route_and_loads_in_schemathesis():
    schemathesis = pytest.importorskip("schemathesis")
    daemon = SimpleNamespace(control=None, config=config_from_dict(
        {"node": {"name": "n"}, "http": {"listen": "127.0.0.1:0"}}, check_files=False), http_token=None)
    server = HttpServer(daemon, None)
    routes = {(r.method, r.resource.canonical.replace(":.+", "")) for r in server.runner.app.router.routes()
              if r.resource.canonical.startswith("/api/") and r.method != "HEAD"}
    doc = openapi.document()
    documented = {(method.upper(), path) for path, ops in doc["paths"].items() for method in ops}
    assert routes - {("GET", "/api/openapi.json")} == documented
    operations = list(schemathesis.openapi.from_dict(doc).get_all_operations())
    assert len(operations) == len(documented)


# -- a daemon serving it ------------------------------------------------------------------------------


async def _serve(tmp_path, check, **http):
    async with running_daemon(tmp_path, http={"listen": "127.0.0.1:0", **http}) as daemon:
        assert daemon.http is not None and daemon.http.port > 0
        async with aiohttp.ClientSession(f"http://127.0.0.1:{daemon.http.port}") as session:
            await check(daemon, session)
        port = daemon.http.port
    with socket.socket() as sock:                          # closed with the daemon
        assert sock.connect_ex(("127.0.0.1", port)) != 0


def test_served_on_the_daemons_loop_with_the_control_documents(tmp_path):
    async def check(daemon, session):
        async with session.post("/api/tasks", json={"command": ["true"]}) as r:
            assert r.status == 201
            [doc] = await r.json()
        assert (await daemon.control.handle("wait", {"id": doc["id"], "timeout_s": 30}))["state"] == "succeeded"
        async with session.get(f"/api/tasks/{doc['id']}") as r:
            assert await r.json() == await daemon.control.handle("status", {"id": doc["id"]})
        async with session.get("/api/tasks") as r:
            assert [d["id"] for d in await r.json()] == [doc["id"]]
        async with session.get("/") as r:
            assert r.status == 200 and "dashboard.js" in await r.text()
        for name in http_api.STATIC:
            async with session.get(f"/static/{name}") as r:
                assert r.status == 200 and r.content_type == http_api.STATIC[name]
        async with session.get("/static/..%2Fhttp_api.py") as r:
            assert r.status == 404 and (await r.json())["code"] == "not_found"
    asyncio.run(_serve(tmp_path, check))


def test_writes_need_the_token_and_with_token_reads_reads_do_too(tmp_path):
    (tmp_path / "token").write_text(TOKEN)

    async def check(daemon, session):
        auth = {"Authorization": f"Bearer {TOKEN}"}
        async with session.post("/api/tasks", json={"command": ["true"]}) as r:
            assert r.status == 401 and (await r.json())["code"] == "unauthorized"
        async with session.get("/api/stats") as r:
            assert r.status == 401
        async with session.get("/api/openapi.json") as r:
            assert r.status == 200                         # the document is no secret
        async with session.get("/") as r:
            assert r.status == 200                         # the page asks for the token itself
        async with session.get("/api/stats", headers=auth) as r:
            assert r.status == 200 and (await r.json())["node"] == "solo"
        async with session.delete("/api/tasks/T-NOPE", headers={"Authorization": "Bearer " + TOKEN[:-1]}) as r:
            assert r.status == 401
        async with session.delete("/api/tasks/T-NOPE", headers=auth) as r:
            assert r.status == 404 and (await r.json())["code"] == "no_such_task"
    asyncio.run(_serve(tmp_path, check, token_file=str(tmp_path / "token"), token_reads=True))


def test_errors_are_json_with_codes_never_a_traceback(tmp_path, monkeypatch):
    async def check(daemon, session):
        async def broken(args):
            raise RuntimeError("a bug with a secret in it")

        async def unreachable(args):
            raise ControlError("manager unreachable: node9", "manager_unreachable", {"last_known": None})
        monkeypatch.setitem(daemon.control._ops, "stats", broken)
        monkeypatch.setitem(daemon.control._ops, "history", unreachable)
        async with session.get("/api/stats") as r:
            body = await r.text()
            assert r.status == 500 and json.loads(body)["code"] == "internal"
            assert "secret" not in body and "Traceback" not in body
        async with session.get("/api/history") as r:
            assert r.status == 504 and await r.json() == {"error": "manager unreachable: node9",
                                                          "code": "manager_unreachable",
                                                          "details": {"last_known": None}}
        async with session.get("/api/tasks", params={"state": "bogus"}) as r:
            assert r.status == 400 and "state must be one of" in (await r.json())["error"]
        async with session.post("/api/tasks", data=b"{not json", headers={"Content-Type": "application/json"}) as r:
            assert r.status == 400 and (await r.json())["code"] == "bad_request"
        async with session.post("/api/tasks", data=io.BytesIO(b"x" * (http_api.MAX_BODY + 1)),
                                headers={"Content-Type": "application/json"}) as r:
            assert r.status == 413 and (await r.json())["code"] == "too_large"
        deep = b'{"specs": [' + b"[" * 100_000 + b"]" * 100_000 + b"]}"
        async with session.post("/api/tasks", data=deep, headers={"Content-Type": "application/json"}) as r:
            assert r.status == 400 and (await r.json())["code"] == "bad_request"
        async with session.get("/api/tasks", params={"limit": "\u00b2"}) as r:
            assert r.status == 400 and "limit" in (await r.json())["error"]
        async with session.get("/api/audit/head") as r:
            head = await r.json()
            assert head["node"] == "solo" and head["head"]["node_id"] == daemon.id
        async with session.get("/api/tasks/T-NOPE", headers={"Host": "example.org"}) as r:
            assert r.status == 421 and (await r.json())["code"] == "misdirected"
    asyncio.run(_serve(tmp_path, check))


def test_a_bad_token_file_stops_the_daemon_before_it_opens_anything(tmp_path):
    (tmp_path / "token").write_text("short")
    from xchanged.runtime.daemon import Daemon, DaemonError

    from .inprocess import daemon_config
    with pytest.raises(DaemonError, match="refusing to start: http.token_file"):
        Daemon(daemon_config(tmp_path, http={"listen": "127.0.0.1:0", "token_file": str(tmp_path / "token")}))
    assert not (tmp_path / "state").exists()
