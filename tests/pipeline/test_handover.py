"""A camera's outbox mirrored to Redis (real Redis): the host it moves to takes over its pending writes
and session state; a stale copy is fenced by its placement epoch."""

from __future__ import annotations

import logging
import time
import urllib.parse
import uuid
from collections.abc import Callable
from pathlib import Path

import pytest
import redis

from detector_worker.pipeline.handover import Fenced, OutboxReplica
from detector_worker.pipeline.outbox import Outbox


def wait(check: Callable[[], bool], what: str, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, what
        time.sleep(0.02)


@pytest.fixture
def slug(redis_url: str) -> str:
    name = f"handover-{uuid.uuid4().hex[:8]}"
    yield name
    redis.Redis.from_url(redis_url).delete(f"fleet:outbox:testfleet:{name}")


def placed(tmp_path: Path, redis_url: str, slug: str, epoch: int, host: str) -> Outbox:
    """What open_outbox does for a placed camera: claim, adopt after a move, mirror from then on."""
    outbox = Outbox(tmp_path / host / f"{slug}.sqlite")
    replica = OutboxReplica(redis_url, "testfleet", slug, epoch)
    moved = replica.claim()
    if moved is not None:
        outbox.adopt(moved)
    outbox.replica = replica
    replica.attach(outbox)
    return outbox


def mirrored(redis_url: str, slug: str) -> dict[bytes, bytes]:
    return redis.Redis.from_url(redis_url).hgetall(f"fleet:outbox:testfleet:{slug}")


def test_the_next_host_takes_over_pending_writes_and_state(tmp_path: Path, redis_url: str, slug: str) -> None:
    a = placed(tmp_path, redis_url, slug, 1, "host-a")
    a.append("redis", b"image-1", ikey="k1", grp="s1")
    a.append("postgresql", b"row-1", ikey="k2", grp="s1")
    done = a.append("redis", b"image-0", ikey="k0")
    assert done
    a.remove(a.next_entries("redis")[-1])  # committed: gone from the mirror too
    a.put("session:display-1", b'{"session": "s1"}')
    wait(lambda: len(mirrored(redis_url, slug)) == 4, "a's outbox mirrored (epoch + 2 entries + 1 state)")

    b = placed(tmp_path, redis_url, slug, 2, "host-b")  # host-a lost: the camera starts on host-b
    assert [(e.channel, e.ikey, e.payload) for e in b.next_entries("redis") + b.next_entries("postgresql")] == [
        ("redis", "k1", b"image-1"), ("postgresql", "k2", b"row-1")]
    assert b.get("session:display-1") == b'{"session": "s1"}'

    # the stale copy comes back: its changes no longer reach the mirror, b's do
    a.put("session:display-1", b'{"session": "stale"}')
    wait(lambda: a.replica is not None and a.replica.fenced, "the stale copy fenced")
    b.put("lane:1", b"[]")
    wait(lambda: b"k:lane:1" in mirrored(redis_url, slug), "b mirrored")
    assert mirrored(redis_url, slug)[b"k:session:display-1"] == b'{"session": "s1"}'
    a.close()
    b.close()


def test_a_stale_copy_cannot_start_and_a_restart_in_place_keeps_its_own_file(tmp_path: Path, redis_url: str,
                                                                            slug: str) -> None:
    b = placed(tmp_path, redis_url, slug, 5, "host-b")
    b.append("redis", b"only-here", ikey="k")
    b.close()
    with pytest.raises(Fenced, match="epoch 5"):
        OutboxReplica(redis_url, "testfleet", slug, 4).claim()
    again = placed(tmp_path, redis_url, slug, 5, "host-b")  # the same placement restarted (kill -9)
    assert [e.payload for e in again.next_entries("redis")] == [b"only-here"]
    wait(lambda: b"epoch" in mirrored(redis_url, slug) and len(mirrored(redis_url, slug)) == 2, "pushed whole")
    again.close()


def test_a_fenced_copy_writes_nothing_more_to_the_stores(tmp_path: Path, redis_url: str, slug: str) -> None:
    from detector_worker.pipeline.sinks import SaveImage, redis_writer

    a = placed(tmp_path, redis_url, slug, 1, "host-a")
    writer = redis_writer(redis_url, logging.getLogger("test"), a)
    key = f"{slug}:image"
    try:
        assert writer.submit(SaveImage(key, b"first", 60))
        assert writer.flush(10)
        b = placed(tmp_path, redis_url, slug, 2, "host-b")  # the camera moved: a is stale from now on
        time.sleep(1.1)  # a's writers look at the epoch at most once a second
        assert writer.submit(SaveImage(key, b"stale", 60))
        assert writer.flush(10)
        assert redis.Redis.from_url(redis_url).get(key) == b"first"
        assert any("fenced" in error for _, _, error in a.dead())
        b.close()
    finally:
        writer.close()
        a.close()
        redis.Redis.from_url(redis_url).delete(key)


def test_a_change_is_in_redis_once_wait_mirrored_returns(tmp_path: Path, redis_url: str, slug: str) -> None:
    """The worker waits for this between a vehicle's cycle and its detection (runtime.MIRROR_WAIT_S): a host lost
    right after the gateway heard of the vehicle cannot leave the next copy without it."""
    a = placed(tmp_path, redis_url, slug, 1, "host-a")
    try:
        for i in range(30):
            a.put(f"fired:lane-{i}", f"vehicle {i}".encode())
            assert a.wait_mirrored(5.0)
            assert mirrored(redis_url, slug).get(f"k:fired:lane-{i}".encode()) == f"vehicle {i}".encode(), i
    finally:
        a.close()


def test_wait_mirrored_gives_up_after_its_timeout_while_redis_is_away(tmp_path: Path) -> None:
    outbox = Outbox(tmp_path / "away.sqlite")
    replica = OutboxReplica("redis://127.0.0.1:9/0", "testfleet", "away", 1)  # discard port: refused at once
    outbox.replica = replica
    replica.attach(outbox)
    try:
        outbox.put("fired:lane", b"[]")
        t0 = time.monotonic()
        assert not outbox.wait_mirrored(0.3)
        assert time.monotonic() - t0 < 3.0  # bounded: the detection still goes out
    finally:
        outbox.close()


def test_the_first_write_after_redis_is_back_asks_for_the_epoch_again(redis_url: str, slug: str) -> None:
    """A copy cut off by a partition checked the epoch and failed; when the partition heals, its next write
    must not go by the time of that failed check (once a second): the camera may have moved meanwhile."""
    from tests.gateway.hosts.netns import TcpForwarder
    from tests.rtsp import free_port

    target = urllib.parse.urlsplit(redis_url)
    port = free_port()
    stale = OutboxReplica(f"redis://127.0.0.1:{port}/{target.path.lstrip('/') or '0'}", "testfleet", slug, 1)
    assert not stale.is_fenced()  # nothing listens: unknown, not fenced
    assert OutboxReplica(redis_url, "testfleet", slug, 2).claim() is None  # the camera moved meanwhile
    forwarder = TcpForwarder("127.0.0.1", port, (target.hostname or "127.0.0.1", target.port or 6379))
    try:
        assert stale.is_fenced()  # at once, not a second after the failed check
    finally:
        forwarder.close()
