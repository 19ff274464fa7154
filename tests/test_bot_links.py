"""`/link create|list|revoke` end to end against the Discord double.

The token is the secret of a link: it goes to its owner in an ephemeral reply and nowhere else,
not in a channel, a DM, an error nor a log line (guarantees 1 and 8).
"""

from __future__ import annotations

import logging
import re

from bot.core.models import Viewer
from tests.conftest import FakeClock
from tests.e2e import new_image, texts

LINK = re.compile(r"https://veil\.example/l/([A-Za-z0-9_-]{43})(?![A-Za-z0-9_-])")


async def create_link(app, user, image: str, **options) -> tuple[object, str]:
    handle = await app.run("link create", user=user, options={"image": image, **options})
    match = LINK.search(texts(handle))
    assert match, f"no link in {texts(handle)!r}"
    return handle, match.group(1)


def everything_shown_to_others(app) -> str:
    """Every version of every message that is not ephemeral, in channels and DMs alike."""
    parts = []
    for message in app.double.state.messages.values():
        if message.ephemeral:
            continue
        for version in message.versions:
            parts.append(version.content)
            parts.append(str(version.embeds))
            parts.append(str(version.components))
    return "\n".join(parts)


async def test_link_create_replies_only_to_its_owner_with_a_url_that_resolves(veil_app):
    app = veil_app
    image = await new_image(app, app.world.alice)
    handle, token = await create_link(app, app.world.alice, image)
    assert handle.ephemeral and all(m.ephemeral for m in handle.messages)
    target = await app.veil.links.resolve(token)
    assert target is not None and target.image.public_id == image
    [link] = await app.veil.links.links_of(Viewer(app.world.alice.id))
    assert f"`{link.public_id}`" in texts(handle)


async def test_the_link_token_never_reaches_a_public_message_nor_a_log_line(veil_app, caplog):
    app = veil_app
    caplog.set_level(logging.DEBUG)
    await app.permit(app.world.general)
    image = await new_image(app, app.world.alice)
    _, token = await create_link(app, app.world.alice, image, expires="2h", max_views=3)
    await app.run("link list", user=app.world.alice)
    [link] = await app.veil.links.links_of(Viewer(app.world.alice.id))
    await app.run("link revoke", user=app.world.alice, options={"link": link.public_id})
    await app.run("link revoke", user=app.world.bob, options={"link": link.public_id})
    assert caplog.records, "the test should capture the bot's debug logging"
    # Neither half either: the selector (first 16 characters) travels as an SQL parameter, and
    # no logger may quote it.
    for part in (token, token[:16], token[16:]):
        assert part not in caplog.text
    assert token not in everything_shown_to_others(app)


async def test_the_link_reply_asks_discord_not_to_fetch_a_preview_of_the_url(veil_app):
    app = veil_app
    image = await new_image(app, app.world.alice)
    handle, _ = await create_link(app, app.world.alice, image)
    suppress_embeds = 1 << 2
    assert handle.flags & suppress_embeds


async def test_a_view_limit_is_honoured(veil_app):
    app = veil_app
    image = await new_image(app, app.world.alice)
    handle, token = await create_link(app, app.world.alice, image, max_views=2)
    assert "2 views" in texts(handle)
    assert await app.veil.links.fetch(token) is not None
    assert await app.veil.links.fetch(token) is not None
    assert await app.veil.links.fetch(token) is None
    assert await app.veil.links.resolve(token) is None


async def test_an_expiry_is_honoured(veil_app):
    app = veil_app
    clock = FakeClock()
    app.veil.ctx.clock = clock
    image = await new_image(app, app.world.alice)
    handle, token = await create_link(app, app.world.alice, image, expires="30m")
    assert f"<t:{int(clock.now + 1800)}:R>" in texts(handle)
    clock.advance(1799)
    assert await app.veil.links.resolve(token) is not None
    clock.advance(1)
    assert await app.veil.links.resolve(token) is None


async def test_without_an_expiry_a_link_lives_a_day(veil_app):
    app = veil_app
    clock = FakeClock()
    app.veil.ctx.clock = clock
    image = await new_image(app, app.world.alice)
    _, token = await create_link(app, app.world.alice, image)
    target = await app.veil.links.resolve(token)
    assert target.link.expires_at == clock.now + 86400


async def test_a_server_with_links_off_refuses_with_its_policy(veil_app):
    app = veil_app
    image = await new_image(app, app.world.alice)
    await app.veil.moderation.update_policy(app.world.guild.id, app.world.moderator.id,
                                            links_enabled=False)
    handle = await app.run("link create", user=app.world.alice, options={"image": image})
    assert "Links are turned off for images from this server." in texts(handle)
    assert not LINK.search(texts(handle))
    assert await app.veil.links.links_of(Viewer(app.world.alice.id)) == []


async def test_a_lifetime_over_the_server_maximum_is_refused(veil_app):
    app = veil_app
    image = await new_image(app, app.world.alice)
    await app.veil.moderation.update_policy(app.world.guild.id, app.world.moderator.id,
                                            link_max_lifetime=3600.0)
    handle = await app.run("link create", user=app.world.alice,
                           options={"image": image, "expires": "2h"})
    assert "live at most 1h" in texts(handle)
    assert await app.veil.links.links_of(Viewer(app.world.alice.id)) == []
    _, token = await create_link(app, app.world.alice, image, expires="1h")
    assert await app.veil.links.resolve(token) is not None


async def test_an_unreadable_expiry_is_refused_with_an_example(veil_app):
    app = veil_app
    image = await new_image(app, app.world.alice)
    handle = await app.run("link create", user=app.world.alice,
                           options={"image": image, "expires": "soon"})
    assert "'soon' is not a duration" in texts(handle) and "30m" in texts(handle)


async def test_only_the_owner_can_make_a_link_to_an_image(veil_app):
    app = veil_app
    image = await new_image(app, app.world.alice)
    await app.veil.sharing.grant(Viewer(app.world.alice.id), "user", app.world.bob.id)
    handle = await app.run("link create", user=app.world.bob, options={"image": image})
    assert f"There is no image with id `{image}` that you can see." in texts(handle)
    assert not LINK.search(texts(handle))


async def test_link_list_shows_each_link_with_its_status_and_views(veil_app):
    app = veil_app
    empty = await app.run("link list", user=app.world.alice)
    assert "You have no links" in texts(empty)
    image = await new_image(app, app.world.alice)
    _, used = await create_link(app, app.world.alice, image, max_views=1)
    _, live = await create_link(app, app.world.alice, image, download=True)
    await app.veil.links.fetch(used)
    await app.veil.links.fetch(live)
    live_id = (await app.veil.links.resolve(live)).link.public_id
    handle = await app.run("link list", user=app.world.alice)
    lines = texts(handle).splitlines()
    assert handle.ephemeral and len(lines) == 2
    assert any("used up" in line and "views 1/1" in line for line in lines)
    assert any(live_id in line and "live" in line and "views 1 " in line
               and line.endswith("· download") for line in lines)
    assert used not in texts(handle) and live not in texts(handle)


async def test_a_long_list_of_links_still_fits_in_one_discord_message(veil_app):
    app = veil_app
    image = await new_image(app, app.world.alice)
    for _ in range(45):
        await app.veil.links.create(image, Viewer(app.world.alice.id), max_views=1000)
    handle = await app.run("link list", user=app.world.alice)
    assert handle.response_type == 4
    assert len(handle.content) <= 2000 and "more" in handle.content


async def test_revoking_a_link_stops_it_on_the_next_request(veil_app):
    app = veil_app
    image = await new_image(app, app.world.alice)
    _, token = await create_link(app, app.world.alice, image)
    link = (await app.veil.links.resolve(token)).link
    handle = await app.run("link revoke", user=app.world.alice, options={"link": link.public_id})
    assert f"Link `{link.public_id}` is off" in texts(handle)
    assert await app.veil.links.resolve(token) is None
    listed = await app.run("link list", user=app.world.alice)
    assert "revoked" in texts(listed)


async def test_revoking_someone_elses_link_is_refused_and_leaves_it_working(veil_app):
    app = veil_app
    image = await new_image(app, app.world.alice)
    _, token = await create_link(app, app.world.alice, image)
    link = (await app.veil.links.resolve(token)).link
    handle = await app.run("link revoke", user=app.world.bob, options={"link": link.public_id})
    assert "You have no link with that id." in texts(handle)
    unknown = await app.run("link revoke", user=app.world.bob, options={"link": "zzzzzzzz"})
    assert texts(unknown) == texts(handle)
    assert await app.veil.links.resolve(token) is not None


async def test_link_id_autocomplete_offers_only_your_own_live_links(veil_app):
    app = veil_app
    mine = await new_image(app, app.world.alice)
    theirs = await new_image(app, app.world.bob)
    kept = await app.veil.links.create(mine, Viewer(app.world.alice.id))
    gone = await app.veil.links.create(mine, Viewer(app.world.alice.id))
    await app.veil.links.revoke(gone.link.public_id, Viewer(app.world.alice.id))
    await app.veil.links.create(theirs, Viewer(app.world.bob.id))
    handle = await app.double.autocomplete("link revoke", focused="link", value="",
                                           user=app.world.alice, guild=app.world.guild,
                                           channel=app.world.general)
    choices = await handle.wait_choices()
    assert [c["value"] for c in choices] == [kept.link.public_id]
    assert kept.token not in str(choices)


async def test_image_autocomplete_for_a_link_offers_only_your_own_images(veil_app):
    app = veil_app
    mine = await new_image(app, app.world.alice)
    theirs = await new_image(app, app.world.bob)
    await app.veil.sharing.grant(Viewer(app.world.bob.id), "user", app.world.alice.id)
    handle = await app.double.autocomplete("link create", focused="image", value="",
                                           user=app.world.alice, guild=app.world.guild,
                                           channel=app.world.general)
    values = [c["value"] for c in await handle.wait_choices()]
    assert values == [mine] and theirs not in values
