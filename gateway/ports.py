"""What the gateway needs of its dependencies: the serialized supervisord bridge and the bus.

`Gateway` takes these through its constructor; the real ones are `LocalSupervisor` (or
`HostFleet`) and `GatewayBus` (gateway/assemble.py), the fast tests pass fakes (tests/gateway/fakes.py).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path
from typing import Any, Protocol

from detector_worker.comms.messages import AnyWorkerMessage, DisplayControl, Hello

from .supervisor.bridge import ApplyReport
from .supervisor.local import CameraProgram
from .supervisor.rpc import ProcessInfo


class Supervisor(Protocol):
    """What the gateway needs of supervisord: this host's (LocalSupervisor over the serialized bridge,
    a fake bridge in fast tests) or many hosts' (HostFleet)."""

    async def open(self, on_change: Callable[[], None]) -> None:
        """Start watching (hosts' health); `on_change` asks the gateway to apply its plan again."""
    async def close(self) -> None: ...
    async def apply_cameras(self, cameras: Mapping[str, CameraProgram]) -> ApplyReport:
        """Run exactly these cameras (camera id → spec and program); never raises for RPC trouble."""
    def epoch(self, camera_id: str) -> int:
        """The camera's placement epoch: bus messages of any other are a stale copy's (0: one host)."""
    def host_of(self, camera_id: str) -> str | None:
        """The host the camera is placed on (None: this one, or not placed)."""
    def drain(self, host: str, draining: bool = True) -> bool:
        """Move a host's cameras away (or take it back); False when there is no such host."""
    def describe(self) -> list[dict[str, Any]]:
        """Per worker host: health, capacity, load ([] on one host)."""
    async def states(self) -> dict[str, ProcessInfo]: ...
    async def program_state(self, name: str) -> ProcessInfo | None:
        """One program as supervisord runs it (None: it has no such program), asking only its host."""
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
