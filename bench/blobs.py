"""Storing an image's bytes: one object per image (sealed thumbnail + full picture in one
container, what Veil does) against two objects per image (what Veil did: ``.full`` and
``.thumb``), on the data folder and on an S3-compatible server (moto on 127.0.0.1, in this
process). Also the thumbnail read: a ranged read of the container against a whole small object.

    python -m bench.blobs [--quick]

Every figure is measured in this run; the ratios compare like with like on the same machine.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import secrets
import statistics
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

from bot.core.blobs import (
    BlobStore,
    LocalBlobStore,
    S3Settings,
    image_key,
    pack_image,
    read_image_part,
)

ROOT = Path(__file__).resolve().parent.parent
FULL_BYTES = 150_000  # a sealed 1-megapixel WebP-ish picture
THUMB_BYTES = 12_000


async def _timed(count: int, one: Callable[[int], Awaitable[object]]) -> float:
    """Median seconds per call over ``count`` sequential calls."""
    times = []
    for i in range(count):
        start = time.perf_counter()
        await one(i)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


async def measure(store: BlobStore, label: str, count: int) -> None:
    full, thumb = secrets.token_bytes(FULL_BYTES), secrets.token_bytes(THUMB_BYTES)
    names = [secrets.token_hex(16) for _ in range(count)]

    async def one_object(i: int) -> None:
        await store.put(image_key(names[i]), pack_image(full, thumb))

    async def two_sequential(i: int) -> None:
        await store.put(image_key(names[i] + "f"), full)
        await store.put(image_key(names[i] + "t"), thumb)

    async def two_concurrent(i: int) -> None:
        await asyncio.gather(store.put(image_key(names[i] + "g"), full),
                             store.put(image_key(names[i] + "u"), thumb))

    async def thumb_ranged(i: int) -> None:
        await read_image_part(store, names[i], "thumb")

    async def thumb_object(i: int) -> None:
        await store.get(image_key(names[i] + "t"))

    one = await _timed(count, one_object)
    seq = await _timed(count, two_sequential)
    par = await _timed(count, two_concurrent)
    ranged = await _timed(count, thumb_ranged)
    whole = await _timed(count, thumb_object)
    print(f"{label}: store one image, median of {count}")
    print(f"  one object (Veil)          {one * 1000:8.2f} ms")
    print(f"  two objects, one by one    {seq * 1000:8.2f} ms   one object is {seq / one:.2f}x "
          "faster")
    print(f"  two objects, concurrently  {par * 1000:8.2f} ms   one object is {par / one:.2f}x "
          "faster")
    print(f"  thumbnail: ranged read of the container {ranged * 1000:.2f} ms, whole thumbnail "
          f"object {whole * 1000:.2f} ms (ratio {ranged / whole:.2f})")


async def main(quick: bool) -> None:
    count = 20 if quick else 100
    # Beside the project, not in /tmp: /tmp may be a tmpfs, where fsync costs nothing.
    with tempfile.TemporaryDirectory(dir=ROOT) as folder:
        await measure(LocalBlobStore(Path(folder)), f"data folder ({folder}, fsync each)", count)

    import boto3
    from moto.server import ThreadedMotoServer

    from bot.core.s3blobs import S3BlobStore
    from tests.loopback import free_port
    from tests.s3server import BUCKET, REGION

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    try:
        endpoint = f"http://127.0.0.1:{port}"
        boto3.client("s3", endpoint_url=endpoint, region_name=REGION, aws_access_key_id="x",
                     aws_secret_access_key="x").create_bucket(Bucket=BUCKET)
        store = S3BlobStore(BUCKET, "bench", S3Settings(endpoint, "x", "x", REGION))
        await measure(store, f"S3 (moto at {endpoint}, same process)", count)
    finally:
        server.stop()
    print(f"(cpu count {os.cpu_count()}; load average {os.getloadavg()[0]:.1f})")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    asyncio.run(main(parser.parse_args().quick))
