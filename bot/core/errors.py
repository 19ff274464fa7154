"""Errors a user can cause, each carrying a message written for that user.

Every adapter (slash commands, the link server, the CLI) shows ``str(error)`` as is, so a
message never contains a token, a key or the prompt of a private image.
"""


class VeilError(Exception):
    """Base for every error whose message is safe and meant to be shown to the user."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class NotFound(VeilError):
    """The thing does not exist, or the asker may not know that it exists."""


class Forbidden(VeilError):
    """The asker is known but may not do this."""


class InvalidInput(VeilError):
    """An option or argument is malformed (a bad duration, an empty name, ...)."""


class BadImage(VeilError):
    """A file that is not an image we accept: corrupt, hostile, too large or of a refused type."""


class PolicyViolation(VeilError):
    """The server's policy forbids this (links off, lifetime too long, channel not permitted)."""


class RateLimited(VeilError):
    """Too many requests; try again later."""


class GeneratorUnavailable(VeilError):
    """The image generator backend is down, slow or refused the request."""


class QueueFull(VeilError):
    """The asker already has as many generations waiting as the per-user limit allows."""


class TryAgain(VeilError):
    """Something that must finish first is under way (an erasure, a repair); repeat later."""
