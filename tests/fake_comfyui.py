"""A fake ComfyUI server on a real socket on 127.0.0.1: HTTP and the ``/ws`` websocket.

It speaks the parts of ComfyUI's API Veil uses, shaped after ComfyUI's own ``server.py``:
``POST /prompt`` (``{"prompt": graph, "client_id": ...}`` -> ``{"prompt_id", "number",
"node_errors"}``), JSON events ``{"type", "data"}`` on ``/ws?clientId=...`` sent to the client
that queued the prompt, binary frames (a big-endian event number 1, the format 2 = PNG, the
bytes) from a ``SaveImageWebsocket`` node, ``GET /history/{id}``, ``POST /history`` with
``{"delete": [...]}``, ``GET /view``, ``POST /queue`` and ``POST /interrupt``.

It "executes" a graph node by node in key order, one prompt at a time like one GPU, sending
``execution_start``, ``executing`` per node, ``progress`` per sampler step, and
``executing`` with node None plus ``execution_success`` at the end. ``mode`` makes it misbehave:
``fail`` (the sampler raises, with the prompt in the exception text as real errors do),
``slow`` (the sampler waits until released or interrupted), ``drop`` (the server closes the
client's websocket during sampling, then finishes anyway), ``drop_at_save`` (closes it just
before the images go out, so they are lost), ``refuse`` (``/prompt`` answers 400
with node errors quoting the inputs).
"""

from __future__ import annotations

import asyncio
import io
import json
import struct
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from aiohttp import WSMsgType, web
from PIL import Image
from PIL.PngImagePlugin import PngInfo

from tests.loopback import serving


def comfy_png(graph: dict[str, Any], seed: int, width: int, height: int) -> bytes:
    """A PNG like ComfyUI's SaveImage writes: ``prompt`` and ``workflow`` text chunks."""
    colour = (seed * 37 % 256, seed * 91 % 256, seed * 13 % 256)
    image = Image.new("RGB", (width, height), colour)
    info = PngInfo()
    info.add_text("prompt", json.dumps(graph))
    info.add_text("workflow", json.dumps({"nodes": list(graph), "extra": graph}))
    buffer = io.BytesIO()
    image.save(buffer, "PNG", pnginfo=info)
    return buffer.getvalue()


class FakeComfyUI:
    def __init__(self) -> None:
        self.mode = "ok"
        self.steps = 4
        self.step_seconds = 0.01
        self.sockets: dict[str, web.WebSocketResponse] = {}
        self.connections = 0
        self.graphs: list[dict[str, Any]] = []
        self.client_ids: list[str] = []
        self.history: dict[str, dict[str, Any]] = {}
        self.finished: list[str] = []
        self.history_deletes: list[str] = []
        self.queue_deletes: list[str] = []
        self.interrupts: list[object] = []
        self.files: dict[str, bytes] = {}
        self.release = asyncio.Event()
        self.running: str | None = None
        self._interrupted: set[str] = set()
        self._gpu = asyncio.Lock()
        self._tasks: set[asyncio.Task] = set()

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/ws", self.websocket)
        app.router.add_post("/prompt", self.post_prompt)
        app.router.add_get("/history/{prompt_id}", self.get_history)
        app.router.add_post("/history", self.post_history)
        app.router.add_post("/queue", self.post_queue)
        app.router.add_post("/interrupt", self.post_interrupt)
        app.router.add_get("/view", self.view)
        app.router.add_get("/system_stats", self.system_stats)
        return app

    @property
    def kept_prompts(self) -> list[str]:
        """Prompts still in the server's history: what a later visitor could read."""
        return list(self.history)

    # HTTP ---------------------------------------------------------------------------------

    async def websocket(self, request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        sid = request.query.get("clientId") or uuid.uuid4().hex
        self.sockets[sid] = ws
        self.connections += 1
        try:
            await ws.send_json({"type": "status", "data": {"status": {"exec_info": {
                "queue_remaining": 0}}, "sid": sid}})
            async for message in ws:
                if message.type == WSMsgType.ERROR:
                    break
        finally:
            if self.sockets.get(sid) is ws:
                del self.sockets[sid]
        return ws

    async def post_prompt(self, request: web.Request) -> web.Response:
        body = await request.json()
        graph, client_id = body.get("prompt"), body.get("client_id")
        if self.mode == "refuse":
            texts = [n["inputs"].get("text") for n in graph.values()]
            return web.json_response({"error": {"message": f"invalid prompt {texts}"},
                                      "node_errors": {"4": {"errors": texts}}}, status=400)
        prompt_id = str(uuid.uuid4())
        self.graphs.append(graph)
        self.client_ids.append(client_id)
        task = asyncio.create_task(self._execute(prompt_id, graph, client_id))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return web.json_response({"prompt_id": prompt_id, "number": len(self.graphs),
                                  "node_errors": {}})

    async def get_history(self, request: web.Request) -> web.Response:
        prompt_id = request.match_info["prompt_id"]
        entry = self.history.get(prompt_id)
        return web.json_response({prompt_id: entry} if entry is not None else {})

    async def post_history(self, request: web.Request) -> web.Response:
        body = await request.json()
        for prompt_id in body.get("delete", []):
            self.history_deletes.append(prompt_id)
            self.history.pop(prompt_id, None)
        return web.Response()

    async def post_queue(self, request: web.Request) -> web.Response:
        body = await request.json()
        self.queue_deletes.extend(body.get("delete", []))
        return web.Response()

    async def post_interrupt(self, request: web.Request) -> web.Response:
        body = await request.json() if request.can_read_body else {}
        self.interrupts.append(body.get("prompt_id"))
        if self.running is not None and body.get("prompt_id") in (None, self.running):
            self._interrupted.add(self.running)
            self.release.set()
        return web.Response()

    async def view(self, request: web.Request) -> web.Response:
        data = self.files.get(request.query.get("filename", ""))
        if data is None or request.query.get("type") != "output":
            return web.Response(status=404)
        return web.Response(body=data, content_type="image/png")

    async def system_stats(self, request: web.Request) -> web.Response:
        return web.json_response({"system": {"comfyui_version": "fake"}, "devices": []})

    # Execution ----------------------------------------------------------------------------

    async def _send(self, client_id: str, kind: str, data: dict[str, Any]) -> None:
        ws = self.sockets.get(client_id)
        if ws is not None and not ws.closed:
            try:
                await ws.send_json({"type": kind, "data": data})
            except ConnectionError:
                pass

    async def _send_image(self, client_id: str, png: bytes) -> None:
        ws = self.sockets.get(client_id)
        if ws is not None and not ws.closed:
            await ws.send_bytes(struct.pack(">II", 1, 2) + png)

    async def _send_preview(self, client_id: str) -> None:
        """A sampler's latent preview, as ComfyUI sends it with previews on: a JPEG frame."""
        ws = self.sockets.get(client_id)
        if ws is not None and not ws.closed:
            buffer = io.BytesIO()
            Image.new("RGB", (8, 8), (9, 9, 9)).save(buffer, "JPEG")
            await ws.send_bytes(struct.pack(">II", 1, 1) + buffer.getvalue())

    async def _execute(self, prompt_id: str, graph: dict[str, Any], client_id: str) -> None:
        async with self._gpu:
            self.running = prompt_id
            try:
                await self._run(prompt_id, graph, client_id)
            finally:
                self.running = None

    async def _run(self, prompt_id: str, graph: dict[str, Any], client_id: str) -> None:
        ids = {"prompt_id": prompt_id}
        entry: dict[str, Any] = {"prompt": [0, prompt_id, graph, {"client_id": client_id}, []],
                                 "outputs": {}, "status": {"status_str": "success",
                                                           "completed": False, "messages": []}}
        await self._send(client_id, "execution_start", ids)
        size, seed = (64, 64), 0
        for node_id in sorted(graph, key=int):
            node = graph[node_id]
            kind = node["class_type"]
            await self._send(client_id, "executing", {"node": node_id, **ids})
            if kind == "EmptyLatentImage":
                size = (node["inputs"]["width"], node["inputs"]["height"])
            elif kind == "KSampler" and node["inputs"]["denoise"] > 0:
                seed = seed or node["inputs"]["seed"]
                for step in range(1, self.steps + 1):
                    if self.mode == "drop" and step == 2 and client_id in self.sockets:
                        await self.sockets[client_id].close()
                    if self.mode == "slow":
                        await self.release.wait()
                    if prompt_id in self._interrupted:
                        await self._send(client_id, "execution_interrupted",
                                         {"node_id": node_id, "node_type": kind, **ids})
                        return
                    if self.mode == "fail":
                        text = graph["2"]["inputs"]["text"]
                        entry["status"] = {"status_str": "error", "completed": False,
                                           "messages": [["execution_error", {"text": text}]]}
                        self.history[prompt_id] = entry
                        await self._send(client_id, "execution_error", {
                            **ids, "node_id": node_id, "node_type": kind,
                            "exception_message": f"CUDA out of memory while drawing {text}",
                            "exception_type": "torch.OutOfMemoryError",
                            "traceback": [f"prompt was {text}"]})
                        return
                    await asyncio.sleep(self.step_seconds)
                    await self._send_preview(client_id)
                    await self._send(client_id, "progress", {"value": step, "max": self.steps,
                                                             "node": node_id, **ids})
            elif kind == "SaveImageWebsocket":
                if self.mode == "drop_at_save" and client_id in self.sockets:
                    await self.sockets[client_id].close()
                await self._send_image(client_id, comfy_png(graph, seed, *size))
            elif kind == "SaveImage":
                name = f"ComfyUI_{len(self.files) + 1:05}_.png"
                self.files[name] = comfy_png(graph, seed, *size)
                entry["outputs"][node_id] = {"images": [
                    {"filename": name, "subfolder": "", "type": "output"}]}
        entry["status"]["completed"] = True
        self.history[prompt_id] = entry
        self.finished.append(prompt_id)
        await self._send(client_id, "executing", {"node": None, **ids})
        await self._send(client_id, "execution_success", {**ids, "timestamp": 0})

    async def stop(self) -> None:
        self.release.set()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)


@asynccontextmanager
async def running_comfyui() -> AsyncIterator[tuple[FakeComfyUI, str]]:
    """Serve a fresh fake on a free loopback port; yields it and its base URL."""
    fake = FakeComfyUI()
    async with serving(fake.app()) as url:
        try:
            yield fake, url
        finally:
            await fake.stop()
