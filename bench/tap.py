"""The real camera worker with a timing tap: `python -m bench.tap -m detector_worker.cli --spec X`.

Wraps two methods of `detector_worker.runtime.Worker` (nothing else changes) and records, in
$BENCH_TAP_DIR/worker-<slug>-<pid>.jsonl:
  ["start", pid, exec_time]                  when this process began (before any import)
  ["ready", time]                            Worker.__init__ done: models loaded, reader started
  ["f", stamp, seq, captured_at, t0, t1]     every processed frame: its clip index (pixel stamp),
                                             the reader's captured_at, and when _process began/ended
"""

from __future__ import annotations

import time

_EXEC = time.time()

import os  # noqa: E402
import runpy  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402


def main() -> None:
    argv = sys.argv[1:]
    if argv[:2] != ["-m", "detector_worker.cli"]:
        raise SystemExit(f"bench.tap: expected -m detector_worker.cli ..., got {argv}")
    rest = argv[2:]
    spec = Path(rest[rest.index("--spec") + 1]) if "--spec" in rest else Path("unknown")
    from bench.stamp import read_stamp
    from bench.taplog import TapLog

    log = TapLog(Path(os.environ["BENCH_TAP_DIR"]) / f"worker-{spec.stem}-{os.getpid()}.jsonl")
    log.add("start", os.getpid(), _EXEC)

    from detector_worker import runtime

    orig_init, orig_process = runtime.Worker.__init__, runtime.Worker._process

    def __init__(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        orig_init(self, *args, **kwargs)
        log.add("ready", time.time())

    def _process(self, image, seq, captured_at):  # type: ignore[no-untyped-def]
        t0 = time.time()
        orig_process(self, image, seq, captured_at)
        log.add("f", read_stamp(image), seq, captured_at, t0, time.time())

    runtime.Worker.__init__ = __init__  # type: ignore[method-assign]
    runtime.Worker._process = _process  # type: ignore[method-assign]
    sys.argv = ["detector_worker.cli", *rest]
    runpy.run_module("detector_worker.cli", run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    main()
