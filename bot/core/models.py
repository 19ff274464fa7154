"""The plain records the core speaks in. Ids from Discord are ints; ids shown to users are str."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal

if TYPE_CHECKING:
    from bot.core.ledger import Basis

Visibility = Literal["private", "public"]
GranteeKind = Literal["user", "role", "group"]
DeliveryKind = Literal["channel", "dm", "ephemeral"]


@dataclass(frozen=True)
class Viewer:
    """Who is asking, as Discord told us on this very request (roles are never cached)."""

    user_id: int
    role_ids: frozenset[int] = frozenset()
    guild_id: int | None = None
    is_moderator: bool = False


@dataclass(frozen=True)
class ImageRecord:
    id: int
    public_id: str
    owner_id: int
    guild_id: int | None
    visibility: Visibility
    source: str
    created_at: float
    expires_at: float | None
    byte_size: int
    format: str
    width: int
    height: int
    blob_name: str

    @property
    def mime(self) -> str:
        return {"PNG": "image/png", "JPEG": "image/jpeg", "WEBP": "image/webp"}.get(
            self.format, "application/octet-stream")

    @property
    def extension(self) -> str:
        return {"PNG": "png", "JPEG": "jpg", "WEBP": "webp"}.get(self.format, "bin")


@dataclass(frozen=True)
class WrappedKeys:
    """An image's data key and its owner's key as stored (each sealed under the next), read
    together with a link's token so a fetch needs no second lookup."""

    image_key: bytes = field(repr=False)
    owner_key: bytes = field(repr=False)
    master_key_id: str | None = None


@dataclass(frozen=True)
class ImageContent:
    """Decrypted, sanitized bytes of one image, held in memory only."""

    record: ImageRecord
    data: bytes = field(repr=False)  # an image in a log line or test failure is a leak
    thumbnail: bool = False

    @property
    def filename(self) -> str:
        # Neutral: the original file name is never kept anywhere.
        suffix = "-thumb" if self.thumbnail else ""
        return f"veil-{self.record.public_id}{suffix}.{self.record.extension}"


# One prompt limit for the command, the generators and the store.
MAX_PROMPT_CHARS = 2000
# Seeds stay in the unsigned 32-bit range that Stable Diffusion WebUI and most samplers accept.
SEED_LIMIT = 2**32


@dataclass(frozen=True)
class GenerationParams:
    """How one generated image was drawn: enough to draw it again or vary it."""

    seed: int
    width: int
    height: int
    generator: str
    batch_size: int = 1
    variation_seed: int | None = None
    variation_strength: float = 0.0


@dataclass(frozen=True)
class GenerationDetails:
    """What the owner's Details button shows. The prompt never appears in a repr."""

    image_public_id: str
    prompt: str = field(repr=False)
    params: GenerationParams | None = None


FollowUpKind = Literal["reroll", "variation"]


@dataclass(frozen=True)
class FollowUp:
    """A new generation the owner asked for from one of their images (Re-roll or Variations):
    what to draw, and where the new images belong (the original's server and visibility)."""

    prompt: str = field(repr=False)
    count: int
    seed: int
    width: int
    height: int
    variation_seed: int | None
    variation_strength: float
    guild_id: int | None
    requested_private: bool


@dataclass(frozen=True)
class Grant:
    id: int
    owner_id: int
    image_public_id: str | None  # None: all of the owner's images
    grantee_kind: GranteeKind
    grantee_id: int
    created_at: float
    expires_at: float | None
    group_name: str | None = None


@dataclass(frozen=True)
class Group:
    id: int
    owner_id: int
    name: str
    member_ids: tuple[int, ...] = ()


@dataclass(frozen=True)
class ShareLink:
    public_id: str
    image_public_id: str
    created_at: float
    expires_at: float
    max_views: int | None
    views: int
    revoked: bool
    allow_download: bool
    watermark: bool
    has_password: bool = False
    password_failures: int = 0  # wrong answers so far (a count: never who or from where)

    def status(self, now: float) -> str:
        if self.revoked:
            return "revoked"
        if now >= self.expires_at:
            return "expired"
        if self.max_views is not None and self.views >= self.max_views:
            return "used up"
        return "live"


@dataclass(frozen=True)
class NewLink:
    """A link just made. The token exists only here: the database keeps a hash of it."""

    link: ShareLink
    token: str = field(repr=False)


@dataclass(frozen=True)
class LinkSession:
    """What a correct password gives: a session for one link. The token exists only here and in
    the viewer's cookie; the database keeps a hash of it."""

    token: str = field(repr=False)
    expires_at: float


@dataclass(frozen=True)
class Retraction:
    id: int
    channel_id: int
    message_id: int
    attempts: int


@dataclass(frozen=True)
class Removal:
    """What a deletion removed, and how many posted messages now wait to be retracted."""

    image_ids: tuple[str, ...] = ()
    retractions_queued: int = 0
    ephemeral_copies: int = 0  # copies no bot can delete (ephemeral replies and the like)
    retraction_ids: tuple[int, ...] = ()


@dataclass(frozen=True)
class GuildPolicy:
    guild_id: int
    force_private: bool = False
    links_enabled: bool = True
    link_max_lifetime: float = 7 * 86400.0
    retention_days: int | None = None
    mod_role_id: int | None = None
    permitted_channels: frozenset[int] = field(default_factory=frozenset)


@dataclass(frozen=True)
class GalleryItem:
    record: ImageRecord
    mine: bool


@dataclass(frozen=True)
class GalleryPage:
    items: tuple[GalleryItem, ...]
    page: int
    has_more: bool


@dataclass(frozen=True)
class GalleryThumbnail:
    record: ImageRecord
    mine: bool
    thumbnail: ImageContent
    basis: Basis  # why the viewer may see it: what the copy shown in Discord is recorded under


@dataclass(frozen=True)
class ThumbnailPage:
    """A gallery page ready to show: each image's thumbnail, decrypted, views already logged."""

    items: tuple[GalleryThumbnail, ...]
    page: int
    has_more: bool


@dataclass(frozen=True)
class ViewEntry:
    image_public_id: str
    viewer_id: int | None
    via: str
    link_id: str | None
    agent: str | None
    at: float


@dataclass(frozen=True)
class AuditEntry:
    id: int
    at: float
    guild_id: int | None
    actor_id: int | None
    action: str
    target_user: int | None
    image_ref: str | None
    detail: str | None


@dataclass(frozen=True)
class Report:
    id: int
    image_public_id: str
    guild_id: int | None
    reporter_id: int
    reason: str
    created_at: float
    closed: bool
