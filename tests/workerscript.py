"""A second (third, ...) Veil process on a data folder that a test shares with others.

Usage: python -m tests.workerscript DATA_DIR load FOLDER FIRST_USER
  Reads every image in the folder over and over and stores a new image for a new user on each
  round (so new owner keys are wrapped while the test rotates the master key), until
  FOLDER/stop exists. Creates FOLDER/ready once open; prints a JSON summary at the end.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import traceback
from pathlib import Path

from bot.core.models import Viewer
from bot.core.veil import Veil
from tests.conftest import GUILD, png


async def load(data_dir: str, folder: Path, first_user: int) -> None:
    veil = await Veil.open(data_dir, database_url=os.environ.get("VEIL_DATABASE_URL") or None)
    known = [(r[0], r[1]) for r in await veil.ctx.db.fetchall(
        "SELECT public_id, owner_id FROM images")]
    created: list[str] = []
    reads = failures = rounds = 0
    (folder / "ready").touch()
    while not (folder / "stop").exists():
        for public_id, owner in known:
            try:
                await veil.images.open(public_id, Viewer(owner))
                reads += 1
            except Exception:
                failures += 1
                traceback.print_exc()
        user = first_user + rounds
        try:
            image = await veil.images.create(user, png((rounds % 250, 9, 9)), guild_id=GUILD,
                                             source="upload")
            known.append((image.public_id, user))
            created.append(image.public_id)
        except Exception:
            failures += 1
            traceback.print_exc()
        rounds += 1
    await veil.close()
    print(json.dumps({"reads": reads, "failures": failures, "created": created}))


if __name__ == "__main__":
    if sys.argv[2] == "load":
        asyncio.run(load(sys.argv[1], Path(sys.argv[3]), int(sys.argv[4])))
