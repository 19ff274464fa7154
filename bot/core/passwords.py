"""Link passwords: a slow, salted scrypt hash, and nothing else kept.

A hash is stored as ``scrypt$<log2 n>$<r>$<p>$<salt hex>$<hash hex>``, so a later change of the
cost parameters still verifies older hashes. One hash takes 32 MiB (128 * n * r bytes) and about
a third of a second of one core; at most ``CONCURRENT_HASHES`` run at once, so a burst of logins
cannot push the process's memory or both cores over the edge (the rest wait their turn).
"""

from __future__ import annotations

import asyncio
import hmac
import secrets
from dataclasses import dataclass

from cryptography.hazmat.primitives.kdf.scrypt import Scrypt

from bot.core.errors import InvalidInput

MIN_LENGTH = 8
MAX_LENGTH = 128
SALT_BYTES = 16
HASH_BYTES = 32
CONCURRENT_HASHES = 2


@dataclass(frozen=True)
class ScryptCost:
    """scrypt's parameters. The default follows common guidance for interactive logins."""

    log2_n: int = 15
    r: int = 8
    p: int = 1


DEFAULT_COST = ScryptCost()
_slots: dict[asyncio.AbstractEventLoop, asyncio.Semaphore] = {}


def check_password(password: str) -> str:
    """The password as given, or an InvalidInput saying what a password needs."""
    if not MIN_LENGTH <= len(password) <= MAX_LENGTH:
        raise InvalidInput(f"A link password needs {MIN_LENGTH} to {MAX_LENGTH} characters.")
    if password.strip() == "":
        raise InvalidInput("A link password cannot be only spaces.")
    return password


def _derive(password: str, salt: bytes, cost: ScryptCost) -> bytes:
    return Scrypt(salt=salt, length=HASH_BYTES, n=2 ** cost.log2_n, r=cost.r,
                  p=cost.p).derive(password.encode("utf-8"))


def _hash_sync(password: str, cost: ScryptCost) -> str:
    salt = secrets.token_bytes(SALT_BYTES)
    digest = _derive(password, salt, cost)
    return f"scrypt${cost.log2_n}${cost.r}${cost.p}${salt.hex()}${digest.hex()}"


def _verify_sync(password: str, stored: str) -> bool:
    try:
        scheme, log2_n, r, p, salt, digest = stored.split("$")
        cost = ScryptCost(int(log2_n), int(r), int(p))
        expected = bytes.fromhex(digest)
        salt_bytes = bytes.fromhex(salt)
    except ValueError:
        return False
    if scheme != "scrypt":
        return False
    return hmac.compare_digest(_derive(password, salt_bytes, cost), expected)


def _slot() -> asyncio.Semaphore:
    loop = asyncio.get_running_loop()
    slot = _slots.get(loop)
    if slot is None:
        _slots.clear()  # one loop at a time in practice; tests start a new one each
        slot = _slots[loop] = asyncio.Semaphore(CONCURRENT_HASHES)
    return slot


async def hash_password(password: str, cost: ScryptCost = DEFAULT_COST) -> str:
    async with _slot():
        return await asyncio.to_thread(_hash_sync, check_password(password), cost)


async def verify_password(password: str, stored: str) -> bool:
    """Whether ``password`` matches ``stored``; over-long answers are wrong without hashing."""
    if len(password) > MAX_LENGTH:
        return False
    async with _slot():
        return await asyncio.to_thread(_verify_sync, password, stored)
