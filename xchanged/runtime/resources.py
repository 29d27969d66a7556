"""Resource readings: psutil for CPU and memory, NVIDIA's NVML (`nvidia-ml-py`) for GPUs.

No GPU, no driver or no NVML library means zero GPUs, never an error. Readings block (psutil's CPU
percentage, NVML calls), so the daemon takes them in a worker thread and caches the last one.

A GPU's index is NVML's, which numbers devices by PCI bus id; a task given GPUs gets them as
CUDA_VISIBLE_DEVICES with CUDA_DEVICE_ORDER=PCI_BUS_ID (protocol/contractor.py), so CUDA numbers
them the same way. Per-GPU free memory and utilisation travel in the load signal (`peers`, `stats`).
"""

from __future__ import annotations

import logging
import sys
from typing import Any

import psutil

from ..protocol.events import Capacity
from ..protocol.messages import GpuInfo

log = logging.getLogger(__name__)


NVML_LIBRARY = "libnvidia-ml.so.1"      # what pynvml loads on Linux


def nvml_library_present() -> bool:
    """Whether NVML can load at all, checked before importing pynvml: that module alone costs about
    2 MiB of resident memory for the daemon's life, on the many hosts that have no NVIDIA driver.
    pynvml already imported (by someone else, or a test's fake) costs nothing more: use it."""
    if "pynvml" in sys.modules or not sys.platform.startswith("linux"):
        return True
    import ctypes
    try:
        ctypes.CDLL(NVML_LIBRARY)          # as pynvml does; the loaded library is shared with it
    except OSError:
        return False
    return True


class GpuReader:
    """NVML, initialised once; `available` is False when there is nothing to read."""

    def __init__(self, nvml: Any = None) -> None:
        """`nvml`: the NVML module (default: pynvml, from nvidia-ml-py); tests pass a fake one."""
        self.available = False
        self._nvml = None
        try:
            if nvml is None:
                if not nvml_library_present():
                    raise OSError(f"{NVML_LIBRARY} not found")
                import pynvml as nvml  # provided by nvidia-ml-py

            nvml.nvmlInit()
            self._nvml = nvml
            self.available = True
        except Exception as exc:  # no library, no driver, no device: all mean "no GPUs"
            log.debug("NVML unavailable: %s", exc)

    def read(self) -> tuple[GpuInfo, ...]:
        if not self.available:
            return ()
        nvml = self._nvml
        gpus = []
        try:
            for index in range(nvml.nvmlDeviceGetCount()):
                handle = nvml.nvmlDeviceGetHandleByIndex(index)
                name = nvml.nvmlDeviceGetName(handle)
                if isinstance(name, bytes):
                    name = name.decode(errors="replace")
                mem = nvml.nvmlDeviceGetMemoryInfo(handle)
                try:
                    util = float(nvml.nvmlDeviceGetUtilizationRates(handle).gpu)
                except nvml.NVMLError:
                    util = 0.0
                gpus.append(GpuInfo(index, name, int(mem.total), int(mem.free), util))
        except Exception as exc:
            log.warning("NVML reading failed: %s", exc)
        return tuple(gpus)

    def close(self) -> None:
        if self.available:
            try:
                self._nvml.nvmlShutdown()
            except Exception:
                pass
            self.available = False


class ResourceReader:
    def __init__(self, gpus: GpuReader | None = None) -> None:
        self.gpus = gpus or GpuReader()
        psutil.cpu_percent(interval=None)       # prime: the first non-blocking reading is meaningless

    def read(self) -> Capacity:
        mem = psutil.virtual_memory()
        return Capacity(cpus=psutil.cpu_count() or 1, cpu_percent=float(psutil.cpu_percent(interval=None)),
                        mem_total=int(mem.total), mem_available=int(mem.available),
                        gpus=self.gpus.read())

    def close(self) -> None:
        self.gpus.close()
