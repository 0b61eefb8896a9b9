"""The model cache by content: URLs of one archive share a directory, new versions land beside
old ones, unused versions go after a grace period, pins are checked, special files are refused."""

from __future__ import annotations

import fcntl
import hashlib
import http.server
import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from detector_worker.pipeline.archive import (
    ArchiveError,
    acquire_archive,
    collect_garbage,
    fetch_archive,
    load_pipeline,
)
from detector_worker.synthetic.standin import BODY, BRAND, DETECTOR, pack_archive, standin_pipeline


@pytest.fixture
def archive(tmp_path: Path) -> Path:
    return _archive(tmp_path, "good.mpta", 0.6)


def _archive(tmp_path: Path, name: str, min_confidence: float) -> Path:
    models = tmp_path / "models"
    models.mkdir(exist_ok=True)
    files = {}
    for model in (DETECTOR, BRAND, BODY):
        (models / f"{model}.pt").write_bytes(f"not a real model: {model}".encode() * 20)
        files[f"{model}.pt"] = models / f"{model}.pt"
    pipeline = standin_pipeline(224, 224)
    pipeline["pipeline"]["minConfidence"] = min_confidence
    return pack_archive(tmp_path / name, pipeline, files)


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def content_dirs(cache: Path) -> list[str]:
    return sorted(p.name for p in cache.iterdir() if not p.name.startswith("."))


def test_one_directory_for_every_url_of_one_archive(tmp_path: Path, archive: Path) -> None:
    cache = tmp_path / "cache"
    copy = tmp_path / "elsewhere" / "same.mpta"
    copy.parent.mkdir()
    copy.write_bytes(archive.read_bytes())
    dirs = {fetch_archive(url, cache, model_id) for url, model_id in
            ((str(archive), 1), (archive.as_uri(), "backend-7"), (str(copy), None), (f"file://localhost{archive}", 1))}
    assert len(dirs) == 1
    (directory,) = dirs
    assert directory.name == f"sha256-{digest(archive)}"
    assert content_dirs(cache) == [directory.name]


def test_extra_files_of_a_cached_archive_are_never_deleted_by_another_url(tmp_path: Path, archive: Path) -> None:
    """What used to happen: a second URL re-unpacked the archive and threw away the ONNX files."""
    cache = tmp_path / "cache"
    directory = fetch_archive(str(archive), cache, 1)
    (directory / f"{DETECTOR}.onnx").write_bytes(b"converted")
    again = fetch_archive(archive.as_uri(), cache, 1)
    assert again == directory and (directory / f"{DETECTOR}.onnx").read_bytes() == b"converted"


def test_a_restart_finds_its_directory_without_reading_the_archive(tmp_path: Path, archive: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    cache = tmp_path / "cache"
    directory = fetch_archive(str(archive), cache, 1)
    from detector_worker.pipeline import archive as module

    def no_download(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("downloaded again")

    monkeypatch.setattr(module, "_download", no_download)
    start = time.monotonic()
    assert fetch_archive(str(archive), cache, 1) == directory
    assert time.monotonic() - start < 0.2


def test_new_version_lands_beside_the_one_in_use(tmp_path: Path, archive: Path) -> None:
    cache = tmp_path / "cache"
    running = acquire_archive(str(archive), cache, 9)
    _archive(tmp_path, "good.mpta", 0.8)  # repacked in place: same path, new content
    newer = acquire_archive(str(archive), cache, 9)
    assert newer.directory != running.directory
    assert load_pipeline(running.directory).pipeline.min_confidence == 0.6
    assert load_pipeline(newer.directory).pipeline.min_confidence == 0.8
    running.close()
    newer.close()


def test_unused_versions_go_after_the_grace_period_and_never_while_in_use(tmp_path: Path, archive: Path) -> None:
    cache = tmp_path / "cache"
    old = acquire_archive(str(archive), cache, 9)
    _archive(tmp_path, "good.mpta", 0.8)
    new = acquire_archive(str(archive), cache, 9)
    assert collect_garbage(cache, grace_s=0) == []  # both in use
    old.close()
    marker = cache / f".{old.directory.name}.unused"
    assert marker.is_file()  # the last user marked it: its grace period runs from now
    assert collect_garbage(cache, grace_s=60) == []
    past = time.time() - 120
    os.utime(marker, (past, past))
    assert collect_garbage(cache, grace_s=60) == [old.directory.name]
    assert content_dirs(cache) == [new.directory.name]
    assert collect_garbage(cache, grace_s=0) == []  # in use, whatever the grace
    new.close()


def test_a_killed_worker_leaves_no_use_behind_but_its_version_keeps_its_grace(tmp_path: Path, archive: Path) -> None:
    cache = tmp_path / "cache"
    pid = os.fork()
    if pid == 0:  # a worker: takes the archive in use, then dies without closing anything
        acquire_archive(str(archive), cache, 9)
        os.kill(os.getpid(), 9)
    os.waitpid(pid, 0)
    (directory,) = content_dirs(cache)
    assert collect_garbage(cache, grace_s=3600) == []  # first seen unused: marked, kept
    assert (cache / f".{directory}.unused").is_file()
    restarted = acquire_archive(str(archive), cache, 9)  # the restart takes it again: the mark goes
    assert restarted.directory.name == directory and not (cache / f".{directory}.unused").exists()
    restarted.close()


def test_collected_directory_is_fetched_again(tmp_path: Path, archive: Path) -> None:
    cache = tmp_path / "cache"
    first = acquire_archive(str(archive), cache, 1)
    first.close()
    past = time.time() - 10
    os.utime(cache / f".{first.directory.name}.unused", (past, past))
    assert collect_garbage(cache, grace_s=1) == [first.directory.name]
    again = acquire_archive(str(archive), cache, 1)
    assert again.directory == first.directory and load_pipeline(again.directory).pipeline.model_id == DETECTOR
    again.close()


def test_old_per_model_id_directories_are_collected(tmp_path: Path, archive: Path) -> None:
    cache = tmp_path / "cache"
    legacy = cache / "car_frontal_pipeline_v1-f68e572e7f"
    legacy.mkdir(parents=True)
    (legacy / ".source.json").write_text("{}")
    (cache / "not-ours").mkdir()
    assert collect_garbage(cache, grace_s=0) == []
    assert collect_garbage(cache, grace_s=0) == [legacy.name]
    assert (cache / "not-ours").is_dir()


def test_pinned_digest_is_checked(tmp_path: Path, archive: Path) -> None:
    cache = tmp_path / "cache"
    good = digest(archive)
    assert fetch_archive(str(archive), cache, 1, sha256=good).name == f"sha256-{good}"
    wrong = "0" * 64
    with pytest.raises(ArchiveError) as info:
        fetch_archive(str(archive), tmp_path / "cache2", 1, sha256=wrong)
    message = str(info.value)
    assert f"sha256 is {good}, not the pinned {wrong}" in message and "pipeline_sha256" in message
    assert not any(p.name.startswith("sha256-") for p in (tmp_path / "cache2").iterdir())
    # the cached copy of a URL is no excuse either: a pin that does not match is refused
    with pytest.raises(ArchiveError, match="not the pinned"):
        fetch_archive(str(archive), cache, 1, sha256=wrong)


@pytest.mark.parametrize("kind", ["fifo", "directory", "device"])
def test_special_files_are_refused_before_opening(tmp_path: Path, archive: Path, kind: str) -> None:
    cache = tmp_path / "cache"
    path = tmp_path / f"special-{kind}.mpta"
    if kind == "fifo":
        os.mkfifo(path)
    elif kind == "directory":
        path.mkdir()
    else:
        path = Path("/dev/zero")
    for url in (str(path), path.as_uri()):
        start = time.monotonic()
        with pytest.raises(ArchiveError, match="not a regular file: refused"):
            fetch_archive(url, cache, 1)
        assert time.monotonic() - start < 1.0


def test_fifo_never_holds_the_cache_lock(tmp_path: Path, archive: Path) -> None:
    """A FIFO URL used to block inside the fetch, holding the lock every worker of that URL waits on."""
    cache = tmp_path / "cache"
    fifo = tmp_path / "pipe.mpta"
    os.mkfifo(fifo)
    errors: list[str] = []

    def fetch_fifo() -> None:
        try:
            fetch_archive(str(fifo), cache, 1)
        except ArchiveError as err:
            errors.append(str(err))

    thread = threading.Thread(target=fetch_fifo, daemon=True)
    thread.start()
    thread.join(2.0)
    assert not thread.is_alive(), "the fetch of a FIFO blocked"
    assert errors and "a FIFO" in errors[0]
    for lock in cache.glob(".url-*.lock"):  # nobody holds a fetch lock
        with lock.open("a") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    assert fetch_archive(str(archive), cache, 1).is_dir()


class _Redirects(http.server.BaseHTTPRequestHandler):
    target = ""

    def do_GET(self) -> None:
        self.send_response(302)
        self.send_header("Location", self.target)
        self.end_headers()

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def redirecting() -> Iterator[tuple[str, type[_Redirects]]]:
    handler = type("Handler", (_Redirects,), {})
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}/x.mpta", handler
    httpd.shutdown()
    httpd.server_close()


@pytest.mark.parametrize("target", ["ftp://127.0.0.1:9/x.mpta", "file:///etc/passwd"])
def test_archive_redirects_only_to_http(tmp_path: Path, redirecting: tuple[str, type[_Redirects]],
                                        target: str) -> None:
    url, handler = redirecting
    handler.target = target
    with pytest.raises(ArchiveError) as info:
        fetch_archive(url, tmp_path / "cache", 1, timeout_s=3)
    assert "redirect" in str(info.value).lower() or "HTTP 302" in str(info.value)
