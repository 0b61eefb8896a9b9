"""GPU 0's load and memory through NVML (`pynvml`, from the nvidia-ml-py package).

NVML is initialised once per process, on first use; a machine without an NVIDIA driver (or
without pynvml) gets zeros / None, never an exception, and is not asked again.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

log = logging.getLogger(__name__)

_lock = threading.Lock()
_state: dict[str, Any] = {"tried": False, "nvml": None, "handle": None}


def _handle() -> tuple[Any, Any]:
    """(the pynvml module, GPU 0's handle), or (None, None) where NVML is not available."""
    with _lock:
        if not _state["tried"]:
            _state["tried"] = True
            try:
                import pynvml  # type: ignore[import-untyped]

                pynvml.nvmlInit()
                _state["handle"] = pynvml.nvmlDeviceGetHandleByIndex(0)
                _state["nvml"] = pynvml
            except Exception as err:  # no library, no driver, no device: all mean "no GPU"
                log.debug("no NVIDIA GPU: %s", err)
        return _state["nvml"], _state["handle"]


def gpu_usage() -> tuple[float, float]:
    """(GPU utilisation %, memory used % of total) of GPU 0; (0.0, 0.0) without a GPU."""
    pynvml, handle = _handle()
    if handle is None:
        return 0.0, 0.0
    try:
        util = pynvml.nvmlDeviceGetUtilizationRates(handle)
        memory = pynvml.nvmlDeviceGetMemoryInfo(handle)
        used = 100.0 * float(memory.used) / float(memory.total) if memory.total else 0.0
        return float(util.gpu), round(used, 1)
    except Exception as err:  # a GPU that fell off the bus, a driver being reloaded
        log.debug("NVML query failed: %s", err)
        return 0.0, 0.0


def gpu_memory_total_bytes() -> int | None:
    """Total memory of GPU 0 in bytes; None without a GPU."""
    pynvml, handle = _handle()
    if handle is None:
        return None
    try:
        return int(pynvml.nvmlDeviceGetMemoryInfo(handle).total)
    except Exception as err:
        log.debug("NVML query failed: %s", err)
        return None
