"""Command line: `python -m bot [run|web|check|rotate-key|sweep]`.

- run (default): the Discord bot, with the link server inside the same process.
- web: only the link server, e.g. behind a reverse proxy on another host or port.
- check: validate settings and the data folder, then exit.
- rotate-key: re-wrap every owner key under a new master key (blobs are not touched).
- sweep: remove what has outlived its retention now, instead of waiting for the schedule.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import sys

from bot.config import ConfigError, Settings, load_settings, parse_master_key
from bot.core.keys import MasterKeyError

log = logging.getLogger("veil")


def _setup_logging(level: str) -> None:
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)-7s %(name)s: %(message)s")
    # discord.py's DEBUG output includes request bodies and aiosqlite's includes SQL parameters
    # (link selectors, wrapped keys): never let either run below INFO (guarantee 8).
    for name in ("discord", "aiosqlite"):
        logging.getLogger(name).setLevel(max(logging.INFO, logging.getLevelName(level)))


async def _open_veil(settings: Settings):
    from bot.core.veil import Veil
    from bot.images import ImageLimits

    return await Veil.open(settings.data_dir, master_key=settings.master_key,
                           limits=ImageLimits(max_bytes=settings.max_upload_bytes,
                                              max_pixels=settings.max_pixels))


def _make_generator(settings: Settings):
    from bot.generate import make_generator

    return make_generator(settings.generator, sd_url=settings.sd_url,
                          timeout_s=settings.generator_timeout_s,
                          comfyui_url=settings.comfyui_url,
                          comfyui_workflow=settings.comfyui_workflow,
                          comfyui_checkpoint=settings.comfyui_checkpoint)


async def run_bot(settings: Settings) -> None:
    from bot.client import VeilBot
    from bot.generate import GenerationQueue, startup_warnings

    async with await _open_veil(settings) as veil:
        generator = _make_generator(settings)
        # An unreachable backend is a warning, not a crash: it may come up after Veil does.
        for warning in await startup_warnings(generator):
            log.warning("%s", warning)
        queue = GenerationQueue(generator, per_user_limit=settings.per_user_queue_limit)
        try:
            async with VeilBot(settings=settings, veil=veil, queue=queue) as client:
                await client.start(settings.discord_token)
        finally:
            await generator.close()


async def check(settings: Settings) -> None:
    async with await _open_veil(settings) as veil:
        images = await veil.ctx.db.fetchval("SELECT count(*) FROM images")
        print(f"Settings are valid. Data folder {settings.data_dir}: {images} images, "
              f"schema version {await veil.ctx.db.schema_version()}.")
        if settings.discord_token is None:
            print("DISCORD_TOKEN is not set: the link server can run, the bot cannot.")
    from bot.generate import startup_warnings

    generator = _make_generator(settings)
    try:
        for warning in await startup_warnings(generator):
            print(f"Warning: {warning}")
    finally:
        await generator.close()


async def rotate_key(settings: Settings) -> None:
    new_key = None
    if settings.master_key is not None:
        raw = os.environ.get("VEIL_NEW_MASTER_KEY", "").strip()
        if not raw:
            raise ConfigError("VEIL_MASTER_KEY is set, so give the new key in "
                              "VEIL_NEW_MASTER_KEY for this command (64 hex digits).")
        new_key = parse_master_key(raw)
    async with await _open_veil(settings) as veil:
        count = await veil.rotate_master_key(new_key)
    print(f"Re-wrapped {count} owner keys under the new master key.")
    if new_key is not None:
        print("Now replace VEIL_MASTER_KEY with the value of VEIL_NEW_MASTER_KEY.")
    else:
        print(f"The new key is in {settings.data_dir / 'master.key'}; back it up.")


async def sweep(settings: Settings) -> None:
    async with await _open_veil(settings) as veil:
        result = await veil.retention.sweep()
        exports = await veil.exports.sweep()
    print(f"Removed {result.images} images, {result.links} links, {result.grants} shares, "
          f"{exports} export files.")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bot", description=__doc__.splitlines()[0])
    parser.add_argument("command", nargs="?", default="run",
                        choices=["run", "web", "check", "rotate-key", "sweep"])
    args = parser.parse_args(argv)
    try:
        settings = load_settings(require_token=args.command == "run")
    except ConfigError as error:
        print(error, file=sys.stderr)
        return 2
    _setup_logging(settings.log_level)
    try:
        if args.command == "run":
            asyncio.run(run_bot(settings))
        elif args.command == "web":
            from bot.web import serve

            asyncio.run(serve(settings))
        else:
            action = {"check": check, "rotate-key": rotate_key, "sweep": sweep}[args.command]
            asyncio.run(action(settings))
    except (ConfigError, MasterKeyError, ValueError) as error:
        print(error, file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        sys.exit(main())
