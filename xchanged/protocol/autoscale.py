"""The autoscale decision: does the cluster need a node more, or can it spare one, and who acts on it.

Pure: fed the cluster as this node sees it (its own load and its healthy peers' last load signals)
and the time; the daemon runs the hook commands (runtime/autoscale.py).

Rules:
- Backlog: the tasks waiting cluster-wide (every healthy manager's `queued`). Utilisation: busy
  slots over all slots of the healthy nodes that are not draining (a draining node is on its way out).
- Up when the backlog is at least `backlog_up` and utilisation at least `utilization_up`; down when
  nothing waits, utilisation is at most `utilization_down`, more than `min_nodes` healthy nodes remain
  and one of them is idle. A condition must hold without a break for `hold` before it is a
  decision; after a decision that direction rests for `cooldown`.
- Exactly one node acts on a decision: the healthy, not draining node with the lowest id (all nodes
  see nearly the same loads, so they agree on it). Every node still takes the decision and its
  cool-down, so it does not act on the same episode when the leadership moves to it a moment later.
- A scale-down names the node to remove: an idle one (no attempt running, no task of its own
  waiting), preferring one already draining, then the highest id (the leader stays). The hook should
  drain it (`xchanged drain --wait` there) before removing it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

UP, DOWN = "up", "down"


@dataclass(frozen=True, slots=True)
class AutoscaleSettings:
    backlog_up: int = 10
    utilization_up: float = 80.0          # percent
    utilization_down: float = 20.0        # percent
    hold: float = 60.0                    # seconds
    cooldown: float = 600.0
    min_nodes: int = 1
    up: bool = True                       # a scale-up hook is configured
    down: bool = True                     # a scale-down hook is configured


@dataclass(frozen=True, slots=True)
class Agent:
    """One healthy node as the decision sees it (from its last load signal; ourselves: fresh)."""

    id: str
    name: str
    address: str
    slots: int
    running: int
    queued: int                           # tasks it manages that wait for a contractor
    draining: bool = False


@dataclass(frozen=True, slots=True)
class Decision:
    direction: str                        # up | down
    act: bool                             # this node runs the hook (it is the leader)
    leader: str                           # id of the node that runs it
    backlog: int
    utilization: float                    # percent
    nodes: int                            # healthy nodes
    remove: Agent | None = None           # down: the node to drain and remove


def backlog(agents: list[Agent]) -> int:
    return sum(a.queued for a in agents)


def utilization(agents: list[Agent]) -> float:
    """Busy share of the slots of the nodes not draining, in percent."""
    serving = [a for a in agents if not a.draining]
    slots = sum(a.slots for a in serving)
    return 100.0 * sum(min(a.slots, a.running) for a in serving) / slots if slots else 0.0


def leader(agents: list[Agent]) -> str:
    serving = [a.id for a in agents if not a.draining]
    return min(serving or [a.id for a in agents], default="")


def to_remove(agents: list[Agent]) -> Agent | None:
    idle = [a for a in agents if a.running == 0 and a.queued == 0]
    return max(idle, key=lambda a: (a.draining, a.id), default=None)


@dataclass
class Autoscaler:
    self_id: str
    settings: AutoscaleSettings
    since: dict[str, float] = field(default_factory=dict)         # direction -> held since
    resting_until: dict[str, float] = field(default_factory=dict)  # direction -> end of its cool-down

    def observe(self, agents: list[Agent], now: float) -> Decision | None:
        """`agents`: the healthy nodes, ourselves included. A decision when a condition has held for
        `hold` outside its cool-down (whether we act on it or not: `Decision.act`), else None."""
        s = self.settings
        waiting, busy = backlog(agents), utilization(agents)
        victim = to_remove(agents)
        wanted = {
            UP: s.up and waiting >= s.backlog_up and busy >= s.utilization_up,
            DOWN: s.down and waiting == 0 and busy <= s.utilization_down and len(agents) > s.min_nodes
            and victim is not None,
        }
        decision = None
        for direction, holds in wanted.items():
            if not holds:
                self.since.pop(direction, None)
                continue
            start = self.since.setdefault(direction, now)
            if now - start < s.hold or now < self.resting_until.get(direction, float("-inf")):
                continue
            del self.since[direction]
            self.resting_until[direction] = now + s.cooldown
            lead = leader(agents)
            decision = Decision(direction, lead == self.self_id, lead, waiting, round(busy, 1), len(agents),
                                victim if direction == DOWN else None)
        return decision
