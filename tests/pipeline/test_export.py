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

from detector_worker.pipeline.export import ensure_onnx, export_in_subprocess, model_files, prepare_archive_dir
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
    with pytest.raises(ModelLoadError, match=r"exporting .* failed \(exit 1\)"):
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
