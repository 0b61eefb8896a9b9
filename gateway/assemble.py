"""Building a gateway from its settings: every part made here and handed to the others.

Start-up state comes from disk: cameras.yaml, and the spec files a previous gateway process
left (the backend's cameras it was running). Tests build the same parts with fakes instead.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from detector_worker.config.base import SpecError
from detector_worker.config.cameras_file import CamerasFile, load_cameras_file
from detector_worker.config.spec import Subscription, load_spec

from .backend import BackendChannel
from .bus import GatewayBus, RemoteBus
from .core import Gateway
from .desired import DesiredState
from .hosts.fleet import HostFleet
from .metrics import GatewayMetrics
from .ports import Supervisor
from .server import GatewayServer
from .settings import GatewaySettings
from .state import CameraState
from .supervisor.bridge import SupervisorBridge
from .supervisor.local import LocalSupervisor
from .supervisor.rpc import SupervisorClient

log = logging.getLogger("gateway")


@dataclass(frozen=True)
class Assembled:
    gateway: Gateway
    server: GatewayServer


def read_cameras_file(settings: GatewaySettings) -> CamerasFile | None:
    """cameras.yaml, or None without one; SpecError (one line) when it can't be used."""
    path = settings.cameras_file
    if path is None or not path.exists():
        return None
    return load_cameras_file(path)


def inherited_subscriptions(settings: GatewaySettings, cameras: CamerasFile | None) -> list[Subscription]:
    """The backend's subscriptions that the spec files of a previous gateway process hold.

    A restarted gateway knows nothing of the backend until it reconnects: planning without these
    would remove every backend camera at once and start it again when the backend re-declares
    it. They are kept like a disconnected backend's cameras: until the backend declares its
    list, or for `process_cleanup_timeout`.
    """
    static = {f"{display};{name}" for name, cam in (cameras.cameras if cameras else {}).items()
              for display in cam.displays}
    found: list[Subscription] = []
    for path in sorted(settings.specs_dir.glob("*.json")):
        try:
            spec = load_spec(path)
        except SpecError as err:
            log.warning("not inheriting a camera from %s", err)
            continue
        found += [s for s in spec.subscriptions if s.subscription_identifier not in static]
    if found:
        log.info("kept %d backend subscription(s) of the previous gateway until the backend returns", len(found))
    return found


def assemble(settings: GatewaySettings) -> Assembled:
    try:
        cameras = read_cameras_file(settings)
    except SpecError as err:
        log.error("cameras.yaml not applied, starting without static cameras: %s", err)
        cameras = None
    states: dict[str, CameraState] = {}
    metrics = GatewayMetrics(lambda: list(states.values()))
    channel = BackendChannel(metrics.backend_dropped.inc)
    desired = DesiredState(settings, cameras, inherited_subscriptions(settings, cameras))
    supervisor: Supervisor
    remote: RemoteBus | None = None
    if settings.hosts:
        fleet = HostFleet(settings.hosts, settings.remote, settings.specs_dir.parent / "placements.json",
                          settings.specs_dir, labels_of=desired.host_labels)
        metrics.watch_hosts(fleet.describe)
        supervisor = fleet
        assert settings.remote.secret_key_file is not None  # GatewaySettings requires it with hosts
        remote = RemoteBus(settings.remote.listen_push, settings.remote.listen_control,
                           settings.remote.secret_key_file, {h.bus_public_key: h.name for h in settings.hosts},
                           metrics.bus_refused.inc)
    else:
        supervisor = LocalSupervisor(SupervisorBridge(SupervisorClient(settings.supervisor_socket),
                                                      settings.programs_dir), settings.specs_dir)
    gateway = Gateway(
        settings, desired=desired, supervisor=supervisor,
        bus=GatewayBus(settings.bus.push_endpoint, settings.bus.control_endpoint, remote), backend=channel,
        metrics=metrics, states=states)
    return Assembled(gateway, GatewayServer(settings, gateway, channel))


def reload_cameras_file(gateway: Gateway) -> bool:
    """Re-read cameras.yaml (SIGHUP, or it changed); a file that can't be used keeps the previous cameras."""
    try:
        cameras = read_cameras_file(gateway.settings)
    except SpecError as err:
        log.error("cameras.yaml not applied, keeping the previous cameras: %s", err)
        return False
    gateway.desired.set_cameras_file(cameras)
    gateway.mark_dirty()
    return True
