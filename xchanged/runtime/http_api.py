"""The web dashboard and JSON API, served by the daemon itself (`[http] listen`; off unless set).

Rules:
- One code path: every /api document is what a control operation returns (`Control.handle(op,
  args)`, as the CLI and the Client ask it over the control socket), so `GET /api/tasks/ID` and
  `xchanged status ID --json` print the same document. Errors are the control errors: JSON
  `{"error", "code"[, "details"]}` with an HTTP status chosen by the code (STATUS_OF); a bug is a
  500 with `code: internal`, logged here, never a traceback in the answer.
- aiohttp's server runs on the daemon's own loop (AppRunner: no thread, no signal handlers of its
  own), started after the control socket and closed before it. A handler never blocks the loop:
  the control operations are coroutines that only read memory or hand an event to the loop.
- Bound where `[http] listen` says, only. Writes (POST, DELETE) need `Authorization: Bearer
  <token>` when `[http] token_file` is set (reads too with `token_reads`), compared in constant
  time. Without a token the address is loopback (config.py refuses otherwise), and then:
  the Host header must name a loopback host (a DNS-rebinding page cannot talk to us under its own
  name); a write must not come from another origin (Origin), and a POST must be JSON (a cross-site
  form cannot send it without a preflight, which we never allow).
- Request bodies are at most MAX_BODY bytes (413); at most MAX_CONCURRENT requests are served at
  once (more get 503 `busy`).
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
from importlib import resources
from typing import TYPE_CHECKING, Any, Awaitable, Callable
from urllib.parse import urlsplit

from aiohttp import web

from .. import specfile
from ..config import is_loopback, parse_host_port
from ..protocol.lifecycle import TaskState
from . import openapi
from .optional import MIN_TOKEN_CHARS, TokenError, read_token  # noqa: F401  (the token is read before this loads)
from .transport import ControlError

if TYPE_CHECKING:
    from .daemon import Daemon

log = logging.getLogger("xchanged.http")

MAX_BODY = 4 << 20            # bytes of a request body (a composite spec is at most 2 MiB as msgpack)
MAX_CONCURRENT = 64           # requests served at once
MAX_TASKS_LIMIT = 10_000      # most tasks one /api/tasks lists (per manager with cluster=1)
DEFAULT_TASKS_LIMIT = 100     # as `xchanged tasks`: the newest 100
SHUTDOWN_TIMEOUT = 2.0        # seconds open requests get to finish when the daemon stops
STATES = tuple(str(s) for s in TaskState)
STATIC = {"dashboard.js": "text/javascript", "dashboard.css": "text/css"}
PAGE_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
                               "connect-src 'self'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'",
    "Cache-Control": "no-cache",
}
#: Control error codes -> HTTP status; any other code (a bad request) is 400.
STATUS_OF = {"no_such_task": 404, "manager_unreachable": 504, "busy": 503, "unauthorized": 401,
             "forbidden": 403, "not_found": 404, "method_not_allowed": 405, "too_large": 413,
             "unsupported_media_type": 415, "misdirected": 421, "internal": 500}
#: aiohttp's own errors (no route, wrong method, body too large) -> our codes.
CODE_OF = {404: "not_found", 405: "method_not_allowed", 413: "too_large", 400: "bad_request"}


class ApiError(ControlError):
    """A request refused by the HTTP layer itself (auth, media type, a bad query parameter)."""


def _dumps(doc: Any) -> str:
    return json.dumps(doc, separators=(",", ":"))


def error_response(status: int, code: str, message: str, details: dict | None = None) -> web.Response:
    body: dict[str, Any] = {"error": message, "code": code}
    if details is not None:
        body["details"] = details
    headers = {"WWW-Authenticate": 'Bearer realm="xchanged"'} if status == 401 else None
    return web.json_response(body, status=status, dumps=_dumps, headers=headers)


def _flag(request: web.Request, name: str) -> bool:
    value = request.query.get(name, "").lower()
    if value not in ("", "0", "1", "true", "false"):
        raise ApiError(f"{name} must be 1 or 0 (true or false), not {value!r}", "bad_request")
    return value in ("1", "true")


def _limit(request: web.Request) -> int:
    text = request.query.get("limit", "")
    if not text:
        return DEFAULT_TASKS_LIMIT
    if not (text.isascii() and text.isdigit()) or not 1 <= int(text) <= MAX_TASKS_LIMIT:
        raise ApiError(f"limit must be an integer from 1 to {MAX_TASKS_LIMIT}", "bad_request")
    return int(text)


def _host_of(header: str) -> str:
    """The host part of a Host header ("127.0.0.1:7947", "[::1]:7947", "localhost")."""
    if header.startswith("["):
        return header[1:header.find("]")] if "]" in header else header
    return header.rpartition(":")[0] if ":" in header else header


class HttpServer:
    """The running server: aiohttp's AppRunner on the daemon's loop, and where it listens."""

    def __init__(self, daemon: Daemon, token: str | None):
        self.daemon = daemon
        self.control = daemon.control
        self.token = token
        self.token_reads = daemon.config.http.token_reads
        host, _ = parse_host_port(daemon.config.http.listen)
        self.loopback_only = is_loopback(host)
        self.busy = 0
        self.page = self._load("index.html")
        self.static = {name: self._load(name) for name in STATIC}
        app = web.Application(client_max_size=MAX_BODY, middlewares=[self._guard])
        get, post, delete = app.router.add_get, app.router.add_post, app.router.add_delete
        get("/", self.index)
        get("/static/{name}", self.static_file)
        get("/api/openapi.json", self.openapi_doc)
        get("/api/stats", self._op("stats"))
        get("/api/peers", self.peers)
        get("/api/tasks", self.tasks)
        post("/api/tasks", self.submit)
        get("/api/tasks/{id:.+}", self.status)
        delete("/api/tasks/{id:.+}", self.cancel)
        get("/api/logs/{id:.+}", self.logs)
        get("/api/audit/head", self._op("audit_head"))
        get("/api/history", self._op("history"))
        self.runner = web.AppRunner(app, handle_signals=False, access_log=None, shutdown_timeout=SHUTDOWN_TIMEOUT)
        self.addresses: list[Any] = []

    @staticmethod
    def _load(name: str) -> bytes:
        return resources.files("xchanged.web").joinpath(name).read_bytes()

    async def start(self, host: str, port: int) -> None:
        await self.runner.setup()
        site = web.TCPSite(self.runner, host, port, reuse_address=True)
        try:
            await site.start()
        except BaseException:
            await self.runner.cleanup()
            raise
        self.addresses = list(self.runner.addresses)

    @property
    def port(self) -> int:
        return int(self.addresses[0][1]) if self.addresses else 0

    async def close(self) -> None:
        await self.runner.cleanup()

    # -- what every request goes through --------------------------------------------------------

    @web.middleware
    async def _guard(self, request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
                     ) -> web.StreamResponse:
        """Checks (host, origin, token, media type), a bound on requests in flight, and every error
        as JSON."""
        if self.busy >= MAX_CONCURRENT:
            return error_response(503, "busy", f"serving {MAX_CONCURRENT} requests; try again")
        self.busy += 1
        try:
            self._check(request)
            response = await handler(request)
        except ControlError as exc:
            code = exc.code or "bad_request"
            response = error_response(STATUS_OF.get(code, 400), code, str(exc), exc.details)
        except web.HTTPException as exc:       # aiohttp's own: no such route, wrong method, body too large
            if exc.status < 400:
                raise
            response = error_response(exc.status, CODE_OF.get(exc.status, "error"), exc.reason)
        except RecursionError:                 # JSON nested thousands deep
            response = error_response(400, "bad_request", "the request is nested too deeply")
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("HTTP %s %s failed", request.method, request.path)
            response = error_response(500, "internal", "internal error (the daemon's log has the details)")
        finally:
            self.busy -= 1
        response.headers.setdefault("X-Content-Type-Options", "nosniff")
        return response

    def _check(self, request: web.Request) -> None:
        host = request.headers.get("Host", "")          # a browser always sends one
        if self.loopback_only and host and not is_loopback(_host_of(host)):
            raise ApiError(f"this server answers to loopback host names only, not {host!r}", "misdirected")
        write = request.method not in ("GET", "HEAD", "OPTIONS")
        if write:
            origin = request.headers.get("Origin")
            if origin is not None and urlsplit(origin).netloc.lower() != host.lower():
                raise ApiError(f"cross-origin write refused (Origin {origin!r})", "forbidden")
        if self.token is not None and (write or (self.token_reads and request.path.startswith("/api/")
                                                 and request.path != "/api/openapi.json")):
            scheme, _, given = request.headers.get("Authorization", "").partition(" ")
            if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip().encode(), self.token.encode()):
                raise ApiError("this request needs the bearer token of [http] token_file "
                               "(Authorization: Bearer ...)", "unauthorized")

    # -- the page ---------------------------------------------------------------------------------

    async def index(self, request: web.Request) -> web.Response:
        return web.Response(body=self.page, content_type="text/html", charset="utf-8", headers=PAGE_HEADERS)

    async def static_file(self, request: web.Request) -> web.Response:
        name = request.match_info["name"]
        if name not in self.static:
            raise ApiError(f"no such file: {name}", "not_found")
        return web.Response(body=self.static[name], content_type=STATIC[name], charset="utf-8",
                            headers={"Cache-Control": "no-cache"})

    async def openapi_doc(self, request: web.Request) -> web.Response:
        return web.json_response(openapi.document(), dumps=_dumps)

    # -- the API: each a control operation ---------------------------------------------------------

    async def _call(self, op: str, args: dict, status: int = 200) -> web.Response:
        return web.json_response(await self.control.handle(op, args), status=status, dumps=_dumps)

    def _op(self, op: str) -> Callable[[web.Request], Awaitable[web.Response]]:
        async def serve(request: web.Request) -> web.Response:
            return await self._call(op, {})
        return serve

    async def peers(self, request: web.Request) -> web.Response:
        return await self._call("peers", {"all": True} if _flag(request, "all") else {})

    async def tasks(self, request: web.Request) -> web.Response:
        """As `xchanged tasks --json` (a list, the newest `limit`), or with cluster=1 as `tasks
        --cluster --json` ({"tasks", "managers"}, at most `limit` per manager)."""
        state = request.query.get("state", "")
        if state and state not in STATES:
            raise ApiError(f"state must be one of {', '.join(STATES)}", "bad_request")
        limit = _limit(request)
        if _flag(request, "cluster"):
            return await self._call("tasks", {"state": state or None, "cluster": True, "limit": limit})
        docs = await self.control.handle("tasks", {"state": state or None, "limit": limit})
        return web.json_response(docs[-limit:], dumps=_dumps)

    async def status(self, request: web.Request) -> web.Response:
        return await self._call("status", {"id": request.match_info["id"]})

    async def logs(self, request: web.Request) -> web.Response:
        return await self._call("logs", {"id": request.match_info["id"]})

    async def cancel(self, request: web.Request) -> web.Response:
        """The manager's audit log records who asked: `http` and the client's address."""
        return await self._call("cancel", {"id": request.match_info["id"], "user": f"http@{request.remote or ''}"})

    async def submit(self, request: web.Request) -> web.Response:
        """A body as the control socket's submit takes ({"specs": [...]}), one task spec body, or a
        spec in the spec-file shape (specfile.py); 201 with the list of new task documents."""
        if request.content_type != "application/json":
            raise ApiError("send the spec as JSON (Content-Type: application/json)", "unsupported_media_type")
        try:
            body = json.loads(await request.read())
            specs = specs_of(body)
        except (ValueError, UnicodeDecodeError) as exc:
            raise ApiError(f"the body is not JSON: {exc}", "bad_request") from None
        return await self._call("submit", {"specs": specs}, status=201)


def specs_of(body: Any) -> list:
    """The task spec bodies a POST /api/tasks body stands for (ControlError when it is no spec)."""
    if not isinstance(body, dict):
        raise ApiError("the body must be a JSON object: {\"specs\": [...]}, a task spec, or a spec file's "
                       "shape (command, [task] or [tasks.NAME] tables)", "bad_request")
    if "specs" in body:
        if set(body) != {"specs"}:
            raise ApiError("a body with 'specs' has no other keys", "bad_request")
        return body["specs"]
    if "argv" in body:
        return [body]
    if files := file_keys(body):
        raise ApiError(f"{', '.join(files)}: files on the daemon's host are not read for an HTTP request; give "
                       "the items (items = [...]) and the steps inline", "bad_request")
    try:
        return specfile.from_dict(body, "<request>")
    except specfile.SpecFileError as exc:
        raise ApiError(str(exc), "bad_request") from None


def file_keys(body: dict) -> list[str]:
    """The keys of a spec-file shape that would make the daemon read a file (an array's `items_from`,
    a DAG step's nested `spec`), where the reader takes them."""
    found = ["items_from"] if "items_from" in body else []
    tables = body.get("tasks")
    for name, table in tables.items() if isinstance(tables, dict) else ():
        if isinstance(table, dict):
            found += [f"tasks.{name}.{key}" for key in ("items_from", "spec") if key in table]
    return found


async def start_http(daemon: Daemon) -> HttpServer | None:
    """Serve `[http] listen` (None when it is off, or cannot listen: that is logged, the daemon goes
    on, as with /metrics). The token was read when the daemon was built (`Daemon.http_token`)."""
    listen = daemon.config.http.listen
    if not listen:
        return None
    host, port = parse_host_port(listen)
    server = HttpServer(daemon, daemon.http_token)
    try:
        await server.start(host, port)
    except OSError as exc:
        log.error("http dashboard %s unavailable: %s", listen, exc)
        return None
    log.info("dashboard and API on http://%s/ (%s)", listen if port else f"{host}:{server.port}",
             "writes need the token" if server.token else "loopback only, no token")
    return server
