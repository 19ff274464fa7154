"""The master keys: where they come from, checking they belong to this data folder, and online
rotation.

Keys come from VEIL_MASTER_KEY or from ``<data>/master.key`` (created on first run, 0600; one
key per line). The database stores only fingerprints (key ids): the current key's id in
``meta`` and, on every user row, the id of the key that wrapped that user's key. Starting with
a key that is not this folder's fails loudly instead of writing new data under a second key.

Rotation runs while other processes read and write (the order is what makes it safe):

1. the new key is added to master.key (which then holds the old and the new key);
2. one transaction makes it current: from then on every process wraps new owner keys under it,
   because it reads the current id inside its own writing transaction (and loads the key from
   master.key on first use);
3. owner keys still wrapped under an older key are re-wrapped, in batches;
4. keys nothing refers to any more are dropped from master.key.

At no moment is a key wrapped under a key that is later thrown away, and every key a row
names is in the file. A crash at any step leaves a folder that opens; the next start (or the
next ``rotate-key``) finishes the job. Only one rotation runs at a time (a lease).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from bot.core import failpoints
from bot.core.context import Context
from bot.core.crypto import (
    KeyRing,
    key_id,
    new_key,
    read_key_file,
    read_key_file_all,
    write_key_file,
)
from bot.core.leases import Leases
from db import Store

KEY_FILE = "master.key"
NEXT_KEY_FILE = "master.key.next"  # written by versions before online rotation
ROTATION_LEASE = "rotate-key"
ROTATION_LEASE_S = 120.0
_BATCH = 500
ROTATION_BUSY = (f"Another process is rotating the master key right now, or one stopped while "
                 f"rotating less than {ROTATION_LEASE_S:.0f} s ago: try again once it is done "
                 "(a stopped one is finished then).")


class MasterKeyError(Exception):
    """The master key is missing or does not match this data folder. Message says what to do."""


@dataclass(frozen=True)
class LoadedKey:
    keyring: KeyRing
    created_file: Path | None  # set when a new key file was made on this start


async def _stored_key_id(db: Store) -> str | None:
    return await db.fetchval("SELECT value FROM meta WHERE key = 'master_key_id'")


def _finish_old_style_rotation(data_dir: Path, stored: str | None) -> None:
    """A rotation by an older version stopped half-way: the database says which key won."""
    key_file, next_file = data_dir / KEY_FILE, data_dir / NEXT_KEY_FILE
    if next_file.exists():
        next_key = read_key_file(next_file)
        if stored == key_id(next_key):
            next_file.replace(key_file)
        else:
            next_file.unlink()


async def load_master_key(db: Store, data_dir: Path,
                          env_keys: bytes | list[bytes] | None) -> LoadedKey:
    if isinstance(env_keys, bytes):
        env_keys = [env_keys]
    key_file = data_dir / KEY_FILE
    stored = await _stored_key_id(db)
    _finish_old_style_rotation(data_dir, stored)
    created = None
    if env_keys:
        keyring = KeyRing(*env_keys, source="VEIL_MASTER_KEY")
        source = "VEIL_MASTER_KEY"
    else:
        source = str(key_file)
        if key_file.exists():
            keys = read_key_file_all(key_file)
        else:
            if stored is not None:
                raise MasterKeyError(
                    f"{key_file} is missing but this data folder holds data encrypted with a "
                    "master key. Restore master.key from your backup or set VEIL_MASTER_KEY.")
            keys = [new_key()]
            write_key_file(key_file, *keys)
            created = key_file
        keyring = KeyRing(*keys, reload=lambda: read_key_file_all(key_file), source=source)
    if stored is None:
        async with db.transaction() as tx:
            await tx.execute("INSERT INTO meta (key, value) VALUES ('master_key_id', ?)",
                             (keyring.key_id,))
        stored = keyring.key_id
    try:
        keyring.key(stored)
    except Exception:
        raise MasterKeyError(f"The master key in {source} is not the one this data folder was "
                             "encrypted with. Use the original key.") from None
    keyring.current_id = stored
    missing = {r[0] for r in await db.fetchall(
        "SELECT DISTINCT master_key_id FROM users WHERE master_key_id != ?", (stored,))}
    missing = {i for i in missing if not _holds(keyring, i)}
    if missing:
        raise MasterKeyError(
            f"Some owner keys here are wrapped under master key(s) {', '.join(sorted(missing))}, "
            f"which {source} does not hold: a key rotation has not finished. Give both the old "
            "and the new key (one per line in master.key, or comma-separated in "
            "VEIL_MASTER_KEY) and run `python -m bot rotate-key` again.")
    return LoadedKey(keyring, created)


def _holds(ring: KeyRing, ident: str) -> bool:
    try:
        ring.key(ident)
    except Exception:
        return False
    return True


async def rotate_master_key(ctx: Context, leases: Leases, data_dir: Path,
                            new: bytes | None = None, *, key_in_file: bool = True) -> int:
    """Make a new master key current and re-wrap every owner key under it, while other
    processes keep running. Returns how many owner keys were re-wrapped.

    With ``key_in_file`` the new key goes into master.key; otherwise the caller gave it (and
    the old one) in the environment and stores it itself.
    """
    ring = ctx.keys
    async with leases.holding(ROTATION_LEASE, ROTATION_LEASE_S, busy=ROTATION_BUSY):
        fresh = new if new is not None else new_key()
        key_file = data_dir / KEY_FILE
        if key_in_file:
            # Step 1: the new key is in the file before anything can name it.
            held = read_key_file_all(key_file) if key_file.exists() else []
            write_key_file(key_file, *held, *([fresh] if fresh not in held else []))
        ident = ring.add(fresh)
        failpoints.reach("rotate:key-written")
        # Step 2: from this commit on, every process wraps new owner keys under the new key.
        async with ctx.db.transaction() as tx:
            await tx.execute("UPDATE meta SET value = ? WHERE key = 'master_key_id'", (ident,))
            failpoints.reach("rotate:before-commit")
        ring.current_id = ident
        failpoints.reach("rotate:committed")
        count = await finish_rotation(ctx, leases, data_dir, key_in_file=key_in_file)
    await ctx.db.checkpoint()
    return count


async def finish_rotation(ctx: Context, leases: Leases, data_dir: Path, *,
                          key_in_file: bool) -> int:
    """Steps 3 and 4: re-wrap owner keys still under an older key, then drop keys nothing
    refers to from master.key. Idempotent; the caller holds the rotation lease."""
    ring, count = ctx.keys, 0
    current = await _stored_key_id(ctx.db)
    if current is None:
        return 0
    ring.current_id = current
    while True:
        await leases.take(ROTATION_LEASE, ROTATION_LEASE_S)  # still ours: extend it
        async with ctx.db.transaction() as tx:
            rows = await tx.fetchall(
                "SELECT user_id, master_key_id, wrapped_key FROM users"
                " WHERE master_key_id != ? LIMIT ?", (current, _BATCH))
            for user_id, old_id, wrapped in rows:
                owner_key = ring.unwrap_owner_key(user_id, wrapped, old_id)
                await tx.execute(
                    "UPDATE users SET wrapped_key = ?, master_key_id = ?"
                    " WHERE user_id = ? AND master_key_id = ?",
                    (ring.wrap_owner_key(user_id, owner_key, current), current, user_id, old_id))
        count += len(rows)
        if rows:
            failpoints.reach("rotate:rewrapped")
        if len(rows) < _BATCH:
            break
    key_file = data_dir / KEY_FILE
    if key_in_file and key_file.exists():
        held = read_key_file_all(key_file)
        needed = {current} | {r[0] for r in await ctx.db.fetchall(
            "SELECT DISTINCT master_key_id FROM users")}
        keep = [k for k in held if key_id(k) in needed]
        if keep and len(keep) != len(held):
            # The current key first: it is what a fresh start and an operator read first.
            keep.sort(key=lambda k: key_id(k) != current)
            write_key_file(key_file, *keep)
    return count


async def resume_rotation(ctx: Context, leases: Leases, data_dir: Path, *,
                          key_in_file: bool) -> int:
    """At start-up: finish a rotation that a crash interrupted, unless another process is
    rotating right now (it will finish its own)."""
    behind = await ctx.db.fetchval(
        "SELECT count(*) FROM users WHERE master_key_id != (SELECT value FROM meta"
        " WHERE key = 'master_key_id')")
    extra = key_in_file and (data_dir / KEY_FILE).exists() and len(
        read_key_file_all(data_dir / KEY_FILE)) > 1
    if not behind and not extra:
        return 0
    if not await leases.take(ROTATION_LEASE, ROTATION_LEASE_S):
        return 0
    try:
        return await finish_rotation(ctx, leases, data_dir, key_in_file=key_in_file)
    finally:
        await leases.release(ROTATION_LEASE)
