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
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

KEY_BYTES = 32
NONCE_BYTES = 12


class CryptoError(Exception):
    """A sealed value did not open: wrong key, or the data was changed."""


def new_key() -> bytes:
    return secrets.token_bytes(KEY_BYTES)


def seal(key: bytes, plaintext: bytes, aad: bytes) -> bytes:
    nonce = secrets.token_bytes(NONCE_BYTES)
    return nonce + AESGCM(key).encrypt(nonce, plaintext, aad)


def unseal(key: bytes, sealed: bytes, aad: bytes) -> bytes:
    try:
        return AESGCM(key).decrypt(sealed[:NONCE_BYTES], sealed[NONCE_BYTES:], aad)
    except (InvalidTag, ValueError) as exc:
        raise CryptoError("sealed value does not open with this key") from exc


def key_id(key: bytes) -> str:
    """A public fingerprint of a master key, stored so that a wrong key is caught at start-up."""
    return hmac.new(key, b"veil master key id", hashlib.sha256).hexdigest()[:16]


def owner_aad(user_id: int) -> bytes:
    return b"veil/owner/%d" % user_id


def image_aad(public_id: str, part: str) -> bytes:
    return f"veil/image/{public_id}/{part}".encode()


class KeyRing:
    """Holds the master key and wraps/unwraps owner keys with it."""

    def __init__(self, master_key: bytes) -> None:
        if len(master_key) != KEY_BYTES:
            raise ValueError("the master key must be 32 bytes")
        self._master = master_key
        self.key_id = key_id(master_key)

    def wrap_owner_key(self, user_id: int, owner_key: bytes) -> bytes:
        return seal(self._master, owner_key, owner_aad(user_id))

    def unwrap_owner_key(self, user_id: int, wrapped: bytes) -> bytes:
        return unseal(self._master, wrapped, owner_aad(user_id))

    def __repr__(self) -> str:  # never show key material, even in a debugger or a traceback
        return f"KeyRing(key_id={self.key_id})"


def read_key_file(path: Path) -> bytes:
    key = bytes.fromhex(path.read_text(encoding="ascii").strip())
    if len(key) != KEY_BYTES:
        raise ValueError(f"{path} does not hold a 32-byte key")
    return key


def write_key_file(path: Path, key: bytes) -> None:
    """Write a key readable by this user only (0600), atomically: a crash leaves old or new."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.unlink(missing_ok=True)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.write(fd, key.hex().encode("ascii") + b"\n")
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
