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

log = logging.getLogger(__name__)


class DataFolderError(Exception):
    """The data folder cannot be created, written or opened; the message says what to do."""


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

    @classmethod
    async def open(cls, data_dir: str | Path, *, master_key: bytes | list[bytes] | None = None,
                   clock: Clock = time.time, limits: ImageLimits | None = None,
                   blob_url: str | None = None, s3: S3Settings | None = None,
                   database_url: str | None = None, db_pool_min: int | None = None,
                   db_pool_max: int | None = None, repair: bool = True) -> Veil:
        """``blob_url``: ``s3://bucket/prefix`` (reached with ``s3``) for the encrypted
        bytes; None keeps them in the data folder. A store that cannot be used raises
        BlobStoreError with a one-line message. ``database_url``: a ``postgresql://`` URL, or
        None for the SQLite file in data_dir. ``repair=False`` opens without start-up repair:
        for a store being filled by a copy, whose objects no row names yet."""
        data_dir = Path(data_dir)
        db: Store
        if database_url is not None:
            try:
                data_dir.mkdir(parents=True, exist_ok=True)
                os.chmod(data_dir, 0o700)
                db = await open_database(database_url, pool_min=db_pool_min,
                                         pool_max=db_pool_max)
            except OPEN_ERRORS as exc:
                raise DataFolderError(
                    f"Veil cannot start: the database at {redact_url(database_url)} cannot be "
                    f"used ({type(exc).__name__}: {redact_url(str(exc))}): check "
                    "VEIL_DATABASE_URL and that the server is reachable.") from exc
        else:
            try:
                data_dir.mkdir(parents=True, exist_ok=True)
                os.chmod(data_dir, 0o700)
                db = await Database.open(data_dir / "veil.db")
            except (OSError, sqlite3.Error) as exc:
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
            blobs = open_blob_store(data_dir, blob_url, s3)
            await blobs.check()
            loaded: LoadedKey = await load_master_key(db, data_dir, master_key)
            ctx = Context(db, blobs, loaded.keyring, clock, limits or ImageLimits())
            veil = cls(ctx, data_dir, key_from_env=master_key is not None)
            veil.key_file_created = loaded.created_file
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

    async def __aenter__(self) -> Veil:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()
