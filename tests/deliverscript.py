"""Send one copy the way the bot does and die between Discord's answer and the record.

The pending row is written, the DM is posted to the Discord double's REST API, and the
``deliver:sent`` failpoint (armed by the test) kills the process before the copy is recorded.

Usage: python -m tests.deliverscript DATA_DIR API_BASE BOT_TOKEN USER_ID IMAGE_ID
"""

from __future__ import annotations

import asyncio
import json
import os
import sys

import aiohttp

from bot.core import failpoints
from bot.core.ledger import OWNER
from bot.core.veil import Veil


async def main(data_dir: str, api: str, token: str, user_id: str, public_id: str) -> None:
    veil = await Veil.open(data_dir, database_url=os.environ.get("VEIL_DATABASE_URL") or None)
    try:
        await send_and_die(veil, api, token, user_id, public_id)
    finally:
        await veil.close()  # an error above must end the process, not leave its db thread


async def send_and_die(veil: Veil, api: str, token: str, user_id: str, public_id: str) -> None:
    image = await veil.ctx.image(public_id)
    content = await veil.images.decrypt_unchecked(image)
    headers = {"Authorization": f"Bot {token}"}
    async with aiohttp.ClientSession(headers=headers) as session:
        async with session.post(f"{api}/users/@me/channels",
                                json={"recipient_id": user_id}) as response:
            dm = (await response.json())["id"]
        await veil.ledger.begin([image], recipient_id=int(user_id), basis=OWNER, kind="dm",
                                channel_id=int(dm))
        form = aiohttp.FormData()
        form.add_field("payload_json", json.dumps({
            "content": "your image", "attachments": [{"id": 0, "filename": content.filename}]}),
            content_type="application/json")
        form.add_field("files[0]", content.data, filename=content.filename,
                       content_type=image.mime)
        async with session.post(f"{api}/channels/{dm}/messages", data=form) as response:
            assert response.status == 200, await response.text()
    failpoints.reach("deliver:sent")


if __name__ == "__main__":
    asyncio.run(main(*sys.argv[1:6]))
