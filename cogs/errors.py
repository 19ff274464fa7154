"""The central error path: every application command's failure ends in ``report_error``."""

from __future__ import annotations

import discord
from discord import app_commands
from discord.ext import commands

from cogs._replies import report_error


async def on_app_command_error(interaction: discord.Interaction,
                               error: app_commands.AppCommandError) -> None:
    await report_error(interaction, error)


async def setup(bot: commands.Bot) -> None:
    bot.tree.error(on_app_command_error)


async def teardown(bot: commands.Bot) -> None:
    bot.tree.on_error = app_commands.CommandTree.on_error.__get__(bot.tree)  # type: ignore[method-assign]
