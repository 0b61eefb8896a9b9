#!/usr/bin/env python3
"""Write the generated files of the shipped supervisord config from the renderers the gateway uses.

    .venv/bin/python scripts/render_fleet_conf.py          # (re)write them; unchanged files are left alone
    .venv/bin/python scripts/render_fleet_conf.py --check  # exit 1 when a committed file differs

Today that is `conf/fleet.d/events.conf` (the `[eventlistener:camera-events]` section); the tests
compare the committed file with the renderer's output, so the two cannot drift apart.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from detector_worker.files import atomic_write
from gateway.supervisor.programs import SHIPPED_EVENTLISTENER_FILE, render_eventlistener, shipped_eventlistener

ROOT = Path(__file__).resolve().parents[1]


def generated_files() -> dict[Path, str]:
    """Path relative to the project → content."""
    return {SHIPPED_EVENTLISTENER_FILE: render_eventlistener(shipped_eventlistener())}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--check", action="store_true", help="only compare; exit 1 when a file differs")
    parser.add_argument("--root", type=Path, default=ROOT, help="the project directory (default: this checkout)")
    args = parser.parse_args(argv)
    stale = []
    for relative, text in generated_files().items():
        path = args.root / relative
        if args.check:
            try:
                same = path.read_text() == text
            except FileNotFoundError:
                same = False
            if not same:
                stale.append(str(relative))
        elif atomic_write(path, text.encode(), mode=0o644, skip_unchanged=True):
            print(f"wrote {relative}")
    if stale:
        print(f"out of date (run scripts/render_fleet_conf.py): {', '.join(stale)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
