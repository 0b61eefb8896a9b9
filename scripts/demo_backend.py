#!/usr/bin/env python3
"""A tiny stand-in for the controlling backend, to watch the whole loop (`make demo`).

It connects to the gateway's WebSocket, subscribes one more display to the demo camera cam-001
(sharing its worker with display-001), and for every `imageDetection` plays the backend: it
creates a session, binds it to the display (`setSessionId`), and ends it (`sessionId: null`)
a few seconds later. The results land in Redis and PostgreSQL under those session ids.

    .venv/bin/python scripts/demo_backend.py [--url ws://127.0.0.1:8001/] [--seconds 60]
"""

from __future__ import annotations

import argparse
import json
import os
import time
import uuid
from pathlib import Path

from websockets.sync.client import connect

ROOT = Path(__file__).resolve().parents[1]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--url", default="ws://127.0.0.1:8001/")
    parser.add_argument("--seconds", type=float, default=60.0, help="how long to watch (0: until Ctrl-C)")
    parser.add_argument("--session-seconds", type=float, default=5.0, help="how long each session lasts")
    args = parser.parse_args()
    token = os.environ.get("GATEWAY_TOKEN")
    headers = {"Authorization": f"Bearer {token}"} if token else None
    archive = (ROOT / "models" / "car_frontal_pipeline.mpta").as_uri()
    open_sessions: dict[str, float] = {}  # display → when its session ends
    deadline = time.monotonic() + args.seconds if args.seconds else float("inf")
    with connect(args.url, additional_headers=headers, open_timeout=5) as ws:
        print(f"connected to {args.url}")
        ws.send(json.dumps({"type": "subscribe", "payload": {
            "subscriptionIdentifier": "display-demo;cam-001", "rtspUrl": "rtsp://127.0.0.1:8554/cam-001",
            "modelUrl": archive, "modelId": "car_frontal_pipeline_v1",
            "modelName": "Car Frontal Pipeline (stand-in)"}}))
        while time.monotonic() < deadline:
            now = time.monotonic()
            for display, ends in list(open_sessions.items()):
                if now >= ends:
                    ws.send(json.dumps({"type": "setSessionId",
                                        "payload": {"displayIdentifier": display, "sessionId": None}}))
                    print(f"  {display}: session ended")
                    del open_sessions[display]
            try:
                msg = json.loads(ws.recv(timeout=0.5))
            except TimeoutError:
                continue
            if msg["type"] == "imageDetection":
                d = msg["data"]["detection"]
                display = msg["subscriptionIdentifier"].split(";")[0]
                print(f"{msg['timestamp']} {msg['subscriptionIdentifier']:<22} vehicle {d.get('trackId')}: "
                      f"{d.get('carBrand')} ({d.get('carBrandConfidence') or 0:.2f}) "
                      f"{d.get('bodyType')} ({d.get('bodyTypeConfidence') or 0:.2f})")
                if display not in open_sessions:
                    session = f"demo-{uuid.uuid4().hex[:8]}"
                    ws.send(json.dumps({"type": "setSessionId",
                                        "payload": {"displayIdentifier": display, "sessionId": session}}))
                    open_sessions[display] = time.monotonic() + args.session_seconds
                    print(f"  {display}: session {session} bound (image and row written under it)")
            elif msg["type"] == "stateReport":
                online = sum(1 for c in msg["cameraConnections"] if c["online"])
                print(f"  stateReport: cpu {msg['cpuUsage']:.0f}% mem {msg['memoryUsage']:.0f}%, "
                      f"{online}/{len(msg['cameraConnections'])} subscription(s) online")
            elif msg["type"] == "error":
                print(f"  error: {msg['error']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
