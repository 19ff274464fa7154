"""The master key: where it comes from, checking it belongs to this data folder, and rotation.

The key comes from VEIL_MASTER_KEY or from ``<data>/master.key`` (created on first run, 0600).
The database stores only the key's fingerprint, so starting with the wrong key fails loudly
instead of writing new data under a second key. Rotation re-wraps every owner key in one
transaction, never touching blobs; a crash at any point leaves a data folder that opens with
either the old or the new key, and the next start finishes the job.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from bot.core import failpoints
from bot.core.crypto import KeyRing, key_id, new_key, read_key_file, write_key_file
from db import Database

KEY_FILE = "master.key"
NEXT_KEY_FILE = "master.key.next"


class MasterKeyError(Exception):
    """The master key is missing or does not match this data folder. Message says what to do."""


@dataclass(frozen=True)
class LoadedKey:
    keyring: KeyRing
    created_file: Path | None  # set when a new key file was made on this start


async def _stored_key_id(db: Database) -> str | None:
    return await db.fetchval("SELECT value FROM meta WHERE key = 'master_key_id'")


async def load_master_key(db: Database, data_dir: Path, env_key: bytes | None) -> LoadedKey:
    key_file, next_file = data_dir / KEY_FILE, data_dir / NEXT_KEY_FILE
    stored = await _stored_key_id(db)
    if next_file.exists():
        # A rotation stopped half-way: the database says which key won.
        next_key = read_key_file(next_file)
        if stored == key_id(next_key):
            next_file.replace(key_file)
        else:
            next_file.unlink()
    created = None
    if env_key is not None:
        key = env_key
    elif key_file.exists():
        key = read_key_file(key_file)
    else:
        if stored is not None:
            raise MasterKeyError(
                f"{key_file} is missing but this data folder holds data encrypted with a master "
                "key. Restore master.key from your backup or set VEIL_MASTER_KEY.")
        key = new_key()
        write_key_file(key_file, key)
        created = key_file
    keyring = KeyRing(key)
    if stored is None:
        async with db.transaction() as tx:
            await tx.execute("INSERT INTO meta (key, value) VALUES ('master_key_id', ?)",
                             (keyring.key_id,))
    elif stored != keyring.key_id:
        source = "VEIL_MASTER_KEY" if env_key is not None else str(key_file)
        raise MasterKeyError(f"The master key in {source} is not the one this data folder was "
                             "encrypted with. Use the original key.")
    return LoadedKey(keyring, created)


async def rotate_master_key(db: Database, data_dir: Path, old: KeyRing,
                            new: bytes | None = None, *, key_in_file: bool = True) -> tuple[
                                KeyRing, int]:
    """Re-wrap every owner key under a new master key. Returns (new key ring, users re-wrapped).

    With ``key_in_file`` the new key is written to master.key (through master.key.next, so a
    crash never leaves a folder whose key is lost); otherwise the caller stores it.
    """
    new_ring = KeyRing(new if new is not None else new_key())
    next_file = data_dir / NEXT_KEY_FILE
    if key_in_file:
        write_key_file(next_file, _raw(new_ring, new))
    failpoints.reach("rotate:key-written")
    async with db.transaction() as tx:
        users = await tx.fetchall("SELECT user_id, wrapped_key FROM users")
        for user_id, wrapped in users:
            owner_key = old.unwrap_owner_key(user_id, wrapped)
            await tx.execute("UPDATE users SET wrapped_key = ? WHERE user_id = ?",
                             (new_ring.wrap_owner_key(user_id, owner_key), user_id))
        await tx.execute("UPDATE meta SET value = ? WHERE key = 'master_key_id'",
                         (new_ring.key_id,))
        failpoints.reach("rotate:before-commit")
    failpoints.reach("rotate:committed")
    if key_in_file:
        next_file.replace(data_dir / KEY_FILE)
    await db.checkpoint()
    return new_ring, len(users)


def _raw(ring: KeyRing, new: bytes | None) -> bytes:
    return ring._master if new is None else new  # noqa: SLF001 (the one place that needs it)
