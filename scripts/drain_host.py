"""Drain a worker host before maintenance (its cameras move to the others), or take it back.

    .venv/bin/python scripts/drain_host.py host-a [--undrain] [--gateway ws://127.0.0.1:8001] [--wait 120]

Sends the dashboard's `host` action over the gateway's /ui/live WebSocket (token from
GATEWAY_TOKEN, if the gateway has one), then, with --wait, waits until no camera runs on the
host any more (GET /hosts). Exit 0 when done, 1 when refused or not drained in time.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import urllib.request

from websockets.sync.client import connect


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("host")
    parser.add_argument("--undrain", action="store_true", help="let the host take cameras again")
    parser.add_argument("--gateway", default="ws://127.0.0.1:8001")
    parser.add_argument("--wait", type=float, default=120.0, help="seconds to wait for the host to empty (0: don't)")
    args = parser.parse_args(argv)
    token = os.environ.get("GATEWAY_TOKEN")
    headers = {"Authorization": f"Bearer {token}"} if token else None
    action = "undrain" if args.undrain else "drain"
    with connect(f"{args.gateway}/ui/live", additional_headers=headers, open_timeout=5) as ws:
        ws.send(json.dumps({"op": "host", "host": args.host, "action": action, "id": 1}))
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            msg = json.loads(ws.recv(timeout=10))
            if msg.get("type") == "result" and msg.get("id") == 1:
                if not msg.get("ok"):
                    print(f"{action} {args.host}: refused: {msg.get('error')}", file=sys.stderr)
                    return 1
                break
    print(f"{action} {args.host}: accepted")
    if args.undrain or not args.wait:
        return 0
    url = args.gateway.replace("ws://", "http://", 1).replace("wss://", "https://", 1) + "/hosts"
    deadline = time.monotonic() + args.wait
    while time.monotonic() < deadline:
        request = urllib.request.Request(url, headers=headers or {})
        with urllib.request.urlopen(request, timeout=5) as response:
            hosts = {h["name"]: h for h in json.load(response)["hosts"]}
        if hosts[args.host]["cameras"] == 0:
            print(f"{args.host}: drained (no camera placed on it)")
            return 0
        time.sleep(1)
    print(f"{args.host}: still has cameras after {args.wait:.0f} s (other hosts full? see GET /hosts)", file=sys.stderr)
    return 1


if __name__ == "__main__":
    raise SystemExit(main())
