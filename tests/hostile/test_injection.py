"""Injection through every value that reaches a file, a path, a supervisord entry or a URL fetch.

One real fleet for the module. Camera and display ids, session ids, source and model URLs and
the model archives themselves are hostile; after each case:

- program files hold one `[program:camera-<slug>]` section of fixed keys, no URL, no credential,
  no `%`, and supervisord still re-reads its whole config;
- spec files (the only place URLs live) are 0600 in a 0700 directory;
- no file outside the fleet's own directories is created or modified (canary paths under /tmp,
  the project's own program/spec/model-cache directories, /etc/passwd);
- `camera-all` never exists and the event listener keeps running;
- a malicious model archive is never unpacked anywhere, its worker exits saying why, and the
  other camera's worker keeps its pid.
"""

from __future__ import annotations

import base64
import hashlib
import http.server
import io
import json
import re
import shutil
import stat
import threading
import time
import uuid
import xmlrpc.client
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from detector_worker.limits import MAX_ID, MAX_SESSION_ID
from detector_worker.logs import log_path
from detector_worker.naming import camera_slug
from gateway.supervisor.programs import NAME_RE, RESERVED_NAMES
from tests.conftest import MODELS
from tests.fleet import Fleet
from tests.hostile.conftest import MODEL_ID, MODEL_URL
from tests.hostile.harness import (
    GatewayWatch,
    Link,
    errors_of,
    files_under,
    paths_named,
    program_name,
    running_fleet,
)
from tests.rtsp import free_port

pytestmark = pytest.mark.hostile

ROOT = Path(__file__).resolve().parents[2]
TOKEN = uuid.uuid4().hex[:12]  # in every path a hostile value aims at: its absence proves nothing was written
CANARY = Path(f"/tmp/hostile-canary-{TOKEN}")
SECRET = f"Pw{TOKEN}S3cret"  # a password in URLs: must appear in no file but the 0600 spec files
DEAD_PORT = free_port()
SOURCE = f"rtsp://admin:{SECRET}@127.0.0.1:{DEAD_PORT}/stream"
PROGRAM_KEYS = {"command", "directory", "environment", "autostart", "autorestart", "startsecs", "startretries",
                "stopasgroup", "killasgroup", "stopsignal", "stopwaitsecs", "redirect_stderr", "stdout_logfile",
                "stdout_logfile_maxbytes", "stdout_logfile_backups"}


def sub(display: str, camera: str, **extra: Any) -> dict[str, Any]:
    return {"subscriptionIdentifier": f"{display};{camera}", "rtspUrl": SOURCE, "modelUrl": MODEL_URL,
            "modelId": MODEL_ID, "modelName": "stand-in", **extra}


# ---------------------------------------------------------------------------------------------
# Fixtures: the fleet, a malicious archive server, snapshots of everything outside the fleet


class Site:
    def __init__(self, fleet: Fleet, cache: Path, served: Path, archive_port: int) -> None:
        self.fleet = fleet
        self.cache = cache
        self.served = served
        self.archive_port = archive_port
        self.watch = GatewayWatch(fleet)
        self.link = Link(fleet)
        self.benign_pid: int | None = None
        self.good_entries: list[str] = []  # the model cache's entries at the start (the good model)
        self.events_pid = int(fleet.rpc().supervisor.getProcessInfo("camera-events")["pid"])

    def send(self, msg: dict[str, Any]) -> list[dict[str, Any]]:
        """Send one message; the `error`s it caused (harness.Link attributes replies exactly)."""
        return errors_of(self.link.exchange(json.dumps(msg)))

    def cameras_become(self, cameras: set[str], timeout: float = 30) -> None:
        """Wait until supervisord runs exactly these cameras' programs and the spec directory holds
        exactly their spec files (an apply removes a camera's spec after its program)."""
        names = {program_name(c) for c in cameras}
        specs = {f"{camera_slug(c)}.json" for c in cameras}
        spec_dir = self.fleet.base / "run" / "specs"
        self.fleet.wait_for(lambda: set(self.fleet.programs()) == names and
                            {p.name for p in spec_dir.glob("*.json")} == specs, timeout,
                            f"programs {sorted(names)[:8]} (have {sorted(self.fleet.programs())[:8]})")

    def start_benign(self) -> None:
        assert not self.send({"type": "setSubscriptionList", "payload": [sub("display-b", "benign")]})
        self.fleet.wait_for(lambda: self.fleet.programs().get(program_name("benign"), ("",))[0] == "RUNNING", 40,
                            "the benign camera RUNNING")
        self.benign_still_running()

    def benign_still_running(self) -> None:
        programs = self.fleet.programs()
        state, pid = programs[program_name("benign")]
        assert state == "RUNNING", programs
        if self.benign_pid is None:
            self.benign_pid = pid
        assert pid == self.benign_pid, "the benign camera's worker was restarted"


def _zip(members: list[tuple[str | zipfile.ZipInfo, bytes]]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in members:
            zf.writestr(name, data)
    return buf.getvalue()


def _declare_size(archive: bytes, member: str, size: int) -> bytes:
    """Patch the central directory's uncompressed size of `member` (what a zip bomb lies with)."""
    entry = archive.index(b"PK\x01\x02")
    while True:
        name_len = int.from_bytes(archive[entry + 28:entry + 30], "little")
        if archive[entry + 46:entry + 46 + name_len] == member.encode():
            break
        entry = archive.index(b"PK\x01\x02", entry + 4)
    return archive[:entry + 24] + size.to_bytes(4, "little") + archive[entry + 28:]


def build_archives(served: Path) -> None:
    standin = zipfile.ZipFile(MODELS / "car_frontal_pipeline.mpta")
    pipeline = standin.read("pipeline.json")
    link = zipfile.ZipInfo("models")
    link.external_attr = (stat.S_IFLNK | 0o777) << 16
    unknown = json.loads(pipeline)
    unknown["pipeline"]["evilKey"] = "%(here)s"
    archives = {
        "slip.mpta": _zip([("pipeline.json", pipeline), (f"../../../../../../../..{CANARY}/pwned", b"x")]),
        "absolute.mpta": _zip([("pipeline.json", pipeline), (f"{CANARY}/pwned", b"x")]),
        "symlink.mpta": _zip([("pipeline.json", pipeline), (link, str(CANARY).encode()), ("models/pwned", b"x")]),
        "backslash.mpta": _zip([("pipeline.json", pipeline), ("..\\..\\pwned", b"x")]),
        "huge.mpta": _declare_size(_zip([("pipeline.json", pipeline), ("big.bin", b"0123456789")]), "big.bin",
                                   0xFFFF_FFF0),
        "unknown-key.mpta": _zip([("pipeline.json", json.dumps(unknown).encode()),
                                  *[(n, standin.read(n)) for n in standin.namelist() if n.endswith(".pt")]]),
        "html.mpta": b"<html>not an archive</html>",
    }
    for name, data in archives.items():
        (served / name).write_bytes(data)


class ArchiveHandler(http.server.SimpleHTTPRequestHandler):
    """Serves the malicious archives; /auth/* needs Basic auth, /huge-length lies about its size,
    /redirect sends the client to file:///etc/passwd."""

    def do_GET(self) -> None:
        if self.path.startswith("/auth/"):
            want = "Basic " + base64.b64encode(f"evil:{SECRET}".encode()).decode()
            if self.headers.get("Authorization") != want:
                self.send_response(401)
                self.send_header("WWW-Authenticate", 'Basic realm="models"')
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            self.path = self.path.removeprefix("/auth")
        if self.path == "/huge-length.mpta":
            self.send_response(200)
            self.send_header("Content-Length", str(10**12))
            self.end_headers()
            self.wfile.write(b"PK")
            return
        if self.path == "/redirect.mpta":
            self.send_response(302)
            self.send_header("Location", "file:///etc/passwd")
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        super().do_GET()

    def log_message(self, format: str, *args: Any) -> None:
        pass


def _outside_state() -> dict[str, Any]:
    """What a hostile value could touch outside the fleet: the project's own fleet directories
    (names, sizes, mtimes), its model cache's entries, /etc/passwd."""
    return {
        "programs": files_under(ROOT / "conf" / "supervisord.d"),
        "specs": files_under(ROOT / "run" / "specs"),
        "cache": sorted(p.name for p in (ROOT / "build" / "model-cache").glob("*")),
        "passwd": hashlib.sha256(Path("/etc/passwd").read_bytes()).hexdigest(),
    }


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory, hostile_model_cache: Path, module_redis_url: str,
         module_database_url: str) -> Iterator[Site]:
    root = tmp_path_factory.mktemp("inject")
    cache = root / "model-cache"
    shutil.copytree(hostile_model_cache, cache)
    served = root / "served"
    served.mkdir()
    build_archives(served)
    server = http.server.ThreadingHTTPServer(
        ("127.0.0.1", 0), lambda *a: ArchiveHandler(*a, directory=str(served)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    outside = _outside_state()
    good = files_under(cache)
    try:
        # one stateReport at connect, then only on request: a link left unread while a test waits
        # can't fill up with reports (the client would stop reading, and miss its keepalive pongs)
        extra = {"session_processes": {"process_cleanup_timeout": 30, "health_check_interval": 3600,
                                       "heartbeat_timeout": 15}}
        with running_fleet(root / "fleet", model_cache=cache, redis_url=module_redis_url,
                           database_url=module_database_url, extra=extra) as fleet:
            s = Site(fleet, cache, served, server.server_address[1])
            s.good_entries = sorted(p.name for p in cache.iterdir() if not p.name.startswith("."))
            # The benign camera every case checks is set up here, not by the first test: the tests
            # run in random order (pytest-randomly), each must find it RUNNING with its first pid.
            s.start_benign()
            yield s
            # after every case, in whatever order they ran: files still clean, and nothing is left
            check_files(s)
            s.benign_still_running()
            assert not s.send({"type": "setSubscriptionList", "payload": []})
            s.cameras_become(set())
            with pytest.raises(xmlrpc.client.Fault):
                s.fleet.rpc().supervisor.getProcessInfo("camera-all")
            s.watch.check()
            assert not s.watch.internal_failures(), s.watch.internal_failures()[:5]
            # the good model's cache directory is exactly as it was (no archive replaced it)
            assert {k: v for k, v in files_under(cache).items() if not k.startswith(".")} == \
                   {k: v for k, v in good.items() if not k.startswith(".")}
    finally:
        server.shutdown()
        server.server_close()
    assert _outside_state() == outside
    assert not CANARY.exists()
    assert not paths_named([Path("/tmp"), ROOT], TOKEN, skip=(root,)), "a hostile value named a file outside"


# ---------------------------------------------------------------------------------------------
# Checks shared by the cases


def check_files(site: Site) -> None:
    """Program files, spec files and supervisord's view after a hostile apply."""
    conf = site.fleet.base / "conf" / "supervisord.d"
    for path in conf.iterdir():
        if path.name.startswith("."):
            continue  # an atomic write's temp file
        assert path.suffix == ".conf" and NAME_RE.fullmatch(path.stem), path.name
        assert path.stem not in RESERVED_NAMES
        lines = path.read_text().splitlines()
        assert lines[0].startswith("; Written by the gateway") and lines[1] == f"[program:{path.stem}]", lines[:2]
        for line in lines[2:]:
            key = line.partition("=")[0]
            assert key in PROGRAM_KEYS, f"{path.name}: unexpected line {line!r}"
        command = next(line for line in lines if line.startswith("command="))
        assert re.fullmatch(r"command=\S+ -m detector_worker\.cli --spec \S+/run/specs/[a-z0-9_-]{1,60}\.json",
                            command), command  # only the slug of the camera id, nothing else of it
        text = "\n".join(lines[1:])
        for needle in ("%", "rtsp://", "http://", "file://", SECRET, "[program:x", "\r", "\x00"):
            assert needle not in text, f"{path.name} holds {needle!r}"
    specs = site.fleet.base / "run" / "specs"
    assert specs.stat().st_mode & 0o777 == 0o700
    for spec in specs.glob("*.json"):
        assert spec.stat().st_mode & 0o777 == 0o600, spec
        assert re.fullmatch(r"[a-z0-9_-]{1,60}\.json", spec.name), spec.name
    # supervisord re-reads everything without a parse error
    site.fleet.rpc().supervisor.reloadConfig()
    assert "camera-all" not in site.fleet.programs()
    events = site.fleet.rpc().supervisor.getProcessInfo("camera-events")
    assert (events["statename"], events["pid"]) == ("RUNNING", site.events_pid)


def secret_only_in_specs(site: Site) -> None:
    for path in site.fleet.base.rglob("*"):
        if path.is_file() and path.parent.name != "specs":
            text = path.read_bytes()
            assert SECRET.encode() not in text, f"{path.relative_to(site.fleet.base)} holds a URL's password: " \
                f"{text[max(0, text.find(SECRET.encode()) - 200):text.find(SECRET.encode()) + 60]!r}"


# ---------------------------------------------------------------------------------------------
# The cases


def test_a_benign_camera_runs(site: Site) -> None:
    # started by the fixture (start_benign); re-declaring it changes nothing
    assert not site.send({"type": "setSubscriptionList", "payload": [sub("display-b", "benign")]})
    site.cameras_become({"benign"})
    site.benign_still_running()


HOSTILE_CAMERAS = [
    ["x'y", 'q"uote', "p%40ss", "%(here)s", "%(ENV_HOME)s", "..", f"../../../..{CANARY}", "/"],
    ["/etc/passwd", "a/b/../../c", "all", "ALL", "[program:x]", "camera-all", "gateway", "supervisord"],
    ["z" * MAX_ID, "сam-1", "cam‐1", "ｃａｍ１", "🚗", "$(touch x)", "`id`", "\\..\\"],
    # pairs that collapse to one name unless the slug keeps them apart
    ["x y", f"x-y-{hashlib.sha256(b'x y').hexdigest()[:10]}", "events",
     "events-" + hashlib.sha256(b"events").hexdigest()[:10], "Cam", "cam", "a_b", "-"],
]


@pytest.mark.parametrize("cameras", HOSTILE_CAMERAS, ids=[f"batch{i}" for i in range(len(HOSTILE_CAMERAS))])
def test_hostile_camera_ids_reach_files_only_as_distinct_slugs(site: Site, cameras: list[str]) -> None:
    subs = [sub("display-b", "benign"), *(sub(f"d{i}", cam) for i, cam in enumerate(cameras))]
    assert not site.send({"type": "setSubscriptionList", "payload": subs})
    names = {program_name("benign"), *(program_name(c) for c in cameras)}
    assert len(names) == len(cameras) + 1, "two camera ids share one program name"
    site.cameras_become({"benign", *cameras})
    check_files(site)
    specs = {json.loads(p.read_text())["camera_id"]: p.name for p in (site.fleet.base / "run/specs").glob("*.json")}
    assert set(specs) == {"benign", *cameras}, "every camera has its own spec file"
    assert {specs[c] for c in cameras} == {f"{camera_slug(c)}.json" for c in cameras}
    cams = {c["camera"] for c in site.fleet.cameras().values()}
    assert cams == {"benign", *cameras}
    assert not site.send({"type": "setSubscriptionList", "payload": [sub("display-b", "benign")]})
    site.cameras_become({"benign"})
    check_files(site)
    site.benign_still_running()


INVALID_IDS = ["a\nb", "a\rb", "a\x00b", "a\tb", "a\x7fb", "a\x85b", "a\u2028b", "a\u202eb", "a\u200bb", "\ufeffa",
               "a\u00a0b", " a", "a ", "", "z" * (MAX_ID + 1), "z" * 5000, "a;b", "[program:x]\ncommand=/bin/sh",
               "x\r\n[program:evil]"]


@pytest.mark.parametrize("where", ["camera", "display", "sessionDisplay", "sessionId", "stageDisplay"])
def test_ids_the_protocol_refuses_change_nothing(site: Site, where: str) -> None:
    conf = site.fleet.base / "conf" / "supervisord.d"
    before = files_under(conf), files_under(site.fleet.base / "run" / "specs"), set(site.fleet.programs())
    for bad in INVALID_IDS:
        if where == "sessionId" and bad == "z" * (MAX_ID + 1):
            bad = "z" * (MAX_SESSION_ID + 1)  # a session id has its own, longer limit
        if where == "camera":
            msg: dict[str, Any] = {"type": "subscribe", "payload": sub("display-x", bad)}
        elif where == "display":
            msg = {"type": "setSubscriptionList", "payload": [sub("display-b", "benign"), sub(bad, "benign")]}
        elif where == "sessionDisplay":
            msg = {"type": "setSessionId", "payload": {"displayIdentifier": bad, "sessionId": "s-1"}}
        elif where == "sessionId":
            msg = {"type": "setSessionId", "payload": {"displayIdentifier": "display-b", "sessionId": bad}}
        else:
            msg = {"type": "setProgressionStage", "payload": {"displayIdentifier": bad, "progressionStage": "x"}}
        if where == "sessionId" and bad == "a;b":
            continue  # ";" is an ordinary character in a session id
        errors = site.send(msg)
        assert [e["code"] for e in errors] == ["invalid_message"], (bad, errors)
        if where == "display":  # one item of the list refused, named by its index; the other applies
            assert errors[0]["index"] == 1 and errors[0]["message"].startswith("payload[1]."), errors
            assert errors[0]["subscriptionIdentifier"] is None, errors  # the identifier itself is bad
        else:
            assert "index" not in errors[0], errors
        message = errors[0]["message"]
        assert message.isprintable() and message.isascii() and len(message) < 400, message
        assert "[program:" not in message and "z" * 61 not in message
    assert (files_under(conf), files_under(site.fleet.base / "run" / "specs"), set(site.fleet.programs())) == before
    site.benign_still_running()


HOSTILE_DISPLAYS = ["%(here)s", "[program:x]", "..", f"../../..{CANARY}", "all", "'\"`", "z" * MAX_ID, "a b",
                    "display-b", "сam", "🚗", "$(id)", "\\"]


def test_hostile_display_and_session_ids_stay_in_the_spec_and_the_worker(site: Site) -> None:
    subs = [sub(d, "benign") for d in HOSTILE_DISPLAYS]
    assert not site.send({"type": "setSubscriptionList", "payload": subs})
    spec_path = site.fleet.base / "run" / "specs" / f"{camera_slug('benign')}.json"
    site.fleet.wait_for(lambda: {s["subscription_identifier"].split(";")[0]
                                 for s in json.loads(spec_path.read_text())["subscriptions"]}
                        == set(HOSTILE_DISPLAYS), 20, "every hostile display in the spec")
    check_files(site)
    for display in HOSTILE_DISPLAYS:
        for session in ["%(here)s", f"../../..{CANARY}/s", "x" * MAX_SESSION_ID, 2**62, -(2**63),
                        "'; DROP TABLE x; --", "*", None]:
            assert not site.send({"type": "setSessionId", "payload": {"displayIdentifier": display,
                                                                      "sessionId": session}})
        assert not site.send({"type": "setProgressionStage", "payload": {"displayIdentifier": display,
                                                                         "progressionStage": "%(here)s ../.."}})
    check_files(site)
    site.benign_still_running()  # a reload, not a restart
    assert not site.send({"type": "setSubscriptionList", "payload": [sub("display-b", "benign")]})


def test_source_urls_with_credentials_and_injections_live_only_in_0600_specs(site: Site) -> None:
    odd = [f"rtsp://us%3Aer:{SECRET}%23%3B@127.0.0.1:{DEAD_PORT}/a%0a[program:x]?q=%(here)s#frag",
           f"rtsps://{SECRET}@127.0.0.1:{DEAD_PORT}/..%2f..%2fetc%2fpasswd"]
    subs = [sub("display-b", "benign"), sub("u1", "url-1", rtspUrl=odd[0]),
            sub("u2", "url-2", rtspUrl=odd[1], snapshotUrl=f"http://u:{SECRET}@127.0.0.1:{DEAD_PORT}/s.jpg")]
    assert not site.send({"type": "setSubscriptionList", "payload": subs})
    site.cameras_become({"benign", "url-1", "url-2"})
    check_files(site)
    spec = json.loads((site.fleet.base / "run/specs/url-1.json").read_text())
    assert spec["source"]["url"] == odd[0], "the URL is kept exactly as sent"
    for bad in [f"rtsp://a:{SECRET}@127.0.0.1/x\n[program:x]", f"rtsp://a:{SECRET}@127.0.0.1/a b",
                f"rtsp://a:{SECRET}@127.0.0.1/\x00", f"rtsp://a:{SECRET}@127.0.0.1:99999/x", "file:///etc/passwd",
                f"http://a:{SECRET}@127.0.0.1/x", f"rtsp://a:{SECRET}@/x", "rtsp:/" + "/x" * 3000]:
        errors = site.send({"type": "subscribe", "payload": sub("u3", "url-3", rtspUrl=bad)})
        assert [e["code"] for e in errors] == ["invalid_message"], (bad, errors)
        assert SECRET not in errors[0]["message"] and "rtsp:" not in errors[0]["message"], errors
    for bad in [f"http://a:{SECRET}@127.0.0.1/x.mpta\r\n", "models/car.mpta", "/etc/passwd", "file://evil.host/x",
                "javascript:alert(1)", "ftp://127.0.0.1/x.mpta", "file:relative/x.mpta", "http:///x.mpta"]:
        errors = site.send({"type": "subscribe", "payload": sub("u3", "url-3", modelUrl=bad)})
        assert [e["code"] for e in errors] == ["invalid_message"], (bad, errors)
        assert SECRET not in errors[0]["message"], errors
    time.sleep(2)  # let the two workers try their sources and log about it
    assert not site.send({"type": "setSubscriptionList", "payload": [sub("display-b", "benign")]})
    site.cameras_become({"benign"})
    secret_only_in_specs(site)
    site.benign_still_running()


EVIL_MODELS = [  # camera → (modelUrl template, modelId, what its worker's log must say)
    [("evil-slip", "http://127.0.0.1:{port}/slip.mpta", "evil-slip", "has a '..' component"),
     ("evil-absolute", "http://127.0.0.1:{port}/absolute.mpta", "evil-absolute", "is an absolute path"),
     ("evil-symlink", "http://127.0.0.1:{port}/symlink.mpta", "evil-symlink", "is a symbolic link"),
     ("evil-backslash", "http://127.0.0.1:{port}/backslash.mpta", "evil-backslash", "contains a backslash"),
     ("evil-huge", "http://127.0.0.1:{port}/huge.mpta", "evil-huge", "zip bomb"),
     ("evil-poison", "http://127.0.0.1:{port}/unknown-key.mpta", MODEL_ID, "pipeline.evilKey")],
    [("evil-length", "http://127.0.0.1:{port}/huge-length.mpta", "evil-length", "Content-Length 1000000000000"),
     ("evil-redirect", "http://127.0.0.1:{port}/redirect.mpta", "evil-redirect", "Redirection to url"),
     ("evil-closed", "http://127.0.0.1:{closed}/x.mpta", "evil-closed", "Connection refused"),
     ("evil-html", "http://127.0.0.1:{port}/html.mpta", "evil-html", "not a valid zip archive"),
     ("evil-creds", "http://evil:" + SECRET + "@127.0.0.1/x.mpta", "evil-creds", "cannot connect"),
     # the credentials are used (Basic auth), and the archive behind them is still checked
     ("evil-auth", "http://evil:" + SECRET + "@127.0.0.1:{port}/auth/slip.mpta", "evil-auth",
      "has a '..' component")],
]


@pytest.mark.parametrize("batch", EVIL_MODELS, ids=["archives", "fetches"])
def test_malicious_model_archives_are_never_unpacked_and_their_worker_says_why(
        site: Site, batch: list[tuple[str, str, str, str]]) -> None:
    closed = free_port()
    subs = [sub("display-b", "benign")]
    for camera, url, model_id, _ in batch:
        subs.append(sub(f"display-{camera}", camera, modelUrl=url.format(port=site.archive_port, closed=closed),
                        modelId=model_id))
    assert not site.send({"type": "setSubscriptionList", "payload": subs})
    site.cameras_become({"benign", *(b[0] for b in batch)})
    logs = site.fleet.base / "logs"

    def failed() -> list[str]:
        """The cameras whose worker exited with status 1 after one clear line naming the problem."""
        supervisord = (logs / "supervisord.log").read_text()
        out = []
        for camera, _, _, reason in batch:
            # the camera's log: detector_worker.logs.log_path (older gateways: <program>.log)
            paths = [log_path(logs, camera_slug(camera)), logs / f"{program_name(camera)}.log"]
            text = "".join(p.read_text(errors="replace") for p in paths if p.exists())
            line = next((ln for ln in text.splitlines() if "cannot start: " in ln), "")
            if reason in line and "Traceback" not in text and \
                    f"exited: {program_name(camera)} (exit status 1" in supervisord:
                out.append(camera)
        return out

    try:
        site.fleet.wait_for(lambda: len(failed()) == len(batch), 90,
                            "every malicious model's worker to exit saying why")
    finally:
        assert not site.send({"type": "setSubscriptionList", "payload": [sub("display-b", "benign")]})
        site.cameras_become({"benign"})
    # nothing was unpacked: the cache holds the good model's directory only, as before (besides the
    # cache's own dot-files: locks, markers, its URL index)
    assert sorted(p.name for p in site.cache.iterdir() if not p.name.startswith(".")) == site.good_entries
    assert not CANARY.exists()
    secret_only_in_specs(site)
    check_files(site)
    site.benign_still_running()


@pytest.mark.parametrize("url", ["file:///etc/passwd", f"file://{CANARY}/x.mpta", "file:///work/../etc/passwd"])
def test_a_file_model_url_outside_the_model_dirs_is_refused_alone(site: Site, url: str) -> None:
    """The gateway's policy: a file:// model URL must name a file in a configured model directory.
    The item is refused with an error naming it; the rest of the list applies."""
    bad = sub("display-evil", "evil-file", modelUrl=url, modelId="evil-file")
    errors = site.send({"type": "setSubscriptionList", "payload": [sub("display-b", "benign"), bad]})
    assert [(e["code"], e["subscriptionIdentifier"]) for e in errors] == [
        ("invalid_message", bad["subscriptionIdentifier"])], errors
    assert "modelUrl" in errors[0]["message"] and url not in errors[0]["message"], errors
    site.cameras_become({"benign"})
    check_files(site)
    site.benign_still_running()


def test_after_everything_supervisord_parses_and_a_new_camera_starts(site: Site) -> None:
    check_files(site)
    subs = [sub("display-b", "benign"), sub("display-after", "after-all")]
    assert not site.send({"type": "setSubscriptionList", "payload": subs})
    site.fleet.wait_for(lambda: site.fleet.programs().get(program_name("after-all"), ("",))[0] == "RUNNING", 40,
                        "a camera added after the hostile ones RUNNING")
    site.benign_still_running()
    # back to the benign camera alone (tests run in random order: others may follow this one)
    assert not site.send({"type": "setSubscriptionList", "payload": [sub("display-b", "benign")]})
    site.cameras_become({"benign"})
    site.benign_still_running()
    site.watch.check()
