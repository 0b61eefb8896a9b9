"""The worker host's agent (`fleet.*` in its supervisord) and the gateway's `hosts:` settings: what the
network may and may not decide on a host."""

from __future__ import annotations

import json
import stat
from pathlib import Path
from typing import Any

import pytest
import zmq.auth
from pydantic import ValidationError

from detector_worker.config.spec import WorkerSpec
from gateway.hosts.agent import FleetAgent, HostAgentSettings
from gateway.hosts.settings import HostSettings
from gateway.settings import GatewaySettings


@pytest.fixture
def keys(tmp_path: Path) -> dict[str, str]:
    out = {}
    for name in ("gateway", "host", "other"):
        (tmp_path / "keys").mkdir(exist_ok=True)
        public, _ = zmq.auth.create_certificates(tmp_path / "keys", name)
        out[name] = zmq.auth.load_certificate(public)[0].decode()
    return out


@pytest.fixture
def agent(tmp_path: Path, keys: dict[str, str]) -> FleetAgent:
    root = tmp_path / "host"
    return FleetAgent(HostAgentSettings.model_validate({
        "name": "host-a", "python": "/srv/fleet/.venv/bin/python", "project_dir": "/srv/fleet",
        "programs_dir": str(root / "supervisord.d"), "specs_dir": str(root / "specs"), "log_dir": str(root / "logs"),
        "model_cache_dir": str(root / "cache"), "outbox_dir": str(root / "outbox"),
        "bus": {"push_endpoint": "tcp://10.0.0.1:5555", "control_endpoint": "tcp://10.0.0.1:5556",
                "curve": {"server_public_key": keys["gateway"],
                          "secret_key_file": str(tmp_path / "keys/host.key_secret")}},
        "stores": {"redis_url": "redis://10.0.0.1:6379/0"}}))


def spec_json(camera: str = "cam-1", **changes: Any) -> str:
    spec = {"camera_id": camera, "source": {"kind": "rtsp", "url": "rtsp://10.0.0.9/stream"},
            "bus": {"push_endpoint": "ipc:///gateway/run/bus-results.sock",
                    "control_endpoint": "ipc:///gateway/run/bus-control.sock"},
            "log": {"directory": "/gateway/logs"}, "model_cache_dir": "/gateway/cache", "placement_epoch": 7,
            **changes}
    return json.dumps(spec)


def test_apply_writes_the_hosts_own_paths_bus_and_stores_whatever_the_gateway_sent(agent: FleetAgent) -> None:
    s = agent.settings
    out = agent.apply({"camera-cam-1": {"spec": spec_json(), "autostart": True, "startsecs": 5}})
    assert out == {"changed": ["camera-cam-1"], "errors": {}}
    spec = WorkerSpec.model_validate_json((s.specs_dir / "cam-1.json").read_text())
    assert spec.bus.push_endpoint == "tcp://10.0.0.1:5555" and spec.bus.curve is not None
    assert spec.stores.redis_url == "redis://10.0.0.1:6379/0" and spec.stores.outbox_dir == s.outbox_dir
    assert spec.model_cache_dir == s.model_cache_dir and spec.log.directory == s.log_dir
    assert spec.placement_epoch == 7  # the gateway's to decide
    assert stat.S_IMODE((s.specs_dir / "cam-1.json").stat().st_mode) == 0o600
    program = (s.programs_dir / "camera-cam-1.conf").read_text()
    assert "command=/srv/fleet/.venv/bin/python -m detector_worker.cli --spec " + str(s.specs_dir) in program
    assert "startsecs=5" in program and "/gateway" not in program
    again = agent.apply({"camera-cam-1": {"spec": spec_json(), "autostart": True, "startsecs": 5}})
    assert again == {"changed": [], "errors": {}}


def test_a_bad_item_is_refused_alone_and_keeps_its_files(agent: FleetAgent) -> None:
    s = agent.settings
    agent.apply({"camera-cam-1": {"spec": spec_json()}, "camera-cam-2": {"spec": spec_json("cam-2")}})
    out = agent.apply({
        "camera-cam-1": {"spec": spec_json(max_fps=3.0)},
        "camera-cam-2": {"spec": spec_json("cam-2", source={"url": "file:///etc/passwd"})},
        "camera-x": {"spec": spec_json("cam-3")},  # a name that is not the spec's program
        "camera-cam-4": {"spec": spec_json("cam-4"), "startsecs": "5\nuser=root"},
        "camera-cam-5": "not a struct",
    })
    assert out["changed"] == ["camera-cam-1"]
    assert set(out["errors"]) == {"camera-cam-2", "camera-x", "camera-cam-4", "camera-cam-5"}
    assert (s.programs_dir / "camera-cam-2.conf").exists() and (s.specs_dir / "cam-2.json").exists()
    assert not (s.programs_dir / "camera-cam-4.conf").exists()
    assert sorted(p.name for p in s.programs_dir.iterdir()) == ["camera-cam-1.conf", "camera-cam-2.conf"]


def test_cameras_no_longer_asked_for_are_removed(agent: FleetAgent) -> None:
    s = agent.settings
    agent.apply({"camera-cam-1": {"spec": spec_json()}, "camera-cam-2": {"spec": spec_json("cam-2")}})
    agent.apply({"camera-cam-2": {"spec": spec_json("cam-2")}})
    assert [p.name for p in s.programs_dir.iterdir()] == ["camera-cam-2.conf"]
    assert [p.name for p in s.specs_dir.iterdir()] == ["cam-2.json"]
    assert agent.getInfo()["programs"] == ["camera-cam-2"]


def test_a_request_that_is_not_a_struct_of_cameras_changes_nothing(agent: FleetAgent) -> None:
    agent.apply({"camera-cam-1": {"spec": spec_json()}})
    out = agent.apply(["camera-cam-1"])  # type: ignore[arg-type]
    assert out["errors"] and (agent.settings.programs_dir / "camera-cam-1.conf").exists()


def host(keys: dict[str, str], **changes: Any) -> dict[str, Any]:
    return {"name": "host-a", "url": "http://10.0.0.11:9001", "username": "fleet", "password": "pw",
            "capacity": 4, "bus_public_key": keys["host"], **changes}


@pytest.mark.parametrize(("changes", "phrase"), [
    ({"url": "http://8.8.8.8:9001"}, "not a private address"),
    ({"url": "http://fleet:pw@10.0.0.11:9001"}, "credentials go in username/password"),
    ({"url": "https://10.0.0.11:9001"}, "http://ADDRESS:PORT"),
    ({"url": "http://10.0.0.11"}, "http://ADDRESS:PORT"),
    ({"password_env": "HOST_A_PW"}, "exactly one of password and password_env"),
    ({"name": "Host A"}, "name"),
    ({"username": "fleet\nuser=root"}, "username"),
    ({"bus_public_key": "short"}, "bus_public_key"),
])
def test_host_settings_refuse_what_is_unsafe(keys: dict[str, str], changes: dict[str, Any], phrase: str) -> None:
    with pytest.raises(ValidationError, match=phrase):
        HostSettings.model_validate(host(keys, **changes))


def test_hosts_need_the_gateways_key_and_distinct_names_and_keys(keys: dict[str, str], tmp_path: Path) -> None:
    key_file = str(tmp_path / "keys/gateway.key_secret")
    with pytest.raises(ValidationError, match="secret_key_file"):
        GatewaySettings.model_validate({"hosts": [host(keys)]})
    with pytest.raises(ValidationError, match="names must be unique"):
        GatewaySettings.model_validate({"hosts": [host(keys), host(keys, bus_public_key=keys["other"])],
                                        "remote": {"secret_key_file": key_file}})
    with pytest.raises(ValidationError, match="share a bus key"):
        GatewaySettings.model_validate({"hosts": [host(keys), host(keys, name="host-b")],
                                        "remote": {"secret_key_file": key_file}})
    ok = GatewaySettings.model_validate({"hosts": [host(keys)], "remote": {"secret_key_file": key_file}})
    assert ok.hosts[0].secret() == "pw"
