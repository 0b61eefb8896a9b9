"""One supervisord `[program:]` file per camera, rendered only from validated values.

supervisord's config is not a safe place for network input (see FACTS.md): `%` interpolates,
a newline or quote can inject a whole `[program:]` section, `;`/`#` start comments, and one
unparsable include file blocks every reload. So nothing is escaped here: anything that is not
plainly safe is rejected (`UnsafeValue`), and files are replaced atomically so supervisord never
reads half a file.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import shlex
import tempfile
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from pathlib import Path

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
    stdout_logfile_maxbytes: str = "10MB"
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
) -> ProgramSpec:
    """The worker program for one (untrusted) camera id; only its slug ever reaches the file."""
    slug = camera_slug(camera_id)
    if f"{PREFIX}{slug}" in RESERVED_NAMES:  # e.g. a camera called "events": keep it stable and unique
        slug = f"{slug}-{hashlib.sha256(camera_id.encode()).hexdigest()[:10]}"
    name = f"{PREFIX}{slug}"
    return ProgramSpec(
        name=name,
        command=[str(python), "-m", "detector_worker.cli", "--spec", str(spec_path)],
        directory=project_dir,
        environment={"PYTHONUNBUFFERED": "1", **(environment or {})},
        stdout_logfile=log_dir / f"{name}.log",
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


@dataclass(frozen=True)
class WriteResult:
    written: list[str]
    unchanged: list[str]
    removed: list[str]


def _atomic_write(path: Path, data: bytes) -> None:
    # The temp name must not end in .conf: supervisord's include glob would pick up half a file.
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


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
        path = conf_dir / f"{name}.conf"
        try:
            same = path.read_bytes() == data
        except FileNotFoundError:
            same = False
        if same:
            unchanged.append(name)
        else:
            _atomic_write(path, data)
            written.append(name)
    for path in sorted(conf_dir.glob(f"{prefix}*.conf")):
        name = path.name.removesuffix(".conf")
        if name not in rendered and name not in keep and name not in RESERVED_NAMES:
            path.unlink(missing_ok=True)
            removed.append(name)
    for path in conf_dir.glob(f".{prefix}*.tmp"):  # left by a crash mid-write
        path.unlink(missing_ok=True)
    if written or removed:
        _fsync_dir(conf_dir)
    return WriteResult(written, unchanged, removed)
