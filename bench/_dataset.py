"""The large databases for the access, gallery and memory benchmarks, built fast and cached.

``dataset(scale)`` returns a Veil data folder (veil.db + master.key) holding, at scale 1.0,
1,000,000 images, 20,000 users, 500 roles, 200,000 grants and 4,000 personal groups. Scale
0.01 is the same world a hundred times smaller (10,000 images, 200 users, 5 roles, 2,000
grants, 40 groups), so that a viewer's own share of it (images owned, grants received, role
grants per role) is statistically the same and only the size of everything around it differs.

How: ``Veil.open`` creates the folder (schema through the real migrations, master key, meta),
then the stdlib sqlite3 bulk-inserts every row in one transaction. Users get owner keys wrapped
by the real KeyRing; images get fake wrapped keys and blob names (no blob files), which is
enough for the access queries measured. Nothing expires within years and nothing is expired,
so a bot started on the folder (the memory benchmark) finds nothing to sweep and leaves the
cached database as built.

The folder lives in ``bench/.cache/`` under a name keyed by a hash of the migrations and of this
file, so reruns reuse it and a schema change rebuilds it.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import hashlib
import logging
import random
import shutil
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path

from bench._common import CACHE, ROOT

SEED = 20240601
ALPHABET = "23456789abcdefghjkmnpqrstuvwxyz"  # as bot.core.context.new_public_id
USER_BASE = 300_000_000_000_000_000
ROLE_BASE = 400_000_000_000_000_000
GUILD_BASE = 500_000_000_000_000_000
YEAR = 365 * 86400.0


@dataclass(frozen=True)
class Shape:
    images: int
    users: int
    roles: int
    guilds: int
    groups: int
    user_image_grants: int
    user_all_grants: int
    role_grants: int
    group_grants: int

    @property
    def grants(self) -> int:
        return (self.user_image_grants + self.user_all_grants + self.role_grants
                + self.group_grants)


def shape(scale: float) -> Shape:
    def n(value: int) -> int:
        return max(1, round(value * scale))

    return Shape(images=n(1_000_000), users=n(20_000), roles=n(500), guilds=n(50),
                 groups=n(4_000), user_image_grants=n(130_000), user_all_grants=n(30_000),
                 role_grants=n(25_000), group_grants=n(15_000))


def user_id(index: int) -> int:
    return USER_BASE + index * 4099


def role_id(index: int) -> int:
    return ROLE_BASE + index * 7919


def _fingerprint() -> str:
    digest = hashlib.sha256()
    for path in sorted((ROOT / "db" / "migrations").glob("*.sql")):
        digest.update(path.name.encode() + b"\0" + path.read_bytes())
    digest.update(Path(__file__).read_bytes())
    return digest.hexdigest()[:12]


def dataset(scale: float, *, log=print) -> Path:
    """The data folder for ``scale`` (built now if the cache has none for this schema)."""
    label = f"{scale:g}".replace(".", "_")
    key = _fingerprint()
    folder = CACHE / f"db-{label}-{key}"
    if (folder / "data" / "built").exists():
        return folder / "data"
    for stale in CACHE.glob(f"db-{label}-*"):
        shutil.rmtree(stale, ignore_errors=True)
    started = time.perf_counter()
    s = shape(scale)
    log(f"building the {s.images:,}-image database in {folder.relative_to(ROOT)} "
        f"(once per schema; later runs reuse it)...")
    shutil.rmtree(folder, ignore_errors=True)
    data = folder / "data"
    _create_with_veil(data)
    _bulk_insert(data, s)
    (data / "built").write_text(f"{s}\n")
    log(f"  built in {time.perf_counter() - started:.0f} s "
        f"({(data / 'veil.db').stat().st_size / 1e6:.0f} MB)")
    return data


def _create_with_veil(data: Path) -> None:
    from bot.core.veil import Veil

    logging.getLogger("bot.core.veil").setLevel(logging.ERROR)  # "new master key" notice

    async def create() -> None:
        veil = await Veil.open(data)
        await veil.close()

    # Callers may be inside an event loop already: run on a thread of its own.
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        pool.submit(asyncio.run, create()).result()


def _bulk_insert(data: Path, s: Shape) -> None:
    from bot.core.crypto import KeyRing, new_key, read_key_file

    rng = random.Random(SEED)
    ring = KeyRing(read_key_file(data / "master.key"))
    now = time.time()
    far = now + 10 * YEAR
    con = sqlite3.connect(data / "veil.db", isolation_level=None)
    con.execute("PRAGMA synchronous = OFF")
    con.execute("PRAGMA cache_size = -400000")  # 400 MB while building the indexes
    con.execute("BEGIN")

    users = [user_id(i) for i in range(s.users)]
    con.executemany(
        "INSERT INTO users (user_id, private_mode, wrapped_key, master_key_id, created_at)"
        " VALUES (?,?,?,?,?)",
        ((u, 1 if rng.random() < 0.8 else 0, ring.wrap_owner_key(u, new_key()), ring.key_id,
          now - 2 * YEAR) for u in users))

    # Owners follow a Zipf-like law: a few people own tens of thousands of images, most a few.
    weights = [1 / (rank + 1) ** 0.8 for rank in range(s.users)]
    owners = rng.choices(users, weights=weights, k=s.images)
    guilds = [GUILD_BASE + g * 104729 for g in range(s.guilds)]
    seen: set[str] = set()

    def public_id() -> str:
        while True:
            candidate = "".join(rng.choices(ALPHABET, k=10))
            if candidate not in seen:
                seen.add(candidate)
                return candidate

    step = 2 * YEAR / s.images
    fake_key = bytes(60)

    def image_rows():
        for i in range(s.images):
            png = rng.random() < 0.5
            yield (i + 1, public_id(), owners[i], rng.choice(guilds),
                   "public" if rng.random() < 0.2 else "private",
                   "generated" if png else "upload", now - 2 * YEAR + i * step,
                   far if rng.random() < 0.02 else None, rng.randrange(50_000, 3_000_000),
                   "PNG" if png else "JPEG", 1024, 1024, None, fake_key, f"{i + 1:032x}")

    con.executemany(
        "INSERT INTO images (id, public_id, owner_id, guild_id, visibility, source, created_at,"
        " expires_at, byte_size, format, width, height, prompt_ct, wrapped_key, blob_name)"
        " VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)", image_rows())

    library: dict[int, list[int]] = {}
    for image_id, owner in enumerate(owners, start=1):
        library.setdefault(owner, []).append(image_id)
    image_owners = list(library)

    group_rows, member_rows = [], []
    group_of: dict[int, int] = {}
    for g in range(1, s.groups + 1):
        owner = rng.choice(image_owners)
        group_rows.append((g, owner, f"group {g}", now - YEAR))
        group_of[g] = owner
        for member in rng.sample(users, rng.randint(1, 20)):
            if member != owner:
                member_rows.append((g, member))
    con.executemany("INSERT INTO groups (id, owner_id, name, created_at) VALUES (?,?,?,?)",
                    group_rows)
    con.executemany("INSERT INTO group_members (group_id, user_id) VALUES (?,?)", member_rows)

    grants: dict[tuple[int, int, str, int], float | None] = {}
    roles = [role_id(r) for r in range(s.roles)]

    def expiry() -> float | None:
        return now + rng.uniform(0.5, 5) * YEAR if rng.random() < 0.1 else None

    def add(count: int, make) -> None:
        target = len(grants) + count
        while len(grants) < target:
            owner, image, kind, grantee = make()
            if kind == "user" and grantee == owner:
                continue
            grants.setdefault((owner, image, kind, grantee), expiry())

    def random_image() -> tuple[int, int]:
        image = rng.randrange(1, s.images + 1)
        return owners[image - 1], image

    add(s.user_image_grants, lambda: (*random_image(), "user", rng.choice(users)))
    add(s.user_all_grants, lambda: (rng.choice(image_owners), 0, "user", rng.choice(users)))

    def role_grant():
        if rng.random() < 0.6:
            return (*random_image(), "role", rng.choice(roles))
        return rng.choice(image_owners), 0, "role", rng.choice(roles)

    def group_grant():
        group = rng.randrange(1, s.groups + 1)
        owner = group_of[group]
        image = rng.choice(library[owner]) if rng.random() < 0.7 else 0
        return owner, image, "group", group

    add(s.role_grants, role_grant)
    add(s.group_grants, group_grant)
    order = list(grants.items())
    rng.shuffle(order)  # grants arrive over time in no particular order
    con.executemany(
        "INSERT INTO grants (owner_id, image_id, grantee_kind, grantee_id, created_at,"
        " expires_at) VALUES (?,?,?,?,?,?)",
        ((owner, image or None, kind, grantee, now - YEAR, expires)
         for (owner, image, kind, grantee), expires in order))
    con.execute("COMMIT")
    con.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    con.close()
