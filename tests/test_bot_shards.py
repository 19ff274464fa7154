"""Several bot processes: shards from settings, and slash commands synced by one process only."""

from __future__ import annotations

from discord.ext import commands

from bot.client import make_bot
from bot.config import load_settings
from bot.core.veil import Veil
from bot.generate import GenerationQueue, ProceduralGenerator
from tests.discord_double import DiscordDouble
from tests.e2e import App, app_settings, image_ids

SYNC_PATH = r"^/applications/\d+/commands$"


async def test_a_bot_on_one_shard_of_two_serves_commands_and_only_shard_0_syncs(tmp_path):
    async with DiscordDouble() as double:
        world = double.populate()
        for shard, syncs in (("0", 1), ("1", 1)):
            settings = app_settings(double, tmp_path / "data", VEIL_SHARD_COUNT="2",
                                    VEIL_SHARD_IDS=shard)
            (settings.data_dir / "commands-global.sha256").unlink(missing_ok=True)
            async with await Veil.open(settings.data_dir) as veil:
                generator = ProceduralGenerator()
                bot = make_bot(settings=settings, veil=veil, queue=GenerationQueue(generator),
                               guild_ready_timeout=0.01)
                assert isinstance(bot, commands.AutoShardedBot)
                assert bot.shard_ids == [int(shard)] and bot.shard_count == 2
                async with double.running(bot):
                    app = App(double, world, bot, veil)
                    await app.run("imagine", user=world.alice,
                                  options={"prompt": f"shard {shard}"})
                    assert len(await image_ids(app, world.alice)) == int(shard) + 1
                await generator.close()
            # Shard 1's process never syncs, even with no record of an earlier sync.
            assert len(double.calls_to("PUT", SYNC_PATH)) == syncs
        double.assert_no_unhandled()


async def test_the_sync_command_sends_the_slash_commands_once_without_a_gateway_session(
        tmp_path, capsys):
    from bot.__main__ import sync

    async with DiscordDouble() as double:
        double.populate()
        double.install()
        settings = load_settings({"DISCORD_TOKEN": double.token,
                                  "VEIL_DATA_DIR": str(tmp_path / "data"),
                                  "VEIL_SYNC_COMMANDS": "off"})
        await sync(settings)
        [put] = double.calls_to("PUT", SYNC_PATH)
        assert put.status == 200
        assert not double.calls_to("GET", r"^/gateway")
    assert "Sent" in capsys.readouterr().out
