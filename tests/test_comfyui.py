"""The ComfyUI backend against a fake ComfyUI on a real socket (HTTP and websocket) on 127.0.0.1.

The fake (tests/fake_comfyui.py) answers like ComfyUI's server.py; these tests cover what a
user would notice: the images, the progress, clear failures, and that the prompt neither stays
on the generation server nor reaches a log line.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

from bot.core.errors import GeneratorUnavailable
from bot.core.veil import Veil
from bot.generate import (
    ComfyUIGenerator,
    GenerationRequest,
    Progress,
    WorkflowError,
    load_workflow,
    make_generator,
    startup_warnings,
)
from bot.generate.comfyui import check_workflow
from tests.fake_comfyui import FakeComfyUI, running_comfyui
from tests.loopback import free_port

SECRET_PROMPT = "a very private portrait of my neighbour"
TEXT_CHUNKS = {b"tEXt", b"zTXt", b"iTXt"}


def png_chunk_types(data: bytes) -> list[bytes]:
    position, types = 8, []
    while position < len(data):
        length = int.from_bytes(data[position:position + 4], "big")
        types.append(data[position + 4:position + 8])
        position += 12 + length
    return types


def disk_workflow(tmp_path: Path) -> Path:
    """The default workflow with ComfyUI's ordinary SaveImage node instead of the websocket one."""
    graph = json.loads(Path("bot/generate/comfyui_workflow.json").read_text())
    graph["8"] = {"class_type": "SaveImage",
                  "inputs": {"images": ["7", 0], "filename_prefix": "ComfyUI"}}
    path = tmp_path / "workflow.json"
    path.write_text(json.dumps(graph))
    return path


@pytest.fixture
async def comfy() -> AsyncIterator[tuple[FakeComfyUI, str]]:
    async with running_comfyui() as served:
        yield served


@pytest.fixture
async def make() -> AsyncIterator[Callable[..., ComfyUIGenerator]]:
    made: list[ComfyUIGenerator] = []

    def build(url: str, **options) -> ComfyUIGenerator:
        options.setdefault("reconnect_pause_s", 0.01)
        generator = ComfyUIGenerator(url, **options)
        made.append(generator)
        return generator

    yield build
    for generator in made:
        await generator.close()


class ProgressLog:
    def __init__(self) -> None:
        self.events: list[Progress] = []

    async def __call__(self, progress: Progress) -> None:
        self.events.append(progress)


async def test_images_arrive_over_the_websocket_one_prompt_per_seed_and_nothing_stays_behind(
        comfy, make):
    fake, url = comfy
    generator = make(url)
    images = await generator.generate(GenerationRequest(SECRET_PROMPT, count=2, seed=41,
                                                        width=64, height=96))
    assert len(images) == 2 and all(i.startswith(b"\x89PNG") for i in images)
    assert [g["5"]["inputs"]["seed"] for g in fake.graphs] == [41, 42]
    assert [g["2"]["inputs"]["text"] for g in fake.graphs] == [SECRET_PROMPT] * 2
    assert fake.graphs[0]["4"]["inputs"] == {"width": 64, "height": 96, "batch_size": 1}
    assert images[0] != images[1]
    assert fake.files == {}, "the default workflow must write nothing to the server's disk"
    assert fake.kept_prompts == [], "the prompt must not stay in the server's history"
    assert sorted(fake.history_deletes) == sorted(fake.finished)
    assert set(fake.client_ids) == {fake.client_ids[0]}, "one client id for one generation"


async def test_progress_follows_the_sampler_steps_rising_to_one(comfy, make):
    fake, url = comfy
    progress = ProgressLog()
    await make(url).generate(GenerationRequest("moss", count=2, seed=1), progress)
    fractions = [event.fraction for event in progress.events]
    assert fractions[0] == 0.0 and fractions[-1] == 1.0
    assert fractions == sorted(fractions)
    # Four steps per image, two images: the bar moves on every step.
    assert len([f for f in fractions if 0.0 < f < 1.0]) >= 2 * fake.steps - 1
    assert 0.5 in fractions, "image 1 of 2 finished is half way"


async def test_a_failing_node_is_reported_clearly_without_the_prompt_and_its_history_is_deleted(
        comfy, make, caplog):
    fake, url = comfy
    fake.mode = "fail"
    caplog.set_level(logging.DEBUG)
    with pytest.raises(GeneratorUnavailable) as caught:
        await make(url).generate(GenerationRequest(SECRET_PROMPT, seed=3))
    message = caught.value.message
    assert "KSampler" in message and "Try again" in message
    assert SECRET_PROMPT not in message and "neighbour" not in repr(caught.value)
    assert SECRET_PROMPT not in caplog.text
    assert fake.kept_prompts == [], "a failed job's history holds the prompt too"
    assert fake.interrupts == [], "a job that already failed needs no interrupt"


async def test_a_refused_workflow_says_so_without_echoing_the_servers_answer(
        comfy, make, caplog):
    fake, url = comfy
    fake.mode = "refuse"
    caplog.set_level(logging.DEBUG)
    with pytest.raises(GeneratorUnavailable, match="HTTP 400") as caught:
        await make(url).generate(GenerationRequest(SECRET_PROMPT))
    assert SECRET_PROMPT not in caught.value.message
    assert SECRET_PROMPT not in caplog.text
    assert "nodes with errors: ['4']" in caplog.text, "the operator learns which node"


async def test_a_slow_job_is_abandoned_in_time_stopped_by_its_own_id_and_cleared(comfy, make):
    fake, url = comfy
    fake.mode = "slow"
    started = time.monotonic()
    with pytest.raises(GeneratorUnavailable, match="longer than 0.5 seconds"):
        await make(url, timeout_s=0.5).generate(GenerationRequest(SECRET_PROMPT))
    assert time.monotonic() - started < 3.0
    [prompt_id] = fake.queue_deletes
    assert fake.interrupts == [prompt_id], "only our own job may be interrupted"
    assert prompt_id in fake.history_deletes


async def test_a_dropped_websocket_reconnects_and_the_job_still_arrives(comfy, make):
    fake, url = comfy
    fake.mode = "drop"
    images = await make(url).generate(GenerationRequest("tide pools", seed=9))
    assert len(images) == 1
    assert fake.connections >= 2, "it should have reconnected"
    assert fake.kept_prompts == []


async def test_images_lost_with_a_dropped_websocket_give_a_clear_try_again(comfy, make):
    fake, url = comfy
    fake.mode = "drop_at_save"
    with pytest.raises(GeneratorUnavailable, match="dropped before the image arrived"):
        await make(url).generate(GenerationRequest("tide pools"))
    assert fake.kept_prompts == []


async def test_a_workflow_that_saves_files_is_read_back_from_history_and_view(
        comfy, make, tmp_path):
    fake, url = comfy
    generator = make(url, workflow=load_workflow(disk_workflow(tmp_path)))
    [image] = await generator.generate(GenerationRequest(SECRET_PROMPT, seed=5))
    assert image == next(iter(fake.files.values()))
    assert {b"tEXt"} <= set(png_chunk_types(image)), "ComfyUI's files carry prompt/workflow"
    assert fake.kept_prompts == []


async def test_a_dropped_websocket_with_a_file_saving_workflow_recovers_from_history(
        comfy, make, tmp_path):
    fake, url = comfy
    fake.mode = "drop_at_save"
    generator = make(url, workflow=load_workflow(disk_workflow(tmp_path)))
    [image] = await generator.generate(GenerationRequest("tide pools", seed=5))
    assert image.startswith(b"\x89PNG")


async def test_comfyui_prompt_and_workflow_chunks_are_gone_once_stored(comfy, make, tmp_path,
                                                                       veil: Veil):
    fake, url = comfy
    generator = make(url, workflow=load_workflow(disk_workflow(tmp_path)))
    [image] = await generator.generate(GenerationRequest(SECRET_PROMPT, seed=5))
    assert SECRET_PROMPT.encode() in image
    record = await veil.images.create(7, image, guild_id=None, source="generated",
                                      prompt=SECRET_PROMPT)
    stored = (await veil.images.decrypt_unchecked(record)).data
    assert TEXT_CHUNKS.isdisjoint(png_chunk_types(stored))
    assert SECRET_PROMPT.encode() not in stored and b"workflow" not in stored


async def test_a_comfyui_server_that_is_down_is_reported_quickly(make):
    port = free_port()
    started = time.monotonic()
    with pytest.raises(GeneratorUnavailable, match="not answering"):
        await make(f"http://127.0.0.1:{port}").generate(GenerationRequest(SECRET_PROMPT))
    assert time.monotonic() - started < 5.0


async def test_variations_keep_one_seed_and_count_the_variation_seed_up(comfy, make):
    fake, url = comfy
    request = GenerationRequest("moss", count=2, seed=100, variation_seed=7,
                                variation_strength=0.3)
    await make(url).generate(request)
    assert [g["5"]["inputs"]["seed"] for g in fake.graphs] == [100, 100]
    assert [g["6"]["inputs"]["seed"] for g in fake.graphs] == [7, 8]
    assert {g["6"]["inputs"]["denoise"] for g in fake.graphs} == {0.3}


async def test_a_plain_request_leaves_the_variation_sampler_at_denoise_zero(comfy, make):
    fake, url = comfy
    await make(url).generate(GenerationRequest("moss", seed=100))
    assert fake.graphs[0]["6"]["inputs"]["denoise"] == 0.0


def test_placeholders_keep_numbers_as_numbers_and_text_as_text() -> None:
    workflow = check_workflow({"1": {"class_type": "CLIPTextEncode",
                                     "inputs": {"text": "art of {{prompt}}, {{seed}}"}},
                               "2": {"class_type": "KSampler", "inputs": {"seed": "{{seed}}"}},
                               "3": {"class_type": "SaveImageWebsocket", "inputs": {}}})
    filled = workflow.fill({"prompt": "moss", "seed": 12})
    assert filled["1"]["inputs"]["text"] == "art of moss, 12"
    assert filled["2"]["inputs"]["seed"] == 12


@pytest.mark.parametrize(("graph", "hint"), [
    ([1, 2], "API format"),
    ({"1": {"class_type": "SaveImage", "inputs": {"x": "{{nope}}", "t": "{{prompt}}"}}},
     "unknown placeholders nope"),
    ({"1": {"class_type": "SaveImage", "inputs": {}}}, "no {{prompt}} placeholder"),
    ({"1": {"class_type": "CLIPTextEncode", "inputs": {"text": "{{prompt}}"}}},
     "no node that outputs images"),
])
def test_a_workflow_that_cannot_work_is_refused_with_what_to_fix(graph, hint) -> None:
    with pytest.raises(WorkflowError) as caught:
        check_workflow(graph)
    assert hint in str(caught.value)


def test_a_missing_or_broken_workflow_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(WorkflowError, match="Cannot read"):
        load_workflow(tmp_path / "missing.json")
    broken = tmp_path / "broken.json"
    broken.write_text("{not json")
    with pytest.raises(WorkflowError, match="not valid JSON"):
        load_workflow(broken)


def test_the_factory_builds_comfyui_and_explains_a_missing_address() -> None:
    assert make_generator("comfyui", sd_url=None, timeout_s=5,
                          comfyui_url="http://127.0.0.1:8188").name == "comfyui"
    with pytest.raises(ValueError, match="ComfyUI address"):
        make_generator("comfyui", sd_url=None, timeout_s=5)


def test_a_request_never_shows_its_prompt_in_a_repr() -> None:
    assert SECRET_PROMPT not in repr(GenerationRequest(SECRET_PROMPT, seed=1))


async def test_start_up_names_an_unreachable_server_and_warns_about_files_left_on_disk(
        comfy, make, tmp_path):

    fake, url = comfy
    assert await startup_warnings(make(url)) == []
    [warning] = await startup_warnings(make(url, workflow=load_workflow(disk_workflow(tmp_path))))
    assert "SaveImage" in warning and "stay in ComfyUI's output folder" in warning
    port = free_port()
    [warning] = await startup_warnings(make(f"http://127.0.0.1:{port}"))
    assert f"http://127.0.0.1:{port} is not reachable" in warning
