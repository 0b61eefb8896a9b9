"""GPU figures through NVML: on a machine without an NVIDIA GPU (this one) they are zeros, never errors."""

from __future__ import annotations

import shutil

import pytest

from detector_worker import gpu


@pytest.mark.skipif(shutil.which("nvidia-smi") is not None, reason="this machine has an NVIDIA driver")
def test_without_a_gpu_zeros_and_none_and_no_exception() -> None:
    assert gpu.gpu_usage() == (0.0, 0.0)
    assert gpu.gpu_memory_total_bytes() is None
    assert gpu.gpu_usage() == (0.0, 0.0)  # asked again: NVML is not retried, still no exception


def test_an_nvml_failure_after_init_is_soft(monkeypatch: pytest.MonkeyPatch) -> None:
    class Broken:
        def nvmlDeviceGetUtilizationRates(self, handle: object) -> object:
            raise RuntimeError("GPU fell off the bus")

        nvmlDeviceGetMemoryInfo = nvmlDeviceGetUtilizationRates

    monkeypatch.setattr(gpu, "_state", {"tried": True, "nvml": Broken(), "handle": object()})
    assert gpu.gpu_usage() == (0.0, 0.0)
    assert gpu.gpu_memory_total_bytes() is None
