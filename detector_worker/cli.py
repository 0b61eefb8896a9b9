"""`detector-worker`: run one camera until stopped.

    detector-worker --spec run/specs/cam-001.json           # written by the gateway (0600)
    detector-worker --cameras cameras.yaml --camera cam-001  # a hand-run camera

Credentials live in the spec file, never on the command line. A spec that can't be used exits
with code 78 (EX_CONFIG) and one line on stderr saying which file and which field.

Exit codes (docs/operations.md, "Exit codes"): 0 stopped by SIGTERM/SIGINT; 1 cannot start (the
model archive or a model can't be fetched, read or loaded; logged in one line); 2 a usage error
(argparse); 3 over the memory ceiling (`resource_limits.memory_per_process_mb`); 78 a bad spec.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from . import __version__
from .config.spec import BusSettings, SpecError, WorkerSpec, load_spec

EXIT_BAD_SPEC = 78  # EX_CONFIG (sysexits.h); 2 stays argparse's usage error


def _spec_loader(args: argparse.Namespace) -> Callable[[], WorkerSpec]:
    if args.spec:
        return lambda: load_spec(args.spec)

    def from_cameras() -> WorkerSpec:
        from .config.cameras_file import load_cameras_file  # a hand-run camera only: not on a spec's start

        cameras = load_cameras_file(args.cameras)
        bus = BusSettings(push_endpoint=args.push, control_endpoint=args.control)
        return cameras.worker_spec(args.camera, bus=bus, base_dir=args.cameras.resolve().parent)

    return from_cameras


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="detector-worker", description="Run one camera's detection worker.")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    where = parser.add_mutually_exclusive_group(required=True)
    where.add_argument("--spec", type=Path, help="per-camera spec file written by the gateway (JSON or YAML)")
    where.add_argument("--cameras", type=Path, help="cameras.yaml, with --camera")
    parser.add_argument("--camera", help="the camera's name in cameras.yaml")
    parser.add_argument("--push", default=BusSettings().push_endpoint, help="gateway's PULL endpoint (--cameras)")
    parser.add_argument("--control", default=BusSettings().control_endpoint,
                        help="gateway's ROUTER endpoint (--cameras)")
    args = parser.parse_args(argv)
    if args.cameras and not args.camera:
        parser.error("--cameras needs --camera")
    load = _spec_loader(args)
    try:
        spec = load()
    except SpecError as err:
        print(f"detector-worker: {err}", file=sys.stderr)
        return EXIT_BAD_SPEC
    # Imported only now: a bad spec is reported without paying for OpenCV and ONNX Runtime.
    from .logs import setup_logging
    from .runtime import run_worker

    context = setup_logging(spec.log.directory, spec.slug, spec.camera_id, max_mb=spec.log.max_mb,
                            backups=spec.log.backups, level=spec.log.level)
    os.environ.setdefault("OPENCV_FFMPEG_CAPTURE_OPTIONS", "rtsp_transport;tcp|analyzeduration;0|probesize;32")
    import cv2

    cv2.setNumThreads(max(1, spec.inference.threads))  # many workers share the cores: no thread pools
    return run_worker(spec, reload_spec=load, log_context=context)


if __name__ == "__main__":
    raise SystemExit(main())
