"""Make supervisord run exactly the desired camera programs, touching nothing else.

supervisord has no "update" RPC: `supervisorctl update` is client logic, re-done here (reload,
remove removed, stop+remove+add changed, add added) with what it lacks: one change at a time
(concurrent updates race), per-program errors, unchanged programs never touched, and
operator-stopped cameras kept stopped across a config change.

Decisions come from supervisord's own `reloadConfig` diff, not from which files were written:
a program whose add failed last time is still "added" next time, so retries need no bookkeeping.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
import signal
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import psutil

from .programs import PREFIX, RESERVED_NAMES, ProgramSpec, render, write_programs
from .rpc import ProcessInfo, SupervisorClient, SupervisorError, SupervisorUnavailable

_RPC_ERRORS = (SupervisorError, SupervisorUnavailable)
EXEC_GRACE_S = 0.2  # a fork's child execs within milliseconds; generous for a loaded remote host


@dataclass
class ApplyReport:
    added: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    replaced: list[str] = field(default_factory=list)
    unchanged: list[str] = field(default_factory=list)
    errors: dict[str, str] = field(default_factory=dict)  # program name (or "write"/"reloadConfig") -> why
    specs_changed: list[str] = field(default_factory=list)  # programs whose worker spec changed (reload them)

    @property
    def ok(self) -> bool:
        return not self.errors


class SupervisorBridge:
    def __init__(self, client: SupervisorClient, conf_dir: Path, *, prefix: str = PREFIX,
                 stop_timeout_s: float = 20.0, concurrency: int = 4, local: bool = True) -> None:
        self.client = client
        self.local = local  # supervisord runs on this host: its pids are ours to look at
        self.conf_dir = conf_dir
        self.prefix = prefix
        self.stop_timeout_s = stop_timeout_s  # above any stopwaitsecs: a stop may end in SIGKILL
        self._lock = asyncio.Lock()
        # Bounded: stops can block a to_thread worker for stopwaitsecs, and the pool is shared.
        self._slots = asyncio.Semaphore(concurrency)
        self._bridge_stopped: set[str] = set()  # stopped by us mid-replace, not re-added yet
        self._keep_stopped: set[str] = set()  # operator-stopped before a replace: stop again once re-added

    def _mine(self, name: str) -> bool:
        return name.startswith(self.prefix) and name not in RESERVED_NAMES

    async def states(self) -> dict[str, ProcessInfo]:
        """Camera programs only (not the event listener or fixed fleet programs)."""
        return {i.name: i for i in await self.client.all_process_info() if self._mine(i.group)}

    async def apply(self, desired: Mapping[str, ProgramSpec], *, write: bool = True) -> ApplyReport:
        """Converge on `desired` (keyed by program name). Never raises for RPC trouble: see `errors`.
        `write=False`: the program files are already written (by another host's agent)."""
        async with self._lock:
            report = ApplyReport()
            valid: dict[str, ProgramSpec] = {}
            for key, spec in desired.items():
                try:
                    if key != spec.name or not self._mine(key):
                        raise ValueError(f"keyed {key!r}: keys must be the program names, starting {self.prefix!r}")
                    render(spec)
                    valid[key] = spec
                except ValueError as err:  # UnsafeValue too; its old file (if any) is left as it is
                    report.errors[key] = f"invalid: {err}"
            invalid = set(desired) - set(valid)
            try:
                if write:
                    await asyncio.to_thread(write_programs, self.conf_dir, valid, prefix=self.prefix, keep=invalid)
            except OSError as err:
                report.errors["write"] = str(err)
                return report
            try:
                added, changed, removed = await self.client.reload_config()
                before = await self.states() if changed else {}
            except _RPC_ERRORS as err:  # e.g. CANT_REREAD: someone's include file does not parse
                report.errors["reloadConfig"] = str(err)
                return report
            added = [n for n in added if self._mine(n) and n not in invalid]
            changed = [n for n in changed if self._mine(n) and n not in invalid]
            removed = [n for n in removed if self._mine(n)]
            touched = {*added, *changed, *invalid}

            def autostart(name: str) -> bool:
                return valid[name].autostart if name in valid else True

            report.unchanged = sorted(n for n in valid if n not in touched)
            # Each step is made when its slot comes: if this apply is cancelled (a host's time limit),
            # no coroutine is left created and never awaited.
            steps = [self._step(n, "removed", report, functools.partial(self._remove, n)) for n in removed]
            steps += [self._step(n, "replaced", report,
                                 functools.partial(self._replace, n, before.get(n), autostart(n))) for n in changed]
            steps += [self._step(n, "added", report, functools.partial(self._add, n, autostart(n))) for n in added]
            # A re-stop that failed last time is retried while the program is otherwise unchanged.
            pending = [n for n in report.unchanged if n in self._keep_stopped]
            steps += [self._step(n, "", report, functools.partial(self._restop, n, spawn=False)) for n in pending]
            await asyncio.gather(*steps)  # each program is touched by exactly one step
            for names in (report.added, report.removed, report.replaced):
                names.sort()
            return report

    async def _step(self, name: str, outcome: str, report: ApplyReport, run: Callable[[], Awaitable[None]]) -> None:
        async with self._slots:
            try:
                await run()
            except _RPC_ERRORS as err:
                report.errors[name] = f"{outcome or 'stop again'}: {err}"
            else:
                if outcome:
                    getattr(report, outcome).append(name)

    async def _stop(self, name: str) -> None:
        try:
            info = await self.client.process_info(name)
            if info.state == "STARTING" and info.pid:
                # Just spawned: a SIGTERM that lands between supervisord's fork and the child's exec
                # is lost (the child still runs supervisord's handlers) and the stop would wait
                # stopwaitsecs and end in SIGKILL. Measured: a stop 2 ms after an add did exactly that.
                if self.local:
                    await asyncio.to_thread(_wait_for_exec, info.pid)
                else:  # another host's pid: give the child the moment it needs to exec, by its host's clock
                    await asyncio.sleep(max(0.0, EXEC_GRACE_S - (info.now - info.start)) if info.now else EXEC_GRACE_S)
            await self.client.stop(name, wait=True, timeout_s=self.stop_timeout_s)
        except SupervisorError as err:
            if err.fault not in ("NOT_RUNNING", "BAD_NAME"):
                raise

    async def _remove(self, name: str) -> None:
        await self._stop(name)
        try:
            await self.client.remove_group(name)
        except SupervisorError as err:
            if err.fault != "BAD_NAME":  # already gone
                raise
        self._bridge_stopped.discard(name)
        self._keep_stopped.discard(name)

    async def _replace(self, name: str, info: ProcessInfo | None, autostart: bool) -> None:
        if (info is not None and info.state == "STOPPED" and info.start > 0
                and name not in self._bridge_stopped):
            self._keep_stopped.add(name)  # remembered before anything can fail, so a retry still knows
        self._bridge_stopped.add(name)
        await self._stop(name)
        await self.client.remove_group(name)
        await self._add(name, autostart)

    async def _add(self, name: str, autostart: bool) -> None:
        try:
            await self.client.add_group(name)  # autostart spawns it right away (same supervisord loop pass)
        except SupervisorError as err:
            if err.fault != "ALREADY_ADDED":
                raise
        self._bridge_stopped.discard(name)
        if name in self._keep_stopped:
            await self._restop(name, spawn=autostart)  # without autostart it stays STOPPED by itself

    async def _restop(self, name: str, *, spawn: bool) -> None:
        """Stop a re-added program again: it was STOPPED by an operator before its config changed."""
        if spawn:
            # A fresh group is STOPPED until supervisord's loop autostarts it, and stopping a STOPPED
            # program is a no-op that the autostart then undoes: spawn it ourselves first.
            with contextlib.suppress(SupervisorError):  # ALREADY_STARTED (autostart won), or it can't spawn
                await self.client.start(name, wait=False)
        await self._stop(name)
        self._keep_stopped.discard(name)

    # -- one program, on request (an operator, a hung worker, a changed process setting) --------------
    async def start(self, name: str) -> None:
        """Start a stopped program (an operator's Start); raises SupervisorError/Unavailable."""
        async with self._lock:
            self._keep_stopped.discard(name)
            try:
                await self.client.start(name, wait=False)
            except SupervisorError as err:
                if err.fault != "ALREADY_STARTED":
                    raise

    async def stop(self, name: str) -> None:
        """Stop a program and keep it stopped across config changes, as `supervisorctl stop` does."""
        async with self._lock:
            await self._stop(name)

    async def restart(self, name: str) -> None:
        """Stop (waiting for it) and start again: a new process, the same program."""
        async with self._lock:
            await self._stop(name)
            try:
                await self.client.start(name, wait=False)
            except SupervisorError as err:
                if err.fault != "ALREADY_STARTED":
                    raise

    async def adopt_or_clean(self, specs_dir: Path, *, kill_after_s: float = 3.0) -> list[int]:
        """End worker processes for `specs_dir` that the running supervisord did not start.

        supervisord cannot adopt a process it did not spawn, so an orphan left by a killed
        supervisord would run beside its supervised twin: it is terminated (SIGTERM, SIGKILL
        after `kill_after_s`). Returns the pids ended. Raises SupervisorUnavailable if
        supervisord can't be asked: without its pid, orphans can't be told from supervised workers.
        """
        async with self._lock:
            supervisord_pid = await self.client.pid()
            return await asyncio.to_thread(_end_orphans, specs_dir, supervisord_pid, kill_after_s)


def _wait_for_exec(pid: int, limit_s: float = 2.0) -> None:
    # Until it execs, a forked child's cmdline is still its parent's (supervisord's).
    deadline = time.monotonic() + limit_s
    with contextlib.suppress(psutil.Error):
        proc = psutil.Process(pid)
        parent = proc.parent()
        parent_cmdline = parent.cmdline() if parent else []
        while proc.cmdline() == parent_cmdline and time.monotonic() < deadline:
            time.sleep(0.005)


def _spec_argument(cmdline: list[str]) -> str | None:
    if not any(part == "detector_worker.cli" or part.endswith("/detector-worker") for part in cmdline):
        return None
    for i, part in enumerate(cmdline):
        if part == "--spec" and i + 1 < len(cmdline):
            return cmdline[i + 1]
        if part.startswith("--spec="):
            return part.removeprefix("--spec=")
    return None


def find_orphans(specs_dir: Path, supervisord_pid: int) -> list[psutil.Process]:
    """Worker processes whose `--spec` lies under `specs_dir` and that supervisord_pid did not start."""
    root = specs_dir.resolve()
    me = os.getpid()
    found = []
    for proc in psutil.process_iter(["cmdline"]):
        with contextlib.suppress(psutil.Error, OSError):
            spec = _spec_argument(proc.info["cmdline"] or [])
            if spec is None or proc.pid == me:
                continue
            path = Path(spec) if os.path.isabs(spec) else Path(proc.cwd()) / spec
            if not path.resolve().is_relative_to(root):
                continue
            if any(p.pid == supervisord_pid for p in proc.parents()):
                continue
            found.append(proc)
    return found


def _signal(proc: psutil.Process, sig: signal.Signals) -> None:
    with contextlib.suppress(psutil.Error, OSError):
        proc.send_signal(sig)
        # supervisord starts each program as a process-group leader: end the worker's children too.
        if os.getpgid(proc.pid) == proc.pid and proc.pid != os.getpgrp():
            os.killpg(proc.pid, sig)


def _running(proc: psutil.Process) -> bool:
    try:  # an orphan's zombie lingers until init reaps it: it counts as ended
        return proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def _wait_ended(procs: list[psutil.Process], timeout_s: float) -> list[psutil.Process]:
    """The processes still running after up to `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    alive = [p for p in procs if _running(p)]
    while alive and time.monotonic() < deadline:
        time.sleep(0.02)
        alive = [p for p in alive if _running(p)]
    return alive


def _end_orphans(specs_dir: Path, supervisord_pid: int, kill_after_s: float) -> list[int]:
    orphans = find_orphans(specs_dir, supervisord_pid)
    for proc in orphans:
        _signal(proc, signal.SIGTERM)
    for proc in _wait_ended(orphans, kill_after_s):
        _signal(proc, signal.SIGKILL)
    _wait_ended(orphans, 1.0)
    return sorted(p.pid for p in orphans)
