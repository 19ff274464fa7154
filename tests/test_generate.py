"""Image generation: the procedural generator, the Stable Diffusion WebUI backend, the fair queue.

The WebUI backend is tested against a fake WebUI served by aiohttp on a real socket on
127.0.0.1, so connection handling, timeouts and polling run exactly as they would in production.
"""

from __future__ import annotations

import asyncio
import base64
import io
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest
from aiohttp import web
from PIL import Image, ImageChops, ImageStat
from PIL.PngImagePlugin import PngInfo

from bot.core.errors import GeneratorUnavailable, InvalidInput, QueueFull
from bot.generate import (
    GenerationQueue,
    GenerationRequest,
    Generator,
    ProceduralGenerator,
    Progress,
    SDWebUIGenerator,
    make_generator,
)
from tests.loopback import free_port, serving

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
TEXT_CHUNKS = {b"tEXt", b"zTXt", b"iTXt"}
SECRET_PROMPT = "a very private portrait of my neighbour"


def png_chunk_types(data: bytes) -> list[bytes]:
    """The chunk types of a PNG, read straight from its bytes."""
    assert data.startswith(PNG_SIGNATURE)
    types = []
    position = len(PNG_SIGNATURE)
    while position < len(data):
        length = int.from_bytes(data[position : position + 4], "big")
        types.append(data[position + 4 : position + 8])
        position += 12 + length
    return types


def open_png(data: bytes) -> Image.Image:
    image = Image.open(io.BytesIO(data))
    image.load()
    return image


class ProgressLog:
    """A progress callback that remembers every event."""

    def __init__(self) -> None:
        self.events: list[Progress] = []

    async def __call__(self, progress: Progress) -> None:
        self.events.append(progress)

    @property
    def fractions(self) -> list[float]:
        return [event.fraction for event in self.events]

    @property
    def stages(self) -> list[str]:
        return [event.stage for event in self.events]


# --- the procedural generator ------------------------------------------------------------------


@pytest.fixture
async def procedural() -> AsyncIterator[ProceduralGenerator]:
    generator = ProceduralGenerator()
    yield generator
    await generator.close()


async def test_same_prompt_and_seed_give_identical_bytes(
    procedural: ProceduralGenerator,
) -> None:
    request = GenerationRequest("a lighthouse in fog", count=2, seed=7, width=256, height=256)
    first = await procedural.generate(request)
    second = await ProceduralGenerator().generate(request)
    assert first == second


async def test_without_a_seed_the_same_prompt_still_gives_identical_bytes(
    procedural: ProceduralGenerator,
) -> None:
    request = GenerationRequest("a lighthouse in fog", width=256, height=256)
    assert request.effective_seed == GenerationRequest("a lighthouse in fog").effective_seed
    assert await procedural.generate(request) == await procedural.generate(request)


async def test_different_prompts_give_visibly_different_images(
    procedural: ProceduralGenerator,
) -> None:
    [lighthouse] = await procedural.generate(GenerationRequest("a lighthouse in fog"))
    [desert] = await procedural.generate(GenerationRequest("a red desert at noon"))
    difference = ImageChops.difference(open_png(lighthouse), open_png(desert))
    assert sum(ImageStat.Stat(difference).mean) / 3 > 20


async def test_a_different_seed_gives_a_different_image(procedural: ProceduralGenerator) -> None:
    [one] = await procedural.generate(
        GenerationRequest("tide pools", seed=1, width=256, height=256)
    )
    [two] = await procedural.generate(
        GenerationRequest("tide pools", seed=2, width=256, height=256)
    )
    assert one != two


@pytest.mark.parametrize("count", [1, 2, 3, 4])
async def test_a_batch_has_as_many_distinct_images_as_asked_for(
    procedural: ProceduralGenerator, count: int
) -> None:
    images = await procedural.generate(
        GenerationRequest("paper lanterns", count=count, width=192, height=192)
    )
    assert len(images) == count
    assert len(set(images)) == count


async def test_output_is_a_png_of_the_requested_size_without_any_text_chunk(
    procedural: ProceduralGenerator,
) -> None:
    [image] = await procedural.generate(GenerationRequest(SECRET_PROMPT, width=640, height=384))
    chunk_types = png_chunk_types(image)
    assert chunk_types[0] == b"IHDR" and chunk_types[-1] == b"IEND"
    assert not TEXT_CHUNKS & set(chunk_types)
    assert SECRET_PROMPT.encode() not in image
    decoded = open_png(image)
    assert decoded.format == "PNG" and decoded.size == (640, 384) and decoded.mode == "RGB"


async def test_progress_rises_once_per_image_and_ends_at_one(
    procedural: ProceduralGenerator,
) -> None:
    log = ProgressLog()
    await procedural.generate(
        GenerationRequest("harbour lights", count=3, width=128, height=128), log
    )
    assert log.fractions == sorted(log.fractions)
    assert log.fractions[-1] == 1.0
    assert len([stage for stage in log.stages if stage.startswith("rendering")]) == 3


async def test_rendering_leaves_the_event_loop_free(procedural: ProceduralGenerator) -> None:
    # Measured in the loop thread's own CPU time, not the clock: on a loaded machine the clock
    # also counts the time the thread waits for a core, which says nothing about Veil. Rendering
    # four images on the loop would cost it far more than the bound between two ticks.
    loop = asyncio.get_running_loop()
    cpu_gaps: list[float] = []
    done = asyncio.Event()

    async def ticker() -> None:
        last = time.thread_time()
        while not done.is_set():
            await asyncio.sleep(0.005)
            now = time.thread_time()
            cpu_gaps.append(now - last)
            last = now

    ticking = loop.create_task(ticker())
    await asyncio.sleep(0.02)
    await procedural.generate(GenerationRequest("a storm over wheat fields", count=4))
    done.set()
    await ticking
    assert len(cpu_gaps) > 10, "the generation was too quick to tell anything"
    assert max(cpu_gaps) < 0.02


@pytest.mark.parametrize(
    "options",
    [
        {"prompt": "   "},
        {"prompt": "x" * 5000},
        {"prompt": "cats", "count": 0},
        {"prompt": "cats", "count": 5},
        {"prompt": "cats", "width": 770},
        {"prompt": "cats", "height": 8},
        {"prompt": "cats", "seed": -1},
    ],
)
def test_a_request_outside_the_limits_is_refused_with_a_readable_message(
    options: dict[str, object],
) -> None:
    with pytest.raises(InvalidInput) as refusal:
        GenerationRequest(**options)  # type: ignore[arg-type]
    assert refusal.value.message.endswith(".")
    assert "x" * 50 not in refusal.value.message


async def test_a_closed_procedural_generator_refuses_new_work() -> None:
    generator = ProceduralGenerator()
    await generator.close()
    with pytest.raises(GeneratorUnavailable):
        await generator.generate(GenerationRequest("moss"))


# --- a fake Stable Diffusion WebUI on a real socket ----------------------------------------------


def webui_png(prompt: str, seed: int, index: int) -> bytes:
    """A PNG like the WebUI's: small, with the prompt in a ``parameters`` text chunk."""
    image = Image.new("RGB", (32, 32), (40 * index, 90, 200 - 40 * index))
    info = PngInfo()
    info.add_text("parameters", f"{prompt}\nSteps: 20, Sampler: Euler a, Seed: {seed + index}")
    buffer = io.BytesIO()
    image.save(buffer, "PNG", pnginfo=info)
    return buffer.getvalue()


class FakeWebUI:
    """Answers like AUTOMATIC1111's API; ``mode`` picks how it behaves on txt2img."""

    def __init__(self) -> None:
        self.mode = "ok"
        self.render_seconds = 0.15
        self.payloads: list[dict[str, object]] = []
        self.served: list[bytes] = []
        self.polls = 0
        self.interrupts = 0
        self.progress = 0.0
        self.release = asyncio.Event()
        self.received = asyncio.Event()
        # Per-task progress (``/internal/progress``), as recent WebUI versions have it.
        self.per_task = False
        self.task_polls: list[str] = []
        self.active_task: str | None = None

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_post("/sdapi/v1/txt2img", self.txt2img)
        app.router.add_get("/sdapi/v1/progress", self.progress_view)
        app.router.add_post("/internal/progress", self.task_progress)
        app.router.add_post("/sdapi/v1/interrupt", self.interrupt)
        return app

    async def txt2img(self, request: web.Request) -> web.StreamResponse:
        payload = await request.json()
        self.payloads.append(payload)
        self.received.set()
        if self.mode == "error":
            return web.json_response(
                {"detail": f"CUDA out of memory for {payload['prompt']}"}, status=500
            )
        if self.mode in ("slow", "behind_another_job"):
            if self.mode == "behind_another_job":
                self.progress = 0.8  # someone else's job, running before ours
            await asyncio.wait_for(self.release.wait(), timeout=30)
        self.active_task = payload.get("force_task_id")
        steps = 6
        for step in range(1, steps + 1):
            await asyncio.sleep(self.render_seconds / steps)
            self.progress = step / steps * 0.9
        self.progress = 0.0
        count = int(payload["batch_size"])
        if self.mode == "wrong_count":
            count -= 1
        self.served = [webui_png(payload["prompt"], payload["seed"], i) for i in range(count)]
        images = [base64.b64encode(png).decode() for png in self.served]
        if self.mode == "not_json":
            return web.Response(text=f"<html>Internal error: {payload['prompt']}</html>")
        if self.mode == "no_images":
            return web.json_response({"detail": "Not Found"})
        if self.mode == "bad_base64":
            images = ["%%%not base64%%%"] * count
        if self.mode == "not_png":
            images = [base64.b64encode(b"GIF89a" + bytes(40)).decode()] * count
        info = json.dumps({"prompt": payload["prompt"], "seed": payload["seed"]})
        return web.json_response({"images": images, "parameters": payload, "info": info})

    async def task_progress(self, request: web.Request) -> web.Response:
        if not self.per_task:
            return web.Response(status=404)
        task_id = (await request.json())["id_task"]
        self.task_polls.append(task_id)
        active = task_id == self.active_task
        return web.json_response({"active": active, "queued": not active, "completed": False,
                                  "progress": self.progress if active else None,
                                  "eta": None, "live_preview": None, "id_live_preview": -1,
                                  "textinfo": "Waiting..."})

    async def progress_view(self, request: web.Request) -> web.Response:
        assert request.query.get("skip_current_image") == "true"
        self.polls += 1
        return web.json_response(
            {"progress": self.progress, "eta_relative": 1.0, "state": {"job_count": 1}}
        )

    async def interrupt(self, request: web.Request) -> web.Response:
        self.interrupts += 1
        self.release.set()
        return web.json_response({})


@pytest.fixture
async def webui() -> AsyncIterator[tuple[FakeWebUI, str]]:
    fake = FakeWebUI()
    async with serving(fake.app()) as url:
        yield fake, f"{url}/"
        fake.release.set()


@pytest.fixture
async def sd_factory() -> AsyncIterator[Callable[..., SDWebUIGenerator]]:
    made: list[SDWebUIGenerator] = []

    def make(base_url: str, **options: float) -> SDWebUIGenerator:
        options.setdefault("poll_interval_s", 0.05)
        generator = SDWebUIGenerator(base_url, **options)  # type: ignore[arg-type]
        made.append(generator)
        return generator

    yield make
    for generator in made:
        await generator.close()


async def test_webui_images_come_back_exactly_as_the_webui_sent_them(
    webui: tuple[FakeWebUI, str], sd_factory: Callable[..., SDWebUIGenerator]
) -> None:
    fake, url = webui
    generator = sd_factory(url)
    request = GenerationRequest("a fox in snow", count=3, seed=1234, width=512, height=640)
    images = await generator.generate(request)
    assert images == fake.served and len(images) == 3
    # The WebUI's text chunk is still there: stripping it is the sanitize step's job.
    assert b"tEXt" in png_chunk_types(images[0])
    [payload] = fake.payloads
    assert payload["prompt"] == "a fox in snow" and payload["seed"] == 1234
    assert (payload["batch_size"], payload["width"], payload["height"]) == (3, 512, 640)
    assert payload["save_images"] is False


async def test_webui_gets_the_seed_derived_from_the_prompt_when_none_is_given(
    webui: tuple[FakeWebUI, str], sd_factory: Callable[..., SDWebUIGenerator]
) -> None:
    fake, url = webui
    request = GenerationRequest("a fox in snow")
    await sd_factory(url).generate(request)
    assert fake.payloads[0]["seed"] == request.effective_seed


async def test_webui_progress_is_polled_and_forwarded_rising_to_one(
    webui: tuple[FakeWebUI, str], sd_factory: Callable[..., SDWebUIGenerator]
) -> None:
    fake, url = webui
    log = ProgressLog()
    await sd_factory(url).generate(GenerationRequest("a fox in snow", count=2), log)
    assert fake.polls >= 2
    rendering = [event.fraction for event in log.events if event.stage == "rendering"]
    assert rendering and all(0.0 < fraction < 1.0 for fraction in rendering)
    assert log.fractions == sorted(log.fractions)
    assert log.events[-1] == Progress(1.0, "done")


async def test_webui_variations_keep_the_seed_and_send_a_subseed(
    webui: tuple[FakeWebUI, str], sd_factory: Callable[..., SDWebUIGenerator]
) -> None:
    fake, url = webui
    await sd_factory(url).generate(GenerationRequest("moss", count=2, seed=10, variation_seed=77,
                                                     variation_strength=0.25))
    await sd_factory(url).generate(GenerationRequest("moss", seed=10))
    varied, plain = fake.payloads
    assert (varied["seed"], varied["subseed"], varied["subseed_strength"]) == (10, 77, 0.25)
    assert "subseed" not in plain and plain["seed"] == 10


async def test_webui_per_task_progress_follows_our_own_task_only(
    webui: tuple[FakeWebUI, str], sd_factory: Callable[..., SDWebUIGenerator]
) -> None:
    fake, url = webui
    fake.per_task = True
    fake.render_seconds = 0.6
    log = ProgressLog()
    await sd_factory(url).generate(GenerationRequest("moss"), log)
    [payload] = fake.payloads
    task_id = payload["force_task_id"]
    assert task_id and set(fake.task_polls) == {task_id}
    assert fake.polls == 0, "with per-task progress the global figure is never asked"
    rising = [f for f in log.fractions if 0.0 < f < 1.0]
    assert rising and rising == sorted(rising)


async def test_webui_another_users_job_never_moves_our_bar_nor_gets_interrupted(
    webui: tuple[FakeWebUI, str], sd_factory: Callable[..., SDWebUIGenerator]
) -> None:
    fake, url = webui
    fake.per_task = True
    fake.mode = "behind_another_job"
    log = ProgressLog()
    with pytest.raises(GeneratorUnavailable, match="longer than"):
        await sd_factory(url, timeout_s=0.5).generate(GenerationRequest("moss"), log)
    assert len(fake.task_polls) >= 3
    assert log.fractions == [0.0], "the other job's 80% must not show as ours"
    assert fake.interrupts == 0, "the job that runs is not ours: leave it alone"


async def test_webui_that_is_down_is_reported_quickly_without_the_prompt(
    sd_factory: Callable[..., SDWebUIGenerator],
) -> None:
    generator = sd_factory(f"http://127.0.0.1:{free_port()}", timeout_s=10)
    started = time.monotonic()
    with pytest.raises(GeneratorUnavailable) as failure:
        await generator.generate(GenerationRequest(SECRET_PROMPT))
    assert time.monotonic() - started < 2
    assert failure.value.message == "The image generator is not answering. Try again in a minute."
    assert "private" not in str(failure.value)


async def test_webui_error_status_is_reported_without_echoing_its_body(
    webui: tuple[FakeWebUI, str], sd_factory: Callable[..., SDWebUIGenerator]
) -> None:
    fake, url = webui
    fake.mode = "error"
    with pytest.raises(GeneratorUnavailable) as failure:
        await sd_factory(url).generate(GenerationRequest(SECRET_PROMPT))
    assert "HTTP 500" in failure.value.message
    assert "private" not in failure.value.message and "CUDA" not in failure.value.message


async def test_webui_slower_than_the_timeout_is_abandoned_in_time_and_interrupted(
    webui: tuple[FakeWebUI, str], sd_factory: Callable[..., SDWebUIGenerator]
) -> None:
    fake, url = webui
    fake.mode = "slow"
    generator = sd_factory(url, timeout_s=0.5)
    started = time.monotonic()
    with pytest.raises(GeneratorUnavailable) as failure:
        await generator.generate(GenerationRequest(SECRET_PROMPT))
    assert 0.5 <= time.monotonic() - started < 1.5
    assert "longer than 0.5 seconds" in failure.value.message
    assert "private" not in failure.value.message
    assert fake.interrupts == 1


@pytest.mark.parametrize("mode", ["not_json", "no_images", "bad_base64", "not_png"])
async def test_webui_answer_that_cannot_be_read_is_reported_as_unreadable(
    webui: tuple[FakeWebUI, str], sd_factory: Callable[..., SDWebUIGenerator], mode: str
) -> None:
    fake, url = webui
    fake.mode = mode
    with pytest.raises(GeneratorUnavailable) as failure:
        await sd_factory(url).generate(GenerationRequest(SECRET_PROMPT, count=2))
    assert "could not read" in failure.value.message
    assert "private" not in failure.value.message
    # No chained error either: a JSON error would carry the whole answer, prompt included.
    error = failure.value
    assert error.__cause__ is None and (error.__context__ is None or error.__suppress_context__)


async def test_webui_returning_the_wrong_number_of_images_is_reported(
    webui: tuple[FakeWebUI, str], sd_factory: Callable[..., SDWebUIGenerator]
) -> None:
    fake, url = webui
    fake.mode = "wrong_count"
    with pytest.raises(GeneratorUnavailable) as failure:
        await sd_factory(url).generate(GenerationRequest("a fox in snow", count=3))
    assert "returned 2 images instead of 3" in failure.value.message


async def test_cancelling_a_webui_generation_interrupts_the_webui(
    webui: tuple[FakeWebUI, str], sd_factory: Callable[..., SDWebUIGenerator]
) -> None:
    fake, url = webui
    fake.mode = "slow"
    generating = asyncio.create_task(sd_factory(url).generate(GenerationRequest("a fox")))
    await fake.received.wait()
    generating.cancel()
    with pytest.raises(asyncio.CancelledError):
        await generating
    assert fake.interrupts == 1


async def test_closing_the_webui_generator_closes_its_http_session(
    webui: tuple[FakeWebUI, str], sd_factory: Callable[..., SDWebUIGenerator]
) -> None:
    _, url = webui
    generator = sd_factory(url)
    await generator.generate(GenerationRequest("a fox"))
    session = generator._session
    assert session is not None and not session.closed
    await generator.close()
    assert session.closed


# --- the factory -------------------------------------------------------------------------------


async def test_factory_builds_the_configured_generator() -> None:
    procedural = make_generator("procedural", sd_url=None, timeout_s=30)
    webui = make_generator("SDWebUI", sd_url="http://127.0.0.1:7860", timeout_s=30)
    assert isinstance(procedural, ProceduralGenerator) and isinstance(procedural, Generator)
    assert isinstance(webui, SDWebUIGenerator) and isinstance(webui, Generator)
    await procedural.close()
    await webui.close()


@pytest.mark.parametrize(
    ("kind", "sd_url", "hint"),
    [("dalle", None, "procedural, sdwebui"), ("sdwebui", None, "WebUI address")],
)
def test_factory_explains_a_setting_it_cannot_use(kind: str, sd_url: str | None, hint: str) -> None:
    with pytest.raises(ValueError, match=hint):
        make_generator(kind, sd_url=sd_url, timeout_s=30)


# --- the queue ---------------------------------------------------------------------------------


class GatedGenerator:
    """A generator whose every call waits until the test opens its gate."""

    name = "gated"

    def __init__(self) -> None:
        self.started: list[str] = []
        self.gates: dict[str, asyncio.Event] = {}
        self.failures: set[str] = set()

    async def generate(
        self,
        request: GenerationRequest,
        progress: Callable[[Progress], Awaitable[None]] | None = None,
    ) -> list[bytes]:
        self.started.append(request.prompt)
        gate = self.gates.setdefault(request.prompt, asyncio.Event())
        await gate.wait()
        if request.prompt in self.failures:
            raise GeneratorUnavailable(
                "The image generator is not answering. Try again in a minute."
            )
        return [request.prompt.encode()]

    def open(self, prompt: str) -> None:
        self.gates.setdefault(prompt, asyncio.Event()).set()


async def settle() -> None:
    """Let every ready task run until the line stops moving."""
    for _ in range(10):
        await asyncio.sleep(0)


def queued_positions(log: ProgressLog) -> list[int | None]:
    return [event.queue_position for event in log.events if event.stage.startswith("queued")]


async def test_a_user_over_the_limit_is_refused_with_the_limit_in_the_message() -> None:
    generator = GatedGenerator()
    queue = GenerationQueue(generator, per_user_limit=2)
    first = asyncio.create_task(queue.submit(1, GenerationRequest("one")))
    second = asyncio.create_task(queue.submit(1, GenerationRequest("two")))
    await settle()
    with pytest.raises(QueueFull) as refusal:
        await queue.submit(1, GenerationRequest("three"))
    assert "2 image requests" in refusal.value.message
    # Someone else still gets in line.
    other = asyncio.create_task(queue.submit(2, GenerationRequest("other")))
    await settle()
    assert queue.pending_for(1) == 2 and queue.pending_for(2) == 1
    for prompt in ("one", "two", "other"):
        generator.open(prompt)
    assert await asyncio.gather(first, second, other) == [[b"one"], [b"two"], [b"other"]]
    assert queue.pending_for(1) == 0


async def test_requests_run_in_the_order_they_arrived() -> None:
    generator = GatedGenerator()
    queue = GenerationQueue(generator, per_user_limit=4)
    prompts = ["a", "b", "c", "d"]
    for prompt in prompts:
        generator.open(prompt)
    results = await asyncio.gather(
        *(queue.submit(index % 2, GenerationRequest(p)) for index, p in enumerate(prompts))
    )
    assert generator.started == prompts
    assert results == [[p.encode()] for p in prompts]


async def test_waiting_requests_hear_their_place_in_line_as_it_moves() -> None:
    generator = GatedGenerator()
    queue = GenerationQueue(generator)
    logs = {prompt: ProgressLog() for prompt in "abcd"}
    tasks = {
        prompt: asyncio.create_task(queue.submit(user, GenerationRequest(prompt), logs[prompt]))
        for user, prompt in enumerate("abcd")
    }
    await settle()
    assert (queue.running, queue.waiting) == (1, 3)
    assert logs["d"].events[-1] == Progress(0.0, "queued: #3 in line", 3)
    for prompt in "abcd":
        generator.open(prompt)
        await tasks[prompt]
    assert queued_positions(logs["a"]) == []
    assert queued_positions(logs["b"]) == [1]
    assert queued_positions(logs["c"]) == [2, 1]
    assert queued_positions(logs["d"]) == [3, 2, 1]


async def test_cancelling_a_waiting_request_frees_its_place() -> None:
    generator = GatedGenerator()
    queue = GenerationQueue(generator, per_user_limit=1)
    running = asyncio.create_task(queue.submit(1, GenerationRequest("running")))
    leaving = asyncio.create_task(queue.submit(2, GenerationRequest("leaving")))
    log = ProgressLog()
    staying = asyncio.create_task(queue.submit(3, GenerationRequest("staying"), log))
    await settle()
    leaving.cancel()
    await settle()
    assert leaving.cancelled()
    assert queued_positions(log) == [2, 1]
    assert queue.waiting == 1 and queue.pending_for(2) == 0
    # The user who left may queue again, behind everyone who stayed.
    generator.open("again")
    again = asyncio.create_task(queue.submit(2, GenerationRequest("again")))
    generator.open("running")
    generator.open("staying")
    await asyncio.gather(running, staying, again)
    assert generator.started == ["running", "staying", "again"]


async def test_a_failing_request_frees_its_place_and_passes_its_error_on() -> None:
    generator = GatedGenerator()
    generator.failures.add("broken")
    queue = GenerationQueue(generator, per_user_limit=1)
    broken = asyncio.create_task(queue.submit(1, GenerationRequest("broken")))
    after = asyncio.create_task(queue.submit(2, GenerationRequest("after")))
    await settle()
    generator.open("broken")
    generator.open("after")
    with pytest.raises(GeneratorUnavailable):
        await broken
    assert await after == [b"after"]
    assert (queue.running, queue.waiting, queue.pending_for(1)) == (0, 0, 0)
    generator.open("retry")
    assert await queue.submit(1, GenerationRequest("retry")) == [b"retry"]


async def test_cancelling_a_running_request_lets_the_next_one_start() -> None:
    generator = GatedGenerator()
    queue = GenerationQueue(generator)
    running = asyncio.create_task(queue.submit(1, GenerationRequest("running")))
    waiting = asyncio.create_task(queue.submit(2, GenerationRequest("waiting")))
    await settle()
    running.cancel()
    await settle()
    assert generator.started == ["running", "waiting"]
    generator.open("waiting")
    assert await waiting == [b"waiting"]


async def test_up_to_max_concurrent_requests_run_at_once() -> None:
    generator = GatedGenerator()
    queue = GenerationQueue(generator, max_concurrent=2)
    tasks = [
        asyncio.create_task(queue.submit(n, GenerationRequest(p))) for n, p in enumerate("abc")
    ]
    await settle()
    assert generator.started == ["a", "b"] and queue.waiting == 1
    generator.open("b")
    await settle()
    assert generator.started == ["a", "b", "c"]
    generator.open("a")
    generator.open("c")
    await asyncio.gather(*tasks)


async def test_the_queue_runs_the_procedural_generator_end_to_end() -> None:
    generator = ProceduralGenerator()
    queue = GenerationQueue(generator)
    log = ProgressLog()
    images = await queue.submit(
        42, GenerationRequest("otters", count=2, width=128, height=128), log
    )
    await generator.close()
    assert len(images) == 2 and log.fractions[-1] == 1.0
