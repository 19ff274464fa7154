"""Discord adapters: one cog per user-facing area, each a thin layer over ``bot.core``.

Helpers shared by the cogs live in ``_``-prefixed modules.
"""

EXTENSIONS = (
    "cogs.errors",
    "cogs.private",
    "cogs.imagine",
    "cogs.gallery",
    "cogs.share",
    "cogs.links",
    "cogs.admin",
)
