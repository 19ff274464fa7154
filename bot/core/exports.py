"""A person's export as a one-time, short-lived download (issue 15).

``start`` claims the user's one export slot (a clear refusal while one is being prepared, and a
cooldown after); ``prepare`` streams the zip (images one at a time, records page by page) into a
object sealed in chunks as it is written (``sealedstream``) and streamed into the blob
store (a file, or a multipart upload), so memory stays bounded whatever the library size and
no plaintext leaves the process. The key comes from the download token, which is
handed to the user and never stored (the database keeps a selector and a SHA-256 of the verifier,
as for links), so the file and the database together do not open it.

``take`` spends the download: exactly one request gets it, and the object is deleted once
it has been streamed (or the stream broke). Expired, taken and abandoned exports are swept,
and deleting any of the person's images (or forgetting them) drops a waiting export at once
(guarantee 5).
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import secrets
import zipfile
from collections.abc import AsyncIterator
from dataclasses import asdict, dataclass, field
from typing import IO, TYPE_CHECKING

from bot.core.blobs import EXPORTS, BlobMissing, BlobWriter, export_key
from bot.core.context import IMAGE, Context
from bot.core.durations import format_duration
from bot.core.errors import NotFound, RateLimited
from bot.core.images import ImageService
from bot.core.models import ImageRecord, Viewer
from bot.core.rows import Columns, Select, Value
from bot.core.sealedstream import SealedWriter, aread_sealed
from bot.core.sharing import SharingService
from db import Row

if TYPE_CHECKING:
    from db import Row

TOKEN_BYTES = 32
TOKEN_CHARS = 43
SELECTOR_CHARS = 16
LIFETIME = 3600.0  # a ready export waits this long for its download
COOLDOWN = 600.0  # between two exports of one person
ABANDONED_AFTER = 3600.0  # a 'preparing' export this old was left by a process that died
PAGE = 100  # rows read per query while writing
# An entry of the views list in the records document, and where each of its values comes from.
_VIEW_ENTRY = {"image": "i.public_id", "viewer_id": "v.viewer_id", "via": "v.via",
               "link": "v.link_id", "agent": "v.agent", "at": "v.at"}
RECORDS_FILE = "veil-export.json"
_TOKEN_ALPHABET = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_")
_DUMMY_HASH = hashlib.sha256(b"veil-no-such-export").digest()


@dataclass(frozen=True)
class ExportJob:
    """A claimed export slot, being prepared."""

    id: int
    user_id: int
    file_name: str


@dataclass(frozen=True)
class NewExport:
    """A ready export. The token exists only here (and in the link handed to the user)."""

    token: str = field(repr=False)
    expires_at: float
    images: int
    byte_size: int  # of the zip, as downloaded


@dataclass(frozen=True)
class ReadyExport:
    """What a download page may show before the download is spent."""

    expires_at: float
    images: int
    byte_size: int


@dataclass(frozen=True)
class Download:
    """A spent export: its size and its plaintext, chunk by chunk. Iterate it to the end (or
    ``close`` it): the file is deleted either way."""

    byte_size: int
    chunks: AsyncIterator[bytes]


class _ExportRow(Select):
    """A ready export, as a download finds it by its token."""

    id = Value("id")
    user_id = Value("user_id")
    file_name = Value("file_name")
    verifier_hash = Value("verifier_hash")
    ready = Columns(ReadyExport, sql={"images": "image_count"})


class ExportService:
    def __init__(self, ctx: Context, images: ImageService, sharing: SharingService) -> None:
        self.ctx = ctx
        self.images = images
        self.sharing = sharing

    # Asking ----------------------------------------------------------------------------------

    async def start(self, user_id: int) -> ExportJob:
        """Claim the user's export slot, or say why not (RateLimited, with a message for them)."""
        now = self.ctx.now()
        file_name = secrets.token_hex(16)
        stale: list[str] = []
        async with self.ctx.db.transaction() as tx:
            row = await tx.fetchone(
                "SELECT id, state, created_at, file_name FROM exports WHERE user_id = ?",
                (user_id,))
            if row is not None:
                old_id, state, created_at, old_file = row
                if state == "preparing" and now < created_at + ABANDONED_AFTER:
                    raise RateLimited("Your export is being prepared; I will send you its link "
                                      "as soon as it is ready.")
                if state != "preparing" and now < created_at + COOLDOWN:
                    wait = format_duration(max(1.0, created_at + COOLDOWN - now))
                    raise RateLimited(f"You asked for an export a moment ago. You can ask for "
                                      f"another one in {wait}.")
                stale.append(old_file)
                await tx.execute("DELETE FROM exports WHERE id = ?", (old_id,))
            export_id = await tx.insert(
                "INSERT INTO exports (user_id, state, file_name, created_at)"
                " VALUES (?, 'preparing', ?, ?)", (user_id, file_name, now))
            await self.ctx.audit(tx, "export.start", actor_id=user_id)
        await self._delete(stale)
        return ExportJob(export_id, user_id, file_name)

    async def prepare(self, job: ExportJob) -> NewExport:
        """Write the archive for ``job`` and make it ready for one download. On any failure,
        the slot and the partial file are gone (the user may ask again at once)."""
        token = secrets.token_urlsafe(TOKEN_BYTES)
        try:
            plain_size, count = await self._write(job.user_id, job.file_name, token.encode())
            now = self.ctx.now()
            async with self.ctx.db.transaction() as tx:
                ready = await tx.execute(
                    "UPDATE exports SET state = 'ready', selector = ?, verifier_hash = ?,"
                    " byte_size = ?, image_count = ?, expires_at = ?"
                    " WHERE id = ? AND state = 'preparing'",
                    (token[:SELECTOR_CHARS], _hash(token[SELECTOR_CHARS:]), plain_size, count,
                     now + LIFETIME, job.id))
            if ready != 1:
                raise NotFound("One of your images was deleted while your export was being "
                               "prepared, so I dropped it. Please ask again.")
        except BaseException:
            async with self.ctx.db.transaction() as tx:
                await tx.execute("DELETE FROM exports WHERE id = ? AND state = 'preparing'",
                                 (job.id,))
            await self._delete([job.file_name])
            raise
        return NewExport(token, now + LIFETIME, count, plain_size)

    # Writing ---------------------------------------------------------------------------------

    async def _write(self, user_id: int, file_name: str, secret: bytes) -> tuple[int, int]:
        """Stream the zip, sealed, into the export's object; returns (zip size, images)."""
        writer = await self.ctx.blobs.open_writer(export_key(file_name))
        sink = _Sink(writer)
        try:
            sealed = SealedWriter(sink, secret)
            # An unseekable target: zipfile writes each entry with a data descriptor and never
            # looks back, so nothing but the current chunk stays in memory.
            archive = zipfile.ZipFile(sealed, "w", zipfile.ZIP_STORED)
            try:
                count = 0
                async for image in self._images_of(user_id):
                    try:
                        content = await self.images.decrypt_unchecked(image)
                    except NotFound:
                        continue  # deleted meanwhile; the deletion also drops this export
                    await asyncio.to_thread(_add, archive, f"images/{content.filename}",
                                            content.data)
                    await sink.drain()
                    count += 1
                    del content
                entry = await asyncio.to_thread(archive.open, RECORDS_FILE, "w",
                                                force_zip64=True)
                records = _TextEntry(entry, sink)
                await self._records(user_id, records)
                await records.close()
                await asyncio.to_thread(_finish, archive, sealed)
                await sink.drain(everything=True)
            except BaseException:
                sealed.abandon()
                archive.close()  # into the void: only to release it quietly
                raise
            await writer.close()
        except BaseException:
            await asyncio.shield(writer.abort())
            raise
        return sealed.plain_size, count

    async def _images_of(self, user_id: int) -> AsyncIterator[ImageRecord]:
        after = 0
        while True:
            rows = await self.ctx.db.fetchall(
                f"SELECT {IMAGE.columns} FROM images WHERE owner_id = ? AND id > ?"
                " ORDER BY id LIMIT ?", (user_id, after, PAGE))
            images = [IMAGE(row) for row in rows]
            for image in images:
                yield image
            if len(rows) < PAGE:
                return
            after = images[-1].id

    async def _records(self, user_id: int, out: _TextEntry) -> None:
        """The records document, written piece by piece (a library's records may be large)."""
        viewer = Viewer(user_id)
        mode = await self.ctx.db.fetchval("SELECT private_mode FROM users WHERE user_id = ?",
                                          (user_id,))
        await out.add('{\n  "user_id": ' + json.dumps(str(user_id)) + ',\n  "private_mode": '
                + json.dumps(True if mode is None else bool(mode)) + ',\n  "images": [')
        first = True
        async for image in self._images_of(user_id):
            entry = {k: v for k, v in asdict(image).items() if k not in ("id", "blob_name")}
            entry["prompt"] = await self.images.prompt(image.public_id, viewer)
            if entry["prompt"] is not None:
                params = (await self.images.details(image.public_id, viewer)).params
                entry["generation"] = None if params is None else asdict(params)
            await out.add(("\n    " if first else ",\n    ") + json.dumps(entry, default=str))
            first = False
        grants = [asdict(g) for g in await self.sharing.grants_by(user_id, live_only=False)]
        groups = [asdict(g) for g in await self.sharing.groups(user_id)]
        await out.add('\n  ],\n  "grants": ' + json.dumps(grants, default=str)
                + ',\n  "groups": ' + json.dumps(groups, default=str) + ',\n  "views": [')
        after, first = 0, True
        while True:
            rows = await self.ctx.db.fetchall(
                f"SELECT v.id, {', '.join(_VIEW_ENTRY.values())}"
                " FROM view_log v JOIN images i ON i.id = v.image_id"
                " WHERE v.owner_id = ? AND v.id > ? ORDER BY v.id LIMIT ?",
                (user_id, after, PAGE))
            for view_id, *values in rows:
                view = dict(zip(_VIEW_ENTRY, values, strict=True))
                await out.add(("\n    " if first else ",\n    ") + json.dumps(view, default=str))
                first = False
                after = view_id
            if len(rows) < PAGE:
                break
        await out.add('\n  ],\n  "note": "Exported by Veil. Images are the sanitized copies Veil '
                'stores."\n}\n')

    # Downloading -----------------------------------------------------------------------------

    async def ready(self, token: str) -> ReadyExport | None:
        """The ready export behind ``token``, without spending it; None for unknown, taken,
        expired and malformed tokens alike."""
        row = await self._find(token)
        if row is None:
            return None
        return _ExportRow.ready(row)

    async def take(self, token: str) -> Download | None:
        """Spend the download behind ``token``: exactly one caller gets it, however many ask at
        once. None for unknown, taken, expired and malformed tokens alike."""
        row = await self._find(token)
        if row is None:
            return None
        async with self.ctx.db.transaction() as tx:
            taken = await tx.execute(
                "UPDATE exports SET state = 'taken', selector = NULL, verifier_hash = NULL"
                " WHERE id = ? AND state = 'ready' AND expires_at > ?",
                (_ExportRow.id(row), self.ctx.now()))
            if taken == 1:
                await self.ctx.audit(tx, "export.download", actor_id=_ExportRow.user_id(row))
        if taken != 1:
            return None
        return Download(_ExportRow.ready(row).byte_size,
                        self._stream(token.encode(), _ExportRow.file_name(row)))

    async def _stream(self, secret: bytes, file_name: str) -> AsyncIterator[bytes]:
        try:
            source = await self.ctx.blobs.open_reader(export_key(file_name))
        except BlobMissing:
            return
        deleted = False
        try:
            chunks = aread_sealed(source.read, source.size, secret)
            chunk = await anext(chunks, None)
            while chunk is not None:
                following = await anext(chunks, None)
                if following is None:
                    # Everything is read (and authenticated): the object goes before the last
                    # bytes leave, so a finished download never finds it still stored.
                    await source.close()
                    await self._delete([file_name])
                    deleted = True
                yield chunk
                chunk = following
        finally:
            await source.close()
            if not deleted:
                await asyncio.shield(self._delete([file_name]))

    async def _delete(self, file_names: list[str]) -> None:
        if file_names:
            await self.ctx.blobs.delete([export_key(n) for n in file_names])

    async def _find(self, token: str) -> Row | None:
        if len(token) != TOKEN_CHARS or not _TOKEN_ALPHABET.issuperset(token):
            token = secrets.token_urlsafe(TOKEN_BYTES)  # the same cost as any other miss
        row = await self.ctx.db.fetchone(
            f"SELECT {_ExportRow.columns} FROM exports WHERE selector = ? AND state = 'ready'",
            (token[:SELECTOR_CHARS],))
        expected = _DUMMY_HASH if row is None else _ExportRow.verifier_hash(row)
        if not hmac.compare_digest(_hash(token[SELECTOR_CHARS:]), expected) or row is None:
            return None
        if self.ctx.now() >= _ExportRow.ready(row).expires_at:
            return None
        return row

    # Housekeeping ----------------------------------------------------------------------------

    async def sweep(self) -> int:
        """Drop expired and abandoned exports, the cooldown records that ran out, and any
        object without a row; returns how many objects were deleted."""
        now = self.ctx.now()
        # Objects listed before the rows are read: an export's row is committed before its
        # object is written, so every object listed here that has a row is seen to have one.
        # Listed after, an export another process starts in between would look like an orphan.
        on_disk = {b.key[len(EXPORTS):] async for batch in self.ctx.blobs.scan(EXPORTS)
                   for b in batch}
        async with self.ctx.db.transaction() as tx:
            gone = [r[0] for r in await tx.fetchall(
                "SELECT file_name FROM exports WHERE (state = 'ready' AND expires_at <= :now)"
                " OR (state = 'preparing' AND created_at <= :now - :abandoned)"
                " OR (state = 'taken' AND created_at <= :now - :cooldown)",
                {"now": now, "abandoned": ABANDONED_AFTER, "cooldown": COOLDOWN})]
            if gone:
                marks = ",".join("?" * len(gone))
                await tx.execute(f"DELETE FROM exports WHERE file_name IN ({marks})", gone)
            # 'taken' rows only wait out the cooldown: their object went with the download.
            known = {r[0] for r in await tx.fetchall("SELECT file_name FROM exports")}
        doomed = sorted(set(gone) | (on_disk - known))
        await self._delete(doomed)
        return len(on_disk.intersection(doomed))


def _hash(verifier: str) -> bytes:
    return hashlib.sha256(verifier.encode()).digest()


class _Sink:
    """The file object the sealed writer writes to (from worker threads, as zipfile runs
    there): it only gathers ciphertext; the event loop hands it on to the blob store between
    thread hops (``drain``), so no thread ever waits on the loop."""

    DRAIN_BYTES = 1024 * 1024

    def __init__(self, writer: BlobWriter) -> None:
        self._writer = writer
        self._pending: list[bytes] = []
        self._size = 0
        self.closed = False

    def write(self, data: bytes) -> int:
        self._pending.append(bytes(data))
        self._size += len(data)
        return len(data)

    def flush(self) -> None:
        return None

    async def drain(self, *, everything: bool = False) -> None:
        if self._size >= self.DRAIN_BYTES or (everything and self._size):
            data, self._pending, self._size = b"".join(self._pending), [], 0
            await self._writer.write(data)


class _TextEntry:
    """A zip entry written as text from the event loop: pieces are gathered up to
    ``FLUSH_BYTES`` and written in one thread hop, so the records never sit whole in memory."""

    FLUSH_BYTES = 256 * 1024

    def __init__(self, entry: IO[bytes], sink: _Sink) -> None:
        self._entry = entry
        self._sink = sink
        self._pending: list[bytes] = []
        self._size = 0

    async def add(self, text: str) -> None:
        data = text.encode()
        self._pending.append(data)
        self._size += len(data)
        if self._size >= self.FLUSH_BYTES:
            await self._flush()

    async def _flush(self) -> None:
        data, self._pending, self._size = b"".join(self._pending), [], 0
        await asyncio.to_thread(self._entry.write, data)
        await self._sink.drain()

    async def close(self) -> None:
        await self._flush()
        await asyncio.to_thread(self._entry.close)
        await self._sink.drain()


def _add(archive: zipfile.ZipFile, name: str, data: bytes) -> None:
    with archive.open(name, "w") as entry:
        entry.write(data)


def _finish(archive: zipfile.ZipFile, sealed: SealedWriter) -> None:
    archive.close()
    sealed.close()

