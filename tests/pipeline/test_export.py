"""ensure_onnx / prepare_archive_dir / the export CLI; the errors and options a worker gets when loading."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from detector_worker.pipeline.export import (
    SAFE_CLASSES,
    ensure_onnx,
    export_in_subprocess,
    landlock_confine,
    model_files,
    prepare_archive_dir,
)
from detector_worker.pipeline.models import ModelLoadError, load_classifier, load_detector
from detector_worker.synthetic.standin import BODY, DETECTOR
from tests.conftest import ROOT

# Two processes start, say "ready", then both call ensure_onnx when the test says "go".
RACER = textwrap.dedent("""
    import logging, sys
    from pathlib import Path
    from detector_worker.pipeline.export import ensure_onnx
    logging.basicConfig(level=logging.INFO, stream=sys.stderr)
    print("ready", flush=True)
    sys.stdin.readline()
    out = ensure_onnx(Path(sys.argv[1]))
    print(out, out.stat().st_mtime_ns, flush=True)
""")


def copy_model(source_dir: Path, model_id: str, target: Path) -> Path:
    target.mkdir(parents=True, exist_ok=True)
    return Path(shutil.copyfile(source_dir / f"{model_id}.pt", target / f"{model_id}.pt"))


@pytest.mark.slow
def test_concurrent_ensure_onnx_exports_once(exported_models: Path, tmp_path: Path) -> None:
    pt = copy_model(exported_models, BODY, tmp_path)  # the smallest model: the quickest export
    racers = [subprocess.Popen([sys.executable, "-c", RACER, str(pt)], cwd=ROOT, stdin=subprocess.PIPE,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    try:
        for racer in racers:
            assert racer.stdout is not None and racer.stdout.readline().strip() == "ready"
        for racer in racers:  # both are past their imports: release them together
            assert racer.stdin is not None
            racer.stdin.write("go\n")
            racer.stdin.flush()
        outputs = [racer.communicate(timeout=180) for racer in racers]
    finally:
        for racer in racers:
            racer.kill()
    assert [r.returncode for r in racers] == [0, 0], [err for _, err in outputs]
    logs = "".join(err for _, err in outputs)
    assert logs.count("exported ") == 1, logs
    assert logs.count("made by another process") == 1, logs  # the other one waited on the lock
    results = {out.strip() for out, _ in outputs}
    assert len(results) == 1, results  # same path, same mtime: one file, written once
    path = Path(results.pop().split()[0])
    assert path == pt.with_suffix(".onnx")
    assert load_classifier(pt).classify(np.full((64, 64, 3), 90, np.uint8)).label
    assert sorted(p.name for p in tmp_path.iterdir()) == [f"{BODY}.onnx", f"{BODY}.onnx.lock", f"{BODY}.pt"]


@pytest.mark.slow
def test_export_is_skipped_while_fresh_and_redone_when_the_pt_changes(exported_models: Path, tmp_path: Path) -> None:
    pt = copy_model(exported_models, BODY, tmp_path / "archive" / "nested")
    (onnx,) = prepare_archive_dir(tmp_path / "archive")
    first = onnx.stat().st_mtime_ns
    assert ensure_onnx(pt) == onnx and onnx.stat().st_mtime_ns == first  # fresh: not exported again
    later = first + 1_000  # just after the export: stale, yet in the past for the re-export
    os.utime(pt, ns=(later, later))  # a new .pt arrived
    with pytest.raises(ModelLoadError, match="older than"):
        load_classifier(pt)  # a stale export is never run silently
    assert ensure_onnx(pt) == onnx and onnx.stat().st_mtime_ns > first
    load_classifier(pt)


def test_model_files_skip_in_progress_export_copies(tmp_path: Path) -> None:
    for name in ("a.pt", "sub/b.pt", ".export-x1y2/a.pt", "c.onnx"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(b"")
    assert model_files(tmp_path) == [tmp_path / "a.pt", tmp_path / "sub" / "b.pt"]


def test_missing_onnx_is_a_clear_error(exported_models: Path, tmp_path: Path) -> None:
    pt = copy_model(exported_models, DETECTOR, tmp_path)
    with pytest.raises(ModelLoadError, match=r"missing.*detector_worker\.pipeline\.export"):
        load_detector(pt)


def test_corrupt_or_wrong_onnx_is_a_clear_error(exported_models: Path, tmp_path: Path) -> None:
    pt = copy_model(exported_models, DETECTOR, tmp_path)
    pt.with_suffix(".onnx").write_bytes(b"\x08\x07 this is not an ONNX model")
    with pytest.raises(ModelLoadError, match="cannot load"):
        load_detector(pt)
    shutil.copyfile(exported_models / f"{DETECTOR}.onnx", pt.with_suffix(".onnx"))
    with pytest.raises(ModelLoadError, match="is a detect model, expected classify"):
        load_classifier(pt)


def test_missing_or_corrupt_pt_on_the_ultralytics_backend(tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match="missing"):
        load_detector(tmp_path / "nothing.pt", backend="ultralytics")
    (tmp_path / "bad.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(ModelLoadError, match="cannot load"):
        load_classifier(tmp_path / "bad.pt", backend="ultralytics")


@pytest.mark.slow
def test_export_cli_failure_is_reported(tmp_path: Path) -> None:
    (tmp_path / "bad.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(ModelLoadError, match=r"converting .* failed: bad.pt: refused by torch's safe loader"):
        export_in_subprocess(tmp_path)
    assert not (tmp_path / "bad.onnx").exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".export-")] == []  # temp dir cleaned up


def test_providers_fall_back_to_the_cpu(monkeypatch: pytest.MonkeyPatch) -> None:
    import onnxruntime

    from detector_worker.pipeline import onnx_backend

    assert onnx_backend.provider_list(None, None) == ["CPUExecutionProvider"]
    if "CUDAExecutionProvider" not in onnxruntime.get_available_providers():
        assert onnx_backend.provider_list(["CUDAExecutionProvider"], 1 << 30) == ["CPUExecutionProvider"]
    monkeypatch.setattr(onnxruntime, "get_available_providers",
                        lambda: ["CUDAExecutionProvider", "CPUExecutionProvider"])
    assert onnx_backend.provider_list(["CUDAExecutionProvider"], 1 << 30) == [
        ("CUDAExecutionProvider", {"gpu_mem_limit": str(1 << 30)}), "CPUExecutionProvider"]
    options = onnx_backend.session_options(1)
    assert (options.intra_op_num_threads, options.inter_op_num_threads) == (1, 1)
    with pytest.raises(ValueError):
        onnx_backend.session_options(0)


def test_session_options_keep_the_arena_without_a_memory_pattern() -> None:
    from detector_worker.pipeline import onnx_backend

    options = onnx_backend.session_options(1)
    assert options.enable_mem_pattern is False  # issue #14: intermediates reuse the arena, -3 MB RSS
    assert options.enable_cpu_mem_arena is True  # without the arena every run allocates afresh (slower)


# --- the safe loader and the confined converter ------------------------------------------------

CANARY_PT = textwrap.dedent("""
    import os, sys, torch
    class Bomb:
        def __reduce__(self):
            return os.system, (f"touch {sys.argv[2]}",)
    torch.save({"model": Bomb(), "train_args": {"imgsz": 64}}, sys.argv[1])
""")


def test_a_pickle_that_runs_code_is_refused_by_the_safe_loader(tmp_path: Path) -> None:
    pt, canary = tmp_path / "bomb.pt", tmp_path / "canary"
    subprocess.run([sys.executable, "-c", CANARY_PT, str(pt), str(canary)], check=True, timeout=120)
    with pytest.raises(ModelLoadError, match=r"bomb.pt: refused by torch's safe loader.*GLOBAL posix.system"):
        ensure_onnx(pt)  # in this process: the safe loader alone must hold
    assert not canary.exists() and not pt.with_suffix(".onnx").exists()
    with pytest.raises(ModelLoadError, match="refused by torch's safe loader"):
        export_in_subprocess(tmp_path)
    assert not canary.exists()


def test_the_allow_list_is_what_the_committed_checkpoints_need(exported_models: Path) -> None:
    import torch

    needed = set()
    for pt in exported_models.glob("*.pt"):
        needed |= set(torch.serialization.get_unsafe_globals_in_checkpoint(str(pt)))
    assert needed == set(SAFE_CLASSES)  # no more (minimal), no less (the models convert)


CONFINED = textwrap.dedent("""
    import socket, sys
    from pathlib import Path
    from detector_worker.pipeline.export import landlock_confine
    inside, outside, port = Path(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3])
    print("abi", landlock_confine(inside), flush=True)
    (inside / "ok").write_text("fine")
    open("/dev/null", "w").write("x")
    for attempt in (lambda: (outside / "escaped").write_text("no"), lambda: (inside / "ok").rename(outside / "moved"),
                    lambda: socket.create_connection(("127.0.0.1", port), timeout=2)):
        try:
            attempt()
            print("allowed", flush=True)
        except OSError as err:
            print("denied", type(err).__name__, flush=True)
""")


def test_landlock_lets_the_converter_write_only_in_its_temp_dir(tmp_path: Path) -> None:
    import socket

    inside, outside = tmp_path / "inside", tmp_path / "outside"
    inside.mkdir()
    outside.mkdir()
    listener = socket.create_server(("127.0.0.1", 0))
    try:
        done = subprocess.run([sys.executable, "-c", CONFINED, str(inside), str(outside),
                               str(listener.getsockname()[1])], cwd=ROOT, capture_output=True, text=True, timeout=60)
    finally:
        listener.close()
    lines = done.stdout.splitlines()
    if lines and lines[0] == "abi 0":
        pytest.skip("this kernel has no Landlock")
    assert done.returncode == 0, done.stderr
    assert lines[1:] == ["denied PermissionError"] * 3, lines
    assert (inside / "ok").read_text() == "fine" and list(outside.iterdir()) == []
    assert landlock_confine is not None
