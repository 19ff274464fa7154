"""A real browser opens a Veil link: headless Chromium driven over the DevTools protocol.

This proves what the HTTP-level tests cannot: that the page renders the image under our strict
Content-Security-Policy (stylesheet from our origin, no inline anything), that exactly one view
is spent by a person opening the page, and that a revoked link shows the 404 page on reload.

Only the Chromium binary is used (no Selenium, no Playwright): the test reads the DevTools port
from ``DevToolsActivePort`` and speaks the protocol over aiohttp's websocket client. Without a
Chromium binary the test is skipped, unless VEIL_REQUIRE_BROWSER=1, when it fails instead.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import io
import itertools
import os
import shutil
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from PIL import Image

from bot.core.models import Viewer
from bot.core.veil import Veil
from bot.web import create_app, start_web

pytestmark = pytest.mark.browser

OWNER = 77
STEP_TIMEOUT = 20.0  # seconds for any single browser step
WIDTH, HEIGHT = 96, 64


def chromium_binary() -> str:
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found is None:
        if os.environ.get("VEIL_REQUIRE_BROWSER") == "1":
            pytest.fail("VEIL_REQUIRE_BROWSER=1 but no chromium or chromium-browser on PATH")
        pytest.skip("no chromium or chromium-browser on PATH (apt-get install chromium)")
    return found


class DevTools:
    """A minimal DevTools protocol client for one page target."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        self._ws = ws
        self._ids = itertools.count(1)
        self._pending: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self.events: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self.log: list[dict[str, Any]] = []
        self._reader = asyncio.create_task(self._read())

    async def _read(self) -> None:
        async for message in self._ws:
            if message.type != aiohttp.WSMsgType.TEXT:
                break
            data = message.json()
            if "id" in data:
                future = self._pending.pop(data["id"], None)
                if future is not None and not future.done():
                    future.set_result(data)
            else:
                if data.get("method") == "Log.entryAdded":
                    self.log.append(data["params"]["entry"])
                await self.events.put(data)
        for future in self._pending.values():
            if not future.done():
                future.set_exception(ConnectionError("DevTools connection closed"))

    async def send(self, method: str, **params: Any) -> dict[str, Any]:
        call_id = next(self._ids)
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._pending[call_id] = future
        await self._ws.send_json({"id": call_id, "method": method, "params": params})
        reply = await asyncio.wait_for(future, STEP_TIMEOUT)
        if "error" in reply:
            raise AssertionError(f"{method} failed: {reply['error']}")
        return reply.get("result", {})

    async def wait_for(self, method: str) -> dict[str, Any]:
        async def next_match() -> dict[str, Any]:
            while True:
                event = await self.events.get()
                if event.get("method") == method:
                    return event

        return await asyncio.wait_for(next_match(), STEP_TIMEOUT)

    async def evaluate(self, expression: str) -> Any:
        result = await self.send("Runtime.evaluate", expression=expression, returnByValue=True)
        return result["result"].get("value")

    async def load(self, method: str, **params: Any) -> None:
        """Navigate or reload, and wait until the page (images included) has loaded."""
        while not self.events.empty():
            self.events.get_nowait()
        await self.send(method, **params)
        await self.wait_for("Page.loadEventFired")

    async def close(self) -> None:
        self._reader.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._reader


@contextlib.asynccontextmanager
async def headless_chromium(binary: str, profile: Path) -> AsyncIterator[DevTools]:
    process = await asyncio.create_subprocess_exec(
        binary, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--no-first-run", "--disable-component-update", "--disable-sync",
        "--disable-dev-shm-usage", f"--user-data-dir={profile}", "--remote-debugging-port=0",
        "about:blank",
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL)
    try:
        port_file = profile / "DevToolsActivePort"

        async def devtools_port() -> int:
            while True:
                if process.returncode is not None:
                    raise AssertionError(f"chromium exited early ({process.returncode})")
                with contextlib.suppress(FileNotFoundError, ValueError, IndexError):
                    return int(port_file.read_text().splitlines()[0])
                await asyncio.sleep(0.05)

        port = await asyncio.wait_for(devtools_port(), STEP_TIMEOUT)
        timeout = aiohttp.ClientTimeout(total=STEP_TIMEOUT)
        async with aiohttp.ClientSession(timeout=timeout) as session:
            async with session.get(f"http://127.0.0.1:{port}/json/list") as listing:
                targets = await listing.json()
            page = next(t for t in targets if t.get("type") == "page")
            async with session.ws_connect(page["webSocketDebuggerUrl"], max_msg_size=0) as ws:
                tools = DevTools(ws)
                try:
                    await tools.send("Page.enable")
                    await tools.send("Runtime.enable")
                    await tools.send("Log.enable")
                    yield tools
                finally:
                    await tools.close()
    finally:
        if process.returncode is None:
            process.terminate()
            try:
                await asyncio.wait_for(process.wait(), 10)
            except TimeoutError:
                process.kill()
                await process.wait()


async def test_a_browser_shows_the_image_then_the_404_page_once_the_link_is_revoked(tmp_path):
    binary = chromium_binary()
    picture = Image.linear_gradient("L").resize((WIDTH, HEIGHT)).convert("RGB")
    data = io.BytesIO()
    picture.save(data, "PNG")

    async with await Veil.open(tmp_path / "data", master_key=bytes(32)) as veil:
        image = await veil.images.create(OWNER, data.getvalue(), guild_id=None, source="upload")
        new = await veil.links.create(image.public_id, Viewer(OWNER), max_views=3)
        server = await start_web(create_app(veil, public_url="http://127.0.0.1"),
                                 "127.0.0.1", 0)
        try:
            async with headless_chromium(binary, tmp_path / "profile") as browser:
                await browser.load("Page.navigate", url=f"{server.url}/l/{new.token}")

                assert await browser.evaluate("document.querySelector('img').complete")
                assert await browser.evaluate(
                    "document.querySelector('img').naturalWidth") == WIDTH
                assert await browser.evaluate(
                    "document.querySelector('img').naturalHeight") == HEIGHT
                # The stylesheet applied, so the CSP let our own CSS through.
                assert await browser.evaluate(
                    "getComputedStyle(document.querySelector('main')).maxWidth") != "none"
                blocked = [e for e in browser.log if "Content Security Policy" in e["text"]]
                assert blocked == []

                shot = await browser.send("Page.captureScreenshot", format="png")
                screenshot = tmp_path / "link-page.png"
                screenshot.write_bytes(base64.b64decode(shot["data"]))
                with Image.open(screenshot) as captured:
                    captured.verify()
                    assert captured.format == "PNG"

                links = await veil.links.links_of(Viewer(OWNER))
                assert links[0].views == 1, "opening the page spends exactly one view"
                agents = await veil.ctx.db.fetchall("SELECT agent FROM view_log")
                assert [a[0] for a in agents] == ["Chrome"]

                await veil.links.revoke(new.link.public_id, Viewer(OWNER))
                await browser.load("Page.reload", ignoreCache=True)

                text = await browser.evaluate("document.body.innerText")
                assert "This link is not available" in text
                assert await browser.evaluate("document.querySelector('img')") is None
        finally:
            await server.stop()


@pytest.mark.slow
async def test_a_browser_needs_the_password_then_sees_the_image_then_the_404_once_revoked(
        tmp_path):
    binary = chromium_binary()
    picture = Image.linear_gradient("L").resize((WIDTH, HEIGHT)).convert("RGB")
    data = io.BytesIO()
    picture.save(data, "PNG")

    async with await Veil.open(tmp_path / "data", master_key=bytes(32)) as veil:
        image = await veil.images.create(OWNER, data.getvalue(), guild_id=None, source="upload")
        new = await veil.links.create(image.public_id, Viewer(OWNER), max_views=3,
                                      password="open sesame please")
        server = await start_web(create_app(veil, public_url="http://127.0.0.1"),
                                 "127.0.0.1", 0)

        async def answer(browser: DevTools, password: str) -> None:
            while not browser.events.empty():
                browser.events.get_nowait()
            await browser.evaluate(
                f"document.querySelector('#password').value = {password!r};"
                "document.querySelector('button[type=submit]').click()")
            await browser.wait_for("Page.loadEventFired")

        try:
            async with headless_chromium(binary, tmp_path / "profile") as browser:
                await browser.load("Page.navigate", url=f"{server.url}/l/{new.token}")
                text = await browser.evaluate("document.body.innerText")
                assert "protected by a password" in text
                assert await browser.evaluate("document.querySelector('img')") is None

                await answer(browser, "a wrong guess")
                text = await browser.evaluate("document.body.innerText")
                assert "That password is not right" in text
                assert await browser.evaluate("document.querySelector('img')") is None
                # The form posted under the page's CSP (form-action 'self'): nothing blocked.
                assert [e for e in browser.log if "Content Security Policy" in e["text"]] == []

                await answer(browser, "open sesame please")
                assert await browser.evaluate("location.pathname") == f"/l/{new.token}"
                assert await browser.evaluate("document.querySelector('img').complete")
                assert await browser.evaluate(
                    "document.querySelector('img').naturalWidth") == WIDTH
                # The session cookie is HttpOnly: the page's own scripts could not read it.
                assert await browser.evaluate("document.cookie") == ""
                [link] = await veil.links.links_of(Viewer(OWNER))
                assert link.views == 1 and link.password_failures == 1

                await veil.links.revoke(new.link.public_id, Viewer(OWNER))
                await browser.load("Page.reload", ignoreCache=True)
                text = await browser.evaluate("document.body.innerText")
                assert "This link is not available" in text
                assert await browser.evaluate("document.querySelector('img')") is None
        finally:
            await server.stop()
