"""Settings are validated once at start-up, and every problem is named with what to do."""

from __future__ import annotations

import pytest

from bot.config import ConfigError, load_settings


def test_only_the_discord_token_is_required():
    settings = load_settings({"DISCORD_TOKEN": "x"})
    assert settings.web_port == 8080 and settings.generator == "procedural"
    assert str(settings.data_dir) == "data"
    assert settings.master_key is None


def test_a_missing_token_says_where_to_get_one():
    with pytest.raises(ConfigError, match="DISCORD_TOKEN is not set.*developer portal"):
        load_settings({})


def test_the_link_server_alone_needs_no_token():
    assert load_settings({}, require_token=False).discord_token is None


def test_every_bad_setting_is_reported_at_once():
    with pytest.raises(ConfigError) as error:
        load_settings({"DISCORD_TOKEN": "x", "VEIL_WEB_PORT": "http", "VEIL_MASTER_KEY": "abc",
                       "VEIL_GENERATOR": "dalle", "VEIL_TRUSTED_PROXIES": "not-an-ip"})
    message = str(error.value)
    for name in ("VEIL_WEB_PORT", "VEIL_MASTER_KEY", "VEIL_GENERATOR", "VEIL_TRUSTED_PROXIES"):
        assert name in message


def test_a_master_key_is_accepted_as_hex_or_base64():
    hex_key = "ab" * 32
    assert load_settings({"DISCORD_TOKEN": "x", "VEIL_MASTER_KEY": hex_key}).master_key == \
        bytes.fromhex(hex_key)
    b64 = "q" * 43
    assert len(load_settings({"DISCORD_TOKEN": "x", "VEIL_MASTER_KEY": b64}).master_key) == 32


def test_the_sd_backend_needs_its_url():
    with pytest.raises(ConfigError, match="VEIL_SD_URL"):
        load_settings({"DISCORD_TOKEN": "x", "VEIL_GENERATOR": "sdwebui"})


def test_a_bad_master_key_is_not_echoed_back():
    with pytest.raises(ConfigError) as error:
        load_settings({"DISCORD_TOKEN": "x", "VEIL_MASTER_KEY": "secretsecretsecret"})
    assert "secretsecretsecret" not in str(error.value)
