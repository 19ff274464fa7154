"""Run ``python -m bot ...`` with discord.py pointed at another Discord (a test double, or an
address where nothing listens), for start-up tests in a real subprocess.

Usage: python -m tests.cliagainst API_BASE GATEWAY_URL [bot arguments...]
"""

from __future__ import annotations

import sys

import discord.gateway
import discord.http
import yarl

from bot.__main__ import main

if __name__ == "__main__":
    api_base, gateway_url, *args = sys.argv[1:]
    discord.http.Route.BASE = api_base
    discord.gateway.DiscordWebSocket.DEFAULT_GATEWAY = yarl.URL(gateway_url)
    sys.exit(main(args))
