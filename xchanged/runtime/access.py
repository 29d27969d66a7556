"""Who is on the other end of the control socket, and what they may do there.

The socket's file mode (0660) decides who can connect at all. For each connection the kernel tells
us the client's uid and gid (SO_PEERCRED: it cannot be forged by the client), from which we take its
user name and groups. Then, with `[control]`:

    submit           allow_users ("*": anyone) or a group in allow_groups; admins always
    cancel, logs     the task's submitter (TaskSpec.user), or an admin
    everything else  anyone who can connect (status, tasks, peers, stats: no secrets there)

Admins: root, the daemon's own user, admin_users, members of admin_groups. A refused request gets a
clear error naming the user and the key that would allow it; the daemon is not otherwise affected.
The user name recorded in a task is the name of the client's uid on this host, whatever the client
sends: it travels in the signed task, and a contractor with `run_as = "submitter"` runs the task as
the user of that name there (confine.py).
"""

from __future__ import annotations

import fnmatch
import grp
import os
import pwd
import socket
import struct
from dataclasses import dataclass

from ..config import ControlConfig

_UCRED = struct.Struct("3i")       # pid, uid, gid (struct ucred)


@dataclass(frozen=True)
class Requester:
    """A control client as the kernel reports it."""

    pid: int
    uid: int
    gid: int
    name: str                      # the uid's user name here (its number if it has none)
    groups: frozenset[str]


def user_groups(name: str, gid: int) -> frozenset[str]:
    """Names of the groups of user `name` (primary `gid` included)."""
    try:
        ids = os.getgrouplist(name, gid)
    except (OSError, KeyError):
        ids = [gid]
    names = set()
    for g in ids:
        try:
            names.add(grp.getgrgid(g).gr_name)
        except KeyError:
            continue
    return frozenset(names)


def requester_of(uid: int, gid: int, pid: int = 0) -> Requester:
    try:
        name = pwd.getpwuid(uid).pw_name
    except KeyError:
        name = str(uid)
    return Requester(pid, uid, gid, name, user_groups(name, gid))


#: A client the system cannot identify (no SO_PEERCRED): no admin, allowed only by allow_users = ["*"].
UNKNOWN = Requester(0, -1, -1, "?", frozenset())


def peer_credentials(sock: socket.socket | None) -> Requester:
    """The connected client of a unix socket (UNKNOWN when the system cannot tell: not Linux)."""
    if sock is None or not hasattr(socket, "SO_PEERCRED"):
        return UNKNOWN
    try:
        pid, uid, gid = _UCRED.unpack(sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _UCRED.size))
    except OSError:
        return UNKNOWN
    return requester_of(uid, gid, pid)


class ControlAccess:
    def __init__(self, config: ControlConfig, daemon_uid: int | None = None):
        self.config = config
        self.daemon_uid = os.getuid() if daemon_uid is None else daemon_uid

    def is_admin(self, who: Requester) -> bool:
        c = self.config
        if who.uid < 0:
            return False
        return (who.uid in (0, self.daemon_uid) or _match(who.name, c.admin_users)
                or bool(who.groups & set(c.admin_groups)))

    def may_submit(self, who: Requester) -> str | None:
        """None if `who` may submit (and cancel its own tasks); otherwise why not."""
        c = self.config
        if self.is_admin(who) or _match(who.name, c.allow_users) or who.groups & set(c.allow_groups):
            return None
        return (f"user {who.name} (uid {who.uid}) may not submit or cancel tasks here: not in [control] "
                "allow_users or allow_groups")

    def may_touch(self, who: Requester, submitter: str, what: str) -> str | None:
        """None if `who` may cancel (or read the output of) a task submitted by `submitter`."""
        if self.is_admin(who):
            return None
        if submitter and who.name == submitter:
            return self.may_submit(who) if what == "cancel" else None
        return (f"user {who.name} may not {what} a task of {submitter or 'another user'}: only its submitter "
                "and admins ([control] admin_users, admin_groups) may")


def _match(name: str, patterns: tuple[str, ...]) -> bool:
    return any(fnmatch.fnmatchcase(name, p) for p in patterns)
