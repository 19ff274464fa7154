"""The blob store on an S3-compatible object store (AWS S3, MinIO, Ceph, R2, ...), through
obstore (Rust's object_store: async, retries with backoff, multipart uploads, no botocore).

Objects are ``<prefix>/images/<name>`` and ``<prefix>/exports/<name>``. Nothing here knows
what an image is: the services hand over ciphertext and random names only.
"""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator, Sequence
from datetime import timedelta
from typing import TYPE_CHECKING, Any

import obstore
from obstore.exceptions import (
    BaseError,
    GenericError,
    NotFoundError,
    PermissionDeniedError,
    UnauthenticatedError,
)
from obstore.store import S3Store

from bot.core.blobs import BlobInfo, BlobMissing, BlobReader, BlobStoreError, BlobWriter, S3Settings

if TYPE_CHECKING:
    from obstore import AsyncReadableFile, AsyncWritableFile

# Exports are streamed up in parts of this size (S3 needs at least 5 MiB for all but the last).
PART_BYTES = 8 * 1024 * 1024
_DELETE_BATCH = 1000  # the most one DeleteObjects request takes


class S3BlobStore:
    kind = "s3"

    def __init__(self, bucket: str, prefix: str, settings: S3Settings) -> None:
        self.bucket = bucket
        self.prefix = prefix
        where = f"s3://{bucket}/{prefix}".rstrip("/")
        self.endpoint = settings.endpoint_url or "the AWS default endpoint"
        self.description = f"{where} at {self.endpoint}"
        config: dict[str, Any] = {}
        if settings.endpoint_url:
            config["endpoint"] = settings.endpoint_url
        if settings.access_key_id:
            config["access_key_id"] = settings.access_key_id
        if settings.secret_access_key:
            config["secret_access_key"] = settings.secret_access_key
        if settings.region:
            config["region"] = settings.region
        self._store = S3Store(
            bucket, prefix=prefix or None, config=config,  # type: ignore[arg-type]
            client_options={"allow_http": bool(settings.endpoint_url
                                               and settings.endpoint_url.startswith("http://")),
                            "connect_timeout": timedelta(seconds=5),
                            "timeout": timedelta(seconds=60)},
            # A few quick retries: a store that is down should fail a request in seconds, not
            # hold an interaction for minutes.
            retry_config={"max_retries": 3, "retry_timeout": timedelta(seconds=20),
                          "backoff": {"init_backoff": timedelta(milliseconds=100),
                                      "max_backoff": timedelta(seconds=2), "base": 2}})

    async def check(self) -> None:
        """Read and write a probe object, naming what is wrong in one line."""
        # Its own name: processes starting at once must not delete each other's probe.
        probe = f"probe/{secrets.token_hex(8)}"
        try:
            await obstore.put_async(self._store, probe, b"veil")
            await obstore.get_range_async(self._store, probe, start=0, end=4)
            await obstore.delete_async(self._store, probe)
        except (BaseError, OSError) as exc:  # obstore raises OSError kinds for some statuses
            raise BlobStoreError(self._explain(exc)) from None

    def _explain(self, exc: BaseException) -> str:
        text = str(exc)
        start = f"Veil cannot start: the blob store {self.description} "
        if "NoSuchBucket" in text or "bucket does not exist" in text.lower():
            return (start + f"has no bucket {self.bucket!r}: create it, or fix the bucket in "
                    "VEIL_BLOB_URL.")
        if (isinstance(exc, PermissionDeniedError | UnauthenticatedError | PermissionError)
                or any(s in text for s in ("InvalidAccessKeyId", "SignatureDoesNotMatch",
                                           "AccessDenied", "InvalidToken", "403"))):
            return (start + "refused the credentials: check VEIL_S3_ACCESS_KEY_ID and "
                    "VEIL_S3_SECRET_ACCESS_KEY (and that they may read, write and delete in "
                    "the bucket).")
        if isinstance(exc, GenericError) and any(
                s in text.lower() for s in ("error sending request", "connect", "dns",
                                            "timed out", "connection")):
            return (start + "cannot be reached: check VEIL_S3_ENDPOINT_URL (scheme, host and "
                    "port) and that the store is running.")
        # Never the raw text in full: it may quote a signed request.
        return start + f"answered with an error ({type(exc).__name__}): check VEIL_BLOB_URL " \
            "and the VEIL_S3_ settings."

    async def put(self, key: str, data: bytes) -> None:
        await obstore.put_async(self._store, key, data)

    async def get(self, key: str, start: int = 0, end: int | None = None) -> bytes:
        try:
            if start == 0 and end is None:
                result = await obstore.get_async(self._store, key)
                return bytes(await result.bytes_async())
            if end is None:
                result = await obstore.get_async(self._store, key,
                                                 options={"range": {"offset": start}})
                return bytes(await result.bytes_async())
            # A range past the end is cut to the object (S3 semantics), as a file read is.
            return bytes(await obstore.get_range_async(self._store, key, start=start, end=end))
        except (NotFoundError, FileNotFoundError):
            raise BlobMissing(key) from None
        except GenericError as exc:
            if "range" in str(exc).lower():  # start at or past the end: nothing there
                return b""
            raise

    async def exists(self, key: str) -> bool:
        try:
            await obstore.head_async(self._store, key)
        except (NotFoundError, FileNotFoundError):
            return False
        return True

    async def open_reader(self, key: str) -> BlobReader:
        try:
            reader = await obstore.open_reader_async(self._store, key, buffer_size=1024 * 1024)
        except (NotFoundError, FileNotFoundError):
            raise BlobMissing(key) from None
        return _S3Reader(reader)

    async def open_writer(self, key: str) -> BlobWriter:
        writer = obstore.open_writer_async(self._store, key, buffer_size=PART_BYTES)
        return _S3Writer(writer, self, key)

    async def delete(self, keys: Sequence[str]) -> None:
        keys = list(keys)
        for start in range(0, len(keys), _DELETE_BATCH):
            try:
                await obstore.delete_async(self._store, keys[start:start + _DELETE_BATCH])
            except (NotFoundError, FileNotFoundError):
                pass  # S3 itself says nothing for a missing key; some others do

    async def scan(self, prefix: str) -> AsyncIterator[list[BlobInfo]]:
        stream = obstore.list(self._store, prefix, chunk_size=1000)
        async for batch in stream:
            yield [BlobInfo(m["path"], m["size"], m["last_modified"].timestamp())
                   for m in batch]

    async def close(self) -> None:
        return None


class _S3Reader:
    def __init__(self, reader: AsyncReadableFile) -> None:
        self._reader = reader
        self.size = reader.size

    async def read(self, n: int) -> bytes:
        return bytes(await self._reader.read(n))

    async def close(self) -> None:
        self._reader.close()


class _S3Writer:
    """A multipart upload once past PART_BYTES, one PUT below. Until ``close`` no object
    exists; an aborted multipart upload leaves parts that the bucket's lifecycle rule
    (AbortIncompleteMultipartUpload, README) removes."""

    def __init__(self, writer: AsyncWritableFile, store: S3BlobStore, key: str) -> None:
        self._writer = writer
        self._store = store
        self._key = key

    async def write(self, data: bytes) -> None:
        await self._writer.write(data)

    async def close(self) -> None:
        await self._writer.close()

    async def abort(self) -> None:
        # obstore aborts the multipart upload when the writer leaves its context on an error.
        try:
            await self._writer.__aexit__(RuntimeError, RuntimeError("aborted"), None)
        except Exception:  # noqa: BLE001 - abandoning anyway; the lifecycle rule is the backstop
            pass
        await self._store.delete([self._key])
