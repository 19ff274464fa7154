"""A local double of Discord's gateway and REST API for end-to-end tests of discord.py bots.

See README.md in this folder. The main entry point is :class:`DiscordDouble`.
"""

from .interactions import CommandNotAvailable, InteractionHandle, RegisteredCommand
from .server import DiscordDouble, DoubleTimeoutError, World
from .state import (
    Call,
    Channel,
    FailureRule,
    Guild,
    Member,
    MessageVersion,
    Role,
    StoredAttachment,
    StoredMessage,
    UploadedFile,
    User,
)

__all__ = [
    "Call",
    "Channel",
    "CommandNotAvailable",
    "DiscordDouble",
    "DoubleTimeoutError",
    "FailureRule",
    "Guild",
    "InteractionHandle",
    "Member",
    "MessageVersion",
    "RegisteredCommand",
    "Role",
    "StoredAttachment",
    "StoredMessage",
    "UploadedFile",
    "User",
    "World",
]
