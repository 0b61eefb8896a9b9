"""Export the `.pt` models of an extracted pipeline archive to ONNX, once, safely under concurrency.

    python -m detector_worker.pipeline.export DIR     # makes DIR/**/X.onnx beside each X.pt

A `.pt` file is a pickle, and an archive is untrusted input: unpickling one with torch's default
loader can run any code. So every `.pt` is read here with `torch.load(weights_only=True)`, which
only rebuilds the classes in `SAFE_CLASSES` (what an Ultralytics checkpoint needs, found with
`torch.serialization.get_unsafe_globals_in_checkpoint` on the committed models) and refuses any
other global, `os.system` and friends included.

`export_in_subprocess` (what workers use, through `detector_worker.pipelines`) also confines the
child that does it: it gets a copy of the `.pt` files in a fresh temp directory, runs there (cwd,
HOME, TMPDIR and YOLO_CONFIG_DIR inside it) with a clean environment (no store URLs, no
credentials), as `nobody` when the worker is root, and under a Landlock ruleset that lets it write
nowhere but that directory and make no TCP connection. The parent copies the `.onnx` files back.

Importing this module is cheap; exporting imports torch and Ultralytics, so a worker never has
torch in its own memory. Several workers may get the same archive at once: an `fcntl.flock` on
`X.onnx.lock` makes one export while the others wait, and the `.onnx` appears atomically.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import fcntl
import logging
import os
import pwd
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

from ..proc import die_with_parent
from .models import EXPORT_MODULE, ModelLoadError, onnx_path

log = logging.getLogger(EXPORT_MODULE)  # not __name__: that is "__main__" under -m
# 17: what ORT's CUDA provider fully supports (Ultralytics' default 18+ pushes Resize to the CPU there),
# and it is supported by this torch/onnx/onnxruntime (checked by tests/pipeline).
OPSET = 17
_TEMP_PREFIX = ".export-"
_PACKAGE_ROOT = Path(__file__).resolve().parents[2]

# Exactly the classes the committed detector and classifiers need beyond torch's own safe set.
SAFE_CLASSES = (
    "torch.nn.modules.activation.SiLU",
    "torch.nn.modules.batchnorm.BatchNorm2d",
    "torch.nn.modules.container.ModuleList",
    "torch.nn.modules.container.Sequential",
    "torch.nn.modules.conv.Conv2d",
    "torch.nn.modules.dropout.Dropout",
    "torch.nn.modules.linear.Linear",
    "torch.nn.modules.pooling.AdaptiveAvgPool2d",
    "torch.nn.modules.pooling.MaxPool2d",
    "torch.nn.modules.upsampling.Upsample",
    "torchvision.transforms.functional.InterpolationMode",
    "torchvision.transforms.transforms.CenterCrop",
    "torchvision.transforms.transforms.Compose",
    "torchvision.transforms.transforms.Normalize",
    "torchvision.transforms.transforms.Resize",
    "torchvision.transforms.transforms.ToTensor",
    "ultralytics.nn.modules.block.Bottleneck",
    "ultralytics.nn.modules.block.C2f",
    "ultralytics.nn.modules.block.DFL",
    "ultralytics.nn.modules.block.SPPF",
    "ultralytics.nn.modules.conv.Concat",
    "ultralytics.nn.modules.conv.Conv",
    "ultralytics.nn.modules.head.Classify",
    "ultralytics.nn.modules.head.Detect",
    "ultralytics.nn.tasks.ClassificationModel",
    "ultralytics.nn.tasks.DetectionModel",
)


def _resolve(name: str) -> Any:
    import importlib

    module, _, attr = name.rpartition(".")
    return getattr(importlib.import_module(module), attr)


@contextlib.contextmanager
def safe_torch_load() -> Iterator[None]:
    """Every `torch.load` in this block (Ultralytics' included) is `weights_only=True` with `SAFE_CLASSES`."""
    import torch

    original = torch.load

    def load(*args: Any, **kwargs: Any) -> Any:
        kwargs["weights_only"] = True  # whatever the caller asked for
        kwargs.pop("pickle_module", None)
        return original(*args, **kwargs)

    torch.load = load
    try:
        with torch.serialization.safe_globals([_resolve(n) for n in SAFE_CLASSES]):
            yield
    finally:
        torch.load = original


def _why_refused(err: BaseException) -> str:
    """The line of a refused load that names the cause (e.g. the global it would have called)."""
    text = str(err) or type(err).__name__
    for cause in (err, err.__cause__, err.__context__):
        found = re.search(r"(unsupported (global|operand)|unsupported GLOBAL)[^\n]*", str(cause or ""), re.I)
        if found:
            return found.group(0)[:300]
    return text.splitlines()[0][:300]


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
    with tempfile.TemporaryDirectory(prefix=_TEMP_PREFIX, dir=pt.parent) as tmp, safe_torch_load():
        src = Path(tmp) / pt.name
        shutil.copyfile(pt, src)
        try:
            import torch

            torch.load(src, map_location="cpu")  # weights_only (see safe_torch_load): refuses with a clear reason
            model = YOLO(str(src))
        except Exception as err:  # weights_only refusing a global is an UnpicklingError
            raise ModelLoadError(f"{pt.name}: refused by torch's safe loader (weights_only=True): "
                                 f"{_why_refused(err)}") from err
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


# --- confinement of the converting child ---------------------------------------------------------

_LANDLOCK_CREATE_RULESET, _LANDLOCK_ADD_RULE, _LANDLOCK_RESTRICT_SELF = 444, 445, 446
_PR_SET_NO_NEW_PRIVS = 38
_FS_EXECUTE, _FS_WRITE_FILE = 1 << 0, 1 << 1
_FS_WRITES = (1 << 1) | (1 << 4) | (1 << 5) | (1 << 6) | (1 << 7) | (1 << 8) | (1 << 9) | (1 << 10) | (1 << 11) \
    | (1 << 12)  # write, remove dir/file, make char/dir/reg/sock/fifo/block/sym
_FS_REFER, _FS_TRUNCATE, _FS_IOCTL_DEV = 1 << 13, 1 << 14, 1 << 15
_NET_BIND_TCP, _NET_CONNECT_TCP = 1, 2
_SCOPE_ABSTRACT_UNIX, _SCOPE_SIGNAL = 1, 2


class _RulesetAttr(ctypes.Structure):
    _fields_ = [("handled_access_fs", ctypes.c_uint64), ("handled_access_net", ctypes.c_uint64),
                ("scoped", ctypes.c_uint64)]


class _PathBeneath(ctypes.Structure):
    _pack_ = 1
    _fields_ = [("allowed_access", ctypes.c_uint64), ("parent_fd", ctypes.c_int32)]


def landlock_confine(writable: Path) -> int:
    """Let this process (and its children) write only under `writable` (and /dev/null), connect or
    bind no TCP port, signal no process outside, reach no abstract unix socket outside. Returns
    the Landlock ABI used; 0 where the kernel has no Landlock (the caller says so)."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.syscall.restype = ctypes.c_long
    abi = libc.syscall(_LANDLOCK_CREATE_RULESET, None, ctypes.c_size_t(0), ctypes.c_uint32(1))
    if abi < 1:
        return 0
    fs = _FS_WRITES | (_FS_REFER if abi >= 2 else 0) | (_FS_TRUNCATE if abi >= 3 else 0) \
        | (_FS_IOCTL_DEV if abi >= 5 else 0)
    net = (_NET_BIND_TCP | _NET_CONNECT_TCP) if abi >= 4 else 0
    scoped = (_SCOPE_ABSTRACT_UNIX | _SCOPE_SIGNAL) if abi >= 6 else 0
    attr = _RulesetAttr(fs, net, scoped)
    size = ctypes.sizeof(_RulesetAttr) if abi >= 6 else (16 if abi >= 4 else 8)
    ruleset = libc.syscall(_LANDLOCK_CREATE_RULESET, ctypes.byref(attr), ctypes.c_size_t(size), ctypes.c_uint32(0))
    if ruleset < 0:
        raise OSError(ctypes.get_errno(), "landlock_create_ruleset failed")
    try:
        for path, access in ((writable, fs), (Path("/dev/null"), _FS_WRITE_FILE | (_FS_TRUNCATE if abi >= 3 else 0))):
            fd = os.open(path, os.O_PATH | os.O_CLOEXEC)
            try:
                rule = _PathBeneath(access, fd)
                if libc.syscall(_LANDLOCK_ADD_RULE, ctypes.c_int(ruleset), ctypes.c_int(1), ctypes.byref(rule),
                                ctypes.c_uint32(0)) != 0:
                    raise OSError(ctypes.get_errno(), f"landlock_add_rule {path} failed")
            finally:
                os.close(fd)
        if libc.prctl(_PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), "prctl(PR_SET_NO_NEW_PRIVS) failed")
        if libc.syscall(_LANDLOCK_RESTRICT_SELF, ctypes.c_int(ruleset), ctypes.c_uint32(0)) != 0:
            raise OSError(ctypes.get_errno(), "landlock_restrict_self failed")
    finally:
        os.close(ruleset)
    return int(abi)


_CONFINED_CHILD = (
    "import sys; sys.path.insert(0, sys.argv[1]); "
    "from detector_worker.pipeline.export import confined_main; raise SystemExit(confined_main(sys.argv[2:]))"
)


def _confined_env(tmp: Path) -> dict[str, str]:
    """Nothing of the worker's environment (store URLs, tokens) reaches the child; its writable
    places all point into `tmp`."""
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LANG": "C.UTF-8", "PYTHONDONTWRITEBYTECODE": "1",
           "HOME": str(tmp / "home"), "TMPDIR": str(tmp / "tmp"), "YOLO_CONFIG_DIR": str(tmp / "config"),
           "YOLO_OFFLINE": "1", "YOLO_AUTOINSTALL": "0", "YOLO_VERBOSE": "False", "MPLCONFIGDIR": str(tmp / "mpl"),
           "XDG_CACHE_HOME": str(tmp / "cache"), "TORCHINDUCTOR_CACHE_DIR": str(tmp / "cache"),
           "CUDA_VISIBLE_DEVICES": "", "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    for name in ("home", "tmp", "config", "mpl", "cache"):
        (tmp / name).mkdir(exist_ok=True)
    return env


def _unprivileged() -> tuple[int, int] | None:
    """(uid, gid) of `nobody` when this process is root: the child then cannot write (or read) what
    only root may, spec files and the run directory included. None when not root."""
    if os.geteuid() != 0:
        return None
    try:
        entry = pwd.getpwnam("nobody")
    except KeyError:
        return None
    # nobody must be able to run the interpreter and import the packages (e.g. not under a 0700 /root)
    needed = [Path(os.path.realpath(sys.executable)), Path(sys.prefix).resolve(), _PACKAGE_ROOT,
              *(Path(p).resolve() for p in sys.path if p.endswith("site-packages"))]
    for path in needed:
        for part in (path, *path.parents):
            with contextlib.suppress(OSError):
                if not part.stat().st_mode & 0o001:  # others may not search (dir) / execute (file)
                    log.info("converter runs as this user, not nobody: %s is not open to others", part)
                    return None
    return entry.pw_uid, entry.pw_gid


def _chown_tree(root: Path, uid: int, gid: int) -> None:
    for dirpath, dirnames, filenames in os.walk(root):
        os.chown(dirpath, uid, gid)
        for name in (*dirnames, *filenames):
            os.chown(os.path.join(dirpath, name), uid, gid, follow_symlinks=False)


def export_in_subprocess(directory: Path, *, timeout: float = 600.0,
                         on_progress: Callable[[str], None] | None = None) -> list[Path]:
    """Make an up-to-date `.onnx` beside every `.pt` under `directory` in a confined child process
    (see the module's docstring; torch stays out of the caller); returns every `.onnx` path.

    Raises ModelLoadError with the tail of the child's output if it fails or times out.
    """
    if not directory.is_dir():
        raise ModelLoadError(f"{directory} is not a directory")
    pts = model_files(directory)
    with contextlib.ExitStack() as stack:
        stale = [pt for pt in pts if not is_fresh(pt)]
        for pt in stale:  # sorted paths: two workers never wait on each other crosswise
            lock = stack.enter_context(open(onnx_path(pt).with_name(onnx_path(pt).name + ".lock"), "a"))
            fcntl.flock(lock, fcntl.LOCK_EX)  # released when closed, also if this process dies
        stale = [pt for pt in stale if not is_fresh(pt)]  # made by another process while we waited
        if stale:
            _convert_confined(directory, stale, timeout, on_progress)
    return [onnx_path(pt) for pt in pts]


def _convert_confined(directory: Path, pts: list[Path], timeout: float,
                      on_progress: Callable[[str], None] | None) -> None:
    start = time.monotonic()
    tmp = Path(tempfile.mkdtemp(prefix="detector-worker-convert-"))
    try:
        work = tmp / "in"
        names = []
        for pt in pts:
            rel = pt.relative_to(directory)
            (work / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(pt, work / rel)
            names.append(str(rel))
        env = _confined_env(tmp)
        user = _unprivileged()
        if user is not None:
            _chown_tree(tmp, *user)
        command = [sys.executable, "-I", "-c", _CONFINED_CHILD, str(_PACKAGE_ROOT), str(tmp), *names]
        if on_progress is not None:
            on_progress(f"converting {len(names)} model(s) to ONNX")
        try:
            done = subprocess.run(command, capture_output=True, text=True, timeout=timeout, env=env, cwd=tmp,
                                  check=False, user=user[0] if user else None, group=user[1] if user else None,
                                  extra_groups=[] if user else None, stdin=subprocess.DEVNULL)
        except subprocess.TimeoutExpired as e:
            raise ModelLoadError(f"converting the models of {directory.name} took longer than {timeout:.0f} s") from e
        if done.returncode != 0:
            lines = (done.stderr or done.stdout).strip().splitlines()
            reason = next((line.removeprefix("error: ") for line in reversed(lines) if line.startswith("error: ")),
                          None)
            if reason is not None:
                raise ModelLoadError(f"converting {directory.name} failed: {reason}")
            tail = "\n".join(lines[-15:])
            raise ModelLoadError(f"exporting {directory} failed (exit {done.returncode}):\n{tail}")
        for pt, name in zip(pts, names, strict=True):
            made = onnx_path(work / name)
            if not made.is_file() or made.is_symlink():
                raise ModelLoadError(f"converting {name} made no ONNX file")
            out = onnx_path(pt)
            part = out.with_name(f".{out.name}.part-{os.getpid()}")
            shutil.copyfile(made, part)  # a copy, owned by us: never a link the child could have made
            os.replace(part, out)
        log.info("converted %s of %s to ONNX in a confined child in %.1f s", ", ".join(names), directory.name,
                 time.monotonic() - start)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def confined_main(argv: Sequence[str]) -> int:
    """The child of `export_in_subprocess`: argv = [temp dir, .pt paths relative to temp dir/in ...]."""
    die_with_parent(signal.SIGKILL)  # a kill -9'd worker leaves no converter behind
    tmp, names = Path(argv[0]), argv[1:]
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(name)s: %(message)s")
    try:
        abi = landlock_confine(tmp)
    except OSError as err:
        print(f"error: cannot confine the converter: {err}", file=sys.stderr)
        return 1
    log.info("confined: writes only under %s (Landlock ABI %s), uid %d", tmp, abi or "unavailable", os.getuid())
    try:
        for name in names:
            pt = tmp / "in" / name
            _export(pt, onnx_path(pt))
            print(onnx_path(pt), flush=True)
    except ModelLoadError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except Exception:  # an Ultralytics/torch/onnx failure: the traceback is what the operator needs
        log.exception("exporting failed")
        return 1
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog=f"python -m {EXPORT_MODULE}", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("directory", type=Path, help="an extracted pipeline archive")
    args = parser.parse_args(argv)
    die_with_parent(signal.SIGKILL)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(name)s: %(message)s")
    try:
        for path in prepare_archive_dir(args.directory):
            print(path, flush=True)
    except ModelLoadError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except Exception:
        log.exception("exporting %s failed", args.directory)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
