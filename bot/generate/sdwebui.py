"""A generator backed by a local Stable Diffusion WebUI (the AUTOMATIC1111 HTTP API).

One ``POST /sdapi/v1/txt2img`` renders the whole batch. It carries a task id of our own
(``force_task_id``), and while it runs ``POST /internal/progress`` is polled for that task alone,
so on a WebUI shared with other people one user's bar never shows another job's progress. A
server without per-task progress (``/internal/progress`` missing) falls back to the global
``GET /sdapi/v1/progress``. Every way the backend can fail (refused connection,
an error status, an unreadable answer, the wrong number of images, no answer in time) becomes
``GeneratorUnavailable`` with a message for the Discord user, never quoting the prompt or the
backend's own reply, which may echo it.

The returned PNGs still carry the WebUI's ``parameters`` text chunk (prompt included): the
sanitize step strips it before anything is stored or delivered.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import json
import uuid
from collections.abc import Callable
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

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
# Four 2048x2048 PNGs in base64 stay well below this; anything bigger is not an answer we want.
MAX_RESPONSE_BYTES = 256 * 1024 * 1024
# Polls and the interrupt are small requests: if one hangs, skip it rather than wait.
SMALL_REQUEST_TIMEOUT_S = 5.0
# A backend that cannot even accept a connection in this time is down, not busy.
CONNECT_TIMEOUT_S = 5.0
INTERRUPT_TIMEOUT_S = 2.0
# Progress from the backend stops short of 1.0: only a finished, checked batch reports 1.0.
MAX_POLLED_FRACTION = 0.99



def _wrong_count(got: int, wanted: int) -> str:
    return (
        f"The image generator returned {got} image{'s' if got != 1 else ''} "
        f"instead of {wanted}. Try again in a minute."
    )


def decode_images(body: bytes, count: int) -> list[bytes]:
    """Turn a txt2img answer into exactly ``count`` PNGs, or raise ``GeneratorUnavailable``."""
    try:
        answer = json.loads(body)
    except ValueError:
        # ``from None``: a JSON error keeps the whole document, which may contain the prompt.
        raise GeneratorUnavailable(UNREADABLE) from None
    encoded = answer.get("images") if isinstance(answer, dict) else None
    if not isinstance(encoded, list) or not all(isinstance(item, str) for item in encoded):
        raise GeneratorUnavailable(UNREADABLE)
    if len(encoded) != count:
        raise GeneratorUnavailable(_wrong_count(len(encoded), count))
    images = []
    for item in encoded:
        # Some WebUI versions and proxies send data URLs instead of bare base64.
        _, _, data = item.rpartition(",")
        try:
            image = base64.b64decode(data, validate=True)
        except (binascii.Error, ValueError):
            raise GeneratorUnavailable(UNREADABLE) from None
        if not image.startswith(PNG_SIGNATURE):
            raise GeneratorUnavailable(UNREADABLE)
        images.append(image)
    return images


def _polled_fraction(answer: Any) -> float | None:
    """The progress fraction in a ``/sdapi/v1/progress`` answer, or None if it has none."""
    if not isinstance(answer, dict):
        return None
    fraction = answer.get("progress")
    if isinstance(fraction, bool) or not isinstance(fraction, int | float):
        return None
    return min(max(float(fraction), 0.0), MAX_POLLED_FRACTION)


class _Task:
    """One txt2img call as the WebUI knows it: our task id and what polling learnt about it."""

    def __init__(self, task_id: str) -> None:
        self.id = task_id
        self.per_task: bool | None = None  # None until the server has answered once
        self.active = False


class SDWebUIGenerator:
    """Renders through a Stable Diffusion WebUI started with ``--api``."""

    name = "sdwebui"

    def __init__(
        self,
        base_url: str,
        *,
        session_factory: Callable[[], aiohttp.ClientSession] = aiohttp.ClientSession,
        timeout_s: float = 120.0,
        poll_interval_s: float = 1.0,
        steps: int = 20,
        cfg_scale: float = 7.0,
        sampler_name: str | None = None,
        negative_prompt: str = "",
    ) -> None:
        if not base_url.startswith(("http://", "https://")):
            raise ValueError(
                "The Stable Diffusion WebUI address must start with http:// or https://"
            )
        if timeout_s <= 0 or poll_interval_s <= 0:
            raise ValueError("timeout_s and poll_interval_s must be positive")
        self._base_url = base_url.rstrip("/")
        self._session_factory = session_factory
        self._session: aiohttp.ClientSession | None = None
        self._timeout_s = timeout_s
        self._poll_interval_s = poll_interval_s
        self._steps = steps
        self._cfg_scale = cfg_scale
        self._sampler_name = sampler_name
        self._negative_prompt = negative_prompt

    def _payload(self, request: GenerationRequest, task_id: str) -> dict[str, Any]:
        payload: dict[str, Any] = {
            "force_task_id": task_id,
            "prompt": request.prompt,
            "negative_prompt": self._negative_prompt,
            "seed": request.effective_seed,
            "batch_size": request.count,
            "n_iter": 1,
            "width": request.width,
            "height": request.height,
            "steps": self._steps,
            "cfg_scale": self._cfg_scale,
            # Private images must not pile up in the WebUI's own output folders.
            "save_images": False,
            "do_not_save_samples": True,
            "do_not_save_grid": True,
            "send_images": True,
            # One image per request slot, as PNG, whatever the WebUI's settings say.
            "override_settings": {"return_grid": False, "samples_format": "png"},
            "override_settings_restore_afterwards": True,
        }
        if request.is_variation:
            # With a variation strength the WebUI keeps one seed for the whole batch and counts
            # the subseed up per image: exactly GenerationRequest's variation semantics.
            payload["subseed"] = request.variation_seed_of(0)
            payload["subseed_strength"] = request.variation_strength
        if self._sampler_name:
            payload["sampler_name"] = self._sampler_name
        return payload

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = self._session_factory()
        return self._session

    async def generate(
        self, request: GenerationRequest, progress: ProgressCallback | None = None
    ) -> list[bytes]:
        session = self._client()
        await report(progress, 0.0, "starting")
        task = _Task("veil-" + uuid.uuid4().hex)
        try:
            async with asyncio.timeout(self._timeout_s):
                body = await self._render(session, self._payload(request, task.id), progress,
                                          task)
        except TimeoutError:
            await self._interrupt(session, task)
            raise GeneratorUnavailable(too_slow(self._timeout_s)) from None
        except asyncio.CancelledError:
            await self._interrupt(session, task)
            raise
        # Decoding megabytes of JSON and base64 would stall the event loop; do it on a thread.
        images = await asyncio.to_thread(decode_images, body, request.count)
        await report(progress, 1.0, "done")
        return images

    async def _render(
        self,
        session: aiohttp.ClientSession,
        payload: dict[str, Any],
        progress: ProgressCallback | None,
        task: _Task,
    ) -> bytes:
        """Run txt2img while polling progress; return the raw answer once txt2img finishes."""
        render = asyncio.create_task(self._txt2img(session, payload))
        poll = asyncio.create_task(self._poll(session, progress, task))
        try:
            if poll is not None:
                await asyncio.wait((render, poll), return_when=asyncio.FIRST_COMPLETED)
                # Polling only stops early when the caller's progress callback raised.
                error = poll.exception() if poll.done() else None
                if error is not None:
                    raise error
            return await render
        finally:
            children = [child for child in (render, poll) if child is not None]
            for child in children:
                child.cancel()
            await asyncio.gather(*children, return_exceptions=True)

    async def _txt2img(self, session: aiohttp.ClientSession, payload: dict[str, Any]) -> bytes:
        url = f"{self._base_url}/sdapi/v1/txt2img"
        # No total limit here: generate() bounds the whole exchange, polls included.
        timeout = aiohttp.ClientTimeout(total=None, connect=CONNECT_TIMEOUT_S)
        try:
            async with session.post(url, json=payload, timeout=timeout) as reply:
                if reply.status != 200:
                    raise GeneratorUnavailable(refused(reply.status))
                body = bytearray()
                async for chunk in reply.content.iter_chunked(1 << 16):
                    body += chunk
                    if len(body) > MAX_RESPONSE_BYTES:
                        raise GeneratorUnavailable(UNREADABLE)
                return bytes(body)
        except aiohttp.ConnectionTimeoutError:
            raise GeneratorUnavailable(NOT_ANSWERING) from None
        except TimeoutError:
            raise
        except aiohttp.ClientPayloadError:
            raise GeneratorUnavailable(UNREADABLE) from None
        except aiohttp.ClientError as error:
            raise GeneratorUnavailable(NOT_ANSWERING) from error

    async def _poll(self, session: aiohttp.ClientSession, progress: ProgressCallback | None,
                    task: _Task) -> None:
        """Follow our task (forwarding its progress, rising only) until cancelled; polling is
        best effort. Without a listener it still learns whether our task runs, so a timeout
        interrupts only our own work."""
        timeout = aiohttp.ClientTimeout(total=SMALL_REQUEST_TIMEOUT_S)
        reported = 0.0
        while True:
            await asyncio.sleep(self._poll_interval_s)
            try:
                fraction = await self._task_progress(session, task, timeout)
            except (aiohttp.ClientError, TimeoutError, ValueError):
                continue
            if progress is not None and fraction is not None and fraction > reported:
                reported = fraction
                await report(progress, fraction, "rendering")

    async def _task_progress(self, session: aiohttp.ClientSession, task: _Task,
                             limit: aiohttp.ClientTimeout) -> float | None:
        """Our task's progress from ``/internal/progress``; the global figure if the server
        has no per-task progress; None while the task waits or the answer says nothing."""
        if task.per_task is not False:
            body = {"id_task": task.id, "id_live_preview": -1, "live_preview": False}
            async with session.post(f"{self._base_url}/internal/progress", json=body,
                                    timeout=limit) as reply:
                if reply.status in (404, 405):
                    task.per_task = False
                elif reply.status == 200:
                    task.per_task = True
                    answer = await reply.json(content_type=None)
                    if isinstance(answer, dict):
                        task.active = bool(answer.get("active"))
                    return _polled_fraction(answer) if task.active else None
                else:
                    return None
        url = f"{self._base_url}/sdapi/v1/progress?skip_current_image=true"
        async with session.get(url, timeout=limit) as reply:
            answer = await reply.json(content_type=None) if reply.status == 200 else None
        return _polled_fraction(answer)

    async def _interrupt(self, session: aiohttp.ClientSession, task: _Task) -> None:
        """Ask the WebUI to stop the batch nobody is waiting for any more, if it still listens.
        The WebUI's interrupt stops whatever runs: when per-task progress says ours is not
        running (still queued behind someone else's), another person's job is left alone."""
        if task.per_task and not task.active:
            return
        timeout = aiohttp.ClientTimeout(total=INTERRUPT_TIMEOUT_S)
        with contextlib.suppress(aiohttp.ClientError, TimeoutError):
            async with session.post(f"{self._base_url}/sdapi/v1/interrupt", timeout=timeout):
                pass

    @property
    def url(self) -> str:
        return self._base_url

    async def startup_warnings(self) -> list[str]:
        """An unreachable WebUI is named at start-up; Veil still starts and offers Try again."""
        timeout = aiohttp.ClientTimeout(total=CONNECT_TIMEOUT_S)
        try:
            async with self._client().get(f"{self._base_url}/sdapi/v1/progress",
                                          timeout=timeout) as reply:
                if reply.status != 200:
                    return [f"The Stable Diffusion WebUI at {self._base_url} answered HTTP "
                            f"{reply.status}: was it started with --api?"]
        except (aiohttp.ClientError, TimeoutError):
            return [f"The Stable Diffusion WebUI at {self._base_url} is not reachable now. Veil "
                    "starts anyway; /imagine offers Try again until it answers."]
        return []

    async def close(self) -> None:
        if self._session is not None and not self._session.closed:
            await self._session.close()
        self._session = None
