"""The OpenAPI 3.0 document of the HTTP API (served at /api/openapi.json; http_api.py serves it).

Written by hand from the control operations' documents (views.py, control.py, protocol/tasks.py):
it names the keys every document has and their types, and leaves room for keys added later (the
documents' contract: keys may be added, not renamed). A test runs schemathesis against a daemon
with this document, so a document that drifts from it fails there.
"""

from __future__ import annotations

import copy
from typing import Any

from .. import __version__
from ..protocol.lifecycle import TaskState

STATES = [str(s) for s in TaskState]


def _obj(required: dict[str, Any], optional: dict[str, Any] | None = None) -> dict[str, Any]:
    """An object schema with these required properties (and these optional ones); other keys allowed."""
    return {"type": "object", "required": list(required), "properties": {**required, **(optional or {})}}


def _null(schema: dict[str, Any]) -> dict[str, Any]:
    return {**schema, "nullable": True}


def _ref(name: str) -> dict[str, Any]:
    return {"$ref": f"#/components/schemas/{name}"}


def _array(items: dict[str, Any]) -> dict[str, Any]:
    return {"type": "array", "items": items}


STR, INT, NUM, BOOL = {"type": "string"}, {"type": "integer"}, {"type": "number"}, {"type": "boolean"}
OBJ = {"type": "object"}
STR_MAP = {"type": "object", "additionalProperties": STR}

SCHEMAS: dict[str, Any] = {
    "Error": _obj({"error": STR, "code": STR}, {"details": _null(OBJ)}),
    "Attempt": _obj({"attempt": INT, "node": STR, "state": STR},
                    {"node_id": STR, "score": NUM, "exit_code": _null(INT), "reason": STR, "reason_code": STR,
                     "started": _null(INT), "ended": _null(INT), "awarded": _null(INT),
                     "estimate_ms": _null(INT)}),
    "Progress": _obj({"done": INT, "total": INT, "failed": INT}),
    "Part": _obj({"key": STR, "state": STR},
                 {"exit_code": _null(INT), "node": STR, "reason": STR, "runtime_ms": INT, "item": _null(STR),
                  "task": STR, "manager": STR, "stdout_tail": STR, "stderr_tail": STR}),
    "Task": _obj({"id": STR, "state": {"type": "string", "enum": STATES}, "attempts": _array(_ref("Attempt"))},
                 {"priority": STR, "node": _null(STR), "exit_code": _null(INT), "reason": STR,
                  "reason_code": STR, "submitted": INT, "finished": _null(INT), "command": _array(STR),
                  "name": STR, "spec": OBJ, "composite": BOOL, "progress": _ref("Progress"),
                  "parts": _array(_ref("Part")), "parent": STR, "manager": STR, "manager_id": STR}),
    "Manager": _obj({"id": STR, "name": STR, "status": {"type": "string", "enum": ["ok", "unreachable", "error"]}},
                    {"error": STR, "total": INT, "truncated": BOOL, "listed": INT}),
    "ClusterTasks": _obj({"tasks": _array(_ref("Task")), "managers": _array(_ref("Manager"))}),
    "Gpu": _obj({"index": INT, "name": STR, "mem_total": INT, "mem_free": INT, "util_percent": NUM}),
    "Peer": _obj({"id": STR, "name": STR, "health": STR},
                 {"address": STR, "last_seen_s": _null(NUM), "slots": INT, "slots_free": INT, "running": INT,
                  "queued": INT, "cpus": NUM, "cpu_percent": NUM, "mem_total": INT, "mem_available": INT,
                  "gpus": _array(_ref("Gpu")), "labels": STR_MAP, "utilisation": NUM, "completed": INT,
                  "score": _null(NUM), "success_rate": _null(NUM), "breaker": STR, "self": BOOL,
                  "audit": STR, "audit_size": _null(INT), "draining": BOOL}),
    "Stats": _obj({"node": STR, "uptime_s": NUM, "total_agents": INT, "healthy_agents": INT,
                   "total_capacity": INT, "current_load": INT, "utilization_percent": NUM, "queued_jobs": INT,
                   "running_jobs": INT, "tasks_by_state": {"type": "object", "additionalProperties": INT},
                   "agents": _array(OBJ)},
                  {"submitted": INT, "succeeded": INT, "failed": INT, "retries": INT, "success_rate": _null(NUM)}),
    "SignedHead": _obj({"node_id": STR, "size": INT, "root": STR, "time_ms": INT, "signature": STR}),
    "AuditHead": _obj({"node": STR, "node_id": STR, "head": _null(_ref("SignedHead")), "records": INT,
                       "peers": _array(_obj({"node_id": STR, "status": STR}, {"name": STR,
                                                                                "head": _null(OBJ)}))}),
    "Sample": _obj({"t": INT, "utilization_percent": NUM, "running": INT, "slots": INT, "queued": INT,
                    "queued_here": INT, "alive": INT, "nodes": INT}),
    "History": _obj({"interval_s": NUM, "capacity": INT, "samples": _array(_ref("Sample"))}),
    "Logs": _obj({"id": STR, "stdout": STR, "stderr": STR}, {"attempt": _null(INT), "part": STR}),
    "Requirements": _obj({}, {"cpus": NUM, "mem": INT, "gpus": INT, "gpu_mem": INT, "labels": STR_MAP,
                              "prefer": STR_MAP}),
    "TaskSpec": _obj({"argv": {"type": "array", "items": {"type": "string", "minLength": 1}, "minItems": 1}},
                     {"env": STR_MAP, "cwd": _null(STR), "timeout": _null(NUM), "requirements": _ref("Requirements"),
                      "priority": {"type": "string", "enum": ["low", "normal", "high", "urgent"]},
                      "retries": {"type": "integer", "minimum": 0, "maximum": 100}, "deadline_ms": _null(INT),
                      "name": STR, "est_runtime": _null(NUM)}),
    "Submit": _obj({"specs": {"type": "array", "items": _ref("TaskSpec"), "minItems": 1}}),
    "SpecFile": {"type": "object", "description": "a spec file's shape (README 'Composite tasks'): a command "
                 "(with items or range: an array), [task] tables, or [tasks.NAME] tables; items_from and a "
                 "step's spec (files) are refused over HTTP",
                 "properties": {"command": {"oneOf": [STR, _array(STR)]}, "items": _array(STR),
                                "range": _array(INT), "chunk": INT, "reduce": {"oneOf": [STR, _array(STR), OBJ]},
                                "tasks": {"type": "object", "additionalProperties": OBJ}, "task": OBJ}},
}


def _json(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


ERRORS = {
    "400": _json(_ref("Error"), "bad request (code says what)"),
    "403": _json(_ref("Error"), "a write from another origin"),
    "421": _json(_ref("Error"), "a Host that is not loopback, on a loopback server"),
    "503": _json(_ref("Error"), "too many requests in flight (busy)"),
}
AUTH = {"401": _json(_ref("Error"), "no or a wrong bearer token (when a token is configured)")}
TASK_ERRORS = {
    "404": _json(_ref("Error"), "no such task (no_such_task)"),
    "504": _json(_ref("Error"), "the task's manager did not answer (manager_unreachable; details: last known)"),
}
TASK_ID = {"name": "id", "in": "path", "required": True, "description": "a task id (a part's id has slashes)",
           "schema": {"type": "string", "minLength": 1}}


def _get(summary: str, ok: dict[str, Any], params: list | None = None, extra: dict | None = None) -> dict:
    return {"get": {"summary": summary, "parameters": params or [],
                    "responses": {"200": _json(ok, "the document"), **ERRORS, **AUTH, **(extra or {})}}}


def _query(name: str, schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"name": name, "in": "query", "required": False, "description": description, "schema": schema}


FLAG = {"type": "string", "enum": ["0", "1", "true", "false"]}

PATHS: dict[str, Any] = {
    "/api/stats": _get("Cluster totals and utilisation (xchanged stats --json)", _ref("Stats")),
    "/api/peers": _get("This node and its peers (xchanged peers --json)", _array(_ref("Peer")),
                       [_query("all", FLAG, "also untrusted mDNS services")]),
    "/api/tasks": {
        **_get("Tasks this node manages (xchanged tasks --json), or every manager's (tasks --cluster --json)",
               {"oneOf": [_array(_ref("Task")), _ref("ClusterTasks")]},
               [_query("cluster", FLAG, "every manager's tasks, merged"),
                _query("state", {"type": "string", "enum": STATES}, "only tasks in this state"),
                _query("limit", {"type": "integer", "minimum": 1, "maximum": 10_000},
                       "the newest this many (per manager with cluster; default 100)")], TASK_ERRORS),
        "post": {"summary": "Submit tasks (xchanged submit / submit -f); needs the token when one is configured",
                 "security": [{"bearer": []}],
                 "requestBody": {"required": True, "content": {"application/json": {"schema": {
                     "oneOf": [_ref("Submit"), _ref("TaskSpec"), _ref("SpecFile")]}}}},
                 "responses": {"201": _json(_array(_ref("Task")), "the new tasks, stored"), **ERRORS, **AUTH,
                               "413": _json(_ref("Error"), "the body is too large"),
                               "415": _json(_ref("Error"), "the body is not JSON")}},
    },
    "/api/tasks/{id}": {
        **_get("One task from any node (xchanged status ID --json; a composite's parts too)", _ref("Task"),
               [TASK_ID], TASK_ERRORS),
        "delete": {"summary": "Cancel a task from any node (xchanged cancel ID); needs the token when one is "
                   "configured", "security": [{"bearer": []}], "parameters": [TASK_ID],
                   "responses": {"200": _json(_ref("Task"), "the task as the cancel left it"), **ERRORS, **AUTH,
                                 **TASK_ERRORS}},
    },
    "/api/logs/{id}": _get("A task's output (xchanged logs ID --json)", _ref("Logs"), [TASK_ID], TASK_ERRORS),
    "/api/audit/head": _get("This node's signed audit head, and its view of the others' (xchanged audit head "
                            "--json)", _ref("AuditHead")),
    "/api/history": _get("The last minutes of cluster load, sampled by this daemon", _ref("History")),
}


def document() -> dict[str, Any]:
    """The OpenAPI document (a fresh copy: callers may change it)."""
    return copy.deepcopy({
        "openapi": "3.0.3",
        "info": {"title": "xchanged", "version": __version__,
                 "description": "The JSON API of one xchanged daemon: the documents of its control "
                                "operations (the CLI's --json output), over HTTP."},
        "paths": PATHS,
        "components": {"schemas": SCHEMAS,
                       "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer",
                                                      "description": "[http] token_file"}}},
    })
