"""PNG plots of the bench results (matplotlib, Agg). Each function takes the results dict of its
section and a path; missing sections are skipped by `plot_all`."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

COLOURS = ["#4C72B0", "#DD8452", "#55A868", "#C44E52", "#8172B3", "#937860", "#DA8BC3"]


def _save(fig: Any, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def throughput(res: dict[str, Any], path: Path) -> Path:
    names = list(res["variants"])
    fps = [res["variants"][n]["fps"] for n in names]
    bare = res["variants"]["bare/ultralytics"]["fps"]
    fig, ax = plt.subplots(figsize=(8, 3.6))
    bars = ax.barh(names[::-1], fps[::-1], color=[COLOURS[i % len(COLOURS)] for i in range(len(names))][::-1])
    for bar, value in zip(bars, fps[::-1], strict=True):
        ax.text(bar.get_width(), bar.get_y() + bar.get_height() / 2, f" {value:.0f}/s ({value / bare:.2f}x bare)",
                va="center", fontsize=8)
    ax.set_xlabel("frames/s, one worker, one inference thread (higher is better)")
    ax.set_xlim(0, max(fps) * 1.45)
    ax.set_title(f"Per-worker throughput on {res['frames']} in-memory 640x480 frames")
    return _save(fig, path)


SEGMENTS = [("decode", "decode"), ("wait", "wait for the loop"), ("inference", "inference"),
            ("post", "after inference"), ("bus", "bus"), ("gateway", "gateway → WS")]


def latency(res: dict[str, Any], counts: list[int], path: Path) -> Path:
    steps = [s for s in res["steps"] if s["cameras"] in counts]
    fig, ax = plt.subplots(figsize=(8, 3.8))
    labels = [f"{s['cameras']} cam" for s in steps]
    left = [0.0] * len(steps)
    for i, (key, label) in enumerate(SEGMENTS):
        vals = []
        for s in steps:
            v = s["frame"]["decode"]["p50"] if key == "decode" else s["detections"][key]["p50"]
            vals.append(0.0 if v is None or math.isnan(v) else v)
        ax.barh(labels, vals, left=left, color=COLOURS[i], label=label)
        left = [a + b for a, b in zip(left, vals, strict=True)]
    for j, s in enumerate(steps):
        p99 = s["detections"]["capture_to_ws"]["p99"]
        if p99 == p99:
            ax.plot([p99], [j], marker="|", color="black", markersize=18)
            ax.text(p99, j + 0.3, f" p99 {p99:.0f}", fontsize=8, ha="left")
    ax.axvline(400, color="red", linestyle="--", linewidth=1)
    p99s = [s["detections"]["capture_to_ws"]["p99"] for s in steps]
    ax.set_xlim(0, max([450.0, *(p * 1.15 for p in p99s if p == p)]))
    ax.set_xlabel("ms from camera send to the backend's WebSocket (bars: p50 of each segment; |: total p99)")
    ax.legend(fontsize=7, ncol=3, loc="lower right")
    ax.set_title("End-to-end detection latency, max_fps 5")
    return _save(fig, path)


def fanin(res: dict[str, Any], path: Path) -> Path:
    steps = [s for s in res["steps"] if s["offered"]]
    offered = [s["offered"] for s in steps]
    fig, ax = plt.subplots(figsize=(8, 3.8))
    ax.plot(offered, [s["sent_per_s"] for s in steps], "o--", color="grey", label="sent")
    ax.plot(offered, [s["delivered_per_s"] for s in steps], "o-", color=COLOURS[0], label="delivered to backend")
    ax.set_xlabel("offered detections/s (20 simulated workers)")
    ax.set_ylabel("messages/s")
    ax2 = ax.twinx()
    ax2.plot(offered, [s["cpu"]["gateway"] for s in steps], "s-", color=COLOURS[3], label="gateway CPU (cores)")
    ax2.set_ylabel("gateway CPU, cores")
    ax2.set_ylim(0, 1.2)
    flood = [s for s in res["steps"] if not s["offered"]]
    if flood:
        f = flood[0]
        ax.text(0.98, 0.04, f"unpaced flood: sent {f['sent_per_s']:.0f}/s,\ndelivered {f['delivered_per_s']:.0f}/s "
                f"(gateway CPU {f['cpu']['gateway']:.2f})", transform=ax.transAxes, ha="right", va="bottom",
                fontsize=8, bbox={"facecolor": "white", "alpha": 0.8, "edgecolor": "grey"})
    lines = ax.get_legend_handles_labels()
    lines2 = ax2.get_legend_handles_labels()
    ax.legend(lines[0] + lines2[0], lines[1] + lines2[1], fontsize=8, loc="upper left")
    ax.set_title("Gateway fan-in: bus → gateway → one WebSocket backend")
    return _save(fig, path)


def scaling(res: dict[str, Any], path: Path) -> Path:
    steps = res["steps"]
    n = [s["cameras"] for s in steps]
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.8))
    ax = axes[0]
    ax.fill_between(n, [s["fps"]["min"] for s in steps], [s["fps"]["max"] for s in steps], alpha=0.25,
                    color=COLOURS[0], label="min–max")
    ax.plot(n, [s["fps"]["median"] for s in steps], "o-", color=COLOURS[0], label="median")
    ax.axhline(5, color="grey", linestyle=":", label="target 5")
    ax.set_ylim(0, 5.8)
    ax.set_xlabel("cameras")
    ax.set_ylabel("processed frames/s per camera")
    ax.legend(fontsize=8)
    ax = axes[1]
    ax.plot(n, [s["frame"]["capture_to_done"]["p99"] for s in steps], "o-", color=COLOURS[1],
            label="every frame: capture → processed, p99")
    ax.plot(n, [s["detections"]["capture_to_ws"]["p99"] for s in steps], "s-", color=COLOURS[3],
            label="detections: capture → WS, p99")
    ax.plot(n, [s["frame"]["capture_to_done"]["p50"] for s in steps], "o:", color=COLOURS[1], label="frame p50")
    ax.axhline(res["budget_ms"], color="red", linestyle="--", linewidth=1, label="2 frame intervals")
    ax.set_xlabel("cameras")
    ax.set_ylabel("ms")
    ax.legend(fontsize=7)
    ax = axes[2]
    keys = [("workers", "workers"), ("gateway", "gateway"), ("supervisord+listener", "supervisord"),
            ("rtsp_server", "RTSP server (test cameras)"), ("probe", "probe"), ("bench_client", "bench client"),
            ("others", "other users")]
    bottom = [0.0] * len(steps)
    for i, (k, label) in enumerate(keys):
        vals = [s["cpu"].get(k, 0.0) for s in steps]
        ax.bar([str(x) for x in n], vals, bottom=bottom, color=COLOURS[i % len(COLOURS)], label=label)
        bottom = [a + b for a, b in zip(bottom, vals, strict=True)]
    ax.axhline(2, color="black", linewidth=1)
    ax.set_xlabel("cameras")
    ax.set_ylabel("CPU cores (machine has 2)")
    ax.legend(fontsize=6)
    fig.suptitle("Cameras at max_fps 5 on this machine")
    return _save(fig, path)


def memory(mem: dict[str, Any], scale: dict[str, Any] | None, path: Path) -> Path:
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
    ax = axes[0]
    labels = ["ONNX Runtime", "Ultralytics/torch"]
    rss = [mem.get("onnx", {}).get("rss") or 0, mem.get("ultralytics", {}).get("rss") or 0]
    pss = [mem.get("onnx", {}).get("pss") or 0, mem.get("ultralytics", {}).get("pss") or 0]
    x = range(2)
    ax.bar([i - 0.2 for i in x], rss, width=0.4, label="RSS", color=COLOURS[0])
    ax.bar([i + 0.2 for i in x], pss, width=0.4, label="PSS", color=COLOURS[1])
    ax.set_xticks(list(x), labels)
    ax.set_ylabel("MB")
    ax.set_title("One worker (same footage, max_fps 5)")
    ax.legend(fontsize=8)
    ax = axes[1]
    if scale:
        steps = scale["steps"]
        ax.plot([s["cameras"] for s in steps], [sum(m.get("pss", 0) for m in s["memory"].values()) for s in steps],
                "o-", color=COLOURS[1], label="workers' total PSS")
        ax.plot([s["cameras"] for s in steps], [sum(m.get("rss", 0) for m in s["memory"].values()) for s in steps],
                "o--", color=COLOURS[0], label="workers' total RSS")
        ax.set_xlabel("ONNX-path workers")
        ax.set_ylabel("MB")
        ax.legend(fontsize=8)
        ax.set_title("Live fleet")
    return _save(fig, path)


def startup(res: dict[str, Any], path: Path) -> Path:
    import statistics

    keys = [("exec_s", "gateway + supervisord → worker process"), ("ready_s", "imports + model load"),
            ("first_frame_s", "RTSP open + first frame"), ("det_captured_s", "vehicle stability (pipeline rule)"),
            ("ws_s", "inference + bus + gateway")]
    fig, ax = plt.subplots(figsize=(8, 3.2))
    labels = []
    for j, (event, title) in enumerate((("subscribe", "subscribe"), ("kill", "kill -9"))):
        ss = [s for s in res["samples"] if s["event"] == event and "ws_s" in s]
        if not ss:
            continue
        labels.append(title)
        prev = 0.0
        for i, (k, label) in enumerate(keys):
            vals = [s[k] for s in ss if s.get(k) is not None]
            v = statistics.median(vals) if vals else prev
            ax.barh([title], [max(0.0, v - prev)], left=[prev], color=COLOURS[i], label=label if j == 0 else None)
            prev = max(prev, v)
    ax.set_xlabel("seconds (medians of the samples)")
    if labels:
        ax.legend(fontsize=7, ncol=3, loc="upper center", bbox_to_anchor=(0.5, -0.28))
    ax.set_title("Time to the first detection")
    return _save(fig, path)


def control(res: dict[str, Any], path: Path) -> Path:
    import statistics

    rows = res["rows"]
    keys = [("add", "applied", "add: applied"), ("add", "spawned", "add: spawned"),
            ("add", "hello", "add: worker hello"), ("remove", "applied", "remove: applied")]
    fig, ax = plt.subplots(figsize=(8, 3.6))
    width = 0.8 / len(keys)
    for i, (phase, key, label) in enumerate(keys):
        vals = []
        for r in rows:
            v = [c[phase][key] for c in r["changes"] if c[phase][key] is not None]
            vals.append(statistics.median(v) * 1000 if v else 0)
        ax.bar([j + (i - 1.5) * width for j in range(len(rows))], vals, width=width, color=COLOURS[i], label=label)
    ax.set_xticks(range(len(rows)), [f"{r['cameras']} cameras\n({r['workers']})" for r in rows], fontsize=7)
    ax.set_ylabel("ms after the backend's message (median)")
    ax.legend(fontsize=8)
    ax.set_title("One subscription change")
    return _save(fig, path)


def hosts(res: dict[str, Any], path: Path) -> Path:
    """Bus throughput across hosts: messages/s per message size and transport, GatewayBus vs a raw PULL."""
    rows = res["bus"]["rows"]
    groups = list(dict.fromkeys((r["size"], r["transport"]) for r in rows))
    fig, ax = plt.subplots(figsize=(8, 3.6))
    for i, (kind, label) in enumerate((("gateway", "GatewayBus: recv + decode"), ("raw", "raw zmq PULL"))):
        for j, g in enumerate(groups):
            r = next(r for r in rows if (r["size"], r["transport"]) == g and r["receiver"] == kind)
            x = j + (i - 0.5) * 0.4
            ax.bar(x, r["msgs_per_s"], width=0.4, color=COLOURS[i], label=label if j == 0 else None)
            ax.text(x, r["msgs_per_s"], f"{r['mb_per_s']:.0f} MB/s\n{r['receiver_cores']:.2f} core",
                    ha="center", va="bottom", fontsize=7)
    ax.set_xticks(range(len(groups)), [f"{s} {'ipc://' if t == 'ipc' else 'tcp:// + CURVE'}" for s, t in groups],
                  fontsize=8)
    ax.set_yscale("log")
    ax.set_ylim(top=max(r["msgs_per_s"] for r in rows) * 4)
    ax.set_ylabel("messages/s received (log)")
    ax.legend(fontsize=8, loc="upper right")
    ax.set_title(f"Bus throughput, {res['bus']['senders']} sender processes (labels: MB/s, receiver CPU)")
    return _save(fig, path)


def realistic(res: dict[str, Any], path: Path) -> Path:
    """CPU per camera-hour by variant, one group of bars per resolution (and the INT8 detector run)."""
    variants = [("bare-ultralytics", "bare Ultralytics"), ("worker-ungated", "worker, ungated"),
                ("worker-gated", "worker, gated"), ("decode-only", "decode only")]
    runs = sorted(res["runs"], key=lambda k: (-res["runs"][k]["clip"]["height"], k))
    fig, ax = plt.subplots(figsize=(8, 4))
    width = 0.8 / len(runs)
    for i, key in enumerate(runs):
        got = res["runs"][key]["variants"]
        values = [got[v]["core_s_per_camera_hour"] if v in got else 0.0 for v, _ in variants]
        ax.bar([x + i * width for x in range(len(variants))], values, width, label=key)
    ax.set_xticks([x + width * (len(runs) - 1) / 2 for x in range(len(variants))], [label for _, label in variants])
    ax.set_ylabel("CPU core-seconds per camera-hour")
    ax.set_title("Day footage, YOLOv8n-size detector at 640, max_fps 5 (lower is better)")
    ax.legend()
    return _save(fig, path)


def sustained(res: dict[str, Any], path: Path) -> Path:
    """Cameras vs p99 capture -> detection per resolution (real-size models), sustained steps marked."""
    fig, ax = plt.subplots(figsize=(8, 3.8))
    for i, key in enumerate(sorted(res, key=lambda k: (-res[k]["clip"]["height"], k))):
        steps = sorted(res[key]["steps"], key=lambda s: s["cameras"])
        xs = [s["cameras"] for s in steps]
        ys = [s["capture_to_detection_ms"].get("p99", float("nan")) for s in steps]
        ax.plot(xs, ys, "-", color=COLOURS[i], label=f"{key}: {res[key]['cameras_sustained']} sustained")
        for s, y in zip(steps, ys, strict=True):
            ax.plot(s["cameras"], y, "o" if s["sustained"] else "x", color=COLOURS[i], markersize=7)
            recall = s["recall"] if s["recall"] is not None else 0.0
            ax.annotate(f"fps≥{s['fps_min_motion'] or 0:.1f}\nrecall {recall:.2f}", (s["cameras"], y), fontsize=6,
                        textcoords="offset points", xytext=(4, 4))
    budget = next(iter(res.values()))["criteria"]["p99_capture_to_detection_ms"]
    ax.axhline(budget, color="grey", linestyle="--", linewidth=1, label=f"budget {budget:.0f} ms")
    ax.set_yscale("log")
    ax.set_xlabel("cameras on this machine (o sustained, x not)")
    ax.set_ylabel("capture → imageDetection p99 (ms, log)")
    ax.set_title("Real-size models, motion-gated workers, day footage at 25 fps (max_fps 5)")
    ax.legend(fontsize=8)
    return _save(fig, path)


def timeline(res: dict[str, Any], path: Path, bin_s: int = 5) -> Path:
    """One camera's day: motion in the lane's ROI and detector calls (per `bin_s` seconds), and below it the
    ground truth's visits, lane passes and light changes with the visits reported."""
    motion, calls = res["motion_seconds"], res["detector_calls"]
    edges = list(range(0, len(calls), bin_s))
    calls_rate = [sum(calls[a:a + bin_s]) / bin_s for a in edges]
    motion_share = [sum(motion[a:a + bin_s]) / bin_s * res["max_fps"] for a in edges]
    fig, (ax, truth) = plt.subplots(2, 1, figsize=(10, 4.4), sharex=True, height_ratios=[3, 1])
    ax.fill_between(edges, 0, motion_share, step="post", color=COLOURS[1], alpha=0.4,
                    label=f"seconds with motion in the ROI (share x {res['max_fps']:g})")
    ax.step(edges, calls_rate, where="post", color=COLOURS[0], linewidth=1.0,
            label=f"detector calls/s (mean over {bin_s} s; {res['max_fps']:g} = every kept frame)")
    ax.set_ylim(0, res["max_fps"] * 1.1)
    ax.set_ylabel("per second")
    ax.legend(fontsize=7, loc="upper right")
    clip = res["clip"]
    ax.set_title(f"One camera's day ({clip['width']}x{clip['height']}): detector on "
                 f"{res['detector_calls_total']} of {res['frames']} kept frames, recall {res['recall']:.2f}")
    for j, (a, b) in enumerate(res["visits"]):
        truth.broken_barh([(a, b - a)], (0.55, 0.35), color=COLOURS[2], label="vehicle stopped" if j == 0 else None)
    for j, (a, b) in enumerate(res["passes"]):
        truth.broken_barh([(a, b - a)], (0.55, 0.35), color=COLOURS[4], label="lane pass" if j == 0 else None)
    for j, (_kind, a, b) in enumerate(res["light_events"]):
        truth.broken_barh([(a, b - a)], (0.1, 0.35), color="grey", alpha=0.6,
                          label="light change (cloud, IR)" if j == 0 else None)
    truth.plot(res["reported_at_s"], [0.72] * len(res["reported_at_s"]), "v", color=COLOURS[3], label="reported")
    truth.set_ylim(0, 1)
    truth.set_yticks([])
    truth.set_xlabel("seconds of the day clip (ground truth below)")
    truth.legend(fontsize=7, loc="upper right", ncol=4)
    return _save(fig, path)


def plot_all(results: dict[str, Any], out: Path) -> dict[str, str]:
    made: dict[str, str] = {}
    jobs = [
        ("throughput", lambda p: throughput(results["throughput"], p), "throughput" in results),
        ("latency", lambda p: latency(results["fleet"]["scaling"], results["latency_counts"], p),
         "fleet" in results),
        ("fanin", lambda p: fanin(results["fanin"], p), "fanin" in results),
        ("scaling", lambda p: scaling(results["fleet"]["scaling"], p), "fleet" in results),
        ("memory", lambda p: memory(results["fleet"]["memory"], results["fleet"].get("scaling"), p),
         "fleet" in results and "memory" in results["fleet"]),
        ("startup", lambda p: startup(results["fleet"]["startup"], p), "fleet" in results),
        ("control", lambda p: control(results["control"], p), "control" in results),
        ("hosts", lambda p: hosts(results["hosts"], p), "hosts" in results),
        ("realistic", lambda p: realistic(results["realistic"], p), "runs" in (results.get("realistic") or {})),
        ("sustained", lambda p: sustained(results["realistic"]["sustained"], p),
         "sustained" in (results.get("realistic") or {})),
        ("timeline", lambda p: timeline(results["realistic"]["timeline"], p),
         "timeline" in (results.get("realistic") or {})),
    ]
    for name, fn, present in jobs:
        if not present:
            continue
        try:
            fn(out / f"{name}.png")
            made[name] = f"{name}.png"
        except Exception as err:  # a plot must never cost the figures
            print(f"plot {name} failed: {err}", flush=True)
    return made
