"""How a generated image was drawn, kept for its owner alone: the Details button's data, and what
Re-roll and Variations draw (migration 0008)."""

from __future__ import annotations

import pytest

from bot.core.errors import InvalidInput, NotFound
from bot.core.models import GenerationParams
from tests.conftest import ALICE, BOB, GUILD, MOD, png, viewer

PROMPT = "a letter to my estranged brother, illustrated"
# A seed of ten digits: four could turn up by chance in megabytes of PostgreSQL's files.
PARAMS = GenerationParams(seed=3141592653, width=512, height=640, generator="comfyui", batch_size=3)


async def generated(veil, *, private: bool | None = True, guild: int | None = GUILD):
    return await veil.images.create(ALICE, png(), guild_id=guild, source="generated",
                                    prompt=PROMPT, requested_private=private, generation=PARAMS)


async def test_the_owner_reads_back_prompt_seed_size_and_generator(veil):
    image = await generated(veil)
    details = await veil.images.details(image.public_id, viewer(ALICE))
    assert details.prompt == PROMPT and details.params == PARAMS
    assert PROMPT not in repr(details)


async def test_nobody_else_gets_details_not_even_a_moderator_or_a_grantee(veil):
    image = await generated(veil, private=False)
    await veil.sharing.grant(viewer(ALICE), "user", BOB, image_public_id=image.public_id)
    for other in (viewer(BOB), viewer(MOD, mod=True)):
        with pytest.raises(NotFound) as caught:
            await veil.images.details(image.public_id, other)
        assert PROMPT not in caught.value.message
        with pytest.raises(NotFound):
            await veil.images.follow_up(image.public_id, other, "reroll")


async def test_generation_details_are_sealed_at_rest(veil, at_rest):
    image = await generated(veil)
    await veil.ctx.db.checkpoint()
    stored = await at_rest()
    assert PROMPT.encode() not in stored
    assert str(PARAMS.seed).encode() not in stored and b"comfyui" not in stored
    assert image.public_id.encode() in stored


async def test_an_upload_has_no_details_and_says_why(veil):
    image = await veil.images.create(ALICE, png(), guild_id=GUILD, source="upload")
    with pytest.raises(InvalidInput, match="uploaded, not generated"):
        await veil.images.details(image.public_id, viewer(ALICE))


async def test_reroll_keeps_prompt_size_batch_and_visibility_with_a_new_seed(veil):
    image = await generated(veil, private=False)
    plan = await veil.images.follow_up(image.public_id, viewer(ALICE), "reroll")
    assert (plan.prompt, plan.count, plan.width, plan.height) == (PROMPT, 3, 512, 640)
    assert plan.seed != PARAMS.seed and plan.variation_seed is None
    assert plan.requested_private is False and plan.guild_id == GUILD
    assert PROMPT not in repr(plan)


async def test_variations_keep_the_seed_and_add_a_variation_seed(veil):
    image = await generated(veil)
    plan = await veil.images.follow_up(image.public_id, viewer(ALICE), "variation")
    assert plan.seed == PARAMS.seed and plan.variation_seed is not None
    assert 0 < plan.variation_strength < 0.5 and plan.requested_private is True


async def test_an_image_from_before_seeds_were_kept_still_rerolls_at_its_size(veil):
    image = await veil.images.create(ALICE, png(size=(100, 70)), guild_id=GUILD,
                                     source="generated", prompt=PROMPT)
    details = await veil.images.details(image.public_id, viewer(ALICE))
    assert details.params is None and details.prompt == PROMPT
    plan = await veil.images.follow_up(image.public_id, viewer(ALICE), "reroll")
    assert (plan.width, plan.height) == (96, 64) and plan.count == 1


async def test_an_export_carries_how_each_generated_image_was_drawn(veil):
    import io
    import json
    import zipfile

    await generated(veil)
    ready = await veil.exports.prepare(await veil.exports.start(ALICE))
    download = await veil.exports.take(ready.token)
    data = b"".join([chunk async for chunk in download.chunks])
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        document = json.loads(archive.read("veil-export.json"))
    [entry] = document["images"]
    assert entry["prompt"] == PROMPT and entry["generation"]["seed"] == PARAMS.seed
