#!/usr/bin/env python3
"""Real-size models on the synthetic world: YOLOv8n detector at 640, YOLOv8n-cls classifiers at 224.

    make models-real                       # = .venv/bin/python scripts/train_real_models.py
    make models-real REAL_ARGS="--det-minutes 60 --int8"

Not part of `make test` or CI, and nothing it makes is committed: the archive goes to
`build/models-real/car_frontal_pipeline_real.mpta` (~30 MB). Same world and generators as the
stand-ins (`scripts/train_models.py`), but frames rendered at 1280×720 (the day footage's 720p)
and the models at the sizes a real deployment runs:

- `car_frontal_detection_v8n`: `yolov8n.yaml` (3.0 M parameters), classes `Car`, `Frontal`,
  imgsz 640; trained for a wall-clock budget (`--det-minutes`, 30 by default: Ultralytics' `time`).
- `car_brand_cls_v8n` / `car_bodytype_cls_v8n`: `yolov8n-cls.yaml` at 224 on the Frontal / Car
  crop (`resizeTarget` 224×224), each for `--cls-minutes` (8).

Then: accuracy on a held-out set (seed 2000, never trained on), ONNX export in the same confined
child the workers use (opset 17, fixed shape, Ultralytics metadata), optionally the detector's INT8
static quantization (`--int8`, see bench/quantize.py), and the archive (the stand-in's
`pipeline.json` with these model ids and 224×224 crops). Scores go to `ACCURACY.md` and
`report.json` beside the archive. From scratch, offline: the architectures come from Ultralytics'
.yaml files, AMP's check (it would fetch yolo11n.pt) and plots (a font) are off.

    .venv/bin/python scripts/train_real_models.py --pack-only [--int8]   # repack from build/models-real
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import shutil
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from detector_worker.synthetic.offline import prepare_ultralytics  # noqa: E402

prepare_ultralytics()

import yaml  # noqa: E402

from detector_worker.pipeline.export import export_in_subprocess  # noqa: E402
from detector_worker.synthetic import datasets, evaluate  # noqa: E402
from detector_worker.synthetic.catalog import BODY_TYPE_NAMES, BRAND_NAMES, DETECTOR_CLASSES  # noqa: E402
from detector_worker.synthetic.standin import BODY, BRAND, DETECTOR, pack_archive, standin_pipeline  # noqa: E402

TRAIN_SEED, HELDOUT_SEED = 1000, 2000  # the stand-ins' seeds: same world, same held-out frames (at 720p)
FRAME = (1280, 720)
DET, BRAND_CLS, BODY_CLS = "car_frontal_detection_v8n", "car_brand_cls_v8n", "car_bodytype_cls_v8n"
ARCHIVE = "car_frontal_pipeline_real.mpta"
INT8_SUFFIX = ".int8.onnx"
USAGE: dict[str, dict[str, float]] = {}  # per training run: wall and CPU seconds, cores used


@dataclass(frozen=True)
class Plan:
    det_train: int = 2000
    det_val: int = 200
    det_minutes: float = 30.0
    det_imgsz: int = 640
    det_low_imgsz: int = 320  # the first det_low_share of the budget trains at this size (0: none)
    det_low_share: float = 0.67
    cls_train: int = 4000
    cls_val: int = 400
    cls_minutes: float = 8.0
    cls_imgsz: int = 224
    heldout_det: int = 300
    heldout_cls: int = 800


QUICK = Plan(det_train=64, det_val=16, det_minutes=1.0, cls_train=96, cls_val=24, cls_minutes=0.5,
             heldout_det=16, heldout_cls=32)


def model_cfg(name: str, nc: int, out: Path) -> Path:
    """Ultralytics' own `name` (e.g. yolov8n.yaml: the n scale of yolov8.yaml) with `nc` classes."""
    import ultralytics

    base = "yolov8-cls.yaml" if "-cls" in name else "yolov8.yaml"
    cfg = copy.deepcopy(yaml.safe_load((Path(ultralytics.__file__).parent / "cfg" / "models" / "v8" / base)
                                       .read_text()))
    cfg["nc"] = nc
    cfg["scale"] = "n"
    out.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return out


def train(start: Path, data: Path, name: str, work: Path, minutes: float, *, weights: str = "best",
          **kwargs: Any) -> tuple[Path, float, int]:
    """Train for a wall-clock budget from a .yaml (from scratch) or a .pt (its weights);
    (weights/<weights>.pt, seconds, epochs begun: the last one is cut short by the budget)."""
    from ultralytics import YOLO

    t0, cpu0 = time.monotonic(), time.process_time()
    model = YOLO(str(start))
    # epochs is only the first guess: with `time` Ultralytics re-plans the epochs (and the LR
    # schedule, the closing of mosaic) after every epoch to end at the budget.
    model.train(data=str(data), project=str(work / "runs"), name=name, exist_ok=True, device="cpu", seed=0,
                deterministic=False, amp=False, plots=False, verbose=True, pretrained=start.suffix == ".pt",
                epochs=100, time=minutes / 60, patience=1000, workers=0, **kwargs)
    best = work / "runs" / name / "weights" / f"{weights}.pt"
    if not best.exists():
        raise SystemExit(f"training {name} produced no weights at {best}")
    epochs = sum(1 for _ in (work / "runs" / name / "results.csv").open()) - 1
    wall, cpu = time.monotonic() - t0, time.process_time() - cpu0
    # The machine is shared: how much of it this training got says more than the wall clock alone.
    USAGE[name] = {"wall_s": wall, "cpu_s": cpu, "cores": cpu / wall, "loadavg_1m_end": os.getloadavg()[0]}
    return best, wall, epochs


def train_detector(work: Path, data: Path, plan: Plan) -> tuple[Path, float, dict[str, int]]:
    """YOLOv8n from scratch in `plan.det_minutes`: first `det_low_share` of it at `det_low_imgsz`
    (4x cheaper per image at 320: many more images seen), with mosaic; then at 640 on whole frames
    (rect batches: 640x384, like the letterboxed 16:9 frames the worker feeds), no warm-up again.
    det_low_imgsz 0: all of it at 640, mosaic until the last epoch."""
    cfg = model_cfg("yolov8n.yaml", len(DETECTOR_CLASSES), work / "yolov8n.yaml")
    # Small batches: from scratch on a CPU every optimizer step counts (the budget sees few images).
    common: dict[str, Any] = dict(batch=8, nbs=8, cache="ram")
    low = plan.det_minutes * plan.det_low_share if plan.det_low_imgsz else 0.0
    t0, epochs = time.monotonic(), {}
    if not low:
        best, _, epochs[str(plan.det_imgsz)] = train(cfg, data, "det", work, plan.det_minutes, imgsz=plan.det_imgsz,
                                                     warmup_epochs=1, close_mosaic=1, **common)
        return best, time.monotonic() - t0, epochs
    start, _, epochs[str(plan.det_low_imgsz)] = train(cfg, data, "det-low", work, low, weights="last",
                                                      imgsz=plan.det_low_imgsz, warmup_epochs=0.4, close_mosaic=0,
                                                      val=False, **common)
    best, _, epochs[str(plan.det_imgsz)] = train(start, data, "det", work, plan.det_minutes - low,
                                                 imgsz=plan.det_imgsz, warmup_epochs=0, mosaic=0.0, close_mosaic=0,
                                                 rect=True, **common)
    return best, time.monotonic() - t0, epochs


def evaluate_detector(weights: Path, work: Path, plan: Plan, workers: int) -> dict[str, Any]:
    """Ultralytics val (conf 0.001, IoU 0.7) at 640 on the held-out frames."""
    from ultralytics import YOLO

    data = datasets.write_detection_set(work / "heldout-det", HELDOUT_SEED, 0, plan.heldout_det, workers,
                                        scale=0.5, size=FRAME)
    data.write_text(data.read_text().replace("train: images/train", "train: images/val"))
    metrics = YOLO(str(weights)).val(data=str(data), imgsz=plan.det_imgsz, batch=16, device="cpu", plots=False,
                                     verbose=False, project=str(work / "val"), name="det", exist_ok=True, workers=0)
    ap50 = {DETECTOR_CLASSES[int(c)]: float(metrics.box.ap50[i]) for i, c in enumerate(metrics.ap_class_index)}
    return {"frames": plan.heldout_det, "map50": float(metrics.box.map50), "ap50": ap50,
            "map50_95": float(metrics.box.map)}


def evaluate_classifiers(brand: Path, body: Path, plan: Plan) -> dict[str, Any]:
    fronts, cars, brands, bodies = [], [], [], []
    for i in range(plan.heldout_cls):
        crops = datasets.classification_crops(HELDOUT_SEED, datasets.VAL_OFFSET + i, plan.cls_imgsz, plan.cls_imgsz,
                                              size=FRAME)
        if crops is not None:
            fronts.append(crops[0])
            brands.append(crops[1])
            cars.append(crops[2])
            bodies.append(crops[3])
    out: dict[str, Any] = {"crops": len(fronts)}
    for role, weights, images, truth in (("brand", brand, fronts, brands), ("body_type", body, cars, bodies)):
        predicted = evaluate.classify(weights, images, plan.cls_imgsz)
        out[f"{role}_top1"] = sum(p == t for p, t in zip(predicted, truth, strict=True)) / max(1, len(truth))
    return out


def real_pipeline(cls_imgsz: int, detector_file: str) -> dict[str, Any]:
    """The stand-in's pipeline.json with the real-size model ids (templates included) and crop size."""
    names = {DETECTOR: DET, BRAND: BRAND_CLS, BODY: BODY_CLS}

    def rename(value: Any) -> Any:
        if isinstance(value, dict):
            return {rename(k): rename(v) for k, v in value.items()}
        if isinstance(value, list):
            return [rename(v) for v in value]
        if isinstance(value, str):
            for old, new in names.items():
                value = value.replace(old, new)
        return value

    pipeline: dict[str, Any] = rename(standin_pipeline(cls_imgsz, cls_imgsz))
    pipeline["pipeline"]["modelFile"] = detector_file
    return pipeline


def export(out: Path) -> None:
    """`out/<model>.onnx` for each model, exported in the workers' confined child from a copy of the .pt."""
    with tempfile.TemporaryDirectory() as tmp:
        for name in (DET, BRAND_CLS, BODY_CLS):
            shutil.copyfile(out / f"{name}.pt", Path(tmp) / f"{name}.pt")
        for made in export_in_subprocess(Path(tmp), timeout=1800):
            shutil.copyfile(made, out / made.name)
            print(f"exported {out / made.name} ({made.stat().st_size / 1e6:.1f} MB)", flush=True)


def pack(out: Path, plan: Plan, *, int8: bool) -> Path:
    """The real-size archive. With `int8` the detector's ONNX in it is the INT8 one (the `.pt` is then
    left out: a worker would re-export a `.pt` newer than its `.onnx`, and the ids stay the same)."""
    files = {f"{m}{ext}": out / f"{m}{ext}" for m in (BRAND_CLS, BODY_CLS) for ext in (".pt", ".onnx")}
    if int8:
        files[f"{DET}.onnx"] = out / f"{DET}{INT8_SUFFIX}"
        detector_file = f"{DET}.onnx"
    else:
        files |= {f"{DET}.pt": out / f"{DET}.pt", f"{DET}.onnx": out / f"{DET}.onnx"}
        detector_file = f"{DET}.pt"
    return pack_archive(out / ARCHIVE, real_pipeline(plan.cls_imgsz, detector_file), files)


def quantize(out: Path, workers: int) -> Path:
    from bench.quantize import calibration_frames, quantize_detector

    return quantize_detector(out / f"{DET}.onnx", out / f"{DET}{INT8_SUFFIX}", calibration_frames(workers=workers))


def _epochs(value: int | dict[str, int]) -> str:
    if isinstance(value, dict):  # per imgsz of the detector's stages
        return " + ".join(f"{n} at {size}" for size, n in value.items()) + " epochs"
    return f"{value} epochs"


def write_report(out: Path, report: dict[str, Any]) -> None:
    (out / "report.json").write_text(json.dumps(report, indent=1) + "\n")
    det, cls, t = report["detector"], report["classifiers"], report["train_s"]
    lines = [f"# Real-size models (held-out seed {HELDOUT_SEED}, frames {FRAME[0]}x{FRAME[1]})", "",
             "| model | figure | value |", "|---|---|---|",
             f"| {DET} | mAP50 ({det['frames']} frames, Ultralytics val at 640) | {det['map50']:.3f} |",
             *(f"| {DET} | AP50 `{c}` | {v:.3f} |" for c, v in det["ap50"].items()),
             f"| {DET} | mAP50-95 | {det['map50_95']:.3f} |",
             f"| {BRAND_CLS} | top-1 ({cls['crops']} crops) | {cls['brand_top1']:.3f} |",
             f"| {BODY_CLS} | top-1 ({cls['crops']} crops) | {cls['body_type_top1']:.3f} |", "",
             "Training (CPU, wall clock; epochs begun, the last cut short by the budget): "
             + ", ".join(f"{k} {v / 60:.1f} min ({_epochs(report['epochs'][k])})" for k, v in t.items()) + ".",
             "", "CPU this training got (the machine is shared; 2 cores): "
             + ", ".join(f"{k} {u['cores']:.2f} cores" for k, u in report.get("usage", {}).items()), ""]
    (out / "ACCURACY.md").write_text("\n".join(lines))
    print("\n".join(lines), flush=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", type=Path, default=ROOT / "build" / "train-real", help="scratch directory")
    parser.add_argument("--out", type=Path, default=ROOT / "build" / "models-real", help="models and archive")
    parser.add_argument("--det-minutes", type=float, help=f"detector training budget (default {Plan.det_minutes:g})")
    parser.add_argument("--cls-minutes", type=float, help=f"budget per classifier (default {Plan.cls_minutes:g})")
    parser.add_argument("--threads", type=int, default=int(os.environ.get("TRAIN_THREADS", "2")),
                        help="torch threads (default 2: this machine's cores)")
    parser.add_argument("--workers", type=int, default=2, help="processes rendering the data")
    parser.add_argument("--int8", action="store_true",
                        help="put the detector's INT8 (static, QDQ) ONNX in the archive instead of FP32")
    parser.add_argument("--det-low-imgsz", type=int, help="first stage's imgsz (default 320; 0: all at 640)")
    parser.add_argument("--train", default="detector,brand,body_type",
                        help="the models to train; the others are taken from --out (an earlier run)")
    parser.add_argument("--reuse-data", action="store_true",
                        help="keep the training sets in --work when they were rendered for the same plan")
    parser.add_argument("--quick", action="store_true", help="tiny sets and budgets: checks the script only")
    parser.add_argument("--pack-only", action="store_true", help="only repack from the models in --out")
    args = parser.parse_args()
    plan = QUICK if args.quick else Plan()
    plan = replace(plan, **{k: v for k, v in (("det_minutes", args.det_minutes), ("cls_minutes", args.cls_minutes),
                                              ("det_low_imgsz", args.det_low_imgsz)) if v is not None})
    out: Path = args.out
    if args.pack_only:
        if args.int8 and not (out / f"{DET}{INT8_SUFFIX}").is_file():
            quantize(out, args.workers)
        print(f"packed {pack(out, plan, int8=args.int8)}")
        return 0
    import torch
    from ultralytics.utils import torch_utils

    # Ultralytics' select_device() sets torch to NUM_THREADS = cpu_count - 1 threads (1 on 2 cores)
    torch_utils.NUM_THREADS = args.threads
    torch.set_num_threads(args.threads)
    work: Path = args.work
    # The sets are a pure function of these: --reuse-data keeps them when they match (rendering is ~10-20 min).
    stamp = json.dumps({"seed": TRAIN_SEED, "frame": FRAME, **{k: v for k, v in asdict(plan).items()
                                                                if k.split("_")[1] in ("train", "val", "imgsz")}})
    reuse = args.reuse_data and (work / "rendered.json").is_file() and (work / "rendered.json").read_text() == stamp
    if work.exists():
        for path in (work.iterdir() if reuse else [work]):
            if not reuse or path.name not in ("det", "brand", "bodytype", "rendered.json"):
                shutil.rmtree(path) if path.is_dir() else path.unlink()
    work.mkdir(parents=True, exist_ok=True)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.monotonic()
    det_data = work / "det" / "data.yaml"
    if not reuse:
        print(f"rendering training sets at {FRAME[0]}x{FRAME[1]} ...", flush=True)
        det_data = datasets.write_detection_set(work / "det", TRAIN_SEED, plan.det_train, plan.det_val, args.workers,
                                               scale=plan.det_imgsz / FRAME[0], size=FRAME)
        datasets.write_classification_sets(work / "brand", work / "bodytype", TRAIN_SEED, plan.cls_train,
                                           plan.cls_val, plan.cls_imgsz, plan.cls_imgsz, args.workers, size=FRAME)
        (work / "rendered.json").write_text(stamp)
    render_s = time.monotonic() - t0
    print(f"training sets {'reused' if reuse else 'rendered'} in {render_s:.0f} s", flush=True)

    wanted = set(args.train.split(","))
    previous = json.loads((out / "report.json").read_text()) if (out / "report.json").is_file() else {}
    seconds: dict[str, Any] = dict(previous.get("train_s", {}))  # of the models not retrained now
    epochs: dict[str, Any] = dict(previous.get("epochs", {}))
    if "detector" in wanted:
        best, seconds["detector"], epochs["detector"] = train_detector(work, det_data, plan)
        shutil.copyfile(best, out / f"{DET}.pt")
    common: dict[str, Any] = dict(imgsz=plan.cls_imgsz, batch=64, nbs=64, warmup_epochs=1, cache="ram", scale=0.1,
                                  erasing=0.0, auto_augment=None, hsv_h=0.0)
    for role, root, classes, name in (("brand", "brand", BRAND_NAMES, BRAND_CLS),
                                      ("body_type", "bodytype", BODY_TYPE_NAMES, BODY_CLS)):
        if role in wanted:
            cfg = model_cfg("yolov8n-cls.yaml", len(classes), work / f"yolov8n-cls-{root}.yaml")
            best, seconds[role], epochs[role] = train(cfg, work / root, root, work, plan.cls_minutes, **common)
            shutil.copyfile(best, out / f"{name}.pt")

    print(f"evaluating on held-out frames (seed {HELDOUT_SEED}) ...", flush=True)
    report: dict[str, Any] = {
        "plan": asdict(plan), "frame": FRAME, "threads": args.threads, "render_s": render_s, "train_s": seconds,
        "epochs": epochs, "usage": {**previous.get("usage", {}), **USAGE},
        "detector": evaluate_detector(out / f"{DET}.pt", work, plan, args.workers),
        "classifiers": evaluate_classifiers(out / f"{BRAND_CLS}.pt", out / f"{BODY_CLS}.pt", plan)}
    export(out)
    if args.int8:
        quantize(out, args.workers)
    archive = pack(out, plan, int8=args.int8)
    report["sizes_bytes"] = {p.name: p.stat().st_size for p in sorted(out.iterdir())
                             if p.suffix in (".pt", ".onnx", ".mpta")}
    write_report(out, report)
    print(f"packed {archive} ({archive.stat().st_size / 1e6:.1f} MB); total {(time.monotonic() - t0) / 60:.1f} min")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
