"""Hostile input on the control socket, through a real ControlServer on a temp unix socket (and the
real operations of an in-process daemon): every line gets exactly one answer, errors are clear (not
"internal error"), and the connection and the server go on serving.
"""

from __future__ import annotations

import asyncio
import json

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from xchanged.runtime import transport
from xchanged.runtime.transport import ControlServer

PING = b'{"id":"p","op":"ping"}\n'


async def echo(op, args, requester=None):
    return {"op": op, "args": args}


class Served:
    """A ControlServer on a temp unix socket and one client connection to it."""

    def __init__(self, path, handler=echo):
        self.server = ControlServer(path, handler)

    async def __aenter__(self):
        await self.server.start()
        self.reader, self.writer = await asyncio.open_unix_connection(str(self.server.path))
        return self

    async def __aexit__(self, *exc):
        self.writer.close()
        await self.writer.wait_closed()
        await self.server.close()

    async def ask(self, line: bytes) -> dict:
        self.writer.write(line if line.endswith(b"\n") else line + b"\n")
        await self.writer.drain()
        answer = await asyncio.wait_for(self.reader.readline(), 30)
        assert answer.endswith(b"\n"), f"no answer to {line[:80]!r}: the connection ended"
        return json.loads(answer)

    async def alive(self) -> None:
        answer = await self.ask(PING)
        assert answer == {"id": "p", "ok": True, "result": {"op": "ping", "args": {}}}


def run(coro):
    return asyncio.run(coro)


@pytest.mark.parametrize("line, says", [
    (b"[" * 100_000, "nested too deeply"),
    (b'{"op":"x","args":' + b'{"a":' * 50_000 + b"1" + b"}" * 50_001, "nested too deeply"),
    (b'{"op":"ping","args":{"t":NaN}}', "NaN is not a JSON number"),
    (b'{"op":"ping","args":{"t":-Infinity}}', "-Infinity is not a JSON number"),
    (b'{"op":"ping","args":{"t":1e999}}', "too large a number"),
    (b"\xff\xfe\xfd not utf-8", "bad request"),
    (b"\x00\x00\x00", "bad request"),
    (b"[1, 2]", "a request is a JSON object"),
    (b'"ping"', "a request is a JSON object"),
    (b"null", "a request is a JSON object"),
    (b'{"id": 1}', "names no 'op'"),
    (b'{"op": 5}', "op must be a string"),
    (b'{"op": "ping", "args": [1]}', "args an object"),
    (b'{"op": "ping", "id": {"deep": [1]}}', "id must be"),
    (b'{"op": "ping", "id": 1' + b"0" * 5000 + b"}", "bad request"),     # more digits than int() takes
    (b"", "bad request"),
], ids=lambda v: v[:24].decode(errors="replace") if isinstance(v, bytes) else None)
def test_each_hostile_line_gets_a_clear_error_and_the_connection_goes_on(tmp_path, line, says):
    async def scenario():
        async with Served(tmp_path / "c.sock") as c:
            answer = await c.ask(line)
            assert answer["ok"] is False and answer["code"] == "bad_request" and says in answer["error"], answer
            await c.alive()
    run(scenario())


def test_an_over_long_line_is_answered_skipped_and_the_next_line_served(tmp_path, monkeypatch):
    monkeypatch.setattr(transport, "MAX_CONTROL_LINE", 4096)

    async def scenario():
        async with Served(tmp_path / "c.sock") as c:
            for size in (5000, 100_000, 4097):          # over the limit, with or without the newline in the buffer
                answer = await c.ask(b'{"op":"ping","args":{"x":"' + b"x" * size + b'"}}')
                assert answer["ok"] is False and "longer than 4096 bytes" in answer["error"]
                await c.alive()
            # two requests in one write after a long one: both answered, in order
            c.writer.write(b"y" * 10_000 + b"\n" + PING + b'{"id":2,"op":"two"}\n')
            answers = [json.loads(await c.reader.readline()) for _ in range(3)]
            assert [a["id"] for a in answers] == [None, "p", 2] and answers[2]["result"]["op"] == "two"
    run(scenario())


def test_a_last_line_without_newline_is_answered(tmp_path):
    async def scenario():
        async with Served(tmp_path / "c.sock") as c:
            c.writer.write(b'{"id":9,"op":"bye"}')
            c.writer.write_eof()
            assert json.loads(await c.reader.readline())["id"] == 9
            assert await c.reader.readline() == b""
    run(scenario())


def test_an_answer_no_json_can_carry_is_an_error_answer_not_a_dead_connection(tmp_path):
    async def unencodable(op, args, requester=None):
        return {"x": object()} if op == "bad" else {"op": op, "args": args}

    async def scenario():
        async with Served(tmp_path / "c.sock", unencodable) as c:
            answer = await c.ask(b'{"id":3,"op":"bad"}')
            assert answer["id"] == 3 and answer["ok"] is False and "not JSON" in answer["error"]
            await c.alive()
    run(scenario())


json_values = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False, allow_infinity=False),
              st.text(max_size=30)),
    lambda inner: st.one_of(st.lists(inner, max_size=5), st.dictionaries(st.text(max_size=10), inner, max_size=5)),
    max_leaves=20)
request_lines = st.one_of(
    st.binary(max_size=300).map(lambda b: b.replace(b"\n", b"")),
    json_values.map(lambda v: json.dumps(v).encode()),
    st.fixed_dictionaries({"op": st.one_of(st.text(max_size=10), json_values)},
                          optional={"id": json_values, "args": json_values}).map(lambda d: json.dumps(d).encode()),
    st.integers(min_value=1, max_value=3000).map(lambda n: b"[" * n + b"]" * n),
)


def test_property_every_line_gets_one_answer_and_the_server_lives(tmp_path):
    """Random bytes and random JSON values, many to one connection and each on its own line: one
    JSON answer per line, an error that says "bad request" or a result, and the server serves on."""
    async def scenario():
        async with Served(tmp_path / "c.sock") as c:
            @settings(max_examples=400, deadline=None, suppress_health_check=list(HealthCheck))
            @given(st.lists(request_lines, min_size=1, max_size=5))
            def check(lines):
                answers.append(lines)

            answers: list[list[bytes]] = []
            check()
            for lines in answers:
                c.writer.write(b"".join(line + b"\n" for line in lines))
                for line in lines:
                    answer = json.loads(await asyncio.wait_for(c.reader.readline(), 30))
                    assert set(answer) >= {"id", "ok"}, (line, answer)
                    if not answer["ok"]:
                        assert answer["error"].startswith("bad request"), (line, answer)
                await c.alive()
    run(scenario())


def test_a_real_daemons_operations_answer_hostile_arguments_clearly(tmp_path):
    """Every control operation of an in-process daemon with a task of each kind, each argument given
    values of the wrong type or range: a result or a clear error, never an internal error."""
    from tests.runtime.inprocess import running_daemon

    hostile = [None, True, -1, 1 << 70, -1e300, 1e300, "x", "../../etc/passwd", [], {}, [1, "a"], {"a": 1}, "T-\x00"]
    keys = ["ids", "attempt", "timeout_s", "wait_s", "part", "since_ms", "limit", "state", "offsets", "node"]
    ops = ["status", "wait", "wait_all", "logs", "resubmit", "audit", "tasks", "peers", "audit_evidence", "cancel"]

    async def scenario():
        async with running_daemon(tmp_path, executor={"allow": ["true"]}) as daemon:
            server = ControlServer(None, daemon.control.handle)
            specs = [{"argv": ["true"]}, {"argv": [], "composite": {"steps": [{"task": {"argv": ["true", "{item}"]},
                                                                                 "items": ["a", "b"]}]}}]
            made = await server._answer(json.dumps({"op": "submit", "args": {"specs": specs}}).encode())
            ids = [doc["id"] for doc in made["result"]]
            # ended or not (a loaded machine may hold them back), their documents are what is fuzzed
            await server._answer(json.dumps({"op": "wait_all", "args": {"ids": ids, "timeout_s": 20}}).encode())
            for task_id in [*ids, ids[1] + "/x", "T-nosuch"]:
                for op in ops:
                    for key in keys:
                        for value in hostile:
                            args = {"id": task_id, key: value}
                            if op == "wait_all" and key != "ids":
                                args["ids"] = [task_id]
                            line = json.dumps({"id": 1, "op": op, "args": args}).encode()
                            answer = await asyncio.wait_for(server._answer(line), 30)
                            assert answer["ok"] or not answer["error"].startswith("internal"), (line, answer)
    run(scenario())


I64 = (1 << 63) - 1
HOSTILE_SPECS = [
    ({"argv": ["echo", "a\x00b"]}, "argv[1] contains a NUL"),
    ({"argv": ["true"], "cwd": "/tmp\x00"}, "cwd contains a NUL"),
    ({"argv": ["true"], "env": {"": "x"}}, "environment name"),
    ({"argv": ["true"], "env": {"A": "\x00"}}, "contains a NUL"),
    ({"argv": ["true"], "timeout": 1e300}, "timeout must be"),
    ({"argv": ["true"], "est_runtime": -1}, "est_runtime must be"),
    ({"argv": ["true"], "deadline_ms": -I64}, "deadline_ms must be"),
    ({"argv": ["true"], "requirements": {"cpus": -1}}, "must not be negative"),
    ({"argv": ["true"], "parent": "T-OTHER"}, "set by a composite's coordinator"),
    ({"argv": ["true"], "parts_input": ""}, "set by a composite's coordinator"),
    ({"argv": [], "composite": {"steps": [{"task": {"argv": ["x", "{item}"]}, "range": [-I64, I64, 1]}]}},
     "more than 100000 parts"),
    ({"argv": [], "composite": {"steps": [{"task": {"argv": ["x", "{items}"]}, "range": [0, 10 ** 12, 1],
                                           "chunk": 10 ** 8}]}}, "chunk: must be at most"),
    ({"argv": [], "composite": {"steps": [{"task": {"argv": ["x", "{item}"]}, "items": ["a\x00"]}]}},
     "contains a NUL"),
]


def test_hostile_task_specs_are_refused_at_submit_and_nothing_is_accepted(tmp_path):
    """What would crash a daemon later (a number no frame can carry, a part no peer accepts) or could
    be lost (a client's `parent`: parts are not persisted) is refused at submit, with the reason."""
    from tests.runtime.inprocess import running_daemon

    async def scenario():
        async with running_daemon(tmp_path, executor={"allow": ["nothing-may-run"]}) as daemon:
            server = ControlServer(None, daemon.control.handle)
            for spec, says in HOSTILE_SPECS:
                answer = await server._answer(json.dumps({"id": 1, "op": "submit", "args": {"specs": [spec]}}).encode())
                assert answer["ok"] is False and says in answer["error"], (spec, answer)
            assert (await server._answer(b'{"op": "tasks"}'))["result"] == []
    run(scenario())
