"""Settings are validated once at start-up, and every problem is named with what to do."""

from __future__ import annotations

from pathlib import Path

import pytest
from dotenv import dotenv_values

from bot.config import ConfigError, load_settings

EXAMPLE = Path(__file__).resolve().parent.parent / ".env.example"


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


def test_the_comfyui_backend_needs_its_url_and_a_usable_workflow(tmp_path):
    with pytest.raises(ConfigError, match="VEIL_COMFYUI_URL"):
        load_settings({"DISCORD_TOKEN": "x", "VEIL_GENERATOR": "comfyui"})
    broken = tmp_path / "flow.json"
    broken.write_text('{"1": {"class_type": "SaveImage", "inputs": {}}}')
    with pytest.raises(ConfigError, match=r"VEIL_COMFYUI_WORKFLOW: .*no \{\{prompt\}\}"):
        load_settings({"DISCORD_TOKEN": "x", "VEIL_GENERATOR": "comfyui",
                       "VEIL_COMFYUI_URL": "http://127.0.0.1:8188",
                       "VEIL_COMFYUI_WORKFLOW": str(broken)})
    settings = load_settings({"DISCORD_TOKEN": "x", "VEIL_GENERATOR": "comfyui",
                              "VEIL_COMFYUI_URL": "http://127.0.0.1:8188/"})
    assert settings.generator_url == "http://127.0.0.1:8188"


def test_a_generator_address_without_a_scheme_is_refused():
    with pytest.raises(ConfigError, match="VEIL_COMFYUI_URL must start with http"):
        load_settings({"DISCORD_TOKEN": "x", "VEIL_GENERATOR": "comfyui",
                       "VEIL_COMFYUI_URL": "127.0.0.1:8188"})


def test_links_from_the_example_env_follow_a_changed_port():
    env = {k: v or "" for k, v in dotenv_values(EXAMPLE).items()}
    env.update(DISCORD_TOKEN="x", VEIL_WEB_PORT="9191")
    assert load_settings(env).public_url == "http://127.0.0.1:9191"


def test_an_unknown_log_level_is_named_with_the_levels_there_are():
    with pytest.raises(ConfigError, match="VEIL_LOG_LEVEL must be one of DEBUG, INFO"):
        load_settings({"DISCORD_TOKEN": "x", "VEIL_LOG_LEVEL": "loud"})


def test_the_blob_store_is_the_data_folder_unless_an_s3_url_is_given():
    assert load_settings({}, require_token=False).blob_url is None
    settings = load_settings({"VEIL_BLOB_URL": "s3://veil/prod", "VEIL_S3_REGION": "eu-west-1",
                              "VEIL_S3_ENDPOINT_URL": "https://s3.example/"},
                             require_token=False)
    assert settings.blob_url == "s3://veil/prod"
    assert settings.s3.endpoint_url == "https://s3.example" and settings.s3.region == "eu-west-1"


def test_a_wrong_blob_url_endpoint_or_half_a_key_pair_is_named_without_echoing_a_key():
    with pytest.raises(ConfigError) as caught:
        load_settings({"VEIL_BLOB_URL": "/srv/blobs", "VEIL_S3_ENDPOINT_URL": "s3.example",
                       "VEIL_S3_SECRET_ACCESS_KEY": "only-the-secret-9931"}, require_token=False)
    message = str(caught.value)
    assert "VEIL_BLOB_URL must look like s3://bucket/prefix" in message
    assert "VEIL_S3_ENDPOINT_URL must start with http:// or https://" in message
    assert "VEIL_S3_ACCESS_KEY_ID and VEIL_S3_SECRET_ACCESS_KEY go together" in message
    assert "only-the-secret-9931" not in message


def test_the_image_size_is_768_unless_set_and_must_be_a_multiple_of_8_in_range():
    assert load_settings({"DISCORD_TOKEN": "x"}).image_size == 768
    assert load_settings({"DISCORD_TOKEN": "x", "VEIL_IMAGE_SIZE": "512"}).image_size == 512
    with pytest.raises(ConfigError, match="VEIL_IMAGE_SIZE must be a multiple of 8"):
        load_settings({"DISCORD_TOKEN": "x", "VEIL_IMAGE_SIZE": "500"})
    with pytest.raises(ConfigError, match="VEIL_IMAGE_SIZE must be between 64 and 2048"):
        load_settings({"DISCORD_TOKEN": "x", "VEIL_IMAGE_SIZE": "4096"})
