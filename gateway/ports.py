"""What the gateway needs of its dependencies: the serialized supervisord bridge and the bus.

`Gateway` takes these through its constructor; the real ones are `SupervisorBridge` and
`GatewayBus` (gateway/assemble.py), the fast tests pass fakes (tests/gateway/fakes.py).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path
from typing import Protocol

from detector_worker.comms.messages import AnyWorkerMessage, DisplayControl, Hello

from .supervisor.bridge import ApplyReport
from .supervisor.programs import ProgramSpec
from .supervisor.rpc import ProcessInfo


class Supervisor(Protocol):
    """What the gateway needs of supervisord: the serialized bridge (a fake in fast tests)."""

    async def apply(self, desired: Mapping[str, ProgramSpec]) -> ApplyReport: ...
    async def states(self) -> dict[str, ProcessInfo]: ...
    async def start(self, name: str) -> None: ...
    async def stop(self, name: str) -> None: ...
    async def restart(self, name: str) -> None: ...
    async def adopt_or_clean(self, specs_dir: Path) -> list[int]: ...


class WorkerBus(Protocol):
    """The gateway's end of the ZeroMQ bus (GatewayBus)."""

    def start(self, on_message: Callable[[AnyWorkerMessage], Awaitable[None] | None],
              on_hello: Callable[[Hello, bytes], Awaitable[None]], on_invalid: Callable[[], None]) -> None: ...
    async def send_control(self, identity: bytes, camera_id: str, displays: dict[str, DisplayControl]) -> bool: ...
    async def send_reload(self, identity: bytes, camera_id: str) -> bool: ...
    async def close(self) -> None: ...
