"""Task spec files (`xchanged submit -f SPEC.toml`, `Client.submit_spec`): TOML, or the same shape as
a dict, to the task specs a daemon takes. Every error names the file, the table and the key.

Shapes (README "Composite tasks" has worked examples):
- `[task]` or `[[task]]`: independent tasks, each a `command` plus the keys of the submit flags
  (cpus, mem, gpus, gpu_mem, labels, prefer, priority, timeout, retries, deadline, env, cwd, name,
  est_runtime).
- A top-level `command`: one task; with exactly one of `items`, `items_from` (a file, one item a
  line) or `range = [start, stop, step]`, and optionally `chunk`, an array of parts.
- `[tasks.NAME]` tables: a DAG of steps, each a command (maybe an array) or `spec = "other.toml"`
  (a nested composite), with `depends_on = [...]`.
- Arrays and DAGs take `reduce` (a command, or a table with `command` and the submit keys),
  `fail_fast` and `max_parallel` at the top level.
A command is a list of strings, or one string run by `sh -c`. Paths are relative to the spec file.
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

from .client import build_spec
from .protocol import decompose
from .protocol.errors import RemoteProtocolError
from .protocol.messages import TaskSpec, from_body

OPTION_KEYS = {"cpus", "mem", "gpus", "gpu_mem", "labels", "prefer", "priority", "timeout", "retries",
               "deadline", "env", "cwd", "name", "est_runtime"}
ARRAY_KEYS = {"items", "items_from", "range", "chunk"}
COMPOSITE_KEYS = {"reduce", "fail_fast", "max_parallel"}
MAX_SPEC_FILES = 64            # nested spec files, in all


class SpecFileError(ValueError):
    """A spec that cannot be submitted: `FILE: TABLE.KEY: reason` (the CLI exits 2)."""

    def __init__(self, file: str, where: str, reason: str):
        super().__init__(f"{file}: {where}: {reason}" if where else f"{file}: {reason}")
        self.file, self.where, self.reason = file, where, reason


def load(path: str | Path) -> list[dict[str, Any]]:
    """The task specs (bodies) a spec file describes: one, or several independent ones."""
    path = Path(path)
    return from_dict(_read(path, str(path)), str(path), path.absolute().parent)


def from_dict(data: dict[str, Any], file: str = "<spec>", base_dir: Path | None = None) -> list[dict[str, Any]]:
    """As `load`, for a spec already parsed (or written in Python); `base_dir` resolves its paths."""
    reader = _Reader(file, Path(base_dir or Path.cwd()))
    bodies = reader.top(data)
    for i, body in enumerate(bodies):
        _check(body, file, f"task {i}" if len(bodies) > 1 else "")
    return bodies


class _Reader:
    def __init__(self, file: str, base_dir: Path, files: list[str] | None = None):
        self.file, self.base_dir = file, base_dir
        self.files = files if files is not None else [file]

    def error(self, where: str, reason: str) -> SpecFileError:
        return SpecFileError(self.file, where, reason)

    def top(self, data: dict[str, Any]) -> list[dict[str, Any]]:
        if not isinstance(data, dict):
            raise self.error("", "a spec is a table")
        if "task" in data:
            self._only(data, {"task"}, "")
            tables = data["task"]
            tables = [tables] if isinstance(tables, dict) else tables
            if not isinstance(tables, list) or not tables or not all(isinstance(t, dict) for t in tables):
                raise self.error("task", "expected a [task] table or [[task]] tables")
            return [self.task(t, f"task[{i}]" if len(tables) > 1 else "task") for i, t in enumerate(tables)]
        if "tasks" in data or "command" in data and ARRAY_KEYS & data.keys():
            return [{"argv": [], "name": self._string(data, "name", "") or self.file_name(),
                     "composite": self.composite(data, "")}]
        if "command" in data:
            return [self.task(data, "")]
        raise self.error("", "expected a command, an array (command with items, items_from or range), "
                             "[tasks.NAME] tables, or [task]/[[task]] tables")

    def file_name(self) -> str:
        return Path(self.file).stem

    def composite(self, data: dict[str, Any], where: str) -> dict[str, Any]:
        """A composite's body from a table with `tasks` (a DAG) or an array `command` at its top."""
        if "tasks" in data:
            self._only(data, {"tasks", "name"} | COMPOSITE_KEYS, where)
            tables = data["tasks"]
            if not isinstance(tables, dict) or not tables:
                raise self.error(_at(where, "tasks"), "expected [tasks.NAME] tables")
            steps = [self.step(name, t, _at(where, f"tasks.{name}")) for name, t in tables.items()]
        else:
            self._only(data, {"command"} | ARRAY_KEYS | OPTION_KEYS | COMPOSITE_KEYS, where)
            steps = [self.step("", {k: v for k, v in data.items() if k not in COMPOSITE_KEYS and k != "name"}, where)]
        body: dict[str, Any] = {"steps": steps, "fail_fast": self._bool(data, "fail_fast", where),
                                "max_parallel": self._int(data, "max_parallel", where)}
        if "reduce" in data:
            reduce = data["reduce"]
            table = reduce if isinstance(reduce, dict) else {"command": reduce}
            body["reduce"] = self.task(table, _at(where, "reduce"))
        return body

    def step(self, name: str, table: Any, where: str) -> dict[str, Any]:
        if not isinstance(table, dict):
            raise self.error(where, "expected a table")
        self._only(table, {"command", "spec", "depends_on"} | ARRAY_KEYS | OPTION_KEYS, where)
        step: dict[str, Any] = {"name": name, "depends_on": self._strings(table, "depends_on", where)}
        if "spec" in table:
            if "command" in table or ARRAY_KEYS & table.keys():
                raise self.error(_at(where, "spec"), "a step is a command or a spec file, not both")
            step["composite"] = self.nested(table["spec"], _at(where, "spec"))
            return step
        given = [k for k in ("items", "items_from", "range") if k in table]
        if len(given) > 1:
            raise self.error(_at(where, given[1]), f"give one of items, items_from or range, not {' and '.join(given)}")
        options = {k: v for k, v in table.items() if k in OPTION_KEYS}
        step["task"] = self.task({"command": table.get("command"), **options}, where)
        if "items" in table:
            step["items"] = self._strings(table, "items", where, any_scalar=True)
        elif "items_from" in table:
            step["items"] = self.items_from(table["items_from"], _at(where, "items_from"))
        elif "range" in table:
            value = table["range"]
            if not isinstance(value, list) or len(value) not in (2, 3) or not all(
                    isinstance(v, int) and not isinstance(v, bool) for v in value):
                raise self.error(_at(where, "range"), "expected [start, stop] or [start, stop, step] integers")
            step["range"] = value if len(value) == 3 else [*value, 1]
        if "chunk" in table:
            step["chunk"] = self._int(table, "chunk", where)
        return step

    def task(self, table: dict[str, Any], where: str) -> dict[str, Any]:
        self._only(table, {"command"} | OPTION_KEYS, where)
        command = table.get("command")
        if isinstance(command, str):
            command = ["sh", "-c", command]
        if not isinstance(command, list) or not command or not all(isinstance(a, str) and a for a in command):
            raise self.error(_at(where, "command"), "expected a list of strings, or a shell command string")
        options = {k: v for k, v in table.items() if k != "command"}
        try:
            return build_spec(command, **options)
        except (TypeError, ValueError) as exc:
            for key, value in options.items():          # name the key at fault
                try:
                    build_spec(command, **{key: value})
                except (TypeError, ValueError) as alone:
                    raise self.error(_at(where, key), f"{alone} (got {value!r})") from None
            raise self.error(where, str(exc)) from None

    def nested(self, value: Any, where: str) -> dict[str, Any]:
        if not isinstance(value, str) or not value:
            raise self.error(where, "expected the path of a spec file")
        path = self.base_dir / value
        if str(path) in self.files:
            raise self.error(where, f"{value} includes itself")
        if len(self.files) >= MAX_SPEC_FILES:
            raise self.error(where, f"more than {MAX_SPEC_FILES} nested spec files")
        inner = _Reader(str(path), path.absolute().parent, self.files + [str(path)])
        data = _read(path, str(path), self.file, where)
        if "tasks" not in data and not ("command" in data and ARRAY_KEYS & data.keys()):
            raise inner.error("", "a nested spec is an array or [tasks.NAME] tables")
        return inner.composite(data, "")

    def items_from(self, value: Any, where: str) -> list[str]:
        if not isinstance(value, str) or not value:
            raise self.error(where, "expected the path of a file with one item a line")
        try:
            text = (self.base_dir / value).read_text()
        except OSError as exc:
            raise self.error(where, f"cannot read {value}: {exc.strerror or exc}") from None
        return [line for line in text.splitlines() if line.strip()]

    # -- typed reads ------------------------------------------------------------------------------

    def _only(self, table: dict[str, Any], allowed: set[str], where: str) -> None:
        for key in table:
            if key not in allowed:
                raise self.error(_at(where, key), "unknown key" + (
                    " (arrays and DAGs cannot be mixed with [task] tables)" if key in {"task", "tasks"} else ""))

    def _strings(self, table: dict[str, Any], key: str, where: str, any_scalar: bool = False) -> list[str]:
        value = table.get(key, [])
        ok = (str, int, float) if any_scalar else (str,)
        if not isinstance(value, list) or not all(isinstance(v, ok) and not isinstance(v, bool) for v in value):
            raise self.error(_at(where, key), "expected a list of strings")
        return [str(v) for v in value]

    def _int(self, table: dict[str, Any], key: str, where: str) -> int | None:
        value = table.get(key)
        if value is not None and (not isinstance(value, int) or isinstance(value, bool)):
            raise self.error(_at(where, key), f"expected an integer, got {value!r}")
        return value

    def _bool(self, table: dict[str, Any], key: str, where: str) -> bool:
        value = table.get(key, False)
        if not isinstance(value, bool):
            raise self.error(_at(where, key), f"expected true or false, got {value!r}")
        return value

    def _string(self, table: dict[str, Any], key: str, default: str) -> str:
        value = table.get(key, default)
        if not isinstance(value, str):
            raise self.error(key, f"expected a string, got {value!r}")
        return value


def _check(body: dict[str, Any], file: str, where: str) -> None:
    """What the daemon would refuse, refused here with the file named: the spec as the wire checks it,
    and a composite's DAG, templates and arrays (decompose.validate)."""
    try:
        spec = from_body(TaskSpec, body)
        if spec.composite is not None:
            decompose.validate(spec.composite)
    except RemoteProtocolError as exc:
        raise SpecFileError(file, where, exc.detail) from None
    except decompose.SpecError as exc:
        raise SpecFileError(file, _at(where, exc.where), exc.reason) from None


def _read(path: Path, file: str, parent: str = "", where: str = "") -> dict[str, Any]:
    try:
        return tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise (SpecFileError(parent, where, f"no such spec file: {path}") if parent
               else SpecFileError(file, "", "no such file")) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise SpecFileError(file, "", f"cannot read: {exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise SpecFileError(file, "", f"not valid TOML: {exc}") from None
    except RecursionError:                          # arrays or tables nested thousands deep
        raise SpecFileError(file, "", "not valid TOML: nested too deeply") from None


def _at(where: str, key: str) -> str:
    return f"{where}.{key}" if where and key else where or key
