#!/usr/bin/env python3
"""Train the three stand-in models from generated data and pack the pipeline archive.

    make models            # = .venv/bin/python scripts/train_models.py

Steps: render training sets (seed 1000) → train the detector and both classifiers with
Ultralytics on the CPU → evaluate on a held-out set (seed 2000) → copy the weights to
`models/`, write `models/ACCURACY.md` → pack `models/car_frontal_pipeline.mpta`.
Fixed seeds and deterministic training make a re-run reproduce the same figures.

    .venv/bin/python scripts/train_models.py --pack-only   # repack the archive from models/*.pt

`--pack-only` rewrites `pipeline.json` (e.g. after a change to `standin_pipeline`) around the
committed weights, without training; the zip is deterministic, so unchanged input gives the same bytes.

The archive holds each model's `.onnx` beside its `.pt`: workers run ONNX only and never unpickle
a `.pt`. The `.onnx` files are kept in `models/` too (an ONNX export is not byte-for-byte
reproducible, so `--pack-only` reuses them; it exports, with torch's safe loader, only a missing one).
"""

from __future__ import annotations

import argparse
import copy
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from detector_worker.synthetic.offline import prepare_ultralytics  # noqa: E402

prepare_ultralytics()

import yaml  # noqa: E402

from detector_worker.pipeline.export import export_in_subprocess  # noqa: E402
from detector_worker.synthetic import datasets, evaluate  # noqa: E402
from detector_worker.synthetic.catalog import BODY_TYPE_NAMES, BRAND_NAMES  # noqa: E402
from detector_worker.synthetic.standin import (  # noqa: E402
    ARCHIVE_NAME,
    BODY,
    BRAND,
    DETECTOR,
    pack_archive,
    standin_pipeline,
)

TRAIN_SEED, HELDOUT_SEED = 1000, 2000


@dataclass(frozen=True)
class Plan:
    det_train: int = 1000
    det_val: int = 150
    det_epochs: int = 15
    det_imgsz: int = 320
    cls_train: int = 4000
    cls_val: int = 500
    cls_epochs: int = 10
    brand_imgsz: int = 96
    body_imgsz: int = 64
    heldout_det: int = 400
    heldout_cls: int = 800


QUICK = Plan(det_train=300, det_val=60, det_epochs=2, cls_train=400, cls_val=80, cls_epochs=2,
             heldout_det=60, heldout_cls=100)


def scaled_cfg(base: str, width: float, nc: int, out: Path) -> Path:
    """A copy of one of Ultralytics' model configs at a smaller width (fewer channels)."""
    import ultralytics

    src = Path(ultralytics.__file__).parent / "cfg" / "models" / "v8" / base
    cfg = yaml.safe_load(src.read_text())
    cfg = copy.deepcopy(cfg)
    cfg["nc"] = nc
    cfg["scales"] = {"t": [0.33, width, 1024]}
    cfg["scale"] = "t"
    out.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return out


def train(cfg: Path, data: Path, name: str, work: Path, **kwargs: object) -> Path:
    from ultralytics import YOLO

    model = YOLO(str(cfg))
    model.train(data=str(data), project=str(work / "runs"), name=name, exist_ok=True, device="cpu", seed=0,
                deterministic=True, amp=False, plots=False, verbose=False, pretrained=False, **kwargs)
    best = work / "runs" / name / "weights" / "best.pt"
    if not best.exists():
        raise SystemExit(f"training {name} produced no weights at {best}")
    return best


def export_onnx(models_dir: Path, *, fresh: bool) -> list[Path]:
    """`models_dir/<model>.onnx` for each stand-in model: kept when present (unless `fresh`: new
    weights), else exported in the confined child the workers use, from a copy of the `.pt`."""
    wanted = [models_dir / f"{m}.onnx" for m in (DETECTOR, BRAND, BODY)]
    missing = [p for p in wanted if fresh or not p.is_file()]
    if missing:
        with tempfile.TemporaryDirectory() as tmp:
            for onnx in missing:
                shutil.copyfile(onnx.with_suffix(".pt"), Path(tmp) / f"{onnx.stem}.pt")
            for made in export_in_subprocess(Path(tmp)):
                shutil.copyfile(made, models_dir / made.name)
                print(f"exported {models_dir / made.name}", flush=True)
    return wanted


def pack(models_dir: Path, plan: Plan, *, fresh_onnx: bool = False) -> Path:
    """The stand-in archive: pipeline.json, and each model's .pt and .onnx (deterministic zip)."""
    onnx = export_onnx(models_dir, fresh=fresh_onnx)
    files = {p.name: p for p in onnx} | {f"{m}.pt": models_dir / f"{m}.pt" for m in (DETECTOR, BRAND, BODY)}
    return pack_archive(models_dir / ARCHIVE_NAME, standin_pipeline(plan.brand_imgsz, plan.body_imgsz), files)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", type=Path, default=ROOT / "build" / "train", help="scratch directory")
    parser.add_argument("--out", type=Path, default=ROOT / "models", help="where the models go")
    parser.add_argument("--quick", action="store_true", help="tiny sets and 2 epochs: checks the script only")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--pack-only", action="store_true",
                        help="only repack the archive from the .pt files already in --out (no training)")
    args = parser.parse_args()
    if args.pack_only:
        print(f"packed {pack(args.out, Plan())}")
        return 0
    plan = QUICK if args.quick else Plan()
    work: Path = args.work
    if work.exists():
        shutil.rmtree(work)
    work.mkdir(parents=True)
    t0 = time.monotonic()

    print("rendering training sets ...", flush=True)
    det_data = datasets.write_detection_set(work / "det", TRAIN_SEED, plan.det_train, plan.det_val, args.workers,
                                           scale=0.5)
    datasets.write_classification_sets(work / "brand", work / "bodytype", TRAIN_SEED, plan.cls_train,
                                       plan.cls_val, plan.brand_imgsz, plan.body_imgsz, args.workers)
    print(f"  done in {time.monotonic() - t0:.0f} s", flush=True)

    t1 = time.monotonic()
    det = train(scaled_cfg("yolov8.yaml", 0.125, 2, work / "detector.yaml"), det_data, "det", work,
                epochs=plan.det_epochs, imgsz=plan.det_imgsz, batch=16, nbs=16, warmup_epochs=1,
                close_mosaic=3, cache="ram", workers=args.workers)
    t_det = time.monotonic() - t1
    cls_cfg = scaled_cfg("yolov8-cls.yaml", 0.125, len(BRAND_NAMES), work / "classifier.yaml")
    common = dict(epochs=plan.cls_epochs, batch=64, nbs=64, warmup_epochs=1, cache="ram", workers=args.workers,
                  scale=0.1, erasing=0.0, auto_augment=None, hsv_h=0.0)
    t2 = time.monotonic()
    brand = train(cls_cfg, work / "brand", "brand", work, imgsz=plan.brand_imgsz, **common)
    t_brand = time.monotonic() - t2
    t3 = time.monotonic()
    body_cfg = scaled_cfg("yolov8-cls.yaml", 0.125, len(BODY_TYPE_NAMES), work / "classifier_body.yaml")
    body = train(body_cfg, work / "bodytype", "bodytype", work, imgsz=plan.body_imgsz, **common)
    t_body = time.monotonic() - t3

    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    weights = {
        "car_frontal_detection_v1": det,
        "car_brand_cls_v1": brand,
        "car_bodytype_cls_v1": body,
    }
    for name, src in weights.items():
        shutil.copyfile(src, out / f"{name}.pt")

    print(f"evaluating on a held-out set (seed {HELDOUT_SEED}) ...", flush=True)
    report = evaluate.evaluate_models(out, work / "heldout", HELDOUT_SEED, plan.heldout_det, plan.heldout_cls,
                                      det_imgsz=plan.det_imgsz, brand_size=plan.brand_imgsz,
                                      body_size=plan.body_imgsz, workers=args.workers)
    timings = {"detector": t_det, "brand classifier": t_brand, "body-type classifier": t_body}
    table = evaluate.format_report(report, timings)
    print(table)
    if not args.quick:
        (out / "ACCURACY.md").write_text(table)
        archive = pack(out, plan, fresh_onnx=True)
        print(f"packed {archive}")
    print(f"total {time.monotonic() - t0:.0f} s")
    return 0 if report.passed else 1


if __name__ == "__main__":
    raise SystemExit(main())
