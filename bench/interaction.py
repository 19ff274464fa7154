"""Interaction latency (issue 6, item 4): 200 concurrent slash commands through the Discord double.

The real ``VeilBot`` runs in a child process exactly as ``python -m bot run`` builds it (the
procedural generator, the link server on), pointed at the local Discord double
(tests/discord_double) served by this parent process, so the double's own work does not run on
the bot's event loop. 50 members each send /imagine, /view (an image of their own or one shared
with them), /share (one of their images with another member) and /gallery: 200 INTERACTION_CREATE
events dispatched at once, in shuffled order. Latency is the time from the dispatch (the
double's handle creation, just before the gateway frame is sent) to the double receiving the
bot's first callback POST for that interaction, on the parent's monotonic clock.

Inside the bot process a ticker coroutine sleeps 5 ms in a loop and records how late it wakes:
its worst lateness while the burst is handled is the longest the event loop was blocked.
5 rounds (each waits until every command has finished); figures are the median over rounds.

    python -m bench.interaction [--quick]
"""

from __future__ import annotations

import asyncio
import cProfile
import json
import logging
import os
import random
import shutil
import sys
import tempfile
import time
from itertools import pairwise
from pathlib import Path

import aiohttp
import discord
from discord import app_commands

from bench._common import CACHE, ROOT, Figure, Report, header, median, percentile, run_main

BAR_P99_MS = 50.0
BAR_LAG_MS = 20.0
BAR_VS_FLOOR = 0.7  # issue 12: Veil's first-callback p99 <= 0.7x the bare discord.py bot's
# --compare also runs Veil without each issue-12 fix, so its effect is measured, not guessed:
# "veil-unfrozen" (no gc.freeze at READY), "veil-late-ack" (commands acknowledged by their own
# defer, in discord.py's order, not from the gateway frame: bot/acknowledgements.py).
VARIANTS = {"veil": {}, "veil-unfrozen": {"freeze_gc": False},
            "veil-late-ack": {"early_acks": False}}
MEMBERS = 50
# The tasks a command runs in (discord.py's tree, Veil's early acknowledgement).
BOT_WORK = ("CommandTree-invoker", "veil-acknowledge")
TICK = 0.005


# The bot process -------------------------------------------------------------------------------

def floor_bot(**options):
    """A bare discord.py bot with the same four commands (same option types), each of which
    only defers: what any discord.py bot pays for the same burst, whatever it then does."""
    from discord.ext import commands

    intents = discord.Intents.none()
    intents.guilds = True
    bot = commands.Bot(command_prefix=commands.when_mentioned, intents=intents,
                       help_command=None, guild_ready_timeout=0.01, **options)

    async def defer(interaction: discord.Interaction) -> None:
        await interaction.response.defer(ephemeral=True, thinking=True)
        await interaction.followup.send("done", ephemeral=True)

    @bot.tree.command(name="imagine", description="Generate images from a prompt.")
    async def imagine(interaction: discord.Interaction, prompt: app_commands.Range[str, 1, 1000],
                      private: bool | None = None,
                      count: app_commands.Range[int, 1, 4] = 1) -> None:
        await defer(interaction)

    @bot.tree.command(name="view", description="Get one image you may see.")
    async def view(interaction: discord.Interaction, image: str) -> None:
        await defer(interaction)

    @bot.tree.command(name="share", description="Share one image.")
    async def share(interaction: discord.Interaction,
                    target: discord.Member | discord.User | discord.Role,
                    image: str | None = None, expires: str | None = None) -> None:
        await defer(interaction)

    @bot.tree.command(name="gallery", description="Your images.")
    async def gallery(interaction: discord.Interaction,
                      page: app_commands.Range[int, 1, 1000] = 1) -> None:
        await defer(interaction)

    async def setup_hook() -> None:
        await bot.tree.sync()

    bot.setup_hook = setup_hook
    return bot


def _what(callback) -> str:
    """What a loop callback runs: a task's coroutine, or a plain callback."""
    owner = getattr(callback, "__self__", None)
    if isinstance(owner, asyncio.Task):
        coro = owner.get_coro()
        return getattr(coro, "__qualname__", repr(coro))
    return getattr(callback, "__qualname__", repr(callback))


def _time_callbacks(slowest: list[tuple[float, str]],
                    every: list[tuple[float, float, object]]) -> None:
    """Instrument the event loop: every callback's CPU time, keeping the slowest few with what
    they ran, to say what blocked the loop; and in ``every`` each callback's (loop-thread CPU
    clock at its start, CPU spent, callback), to say what ran between two moments."""
    original = asyncio.events.Handle._run
    clock = time.thread_time  # CPU time: on a shared machine wall time also counts preemption

    def timed(handle) -> None:
        start = clock()
        original(handle)
        spent = clock() - start
        every.append((start, spent, getattr(handle, "_callback", None)))
        if spent > 0.005 and (len(slowest) < 8 or spent > slowest[-1][0]):
            what = _what(getattr(handle, "_callback", None))
            slowest.append((spent, what))
            slowest.sort(reverse=True)
            del slowest[8:]

    asyncio.events.Handle._run = timed


def _time_iterations(cpu: list[float]) -> None:
    """CPU time of the loop thread in each event-loop iteration (``time.thread_time``). On a
    shared machine the ticker's lateness also counts time the process waited for a core; an
    iteration's CPU time is only what the code ran in it, which is what a fix can change."""
    loop = asyncio.get_running_loop()
    original = loop._run_once  # type: ignore[attr-defined]
    clock = time.thread_time

    def timed() -> None:
        start = clock()
        original()
        cpu.append(clock() - start)

    loop._run_once = timed  # type: ignore[attr-defined]


def _time_collections(pauses: list[tuple[int, float]]) -> None:
    """Record every garbage collection: (generation, CPU seconds of the collecting thread). A
    full (generation 2) collection walks every tracked object and holds the loop for as long."""
    import gc

    started: list[float] = []

    cpu = time.thread_time

    def callback(phase: str, info: dict) -> None:
        if phase == "start":
            started[:] = [cpu()]
        elif started:
            pauses.append((info["generation"], cpu() - started[0]))

    gc.callbacks.append(callback)


def _time_stages(stages: dict[int, dict[str, float]],
                 iterations: list[float]) -> aiohttp.TraceConfig:
    """Timestamps (``time.monotonic``: one clock for every process on the machine, so they
    line up with the double's) of each interaction's path in the bot process, by interaction
    id: ``frame`` the gateway frame reached discord.py's ``received_message``, ``parse`` its
    JSON was decoded, ``call`` the command tree started the
    command, ``ack`` the callback request was made, ``conn`` it had a connection (``new``: a
    new one), ``sent`` its body was written, ``done`` its response was read. Returns the
    aiohttp trace the bot's HTTP session is given. ``frame`` and ``sent`` also carry the loop
    thread's CPU time (``*_cpu``) and loop iteration count (``*_it``): the CPU and iterations
    from the burst's first frame to its last acknowledgement sent, whatever the machine's load."""
    import discord.app_commands.tree
    import discord.gateway
    import discord.utils

    clock = time.monotonic
    frame_at = [0.0]
    frame_cpu = [0.0]
    received = discord.gateway.DiscordWebSocket.received_message

    async def received_message(self, msg, /) -> None:
        frame_at[0] = clock()
        frame_cpu[0] = time.thread_time()
        await received(self, msg)

    discord.gateway.DiscordWebSocket.received_message = received_message  # type: ignore[method-assign]
    from_json = discord.utils._from_json

    def timed_from_json(text):
        # The gateway decodes each frame here, before any parser (discord.py's or Veil's).
        message = from_json(text)
        if isinstance(message, dict) and message.get("t") == "INTERACTION_CREATE":
            stages[int(message["d"]["id"])] = {
                "frame": frame_at[0], "parse": clock(), "frame_cpu": frame_cpu[0],
                "frame_it": len(iterations)}
        return message

    discord.utils._from_json = timed_from_json

    call = discord.app_commands.tree.CommandTree._call

    async def timed_call(self, interaction) -> None:
        stages.setdefault(interaction.id, {})["call"] = clock()
        await call(self, interaction)

    discord.app_commands.tree.CommandTree._call = timed_call  # type: ignore[method-assign]

    def callback_id(url) -> int | None:
        parts = url.path.split("/")
        if len(parts) > 3 and parts[-1] == "callback" and parts[-4] == "interactions":
            return int(parts[-3])
        return None

    def mark(name: str):
        async def hook(session, ctx, params) -> None:
            iid = getattr(ctx, "iid", None)
            if name == "ack":
                iid = ctx.iid = callback_id(params.url)
            if iid is not None:
                stamps = stages.setdefault(iid, {})
                if name not in stamps:
                    stamps[name] = clock()
                    if name == "sent":
                        stamps["sent_cpu"] = time.thread_time()
                        stamps["sent_it"] = len(iterations)
                if name == "conn_new":
                    stages[iid]["new"] = 1.0
        return hook

    trace = aiohttp.TraceConfig()
    trace.on_request_start.append(mark("ack"))
    trace.on_connection_create_start.append(mark("conn_new"))
    trace.on_connection_create_end.append(mark("conn"))
    trace.on_connection_reuseconn.append(mark("conn"))
    trace.on_request_chunk_sent.append(mark("sent"))
    trace.on_request_headers_sent.append(mark("headers"))
    trace.on_request_end.append(mark("done"))
    return trace


def _window_by_task(stages: dict[int, dict[str, float]],
                    every: list[tuple[float, float, object]]) -> list[tuple[float, str]]:
    """Loop-thread CPU from the burst's first frame to its last acknowledgement sent, summed
    by what ran (the eight largest)."""
    rows = [s for s in stages.values() if "frame_cpu" in s and "sent_cpu" in s]
    if not rows:
        return []
    low = min(r["frame_cpu"] for r in rows)
    high = max(r["sent_cpu"] for r in rows)
    spent: dict[str, float] = {}
    for start, cpu, callback in every:
        if low - cpu <= start <= high:
            what = _what(callback)
            spent[what] = spent.get(what, 0.0) + cpu
    return sorted(((cpu, what) for what, cpu in spent.items()), reverse=True)[:8]


def _gc_summary(pauses: list[tuple[int, float]]) -> dict:
    return {str(g): [len([d for gen, d in pauses if gen == g]),
                     max([d for gen, d in pauses if gen == g], default=0.0)] for g in (0, 1, 2)}


async def bot_process(mode: str, data: str, api: str, gateway: str, token: str) -> None:
    import discord.gateway
    import discord.http
    import yarl

    from bot.client import VeilBot
    from bot.config import load_settings
    from bot.core.veil import Veil
    from bot.generate import GenerationQueue, make_generator

    logging.basicConfig(level=logging.ERROR if mode == "floor" else logging.WARNING)
    slowest: list[tuple[float, str]] = []
    every: list[tuple[float, float, object]] = []
    _time_callbacks(slowest, every)
    pauses: list[tuple[int, float]] = []
    _time_collections(pauses)
    iterations: list[float] = []
    stages: dict[int, dict[str, float]] = {}
    trace = _time_stages(stages, iterations)
    discord.http.Route.BASE = api
    discord.gateway.DiscordWebSocket.DEFAULT_GATEWAY = yarl.URL(gateway)
    settings = load_settings({"DISCORD_TOKEN": token, "VEIL_DATA_DIR": data,
                              "VEIL_WEB_PORT": "0", "VEIL_PUBLIC_URL": "https://veil.example"})
    loop = asyncio.get_running_loop()
    lags: list[float] = []

    async def ticker() -> None:
        while True:
            start = loop.time()
            await asyncio.sleep(TICK)
            lags.append(loop.time() - start - TICK)

    _time_iterations(iterations)
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    async with await Veil.open(settings.data_dir) as veil:
        generator = make_generator(settings.generator, sd_url=settings.sd_url,
                                   timeout_s=settings.generator_timeout_s)
        queue = GenerationQueue(generator, per_user_limit=settings.per_user_queue_limit)
        if mode == "floor":
            bot = floor_bot(http_trace=trace)
        else:  # freeze_gc as make_bot sets it for `python -m bot run`
            options = {"freeze_gc": True, **VARIANTS[mode]}
            bot = VeilBot(settings=settings, veil=veil, queue=queue, guild_ready_timeout=0.01,
                          http_trace=trace, **options)
        task = asyncio.create_task(bot.start(token))
        while not bot.is_ready():
            if task.done():
                task.result()
            await asyncio.sleep(0.01)
        await asyncio.sleep(0.5)  # on_ready (gc.freeze for Veil) has run
        import gc
        start = time.thread_time()
        gc.collect()
        full_gc = time.thread_time() - start
        tick = asyncio.create_task(ticker())
        # BENCH_PROFILE=path: cProfile of the bot process over the measured rounds, written to
        # path.<mode> (slows the bot; for finding where time goes, not for the figures).
        profile_to = os.environ.get("BENCH_PROFILE")
        profile = cProfile.Profile() if profile_to else None
        cpu_at_reset = time.process_time()
        print("READY", flush=True)
        while line := (await reader.readline()).decode().strip():
            if line == "reset":
                if profile is not None:
                    profile.enable()
                lags.clear()
                slowest.clear()
                every.clear()
                pauses.clear()
                iterations.clear()
                stages.clear()
                cpu_at_reset = time.process_time()
                print("OK", flush=True)
            elif line == "report":
                if profile is not None:
                    profile.disable()
                    profile.dump_stats(f"{profile_to}.{mode}")
                print(json.dumps({"max": max(lags), "p99": percentile(lags, 99),
                                  "ticks": len(lags), "slowest": slowest[:5],
                                  "gc": _gc_summary(pauses),
                                  "iteration_cpu": max(iterations, default=0.0),
                                  "iterations": len(iterations),
                                  "full_gc": full_gc, "stages": stages,
                                  "window_by_task": _window_by_task(stages, every),
                                  "cpu": time.process_time() - cpu_at_reset}), flush=True)
            elif line == "settle":
                # Every command of the burst finished (the double's quiet REST line alone is
                # not enough: /imagine draws for seconds without calling Discord).
                while busy := [t for t in asyncio.all_tasks()
                               if not t.done() and t.get_name().startswith(BOT_WORK)]:
                    await asyncio.wait(busy)
                print("OK", flush=True)
            elif line == "stop":
                break
        tick.cancel()
        await bot.close()
        await generator.close()


# The driver ------------------------------------------------------------------------------------

async def prepare(folder: Path, members: list[int]) -> dict[int, list[str]]:
    """Two stored images per member; each member's first image is shared with the next member.
    Returns the ids each member may /view (own and shared)."""
    import io

    from bench._images import photo
    from bot.core.models import Viewer
    from bot.core.veil import Veil

    buffer = io.BytesIO()
    photo(512, 512, seed=3).save(buffer, "PNG")
    data = buffer.getvalue()
    own: dict[int, list[str]] = {m: [] for m in members}
    async with await Veil.open(folder) as veil:
        for member in members:
            for _ in range(2):
                record = await veil.images.create(member, data, guild_id=None, source="upload")
                own[member].append(record.public_id)
        visible = {m: list(ids) for m, ids in own.items()}
        for i, member in enumerate(members):
            other = members[(i + 1) % len(members)]
            await veil.sharing.grant(Viewer(member), "user", other, image_public_id=own[member][0])
            visible[other].append(own[member][0])
    return own, visible


async def burst(double, world, users, own, visible, rng: random.Random) -> list[float]:
    commands = []
    for i, user in enumerate(users):
        other = users[(i + 7) % len(users)]
        commands += [("imagine", user, {"prompt": f"harbour at dawn number {i}"}),
                     ("view", user, {"image": rng.choice(visible[user.id])}),
                     ("share", user, {"target": other, "image": own[user.id][1]}),
                     ("gallery", user, {})]
    rng.shuffle(commands)
    start_calls = len(double.calls)
    _DOUBLE_STAGES.clear()
    handles = []
    for name, user, options in commands:  # each slash() dispatches at once; no await between
        handles.append(double.slash(name, user=user, guild=world.guild, channel=world.general,
                                    options=options))
    handles = await asyncio.gather(*handles)
    # On an overloaded machine some acknowledgements come after Discord's 3 s: the double
    # answers them 404 and they never get a response. They count as missing, not as a crash.
    await asyncio.gather(*(h.wait_response(timeout=10) for h in handles), return_exceptions=True)
    await double.idle(quiet=0.3, timeout=120)
    first: dict[str, float] = {}
    for call in double.calls[start_calls:]:
        parts = call.path.split("/")
        if len(parts) > 4 and parts[1] == "interactions" and parts[4] == "callback":
            first.setdefault(parts[2], call.time)
    # An interaction with no accepted callback (expired after 3 s) is as late as can be.
    for handle, written in zip(handles, _FRAMES_WRITTEN[-len(handles):], strict=False):
        stamps = {"created": handle.created, "written": written}
        if str(handle.id) in first:
            stamps["received"] = first[str(handle.id)]
        _DOUBLE_STAGES[handle.id] = stamps
    return [(name, first[str(h.id)] - h.created if str(h.id) in first else float("inf"))
            for (name, _, _), h in zip(commands, handles, strict=True)]


# Parent-side stamps of the last burst: when each INTERACTION_CREATE frame was written to the
# bot's socket (in dispatch order), and per interaction id its handle's creation, that write and
# the double's receipt of its first callback.
_FRAMES_WRITTEN: list[float] = []
_DOUBLE_STAGES: dict[int, dict[str, float]] = {}
STAGES = ("created", "written", "frame", "parse", "ack", "conn", "sent", "received")


def _time_frames_written() -> None:
    from aiohttp import web

    send_str = web.WebSocketResponse.send_str

    async def timed(self, data: str, *args, **kwargs) -> None:
        await send_str(self, data, *args, **kwargs)
        if '"t": "INTERACTION_CREATE"' in data:
            _FRAMES_WRITTEN.append(time.monotonic())

    web.WebSocketResponse.send_str = timed  # type: ignore[method-assign]


def _ack_window(stages: dict[str, dict[str, float]]) -> tuple[float, float] | None:
    """Loop-thread CPU time and iterations from the burst's first frame to its last
    acknowledgement sent."""
    rows = [s for s in stages.values() if "frame_cpu" in s and "sent_cpu" in s]
    if not rows:
        return None
    return (max(r["sent_cpu"] for r in rows) - min(r["frame_cpu"] for r in rows),
            max(r["sent_it"] for r in rows) - min(r["frame_it"] for r in rows))


def stage_summary(bot: dict[str, dict[str, float]]) -> tuple[dict[str, tuple[float, float]],
                                                               dict[str, float]]:
    """Per stage (the time from the one before), median and p99 over the burst's
    interactions; and the stages of the interaction at the p99 of first-callback latency."""
    rows = []
    for iid, parent in _DOUBLE_STAGES.items():
        row = {**bot.get(str(iid), {}), **parent}
        if all(name in row for name in STAGES):
            rows.append(row)
    if not rows:
        return {}, {}
    gaps = {f"{a}->{b}": [r[b] - r[a] for r in rows] for a, b in pairwise(STAGES)}
    gaps["parse->call"] = [r["call"] - r["parse"] for r in rows if "call" in r]
    summary = {k: (median(v), percentile(v, 99)) for k, v in gaps.items() if v}
    rows.sort(key=lambda r: r["received"] - r["created"])
    at_p99 = rows[max(0, -(-len(rows) * 99 // 100) - 1)]
    at = {f"{a}->{b}": at_p99[b] - at_p99[a] for a, b in pairwise(STAGES)}
    at["parse->call"] = at_p99.get("call", at_p99["parse"]) - at_p99["parse"]
    return summary, at


async def measure(report: Report, quick: bool, compare: bool = False) -> None:
    rounds = 3 if quick else 5
    _time_frames_written()
    veil = await run_rounds("veil", rounds, report)
    floor = await run_rounds("floor", rounds, report)
    if compare:
        for variant in VARIANTS:
            if variant != "veil":
                other = await run_rounds(variant, rounds, report)
                report.note(f"{variant}: first-callback p99 {median(other['p99']):.1f} ms "
                            f"({median(other['p99']) / median(floor['p99']):.2f}x the bare "
                            f"bot), loop blocked at most {median(other['lag']):.1f} ms, "
                            f"longest iteration {median(other['iteration_cpu']):.1f} ms CPU, "
                            f"{_median_or_nan(other['ack_cpu']):.0f} ms loop CPU from the first "
                            "frame to the last acknowledgement sent")
    report.note(f"bare discord.py bot that only defers (same commands, same burst): "
                f"first-callback p99 {median(floor['p99']):.1f} ms (median "
                f"{median(floor['p50']):.1f} ms), loop blocked at most "
                f"{median(floor['lag']):.1f} ms")
    report.add(Figure(f"interaction: {4 * MEMBERS} concurrent slash commands, dispatch to first "
                      "callback p99", median(veil["p99"]), BAR_P99_MS, "<", "ms",
                      detail=f"(median {median(veil['p50']):.1f} ms)"))
    report.add(Figure("interaction: first-callback p99, Veil / bare discord.py",
                      median(veil["p99"]) / median(floor["p99"]), BAR_VS_FLOOR, "<=",
                      detail=f"({median(veil['p99']):.1f} ms / {median(floor['p99']):.1f} ms, "
                             "same burst)"))
    report.add(Figure("interaction: bot loop CPU from the burst's first frame to its last "
                      "acknowledgement sent, Veil / bare discord.py (load-independent)",
                      _median_or_nan(veil["ack_cpu"]) / _median_or_nan(floor["ack_cpu"]),
                      BAR_VS_FLOOR, "<=",
                      detail=f"({_median_or_nan(veil['ack_cpu']):.0f} ms / "
                             f"{_median_or_nan(floor['ack_cpu']):.0f} ms)"))
    report.add(Figure("interaction: longest event-loop block during the burst",
                      median(veil["lag"]), BAR_LAG_MS, "<", "ms",
                      detail=f"(bare discord.py {median(floor['lag']):.1f} ms)"))
    report.add(Figure("interaction: longest event-loop iteration in CPU time (the code's part "
                      "of the block)", median(veil["iteration_cpu"]), BAR_LAG_MS, "<", "ms",
                      detail=f"(bare discord.py {median(floor['iteration_cpu']):.1f} ms)"))


def _median_or_nan(values: list[float]) -> float:
    return median(values) if values else float("nan")


async def run_rounds(mode: str, rounds: int, report: Report) -> dict[str, list[float]]:
    sys.path.insert(0, str(ROOT))
    from tests.discord_double import DiscordDouble

    CACHE.mkdir(parents=True, exist_ok=True)
    root = Path(tempfile.mkdtemp(prefix="interaction-", dir=CACHE))
    rng = random.Random(4)
    try:
        async with DiscordDouble() as double:
            world = double.populate()
            users = [double.add_user(f"member{i}") for i in range(MEMBERS)]
            for user in users:
                double.add_member(world.guild, user)
            own, visible = await prepare(root / "data", [u.id for u in users])
            proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "bench.interaction", "--bot", mode, str(root / "data"),
                double.api_base, double.gateway_url, double.token, cwd=ROOT,
                stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, limit=2**24)

            async def ask(command: str, wait_s: float = 60) -> str:
                proc.stdin.write(command.encode() + b"\n")
                await proc.stdin.drain()
                return (await asyncio.wait_for(proc.stdout.readline(), wait_s)).decode().strip()

            try:
                line = (await asyncio.wait_for(proc.stdout.readline(), 60)).decode().strip()
                if line != "READY":
                    raise RuntimeError(f"the bot process did not start ({line!r})")
                await burst(double, world, users, own, visible, rng)  # warm-up round
                await ask("settle", wait_s=600)
                p99s, p50s, lag_max, lag_p99 = [], [], [], []
                slow: list = []
                iteration_cpu: list[float] = []
                cpu_windows: list[float] = []
                gc_counts: dict[str, list[int]] = {}
                gc_longest: dict[str, list[float]] = {}
                by_kind: dict[str, list[float]] = {}
                for _ in range(rounds):
                    await ask("reset")
                    parent_cpu = time.process_time()
                    pairs = await burst(double, world, users, own, visible, rng)
                    await ask("settle", wait_s=600)
                    await double.idle(quiet=0.1, timeout=120)
                    latencies = [t for _, t in pairs]
                    if (expired := sum(1 for t in latencies if t == float("inf"))):
                        report.note(f"{mode} round: {expired} of {len(latencies)} interactions "
                                    "were not acknowledged within Discord's 3 s")
                    for name, t in pairs:
                        by_kind.setdefault(name, []).append(t)
                    lag = json.loads(await ask("report"))
                    gaps, at_p99 = stage_summary(lag["stages"])
                    report.note(f"{mode} round: stages (ms, median / p99; at the p99 "
                                "interaction): " + ", ".join(
                                    f"{k} {v[0] * 1e3:.1f} / {v[1] * 1e3:.1f} "
                                    f"({at_p99[k] * 1e3:.1f})" for k, v in gaps.items()))
                    new_conns = sum(1 for s in lag["stages"].values() if "new" in s)
                    window = _ack_window(lag["stages"])
                    if window:
                        report.note(f"{mode} round: bot loop thread from the first frame to the "
                                    f"last acknowledgement sent: {window[0] * 1e3:.0f} ms CPU, "
                                    f"{window[1]:.0f} loop iterations")
                        cpu_windows.append(window[0] * 1e3)
                        report.note(f"{mode} round: that CPU by what ran: " + "; ".join(
                            f"{cpu * 1e3:.0f} ms {what}" for cpu, what in lag["window_by_task"]))
                    report.note(f"{mode} round: CPU during the burst: bot process "
                                f"{lag['cpu'] * 1e3:.0f} ms, double (this process) "
                                f"{(time.process_time() - parent_cpu) * 1e3:.0f} ms; "
                                f"{new_conns} callbacks opened a new connection")
                    p99s.append(percentile(latencies, 99) * 1e3)
                    p50s.append(median(latencies) * 1e3)
                    lag_max.append(lag["max"] * 1e3)
                    lag_p99.append(lag["p99"] * 1e3)
                    slow += lag["slowest"]
                    iteration_cpu.append(lag["iteration_cpu"] * 1e3)
                    for generation, (count, longest) in lag["gc"].items():
                        gc_counts.setdefault(generation, []).append(count)
                        gc_longest.setdefault(generation, []).append(longest)
                    report.note(f"{mode} round: first-callback p50 {p50s[-1]:.1f} ms, p99 "
                                f"{p99s[-1]:.1f} ms, max {max(latencies) * 1e3:.1f} ms; loop "
                                f"blocked at most {lag_max[-1]:.1f} ms (p99 tick lateness "
                                f"{lag_p99[-1]:.1f} ms); longest iteration in CPU time "
                                f"{iteration_cpu[-1]:.1f} ms")
                report.note(f"{mode}: first-callback p50 / p99 by command: " + ", ".join(
                    f"/{k} {median(v) * 1e3:.0f} / {percentile(v, 99) * 1e3:.0f} ms"
                    for k, v in sorted(by_kind.items())))
                report.note(f"{mode}: one full garbage collection after start-up: "
                            f"{lag['full_gc'] * 1e3:.2f} ms CPU")
                report.note(f"{mode}: garbage collections per burst (median; longest pause "
                            "over all rounds): " + ", ".join(
                                f"gen {g} {median(gc_counts[g]):.0f} "
                                f"({max(gc_longest[g]) * 1e3:.1f} ms)" for g in sorted(gc_counts)))
                slow.sort(reverse=True)
                report.note(f"{mode}: slowest single event-loop steps (CPU time): " + "; ".join(
                    f"{spent * 1e3:.0f} ms {what}" for spent, what in slow[:4]))
                proc.stdin.write(b"stop\n")
                await proc.stdin.drain()
                await asyncio.wait_for(proc.wait(), 30)
            finally:
                if proc.returncode is None:
                    proc.kill()
                    await proc.wait()
    finally:
        shutil.rmtree(root, ignore_errors=True)
    return {"p99": p99s, "p50": p50s, "lag": lag_max, "iteration_cpu": iteration_cpu,
            "ack_cpu": cpu_windows}


def main(args) -> Report:
    header("interaction latency through the Discord double")
    logging.getLogger("bot.core.veil").setLevel(logging.ERROR)
    report = Report("interaction")
    try:
        from bot.web import create_app  # noqa: F401  (the bot starts the link server)
    except ImportError as exc:
        report.add(Figure("interaction latency", None, BAR_P99_MS, "<",
                          skipped=f"bot.web.create_app not importable yet ({exc})"))
        return report
    started = time.perf_counter()
    global MEMBERS
    MEMBERS = getattr(args, "members", None) or MEMBERS
    asyncio.run(measure(report, args.quick, getattr(args, "compare", False)))
    report.note(f"({time.perf_counter() - started:.0f} s)")
    return report


def _extra(parser) -> None:
    parser.add_argument("--bot", nargs=5, help="(internal) run the bot process")
    parser.add_argument("--members", type=int,
                        help=f"members sending four commands each (default {MEMBERS}); fewer "
                             "when the machine is too loaded to acknowledge 200 within Discord's "
                             "3 s")
    parser.add_argument("--compare", action="store_true",
                        help="also run Veil without each issue-12 fix (see VARIANTS)")


if __name__ == "__main__":
    if "--bot" in sys.argv:
        asyncio.run(bot_process(*sys.argv[sys.argv.index("--bot") + 1:][:5]))
        sys.exit(0)
    run_main(main, __doc__.splitlines()[0], _extra)
