"""`make bench`: the fleet's performance figures, printed as they come and written to bench/results/.

    python -m bench.run [--quick] [--only throughput,fanin,fleet,control,hosts,accuracy] [--out DIR] [--keep-work]

Sections: 0 model accuracy (scripts/bench_models.py), 1 per-worker throughput vs bare Ultralytics,
3 gateway fan-in, then on one real fleet: 4 first detection / kill -9 recovery, 2 + 6 latency and
scaling with 1..20 cameras, 5 memory (+ one torch worker), 7 control-plane latency, 8 dashboard
cost, and 9 several worker hosts (3 hosts x 100 cameras, failover, bus throughput with CURVE).
Full run ~25-30 min on the 2-core machine (section 9 ~11 min: 300 stand-in workers start); --quick is a
smoke version (< 6 min, no accuracy section) and writes to bench/results/quick/. Keys of an earlier
results.json that this run was not asked for (other sections with --only, bench/realistic.py's) are kept.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any

from .common import BENCH, PYTHON, ROOT, machine_busy, machine_info, md_table, prepare_models, say, write_json

SECTIONS = ("accuracy", "throughput", "fanin", "fleet", "control", "dashboard", "hosts")


def section_accuracy() -> dict[str, Any]:
    start = time.monotonic()
    done = subprocess.run([PYTHON, str(ROOT / "scripts" / "bench_models.py")], cwd=ROOT, capture_output=True,
                          text=True, check=False)
    say(done.stdout.strip())
    if done.returncode not in (0, 1):  # 1 = a target missed: still figures
        raise RuntimeError(f"bench_models.py exited {done.returncode}: {done.stderr.strip()[-500:]}")
    return {"output": done.stdout.strip(), "targets_met": done.returncode == 0, "seconds": time.monotonic() - start}


def section_throughput(model_dir: Path, quick: bool, work: Path) -> dict[str, Any]:
    from . import footage

    out = work / "throughput.json"
    frames, rounds = (50, 1) if quick else (150, 3)
    subprocess.run([PYTHON, "-m", "bench.throughput", str(model_dir), str(footage.throughput_clip()), str(out),
                    "--frames", str(frames), "--rounds", str(rounds)], cwd=ROOT, check=True)
    import json

    res = json.loads(out.read_text())
    bare = res["variants"]["bare/ultralytics"]["fps"]
    say(md_table(["variant", "frames/s", "ms/frame p50 / p99", "vs bare Ultralytics (same run)"],
                 [[n, f"{v['fps']:.1f}", f"{v['p50_ms']:.1f} / {v['p99_ms']:.1f}", f"{v['fps'] / bare:.2f}x"]
                  for n, v in res["variants"].items()]))
    return res


def _kept(path: Path, ours: set[str]) -> dict[str, Any]:
    """The keys of an earlier results.json that this run neither wrote nor was asked for."""
    import json

    try:
        saved = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return {k: v for k, v in saved.items() if k not in ours} if isinstance(saved, dict) else {}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="smoke version: short windows, few steps (< 3 min)")
    parser.add_argument("--only", help=f"comma-separated subset of {','.join(SECTIONS)}")
    parser.add_argument("--out", type=Path, help="results directory (default bench/results, or bench/results/quick)")
    parser.add_argument("--keep-work", action="store_true", help="keep the temp fleets (logs) for inspection")
    parser.add_argument("--steps", help="camera counts of the scaling section, e.g. 1,4,8 (default 1..20)")
    parser.add_argument("--report-only", action="store_true",
                        help="only redo README.md and the plots from the results.json in --out")
    args = parser.parse_args(argv)
    only = set(args.only.split(",")) if args.only else set(SECTIONS) - ({"accuracy"} if args.quick else set())
    unknown = only - set(SECTIONS)
    if unknown:
        parser.error(f"unknown section(s) {sorted(unknown)}; choose from {SECTIONS}")
    steps = [int(x) for x in args.steps.split(",")] if args.steps else None
    out = args.out or (BENCH / "results" / "quick" if args.quick else BENCH / "results")
    if args.report_only:
        import json

        from .plots import plot_all
        from .report import write_report

        saved = json.loads((out / "results.json").read_text())
        say(f"wrote {write_report(saved, plot_all(saved, out), out)}")
        return 0
    out.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    work = Path(tempfile.mkdtemp(prefix="fleet-bench-"))
    say(f"# Fleet bench{' (quick)' if args.quick else ''} — results to {out}")
    machine = machine_info()
    machine["busy_before"] = machine_busy(2.0)
    say(f"{machine['cpu']}, {machine['cores']} cores, {machine['ram_gib']} GiB, Python {machine['python']}, "
        f"{machine['date']}; other users keep {machine['busy_before']:.2f} cores busy right now")
    results: dict[str, Any] = {"machine": machine, "quick": args.quick, "errors": {},
                               "latency_counts": [1, 4] if args.quick else [1, 10, 20]}
    if steps:
        results["latency_counts"] = [c for c in (1, 10, 20) if c in steps] or sorted({steps[0], steps[-1]})
    timings: dict[str, float] = {}

    def run(name: str, title: str, fn: Any) -> None:
        if name not in only:
            return
        say(f"\n## {title}")
        t = time.monotonic()
        try:
            value = fn()
            if name == "fleet":
                results["fleet"] = value
            else:
                results[name] = value
        except Exception as err:
            traceback.print_exc()
            results["errors"][name] = f"{type(err).__name__}: {err}"
        timings[name] = time.monotonic() - t
        say(f"({name}: {timings[name]:.0f} s)")

    try:
        from . import footage

        t = time.monotonic()
        model_dir = prepare_models()
        if only & {"throughput"}:
            footage.throughput_clip()
        if only & {"fleet"}:
            footage.lane_clip()
            footage.first_clip()
        say(f"models and clips ready ({time.monotonic() - t:.0f} s; cached in {model_dir.parent.parent})")
        run("accuracy", "0. Stand-in model accuracy (scripts/bench_models.py)", section_accuracy)
        run("throughput", "1. Per-worker throughput: engine vs bare Ultralytics (1 thread, in-memory frames)",
            lambda: section_throughput(model_dir, args.quick, work))
        from .fanin import fanin

        run("fanin", "3. Gateway fan-in: 20 simulated workers → real gateway → one backend",
            lambda: fanin(work, args.quick))
        from .fleet_sections import fleet_sections

        run("fleet", "Real fleet: sections 4, 2, 6, 5",
            lambda: fleet_sections(model_dir.parent, args.quick, work, steps))
        from .control import control_plane

        run("control", "7. Control-plane latency", lambda: control_plane(model_dir.parent, work, args.quick))
        from .dashboard import dashboard_cost

        run("dashboard", "8. Dashboard cost: gateway CPU with 20 cameras, page open vs not",
            lambda: dashboard_cost(work, 10.0 if args.quick else 20.0))
        from .hosts import hosts_section

        run("hosts", "9. Several hosts: control plane and failover with 3 hosts, bus throughput with CURVE",
            lambda: hosts_section(work, args.quick))
    finally:
        results["timings"] = timings
        results["elapsed_s"] = time.monotonic() - started
        results = {**_kept(out / "results.json", set(results) | only), **results}
        write_json(out / "results.json", results)
        from .plots import plot_all
        from .report import write_report

        plots = plot_all(results, out)
        try:
            report = write_report(results, plots, out)
            say(f"\nwrote {report} and {len(plots)} plot(s) in {results['elapsed_s'] / 60:.1f} min")
        except Exception:
            traceback.print_exc()
        if args.keep_work:
            say(f"work files kept in {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    return 1 if results["errors"] else 0


if __name__ == "__main__":
    sys.exit(main())
