"""Veil: a Discord bot that keeps image work private by default."""

__version__ = "0.1.0"
