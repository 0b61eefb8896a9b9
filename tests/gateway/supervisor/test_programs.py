"""Program files: only validated values reach supervisord's config, written atomically."""

from __future__ import annotations

import dataclasses
import re
import shlex
from pathlib import Path

import pytest

from gateway.supervisor.programs import (
    WORKER_ENVIRONMENT,
    EventListenerSpec,
    Here,
    ProgramSpec,
    UnsafeValue,
    program_for_camera,
    render,
    render_eventlistener,
    size_for_supervisord,
    write_programs,
)

ROOT = Path("/srv/fleet")


def listener(**overrides: object) -> EventListenerSpec:
    base = EventListenerSpec(python=Path("/venv/bin/python"), push_endpoint="tcp://127.0.0.1:5603", directory=ROOT,
                             stderr_logfile=ROOT / "logs/events.log")
    return dataclasses.replace(base, **overrides)  # type: ignore[arg-type]


def spec(name: str = "camera-a", /, **overrides: object) -> ProgramSpec:
    base = ProgramSpec(name=name, command=["/venv/bin/python", "-m", "detector_worker.cli", "--spec",
                                           f"/srv/fleet/run/specs/{name}.json"],
                       directory=ROOT, environment={"PYTHONUNBUFFERED": "1"}, stdout_logfile=ROOT / "logs/a.log")
    return dataclasses.replace(base, **overrides)  # type: ignore[arg-type]


def test_render_is_a_complete_safe_section() -> None:
    text = render(spec(environment={"YOLO_OFFLINE": "1", "OPENCV_OPTS": "rtsp_transport"}))
    lines = text.splitlines()
    assert lines[1] == "[program:camera-a]"
    assert sum(line.startswith("[") for line in lines) == 1
    assert "command=/venv/bin/python -m detector_worker.cli --spec /srv/fleet/run/specs/camera-a.json" in lines
    assert 'environment=PYTHONUNBUFFERED="1",YOLO_OFFLINE="1",OPENCV_OPTS="rtsp_transport"' in lines
    for line in ("autorestart=true", "startsecs=3", "startretries=5", "stopasgroup=true", "killasgroup=true",
                 "stopsignal=TERM", "stopwaitsecs=5", "redirect_stderr=true", "stdout_logfile_maxbytes=10MB",
                 "stdout_logfile_backups=3", "autostart=true", "directory=/srv/fleet"):
        assert line in lines
    assert "%" not in text


def test_pythonunbuffered_is_always_set() -> None:
    assert 'environment=PYTHONUNBUFFERED="1"' in render(spec(environment={}))


@pytest.mark.parametrize("arg", ["a b", "x\n[program:evil]", "a;b", "'q'", '"q"', "p%40ss", "$(id)", "`id`",
                                 "a#b", "a\rb", "a\0b", "a|b", "a&b", "a>b", "", "é"])
def test_render_rejects_unsafe_command_arguments(arg: str) -> None:
    with pytest.raises(UnsafeValue, match=r"command\[4\]"):
        render(spec(command=["/venv/bin/python", "-m", "detector_worker.cli", "--spec", arg]))


@pytest.mark.parametrize("value", ["p%40ss", 'a"b', "a\\b", "a\nb", "a,b", "a\rb", "a\0b", "a;b", "'a'", "a#b"])
def test_render_rejects_unsafe_environment_values(value: str) -> None:
    with pytest.raises(UnsafeValue, match=r"environment\.SECRET"):
        render(spec(environment={"SECRET": value}))


@pytest.mark.parametrize("key", ["lower", "A-B", "1A", "A B", "A\nB", ""])
def test_render_rejects_bad_environment_keys(key: str) -> None:
    with pytest.raises(UnsafeValue, match="environment"):
        render(spec(environment={key: "x"}))


@pytest.mark.parametrize(("field", "value"), [
    ("directory", Path("/srv/fl eet")), ("directory", Path("relative")), ("stdout_logfile", Path("/l/%(ENV_X)s")),
    ("startsecs", 1), ("stdout_logfile_maxbytes", "10MB\n[x]"), ("stopwaitsecs", -1), ("command", []),
])
def test_render_rejects_other_unsafe_fields(field: str, value: object) -> None:
    with pytest.raises(UnsafeValue, match=field):
        render(spec("camera-a", **{field: value}))


@pytest.mark.parametrize("name", ["all", "camera-", "camera-A", "camera-a:b", "camera-a/b", "camera-a b", "cam-x",
                                  "camera-" + "x" * 61, "camera-events", "camera-all", "camera-a\n[x]"])
def test_bad_names_are_refused(name: str) -> None:
    with pytest.raises(UnsafeValue, match="name"):
        spec(name=name)


def test_program_for_camera_uses_only_the_slug(tmp_path: Path) -> None:
    for camera_id in ["cam-001", "a;b", "x\n[program:evil]\ncommand=touch /tmp/pwned", '"quoted"', "p%40ss",
                      "../../etc", "all", "events", "EVENTS", "c" * 5000]:
        program = program_for_camera(camera_id, python="/venv/bin/python", spec_path=tmp_path / "s.json",
                                     project_dir=tmp_path, log_dir=tmp_path / "logs")
        text = render(program)
        assert program.name.startswith("camera-") and program.name != "camera-events"
        assert program.stdout_logfile == tmp_path / "logs" / f"{program.name}.log"
        assert sum(line.startswith("[") for line in text.splitlines()) == 1
        if re.search(r"[^a-z0-9_-]", camera_id):
            assert camera_id not in text
    assert program_for_camera("cam-001", python="p", spec_path=tmp_path, project_dir=tmp_path,
                              log_dir=tmp_path).name == "camera-cam-001"


def test_workers_get_the_memory_settings(tmp_path: Path) -> None:
    """glibc and OpenBLAS read these at process start: they must be in every camera's program (issue #14)."""
    from supervisor.datatypes import dict_of_key_value_pairs

    assert WORKER_ENVIRONMENT == {"MALLOC_MMAP_THRESHOLD_": "2097152", "MALLOC_TRIM_THRESHOLD_": "8388608",
                                  "MALLOC_ARENA_MAX": "2", "OPENBLAS_NUM_THREADS": "1"}
    program = program_for_camera("cam-001", python="/venv/bin/python", spec_path=tmp_path / "s.json",
                                 project_dir=tmp_path, log_dir=tmp_path)
    line = next(x for x in render(program).splitlines() if x.startswith("environment="))
    assert dict_of_key_value_pairs(line.removeprefix("environment=")) == {"PYTHONUNBUFFERED": "1",
                                                                          **WORKER_ENVIRONMENT}
    own = program_for_camera("cam-001", python="/venv/bin/python", spec_path=tmp_path / "s.json",
                             project_dir=tmp_path, log_dir=tmp_path, environment={"MALLOC_ARENA_MAX": "4"})
    assert own.environment["MALLOC_ARENA_MAX"] == "4"  # a program's own setting wins


def test_write_programs_is_minimal_and_leaves_other_files_alone(tmp_path: Path) -> None:
    other = tmp_path / "demo-rtsp.conf"
    other.write_text("[program:demo-rtsp]\ncommand=/bin/true\n")
    (tmp_path / "camera-events.conf").write_text(render_eventlistener(listener()))
    a, b = spec("camera-a"), spec("camera-b")
    assert write_programs(tmp_path, {"camera-a": a, "camera-b": b}).written == ["camera-a", "camera-b"]
    inode = (tmp_path / "camera-a.conf").stat().st_ino
    result = write_programs(tmp_path, {"camera-a": a, "camera-c": spec("camera-c")})
    assert (result.written, result.unchanged, result.removed) == (["camera-c"], ["camera-a"], ["camera-b"])
    assert (tmp_path / "camera-a.conf").stat().st_ino == inode  # byte-identical: not rewritten
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "camera-a.conf", "camera-c.conf", "camera-events.conf", "demo-rtsp.conf"]
    assert (tmp_path / "camera-c.conf").read_text() == render(spec("camera-c"))


def test_program_files_are_0644_and_crash_leftovers_go(tmp_path: Path) -> None:
    import os

    old_umask = os.umask(0o077)  # the mode must not depend on the gateway's umask
    try:
        leftover = tmp_path / ".camera-a.conf.abc123.tmp"  # a crash in the middle of a write
        leftover.write_text("[program:camera-a]\ncommand=/bin/tr")
        write_programs(tmp_path, {"camera-a": spec("camera-a")})
    finally:
        os.umask(old_umask)
    assert (tmp_path / "camera-a.conf").stat().st_mode & 0o777 == 0o644
    assert sorted(p.name for p in tmp_path.iterdir()) == ["camera-a.conf"]


def test_write_programs_changes_nothing_when_one_spec_is_unsafe(tmp_path: Path) -> None:
    write_programs(tmp_path, {"camera-a": spec("camera-a")})
    before = (tmp_path / "camera-a.conf").read_bytes()
    bad = spec("camera-b", environment={"X": "p%40ss"})
    with pytest.raises(UnsafeValue):
        write_programs(tmp_path, {"camera-a": spec("camera-a", startretries=9), "camera-b": bad})
    assert (tmp_path / "camera-a.conf").read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["camera-a.conf"]
    with pytest.raises(ValueError, match="keyed"):
        write_programs(tmp_path, {"cam-a": spec("camera-a")})


def test_eventlistener_section() -> None:
    lines = render_eventlistener(listener()).splitlines()
    assert "[eventlistener:camera-events]" in lines
    assert sum(line.startswith("[") for line in lines) == 1
    assert ("command=/venv/bin/python -m gateway.supervisor.events --push tcp://127.0.0.1:5603 --wake-interval=0.25"
            in lines)
    for line in ("events=PROCESS_STATE", "buffer_size=1000", "autorestart=true", "directory=/srv/fleet",
                 "stdout_logfile=NONE", "stderr_logfile=/srv/fleet/logs/events.log", "stderr_logfile_maxbytes=10MB"):
        assert line in lines
    assert "%" not in "\n".join(lines)


def test_eventlistener_paths_relative_to_the_config_file() -> None:
    text = render_eventlistener(listener(python=Here("../../.venv/bin/python"), directory=Here("../.."),
                                         stderr_logfile=Here("../../logs/e.log")))
    assert "command=%(here)s/../../.venv/bin/python -m gateway.supervisor.events" in text
    assert "directory=%(here)s/../..\n" in text and "stderr_logfile=%(here)s/../../logs/e.log\n" in text
    assert text.count("%") == 3  # only the renderer's own %(here)s


@pytest.mark.parametrize(("field", "value"), [
    ("push_endpoint", "tcp://x\n[program:evil]"), ("push_endpoint", "tcp://127.0.0.1:1 --x"),
    ("push_endpoint", "tcp://%(ENV_X)s"), ("python", Path("venv/bin/python")), ("python", Here("/abs/python")),
    ("python", Here("../%(ENV_HOME)s/python")), ("directory", Here("a b")), ("directory", Path("/a;b")),
    ("stderr_logfile", Here("x\n[program:evil]")), ("stderr_logfile", Path("rel.log")),
    ("wake_interval_s", -1.0), ("wake_interval_s", float("nan")), ("wake_interval_s", 61.0),
    ("stderr_logfile_maxbytes", "0"), ("stderr_logfile_maxbytes", "10MB;x"), ("stderr_logfile_backups", -1),
])
def test_eventlistener_refuses_unsafe_values(field: str, value: object) -> None:
    with pytest.raises(UnsafeValue, match=field):
        render_eventlistener(listener(**{field: value}))


@pytest.mark.parametrize(("mb", "size"), [(100, "100MB"), (100.0, "100MB"), (1, "1MB"), (0.5, "512KB"),
                                          (1.5, "1536KB"), (0.1, "103KB"), (0.0001, "1KB"), (1024, "1024MB"),
                                          (100.00000000001, "100MB"), (1 << 20, "1048576MB")])
def test_size_for_supervisord(mb: float, size: str) -> None:
    from supervisor.datatypes import byte_size

    assert size_for_supervisord(mb) == size
    assert byte_size(size) >= mb * 1024 * 1024 - 1e-3  # never smaller than asked
    assert render(spec(stdout_logfile_maxbytes=size)).count(f"stdout_logfile_maxbytes={size}\n") == 1


@pytest.mark.parametrize("mb", [0, -1, float("nan"), float("inf"), (1 << 20) + 1, True])
def test_size_for_supervisord_refuses_non_sizes(mb: float) -> None:
    with pytest.raises(UnsafeValue, match="size"):
        size_for_supervisord(mb)


def test_program_for_camera_log_rotation(tmp_path: Path) -> None:
    program = program_for_camera("cam-001", python="/venv/bin/python", spec_path=tmp_path / "s.json",
                                 project_dir=tmp_path, log_dir=tmp_path, stdout_logfile=tmp_path / "worker-cam.log",
                                 log_max_mb=100, log_backups=5)
    lines = render(program).splitlines()
    for line in (f"stdout_logfile={tmp_path}/worker-cam.log", "stdout_logfile_maxbytes=100MB",
                 "stdout_logfile_backups=5"):
        assert line in lines
    small = program_for_camera("cam-001", python="/venv/bin/python", spec_path=tmp_path / "s.json",
                               project_dir=tmp_path, log_dir=tmp_path, log_max_mb=2.5)
    assert small.stdout_logfile_maxbytes == "2560KB"


def test_supervisord_parses_back_exactly_what_was_given() -> None:
    from supervisor.datatypes import dict_of_key_value_pairs

    env = {"A": "", "B": "a b", "C": "x=y:z", "D": "$HOME `id` (1)", "E": "tcp://127.0.0.1:5601/x?y=1&z=2"}
    command = ["/venv/bin/python", "-m", "x.y", "--a=b,c", "user@host:/p+q"]
    lines = render(spec(environment=env, command=command)).splitlines()
    environment = next(line for line in lines if line.startswith("environment=")).removeprefix("environment=")
    assert dict_of_key_value_pairs(environment) == {"PYTHONUNBUFFERED": "1", **env}
    rendered_command = next(line for line in lines if line.startswith("command=")).removeprefix("command=")
    assert shlex.split(rendered_command) == command
