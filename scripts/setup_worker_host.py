"""Set up the fleet's CURVE keys, or a worker host, in one command (docs/operations.md, "Several hosts").

    # once per fleet, on the gateway's machine: the gateway's bus key pair
    python scripts/setup_worker_host.py gateway-keys --dir run/keys

    # on each worker host (the project installed there, `make bootstrap` done):
    FLEET_HOST_PASSWORD=... python scripts/setup_worker_host.py host --name host-a --root /srv/fleet-host \\
        --listen 10.0.0.11:9001 --gateway-push tcp://10.0.0.1:5555 --gateway-control tcp://10.0.0.1:5556 \\
        --gateway-key run/keys/gateway.key [--redis-url ...] [--database-url ...]

`host` writes, under --root: `supervisord.conf` (inet_http_server on the private --listen address
with the username and the SHA-1 of the password, the `fleet` agent namespace, the include dir
`supervisord.d/`), `host.yaml` (the agent's settings), the host's CURVE key pair in `keys/`
(secret half 0600), and empty `run/`, `logs/`, `supervisord.d/`. It prints the `hosts:` entry to add
to the gateway's settings (with the host's public key) and the command that starts supervisord.
Values are checked, not escaped: anything that is not plainly safe in a supervisord file is refused.
"""

from __future__ import annotations

import argparse
import hashlib
import ipaddress
import os
import re
import sys
from pathlib import Path

import yaml
import zmq.auth

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from gateway.hosts.agent import HostAgentSettings  # noqa: E402
from gateway.supervisor.programs import quote_path  # noqa: E402

_NAME = re.compile(r"^[a-z0-9][a-z0-9-]{0,31}$")
_USERNAME = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")


def _key_pair(directory: Path, name: str) -> tuple[Path, Path]:
    directory.mkdir(parents=True, exist_ok=True)
    directory.chmod(0o700)
    public, secret = (directory / f"{name}.key", directory / f"{name}.key_secret")
    if not secret.exists():
        zmq.auth.create_certificates(directory, name)
    secret.chmod(0o600)
    return public, secret


def _public_key(path: Path) -> str:
    public, _ = zmq.auth.load_certificate(path)
    return public.decode()


def _private_listen(value: str) -> tuple[str, int]:
    host, _, port = value.rpartition(":")
    address = ipaddress.ip_address(host.strip("[]"))
    if address.is_global or address.is_unspecified or address.is_multicast:
        raise SystemExit(f"--listen {value}: supervisord's XML-RPC must listen on a private address, not {address}")
    return str(address), int(port)


def gateway_keys(args: argparse.Namespace) -> int:
    public, secret = _key_pair(args.dir, "gateway")
    print(f"gateway key pair: {secret} (keep it 0600 on the gateway); public: {public}")
    print(f"remote:\n  secret_key_file: {secret}")
    print(f"# give every worker host the public key file: {public}")
    return 0


def host(args: argparse.Namespace) -> int:
    if not _NAME.fullmatch(args.name):
        raise SystemExit("--name: [a-z0-9][a-z0-9-]{0,31}")
    if not _USERNAME.fullmatch(args.username):
        raise SystemExit("--username: [A-Za-z0-9_.-]{1,64}")
    password = os.environ.get(args.password_env)
    if not password:
        raise SystemExit(f"set the XML-RPC password in ${args.password_env}")
    address, port = _private_listen(args.listen)
    root: Path = args.root.resolve()
    for d in ("run", "run/specs", "logs", "supervisord.d", "cache", "outbox"):
        (root / d).mkdir(parents=True, exist_ok=True)
    (root / "run").chmod(0o700)
    _, secret = _key_pair(root / "keys", "host")
    settings = HostAgentSettings.model_validate({
        "name": args.name, "python": args.python, "project_dir": str(ROOT),
        "programs_dir": str(root / "supervisord.d"), "specs_dir": str(root / "run/specs"),
        "log_dir": str(root / "logs"), "model_cache_dir": str(args.model_cache or root / "cache"),
        "outbox_dir": str(root / "outbox"),
        "bus": {"push_endpoint": args.gateway_push, "control_endpoint": args.gateway_control,
                "curve": {"server_public_key": _public_key(args.gateway_key), "secret_key_file": str(secret)}},
        "stores": {"redis_url": args.redis_url, "database_url": args.database_url},
    })
    (root / "host.yaml").write_text(yaml.safe_dump(settings.model_dump(mode="json"), sort_keys=False))
    digest = hashlib.sha1(password.encode()).hexdigest()
    conf = "\n".join([
        f"; Written by scripts/setup_worker_host.py for worker host {args.name}.",
        "[inet_http_server]",
        f"port={address}:{port}",
        f"username={args.username}",
        f"password={{SHA}}{digest}",
        "[supervisord]",
        f"logfile={quote_path('logfile', root / 'logs/supervisord.log')}",
        f"pidfile={quote_path('pidfile', root / 'run/supervisord.pid')}",
        f"childlogdir={quote_path('childlogdir', root / 'logs')}",
        f"directory={quote_path('directory', ROOT)}",
        "[rpcinterface:supervisor]",
        "supervisor.rpcinterface_factory = supervisor.rpcinterface:make_main_rpcinterface",
        "[rpcinterface:fleet]",
        "supervisor.rpcinterface_factory = gateway.hosts.agent:make_fleet_rpcinterface",
        f"host_config = {quote_path('host_config', root / 'host.yaml')}",
        "[supervisorctl]",
        f"serverurl=http://{address}:{port}",
        f"username={args.username}",
        "[include]",
        "files = supervisord.d/*.conf",
        "",
    ])
    (root / "supervisord.conf").write_text(conf)
    entry = {"name": args.name, "url": f"http://{address}:{port}", "username": args.username,
             "password_env": "FLEET_HOST_" + args.name.upper().replace("-", "_") + "_PASSWORD",
             "capacity": args.capacity, "labels": args.label, "bus_public_key": _public_key(root / "keys/host.key")}
    print(f"worker host {args.name} set up in {root}. Start it with:")
    print(f"  {Path(args.python).parent}/supervisord -c {root / 'supervisord.conf'}")
    print("Add to the gateway's settings (hosts:), with the password in the named environment variable:")
    print(yaml.safe_dump([entry], sort_keys=False))
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    keys = sub.add_parser("gateway-keys", help="the gateway's CURVE key pair (once per fleet)")
    keys.add_argument("--dir", type=Path, default=ROOT / "run/keys")
    h = sub.add_parser("host", help="set up this machine as a worker host")
    h.add_argument("--name", required=True)
    h.add_argument("--root", type=Path, required=True)
    h.add_argument("--listen", required=True, help="ADDRESS:PORT (private) of supervisord's XML-RPC")
    h.add_argument("--username", default="fleet")
    h.add_argument("--password-env", default="FLEET_HOST_PASSWORD")
    h.add_argument("--gateway-push", required=True, help="tcp://GATEWAY:PORT (its remote.listen_push)")
    h.add_argument("--gateway-control", required=True, help="tcp://GATEWAY:PORT (its remote.listen_control)")
    h.add_argument("--gateway-key", type=Path, required=True, help="the gateway's public key file (gateway.key)")
    h.add_argument("--capacity", type=int, default=4)
    h.add_argument("--label", action="append", default=[])
    h.add_argument("--redis-url")
    h.add_argument("--database-url")
    h.add_argument("--model-cache", type=Path, help="the model cache (default ROOT/cache; may be shared)")
    h.add_argument("--python", default=sys.executable)
    args = parser.parse_args(argv)
    return gateway_keys(args) if args.command == "gateway-keys" else host(args)


if __name__ == "__main__":
    raise SystemExit(main())
