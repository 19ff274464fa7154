"""Veil's own web server for expiring links (DESIGN section 5).

The core never imports aiohttp; everything HTTP lives here and calls ``veil.links``.
"""

from bot.web.app import WebServer, create_app, export_url, link_url, serve, start_web
from bot.web.ratelimit import RateLimit

__all__ = ["RateLimit", "WebServer", "create_app", "export_url", "link_url", "serve",
           "start_web"]
