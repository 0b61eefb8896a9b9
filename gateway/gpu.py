"""GPU utilisation for stateReport, from nvidia-smi where there is one (0, 0 otherwise)."""

from __future__ import annotations

import shutil
import subprocess


def gpu_usage() -> tuple[float, float]:
    """(GPU %, GPU memory %) of GPU 0."""
    if shutil.which("nvidia-smi") is None:
        return 0.0, 0.0
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=utilization.gpu,memory.used,memory.total",
                              "--format=csv,noheader,nounits", "-i", "0"],
                             capture_output=True, text=True, timeout=2, check=True).stdout
        util, used, total = (float(x) for x in out.strip().splitlines()[0].split(","))
        return util, 100.0 * used / total if total else 0.0
    except (OSError, subprocess.SubprocessError, ValueError, IndexError):
        return 0.0, 0.0
