"""The connected backend as the rest of the gateway sees it: one channel to send to.

Messages to the backend wait in a bounded queue per connection: when it is full the oldest is
dropped and counted, so a slow backend can never hold up the bus. With no backend connected a
message is dropped and counted at once.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable

from websockets.asyncio.server import ServerConnection

from .protocol import OutgoingMessage, dump_outgoing

OUTBOX_LIMIT = 1000


class BackendLink:
    """One backend connection: its socket and its bounded outbox."""

    def __init__(self, ws: ServerConnection, on_drop: Callable[[], None]) -> None:
        self.ws = ws
        self.outbox: deque[str] = deque()
        self.ready = asyncio.Event()
        self.dropped = 0
        self._on_drop = on_drop
        self.ignored_keys: set[str] = set()  # unknown keys already logged for this connection

    def send(self, msg: OutgoingMessage) -> None:
        if len(self.outbox) >= OUTBOX_LIMIT:
            self.outbox.popleft()
            self.dropped += 1
            self._on_drop()
        self.outbox.append(dump_outgoing(msg))
        self.ready.set()

    async def pump(self) -> None:
        while True:
            await self.ready.wait()
            while self.outbox:
                await self.ws.send(self.outbox.popleft())
            self.ready.clear()


class BackendChannel:
    """Where the gateway sends backend messages: the current connection, if any."""

    def __init__(self, on_drop: Callable[[], None]) -> None:
        self.link: BackendLink | None = None
        self._on_drop = on_drop

    @property
    def connected(self) -> bool:
        return self.link is not None

    def send(self, msg: OutgoingMessage) -> None:
        if self.link is None:
            self._on_drop()
            return
        self.link.send(msg)
