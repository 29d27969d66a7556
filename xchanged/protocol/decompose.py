"""Composite task specs: check them, order their steps, and produce their parts one at a time.

Rules:
- A composite is a DAG of named steps; `depends_on` names other steps of the same composite. Step
  names are unique; unknown names and cycles are errors, found before anything runs.
- A step is exactly one of: a command (`task`) run once; an array (`task` with `items` or `range`,
  one part per item, or per `chunk` items); a nested composite (one part, itself coordinated).
- Templates: an array's argv may use `{item}`, `{index}` and (with a chunk) `{items}`; `{{`/`}}` are
  literal braces. An argument that is exactly `{items}` becomes one argument per item; elsewhere the
  chunk's items are joined by spaces. Any other placeholder is an error. A single command and the
  reduce are not templates (their braces are literal), but naming a placeholder there is an error.
  Every part also gets XCHANGED_PARENT, XCHANGED_INDEX and XCHANGED_ITEM (a chunk's items, one a
  line) in its environment.
- Part keys name a part within its composite: the step's name for a single part, `name[i]` for the
  i-th part of an array step, and `i` for the parts of the one unnamed array step of a plain array.
  A part's task id is the composite's id, the coordination attempt and the key (`part_task_id`), so
  the parts of an earlier coordinator can never be mistaken for a later one's.
- Parts are produced lazily (`part(step, i)`), so a 10,000-item array costs nothing until its parts
  are released.
"""

from __future__ import annotations

import json
import re
import string
from dataclasses import dataclass, replace
from typing import Iterator

from .errors import RemoteProtocolError
from .specs import MAX_NESTING, MAX_PARTS, MAX_PARTS_INPUT, CompositeSpec, PartResult, Step, TaskSpec
from .wire import MAX_ITEMS, MAX_STR, from_body, to_body

PLACEHOLDERS = {"item", "index", "items"}
STEP_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,63}")
TAIL_CHARS = 256               # output kept per stream of each part result (and handed to a reduce)
SAMPLE_PARENT = "T-" + "X" * 62 + "/999999"   # a long parent id: parts are checked against the wire with it


class SpecError(ValueError):
    """A composite spec that cannot run: `where` names the step and key (`tasks.build.depends_on`)."""

    def __init__(self, where: str, reason: str):
        super().__init__(f"{where}: {reason}" if where else reason)
        self.where, self.reason = where, reason


@dataclass(frozen=True, slots=True)
class Part:
    key: str
    step: str
    index: int
    item: str | None               # the item (a chunk's items, one a line); None for a single part
    spec: TaskSpec


# -- checking -------------------------------------------------------------------------------------


def validate(spec: CompositeSpec, where: str = "", depth: int = 0) -> int:
    """Raise SpecError if `spec` cannot run; return how many parts it has (nested ones count once)."""
    if depth >= MAX_NESTING:
        raise SpecError(where, f"composites nest more than {MAX_NESTING} deep")
    if not spec.steps:
        raise SpecError(where, "a composite needs at least one step")
    names = [s.name for s in spec.steps]
    if len(spec.steps) > 1 or names[0]:
        for s in spec.steps:
            if not STEP_NAME.fullmatch(s.name):
                raise SpecError(_at(where, f"tasks.{s.name or '?'}"), "step names use 1 to 64 of A-Z a-z 0-9 _ . -")
    if "reduce" in names:
        raise SpecError(_at(where, "tasks.reduce"), "'reduce' names the reduce; call the step something else")
    if len(set(names)) != len(names):
        raise SpecError(where, f"step names must be unique: {sorted(n for n in names if names.count(n) > 1)}")
    if spec.max_parallel is not None and spec.max_parallel < 1:
        raise SpecError(_at(where, "max_parallel"), "must be at least 1")
    total = 0
    for s in spec.steps:
        here = _step_at(where, s)
        for dep in s.depends_on:
            if dep not in names:
                raise SpecError(_at(here, "depends_on"), f"no step named {dep!r}")
            if dep == s.name:
                raise SpecError(_at(here, "depends_on"), "a step cannot depend on itself")
        total += _validate_step(s, here, depth)
        if total > MAX_PARTS:
            raise SpecError(where, f"more than {MAX_PARTS} parts")
    step_order(spec, where)                       # raises on a cycle
    if spec.reduce is not None:
        _check_template(spec.reduce.argv, _at(where, "reduce"), array=False)
        total += 1
    return total


def _validate_step(s: Step, where: str, depth: int) -> int:
    if (s.task is None) == (s.composite is None):
        raise SpecError(where, "a step is a command or a nested spec, exactly one of them")
    if s.composite is not None:
        if s.items is not None or s.range is not None:
            raise SpecError(where, "a nested spec cannot have items")
        validate(s.composite, where, depth + 1)
        return 1
    assert s.task is not None
    if s.items is not None and s.range is not None:
        raise SpecError(where, "give items or range, not both")
    if s.chunk < 1:
        raise SpecError(_at(where, "chunk"), "must be at least 1")
    array = s.items is not None or s.range is not None
    if s.range is not None:
        if len(s.range) != 3 or s.range[2] == 0:
            raise SpecError(_at(where, "range"), "expected [start, stop, step] with a non-zero step")
    n = _item_count(s)
    if array and n == 0:
        raise SpecError(_at(where, "items" if s.items is not None else "range"), "the array is empty")
    if s.chunk > 1 and not array:
        raise SpecError(_at(where, "chunk"), "chunk needs items or range")
    _check_template(s.task.argv, _at(where, "command"), array=array)
    if array:
        _check_parts_travel(s, where)
    return part_count(s)


def _check_parts_travel(s: Step, where: str) -> None:
    """Every part goes to its contractor in an award, whose body peers check against the wire's bounds
    (wire.py): a chunk's items (XCHANGED_ITEM, `{items}`) must fit them, and none may hold a NUL (no
    argument or environment variable can). Refused here, not by every peer after the composite runs."""
    if part_count(s) > MAX_PARTS:
        raise SpecError(where, f"more than {MAX_PARTS} parts")
    if s.chunk > MAX_ITEMS:
        raise SpecError(_at(where, "chunk"), f"must be at most {MAX_ITEMS}")
    n = _item_count(s) or 0
    if s.items is not None:
        for i, item in enumerate(s.items):
            if "\0" in item:
                raise SpecError(_at(where, f"items[{i}]"), "contains a NUL character")
        for start in range(0, n, s.chunk):
            chunk = s.items[start:start + s.chunk]
            if sum(map(len, chunk)) + len(chunk) - 1 > MAX_STR:
                raise SpecError(_at(where, "chunk"), f"the items of part {start // s.chunk} are longer than "
                                                     f"{MAX_STR} characters together: use a smaller chunk")
    elif s.range is not None:
        longest = max(len(str(s.range[0])), len(str(s.range[1])))
        if min(s.chunk, n) * (longest + 1) - 1 > MAX_STR:
            raise SpecError(_at(where, "chunk"), f"a part's items would be longer than {MAX_STR} characters "
                                                 "together: use a smaller chunk")
    for index in sorted({0, part_count(s) - 1}):
        try:
            from_body(TaskSpec, to_body(part(s, index, SAMPLE_PARENT).spec))
        except (RemoteProtocolError, ValueError) as exc:
            detail = exc.detail if isinstance(exc, RemoteProtocolError) else str(exc)
            raise SpecError(_at(where, "command"),
                            f"part {index} would be refused by its contractor: {detail}") from None


def _check_template(argv: list[str], where: str, array: bool) -> None:
    """An array's argv is a template; anything else is taken as it is (braces and all), but naming a
    placeholder there is a mistake worth stopping for."""
    if not array:
        for arg in argv:
            for name in PLACEHOLDERS:
                if "{" + name + "}" in arg:
                    raise SpecError(where, f"template {arg!r} uses {{{name}}} but the step has no items")
        return
    for arg in argv:
        try:
            fields = [f or "" for _, f, spec, conv in string.Formatter().parse(arg) if f is not None or spec or conv]
        except ValueError as exc:
            raise SpecError(where, f"bad template {arg!r}: {exc}") from None
        for field_name in fields:
            if field_name not in PLACEHOLDERS:
                raise SpecError(where, f"bad template {arg!r}: unknown placeholder {{{field_name}}} "
                                       "(use {item}, {index}, {items})")
            if not array:
                raise SpecError(where, f"template {arg!r} uses {{{name}}} but the step has no items")


def step_order(spec: CompositeSpec, where: str = "") -> list[Step]:
    """The steps in an order where every step comes after the ones it depends on (raises on a cycle)."""
    by_name = {s.name: s for s in spec.steps}
    done: set[str] = set()
    order: list[Step] = []
    visiting: list[str] = []

    def visit(name: str) -> None:
        if name in done:
            return
        if name in visiting:
            cycle = visiting[visiting.index(name):] + [name]
            raise SpecError(_at(where, "depends_on"), "cycle: " + " -> ".join(cycle))
        visiting.append(name)
        for dep in by_name[name].depends_on:
            visit(dep)
        visiting.pop()
        done.add(name)
        order.append(by_name[name])

    for s in spec.steps:
        visit(s.name)
    return order


# -- parts ----------------------------------------------------------------------------------------


def part_count(s: Step) -> int:
    n = _item_count(s)
    return 1 if n is None else -(-n // s.chunk)


def total_parts(spec: CompositeSpec) -> int:
    """Parts of `spec` at its own level (a nested composite counts once), its reduce included."""
    return sum(part_count(s) for s in spec.steps) + (spec.reduce is not None)


def part_key(s: Step, index: int) -> str:
    if _item_count(s) is None:
        return s.name
    return f"{s.name}[{index}]" if s.name else str(index)


def step_of(key: str) -> str:
    """The step a part key belongs to ("" for the parts of a plain array)."""
    if key.isdigit():
        return ""
    return key.partition("[")[0]


def part_task_id(parent: str, attempt: int, key: str) -> str:
    return f"{parent}/{attempt}/{key}"


def part(s: Step, index: int, parent: str) -> Part:
    """The `index`-th part of step `s` of composite `parent`."""
    key = part_key(s, index)
    if s.composite is not None:
        return Part(key, s.name, 0, None, TaskSpec(argv=[], composite=s.composite, parent=parent, name=key))
    assert s.task is not None
    items = _items(s, index)
    item = None if items is None else "\n".join(items)
    argv = s.task.argv if items is None else _substitute(s.task.argv, items, index)
    env = dict(s.task.env, XCHANGED_PARENT=parent, XCHANGED_INDEX=str(index))
    if item is not None:
        env["XCHANGED_ITEM"] = item
    return Part(key, s.name, index, item,
                replace(s.task, argv=argv, env=env, parent=parent, name=s.task.name or key))


def keys(spec: CompositeSpec) -> Iterator[str]:
    """Every part key of `spec`, in step order, the reduce's ("reduce") last."""
    for s in step_order(spec):
        for i in range(part_count(s)):
            yield part_key(s, i)
    if spec.reduce is not None:
        yield "reduce"


def reduce_part(spec: CompositeSpec, parent: str, results: list[PartResult]) -> Part:
    """The reduce, with the parts' results as JSON lines (in step and index order)."""
    assert spec.reduce is not None
    order = {key: i for i, key in enumerate(keys(spec))}
    lines = [json.dumps(_result_line(r), separators=(",", ":"))
             for r in sorted(results, key=lambda r: order.get(r.key, len(order)))]
    text = "\n".join(lines) + ("\n" if lines else "")
    if len(text) > MAX_PARTS_INPUT:        # keep every part, drop output tails first
        lines = [json.dumps(dict(_result_line(r), stdout_tail="", stderr_tail=""), separators=(",", ":"))
                 for r in sorted(results, key=lambda r: order.get(r.key, len(order)))]
        text = ("\n".join(lines) + "\n")[:MAX_PARTS_INPUT]
    env = dict(spec.reduce.env, XCHANGED_PARENT=parent)
    return Part("reduce", "reduce", 0, None, replace(spec.reduce, env=env, parent=parent, parts_input=text,
                                                     name=spec.reduce.name or "reduce"))


def tail(data: bytes) -> str:
    return data[-TAIL_CHARS:].decode("utf-8", errors="replace")


def _result_line(r: PartResult) -> dict[str, object]:
    step, _, rest = r.key.partition("[")
    index = int(rest[:-1]) if rest else (int(r.key) if r.key.isdigit() else 0)
    return {"key": r.key, "step": "" if r.key.isdigit() else step, "index": index, "item": r.item,
            "state": r.state, "exit_code": r.exit_code, "node": r.node, "reason": r.reason,
            "runtime_ms": r.runtime_ms, "stdout_tail": r.stdout_tail, "stderr_tail": r.stderr_tail}


def _item_count(s: Step) -> int | None:
    if s.items is not None:
        return len(s.items)
    if s.range is not None and len(s.range) == 3 and s.range[2] != 0:
        start, stop, step = s.range                 # arithmetic: len(range) overflows past sys.maxsize
        return max(0, (stop - start + step - 1) // step) if step > 0 else max(0, (start - stop - step - 1) // -step)
    return None


def _items(s: Step, index: int) -> list[str] | None:
    if s.items is not None:
        return s.items[index * s.chunk:(index + 1) * s.chunk]
    if s.range is not None:
        start, _, step = s.range
        end = min((index + 1) * s.chunk, _item_count(s) or 0)
        return [str(start + i * step) for i in range(index * s.chunk, end)]
    return None


def _substitute(argv: list[str], items: list[str], index: int) -> list[str]:
    out: list[str] = []
    values = {"item": items[0] if len(items) == 1 else " ".join(items), "index": str(index), "items": " ".join(items)}
    for arg in argv:
        if arg == "{items}":
            out.extend(items)
        else:
            out.append(arg.format_map(values))
    return out


def _step_at(where: str, s: Step) -> str:
    """Where a step's keys are, as the spec file has them: `tasks.NAME`, or the top level."""
    return _at(where, f"tasks.{s.name}") if s.name else where


def _at(where: str, key: str) -> str:
    return f"{where}.{key}" if where and key else where or key
