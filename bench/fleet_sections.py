"""Sections on a real fleet: start-up and recovery (4), latency and scaling (2, 6), memory (5).

All cameras are served by the real GStreamer RTSP server from the bench's stamped clips; the
workers are the real ones under the real supervisord, started by the real gateway when the backend
client subscribes (see harness.py for the two timing taps).
"""

from __future__ import annotations

import json
import os
import signal
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from . import footage
from .common import MODEL_ID, MODEL_URL, fmt, md_table, p50p99, say, smaps_rollup, summary, wait_until
from .harness import FleetHarness, program_name, subscription

TARGET_FPS = 5.0  # the gateway's max_fps for backend cameras (a setting; 5 is its default)
CLIP_FPS = footage.FPS


def _ms(x: float | None) -> float | None:
    return None if x is None else x * 1000


# == 4. subscribe -> first detection, kill -9 -> next detection =======================================
def _first_gw(h: FleetHarness, kind: str, after: float, pred: Any = None) -> list[Any] | None:
    for r in h.taps.gw(kind, after):
        if pred is None or pred(r):
            return r
    return None


def _startup_breakdown(h: FleetHarness, camera: str, t0: float, t_ws: float, msg: dict[str, Any],
                       event: str) -> dict[str, Any]:
    """Where the time from `t0` (subscribe sent / kill) to the detection at the backend went."""
    time.sleep(0.6)  # the taps write their records every 0.2 s
    h.taps.refresh()
    program = program_name(camera)
    run = next((r for r in h.taps.runs_of(camera) if (r.start or 0) >= t0), None)
    det = _first_gw(h, "det", t0, lambda r: r[1] == camera)
    apply = _first_gw(h, "apply", t0) if event == "subscribe" else None
    spawn = _first_gw(h, "ps", t0, lambda r: r[1] == program and r[3] == "STARTING")
    out: dict[str, Any] = {"event": event, "total_s": t_ws - t0}
    if run is None or det is None or not run.frames:
        out["incomplete"] = True
        return out
    captured = det[3]
    first = run.frames[0]
    det_frame = run.by_captured.get(captured)
    frames_until = sum(1 for f in run.frames if f[2] <= captured)
    out.update({
        "apply_s": apply[2] - t0 if apply else None,
        "spawn_s": spawn[5] - t0 if spawn else None,
        "exec_s": run.start - t0 if run.start else None,
        "ready_s": run.ready - t0 if run.ready else None,
        "first_frame_s": first[2] - t0,
        "det_captured_s": captured - t0,
        "ws_s": t_ws - t0,
        "join_clip_frame": first[0], "det_clip_frame": det_frame[0] if det_frame else None,
        "frames_processed_until_det": frames_until,
        "stability_s": captured - first[2],
        "brand": msg["data"]["detection"].get("carBrand"),
    })
    return out


def first_detection(h: FleetHarness, cameras: list[str], kills: int) -> dict[str, Any]:
    """One fresh camera per subscribe (its RTSP path has no client yet, so its stream starts at the
    clip's frame 0, where a vehicle is already stopped); after its first detection, kill -9 its worker
    `kills` times (each time once supervisord reports it RUNNING) and time the next detection."""
    samples: list[dict[str, Any]] = []
    for camera in cameras:
        t0 = h.backend.set_subscriptions([subscription(camera, h.url(camera))])
        got = h.backend.wait_detection(camera, t0, 60)
        if got is None:
            say(f"  {camera}: no detection within 60 s of subscribing")
            samples.append({"event": "subscribe", "camera": camera, "failed": True})
            continue
        s = _startup_breakdown(h, camera, t0, got[0], got[1], "subscribe")
        s["camera"] = camera
        samples.append(s)
        say(f"  subscribe {camera}: first imageDetection after {s['total_s']:.2f} s "
            f"(worker exec {fmt(s.get('exec_s'), 2)} s, ready {fmt(s.get('ready_s'), 2)} s, first frame "
            f"{fmt(s.get('first_frame_s'), 2)} s, detection frame captured {fmt(s.get('det_captured_s'), 2)} s)")
        for _ in range(kills):
            program = program_name(camera)
            wait_until(lambda p=program: h.fleet.state(p) == "RUNNING", 20, 0.1)
            time.sleep(0.3)
            pid = h.worker_pids().get(program)
            if not pid:
                break
            t0 = time.time()
            os.kill(pid, signal.SIGKILL)
            got = h.backend.wait_detection(camera, t0, 60)
            if got is None:
                say(f"  kill -9 {camera}: no detection within 60 s")
                samples.append({"event": "kill", "camera": camera, "failed": True})
                continue
            s = _startup_breakdown(h, camera, t0, got[0], got[1], "kill")
            s["camera"] = camera
            samples.append(s)
            say(f"  kill -9 {camera}: next imageDetection after {s['total_s']:.2f} s "
                f"(respawn {fmt(s.get('spawn_s'), 3)} s, exec {fmt(s.get('exec_s'), 2)} s, ready "
                f"{fmt(s.get('ready_s'), 2)} s, first frame {fmt(s.get('first_frame_s'), 2)} s at clip frame "
                f"{s.get('join_clip_frame')}, detection frame captured {fmt(s.get('det_captured_s'), 2)} s)")
        h.backend.set_subscriptions([])
        wait_until(lambda: not h.fleet.programs(), 30, 0.2)
    return {"samples": samples}


def first_detection_table(res: dict[str, Any]) -> str:
    rows = []
    keys = [("exec_s", "process exec"), ("ready_s", "worker ready (models loaded)"),
            ("first_frame_s", "first frame read"), ("det_captured_s", "detection frame captured"),
            ("ws_s", "imageDetection at the backend")]
    for event, title in (("subscribe", "subscribe → first detection"), ("kill", "kill -9 → next detection")):
        ss = [s for s in res["samples"] if s["event"] == event and not s.get("failed") and not s.get("incomplete")]
        if not ss:
            continue
        row = [title, len(ss)]
        for k, _ in keys:
            vals = [s[k] for s in ss if s.get(k) is not None]
            row.append(fmt(statistics.median(vals), 2) if vals else "–")
        stab = [s["stability_s"] for s in ss]
        frames = [s["frames_processed_until_det"] for s in ss]
        row.append(f"{statistics.median(stab):.2f} s ({statistics.median(frames):.0f} frames)")
        row.append(f"{statistics.median(s['total_s'] for s in ss):.2f} (max {max(s['total_s'] for s in ss):.2f})")
        rows.append(row)
    headers = ["event", "n", *[f"{t} (s, median)" for _, t in keys], "of which vehicle stability",
               "total (s)"]
    return md_table(headers, rows)


# == 2 + 6 (+5): latency and scaling ===================================================================
def _window_stats(h: FleetHarness, cameras: list[str], w0: float, w1: float) -> dict[str, Any]:
    h.taps.refresh()
    assert h.probe is not None
    h.probe.refresh()
    per_cam_fps: dict[str, float] = {}
    decode, wait, proc, read_done, capture_done = [], [], [], [], []
    unmatched = 0
    for cam in cameras:
        frames = [f for f in h.taps.frames(cam) if w0 <= f[4] < w1]
        per_cam_fps[cam] = len(frames) / (w1 - w0)
        for stamp_idx, _seq, cap, t0, t1 in frames:
            wait.append(t0 - cap)
            proc.append(t1 - t0)
            read_done.append(t1 - cap)
            push = h.probe.push_time(cam, stamp_idx, cap)
            if push is None:
                unmatched += 1
                continue
            decode.append(cap - push)
            capture_done.append(t1 - push)
    # detections: client message -> gateway records -> worker frame -> probe
    dets = []
    dets_by_key = {(r[1], r[2]): r for r in h.taps.gateway if r[0] == "det" and w0 - 5 <= r[3] < w1 + 5}
    relays = {(r[1], r[2]): r[3] for r in h.taps.gateway if r[0] == "relay" and w0 - 5 <= r[3] < w1 + 10}
    for t_ws, msg in h.backend.detections(after=w0):
        d = msg["data"]["detection"]
        r = dets_by_key.get((d["cameraId"], d["trackId"]))
        if r is None or not (w0 <= r[3] < w1):
            continue
        _, cam, track, cap, sent, inf_ms, recv = r
        frame = h.taps.frame_at(cam, cap)
        push = h.probe.push_time(cam, frame[0], cap) if frame else None
        entry = {"camera": cam, "track": track, "decode": cap - push if push is not None else None,
                 "wait": frame[3] - cap if frame else None, "inference": inf_ms / 1000,
                 "post": sent - frame[3] - inf_ms / 1000 if frame else None,
                 "bus": recv - sent, "gateway": t_ws - recv, "relay": relays.get((cam, track), recv) - recv,
                 "read_to_ws": t_ws - cap,
                 "capture_to_ws": t_ws - push if push is not None else None}
        dets.append(entry)
    fps = list(per_cam_fps.values())
    ms = lambda xs: summary(np.asarray([x for x in xs if x is not None]) * 1000)  # noqa: E731
    return {
        "cameras": len(cameras), "window_s": w1 - w0,
        "fps": {"min": min(fps), "median": statistics.median(fps), "max": max(fps), "per_camera": per_cam_fps,
                "total": sum(fps)},
        "frame": {"decode": ms(decode), "wait": ms(wait), "process": ms(proc), "read_to_done": ms(read_done),
                  "capture_to_done": ms(capture_done), "unmatched": unmatched},
        "detections": {k: ms(e[k] for e in dets) for k in ("decode", "wait", "inference", "post", "bus",
                                                             "gateway", "relay", "read_to_ws",
                                                             "capture_to_ws")} | {"n": len(dets)},
    }


def _stalled(h: FleetHarness, cameras: list[str]) -> dict[str, Any]:
    """What the gateway and the worker's log say about cameras that processed no frames."""
    out: dict[str, Any] = {}
    if not cameras:
        return out
    try:
        states = h.fleet.cameras()
    except Exception as err:
        states = {}
        out["_error"] = str(err)
    for cam in cameras:
        state = states.get(cam, {})
        log = h.work / "fleet" / "logs" / f"{program_name(cam)}.log"
        tail = log.read_text(errors="replace").splitlines()[-8:] if log.exists() else []
        gw_log = h.work / "fleet" / "logs" / "gateway_stdout.log"
        gw_lines = [line for line in gw_log.read_text(errors="replace").splitlines()
                    if cam in line][-4:] if gw_log.exists() else []
        out[cam] = {k: state.get(k) for k in ("process_state", "online", "fps", "reconnects", "stalls", "restarts",
                                               "hung_restarts", "last_error")} | {"log_tail": tail,
                                                                                   "gateway_log": gw_lines}
    return out


def scaling(h: FleetHarness, steps: list[int], window_s: float, long_window_s: float, long_steps: set[int],
            latency_budget_s: float = 0.4) -> dict[str, Any]:
    out: list[dict[str, Any]] = []
    assert h.probe is not None
    for n in steps:
        cameras = [f"cam{i:02d}" for i in range(1, n + 1)]
        for cam in cameras:
            h.probe.add(cam, h.url(cam))
        t_sub = h.backend.set_subscriptions([subscription(cam, h.url(cam)) for cam in cameras])

        def all_flowing(cameras: list[str] = cameras) -> bool:
            h.taps.refresh()
            now = time.time()
            return all(sum(1 for f in h.taps.frames(c)[-6:] if f[4] > now - 3.0) >= 1 for c in cameras)

        ok = wait_until(all_flowing, 60, 0.5)
        ramp = time.time() - t_sub
        time.sleep(2.0)
        pids = h.worker_pids()
        fixed = h.fixed_pids()
        meter = h.cpu_meter(pids, fixed)
        w0 = time.time()
        window = long_window_s if n in long_steps else window_s
        time.sleep(window / 2)
        memory = {name: smaps_rollup(pid) for name, pid in pids.items()}
        fixed_mem = {name: smaps_rollup(pid) for name, pid in fixed.items()}
        time.sleep(window / 2)
        w1 = time.time()
        cpu = meter.stop()
        time.sleep(1.5)  # detections of frames captured late in the window are still on their way
        stats = _window_stats(h, cameras, w0, w1)
        stats.update(cpu=cpu, memory=memory, fixed_memory=fixed_mem, ramp_s=ramp, all_flowing=bool(ok))
        stats["stalled"] = _stalled(h, [c for c, fps in stats["fps"]["per_camera"].items() if fps < 0.5])
        for cam, why in stats["stalled"].items():
            say(f"  !! {cam} processed (almost) no frames in the window: {why}")
        f, d = stats["frame"], stats["detections"]
        det_ok = d["n"] == 0 or d["capture_to_ws"]["p99"] <= latency_budget_s * 1000
        stats["sustained"] = bool(stats["fps"]["min"] >= 0.9 * TARGET_FPS
                                  and f["capture_to_done"]["p99"] <= latency_budget_s * 1000 and det_ok)
        out.append(stats)
        say(f"  {n:2d} camera(s): fps/camera min {stats['fps']['min']:.2f} median {stats['fps']['median']:.2f} "
            f"max {stats['fps']['max']:.2f} (total {stats['fps']['total']:.1f}); frame capture→processed p50/p99 "
            f"{p50p99(f['capture_to_done'], 0)} ms; detections n={d['n']} capture→WS p50/p99 "
            f"{p50p99(d['capture_to_ws'], 0)} ms; CPU workers {cpu['workers']:.2f} + gateway {cpu['gateway']:.2f} "
            f"+ RTSP server {cpu['rtsp_server']:.2f} + others {cpu['others']:.2f} cores; "
            f"{'SUSTAINED' if stats['sustained'] else 'not sustained'}")
    return {"steps": out, "window_s": window_s, "long_window_s": long_window_s, "budget_ms": latency_budget_s * 1000,
            "stops_per_camera_s": footage.stops_per_second(footage.lane_clip())}


def latency_table(res: dict[str, Any], counts: list[int]) -> str:
    rows = []
    for s in res["steps"]:
        if s["cameras"] not in counts:
            continue
        d, f = s["detections"], s["frame"]
        rows.append([s["cameras"], d["n"], p50p99(f["decode"]), p50p99(d["wait"]), p50p99(d["inference"]),
                     p50p99(d["post"]), p50p99(d["bus"]), p50p99(d["gateway"]), p50p99(d["capture_to_ws"]),
                     p50p99(f["capture_to_done"])])
    return md_table(["cameras", "detections", "decode (all frames)", "wait for the loop", "inference",
                     "after inference (actions, encode)", "bus", "gateway → WS client", "capture → WS (total)",
                     "every frame: capture → processed"], rows)


def scaling_table(res: dict[str, Any]) -> str:
    rows = []
    rate = res.get("stops_per_camera_s") or footage.stops_per_second(footage.lane_clip())
    for s in res["steps"]:
        fps, f, d, cpu = s["fps"], s["frame"], s["detections"], s["cpu"]
        pss = sum(m.get("pss", 0) for m in s["memory"].values())
        share = d["n"] / (rate * s["cameras"] * s["window_s"]) * 100
        rows.append([s["cameras"], f"{fps['min']:.2f} / {fps['median']:.2f} / {fps['max']:.2f}",
                     f"{fps['total']:.1f}", p50p99(f["capture_to_done"], 0), p50p99(d["capture_to_ws"], 0),
                     f"{d['n']} ({share:.0f}%)", f"{cpu['workers']:.2f}", f"{cpu['gateway']:.2f}",
                     f"{cpu['rtsp_server']:.2f}", f"{cpu['others']:.2f}", f"{pss:.0f}",
                     "yes" if s["sustained"] else "**no**"])
    return md_table(["cameras", "fps/camera min / median / max", "total fps", "frame capture→processed p50 / p99 ms",
                     "detection capture→WS p50 / p99 ms", "detections (of vehicle stops)", "CPU workers",
                     "CPU gateway", "CPU RTSP server", "CPU others", "workers' PSS MB", "sustained"], rows)


# == 5. memory ===========================================================================================
def memory_fleet(work: Path, model_cache: Path, clip: Path, settle_s: float) -> dict[str, Any]:
    """One ONNX-path and one torch-path worker side by side, as static cameras at max_fps 5 on the same
    footage, no taps. Measured after both have run `settle_s` seconds."""
    cameras: dict[str, Any] = {"defaults": {"pipeline": MODEL_URL, "model_id": MODEL_ID, "model_name": "stand-in",
                            "max_fps": TARGET_FPS},
               "cameras": {}}
    streams = {"mem-onnx": clip, "mem-torch": clip}
    out: dict[str, Any] = {}
    h = FleetHarness(work, model_cache=model_cache, mode="plain", streams=streams, cameras=cameras)
    assert h.rtsp is not None
    for name, backend in (("mem-onnx", "onnx"), ("mem-torch", "ultralytics")):
        cameras["cameras"][name] = {"source": {"kind": "rtsp", "url": h.url(name)}, "displays": [f"display-{name}"],
                                    "inference": {"backend": backend, "threads": 1, "device": "cpu"}}
    (work / "fleet" / "cameras.yaml").write_text(json.dumps(cameras))
    with h:
        ok = wait_until(lambda: all(c.get("online") for c in h.fleet.cameras().values())
                        and len(h.fleet.cameras()) == 2, 60, 0.5)
        t_online = time.time()
        time.sleep(settle_s)
        pids = h.worker_pids()
        samples = []
        for _ in range(3):
            samples.append({name: smaps_rollup(pid) for name, pid in pids.items()})
            time.sleep(1.0)
        states = h.fleet.cameras()
        for name, backend in (("mem-onnx", "onnx"), ("mem-torch", "ultralytics")):
            m = samples[-1].get(program_name(name), {})
            out[backend] = {"rss": m.get("rss"), "pss": m.get("pss"), "pss_anon": m.get("pss_anon"),
                            "fps": states.get(name, {}).get("fps"),
                            "inference_ms": states.get(name, {}).get("inference_ms")}
        out["online"] = bool(ok)
        out["seconds_running"] = time.time() - t_online
    return out


def memory_table(mem: dict[str, Any], scale: dict[str, Any] | None) -> str:
    rows = []
    for backend, label in (("onnx", "1 worker, ONNX Runtime path (default)"),
                           ("ultralytics", "1 worker, Ultralytics/torch path")):
        m = mem.get(backend, {})
        rows.append([label, fmt(m.get("rss"), 0), fmt(m.get("pss"), 0), fmt(m.get("pss_anon"), 0)])
    if scale:
        for s in scale["steps"]:
            if s["cameras"] in (1, max(x["cameras"] for x in scale["steps"])):
                rss = [m.get("rss", 0) for m in s["memory"].values()]
                pss = [m.get("pss", 0) for m in s["memory"].values()]
                anon = [m.get("pss_anon", 0) for m in s["memory"].values()]
                n = s["cameras"]
                if not pss:
                    continue
                rows.append([f"{n} worker(s), ONNX path, live fleet (tap on): per worker median",
                             fmt(statistics.median(rss), 0), fmt(statistics.median(pss), 0),
                             fmt(statistics.median(anon), 0)])
                if n > 1:
                    rows.append([f"{n} workers: total", fmt(sum(rss), 0), f"**{sum(pss):.0f}**", fmt(sum(anon), 0)])
                    fm = s["fixed_memory"]
                    rows.append(["gateway / supervisord / event listener (PSS)", "",
                                 " / ".join(fmt(fm.get(k, {}).get("pss"), 0)
                                            for k in ("gateway", "supervisord", "camera-events")), ""])
    return md_table(["process(es)", "RSS MB", "PSS MB", "PSS anonymous MB"], rows)


def fleet_sections(model_cache: Path, quick: bool, work_root: Path, steps: list[int] | None = None) -> dict[str, Any]:
    """Sections 4, 2, 6 and 5's live-fleet figures in one fleet; then 5's torch comparison."""
    lane = footage.lane_clip()
    first = footage.first_clip()
    n_first = 1 if quick else 3
    kills = 1 if quick else 2
    steps = steps or ([1, 4] if quick else [1, 2, 4, 6, 8, 10, 12, 16, 20])
    streams: dict[str, Path] = {f"cam{i:02d}": lane for i in range(1, max(steps) + 1)}
    streams |= {f"first-{i}": first for i in range(1, n_first + 1)}
    results: dict[str, Any] = {}
    work = Path(tempfile.mkdtemp(prefix="fleet-", dir=work_root))
    with FleetHarness(work, model_cache=model_cache, mode="tap", streams=streams, probe=True) as h:
        say("\n## 4. Subscribe → first detection; kill -9 → next detection (real fleet, real RTSP)")
        results["startup"] = first_detection(h, [f"first-{i}" for i in range(1, n_first + 1)], kills)
        say(first_detection_table(results["startup"]))
        say("\n## 2 + 6. Latency and scaling (real fleet, max_fps 5, cameras added step by step)")
        window = 6.0 if quick else 20.0
        long_window = 8.0 if quick else 30.0
        results["scaling"] = scaling(h, steps, window, long_window, {1, 10, 20})
        results["scaling"]["errors"] = h.backend.errors()[:5]
    say("\n### 2. End-to-end latency, ms p50 / p99")
    counts = [c for c in (1, 10, 20) if c in steps] or sorted({steps[0], steps[-1]})
    say(latency_table(results["scaling"], counts))
    say("\n### 6. Scaling")
    say(scaling_table(results["scaling"]))
    say("\n## 5. Memory: ONNX path vs Ultralytics/torch path (plain workers, no taps)")
    work = Path(tempfile.mkdtemp(prefix="memory-", dir=work_root))
    results["memory"] = memory_fleet(work, model_cache, lane, 8.0 if quick else 20.0)
    say(memory_table(results["memory"], results["scaling"]))
    return results
