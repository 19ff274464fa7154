"""Link passwords from Discord: asked in a modal, never an option; listed; counted (issue 15)."""

from __future__ import annotations

import logging

import pytest

from bot.core.models import NewLink, Viewer
from bot.core.passwords import ScryptCost
from cogs.links import PASSWORD_INPUT
from tests.e2e import new_image, texts
from tests.test_bot_links import LINK, everything_shown_to_others

PASSWORD = "tea at the harbour"


@pytest.fixture(autouse=True)
def cheaper_hashes(veil_app) -> None:
    # The same scrypt, at a cost that keeps this file quick (tests/test_web_passwords.py
    # checks the default).
    veil_app.veil.links.password_cost = ScryptCost(log2_n=10)


async def answer_modal(app, handle, value: str):
    assert handle.response_type == 9, "the bot should answer with a modal"
    submitted = await app.double.submit_modal(handle, {PASSWORD_INPUT: value})
    await app.settle(submitted)
    return submitted


async def passworded_link(app) -> NewLink:
    """A new image of Alice's and a link to it that asks for PASSWORD."""
    image = await new_image(app, app.world.alice)
    return await app.veil.links.create(image, Viewer(app.world.alice.id), password=PASSWORD)


async def set_password(app, user, link: NewLink, value: str):
    """``user`` runs /link password on ``link`` and answers the form with ``value``."""
    handle = await app.run("link password", user=user,
                           options={"link": link.link.public_id}, settle=False)
    return await answer_modal(app, handle, value)


async def test_link_create_with_a_password_asks_in_a_modal_and_the_link_needs_it(
        veil_app, caplog):
    app = veil_app
    caplog.set_level(logging.DEBUG)
    image = await new_image(app, app.world.alice)
    handle = await app.run("link create", user=app.world.alice,
                           options={"image": image, "password": True}, settle=False)
    assert handle.modal["title"] == "Password for the new link"
    submitted = await answer_modal(app, handle, PASSWORD)
    match = LINK.search(texts(submitted))
    assert match and submitted.ephemeral and "password" in texts(submitted)
    target = await app.veil.links.resolve(match.group(1))
    assert target is not None and target.locked
    assert (await app.veil.links.login(target, PASSWORD)).outcome == "accepted"
    assert PASSWORD not in caplog.text
    assert PASSWORD not in everything_shown_to_others(app) and PASSWORD not in texts(submitted)

    listing = await app.run("link list", user=app.world.alice)
    assert "· password" in texts(listing)


async def test_a_too_short_password_in_the_modal_is_refused_and_makes_no_link(veil_app):
    app = veil_app
    image = await new_image(app, app.world.alice)
    handle = await app.run("link create", user=app.world.alice,
                           options={"image": image, "password": True}, settle=False)
    submitted = await answer_modal(app, handle, "  ")
    assert "8 to 128 characters" in texts(submitted)
    assert await app.veil.links.links_of(Viewer(app.world.alice.id)) == []


async def test_link_password_changes_and_removes_a_password_and_ends_sessions(veil_app):
    app = veil_app
    new = await passworded_link(app)
    target = await app.veil.links.resolve(new.token)
    session = (await app.veil.links.login(target, PASSWORD)).session
    assert not (await app.veil.links.resolve(new.token, session=session.token)).locked

    changed = await set_password(app, app.world.alice, new, "another good secret")
    assert "now asks for the new password" in texts(changed)
    assert (await app.veil.links.resolve(new.token, session=session.token)).locked

    removed = await set_password(app, app.world.alice, new, "")
    assert "no longer asks for a password" in texts(removed)
    assert not (await app.veil.links.resolve(new.token)).locked

    # Someone else's link: the same answer as a link that does not exist.
    refused = await set_password(app, app.world.bob, new, "bob's attempt here")
    assert "You have no link with that id." in texts(refused)


async def test_the_owner_access_log_counts_wrong_passwords_without_saying_who(veil_app):
    app = veil_app
    new = await passworded_link(app)
    target = await app.veil.links.resolve(new.token)
    for guess in ("guess number one", "guess number two"):
        assert (await app.veil.links.login(target, guess)).outcome == "wrong"
    handle = await app.run("access-log", user=app.world.alice)
    assert f"Wrong passwords were tried on links `{new.link.public_id}` 2 times." \
        in texts(handle)
