"""One host, this one: the camera specs as 0600 files in `specs_dir`, the programs through the bridge.

What the gateway runs when no `hosts:` are configured (gateway/hosts/fleet.py is the many-host
twin). Placement epochs are all 0: a camera can't move, so there is nothing to fence.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from detector_worker.config.spec import WorkerSpec
from detector_worker.files import atomic_write

from .bridge import ApplyReport
from .programs import ProgramSpec
from .rpc import ProcessInfo


@dataclass(frozen=True)
class CameraProgram:
    """What the gateway wants run for one camera: its worker's spec and its supervisord program."""

    spec: WorkerSpec
    program: ProgramSpec


def spec_path(specs_dir: Path, slug: str) -> Path:
    return specs_dir / f"{slug}.json"


def write_spec_files(specs_dir: Path, specs: Mapping[str, WorkerSpec]) -> list[str]:
    """Write each spec's 0600 file (specs keyed by anything); the keys whose file changed."""
    return [key for key, spec in specs.items()
            if atomic_write(spec_path(specs_dir, spec.slug), spec.model_dump_json(indent=2).encode(), mode=0o600)]


def remove_other_spec_files(specs_dir: Path, keep: Collection[str]) -> None:
    """Remove the spec files of every slug not in `keep`."""
    for path in specs_dir.glob("*.json"):
        if path.stem not in keep:
            path.unlink(missing_ok=True)


class OneSupervisord(Protocol):
    """What LocalSupervisor needs of the bridge (SupervisorBridge; a fake in fast tests)."""

    async def apply(self, desired: Mapping[str, ProgramSpec]) -> ApplyReport: ...
    async def states(self) -> dict[str, ProcessInfo]: ...
    async def start(self, name: str) -> None: ...
    async def stop(self, name: str) -> None: ...
    async def restart(self, name: str) -> None: ...
    async def adopt_or_clean(self, specs_dir: Path) -> list[int]: ...


class LocalSupervisor:
    def __init__(self, bridge: OneSupervisord, specs_dir: Path) -> None:
        self.bridge = bridge
        self.specs_dir = specs_dir

    async def open(self, on_change: Callable[[], None]) -> None:
        """Nothing to watch: supervisord's events and the gateway's reconcile poll cover one host."""

    async def close(self) -> None:
        pass

    async def apply_cameras(self, cameras: Mapping[str, CameraProgram]) -> ApplyReport:
        """Spec files first (a new worker reads its spec at once), then the programs; spec files of
        cameras no longer wanted go last, once their programs are stopped."""
        specs = {c.program.name: c.spec for c in cameras.values()}
        changed = await asyncio.to_thread(write_spec_files, self.specs_dir, specs)
        report = await self.bridge.apply({c.program.name: c.program for c in cameras.values()})
        await asyncio.to_thread(remove_other_spec_files, self.specs_dir, {s.slug for s in specs.values()})
        report.specs_changed = sorted(changed)
        return report

    def epoch(self, camera_id: str) -> int:
        return 0

    def host_of(self, camera_id: str) -> str | None:
        return None

    def drain(self, host: str, draining: bool = True) -> bool:
        return False

    def describe(self) -> list[dict[str, Any]]:
        return []

    async def states(self) -> dict[str, ProcessInfo]:
        return await self.bridge.states()

    async def program_state(self, name: str) -> ProcessInfo | None:
        return (await self.bridge.states()).get(name)

    async def start(self, name: str) -> None:
        await self.bridge.start(name)

    async def stop(self, name: str) -> None:
        await self.bridge.stop(name)

    async def restart(self, name: str) -> None:
        await self.bridge.restart(name)

    async def adopt_or_clean(self, specs_dir: Path) -> list[int]:
        return await self.bridge.adopt_or_clean(specs_dir)

