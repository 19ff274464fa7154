"""Where encrypted bytes live: a blob store port, a local folder and an S3-compatible store.

Only ciphertext ever reaches a store, under random names that carry no image, owner or guild
id. The port has no rename (object stores have none): a writer puts the whole object first and
commits the database row that names it afterwards, so a crash leaves at most an object that no
row names. Start-up repair deletes such objects, once they are older than a grace period (a
younger one may be another process's upload in flight) and no upload intent names them.

Keys live in two namespaces: ``images/<name>`` (one object per image: its full picture and
thumbnail, each sealed on its own, in one container, so storing an image is one write and one
fsync or PUT) and ``exports/<name>`` (a one-time export download, sealed in chunks, written and
read as a stream).

Deleting an object deletes it. What makes a deletion final is the image's data key, destroyed
with its row: a versioned bucket, a snapshot or a backup may keep the old ciphertext, and it
stays unreadable once the key is gone.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import secrets
import struct
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Protocol
from urllib.parse import urlparse

PARTS = ("full", "thumb")
IMAGES = "images/"
EXPORTS = "exports/"

# The image container: magic, the thumbnail's sealed length, the sealed thumbnail, the sealed
# full picture. The thumbnail comes first so a gallery reads it with one short ranged read.
_CONTAINER_MAGIC = b"VEILIMG1"
_HEADER = struct.Struct(">8sI")
# A 512-pixel thumbnail is 20 to 80 KiB as JPEG or WebP, more as a lossless PNG: one ranged
# read of this size holds most whole; a bigger one costs a second read of the rest.
_THUMB_READ = 128 * 1024


class BlobStoreError(Exception):
    """The blob store cannot be used; the message says what to fix, in one line."""


class BlobMissing(Exception):
    """No object under this key (never written, or deleted)."""


def new_blob_name() -> str:
    return secrets.token_hex(16)


def image_key(name: str) -> str:
    return IMAGES + name


def export_key(name: str) -> str:
    return EXPORTS + name


@dataclass(frozen=True)
class BlobInfo:
    key: str
    size: int
    modified_at: float  # Unix time, by the store's clock


class BlobWriter(Protocol):
    """An object written as a stream. It exists, complete, only once ``close`` returns."""

    async def write(self, data: bytes) -> None: ...

    async def close(self) -> None: ...

    async def abort(self) -> None: ...


class BlobReader(Protocol):
    """An object read as a stream, in pieces of bounded size."""

    size: int

    async def read(self, n: int) -> bytes: ...

    async def close(self) -> None: ...


class BlobStore(Protocol):
    """The port every core service stores ciphertext through."""

    kind: str  # "folder" or "s3"
    description: str  # where, for `check` and error messages; never a secret

    async def check(self) -> None:
        """Raise BlobStoreError (one line for the operator) if the store cannot be used."""

    async def put(self, key: str, data: bytes) -> None:
        """Write a whole object; durable once this returns."""

    async def get(self, key: str, start: int = 0, end: int | None = None) -> bytes:
        """Bytes ``start`` to ``end`` (exclusive; None: to the end). BlobMissing if absent."""

    async def exists(self, key: str) -> bool: ...

    async def open_reader(self, key: str) -> BlobReader:
        """A stream over the object. BlobMissing if absent."""

    async def open_writer(self, key: str) -> BlobWriter: ...

    async def delete(self, keys: Sequence[str]) -> None:
        """Delete these objects; a key already gone is not an error."""

    def scan(self, prefix: str) -> AsyncIterator[list[BlobInfo]]:
        """Every object under ``prefix``, in batches (a store may hold millions)."""

    async def close(self) -> None: ...


# The image container -------------------------------------------------------------------------

def pack_image(full: bytes, thumb: bytes) -> bytes:
    """One object for an image's two sealed parts."""
    return _HEADER.pack(_CONTAINER_MAGIC, len(thumb)) + thumb + full


def unpack_image(container: bytes) -> dict[str, bytes]:
    """The sealed parts of a whole container (for copying between stores)."""
    thumb_len = _thumb_len(container)
    start = _HEADER.size
    return {"thumb": container[start:start + thumb_len], "full": container[start + thumb_len:]}


def _thumb_len(head: bytes | memoryview) -> int:
    if len(head) < _HEADER.size:
        raise BlobMissing("image container cut short")
    magic, thumb_len = _HEADER.unpack_from(head)
    if magic != _CONTAINER_MAGIC:
        raise BlobMissing("not an image container")
    return int(thumb_len)


async def put_image(store: BlobStore, name: str, full: bytes, thumb: bytes) -> None:
    await store.put(image_key(name), pack_image(full, thumb))


async def read_image_part(store: BlobStore, name: str, part: str) -> bytes:
    """The sealed ``part`` ("full" or "thumb") of image blob ``name``; BlobMissing if gone."""
    key = image_key(name)
    if part == "full":
        return unpack_image(await store.get(key))["full"]
    head = await store.get(key, 0, _HEADER.size + _THUMB_READ)
    end = _HEADER.size + _thumb_len(head)
    if len(head) < end:
        head += await store.get(key, len(head), end)
    return head[_HEADER.size:end]


def read_full_part_sync(store: LocalBlobStore, name: str) -> memoryview:
    """The sealed full part of image blob ``name`` from the local folder, read on the calling
    thread: for a small image on the event loop, a page-cached read costs less than the trip to
    a thread and back. A view into the container, not a copy. BlobMissing if gone.

    The view is into the store's one reusable read buffer (see ``LocalBlobStore.read_image``):
    it holds until the next call, so use it at once and on the event loop's thread only."""
    container = store.read_image(name)
    return container[_HEADER.size + _thumb_len(container):]


async def image_names(store: BlobStore, older_than: float) -> AsyncIterator[list[str]]:
    """Names of the image objects last written before ``older_than``, in batches."""
    async for batch in store.scan(IMAGES):
        yield [b.key[len(IMAGES):] for b in batch if b.modified_at < older_than]


# The local folder ----------------------------------------------------------------------------

class LocalBlobStore:
    """Objects as files in the data folder: ``blobs/<2 hex>/<name>.img`` for images,
    ``exports/<name>.sealed`` for exports.

    A file is written in place and fsynced before its row commits; a crash mid-write leaves a
    partial file that no row names, which repair deletes like any other orphan. Folders made
    by earlier versions (``<name>.full`` and ``<name>.thumb``, published under ``blobs/`` or
    still staged under ``tmp/``) are read and deleted as the same object.
    """

    kind = "folder"

    def __init__(self, root: Path) -> None:
        self.root = root
        self.final_dir = root / "blobs"
        self.export_dir = root / "exports"
        self._legacy_tmp = root / "tmp"
        self.final_dir.mkdir(parents=True, exist_ok=True)
        self.export_dir.mkdir(parents=True, exist_ok=True)
        self.description = f"folder {root}"
        self._final_str = str(self.final_dir)
        self._read_buffer = bytearray()

    def path(self, key: str) -> Path:
        if key.startswith(IMAGES):
            name = _plain_name(key[len(IMAGES):])
            return self.final_dir / name[:2] / f"{name}.img"
        if key.startswith(EXPORTS):
            return self.export_dir / f"{_plain_name(key[len(EXPORTS):])}.sealed"
        raise ValueError(f"unknown blob namespace in {key!r}")

    def read_image(self, name: str) -> memoryview:
        """The whole container of image ``name``, read into one buffer that every call reuses:
        a view valid until the next call (the caller uses it at once, on the event loop's
        thread). A fresh 241 KB buffer per read cost page faults on every link fetch (glibc
        gives the freed top of its heap back to the system and maps it again for the next
        one); with the buffer reused the read is the kernel's copy alone (``get_sync`` 148 µs,
        this 20 µs of CPU; docs/PERFORMANCE.md, ``python -m bench.link --core``). String
        paths: pathlib's joins cost 15 µs here."""
        if not _NAME.fullmatch(name):
            raise ValueError(f"not a blob name: {name!r}")
        try:
            fd = os.open(f"{self._final_str}/{name[:2]}/{name}.img", os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            return memoryview(self.get_sync(image_key(name)))  # an older layout, or BlobMissing
        try:
            size = os.fstat(fd).st_size
            if len(self._read_buffer) < size:
                # A new buffer, never a resize: a view of the old one may still be alive.
                self._read_buffer = bytearray(size + size // 4)
            view = memoryview(self._read_buffer)
            got = 0
            while got < size:
                n = os.readv(fd, [view[got:size]])
                if n == 0:
                    break  # cut short by a concurrent truncation: the tag check will fail
                got += n
            return view[:got]
        finally:
            os.close(fd)

    def _legacy(self, key: str) -> list[Path]:
        if not key.startswith(IMAGES):
            return []
        name = key[len(IMAGES):]
        return [folder / f"{name}.{part}"
                for folder in (self.final_dir / name[:2], self._legacy_tmp) for part in PARTS]

    async def check(self) -> None:
        return None

    async def put(self, key: str, data: bytes) -> None:
        await asyncio.to_thread(self._put_sync, self.path(key), data)

    @staticmethod
    def _put_sync(path: Path, data: bytes) -> None:
        path.parent.mkdir(exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with open(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())

    async def get(self, key: str, start: int = 0, end: int | None = None) -> bytes:
        return await asyncio.to_thread(self.get_sync, key, start, end)

    def get_sync(self, key: str, start: int = 0, end: int | None = None) -> bytes:
        """``get`` on the calling thread (see read_full_part_sync)."""
        try:
            with open(self.path(key), "rb") as fh:
                fh.seek(start)
                return fh.read() if end is None else fh.read(max(0, end - start))
        except FileNotFoundError:
            data = self._legacy_container(key)
            if data is None:
                raise BlobMissing(key) from None
            return data[start:end]

    def _legacy_container(self, key: str) -> bytes | None:
        name = key[len(IMAGES):] if key.startswith(IMAGES) else None
        if name is None:
            return None
        for folder in (self.final_dir / name[:2], self._legacy_tmp):
            with contextlib.suppress(FileNotFoundError):
                return pack_image((folder / f"{name}.full").read_bytes(),
                                  (folder / f"{name}.thumb").read_bytes())
        return None

    async def exists(self, key: str) -> bool:
        def look() -> bool:
            return self.path(key).exists() or self._legacy_container(key) is not None
        return await asyncio.to_thread(look)

    async def open_reader(self, key: str) -> BlobReader:
        try:
            fh = await asyncio.to_thread(open, self.path(key), "rb")
        except FileNotFoundError:
            raise BlobMissing(key) from None
        return _FileReader(fh)

    async def open_writer(self, key: str) -> BlobWriter:
        path = self.path(key)
        fd = await asyncio.to_thread(os.open, path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        return _FileWriter(os.fdopen(fd, "wb"), path)

    async def delete(self, keys: Sequence[str]) -> None:
        paths = [p for k in keys for p in (self.path(k), *self._legacy(k))]
        await asyncio.to_thread(_unlink, paths)

    async def scan(self, prefix: str) -> AsyncIterator[list[BlobInfo]]:
        # One folder per batch (a 2-hex shard of the images, the exports, the legacy staging
        # folder): a million images are listed a few thousand names at a time.
        if prefix == IMAGES:
            folders = [*sorted(await asyncio.to_thread(_subfolders, self.final_dir)),
                       self._legacy_tmp]
            pattern = "*.*"
        elif prefix == EXPORTS:
            folders, pattern = [self.export_dir], "*.sealed"
        else:
            raise ValueError(f"unknown blob namespace {prefix!r}")
        for folder in folders:
            batch = await asyncio.to_thread(_list_folder, folder, pattern, prefix)
            if batch:
                yield batch

    async def close(self) -> None:
        return None


def _subfolders(folder: Path) -> list[Path]:
    return [p for p in folder.iterdir() if p.is_dir()]


def _list_folder(folder: Path, pattern: str, prefix: str) -> list[BlobInfo]:
    found: dict[str, BlobInfo] = {}
    for path in folder.glob(pattern):
        with contextlib.suppress(FileNotFoundError):  # deleted while we look
            stat = path.stat()
            key = prefix + path.name.split(".")[0]
            seen = found.get(key)  # an earlier version's pair is one object
            if seen is None or stat.st_mtime > seen.modified_at:
                found[key] = BlobInfo(key, stat.st_size, stat.st_mtime)
    return list(found.values())


_NAME = re.compile(r"[0-9A-Za-z_-]+")


def _plain_name(name: str) -> str:
    # Names are ours (random hex), never a user's; refuse anything that could leave the folder.
    if not name or not all(c.isalnum() or c in "-_" for c in name):
        raise ValueError(f"not a blob name: {name!r}")
    return name


def _unlink(paths: list[Path]) -> None:
    for path in paths:
        path.unlink(missing_ok=True)


class _FileReader:
    def __init__(self, fh: IO[bytes]) -> None:
        self._fh = fh
        self.size = os.fstat(fh.fileno()).st_size

    async def read(self, n: int) -> bytes:
        return await asyncio.to_thread(self._fh.read, n)

    async def close(self) -> None:
        self._fh.close()


class _FileWriter:
    def __init__(self, fh: IO[bytes], path: Path) -> None:
        self._fh = fh
        self._path = path

    async def write(self, data: bytes) -> None:
        await asyncio.to_thread(self._fh.write, data)

    async def close(self) -> None:
        def finish() -> None:
            self._fh.flush()
            os.fsync(self._fh.fileno())
            self._fh.close()
        await asyncio.to_thread(finish)

    async def abort(self) -> None:
        self._fh.close()
        self._path.unlink(missing_ok=True)


# An S3-compatible store ----------------------------------------------------------------------

@dataclass(frozen=True)
class S3Settings:
    """How to reach an S3-compatible store. Unset credentials and region fall back to the
    usual AWS sources (environment, instance metadata)."""

    endpoint_url: str | None = None
    access_key_id: str | None = field(default=None, repr=False)
    secret_access_key: str | None = field(default=None, repr=False)
    region: str | None = None


def parse_blob_url(url: str) -> tuple[str, str]:
    """(bucket, prefix) of ``s3://bucket/prefix``; ValueError with a message otherwise."""
    parsed = urlparse(url)
    if parsed.scheme != "s3" or not parsed.netloc:
        raise ValueError(f"VEIL_BLOB_URL must look like s3://bucket/prefix, got {url!r}.")
    return parsed.netloc, parsed.path.strip("/")


def open_blob_store(data_dir: Path, url: str | None, s3: S3Settings | None) -> BlobStore:
    """The store ``url`` names (None: the data folder)."""
    if url is None:
        return LocalBlobStore(data_dir)
    from bot.core.s3blobs import S3BlobStore

    try:
        bucket, prefix = parse_blob_url(url)
    except ValueError as exc:
        raise BlobStoreError(f"Veil cannot start: {exc}") from None
    return S3BlobStore(bucket, prefix, s3 or S3Settings())
