"""Private throwaway Redis and PostgreSQL servers that tests may stop, kill, freeze and restart.

Each server runs from the system's binaries (redis-server; initdb/pg_ctl under
/usr/lib/postgresql/*/bin) on a free port of 127.0.0.1, with all its files in a temp dir, so the
machine's shared servers (6379/5432) are never touched. A server keeps its port across restarts.
PostgreSQL refuses to run as root: then every PostgreSQL command runs as the `postgres` user.
"""

from __future__ import annotations

import contextlib
import glob
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from types import TracebackType

import psycopg2
import redis

COMMAND_TIMEOUT_S = 30.0


class ServerUnavailable(RuntimeError):
    """The binaries (or the user) a private server needs are missing on this machine."""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_until(check: Callable[[], bool], what: str, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        if check():
            return
        if time.monotonic() >= deadline:
            raise TimeoutError(f"{what} within {timeout:.0f} s")
        time.sleep(0.05)


class RedisServer:
    """A redis-server child process. With `persist`, every acknowledged write survives a kill -9
    (append-only file, fsync always), as a production Redis with AOF would keep it."""

    def __init__(self, workdir: Path, *, persist: bool = False) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            raise ServerUnavailable("redis-server is not installed")
        self.binary = binary
        self.workdir = workdir
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.persist = persist
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def start(self, timeout: float = 10.0) -> None:
        assert not self.running, "already running"
        persistence = (["--appendonly", "yes", "--appendfsync", "always"] if self.persist
                       else ["--appendonly", "no"])
        self._proc = subprocess.Popen(
            [self.binary, "--bind", "127.0.0.1", "--port", str(self.port), "--save", "", *persistence,
             "--dir", str(self.workdir), "--logfile", str(self.workdir / "redis.log"), "--daemonize", "no"],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_until(self.answers, f"private redis-server did not answer on port {self.port}", timeout)

    def answers(self) -> bool:
        if not self.running:
            raise RuntimeError(f"private redis-server exited; see {self.workdir / 'redis.log'}")
        try:
            conn = redis.Redis.from_url(self.url, socket_connect_timeout=0.5, socket_timeout=0.5)
            try:
                return bool(conn.ping())
            finally:
                conn.close()
        except redis.RedisError:
            return False

    def kill(self) -> None:
        """Crash it (SIGKILL): clients see their connections reset, new ones refused."""
        if self._proc is None:
            return
        if self._proc.poll() is None:
            self._proc.send_signal(signal.SIGCONT)  # a frozen process dies as well
            self._proc.kill()
        self._proc.wait(timeout=COMMAND_TIMEOUT_S)
        self._proc = None

    def freeze(self) -> None:
        """SIGSTOP: connections are still accepted by the kernel, but nothing ever answers."""
        assert self._proc is not None
        self._proc.send_signal(signal.SIGSTOP)

    def thaw(self) -> None:
        assert self._proc is not None
        self._proc.send_signal(signal.SIGCONT)

    def client(self) -> redis.Redis:
        return redis.Redis.from_url(self.url, socket_connect_timeout=2, socket_timeout=5)

    def __enter__(self) -> RedisServer:
        return self

    def __exit__(self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None) -> None:
        self.kill()


def _pg_binary(name: str) -> str:
    found = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"),
                   key=lambda p: int(Path(p).parts[-3]) if Path(p).parts[-3].isdigit() else 0)
    if not found:
        raise ServerUnavailable(f"no {name} under /usr/lib/postgresql/*/bin")
    return found[-1]


def _as_postgres() -> list[str]:
    """The command prefix that runs PostgreSQL's programs as a user it accepts."""
    if os.geteuid() != 0:
        return []
    try:
        import pwd

        pwd.getpwnam("postgres")
    except KeyError as err:
        raise ServerUnavailable("running as root and there is no `postgres` user to run PostgreSQL as") from err
    if shutil.which("runuser") is None:
        raise ServerUnavailable("running as root and runuser is missing")
    return ["runuser", "-u", "postgres", "--"]


def _run(cmd: list[str]) -> None:
    done = subprocess.run(cmd, stdin=subprocess.DEVNULL, capture_output=True, timeout=COMMAND_TIMEOUT_S)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({done.returncode}): "
                           f"{(done.stderr or done.stdout).decode(errors='replace').strip()}")


def make_private_dir(prefix: str) -> Path:
    """A fresh temp dir the PostgreSQL user owns (pytest's tmp dirs are private to the test user)."""
    path = Path(tempfile.mkdtemp(prefix=prefix))
    if os.geteuid() == 0 and _as_postgres():
        shutil.chown(path, "postgres", "postgres")
    return path


def remove_private_dir(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)


class PostgresTemplate:
    """One initdb'd data directory (made once per test session), copied for each server."""

    def __init__(self, root: Path) -> None:
        self.as_user = _as_postgres()
        self.initdb, self.pg_ctl = _pg_binary("initdb"), _pg_binary("pg_ctl")
        self.root = root
        self.data = root / "template"
        _run([*self.as_user, self.initdb, "-D", str(self.data), "-U", "postgres", "--auth=trust",
              "--no-sync", "--no-instructions", "-E", "UTF8"])

    def server(self) -> PostgresServer:
        """A new server on a fresh copy of the template (not started)."""
        return PostgresServer(self, Path(tempfile.mkdtemp(prefix="pg-", dir=self.root)))


class PostgresServer:
    def __init__(self, template: PostgresTemplate, base: Path) -> None:
        self.template = template
        self.base = base
        self.data = base / "data"
        self.log = base / "server.log"
        as_user = template.as_user
        if as_user:
            shutil.chown(base, "postgres", "postgres")
        _run([*as_user, "cp", "-a", str(template.data), str(self.data)])
        self.port = free_port()
        self.dsn = f"postgresql://postgres@127.0.0.1:{self.port}/postgres"
        self.running = False

    def _pg_ctl(self, *args: str) -> None:
        _run([*self.template.as_user, self.template.pg_ctl, "-D", str(self.data), *args])

    def start(self, timeout: float = 15.0) -> None:
        # fsync off: a throwaway server; a clean (fast) stop still checkpoints everything
        options = (f"-p {self.port} -c listen_addresses=127.0.0.1 -k {self.base} -c fsync=off "
                   "-c synchronous_commit=off -c full_page_writes=off -c max_connections=20 "
                   "-c shared_buffers=16MB")
        self._pg_ctl("-o", options, "-l", str(self.log), "-w", "-t", str(int(timeout)), "start")
        self.running = True
        wait_until(self.answers, f"private postgresql did not answer on port {self.port}", timeout)

    def stop(self, mode: str = "fast", timeout: float = 15.0) -> None:
        """pg_ctl stop: `fast` ends every session (clients see their connection terminated)."""
        if not self.running:
            return
        self._pg_ctl("-m", mode, "-w", "-t", str(int(timeout)), "stop")
        self.running = False

    def answers(self) -> bool:
        try:
            psycopg2.connect(self.dsn, connect_timeout=2).close()
            return True
        except psycopg2.OperationalError:
            return False

    def execute(self, statement: str, params: tuple[object, ...] = ()) -> list[tuple[object, ...]]:
        conn = psycopg2.connect(self.dsn, connect_timeout=3)
        try:
            conn.autocommit = True
            with conn.cursor() as cur:
                cur.execute(statement, params)
                return list(cur.fetchall()) if cur.description else []
        finally:
            conn.close()

    def destroy(self) -> None:
        with contextlib.suppress(Exception):
            self.stop(mode="immediate")
        if self.running:  # pg_ctl failed: make sure no postmaster outlives the test
            pid_file = self.data / "postmaster.pid"
            with contextlib.suppress(Exception):
                os.kill(int(pid_file.read_text().split()[0]), signal.SIGKILL)
            self.running = False
        shutil.rmtree(self.base, ignore_errors=True)


@contextlib.contextmanager
def postgres_template(prefix: str) -> Iterator[PostgresTemplate]:
    """initdb once into a private dir (removed afterwards); skips the test where PostgreSQL can't run."""
    import pytest

    root = make_private_dir(prefix)
    try:
        try:
            template = PostgresTemplate(root)
        except ServerUnavailable as err:
            pytest.skip(f"no private PostgreSQL: {err}")
        yield template
    finally:
        remove_private_dir(root)
