"""One supervisord `[program:]` file per camera, rendered only from validated values.

supervisord's config is not a safe place for network input: `%` starts an interpolation (an
unknown `%(name)s` makes the whole file unparsable), a newline or a quote can inject a whole
`[program:]` section, `;`/`#` start comments, and one unparsable include file makes every later
`reread`/`update` fail for all programs. So nothing is escaped here: anything that is not plainly
safe is rejected (`UnsafeValue`), and files are replaced atomically so supervisord never reads
half a file.

The fleet's fixed `[eventlistener:camera-events]` section comes from `render_eventlistener`, under
the same rules; the shipped `conf/fleet.d/events.conf` is its output for `shipped_eventlistener()`
(written by `scripts/render_fleet_conf.py`, compared by the tests).
"""

from __future__ import annotations

import hashlib
import math
import re
import shlex
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from pathlib import Path

from detector_worker.config.spec import bus_endpoints
from detector_worker.files import atomic_write, fsync_dir
from detector_worker.naming import camera_slug

PREFIX = "camera-"
NAME_RE = re.compile(r"^camera-[a-z0-9_-]{1,60}$")
# Fixed programs that share the camera prefix: no camera may ever take these names.
EVENTLISTENER_NAME = "camera-events"
RESERVED_NAMES = frozenset({EVENTLISTENER_NAME, "camera-all"})

# Command arguments and paths: exactly the characters shlex.quote leaves alone, minus `%`
# (interpolation). No spaces, quotes, `;`, `#`, `$`, newlines... are possible at all.
_SAFE_ARG = re.compile(r"^[A-Za-z0-9_@+=:,./-]+$")
_ENV_KEY = re.compile(r"^[A-Z_][A-Z0-9_]*$")
# Env values sit inside "..." and are parsed by supervisord's non-POSIX shlex (no escapes).
_ENV_FORBIDDEN = set('%"\\,\';#\n\r\0')
_SIZE = re.compile(r"^[1-9][0-9]{0,9}(KB|MB|GB)?$")

# Every worker's memory settings (issue #14: one worker, the stand-in pipeline, motion gating,
# max_fps 5, a 25 fps RTSP stream: RSS 175 → 162 MB at 1920x1080, 145 → 141 MB at 640x480, with
# these and ONNX Runtime's memory pattern off). glibc and OpenBLAS read them when the process
# starts, so they live in the program; a program's own `environment` overrides them.
WORKER_ENVIRONMENT: dict[str, str] = {
    # glibc raises its mmap threshold to the size of any big block freed (up to 32 MB): after the
    # first frame, every 1080p frame (6 MB) is carved from the heaps, whose holes stay resident.
    # A fixed threshold keeps blocks of 2 MB and more (BGR frames from 720p up) in mappings of their
    # own, returned at free: −11 MB RSS at 1080p (none at 640x480). Smaller blocks (the model input
    # tensors) stay in the heap, whose top is kept up to 8 MB: detector CPU time unchanged, the
    # classifiers' +5 % (their float64 resize buffers of a large crop are mapped afresh). A 128 KB
    # threshold saved 5 MB more but cost +8 % detector and +33 % classifier CPU time (page faults).
    "MALLOC_MMAP_THRESHOLD_": "2097152",
    "MALLOC_TRIM_THRESHOLD_": "8388608",
    # Two malloc arenas instead of up to 8 per core for the worker's ~10 threads, which hardly
    # allocate concurrently: −4 MB RSS alone, −1.5 MB on top of the above.
    "MALLOC_ARENA_MAX": "2",
    # numpy and OpenCV each load an OpenBLAS with a thread per core; a worker is one camera on one
    # core (OpenCV, ONNX Runtime and FFmpeg run one thread each): 2 × (cores − 1) threads fewer.
    "OPENBLAS_NUM_THREADS": "1",
}


class UnsafeValue(ValueError):
    """A value that cannot be written into a supervisord file safely; the message names the field."""

    def __init__(self, field_name: str, reason: str) -> None:
        super().__init__(f"{field_name}: {reason}")
        self.field = field_name


@dataclass(frozen=True)
class ProgramSpec:
    name: str
    command: list[str]
    directory: Path
    environment: dict[str, str]
    stdout_logfile: Path
    startsecs: int = 3
    startretries: int = 5
    stopwaitsecs: int = 5
    autostart: bool = True
    stdout_logfile_maxbytes: str = "10MB"  # like 10MB / 512KB; from an MB setting: size_for_supervisord(mb)
    stdout_logfile_backups: int = 3

    def __post_init__(self) -> None:
        check_name(self.name)


def check_name(name: str) -> None:
    if not NAME_RE.fullmatch(name) or name in RESERVED_NAMES:
        raise UnsafeValue("name", f"{name!r} is not a camera program name (camera-[a-z0-9_-]{{1,60}}, not reserved)")


def program_for_camera(
    camera_id: str,
    *,
    python: Path | str,
    spec_path: Path,
    project_dir: Path,
    log_dir: Path,
    environment: Mapping[str, str] | None = None,
    stdout_logfile: Path | None = None,
    log_max_mb: float = 10,
    log_backups: int = 3,
) -> ProgramSpec:
    """The worker program for one (untrusted) camera id; only its slug ever reaches the file.

    The worker's output goes to `stdout_logfile` (`<log_dir>/<program>.log` by default), which
    supervisord rotates at `log_max_mb` keeping `log_backups` old files.
    """
    slug = camera_slug(camera_id)
    if f"{PREFIX}{slug}" in RESERVED_NAMES:  # e.g. a camera called "events": keep it stable and unique
        slug = f"{slug}-{hashlib.sha256(camera_id.encode()).hexdigest()[:10]}"
    name = f"{PREFIX}{slug}"
    return ProgramSpec(
        name=name,
        command=[str(python), "-m", "detector_worker.cli", "--spec", str(spec_path)],
        directory=project_dir,
        environment={"PYTHONUNBUFFERED": "1", **WORKER_ENVIRONMENT, **(environment or {})},
        stdout_logfile=stdout_logfile if stdout_logfile is not None else log_dir / f"{name}.log",
        stdout_logfile_maxbytes=size_for_supervisord(log_max_mb),
        stdout_logfile_backups=log_backups,
    )


def quote_arg(field_name: str, value: str) -> str:
    if not _SAFE_ARG.fullmatch(value):
        raise UnsafeValue(field_name, f"{value[:80]!r} has characters outside [A-Za-z0-9_@+=:,./-]")
    return shlex.quote(value)  # a no-op for these characters; kept so the intent is explicit


def quote_path(field_name: str, value: Path) -> str:
    text = str(value)
    if not value.is_absolute():
        raise UnsafeValue(field_name, f"{text[:80]!r} must be absolute (supervisord resolves relative paths oddly)")
    return quote_arg(field_name, text)


def _env_value(key: str, value: str) -> str:
    bad = sorted({c for c in value if c in _ENV_FORBIDDEN or not (" " <= c <= "~")})
    if bad:
        raise UnsafeValue(f"environment.{key}", f"value has forbidden characters {''.join(bad)!r}")
    return value


def render(spec: ProgramSpec) -> str:
    """The complete `[program:]` section for `spec`; raises `UnsafeValue` rather than escape anything."""
    check_name(spec.name)
    if not spec.command:
        raise UnsafeValue("command", "must not be empty")
    command = " ".join(quote_arg(f"command[{i}]", a) for i, a in enumerate(spec.command))
    # Children inherit supervisord's whole environment; these only add or override. Python
    # output must be unbuffered or `supervisorctl tail` shows nothing.
    env = {"PYTHONUNBUFFERED": "1", **spec.environment}
    for key in env:
        if not _ENV_KEY.fullmatch(key):
            raise UnsafeValue("environment", f"key {key[:80]!r} must match [A-Z_][A-Z0-9_]*")
    environment = ",".join(f'{k}="{_env_value(k, v)}"' for k, v in env.items())
    if spec.startsecs < 3:  # shorter is sometimes defeated: an instant crash gets logged as RUNNING
        raise UnsafeValue("startsecs", "must be at least 3")
    for name, number in (("startretries", spec.startretries), ("stopwaitsecs", spec.stopwaitsecs),
                         ("stdout_logfile_backups", spec.stdout_logfile_backups)):
        if not 0 <= number <= 1000:
            raise UnsafeValue(name, f"{number} is out of range")
    if not _SIZE.fullmatch(spec.stdout_logfile_maxbytes):
        raise UnsafeValue("stdout_logfile_maxbytes", f"{spec.stdout_logfile_maxbytes[:40]!r} is not like 10MB")
    return "\n".join([
        "; Written by the gateway (gateway/supervisor/programs.py); edits are overwritten.",
        f"[program:{spec.name}]",
        f"command={command}",
        f"directory={quote_path('directory', spec.directory)}",
        f"environment={environment}",
        f"autostart={'true' if spec.autostart else 'false'}",
        "autorestart=true",
        f"startsecs={spec.startsecs}",
        f"startretries={spec.startretries}",
        "stopasgroup=true",
        "killasgroup=true",
        "stopsignal=TERM",
        f"stopwaitsecs={spec.stopwaitsecs}",
        "redirect_stderr=true",
        f"stdout_logfile={quote_path('stdout_logfile', spec.stdout_logfile)}",
        f"stdout_logfile_maxbytes={spec.stdout_logfile_maxbytes}",
        f"stdout_logfile_backups={spec.stdout_logfile_backups}",
        "",
    ])


def size_for_supervisord(mb: float) -> str:
    """A size setting in MB (may be fractional) as supervisord writes sizes: whole MB as `100MB`,
    anything else rounded up to whole KB (`0.5` → `512KB`). Refuses anything that is not a
    finite size above 0 and up to 1 TB (supervisord reads `0` as "never rotate")."""
    if isinstance(mb, bool) or not isinstance(mb, (int, float)) or not math.isfinite(mb) or not 0 < mb <= 1 << 20:
        raise UnsafeValue("size", f"{mb!r} MB is not a size above 0 and up to 1 TB")
    kb = math.ceil(round(mb * 1024, 6))  # round first: 100.0000000001 MB must not become 102401KB
    return f"{kb // 1024}MB" if kb % 1024 == 0 else f"{kb}KB"


# -- the event listener ---------------------------------------------------------------------------
@dataclass(frozen=True)
class Here:
    """A path relative to the directory of the config file that holds it, rendered `%(here)s/<relative>`.

    For files shipped in the repository (conf/fleet.d/), which cannot name this machine's paths.
    `%(here)s` is the one interpolation the renderer writes, and it writes it itself: `relative`
    is checked like any other argument (no `%`, no spaces, not absolute).
    """

    relative: str


def _location(field_name: str, value: Path | Here) -> str:
    if isinstance(value, Here):
        if value.relative.startswith("/"):
            raise UnsafeValue(field_name, f"{value.relative[:80]!r} must be relative to the config file")
        return f"%(here)s/{quote_arg(field_name, value.relative)}"
    return quote_path(field_name, value)


def _endpoint_arg(value: str | Here) -> str:
    if isinstance(value, Here):
        return "ipc://" + _location("push_endpoint", value)
    return quote_arg("push_endpoint", value)


@dataclass(frozen=True)
class EventListenerSpec:
    """The `[eventlistener:camera-events]` section: `python -m gateway.supervisor.events`."""

    python: Path | Here
    push_endpoint: str | Here  # the gateway's PULL socket: an endpoint, or a unix socket next to the config
    directory: Path | Here
    stderr_logfile: Path | Here  # the listener's own log; its stdout is supervisord's protocol channel
    wake_interval_s: float = 0.25
    stderr_logfile_maxbytes: str = "10MB"
    stderr_logfile_backups: int = 3


def render_eventlistener(spec: EventListenerSpec) -> str:
    """The complete `[eventlistener:camera-events]` section; raises `UnsafeValue` rather than escape anything."""
    if not (math.isfinite(spec.wake_interval_s) and 0 <= spec.wake_interval_s <= 60):
        raise UnsafeValue("wake_interval_s", f"{spec.wake_interval_s} is out of range")
    if not 0 <= spec.stderr_logfile_backups <= 1000:
        raise UnsafeValue("stderr_logfile_backups", f"{spec.stderr_logfile_backups} is out of range")
    if not _SIZE.fullmatch(spec.stderr_logfile_maxbytes):
        raise UnsafeValue("stderr_logfile_maxbytes", f"{spec.stderr_logfile_maxbytes[:40]!r} is not like 10MB")
    command = " ".join([_location("python", spec.python), "-m", "gateway.supervisor.events",
                        "--push", _endpoint_arg(spec.push_endpoint),
                        f"--wake-interval={spec.wake_interval_s:g}"])
    return "\n".join([
        "; Rendered by gateway/supervisor/programs.py (render_eventlistener); do not edit: the shipped",
        "; conf/fleet.d/events.conf is regenerated by scripts/render_fleet_conf.py.",
        "; supervisord's PROCESS_STATE events, pushed to the gateway's bus (a worker's kill -9 is seen in ~0.2 s).",
        f"[eventlistener:{EVENTLISTENER_NAME}]",
        f"command={command}",
        f"directory={_location('directory', spec.directory)}",
        "events=PROCESS_STATE",
        "buffer_size=1000",
        'environment=PYTHONUNBUFFERED="1"',
        "autostart=true",
        "autorestart=true",
        "startsecs=1",  # events wait in supervisord's buffer until the listener is RUNNING
        "startretries=10",
        "stopsignal=TERM",
        "stopwaitsecs=5",
        "stdout_logfile=NONE",  # stdout is the event protocol: logging it fills a file with READY/RESULT lines
        f"stderr_logfile={_location('stderr_logfile', spec.stderr_logfile)}",
        f"stderr_logfile_maxbytes={spec.stderr_logfile_maxbytes}",
        f"stderr_logfile_backups={spec.stderr_logfile_backups}",
        "",
    ])


# Where the shipped section lives, relative to the project; the paths in it are relative to it.
SHIPPED_EVENTLISTENER_FILE = Path("conf/fleet.d/events.conf")
# The gateway's PULL socket as the shipped config names it, relative to that file: the default
# `BusSettings().push_endpoint` (bus_endpoints(RUN_DIR)), without writing this checkout's path into it.
SHIPPED_PUSH_SOCKET = "../../run/" + bus_endpoints(Path("run"))[0].rsplit("/", 1)[1]


def shipped_eventlistener() -> EventListenerSpec:
    """The listener of the fleet as shipped (`make run`): the project's venv and logs/, and the
    gateway's bus at the workers' default push endpoint (one definition: `BusSettings`)."""
    return EventListenerSpec(python=Here("../../.venv/bin/python"), push_endpoint=Here(SHIPPED_PUSH_SOCKET),
                             directory=Here("../.."), stderr_logfile=Here("../../logs/camera_events.log"))


@dataclass(frozen=True)
class WriteResult:
    written: list[str]
    unchanged: list[str]
    removed: list[str]


def write_programs(
    conf_dir: Path,
    programs: Mapping[str, ProgramSpec],
    *,
    prefix: str = PREFIX,
    keep: Collection[str] = (),
) -> WriteResult:
    """Make `conf_dir` hold exactly `programs` (keyed by program name) among `<prefix>*.conf` files.

    Everything is rendered first, so an unsafe spec changes nothing. Byte-identical files are
    not rewritten. Stale `<prefix>*.conf` files are removed unless named in `keep`; other files
    are never touched.
    """
    rendered: dict[str, bytes] = {}
    for key, spec in programs.items():
        if key != spec.name or not key.startswith(prefix):
            raise ValueError(f"program {spec.name!r} is keyed {key!r}; keys must be names starting with {prefix!r}")
        rendered[key] = render(spec).encode()
    written: list[str] = []
    unchanged: list[str] = []
    removed: list[str] = []
    for name, data in sorted(rendered.items()):
        if atomic_write(conf_dir / f"{name}.conf", data, mode=0o644, skip_unchanged=True):
            written.append(name)
        else:
            unchanged.append(name)
    for path in sorted(conf_dir.glob(f"{prefix}*.conf")):
        name = path.name.removesuffix(".conf")
        if name not in rendered and name not in keep and name not in RESERVED_NAMES:
            path.unlink(missing_ok=True)
            removed.append(name)
    for path in conf_dir.glob(f".{prefix}*.tmp"):  # left by a crash mid-write
        path.unlink(missing_ok=True)
    if written or removed:
        fsync_dir(conf_dir)
    return WriteResult(written, unchanged, removed)
