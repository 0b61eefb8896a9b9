"""The fleet's agent on a worker host: a supervisord XML-RPC namespace (`fleet.*`) that writes the
camera spec files and `[program:]` entries the gateway asks for, on this host's own paths.

Why an rpcinterface: supervisord can add and remove programs over XML-RPC but cannot write
their config, and the gateway must not need a second channel (ssh, a shared disk) to each host.
Installed with the host (scripts/setup_worker_host.py) as

    [rpcinterface:fleet]
    supervisor.rpcinterface_factory = gateway.hosts.agent:make_fleet_rpcinterface
    host_config = /opt/fleet/conf/host.yaml

it shares supervisord's HTTP server and its username/password. The gateway is trusted to say
*which* cameras run here, not *how* this host runs them: every spec is validated again, and what
is host-local (the bus endpoints and CURVE keys, store URLs, cache/log/outbox paths, the Python
and project paths of the program entry) comes from this host's `host.yaml`, never from the
request. Program entries are rendered here by the same renderer as on the gateway's host, which
refuses unsafe values instead of escaping them.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from pydantic import Field, ValidationError

from detector_worker.config.base import SpecError, StrictModel, describe_validation_error, read_yaml_file
from detector_worker.config.spec import BusSettings, WorkerSpec
from detector_worker.logs import log_path

from ..supervisor.local import remove_other_spec_files, spec_path, write_spec_files
from ..supervisor.programs import PREFIX, ProgramSpec, UnsafeValue, program_for_camera, write_programs

API_VERSION = 1
MAX_CAMERAS = 10_000  # per request: far above any host's capacity, far below what would exhaust memory


class HostStores(StrictModel):
    redis_url: str | None = None  # as this host reaches the stores (else the gateway's, else the environment)
    database_url: str | None = None


class HostAgentSettings(StrictModel):
    """A worker host's own configuration (`host.yaml`), written by scripts/setup_worker_host.py."""

    name: str = Field(pattern=r"^[a-z0-9][a-z0-9-]{0,31}$")
    python: Path
    project_dir: Path
    programs_dir: Path
    specs_dir: Path
    log_dir: Path
    model_cache_dir: Path
    outbox_dir: Path
    bus: BusSettings  # the gateway's tcp:// endpoints as this host reaches them, with `curve` keys
    stores: HostStores = HostStores()

    @classmethod
    def load(cls, path: Path) -> HostAgentSettings:
        try:
            return cls.model_validate(read_yaml_file(path) or {})
        except ValidationError as err:
            raise SpecError(describe_validation_error(err, str(path))) from None


def _localize(spec: WorkerSpec, host: HostAgentSettings) -> WorkerSpec:
    """The gateway's spec with everything host-local replaced by this host's own settings."""
    stores = spec.stores.model_copy(update={
        "outbox_dir": host.outbox_dir,
        **({"redis_url": host.stores.redis_url} if host.stores.redis_url else {}),
        **({"database_url": host.stores.database_url} if host.stores.database_url else {}),
    })
    return spec.model_copy(update={
        "bus": host.bus.model_copy(update={k: getattr(spec.bus, k) for k in
                                           ("heartbeat_interval_s", "status_interval_s", "snapshot_interval_s")}),
        "log": spec.log.model_copy(update={"directory": host.log_dir}),
        "stores": stores,
        "model_cache_dir": host.model_cache_dir,
    })


def _int(options: dict[str, Any], key: str, default: int) -> int:
    value = options.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int):
        raise UnsafeValue(key, "must be an integer")
    return value


class FleetAgent:
    """The `fleet` namespace. Public methods are XML-RPC methods; they run in supervisord's own loop,
    so each does only quick local file work."""

    def __init__(self, settings: HostAgentSettings) -> None:
        self.settings = settings
        for d in (settings.programs_dir, settings.specs_dir, settings.log_dir, settings.outbox_dir):
            d.mkdir(parents=True, exist_ok=True)
        settings.specs_dir.chmod(0o700)  # specs hold camera URLs with their credentials

    def getInfo(self) -> dict[str, Any]:
        """This host: its name, the agent's API version, its CPUs and load, and its camera programs."""
        load1, _, _ = os.getloadavg()
        cameras = sorted(p.stem for p in self.settings.programs_dir.glob(f"{PREFIX}*.conf"))
        return {"name": self.settings.name, "api": API_VERSION, "cpus": os.cpu_count() or 1,
                "load1": round(load1, 2), "programs": cameras}

    def apply(self, cameras: dict[str, Any]) -> dict[str, Any]:
        """Make this host hold exactly `cameras` (program name → {"spec": JSON text, "autostart",
        "startsecs", "startretries", "stopwaitsecs"}): spec files and program entries, written
        atomically, unchanged files untouched, others removed. Applies nothing to supervisord (the
        gateway calls reloadConfig/addProcessGroup next). Returns {"changed": program names whose
        spec changed, "errors": {program name: why}}; an item in error keeps its previous files."""
        if not isinstance(cameras, dict) or len(cameras) > MAX_CAMERAS:
            return {"changed": [], "errors": {"request": f"expected a struct of at most {MAX_CAMERAS} cameras"}}
        errors: dict[str, str] = {}
        programs: dict[str, ProgramSpec] = {}
        specs: dict[str, WorkerSpec] = {}
        for name, options in cameras.items():
            try:
                program, spec = self._camera(str(name), options)
            except (ValueError, SpecError) as err:  # ValidationError and UnsafeValue are ValueErrors
                errors[str(name)[:80]] = _one_line(err)
                continue
            programs[name], specs[name] = program, spec
        changed = write_spec_files(self.settings.specs_dir, specs)
        write_programs(self.settings.programs_dir, programs, keep=set(errors))
        # an item in error keeps its spec too (program names are camera-<slug> but for reserved slugs)
        remove_other_spec_files(self.settings.specs_dir,
                                {s.slug for s in specs.values()} | {n.removeprefix(PREFIX) for n in errors})
        return {"changed": sorted(changed), "errors": errors}

    def _camera(self, name: str, options: Any) -> tuple[ProgramSpec, WorkerSpec]:
        if not isinstance(options, dict) or not isinstance(options.get("spec"), str):
            raise ValueError("expected a struct with a \"spec\" (JSON text)")
        spec = _localize(WorkerSpec.model_validate_json(options["spec"]), self.settings)
        s = self.settings
        program = program_for_camera(spec.camera_id, python=s.python, spec_path=spec_path(s.specs_dir, spec.slug),
                                     project_dir=s.project_dir, log_dir=s.log_dir,
                                     stdout_logfile=log_path(s.log_dir, spec.slug), log_max_mb=spec.log.max_mb,
                                     log_backups=spec.log.backups)
        if program.name != name:
            raise ValueError(f"the spec is of program {program.name!r}, not {name[:80]!r}")
        autostart = options.get("autostart", True)
        if not isinstance(autostart, bool):
            raise UnsafeValue("autostart", "must be a boolean")
        program = ProgramSpec(**{**program.__dict__, "autostart": autostart,
                                 "startsecs": _int(options, "startsecs", program.startsecs),
                                 "startretries": _int(options, "startretries", program.startretries),
                                 "stopwaitsecs": _int(options, "stopwaitsecs", program.stopwaitsecs)})
        return program, spec


def _one_line(err: Exception) -> str:
    if isinstance(err, ValidationError):
        return describe_validation_error(err, "spec")[:500]
    return str(err).splitlines()[0][:500] if str(err) else type(err).__name__


def make_fleet_rpcinterface(supervisord: object, **config: str) -> FleetAgent:
    """supervisord's rpcinterface factory: `host_config` names this host's host.yaml."""
    path = config.get("host_config")
    if not path:
        raise ValueError("[rpcinterface:fleet] needs host_config = /path/to/host.yaml")
    return FleetAgent(HostAgentSettings.load(Path(path)))
