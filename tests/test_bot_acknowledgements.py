"""Slash commands acknowledged from the gateway frame (bot/acknowledgements.py): one private
"thinking" answer, the command run once, errors still shown privately, and every command of a
burst run (the order of a burst's work is measured by `python -m bench.interaction`)."""

from __future__ import annotations

import asyncio

from bot.acknowledgements import ACKS_FIRST_WAIT_S, _Admission
from tests.e2e import texts

EMPTY_GALLERY = "Nothing here yet. Make an image with /imagine or /upload."
CALLBACK = r"^/interactions/\d+/[^/]+/callback$"


def callbacks(app, handle) -> list:
    return [c for c in app.double.calls
            if c.method == "POST" and c.path.startswith(f"/interactions/{handle.id}/")]


async def test_a_command_is_answered_once_privately_and_runs_once(veil_app):
    app = veil_app
    handle = await app.run("gallery", user=app.world.alice)
    [callback] = callbacks(app, handle)
    assert callback.json == {"type": 5, "data": {"flags": 64}}
    assert callback.status == 200
    assert handle.ephemeral
    assert texts(handle) == EMPTY_GALLERY  # one answer: the command ran once


async def test_an_option_error_after_the_early_answer_reaches_the_person_privately(veil_app):
    app = veil_app
    handle = await app.run("share", user=app.world.alice,
                           options={"target": app.world.bob, "expires": "banana"})
    assert len(callbacks(app, handle)) == 1  # the error came as the follow-up
    assert handle.ephemeral
    assert "'banana' is not a duration" in texts(handle)


async def test_when_the_early_answer_fails_the_command_answers_itself(veil_app):
    app = veil_app
    app.double.fail_next("POST", CALLBACK, status=500, times=1)
    handle = await app.run("gallery", user=app.world.alice)
    assert [c.status for c in callbacks(app, handle)] == [500, 200]
    assert handle.ephemeral
    assert texts(handle) == EMPTY_GALLERY


async def test_every_command_of_a_burst_is_acknowledged_once_and_answered_once(veil_app):
    app = veil_app
    first = len(app.double.calls)
    handles = [app.double.slash("gallery", user=app.world.alice, guild=app.world.guild,
                                channel=app.world.general) for _ in range(20)]
    handles = await asyncio.gather(*handles)
    for handle in handles:
        await app.settle(handle)
    calls = app.double.calls[first:]
    for handle in handles:
        assert [c.status for c in callbacks(app, handle)] == [200]
        assert texts(handle) == EMPTY_GALLERY
    assert sum(1 for c in calls if c.path.startswith("/webhooks/")) == 20


async def test_a_steady_stream_of_commands_holds_no_command_back_past_the_bound():
    # A frame every few ms keeps the acknowledger busy for as long as the stream lasts: a
    # command's own work still goes on once it has waited ACKS_FIRST_WAIT_S, not when the stream
    # ends (the bound itself is checked, not the clock, so a loaded machine can't fail it).
    loop = asyncio.get_running_loop()
    admission = _Admission(lambda now: now + 0.005)  # always another frame just in
    started = loop.time()
    await asyncio.wait_for(admission.wait(), timeout=ACKS_FIRST_WAIT_S + 30)
    assert loop.time() - started >= ACKS_FIRST_WAIT_S - 0.01  # acknowledgements went first
