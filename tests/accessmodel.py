"""A plain, in-memory reference model of who may see what in Veil (DESIGN sections 2 to 4).

Written from the design and the documented meaning of each operation, without calling the core:
the state machine in ``test_assurance_model.py`` applies the same operations to this model and
to a real ``Veil`` and checks that both answer every question the same way.

The model is deliberately naive: lists and dicts, every answer recomputed from scratch by a
direct reading of the rules. An operation the core would refuse raises ``Refused`` with the
name of the core's error class (``NotFound``, ``InvalidInput``, ``PolicyViolation``,
``Forbidden``) *before* changing anything.

Rules in one place:
- An image is alive while its row exists (not deleted, purged, taken down, forgotten or swept)
  and its own expiry has not come (``now < expires_at``). Only its owner manages it (share, link,
  change, delete); management works on an expired image until the sweeper removes it.
- ``viewer`` may see an alive image iff: they own it; or they hold a live grant (to them, to a
  role they hold on this request, or to a personal group of the owner they are in; on this image
  or on all of the owner's images; not expired); or it is public, it came from a server and the
  request comes from that server; or they moderate its origin server, ask from there, and a
  report on it is open and in force: the reporter's own access still holds (they own it, it is
  still public, or the owner still shares it with the target they saw it through).
- A new image is private if its server forces private mode, else as requested, else as the
  owner's private mode (on by default, and again after forget-me).
- Delivery: a channel only for a public image, asked in a channel that moderators of the image's
  origin server permitted (so in that server); everything else goes privately (DM).
- Links: live while not revoked, not expired, under their view limit, links are on for the
  image's server, and the image is alive. Lowering a server's longest link lifetime shortens
  that server's existing links for good (raising it again gives nothing back: an expired link
  stays expired, guarantee 3). Turning links off stops them while off (a pause).

Known deviations of the core (``CORE_QUIRKS``): each is a place where the core, as it stands,
differs from the rule above. ``AccessModel(quirks=...)`` can mimic one so that the state machine
keeps checking everything else while it is open; ``test_assurance_model.py`` holds a strict
xfail test for each that starts passing (and so fails the run) once the core is fixed, which is
the cue to drop the quirk here.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

DAY = 86400.0
DEFAULT_LINK_LIFETIME = DAY
DEFAULT_LINK_MAX_LIFETIME = 7 * DAY

GroupKey = tuple[int, str]  # (owner, name folded to lower case)
GrantKey = tuple[int, int | None, str, object]  # (owner, image or None for all, kind, target)

CORE_QUIRKS: frozenset[str] = frozenset()  # none open: the last one (place_for) is fixed


class Refused(Exception):
    """The core is expected to refuse with the error class named ``kind``."""

    def __init__(self, kind: str, why: str) -> None:
        super().__init__(f"{kind}: {why}")
        self.kind = kind
        self.why = why


@dataclass
class Image:
    key: int
    owner: int
    guild: int | None
    visibility: str
    created_at: float
    expires_at: float | None
    deleted: bool = False


@dataclass
class Link:
    key: int
    image: int
    creator: int
    expires_at: float
    max_views: int | None
    views: int = 0
    revoked: bool = False
    gone: bool = False  # the row was removed: image deleted, sweeper, creator forgotten
    created_at: float = 0.0


@dataclass
class Report:
    key: int
    image: int
    guild: int
    reporter: int
    # What the reporter saw it through: "owner", "public", or "grant" with the share's target
    # (kind, target; for a group, the very group object, as a re-made group is another one).
    basis: str = "public"
    basis_kind: str | None = None
    basis_target: object = None
    basis_group: object = None
    closed: bool = False
    gone: bool = False  # image deleted or reporter forgotten


@dataclass
class Group:
    owner: int
    name: str
    members: set[int] = field(default_factory=set)


@dataclass
class Policy:
    force_private: bool = False
    links_enabled: bool = True
    link_max_lifetime: float = DEFAULT_LINK_MAX_LIFETIME
    retention_days: int | None = None
    mod_role: int | None = None
    permitted_channels: set[int] = field(default_factory=set)


def group_key(owner: int, name: str) -> GroupKey:
    return owner, " ".join(name.split()).lower()


class AccessModel:
    def __init__(self, *, now: float, managers: dict[int, Iterable[int]],
                 quirks: Iterable[str] = ()) -> None:
        self.now = now
        self.quirks = frozenset(quirks)
        unknown = self.quirks - CORE_QUIRKS
        if unknown:
            raise ValueError(f"unknown quirks: {sorted(unknown)}")
        # Who holds Discord's Manage Server permission in each guild (fixed for a run).
        self.managers = {g: frozenset(users) for g, users in managers.items()}
        self.private_mode: dict[int, bool] = {}
        self.roles: dict[int, frozenset[int]] = {}
        self.policies: dict[int, Policy] = {}
        self.images: list[Image] = []
        self.grants: dict[GrantKey, float | None] = {}
        self.groups: dict[GroupKey, Group] = {}
        self.links: list[Link] = []
        self.reports: list[Report] = []

    # Facts ---------------------------------------------------------------------------------

    def policy(self, guild: int) -> Policy:
        return self.policies.setdefault(guild, Policy())

    def roles_of(self, user: int) -> frozenset[int]:
        return self.roles.get(user, frozenset())

    def mode_of(self, user: int) -> bool:
        return self.private_mode.get(user, True)

    def is_moderator(self, user: int, guild: int | None, roles: frozenset[int] | None = None
                     ) -> bool:
        if guild is None:
            return False
        roles = self.roles_of(user) if roles is None else roles
        if user in self.managers.get(guild, ()):
            return True
        mod_role = self.policy(guild).mod_role
        return mod_role is not None and mod_role in roles

    def exists(self, key: int) -> bool:
        return not self.images[key].deleted

    def alive(self, key: int) -> bool:
        image = self.images[key]
        if image.deleted:
            return False
        return image.expires_at is None or self.now < image.expires_at

    def _owned(self, key: int, actor: int) -> Image:
        image = self.images[key]
        if image.deleted or image.owner != actor:
            raise Refused("NotFound", "no such image of yours")
        return image

    def _grant_live(self, expires_at: float | None) -> bool:
        return expires_at is None or expires_at > self.now

    def _target_matches(self, kind: str, target: object, user: int,
                        roles: frozenset[int]) -> bool:
        if kind == "user":
            return target == user
        if kind == "role":
            return target in roles
        group = self.groups.get(target)  # type: ignore[arg-type]
        return group is not None and user in group.members

    def has_live_grant(self, user: int, roles: frozenset[int], key: int) -> bool:
        image = self.images[key]
        for (owner, on, kind, target), expires_at in self.grants.items():
            if owner != image.owner or on not in (None, key):
                continue
            if self._grant_live(expires_at) and self._target_matches(kind, target, user, roles):
                return True
        return False

    def _first_live_grant(self, user: int, roles: frozenset[int], key: int) -> tuple | None:
        """The share the core names for this viewer: one on this image before one on all the
        owner's images, the oldest first (grant ids grow with creation; a renewal keeps its
        place)."""
        image = self.images[key]
        found = [(owner, on, kind, target)
                 for (owner, on, kind, target), expires_at in self.grants.items()
                 if owner == image.owner and on in (None, key) and self._grant_live(expires_at)
                 and self._target_matches(kind, target, user, roles)]
        found.sort(key=lambda grant: grant[1] is None)  # stable: keeps creation order
        return found[0] if found else None

    def _report_in_force(self, report: Report) -> bool:
        """A report counts while the reporter's own access still holds (guarantee 6)."""
        image = self.images[report.image]
        if report.basis == "owner":
            return True
        if report.basis == "public":
            return image.visibility == "public"
        if report.basis_kind == "group" and self.groups.get(report.basis_target) is not (
                report.basis_group):
            return False
        return any(owner == image.owner and on in (None, report.image) and kind ==
                   report.basis_kind and target == report.basis_target
                   and self._grant_live(expires_at)
                   for (owner, on, kind, target), expires_at in self.grants.items())

    def has_open_report(self, key: int) -> bool:
        return any(r.image == key and not r.closed and not r.gone and self._report_in_force(r)
                   for r in self.reports)

    def may_view(self, user: int, guild: int | None, key: int, *,
                 roles: frozenset[int] | None = None, moderator: bool | None = None) -> bool:
        """May this request (user, roles now, guild it comes from) get the image's bytes?"""
        roles = self.roles_of(user) if roles is None else roles
        moderator = self.is_moderator(user, guild, roles) if moderator is None else moderator
        if not self.alive(key):
            return False
        image = self.images[key]
        if image.owner == user:
            return True
        if self.has_live_grant(user, roles, key):
            return True
        from_origin = image.guild is not None and guild == image.guild
        if image.visibility == "public" and from_origin:
            return True
        return moderator and from_origin and self.has_open_report(key)

    def gallery(self, user: int, roles: frozenset[int] | None = None) -> list[tuple[int, bool]]:
        """(image, mine) for own and live-shared alive images, newest first."""
        roles = self.roles_of(user) if roles is None else roles
        out = []
        for image in reversed(self.images):
            if not self.alive(image.key):
                continue
            if image.owner == user:
                out.append((image.key, True))
            elif self.has_live_grant(user, roles, image.key):
                out.append((image.key, False))
        return out

    def channel_permitted(self, guild: int | None, channel: int | None) -> bool:
        if guild is None or channel is None:
            return False
        return channel in self.policy(guild).permitted_channels

    def place(self, key: int, guild: int | None, channel: int | None) -> str:
        """Where a delivery asked from (guild, channel) goes: 'channel' or 'dm'."""
        image = self.images[key]
        if (image.visibility == "public" and guild is not None and guild == image.guild
                and self.channel_permitted(guild, channel)):
            return "channel"
        return "dm"

    def link_live(self, key: int) -> bool:
        link = self.links[key]
        if link.gone or link.revoked or self.now >= link.expires_at:
            return False
        if link.max_views is not None and link.views >= link.max_views:
            return False
        guild = self.images[link.image].guild
        if guild is not None and not self.policy(guild).links_enabled:
            return False
        return self.alive(link.image)

    # Settings ------------------------------------------------------------------------------

    def set_private_mode(self, user: int, on: bool) -> None:
        self.private_mode[user] = on

    def set_roles(self, user: int, roles: Iterable[int]) -> None:
        self.roles[user] = frozenset(roles)

    def update_policy(self, guild: int, **changes: object) -> None:
        policy = self.policy(guild)
        for name, value in changes.items():
            if not hasattr(policy, name) or name == "permitted_channels":
                raise ValueError(name)
            setattr(policy, name, value)
        if "link_max_lifetime" in changes:
            longest = float(changes["link_max_lifetime"])  # type: ignore[arg-type]
            for link in self.links:
                if self.images[link.image].guild == guild:
                    link.expires_at = min(link.expires_at, link.created_at + longest)

    def permit_channel(self, guild: int, channel: int, allowed: bool) -> None:
        channels = self.policy(guild).permitted_channels
        if allowed:
            channels.add(channel)
        else:
            channels.discard(channel)

    # Images --------------------------------------------------------------------------------

    def create_image(self, owner: int, guild: int | None, requested_private: bool | None,
                     expires_in: float | None) -> int:
        if expires_in is not None and expires_in <= 0:
            raise Refused("InvalidInput", "lifetime must be positive")
        if guild is not None and self.policy(guild).force_private:
            private = True
        elif requested_private is not None:
            private = requested_private
        else:
            private = self.mode_of(owner)
        self.private_mode.setdefault(owner, True)
        key = len(self.images)
        self.images.append(Image(key, owner, guild, "private" if private else "public",
                                 self.now, None if expires_in is None else self.now + expires_in))
        return key

    def set_visibility(self, actor: int, key: int, visibility: str) -> None:
        image = self._owned(key, actor)
        if (visibility == "public" and image.guild is not None
                and self.policy(image.guild).force_private):
            raise Refused("PolicyViolation", "the server forces private mode")
        image.visibility = visibility

    def _remove(self, keys: Iterable[int]) -> list[int]:
        removed = []
        for key in keys:
            image = self.images[key]
            if image.deleted:
                continue
            image.deleted = True
            removed.append(key)
            for grant in [g for g in self.grants if g[1] == key]:
                del self.grants[grant]
            for link in self.links:
                if link.image == key:
                    link.gone = True
            for report in self.reports:
                if report.image == key:
                    report.gone = True
        return removed

    def delete(self, actor: int, guild: int | None, key: int,
               moderator: bool | None = None) -> list[int]:
        """The owner's /delete, or a moderator of the image's origin server removing it."""
        image = self.images[key]
        moderator = self.is_moderator(actor, guild) if moderator is None else moderator
        if image.deleted:
            raise Refused("NotFound", "no such image")
        owner = image.owner == actor
        origin_mod = moderator and image.guild is not None and guild == image.guild
        if not (owner or origin_mod):
            raise Refused("NotFound", "not yours to remove")
        return self._remove([key])

    def _moderator_guild(self, actor: int, guild: int | None, moderator: bool | None) -> int:
        moderator = self.is_moderator(actor, guild) if moderator is None else moderator
        if guild is None or not moderator:
            raise Refused("Forbidden", "moderators only, inside their server")
        return guild

    def purge(self, actor: int, guild: int | None, member: int,
              moderator: bool | None = None) -> list[int]:
        g = self._moderator_guild(actor, guild, moderator)
        return self._remove([i.key for i in self.images
                             if i.owner == member and i.guild == g and not i.deleted])

    def takedown(self, actor: int, guild: int | None, key: int,
                 moderator: bool | None = None) -> list[int]:
        g = self._moderator_guild(actor, guild, moderator)
        image = self.images[key]
        if image.deleted or image.guild != g:
            raise Refused("NotFound", "no such image from this server")
        return self._remove([key])

    def forget(self, user: int) -> list[int]:
        removed = self._remove([i.key for i in self.images if i.owner == user and not i.deleted])
        for grant in list(self.grants):
            owner, _, kind, target = grant
            if owner == user or (kind == "user" and target == user):
                del self.grants[grant]
        for key in [k for k in self.groups if k[0] == user]:
            del self.groups[key]
        for group in self.groups.values():
            group.members.discard(user)
        for report in self.reports:
            if report.reporter == user:
                report.gone = True
        for link in self.links:
            if link.creator == user:
                link.gone = True
        self.private_mode.pop(user, None)
        return removed

    # Sharing -------------------------------------------------------------------------------

    def grant(self, owner: int, kind: str, target: object, key: int | None,
              expires_in: float | None) -> GrantKey:
        if kind == "user" and target == owner:
            raise Refused("InvalidInput", "no grants to yourself")
        if expires_in is not None and expires_in <= 0:
            raise Refused("InvalidInput", "lifetime must be positive")
        if key is not None:
            self._owned(key, owner)
        if kind == "group":
            group = self.groups.get(target)  # type: ignore[arg-type]
            if group is None or group.owner != owner:
                raise Refused("NotFound", "no such group of yours")
        self.private_mode.setdefault(owner, True)
        grant = (owner, key, kind, target)
        # Sharing again with the same target renews it: the new expiry replaces the old one.
        self.grants[grant] = None if expires_in is None else self.now + expires_in
        return grant

    def revoke(self, owner: int, kind: str, target: object, key: int | None) -> int:
        """One image's grant to target, or (key None) everything shared with target."""
        if key is not None:
            self._owned(key, owner)
        doomed = [g for g in self.grants
                  if g[0] == owner and g[2] == kind and g[3] == target
                  and (key is None or g[1] == key)]
        for grant in doomed:
            del self.grants[grant]
        return len(doomed)

    def create_group(self, owner: int, name: str) -> GroupKey:
        gk = group_key(owner, name)
        if not gk[1]:
            raise Refused("InvalidInput", "a group needs a name")
        if gk in self.groups:
            raise Refused("InvalidInput", "you already have that group")
        self.private_mode.setdefault(owner, True)
        self.groups[gk] = Group(owner, " ".join(name.split()))
        return gk

    def _find_group(self, owner: int, name: str) -> GroupKey:
        gk = group_key(owner, name)
        if gk not in self.groups:
            raise Refused("NotFound", "no such group")
        return gk

    def _group(self, owner: int, name: str) -> Group:
        return self.groups[self._find_group(owner, name)]

    def add_member(self, owner: int, name: str, user: int) -> None:
        group = self._group(owner, name)
        if user == owner:
            raise Refused("InvalidInput", "you always see your own images")
        group.members.add(user)

    def remove_member(self, owner: int, name: str, user: int) -> None:
        group = self._group(owner, name)
        if user not in group.members:
            raise Refused("NotFound", "not a member")
        group.members.discard(user)

    def delete_group(self, owner: int, name: str) -> None:
        gk = self._find_group(owner, name)
        del self.groups[gk]
        for grant in [g for g in self.grants if g[2] == "group" and g[3] == gk]:
            del self.grants[grant]

    # Links ---------------------------------------------------------------------------------

    def create_link(self, actor: int, key: int, lifetime: float | None,
                    max_views: int | None) -> int:
        image = self._owned(key, actor)
        policy = self.policy(image.guild) if image.guild is not None else Policy()
        if not policy.links_enabled:
            raise Refused("PolicyViolation", "links are off for this server")
        longest = policy.link_max_lifetime
        lifetime = min(DEFAULT_LINK_LIFETIME, longest) if lifetime is None else lifetime
        if lifetime <= 0:
            raise Refused("InvalidInput", "lifetime must be positive")
        if lifetime > longest:
            raise Refused("PolicyViolation", "longer than this server allows")
        if max_views is not None and not 1 <= max_views <= 1000:
            raise Refused("InvalidInput", "view limit out of range")
        link = Link(len(self.links), key, actor, self.now + lifetime, max_views,
                    created_at=self.now)
        self.links.append(link)
        return link.key

    def fetch_link(self, key: int) -> bool:
        """Open a link as a person would: spends one view when it is live."""
        if not self.link_live(key):
            return False
        self.links[key].views += 1
        return True

    def revoke_link(self, actor: int, key: int) -> None:
        link = self.links[key]
        if link.gone or self.images[link.image].owner != actor:
            raise Refused("NotFound", "no such link of yours")
        link.revoked = True

    # Reports -------------------------------------------------------------------------------

    def report(self, reporter: int, guild: int | None, key: int) -> int:
        """Anyone who may see an image may report it to the moderators of its origin server."""
        if not self.may_view(reporter, guild, key):
            raise Refused("NotFound", "you cannot see that image")
        image = self.images[key]
        if image.guild is None:
            raise Refused("InvalidInput", "not made in a server")
        report = Report(len(self.reports), key, image.guild, reporter)
        roles = self.roles_of(reporter)
        grant = self._first_live_grant(reporter, roles, key)
        if image.owner == reporter:
            report.basis = "owner"
        elif grant is not None:
            report.basis, report.basis_kind, report.basis_target = "grant", grant[2], grant[3]
            report.basis_group = self.groups.get(grant[3]) if grant[2] == "group" else None
        elif image.visibility == "public" and guild == image.guild:
            report.basis = "public"
        else:
            raise Refused("InvalidInput", "seen only through a report already")
        self.reports.append(report)
        return report.key

    def close_report(self, actor: int, guild: int | None, key: int,
                     moderator: bool | None = None) -> None:
        g = self._moderator_guild(actor, guild, moderator)
        report = self.reports[key]
        if report.gone or report.closed or report.guild != g:
            raise Refused("NotFound", "no open report with that number here")
        report.closed = True

    # Time ----------------------------------------------------------------------------------

    def advance(self, seconds: float) -> None:
        self.now += seconds

    def sweep(self) -> list[int]:
        """The retention sweeper: expired images and images past their server's retention go;
        expired or revoked links and expired grants are dropped (they were dead already)."""
        doomed = []
        for image in self.images:
            if image.deleted:
                continue
            expired = image.expires_at is not None and image.expires_at <= self.now
            days = (self.policy(image.guild).retention_days
                    if image.guild is not None else None)
            retained_out = days is not None and image.created_at + days * DAY <= self.now
            if expired or retained_out:
                doomed.append(image.key)
        removed = self._remove(doomed)
        for link in self.links:
            if link.revoked or link.expires_at <= self.now:
                link.gone = True
        self.expire_grants()
        return removed

    def expire_grants(self) -> None:
        """The expiry sweep: shares whose end has come are dropped (they were dead already, but
        revoking one later finds nothing to remove)."""
        for grant, expires_at in list(self.grants.items()):
            if expires_at is not None and expires_at <= self.now:
                del self.grants[grant]
