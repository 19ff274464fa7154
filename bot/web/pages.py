"""The link server's HTML and its one stylesheet.

Pages are small and neutral: they name neither the owner nor the server the image came from,
carry no preview metadata (no Open Graph or Twitter card tags, so a chat app's unfurl shows
nothing), and no inline style or script (the Content-Security-Policy forbids both). Everything
interpolated is escaped. The 404 body is built once, so every miss answers the same bytes.
"""

from __future__ import annotations

import html
from datetime import UTC, datetime
from urllib.parse import quote

from bot.core.models import ImageRecord, ShareLink

STYLESHEET = """\
:root { color-scheme: light dark; --fg: #1b1b1f; --bg: #f7f7f8; --muted: #55555f;
        --card: #ffffff; --line: #d9d9de; }
@media (prefers-color-scheme: dark) {
  :root { --fg: #ececf1; --bg: #16161a; --muted: #a8a8b3; --card: #202026; --line: #34343c; }
}
* { box-sizing: border-box; }
html { font-family: system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; line-height: 1.5;
       color: var(--fg); background: var(--bg); }
body { margin: 0; padding: 2rem 1rem; }
main { max-width: 48rem; margin: 0 auto; background: var(--card); border: 1px solid var(--line);
       border-radius: 0.75rem; padding: 1.5rem; }
h1 { font-size: 1.25rem; margin: 0 0 1rem; }
figure { margin: 0 0 1rem; text-align: center; }
img { max-width: 100%; height: auto; border-radius: 0.25rem; }
dl { display: grid; grid-template-columns: max-content 1fr; gap: 0.25rem 1rem; margin: 0 0 1rem; }
dt { color: var(--muted); }
dd { margin: 0; }
p { margin: 0 0 0.75rem; }
form { display: flex; flex-wrap: wrap; gap: 0.5rem; margin: 0 0 1rem; }
label { flex-basis: 100%; }
input { font: inherit; padding: 0.4rem 0.6rem; border: 1px solid var(--line);
        border-radius: 0.375rem; color: var(--fg); background: var(--bg); }
input[type=password] { flex: 1 1 12rem; }
button { font: inherit; padding: 0.4rem 1rem; border: 1px solid var(--line);
         border-radius: 0.375rem; cursor: pointer; }
.error { color: #b3261e; }
@media (prefers-color-scheme: dark) { .error { color: #f2b8b5; } }
.note { color: var(--muted); font-size: 0.925rem; }
footer { max-width: 48rem; margin: 1rem auto 0; color: var(--muted); font-size: 0.85rem;
         text-align: center; }
"""


def link_path(token: str) -> str:
    """A link's path, ``/l/<token>``: the one place its shape is written (routes aside)."""
    return f"/l/{quote(token, safe='')}"


def export_path(token: str) -> str:
    """An export download's path, ``/x/<token>``."""
    return f"/x/{quote(token, safe='')}"


def _document(base_path: str, title: str, body: str) -> bytes:
    css = html.escape(f"{base_path}/static/veil.css")
    return (
        "<!doctype html>\n"
        '<html lang="en">\n<head>\n'
        '<meta charset="utf-8">\n'
        '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
        '<meta name="robots" content="noindex, nofollow">\n'
        '<meta name="referrer" content="no-referrer">\n'
        f"<title>{html.escape(title)}</title>\n"
        f'<link rel="stylesheet" href="{css}">\n'
        "</head>\n<body>\n<main>\n"
        f"{body}"
        "</main>\n"
        "<footer>Shared privately with Veil. This page is not indexed and not cached.</footer>\n"
        "</body>\n</html>\n"
    ).encode()


def _in_words(seconds: float) -> str:
    """A rough, friendly remaining time: 'less than a minute', 'about 3 hours', '2 days'."""
    if seconds < 60:
        return "less than a minute"
    for size, unit in ((86400, "day"), (3600, "hour"), (60, "minute")):
        if seconds >= size:
            count = round(seconds / size)
            return f"about {count} {unit}{'' if count == 1 else 's'}"
    return "less than a minute"  # unreachable; keeps the type checker calm


class Pages:
    """HTML for one deployment, whose public URL may sit under a path prefix."""

    def __init__(self, base_path: str = "") -> None:
        self.base_path = base_path.rstrip("/")
        self.not_found = _document(self.base_path, "Link not available · Veil", (
            "<h1>This link is not available</h1>\n"
            "<p>It may have expired, reached its view limit or been revoked by the person who "
            "shared it, or the address may be incomplete.</p>\n"
            '<p class="note">Ask them for a new link if you still need to see the image.</p>\n'))
        self.too_many = _document(self.base_path, "Too many attempts · Veil", (
            "<h1>Too many attempts</h1>\n"
            "<p>Too many links that do not work were opened from your network. Please wait a "
            "minute and try again.</p>\n"))

        self.too_many_answers = _document(self.base_path, "Too many attempts · Veil", (
            "<h1>Too many wrong passwords</h1>\n"
            "<p>Too many wrong passwords were tried for this link. Please wait a little and "
            "try again.</p>\n"))

    def page_url(self, token: str) -> str:
        return self.base_path + link_path(token)

    def image_url(self, token: str) -> str:
        return f"{self.page_url(token)}/image"

    def password_form(self, token: str, *, wrong: bool = False) -> bytes:
        """The page of a link with a password, before a correct answer: no image, no address of
        it, nothing about the link but that it asks for a password."""
        error = ('<p class="error" role="alert">That password is not right. Please try '
                 "again.</p>\n" if wrong else "")
        return _document(self.base_path, "A private image · Veil", (
            "<h1>This image is protected by a password</h1>\n"
            "<p>The person who shared it gave this link a password. Enter it to see the "
            "image.</p>\n"
            f"{error}"
            f'<form method="post" action="{html.escape(self.page_url(token))}">'
            '<label for="password">Password</label>'
            '<input type="password" id="password" name="password" required '
            'autocomplete="off" autofocus maxlength="128">'
            '<button type="submit">Open</button>'
            "</form>\n"
            '<p class="note">Opening the image once you are in uses a view, as usual.</p>\n'))

    def viewer(self, token: str, link: ShareLink, image: ImageRecord, now: float) -> bytes:
        """The page a person sees: the image (fetched by the browser, which spends the view),
        when the link expires and how many views are left."""
        expires = datetime.fromtimestamp(link.expires_at, UTC)
        facts = (
            "<dt>Link expires</dt>"
            f'<dd><time datetime="{expires.strftime("%Y-%m-%dT%H:%M:%SZ")}">'
            f'{expires.strftime("%d %b %Y, %H:%M")} UTC</time> '
            f"(in {_in_words(link.expires_at - now)})</dd>\n"
        )
        if link.max_views is None:
            facts += "<dt>Views left</dt><dd>No view limit</dd>\n"
            again = ""
        else:
            left = max(0, link.max_views - link.views)
            facts += f"<dt>Views left</dt><dd>{left}, counting this one</dd>\n"
            again = " Opening this page again uses another view."
        saving = ("<p>The person who shared it allows saving a copy.</p>\n"
                  if link.allow_download else "")
        body = (
            "<h1>A private image shared with you through Veil</h1>\n"
            "<figure>"
            f'<img src="{html.escape(self.image_url(token))}" alt="The shared image" '
            f'width="{int(image.width)}" height="{int(image.height)}">'
            "</figure>\n"
            f"<dl>\n{facts}</dl>\n"
            f"{saving}"
            f'<p class="note">Anyone holding this link can open it until it expires or runs out '
            f"of views, so please do not pass it on.{again}</p>\n"
        )
        return _document(self.base_path, "A private image · Veil", body)

    def export_url(self, token: str) -> str:
        return self.base_path + export_path(token)

    def export_ready(self, token: str, images: int, byte_size: int, expires_at: float,
                     now: float) -> bytes:
        """The page of a ready export: what it holds, and a button that spends the download
        (a POST, so a link checker or a preview fetcher following the URL spends nothing)."""
        expires = datetime.fromtimestamp(expires_at, UTC)
        size = (f"{byte_size / 1e6:.1f} MB" if byte_size >= 100_000
                else f"{max(1, round(byte_size / 1e3))} kB")
        return _document(self.base_path, "Your export · Veil", (
            "<h1>Your Veil export is ready</h1>\n"
            f"<dl>\n<dt>Holds</dt><dd>{int(images)} image{'' if images == 1 else 's'} and "
            "your records</dd>\n"
            f"<dt>Size</dt><dd>{html.escape(size)} (zip)</dd>\n"
            "<dt>Available until</dt>"
            f'<dd><time datetime="{expires.strftime("%Y-%m-%dT%H:%M:%SZ")}">'
            f'{expires.strftime("%d %b %Y, %H:%M")} UTC</time> '
            f"(in {_in_words(expires_at - now)})</dd>\n</dl>\n"
            f'<form method="post" action="{html.escape(self.export_url(token))}">'
            '<button type="submit">Download</button></form>\n'
            '<p class="note">The download works once: after it, or when the time above has '
            "passed, the file is deleted from Veil. Ask for a new export with /export if you "
            "need it again.</p>\n"))

    def for_unfurler(self) -> bytes:
        """What a link-preview fetcher gets for a live link: no image, no address of it."""
        return _document(self.base_path, "A private image · Veil", (
            "<h1>A private image shared with you through Veil</h1>\n"
            "<p>Open this link in a web browser to see it. Private images have no preview.</p>\n"))

    def error(self, status: int, reason: str) -> bytes:
        return _document(self.base_path, f"{status} · Veil", (
            f"<h1>{int(status)} {html.escape(reason)}</h1>\n"
            "<p>Veil could not answer this request.</p>\n"))
