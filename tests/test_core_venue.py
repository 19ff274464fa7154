"""Where a command was used decides what Veil may do there (bot.core.venue, place_for)."""

from __future__ import annotations

from bot.core.access import place_for
from bot.core.models import ImageRecord
from bot.core.venue import (
    Venue,
    moderation_refusal,
    protection_notes,
    role_share_refusal,
)

SERVER = 10


def image(visibility: str = "public", guild_id: int | None = SERVER) -> ImageRecord:
    return ImageRecord(1, "abcdefgh", 7, guild_id, visibility, "upload", 0.0, None, 1, "PNG",
                       1, 1, "blob")


def test_a_server_that_did_not_install_veil_governs_nothing_made_there() -> None:
    user_only = Venue("server", SERVER, 5, server_installed=False, bot_present=False)
    assert user_only.policy_guild_id is None
    assert not user_only.can_post
    assert moderation_refusal(user_only) is not None
    assert role_share_refusal(user_only) is not None
    assert any("not** installed" in line for line in protection_notes(user_only))


def test_a_commands_only_install_has_a_policy_but_no_bot_to_post() -> None:
    commands_only = Venue("server", SERVER, 5, server_installed=True, bot_present=False)
    assert commands_only.policy_guild_id == SERVER
    assert moderation_refusal(commands_only) is None
    assert role_share_refusal(commands_only) is None
    assert place_for(image(), guild_id=SERVER, channel_permitted=True,
                     can_post=commands_only.can_post) == "dm"
    assert place_for(image(), guild_id=SERVER, channel_permitted=True, can_post=True) == "channel"


def test_private_chats_and_dms_have_no_server_and_say_where_images_go() -> None:
    group = Venue("private_chat", None, 5)
    bot_dm = Venue("bot_dm", None, 6)
    assert group.policy_guild_id is None and not group.can_post
    assert group.private_destination == "your DMs"
    assert bot_dm.private_destination == "this chat"
    assert moderation_refusal(group) is not None and role_share_refusal(bot_dm) is not None
