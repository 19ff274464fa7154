"""The one-time export download: ``GET /x/<token>`` shows what is waiting and a button;
``POST /x/<token>`` spends it and streams the zip, decrypted chunk by chunk.

The page spends nothing, so a link checker, a preview fetcher or a second look does not use the
download up; only the button's POST does. Dead tokens answer the one 404 of the link server and
count against the same guessing throttle.
"""

from __future__ import annotations

from aiohttp import web

from bot.core.exports import ExportService
from bot.web.routes import LinkRoutes
from bot.web.security import ALLOWS_FORM, not_found
from bot.web.useragent import is_unfurler

ARCHIVE_NAME = "veil-export.zip"


class ExportRoutes:
    def __init__(self, exports: ExportService, links: LinkRoutes) -> None:
        self.exports = exports
        self.links = links  # its pages, clock and throttle are shared

    def add_to(self, app: web.Application) -> None:
        app.router.add_get("/x/{token}", self.page, name="export_page")
        app.router.add_post("/x/{token}", self.download, name="export_download")

    async def page(self, request: web.Request) -> web.StreamResponse:
        client = self.links._client(request)
        if (refusal := await self.links._refused(request, client)) is not None:
            return refusal
        token = request.match_info["token"]
        ready = await self.exports.ready(token)
        if ready is None:
            return await self.links._miss(request, client)
        await self.links._settle(request, client, found=True)
        pages = self.links.pages
        if is_unfurler(request.headers.get("User-Agent")):
            return web.Response(body=pages.for_unfurler(), content_type="text/html",
                                charset="utf-8")
        request[ALLOWS_FORM] = True
        return web.Response(body=pages.export_ready(token, ready.images, ready.byte_size,
                                                    ready.expires_at, self.links.clock()),
                            content_type="text/html", charset="utf-8")

    async def download(self, request: web.Request) -> web.StreamResponse:
        client = self.links._client(request)
        if (refusal := await self.links._refused(request, client)) is not None:
            return refusal
        token = request.match_info["token"]
        if is_unfurler(request.headers.get("User-Agent")):
            await self.links._settle(request, client, found=True)
            return not_found(self.links.pages)
        taken = await self.exports.take(token)
        if taken is None:
            return await self.links._miss(request, client)
        await self.links._settle(request, client, found=True)
        response = web.StreamResponse(headers={
            "Content-Type": "application/zip",
            "Content-Disposition": f'attachment; filename="{ARCHIVE_NAME}"'})
        response.content_length = taken.byte_size
        try:
            await response.prepare(request)
            async for chunk in taken.chunks:
                await response.write(chunk)
            await response.write_eof()
        finally:
            # Deletes the file whether the stream finished, broke or was cut by the client.
            await taken.chunks.aclose()  # type: ignore[attr-defined]
        return response
