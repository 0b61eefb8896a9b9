"""Export the `.pt` models of an extracted pipeline archive to ONNX, once, safely under concurrency.

    python -m detector_worker.pipeline.export DIR     # makes DIR/**/X.onnx beside each X.pt

Importing this module is cheap; exporting imports torch and Ultralytics, so a worker runs the
export in a child process (`export_in_subprocess`) and never has torch in its own memory.
Several workers may get the same archive at once: an `fcntl.flock` on `X.onnx.lock` makes one
export while the others wait, and the `.onnx` appears atomically (temp dir + `os.replace`).
"""

from __future__ import annotations

import argparse
import fcntl
import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

from ..proc import die_with_parent
from .models import EXPORT_MODULE, ModelLoadError, onnx_path

log = logging.getLogger(EXPORT_MODULE)  # not __name__: that is "__main__" under -m
# 17: what ORT's CUDA provider fully supports (Ultralytics' default 18+ pushes Resize to the CPU there),
# and it is supported by this torch/onnx/onnxruntime (checked by tests/pipeline).
OPSET = 17
_TEMP_PREFIX = ".export-"


def is_fresh(pt: Path) -> bool:
    """The .onnx exists and is not older than its .pt (same mtime: unpacked together from an archive)."""
    onnx = onnx_path(pt)
    return onnx.is_file() and onnx.stat().st_mtime_ns >= pt.stat().st_mtime_ns


def _export(pt: Path, out: Path) -> None:
    """Ultralytics export of `pt` at its training imgsz, fixed shape, written to `out` atomically."""
    from ..synthetic.offline import prepare_ultralytics

    prepare_ultralytics()
    from ultralytics import YOLO

    # Ultralytics writes X.onnx beside its input: export a copy inside a private temp dir on the
    # same filesystem, so that readers only ever see a missing or a complete file.
    with tempfile.TemporaryDirectory(prefix=_TEMP_PREFIX, dir=pt.parent) as tmp:
        src = Path(tmp) / pt.name
        shutil.copyfile(pt, src)
        model = YOLO(str(src))
        imgsz = model.ckpt.get("train_args", {}).get("imgsz") if getattr(model, "ckpt", None) else None
        if imgsz is None:
            raise ModelLoadError(f"{pt} does not say which imgsz it was trained at")
        exported = Path(model.export(format="onnx", imgsz=imgsz, dynamic=False, simplify=True, opset=OPSET,
                                     device="cpu", verbose=False))
        os.replace(exported, out)


def ensure_onnx(pt: Path) -> Path:
    """`pt`'s sibling `.onnx`, exporting it first unless a fresh one exists. Safe across processes."""
    pt = pt.resolve()
    if not pt.is_file():
        raise ModelLoadError(f"{pt} is missing")
    out = onnx_path(pt)
    if is_fresh(pt):
        return out
    with open(out.with_name(out.name + ".lock"), "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes, also if this process dies
        if is_fresh(pt):  # another process exported it while we waited
            log.info("%s: made by another process while this one waited", out.name)
            return out
        start = time.monotonic()
        _export(pt, out)
        log.info("exported %s in %.2f s", out, time.monotonic() - start)
    return out


def model_files(directory: Path) -> list[Path]:
    """The .pt files of an extracted archive, skipping our own in-progress export copies."""
    return sorted(p for p in directory.rglob("*.pt")
                  if p.is_file() and not any(part.startswith(_TEMP_PREFIX) for part in p.relative_to(directory).parts))


def prepare_archive_dir(directory: Path) -> list[Path]:
    """Ensure an up-to-date `.onnx` beside every `.pt` under `directory`; returns the `.onnx` paths."""
    if not directory.is_dir():
        raise ModelLoadError(f"{directory} is not a directory")
    return [ensure_onnx(pt) for pt in model_files(directory)]


def export_in_subprocess(directory: Path, *, timeout: float = 600.0) -> list[Path]:
    """Run the export CLI in a child process (torch stays out of the caller); the `.onnx` paths it made.

    Raises ModelLoadError with the tail of the child's output if it fails or times out.
    """
    command = [sys.executable, "-m", EXPORT_MODULE, str(directory)]
    package_root = str(Path(__file__).resolve().parents[2])
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (package_root, os.environ.get("PYTHONPATH")) if p)}
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=timeout, env=env, check=False)
    except subprocess.TimeoutExpired as e:
        raise ModelLoadError(f"exporting {directory} took longer than {timeout:.0f} s") from e
    if done.returncode != 0:
        tail = "\n".join((done.stderr or done.stdout).strip().splitlines()[-15:])
        raise ModelLoadError(f"exporting {directory} failed (exit {done.returncode}):\n{tail}")
    # Only our own lines: Ultralytics and onnxslim may print to stdout too.
    return [Path(line) for line in done.stdout.splitlines() if line.endswith(".onnx") and Path(line).is_file()]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog=f"python -m {EXPORT_MODULE}", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("directory", type=Path, help="an extracted pipeline archive")
    args = parser.parse_args(argv)
    die_with_parent(signal.SIGKILL)  # a kill -9'd worker leaves no exporter behind
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(name)s: %(message)s")
    try:
        for path in prepare_archive_dir(args.directory):
            print(path, flush=True)  # stdout: one exported path a line, for export_in_subprocess
    except ModelLoadError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except Exception:  # an Ultralytics/torch/onnx failure: the traceback is what the operator needs
        log.exception("exporting %s failed", args.directory)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
