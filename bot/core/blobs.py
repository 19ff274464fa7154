"""Where encrypted image bytes live: one folder of opaque, random-named files.

A blob is staged under ``tmp/`` first and moved into ``blobs/`` only after its database row is
committed, so a crash leaves at most a staged file, which start-up repair resolves. Only
ciphertext is ever written. The interface is small on purpose: an object store (S3 and the
like) can stand in for this class without touching the services.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
from pathlib import Path

PARTS = ("full", "thumb")


def new_blob_name() -> str:
    return secrets.token_hex(16)


class LocalBlobStore:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.final_dir = root / "blobs"
        self.tmp_dir = root / "tmp"
        # Exports waiting for their one download, sealed in chunks (see bot.core.exports).
        self.export_dir = root / "exports"
        self.final_dir.mkdir(parents=True, exist_ok=True)
        self.tmp_dir.mkdir(parents=True, exist_ok=True)
        self.export_dir.mkdir(parents=True, exist_ok=True)

    def _final(self, name: str, part: str) -> Path:
        return self.final_dir / name[:2] / f"{name}.{part}"

    def _staged(self, name: str, part: str) -> Path:
        return self.tmp_dir / f"{name}.{part}"

    async def stage(self, name: str, parts: dict[str, bytes]) -> None:
        await asyncio.to_thread(self._stage_sync, name, parts)

    def _stage_sync(self, name: str, parts: dict[str, bytes]) -> None:
        for part, data in parts.items():
            path = self._staged(name, part)
            with open(path, "wb") as fh:
                fh.write(data)
                fh.flush()
                os.fsync(fh.fileno())

    async def publish(self, name: str) -> None:
        """Move a staged blob into place (after its row is committed)."""
        await asyncio.to_thread(self.publish_sync, name)

    def publish_sync(self, name: str) -> None:
        for part in PARTS:
            staged = self._staged(name, part)
            if staged.exists():
                final = self._final(name, part)
                final.parent.mkdir(exist_ok=True)
                # A repair in another process may publish the same committed blob at once.
                with contextlib.suppress(FileNotFoundError):
                    os.replace(staged, final)

    async def discard_staged(self, name: str) -> None:
        await asyncio.to_thread(self._unlink, [self._staged(name, p) for p in PARTS])

    async def read(self, name: str, part: str) -> bytes:
        return await asyncio.to_thread(self.read_sync, name, part)

    def read_sync(self, name: str, part: str) -> bytes:
        """For callers already off the event loop (read and decrypt in one thread hop)."""
        return self._final(name, part).read_bytes()

    def exists(self, name: str) -> bool:
        return all(self._final(name, p).exists() for p in PARTS)

    async def delete(self, names: list[str]) -> None:
        paths = [self._final(n, p) for n in names for p in PARTS]
        paths += [self._staged(n, p) for n in names for p in PARTS]
        await asyncio.to_thread(self._unlink, paths)

    def export_path(self, name: str) -> Path:
        return self.export_dir / f"{name}.sealed"

    async def delete_exports(self, names: list[str]) -> None:
        await asyncio.to_thread(self._unlink, [self.export_path(n) for n in names])

    def export_names(self) -> set[str]:
        return {p.name.split(".")[0] for p in self.export_dir.glob("*.sealed")}

    @staticmethod
    def _unlink(paths: list[Path]) -> None:
        for path in paths:
            path.unlink(missing_ok=True)

    def published_names(self) -> set[str]:
        return {p.name.split(".")[0] for p in self.final_dir.glob("*/*.*")}

    def staged_names(self) -> set[str]:
        return {p.name.split(".")[0] for p in self.tmp_dir.glob("*.*")}
