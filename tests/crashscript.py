"""Run one core operation in a process that a failpoint kills (see bot/core/failpoints.py).

Usage: python -m tests.crashscript DATA_DIR OPERATION [IMAGE_ID]
"""

from __future__ import annotations

import asyncio
import sys

from bot.core.models import Viewer
from bot.core.veil import Veil
from tests.conftest import ALICE, GUILD, MOD, png


async def main(data_dir: str, operation: str, image_id: str | None) -> None:
    veil = await Veil.open(data_dir)
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
