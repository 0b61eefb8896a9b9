"""Fetching, caching and safely unpacking `.mpta` pipeline archives.

The cache is keyed by content: an archive lands in `cache_dir/sha256-<digest>/`, whatever URL
named it, so the same archive named by a path and by a `file://` URI is unpacked once, and a new
archive for a model id lands in a new directory while running workers keep theirs. Each archive
is downloaded to a temp file, its digest checked against a pin (`ModelRef.sha256`) when there is
one, unpacked into a temp directory, validated in full (members and pipeline.json) and only then
renamed into place, so a cache directory is always complete and valid. ONNX files converted from
an archive's `.pt` files are written into its directory: they live and go with their content.

Files beside the content directories (all ours, all dot-named):
- `.urls/<hash of URL>.json`: which digest a URL gave (and, for a local file, its size and mtime),
  so a restart finds its directory without fetching or hashing anything;
- `.url-<hash>.lock`: one fetch of a URL at a time (concurrent workers wait and reuse it);
- `.sha256-<digest>.use.lock`: held with a shared `flock` by every worker running that archive
  (`ArchiveLease`); `collect_garbage` takes it exclusively, so it never removes a directory in use;
- `.sha256-<digest>.unused`: since when nobody has used it; after `grace_s` the directory goes.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import os
import shutil
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path, PurePosixPath
from typing import Any, BinaryIO

from .schema import PipelineConfig, PipelineConfigError, parse_pipeline
from .transfer import (
    PIPELINE_FILE,
    SOURCE_FILE,
    Progress,
    _check_regular,
    _download,
    _label,
    _local_path,
    _unpack,
)
from .transfer import ArchiveError as ArchiveError  # re-exported: the one error of archives

CONTENT_PREFIX = "sha256-"
INDEX_DIR = ".urls"
DEFAULT_GRACE_S = 3600.0  # an unused archive version stays this long (a worker restarting finds it)


def _sha256_text(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def _url_key(url: str) -> str:
    return _sha256_text(url)[:24]


def content_dir_name(sha256: str) -> str:
    return f"{CONTENT_PREFIX}{sha256}"


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _read_source(directory: Path) -> dict[str, Any]:
    return _read_json(directory / SOURCE_FILE)


def _known_digest(cache_dir: Path, url: str) -> str | None:
    """The digest this URL gave last time, if it still names the same thing (a local file may have
    been repacked in place: then its size, mtime or inode differ and it is read again)."""
    entry = _read_json(cache_dir / INDEX_DIR / f"{_url_key(url)}.json")
    digest = entry.get("sha256")
    if entry.get("url_sha256") != _sha256_text(url) or not isinstance(digest, str):
        return None
    if "stat" in entry:
        path = _local_path(url)
        try:
            st = path.stat() if path is not None else None
        except OSError:
            return digest  # source gone: the cached copy is still the archive this URL named
        if st is None or entry["stat"] != [st.st_size, st.st_mtime_ns, st.st_ino]:
            return None
    return digest


def _remember(cache_dir: Path, url: str, source: dict[str, Any]) -> None:
    index = cache_dir / INDEX_DIR
    index.mkdir(exist_ok=True)
    entry: dict[str, Any] = {"url_sha256": _sha256_text(url)}
    entry |= {k: source[k] for k in ("sha256", "stat") if k in source}
    part = index / f".{_url_key(url)}.json.{os.getpid()}"
    part.write_text(json.dumps(entry) + "\n", encoding="utf-8")
    os.replace(part, index / f"{_url_key(url)}.json")


def _complete(directory: Path) -> bool:
    return (directory / PIPELINE_FILE).is_file() and (directory / SOURCE_FILE).is_file()


@contextlib.contextmanager
def _locked(path: Path, label: str, log: logging.Logger, on_progress: Progress | None = None) -> Iterator[None]:
    with path.open("a+b") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            log.info("waiting for another process fetching %s", label)
            if on_progress is not None:
                on_progress("fetching", f"waiting for another process fetching {label}")
            fcntl.flock(handle, fcntl.LOCK_EX)
        yield  # closing the file releases the lock, also if this process dies


class ArchiveLease:
    """A worker's use of one cached archive: a shared `flock` on its `.use.lock` file, held until
    `close()` (or this process's death), so `collect_garbage` leaves the directory alone."""

    def __init__(self, cache_dir: Path, directory: Path, sha256: str) -> None:
        self.directory, self.sha256 = directory, sha256
        self._use = cache_dir / f".{directory.name}.use.lock"
        self._unused = cache_dir / f".{directory.name}.unused"
        self._handle: BinaryIO | None = self._use.open("a+b")
        fcntl.flock(self._handle, fcntl.LOCK_SH)  # waits only while garbage collection holds it
        with contextlib.suppress(FileNotFoundError):
            self._unused.unlink()

    def close(self) -> None:
        """Release; the last user marks the directory unused from now (its grace period starts)."""
        handle, self._handle = self._handle, None
        if handle is None:
            return
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)  # converts ours: succeeds if nobody else uses it
        except BlockingIOError:
            pass
        else:
            if self.directory.exists():
                self._unused.touch()
        finally:
            handle.close()

    def __enter__(self) -> ArchiveLease:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


@dataclass
class CachedArchive:
    directory: Path
    sha256: str
    lease: ArchiveLease

    def close(self) -> None:
        self.lease.close()


def acquire_archive(url: str, cache_dir: Path, model_id: int | str | None, *, sha256: str | None = None,
                    max_bytes: int = 512 * 2**20, max_members: int = 256, max_unpacked_bytes: int = 2 * 2**30,
                    timeout_s: float = 60, grace_s: float = DEFAULT_GRACE_S, log: logging.Logger | None = None,
                    on_progress: Progress | None = None) -> CachedArchive:
    """The unpacked, validated archive at `url` (with a digest of `sha256` when pinned), held in use
    until the result's `close()`. Fetched only when the URL is new, names a changed local file, or
    its cached content is gone; one directory per content, however many URLs name it."""
    log = log or logging.getLogger(__name__)
    label = _label(url)
    local = _local_path(url)  # an unsupported scheme fails before anything is created
    if local is not None:
        _check_regular(local, label)  # a FIFO or device never reaches the lock (it would block there)
    name = (local.name if local is not None else PurePosixPath(urllib.parse.urlsplit(url).path).name) or label
    cache_dir.mkdir(parents=True, exist_ok=True)
    key = _url_key(url)
    with _locked(cache_dir / f".url-{key}.lock", label, log, on_progress):
        digest = _known_digest(cache_dir, url)
        if digest is not None and (sha256 is None or digest == sha256):
            lease = ArchiveLease(cache_dir, cache_dir / content_dir_name(digest), digest)
            if _complete(lease.directory):
                log.info("using cached %s for model %s", lease.directory.name, model_id)
                _collect_quietly(cache_dir, grace_s, log)
                return CachedArchive(lease.directory, digest, lease)
            lease.close()  # collected meanwhile: fetch it again
        for stale in cache_dir.glob(f".tmp-{key}-*"):  # left by a process killed mid-fetch (we hold the lock)
            shutil.rmtree(stale, ignore_errors=True)
        with tempfile.TemporaryDirectory(prefix=f".tmp-{key}-", dir=cache_dir) as tmp:
            work = Path(tmp)
            source = _download(url, work / "archive", max_bytes, timeout_s, log, on_progress)
            digest = source["sha256"]
            if sha256 is not None and digest != sha256:
                raise ArchiveError(f"{label}: sha256 is {digest}, not the pinned {sha256} (pipeline_sha256 in "
                                   "cameras.yaml or models.pinned_sha256 in the gateway settings): refused")
            target = cache_dir / content_dir_name(digest)
            lease = ArchiveLease(cache_dir, target, digest)
            try:
                if not _complete(target):
                    if on_progress is not None:
                        on_progress("fetching", f"unpacking {label}")
                    staged = work / "unpacked"
                    _unpack(work / "archive", staged, label, max_members, max_unpacked_bytes)
                    _load(staged, name)  # never cache an archive the pipeline could not use
                    info = {"sha256": digest, "url": label, "name": name,
                            "model_id": None if model_id is None else str(model_id),
                            "fetched_at": datetime.now(UTC).isoformat(timespec="seconds")}
                    (staged / SOURCE_FILE).write_text(json.dumps(info, indent=2) + "\n", encoding="utf-8")
                    if target.exists():  # incomplete (a crash mid-rename cannot make one, but be sure)
                        os.rename(target, work / "old")
                    try:
                        os.rename(staged, target)
                    except OSError as err:  # landed by another URL's fetch just now: same bytes
                        if not _complete(target):
                            raise ArchiveError(f"{label}: cannot move into the cache: {err}") from err
                    log.info("model %s: %s unpacked into %s", model_id, label, target)
                else:
                    log.info("model %s: %s is the cached %s (same content)", model_id, label, target.name)
                _remember(cache_dir, url, source)
            except BaseException:
                lease.close()
                raise
    _collect_quietly(cache_dir, grace_s, log)
    return CachedArchive(target, digest, lease)


def _collect_quietly(cache_dir: Path, grace_s: float, log: logging.Logger) -> None:
    try:
        collect_garbage(cache_dir, grace_s, log)
    except OSError as err:  # never a reason to refuse an archive that is there
        log.warning("cleaning the model cache %s failed: %s", cache_dir, err)


def collect_garbage(cache_dir: Path, grace_s: float = DEFAULT_GRACE_S, log: logging.Logger | None = None) -> list[str]:
    """Remove archive directories nobody has used for `grace_s` (and those of the older, per-model-id
    layout); returns their names. A directory in use (a lease's shared lock) is never touched."""
    log = log or logging.getLogger(__name__)
    removed = []
    now = time.time()
    for directory in sorted(cache_dir.iterdir()):
        name = directory.name
        if name.startswith(".") or not directory.is_dir() or directory.is_symlink():
            continue
        if not name.startswith(CONTENT_PREFIX) and not (directory / SOURCE_FILE).is_file():
            continue  # not ours
        with (cache_dir / f".{name}.use.lock").open("a+b") as handle:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                continue  # in use
            marker = cache_dir / f".{name}.unused"
            try:
                since = marker.stat().st_mtime
            except FileNotFoundError:
                marker.touch()  # first seen unused now: its grace period starts
                continue
            if now - since < grace_s:
                continue
            trash = cache_dir / f".trash-{name}-{os.getpid()}"
            os.rename(directory, trash)
            shutil.rmtree(trash, ignore_errors=True)
            marker.unlink(missing_ok=True)
            removed.append(name)
            log.info("removed the cached archive %s: unused for over %.0f s", name, grace_s)
    return removed


def fetch_archive(url: str, cache_dir: Path, model_id: int | str | None, **kwargs: Any) -> Path:
    """The directory of the unpacked, validated archive at `url` (see `acquire_archive`), not held."""
    cached = acquire_archive(url, cache_dir, model_id, **kwargs)
    cached.close()
    return cached.directory


def _load(directory: Path, name: str) -> PipelineConfig:
    try:
        text = (directory / PIPELINE_FILE).read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise ArchiveError(f"{name}: no {PIPELINE_FILE} in {directory}") from None
    except UnicodeDecodeError as err:
        raise ArchiveError(f"{name}: {PIPELINE_FILE} is not UTF-8 text (byte {err.start})") from None
    except OSError as err:
        raise ArchiveError(f"{name}: cannot read {PIPELINE_FILE}: {err.strerror or err}") from err
    try:
        data = json.loads(text)
    except json.JSONDecodeError as err:
        raise ArchiveError(f"{name}: {PIPELINE_FILE} is not valid JSON: {err.msg} "
                           f"at line {err.lineno} column {err.colno}") from None
    try:
        return parse_pipeline(data, model_dir=directory)
    except PipelineConfigError as err:
        raise ArchiveError(f"{name}: {err}") from err


def load_pipeline(directory: Path) -> PipelineConfig:
    """Read and validate `directory/pipeline.json` (model files included) as an unpacked archive."""
    name = _read_source(directory).get("name")
    return _load(directory, name if isinstance(name, str) and name else directory.name)


def open_archive(url: str, cache_dir: Path, model_id: int | str | None, **limits: Any) -> tuple[Path, PipelineConfig]:
    """fetch_archive + load_pipeline: the cache directory and its validated pipeline."""
    directory = fetch_archive(url, cache_dir, model_id, **limits)
    return directory, load_pipeline(directory)
