"""Process lifetime helpers shared by the gateway, the worker and the model exporter."""

from __future__ import annotations

import ctypes
import os
import signal
import sys

_PR_SET_PDEATHSIG = 1


def die_with_parent(sig: signal.Signals = signal.SIGTERM) -> bool:
    """Ask the kernel to send `sig` to this process when its parent dies (PR_SET_PDEATHSIG).

    Called by the child itself (a preexec_fn is not safe in a threaded parent). If the parent
    already died before the request took effect, `sig` is sent at once. False where it is not
    available (not Linux, or prctl refused).
    """
    if not sys.platform.startswith("linux"):
        return False
    parent = os.getppid()
    if ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, int(sig), 0, 0, 0) != 0:
        return False
    if os.getppid() != parent:  # it died before we asked
        os.kill(os.getpid(), sig)
    return True
