"""Task descriptions: what a client submits and a contractor runs (`TaskSpec`), and how a composite
task decomposes into parts (`CompositeSpec`; decompose.py expands it).

A composite is a DAG of steps. A step is a command run once, an array (one part per item, or per
`chunk` items, of `items` or a `range`), or a nested composite; `depends_on` orders steps. A
`reduce` command runs after the parts, with their results. Part results travel back to the task's
manager as `PartResult`s, so a new coordinator never reruns a part that finished.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Annotated

from .wire import Limit

PRIORITIES = ("low", "normal", "high", "urgent")
MAX_PARTS = 100_000            # parts of one composite (all steps), and items of one array
MAX_PARTS_INPUT = 2 << 20      # characters of the part results handed to a reduce
MAX_NESTING = 8                # composites within composites
MAX_SECONDS = 10 * 366 * 86400.0   # a timeout or run-time estimate, at most (ten years)
MAX_EPOCH_MS = 253_402_300_800_000  # a deadline, at most (year 9999): relative times stay in int64
PRIORITY_LEVEL = {name: level for level, name in enumerate(PRIORITIES)}


def priority_level(name: str) -> int:
    """Queue rank of a priority name (low=0 .. urgent=3)."""
    try:
        return PRIORITY_LEVEL[name]
    except KeyError:
        raise ValueError(f"priority must be one of {', '.join(PRIORITIES)}, got {name!r}") from None




@dataclass(frozen=True, slots=True)
class Requirements:
    """What a node must have to run a task (hard), and what it should have (soft `prefer`)."""

    cpus: float = 1.0
    mem: int = 0                     # bytes
    gpus: int = 0
    gpu_mem: int = 0                 # bytes free per GPU
    labels: dict[str, str] = field(default_factory=dict)
    prefer: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.cpus < 0 or self.mem < 0 or self.gpus < 0 or self.gpu_mem < 0:
            raise ValueError("resource requirements must not be negative")


@dataclass(frozen=True, slots=True)
class TaskSpec:
    """A command task as submitted: everything a contractor needs to run it."""

    argv: list[str]
    env: dict[str, str] = field(default_factory=dict)
    cwd: str | None = None
    timeout: float | None = None     # seconds of run time before the attempt is killed
    requirements: Requirements = field(default_factory=Requirements)
    priority: str = "normal"
    retries: int = 3                 # attempts after the first, for failures
    deadline_ms: int | None = None   # wall-clock epoch ms, for earliest-deadline-first ordering
    name: str = ""
    est_runtime: float | None = None # seconds, the submitter's estimate (used for EDF and bids)
    composite: CompositeSpec | None = None    # set: no command of its own; a coordinator runs its parts
    parent: str = ""                 # a part: the composite it belongs to
    parts_input: Annotated[str, Limit(MAX_PARTS_INPUT)] | None = None   # reduce: the parts' results
                                     # (JSON lines), written to a file named by $XCHANGED_PARTS
    user: str = ""                   # the submitting user's name on its manager (set by the manager's
                                     # daemon from the control socket's peer credentials, never the client;
                                     # a composite's parts inherit it)

    def __post_init__(self) -> None:
        if self.composite is None and (not self.argv or not all(self.argv)):
            raise ValueError("a task needs a non-empty command")
        priority_level(self.priority)
        if self.retries < 0 or self.retries > 100:
            raise ValueError("retries must be between 0 and 100")
        if self.timeout is not None and not 0 < self.timeout <= MAX_SECONDS:
            raise ValueError(f"timeout must be positive and at most {MAX_SECONDS:.0f} seconds")
        if self.est_runtime is not None and not 0 <= self.est_runtime <= MAX_SECONDS:
            raise ValueError(f"est_runtime must be from 0 to {MAX_SECONDS:.0f} seconds")
        if self.deadline_ms is not None and not 0 <= self.deadline_ms <= MAX_EPOCH_MS:
            raise ValueError("deadline_ms must be epoch milliseconds from 0 to the year 9999")
        _check_runnable(self)


    @property
    def command(self) -> str:
        """argv[0], the name allow-lists and run-time histories know a command by ("" for a composite)."""
        return self.argv[0] if self.argv else ""


@dataclass(frozen=True, slots=True)
class Step:
    """One step of a composite: its parts are `task` with each item substituted (an array), `task`
    once (no items), or a nested composite. See decompose.py for templates and part naming."""

    name: str = ""                   # "" for the single step of a plain array
    task: TaskSpec | None = None     # the command template and every part's options
    composite: CompositeSpec | None = None
    items: Annotated[list[str], Limit(MAX_PARTS)] | None = None
    range: list[int] | None = None   # [start, stop, step], like Python's range
    chunk: int = 1                   # items per part
    depends_on: list[str] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class CompositeSpec:
    steps: list[Step]
    reduce: TaskSpec | None = None   # runs after the parts, given their results ($XCHANGED_PARTS)
    fail_fast: bool = False          # the first failed part fails the composite (else all parts end first)
    max_parallel: int | None = None  # parts in flight at once, at most (DAGMan's maxjobs)


@dataclass(frozen=True, slots=True)
class PartResult:
    """How one part of a composite ended, as the coordinator reports it to the composite's manager."""

    key: str                         # "step[index]" (decompose.part_key); "reduce" for the reduce
    state: str                       # succeeded | failed | cancelled | skipped
    exit_code: int | None = None
    node: str = ""                   # where its last attempt ran (name)
    reason: str = ""
    runtime_ms: int = 0
    item: str | None = None
    task: str = ""                   # the part's own task id
    manager: str = ""                # the node that managed it (its coordinator)
    stdout_tail: str = ""
    stderr_tail: str = ""


def _check_runnable(spec: TaskSpec) -> None:
    """What no process can be started with (execve refuses it): a NUL in an argument, the working
    directory or the environment, and an environment name that is empty or holds '='."""
    for i, arg in enumerate(spec.argv):
        if "\0" in arg:
            raise ValueError(f"argv[{i}] contains a NUL character")
    if spec.cwd is not None and "\0" in spec.cwd:
        raise ValueError("cwd contains a NUL character")
    for name, value in spec.env.items():
        if not name or "=" in name or "\0" in name:
            raise ValueError(f"environment name {name!r} must be non-empty, without '=' or NUL")
        if "\0" in value:
            raise ValueError(f"environment variable {name} contains a NUL character")


def with_user(spec: TaskSpec, user: str) -> TaskSpec:
    """`spec` submitted by `user`: the name set on it and on every task inside it (a composite's
    steps, nested composites, its reduce), whatever the submitter wrote there, so no part of a
    composite can run as someone else (run_as = "submitter")."""
    composite = spec.composite
    if composite is not None:
        steps = [replace(s, task=None if s.task is None else with_user(s.task, user),
                         composite=None if s.composite is None else _composite_with_user(s.composite, user))
                 for s in composite.steps]
        composite = replace(composite, steps=steps,
                            reduce=None if composite.reduce is None else with_user(composite.reduce, user))
    return replace(spec, user=user, composite=composite)


def _composite_with_user(composite: CompositeSpec, user: str) -> CompositeSpec:
    return with_user(TaskSpec(argv=[], composite=composite), user).composite or composite
