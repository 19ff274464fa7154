"""Memory (issue 6, item 5): resident size of the idle bot with the million-image database.

A child process does what ``python -m bot run`` does, against the local Discord double
(tests/discord_double, served by this parent process so its memory is not counted): open Veil
on the 1,000,000-image data folder (bench/_dataset.py), build the real ``VeilBot`` with the
procedural generator and the link server on, log in, load every cog, sync the commands, receive
READY and the guild, then sit idle for a few seconds and report VmRSS (and the peak, VmHWM)
from /proc/self/status. The same is done on an empty data folder for comparison. If the
double cannot be used, the child builds the bot and loads the cogs without connecting.

    python -m bench.memory [--quick]
"""

from __future__ import annotations

import asyncio
import gc
import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from bench._common import CACHE, ROOT, Figure, Report, header, run_main
from bench._dataset import dataset

BAR_MB = 150.0
BAR_RATIO = 1.1  # issue 12: idle RSS with 1M images <= 1.1x that with an empty database


def _status(field: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    return float("nan")


async def child(data: str, api: str | None, gateway: str | None, token: str, idle: float) -> dict:
    import discord.gateway
    import discord.http
    import yarl

    from bot.client import VeilBot
    from bot.config import load_settings
    from bot.core.veil import Veil
    from bot.generate import GenerationQueue, make_generator
    from cogs import EXTENSIONS

    logging.basicConfig(level=logging.WARNING)
    settings = load_settings({"DISCORD_TOKEN": token, "VEIL_DATA_DIR": data,
                              "VEIL_WEB_ENABLED": "on", "VEIL_WEB_PORT": "0",
                              "VEIL_PUBLIC_URL": "https://veil.example"})
    mode = "connected to the Discord double"
    async with await Veil.open(settings.data_dir) as veil:
        # Not count(*): that walks a million index entries through the bot's own connection and
        # leaves them in its page cache, which is exactly what is being measured.
        images = await veil.ctx.db.fetchval("SELECT coalesce(max(id), 0) FROM images")
        generator = make_generator(settings.generator, sd_url=settings.sd_url,
                                   timeout_s=settings.generator_timeout_s)
        queue = GenerationQueue(generator, per_user_limit=settings.per_user_queue_limit)
        bot = VeilBot(settings=settings, veil=veil, queue=queue, guild_ready_timeout=0.01,
                      freeze_gc=True)  # as make_bot does for `python -m bot run`
        try:
            if api is None:
                mode = "not connected (cogs loaded by hand)"
                for extension in EXTENSIONS:
                    await bot.load_extension(extension)
            else:
                discord.http.Route.BASE = api
                discord.gateway.DiscordWebSocket.DEFAULT_GATEWAY = yarl.URL(gateway)
                task = asyncio.create_task(bot.start(token))
                for _ in range(1000):
                    if bot.is_ready() or task.done():
                        break
                    await asyncio.sleep(0.01)
                if task.done():
                    task.result()
                if not bot.is_ready():
                    raise RuntimeError("the bot did not become ready")
            await asyncio.sleep(idle)  # background loops run their first pass, then idle
            gc.collect()
            await asyncio.sleep(0.2)
            result = {"rss": _status("VmRSS"), "hwm": _status("VmHWM"), "images": images,
                      "mode": mode, "cogs": len(bot.cogs), "commands":
                      len(bot.tree.get_commands())}
        finally:
            await bot.close()
            await generator.close()
    return result


def _spawn(data: Path, api: str | None, gateway: str | None, token: str, idle: float) -> dict:
    cmd = [sys.executable, "-m", "bench.memory", "--child", str(data), "--idle", str(idle),
           "--token", token]
    if api is not None:
        cmd += ["--api", api, "--gateway", gateway]
    out = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    if out.returncode != 0:
        raise RuntimeError(f"child failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


async def measure(report: Report, quick: bool) -> None:
    idle = 2.0 if quick else 5.0
    big = dataset(1.0, log=report.note)
    empty_root = Path(tempfile.mkdtemp(prefix="memory-empty-", dir=CACHE))
    results = {}
    try:
        try:
            sys.path.insert(0, str(ROOT))
            from tests.discord_double import DiscordDouble

            async with DiscordDouble() as double:
                double.populate()
                for label, data in (("1M images", big), ("empty", empty_root / "data")):
                    results[label] = await asyncio.to_thread(
                        _spawn, data, double.api_base, double.gateway_url, double.token, idle)
        except Exception as exc:  # no double: fall back to a bot that is built, not connected
            report.note(f"(Discord double unavailable: {type(exc).__name__}: {exc}; "
                        "measuring an unconnected bot)")
            for label, data in (("1M images", big), ("empty", empty_root / "data")):
                results[label] = await asyncio.to_thread(_spawn, data, None, None, "x" * 59,
                                                         idle)
    finally:
        shutil.rmtree(empty_root, ignore_errors=True)
    one, zero = results["1M images"], results["empty"]
    report.note(f"bot {one['mode']}: {one['cogs']} cogs, {one['commands']} top-level commands; "
                f"{one['images']:,} images in the database")
    report.note(f"empty data folder: VmRSS {zero['rss']:.1f} MB (peak {zero['hwm']:.1f} MB)")
    report.add(Figure("idle bot RSS with 1M-image database", one["rss"], BAR_MB, "<", "MB",
                      detail=f"(peak {one['hwm']:.1f} MB; empty database {zero['rss']:.1f} MB)"))
    report.add(Figure("idle bot RSS, 1M-image database / empty database",
                      one["rss"] / zero["rss"], BAR_RATIO, "<=",
                      detail=f"({one['rss']:.1f} MB / {zero['rss']:.1f} MB)"))


def main(args) -> Report:
    header("memory: idle bot with the million-image database")
    report = Report("memory")
    asyncio.run(measure(report, args.quick))
    return report


def _extra(parser) -> None:
    parser.add_argument("--child", help=argparse_hidden())
    parser.add_argument("--api")
    parser.add_argument("--gateway")
    parser.add_argument("--token", default="x")
    parser.add_argument("--idle", type=float, default=5.0)


def argparse_hidden():
    import argparse

    return argparse.SUPPRESS


if __name__ == "__main__":
    if "--child" in sys.argv:
        import argparse

        parser = argparse.ArgumentParser()
        _extra(parser)
        parser.add_argument("--quick", action="store_true")
        a = parser.parse_args()
        print(json.dumps(asyncio.run(child(a.child, a.api, a.gateway, a.token, a.idle))))
        os._exit(0)
    run_main(main, __doc__.splitlines()[0], _extra)
