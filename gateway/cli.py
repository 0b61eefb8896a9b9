"""`detector-gateway`: the backend-facing gateway.

    detector-gateway [--config conf/gateway.yaml] [--host H] [--port P]

Signals only queue work for the loop: SIGTERM/SIGINT stop it; SIGHUP re-reads cameras.yaml
(which is also watched for changes) and applies only the difference.

Exit codes (docs/operations.md, "Exit codes"): 0 stopped by SIGTERM/SIGINT; 1 an unexpected
error (a traceback in its log, e.g. a port already taken); 2 a usage error (argparse); 78
(EX_CONFIG) settings that can't be used, with one line on stderr naming the file and field.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import logging.handlers
import os
import signal
import sys
from collections.abc import Sequence
from pathlib import Path

from detector_worker.config.base import SpecError
from detector_worker.proc import die_with_parent

from . import __version__
from .settings import GatewaySettings, load_settings

log = logging.getLogger("gateway")
WATCH_S = 2.0


def setup_logging(settings: GatewaySettings) -> None:
    settings.log_dir.mkdir(parents=True, exist_ok=True)
    rotation = settings.session_processes.log_rotation
    file_handler = logging.handlers.RotatingFileHandler(
        settings.log_dir / "detector_worker_main.log", maxBytes=int(rotation.max_size_mb * 2**20),
        backupCount=rotation.backup_count, encoding="utf-8")
    handlers: list[logging.Handler] = [file_handler, logging.StreamHandler(sys.stdout)]
    fmt = logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s")
    root = logging.getLogger()
    for h in handlers:
        h.setFormatter(fmt)
        root.addHandler(h)
    root.setLevel(logging.INFO)
    logging.getLogger("websockets").setLevel(logging.WARNING)


async def serve(settings: GatewaySettings) -> int:
    from .assemble import assemble, reload_cameras_file

    parts = assemble(settings)
    gateway, server = parts.gateway, parts.server
    stop = asyncio.Event()
    reload = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGINT, stop.set)
    loop.add_signal_handler(signal.SIGHUP, reload.set)
    await gateway.start()
    await server.start()
    watcher = asyncio.create_task(_watch_cameras(settings.cameras_file, reload))
    try:
        while not stop.is_set():
            reload_wait = asyncio.create_task(reload.wait())
            stop_wait = asyncio.create_task(stop.wait())
            await asyncio.wait({reload_wait, stop_wait}, return_when=asyncio.FIRST_COMPLETED)
            reload_wait.cancel()
            stop_wait.cancel()
            if reload.is_set() and not stop.is_set():
                reload.clear()
                if reload_cameras_file(gateway):
                    log.info("cameras.yaml re-read: applying the difference")
    finally:
        watcher.cancel()
        await server.stop()
        await gateway.stop()
    log.info("gateway stopped")
    return 0


async def _watch_cameras(path: Path | None, reload: asyncio.Event) -> None:
    if path is None:
        return
    last = path.stat().st_mtime_ns if path.exists() else None
    while True:
        await asyncio.sleep(WATCH_S)
        now = path.stat().st_mtime_ns if path.exists() else None
        if now != last:
            last = now
            reload.set()


def end_with_supervisord() -> None:
    """Under supervisord, get SIGTERM when it dies (PR_SET_PDEATHSIG).

    A gateway orphaned by a kill -9 of supervisord would keep the bus and WebSocket ports: the
    gateway of the restarted supervisord could never bind them (FATAL after its retries), and so
    nothing would end the orphaned workers (`adopt_or_clean` runs when a gateway starts): every
    camera would run twice. The orphaned workers themselves are left to that clean-up.
    """
    if os.environ.get("SUPERVISOR_ENABLED") and not die_with_parent(signal.SIGTERM):
        log.warning("cannot ask to end with supervisord: PR_SET_PDEATHSIG is not available")


EXIT_CONFIG = 78  # EX_CONFIG (sysexits.h): the settings can't be used; 2 stays argparse's usage error


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="detector-gateway", description="Serve the backend's WebSocket protocol.")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.add_argument("--config", type=Path, help="gateway settings (YAML); defaults apply without one")
    parser.add_argument("--host")
    parser.add_argument("--port", type=int)
    args = parser.parse_args(argv)
    try:
        settings = load_settings(args.config, host=args.host, port=args.port)
    except SpecError as err:
        print(f"detector-gateway: {err}", file=sys.stderr)
        return EXIT_CONFIG
    setup_logging(settings)
    end_with_supervisord()
    return asyncio.run(serve(settings))


if __name__ == "__main__":
    raise SystemExit(main())
