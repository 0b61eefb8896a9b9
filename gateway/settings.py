"""The gateway's settings: one typed object, read once from `conf/gateway.yaml` and the environment.

Every option is documented in docs/operations.md. `GATEWAY_TOKEN` in the environment overrides `token`, so the
secret need not sit in a file; `GATEWAY_CAMERAS_FILE` overrides `cameras_file`.
"""

from __future__ import annotations

import ipaddress
import os
import sys
from pathlib import Path

from pydantic import Field, ValidationError, model_validator

from detector_worker.config.base import SpecError, StrictModel, describe_validation_error, read_yaml_file
from detector_worker.config.spec import BusSettings, InferenceSettings, ModelPolicy, MotionSettings, ResourceLimits

from .hosts.settings import HostSettings, RemoteSettings, check_hosts

PROJECT_DIR = Path(__file__).resolve().parents[1]


class LogRotation(StrictModel):
    max_size_mb: float = Field(100, gt=0)
    backup_count: int = Field(5, ge=0, le=100)


class SessionProcesses(StrictModel):
    max_concurrent_sessions: int = Field(20, ge=1, le=1000)  # camera workers at most
    process_cleanup_timeout: float = Field(30.0, ge=0, le=3600)  # s a gone backend's cameras survive
    health_check_interval: float = Field(2.0, gt=0, le=3600)  # s between stateReports (the backend's heartbeat)
    heartbeat_timeout: float = Field(15.0, gt=0, le=3600)  # s of worker silence that counts as hung
    startup_timeout: float = Field(600.0, gt=0, le=86400)  # s a worker may take to fetch/convert/open its models
    log_rotation: LogRotation = LogRotation()


class BackendSettings(StrictModel):
    """Who may be the backend, and what it is sent beyond the original worker's messages."""

    # Addresses allowed to connect without the token (an unmodified backend sends none).
    allowed_networks: list[ipaddress.IPv4Network | ipaddress.IPv6Network] = Field(default_factory=list)
    patch_session: bool = False  # send patchSession after a result is written under a session
    relay_static_cameras: bool = False  # send cameras.yaml cameras' detections to the backend too


class GatewaySettings(StrictModel):
    host: str = "127.0.0.1"
    port: int = Field(8001, ge=0, le=65535)  # 0: any free port (tests)
    token: str | None = Field(None, min_length=16)
    max_message_bytes: int = Field(1_048_576, ge=1024)
    project_dir: Path = PROJECT_DIR
    python: Path = Path(sys.executable)
    supervisor_socket: Path = PROJECT_DIR / "run" / "supervisor.sock"
    programs_dir: Path = PROJECT_DIR / "conf" / "supervisord.d"
    specs_dir: Path = PROJECT_DIR / "run" / "specs"
    log_dir: Path = PROJECT_DIR / "logs"
    model_cache_dir: Path = PROJECT_DIR / "build" / "model-cache"
    cameras_file: Path | None = PROJECT_DIR / "cameras.yaml"
    # Browsers: a request whose Host is not one of these names is refused (DNS rebinding), and one whose
    # Origin is neither this gateway itself nor listed is refused (a page elsewhere driving the gateway).
    allowed_hosts: list[str] = Field(default_factory=list)  # beyond localhost, 127.0.0.1, ::1 and `host`
    allowed_origins: list[str] = Field(default_factory=list)  # e.g. ["https://ops.example.com"]
    bus: BusSettings = BusSettings()  # the gateway binds push_endpoint (PULL) and control_endpoint (ROUTER)
    # Worker hosts, each with its own supervisord (docs/operations.md, "Several hosts"); none: this one
    hosts: list[HostSettings] = Field(default_factory=list, max_length=1000)
    remote: RemoteSettings = RemoteSettings()  # their bus (tcp:// with CURVE) and health checks
    backend: BackendSettings = BackendSettings()
    models: ModelPolicy = ModelPolicy()  # which model archives are trusted, and how far
    session_processes: SessionProcesses = SessionProcesses()
    resource_limits: ResourceLimits = ResourceLimits()
    inference: InferenceSettings = InferenceSettings()
    motion: MotionSettings = MotionSettings()  # motion gating of the backend's cameras (cameras.yaml sets its own)
    max_fps: float | None = Field(5.0, gt=0, le=120)  # for the backend's cameras
    redis_url: str | None = None  # overrides archives' own store settings (else REDIS_URL)
    database_url: str | None = None  # (else DATABASE_URL)

    @model_validator(mode="after")
    def _token_off_loopback(self) -> GatewaySettings:
        if not _is_loopback(self.host) and not self.token and not self.backend.allowed_networks:
            raise ValueError(f"host {self.host!r} is not loopback: set a token (GATEWAY_TOKEN) or "
                             "backend.allowed_networks (the backend's addresses, CIDR)")
        return self

    @model_validator(mode="after")
    def _hosts(self) -> GatewaySettings:
        check_hosts(self.hosts, self.remote)
        return self

    @property
    def loopback(self) -> bool:
        return _is_loopback(self.host)

    @property
    def host_names(self) -> frozenset[str]:
        """The names a request may call this gateway by (its Host header, port removed, lower case)."""
        names = {"localhost", "127.0.0.1", "::1", *(h.lower() for h in self.allowed_hosts)}
        if self.host not in ("0.0.0.0", "::", ""):
            names.add(self.host.lower())
        return frozenset(names)


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


_PATH_KEYS = ("supervisor_socket", "programs_dir", "specs_dir", "log_dir", "model_cache_dir", "cameras_file")


def load_settings(path: Path | None, **overrides: object) -> GatewaySettings:
    data: dict[str, object] = {}
    if path is not None:
        data = read_yaml_file(path) or {}
    data.update({k: v for k, v in overrides.items() if v is not None})
    project = Path(str(data.get("project_dir", PROJECT_DIR)))
    for key in _PATH_KEYS:  # relative paths in the file are relative to the project
        value = data.get(key)
        if isinstance(value, str) and not Path(value).is_absolute():
            data[key] = str(project / value)
    remote = data.get("remote")
    key_file = remote.get("secret_key_file") if isinstance(remote, dict) else None
    if isinstance(remote, dict) and isinstance(key_file, str) and not Path(key_file).is_absolute():
        data["remote"] = {**remote, "secret_key_file": str(project / remote["secret_key_file"])}
    if os.environ.get("GATEWAY_TOKEN"):
        data["token"] = os.environ["GATEWAY_TOKEN"]
    if os.environ.get("GATEWAY_CAMERAS_FILE"):  # e.g. a test's own copy; supervisord passes its env on
        data["cameras_file"] = os.environ["GATEWAY_CAMERAS_FILE"]
    try:
        return GatewaySettings.model_validate(data)
    except ValidationError as err:
        raise SpecError(describe_validation_error(err, str(path or "gateway settings"))) from None
