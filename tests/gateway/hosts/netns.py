"""Worker hosts on this machine for tests: network namespaces joined to the root namespace by veth
links, each running its own supervisord (set up by scripts/setup_worker_host.py) as a real host would.

    with NetnsLab(3) as lab:                    # namespaces, links, and one address (lab.service_ip)
        lab.forward(6379, "127.0.0.1", 6379)    # a root-namespace service the hosts may reach
        host = lab.host(0, ...)                 # a WorkerHost: setup script + supervisord inside ns 0

The gateway, the RTSP server and the stores stay in the root namespace. `lab.service_ip` lives on
its loopback, so every host reaches it through its own link whatever happens to the others;
`link_down(i)` cuts one host off, `WorkerHost.kill()` kills its supervisord and workers.
Everything is created with names of this process only, and removed on exit. Needs root (skip otherwise).
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from types import TracebackType

import psutil

ROOT = Path(__file__).resolve().parents[3]
PYTHON = sys.executable


def netns_unavailable() -> str | None:
    """Why network namespaces cannot be made here, or None."""
    if os.geteuid() != 0:
        return "network namespaces need root"
    if subprocess.run(["ip", "netns", "list"], capture_output=True).returncode != 0:
        return "the ip command (iproute2) cannot list network namespaces"
    return None


def _ip(*args: str, ns: str | None = None) -> None:
    cmd = ["ip", "netns", "exec", ns, "ip", *args] if ns else ["ip", *args]
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)}: {done.stderr.strip()}")


class TcpForwarder:
    """Accepts on (listen_ip, port) and relays each connection to (target_host, target_port)."""

    def __init__(self, listen_ip: str, port: int, target: tuple[str, int]) -> None:
        self.target = target
        self.server = socket.create_server((listen_ip, port), reuse_port=False)
        self.port = int(self.server.getsockname()[1])
        self._stop = False
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self._stop:
            try:
                client, _ = self.server.accept()
            except OSError:
                return
            try:
                upstream = socket.create_connection(self.target, timeout=5)
                upstream.settimeout(None)
            except OSError:
                client.close()
                continue
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    @staticmethod
    def _pipe(src: socket.socket, dst: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while data := src.recv(65536):
                dst.sendall(data)
        for s in (src, dst):
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)

    def close(self) -> None:
        self._stop = True
        self.server.close()


class WorkerHost:
    """One worker host: its directory set up by scripts/setup_worker_host.py, its supervisord in its namespace."""

    def __init__(self, lab: NetnsLab, index: int, root: Path, *, name: str, password: str, gateway_key: Path,
                 gateway_push: str, gateway_control: str, capacity: int, model_cache: Path | None = None,
                 redis_url: str | None = None, database_url: str | None = None) -> None:
        self.lab, self.index, self.root, self.name, self.password = lab, index, root, name, password
        self.ns = lab.namespaces[index]
        self.ip = lab.host_ip(index)
        self.port = 9001
        args = ["host", "--name", name, "--root", str(root), "--listen", f"{self.ip}:{self.port}",
                "--gateway-push", gateway_push, "--gateway-control", gateway_control,
                "--gateway-key", str(gateway_key), "--capacity", str(capacity)]
        for flag, value in (("--redis-url", redis_url), ("--database-url", database_url),
                            ("--model-cache", model_cache)):
            if value is not None:
                args += [flag, str(value)]
        done = subprocess.run([PYTHON, str(ROOT / "scripts/setup_worker_host.py"), *args], capture_output=True,
                              text=True, env={**os.environ, "FLEET_HOST_PASSWORD": password})
        assert done.returncode == 0, done.stderr
        import yaml

        self.entry = yaml.safe_load(done.stdout.split("(hosts:), with the password in the named environment "
                                                      "variable:\n", 1)[1])[0]
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://{self.ip}:{self.port}"

    def settings(self, **overrides: object) -> dict[str, object]:
        """Its entry for the gateway's `hosts:`, the password inline."""
        entry = {k: v for k, v in self.entry.items() if k != "password_env"}
        return {**entry, "password": self.password, **overrides}

    def start(self, timeout: float = 20.0) -> WorkerHost:
        log = open(self.root / "logs/supervisord.stdout", "ab")  # noqa: SIM115 - handed to the child
        self.proc = subprocess.Popen(["ip", "netns", "exec", self.ns, str(Path(PYTHON).parent / "supervisord"), "-n",
                                      "-c", str(self.root / "supervisord.conf")], stdout=log, stderr=log,
                                     stdin=subprocess.DEVNULL, start_new_session=True)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.state() == "RUNNING":
                return self
            assert self.proc.poll() is None, (self.root / "logs/supervisord.log").read_text()[-2000:]
            time.sleep(0.1)
        raise AssertionError(f"supervisord of {self.name} did not come up")

    def rpc(self, method: str, *args: object) -> object:
        import xmlrpc.client

        proxy = xmlrpc.client.ServerProxy(f"http://fleet:{self.password}@{self.ip}:{self.port}/RPC2")
        return getattr(proxy, method)(*args)

    def state(self) -> str | None:
        try:
            return str(self.rpc("supervisor.getState")["statename"])  # type: ignore[index]
        except Exception:
            return None

    def programs(self) -> dict[str, tuple[str, int]]:
        """Camera program name → (state, pid) on this host; {} when its supervisord does not answer."""
        try:
            infos = self.rpc("supervisor.getAllProcessInfo")
        except Exception:
            return {}
        return {i["name"]: (i["statename"], i["pid"]) for i in infos  # type: ignore[attr-defined]
                if i["name"].startswith("camera-")}

    def running(self) -> set[str]:
        return {n for n, (state, _) in self.programs().items() if state == "RUNNING"}

    def workers(self) -> list[psutil.Process]:
        """Worker processes of this host, supervised or not (found by their spec path)."""
        marker = f"{self.root}/run/specs/"
        out = []
        for proc in psutil.process_iter(["cmdline"]):
            with contextlib.suppress(psutil.Error):
                if any(marker in part for part in proc.info["cmdline"] or []):
                    out.append(proc)
        return out

    def kill(self) -> None:
        """The host dies: its supervisord and every worker, at once (SIGKILL)."""
        if self.proc is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)
        for proc in self.workers():
            with contextlib.suppress(psutil.Error):
                proc.kill()

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            with contextlib.suppress(Exception):
                self.rpc("supervisor.stopAllProcesses", False)
            self.proc.terminate()
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(15)
        self.kill()


class NetnsLab:
    def __init__(self, hosts: int) -> None:
        tag = f"{os.getpid() % 100000}"
        self.subnet = f"10.{100 + os.getpid() % 100}"
        self.namespaces = [f"fleet{tag}{chr(97 + i)}" for i in range(hosts)]
        self.links = [f"fv{tag}{chr(97 + i)}" for i in range(hosts)]
        self._service_added = False
        self.service_ip = f"{self.subnet}.0.1"
        self.forwarders: list[TcpForwarder] = []
        self.hosts: list[WorkerHost] = []

    def host_ip(self, index: int) -> str:
        return f"{self.subnet}.{index + 1}.2"

    def __enter__(self) -> NetnsLab:
        try:
            # on the root namespace's loopback: always up, reached from every host through its own link
            _ip("addr", "add", f"{self.service_ip}/32", "dev", "lo")
            self._service_added = True
            # a host whose link is down is unreachable, as on a real network (not routed out by default)
            _ip("route", "add", "unreachable", f"{self.subnet}.0.0/16", "metric", "1000")
            for i, (ns, link) in enumerate(zip(self.namespaces, self.links, strict=True)):
                peer = f"{link}p"
                subprocess.run(["ip", "netns", "add", ns], check=True, capture_output=True)
                _ip("link", "add", link, "type", "veth", "peer", "name", peer)
                _ip("link", "set", peer, "netns", ns)
                _ip("addr", "add", f"{self.subnet}.{i + 1}.1/24", "dev", link)
                _ip("link", "set", link, "up")
                _ip("addr", "add", f"{self.host_ip(i)}/24", "dev", peer, ns=ns)
                _ip("link", "set", peer, "up", ns=ns)
                _ip("link", "set", "lo", "up", ns=ns)
                _ip("route", "add", "default", "via", f"{self.subnet}.{i + 1}.1", ns=ns)
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, kind: type[BaseException] | None, err: BaseException | None, tb: TracebackType | None) -> None:
        self.close()

    def forward(self, target_host: str, target_port: int) -> int:
        """A root-namespace service reachable by the hosts at service_ip:<returned port>."""
        forwarder = TcpForwarder(self.service_ip, 0, (target_host, target_port))
        self.forwarders.append(forwarder)
        return forwarder.port

    def host(self, index: int, root: Path, **options: object) -> WorkerHost:
        host = WorkerHost(self, index, root, **options)  # type: ignore[arg-type]
        self.hosts.append(host)
        return host

    def link_down(self, index: int) -> None:
        _ip("link", "set", self.links[index], "down")

    def link_up(self, index: int) -> None:
        _ip("link", "set", self.links[index], "up")
        # the address's routes went with the link: the host's subnet is routed again once it is up
        with contextlib.suppress(RuntimeError):
            _ip("route", "replace", f"{self.subnet}.{index + 1}.0/24", "dev", self.links[index])

    def close(self) -> None:
        for host in self.hosts:
            with contextlib.suppress(Exception):
                host.stop()
        for forwarder in self.forwarders:
            forwarder.close()
        for ns in self.namespaces:
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)
        for link in self.links:
            subprocess.run(["ip", "link", "del", link], capture_output=True)
        if self._service_added:
            subprocess.run(["ip", "addr", "del", f"{self.service_ip}/32", "dev", "lo"], capture_output=True)
            subprocess.run(["ip", "route", "del", "unreachable", f"{self.subnet}.0.0/16", "metric", "1000"],
                           capture_output=True)
