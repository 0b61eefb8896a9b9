"""The real camera worker with a timing tap: `python -m bench.tap -m detector_worker.cli --spec X`.

Wraps two methods of `detector_worker.runtime.Worker` (nothing else changes) and records, in
$BENCH_TAP_DIR/worker-<slug>-<pid>.jsonl:
  ["start", pid, exec_time]                  when this process began (before any import)
  ["ready", time]                            Worker.__init__ done: models loaded, reader started
  ["f", stamp, seq, captured_at, t0, t1]     every processed frame: its clip index (pixel stamp),
                                             the reader's captured_at, and when _process began/ended
With $BENCH_COST_MODEL (an ONNX detector), every detector call also runs that model (_add_cost_twin).
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
    cost_model = os.environ.get("BENCH_COST_MODEL")
    if cost_model:
        _add_cost_twin(Path(cost_model))
    sys.argv = ["detector_worker.cli", *rest]
    runpy.run_module("detector_worker.cli", run_name="__main__", alter_sys=True)


def _add_cost_twin(model: Path) -> None:
    """Every detector call also runs `model` (a real-size detector, e.g. YOLOv8n@640 with random weights) on
    the same frame, one thread: the worker's decisions stay the stand-in's (which knows the synthetic world,
    so recall can be measured), its CPU and latency are a real-size detector's (plus the stand-in's own
    few ms: conservative). bench/sustained.py uses it when no trained real-size archive is at hand."""
    import cv2
    import onnxruntime as ort

    from detector_worker.pipeline import engine
    from detector_worker.pipeline.onnx_backend import session_options

    session = ort.InferenceSession(str(model), session_options(1), providers=["CPUExecutionProvider"])
    name, shape = session.get_inputs()[0].name, session.get_inputs()[0].shape
    size = (int(shape[3]), int(shape[2]))
    orig_detect = engine.PipelineInstance.detect

    def detect(self, image):  # type: ignore[no-untyped-def]
        found = orig_detect(self, image)
        session.run(None, {name: cv2.dnn.blobFromImage(cv2.resize(image, size), 1 / 255.0, swapRB=True)})
        return found

    engine.PipelineInstance.detect = detect  # type: ignore[method-assign]


if __name__ == "__main__":
    main()
