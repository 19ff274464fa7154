"""A file encrypted in chunks as it is written, and read back chunk by chunk.

Used for exports that wait on disk for their one download: the archive is never whole in memory
nor in plaintext on disk. Layout: ``MAGIC`` and a random 16-byte salt, then chunks of
``CHUNK_BYTES`` of plaintext (the last one shorter, possibly empty), each sealed with AES-GCM
under a key derived (HKDF-SHA256) from the caller's secret and the salt. The nonce is the chunk's
index (a key is used for one file only), and the associated data names the index and whether the
chunk is the last, so chunks cannot be reordered, dropped, or the file cut short at a chunk
boundary without the read failing.
"""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import BinaryIO, Protocol

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from bot.core.crypto import CryptoError

MAGIC = b"VEILSX01"
SALT_BYTES = 16
HEADER_BYTES = len(MAGIC) + SALT_BYTES
CHUNK_BYTES = 64 * 1024
TAG_BYTES = 16


def _key(secret: bytes, salt: bytes) -> AESGCM:
    return AESGCM(HKDF(algorithm=hashes.SHA256(), length=32, salt=salt,
                       info=b"veil/sealed-stream/v1").derive(secret))


def _nonce_and_aad(index: int, final: bool) -> tuple[bytes, bytes]:
    return index.to_bytes(12, "big"), MAGIC + index.to_bytes(8, "big") + bytes([final])


def sealed_size(plain_size: int) -> int:
    """The size on disk of ``plain_size`` bytes of plaintext."""
    # Full chunks, then a final one of 1 to CHUNK_BYTES bytes (empty only for an empty file).
    chunks = max(1, -(-plain_size // CHUNK_BYTES))
    return HEADER_BYTES + plain_size + chunks * TAG_BYTES


class Output(Protocol):
    """Where a SealedWriter puts its ciphertext: a file, or anything that takes bytes."""

    closed: bool

    def write(self, data: bytes, /) -> int: ...

    def flush(self) -> None: ...


class SealedWriter:
    """A write-only, unseekable file object (what ``zipfile`` needs) that seals as it goes.
    Holds at most one chunk of plaintext. ``close()`` writes the final chunk; a writer never
    closed leaves a file that does not open (no final chunk)."""

    def __init__(self, out: Output | BinaryIO, secret: bytes) -> None:
        salt = secrets.token_bytes(SALT_BYTES)
        self._out = out
        self._aead = _key(secret, salt)
        self._buffer = bytearray()
        self._index = 0
        self.plain_size = 0
        self.closed = False
        self._abandoned = False
        out.write(MAGIC + salt)

    def abandon(self) -> None:
        """Give up on this file: later writes (say, a zip closing on the way out of an error)
        go nowhere, and no final chunk is written, so the partial file never opens."""
        self._abandoned = True
        self._buffer.clear()

    def write(self, data: bytes | bytearray | memoryview) -> int:
        if self._abandoned:
            return len(data)
        if self.closed:
            raise ValueError("write to a closed SealedWriter")
        self._buffer += data
        self.plain_size += len(data)
        # Keep the tail: the last chunk must be written with the final flag, at close.
        while len(self._buffer) > CHUNK_BYTES:
            self._seal(bytes(self._buffer[:CHUNK_BYTES]), final=False)
            del self._buffer[:CHUNK_BYTES]
        return len(data)

    def flush(self) -> None:
        if not self._abandoned and not self._out.closed:
            self._out.flush()

    def _seal(self, chunk: bytes, *, final: bool) -> None:
        nonce, aad = _nonce_and_aad(self._index, final)
        self._out.write(self._aead.encrypt(nonce, chunk, aad))
        self._index += 1

    def close(self) -> None:
        if not self.closed and not self._abandoned:
            self._seal(bytes(self._buffer), final=True)
            self._buffer.clear()
            self.closed = True
            self._out.flush()


def read_sealed(source: BinaryIO, size: int, secret: bytes) -> Iterator[bytes]:
    """The plaintext of a sealed file of ``size`` bytes, one chunk at a time. Raises
    CryptoError on a wrong secret or any change to the file (the chunks already yielded were
    authentic; a caller streaming them must treat the whole as failed)."""
    aead = _open_header(source.read(HEADER_BYTES), secret)
    position, index = HEADER_BYTES, 0
    while True:
        want, final = _next_chunk(size, position)
        sealed = source.read(want)
        yield _open_chunk(aead, sealed, index, final)
        position += len(sealed)
        index += 1
        if final:
            return


def _open_header(header: bytes, secret: bytes) -> AESGCM:
    if len(header) != HEADER_BYTES or not header.startswith(MAGIC):
        raise CryptoError("not a sealed stream")
    return _key(secret, header[len(MAGIC):])


def _next_chunk(size: int, position: int) -> tuple[int, bool]:
    """How many bytes the next sealed chunk takes, and whether it is the last."""
    remaining = size - position
    final = remaining <= CHUNK_BYTES + TAG_BYTES
    return (remaining if final else CHUNK_BYTES + TAG_BYTES), final


def _open_chunk(aead: AESGCM, sealed: bytes, index: int, final: bool) -> bytes:
    if len(sealed) < TAG_BYTES:
        raise CryptoError("sealed stream cut short")
    nonce, aad = _nonce_and_aad(index, final)
    try:
        return aead.decrypt(nonce, sealed, aad)
    except InvalidTag as exc:
        raise CryptoError("sealed stream does not open with this key") from exc


async def aread_sealed(read: Callable[[int], Awaitable[bytes]], size: int,
                       secret: bytes) -> AsyncIterator[bytes]:
    """``read_sealed`` over an asynchronous source (a blob store's reader): ``read(n)`` gives
    up to ``n`` bytes. The same checks, chunk by chunk."""

    async def exactly(n: int) -> bytes:
        parts, got = [], 0
        while got < n:
            piece = await read(n - got)
            if not piece:
                break
            parts.append(piece)
            got += len(piece)
        return b"".join(parts)

    aead = _open_header(await exactly(HEADER_BYTES), secret)
    position, index = HEADER_BYTES, 0
    while True:
        want, final = _next_chunk(size, position)
        sealed = await exactly(want)
        yield _open_chunk(aead, sealed, index, final)
        position += len(sealed)
        index += 1
        if final:
            return
