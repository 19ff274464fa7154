"""Exports as one-time downloads (issue 15): prepared as a job, sealed at rest, served once
through the real link server, gone from disk afterwards, and dropped with any deletion."""

# ruff: noqa: F401, F811  (the fixtures below come from tests.test_web, imported by name)
from __future__ import annotations

import asyncio
import io
import json
import zipfile

import pytest

from bot.core.blobs import export_key
from bot.core.crypto import CryptoError
from bot.core.errors import NotFound, RateLimited
from bot.core.exports import COOLDOWN, LIFETIME, RECORDS_FILE
from bot.core.models import Viewer
from bot.core.sealedstream import CHUNK_BYTES, SealedWriter, read_sealed, sealed_size
from bot.core.veil import Veil
from tests.blobstores import both_stores, stored_exports
from tests.test_web import (
    OWNER,
    UNFURLERS,
    answer,
    client,
    clock,
    open_client,
    png_with_secrets,
    veil,
)

PROMPT = "a lighthouse at dusk, seed 99"


async def library(veil: Veil, count: int = 3) -> list[str]:
    ids = []
    for _ in range(count):
        image = await veil.images.create(OWNER, png_with_secrets(), guild_id=None,
                                         source="generated", prompt=PROMPT)
        ids.append(image.public_id)
    return ids


async def export_files(veil: Veil) -> list[str]:
    """The export objects in the store."""
    return sorted(await stored_exports(veil))


async def ready_export(veil: Veil):
    return await veil.exports.prepare(await veil.exports.start(OWNER))


async def download(client, token: str):
    async with client.post(f"/x/{token}") as response:
        return response.status, response.headers, await response.read()


@both_stores
async def test_an_export_downloads_once_as_a_zip_of_every_image_and_the_records(client, veil):
    ids = await library(veil, 3)
    new = await ready_export(veil)
    assert new.images == 3 and len(await export_files(veil)) == 1

    page = await client.get(f"/x/{new.token}")
    html = await page.text()
    assert page.status == 200 and "Your Veil export is ready" in html and "3 images" in html
    assert page.headers["Content-Security-Policy"].count("form-action 'self'") == 1

    status, headers, data = await download(client, new.token)
    assert status == 200
    assert headers["Content-Disposition"] == 'attachment; filename="veil-export.zip"'
    assert headers["Content-Type"] == "application/zip"
    assert int(headers["Content-Length"]) == len(data) == new.byte_size
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        assert archive.testzip() is None
        records = json.loads(archive.read(RECORDS_FILE))
        names = set(archive.namelist())
        for image_id in ids:
            stored = await veil.images.decrypt_unchecked(await veil.ctx.image(image_id))
            assert archive.read(f"images/veil-{image_id}.png") == stored.data
    assert names == {RECORDS_FILE} | {f"images/veil-{i}.png" for i in ids}
    assert {r["public_id"] for r in records["images"]} == set(ids)
    assert {r["prompt"] for r in records["images"]} == {PROMPT}
    assert records["user_id"] == str(OWNER)

    assert await export_files(veil) == [], "the archive is deleted once it has been downloaded"
    unknown = await answer(client, "POST", "/x/" + "A" * 43)
    assert unknown[0] == 404
    assert await answer(client, "POST", f"/x/{new.token}") == unknown
    assert await answer(client, "GET", f"/x/{new.token}") == await answer(
        client, "GET", "/x/" + "A" * 43)


@both_stores
async def test_the_archive_waits_sealed_and_the_database_keeps_no_token(client, veil):
    await library(veil, 2)
    new = await ready_export(veil)
    [sealed] = await export_files(veil)
    raw = await veil.ctx.blobs.get(export_key(sealed))
    assert b"\x89PNG" not in raw and PROMPT.encode() not in raw and b"PK\x03\x04" not in raw
    if veil.ctx.blobs.kind == "folder":
        path = veil.data_dir.joinpath("exports", f"{sealed}.sealed")
        assert path.stat().st_mode & 0o777 == 0o600
    assert len(raw) == sealed_size(new.byte_size)
    dump = "\n".join(str(tuple(r)) for r in await veil.ctx.db.fetchall("SELECT * FROM exports"))
    assert new.token[16:] not in dump and new.token not in dump
    assert new.token not in repr(new)


async def test_a_page_view_a_head_and_preview_fetchers_spend_nothing(open_client, veil):
    await library(veil, 1)
    new = await ready_export(veil)
    for agent in UNFURLERS.values():
        fetcher = await open_client(user_agent=agent)
        assert (await fetcher.get(f"/x/{new.token}")).status == 200
        assert (await fetcher.post(f"/x/{new.token}")).status == 404
    person = await open_client()
    assert (await person.get(f"/x/{new.token}")).status == 200
    assert (await person.head(f"/x/{new.token}")).status == 200
    status, _, data = await download(person, new.token)
    assert status == 200 and zipfile.ZipFile(io.BytesIO(data)).testzip() is None


@both_stores
async def test_fifty_downloads_at_once_get_exactly_one_archive(client, veil):
    await library(veil, 1)
    new = await ready_export(veil)
    results = await asyncio.wait_for(
        asyncio.gather(*(download(client, new.token) for _ in range(50))), 60)
    assert sorted(status for status, _, _ in results).count(200) == 1
    assert await export_files(veil) == []


@both_stores
async def test_an_unused_export_expires_and_the_sweep_deletes_it(client, veil, clock):
    await library(veil, 1)
    new = await ready_export(veil)
    clock.now = new.expires_at - 1
    assert (await client.get(f"/x/{new.token}")).status == 200
    clock.now = new.expires_at
    assert (await client.get(f"/x/{new.token}")).status == 404
    assert (await download(client, new.token))[0] == 404
    assert await veil.exports.sweep() == 1
    assert await export_files(veil) == []
    assert new.expires_at - LIFETIME < clock.now


@both_stores
async def test_deleting_an_image_or_forgetting_the_owner_drops_a_waiting_export(client, veil):
    ids = await library(veil, 2)
    new = await ready_export(veil)
    await veil.images.delete(ids[0], Viewer(OWNER))
    assert await export_files(veil) == []
    assert (await download(client, new.token))[0] == 404

    # The cooldown went with it: the owner may ask for a fresh export at once.
    again = await ready_export(veil)
    await veil.privacy.forget(OWNER)
    assert await export_files(veil) == []
    assert (await download(client, again.token))[0] == 404


@both_stores
async def test_an_image_deleted_while_the_export_is_written_fails_it_cleanly(veil):
    ids = await library(veil, 2)
    job = await veil.exports.start(OWNER)
    real_decrypt = veil.images.decrypt_unchecked
    deleted = False

    async def decrypt_then_delete(image):
        nonlocal deleted
        content = await real_decrypt(image)
        if not deleted:
            deleted = True
            await veil.images.delete(ids[1], Viewer(OWNER))
        return content

    veil.images.decrypt_unchecked = decrypt_then_delete  # a real deletion, at the worst moment
    with pytest.raises(NotFound, match="deleted while your export was being prepared"):
        await veil.exports.prepare(job)
    assert await export_files(veil) == []
    assert await veil.ctx.db.fetchval("SELECT count(*) FROM exports") == 0


async def test_one_export_at_a_time_then_a_cooldown(veil, clock):
    await library(veil, 1)
    job = await veil.exports.start(OWNER)
    with pytest.raises(RateLimited, match="being prepared"):
        await veil.exports.start(OWNER)
    await veil.exports.prepare(job)
    with pytest.raises(RateLimited, match="another one in 10m"):
        await veil.exports.start(OWNER)
    clock.advance(COOLDOWN)
    await veil.exports.prepare(await veil.exports.start(OWNER))
    assert len(await export_files(veil)) == 1, "the previous archive was replaced, not kept"


async def test_an_export_abandoned_by_a_dead_process_does_not_block_its_owner(veil, clock):
    await library(veil, 1)
    await veil.exports.start(OWNER)  # never prepared: the process "died" here
    clock.advance(3600)
    await veil.exports.prepare(await veil.exports.start(OWNER))


def test_a_sealed_stream_round_trips_and_refuses_cuts_swaps_and_a_wrong_secret(tmp_path):
    for size in (0, 1, CHUNK_BYTES - 1, CHUNK_BYTES, CHUNK_BYTES + 1, 3 * CHUNK_BYTES):
        plain = bytes(i % 251 for i in range(size))
        path = tmp_path / f"s{size}"
        with path.open("wb") as out:
            writer = SealedWriter(out, b"secret")
            for start in range(0, size, 10_000):
                writer.write(plain[start:start + 10_000])
            writer.close()
        assert path.stat().st_size == sealed_size(size)
        with path.open("rb") as source:
            assert b"".join(read_sealed(source, path.stat().st_size, b"secret")) == plain

    path = tmp_path / f"s{3 * CHUNK_BYTES}"
    raw = path.read_bytes()
    chunk = CHUNK_BYTES + 16
    header = 24
    cut = raw[:header + 2 * chunk]  # a whole chunk boundary: the previous one was not final
    swapped = raw[:header] + raw[header + chunk:header + 2 * chunk] + raw[header:header + chunk] \
        + raw[header + 2 * chunk:]
    flipped = bytearray(raw)
    flipped[header + 5] ^= 1
    for broken, secret in ((cut, b"secret"), (swapped, b"secret"), (bytes(flipped), b"secret"),
                           (raw, b"another")):
        with pytest.raises(CryptoError):
            b"".join(read_sealed(io.BytesIO(broken), len(broken), secret))
