"""The link server (DESIGN section 5): pages, images, uniform 404s, headers, throttling, logs.

Each test runs a real Veil on a temporary data folder with a clock it controls, and talks to the
application through aiohttp's test server; a few also go over a real socket.
"""

from __future__ import annotations

import asyncio
import io
import logging
import os
import signal
import socket
import struct
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestClient, TestServer
from PIL import Image, ImageChops, PngImagePlugin

from bot.core.models import ImageRecord, NewLink, Viewer
from bot.core.veil import Veil
from bot.web import RateLimit, create_app, link_url, routes, start_web
from bot.web.logs import RedactingAccessLogger, redact
from bot.web.ratelimit import FailureLimiter, client_address, parse_networks
from bot.web.security import CONTENT_SECURITY_POLICY
from bot.web.useragent import agent_family, is_unfurler
from bot.web.watermark import apply_watermark
from tests.conftest import FakeClock
from tests.loopback import free_port

OWNER = 4242
FIREFOX = "Mozilla/5.0 (X11; Linux x86_64; rv:128.0) Gecko/20100101 Firefox/128.0"
CHROME = ("Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) "
          "Chrome/126.0.0.0 Safari/537.36")
UNFURLERS = {
    "Discord": "Mozilla/5.0 (compatible; Discordbot/2.0; +https://discordapp.com)",
    "Slack": "Slackbot-LinkExpanding 1.0 (+https://api.slack.com/robots)",
    "Telegram": "TelegramBot (like TwitterBot)",
    "iMessage": ("Mozilla/5.0 (Macintosh; Intel Mac OS X 10_11_1) AppleWebKit/601.2.4 "
                 "(KHTML, like Gecko) Version/9.0.1 Safari/601.2.4 facebookexternalhit/1.1 "
                 "Facebot Twitterbot/1.0"),
    "WhatsApp": "WhatsApp/2.23.20.0 A",
    "generic crawler": "Mozilla/5.0 (compatible; ExampleCrawler/1.0; +https://example.org)",
}
EXPECTED_HEADERS = {
    "Cache-Control": "no-store",
    "Referrer-Policy": "no-referrer",
    "X-Robots-Tag": "noindex, nofollow",
    "X-Content-Type-Options": "nosniff",
    "Content-Security-Policy": ("default-src 'none'; img-src 'self'; style-src 'self'; "
                                "base-uri 'none'; form-action 'none'; frame-ancestors 'none'"),
    "X-Frame-Options": "DENY",
}
MASTER_KEY = bytes(range(32))




def png_with_secrets(width: int = 64, height: int = 48) -> bytes:
    """A noisy PNG carrying a text chunk the sanitizer must drop."""
    image = Image.frombytes("RGB", (width, height), os.urandom(width * height * 3))
    info = PngImagePlugin.PngInfo()
    info.add_text("parameters", "a secret prompt, seed 1234")
    out = io.BytesIO()
    image.save(out, "PNG", pnginfo=info)
    return out.getvalue()


def jpeg_with_exif(width: int = 80, height: int = 60) -> bytes:
    image = Image.new("RGB", (width, height), (30, 120, 200))
    exif = Image.Exif()
    exif[0x010E] = "a private description"  # ImageDescription
    out = io.BytesIO()
    image.save(out, "JPEG", exif=exif.tobytes(), quality=90)
    return out.getvalue()


def png_chunks(data: bytes) -> list[bytes]:
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    chunks, pos = [], 8
    while pos < len(data):
        length, kind = struct.unpack(">I4s", data[pos:pos + 8])
        chunks.append(kind)
        pos += 12 + length
    return chunks


def shape(status: int, headers: Mapping[str, str], body: bytes) -> tuple:
    """What a requester can compare between two answers: all but the Date header."""
    return status, body, sorted((k, v) for k, v in headers.items() if k != "Date")


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
async def veil(tmp_path: Path, clock: FakeClock,
               blob_options: dict[str, Any]) -> AsyncIterator[Veil]:
    opened = await Veil.open(tmp_path / "data", master_key=MASTER_KEY, clock=clock,
                             **blob_options)
    try:
        yield opened
    finally:
        await opened.close()


OpenClient = Callable[..., Awaitable[TestClient]]


@pytest.fixture
async def open_client(veil: Veil, clock: FakeClock) -> AsyncIterator[OpenClient]:
    """Start the app with the given create_app options; a browser user agent by default."""
    clients: list[TestClient] = []

    async def start(user_agent: str = FIREFOX, **options: object) -> TestClient:
        options.setdefault("public_url", "https://veil.example")
        server = TestServer(create_app(veil, clock=clock, **options))
        await server.start_server(access_log_class=RedactingAccessLogger)
        client = TestClient(server, headers={"User-Agent": user_agent})
        await client.start_server()
        clients.append(client)
        return client

    yield start
    for client in clients:
        await client.close()


@pytest.fixture
async def client(open_client: OpenClient) -> TestClient:
    return await open_client()


async def share(veil: Veil, data: bytes | None = None, **options: object
                ) -> tuple[ImageRecord, NewLink]:
    image = await veil.images.create(OWNER, data or png_with_secrets(), guild_id=None,
                                     source="upload")
    return image, await veil.links.create(image.public_id, Viewer(OWNER), **options)


async def views_of(veil: Veil, new: NewLink) -> int:
    links = await veil.links.links_of(Viewer(OWNER))
    return next(link.views for link in links if link.public_id == new.link.public_id)


async def answer(client: TestClient, method: str, path: str, **kwargs: object) -> tuple:
    async with client.request(method, path, **kwargs) as response:
        return shape(response.status, response.headers, await response.read())


# A live link ---------------------------------------------------------------------------------


async def test_live_link_shows_a_page_and_then_the_sanitized_image(client, veil):
    image, new = await share(veil, max_views=3)

    page = await client.get(f"/l/{new.token}")
    html = await page.text()
    assert page.status == 200
    assert page.content_type == "text/html"
    assert "A private image shared with you through Veil" in html
    assert f'src="/l/{new.token}/image"' in html
    assert "data:" not in html and "og:" not in html and "twitter:" not in html
    assert "3, counting this one" in html
    assert await views_of(veil, new) == 0, "the page itself spends no view"

    served = await client.get(f"/l/{new.token}/image")
    data = await served.read()
    stored = (await veil.images.decrypt_unchecked(image)).data
    assert served.status == 200
    assert served.content_type == "image/png"
    assert data == stored
    assert data.startswith(b"\x89PNG\r\n\x1a\n")
    assert not {b"tEXt", b"zTXt", b"iTXt", b"eXIf"} & set(png_chunks(data))
    assert b"secret prompt" not in data
    assert served.headers["Content-Disposition"] == f'inline; filename="veil-{image.public_id}.png"'
    assert await views_of(veil, new) == 1


async def test_a_link_works_until_the_last_millisecond_and_not_at_its_expiry(client, veil, clock):
    _, new = await share(veil, expires_in=3600)

    clock.now = new.link.expires_at - 0.001
    assert (await client.get(f"/l/{new.token}")).status == 200
    assert (await client.get(f"/l/{new.token}/image")).status == 200

    clock.now = new.link.expires_at
    assert (await client.get(f"/l/{new.token}")).status == 404
    assert (await client.get(f"/l/{new.token}/image")).status == 404


async def test_revoking_a_link_takes_effect_on_the_very_next_request(client, veil):
    _, new = await share(veil)
    assert (await client.get(f"/l/{new.token}/image")).status == 200

    await veil.links.revoke(new.link.public_id, Viewer(OWNER))

    assert (await client.get(f"/l/{new.token}")).status == 404
    assert (await client.get(f"/l/{new.token}/image")).status == 404


async def test_deleting_the_image_makes_its_link_answer_404(client, veil):
    image, new = await share(veil)
    assert (await client.get(f"/l/{new.token}")).status == 200

    await veil.images.delete(image.public_id, Viewer(OWNER))

    assert (await client.get(f"/l/{new.token}")).status == 404
    assert (await client.get(f"/l/{new.token}/image")).status == 404


@pytest.mark.parametrize("max_views", [1, 5])
async def test_a_view_limit_holds_exactly_under_50_concurrent_fetches(open_client, veil,
                                                                      max_views):
    client = await open_client(rate_limit=None)  # one address hammering on purpose
    _, new = await share(veil, max_views=max_views)

    async def fetch() -> tuple[int, bytes]:
        async with client.get(f"/l/{new.token}/image") as response:
            return response.status, await response.read()

    results = await asyncio.gather(*(fetch() for _ in range(50)))

    statuses = [status for status, _ in results]
    assert statuses.count(200) == max_views
    assert statuses.count(404) == 50 - max_views
    assert all(body.startswith(b"\x89PNG") for status, body in results if status == 200)
    assert await views_of(veil, new) == max_views
    logged = await veil.ctx.db.fetchval("SELECT count(*) FROM view_log")
    assert logged == max_views


async def test_head_requests_answer_every_route_and_spend_no_view(client, veil):
    _, new = await share(veil, max_views=1)

    for path in (f"/l/{new.token}", f"/l/{new.token}/image", "/healthz", "/static/veil.css"):
        response = await client.head(path)
        assert response.status == 200, path
        assert await response.read() == b""
    assert (await client.head(f"/l/{new.token}/image")).content_type == "image/png"
    assert await views_of(veil, new) == 0
    assert (await client.get(f"/l/{new.token}/image")).status == 200


# One 404 for every dead link -------------------------------------------------------------------


async def test_every_dead_link_gets_one_byte_identical_404(client, veil, clock):
    _, expired = await share(veil, expires_in=60)
    _, revoked = await share(veil)
    _, used_up = await share(veil, max_views=1)
    deleted_image, deleted = await share(veil)
    _, unknown = await share(veil)
    await veil.links.revoke(revoked.link.public_id, Viewer(OWNER))
    assert (await client.get(f"/l/{used_up.token}/image")).status == 200
    await veil.images.delete(deleted_image.public_id, Viewer(OWNER))
    clock.advance(61)
    never_made = unknown.token[:-4] + ("AAAA" if not unknown.token.endswith("AAAA") else "BBBB")

    for suffix in ("", "/image"):
        answers = {
            name: await answer(client, "GET", f"/l/{token}{suffix}")
            for name, token in [("unknown", never_made), ("expired", expired.token),
                                ("revoked", revoked.token), ("used up", used_up.token),
                                ("deleted", deleted.token)]
        }
        assert answers["unknown"][0] == 404
        assert all(a == answers["unknown"] for a in answers.values()), answers.keys()
    assert await answer(client, "GET", "/no/such/page") == answers["unknown"]


async def test_tampered_and_truncated_tokens_get_the_same_404_as_an_unknown_one(client, veil):
    _, new = await share(veil)
    token = new.token

    def changed(position: int) -> str:
        swap = "A" if token[position] != "A" else "B"
        return token[:position] + swap + token[position + 1:]

    unknown = await answer(client, "GET", "/l/" + "Q" * 43)
    for bad in (changed(0), changed(20), changed(42), token[:-1], token[:16], token + "x",
                token.upper() if token.upper() != token else token.lower(), "%00", "x" * 500):
        for suffix in ("", "/image"):
            assert await answer(client, "GET", f"/l/{bad}{suffix}") == unknown, (bad, suffix)
    assert (await client.get(f"/l/{token}")).status == 200


async def test_malformed_tokens_cost_a_real_lookup_like_any_other_miss(client, veil,
                                                                       monkeypatch):
    looked_up: list[str] = []
    fetchone = veil.ctx.db.fetchone

    async def spy(sql: str, params=()):
        if "WHERE l.selector = ?" in sql:
            looked_up.append(params[0])
        return await fetchone(sql, params)

    monkeypatch.setattr(veil.ctx.db, "fetchone", spy)
    for bad in ("short", "x" * 200, "not a token at all!"):
        assert (await client.get(f"/l/{bad}")).status == 404
    assert len(looked_up) == 3
    assert all(len(selector) == 16 and selector not in ("short", "x" * 16)
               for selector in looked_up)


# Headers -------------------------------------------------------------------------------------


async def test_security_headers_are_on_every_response(open_client, veil, monkeypatch):
    client = await open_client(rate_limit=RateLimit(burst=2, per_second=0.01))
    _, new = await share(veil)
    responses = []
    for method, path in [("GET", f"/l/{new.token}"), ("HEAD", f"/l/{new.token}"),
                         ("GET", f"/l/{new.token}/image"), ("HEAD", f"/l/{new.token}/image"),
                         ("GET", "/healthz"), ("HEAD", "/healthz"),
                         ("GET", "/static/veil.css"), ("HEAD", "/static/veil.css"),
                         ("GET", "/nothing/here"), ("HEAD", "/nothing/here"),
                         ("POST", f"/l/{new.token}"), ("DELETE", "/healthz")]:
        async with client.request(method, path) as response:
            responses.append((method, path, response.status, response.headers))

    async def broken(*args: object, **kwargs: object) -> None:
        raise RuntimeError("the disk fell off")

    monkeypatch.setattr(veil.links, "fetch", broken)
    async with client.get(f"/l/{new.token}/image") as response:
        responses.append(("GET", "broken image", response.status, response.headers))
    for _ in range(3):  # two failures allowed, then refusals
        async with client.get("/l/" + "Z" * 43) as response:
            responses.append(("GET", "guess", response.status, response.headers))

    statuses = {status for *_, status, _ in responses}
    assert {200, 404, 405, 429, 500} <= statuses
    for method, path, status, headers in responses:
        for name, value in EXPECTED_HEADERS.items():
            assert headers.get(name) == value, (method, path, status, name)
    assert EXPECTED_HEADERS["Content-Security-Policy"] == CONTENT_SECURITY_POLICY


async def test_the_stylesheet_is_served_from_our_own_origin_because_inline_styles_are_blocked(
        client, veil):
    _, new = await share(veil)
    html = await (await client.get(f"/l/{new.token}")).text()
    css = await client.get("/static/veil.css")

    assert '<link rel="stylesheet" href="/static/veil.css">' in html
    assert "style=" not in html and "<style" not in html and "<script" not in html
    assert css.status == 200 and css.content_type == "text/css"
    assert "img" in await css.text()


async def test_download_links_are_attachments_and_others_are_inline(client, veil):
    image, inline = await share(veil)
    saved = await veil.links.create(image.public_id, Viewer(OWNER), allow_download=True)

    shown = await client.get(f"/l/{inline.token}/image")
    kept = await client.get(f"/l/{saved.token}/image")

    name = f"veil-{image.public_id}.png"
    assert shown.headers["Content-Disposition"] == f'inline; filename="{name}"'
    assert kept.headers["Content-Disposition"] == f'attachment; filename="{name}"'
    assert "allows saving a copy" in await (await client.get(f"/l/{saved.token}")).text()


async def test_the_page_uses_the_public_url_path_prefix(open_client, veil):
    client = await open_client(public_url="https://example.org/veil/")
    _, new = await share(veil)

    html = await (await client.get(f"/l/{new.token}")).text()

    assert f'src="/veil/l/{new.token}/image"' in html
    assert 'href="/veil/static/veil.css"' in html
    assert link_url("https://example.org/veil/", new.token) == (
        f"https://example.org/veil/l/{new.token}")


# Link-preview fetchers -----------------------------------------------------------------------


@pytest.mark.parametrize("user_agent", list(UNFURLERS.values()), ids=list(UNFURLERS))
async def test_unfurlers_spend_no_view_and_never_see_the_image_or_its_address(
        open_client, veil, user_agent):
    bot = await open_client(user_agent=user_agent)
    person = await open_client()
    _, new = await share(veil, max_views=1)
    not_found = await answer(bot, "GET", "/l/" + "Q" * 43)

    page = await bot.get(f"/l/{new.token}")
    html = await page.text()
    assert page.status == 200
    assert new.token not in html and "/image" not in html and "<img" not in html
    assert "og:" not in html and "twitter:" not in html
    for method in ("GET", "HEAD"):
        status, body, headers = await answer(bot, method, f"/l/{new.token}/image")
        assert status == 404
        if method == "GET":
            assert (status, body, headers) == not_found
    assert await views_of(veil, new) == 0

    assert (await person.get(f"/l/{new.token}/image")).status == 200


async def test_a_request_without_a_user_agent_is_treated_as_a_preview_fetcher(client, veil):
    _, new = await share(veil, max_views=1)

    page = await client.get(f"/l/{new.token}", skip_auto_headers=["User-Agent"],
                            headers={"User-Agent": ""})
    image = await client.get(f"/l/{new.token}/image", headers={"User-Agent": ""})

    assert page.status == 200 and "<img" not in await page.text()
    assert image.status == 404
    assert await views_of(veil, new) == 0


@pytest.mark.parametrize(("user_agent", "family"), [
    (FIREFOX, "Firefox"),
    (CHROME, "Chrome"),
    ("Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) "
     "Chrome/126.0.0.0 Safari/537.36 Edg/126.0.2592.87", "Edge"),
    ("Mozilla/5.0 (iPhone; CPU iPhone OS 17_5 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like "
     "Gecko) Version/17.5 Mobile/15E148 Safari/604.1", "Safari"),
    ("Mozilla/5.0 (Linux; Android 9; CUBOT P30) AppleWebKit/537.36 (KHTML, like Gecko) "
     "Chrome/120.0.0.0 Mobile Safari/537.36", "Chrome"),
    ("curl/8.5.0", "curl"),
    (UNFURLERS["Discord"], "bot"),
    ("something else entirely", "other"),
])
def test_user_agents_are_reduced_to_a_family(user_agent, family):
    assert agent_family(user_agent) == family
    assert is_unfurler(user_agent) == (family == "bot")


async def test_the_view_log_has_the_agent_family_and_never_the_full_user_agent(
        open_client, veil):
    client = await open_client(user_agent=CHROME)
    image, new = await share(veil)

    assert (await client.get(f"/l/{new.token}/image")).status == 200

    rows = await veil.ctx.db.fetchall("SELECT via, link_id, agent, viewer_id FROM view_log")
    assert [tuple(r) for r in rows] == [("link", new.link.public_id, "Chrome", None)]
    dump = "\n".join(str(tuple(r)) for r in await veil.ctx.db.fetchall("SELECT * FROM view_log"))
    assert "Mozilla" not in dump and new.token not in dump and new.token[16:] not in dump


# Watermark -----------------------------------------------------------------------------------


@pytest.mark.parametrize("make", [png_with_secrets, jpeg_with_exif], ids=["png", "jpeg"])
async def test_a_watermarked_link_changes_pixels_and_carries_no_metadata(client, veil, make):
    image, new = await share(veil, make(), watermark=True)
    stored = (await veil.images.decrypt_unchecked(image)).data

    data = await (await client.get(f"/l/{new.token}/image")).read()

    assert data != stored
    with Image.open(io.BytesIO(stored)) as original, Image.open(io.BytesIO(data)) as marked:
        assert marked.format == original.format == image.format
        assert marked.size == original.size
        difference = ImageChops.difference(original.convert("RGB"), marked.convert("RGB"))
        assert difference.getbbox() is not None
        assert not marked.getexif()
        assert not {"exif", "icc_profile", "xmp", "comment", "parameters"} & set(marked.info)
    if image.format == "PNG":
        assert not {b"tEXt", b"zTXt", b"iTXt", b"eXIf", b"iCCP"} & set(png_chunks(data))
    else:
        assert b"Exif\x00\x00" not in data and b"private description" not in data


async def test_watermarking_runs_in_a_worker_thread_never_on_the_event_loop(client, veil,
                                                                          monkeypatch):
    threads: list[str] = []

    def spy(data: bytes, image_format: str, text: str) -> bytes:
        threads.append(threading.current_thread().name)
        assert text.startswith("shared by link ")
        return apply_watermark(data, image_format, text)

    monkeypatch.setattr(routes, "apply_watermark", spy)
    _, new = await share(veil, watermark=True)

    assert (await client.get(f"/l/{new.token}/image")).status == 200
    assert len(threads) == 1
    assert threads[0] != threading.main_thread().name
    assert threads[0].startswith("veil-watermark")


# Throttling guesses --------------------------------------------------------------------------


@pytest.mark.parametrize("shared", [False, True], ids=["in-memory", "in-the-database"])
async def test_bad_guesses_are_throttled_but_the_real_holder_elsewhere_gets_through(
        open_client, veil, clock, shared):
    client = await open_client(trusted_proxies=["127.0.0.1"],
                               rate_limit=RateLimit(burst=5, per_second=1.0),
                               shared_limits=shared)
    _, new = await share(veil)
    guesser = {"X-Forwarded-For": "203.0.113.9"}
    holder = {"X-Forwarded-For": "198.51.100.20"}

    for n in range(5):
        assert (await client.get(f"/l/{'G' * 42}{n}", headers=guesser)).status == 404
    refused = await client.get("/l/" + "G" * 43, headers=guesser)
    assert refused.status == 429
    assert refused.headers["Retry-After"] == "1"
    assert "Too many attempts" in await refused.text()
    # Even a valid token is refused from the guessing address: otherwise 429 vs 200 would
    # still tell a guesser which tokens are real.
    assert (await client.get(f"/l/{new.token}", headers=guesser)).status == 429

    assert (await client.get(f"/l/{new.token}", headers=holder)).status == 200
    assert (await client.get(f"/l/{new.token}/image", headers=holder)).status == 200

    clock.advance(1.0)
    assert (await client.get("/l/" + "H" * 43, headers=guesser)).status == 404
    assert (await client.get("/l/" + "H" * 43, headers=guesser)).status == 429


async def test_successful_lookups_never_count_against_an_address(open_client, veil):
    client = await open_client(rate_limit=RateLimit(burst=3, per_second=0.001))
    _, new = await share(veil)

    for _ in range(10):
        assert (await client.get(f"/l/{new.token}")).status == 200
    for _ in range(3):
        assert (await client.get("/l/" + "W" * 43)).status == 404
    assert (await client.get("/l/" + "W" * 43)).status == 429


async def test_forwarded_for_is_ignored_unless_the_peer_is_a_trusted_proxy(open_client, veil):
    # The test client connects from 127.0.0.1, which is not in 10.0.0.0/8.
    client = await open_client(trusted_proxies=["10.0.0.0/8"],
                               rate_limit=RateLimit(burst=3, per_second=0.001))

    for n in range(3):
        forged = {"X-Forwarded-For": f"192.0.2.{n}"}
        assert (await client.get("/l/" + "F" * 43, headers=forged)).status == 404
    fresh = {"X-Forwarded-For": "192.0.2.200"}
    assert (await client.get("/l/" + "F" * 43, headers=fresh)).status == 429


def test_client_address_is_the_right_most_hop_that_is_not_a_trusted_proxy():
    proxies = parse_networks(["10.0.0.0/8", "fd00::/8"])

    assert client_address("10.0.0.1", ["1.1.1.1, 203.0.113.7, 10.0.0.2"], proxies) == (
        "203.0.113.7")
    assert client_address("10.0.0.1", ["1.1.1.1", "203.0.113.7"], proxies) == "203.0.113.7"
    assert client_address("198.51.100.1", ["203.0.113.7"], proxies) == "198.51.100.1"
    assert client_address("10.0.0.1", [], proxies) == "10.0.0.1"
    assert client_address("10.0.0.1", ["10.0.0.3, 10.0.0.2"], proxies) == "10.0.0.3"
    assert client_address("10.0.0.1", ["forged, 10.0.0.2"], proxies) == "10.0.0.2"
    assert client_address("10.0.0.1", ["[2001:db8:1:2::5]:443"], proxies) == "2001:db8:1:2::/64"
    assert client_address("2001:db8::1", [], proxies) == client_address("2001:db8::ffff", [],
                                                                         proxies)
    assert client_address("::ffff:192.0.2.1", [], proxies) == "192.0.2.1"
    assert client_address(None, [], proxies) == "unknown"


def test_the_limiter_forgets_the_oldest_addresses_to_bound_its_memory(clock):
    limiter = FailureLimiter(RateLimit(burst=2, per_second=1.0, max_addresses=100), clock)

    for n in range(5000):
        limiter.settle(f"address-{n}", charged=False, found=False)  # one miss each

    assert len(limiter) == 100
    limiter.settle("address-4999", charged=False, found=False)
    wait, _ = limiter.acquire("address-4999")
    assert wait is not None, "a recent address keeps its bucket"


# Logs ----------------------------------------------------------------------------------------


def test_a_clean_address_is_never_throttled_however_many_requests_it_has_in_flight(clock):
    limiter = FailureLimiter(RateLimit(burst=2, per_second=1.0), clock)
    assert all(limiter.acquire("holder") == (None, False) for _ in range(100))


def test_a_burst_of_misses_from_a_clean_address_runs_into_debt_and_is_then_held_back(clock):
    limiter = FailureLimiter(RateLimit(burst=5, per_second=1.0), clock)
    for _ in range(50):  # fifty guesses in flight at once, none charged up front
        assert limiter.acquire("guesser") == (None, False)
    for _ in range(50):
        limiter.settle("guesser", charged=False, found=False)
    wait, _ = limiter.acquire("guesser")
    assert wait is not None and wait >= 5.0


async def test_tokens_never_reach_the_logs_not_even_the_access_log(open_client, veil, caplog,
                                                                   monkeypatch):
    caplog.set_level(logging.DEBUG)
    client = await open_client(rate_limit=RateLimit(burst=3, per_second=0.001))
    bot = await open_client(user_agent=UNFURLERS["Discord"])
    _, new = await share(veil, max_views=2, watermark=True)
    token = new.token
    wrong = token[:-1] + ("A" if token[-1] != "A" else "B")

    await client.get(f"/l/{token}")
    await client.get(f"/l/{token}/image")
    await client.head(f"/l/{token}/image")
    await bot.get(f"/l/{token}")
    await bot.get(f"/l/{token}/image")
    await client.get(f"/l/{token}/image/extra?token={token}")
    await client.post(f"/l/{token}")

    async def broken(bad_token: str, **kwargs: object) -> None:
        raise RuntimeError(f"could not serve /l/{bad_token} (token {bad_token})")

    with monkeypatch.context() as patch:
        patch.setattr(veil.links, "fetch", broken)
        assert (await client.get(f"/l/{token}/image")).status == 500
    for _ in range(4):  # three misses, then a refusal
        await client.get(f"/l/{wrong}")
    await client.get(f"/l/{token}/image")  # the second and last view
    await veil.links.revoke(new.link.public_id, Viewer(OWNER))
    await client.get(f"/l/{token}")

    access = [r.getMessage() for r in caplog.records if r.name == "aiohttp.access"]
    assert any("/l/<redacted>" in line for line in access)
    assert not any("127.0.0.1" in line or "Firefox" in line for line in access)
    assert any(r.name == "bot.web.security" and r.levelno == logging.ERROR
               for r in caplog.records)
    assert any(r.name == "aiohttp.access" and '" 429 ' in r.getMessage()
               for r in caplog.records)
    for secret in (token, token[16:], wrong):
        assert secret not in caplog.text
    # Not even the selector (the first 16 characters, useless without the rest).
    assert not [r for r in caplog.records if token[:16] in r.getMessage()]


def test_redaction_hides_tokens_in_paths_request_lines_and_bare_text():
    token = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJ0123456"
    assert redact(f"GET /l/{token}/image?x=1 HTTP/1.1") == "GET /l/<redacted>/image?x=1 HTTP/1.1"
    assert redact(f"b'GET /l/{token}\\x01 HTTP/1.1'") == "b'GET /l/<redacted> HTTP/1.1'"
    assert token not in redact(f"lookup failed for {token}.")


# Health and the real socket ------------------------------------------------------------------


async def test_healthz_answers_ok_while_the_database_is_reachable(client, veil, monkeypatch):
    response = await client.get("/healthz")
    assert response.status == 200
    assert await response.json() == {"status": "ok"}

    async def unreachable(*args: object) -> None:
        raise OSError("database is gone")

    monkeypatch.setattr(veil.ctx.db, "fetchval", unreachable)
    response = await client.get("/healthz")
    assert response.status == 503
    assert await response.json() == {"status": "unavailable"}


async def test_a_real_socket_server_serves_a_link_and_stops_cleanly(veil, clock):
    image, new = await share(veil, max_views=1)
    server = await start_web(create_app(veil, public_url="http://127.0.0.1", clock=clock),
                             "127.0.0.1", 0)
    try:
        assert server.port > 0
        async with aiohttp.ClientSession(headers={"User-Agent": FIREFOX}) as session:
            async with session.get(f"{server.url}/l/{new.token}") as page:
                assert page.status == 200
                assert page.headers["Cache-Control"] == "no-store"
            async with session.get(f"{server.url}/l/{new.token}/image") as served:
                assert served.status == 200
                assert await served.read() == (await veil.images.decrypt_unchecked(image)).data
            async with session.get(f"{server.url}/l/{new.token}/image") as again:
                assert again.status == 404
    finally:
        await server.stop()

    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", server.port), timeout=1).close()


async def test_the_server_also_stops_through_an_app_runner_style_cleanup(veil):
    server = await start_web(create_app(veil, public_url="http://127.0.0.1"), "127.0.0.1", 0)
    async with aiohttp.ClientSession() as session, session.get(f"{server.url}/healthz") as health:
        assert health.status == 200

    await server.cleanup()

    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", server.port), timeout=1).close()


def test_serve_runs_from_settings_and_stops_cleanly_on_sigterm(tmp_path):
    port = free_port()
    script = textwrap.dedent(f"""
        import asyncio, logging
        from bot.config import load_settings
        from bot.web import serve
        logging.basicConfig(level=logging.INFO, format="%(name)s %(message)s")
        settings = load_settings({{"VEIL_DATA_DIR": {str(tmp_path / "data")!r},
                                  "VEIL_WEB_PORT": "{port}"}},
                                 require_token=False, dotenv_path=None)
        asyncio.run(serve(settings))
        print("serve returned", flush=True)
    """)
    process = subprocess.Popen([sys.executable, "-c", script], cwd=Path(__file__).parents[1],
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = 10.0
        while deadline > 0:
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=0.5) as conn:
                    conn.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                    reply = conn.recv(4096)
                break
            except OSError:
                assert process.poll() is None, process.stdout.read()
                deadline -= 0.05
                time.sleep(0.05)
        assert reply.startswith(b"HTTP/1.1 200"), reply
        assert b'{"status": "ok"}' in reply
        process.send_signal(signal.SIGTERM)
        output, _ = process.communicate(timeout=10)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert process.returncode == 0, output
    assert "Link server stopped" in output and "serve returned" in output


@pytest.mark.slow
def test_web_workers_serve_one_port_from_several_processes_and_stop_together(tmp_path):
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("VEIL_")}
    process = subprocess.Popen(
        [sys.executable, "-m", "bot", "web", "--workers", "3"], cwd=Path(__file__).parents[1],
        env={**env, "VEIL_DATA_DIR": str(tmp_path / "data"), "VEIL_WEB_PORT": str(port)},
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    children = Path(f"/proc/{process.pid}/task/{process.pid}/children")
    try:
        listening: set[int] = set()
        deadline = time.monotonic() + 30
        # Every worker binds the one port beside the first; count them by their sockets.
        while len(listening) < 3:
            assert process.poll() is None, process.stdout.read() if process.stdout else ""
            assert time.monotonic() < deadline, f"{len(listening)} of 3 processes listen"
            pids = [process.pid] + [int(p) for p in children.read_text().split()]
            listening = {pid for pid in pids if _listens(pid, port)}
            time.sleep(0.1)
        for _ in range(20):  # new connections, spread by the kernel: each one is answered
            with socket.create_connection(("127.0.0.1", port), timeout=5) as conn:
                conn.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                assert conn.recv(4096).startswith(b"HTTP/1.1 200")
        workers = [int(p) for p in children.read_text().split()]
        process.send_signal(signal.SIGTERM)
        output, _ = process.communicate(timeout=20)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert process.returncode == 0, output
    assert "(3 processes)" in output
    assert len(workers) == 2 and not any(Path(f"/proc/{pid}").exists() for pid in workers)


def _listens(pid: int, port: int) -> bool:
    """Whether process ``pid`` holds a listening TCP socket on ``port`` (Linux /proc)."""
    try:
        inodes = {os.readlink(f"/proc/{pid}/fd/{fd}")[8:-1] for fd in os.listdir(f"/proc/{pid}/fd")
                  if os.readlink(f"/proc/{pid}/fd/{fd}").startswith("socket:[")}
    except OSError:
        return False
    for line in Path(f"/proc/{pid}/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        if int(fields[1].split(":")[1], 16) == port and fields[3] == "0A" and fields[9] in inodes:
            return True
    return False


def test_png_chunk_helper_sees_text_chunks():
    """Guards the helper the image tests rely on: it does find a text chunk when one is there."""
    assert b"tEXt" in png_chunks(png_with_secrets())


async def test_the_access_log_records_the_size_of_the_image_it_sent(open_client, veil, caplog):
    caplog.set_level(logging.INFO, logger="aiohttp.access")
    client = await open_client()
    _, new = await share(veil)
    response = await client.get(f"/l/{new.token}/image")
    body = await response.read()
    assert response.status == 200 and len(body) > 1000
    lines = [r.getMessage() for r in caplog.records
             if r.name == "aiohttp.access" and "/image" in r.getMessage()]
    assert lines, "no access log line for the image"
    assert int(lines[-1].split('" 200 ')[1].split()[0]) == len(body)
    await client.head(f"/l/{new.token}/image")
    heads = [r.getMessage() for r in caplog.records
             if r.name == "aiohttp.access" and r.getMessage().startswith('"HEAD')]
    assert heads and heads[-1].split('" 200 ')[1].split()[0] == "0"
