#!/usr/bin/env python3
"""Make sure the tests have a Redis and a PostgreSQL, and print their URLs as shell exports.

    eval "$(.venv/bin/python scripts/test_services.py)"

Uses REDIS_URL / DATABASE_URL when set, else the local defaults. When nothing answers there,
starts a throwaway server from the system's binaries (installing them with apt-get when
missing) under build/services/, on a free port, and prints its URL instead. Never skips.
"""

from __future__ import annotations

import glob
import os
import shlex
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
STATE = ROOT / "build" / "services"
DEFAULT_REDIS = "redis://127.0.0.1:6379/0"
DEFAULT_DATABASE = "postgresql://postgres@127.0.0.1:5432/postgres"


def log(msg: str) -> None:
    print(f"test-services: {msg}", file=sys.stderr)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def apt_install(*packages: str) -> None:
    log(f"installing {' '.join(packages)}")
    sudo = [] if os.geteuid() == 0 else ["sudo"]
    subprocess.run([*sudo, "apt-get", "update", "-qq"], check=True)
    subprocess.run([*sudo, "apt-get", "install", "-y", "-qq", *packages], check=True,
                   env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"})


def redis_answers(url: str) -> bool:
    import redis

    try:
        return bool(redis.Redis.from_url(url, socket_connect_timeout=1, socket_timeout=1).ping())
    except redis.RedisError:
        return False


def postgres_answers(url: str) -> bool:
    import psycopg2

    try:
        psycopg2.connect(url, connect_timeout=2).close()
        return True
    except psycopg2.Error:
        return False


def wait_for(check: object, what: str, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():  # type: ignore[operator]
            return
        time.sleep(0.2)
    raise SystemExit(f"test-services: {what} did not answer within {timeout:.0f} s")


def start_redis() -> str:
    if shutil.which("redis-server") is None:
        apt_install("redis-server")
    port = free_port()
    workdir = STATE / "redis"
    workdir.mkdir(parents=True, exist_ok=True)
    subprocess.run(["redis-server", "--bind", "127.0.0.1", "--port", str(port), "--save", "", "--appendonly", "no",
                    "--daemonize", "yes", "--dir", str(workdir), "--logfile", str(workdir / "redis.log"),
                    "--pidfile", str(workdir / "redis.pid")], check=True)
    url = f"redis://127.0.0.1:{port}/0"
    wait_for(lambda: redis_answers(url), f"throwaway redis on port {port}")
    log(f"started a throwaway redis at {url}")
    return url


def _pg_bin(name: str) -> str:
    found = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))
    if not found:
        apt_install("postgresql")
        found = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))
    if not found:
        raise SystemExit(f"test-services: no {name} found after installing postgresql")
    return found[-1]


def start_postgres() -> str:
    initdb, pg_ctl = _pg_bin("initdb"), _pg_bin("pg_ctl")
    data = STATE / "postgres"
    # PostgreSQL refuses to run as root: run it as the `postgres` user the package creates.
    as_user = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
    if not (data / "PG_VERSION").exists():
        data.mkdir(parents=True, exist_ok=True)
        if as_user:
            shutil.chown(data, "postgres", "postgres")
        subprocess.run([*as_user, initdb, "-D", str(data), "-U", "postgres", "--auth=trust"], check=True,
                       stdout=subprocess.DEVNULL)
    port = free_port()
    opts = f"-p {port} -c listen_addresses=127.0.0.1 -k {shlex.quote(str(data))}"
    subprocess.run([*as_user, pg_ctl, "-D", str(data), "-o", opts, "-l", str(data / "server.log"), "-w", "start"],
                   check=True, stdout=subprocess.DEVNULL)
    url = f"postgresql://postgres@127.0.0.1:{port}/postgres"
    wait_for(lambda: postgres_answers(url), f"throwaway postgresql on port {port}")
    log(f"started a throwaway postgresql at {url}")
    return url


def main() -> int:
    redis_url = os.environ.get("REDIS_URL", DEFAULT_REDIS)
    if not redis_answers(redis_url):
        log(f"no redis answers at {redis_url}")
        redis_url = start_redis()
    database_url = os.environ.get("DATABASE_URL", DEFAULT_DATABASE)
    if not postgres_answers(database_url):
        log(f"no postgresql answers at {database_url}")
        database_url = start_postgres()
    print(f"export REDIS_URL={shlex.quote(redis_url)}")
    print(f"export DATABASE_URL={shlex.quote(database_url)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
