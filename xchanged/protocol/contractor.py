"""The contractor side of the Contract Net: admission, bidding, accepting, running, reporting.

Rules:
- A `cfp` is answered with a `bid` only if the task fits now, counting running attempts AND bids
  still outstanding (each bid reserves its room until the award, a `reject_bid`, or `reservation_ttl`).
- Prefetch: when every slot is taken, a node may still accept up to `prefetch` tasks into a local FIFO
  queue, but only for a manager that says its own queue is deep (`queue_ok` on the cfp or award), and
  only while a slot is expected to free soon (within PREFETCH_HORIZON_MS, from the run times seen
  here), so a task is never parked behind hour-long ones while other nodes free up.
  A queued attempt is accepted (`accept.queued` = its position) and started the moment a slot frees
  and its resources fit, hiding the award round trip from the slot's idle time. Resources (CPUs,
  memory, GPUs) of a queued task are checked against the node's total at admission and against what
  is free when it starts; its GPUs are chosen then. At start a `progress` with the pid is sent at once.
  Otherwise a `refuse` says why, with a stable code (admission.py).
- Policy (admission.py) is checked on the cfp and again on every award, whatever was bid: the
  award's spec is what would run.
- An `award` consumes the reservation (or re-checks admission when it expired) and is answered with
  `accept` (and the process is started) or `reject`. A repeated award of a running attempt is
  accepted again: it is the manager retrying after a lost accept.
- A running attempt sends `progress` every `heartbeat`. Its `result` is resent with backoff until the
  manager acknowledges it with `ack` (results.py).
- `cancel` kills the attempt (or drops its reservation). The result then reports outcome `cancelled`.
- Live output: what a running attempt writes (`OutputWritten`, coalesced by the executor) goes to
  its manager as `output` frames, each with its byte offset in the stream, before the result (one
  connection keeps them in order), so `logs -f` anywhere shows it as it is written.
- Draining (`drain`, operations.py): every cfp and award is refused with code `draining`; accepted
  attempts still waiting in the local queue are handed back at once (a `result` with outcome `lost`
  and `handed_back`, which its manager re-awards elsewhere without counting a failure); running ones
  finish. A stopping daemon hands back the running ones too (`hand_back_running`), killing them.
- Fewer slots after a reload than attempts running: nothing is killed; no new work is taken until
  they drain below the new count (`holding` may exceed `slots` meanwhile, `slots_free` is then 0).
- Durability: an accepted attempt is persisted (`PersistAttempt`, state "running") in the batch
  that accepts and starts it, right after (write-behind: if we crash before that commit, the process
  dies with us and the manager, hearing nothing, reassigns the attempt after the heartbeat deadline,
  just as it would after a crash a moment later; the write stays off the path from award to start).
  Its pid and start time are added lazily once it runs; its result replaces the record, and what
  happens to results after a restart, is results.py's.
Admission (does it fit?) is admission.py's; run-time estimates are run_times.py's.
"""

from __future__ import annotations

from collections import Counter
from typing import Any, Callable

from . import admission
from .admission import Admission
from .claims import Claim, ContractorSettings
from .codec import Envelope
from .effects import AFTER, LAZY, Audit, KillTask, Outbox, PersistAttempt, Send, StartTask
from .errors import LocalProtocolError
from .events import Capacity, OutputWritten, TaskExited
from .messages import (
    OUTPUT_CHUNK,
    ROOM_CODES,
    STREAMS,
    Accept,
    Award,
    Bid,
    Cfp,
    Outcome,
    Output,
    Progress,
    RefusalCode,
    Refuse,
    Reject,
    Requirements,
    Result,
)
from .results import PendingResult, Results
from .run_times import RunTimes

R = RefusalCode

__all__ = ["Claim", "Contractor", "ContractorSettings", "PendingResult"]

PREFETCH_HORIZON_MS = 1000.0    # queue a task only if a slot is expected to free within this


class Contractor:
    def __init__(self, settings: ContractorSettings, outbox: Outbox, lookup: Callable[[str], tuple[str, str]]):
        self.settings = settings
        self.out = outbox
        self.lookup = lookup                          # peer id -> (address, name)
        self.capacity = Capacity(cpus=settings.slots, cpu_percent=0.0, mem_total=0, mem_available=0)
        self.reserved: dict[tuple[str, str], Claim] = {}      # (manager, task_id) -> reservation
        self.running: dict[tuple[str, int], Claim] = {}       # (task_id, attempt) -> accepted attempt
        self.waiting: list[tuple[str, int]] = []              # accepted attempts queued for a slot, FIFO
        self.results = Results(outbox, self._send)
        self.pending: dict[tuple[str, int], PendingResult] = self.results.pending   # results not acknowledged
        self.completed = 0
        self.failed_runs = 0                                  # attempts run here that did not exit 0
        self.run_ms = 0                                       # total run time of the attempts run here
        self.refusals: Counter[str] = Counter()               # refuse and reject messages sent, by code
        self.draining = False
        self.run_times = RunTimes()

    # -- state ----------------------------------------------------------------------------------

    @property
    def holding(self) -> int:
        """Slots held: started attempts and reservations of bids that would start at once."""
        return self.started + sum(1 for c in self.reserved.values() if not c.queued)

    @property
    def queue_places(self) -> int:
        """Places taken in the local queue: accepted attempts waiting, and bids made to wait there."""
        return len(self.waiting) + sum(1 for c in self.reserved.values() if c.queued)

    @property
    def slots_free(self) -> int:
        return max(0, self.settings.slots - self.holding)

    def queue_free(self, now: float) -> int:
        """Room left in the local queue (beyond the free slots): none while no slot is expected to
        free within PREFETCH_HORIZON_MS, so a task is never parked behind long-running ones."""
        if not self._queue_open(now):
            return 0
        return max(0, self.settings.prefetch - self.queue_places)

    def _queue_open(self, now: float) -> bool:
        return self.settings.prefetch > 0 and self._until_a_slot_frees(now) <= PREFETCH_HORIZON_MS

    @property
    def started(self) -> int:
        return len(self.running) - len(self.waiting)

    @property
    def overloaded(self) -> bool:
        return admission.overloaded(self.settings, self.capacity)

    @property
    def memory_short(self) -> bool:
        return admission.memory_short(self.capacity)

    @property
    def offer_slots(self) -> int:
        """Slots this node offers to managers now: none while its CPU or memory is overloaded, or it drains."""
        return 0 if self.overloaded or self.memory_short or self.draining else self.slots_free

    def offer_queue(self, now: float) -> int:
        return 0 if self.overloaded or self.memory_short or self.draining else self.queue_free(now)

    def _claims(self, exclude: tuple[str, str] | None = None) -> list[Claim]:
        return list(self.running.values()) + [c for k, c in self.reserved.items() if k != exclude]

    def policy_refusal(self, command: str, user: str = "", cwd: str | None = None) -> str | None:
        """Why this node's policy forbids running `command` for `user` in `cwd`, or None."""
        return admission.policy_refusal(self.settings, command, user, cwd)

    def refusal(self, req: Requirements, command: str, now: float, exclude: tuple[str, str] | None = None,
                queue_ok: bool = False, user: str = "",
                cwd: str | None = None) -> Admission:
        """(code, reason, gpus): code is "" when the task fits; gpus are the devices it would get."""
        s = self.settings
        if self.draining:
            return R.DRAINING, "the node is draining", ()
        why = self.policy_refusal(command, user, cwd)
        if why is not None:
            return R.POLICY, why, ()
        for key, value in req.labels.items():
            if s.labels.get(key) != value:
                return R.LABEL, f"label {key}={value} missing", ()
        claims = self._claims(exclude)
        holding = [c for c in claims if not c.queued]
        if len(holding) >= s.slots:
            if not queue_ok or len(claims) - len(holding) >= s.prefetch or not self._queue_open(now):
                return R.NO_SLOTS, f"all {s.slots} slots busy", ()
            return admission.fits_queue(s, self.capacity, req)
        return admission.fits_now(s, self.capacity, req, holding)

    def start_queued(self, now: float) -> None:
        """The liveness rule: while a slot is free and the head of the local queue fits, start it.
        Run after every input (an exit, a released or expired reservation, a cancel, a new resource
        reading can each make room), so a queued attempt never waits on an idle slot."""
        while self.waiting and self.holding < self.settings.slots:
            key = self.waiting[0]
            claim = self.running[key]
            holding = [c for c in self._claims() if not c.queued]
            code, _, gpus = admission.fits_now(self.settings, self.capacity, claim.req, holding, check_overload=False)
            if code:
                return                        # head of the queue waits for more room (FIFO)
            self.waiting.pop(0)
            claim.queued, claim.from_queue, claim.gpus = False, True, gpus
            claim.started, claim.next_heartbeat = now, now + self.settings.heartbeat
            self._start(claim)

    # -- messages -------------------------------------------------------------------------------

    def on_cfp(self, env: Envelope, now: float) -> None:
        cfp: Cfp = env.message
        key = (env.sender, cfp.task_id)
        code, reason, gpus = self.refusal(cfp.requirements, cfp.command, now, exclude=key, queue_ok=cfp.queue_ok,
                                          user=cfp.user, cwd=cfp.cwd)
        if code:
            self.refusals[code] += 1
            self._send(env.sender, Refuse(cfp.task_id, cfp.attempt, code, reason))
            return
        queued = sum(1 for c in self._claims(exclude=key) if not c.queued) >= self.settings.slots
        self.reserved[key] = Claim(cfp.task_id, cfp.attempt, env.sender, cfp.requirements, gpus,
                                   expires=now + self.settings.reservation_ttl, queued=queued)
        cap = self.capacity
        self._send(env.sender, Bid(cfp.task_id, cfp.attempt, slots=self.settings.slots,
                                   slots_free=self.slots_free, cpu_percent=cap.cpu_percent,
                                   mem_available=cap.mem_available,
                                   affinity=sum(1 for k, v in cfp.requirements.prefer.items()
                                                if self.settings.labels.get(k) == v),
                                   est_runtime_ms=self.run_times.estimate_ms(cfp), queued=queued,
                                   est_start_ms=self._until_a_slot_frees(now) if queued else 0))

    def _until_a_slot_frees(self, now: float) -> int:
        return self.run_times.until_a_slot_frees(self.running.values(), now)

    def on_reject_bid(self, env: Envelope) -> None:
        key = (env.sender, env.message.task_id)
        claim = self.reserved.get(key)
        if claim is not None and claim.attempt == env.message.attempt:
            del self.reserved[key]

    def on_award(self, env: Envelope, now: float, wall_ms: int) -> None:
        award: Award = env.message
        run_key = (award.task_id, award.attempt)
        running = self.running.get(run_key)
        if running is not None and running.manager == env.sender:
            self._send(env.sender, self._accept(running, now))
            return
        done = self.pending.get(run_key)
        if done is not None and done.manager == env.sender:     # already ran it: never run it twice
            self._send(env.sender, Accept(award.task_id, award.attempt))
            self._send(env.sender, done.result, done.manager_address)
            return
        key = (env.sender, award.task_id)
        reservation = self.reserved.pop(key, None)
        why = self.policy_refusal(award.spec.command, award.spec.user, award.spec.cwd)
        if why is not None:                 # whatever the cfp said: the award's spec is what would run
            self._send(env.sender, Reject(award.task_id, award.attempt, R.POLICY, why))
            return
        if reservation is not None and not reservation.queued:
            gpus, must_wait = reservation.gpus, False        # the bid held a slot and its resources
        else:
            code, reason, gpus = self.refusal(award.spec.requirements, award.spec.argv[0], now,
                                              queue_ok=award.queue_ok or reservation is not None)
            if code in ROOM_CODES and reservation is not None:
                code = None         # the bid held a place in the queue: wait there until the task fits
            if code:
                self.refusals[code] += 1
                self._send(env.sender, Reject(award.task_id, award.attempt, code, reason))
                return
            must_wait = reservation is not None or bool(self.waiting) or self.holding >= self.settings.slots
        claim = Claim(award.task_id, award.attempt, env.sender, award.spec.requirements, () if must_wait else gpus,
                      spec=award.spec, started=now, next_heartbeat=now + self.settings.heartbeat,
                      manager_address=self.lookup(env.sender)[0], queued=must_wait)
        self.running[run_key] = claim
        self._persist_running(claim)
        self.out.emit(Audit, entry={"event": "award", "task": award.task_id, "attempt": award.attempt,
                                    "manager": env.sender, "contractor": self.settings.self_id,
                                    "score": award.score, "time_ms": wall_ms, "message": env.raw})
        if must_wait:
            self.waiting.append(run_key)
            self.start_queued(now)                  # a queued bid whose slot has freed meanwhile
        self._send(env.sender, self._accept(claim, now))
        if not must_wait:
            self._start(claim)

    def _accept(self, claim: Claim, now: float) -> Accept:
        """The answer to an award of `claim`: started, or its place in our queue and when we expect
        to start it (the manager reclaims it if that promise is not kept)."""
        if not claim.queued:
            return Accept(claim.task_id, claim.attempt)
        return Accept(claim.task_id, claim.attempt, queued=self.waiting.index((claim.task_id, claim.attempt)) + 1,
                      est_start_ms=self._until_a_slot_frees(now))

    def _start(self, claim: Claim) -> None:
        extra_env = {"XCHANGED_TASK_ID": claim.task_id, "XCHANGED_ATTEMPT": str(claim.attempt),
                     "XCHANGED_NODE": self.settings.self_id}
        if claim.req.gpus:
            # our GPU indices are NVML's, which number devices by PCI bus id; CUDA's own default
            # order is fastest first, so without PCI_BUS_ID a task could be handed another's GPU
            extra_env["CUDA_DEVICE_ORDER"] = "PCI_BUS_ID"
            extra_env["CUDA_VISIBLE_DEVICES"] = ",".join(str(g) for g in claim.gpus)
        elif self.capacity.gpus:
            extra_env["CUDA_VISIBLE_DEVICES"] = ""   # asked for none: CUDA must not take one given to another task
        self.out.emit(StartTask, task_id=claim.task_id, attempt=claim.attempt, spec=claim.spec, env=extra_env)

    def on_cancel(self, env: Envelope, now: float) -> None:
        msg = env.message
        claim = self.reserved.get((env.sender, msg.task_id))
        if claim is not None:
            del self.reserved[(env.sender, msg.task_id)]
        running = self.running.get((msg.task_id, msg.attempt))
        if running is not None and running.manager == env.sender:
            if running.queued:               # never started: nothing to kill, report it cancelled
                self.waiting.remove((msg.task_id, msg.attempt))
                self.on_exited(TaskExited(msg.task_id, msg.attempt, Outcome.CANCELLED, None, 0, reason=msg.reason), now)
            else:
                self.out.emit(KillTask, task_id=msg.task_id, attempt=msg.attempt, reason=msg.reason)

    def on_ack(self, env: Envelope) -> None:
        self.results.on_ack(env)

    # -- executor -------------------------------------------------------------------------------

    def on_started(self, task_id: str, attempt: int, pid: int, pid_start: float = 0.0) -> None:
        claim = self.running.get((task_id, attempt))
        if claim is not None:
            claim.pid, claim.pid_start = pid, pid_start
            self._persist_running(claim)
            if claim.from_queue:              # its manager holds it as waiting: say it started, now
                self._send(claim.manager, Progress(task_id, attempt, 0, pid), claim.manager_address)

    def on_output(self, ev: OutputWritten) -> None:
        """Send what a running attempt wrote to its manager, at its offset in the stream."""
        claim = self.running.get((ev.task_id, ev.attempt))
        if claim is None or claim.queued or ev.stream not in STREAMS:
            return
        index = STREAMS.index(ev.stream)
        for start in range(0, len(ev.data), OUTPUT_CHUNK):
            chunk = ev.data[start:start + OUTPUT_CHUNK]
            self._send(claim.manager, Output(ev.task_id, ev.attempt, ev.stream, claim.streamed[index], chunk),
                       claim.manager_address)
            claim.streamed[index] += len(chunk)

    def on_exited(self, ev: TaskExited, now: float) -> None:
        claim = self.running.pop((ev.task_id, ev.attempt), None)
        if claim is None:
            return
        self.completed += 1
        self.run_ms += max(0, ev.runtime_ms)
        if ev.outcome != Outcome.EXITED or ev.exit_code != 0:
            self.failed_runs += 1
        if ev.outcome == Outcome.EXITED and claim.spec is not None:
            self.run_times.record(claim.spec.argv[0], ev.runtime_ms)
        started_before = self.started
        self.start_queued(now)                  # the freed slot goes to the head of our queue first
        self._report(claim, Result(ev.task_id, ev.attempt, ev.outcome, ev.exit_code, ev.reason, ev.runtime_ms,
                                   ev.stdout, ev.stderr, claim.pid, slot_refilled=self.started > started_before,
                                   peak_mem=ev.peak_mem, cpu_s=ev.cpu_s),
                     now)

    def _report(self, claim: Claim, result: Result, now: float) -> None:
        """Send an attempt's result to its manager, kept (and resent) until it is acknowledged."""
        self.results.report(claim.manager, claim.manager_address, result, now)

    # -- draining and reloading -----------------------------------------------------------------

    def reconfigure(self, settings: ContractorSettings, now: float) -> None:
        """New settings (a reload). Running attempts stay, even beyond fewer slots (they drain down);
        bids it can no longer honour lapse (their awards are re-checked) and queued attempts beyond
        a smaller prefetch are handed back, newest first."""
        self.settings = settings
        if len(self.reserved) and self.holding > settings.slots:
            for key in [k for k, c in self.reserved.items() if not c.queued]:
                del self.reserved[key]
        while self.queue_places > settings.prefetch:
            queued_bids = [k for k, c in self.reserved.items() if c.queued]
            if queued_bids:
                del self.reserved[queued_bids[-1]]
            else:
                self.hand_back(self.waiting[-1], "handed back: the node's queue was made smaller", now)
        self.start_queued(now)


    def drain(self, now: float) -> None:
        """Take no new work: bids outstanding lapse (their awards are rejected), accepted attempts
        that have not started are handed back; running ones go on to their end."""
        self.draining = True
        self.reserved.clear()
        for key in list(self.waiting):
            self.hand_back(key, "handed back: the node is draining", now)

    def hand_back_running(self, reason: str, now: float) -> None:
        """Kill every attempt still running here and hand it back (a stopping daemon's grace is over)."""
        for key, claim in list(self.running.items()):
            if not claim.queued:
                self.out.emit(KillTask, task_id=key[0], attempt=key[1], reason=reason)
            self.hand_back(key, "handed back: " + reason, now)

    def hand_back(self, key: tuple[str, int], reason: str, now: float) -> None:
        """Give an accepted attempt back to its manager, for re-award elsewhere: a result with outcome
        lost and `handed_back`. Its process, if any, is the caller's to kill; its exit is then ignored."""
        claim = self.running.pop(key, None)
        if claim is None:
            return
        if key in self.waiting:
            self.waiting.remove(key)
        self._report(claim, Result(key[0], key[1], Outcome.LOST, None, reason, 0, b"", b"", claim.pid,
                                   handed_back=True), now)

    # -- restart --------------------------------------------------------------------------------

    def recover(self, docs: list[dict[str, Any]], now: float) -> None:
        """Take back the attempts persisted before a restart (results.py)."""
        self.results.recover(docs, now)

    # -- time -----------------------------------------------------------------------------------

    def on_timer(self, now: float) -> None:
        for key, claim in list(self.reserved.items()):
            if now >= claim.expires:
                del self.reserved[key]
        for claim in self.running.values():
            if now >= claim.next_heartbeat:
                claim.next_heartbeat = now + self.settings.heartbeat
                promise = self._until_a_slot_frees(now) if claim.queued else None
                self._send(claim.manager, Progress(claim.task_id, claim.attempt,
                                                   int((now - claim.started) * 1000), claim.pid, est_start_ms=promise))
        self.results.resend_due(now, self.settings.heartbeat)

    def validate_state(self) -> None:
        """Check the contractor's invariants (tests and chaos runs call this after every input)."""
        s = self.settings
        queued = [key for key, claim in self.running.items() if claim.queued]
        if sorted(queued) != sorted(self.waiting) or len(set(self.waiting)) != len(self.waiting):
            raise LocalProtocolError(f"local queue {self.waiting} does not match the queued claims {queued}")
        # after a reload to fewer slots (or less prefetch) more may be held than allowed: it drains down
        if self.holding < 0 or self.slots_free != max(0, s.slots - self.holding):
            raise LocalProtocolError(f"slots: {self.slots_free} free, {self.holding} held, {s.slots} slots")
        if self.queue_places > s.prefetch:
            raise LocalProtocolError(f"{self.queue_places} queue places taken, prefetch is {s.prefetch}")
        if self.draining and (self.waiting or self.reserved):
            raise LocalProtocolError(f"draining with {len(self.waiting)} queued and {len(self.reserved)} reserved")
        if self.waiting and self.holding < s.slots:
            head = self.running[self.waiting[0]]
            holding = [c for c in self._claims() if not c.queued]
            if not admission.fits_now(s, self.capacity, head.req, holding, check_overload=False)[0]:
                raise LocalProtocolError(f"{self.waiting[0]} waits in the queue while a slot is free and it fits")

    def next_deadline(self) -> float:
        times = [c.expires for c in self.reserved.values()]
        times += [c.next_heartbeat for c in self.running.values()]
        return min(min(times, default=float("inf")), self.results.next_deadline())

    def _send(self, peer: str, message: object, fallback_address: str = "") -> None:
        self.out.emit(Send, targets=((peer, self.lookup(peer)[0] or fallback_address),), message=message)

    def _persist_running(self, claim: Claim) -> None:
        self.out.emit(PersistAttempt, doc={
            "task_id": claim.task_id, "attempt": claim.attempt, "manager": claim.manager,
            "manager_address": claim.manager_address, "state": "running", "pid": claim.pid,
            "pid_start": claim.pid_start}, when=AFTER if claim.pid is None else LAZY)
