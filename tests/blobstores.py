"""The blob store dimension of the tests: ``blob_options`` is what ``Veil.open`` gets for the
store (nothing: the data folder; or an S3 URL and settings for the session's moto server).

By default a test runs on the data folder only. A test about stored bytes (images, crashes,
exports, the port itself) is marked ``@both_stores`` (or its module sets
``pytestmark = both_stores``) and runs on both; the S3 server starts once, on first use.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from bot.core.blobs import EXPORTS, IMAGES, BlobStore, image_key, open_blob_store
from bot.core.veil import Veil

STORES = ["folder", "s3"]
both_stores = pytest.mark.parametrize("blob_options", STORES, indirect=True)


@pytest.fixture
def blob_options(request: pytest.FixtureRequest) -> dict[str, Any]:
    if getattr(request, "param", "folder") == "folder":
        return {}
    server = request.getfixturevalue("s3_server")
    return {"blob_url": server.new_url(), "s3": server.settings()}


def store_env(blob_options: dict[str, Any]) -> dict[str, str]:
    """The VEIL_ settings that make a subprocess (a crash script) use the same store."""
    if not blob_options:
        return {}
    s3 = blob_options["s3"]
    return {"VEIL_BLOB_URL": blob_options["blob_url"], "VEIL_S3_ENDPOINT_URL": s3.endpoint_url,
            "VEIL_S3_ACCESS_KEY_ID": s3.access_key_id,
            "VEIL_S3_SECRET_ACCESS_KEY": s3.secret_access_key, "VEIL_S3_REGION": s3.region}


def store_of(data_dir: Path, blob_options: dict[str, Any]) -> BlobStore:
    return open_blob_store(data_dir, blob_options.get("blob_url"), blob_options.get("s3"))


async def _names(store: BlobStore, prefix: str) -> set[str]:
    return {b.key[len(prefix):] async for batch in store.scan(prefix) for b in batch}


async def stored_images(veil_or_store: Veil | BlobStore) -> set[str]:
    """The blob names of every image object in the store."""
    store = veil_or_store.ctx.blobs if isinstance(veil_or_store, Veil) else veil_or_store
    return await _names(store, IMAGES)


async def stored_exports(veil: Veil) -> set[str]:
    return await _names(veil.ctx.blobs, EXPORTS)


async def image_stored(data_dir: Path, blob_options: dict[str, Any], blob_name: str) -> bool:
    store = store_of(data_dir, blob_options)
    try:
        return await store.exists(image_key(blob_name))
    finally:
        await store.close()
