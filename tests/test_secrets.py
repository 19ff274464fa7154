"""Secrets cannot print: no repr or str of settings, links, generation requests, image contents
or export downloads carries one, and every log record, whatever logger made it, is redacted on
the one handler Veil installs (guarantee 8)."""

from __future__ import annotations

import io
import logging

import pytest

from bot.config import load_settings
from bot.core.models import ImageContent, Viewer
from bot.generate.base import GenerationRequest
from bot.images import sanitize_image
from bot.logs import REDACTOR, setup_logging
from tests.conftest import ALICE, GUILD, png

TOKEN = "MTIzNDU2Nzg5.bot-token.secret-part"
MASTER_HEX = "ab" * 32
PROMPT = "a portrait of my neighbour, secretly"


def shown(value: object) -> str:
    return repr(value) + str(value)


def test_settings_never_show_the_bot_token_or_the_master_key():
    settings = load_settings({"DISCORD_TOKEN": TOKEN, "VEIL_MASTER_KEY": MASTER_HEX})
    text = shown(settings)
    assert "web_port=8080" in text, "the rest of the settings should still be readable"
    assert TOKEN not in text
    assert MASTER_HEX not in text and repr(bytes.fromhex(MASTER_HEX)) not in text


S3_KEY_ID = "AKIAVEILTESTKEY00042"
S3_SECRET = "s3-secret/part+0042xyz"


def test_settings_never_show_the_s3_keys_and_hand_them_to_the_redactor(veil_log):
    stream, _ = veil_log
    settings = load_settings({"VEIL_BLOB_URL": "s3://bucket/veil",
                              "VEIL_S3_ENDPOINT_URL": "http://127.0.0.1:9000",
                              "VEIL_S3_ACCESS_KEY_ID": S3_KEY_ID,
                              "VEIL_S3_SECRET_ACCESS_KEY": S3_SECRET}, require_token=False)
    text = shown(settings) + shown(settings.s3)
    assert "http://127.0.0.1:9000" in text and "s3://bucket/veil" in text
    assert S3_KEY_ID not in text and S3_SECRET not in text
    REDACTOR.add_secrets(*settings.secrets())  # as `python -m bot` does for every command
    logging.getLogger("obstore").warning("signing with %s / %s", S3_KEY_ID, S3_SECRET)
    logged = stream.getvalue()
    assert "signing with" in logged
    assert S3_KEY_ID not in logged and S3_SECRET not in logged


def test_a_generation_request_never_shows_its_prompt():
    request = GenerationRequest(PROMPT, count=2)
    assert "count=2" in shown(request)
    assert "neighbour" not in shown(request)


async def test_links_image_contents_and_exports_never_show_their_secrets(veil):
    record = await veil.images.create(ALICE, png((9, 8, 7)), guild_id=GUILD, source="upload",
                                      prompt=PROMPT)
    new = await veil.links.create(record.public_id, Viewer(ALICE, guild_id=GUILD))
    assert new.link.public_id in shown(new)
    assert new.token not in shown(new) and new.token[16:] not in shown(new)

    content, _ = await veil.images.open(record.public_id, Viewer(ALICE, guild_id=GUILD))
    assert isinstance(content, ImageContent) and len(content.data) > 100
    assert record.public_id in shown(content)
    assert "\\x" not in shown(content) and "PNG" not in shown(content).replace("'PNG'", "")

    export = await veil.exports.prepare(await veil.exports.start(ALICE))
    assert export.token not in shown(export) and f"images={export.images}" in shown(export)

    clean = sanitize_image(png((1, 2, 3)))
    assert "\\x" not in shown(clean)


@pytest.fixture
def veil_log() -> tuple[io.StringIO, logging.Handler]:
    """Veil's own logging set-up, writing to a buffer; the root logger is restored after."""
    root = logging.getLogger()
    saved = (list(root.handlers), root.level)
    stream = io.StringIO()
    handler = setup_logging("DEBUG", stream)
    try:
        yield stream, handler
    finally:
        root.removeHandler(handler)
        for old in saved[0]:
            root.addHandler(old)
        root.setLevel(saved[1])
        logging.getLogger("discord").setLevel(logging.NOTSET)


def test_a_record_from_any_logger_is_redacted_by_the_handler(veil_log):
    stream, _ = veil_log
    link_token = "Ab3_" * 10 + "xyz"  # 43 url-safe characters, like a link token
    REDACTOR.add_secrets(TOKEN)
    # A name nobody listed anywhere, and one of the standard library's.
    for name in ("someone.elses.plugin.x7", "asyncio"):
        logger = logging.getLogger(name)
        logger.warning("logged in with %s", TOKEN)
        logger.info("opened /l/%s and then %s", link_token, link_token)
        logger.info("callback https://d/api/v10/interactions/1/%s/callback", "aW50ZXJhY3Rpb24")
        try:
            raise RuntimeError(f"failed for {TOKEN} at /l/{link_token}")
        except RuntimeError:
            logger.exception("it broke")
    # A wire library's payloads are withheld whole: they may carry prompts.
    logging.getLogger("discord.gateway.x").info("sent %s", {"content": PROMPT})
    text = stream.getvalue()
    assert text.count("someone.elses.plugin.x7") == 4 and text.count("asyncio") >= 4
    assert "sent <dict withheld>" in text
    assert "Traceback" in text and "it broke" in text, "lines are kept, only secrets go"
    for secret in (TOKEN, link_token, "aW50ZXJhY3Rpb24", "neighbour"):
        assert secret not in text


def test_only_one_filter_is_needed_none_on_any_logger(veil_log):
    _, handler = veil_log
    assert handler.filters == [REDACTOR]
    for logger in (logging.getLogger(n) for n in ("discord.http", "aiohttp.server", "asyncpg",
                                                   "veil.bot", "bot.web.routes")):
        assert REDACTOR not in logger.filters
