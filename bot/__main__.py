"""Command line: `python -m bot [command]`; `python -m bot --help` lists the commands.

Every mistake an operator can make at start-up (no .env, a wrong token, no network, a port in
use, an unusable data folder, a bad setting) ends in one line that says what to do and exit code
2, with no traceback unless VEIL_LOG_LEVEL=DEBUG.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import functools
import logging
import os
import signal
import sys
from collections.abc import Callable, Coroutine, Iterator
from typing import TYPE_CHECKING, Any

from bot.config import ConfigError, Settings, StartupError, load_settings, parse_master_key
from bot.logs import REDACTOR, setup_logging

if TYPE_CHECKING:
    from bot.client import VeilBot
    from bot.core.veil import Veil

log = logging.getLogger("veil")

EXIT_STARTUP = 2  # the operator can fix it; the message said how
EXIT_FAULT = 1  # a defect or an unforeseen condition
EXIT_INTERRUPTED = 130  # Ctrl-C in the middle of work that is not done (the shell's 128 + 2)
MAX_WEB_WORKERS = 64

COMMANDS = {
    "run": "run the Discord bot, with the link server in the same process (the default)",
    "web": "run only the link server (its own service, behind a proxy or a load balancer)",
    "check": "validate the settings and the store, say which store is in use, then exit",
    "rotate-key": "re-wrap every owner key under a new master key (images are not touched)",
    "sweep": "delete what has outlived its retention now, not at the next scheduled sweep",
    "sync": "send the slash commands to Discord once, from this process only",
    "migrate-storage": "copy the data folder's store into PostgreSQL and S3 (--reverse: back)",
}


async def _open_veil(settings: Settings, *, also: bytes | None = None,
                     repair: bool = True, claim: bool = True) -> Veil:
    """Open the data folder; ``also``: one more key to hold (the new one, for rotate-key);
    ``repair``: run start-up repair (not on a store a copy is filling); ``claim=False``: this
    process holds the store exclusively already (migrate-storage)."""
    from bot.core.veil import Veil
    from bot.images import ImageLimits

    keys = settings.master_keys()
    return await Veil.open(settings.data_dir,
                           master_key=None if keys is None else keys + [k for k in [also] if k],
                           blob_url=settings.blob_url, s3=settings.s3, repair=repair,
                           claim=claim,
                           limits=ImageLimits(max_bytes=settings.max_upload_bytes,
                                              max_pixels=settings.max_pixels),
                           database_url=settings.database_url,
                           db_pool_min=settings.db_pool_min, db_pool_max=settings.db_pool_max)


def _make_generator(settings: Settings):
    from bot.generate import make_generator

    return make_generator(settings.generator, sd_url=settings.sd_url,
                          timeout_s=settings.generator_timeout_s,
                          comfyui_url=settings.comfyui_url,
                          comfyui_workflow=settings.comfyui_workflow,
                          comfyui_checkpoint=settings.comfyui_checkpoint)


async def run_bot(settings: Settings) -> None:
    from bot.client import make_bot
    from bot.generate import GenerationQueue, startup_warnings

    async with await _open_veil(settings) as veil:
        generator = _make_generator(settings)
        # An unreachable backend is a warning, not a crash: it may come up after Veil does.
        for warning in await startup_warnings(generator):
            log.warning("%s", warning)
        queue = GenerationQueue(generator, per_user_limit=settings.per_user_queue_limit,
                                slots=_shared_slots(settings, veil))
        try:
            async with make_bot(settings=settings, veil=veil, queue=queue) as client:
                _close_on_signals(client)
                with _reaching_discord():
                    await client.start(settings.discord_token or "")
        finally:
            await generator.close()


@contextlib.contextmanager
def _reaching_discord() -> Iterator[None]:
    """A refused token or an unreachable Discord, as one line that says what to do."""
    import aiohttp
    import discord

    try:
        yield
    except discord.LoginFailure as exc:
        raise ConfigError(
            "Discord refused DISCORD_TOKEN (wrong, or reset since): copy a new token from "
            "https://discord.com/developers/applications -> your app -> Bot -> Reset Token "
            "into .env.") from exc
    except aiohttp.ClientConnectorError as exc:
        raise StartupError(
            f"Veil cannot start: cannot reach Discord at {exc.host} ({_reason(exc)}): check "
            "this machine's network connection and DNS, then start Veil again.") from exc


def _close_on_signals(client: VeilBot) -> None:
    """Ctrl-C or SIGTERM closes the bot, which then leaves ``start``. Not by cancelling the main
    task, as asyncio.run would: on Python 3.11, a cancellation that arrives while discord.py
    finishes connecting is swallowed by its wait_for, and the bot would run on. A second signal
    falls back to the default behaviour, for a close that itself hangs."""
    loop = asyncio.get_running_loop()

    def close(signum: int) -> None:
        for other in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(other)
        signal.signal(signal.SIGINT, signal.default_int_handler)
        log.info("Received %s: closing", signal.Signals(signum).name)
        closing = loop.create_task(client.close())
        _CLOSING.add(closing)
        closing.add_done_callback(_CLOSING.discard)

    for signum in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
            loop.add_signal_handler(signum, close, signum)


_CLOSING: set[asyncio.Task[None]] = set()  # keeps the close task referenced until it ends


def _reason(exc: OSError) -> str:
    cause = exc.os_error if hasattr(exc, "os_error") else exc
    return getattr(cause, "strerror", None) or str(cause) or type(cause).__name__


def _shared_slots(settings: Settings, veil):
    """The per-user generation limit held in the database, when several bots share it."""
    if not settings.shared_limits:
        return None
    from bot.core.limits import GenerationSlots

    # A slot outlives a dead process by at most a few generator timeouts.
    return GenerationSlots(veil.ctx, per_user_limit=settings.per_user_queue_limit,
                           lifetime_s=4 * settings.generator_timeout_s + 60)


async def check(settings: Settings) -> None:
    async with await _open_veil(settings) as veil:
        images = await veil.ctx.db.fetchval("SELECT count(*) FROM images")
        print(f"Settings are valid. Data folder {settings.data_dir}: {images} images, "
              f"schema version {await veil.ctx.db.schema_version()}.")
        print(f"Blobs: {veil.ctx.blobs.description}.")
        print(f"Database: {settings.database_label}.")
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
        try:
            new_key = parse_master_key(raw)
        except ValueError as exc:
            raise ConfigError(f"VEIL_NEW_MASTER_KEY {exc}.") from exc
    # Holding the new key too lets a rotation that stopped half-way be run again as it was.
    async with await _open_veil(settings, also=new_key) as veil:
        count = await veil.rotate_master_key(new_key)
    print(f"Re-wrapped {count} owner keys under the new master key.")
    if new_key is not None:
        print("Now replace VEIL_MASTER_KEY with the value of VEIL_NEW_MASTER_KEY. Processes "
              "still running with only the old key refuse to read until restarted; give them "
              "both keys (VEIL_MASTER_KEY=old,new) beforehand to keep them running through it.")
    else:
        print(f"The new key is in {settings.data_dir / 'master.key'}; back it up.")


async def sweep(settings: Settings) -> None:
    async with await _open_veil(settings) as veil:
        result = await veil.retention.sweep()
        exports = await veil.exports.sweep()
    print(f"Removed {result.images} images, {result.links} links, {result.grants} shares, "
          f"{exports} export files.")


async def sync(settings: Settings) -> None:
    """Send the slash commands to Discord once, from this one process."""
    from bot.client import VeilBot
    from bot.generate import GenerationQueue, make_generator

    async with await _open_veil(settings) as veil:
        generator = make_generator("procedural", sd_url=None, timeout_s=1.0)
        try:
            async with VeilBot(settings=settings, veil=veil, queue=GenerationQueue(generator),
                               sync_commands=False, start_web=False) as client:
                with _reaching_discord():
                    count = await client.sync_commands_once(settings.discord_token or "")
        finally:
            await generator.close()
    print(f"Sent {count} slash commands to Discord.")


async def migrate_storage(settings: Settings, *, reverse: bool = False) -> None:
    """Copy the embedded store (SQLite file and image folder in VEIL_DATA_DIR) into the one
    the settings name, or back; see bot.storage_migration."""
    from bot.core.keys import MasterKeyError
    from bot.core.veil import UNFINISHED_MIGRATION, database_of
    from bot.storage_migration import MigrationError, Side, copy_store, stores_to_ourselves

    if settings.database_url is None and settings.blob_url is None:
        raise MigrationError(
            "migrate-storage copies the data folder's store into the one VEIL_DATABASE_URL and "
            "VEIL_BLOB_URL name, and neither is set, so the target would be the data folder "
            "itself: set them (README: 'Running beyond one machine').")
    embedded = dataclasses.replace(settings, database_url=None, blob_url=None)
    source, target = (settings, embedded) if reverse else (embedded, settings)
    if not reverse and not (settings.data_dir / "veil.db").exists():
        raise MigrationError(f"The data folder {settings.data_dir} holds no Veil store to copy: "
                             "point VEIL_DATA_DIR at the folder the bot has been using.")
    sides = [Side(role, database_of(each.data_dir, each.database_url), each.database_label)
             for role, each in (("source", source), ("target", target))]
    # Both stores to ourselves for the whole copy: see bot.storage_migration.
    async with stores_to_ourselves(sides), await _open_veil(source, claim=False) as old:
        pending = await old.ctx.db.fetchval("SELECT value FROM meta WHERE key = ?",
                                            (UNFINISHED_MIGRATION,))
        if pending is not None and sides[0].database != sides[1].database:
            raise MigrationError(
                f"The source, {source.database_label}, is itself the target of a "
                f"migrate-storage from {pending} that has not finished: finish that one first "
                "(run it again with the settings it ran with).")
        try:
            # No start-up repair on the target: objects are copied ahead of their rows, and
            # where only the database moves the image folder is the source's own.
            new = await _open_veil(target, repair=False, claim=False)
        except MasterKeyError as exc:
            raise MigrationError(
                "The target store was set up with another master key than the source: keys "
                "are copied wrapped, so both must use the same one. Give migrate-storage the "
                "source's key, or point it at an empty target.") from exc
        async with new:
            print(f"Copying from {source.database_label}, images in {old.ctx.blobs.description}"
                  f"\n          to {target.database_label}, images in "
                  f"{new.ctx.blobs.description}")
            report = await copy_store(old, new, blobs_shared=settings.blob_url is None,
                                      source_label=source.database_label, progress=print)
    print(f"Done: {report.rows_added} new rows ({sum(report.rows.values())} in the source), "
          f"{report.blobs_added} new image objects; all {report.images} images open in the "
          "target.")
    if report.rows_added == 0 and report.blobs_added == 0:
        print("The target already held everything: nothing was added.")
    if settings.master_key is None:
        print(f"The master key stays in {settings.data_dir / 'master.key'}. Every process on "
              "the new store needs the same key: give each one VEIL_MASTER_KEY (the first line "
              "of that file), and keep the file out of your database backups.")
    else:
        print("Every process on the new store needs the same VEIL_MASTER_KEY as this one.")


async def web(settings: Settings) -> None:
    from bot.web import serve

    await serve(settings)


ACTIONS: dict[str, Callable[[Settings], Coroutine[Any, Any, None]]] = {
    "run": run_bot, "web": web, "check": check, "rotate-key": rotate_key, "sweep": sweep,
    "sync": sync, "migrate-storage": migrate_storage}


class _HelpFormatter(argparse.HelpFormatter):
    """One line per command, without argparse's extra line naming the command placeholder."""

    def __init__(self, prog: str) -> None:
        super().__init__(prog, width=100)
        # argparse sizes the name column by "command", not by the longest command's name.
        self._action_max_length = max(len(name) for name in COMMANDS) + 6

    def _format_action(self, action: argparse.Action) -> str:
        text = super()._format_action(action)
        if action.nargs == argparse.PARSER:
            text = text.split("\n", 1)[1]
        return text


def _worker_count(text: str) -> int:
    if not text.isdigit() or not 1 <= int(text) <= MAX_WEB_WORKERS:
        raise argparse.ArgumentTypeError(
            f"give a whole number from 1 to {MAX_WEB_WORKERS} (one per core suits most "
            f"machines), not {text!r}")
    return int(text)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m bot", formatter_class=_HelpFormatter,
        description="Veil, a Discord bot that keeps image work private. Settings come from "
                    "the environment or .env (see .env.example).")
    commands = parser.add_subparsers(dest="command", title="commands (default: run)",
                                     metavar="command")
    for name, summary in COMMANDS.items():
        command = commands.add_parser(name, help=summary,
                                      description=summary[0].upper() + summary[1:])
        if name == "web":
            command.add_argument("--workers", type=_worker_count, metavar="N",
                                 help="serve from N processes sharing the port (SO_REUSEPORT; "
                                      "default: VEIL_WEB_WORKERS or 1)")
            # Set by the first process on the ones it starts: bind beside it, start none.
            command.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
        if name == "migrate-storage":
            command.description = (
                f"{command.description}. Every Veil process on both stores must be stopped "
                "first: it refuses while one runs, and none can start until it is done.")
            command.add_argument("--reverse", action="store_true",
                                 help="copy from the store VEIL_DATABASE_URL and VEIL_BLOB_URL "
                                      "name back into the data folder")
    return parser


def _say(message: str) -> None:
    print(REDACTOR.scrub(message), file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    command = args.command or "run"
    try:
        settings = load_settings(require_token=command in ("run", "sync"))
    except ConfigError as error:
        _say(str(error))
        return EXIT_STARTUP
    if getattr(args, "workers", None):
        settings = dataclasses.replace(settings, web_workers=args.workers)
    if getattr(args, "worker", False):
        settings = dataclasses.replace(settings, web_workers=1, web_reuse_port=True)
    setup_logging(settings.log_level)
    # Whatever the command: a store's error text or a library's debug line may quote them.
    REDACTOR.add_secrets(*settings.secrets())
    debug = settings.log_level == "DEBUG"
    from bot.core.blobs import BlobStoreError
    from bot.core.keys import MasterKeyError
    from bot.core.leases import LeaseHeld
    from bot.core.veil import DataFolderError
    from bot.storage_migration import MigrationError

    try:
        action = ACTIONS[command]
        if command == "migrate-storage":
            action = functools.partial(migrate_storage, reverse=args.reverse)
        asyncio.run(action(settings))
    except (StartupError, MasterKeyError, DataFolderError, LeaseHeld, BlobStoreError,
            MigrationError) as error:
        if debug:
            log.debug("Start-up failed", exc_info=error)
        _say(str(error))
        return EXIT_STARTUP
    except KeyboardInterrupt:
        if command == "migrate-storage":  # not a clean stop: the new store is half-filled
            _say("migrate-storage was interrupted before it finished: nothing is lost, but the "
                 "new store is not ready; run migrate-storage again to finish the copy.")
            return EXIT_INTERRUPTED
    except Exception as error:
        if debug:
            raise
        _say(f"Veil stopped on an unexpected error ({type(error).__name__}: {error}). Run "
             "again with VEIL_LOG_LEVEL=DEBUG to see where, and report it.")
        return EXIT_FAULT
    return 0


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        sys.exit(main())
