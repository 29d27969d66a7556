"""What a contractor works with: its settings, and a claim on its room for each task it took on
(a reservation while its bid is outstanding, then the accepted attempt, queued or running).
contractor.py moves claims; admission.py and run_times.py read them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Optional

from .messages import Requirements, TaskSpec


@dataclass(frozen=True, slots=True)
class ContractorSettings:
    self_id: str
    slots: int
    labels: dict[str, str] = field(default_factory=dict)
    overload_cpu_percent: float = 90.0
    allow: tuple[str, ...] = ("*",)
    heartbeat: float = 1.0
    reservation_ttl: float = 5.0
    prefetch: int = 0
    vet: Optional[Callable[[str, str, Optional[str]], Optional[str]]] = None   # (command, user, cwd) -> why not


@dataclass(slots=True)
class Claim:
    """Room held for one task: a reservation (bid outstanding) or a running attempt."""

    task_id: str
    attempt: int
    manager: str
    req: Requirements
    gpus: tuple[int, ...]
    expires: float = 0.0            # reservations only
    spec: TaskSpec | None = None    # running only
    started: float = 0.0
    pid: int | None = None
    next_heartbeat: float = 0.0
    manager_address: str = ""       # where the manager was when it awarded (used if we forget it)
    pid_start: float = 0.0
    queued: bool = False            # accepted, waiting in the local queue for a slot
    from_queue: bool = False        # it waited in the local queue before it started
    streamed: list[int] = field(default_factory=lambda: [0, 0])   # live output sent: stdout, stderr bytes
