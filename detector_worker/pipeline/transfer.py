"""Getting an archive's bytes and unpacking them, refusing whatever is unsafe.

Local files must be regular files (a FIFO would block, a device never end); downloads follow
redirects to http(s) only and stop at a size limit; zip members are checked before anything is
written (no absolute paths, `..`, links, backslashes or zip bombs). Every error is one
`ArchiveError` line that names the archive without its credentials.
"""

from __future__ import annotations

import hashlib
import http.client
import logging
import lzma
import os
import re
import stat
import time
import urllib.error
import urllib.parse
import urllib.request
import zipfile
import zlib
from collections.abc import Callable
from pathlib import Path, PurePosixPath
from typing import Any

from ..urls import mask_url, opener_for

PIPELINE_FILE = "pipeline.json"
SOURCE_FILE = ".source.json"  # written by us into each cache directory: where it came from
_CHUNK = 1 << 16
_PROGRESS_S = 5.0


class ArchiveError(Exception):
    """An archive cannot be fetched, unpacked or loaded; the single-line message names what and where."""

    def __init__(self, message: str) -> None:
        super().__init__(re.sub(r"\s*\n\s*", " ", message))


def _label(url: str) -> str:
    """The URL for messages and logs, without credentials or query tokens (presigned URLs)."""
    return mask_url(url, hide_query=True)


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


def _kind(mode: int) -> str:
    for test, name in ((stat.S_ISFIFO, "a FIFO"), (stat.S_ISDIR, "a directory"), (stat.S_ISCHR, "a character device"),
                       (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket")):
        if test(mode):
            return name
    return "not a regular file"


def _check_regular(path: Path, label: str) -> os.stat_result:
    """Refuse FIFOs, devices, sockets and directories before anything opens them (a FIFO would block)."""
    try:
        st = path.stat()
    except OSError as err:
        raise ArchiveError(f"{label}: cannot read: {err.strerror or err}") from err
    if not stat.S_ISREG(st.st_mode):
        raise ArchiveError(f"{label}: is {_kind(st.st_mode)}, not a regular file: refused")
    return st


class _HttpOnlyRedirects(urllib.request.HTTPRedirectHandler):
    """Archives follow redirects to http(s) only (urllib would follow ftp:// too)."""

    def redirect_request(self, req: urllib.request.Request, fp: Any, code: int, msg: str, headers: Any,
                         newurl: str) -> urllib.request.Request | None:
        scheme = urllib.parse.urlsplit(urllib.parse.urljoin(req.full_url, newurl)).scheme.lower()
        if scheme not in ("http", "https"):
            raise ArchiveError(f"{_label(req.full_url)}: redirect to a {scheme}: URL refused (only http and https)")
        return super().redirect_request(req, fp, code, msg, headers, newurl)


Progress = Callable[[str, str], None]  # (phase, detail): "fetching", "42 % of model.mpta"


def _copy(read: Callable[[int], bytes], dest: Path, total: int | None, limit: int, label: str,
          log: logging.Logger | None, on_progress: Progress | None = None) -> str:
    """Stream into `dest` within `limit` bytes; returns the sha256. Logs progress when given a log."""
    digest, got, next_pct, last = hashlib.sha256(), 0, 10, time.monotonic()
    last_report = 0.0
    with dest.open("wb") as out:
        while chunk := read(_CHUNK):
            got += len(chunk)
            if got > limit:  # Content-Length may be absent or lie
                raise ArchiveError(f"{label}: larger than the limit of {limit} bytes")
            digest.update(chunk)
            out.write(chunk)
            now = time.monotonic()
            if on_progress is not None and now - last_report >= 0.2:
                last_report = now
                on_progress("fetching", f"{label}: {got} of {total if total is not None else '?'} bytes")
            if log is None:
                continue
            pct = got * 100 // total if total else 0
            if (total and pct >= next_pct) or now - last >= _PROGRESS_S:
                log.info("fetching %s: %d/%s bytes%s", label, got, total or "?", f" ({pct} %)" if total else "")
                next_pct, last = pct // 10 * 10 + 10, now
    if total is not None and got != total:
        raise ArchiveError(f"{label}: transfer ended after {got} of {total} bytes")
    return digest.hexdigest()


def _download(url: str, dest: Path, max_bytes: int, timeout_s: float, log: logging.Logger,
              on_progress: Progress | None = None) -> dict[str, Any]:
    """Copy the archive to `dest`; returns what the URL index records about the source."""
    label, path = _label(url), _local_path(url)
    if path is not None:
        _check_regular(path, label)
        try:
            # O_NONBLOCK: a FIFO swapped in after the check cannot block us (fstat refuses it below)
            fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC | getattr(os, "O_NOCTTY", 0))
            with os.fdopen(fd, "rb") as src:
                st = os.fstat(src.fileno())
                if not stat.S_ISREG(st.st_mode):
                    raise ArchiveError(f"{label}: is {_kind(st.st_mode)}, not a regular file: refused")
                if st.st_size > max_bytes:
                    raise ArchiveError(f"{label}: {st.st_size} bytes, larger than the limit of {max_bytes} bytes")
                os.set_blocking(fd, True)
                return {"sha256": _copy(src.read, dest, st.st_size, max_bytes, label, None, on_progress),
                        "stat": [st.st_size, st.st_mtime_ns, st.st_ino]}
        except OSError as err:
            raise ArchiveError(f"{label}: cannot read: {err.strerror or err}") from err
    clean, opener = opener_for(url, _HttpOnlyRedirects())  # user:password@ becomes HTTP auth, never the host
    request = urllib.request.Request(clean, headers={"User-Agent": "detector-worker"})
    try:
        # timeout_s bounds each connect/read, not the whole transfer (a big archive may take long)
        with opener.open(request, timeout=timeout_s) as resp:
            length = resp.headers.get("Content-Length")
            total = int(length) if length and length.strip().isdigit() else None
            if total is not None and total > max_bytes:
                raise ArchiveError(f"{label}: Content-Length {total} is larger than the limit of {max_bytes} bytes")
            log.info("fetching %s (%s bytes)", label, total if total is not None else "unknown")
            return {"sha256": _copy(resp.read, dest, total, max_bytes, label, log, on_progress)}
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
    # One mtime for every file: a packed `.onnx` is as fresh as its `.pt`, whatever order they came in.
    stamp = time.time_ns()
    for path in dest.rglob("*"):
        if path.is_file() and not path.is_symlink():
            os.utime(path, ns=(stamp, stamp))
