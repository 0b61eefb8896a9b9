"""The gateway's view of its worker hosts (`hosts:` and `remote:` in conf/gateway.yaml).

With no hosts listed, nothing changes: cameras run under this machine's supervisord, on the
`ipc://` bus. With hosts listed, every camera is placed on exactly one of them (gateway/hosts/fleet.py)
and their workers reach the gateway over `tcp://` with CURVE (`remote.listen_*`).
"""

from __future__ import annotations

import ipaddress
import os
import urllib.parse
from pathlib import Path
from typing import Annotated

from pydantic import Field, SecretStr, field_validator, model_validator

from detector_worker.config.base import StrictModel
from detector_worker.config.spec import CurveKey

HostName = Annotated[str, Field(pattern=r"^[a-z0-9][a-z0-9-]{0,31}$")]
Label = Annotated[str, Field(pattern=r"^[a-z0-9][a-z0-9_.-]{0,31}$")]
_USERNAME = r"^[A-Za-z0-9_.-]{1,64}$"
_ENV_NAME = r"^[A-Z_][A-Z0-9_]{0,63}$"


def _private_http_url(value: str) -> str:
    """http://ADDRESS:PORT of an `inet_http_server`: never a public address (it speaks XML-RPC with
    basic auth in the clear, so it belongs on a private network or a VPN)."""
    parts = urllib.parse.urlsplit(value)
    if parts.scheme != "http" or not parts.hostname or parts.port is None:
        raise ValueError("must be http://ADDRESS:PORT of the host's supervisord inet_http_server")
    if parts.username or parts.password or parts.path not in ("", "/", "/RPC2") or parts.query or parts.fragment:
        raise ValueError("must be just http://ADDRESS:PORT (credentials go in username/password)")
    try:
        address = ipaddress.ip_address(parts.hostname)
    except ValueError:
        return value  # a name: what it resolves to is the operator's network
    if address.is_global or address.is_multicast or address.is_unspecified:
        raise ValueError(f"{address} is not a private address: supervisord's XML-RPC must not face the internet")
    return value


class HostSettings(StrictModel):
    name: HostName
    url: Annotated[str, Field(max_length=200)]  # its supervisord: http://10.0.0.11:9001
    username: Annotated[str, Field(pattern=_USERNAME)]
    password: SecretStr | None = None  # or, better, the name of an environment variable holding it:
    password_env: Annotated[str, Field(pattern=_ENV_NAME)] | None = None
    capacity: int = Field(ge=0, le=10_000)  # camera slots
    labels: list[Label] = Field(default_factory=list, max_length=32)  # e.g. [gpu]
    bus_public_key: CurveKey  # the host's CURVE public key: its workers may use the bus

    @field_validator("url")
    @classmethod
    def _check_url(cls, value: str) -> str:
        return _private_http_url(value)

    @model_validator(mode="after")
    def _one_password(self) -> HostSettings:
        if (self.password is None) == (self.password_env is None):
            raise ValueError("give exactly one of password and password_env")
        return self

    def secret(self) -> str:
        """The XML-RPC password; ValueError when its environment variable is not set."""
        if self.password is not None:
            return self.password.get_secret_value()
        value = os.environ.get(str(self.password_env))
        if not value:
            raise ValueError(f"host {self.name}: environment variable {self.password_env} is not set")
        return value


def _tcp_bind(value: str) -> str:
    parts = urllib.parse.urlsplit(value)
    if parts.scheme != "tcp" or not parts.hostname or parts.port is None:
        raise ValueError("must be tcp://ADDRESS:PORT (the address workers of other hosts reach)")
    return value


class RemoteSettings(StrictModel):
    """The bus for other hosts' workers, and how hosts are watched."""

    listen_push: str = "tcp://0.0.0.0:5555"  # the gateway's PULL for their results
    listen_control: str = "tcp://0.0.0.0:5556"  # its ROUTER for their control
    secret_key_file: Path | None = None  # the gateway's CURVE key pair (zmq.auth .key_secret); required with hosts
    check_interval_s: float = Field(1.0, gt=0, le=60)  # each host's supervisord is asked this often
    down_after_s: float = Field(5.0, gt=0, le=3600)  # no answer this long: the host is down, its cameras move
    rpc_timeout_s: float = Field(2.0, gt=0, le=60)

    @field_validator("listen_push", "listen_control")
    @classmethod
    def _check_endpoints(cls, value: str) -> str:
        return _tcp_bind(value)

    @model_validator(mode="after")
    def _down_after_checks(self) -> RemoteSettings:
        if self.down_after_s < self.check_interval_s:
            raise ValueError("down_after_s must be at least check_interval_s")
        return self


def check_hosts(hosts: list[HostSettings], remote: RemoteSettings) -> None:
    """Rules across the two sections (GatewaySettings calls this)."""
    names = [h.name for h in hosts]
    if len(names) != len(set(names)):
        raise ValueError("host names must be unique")
    keys = [h.bus_public_key for h in hosts]
    if len(keys) != len(set(keys)):
        raise ValueError("hosts must not share a bus key: each host's key is its identity on the bus")
    if hosts and remote.secret_key_file is None:
        raise ValueError("remote.secret_key_file (the gateway's CURVE key pair) is required with hosts")
