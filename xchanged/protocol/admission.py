"""Admission: may a task run here, and does it fit now, or in the local queue? (contractor.py asks)

Rules:
- Policy (code `policy`): the command must match the allow-list, and the driver's `vet(command, user,
  cwd)` (its run_as, working-directory and user rules, which need the host's user database) must
  not object. A composite runs nothing itself: its parts are checked when they are offered.
- To start now, a task must fit beside what the claims hold (started attempts and slot reservations):
  CPUs (at least one per slot), memory (available, less what reservations hold; total, less what
  every claim holds), GPUs free with enough memory, chosen here. The CPU-overload rule refuses new
  work only: an accepted, queued attempt ignores it. Memory short (under LOW_MEMORY_FRACTION
  available) refuses all.
- To wait in the local queue, a task must fit the node as a whole; its GPUs are chosen when it starts.
- A refusal says why, with a stable code: policy, label, no_slots, overloaded, cpus, mem, gpus, gpu_mem
  (draining: operations.py).
Functions of their inputs only: the settings, the resources last read, the claims.
"""

from __future__ import annotations

import fnmatch

from .claims import Claim, ContractorSettings
from .events import Capacity
from .messages import RefusalCode, Requirements

R = RefusalCode
Admission = tuple[RefusalCode | None, str, tuple[int, ...]]   # (code, reason, gpus): code None when it fits

LOW_MEMORY_FRACTION = 0.03     # below this share of memory available, refuse all new work


def policy_refusal(s: ContractorSettings, command: str, user: str = "", cwd: str | None = None) -> str | None:
    """Why this node's policy forbids running `command` for `user` in `cwd`, or None."""
    if not command:                       # a composite runs nothing itself: its parts are checked
        return None
    if not any(fnmatch.fnmatchcase(command, pat) for pat in s.allow):
        return f"command {command!r} not allowed here"
    return s.vet(command, user, cwd) if s.vet is not None else None


def overloaded(s: ContractorSettings, cap: Capacity) -> bool:
    return cap.cpu_percent > s.overload_cpu_percent


def memory_short(cap: Capacity) -> bool:
    return bool(cap.mem_total) and cap.mem_available < cap.mem_total * LOW_MEMORY_FRACTION


def fits_now(s: ContractorSettings, cap: Capacity, req: Requirements, claims: list[Claim],
             check_overload: bool = True) -> Admission:
    """Resource admission against what `claims` (started attempts and slot reservations) hold.
    The CPU-overload rule refuses new work only: an accepted, queued attempt ignores it."""
    if check_overload and overloaded(s, cap):
        return R.OVERLOADED, f"cpu {cap.cpu_percent:.0f}% > {s.overload_cpu_percent:g}%", ()
    cpus = max(cap.cpus, s.slots)
    used_cpus = sum(c.req.cpus for c in claims)
    if used_cpus + req.cpus > cpus:
        return R.CPUS, f"{cpus - used_cpus:g} of {cpus} CPUs free, task needs {req.cpus:g}", ()
    if memory_short(cap):
        return R.MEM, f"memory short: {cap.mem_available >> 20} MiB available", ()
    if req.mem:
        reserved_mem = sum(c.req.mem for c in claims if c.spec is None)
        committed_mem = sum(c.req.mem for c in claims)
        if req.mem > cap.mem_available - reserved_mem or req.mem > cap.mem_total - committed_mem:
            return R.MEM, "not enough memory free", ()
    gpus: tuple[int, ...] = ()
    if req.gpus:
        taken = {g for c in claims for g in c.gpus}
        usable = [g.index for g in cap.gpus if g.index not in taken and g.mem_free >= req.gpu_mem]
        if len(usable) < req.gpus:
            big_enough = [g for g in cap.gpus if g.mem_total >= req.gpu_mem]
            code = R.GPU_MEM if req.gpu_mem and len(big_enough) >= req.gpus else R.GPUS
            return code, f"{len(usable)} GPUs free with enough memory, task needs {req.gpus}", ()
        gpus = tuple(usable[: req.gpus])
    return None, "", gpus


def fits_queue(s: ContractorSettings, cap: Capacity, req: Requirements) -> Admission:
    """Admission to the local queue: the task must fit the node as a whole; GPUs are chosen at start."""
    if overloaded(s, cap):
        return R.OVERLOADED, f"cpu {cap.cpu_percent:.0f}% > {s.overload_cpu_percent:g}%", ()
    if req.cpus > max(cap.cpus, s.slots):
        return R.CPUS, f"has {max(cap.cpus, s.slots)} CPUs, task needs {req.cpus:g}", ()
    if req.mem > cap.mem_total:
        return R.MEM, "not enough memory in total", ()
    if req.gpus > sum(1 for g in cap.gpus if g.mem_total >= req.gpu_mem):
        return R.GPUS, f"has too few GPUs for {req.gpus}", ()
    return None, "", ()
