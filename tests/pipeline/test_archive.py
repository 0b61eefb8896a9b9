"""Archive handling: sources, the cache, concurrent fetches and every kind of rejected archive."""

from __future__ import annotations

import copy
import http.server
import json
import multiprocessing
import stat
import threading
import time
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from detector_worker.pipeline.archive import ArchiveError, fetch_archive, load_pipeline, open_archive
from detector_worker.synthetic.standin import BODY, BRAND, DETECTOR, pack_archive, standin_pipeline

MODELS = (DETECTOR, BRAND, BODY)


@dataclass
class Server:
    base: str
    files: dict[str, bytes] = field(default_factory=dict)
    requests: list[str] = field(default_factory=list)
    delay_s: float = 0.0

    def url(self, name: str, *, length: bool = True) -> str:
        return f"{self.base}/{name}" + ("" if length else "?nolength")


@pytest.fixture
def server() -> Iterator[Server]:
    state = Server("")

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            state.requests.append(self.path)
            time.sleep(state.delay_s)
            path, _, query = self.path.lstrip("/").partition("?")
            body = state.files.get(path)
            if body is None:
                self.send_error(404)
                return
            self.send_response(200)
            if query != "nolength":  # without it, HTTP/1.0 ends the body by closing the connection
                self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: Any) -> None:
            pass

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    state.base = f"http://127.0.0.1:{httpd.server_address[1]}"
    thread = threading.Thread(target=httpd.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    yield state
    httpd.shutdown()
    httpd.server_close()


@pytest.fixture
def models(tmp_path: Path) -> dict[str, Path]:
    out = tmp_path / "models"
    out.mkdir()
    files = {}
    for model in MODELS:
        (out / f"{model}.pt").write_bytes(f"not a real model: {model}".encode() * 20)
        files[f"{model}.pt"] = out / f"{model}.pt"
    return files


@pytest.fixture
def make_archive(tmp_path: Path, models: dict[str, Path]) -> Callable[..., Path]:
    def make(name: str = "good.mpta", edit: Callable[[dict[str, Any]], object] | None = None,
             drop: str | None = None) -> Path:
        pipeline = copy.deepcopy(standin_pipeline(224, 224))
        if edit is not None:
            edit(pipeline)
        files = {k: v for k, v in models.items() if k != drop}
        return pack_archive(tmp_path / name, pipeline, files)
    return make


def raw_zip(path: Path, members: list[tuple[zipfile.ZipInfo | str, bytes]], with_pipeline: bool = True) -> Path:
    """A zip written member by member, malicious names and attributes included."""
    with zipfile.ZipFile(path, "w") as zf:
        if with_pipeline:
            zf.writestr("pipeline.json", json.dumps(standin_pipeline(224, 224)))
        for info, data in members:
            zf.writestr(info, data)
    return path


def assert_clean(cache: Path) -> None:
    """Only lock files may remain after a failed fetch: no partial directory, no temp files."""
    leftovers = [p.name for p in cache.iterdir() if not p.name.endswith(".lock")] if cache.exists() else []
    leftovers = [name for name in leftovers if not name.endswith(".unused")]  # marks of no directory
    assert leftovers == []


def rejected(url: str, cache: Path, *, model_id: int | str | None = 7, **limits: Any) -> str:
    with pytest.raises(ArchiveError) as info:
        open_archive(url, cache, model_id, **limits)
    message = str(info.value)
    assert "\n" not in message
    assert_clean(cache)
    return message


# --- good archives ----------------------------------------------------------------------------


def test_plain_path_and_file_url(tmp_path: Path, make_archive: Callable[..., Path]) -> None:
    archive = make_archive()
    for i, url in enumerate((str(archive), archive.as_uri())):
        cache = tmp_path / f"cache{i}"
        directory, config = open_archive(url, cache, 102)
        assert directory.parent == cache
        assert config.pipeline.model_id == DETECTOR
        assert sorted(p.name for p in directory.iterdir()) == sorted(
            [".source.json", "pipeline.json", *(f"{m}.pt" for m in MODELS)])
        source = json.loads((directory / ".source.json").read_text())
        assert len(source["sha256"]) == 64 and source["name"] == "good.mpta"
        assert load_pipeline(directory) == config


def test_http_then_cache_reuse(tmp_path: Path, server: Server, make_archive: Callable[..., Path]) -> None:
    server.files["good.mpta"] = make_archive().read_bytes()
    cache = tmp_path / "cache"
    first, config = open_archive(server.url("good.mpta"), cache, 102)
    assert config.pipeline.branches[0].model_id == BRAND
    assert len(server.requests) == 1
    second, _ = open_archive(server.url("good.mpta"), cache, "102")  # the backend may send either type
    assert second == first and len(server.requests) == 1


def test_same_model_id_with_a_new_url_lands_beside_the_old(tmp_path: Path, server: Server,
                                                            make_archive: Callable[..., Path]) -> None:
    """A new archive for a model id is a new directory: a worker still running the old one keeps it."""
    server.files["v1.mpta"] = make_archive("v1.mpta").read_bytes()
    server.files["v2.mpta"] = make_archive(
        "v2.mpta", edit=lambda p: p["pipeline"].update(minConfidence=0.9)).read_bytes()
    cache = tmp_path / "cache"
    old, config = open_archive(server.url("v1.mpta"), cache, 5)
    assert config.pipeline.min_confidence == 0.6
    new, config = open_archive(server.url("v2.mpta"), cache, 5)
    assert new != old and config.pipeline.min_confidence == 0.9
    assert load_pipeline(old).pipeline.min_confidence == 0.6  # untouched
    assert len(server.requests) == 2
    assert sorted(p.name for p in cache.iterdir() if not p.name.startswith(".")) == sorted([old.name, new.name])


def test_local_file_repacked_in_place_is_picked_up(tmp_path: Path, make_archive: Callable[..., Path]) -> None:
    archive = make_archive()
    cache = tmp_path / "cache"
    assert open_archive(str(archive), cache, 1)[1].pipeline.min_confidence == 0.6
    make_archive(edit=lambda p: p["pipeline"].update(minConfidence=0.7))
    assert open_archive(str(archive), cache, 1)[1].pipeline.min_confidence == 0.7


def test_cache_names_never_trust_the_model_id(tmp_path: Path, make_archive: Callable[..., Path]) -> None:
    archive, cache = make_archive(), tmp_path / "cache"
    for model_id in ("../../escape", "/etc", ".hidden", None):
        directory = fetch_archive(str(archive), cache, model_id)
        assert directory.parent == cache and not directory.name.startswith(".")
    assert not (tmp_path / "escape").exists()


def _fetch_in_child(url: str, cache: str, barrier: Any, results: Any) -> None:
    barrier.wait()
    try:
        results.put(str(fetch_archive(url, Path(cache), 42)))
    except Exception as err:  # reported to the parent, which fails the test
        results.put(f"error: {err}")


def test_concurrent_processes_download_once(tmp_path: Path, server: Server,
                                            make_archive: Callable[..., Path]) -> None:
    server.files["good.mpta"] = make_archive().read_bytes()
    server.delay_s = 0.5  # the second process arrives while the first holds the lock
    ctx = multiprocessing.get_context("fork")
    barrier, results = ctx.Barrier(2), ctx.Queue()
    args = (server.url("good.mpta"), str(tmp_path / "cache"), barrier, results)
    procs = [ctx.Process(target=_fetch_in_child, args=args) for _ in range(2)]
    for proc in procs:
        proc.start()
    paths = [results.get(timeout=30) for _ in procs]
    for proc in procs:
        proc.join(timeout=10)
    assert paths[0] == paths[1] and not paths[0].startswith("error"), paths
    assert (Path(paths[0]) / "pipeline.json").is_file()
    assert len(server.requests) == 1


# --- rejected pipeline.json -------------------------------------------------------------------


def test_unknown_key(tmp_path: Path, make_archive: Callable[..., Path]) -> None:
    archive = make_archive("bogus.mpta", edit=lambda p: p["pipeline"]["branches"][0].update(bogus=1))
    message = rejected(str(archive), tmp_path / "cache")
    assert message.startswith("bogus.mpta: pipeline.branches[0].bogus:"), message


def test_missing_model_file(tmp_path: Path, make_archive: Callable[..., Path]) -> None:
    message = rejected(str(make_archive(drop=f"{BODY}.pt")), tmp_path / "cache")
    assert f"pipeline.branches[1].modelFile: '{BODY}.pt' is not in the archive" in message


def test_bad_template(tmp_path: Path, make_archive: Callable[..., Path]) -> None:
    archive = make_archive(edit=lambda p: p["pipeline"]["actions"][0].update(key="inference:{nope}"))
    message = rejected(str(archive), tmp_path / "cache")
    assert "pipeline.actions[0].key" in message and "{nope}" in message


def test_invalid_json_names_line_and_column(tmp_path: Path) -> None:
    archive = raw_zip(tmp_path / "x.mpta", [("pipeline.json", b'{\n  "pipeline": {,}\n}')], with_pipeline=False)
    message = rejected(str(archive), tmp_path / "cache")
    assert "pipeline.json is not valid JSON" in message and "line 2 column 16" in message


# --- rejected zips ----------------------------------------------------------------------------


def _symlink() -> zipfile.ZipInfo:
    info = zipfile.ZipInfo("link.pt")
    info.external_attr = (stat.S_IFLNK | 0o777) << 16
    return info


@pytest.mark.filterwarnings("ignore:Duplicate name")
@pytest.mark.parametrize(("member", "problem"), [
    ("../evil.txt", "'../evil.txt' has a '..' component"),
    ("/abs.txt", "'/abs.txt' is an absolute path"),
    ("models/../../evil.txt", "has a '..' component"),
    ("dir\\evil.txt", "contains a backslash"),
    (_symlink(), "'link.pt' is a symbolic link"),
    ("pipeline.json", "'pipeline.json' is duplicated"),
])
def test_malicious_members(tmp_path: Path, member: zipfile.ZipInfo | str, problem: str) -> None:
    archive = raw_zip(tmp_path / "evil.mpta", [(member, b"../../etc/passwd")])
    message = rejected(str(archive), tmp_path / "cache")
    assert problem in message and message.startswith(str(archive)), message
    assert not (tmp_path / "evil.txt").exists()


def test_nested_directories_inside_are_fine(tmp_path: Path, models: dict[str, Path]) -> None:
    members: list[tuple[zipfile.ZipInfo | str, bytes]] = [(n, p.read_bytes()) for n, p in models.items()]
    archive = raw_zip(tmp_path / "nested.mpta", [*members, ("extra/deep/notes.txt", b"hi")])
    directory, _ = open_archive(str(archive), tmp_path / "cache", 1)
    assert (directory / "extra/deep/notes.txt").read_bytes() == b"hi"


def test_pipeline_inside_one_top_level_folder(tmp_path: Path, models: dict[str, Path]) -> None:
    pipeline = json.dumps(standin_pipeline(224, 224)).encode()
    members: list[tuple[zipfile.ZipInfo | str, bytes]] = [(f"pkg/{n}", p.read_bytes()) for n, p in models.items()]
    archive = raw_zip(tmp_path / "folder.mpta", [("pkg/pipeline.json", pipeline), *members], with_pipeline=False)
    directory, config = open_archive(str(archive), tmp_path / "cache", 1)
    assert (directory / "pipeline.json").is_file() and config.pipeline.model_id == DETECTOR


def test_limits_on_members_and_unpacked_size(tmp_path: Path) -> None:
    many = raw_zip(tmp_path / "many.mpta", [(f"f{i}", b"") for i in range(5)])
    assert "6 members, more than the limit of 5" in rejected(str(many), tmp_path / "cache", max_members=5)
    bomb = raw_zip(tmp_path / "bomb.mpta", [("zeros", bytes(100_000))])
    assert "zip bomb" in rejected(str(bomb), tmp_path / "cache", max_unpacked_bytes=50_000)


def test_missing_pipeline_json(tmp_path: Path) -> None:
    archive = raw_zip(tmp_path / "empty.mpta", [("readme.txt", b"hi")], with_pipeline=False)
    assert "no pipeline.json in the archive" in rejected(str(archive), tmp_path / "cache")


def test_truncated_and_not_a_zip(tmp_path: Path, make_archive: Callable[..., Path]) -> None:
    data = make_archive().read_bytes()
    (tmp_path / "cut.mpta").write_bytes(data[: len(data) // 2])
    (tmp_path / "text.mpta").write_bytes(b"<html>not found</html>")
    for name in ("cut.mpta", "text.mpta"):
        assert "not a valid zip archive" in rejected(str(tmp_path / name), tmp_path / "cache")


def test_crc_error(tmp_path: Path) -> None:
    archive = raw_zip(tmp_path / "crc.mpta", [("data.bin", b"A" * 1000)])  # stored, not compressed
    raw = bytearray(archive.read_bytes())
    raw[raw.index(b"A" * 1000)] = ord("B")
    archive.write_bytes(bytes(raw))
    assert "not a valid zip archive (Bad CRC-32" in rejected(str(archive), tmp_path / "cache")


# --- rejected sources -------------------------------------------------------------------------


def test_http_over_max_bytes(tmp_path: Path, server: Server, make_archive: Callable[..., Path]) -> None:
    server.files["good.mpta"] = data = make_archive().read_bytes()
    limit = len(data) - 1
    with_length = rejected(server.url("good.mpta"), tmp_path / "cache", max_bytes=limit)
    assert f"Content-Length {len(data)} is larger than the limit of {limit} bytes" in with_length
    without = rejected(server.url("good.mpta", length=False), tmp_path / "cache", max_bytes=limit)
    assert f"larger than the limit of {limit} bytes" in without


def test_http_404_and_refused(tmp_path: Path, server: Server) -> None:
    message = rejected(server.url("missing.mpta"), tmp_path / "cache")
    assert message == f"{server.url('missing.mpta')}: HTTP 404 Not Found"
    assert "cannot connect" in rejected("http://127.0.0.1:9/x.mpta", tmp_path / "cache", timeout_s=2)


def test_unsupported_scheme_and_missing_file(tmp_path: Path) -> None:
    message = rejected("ftp://user:secret@host/x.mpta", tmp_path / "cache")
    assert "unsupported URL scheme 'ftp'" in message and "secret" not in message
    assert not (tmp_path / "cache").exists()
    assert "No such file" in rejected(str(tmp_path / "absent.mpta"), tmp_path / "cache")


def test_failed_refetch_keeps_the_cached_archive(tmp_path: Path, server: Server,
                                                 make_archive: Callable[..., Path]) -> None:
    server.files["good.mpta"] = make_archive().read_bytes()
    cache = tmp_path / "cache"
    directory, _ = open_archive(server.url("good.mpta"), cache, 3)
    with pytest.raises(ArchiveError, match="HTTP 404"):
        open_archive(server.url("gone.mpta"), cache, 3)
    assert load_pipeline(directory).pipeline.model_id == DETECTOR
    assert sorted(p.name for p in cache.iterdir() if not p.name.startswith(".")) == [directory.name]
