"""Fetching, caching and safely unpacking `.mpta` pipeline archives.

An archive is fetched once per model id into `cache_dir/<slug>-<hash>/`: downloaded to a temp
file, unpacked into a temp directory, validated in full (members and pipeline.json) and only then
renamed into place, so a cache directory is always complete and valid. A lock file per key lets
concurrent workers (separate processes) wait for one fetch and reuse its result.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import http.client
import json
import logging
import lzma
import os
import re
import shutil
import stat
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
import zipfile
import zlib
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path, PurePosixPath
from typing import Any

from ..urls import mask_url, opener_for
from .schema import PipelineConfig, PipelineConfigError, parse_pipeline

PIPELINE_FILE = "pipeline.json"
SOURCE_FILE = ".source.json"  # written by us into each cache directory: where it came from
_CHUNK = 1 << 16
_PROGRESS_S = 5.0


class ArchiveError(Exception):
    """An archive cannot be fetched, unpacked or loaded; the single-line message names what and where."""

    def __init__(self, message: str) -> None:
        super().__init__(re.sub(r"\s*\n\s*", " ", message))


def _sha256_text(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def _label(url: str) -> str:
    """The URL for messages and logs, without credentials or query tokens (presigned URLs)."""
    return mask_url(url, hide_query=True)


def _cache_key(model_id: int | str | None, url: str) -> str:
    """A safe directory name: the id is never used as a path, and never starts with a dot (ours)."""
    if model_id is None:
        return f"url-{_sha256_text(url)[:16]}"
    text = str(model_id)
    slug = re.sub(r"[^A-Za-z0-9_-]+", "_", text).strip("_-")[:48] or "model"
    return f"{slug}-{_sha256_text(text)[:10]}"


def _local_path(url: str) -> Path | None:
    """The file a `file://` URL or plain path names; None for http(s); ArchiveError for anything else."""
    parts = urllib.parse.urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme in ("http", "https"):
        return None
    if scheme == "file":
        if parts.netloc not in ("", "localhost"):
            raise ArchiveError(f"{_label(url)}: file:// URL names another host {parts.netloc!r}")
        return Path(urllib.request.url2pathname(parts.path))
    if scheme == "":
        return Path(url)
    raise ArchiveError(f"{_label(url)}: unsupported URL scheme {scheme!r} (use http, https, file or a local path)")


def _copy(read: Callable[[int], bytes], dest: Path, total: int | None, limit: int, label: str,
          log: logging.Logger | None) -> str:
    """Stream into `dest` within `limit` bytes; returns the sha256. Logs progress when given a log."""
    digest, got, next_pct, last = hashlib.sha256(), 0, 10, time.monotonic()
    with dest.open("wb") as out:
        while chunk := read(_CHUNK):
            got += len(chunk)
            if got > limit:  # Content-Length may be absent or lie
                raise ArchiveError(f"{label}: larger than the limit of {limit} bytes")
            digest.update(chunk)
            out.write(chunk)
            if log is None:
                continue
            pct = got * 100 // total if total else 0
            now = time.monotonic()
            if (total and pct >= next_pct) or now - last >= _PROGRESS_S:
                log.info("fetching %s: %d/%s bytes%s", label, got, total or "?", f" ({pct} %)" if total else "")
                next_pct, last = pct // 10 * 10 + 10, now
    if total is not None and got != total:
        raise ArchiveError(f"{label}: transfer ended after {got} of {total} bytes")
    return digest.hexdigest()


def _download(url: str, dest: Path, max_bytes: int, timeout_s: float, log: logging.Logger) -> dict[str, Any]:
    """Copy the archive to `dest`; returns what `.source.json` records about the source."""
    label, path = _label(url), _local_path(url)
    if path is not None:
        try:
            with path.open("rb") as src:
                st = os.fstat(src.fileno())
                if not stat.S_ISREG(st.st_mode):
                    raise ArchiveError(f"{label}: not a regular file")
                if st.st_size > max_bytes:
                    raise ArchiveError(f"{label}: {st.st_size} bytes, larger than the limit of {max_bytes} bytes")
                return {"sha256": _copy(src.read, dest, st.st_size, max_bytes, label, None),
                        "stat": [st.st_size, st.st_mtime_ns]}
        except OSError as err:
            raise ArchiveError(f"{label}: cannot read: {err.strerror or err}") from err
    clean, opener = opener_for(url)  # user:password@ becomes HTTP auth, never part of the host
    request = urllib.request.Request(clean, headers={"User-Agent": "detector-worker"})
    try:
        # timeout_s bounds each connect/read, not the whole transfer (a big archive may take long)
        with opener.open(request, timeout=timeout_s) as resp:
            length = resp.headers.get("Content-Length")
            total = int(length) if length and length.strip().isdigit() else None
            if total is not None and total > max_bytes:
                raise ArchiveError(f"{label}: Content-Length {total} is larger than the limit of {max_bytes} bytes")
            log.info("fetching %s (%s bytes)", label, total if total is not None else "unknown")
            return {"sha256": _copy(resp.read, dest, total, max_bytes, label, log)}
    except urllib.error.HTTPError as err:
        err.close()
        raise ArchiveError(f"{label}: HTTP {err.code} {err.reason}") from None
    except urllib.error.URLError as err:
        raise ArchiveError(f"{label}: cannot connect: {err.reason}") from err
    except (OSError, http.client.HTTPException) as err:
        raise ArchiveError(f"{label}: download failed: {err or type(err).__name__}") from err


def _member_problem(info: zipfile.ZipInfo) -> str | None:
    name = info.filename
    if name.startswith("/") or re.match(r"[A-Za-z]:", name):
        return "is an absolute path"
    if "\\" in name:
        return "contains a backslash"
    parts = name.removesuffix("/").split("/")
    if ".." in parts:
        return "has a '..' component"
    if any(p in ("", ".") for p in parts):
        return "has an empty or '.' path component"
    mode = info.external_attr >> 16
    if stat.S_ISLNK(mode):
        return "is a symbolic link"
    if stat.S_IFMT(mode) not in (0, stat.S_IFREG, stat.S_IFDIR):
        return "is not a regular file or directory"
    if info.flag_bits & 0x1:
        return "is encrypted"
    return None


def _plan(zf: zipfile.ZipFile, label: str, max_members: int, max_unpacked: int) -> tuple[list[zipfile.ZipInfo], str]:
    """Check every member before writing anything; returns the members and a folder prefix to strip."""
    infos = zf.infolist()
    if len(infos) > max_members:
        raise ArchiveError(f"{label}: {len(infos)} members, more than the limit of {max_members}")
    seen: set[str] = set()
    total = 0
    for info in infos:
        if problem := _member_problem(info):
            raise ArchiveError(f"{label}: member {info.filename!r} {problem}")
        key = info.filename.removesuffix("/")
        if key in seen or key == SOURCE_FILE:
            raise ArchiveError(f"{label}: member {info.filename!r} is duplicated or reserved")
        seen.add(key)
        total += info.file_size
        if total > max_unpacked:
            raise ArchiveError(f"{label}: unpacks to more than the limit of {max_unpacked} bytes (zip bomb?)")
    files = {i.filename for i in infos if not i.is_dir()}
    for name in seen:  # `a` as a file and `a/b` would make `a` both a file and a directory
        parents = PurePosixPath(name).parents
        if clash := next((str(p) for p in parents if str(p) in files), None):
            raise ArchiveError(f"{label}: member {name!r} lies under {clash!r}, which is a file")
    if PIPELINE_FILE in files:
        return infos, ""
    # Zipping a folder puts everything under one top-level folder: accept that layout too.
    tops = {name.split("/", 1)[0] for name in seen}
    if len(tops) == 1 and f"{(top := tops.pop())}/{PIPELINE_FILE}" in files:
        return infos, f"{top}/"
    raise ArchiveError(f"{label}: no {PIPELINE_FILE} in the archive")


def _unpack(archive: Path, dest: Path, label: str, max_members: int, max_unpacked: int) -> None:
    try:
        with zipfile.ZipFile(archive) as zf:
            infos, prefix = _plan(zf, label, max_members, max_unpacked)
            dest.mkdir()
            root, budget = dest.resolve(), max_unpacked
            for info in infos:
                rel = info.filename.removeprefix(prefix).removesuffix("/")
                if not rel:
                    continue
                target = dest / rel
                if not target.resolve().is_relative_to(root):
                    raise ArchiveError(f"{label}: member {info.filename!r} resolves outside the archive directory")
                if info.is_dir():
                    target.mkdir(parents=True, exist_ok=True)
                    continue
                target.parent.mkdir(parents=True, exist_ok=True)
                # Reading to the end makes zipfile verify the CRC (what testzip does, without a second pass).
                with zf.open(info) as src, target.open("xb") as out:
                    while chunk := src.read(_CHUNK):
                        budget -= len(chunk)
                        if budget < 0:  # sizes in the directory can lie
                            raise ArchiveError(f"{label}: unpacks to more than the limit of {max_unpacked} bytes")
                        out.write(chunk)
    except (zipfile.BadZipFile, zipfile.LargeZipFile, EOFError, zlib.error, lzma.LZMAError,
            NotImplementedError) as err:
        raise ArchiveError(f"{label}: not a valid zip archive ({err})") from err
    except OSError as err:
        raise ArchiveError(f"{label}: cannot unpack: {err}") from err


def _read_source(directory: Path) -> dict[str, Any]:
    try:
        source = json.loads((directory / SOURCE_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return source if isinstance(source, dict) else {}


def _cache_is_current(target: Path, url: str) -> bool:
    source = _read_source(target)
    if source.get("url_sha256") != _sha256_text(url) or not (target / PIPELINE_FILE).is_file():
        return False
    if "stat" in source:  # a local file repacked in place (same path) must be picked up again
        path = _local_path(url)
        try:
            st = path.stat() if path is not None else None
        except OSError:
            return True  # source gone: the cached copy is still the archive this URL named
        return st is not None and source["stat"] == [st.st_size, st.st_mtime_ns]
    return True


@contextlib.contextmanager
def _locked(path: Path, label: str, log: logging.Logger) -> Iterator[None]:
    with path.open("a+b") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            log.info("waiting for another process fetching %s", label)
            fcntl.flock(handle, fcntl.LOCK_EX)
        yield  # closing the file releases the lock, also if this process dies


def fetch_archive(url: str, cache_dir: Path, model_id: int | str | None, *, max_bytes: int = 512 * 2**20,
                  max_members: int = 256, max_unpacked_bytes: int = 2 * 2**30, timeout_s: float = 60,
                  log: logging.Logger | None = None) -> Path:
    """The directory of the unpacked, validated archive at `url`, fetched once per model id."""
    log = log or logging.getLogger(__name__)
    label = _label(url)
    local = _local_path(url)  # an unsupported scheme fails before anything is created
    name = (local.name if local is not None else PurePosixPath(urllib.parse.urlsplit(url).path).name) or label
    key = _cache_key(model_id, url)
    cache_dir.mkdir(parents=True, exist_ok=True)
    target = cache_dir / key
    with _locked(cache_dir / f".{key}.lock", label, log):
        if _cache_is_current(target, url):
            log.info("using cached %s for model %s", target, model_id)
            return target
        for stale in cache_dir.glob(f".{key}.tmp-*"):  # left by a process killed mid-fetch (we hold the lock)
            shutil.rmtree(stale, ignore_errors=True)
        with tempfile.TemporaryDirectory(prefix=f".{key}.tmp-", dir=cache_dir) as tmp:
            work = Path(tmp)
            source = _download(url, work / "archive", max_bytes, timeout_s, log)
            staged = work / "unpacked"
            _unpack(work / "archive", staged, label, max_members, max_unpacked_bytes)
            _load(staged, name)  # never cache an archive the pipeline could not use
            source |= {"url": label, "url_sha256": _sha256_text(url), "name": name,
                       "model_id": None if model_id is None else str(model_id),
                       "fetched_at": datetime.now(UTC).isoformat(timespec="seconds")}
            (staged / SOURCE_FILE).write_text(json.dumps(source, indent=2) + "\n", encoding="utf-8")
            # Old directory out of the way first (into the temp dir, which cleans it up), then the new one in.
            if target.exists() or target.is_symlink():
                os.rename(target, work / "old")
            os.rename(staged, target)
    log.info("model %s: %s unpacked into %s", model_id, label, target)
    return target


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
