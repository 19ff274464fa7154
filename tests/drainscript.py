"""A retraction drainer in its own process, for the test that two of them on one data folder
delete every message exactly once. It claims outbox rows through the real ledger and deletes
each message with an HTTP DELETE to a stand-in for Discord on 127.0.0.1.

Usage: python -m tests.drainscript DATA_DIR BASE_URL
"""

from __future__ import annotations

import asyncio
import os
import sys

import aiohttp

from bot.core.veil import Veil


async def main(data_dir: str, base_url: str) -> None:
    veil = await Veil.open(data_dir, database_url=os.environ.get("VEIL_DATABASE_URL") or None)
    try:
        async with aiohttp.ClientSession() as session:
            idle = 0
            while idle < 3:
                jobs = await veil.ledger.claim(limit=5)
                idle = 0 if jobs else idle + 1
                for job in jobs:
                    url = f"{base_url}/channels/{job.channel_id}/messages/{job.message_id}"
                    async with session.delete(url, headers={"X-Worker": veil.ledger.worker}) \
                            as response:
                        if response.status in (204, 404):
                            await veil.ledger.done(job)
                await asyncio.sleep(0.01 if jobs else 0.2)
    finally:
        await veil.close()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2]))
