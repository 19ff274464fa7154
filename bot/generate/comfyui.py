"""A generator backed by ComfyUI: a workflow template in, PNGs out, nothing left behind.

Each image of a request is one prompt on the ComfyUI server (``POST /prompt`` with our client
id), so image ``k`` keeps its own seed (``GenerationRequest.seed_of``) and can be drawn again
alone. Progress comes from the ``/ws`` websocket (``progress``, ``executing``,
``execution_success``, ``execution_error``, ``execution_interrupted``). The result comes either
as binary frames from a ``SaveImageWebsocket`` node (the default workflow: nothing is written to
the server's disk) or from ``/history/{id}`` and ``/view`` for a workflow that saves files.
Afterwards the prompt is deleted from the server's history (``POST /history``), whatever
happened, so the prompt does not stay on the generation server.

The workflow is a JSON template in ComfyUI's API format: strings ``{{prompt}}``, ``{{seed}}``,
... are filled in (``PLACEHOLDERS``). A string that is exactly one placeholder becomes the
value itself (a number stays a number); inside a longer string the value is inserted as text.

Every failure becomes ``GeneratorUnavailable`` with a message for the Discord user that never
quotes the prompt or the server's own error text (which may echo it). The PNGs a ``SaveImage``
node writes carry ``prompt`` and ``workflow`` text chunks: the sanitize step strips them.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
import struct
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import aiohttp

from bot.core.errors import GeneratorUnavailable
from bot.generate.base import (
    NOT_ANSWERING,
    UNREADABLE,
    GenerationRequest,
    ProgressCallback,
    refused,
    report,
    too_slow,
)

log = logging.getLogger("veil.generate.comfyui")

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
PLACEHOLDERS = ("prompt", "negative_prompt", "seed", "width", "height", "count", "checkpoint",
                "variation_seed", "variation_strength")
_PLACEHOLDER = re.compile(r"\{\{\s*([a-z_]+)\s*\}\}")
DEFAULT_CHECKPOINT = "v1-5-pruned-emaonly.safetensors"
# The node that sends its images over the websocket instead of saving them.
WEBSOCKET_SAVE_NODE = "SaveImageWebsocket"
# Nodes known to write files into ComfyUI's output folder, which no API call removes.
DISK_SAVE_NODES = ("SaveImage", "SaveAnimatedPNG", "SaveAnimatedWEBP")
# ComfyUI's binary websocket frames: a big-endian event number, then the payload. A preview
# image's payload starts with its format (1 JPEG, 2 PNG).
PREVIEW_IMAGE_EVENT = 1
PNG_FORMAT = 2
MAX_IMAGE_BYTES = 64 * 1024 * 1024
CONNECT_TIMEOUT_S = 5.0
SMALL_REQUEST_TIMEOUT_S = 10.0
CLEANUP_TIMEOUT_S = 3.0
RECONNECT_ATTEMPTS = 3
RECONNECT_PAUSE_S = 0.5
HEARTBEAT_S = 15.0
# Progress from the server stops short of 1.0: only a finished, checked batch reports 1.0.
MAX_FRACTION = 0.99

DROPPED = ("The connection to the image generator dropped before the image arrived. "
           "Try again in a minute.")
INTERRUPTED = "The image generator stopped this job before it finished. Try again in a minute."
NO_IMAGE = "The image generator finished without producing an image. Try again in a minute."


def _failed_in(node_type: object) -> str:
    step = f" (in its {node_type} step)" if isinstance(node_type, str) and node_type.isalnum() \
        else ""
    return f"The image generator failed while drawing{step}. Try again in a minute."


class WorkflowError(ValueError):
    """The workflow template cannot be used; the message says what to fix."""


@dataclass(frozen=True)
class Workflow:
    """A checked workflow template: the graph, and how its images come back."""

    graph: dict[str, Any] = field(repr=False)
    websocket_nodes: frozenset[str]
    disk_nodes: frozenset[str]

    @property
    def writes_to_disk(self) -> bool:
        return bool(self.disk_nodes)

    def fill(self, values: dict[str, object]) -> dict[str, Any]:
        return _fill(self.graph, values)


def default_workflow_text() -> str:
    return resources.files("bot.generate").joinpath("comfyui_workflow.json").read_text("utf-8")


def load_workflow(path: str | Path | None = None) -> Workflow:
    """Read and check a workflow template (the shipped default when ``path`` is None)."""
    where = "the default workflow" if path is None else f"the workflow file {path}"
    try:
        text = default_workflow_text() if path is None else Path(path).read_text("utf-8")
    except OSError as error:
        raise WorkflowError(f"Cannot read {where}: {error.strerror or error}.") from None
    try:
        graph = json.loads(text)
    except ValueError as error:
        raise WorkflowError(f"{where} is not valid JSON ({error}).") from None
    return check_workflow(graph, where)


def check_workflow(graph: object, where: str = "the workflow") -> Workflow:
    if not isinstance(graph, dict) or not graph or not all(
            isinstance(node, dict) and isinstance(node.get("class_type"), str)
            and isinstance(node.get("inputs", {}), dict) for node in graph.values()):
        raise WorkflowError(
            f"{where} is not in ComfyUI's API format (an object of nodes, each with "
            "class_type and inputs): in ComfyUI, export it with 'Export (API)'.")
    used = set(_PLACEHOLDER.findall(json.dumps(graph)))
    unknown = sorted(used - set(PLACEHOLDERS))
    if unknown:
        raise WorkflowError(f"{where} uses unknown placeholders {', '.join(unknown)}: Veil fills "
                            f"in {', '.join('{{' + p + '}}' for p in PLACEHOLDERS)}.")
    if "prompt" not in used:
        raise WorkflowError(f"{where} has no {{{{prompt}}}} placeholder, so the prompt would be "
                            "ignored: put it in the text of the positive CLIPTextEncode node.")
    classes = {key: node["class_type"] for key, node in graph.items()}
    websocket_nodes = frozenset(k for k, c in classes.items() if c == WEBSOCKET_SAVE_NODE)
    disk_nodes = frozenset(k for k, c in classes.items() if c in DISK_SAVE_NODES)
    if not websocket_nodes and not disk_nodes and "PreviewImage" not in classes.values():
        raise WorkflowError(f"{where} has no node that outputs images: end it with a "
                            f"{WEBSOCKET_SAVE_NODE} node (nothing is written to the server's "
                            "disk) or a SaveImage node.")
    return Workflow(graph, websocket_nodes, disk_nodes)


def _fill(value: Any, values: dict[str, object]) -> Any:
    if isinstance(value, dict):
        return {key: _fill(item, values) for key, item in value.items()}
    if isinstance(value, list):
        return [_fill(item, values) for item in value]
    if isinstance(value, str):
        whole = _PLACEHOLDER.fullmatch(value.strip())
        if whole:
            return values[whole.group(1)]
        return _PLACEHOLDER.sub(lambda m: str(values[m.group(1)]), value)
    return value


@dataclass
class _Job:
    """One prompt on the server and what the websocket told us about it."""

    prompt_id: str
    node: str | None = None
    started: bool = False
    done: bool = False
    failed: bool = False  # ended with an error: nothing left to stop
    images: list[bytes] = field(default_factory=list)


@dataclass
class _Connection:
    """One generation's websocket, under one client id (kept across reconnects)."""

    client_id: str
    socket: aiohttp.ClientWebSocketResponse | None = None


class ComfyUIGenerator:
    """Renders through a ComfyUI server, following each job on its websocket."""

    name = "comfyui"

    def __init__(
        self,
        base_url: str,
        *,
        workflow: Workflow | None = None,
        checkpoint: str = DEFAULT_CHECKPOINT,
        negative_prompt: str = "",
        session_factory: Callable[[], aiohttp.ClientSession] = aiohttp.ClientSession,
        timeout_s: float = 120.0,
        reconnect_pause_s: float = RECONNECT_PAUSE_S,
    ) -> None:
        if not base_url.startswith(("http://", "https://")):
            raise ValueError("The ComfyUI address must start with http:// or https://")
        if timeout_s <= 0:
            raise ValueError("timeout_s must be positive")
        self._base_url = base_url.rstrip("/")
        self._ws_url = "ws" + self._base_url[len("http"):] + "/ws"
        self.workflow = workflow or load_workflow()
        self._checkpoint = checkpoint
        self._negative_prompt = negative_prompt
        self._session_factory = session_factory
        self._session: aiohttp.ClientSession | None = None
        self._timeout_s = timeout_s
        self._reconnect_pause_s = reconnect_pause_s

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = self._session_factory()
        return self._session

    def graph_for(self, request: GenerationRequest, index: int) -> dict[str, Any]:
        """The filled-in workflow that draws image ``index`` of ``request``."""
        variation_seed = request.variation_seed_of(index)
        return self.workflow.fill({
            "prompt": request.prompt,
            "negative_prompt": self._negative_prompt,
            "seed": request.seed_of(index),
            "width": request.width,
            "height": request.height,
            "count": 1,
            "checkpoint": self._checkpoint,
            # Without a variation the second sampler runs at denoise 0, which returns its
            # input unchanged; the seed then does not matter.
            "variation_seed": variation_seed if variation_seed is not None else 0,
            "variation_strength": request.variation_strength if request.is_variation else 0.0,
        })

    async def generate(
        self, request: GenerationRequest, progress: ProgressCallback | None = None
    ) -> list[bytes]:
        session = self._client()
        await report(progress, 0.0, "starting")
        connection = _Connection(uuid.uuid4().hex)
        images: list[bytes] = []
        try:
            async with asyncio.timeout(self._timeout_s):
                await self._connect(session, connection)
                try:
                    for index in range(request.count):
                        images.append(await self._draw(session, connection, request, index,
                                                       progress))
                finally:
                    if connection.socket is not None:
                        await connection.socket.close()
        except TimeoutError:
            raise GeneratorUnavailable(too_slow(self._timeout_s)) from None
        await report(progress, 1.0, "done")
        return images

    async def _connect(self, session: aiohttp.ClientSession, connection: _Connection) -> None:
        try:
            connection.socket = await session.ws_connect(
                f"{self._ws_url}?clientId={connection.client_id}", heartbeat=HEARTBEAT_S,
                timeout=aiohttp.ClientWSTimeout(ws_close=CLEANUP_TIMEOUT_S),
                max_msg_size=MAX_IMAGE_BYTES)
        except (aiohttp.ClientError, OSError):
            raise GeneratorUnavailable(NOT_ANSWERING) from None

    async def _draw(self, session: aiohttp.ClientSession, connection: _Connection,
                    request: GenerationRequest, index: int,
                    progress: ProgressCallback | None) -> bytes:
        """Queue image ``index``, follow it to the end, fetch it, and clear it off the server."""
        graph = self.graph_for(request, index)
        job = _Job(await self._submit(session, connection.client_id, graph))
        try:
            await self._follow(session, connection, job, request.count, index, progress)
            images = job.images if self.workflow.websocket_nodes else \
                await self._fetch_from_history(session, job)
        finally:
            await self._clean_up(session, job)
        if not images:
            raise GeneratorUnavailable(NO_IMAGE)
        # One image per prompt: a workflow that makes more still gives one picture per seed.
        return images[0]

    async def _submit(self, session: aiohttp.ClientSession, client_id: str,
                      graph: dict[str, Any]) -> str:
        timeout = aiohttp.ClientTimeout(total=SMALL_REQUEST_TIMEOUT_S, connect=CONNECT_TIMEOUT_S)
        try:
            async with session.post(f"{self._base_url}/prompt",
                                    json={"prompt": graph, "client_id": client_id},
                                    timeout=timeout) as reply:
                answer = await reply.json(content_type=None) if reply.status in (200, 400) \
                    else None
                if reply.status != 200:
                    errors = answer.get("node_errors") if isinstance(answer, dict) else None
                    # Node ids only: the errors themselves quote the inputs, prompt included.
                    log.warning("ComfyUI refused the workflow (HTTP %s); nodes with errors: %s",
                                reply.status,
                                sorted(errors) if isinstance(errors, dict) else "none named")
                    raise GeneratorUnavailable(refused(reply.status))
        except (aiohttp.ClientError, ValueError, TimeoutError):
            # A stuck request only: the whole generation's limit arrives as a cancellation.
            raise GeneratorUnavailable(NOT_ANSWERING) from None
        prompt_id = answer.get("prompt_id") if isinstance(answer, dict) else None
        if not isinstance(prompt_id, str) or not prompt_id:
            raise GeneratorUnavailable(UNREADABLE)
        return prompt_id

    async def _follow(self, session: aiohttp.ClientSession, connection: _Connection, job: _Job,
                      count: int, index: int, progress: ProgressCallback | None) -> None:
        """Read the websocket until our job ends; reconnect (same client id) if it drops."""
        reported = 0.0
        attempts = 0
        while not job.done:
            assert connection.socket is not None
            message = await connection.socket.receive()
            if message.type == aiohttp.WSMsgType.TEXT:
                fraction = self._on_event(job, message.data)
                if fraction is not None and progress is not None:
                    overall = min((index + fraction) / count, MAX_FRACTION)
                    if overall > reported:
                        reported = overall
                        await report(progress, overall, "rendering")
            elif message.type == aiohttp.WSMsgType.BINARY:
                self._on_binary(job, message.data)
            elif message.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSING,
                                  aiohttp.WSMsgType.CLOSED, aiohttp.WSMsgType.ERROR):
                attempts += 1
                if attempts > RECONNECT_ATTEMPTS:
                    raise GeneratorUnavailable(DROPPED)
                log.info("ComfyUI websocket dropped; reconnecting (attempt %d)", attempts)
                await asyncio.sleep(self._reconnect_pause_s)
                with contextlib.suppress(GeneratorUnavailable):
                    await self._connect(session, connection)
                await self._catch_up(session, job)

    def _on_event(self, job: _Job, text: str) -> float | None:
        """Update ``job`` from one JSON event; returns the job's progress if the event has it."""
        try:
            event = json.loads(text)
        except ValueError:
            return None
        if not isinstance(event, dict) or not isinstance(event.get("data"), dict):
            return None
        kind, data = event.get("type"), event["data"]
        if data.get("prompt_id") != job.prompt_id:
            return None
        if kind == "execution_start":
            job.started = True
        elif kind == "executing":
            job.started = True
            job.node = data.get("node")
            if job.node is None:
                job.done = True
        elif kind == "execution_success":
            job.done = True
        elif kind == "execution_error":
            job.failed = True
            log.warning("ComfyUI job failed in node %s (%s): %s", data.get("node_id"),
                        data.get("node_type"), data.get("exception_type"))
            raise GeneratorUnavailable(_failed_in(data.get("node_type")))
        elif kind == "execution_interrupted":
            job.failed = True
            raise GeneratorUnavailable(INTERRUPTED)
        elif kind == "progress":
            value, most = data.get("value"), data.get("max")
            if isinstance(value, int | float) and isinstance(most, int | float) and most > 0:
                return min(max(value / most, 0.0), 1.0)
        return None

    def _on_binary(self, job: _Job, data: bytes) -> None:
        """Keep a PNG sent by our job's websocket save node; ignore sampler previews."""
        if job.node not in self.workflow.websocket_nodes or len(data) < 8:
            return
        event, image_format = struct.unpack(">II", data[:8])
        if event == PREVIEW_IMAGE_EVENT and image_format == PNG_FORMAT:
            image = bytes(data[8:])
            if not image.startswith(PNG_SIGNATURE):
                raise GeneratorUnavailable(UNREADABLE)
            job.images.append(image)

    async def _history(self, session: aiohttp.ClientSession, job: _Job) -> dict[str, Any] | None:
        timeout = aiohttp.ClientTimeout(total=SMALL_REQUEST_TIMEOUT_S)
        try:
            async with session.get(f"{self._base_url}/history/{job.prompt_id}",
                                   timeout=timeout) as reply:
                answer = await reply.json(content_type=None) if reply.status == 200 else None
        except (aiohttp.ClientError, ValueError, TimeoutError):
            raise GeneratorUnavailable(NOT_ANSWERING) from None
        entry = answer.get(job.prompt_id) if isinstance(answer, dict) else None
        return entry if isinstance(entry, dict) else None

    async def _catch_up(self, session: aiohttp.ClientSession, job: _Job) -> None:
        """After a reconnect: did the job end while we were away? Its history says so."""
        entry = await self._history(session, job)
        if entry is None:
            return  # still queued or running: its events will come on the new socket
        found = entry.get("status")
        status: dict[str, Any] = found if isinstance(found, dict) else {}
        if status.get("status_str") == "error":
            job.failed = True
            raise GeneratorUnavailable(_failed_in(None))
        if status.get("completed") or status.get("status_str") == "success":
            if self.workflow.websocket_nodes:
                # Its images went over the socket that dropped: they are gone.
                raise GeneratorUnavailable(DROPPED)
            job.done = True

    async def _fetch_from_history(self, session: aiohttp.ClientSession,
                                  job: _Job) -> list[bytes]:
        entry = await self._history(session, job)
        outputs = entry.get("outputs") if entry is not None else None
        if not isinstance(outputs, dict):
            raise GeneratorUnavailable(UNREADABLE)
        images = []
        for node_id in sorted(outputs, key=_node_order):
            listed = outputs[node_id].get("images") if isinstance(outputs[node_id], dict) \
                else None
            for item in listed if isinstance(listed, list) else []:
                if isinstance(item, dict) and isinstance(item.get("filename"), str):
                    images.append(await self._view(session, item))
        return images

    async def _view(self, session: aiohttp.ClientSession, item: dict[str, Any]) -> bytes:
        query = {"filename": item["filename"], "subfolder": str(item.get("subfolder", "")),
                 "type": str(item.get("type", "output"))}
        timeout = aiohttp.ClientTimeout(total=SMALL_REQUEST_TIMEOUT_S * 3)
        try:
            async with session.get(f"{self._base_url}/view", params=query,
                                   timeout=timeout) as reply:
                if reply.status != 200:
                    raise GeneratorUnavailable(refused(reply.status))
                data = await reply.content.read(MAX_IMAGE_BYTES + 1)
        except (aiohttp.ClientError, TimeoutError):
            raise GeneratorUnavailable(NOT_ANSWERING) from None
        if len(data) > MAX_IMAGE_BYTES or not data.startswith(PNG_SIGNATURE):
            raise GeneratorUnavailable(UNREADABLE)
        return data

    async def _clean_up(self, session: aiohttp.ClientSession, job: _Job) -> None:
        """Take the job off the server whatever happened: out of the queue if it still waits,
        stopped if it still runs (only ours: the interrupt names our prompt), and out of the
        history, which keeps the whole prompt. Best effort, briefly: the server may be gone.
        Shielded, so a cancelled generation still cleans up after itself."""
        await asyncio.shield(self._clean_up_now(session, job))

    async def _clean_up_now(self, session: aiohttp.ClientSession, job: _Job) -> None:
        timeout = aiohttp.ClientTimeout(total=CLEANUP_TIMEOUT_S)
        calls: list[tuple[str, dict[str, object]]] = []
        if not job.done and not job.failed:
            calls.append(("/queue", {"delete": [job.prompt_id]}))
            if job.started:
                calls.append(("/interrupt", {"prompt_id": job.prompt_id}))
        calls.append(("/history", {"delete": [job.prompt_id]}))
        for path, body in calls:
            try:
                async with session.post(f"{self._base_url}{path}", json=body, timeout=timeout):
                    pass
            except (aiohttp.ClientError, TimeoutError):
                log.warning("Could not clear a finished job off the ComfyUI server (%s)", path)

    @property
    def url(self) -> str:
        return self._base_url

    async def startup_warnings(self) -> list[str]:
        """What an operator should hear at start-up: an unreachable server (named, so it can be
        fixed; Veil still starts and /imagine offers Try again), or a workflow that leaves
        files on the server's disk."""
        warnings = []
        if self.workflow.writes_to_disk:
            warnings.append(
                "The ComfyUI workflow saves images with a SaveImage node: those files stay in "
                "ComfyUI's output folder (no API removes them). Use a SaveImageWebsocket node "
                "to keep nothing on the server's disk.")
        timeout = aiohttp.ClientTimeout(total=CONNECT_TIMEOUT_S)
        try:
            async with self._client().get(f"{self._base_url}/system_stats",
                                          timeout=timeout) as reply:
                if reply.status != 200:
                    warnings.append(f"ComfyUI at {self._base_url} answered HTTP {reply.status}:"
                                    " is that address really ComfyUI?")
        except (aiohttp.ClientError, TimeoutError):
            warnings.append(f"ComfyUI at {self._base_url} is not reachable now. Veil starts "
                            "anyway; /imagine offers Try again until it answers.")
        return warnings

    async def close(self) -> None:
        if self._session is not None and not self._session.closed:
            await self._session.close()
        self._session = None


def _node_order(node_id: str) -> tuple[int, str]:
    return (int(node_id), "") if node_id.isdigit() else (1 << 30, node_id)
