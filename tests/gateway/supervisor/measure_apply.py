"""Apply latency against a real supervisord at 1, 20 and 100 configured programs.

    .venv/bin/python -m tests.gateway.supervisor.measure_apply [COUNTS...]

Programs are `/bin/sleep` (cheap); medians of 5 rounds. "add" = apply() adding one program;
"started" = until that program has a pid; "noop" = apply() with nothing changed;
"replace" = apply() changing one program's command; "remove" = apply() dropping one.
"""

from __future__ import annotations

import asyncio
import statistics
import sys
import tempfile
import time
from pathlib import Path

from gateway.supervisor.bridge import SupervisorBridge
from gateway.supervisor.programs import ProgramSpec

from .conftest import Supervisord, running_pids


def sleeper(sv: Supervisord, name: str, seconds: str = "86400") -> ProgramSpec:
    return ProgramSpec(name=name, command=["/bin/sleep", seconds], directory=sv.root, environment={},
                       stdout_logfile=sv.logs / f"{name}.log")


async def measure(sv: Supervisord, count: int, rounds: int = 5) -> dict[str, float]:
    bridge = SupervisorBridge(sv.client, sv.conf_dir)
    base = {f"camera-p{i:03d}": sleeper(sv, f"camera-p{i:03d}") for i in range(count)}
    await bridge.apply(base)
    await running_pids(sv.client, base)
    await asyncio.sleep(0.5)
    timings: dict[str, list[float]] = {k: [] for k in ("add", "started", "noop", "replace", "remove", "reload")}
    for _ in range(rounds):
        extra = sleeper(sv, "camera-new")
        t0 = time.perf_counter()
        report = await bridge.apply({**base, extra.name: extra})
        timings["add"].append(time.perf_counter() - t0)
        assert report.added == ["camera-new"], report
        await running_pids(sv.client, [extra.name])
        timings["started"].append(time.perf_counter() - t0)
        await asyncio.sleep(0.2)  # past the fork/exec window
        t0 = time.perf_counter()
        assert (await bridge.apply({**base, extra.name: extra})).ok
        timings["noop"].append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        await sv.client.reload_config()
        timings["reload"].append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        report = await bridge.apply({**base, extra.name: sleeper(sv, extra.name, "86401")})
        timings["replace"].append(time.perf_counter() - t0)
        assert report.replaced == ["camera-new"], report
        await running_pids(sv.client, [extra.name])
        await asyncio.sleep(0.2)
        t0 = time.perf_counter()
        report = await bridge.apply(base)
        timings["remove"].append(time.perf_counter() - t0)
        assert report.removed == ["camera-new"], report
    return {k: statistics.median(v) * 1000 for k, v in timings.items()}


def main(counts: list[int]) -> None:
    print("configured  add(ms)  started(ms)  noop(ms)  reloadConfig(ms)  replace(ms)  remove(ms)")
    for count in counts:
        with tempfile.TemporaryDirectory(prefix="svm", dir="/tmp") as tmp:
            sv = Supervisord(Path(tmp))
            sv.start()
            try:
                r = asyncio.run(measure(sv, count))
            finally:
                sv.stop()
                sv.kill_leftovers()
        print(f"{count:10d}  {r['add']:7.1f}  {r['started']:11.1f}  {r['noop']:8.1f}  {r['reload']:16.1f}"
              f"  {r['replace']:11.1f}  {r['remove']:10.1f}")


if __name__ == "__main__":
    main([int(a) for a in sys.argv[1:]] or [1, 20, 100])
