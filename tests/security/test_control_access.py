"""The control operations of an in-process daemon, as different users ask (runtime/access.py): the
submitter's name is recorded whatever the client says, even inside a composite; cancel and logs are
for the submitter and admins, locally and when another node forwards them."""

from __future__ import annotations

import asyncio

import pytest

from tests.runtime.inprocess import running_daemon
from xchanged.client import build_spec
from xchanged.runtime.access import Requester
from xchanged.runtime.transport import ControlError

NOWHERE = build_spec(["true"], labels={"x": "nowhere"})      # stays queued: nothing runs


def who(name: str, uid: int = 4242) -> Requester:
    return Requester(1, uid, uid, name, frozenset())


def test_submit_cancel_and_logs_by_user(tmp_path):
    async def scenario():
        async with running_daemon(tmp_path, control={"allow_users": ["alice", "bob"]}) as daemon:
            control = daemon.control
            with pytest.raises(ControlError, match="may not submit"):
                await control.handle("submit", {"specs": [NOWHERE]}, who("mallory"))
            forged = dict(NOWHERE, user="root")
            [doc] = await control.handle("submit", {"specs": [forged]}, who("alice"))
            assert doc["spec"]["user"] == "alice"
            composite = {"argv": [], "composite": {"steps": [{"task": dict(NOWHERE, user="root")}],
                                                   "reduce": dict(NOWHERE, user="root")}}
            [comp] = await control.handle("submit", {"specs": [composite]}, who("bob"))
            assert comp["spec"]["user"] == "bob"
            assert comp["spec"]["composite"]["steps"][0]["task"]["user"] == "bob"
            assert comp["spec"]["composite"]["reduce"]["user"] == "bob"
            with pytest.raises(ControlError, match="only its submitter"):
                await control.handle("cancel", {"id": doc["id"]}, who("bob"))
            with pytest.raises(ControlError, match="only its submitter"):
                await control.handle("logs", {"id": doc["id"]}, who("bob"))
            # another node forwards a cancel: the name and admin flag its daemon read
            with pytest.raises(ControlError, match="of another node may not cancel"):
                await control.cancel({"id": doc["id"], "by_node": "Nx", "user": "bob", "admin": False})
            assert (await control.cancel({"id": doc["id"], "by_node": "Nx", "user": "alice"}))["id"] == doc["id"]
            root = await control.handle("cancel", {"id": comp["id"]}, who("root", uid=0))       # an admin
            assert root["id"] == comp["id"]
    asyncio.run(scenario())
