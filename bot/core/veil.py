"""The composition root of the core: one object holding every service over one data folder.

``async with await Veil.open(data_dir) as veil:`` opens the database (running migrations),
checks the master key, repairs what a crash left (finishing an interrupted key rotation or
erasure), and closes everything on exit. Any number of processes may open one data folder at
once: repair leaves other processes' live work alone, and jobs that must run once are leased.
"""

from __future__ import annotations

import logging
import os
import sqlite3
import time
from pathlib import Path

from bot.core.blobs import BlobStore, S3Settings, open_blob_store
from bot.core.context import Clock, Context
from bot.core.erasure import ErasureService
from bot.core.exports import ExportService
from bot.core.images import ImageService
from bot.core.keys import LoadedKey, load_master_key, resume_rotation, rotate_master_key
from bot.core.leases import Leases
from bot.core.links import LinkService
from bot.core.moderation import ModerationService
from bot.core.retention import RetentionSweeper
from bot.core.sharing import SharingService
from bot.core.users import PrivacyService
from bot.images import ImageLimits
from db import Database, Store, open_database
from db.postgres import OPEN_ERRORS, redact_url
from db.presence import Claim, claim_database

log = logging.getLogger(__name__)


class DataFolderError(Exception):
    """The data folder cannot be created, written or opened; the message says what to do."""


class StoreInMaintenance(DataFolderError):
    """migrate-storage has the store to itself right now, or began to fill it and has not
    finished; no process may start on it."""


# The meta key a store carries while migrate-storage fills it (bot.storage_migration).
UNFINISHED_MIGRATION = "migration_unfinished"


def database_of(data_dir: str | Path, database_url: str | None) -> str | Path:
    """The database a Veil over ``data_dir`` and ``database_url`` opens: the URL, or the
    SQLite file in the data folder."""
    return database_url if database_url is not None else Path(data_dir) / "veil.db"


def _maintenance_refusal(label: str) -> StoreInMaintenance:
    return StoreInMaintenance(
        f"Veil cannot start: migrate-storage is copying {label} right now, and no other Veil "
        "process may use it meanwhile: start again once it has said 'Done' (with the new "
        "store's settings, if you are moving to it).")


class Veil:
    def __init__(self, ctx: Context, data_dir: Path, *, key_from_env: bool) -> None:
        self.ctx = ctx
        self.data_dir = data_dir
        self._key_from_env = key_from_env
        self.leases = Leases(ctx)
        self.images = ImageService(ctx)
        self.erasures = ErasureService(ctx, self.images)
        self.ledger = self.images.ledger
        self.sharing = SharingService(ctx, self.images)
        self.privacy = PrivacyService(ctx, self.images, self.sharing, self.erasures)
        self.links = LinkService(ctx, self.images)
        self.exports = ExportService(ctx, self.images, self.sharing)
        self.moderation = ModerationService(ctx, self.images, self.erasures)
        self.retention = RetentionSweeper(ctx, self.images)
        self.key_file_created: Path | None = None
        self._claim: Claim | None = None  # this process's presence on the database

    @classmethod
    async def open(cls, data_dir: str | Path, *, master_key: bytes | list[bytes] | None = None,
                   clock: Clock = time.time, limits: ImageLimits | None = None,
                   blob_url: str | None = None, s3: S3Settings | None = None,
                   database_url: str | None = None, db_pool_min: int | None = None,
                   db_pool_max: int | None = None, repair: bool = True,
                   claim: bool = True) -> Veil:
        """``blob_url``: ``s3://bucket/prefix`` (reached with ``s3``) for the encrypted
        bytes; None keeps them in the data folder. A store that cannot be used raises
        BlobStoreError with a one-line message. ``database_url``: a ``postgresql://`` URL, or
        None for the SQLite file in data_dir. ``repair=False`` opens without start-up repair:
        for a store being filled by a copy, whose objects no row names yet.

        The process holds a shared claim on the database until ``close`` (db.presence): it
        refuses to open, with StoreInMaintenance, while migrate-storage has the store to itself.
        ``claim=False``: the caller holds the exclusive claim already (migrate-storage)."""
        data_dir = Path(data_dir)
        db: Store
        held: Claim | None = None
        if database_url is not None:
            try:
                data_dir.mkdir(parents=True, exist_ok=True)
                os.chmod(data_dir, 0o700)
                if claim:
                    held = await _claim_shared(
                        database_url, f"the database at {redact_url(database_url)}")
                db = await open_database(database_url, pool_min=db_pool_min,
                                         pool_max=db_pool_max)
            except OPEN_ERRORS as exc:
                if held is not None:
                    await held.release()
                raise DataFolderError(
                    f"Veil cannot start: the database at {redact_url(database_url)} cannot be "
                    f"used ({type(exc).__name__}: {redact_url(str(exc))}): check "
                    "VEIL_DATABASE_URL and that the server is reachable.") from exc
        else:
            try:
                data_dir.mkdir(parents=True, exist_ok=True)
                os.chmod(data_dir, 0o700)
                if claim:
                    held = await _claim_shared(data_dir / "veil.db",
                                               f"the data folder {data_dir}")
                db = await Database.open(data_dir / "veil.db")
            except (OSError, sqlite3.Error) as exc:
                if held is not None:
                    await held.release()
                if data_dir.exists() and not data_dir.is_dir():
                    reason = "it is a file, not a folder"
                elif isinstance(exc, OSError) and exc.strerror:
                    reason = exc.strerror.lower()
                else:
                    reason = str(exc)
                raise DataFolderError(
                    f"Veil cannot start: the data folder {data_dir} cannot be used ({reason}): "
                    "point VEIL_DATA_DIR at a folder Veil may create and write to.") from exc
        blobs: BlobStore | None = None
        try:
            if claim:
                await _refuse_half_filled(db, data_dir if database_url is None else
                                          f"the database at {redact_url(database_url)}")
            blobs = open_blob_store(data_dir, blob_url, s3)
            await blobs.check()
            loaded: LoadedKey = await load_master_key(db, data_dir, master_key)
            ctx = Context(db, blobs, loaded.keyring, clock, limits or ImageLimits())
            veil = cls(ctx, data_dir, key_from_env=master_key is not None)
            veil.key_file_created = loaded.created_file
            veil._claim = held
            repaired: dict[str, int] = {}
            if repair:
                repaired = await veil.images.repair()
                repaired["rewrapped"] = await resume_rotation(
                    ctx, veil.leases, data_dir, key_in_file=master_key is None)
                repaired["erasures"] = await veil.erasures.resume()
        except BaseException:
            if blobs is not None:
                await blobs.close()
            await db.close()
            if held is not None:
                await held.release()
            raise
        if loaded.created_file is not None:
            log.warning("Generated a new master key in %s (mode 0600). Back it up: without it "
                        "the stored images cannot be read.", loaded.created_file)
        if any(repaired.values()):
            log.info("Start-up repair: %s", repaired)
        return veil

    async def repair(self) -> int:
        """What a crashed process left, while others run: abandoned uploads, unfinished
        deletions and erasures. Returns how many erasures were finished."""
        await self.images.repair()
        return await self.erasures.resume()

    async def rotate_master_key(self, new_key: bytes | None = None) -> int:
        """Make a new master key current and re-wrap every owner key under it, while other
        processes keep running; returns how many were re-wrapped."""
        return await rotate_master_key(self.ctx, self.leases, self.data_dir, new_key,
                                       key_in_file=not self._key_from_env)

    async def close(self) -> None:
        await self.ctx.blobs.close()
        await self.ctx.db.close()
        if self._claim is not None:  # last: nothing of this process writes any more
            await self._claim.release()
            self._claim = None

    async def __aenter__(self) -> Veil:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()


async def _refuse_half_filled(db: Store, label: str | Path) -> None:
    """A store that migrate-storage began to fill and has not finished is not a store to run
    on: what it lacks would look deleted, and what a process added there could collide with
    rows still to come."""
    source = await db.fetchval(f"SELECT value FROM meta WHERE key = '{UNFINISHED_MIGRATION}'")
    if source is not None:
        raise StoreInMaintenance(
            f"Veil cannot start: {label} is the target of a migrate-storage (from {source}) "
            "that has not finished: run `python -m bot migrate-storage` again, with the "
            "settings it ran with, to finish the copy, then start Veil.")


async def _claim_shared(database: str | Path, label: str) -> Claim:
    held = await claim_database(database, exclusive=False)
    if held is None:
        raise _maintenance_refusal(label)
    return held
