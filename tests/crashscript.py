"""Run one core operation in a process that a failpoint kills (see bot/core/failpoints.py).

Usage: python -m tests.crashscript DATA_DIR OPERATION [IMAGE_ID]

With VEIL_BLOB_URL (and the VEIL_S3_ settings) in the environment, blobs go to that store.
"""

from __future__ import annotations

import asyncio
import os
import sys

from bot.core.blobs import S3Settings
from bot.core.models import Viewer
from bot.core.veil import Veil
from tests.conftest import ALICE, GUILD, MOD, png


async def main(data_dir: str, operation: str, image_id: str | None) -> None:
    env = os.environ
    s3 = S3Settings(env.get("VEIL_S3_ENDPOINT_URL"), env.get("VEIL_S3_ACCESS_KEY_ID"),
                    env.get("VEIL_S3_SECRET_ACCESS_KEY"), env.get("VEIL_S3_REGION"))
    veil = await Veil.open(data_dir, blob_url=env.get("VEIL_BLOB_URL"), s3=s3,
                           database_url=env.get("VEIL_DATABASE_URL") or None)
    if operation == "create":
        await veil.images.create(ALICE, png((1, 2, 3)), guild_id=GUILD, source="generated",
                                 prompt="crash prompt")
    elif operation == "delete":
        await veil.images.delete(image_id, Viewer(ALICE))
    elif operation == "forget":
        await veil.privacy.forget(ALICE)
    elif operation == "purge":
        await veil.moderation.purge(Viewer(MOD, guild_id=GUILD, is_moderator=True), ALICE)
    elif operation == "rotate":
        await veil.rotate_master_key()
    await veil.close()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2], sys.argv[3] if len(sys.argv) > 3 else None))
