"""`detector-gateway`: the backend-facing WebSocket gateway (lands with issue 5)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from . import __version__


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="detector-gateway", description="Serve the backend's WebSocket protocol.")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.parse_args(argv)
    print("detector-gateway: the gateway is not built yet (issue 5)", file=sys.stderr)
    return 2


if __name__ == "__main__":
    raise SystemExit(main())
