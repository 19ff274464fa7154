# ruff: noqa: F811  (the fixtures below come from tests.test_web, imported by name)
"""Links with a password, over the real link server (issue 15).

The mistakes other photo servers made are the cases here: a sub-resource (the image, HEAD, the
watermarked and download forms) that forgets to check the password, a session that survives a
password change, and a session id chosen before login that is still accepted after it.
"""

from __future__ import annotations

from http.cookies import SimpleCookie

import pytest
from aiohttp.test_utils import TestClient

from bot.core.links import LinkService
from bot.core.models import NewLink, Viewer
from bot.core.passwords import ScryptCost
from bot.core.veil import Veil
from bot.web.routes import SESSION_COOKIE
from bot.web.security import PASSWORD_PAGE_CSP
from tests.test_web import (  # noqa: F401  (fixtures shared with the link server tests)
    OWNER,
    answer,
    client,
    clock,
    open_client,
    png_with_secrets,
    share,
    veil,
    views_of,
)

PASSWORD = "correct horse battery"
SOME_IP = {"X-Forwarded-For": "203.0.113.9"}


@pytest.fixture(autouse=True)
def cheaper_hashes(veil: Veil) -> None:
    # The same scrypt, at a cost that keeps this file quick; the default is checked below.
    veil.links.password_cost = ScryptCost(log2_n=10)


async def login(client: TestClient, new: NewLink, password: str = PASSWORD,
                headers: dict[str, str] | None = None,
                cookies: dict[str, str] | None = None) -> tuple[int, str | None, SimpleCookie]:
    """Answer the form; (status, Location, the Set-Cookie headers parsed)."""
    async with client.post(f"/l/{new.token}", data={"password": password},
                           allow_redirects=False, headers=headers or {},
                           cookies=cookies) as response:
        jar: SimpleCookie = SimpleCookie()
        for header in response.headers.getall("Set-Cookie", ()):
            jar.load(header)
        await response.read()
        return response.status, response.headers.get("Location"), jar


async def session_of(client: TestClient, new: NewLink, password: str = PASSWORD) -> str:
    status, _, jar = await login(client, new, password)
    assert status == 303
    return jar[SESSION_COOKIE].value


def with_session(session: str) -> dict[str, str]:
    return {"Cookie": f"{SESSION_COOKIE}={session}"}


async def every_way_to_the_image(client: TestClient, token: str,
                                 headers: dict[str, str]) -> dict[str, int]:
    """The status of each request that could carry the image's bytes."""
    statuses = {}
    for method, path in (("GET", f"/l/{token}/image"), ("HEAD", f"/l/{token}/image")):
        async with client.request(method, path, headers=headers) as response:
            await response.read()
            statuses[f"{method} image"] = response.status
    return statuses


async def test_a_passworded_link_shows_only_a_form_and_serves_nothing_without_a_session(
        client, veil):
    _, new = await share(veil, password=PASSWORD, max_views=3)
    page = await client.get(f"/l/{new.token}")
    html = await page.text()
    assert page.status == 200
    assert "protected by a password" in html and 'type="password"' in html
    assert "/image" not in html and "<img" not in html
    assert page.headers["Content-Security-Policy"] == PASSWORD_PAGE_CSP
    assert "form-action 'self'" in PASSWORD_PAGE_CSP
    assert await every_way_to_the_image(client, new.token, {}) == {"GET image": 404,
                                                                   "HEAD image": 404}
    assert await views_of(veil, new) == 0


async def test_the_right_password_opens_the_page_image_and_head_and_spends_one_view(
        client, veil):
    image, new = await share(veil, password=PASSWORD, max_views=3)
    status, location, jar = await login(client, new)
    assert (status, location) == (303, f"/l/{new.token}")
    session = with_session(jar[SESSION_COOKIE].value)
    page = await client.get(f"/l/{new.token}", headers=session)
    assert page.status == 200 and f'src="/l/{new.token}/image"' in await page.text()
    assert await views_of(veil, new) == 0, "neither the login nor the page spend a view"
    assert await every_way_to_the_image(client, new.token, session) == {"GET image": 200,
                                                                        "HEAD image": 200}
    served = await client.get(f"/l/{new.token}/image", headers=session)
    assert await served.read() == (await veil.images.decrypt_unchecked(image)).data
    assert await views_of(veil, new) == 2, "the two GETs of the image, not the HEAD"


async def test_the_session_cookie_is_httponly_strict_scoped_to_the_link_and_secure_on_https(
        open_client, veil):
    _, new = await share(veil, password=PASSWORD)
    for public_url, secure in (("https://veil.example", True), ("http://127.0.0.1:8080", False)):
        client = await open_client(public_url=public_url)
        _, _, jar = await login(client, new)
        cookie = jar[SESSION_COOKIE]
        assert cookie["httponly"] is True
        assert cookie["samesite"] == "Strict"
        assert cookie["path"] == f"/l/{new.token}"
        assert bool(cookie["secure"]) is secure
        assert 0 < int(cookie["max-age"]) <= 30 * 60


async def test_the_watermarked_and_download_forms_check_the_session_like_the_page(client, veil):
    _, marked = await share(veil, password=PASSWORD, watermark=True)
    _, download = await share(veil, password=PASSWORD, allow_download=True)
    for new in (marked, download):
        assert await every_way_to_the_image(client, new.token, {}) == {"GET image": 404,
                                                                       "HEAD image": 404}
        session = with_session(await session_of(client, new))
        assert await every_way_to_the_image(client, new.token, session) == {"GET image": 200,
                                                                            "HEAD image": 200}
    served = await client.get(f"/l/{download.token}/image",
                              headers=with_session(await session_of(client, download)))
    assert served.headers["Content-Disposition"].startswith("attachment;")


async def test_a_session_for_one_link_opens_no_other_link(client, veil):
    _, first = await share(veil, password=PASSWORD)
    _, second = await share(veil, password=PASSWORD)
    session = with_session(await session_of(client, first))
    assert await every_way_to_the_image(client, second.token, session) == {"GET image": 404,
                                                                           "HEAD image": 404}
    assert "protected by a password" in await (await client.get(f"/l/{second.token}",
                                                                headers=session)).text()


async def test_a_wrong_password_shows_the_form_again_is_counted_and_spends_nothing(client, veil):
    _, new = await share(veil, password=PASSWORD, max_views=1)
    status, _, jar = await login(client, new, "not the password")
    assert status == 403 and SESSION_COOKIE not in jar
    page = await client.post(f"/l/{new.token}", data={"password": "still wrong"})
    assert "That password is not right" in await page.text()
    missing = await client.post(f"/l/{new.token}", data={})
    assert missing.status == 403
    assert await views_of(veil, new) == 0
    [link] = await veil.links.links_of(Viewer(OWNER))
    assert link.password_failures == 3 and link.has_password
    assert (await client.get(f"/l/{new.token}/image",
                             headers=with_session(await session_of(client, new)))).status == 200


async def test_changing_or_removing_the_password_ends_every_session_at_once(client, veil):
    _, new = await share(veil, password=PASSWORD)
    sessions = [with_session(await session_of(client, new)) for _ in range(2)]
    await veil.links.set_password(new.link.public_id, Viewer(OWNER), "a brand new secret")
    for session in sessions:
        assert await every_way_to_the_image(client, new.token, session) == {
            "GET image": 404, "HEAD image": 404}
    status, _, _ = await login(client, new, PASSWORD)
    assert status == 403, "the old password no longer opens it"
    fresh = with_session(await session_of(client, new, "a brand new secret"))
    assert (await client.get(f"/l/{new.token}/image", headers=fresh)).status == 200

    # Removing the password and setting the very same one again does not revive old sessions.
    await veil.links.set_password(new.link.public_id, Viewer(OWNER), None)
    await veil.links.set_password(new.link.public_id, Viewer(OWNER), "a brand new secret")
    assert (await client.get(f"/l/{new.token}/image", headers=fresh)).status == 404
    rows = await veil.ctx.db.fetchval("SELECT count(*) FROM link_sessions")
    assert rows == 0


async def test_removing_the_password_opens_the_link_to_anyone_holding_it(client, veil):
    _, new = await share(veil, password=PASSWORD)
    await veil.links.set_password(new.link.public_id, Viewer(OWNER), None)
    assert (await client.get(f"/l/{new.token}/image")).status == 200
    [link] = await veil.links.links_of(Viewer(OWNER))
    assert not link.has_password


async def test_revoke_and_expiry_end_sessions_and_the_dead_link_looks_like_any_other(
        client, veil, clock):
    _, revoked = await share(veil, password=PASSWORD)
    _, expiring = await share(veil, password=PASSWORD, expires_in=3600)
    revoked_session = with_session(await session_of(client, revoked))
    clock.advance(1000)
    expiring_session = with_session(await session_of(client, expiring))
    await veil.links.revoke(revoked.link.public_id, Viewer(OWNER))
    clock.now = expiring.link.expires_at

    unknown = "A" * 43
    for method, suffix in (("GET", ""), ("GET", "/image"), ("HEAD", "/image")):
        reference = await answer(client, method, f"/l/{unknown}{suffix}")
        assert reference[0] == 404
        for new, session in ((revoked, revoked_session), (expiring, expiring_session)):
            assert await answer(client, method, f"/l/{new.token}{suffix}",
                                headers=session) == reference
            assert await answer(client, method, f"/l/{new.token}{suffix}") == reference
    posted = await answer(client, "POST", f"/l/{unknown}", data={"password": PASSWORD})
    for new in (revoked, expiring):
        assert await answer(client, "POST", f"/l/{new.token}",
                            data={"password": PASSWORD}) == posted
    assert posted[0] == 404


async def test_a_session_lasts_thirty_minutes_and_never_past_its_link(client, veil, clock):
    _, long_lived = await share(veil, password=PASSWORD, expires_in=86400)
    session = with_session(await session_of(client, long_lived))
    clock.advance(30 * 60 - 1)
    assert (await client.get(f"/l/{long_lived.token}/image", headers=session)).status == 200
    clock.advance(1)
    assert (await client.get(f"/l/{long_lived.token}/image", headers=session)).status == 404
    assert "protected by a password" in await (await client.get(
        f"/l/{long_lived.token}", headers=session)).text()

    _, short = await share(veil, password=PASSWORD, expires_in=600)
    _, _, jar = await login(client, short)
    assert int(jar[SESSION_COOKIE]["max-age"]) == 600


async def test_a_session_id_set_before_login_is_not_accepted_after_it(client, veil):
    """Session fixation: an attacker plants a cookie, the victim logs in; the planted id must
    stay worthless, and the victim gets a fresh id of the server's own making."""
    _, new = await share(veil, password=PASSWORD)
    planted_well_formed = "P" * 43
    for planted in (planted_well_formed, "attacker-chosen"):
        status, _, jar = await login(client, new, cookies={SESSION_COOKIE: planted})
        assert status == 303
        assert jar[SESSION_COOKIE].value != planted
        assert await every_way_to_the_image(client, new.token, with_session(planted)) == {
            "GET image": 404, "HEAD image": 404}
    # An attacker's own valid session is no help either: every login gets a new one.
    attacker = await session_of(client, new)
    status, _, jar = await login(client, new, cookies={SESSION_COOKIE: attacker})
    assert jar[SESSION_COOKIE].value != attacker


async def test_each_login_gives_a_new_session_and_keeps_no_token_in_the_database(client, veil):
    _, new = await share(veil, password=PASSWORD)
    first, second = await session_of(client, new), await session_of(client, new)
    assert first != second and len(first) == 43
    rows = await veil.ctx.db.fetchall("SELECT selector, verifier_hash FROM link_sessions")
    stored = repr([tuple(r) for r in rows])
    assert first[16:] not in stored and second[16:] not in stored
    password_hash = await veil.ctx.db.fetchval("SELECT password_hash FROM links")
    assert PASSWORD not in password_hash


async def test_the_stored_password_is_a_salted_scrypt_hash_at_the_default_cost(veil):
    links = LinkService(veil.ctx, veil.images)  # as Veil.open makes it, not cheapened
    image = await veil.images.create(OWNER, png_with_secrets(), guild_id=None, source="upload")
    await links.create(image.public_id, Viewer(OWNER), password=PASSWORD)
    await links.create(image.public_id, Viewer(OWNER), password=PASSWORD)
    hashes = [r[0] for r in await veil.ctx.db.fetchall("SELECT password_hash FROM links")]
    assert all(h.startswith("scrypt$15$8$1$") for h in hashes)
    assert hashes[0] != hashes[1], "a fresh salt for every hash"


async def test_a_too_short_password_is_refused_and_no_link_is_made(veil):
    image = await veil.images.create(OWNER, png_with_secrets(), guild_id=None, source="upload")
    with pytest.raises(Exception, match="8 to 128 characters"):
        await veil.links.create(image.public_id, Viewer(OWNER), password="short")
    assert await veil.links.links_of(Viewer(OWNER)) == []


async def test_wrong_answers_are_throttled_per_address_without_locking_out_the_holder(
        open_client, veil, clock):
    client = await open_client(trusted_proxies=["127.0.0.1"])
    _, new = await share(veil, password=PASSWORD)
    guesser = {"X-Forwarded-For": "203.0.113.9"}
    holder = {"X-Forwarded-For": "198.51.100.20"}
    for _ in range(5):
        assert (await login(client, new, "guess", headers=guesser))[0] == 403
    refused = await client.post(f"/l/{new.token}", data={"password": PASSWORD},
                                headers=guesser, allow_redirects=False)
    assert refused.status == 429 and int(refused.headers["Retry-After"]) >= 1
    assert "Too many wrong passwords" in await refused.text()
    assert (await login(client, new, headers=holder))[0] == 303
    [link] = await veil.links.links_of(Viewer(OWNER))
    assert link.password_failures == 5, "a refused answer is not even checked"
    clock.advance(30)
    assert (await login(client, new, headers=guesser))[0] == 303


async def test_guesses_spread_over_many_addresses_are_slowed_per_link_but_a_first_answer_passes(
        open_client, veil, clock):
    client = await open_client(trusted_proxies=["127.0.0.1"])
    _, new = await share(veil, password=PASSWORD)
    # Twenty addresses answer wrongly twice each: forty wrong answers on one link.
    statuses = []
    for n in range(20):
        for _ in range(2):
            status, _, _ = await login(client, new, "guess",
                                       headers={"X-Forwarded-For": f"192.0.2.{n}"})
            statuses.append(status)
    assert 429 in statuses, "the link's own bucket slows a guesser with many addresses"
    again = await client.post(f"/l/{new.token}", data={"password": "guess"},
                              headers={"X-Forwarded-For": "192.0.2.1"}, allow_redirects=False)
    assert again.status == 429
    # The holder's first answer from an address of theirs is never refused.
    assert (await login(client, new, headers={"X-Forwarded-For": "198.51.100.7"}))[0] == 303
