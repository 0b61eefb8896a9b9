"""The server's access rules, over a real socket: token, backend networks, Host and Origin."""

from __future__ import annotations

import asyncio
import http.client
from pathlib import Path
from typing import Any

import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

from tests.gateway.fakes import Harness, run_async, settings_for


def _get(port: int, path: str, headers: dict[str, str]) -> int:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        conn.request("GET", path, headers=headers)
        return conn.getresponse().status
    finally:
        conn.close()


async def _status(port: int, path: str, **headers: str) -> int:
    return await asyncio.to_thread(_get, port, path, headers)


@run_async
async def test_host_and_origin_are_checked(tmp_path: Path) -> None:
    settings = settings_for(tmp_path, allowed_origins=["https://ops.example.com"])
    async with Harness(settings) as h:
        await h.server.start()
        try:
            port = h.server.port
            assert await _status(port, "/health") == 200  # http.client sends Host: 127.0.0.1:port
            assert await _status(port, "/health", Host="evil.example") == 403, "DNS rebinding: a foreign Host name"
            assert await _status(port, "/cameras", Origin="http://evil.example") == 403
            assert await _status(port, "/health", Origin=f"http://127.0.0.1:{port}") == 200, "the gateway's own page"
            assert await _status(port, "/health", Origin="https://ops.example.com") == 200
            with pytest.raises(InvalidStatus) as refused:
                async with connect(f"ws://127.0.0.1:{port}/", origin="http://evil.example"):  # type: ignore[arg-type]
                    pass
            assert refused.value.response.status_code == 403
            async with connect(f"ws://127.0.0.1:{port}/") as ws:  # no Origin: the backend
                await ws.send('{"type": "requestState"}')
                assert '"stateReport"' in await asyncio.wait_for(ws.recv(), 5)
        finally:
            await h.server.stop()


@run_async
async def test_token_or_an_allowed_network_is_needed(tmp_path: Path) -> None:
    cases: list[tuple[dict[str, Any], dict[str, str], int]] = [
        ({"token": "t" * 16}, {}, 401),
        ({"token": "t" * 16}, {"Authorization": "Bearer " + "t" * 16}, 200),
        ({"backend": {"allowed_networks": ["127.0.0.0/8"]}}, {}, 200),
        ({"backend": {"allowed_networks": ["10.0.0.0/8"]}}, {}, 401),
        ({"token": "t" * 16, "backend": {"allowed_networks": ["127.0.0.1/32"]}}, {}, 200),
    ]
    for index, (overrides, headers, expected) in enumerate(cases):
        async with Harness(settings_for(tmp_path / str(index), **overrides)) as h:
            await h.server.start()
            try:
                assert await _status(h.server.port, "/health", **headers) == expected, (overrides, headers)
            finally:
                await h.server.stop()


def test_off_loopback_needs_a_token_or_backend_networks(tmp_path: Path) -> None:
    from detector_worker.config.base import SpecError
    from gateway.settings import load_settings

    with pytest.raises(SpecError, match="allowed_networks"):
        load_settings(None, host="0.0.0.0", cameras_file=None)
    assert load_settings(None, host="0.0.0.0", backend={"allowed_networks": ["10.1.2.3/32"]}).host == "0.0.0.0"
