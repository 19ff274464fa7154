"""The master key: created once with mode 0600, checked against the data folder, rotated by
re-wrapping owner keys without touching blobs (guarantee 7)."""

from __future__ import annotations

import hashlib
import stat

import pytest

from bot.core.crypto import KeyRing, new_key
from bot.core.keys import MasterKeyError
from bot.core.veil import Veil
from tests.conftest import ALICE, BOB, GUILD, png, viewer


def _blob_hashes(data_dir):
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest()
            for p in (data_dir / "blobs").rglob("*.*")}


async def test_a_generated_master_key_file_is_readable_by_its_owner_only(data_dir, database_url):
    async with await Veil.open(data_dir, database_url=database_url) as veil:
        assert veil.key_file_created == data_dir / "master.key"
    mode = stat.S_IMODE((data_dir / "master.key").stat().st_mode)
    assert mode == 0o600
    assert stat.S_IMODE(data_dir.stat().st_mode) == 0o700
    async with await Veil.open(data_dir, database_url=database_url) as again:
        assert again.key_file_created is None


async def test_a_wrong_master_key_is_refused_rather_than_used(data_dir, database_url):
    async with await Veil.open(data_dir, database_url=database_url, master_key=new_key()):
        pass
    with pytest.raises(MasterKeyError, match="not the one"):
        await Veil.open(data_dir, database_url=database_url, master_key=new_key())


async def test_a_missing_key_file_is_refused_instead_of_replaced(data_dir, database_url):
    async with await Veil.open(data_dir, database_url=database_url) as veil:
        await veil.images.create(ALICE, png(), guild_id=GUILD, source="upload")
    (data_dir / "master.key").unlink()
    with pytest.raises(MasterKeyError, match="missing"):
        await Veil.open(data_dir, database_url=database_url)


async def test_rotation_rewraps_owner_keys_and_leaves_blobs_untouched(data_dir, database_url):
    async with await Veil.open(data_dir, database_url=database_url) as veil:
        a = await veil.images.create(ALICE, png(), guild_id=GUILD, source="upload")
        b = await veil.images.create(BOB, png(), guild_id=GUILD, source="upload")
        old_key = (data_dir / "master.key").read_text()
        before = _blob_hashes(data_dir)
        assert await veil.rotate_master_key() == 2
        assert _blob_hashes(data_dir) == before
        await veil.images.open(a.public_id, viewer(ALICE))
    assert (data_dir / "master.key").read_text() != old_key
    async with await Veil.open(data_dir, database_url=database_url) as veil:
        await veil.images.open(b.public_id, viewer(BOB))
    old = KeyRing(bytes.fromhex(old_key.strip()))
    with pytest.raises(MasterKeyError):
        await Veil.open(data_dir, database_url=database_url,
                        master_key=bytes.fromhex(old_key.strip()))
    assert old.key_id != KeyRing(bytes.fromhex((data_dir / "master.key").read_text())).key_id


async def test_rotation_with_a_key_from_the_environment_uses_the_new_key_given(
        data_dir, database_url):
    first, second = new_key(), new_key()
    async with await Veil.open(data_dir, database_url=database_url, master_key=first) as veil:
        image = await veil.images.create(ALICE, png(), guild_id=GUILD, source="upload")
        await veil.rotate_master_key(second)
    assert not (data_dir / "master.key").exists()
    async with await Veil.open(data_dir, database_url=database_url, master_key=second) as veil:
        await veil.images.open(image.public_id, viewer(ALICE))


def test_the_key_ring_never_shows_its_key():
    key = new_key()
    assert key.hex() not in repr(KeyRing(key))
