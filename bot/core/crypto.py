"""Encryption at rest: AES-GCM with a key hierarchy master key -> owner key -> image data key.

Every sealed value carries its own random 96-bit nonce and is bound by associated data to what
it belongs to (an image's public id, an owner's user id), so a blob or wrapped key moved to
another row fails to open instead of decrypting as something else.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
from collections.abc import Callable
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

KEY_BYTES = 32
NONCE_BYTES = 12
TAG_BYTES = 16
# AESGCM.encrypt and .decrypt hold the GIL for the whole value: 10-25 ms for the 10 MB of a
# 40-megapixel upload, measured on this project's 2-core machine, during which the event loop
# cannot run even though sealing happens on another thread. Larger values go through the
# streaming GCM interface a piece at a time, which lets other threads (the loop) take the GIL
# between pieces; the bytes are the same either way (GCM is a stream mode), so a value sealed
# one way opens the other way.
_PIECE_BYTES = 256 * 1024


class CryptoError(Exception):
    """A sealed value did not open: wrong key, or the data was changed."""


def new_key() -> bytes:
    return secrets.token_bytes(KEY_BYTES)


def seal(key: bytes, plaintext: bytes, aad: bytes) -> bytes:
    """nonce + AES-GCM ciphertext + tag."""
    nonce = secrets.token_bytes(NONCE_BYTES)
    if len(plaintext) <= _PIECE_BYTES:
        return nonce + AESGCM(key).encrypt(nonce, plaintext, aad)
    encryptor = Cipher(algorithms.AES(key), modes.GCM(nonce)).encryptor()
    encryptor.authenticate_additional_data(aad)
    view = memoryview(plaintext)
    pieces = [nonce]
    pieces.extend(encryptor.update(view[start:start + _PIECE_BYTES])
                  for start in range(0, len(view), _PIECE_BYTES))
    pieces.append(encryptor.finalize())
    pieces.append(encryptor.tag)
    return b"".join(pieces)


def unseal(key: bytes, sealed: bytes | memoryview, aad: bytes) -> bytes:
    """The plaintext of ``seal``'s output, or CryptoError; nothing of it before the tag checks."""
    # A view, not a slice: slicing would copy the whole ciphertext first (an image: a copy of
    # a few hundred KB per decrypt, measured as much as the decrypt itself).
    view = memoryview(sealed)
    try:
        if len(view) <= NONCE_BYTES + TAG_BYTES + _PIECE_BYTES:
            return AESGCM(key).decrypt(view[:NONCE_BYTES], view[NONCE_BYTES:], aad)
        nonce, tag = bytes(view[:NONCE_BYTES]), bytes(view[-TAG_BYTES:])
        decryptor = Cipher(algorithms.AES(key), modes.GCM(nonce, tag)).decryptor()
        decryptor.authenticate_additional_data(aad)
        end = len(view) - TAG_BYTES
        pieces = [decryptor.update(view[start:min(start + _PIECE_BYTES, end)])
                  for start in range(NONCE_BYTES, end, _PIECE_BYTES)]
        # finalize checks the tag: only then is any of the plaintext returned.
        pieces.append(decryptor.finalize())
        return b"".join(pieces)
    except (InvalidTag, ValueError) as exc:
        raise CryptoError("sealed value does not open with this key") from exc


def key_id(key: bytes) -> str:
    """A public fingerprint of a master key, stored so that a wrong key is caught at start-up."""
    return hmac.new(key, b"veil master key id", hashlib.sha256).hexdigest()[:16]


def owner_aad(user_id: int) -> bytes:
    return b"veil/owner/%d" % user_id


def image_aad(public_id: str, part: str) -> bytes:
    return f"veil/image/{public_id}/{part}".encode()


class MissingMasterKey(CryptoError):
    """A wrapped key names a master key this process does not hold (operator's message)."""


class KeyRing:
    """The master keys this process holds, by id, and the id of the one that wraps new keys.

    A rotation in another process adds a key and makes it current; ``reload`` (reading the key
    file again) lets this process pick it up on first use, without a restart. A process given
    its key in the environment has nothing to reload and refuses with a message that says so.
    """

    def __init__(self, master_key: bytes, *others: bytes,
                 reload: Callable[[], list[bytes]] | None = None,
                 source: str = "the master key file") -> None:
        self._keys: dict[str, bytes] = {}
        for key in (master_key, *others):
            self.add(key)
        self.current_id = key_id(master_key)
        self._reload = reload
        self._source = source

    @property
    def key_id(self) -> str:
        return self.current_id

    def add(self, key: bytes) -> str:
        if len(key) != KEY_BYTES:
            raise ValueError("the master key must be 32 bytes")
        ident = key_id(key)
        self._keys[ident] = key
        return ident

    def holds(self, ident: str) -> bool:
        return ident in self._keys

    def ids(self) -> set[str]:
        return set(self._keys)

    def key(self, ident: str | None = None) -> bytes:
        """The key with this id (default: the current one), reading the key file again once
        if another process rotated meanwhile."""
        ident = ident or self.current_id
        if ident not in self._keys and self._reload is not None:
            for key in self._reload():
                self.add(key)
        try:
            return self._keys[ident]
        except KeyError:
            raise MissingMasterKey(
                f"Data here is wrapped under master key {ident}, which {self._source} does not "
                "hold: another process rotated the key. Restart this process with the new "
                "key (see README: 'Rotate the master key').") from None

    def wrap_owner_key(self, user_id: int, owner_key: bytes, ident: str | None = None) -> bytes:
        return seal(self.key(ident), owner_key, owner_aad(user_id))

    def unwrap_owner_key(self, user_id: int, wrapped: bytes, ident: str | None = None) -> bytes:
        return unseal(self.key(ident), wrapped, owner_aad(user_id))

    def __repr__(self) -> str:  # never show key material, even in a debugger or a traceback
        return f"KeyRing(current={self.current_id}, held={len(self._keys)})"


def read_key_file(path: Path) -> bytes:
    """The first key of a key file (the one it was created with)."""
    return read_key_file_all(path)[0]


def read_key_file_all(path: Path) -> list[bytes]:
    """Every key in a key file: one per line, 64 hex digits each. During a rotation the file
    holds the old and the new key; afterwards only the keys that something still needs."""
    keys = [bytes.fromhex(line.strip())
            for line in path.read_text(encoding="ascii").splitlines() if line.strip()]
    if not keys or any(len(k) != KEY_BYTES for k in keys):
        raise ValueError(f"{path} does not hold 32-byte keys")
    return keys


def write_key_file(path: Path, *keys: bytes) -> None:
    """Write keys readable by this user only (0600), atomically: a reader or a crash sees the
    old file or the new one, never a part (a per-writer temporary name, then rename)."""
    tmp = path.with_name(f"{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.write(fd, b"".join(k.hex().encode("ascii") + b"\n" for k in keys))
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
