"""`make soak` (not in CI): 4 cameras for an hour against real Redis/PostgreSQL, sessions bound by a
bundled backend (tests/faults/harness.RecordingBackend), workers killed -9 now and then.

Samples every worker's RSS and open fds, then counts lost/duplicated sessions against the footage's
ground truth (tests/faults/test_exactly_once.account). Writes bench/results/soak.json and soak.png.

    python -m bench.soak --minutes 60 [--kill-every-s 120]
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import tempfile
import time
import uuid
from pathlib import Path

import psutil

from detector_worker.pipeline.archive import open_archive
from detector_worker.pipeline.export import prepare_archive_dir
from detector_worker.synthetic.video import make_clip
from tests.faults.conftest import MODEL_URL, STOP_CLIP_SEED
from tests.faults.harness import RecordingBackend, program_pid, wait_until, workers_by_slug
from tests.faults.test_exactly_once import PATCH, account, sample_keys
from tests.fleet import Fleet, subscription
from tests.rtsp import RtspServer

RESULTS = Path(__file__).resolve().parent / "results"
CAMERAS = [f"cam-{i}" for i in range(1, 5)]


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--minutes", type=float, default=60.0)
    parser.add_argument("--kill-every-s", type=float, default=120.0, help="kill -9 one worker this often (0: never)")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    redis_url = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")
    database_url = os.environ.get("DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
    base = Path(tempfile.mkdtemp(prefix="soak-"))
    clip = base / "stops.mp4"
    make_clip(clip, STOP_CLIP_SEED, 1.0, kinds=["stop", "stop", "stop"])
    cache = base / "model-cache"
    model_dir, _ = open_archive(MODEL_URL, cache, "standin-test")
    prepare_archive_dir(model_dir)
    tag = uuid.uuid4().hex[:8]
    samples: list[dict[str, object]] = []
    with RtspServer({c: clip for c in CAMERAS}) as server:
        fleet = Fleet(base / "fleet", model_cache=cache, redis_url=redis_url, database_url=database_url, extra=PATCH)
        fleet.start()
        displays = [f"display-{c}" for c in CAMERAS]
        subs = [subscription(d, c, server.url(c), MODEL_URL) for d, c in zip(displays, CAMERAS, strict=True)]
        backend = RecordingBackend(fleet, subs, bind=set(displays), tag=tag).start()
        try:
            wait_until(lambda: len(workers_by_slug(fleet)) == len(CAMERAS), 90, "every worker")
            time.sleep(30)  # warm-up: models loaded, first sessions
            t0 = time.monotonic()
            end = t0 + args.minutes * 60
            next_kill = t0 + args.kill_every_s if args.kill_every_s else float("inf")
            kills = 0
            seen: dict[str, set[str]] = {}  # image keys as they are written: they expire (600 s) within the hour
            while time.monotonic() < end:
                sample_keys(seen, backend, displays, redis_url)
                rss = fds = 0
                for pids in workers_by_slug(fleet).values():
                    for pid in pids:
                        try:
                            p = psutil.Process(pid)
                            rss += p.memory_info().rss
                            fds += p.num_fds()
                        except psutil.Error:
                            pass
                samples.append({"t": round(time.monotonic() - t0, 1), "rss_mb": round(rss / 2**20, 1), "fds": fds,
                                "kills": kills})
                if time.monotonic() >= next_kill:
                    cam = CAMERAS[kills % len(CAMERAS)]
                    os.kill(program_pid(fleet, f"camera-{cam}"), signal.SIGKILL)
                    kills += 1
                    next_kill += args.kill_every_s
                time.sleep(10)
            time.sleep(15)
            counts = account(backend, displays, redis_url, database_url, clip, timeout=60, seen=seen)
        finally:
            backend.close()
            fleet.stop()
    # RSS growth between the first and last quarter, of workers not killed meanwhile is noisy: report both ends
    first = [float(s["rss_mb"]) for s in samples[: max(1, len(samples) // 4)]]  # type: ignore[arg-type]
    last = [float(s["rss_mb"]) for s in samples[-max(1, len(samples) // 4):]]  # type: ignore[arg-type]
    growth = (sum(last) / len(last)) / (sum(first) / len(first)) - 1 if first and last else 0.0
    fds = [int(s["fds"]) for s in samples]  # type: ignore[call-overload]
    result = {"minutes": args.minutes, "cameras": len(CAMERAS), "kills": kills, "rss_growth": round(growth, 4),
              "fds_min": min(fds, default=0), "fds_max": max(fds, default=0), **counts, "samples": samples}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "soak.json").write_text(json.dumps(result, indent=1))
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(8, 4))
        ts = [float(s["t"]) / 60 for s in samples]  # type: ignore[arg-type]
        ax.plot(ts, [s["rss_mb"] for s in samples], label="workers' RSS (MB)")
        ax2 = ax.twinx()
        ax2.plot(ts, fds, color="tab:orange", label="open fds")
        ax.set_xlabel("minutes")
        ax.set_title(f"soak: {len(CAMERAS)} cameras, {kills} kill -9, lost {counts['lost']}, "
                     f"duplicated {counts['duplicated']}")
        fig.legend(loc="lower right")
        fig.savefig(args.out / "soak.png", dpi=100)
    except ImportError:
        pass
    print(json.dumps({k: v for k, v in result.items() if k != "samples"}))
    ok = counts["lost"] == 0 and counts["duplicated"] == 0 and growth <= 0.05
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
