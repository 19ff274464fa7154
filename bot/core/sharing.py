"""Grants and personal groups: who else may see an owner's images.

A grant covers one image or all of the owner's images, for a user, a role (checked live against
the roles Discord sends with each request) or a personal group. Revoking a grant, removing a
member from a group or deleting a group also queues the retraction of every message Veil posted
through that grant, in the same transaction (bot.core.ledger). Share ids are never reused
(migration 0004), so a copy recorded under a share is never attributed to a later one.
"""

from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING

from bot.core.context import Context, roles_json
from bot.core.errors import InvalidInput, NotFound
from bot.core.images import ImageService
from bot.core.ledger import owner_reports_scope, queue_all, queue_ended
from bot.core.models import Grant, GranteeKind, Group, Viewer
from bot.core.rows import Columns
from db.dialect import ids_in

if TYPE_CHECKING:
    from db import Tx

MAX_GROUPS = 25
MAX_GROUP_MEMBERS = 100
MAX_GROUP_NAME = 32

# A grant names its image by public id (none: all images) and its group by name.
GRANT = Columns(Grant, alias="g", sql={"image_public_id": "i.public_id", "group_name": "gr.name"})
_GRANT_SELECT = f"""
SELECT {GRANT.columns}
FROM grants g
LEFT JOIN images i ON i.id = g.image_id
LEFT JOIN groups gr ON g.grantee_kind = 'group' AND gr.id = g.grantee_id
"""
# A group's own row; its members come from their own query.
GROUP = Columns(Group, omit=("member_ids",))


class SharingService:
    def __init__(self, ctx: Context, images: ImageService) -> None:
        self.ctx = ctx
        self.images = images

    # Grants --------------------------------------------------------------------------------

    async def grant(self, owner: Viewer, kind: GranteeKind, grantee_id: int, *,
                    image_public_id: str | None = None,
                    expires_in: float | None = None) -> Grant:
        """Share one image (or all, when ``image_public_id`` is None). Sharing again with the
        same target renews it with the new expiry."""
        if kind == "user" and grantee_id == owner.user_id:
            raise InvalidInput("You can always see your own images; pick someone else.")
        if expires_in is not None and expires_in <= 0:
            raise InvalidInput("The share's lifetime must be longer than zero.")
        image = None
        if image_public_id is not None:
            image = await self.images.get_owned(image_public_id, owner)
        now = self.ctx.now()
        expires_at = None if expires_in is None else now + expires_in
        async with self.ctx.db.transaction() as tx:
            await self.ctx.ensure_user(tx, owner.user_id)
            if kind == "group" and not await tx.fetchval(
                    "SELECT 1 FROM groups WHERE id = ? AND owner_id = ?",
                    (grantee_id, owner.user_id)):
                raise NotFound("You have no such group.")
            image_id = None if image is None else image.id
            existing = await tx.fetchval(
                "SELECT id FROM grants WHERE owner_id = ? AND coalesce(image_id, 0) = ?"
                " AND grantee_kind = ? AND grantee_id = ?",
                (owner.user_id, image_id or 0, kind, grantee_id))
            if existing is None:
                grant_id = await tx.insert(
                    "INSERT INTO grants (owner_id, image_id, grantee_kind, grantee_id,"
                    " created_at, expires_at) VALUES (?, ?, ?, ?, ?, ?)",
                    (owner.user_id, image_id, kind, grantee_id, now, expires_at))
            else:
                grant_id = existing
                await tx.execute("UPDATE grants SET expires_at = ?, created_at = ? WHERE id = ?",
                                 (expires_at, now, grant_id))
            await self.ctx.audit(tx, "grant.create", actor_id=owner.user_id,
                                 guild_id=image.guild_id if image else None,
                                 target_user=grantee_id if kind == "user" else None,
                                 image_ref=image.public_id if image else "all",
                                 detail=f"{kind}:{grantee_id}")
        row = await self.ctx.db.fetchone(_GRANT_SELECT + " WHERE g.id = ?", (grant_id,))
        if row is None:  # revoked in the instant since it was made
            raise NotFound("That share was removed as it was being made.")
        return GRANT(row)

    async def revoke(self, owner: Viewer, kind: GranteeKind, grantee_id: int, *,
                     image_public_id: str | None = None) -> tuple[int, tuple[int, ...]]:
        """Stop sharing with a target: one image, or (no image) everything shared with it.
        Returns (grants removed, retractions queued)."""
        where = "owner_id = ? AND grantee_kind = ? AND grantee_id = ?"
        params: list[object] = [owner.user_id, kind, grantee_id]
        image = None
        if image_public_id is not None:
            image = await self.images.get_owned(image_public_id, owner)
            where += " AND image_id = ?"
            params.append(image.id)
        async with self.ctx.db.transaction() as tx:
            ids = [r[0] for r in await tx.fetchall(f"SELECT id FROM grants WHERE {where}", params)]
            await tx.execute(f"DELETE FROM grants WHERE {where}", params)
            queued = await self._retract_ended(tx, owner.user_id, ids, "unshared")
            if ids:
                await self.ctx.audit(tx, "grant.revoke", actor_id=owner.user_id,
                                     guild_id=image.guild_id if image else None,
                                     target_user=grantee_id if kind == "user" else None,
                                     image_ref=image_public_id or "all",
                                     detail=f"{kind}:{grantee_id}")
        return len(ids), queued

    async def _retract_ended(self, tx: Tx, owner_id: int, grant_ids: list[int],
                             reason: str) -> tuple[int, ...]:
        """After a change to an owner's shares, in its transaction: queue every copy sent
        through these grants whose basis no longer holds, and moderators' copies of the owner's
        reported images whose report lost force with the change."""
        return tuple(await grant_copies_ended(self.ctx, tx, owner_id, grant_ids, reason))

    async def roles_now(self, user_id: int, guild_id: int | None,
                        role_ids: frozenset[int]) -> tuple[int, ...]:
        """A member's roles in a server as Discord reports them now (with an interaction, or a
        member update): copies they received there through a share with a role they no longer
        have are retracted. Costs one read when nothing changed."""
        if guild_id is None:
            return ()
        scope = ("d.recipient_id = :user AND d.guild_id = :guild AND d.basis = 'grant'"
                 " AND d.grant_id IN (SELECT g.id FROM grants g WHERE g.grantee_kind = 'role'"
                 f" AND g.grantee_id NOT IN ({ids_in(':roles', self.ctx.db.dialect)}))")
        params = {"user": user_id, "guild": guild_id, "roles": roles_json(role_ids)}
        if not await self.ctx.db.fetchval(
                f"SELECT 1 FROM deliveries d WHERE {scope} AND d.state = 'sent'"
                " AND d.unretractable IS NULL LIMIT 1", params):
            return ()
        async with self.ctx.db.transaction() as tx:
            return tuple(await queue_all(self.ctx, tx, scope, params, reason="role removed"))

    async def still_covered(self, owner_id: int, kind: GranteeKind, grantee_id: int,
                            image_public_id: str | None) -> bool:
        """After one image was unshared: does a live share of all the owner's images still
        reach the same target? Then that image stays visible to them (the owner must hear it)."""
        if image_public_id is None:
            return False
        return any(g.image_public_id is None and g.grantee_kind == kind
                   and g.grantee_id == grantee_id for g in await self.grants_by(owner_id))

    async def grants_by(self, owner_id: int, *, live_only: bool = True) -> list[Grant]:
        sql = _GRANT_SELECT + " WHERE g.owner_id = ?"
        params: list[object] = [owner_id]
        if live_only:
            sql += " AND (g.expires_at IS NULL OR g.expires_at > ?)"
            params.append(self.ctx.now())
        rows = await self.ctx.db.fetchall(sql + " ORDER BY g.id", params)
        return [GRANT(r) for r in rows]

    # Groups --------------------------------------------------------------------------------

    async def create_group(self, owner_id: int, name: str) -> Group:
        name = _group_name(name)
        async with self.ctx.db.transaction() as tx:
            await self.ctx.ensure_user(tx, owner_id)
            if await tx.fetchval("SELECT count(*) FROM groups WHERE owner_id = ?",
                                 (owner_id,)) >= MAX_GROUPS:
                raise InvalidInput(f"You can have at most {MAX_GROUPS} groups.")
            if await tx.fetchval("SELECT 1 FROM groups WHERE owner_id = ? AND name = ?",
                                 (owner_id, name)):
                raise InvalidInput(f"You already have a group called {name!r}.")
            group_id = await tx.insert(
                "INSERT INTO groups (owner_id, name, created_at) VALUES (?, ?, ?)",
                (owner_id, name, self.ctx.now()))
            await self.ctx.audit(tx, "group.create", actor_id=owner_id, detail=f"group:{group_id}")
        return Group(group_id, owner_id, name)

    async def group(self, owner_id: int, name: str) -> Group:
        name = " ".join(name.split())
        row = await self.ctx.db.fetchone(
            f"SELECT {GROUP.columns} FROM groups WHERE owner_id = ? AND name = ?",
            (owner_id, name))
        if row is None:
            raise NotFound(f"You have no group called {name[:MAX_GROUP_NAME]!r}.")
        group = GROUP(row)
        members = await self.ctx.db.fetchall(
            "SELECT user_id FROM group_members WHERE group_id = ? ORDER BY user_id", (group.id,))
        return replace(group, member_ids=tuple(m[0] for m in members))

    async def groups(self, owner_id: int) -> list[Group]:
        rows = await self.ctx.db.fetchall(
            "SELECT name FROM groups WHERE owner_id = ? ORDER BY name", (owner_id,))
        return [await self.group(owner_id, r[0]) for r in rows]

    async def add_member(self, owner_id: int, name: str, user_id: int) -> Group:
        group = await self.group(owner_id, name)
        if user_id == owner_id:
            raise InvalidInput("You are always able to see your own images; add someone else.")
        if len(group.member_ids) >= MAX_GROUP_MEMBERS:
            raise InvalidInput(f"A group holds at most {MAX_GROUP_MEMBERS} members.")
        async with self.ctx.db.transaction() as tx:
            await tx.execute("INSERT INTO group_members (group_id, user_id)"
                             " VALUES (?, ?) ON CONFLICT DO NOTHING", (group.id, user_id))
            await self.ctx.audit(tx, "group.add", actor_id=owner_id, target_user=user_id,
                                 detail=f"group:{group.id}")
        return await self.group(owner_id, name)

    async def remove_member(self, owner_id: int, name: str,
                            user_id: int) -> tuple[Group, tuple[int, ...]]:
        """Take someone out of a group; messages they got through the group are retracted."""
        group = await self.group(owner_id, name)
        if user_id not in group.member_ids:
            raise NotFound("That person is not in this group.")
        async with self.ctx.db.transaction() as tx:
            grant_ids = [r[0] for r in await tx.fetchall(
                "SELECT id FROM grants WHERE grantee_kind = 'group' AND grantee_id = ?",
                (group.id,))]
            await tx.execute("DELETE FROM group_members WHERE group_id = ? AND user_id = ?",
                             (group.id, user_id))
            queued = await self._retract_ended(tx, owner_id, grant_ids, "removed from group")
            await self.ctx.audit(tx, "group.remove", actor_id=owner_id, target_user=user_id,
                                 detail=f"group:{group.id}")
        return await self.group(owner_id, name), queued

    async def delete_group(self, owner_id: int, name: str) -> tuple[int, ...]:
        """Delete a group and its shares; returns the retractions queued."""
        group = await self.group(owner_id, name)
        async with self.ctx.db.transaction() as tx:
            grant_ids = [r[0] for r in await tx.fetchall(
                "SELECT id FROM grants WHERE grantee_kind = 'group' AND grantee_id = ?",
                (group.id,))]
            await tx.execute("DELETE FROM groups WHERE id = ?", (group.id,))
            queued = await self._retract_ended(tx, owner_id, grant_ids, "group deleted")
            await self.ctx.audit(tx, "group.delete", actor_id=owner_id,
                                 detail=f"group:{group.id}")
        return queued


async def grant_copies_ended(ctx: Context, tx: Tx, owner_id: int,
                             grant_ids: list[int], reason: str) -> list[int]:
    """Queue (in ``tx``) the copies sent through ``grant_ids`` whose basis ended, and the
    moderators' copies of ``owner_id``'s reported images whose report lost force."""
    params: dict[str, object] = {"owner": owner_id}
    params.update({f"g{n}": v for n, v in enumerate(grant_ids)})
    marks = ",".join(f":g{n}" for n in range(len(grant_ids)))
    through = f"(d.basis = 'grant' AND d.grant_id IN ({marks}))" if grant_ids else "1 = 0"
    return await queue_ended(ctx, tx, f"{through} OR ({owner_reports_scope()})", params,
                             reason=reason)


def _group_name(name: str) -> str:
    name = " ".join(name.split())
    if not name:
        raise InvalidInput("A group needs a name.")
    if len(name) > MAX_GROUP_NAME:
        raise InvalidInput(f"A group name has at most {MAX_GROUP_NAME} characters.")
    return name
