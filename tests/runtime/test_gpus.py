"""GPUs with a fake NVML: the reader's figures per GPU, the environment a task that gets GPUs sees
(NVML's numbering, CUDA told to use it), and per-GPU memory and utilisation in `peers` and `stats`
(documents, tables, and through a real in-process daemon)."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import sys
from types import SimpleNamespace

import pytest
from click.testing import CliRunner

from tests.protocol.fakes import FakePeer, NodeUnderTest
from tests.runtime.inprocess import running_daemon
from xchanged.cli import main
from xchanged.client import Client, build_spec
from xchanged.protocol.effects import StartTask
from xchanged.protocol.events import ResourcesRead
from xchanged.protocol.messages import Award, GpuInfo, Requirements, TaskSpec
from xchanged.protocol.signing import TrustStore
from xchanged.runtime import views
from xchanged.runtime.resources import GpuReader, ResourceReader

G = 1 << 30


@pytest.fixture
def trust() -> TrustStore:
    return TrustStore({})


class FakeNVML:
    """The part of pynvml the reader uses, over a list of (name, total, free, util or None)."""

    class NVMLError(Exception):
        pass

    def __init__(self, devices, fail_init: bool = False):
        self.devices, self.fail_init, self.shut = devices, fail_init, False

    def nvmlInit(self):
        if self.fail_init:
            raise self.NVMLError("driver not loaded")

    def nvmlShutdown(self):
        self.shut = True

    def nvmlDeviceGetCount(self):
        return len(self.devices)

    def nvmlDeviceGetHandleByIndex(self, index):
        return index

    def nvmlDeviceGetName(self, handle):
        return self.devices[handle][0].encode()         # older pynvml returns bytes

    def nvmlDeviceGetMemoryInfo(self, handle):
        _, total, free, _ = self.devices[handle]
        return SimpleNamespace(total=total, free=free, used=total - free)

    def nvmlDeviceGetUtilizationRates(self, handle):
        util = self.devices[handle][3]
        if util is None:
            raise self.NVMLError("not supported")
        return SimpleNamespace(gpu=util, memory=0)


DEVICES = [("NVIDIA A100", 80 * G, 2 * G, 97), ("NVIDIA A100", 80 * G, 70 * G, 5), ("NVIDIA T4", 16 * G, 15 * G, None)]


def test_the_reader_gives_each_gpu_in_nvml_order_with_memory_and_utilisation():
    nvml = FakeNVML(DEVICES)
    reader = GpuReader(nvml)
    assert reader.read() == (GpuInfo(0, "NVIDIA A100", 80 * G, 2 * G, 97.0),
                             GpuInfo(1, "NVIDIA A100", 80 * G, 70 * G, 5.0),
                             GpuInfo(2, "NVIDIA T4", 16 * G, 15 * G, 0.0))       # no utilisation reading: 0
    reader.close()
    assert nvml.shut and reader.read() == ()
    assert GpuReader(FakeNVML(DEVICES, fail_init=True)).read() == ()           # no driver: no GPUs
    resources = ResourceReader(GpuReader(FakeNVML(DEVICES)))
    try:
        assert [g.index for g in resources.read().gpus] == [0, 1, 2]
    finally:
        resources.close()


def test_a_task_that_gets_gpus_sees_them_numbered_as_nvml_does(trust: TrustStore):
    node = NodeUnderTest(trust, slots=2)
    capacity = ResourceReader(GpuReader(FakeNVML(DEVICES))).read()
    # this host's own CPU reading would make the node refuse as overloaded while other tests run
    node.handle(ResourcesRead(dataclasses.replace(capacity, cpu_percent=0.0)))
    manager = FakePeer("mgr", trust)
    node.hear(manager, manager.load())
    spec = TaskSpec(argv=["train"], requirements=Requirements(gpus=2, gpu_mem=10 * G))
    node.hear(manager, Award("T-1", 1, spec, 0.5))
    (start,) = [e for e in node.effects if isinstance(e, StartTask)]
    # GPU 0 has 2 GiB free: the task gets 1 and 2, named as NVML names them, and CUDA is told so
    assert start.env["CUDA_VISIBLE_DEVICES"] == "1,2" and start.env["CUDA_DEVICE_ORDER"] == "PCI_BUS_ID"
    node.hear(manager, Award("T-2", 1, TaskSpec(argv=["cpu-only"]), 0.5))
    plain = [e for e in node.effects if isinstance(e, StartTask) and e.task_id == "T-2"][0]
    # a task that asked for none sees none (it would take GPU 0 by default, maybe another task's)
    assert plain.env["CUDA_VISIBLE_DEVICES"] == "" and "CUDA_DEVICE_ORDER" not in plain.env


def test_peers_and_stats_show_each_gpu(trust: TrustStore):
    node = NodeUnderTest(trust)
    node.handle(ResourcesRead(dataclasses.replace(ResourceReader(GpuReader(FakeNVML(DEVICES))).read(),
                                                  cpu_percent=0.0)))     # not this host's busy CPU
    peer = FakePeer("gpu-07", trust)
    node.hear(peer, peer.load(gpus=[GpuInfo(0, "NVIDIA H100", 80 * G, 40 * G, 55.0)]))
    docs = {d["name"]: d for d in views.peers(node.node, 1.0)}
    assert docs["gpu-07"]["gpus"] == [{"index": 0, "name": "NVIDIA H100", "mem_total": 80 * G, "mem_free": 40 * G,
                                       "util_percent": 55.0}]
    assert [(g["mem_free"], g["util_percent"]) for g in docs["node"]["gpus"]] == [(2 * G, 97.0), (70 * G, 5.0),
                                                                                   (15 * G, 0.0)]
    agents = {a["name"]: a for a in views.stats(node.node, 1.0, 1.0)["agents"]}
    assert agents["gpu-07"]["gpus"] == docs["gpu-07"]["gpus"] and len(agents["node"]["gpus"]) == 3


def test_a_daemon_with_gpus_shows_them_and_gives_tasks_their_devices(tmp_path, monkeypatch):
    """A real daemon, its NVML a fake one (pynvml as the reader imports it), through the CLI."""
    monkeypatch.setitem(sys.modules, "pynvml", FakeNVML(DEVICES))
    conf = tmp_path / "cli.toml"
    conf.write_text(f'[network]\ncontrol = "{tmp_path / "control.sock"}"\n')

    def cli(*args):
        return CliRunner().invoke(main, [*args, "-c", str(conf)], catch_exceptions=False, env={"COLUMNS": "300"})

    async def scenario():
        async with running_daemon(tmp_path) as daemon:
            [doc] = await daemon.control.handle("submit", {"specs": [build_spec(
                ["sh", "-c", "echo $CUDA_DEVICE_ORDER $CUDA_VISIBLE_DEVICES"], gpus=1, gpu_mem="60G")]})

            def rest():
                with Client(socket=tmp_path / "control.sock") as c:
                    final = c.wait(doc["id"], timeout=30)
                    return final, c.logs(doc["id"]), cli("peers", "--json"), cli("peers"), cli("stats", "--json"), \
                        cli("stats")
            return await asyncio.to_thread(rest)
    final, logs, peers_json, peers_table, stats_json, stats_table = asyncio.run(scenario())
    assert final["state"] == "succeeded", final
    assert logs["stdout"].strip() == "PCI_BUS_ID 1"         # the one GPU with 60 GiB free
    (me,) = json.loads(peers_json.output)
    assert [(g["index"], g["mem_free"], g["util_percent"]) for g in me["gpus"]] == [(0, 2 * G, 97.0), (1, 70 * G, 5.0),
                                                                                     (2, 15 * G, 0.0)]
    assert "1: 70.0G/80.0G free, 5%" in peers_table.output
    assert json.loads(stats_json.output)["agents"][0]["gpus"] == me["gpus"]
    assert "0: 2.0G/80.0G free, 97%" in stats_table.output
