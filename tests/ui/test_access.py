"""The dashboard's access rules, over a real socket: the control plane's (token or allowed address,
Host and Origin), for the page and its WebSocket; nothing but GET; no framing."""

from __future__ import annotations

import asyncio
import http.client
import json
from pathlib import Path

import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

from tests.gateway.fakes import Harness, run_async, settings_for

TOKEN = "t" * 16


def _request(port: int, method: str, path: str, headers: dict[str, str], body: str | None = None
             ) -> tuple[int, dict[str, str], bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        conn.request(method, path, body=body, headers=headers)
        r = conn.getresponse()
        return r.status, {k.lower(): v for k, v in r.getheaders()}, r.read()
    except (ConnectionError, http.client.HTTPException):
        return 0, {}, b""  # the server closed the connection: refused too
    finally:
        conn.close()


async def _get(port: int, path: str, method: str = "GET", body: str | None = None, **headers: str
               ) -> tuple[int, dict[str, str], bytes]:
    return await asyncio.to_thread(_request, port, method, path, headers, body)


@run_async
async def test_the_page_and_its_websocket_need_authorization(tmp_path: Path) -> None:
    async with Harness(settings_for(tmp_path, token=TOKEN)) as h:
        await h.server.start()
        try:
            port = h.server.port
            assert (await _get(port, "/ui/"))[0] == 401
            status, headers, body = await _get(port, f"/ui/?token={TOKEN}")
            assert status == 200 and b"<canvas" in body and b"/ui/live" in body  # the script is inlined
            assert "frame-ancestors 'none'" in headers["content-security-policy"]
            assert headers["x-frame-options"] == "DENY" and headers["referrer-policy"] == "no-referrer"
            assert (await _get(port, "/ui/", Authorization=f"Bearer {TOKEN}"))[0] == 200
            status, headers, _ = await _get(port, f"/ui?token={TOKEN}")
            assert status == 302 and headers["location"] == f"/ui/?token={TOKEN}"  # the token goes along
            with pytest.raises(InvalidStatus) as refused:
                async with connect(f"ws://127.0.0.1:{port}/ui/live"):
                    pass
            assert refused.value.response.status_code == 401
            backend = h.server.channel.link
            async with connect(f"ws://127.0.0.1:{port}/ui/live?token={TOKEN}",
                               origin=f"http://127.0.0.1:{port}") as ws:  # type: ignore[arg-type]
                state = json.loads(await asyncio.wait_for(ws.recv(), 5))
                assert state["type"] == "state" and "gateway" in state and "counts" in state
                assert h.server.channel.link is backend, "a dashboard page is never taken for the backend"
        finally:
            await h.server.stop()


@run_async
async def test_a_foreign_origin_or_a_form_post_is_refused(tmp_path: Path) -> None:
    async with Harness(settings_for(tmp_path)) as h:  # loopback, no token: anyone on this host
        await h.server.start()
        try:
            port = h.server.port
            assert (await _get(port, "/ui/"))[0] == 200
            assert (await _get(port, "/ui/", Origin="http://evil.example"))[0] == 403
            assert (await _get(port, "/ui/", Host="evil.example"))[0] == 403, "DNS rebinding"
            with pytest.raises(InvalidStatus) as refused:
                async with connect(f"ws://127.0.0.1:{port}/ui/live", origin="http://evil.example"):  # type: ignore[arg-type]
                    pass
            assert refused.value.response.status_code == 403
            # what a cross-site form can send: a POST (even from the page's own origin) is no request here
            form = "op=control&camera=cam-001&action=stop"
            for path in ("/ui/", "/ui/live"):
                status, _, _ = await _get(port, path, "POST", form, Origin="http://evil.example",
                                          **{"Content-Type": "application/x-www-form-urlencoded"})
                assert status not in range(200, 400), (path, status)
                status, _, _ = await _get(port, path, "POST", form,
                                          **{"Content-Type": "application/x-www-form-urlencoded"})
                assert status not in range(200, 400), (path, status)
            assert (await _get(port, "/ui/app.js"))[0] == 404
        finally:
            await h.server.stop()
