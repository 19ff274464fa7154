"""Rows become records through one declaration of their columns (bot/core/rows.py): the SELECT
list and the mapping come from the same place, so they cannot disagree. Checked on a bare
SQLite table, and through the core's own queries on both databases, against the same rows read
by column name."""

from __future__ import annotations

import dataclasses
import sqlite3
from dataclasses import dataclass
from typing import Any

import pytest

from bot.core.models import ImageRecord, ShareLink, WrappedKeys
from bot.core.rows import Columns, Select, Value
from tests.conftest import ALICE, BOB, GUILD, MOD, png, viewer


@dataclass(frozen=True)
class _Pet:
    name: str
    legs: int
    id: int
    tame: bool
    note: str | None = None


def _pets() -> sqlite3.Connection:
    conn = sqlite3.connect(":memory:")
    conn.row_factory = sqlite3.Row
    conn.executescript(
        "CREATE TABLE pets (id INTEGER PRIMARY KEY, legs INTEGER, name TEXT, tame INTEGER,"
        " note TEXT, owner_id INTEGER);"
        "CREATE TABLE owners (id INTEGER PRIMARY KEY, nick TEXT);"
        "INSERT INTO owners VALUES (7, 'ann');"
        "INSERT INTO pets VALUES (1, 4, 'rex', 1, NULL, 7), (2, 2, 'tweety', 0, 'sings', 7);")
    return conn


def test_a_record_reads_its_row_whatever_order_the_table_and_the_fields_are_in():
    conn = _pets()
    pets = Columns(_Pet)
    assert pets.columns == "name, legs, id, tame, note"
    rows = conn.execute(f"SELECT {pets.columns} FROM pets ORDER BY id").fetchall()
    assert [pets(r) for r in rows] == [_Pet("rex", 4, 1, True), _Pet("tweety", 2, 2, False,
                                                                      "sings")]


def test_a_field_typed_bool_reads_as_true_or_false_not_one_or_zero():
    conn = _pets()
    pets = Columns(_Pet)
    tame = [pets(r).tame for r in conn.execute(f"SELECT {pets.columns} FROM pets ORDER BY id")]
    assert tame == [True, False]
    assert all(type(t) is bool for t in tame)


def test_a_declaration_that_names_a_field_the_record_lacks_fails_when_it_is_made():
    with pytest.raises(TypeError, match="no field nmae"):
        Columns(_Pet, sql={"nmae": "upper(name)"})
    with pytest.raises(TypeError, match="only trailing fields with defaults"):
        Columns(_Pet, omit=("legs",))


def test_each_part_of_a_joined_select_reads_its_own_place_in_the_row():
    conn = _pets()

    class PetRow(Select):
        row_id = Value("p.rowid")
        pet = Columns(_Pet, alias="p", omit=("note",), sql={"name": "upper(p.name)"})

    class PetAndOwner(PetRow):
        owner = Value("o.nick")
        again = Columns(_Pet).on("p")

    assert PetAndOwner.width == 1 + 4 + 1 + 5
    row = conn.execute(f"SELECT {PetAndOwner.columns} FROM pets p"
                       " JOIN owners o ON o.id = p.owner_id WHERE p.id = 2").fetchone()
    assert len(row) == PetAndOwner.width
    assert PetAndOwner.row_id(row) == 2
    assert PetAndOwner.pet(row) == _Pet("TWEETY", 2, 2, False)
    assert PetAndOwner.owner(row) == "ann"
    assert PetAndOwner.again(row) == _Pet("tweety", 2, 2, False, "sings")
    # The base layout is untouched by its extension.
    assert PetRow.width == 5
    assert PetRow.pet(conn.execute(f"SELECT {PetRow.columns} FROM pets p WHERE p.id = 1")
                      .fetchone()) == _Pet("REX", 4, 1, True)


def _by_name(record: Any, row: Any, *, omit: tuple[str, ...] = ()) -> Any:
    """The record read from ``row`` by column name (``omit``: fields left at their default),
    the way that needs no declaration and no positions."""
    values = {}
    for f in dataclasses.fields(record):
        if f.name in omit:
            continue
        value = row[f.name]
        values[f.name] = bool(value) if f.type in ("bool", bool) else value
    return record(**values)


async def test_every_record_the_core_reads_equals_its_row_read_by_column_name(veil, clock):
    image = await veil.images.create(ALICE, png(), guild_id=GUILD, source="upload")
    new = await veil.links.create(image.public_id, viewer(ALICE), max_views=5,
                                  allow_download=True, password="correct horse battery")
    grant = await veil.sharing.grant(viewer(ALICE), "user", BOB, image_public_id=image.public_id)
    db = veil.ctx.db

    stored = _by_name(ImageRecord, await db.fetchone("SELECT * FROM images WHERE id = ?",
                                                     (image.id,)))
    assert stored == image
    assert await veil.ctx.image(image.public_id) == stored
    assert await veil.ctx.view_facts(image.public_id, viewer(BOB)) == (stored, grant.id, None)

    link_row = await db.fetchone(
        "SELECT l.*, i.public_id AS image_public_id, l.revoked_at IS NOT NULL AS revoked,"
        " l.password_hash IS NOT NULL AS has_password FROM links l"
        " JOIN images i ON i.id = l.image_id WHERE l.public_id = ?", (new.link.public_id,))
    link = _by_name(ShareLink, link_row)
    assert link == new.link
    target = await veil.links.resolve(new.token)
    assert target is not None
    assert (target.link, target.image, target.row_id, target.password_epoch) == (
        link, stored, link_row["id"], link_row["password_epoch"])
    keys_row = await db.fetchone(
        "SELECT i.wrapped_key AS image_key, u.wrapped_key AS owner_key, u.master_key_id"
        " FROM images i JOIN users u ON u.user_id = i.owner_id WHERE i.id = ?", (image.id,))
    assert target.keys == _by_name(WrappedKeys, keys_row)
    assert await veil.links.links_of(viewer(ALICE)) == [link]
    revoked = await veil.links.revoke(new.link.public_id, viewer(ALICE))
    assert revoked == dataclasses.replace(link, revoked=True)
    assert await veil.links.links_of(viewer(ALICE)) == [revoked]


async def test_shares_groups_policy_reports_views_and_audit_read_as_stored(veil):
    from bot.core.models import AuditEntry, Grant, Group, GuildPolicy, Report, ViewEntry

    image = await veil.images.create(ALICE, png(), guild_id=GUILD, source="upload")
    group = await veil.sharing.create_group(ALICE, "friends")
    await veil.sharing.add_member(ALICE, "friends", BOB)
    await veil.sharing.grant(viewer(ALICE), "group", group.id, expires_in=3600)
    await veil.sharing.grant(viewer(ALICE), "user", BOB, image_public_id=image.public_id)
    await veil.moderation.update_policy(GUILD, MOD, force_private=True, retention_days=30)
    await veil.moderation.report(viewer(BOB), image.public_id, "not nice")
    await veil.images.log_view(image, viewer_id=BOB, via="dm")
    db = veil.ctx.db

    grants = await db.fetchall(
        "SELECT g.*, i.public_id AS image_public_id, gr.name AS group_name FROM grants g"
        " LEFT JOIN images i ON i.id = g.image_id LEFT JOIN groups gr"
        " ON g.grantee_kind = 'group' AND gr.id = g.grantee_id ORDER BY g.id")
    assert await veil.sharing.grants_by(ALICE) == [_by_name(Grant, g) for g in grants]
    assert grants[0]["group_name"] == "friends"
    assert await veil.sharing.group(ALICE, "friends") == Group(group.id, ALICE, "friends", (BOB,))

    policy_row = await db.fetchone("SELECT * FROM guild_policy WHERE guild_id = ?", (GUILD,))
    policy = await veil.moderation.policy(GUILD)
    assert policy == _by_name(GuildPolicy, policy_row, omit=("permitted_channels",))
    assert (policy.force_private, policy.retention_days) == (True, 30)

    report_row = await db.fetchone(
        "SELECT r.*, i.public_id AS image_public_id, r.closed_at IS NOT NULL AS closed"
        " FROM reports r JOIN images i ON i.id = r.image_id")
    assert await veil.moderation.reports(GUILD) == [_by_name(Report, report_row)]
    view_row = await db.fetchone(
        "SELECT v.*, i.public_id AS image_public_id FROM view_log v"
        " JOIN images i ON i.id = v.image_id")
    assert await veil.images.view_log(viewer(ALICE)) == [_by_name(ViewEntry, view_row)]
    audit = await db.fetchall("SELECT * FROM audit_log WHERE guild_id = ? ORDER BY id DESC",
                              (GUILD,))
    assert await veil.moderation.audit(GUILD, limit=100) == [
        _by_name(AuditEntry, a) for a in audit]
