"""The blob store port and its two stores, the data folder and an S3-compatible server (moto on
127.0.0.1): the same contract on both, only ciphertext under names that say nothing, repair
that spares uploads in flight, old data folders still readable, and an operator told in one line
what is wrong with the store, never shown its keys."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import pytest

from bot.core.blobs import (
    EXPORTS,
    IMAGES,
    BlobMissing,
    BlobStore,
    BlobStoreError,
    S3Settings,
    image_key,
    open_blob_store,
    put_image,
    read_image_part,
    unpack_image,
)
from bot.core.images import ORPHAN_SWEEP_EVERY_S, STAGING_BOUND_S
from bot.core.veil import Veil
from tests.blobstores import both_stores, store_env, store_of, stored_images
from tests.conftest import ALICE, GUILD, png, viewer
from tests.test_cli import cli, one_line_advice

PROMPT = "a lighthouse at dusk, secret-prompt-5521"


@pytest.fixture
async def store(tmp_path: Path, blob_options: dict[str, Any]):
    opened = store_of(tmp_path / "data", blob_options)
    await opened.check()
    try:
        yield opened
    finally:
        await opened.close()


async def keys(store: BlobStore, prefix: str) -> set[str]:
    return {b.key async for batch in store.scan(prefix) for b in batch}


# The contract, on both stores ------------------------------------------------------------------

@both_stores
async def test_an_object_reads_back_whole_and_by_range_and_a_missing_one_says_so(store):
    await store.put(image_key("ab12"), b"0123456789")
    assert await store.get(image_key("ab12")) == b"0123456789"
    assert await store.get(image_key("ab12"), 2, 5) == b"234"
    assert await store.get(image_key("ab12"), 5) == b"56789"
    assert await store.get(image_key("ab12"), 8, 100) == b"89"  # cut to the object, as a file
    assert await store.exists(image_key("ab12"))
    with pytest.raises(BlobMissing):
        await store.get(image_key("cd34"))
    assert not await store.exists(image_key("cd34"))


@both_stores
async def test_deleting_is_final_and_deleting_twice_or_a_missing_key_is_no_error(store):
    await store.put(image_key("ab12"), b"x")
    await store.put(image_key("ef56"), b"y")
    await store.delete([image_key("ab12"), image_key("nothere")])
    await store.delete([image_key("ab12")])
    assert await keys(store, IMAGES) == {image_key("ef56")}
    with pytest.raises(BlobMissing):
        await store.get(image_key("ab12"))


@both_stores
async def test_a_listing_keeps_images_and_exports_apart_and_dates_each_object(store):
    before = time.time()
    await store.put(image_key("ab12"), b"image")
    await store.put("exports/cd34", b"export")
    assert await keys(store, IMAGES) == {image_key("ab12")}
    assert await keys(store, EXPORTS) == {"exports/cd34"}
    [[info]] = [batch async for batch in store.scan(IMAGES)]
    assert info.size == 5 and before - 5 <= info.modified_at <= time.time() + 5


@both_stores
async def test_a_streamed_object_exists_only_once_closed_and_reads_back_in_pieces(store):
    big = bytes(range(256)) * 40_000  # 10 MiB: a multipart upload on S3
    writer = await store.open_writer("exports/ab12")
    for start in range(0, len(big), 1_000_000):
        await writer.write(big[start:start + 1_000_000])
    if store.kind == "s3":
        assert not await store.exists("exports/ab12")
    await writer.close()
    reader = await store.open_reader("exports/ab12")
    assert reader.size == len(big)
    pieces = []
    while piece := await reader.read(700_000):
        pieces.append(piece)
    await reader.close()
    assert b"".join(pieces) == big


@both_stores
async def test_an_aborted_stream_leaves_no_object(store):
    writer = await store.open_writer("exports/ab12")
    await writer.write(b"x" * 9_000_000)
    await writer.abort()
    assert await keys(store, EXPORTS) == set()
    with pytest.raises(BlobMissing):
        await store.open_reader("exports/ab12")


@both_stores
async def test_each_part_of_an_image_object_reads_back_whatever_the_thumbnails_size(store):
    for thumb_size in (0, 1, 100_000, 300_000):  # the last needs a second ranged read
        full, thumb = os.urandom(200_000), os.urandom(thumb_size)
        await put_image(store, f"ab{thumb_size}", full, thumb)
        assert await read_image_part(store, f"ab{thumb_size}", "thumb") == thumb
        assert await read_image_part(store, f"ab{thumb_size}", "full") == full


# What is stored ------------------------------------------------------------------------------

@both_stores
async def test_only_ciphertext_is_stored_under_a_name_that_says_nothing(veil):
    image = await veil.images.create(ALICE, png((200, 10, 10), size=(64, 48)), guild_id=GUILD,
                                     source="generated", prompt=PROMPT)
    content, _ = await veil.images.open(image.public_id, viewer(ALICE))
    [[info]] = [batch async for batch in veil.ctx.blobs.scan(IMAGES)]
    for said in (image.public_id, str(ALICE), str(GUILD)):
        assert said not in info.key
    stored = await veil.ctx.blobs.get(info.key)
    assert content.data[:64] not in stored and content.data[-64:] not in stored
    assert PROMPT.encode() not in stored and b"\x89PNG" not in stored
    # One object holds both sealed parts: the thumbnail is read with a short ranged read.
    parts = unpack_image(stored)
    assert await read_image_part(veil.ctx.blobs, image.blob_name, "thumb") == parts["thumb"]
    assert len(stored) > len(parts["thumb"]) + len(parts["full"])


@both_stores
async def test_repair_deletes_an_object_no_row_names_once_past_the_grace_period(
        data_dir, blob_options, clock):
    async with await Veil.open(data_dir, clock=clock, **blob_options) as veil:
        kept = await veil.images.create(ALICE, png(), guild_id=GUILD, source="upload")
        await veil.ctx.blobs.put(image_key("0rphan"), b"left by a crash")
    # Just written: it may be another process's upload in flight.
    async with await Veil.open(data_dir, clock=time.time, **blob_options) as veil:
        assert await stored_images(veil) == {kept.blob_name, "0rphan"}
    soon = time.time() + STAGING_BOUND_S + 5
    async with await Veil.open(data_dir, clock=lambda: soon, **blob_options) as veil:
        # Past the grace period, but the store was listed a moment ago: no second listing.
        assert await stored_images(veil) == {kept.blob_name, "0rphan"}
    later = time.time() + ORPHAN_SWEEP_EVERY_S + 5
    async with await Veil.open(data_dir, clock=lambda: later, **blob_options) as veil:
        assert await stored_images(veil) == {kept.blob_name}
        await veil.images.open(kept.public_id, viewer(ALICE))


@both_stores
async def test_repair_leaves_an_old_object_alone_while_its_upload_intent_is_live(
        data_dir, blob_options):
    start = time.time()
    async with await Veil.open(data_dir, clock=lambda: start, **blob_options) as veil:
        async with veil.ctx.db.transaction() as tx:
            await tx.execute("INSERT INTO staged_blobs (blob_name, staged_at) VALUES (?, ?)",
                             ("1nflight", start + ORPHAN_SWEEP_EVERY_S))  # a live intent
        await veil.ctx.blobs.put(image_key("1nflight"), b"sealed")
    later = start + ORPHAN_SWEEP_EVERY_S + 5  # the object is old and the store is listed
    async with await Veil.open(data_dir, clock=lambda: later, **blob_options) as veil:
        assert await stored_images(veil) == {"1nflight"}


# A data folder from before the port ----------------------------------------------------------

async def test_an_image_stored_by_an_earlier_version_as_two_files_still_opens_and_deletes(
        data_dir):
    async with await Veil.open(data_dir) as veil:
        image = await veil.images.create(ALICE, png(), guild_id=GUILD, source="upload",
                                         prompt=PROMPT)
        container = veil.ctx.blobs.path(image_key(image.blob_name))  # type: ignore[attr-defined]
    parts = unpack_image(container.read_bytes())
    container.unlink()
    for part, sealed in parts.items():  # the layout earlier versions wrote
        container.with_suffix(f".{part}").write_bytes(sealed)
    async with await Veil.open(data_dir) as veil:
        content, _ = await veil.images.open(image.public_id, viewer(ALICE))
        thumb, _ = await veil.images.open(image.public_id, viewer(ALICE), thumbnail=True)
        assert content.data and thumb.data
        assert await stored_images(veil) == {image.blob_name}
        await veil.images.delete(image.public_id, viewer(ALICE))
        assert list(container.parent.iterdir()) == []


# The operator's view -------------------------------------------------------------------------

@pytest.mark.slow  # a CLI subprocess
def test_check_names_the_s3_store_and_never_prints_its_keys(tmp_path, s3_server):
    url = s3_server.new_url()
    result = cli("check", tmp_path=tmp_path, VEIL_LOG_LEVEL="DEBUG", **s3_server.env(url))
    assert result.returncode == 0, result.stderr
    assert f"Blobs: {url} at {s3_server.endpoint}." in result.stdout
    for secret in (s3_server.access_key_id, s3_server.secret_access_key):
        assert secret not in result.stdout + result.stderr


@pytest.mark.slow  # a CLI subprocess each
@pytest.mark.parametrize(("change", "advice"), [
    ({"VEIL_S3_ENDPOINT_URL": "http://127.0.0.1:9"},
     "cannot be reached: check VEIL_S3_ENDPOINT_URL"),
    ({"VEIL_BLOB_URL": "s3://no-such-bucket/veil"}, "has no bucket 'no-such-bucket'"),
    ({"VEIL_S3_SECRET_ACCESS_KEY": "wrong-secret-4471"}, "refused the credentials"),
    ({"VEIL_BLOB_URL": "https://bucket/prefix"}, "VEIL_BLOB_URL must look like s3://bucket/"),
])
def test_a_store_veil_cannot_use_is_named_in_one_line_and_exits_2(tmp_path, s3_server, change,
                                                                   advice):
    env = {**s3_server.env(s3_server.new_url()), **change}
    result = cli("check", tmp_path=tmp_path, **env)
    line = one_line_advice(result.returncode, result.stderr)
    assert advice in line
    for secret in (s3_server.secret_access_key, "wrong-secret-4471"):
        assert secret not in result.stdout + result.stderr


async def test_a_veil_opened_on_a_store_it_cannot_use_says_why_and_leaves_nothing_open(
        data_dir, s3_server):
    settings = s3_server.settings(secret_access_key="wrong")
    with pytest.raises(BlobStoreError, match="refused the credentials"):
        await Veil.open(data_dir, blob_url=s3_server.new_url(), s3=settings)
    assert "wrong" not in repr(settings) and s3_server.access_key_id not in repr(
        s3_server.settings())


def test_the_data_folder_is_the_store_when_no_url_is_given(tmp_path):
    store = open_blob_store(tmp_path, None, S3Settings())
    assert store.kind == "folder" and str(tmp_path) in store.description
    assert store_env({}) == {}
