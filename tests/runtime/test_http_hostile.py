"""Hostile requests to the HTTP API (runtime/http_api.py) of an in-process daemon: bodies a submit
must refuse (JSON that is not quite JSON, specs no process can run, fields only a coordinator sets),
bad query parameters and hostile task ids. Each gets a 4xx JSON error with a code, never a 500, and
the daemon goes on serving."""

from __future__ import annotations

import asyncio

import pytest

from .test_http_api import _serve

JSON = {"Content-Type": "application/json"}

BODIES = [
    (b'{"command": ["true"], "timeout": NaN}', "not finite"),
    (b'{"command": ["true"], "timeout": 1e999}', "not finite"),
    (b'\xff\xfe{"command": 1}', "not JSON"),
    (b'{"argv": ["true", "a\\u0000b"]}', "NUL"),
    (b'{"argv": ["true"], "env": {"A=B": "1"}}', "environment name"),
    (b'{"argv": ["true"], "parent": "T-SOMEONE"}', "set by a composite's coordinator"),
    (b'{"argv": ["true"], "parts_input": "x"}', "set by a composite's coordinator"),
    (b'{"argv": ["true"], "deadline_ms": -9223372036854775808}', "deadline_ms"),
    (b'{"argv": ["true"], "est_runtime": 1e300}', "est_runtime"),
    (b'{"command": ["x", "{item}"], "range": [-9223372036854775808, 9223372036854775807]}', "more than"),
    (b'{"specs": [{"argv": ["true"]}, 5]}', "task spec 1"),
    (b'[1, 2, 3]', "must be a JSON object"),
]


@pytest.mark.parametrize("body, says", BODIES, ids=[b[:30].decode(errors="replace") for b, _ in BODIES])
def test_hostile_submit_bodies_are_refused_with_a_clear_error(tmp_path, body, says):
    async def check(daemon, session):
        async with session.post("/api/tasks", data=body, headers=JSON) as r:
            doc = await r.json()
            assert r.status == 400 and doc["code"] == "bad_request" and says in doc["error"], doc
        async with session.get("/api/tasks") as r:
            assert r.status == 200 and await r.json() == []          # nothing was accepted
    asyncio.run(_serve(tmp_path, check))


def test_hostile_query_parameters_and_task_ids_are_clear_errors(tmp_path):
    async def check(daemon, session):
        for params in ({"limit": "-1"}, {"limit": "0"}, {"limit": "99999999999999999999"}, {"limit": "1e3"},
                       {"cluster": "maybe"}, {"state": "queued'--"}, {"limit": "\x00"}):
            async with session.get("/api/tasks", params=params) as r:
                assert r.status == 400 and (await r.json())["code"] == "bad_request", params
        async with session.get("/api/peers", params={"all": "2"}) as r:
            assert r.status == 400
        for path in ("/api/tasks/..%2F..%2Fetc%2Fpasswd", "/api/tasks/T-%00", "/api/logs/T-x%2F..%2F..",
                     "/api/tasks/" + "A" * 5000):
            async with session.get(path) as r:
                doc = await r.json()
                assert r.status in (400, 404, 504), (path, doc)
                assert doc["code"] in ("bad_request", "no_such_task", "manager_unreachable"), (path, doc)
        async with session.get("/api/stats") as r:
            assert r.status == 200
    asyncio.run(_serve(tmp_path, check))
